//! mnw-admin: admin CLI of the realistic makenotwork fixture.
//!
//!   mnw-admin version
//!   mnw-admin migrate [--dry-run] [--allow-destructive] [--database PATH]
//!
//! Exit codes: 0 ok, 1 other error, 2 usage, 3 a migration failed,
//! 4 destructive migration pending (dry run without --allow-destructive).

use std::path::{Path, PathBuf};
use std::process::exit;

use mnw::{COMMIT, VERSION};

const USAGE: &str = "usage: mnw-admin version
       mnw-admin migrate [--dry-run] [--allow-destructive] [--database PATH]

  migrate --dry-run   apply pending migrations to a temporary copy of the
                      database and report them; the database is not changed.
                      exit 3 if one fails, 4 if one is destructive and
                      --allow-destructive is not given.
  --database PATH     default: env DATABASE_PATH, else ./makenotwork.db";

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("mnw-admin: {msg}");
    }
    eprintln!("{USAGE}");
    exit(2);
}

struct Args {
    dry_run: bool,
    allow_destructive: bool,
    database: PathBuf,
}

fn parse(args: &[String]) -> Args {
    let mut out = Args { dry_run: false, allow_destructive: false, database: mnw::database_path_from_env() };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dry-run" => out.dry_run = true,
            "--allow-destructive" => out.allow_destructive = true,
            "--database" => match it.next() {
                Some(p) if !p.is_empty() => out.database = PathBuf::from(p),
                _ => usage("--database needs a path"),
            },
            s if s.starts_with("--database=") && s.len() > "--database=".len() => {
                out.database = PathBuf::from(&s["--database=".len()..])
            }
            s => usage(&format!("unknown argument {s:?}")),
        }
    }
    out
}

fn remove_temp(tmp: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = tmp.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// A consistent snapshot of `db` in `tmp` (`VACUUM INTO` on a read-only
/// connection: WAL contents come along, `db` is not modified).
async fn snapshot(db: &Path, tmp: &Path) -> Result<(), String> {
    use sqlx::ConnectOptions;
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
    let mut conn = opts.connect().await.map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    sqlx::query("VACUUM INTO ?")
        .bind(tmp.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .map_err(|e| format!("cannot copy {} to {}: {e}", db.display(), tmp.display()))?;
    Ok(())
}

async fn dry_run(args: &Args) -> i32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp = std::env::temp_dir().join(format!("mnw-dry-run-{}-{nanos}.db", std::process::id()));
    if args.database.exists() {
        if let Err(e) = snapshot(&args.database, &tmp).await {
            eprintln!("mnw-admin: {e}");
            remove_temp(&tmp);
            return 1;
        }
    }
    let code = dry_run_on(&tmp, args.allow_destructive).await;
    remove_temp(&tmp);
    code
}

async fn dry_run_on(tmp: &Path, allow_destructive: bool) -> i32 {
    let pool = match mnw::connect(tmp).await {
        Ok(p) => p,
        Err(e) => {
            println!("dry-run failed at setup: {e}");
            return 3;
        }
    };
    let pending = match mnw::pending(&pool).await {
        Ok(p) => p,
        Err(e) => {
            println!("dry-run failed at setup: {e}");
            return 3;
        }
    };
    let mut destructive = false;
    for m in &pending {
        destructive |= m.destructive;
        println!("pending {} {}{}", m.version, m.description, if m.destructive { " [destructive]" } else { "" });
    }
    let result = mnw::migrate(&pool, false).await;
    pool.close().await;
    if let Err(f) = result {
        match f.version {
            Some(v) => println!("dry-run failed at {v}: {}", f.error),
            None => println!("dry-run failed at setup: {}", f.error),
        }
        return 3;
    }
    if destructive && !allow_destructive {
        println!("destructive migration pending");
        return 4;
    }
    println!("dry-run ok");
    0
}

async fn migrate(args: &Args) -> i32 {
    let pool = match mnw::connect(&args.database).await {
        Ok(p) => p,
        Err(e) => {
            println!("migration setup failed ({}): {e}", args.database.display());
            return 3;
        }
    };
    let code = match mnw::migrate(&pool, false).await {
        Ok(applied) => {
            for m in applied {
                println!("applied {} {}", m.version, m.description);
            }
            println!("migrate ok");
            0
        }
        Err(f) => {
            match f.version {
                Some(v) => println!("migration {v} failed: {}", f.error),
                None => println!("migration setup failed ({}): {}", args.database.display(), f.error),
            }
            3
        }
    };
    pool.close().await;
    code
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") if args.len() == 1 => println!("{VERSION} {COMMIT}"),
        Some("migrate") => {
            let a = parse(&args[1..]);
            let code = if a.dry_run { dry_run(&a).await } else { migrate(&a).await };
            exit(code);
        }
        Some("help") | Some("--help") | Some("-h") => println!("{USAGE}"),
        Some(a) => usage(&format!("unknown command {a:?}")),
        None => usage(""),
    }
}
