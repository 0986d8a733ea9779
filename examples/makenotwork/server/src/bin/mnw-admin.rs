//! mnw-admin: admin CLI of the makenotwork stand-in.
//!
//!   mnw-admin version
//!   mnw-admin migrate [--dry-run] [--allow-destructive] [--database PATH]
//!
//! Exit codes: 0 ok, 1 other error, 2 usage, 3 a migration failed,
//! 4 destructive migration pending (dry run without --allow-destructive).

use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{SystemTime, UNIX_EPOCH};

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

struct MigrateArgs {
    dry_run: bool,
    allow_destructive: bool,
    database: PathBuf,
}

fn parse_migrate(args: &[String]) -> MigrateArgs {
    let mut out = MigrateArgs {
        dry_run: false,
        allow_destructive: false,
        database: mnw::database_path_from_env(),
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--dry-run" => out.dry_run = true,
            "--allow-destructive" => out.allow_destructive = true,
            "--database" => {
                i += 1;
                match args.get(i) {
                    Some(p) if !p.is_empty() => out.database = PathBuf::from(p),
                    _ => usage("--database needs a path"),
                }
            }
            _ if a.starts_with("--database=") => {
                let p = &a["--database=".len()..];
                if p.is_empty() {
                    usage("--database needs a path");
                }
                out.database = PathBuf::from(p);
            }
            _ => usage(&format!("unknown argument {a:?}")),
        }
        i += 1;
    }
    out
}

fn temp_db_path() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("mnw-dry-run-{}-{nanos}.db", std::process::id()))
}

fn remove_temp(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut p = tmp.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Copy `db` to `tmp`: a consistent snapshot via sqlite3's `.backup` on a
/// read-only connection (so WAL contents come along and `db` is not
/// modified), falling back to a plain file copy.
fn copy_db(db: &Path, tmp: &Path) -> Result<(), String> {
    let quoted = tmp.to_string_lossy().replace('\'', "''");
    let bin = mnw::sqlite3_bin();
    let snapshot = std::process::Command::new(&bin)
        .arg("-batch")
        .arg("-bail")
        .arg("-init")
        .arg("/dev/null")
        .arg("-readonly")
        .arg(db)
        .arg(".timeout 5000")
        .arg(format!(".backup '{quoted}'"))
        .stdin(std::process::Stdio::null())
        .output();
    if let Ok(out) = snapshot {
        if out.status.success() && out.stderr.is_empty() && tmp.exists() {
            return Ok(());
        }
    }
    remove_temp(tmp);
    std::fs::copy(db, tmp).map_err(|e| format!("cannot copy {} to {}: {e}", db.display(), tmp.display()))?;
    Ok(())
}

fn dry_run(args: &MigrateArgs) -> i32 {
    let tmp = temp_db_path();
    if args.database.exists() {
        if let Err(e) = copy_db(&args.database, &tmp) {
            eprintln!("mnw-admin: {e}");
            remove_temp(&tmp);
            return 1;
        }
    }
    let code = dry_run_on(&tmp, args.allow_destructive);
    remove_temp(&tmp);
    code
}

fn dry_run_on(tmp: &Path, allow_destructive: bool) -> i32 {
    let pending = match mnw::pending_migrations(tmp, &mut |w| println!("{w}")) {
        Ok(p) => p,
        Err(e) => {
            println!("dry-run failed at setup: {e}");
            return 3;
        }
    };
    let mut destructive = false;
    for m in pending {
        let d = m.is_destructive();
        destructive |= d;
        println!(
            "pending {} {}{}",
            m.version,
            m.description,
            if d { " [destructive]" } else { "" }
        );
        if let Err(e) = mnw::apply_migration(tmp, m) {
            println!("dry-run failed at {}: {e}", m.version);
            return 3;
        }
    }
    if destructive && !allow_destructive {
        println!("destructive migration pending");
        return 4;
    }
    println!("dry-run ok");
    0
}

fn migrate(args: &MigrateArgs) -> i32 {
    let result = mnw::migrate(&args.database, &mut |w| eprintln!("{w}"), &mut |m| {
        println!("applied {} {}", m.version, m.description)
    });
    match result {
        Ok(_) => {
            println!("migrate ok");
            0
        }
        Err(mnw::MigrateError::Failed(v, e)) => {
            println!("migration {v} failed: {e}");
            3
        }
        Err(mnw::MigrateError::Setup(e)) => {
            println!("migration setup failed ({}): {e}", args.database.display());
            3
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("version") | Some("--version") if args.len() == 1 => {
            println!("{VERSION} {COMMIT}");
        }
        Some("migrate") => {
            let m = parse_migrate(&args[1..]);
            let code = if m.dry_run { dry_run(&m) } else { migrate(&m) };
            exit(code);
        }
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
        }
        Some(a) => usage(&format!("unknown command {a:?}")),
        None => usage(""),
    }
}
