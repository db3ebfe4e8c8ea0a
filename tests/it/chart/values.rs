//! What users may pass: `helm lint --strict`, the schema's refusals (their messages are the
//! product), the Kubernetes version constraint, and secrets that never leave their Secret.

use super::{NAMESPACE, RELEASE, chart_dir, render, try_render, values_file};
use crate::support::tools;
use base64::Engine;
use serde_json::Value;

#[test]
fn lint_strict_passes_with_defaults_and_with_settings() {
    for args in [
        &[][..],
        &[
            "--set",
            "agent.url=https://acme.scalr.io",
            "--set",
            "agent.token=t",
        ][..],
    ] {
        let out = tools::helm()
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .args(args)
            .output()
            .expect("run helm lint");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("0 chart(s) failed"),
            "helm lint --strict {args:?}:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn schema_rejects_unknown_keys_and_wrong_types_readably() {
    // (value set, what helm must say). The message is what a user sees, so the text is asserted.
    let cases = [
        (
            "agent.tokn=x",
            "at '/agent': additional properties 'tokn' not allowed",
        ),
        (
            "restrictMetadataServices=true",
            "additional properties 'restrictMetadataServices' not allowed",
        ),
        (
            "persistence.persistentVolumeClaim.claimname=x",
            "additional properties 'claimname' not allowed",
        ),
        (
            "agent.replicaCount=two",
            "at '/agent/replicaCount': got string, want integer",
        ),
        (
            "agent.replicaCount=-1",
            "at '/agent/replicaCount': minimum: got -1, want 0",
        ),
        (
            "agent.logFormat=xml",
            "at '/agent/logFormat': value must be one of 'plain', 'json'",
        ),
        (
            "restrictMetadataService=yes",
            "at '/restrictMetadataService': got string, want boolean",
        ),
        (
            "persistence.enabled=1",
            "at '/persistence/enabled': got number, want boolean",
        ),
        (
            "agent.debug=verbose",
            "value must be one of 'true', 'false', '1', '0'",
        ),
        (
            "agent.url=acme.scalr.io",
            "at '/agent/url': 'acme.scalr.io' does not match pattern",
        ),
        ("task.dataSizeLimit=huge", "at '/task/dataSizeLimit'"),
        (
            "agent.extraEnv[0].value=x",
            "at '/agent/extraEnv/0': missing property 'name'",
        ),
        (
            "task.tolerations[0].operatr=Equal",
            "additional properties 'operatr' not allowed",
        ),
        (
            "task.jobLabels.team=7",
            "at '/task/jobLabels/team': got number, want string",
        ),
        (
            "task.runner.memoryMonitor.softLimitPercent=120",
            "maximum: got 120, want 100",
        ),
        (
            "agent.metrics.port=80",
            "at '/agent/metrics/port': minimum: got 80, want 1,024",
        ),
    ];
    for (set, want) in cases {
        let err = try_render(&["--set", set])
            .err()
            .unwrap_or_else(|| panic!("{set} was accepted"));
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
        assert!(err.contains(want), "{set}: want {want:?} in:\n{err}");
    }
}

#[test]
fn debug_accepts_the_spellings_users_type() {
    for (set, want) in [
        ("agent.debug=true", "1"),
        ("agent.debug=1", "1"),
        ("agent.debug=false", "0"),
        ("agent.debug=0", "0"),
    ] {
        let r = render(&["--set", set]);
        let controller = super::container(r.controller_pod(), "controller");
        assert_eq!(
            super::env(controller, "SCALR_AGENT_DEBUG"),
            Some(want),
            "{set}"
        );
    }
    let r = render(&["--set-string", "agent.debug=1"]);
    let worker = super::container(r.task_pod(), "worker");
    assert_eq!(super::env(worker, "SCALR_AGENT_DEBUG"), Some("1"));
}

#[test]
fn image_tags_keep_their_digits() {
    for (flag, tag, image) in [
        (
            "--set",
            "agent.image.tag=110",
            "scalr-agent/scalr-agent:110",
        ),
        (
            "--set",
            "agent.image.tag=1.10",
            "scalr-agent/scalr-agent:1.10",
        ),
    ] {
        let r = render(&[flag, tag]);
        assert_eq!(
            super::container(r.controller_pod(), "controller")["image"],
            image
        );
        assert_eq!(super::container(r.task_pod(), "worker")["image"], image);
    }
    let err = try_render(&["--set-json", "agent.image.tag=1.5"])
        .err()
        .expect("a float tag is refused");
    assert!(
        err.contains("at '/agent/image/tag': got number, want integer or string"),
        "{err}"
    );
}

#[test]
fn grace_period_must_leave_the_worker_time_to_push_results() {
    let err = try_render(&["--set", "task.graceShutdownTimeoutSeconds=360"])
        .err()
        .expect("refused");
    assert!(
        err.contains("task.terminationGracePeriodSeconds (360) must be greater than task.graceShutdownTimeoutSeconds (360)"),
        "{err}"
    );
}

#[test]
fn kube_version_constraint_admits_1_33_and_managed_suffixes_only() {
    for (version, accepted) in [
        ("1.32.9", false),
        ("1.33.0", true),
        ("1.33.2-gke.1000", true),
        ("1.37.1", true),
    ] {
        let result = try_render(&["--kube-version", version]);
        match (accepted, result) {
            (true, Err(e)) => panic!("{version} refused: {e}"),
            (false, Ok(_)) => panic!("{version} accepted"),
            (false, Err(e)) => assert!(e.contains("kubeVersion"), "{version}: {e}"),
            (true, Ok(_)) => {}
        }
    }
}

const POOL_TOKEN: &str = "pool-token-SENTINEL-91c4e7";
const MIRROR_TOKEN: &str = "mirror-token-SENTINEL-5d20aa";

#[test]
fn secret_values_appear_only_in_secrets_and_never_in_notes() {
    let values = format!(
        "agent: {{url: 'https://acme.scalr.io', token: {POOL_TOKEN}}}\n\
         task: {{providerNetworkMirrors: [{{url: 'https://m.example.com/', token: {MIRROR_TOKEN}}}]}}\n"
    );
    let file = values_file(&values);
    let path = file.path().to_str().expect("UTF-8 temp path");
    let r = render(&["-f", path]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secrets = [
        POOL_TOKEN.to_owned(),
        MIRROR_TOKEN.to_owned(),
        b64(POOL_TOKEN),
        b64(MIRROR_TOKEN),
    ];
    let mut in_secrets = String::new();
    for object in &r.objects {
        if object["kind"] == "Secret" {
            for value in object["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| v)
            {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.as_str().expect("Secret data is base64 text"))
                    .expect("Secret data decodes");
                in_secrets.push_str(&String::from_utf8_lossy(&bytes));
            }
            continue;
        }
        let text = serde_json::to_string(object).expect("serialize");
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} {} holds a secret",
                object["kind"],
                object["metadata"]["name"]
            );
        }
    }
    assert!(
        in_secrets.contains(POOL_TOKEN) && in_secrets.contains(MIRROR_TOKEN),
        "each token is in a Secret"
    );
    let token_secret = r.named("Secret", "scalr-agent-token");
    assert_eq!(token_secret["data"]["token"], Value::from(b64(POOL_TOKEN)));

    let notes = install_notes(&["-f", path]);
    assert!(
        notes.contains("kubectl get jobs,pods"),
        "NOTES tell how to see task pods:\n{notes}"
    );
    for s in &secrets {
        assert!(!notes.contains(s.as_str()), "NOTES show a secret:\n{notes}");
    }
}

#[test]
fn notes_warn_about_what_is_missing_and_say_what_to_do() {
    let bare = install_notes(&[]);
    assert!(bare.contains("WARNING: agent.url is not set"), "{bare}");
    assert!(
        bare.contains("--set agent.url=https://<account>.scalr.io"),
        "{bare}"
    );
    assert!(bare.contains("WARNING: no agent pool token"), "{bare}");
    assert!(
        bare.contains("app.kubernetes.io/component=controller"),
        "{bare}"
    );
    assert!(bare.contains("app.kubernetes.io/component=task"), "{bare}");
    assert!(
        bare.contains("deploy/scalr-agent -- /usr/local/bin/scalr-agent check"),
        "{bare}"
    );

    let seed_command = install_notes(&["--set", "agent.token=<agent-pool-token>"]);
    assert!(
        seed_command.contains("WARNING: agent.url is not set"),
        "{seed_command}"
    );
    assert!(
        !seed_command.contains("no agent pool token"),
        "{seed_command}"
    );

    let ready = install_notes(&[
        "--set",
        "agent.url=https://acme.scalr.io",
        "--set",
        "agent.token=t",
    ]);
    assert!(!ready.contains("WARNING"), "{ready}");
    let existing = install_notes(&[
        "--set",
        "agent.url=https://acme.scalr.io",
        "--set",
        "agent.tokenExistingSecret.name=pool",
    ]);
    assert!(!existing.contains("WARNING"), "{existing}");
    assert!(
        existing.contains(r#"key "token" of Secret "pool""#),
        "{existing}"
    );
}

/// The release notes, from a client-only dry-run install (no cluster involved).
fn install_notes(args: &[&str]) -> String {
    let out = tools::helm()
        .args(["install", RELEASE])
        .arg(chart_dir())
        .args([
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "--hide-secret",
        ])
        .args(args)
        .output()
        .expect("run helm install --dry-run=client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm install --dry-run=client failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout
        .find("NOTES:")
        .unwrap_or_else(|| panic!("no NOTES in:\n{stdout}"));
    stdout[start..].to_owned()
}
