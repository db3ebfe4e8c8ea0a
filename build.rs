//! Build script: records the git commit and the target triple for `scalr-agent version`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SCALR_AGENT_GIT_COMMIT");
    let commit = std::env::var("SCALR_AGENT_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    if let Some(dir) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
    }
    println!(
        "cargo:rustc-env=SCALR_AGENT_BUILD_COMMIT={}",
        commit.unwrap_or_default()
    );
    println!(
        "cargo:rustc-env=SCALR_AGENT_BUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}
