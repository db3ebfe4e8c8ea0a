//! `scalr-agent render` as a user runs it: the chart's task template in, the Job and the redacted
//! Secret out, from a file or stdin, as YAML or JSON; errors say what to fix.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_scalr-agent");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/agent-task-template.yaml"
);

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SCALR_AGENT_NAME", "render-test-agent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn scalr-agent");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("run scalr-agent")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The rendered Secret must hold `***` and nothing else: no `data`, no token-looking value.
fn assert_secret_redacted(secret: &Value) {
    assert_eq!(secret["kind"], "Secret");
    assert!(secret.get("data").is_none(), "{secret}");
    let values: Vec<&Value> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .values()
        .collect();
    assert!(!values.is_empty());
    assert!(values.iter().all(|v| *v == "***"), "{secret}");
}

#[test]
fn renders_the_chart_template_as_yaml() {
    let out = run(
        &["--namespace", "ci", "render", "--template", FIXTURE],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    let job = &docs[0];
    assert_eq!(job["kind"], "Job");
    assert_eq!(
        job["metadata"]["name"],
        "prod-scalr-agent-run-sample0000000001-plan"
    );
    assert_eq!(job["metadata"]["namespace"], "ci");
    assert_eq!(
        job["metadata"]["labels"]["scalr.io/controller"],
        "render-test-agent"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let worker = pod["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "worker")
        .expect("worker");
    assert!(
        worker["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "credentials" && m["readOnly"] == true),
        "{worker}"
    );
    assert_secret_redacted(&docs[1]);
}

#[test]
fn renders_json_from_stdin_with_chosen_ids() {
    let template = std::fs::read_to_string(FIXTURE).expect("fixture");
    let out = run(
        &[
            "render",
            "--template",
            "-",
            "--output",
            "json",
            "--run-id",
            "run-ABC",
            "--stage",
            "apply",
        ],
        Some(&template),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"][0]["metadata"]["name"],
        "prod-scalr-agent-run-abc-apply"
    );
    assert_eq!(
        list["items"][0]["metadata"]["annotations"]["scalr.io/run-id"],
        "run-ABC"
    );
    assert_secret_redacted(&list["items"][1]);
}

#[test]
fn an_invalid_template_fails_with_what_to_fix() {
    let template = std::fs::read_to_string(FIXTURE)
        .expect("fixture")
        .replace("- name: install", "- name: setup");
    let out = run(&["render", "--template", "-"], Some(&template));
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no init container named \"install\"")
            && err.contains("restore it from the chart"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn a_missing_file_is_named() {
    let out = run(
        &["render", "--template", "/nonexistent/template.yaml"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/template.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_lists_render() {
    let out = run(&["--help"], None);
    assert!(stdout(&out).contains("  render "), "{}", stdout(&out));
}
