//! Build script of the makenotwork stand-in.
//!
//! Compiles in:
//! * `MNW_BUILD_VERSION`: env `MNW_VERSION` if set and non-empty, else
//!   `git describe --tags --always` of the source tree, else "unknown";
//! * `MNW_BUILD_COMMIT`: env `MNW_COMMIT` if set and non-empty (tests use it to build a
//!   binary that reports another version and commit), else `git rev-parse HEAD`, else "unknown";
//! * `MNW_CRASH_AT_START`: "1" if the file `CRASH_AT_START` exists next to
//!   Cargo.toml (made by `scripts/mutate crash-at-start`), else "0";
//! * `MNW_START_DELAY_MS`: the number in the file `START_DELAY_MS` next to Cargo.toml (made by
//!   `scripts/mutate slow-start MS`), else "0": the server waits that long before it listens;
//! * `$OUT_DIR/migrations.rs`: the SQL migrations in `migrations/*.sql`,
//!   embedded with `include_str!` and sorted by their numeric prefix
//!   (like `sqlx::migrate!`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

fn abs(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

struct Mig {
    version: i64,
    description: String,
    path: PathBuf,
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MNW_VERSION");

    // --- version and commit -------------------------------------------------
    let version = match env::var("MNW_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => git(&manifest_dir, &["describe", "--tags", "--always"])
            .unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rerun-if-env-changed=MNW_COMMIT");
    let commit = match env::var("MNW_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => git(&manifest_dir, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=MNW_BUILD_VERSION={version}");
    println!("cargo:rustc-env=MNW_BUILD_COMMIT={commit}");

    // Rebuild when HEAD moves (commit, checkout) or tags/branches change.
    if let Some(git_dir) = git(&manifest_dir, &["rev-parse", "--git-dir"]) {
        let git_dir = abs(&manifest_dir, &git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        let common = git(&manifest_dir, &["rev-parse", "--git-common-dir"])
            .map(|c| abs(&manifest_dir, &c))
            .unwrap_or(git_dir);
        let refs = common.join("refs");
        if refs.exists() {
            println!("cargo:rerun-if-changed={}", refs.display());
        }
        let packed = common.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }

    // --- crash-at-start flag ------------------------------------------------
    let crash_file = manifest_dir.join("CRASH_AT_START");
    // Watch the file only while it exists: watching a missing file would make
    // cargo rebuild everything on every `cargo build`. Its creation is noticed
    // through git (the caller commits, HEAD/refs move) and because
    // `scripts/mutate crash-at-start` / `fix` touch build.rs.
    let crash = if crash_file.exists() {
        println!("cargo:rerun-if-changed={}", crash_file.display());
        "1"
    } else {
        "0"
    };
    println!("cargo:rustc-env=MNW_CRASH_AT_START={crash}");

    // --- start delay (a slow start, e.g. a server applying long migrations) --
    let delay_file = manifest_dir.join("START_DELAY_MS");
    let delay = if delay_file.exists() {
        println!("cargo:rerun-if-changed={}", delay_file.display());
        fs::read_to_string(&delay_file).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0)
    } else {
        0
    };
    println!("cargo:rustc-env=MNW_START_DELAY_MS={delay}");

    // --- migrations ---------------------------------------------------------
    let mig_dir = manifest_dir.join("migrations");
    println!("cargo:rerun-if-changed={}", mig_dir.display());
    let mut migs: Vec<Mig> = Vec::new();
    if let Ok(entries) = fs::read_dir(&mig_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let name = match path.file_name().and_then(|n| n.to_str()) {
                Some(n) => n.to_string(),
                None => continue,
            };
            if !name.ends_with(".sql") || name.ends_with(".down.sql") {
                continue;
            }
            let stem = name.trim_end_matches(".sql").trim_end_matches(".up");
            let (num, desc) = match stem.split_once('_') {
                Some((n, d)) => (n, d),
                None => (stem, ""),
            };
            let version: i64 = match num.parse() {
                Ok(v) => v,
                Err(_) => panic!("migration file {name:?} does not start with a numeric version"),
            };
            migs.push(Mig {
                version,
                description: desc.replace('_', " "),
                path,
            });
        }
    }
    migs.sort_by_key(|m| m.version);
    for w in migs.windows(2) {
        if w[0].version == w[1].version {
            panic!(
                "duplicate migration version {}: {} and {}",
                w[0].version,
                w[0].path.display(),
                w[1].path.display()
            );
        }
    }
    let mut code = String::from("/// Embedded migrations, sorted by version (generated by build.rs).\npub static MIGRATIONS: &[Migration] = &[\n");
    for m in &migs {
        let path = m.path.to_str().expect("migration path is not UTF-8");
        code.push_str(&format!(
            "    Migration {{ version: {}, description: {:?}, sql: include_str!({:?}) }},\n",
            m.version, m.description, path
        ));
    }
    code.push_str("];\n");
    fs::write(out_dir.join("migrations.rs"), code).expect("write migrations.rs");
}
