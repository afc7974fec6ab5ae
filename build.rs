//! Records the git revision for `trafficshift_build_info{revision}`. Outside a git checkout (the
//! Docker build context has no .git) it is "unknown", unless TRAFFICSHIFT_GIT_REVISION names it.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=TRAFFICSHIFT_GIT_REVISION");
    let given = std::env::var("TRAFFICSHIFT_GIT_REVISION").ok();
    let rev = given
        .filter(|s| !s.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        // A metric label: keep it short and plain whatever the environment says.
        .filter(|s| {
            s.len() <= 40
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TRAFFICSHIFT_GIT_REVISION={rev}");

    // Rebuild when HEAD moves. Only paths that exist: a missing one would rerun every build.
    let mut watch = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch.push(Path::new(&dir).join("HEAD"));
    }
    if let Some(dir) = git(&["rev-parse", "--git-common-dir"]) {
        // Only the checked-out branch: commits on other branches (worktrees) change nothing here.
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(Path::new(&dir).join(branch));
        }
        watch.push(Path::new(&dir).join("packed-refs"));
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // Without any rerun-if-changed line Cargo would rerun on every source change: name build.rs.
    println!("cargo:rerun-if-changed=build.rs");
}
