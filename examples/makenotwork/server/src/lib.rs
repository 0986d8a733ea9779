//! Shared code of the makenotwork stand-in: build info, a tiny HTTP/1.1
//! parser, and SQLite migrations driven through the `sqlite3` CLI.
//!
//! std only: no crates.io dependencies.

use std::env;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// `git describe --tags --always` of the source tree (or env MNW_VERSION at build time).
pub const VERSION: &str = env!("MNW_BUILD_VERSION");
/// `git rev-parse HEAD` of the source tree.
pub const COMMIT: &str = env!("MNW_BUILD_COMMIT");
const CRASH_FLAG: &str = env!("MNW_CRASH_AT_START");
const LABEL_RAW: &str = include_str!("label.txt");

/// True for a build made with `server/CRASH_AT_START` present.
pub fn crash_at_start() -> bool {
    CRASH_FLAG == "1"
}

/// How long this build waits (after its migrations) before it listens (`mutate slow-start MS`).
pub fn start_delay_ms() -> u64 {
    env!("MNW_START_DELAY_MS").parse().unwrap_or(0)
}

/// The label written by `scripts/mutate bump LABEL` ("" if none).
pub fn label() -> &'static str {
    LABEL_RAW.trim()
}

/// Default database path when env DATABASE_PATH is unset or empty.
pub const DEFAULT_DATABASE_PATH: &str = "./makenotwork.db";

pub fn database_path_from_env() -> PathBuf {
    match env::var("DATABASE_PATH") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_DATABASE_PATH),
    }
}

/// Seconds since the epoch, with milliseconds: "1700000000.123".
pub fn epoch_with_ms() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Collapse a multi-line message to one line (for log lines).
pub fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

// ---------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------

/// One embedded migration (see build.rs).
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

impl Migration {
    /// Not sqlx's SHA-384: a 64-bit FNV-1a of the SQL, hex (std only).
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.sql.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }

    /// DROP TABLE, DROP COLUMN, or ALTER TABLE ... DROP (case-insensitive,
    /// comments ignored).
    pub fn is_destructive(&self) -> bool {
        is_destructive_sql(self.sql)
    }
}

pub fn is_destructive_sql(sql: &str) -> bool {
    let mut cleaned = String::with_capacity(sql.len());
    for line in sql.lines() {
        let line = match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        };
        cleaned.push_str(line);
        cleaned.push(' ');
    }
    let upper = cleaned.to_uppercase();
    for stmt in upper.split(';') {
        let words: Vec<&str> = stmt.split_whitespace().collect();
        let joined = words.join(" ");
        if joined.contains("DROP TABLE") || joined.contains("DROP COLUMN") {
            return true;
        }
        if joined.contains("ALTER TABLE") && words.contains(&"DROP") {
            return true;
        }
    }
    false
}

/// The sqlite3 CLI to use: env MNW_SQLITE3, default "sqlite3".
pub fn sqlite3_bin() -> String {
    match env::var("MNW_SQLITE3") {
        Ok(s) if !s.is_empty() => s,
        _ => "sqlite3".to_string(),
    }
}

/// Run `sqlite3 <db>` with `script` on stdin. Ok(stdout) on success,
/// Err(stderr as one line) if sqlite3 failed or wrote anything to stderr.
pub fn run_sqlite(db: &Path, script: &str) -> Result<String, String> {
    let bin = sqlite3_bin();
    let mut child = Command::new(&bin)
        .arg("-batch")
        .arg("-init")
        .arg("/dev/null")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {bin}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let script = script.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
        // stdin dropped here: EOF for sqlite3
    });
    let out = child.wait_with_output().map_err(|e| format!("waiting for {bin}: {e}"))?;
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = one_line(&stderr);
    if !out.status.success() || !stderr.is_empty() {
        if stderr.is_empty() {
            return Err(format!("{bin} exited with {}", out.status));
        }
        return Err(stderr);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const MIGRATIONS_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success INTEGER NOT NULL,
    checksum TEXT NOT NULL
);";

/// A migration recorded in `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct Applied {
    pub version: i64,
    pub checksum: String,
}

/// Create `_sqlx_migrations` if needed and list the successfully applied ones.
/// Creates the database (and its parent directory) if missing.
pub fn applied_migrations(db: &Path) -> Result<Vec<Applied>, String> {
    if let Some(parent) = db.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
    }
    let script = format!(
        ".bail on\n.timeout 5000\n{MIGRATIONS_TABLE_SQL}\n.mode list\n.separator |\n\
         SELECT version, checksum FROM _sqlx_migrations WHERE success = 1 ORDER BY version;\n"
    );
    let out = run_sqlite(db, &script)?;
    let mut applied = Vec::new();
    for line in out.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (v, c) = line.split_once('|').unwrap_or((line, ""));
        let version = v
            .parse()
            .map_err(|_| format!("unexpected row in _sqlx_migrations: {line:?}"))?;
        applied.push(Applied {
            version,
            checksum: c.to_string(),
        });
    }
    Ok(applied)
}

/// Embedded migrations not yet applied to `db`, in order. Warnings (about
/// applied migrations this build does not know, or changed checksums) go to
/// `warn`.
pub fn pending_migrations(
    db: &Path,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<&'static Migration>, String> {
    let applied = applied_migrations(db)?;
    for a in &applied {
        match MIGRATIONS.iter().find(|m| m.version == a.version) {
            None => warn(format!(
                "warning: migration {} was applied to the database but is unknown to this build",
                a.version
            )),
            Some(m) if m.checksum() != a.checksum => warn(format!(
                "warning: migration {} was applied with checksum {} but this build has {}",
                a.version,
                a.checksum,
                m.checksum()
            )),
            _ => {}
        }
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect())
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Apply one migration in its own transaction; the record in
/// `_sqlx_migrations` is part of the same transaction.
pub fn apply_migration(db: &Path, m: &Migration) -> Result<(), String> {
    let script = format!(
        ".bail on\n.timeout 5000\n{MIGRATIONS_TABLE_SQL}\nBEGIN;\n{sql}\n;\n\
         INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum) \
         VALUES ({v}, {d}, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 1, {c});\nCOMMIT;\n",
        sql = m.sql,
        v = m.version,
        d = sql_quote(m.description),
        c = sql_quote(&m.checksum()),
    );
    run_sqlite(db, &script).map(|_| ())
}

/// Why `migrate` stopped.
#[derive(Debug)]
pub enum MigrateError {
    /// Could not read or create `_sqlx_migrations`.
    Setup(String),
    /// Migration `version` failed with this sqlite3 error.
    Failed(i64, String),
}

/// Apply all pending migrations in order. `on_applied` is called after each.
pub fn migrate(
    db: &Path,
    warn: &mut dyn FnMut(String),
    on_applied: &mut dyn FnMut(&Migration),
) -> Result<usize, MigrateError> {
    let pending = pending_migrations(db, warn).map_err(MigrateError::Setup)?;
    for m in &pending {
        apply_migration(db, m).map_err(|e| MigrateError::Failed(m.version, e))?;
        on_applied(m);
    }
    Ok(pending.len())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 (just enough for curl, Caddy and health checks)
// ---------------------------------------------------------------------------

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Request target as sent ("/path?query").
    pub target: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// First value of `name` in the query string (no percent-decoding).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k == name {
                Some(v)
            } else {
                None
            }
        })
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_line_limited<R: BufRead>(r: &mut R, budget: &mut usize) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(*budget as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget {
        return Err(bad("request head too large"));
    }
    *budget -= n;
    while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// Read one request. Ok(None) on a clean EOF before any byte.
pub fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<Request>> {
    let mut budget = MAX_HEAD;
    // Skip empty lines before the request line (RFC 9112 2.2).
    let request_line = loop {
        match read_line_limited(r, &mut budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next().ok_or_else(|| bad("empty request line"))?.to_string();
    let target = parts.next().ok_or_else(|| bad("no request target"))?.to_string();
    let proto = parts.next().unwrap_or("HTTP/1.0");
    if !proto.starts_with("HTTP/1.") {
        return Err(bad("unsupported protocol"));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line_limited(r, &mut budget)?.ok_or_else(|| bad("eof in headers"))?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(bad("too many headers"));
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut req = Request {
        method,
        target,
        path,
        query,
        headers,
        body: Vec::new(),
    };
    let chunked = req
        .header("Transfer-Encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        req.body = read_chunked(r)?;
    } else if let Some(cl) = req.header("Content-Length") {
        let n: usize = cl.trim().parse().map_err(|_| bad("bad Content-Length"))?;
        if n > MAX_BODY {
            return Err(bad("body too large"));
        }
        let mut body = vec![0u8; n];
        r.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut budget = MAX_HEAD;
    loop {
        let line = read_line_limited(r, &mut budget)?.ok_or_else(|| bad("eof in chunk size"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                match read_line_limited(r, &mut budget)? {
                    None => return Ok(body),
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Write a complete response and announce `Connection: close`.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra_headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nServer: makenotwork/{VERSION}\r\n",
        reason(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if !head_only {
        w.write_all(body)?;
    }
    w.flush()
}

/// Compare without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Value of a top-level numeric (or numeric-string) JSON field, crudely:
/// `{"seconds": 30}` -> "30". Only digits, '.', '-' and '+' are kept.
pub fn json_number_field(body: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let at = body.find(&key)? + key.len();
    let rest = body[at..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let value: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        .collect();
    if value.is_empty() || !value.chars().any(|c| c.is_ascii_digit()) {
        None
    } else {
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destructive_detection() {
        assert!(is_destructive_sql("drop table notes;"));
        assert!(is_destructive_sql("ALTER TABLE notes\n  DROP COLUMN body;"));
        assert!(is_destructive_sql("alter table notes drop body;"));
        assert!(!is_destructive_sql("-- DROP TABLE notes\nCREATE TABLE x (a);"));
        assert!(!is_destructive_sql("ALTER TABLE notes ADD COLUMN dropped INTEGER;"));
    }

    #[test]
    fn json_field() {
        assert_eq!(json_number_field("{\"seconds\": 30}", "seconds").as_deref(), Some("30"));
        assert_eq!(json_number_field("{\"seconds\":\"5\"}", "seconds").as_deref(), Some("5"));
        assert_eq!(json_number_field("{\"x\":1}", "seconds"), None);
    }

    #[test]
    fn migrations_sorted() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(MIGRATIONS[0].version, 1);
    }
}
