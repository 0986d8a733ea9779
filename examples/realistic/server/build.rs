//! Build script of the realistic makenotwork fixture (same scheme as the stand-in's).
//!
//! Compiles in:
//! * `MNW_BUILD_VERSION`: env `MNW_VERSION` if set and non-empty, else
//!   `git describe --tags --always` of the source tree, else "unknown";
//! * `MNW_BUILD_COMMIT`: `git rev-parse HEAD`, else "unknown".
//!
//! Re-runs when HEAD or refs move (commit, checkout, tag) and when the
//! migrations change (`sqlx::migrate!` embeds them at compile time).

use std::env;
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
    if s.is_empty() { None } else { Some(s) }
}

fn abs(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=MNW_VERSION");

    let version = match env::var("MNW_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => git(&manifest_dir, &["describe", "--tags", "--always"]).unwrap_or_else(|| "unknown".to_string()),
    };
    let commit = git(&manifest_dir, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
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
}
