//! makenotwork server (realistic fixture): axum on tokio, SQLite through sqlx.
//!
//! Env: MNW_BIND (default 127.0.0.1:3000), DATABASE_PATH (default
//! ./makenotwork.db), CLI_SERVICE_TOKEN (bearer token of
//! POST /api/internal/restart-warning; unset: every call is refused),
//! MNW_STRICT_MIGRATIONS=1 (refuse a database with migrations this build does
//! not know, sqlx's default), RUST_LOG (tracing filter, default "info").

use std::collections::HashMap;
use std::process::exit;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tracing::{info, warn};

use mnw::{COMMIT, LABEL, VERSION};

struct AppState {
    token: Option<String>,
    db: SqlitePool,
}

type Shared = Arc<AppState>;

/// `GET /`: fields in the stand-in's order; "label" only when the build has one.
#[derive(Serialize)]
struct Info {
    name: &'static str,
    version: &'static str,
    commit: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    label: &'static str,
}

async fn root() -> Json<Info> {
    Json(Info { name: "makenotwork", version: VERSION, commit: COMMIT, label: LABEL })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn restart_warning(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let ok = match (&st.token, bearer(&headers)) {
        (Some(want), Some(got)) => mnw::constant_time_eq(want.as_bytes(), got.as_bytes()),
        _ => false,
    };
    if !ok {
        println!("restart-warning: rejected (bad token)");
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"})));
    }
    let from_body = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("seconds").filter(|s| s.is_number()).map(|s| s.to_string()));
    let seconds = from_body
        .or_else(|| q.get("seconds").filter(|s| s.parse::<f64>().is_ok()).cloned())
        .unwrap_or_else(|| "?".to_string());
    println!("restart-warning: received at={} seconds={seconds}", mnw::epoch_with_ms());
    (StatusCode::OK, Json(json!({"ok": true})))
}

#[derive(Serialize, sqlx::FromRow)]
struct Note {
    id: i64,
    title: String,
    body: String,
    created_at: String,
}

#[derive(Deserialize)]
struct NewNote {
    title: String,
    #[serde(default)]
    body: String,
}

async fn list_notes(State(st): State<Shared>) -> Result<Json<Vec<Note>>, StatusCode> {
    sqlx::query_as::<_, Note>("SELECT id, title, body, created_at FROM notes ORDER BY id DESC LIMIT 100")
        .fetch_all(&st.db)
        .await
        .map(Json)
        .map_err(|e| {
            warn!(error = %e, "list notes");
            StatusCode::INTERNAL_SERVER_ERROR
        })
}

async fn create_note(State(st): State<Shared>, Json(n): Json<NewNote>) -> Result<(StatusCode, Json<Note>), StatusCode> {
    sqlx::query_as::<_, Note>(
        "INSERT INTO notes (title, body) VALUES (?, ?) RETURNING id, title, body, created_at",
    )
    .bind(n.title)
    .bind(n.body)
    .fetch_one(&st.db)
    .await
    .map(|note| (StatusCode::CREATED, Json(note)))
    .map_err(|e| {
        warn!(error = %e, "create note");
        StatusCode::INTERNAL_SERVER_ERROR
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutting down");
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("makenotwork {VERSION} ({COMMIT})");
        return;
    }
    if let Some(a) = args.first() {
        eprintln!("makenotwork: unknown argument {a:?} (configure with env vars)");
        exit(2);
    }

    // Migrations first: never listen on a schema we could not bring up to date.
    let db_path = mnw::database_path_from_env();
    let db = match mnw::connect(&db_path).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("migration setup failed ({}): {e}", db_path.display());
            exit(3);
        }
    };
    let strict = std::env::var("MNW_STRICT_MIGRATIONS").is_ok_and(|v| v == "1");
    match mnw::migrate(&db, strict).await {
        Ok(applied) => {
            for m in applied {
                println!("applied migration {} {}", m.version, m.description);
            }
        }
        Err(f) => {
            match f.version {
                Some(v) => eprintln!("migration {v} failed: {}", f.error),
                None => eprintln!("migration setup failed ({}): {}", db_path.display(), f.error),
            }
            exit(3);
        }
    }

    let bind = std::env::var("MNW_BIND").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = match tokio::net::TcpListener::bind(&bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {bind}: {e}");
            exit(1);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or(bind);
    let state = Arc::new(AppState {
        token: std::env::var("CLI_SERVICE_TOKEN").ok().filter(|t| !t.is_empty()),
        db,
    });
    let app = Router::new()
        .route("/", get(root))
        .route("/api/internal/restart-warning", post(restart_warning))
        .route("/api/notes", get(list_notes).post(create_note))
        .with_state(state);
    println!("makenotwork {VERSION} ({COMMIT}) listening on {addr}");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await {
        eprintln!("server error: {e}");
        exit(1);
    }
}
