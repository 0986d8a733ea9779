//! makenotwork stand-in server.
//!
//! Env: MNW_BIND (default 127.0.0.1:3000), DATABASE_PATH (default
//! ./makenotwork.db), CLI_SERVICE_TOKEN (bearer token of
//! POST /api/internal/restart-warning), MNW_STRICT_MIGRATIONS=1 (refuse to
//! start if the database has migrations this build does not know, like
//! sqlx's default), MNW_SQLITE3 (sqlite3 CLI, default "sqlite3"); fault knobs for
//! tests: MNW_RESTART_WARNING_DELAY_MS (answer the restart warning that late) and
//! MNW_RESTART_WARNING_STATUS (answer it with that HTTP status).

use std::env;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::sync::Arc;
use std::time::Duration;

use mnw::{json_escape, Request, COMMIT, VERSION};

struct Config {
    token: Option<String>,
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn say_err(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

fn root_body() -> String {
    let mut body = format!(
        "{{\"name\":\"makenotwork\",\"version\":\"{}\",\"commit\":\"{}\"",
        json_escape(VERSION),
        json_escape(COMMIT)
    );
    if !mnw::label().is_empty() {
        body.push_str(&format!(",\"label\":\"{}\"", json_escape(mnw::label())));
    }
    body.push_str("}\n");
    body
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.header("Authorization")?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(token.trim())
    } else {
        None
    }
}

fn restart_warning(cfg: &Config, req: &Request) -> (u16, String) {
    // Fault knobs for tests: answer late, or with another status.
    if let Some(ms) = env::var("MNW_RESTART_WARNING_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(status) = env::var("MNW_RESTART_WARNING_STATUS").ok().and_then(|v| v.parse::<u16>().ok()) {
        say(&format!("restart-warning: answering {status} (MNW_RESTART_WARNING_STATUS)"));
        return (status, "{\"error\":\"forced by MNW_RESTART_WARNING_STATUS\"}\n".to_string());
    }
    let authorized = match (&cfg.token, bearer(req)) {
        (Some(expected), Some(given)) => mnw::constant_time_eq(expected.as_bytes(), given.as_bytes()),
        _ => false,
    };
    if !authorized {
        say("restart-warning: rejected (bad token)");
        return (401, "{\"error\":\"unauthorized\"}\n".to_string());
    }
    let body = String::from_utf8_lossy(&req.body);
    let seconds = mnw::json_number_field(&body, "seconds")
        .or_else(|| {
            req.query_param("seconds")
                .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".to_string());
    say(&format!(
        "restart-warning: received at={} seconds={}",
        mnw::epoch_with_ms(),
        seconds
    ));
    (200, "{\"ok\":true}\n".to_string())
}

fn handle(cfg: &Config, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(15)));
    let mut writer = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let req = match mnw::read_request(&mut reader) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(_) => {
            let _ = mnw::write_response(&mut writer, 400, "text/plain", b"bad request\n", false, &[]);
            return;
        }
    };
    let head_only = req.method == "HEAD";
    let json = "application/json";
    let text = "text/plain; charset=utf-8";
    let (status, ctype, body, allow): (u16, &str, String, Option<&str>) = match req.path.as_str() {
        "/" => match req.method.as_str() {
            "GET" | "HEAD" => (200, json, root_body(), None),
            _ => (405, text, "method not allowed\n".into(), Some("GET, HEAD")),
        },
        "/api/internal/restart-warning" => match req.method.as_str() {
            "POST" => {
                let (s, b) = restart_warning(cfg, &req);
                (s, json, b, None)
            }
            _ => (405, text, "method not allowed\n".into(), Some("POST")),
        },
        _ => (404, text, "not found\n".into(), None),
    };
    let extra: Vec<(&str, &str)> = allow.map(|a| vec![("Allow", a)]).unwrap_or_default();
    let _ = mnw::write_response(&mut writer, status, ctype, body.as_bytes(), head_only, &extra);
    let _ = writer.shutdown(std::net::Shutdown::Write);
}

fn main() {
    if mnw::crash_at_start() {
        say_err("crash-at-start build: exiting");
        exit(1);
    }
    let args: Vec<String> = env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        say(&format!("makenotwork {VERSION} ({COMMIT})"));
        return;
    }
    if let Some(a) = args.first() {
        say_err(&format!("makenotwork: unknown argument {a:?} (configure with env vars)"));
        exit(2);
    }

    // Migrations first: never listen on a schema we could not bring up to date.
    let db = mnw::database_path_from_env();
    let strict = env::var("MNW_STRICT_MIGRATIONS").map(|v| v == "1").unwrap_or(false);
    let mut unknown_applied = false;
    let mut warn = |w: String| {
        if w.contains("unknown to this build") {
            unknown_applied = true;
        }
        say_err(&w);
    };
    let result = mnw::migrate(&db, &mut warn, &mut |m| {
        say(&format!("applied migration {} {}", m.version, m.description))
    });
    match result {
        Ok(_) => {}
        Err(mnw::MigrateError::Failed(v, e)) => {
            say_err(&format!("migration {v} failed: {e}"));
            exit(3);
        }
        Err(mnw::MigrateError::Setup(e)) => {
            say_err(&format!("migration setup failed ({}): {e}", db.display()));
            exit(3);
        }
    }
    if strict && unknown_applied {
        say_err("refusing to start: database has migrations unknown to this build (MNW_STRICT_MIGRATIONS=1)");
        exit(3);
    }

    let delay = mnw::start_delay_ms();
    if delay > 0 {
        say(&format!("slow-start build: waiting {delay} ms before listening"));
        std::thread::sleep(std::time::Duration::from_millis(delay));
    }
    let bind = match env::var("MNW_BIND") {
        Ok(b) if !b.is_empty() => b,
        _ => "127.0.0.1:3000".to_string(),
    };
    let listener = match TcpListener::bind(&bind) {
        Ok(l) => l,
        Err(e) => {
            say_err(&format!("cannot listen on {bind}: {e}"));
            exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(bind);
    let cfg = Arc::new(Config {
        token: env::var("CLI_SERVICE_TOKEN").ok().filter(|t| !t.is_empty()),
    });
    say(&format!("makenotwork {VERSION} ({COMMIT}) listening on {addr}"));
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let cfg = Arc::clone(&cfg);
                std::thread::spawn(move || handle(&cfg, s));
            }
            Err(e) => say_err(&format!("accept failed: {e}")),
        }
    }
}
