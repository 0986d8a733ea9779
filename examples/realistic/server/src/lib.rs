//! Shared code of the realistic makenotwork fixture: build info, the SQLite
//! pool and the embedded migrations (`sqlx::migrate!`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// `git describe --tags --always` of the source tree (or env MNW_VERSION at build time).
pub const VERSION: &str = env!("MNW_BUILD_VERSION");
/// `git rev-parse HEAD` of the source tree.
pub const COMMIT: &str = env!("MNW_BUILD_COMMIT");

/// Free-form label, served by `GET /` when non-empty. `tests/realistic.py`'s
/// `bump` rewrites this one line to make a new version.
pub const LABEL: &str = "";

/// The migrations in `server/migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Default database path when env DATABASE_PATH is unset or empty.
pub const DEFAULT_DATABASE_PATH: &str = "./makenotwork.db";

pub fn database_path_from_env() -> PathBuf {
    match std::env::var("DATABASE_PATH") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_DATABASE_PATH),
    }
}

/// Open (and create, with its directory) the SQLite database at `path`.
pub async fn connect(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
    }
    let opts = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new().max_connections(4).connect_with(opts).await
}

/// Versions recorded as successfully applied in `_sqlx_migrations` (empty if
/// the table does not exist yet).
pub async fn applied_versions(pool: &SqlitePool) -> Result<BTreeSet<i64>, sqlx::Error> {
    let exists: Option<(String,)> =
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_optional(pool)
            .await?;
    if exists.is_none() {
        return Ok(BTreeSet::new());
    }
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success = 1")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
}

/// One embedded migration that the database does not have yet.
pub struct Pending {
    pub version: i64,
    pub description: String,
    pub destructive: bool,
}

pub async fn pending(pool: &SqlitePool) -> Result<Vec<Pending>, sqlx::Error> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .map(|m| Pending {
            version: m.version,
            description: m.description.to_string(),
            destructive: is_destructive_sql(m.sql.as_str()),
        })
        .collect())
}

/// Why `migrate` failed: the version that failed, if one did, and the error.
pub struct MigrationFailure {
    pub version: Option<i64>,
    pub error: MigrateError,
}

/// Apply the pending migrations (each in its own transaction, recorded in
/// `_sqlx_migrations`); returns the ones applied. Unless `strict`, a database
/// with migrations this build does not know is accepted (an older release can
/// be rolled back to); sqlx's default (strict) refuses it.
pub async fn migrate(pool: &SqlitePool, strict: bool) -> Result<Vec<Pending>, MigrationFailure> {
    let todo = pending(pool).await.map_err(|e| MigrationFailure { version: None, error: e.into() })?;
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.set_ignore_missing(!strict);
    if let Err(error) = migrator.run(pool).await {
        let now = applied_versions(pool).await.unwrap_or_default();
        let version = todo.iter().map(|p| p.version).find(|v| !now.contains(v));
        return Err(MigrationFailure { version, error });
    }
    Ok(todo)
}

/// DROP TABLE, DROP COLUMN, or ALTER TABLE ... DROP (case-insensitive, `--` comments ignored).
pub fn is_destructive_sql(sql: &str) -> bool {
    let cleaned: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase();
    cleaned.split(';').any(|stmt| {
        let w: Vec<&str> = stmt.split_whitespace().collect();
        (w.len() >= 2 && w[0] == "DROP" && w[1] == "TABLE")
            || w.windows(2).any(|p| p == ["DROP", "COLUMN"])
            || (w.len() >= 2 && w[0] == "ALTER" && w[1] == "TABLE" && w.contains(&"DROP"))
    })
}

/// Constant-time comparison of two secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch, with milliseconds: "1700000000.123".
pub fn epoch_with_ms() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
