//! The binary as a user runs it: `version`, `config` (precedence, redaction, errors) and `check`
//! against a real TLS server trusted through a CA file.

use std::process::{Command, Output};
use std::sync::Arc;

use crate::support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};
use crate::support::pki::{self, ClientAuth, TestCa};

const BIN: &str = env!("CARGO_BIN_EXE_scalr-agent");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run scalr-agent")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn version_reports_version_commit_target_and_linkage() {
    let out = run(&["version"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("scalr-agent {}\n", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(
        stdout.contains("\ntarget: x86_64-") && stdout.contains("\nstatic: "),
        "{stdout}"
    );
}

#[test]
fn help_lists_only_subcommands_that_exist() {
    let out = run(&["--help"], &[]);
    let help = text(&out);
    for cmd in [
        "version",
        "config",
        "check",
        "controller",
        "render",
        "install",
        "exec-loop",
        "probe",
    ] {
        assert!(help.contains(&format!("  {cmd} ")), "{cmd} missing: {help}");
    }
}

#[test]
fn flags_override_environment_which_overrides_defaults() {
    let out = run(
        &["--concurrency", "7", "--name", "from-flag", "config"],
        &[
            ("SCALR_AGENT_CONCURRENCY", "3"),
            ("SCALR_AGENT_NAME", "from-env"),
            ("SCALR_AGENT_LOG_FORMAT", "json"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("SCALR_AGENT_CONCURRENCY=7  # flag --concurrency"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SCALR_AGENT_NAME=from-flag  # flag --name"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SCALR_AGENT_LOG_FORMAT=json  # environment SCALR_AGENT_LOG_FORMAT"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS=180  # default"),
        "{stdout}"
    );
}

#[test]
fn bad_configuration_exits_2_naming_every_problem() {
    let out = run(
        &["config"],
        &[
            ("SCALR_AGENT_CONCURRENCY", "many"),
            ("SCALR_URL", "http://acme.scalr.io"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 problems")
            && err.contains("SCALR_AGENT_CONCURRENCY")
            && err.contains("SCALR_URL"),
        "{err}"
    );
}

#[test]
fn legacy_names_work_with_a_deprecation_warning_in_both_log_formats() {
    for format in ["plain", "json"] {
        let out = run(
            &["config"],
            &[
                ("SCALR_DATA_HOME", "/srv/agent"),
                ("SCALR_AGENT_LOG_FORMAT", format),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout
                .contains("SCALR_AGENT_DATA_DIR=/srv/agent  # legacy environment SCALR_DATA_HOME"),
            "{stdout}"
        );
        let warning = stderr
            .lines()
            .find(|l| l.contains("SCALR_DATA_HOME is deprecated"))
            .expect("warning logged");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(warning).expect("json log line");
            assert_eq!(v["level"], "WARN");
        } else {
            assert!(warning.contains(" WARN "), "{warning}");
        }
    }
}

#[test]
fn tokens_never_reach_output_in_either_format() {
    let token = "pool-token-must-stay-secret-42";
    for format in ["plain", "json"] {
        for args in [&["config"][..], &["--debug", "check"][..]] {
            let out = run(
                args,
                &[
                    ("SCALR_AGENT_TOKEN", token),
                    ("SCALR_URL", "https://127.0.0.1:9"),
                    ("SCALR_AGENT_LOG_FORMAT", format),
                ],
            );
            let all = text(&out);
            assert!(!all.contains(token), "{format} {args:?} leaked: {all}");
        }
    }
}

#[test]
fn check_reaches_a_tls_platform_through_a_ca_file() {
    let ca = TestCa::new("check-ca");
    let handler = Arc::new(|req: &HttpRequest, out: &mut Responder<'_>| {
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
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).expect("write ca");
    let url = server.url();
    let env = [
        ("SCALR_URL", url.as_str()),
        ("SCALR_AGENT_TOKEN", "tok-abcdefgh"),
        ("SCALR_AGENT_CA_CERT", ca_path.to_str().expect("utf8")),
    ];
    let out = run(&["check"], &env);
    let report = text(&out);
    assert!(
        report.contains("PASS platform reachable") && report.contains("HTTP 200"),
        "{report}"
    );
    // This server is no platform and there is no cluster: the later lines say so, with a fix
    // (`tests/it/controller/secrets.rs` runs the whole check against the simulators).
    assert!(report.contains("FAIL platform credential"), "{report}");
    assert!(
        report.contains("FAIL kubernetes configuration") && report.contains("KUBECONFIG"),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{report}");

    // Without the CA the same server is refused, and the fix names the CA setting.
    let out = run(&["check"], &env[..2]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL platform reachable") && report.contains("SCALR_AGENT_CA_CERT"),
        "{report}"
    );
}

#[test]
fn readme_documents_every_configuration_variable() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for var in scalr_agent::config::vars::VARS {
        assert!(
            readme.contains(&format!("`{}`", var.name)),
            "README lacks {}",
            var.name
        );
    }
}
