//! Proves the static binary needs nothing but itself: runs it inside an otherwise empty root
//! directory (chroot, so run as root) holding only the binary, `/etc/hosts`, `/etc/resolv.conf` and a
//! CA file, and has it make an HTTPS request to a loopback server trusted through that CA file.
//!
//! Usage: `cargo run --example static_check -- target/x86_64-unknown-linux-gnu/release/scalr-agent`
//! Prints what it ran and exits non-zero on any failure. Used by `.ci/run`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};
use support::pki::{self, ClientAuth, TestCa};

fn main() {
    if let Err(message) = run() {
        eprintln!("static_check: FAILED: {message}");
        std::process::exit(1);
    }
    println!("static_check: passed");
}

fn run() -> Result<(), String> {
    let binary = std::env::args()
        .nth(1)
        .ok_or("usage: static_check PATH-TO-STATIC-BINARY")?;
    let root = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).map_err(|e| e.to_string())?;
    std::fs::copy(&binary, r.join("scalr-agent")).map_err(|e| format!("copy {binary}: {e}"))?;
    std::fs::write(r.join("etc/hosts"), "127.0.0.1 localhost\n").map_err(|e| e.to_string())?;
    std::fs::write(r.join("etc/resolv.conf"), "nameserver 127.0.0.1\n")
        .map_err(|e| e.to_string())?;

    let ca = TestCa::new("static-check-ca");
    std::fs::write(r.join("ca.pem"), &ca.cert_pem).map_err(|e| e.to_string())?;
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let handler = Arc::new(move |req: &HttpRequest, out: &mut Responder<'_>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let status = if req.path == "/api/iacp/v3/" {
            200
        } else {
            404
        };
        let _ = out.respond(HttpResponse::empty(status));
    });
    let server = TestServer::start_tls(
        handler,
        pki::server_config(&ca.server_cert(), ClientAuth::None),
    );

    let listing: Vec<String> = walk(r, r);
    println!(
        "static_check: root {} holds only: {}",
        r.display(),
        listing.join(", ")
    );

    // The child's environment is cleared, so find chroot(8) through our own PATH.
    let chroot_bin = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| std::path::Path::new(d).join("chroot"))
        .find(|p| p.is_file())
        .ok_or("chroot(8) not found")?;
    let chroot = |args: &[&str], env: &[(&str, String)]| {
        let mut cmd = Command::new(&chroot_bin);
        cmd.arg(r).arg("/scalr-agent").args(args).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        println!(
            "static_check: chroot <root> /scalr-agent {}",
            args.join(" ")
        );
        cmd.output()
            .map_err(|e| format!("chroot: {e} (run as root)"))
    };

    let out = chroot(&["version"], &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    if !out.status.success() || !stdout.contains("static: yes") {
        return Err(format!(
            "version in the empty root failed: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let out = chroot(&["--help"], &[])?;
    if !out.status.success() {
        return Err("--help failed in the empty root".into());
    }

    let env = [
        ("SCALR_URL", server.url().replace("127.0.0.1", "localhost")),
        ("SCALR_AGENT_TOKEN", "static-check-token".to_string()),
        ("SCALR_AGENT_CA_CERT", "/ca.pem".to_string()),
    ];
    let out = chroot(&["check"], &env)?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{report}");
    // The loopback server answers only the API root and there is no cluster here, so the token
    // and Kubernetes checks fail and `check` exits 1: a report, not a crash. What this proves is
    // the HTTPS request (name lookup, TLS with the CA file) from the empty root.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(format!(
            "check in the empty root did not report: {}",
            out.status
        ));
    }
    if !report.contains("PASS platform reachable") {
        return Err("the HTTPS request from the empty root did not succeed".into());
    }
    if hits.load(Ordering::SeqCst) == 0 {
        return Err("the loopback server saw no request".into());
    }
    Ok(())
}

fn walk(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(root, &path));
            } else {
                let shown = path.strip_prefix(root).unwrap_or(&path);
                out.push(format!("/{}", shown.display()));
            }
        }
    }
    out
}
