//! Tests of the Task→Job builder on the chart's rendered template.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::json;

use super::*;
use crate::controller::template::tests::chart_fixture;

const TOKEN: &str = "builder-test-task-token-0123456789";

fn identity() -> TaskIdentity {
    TaskIdentity {
        task_id: "task-v0ouj5re5mn1ggk8".into(),
        run_id: "run-v0ouj5re4ss0ab12".into(),
        stage: "plan".into(),
        workspace_id: "ws-v0ouj1abcdef".into(),
        environment_id: "env-v0ouj0xyz".into(),
        attempt: 2,
    }
}

fn ctx() -> LaunchContext {
    LaunchContext {
        namespace: "ci".into(),
        instance: "prod".into(),
        controller_id: "prod-scalr-agent-7d9c5b-abcde".into(),
    }
}

fn build(template: &serde_json::Value, task: &TaskIdentity) -> BuiltTask {
    let t = AgentTaskTemplate::from_value(template).expect("valid template");
    build_task(&t, task, &Secret::new(TOKEN), &ctx()).expect("builds")
}

fn pod(job: &Job) -> &PodSpec {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container<'a>(job: &'a Job, name: &str) -> &'a Container {
    let pod = pod(job);
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .expect("container")
}

fn env_of<'a>(c: &'a Container, name: &str) -> Vec<&'a str> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .filter_map(|e| e.value.as_deref())
        .collect()
}

#[test]
fn job_and_secret_are_named_and_placed() {
    let built = build(&chart_fixture(), &identity());
    assert_eq!(
        built.job.metadata.name.as_deref(),
        Some("prod-scalr-agent-run-v0ouj5re4ss0ab12-plan")
    );
    assert_eq!(built.job.metadata.namespace.as_deref(), Some("ci"));
    assert_eq!(
        built.secret.name(),
        "prod-scalr-agent-run-v0ouj5re4ss0ab12-plan-credentials"
    );
    assert_eq!(
        built.secret.as_k8s().metadata.namespace.as_deref(),
        Some("ci")
    );
}

#[test]
fn labels_go_on_job_pod_and_secret_and_ours_win() {
    let built = build(&chart_fixture(), &identity());
    let want = [
        ("scalr.io/task-id", "task-v0ouj5re5mn1ggk8"),
        ("scalr.io/run-id", "run-v0ouj5re4ss0ab12"),
        ("scalr.io/stage", "plan"),
        ("scalr.io/workspace-id", "ws-v0ouj1abcdef"),
        ("scalr.io/controller", "prod-scalr-agent-7d9c5b-abcde"),
        ("app.kubernetes.io/name", "scalr-agent"),
        ("app.kubernetes.io/instance", "prod"),
        ("app.kubernetes.io/component", "task"),
        // The template says Helm; Helm never sees these Jobs.
        ("app.kubernetes.io/managed-by", "scalr-agent"),
        // Template labels are kept.
        ("helm.sh/chart", "agent-job-0.1.0"),
    ];
    let pod_meta = built
        .job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .expect("pod metadata");
    let secret_meta = &built.secret.as_k8s().metadata;
    for (what, labels) in [
        ("job", built.job.metadata.labels.as_ref()),
        ("pod", pod_meta.labels.as_ref()),
        ("secret", secret_meta.labels.as_ref()),
    ] {
        let labels = labels.expect("labels");
        for (k, v) in want {
            assert_eq!(
                labels.get(k).map(String::as_str),
                Some(v),
                "{what} label {k}"
            );
        }
    }
    // Template pod annotations are kept beside ours.
    let notes = pod_meta.annotations.as_ref().expect("annotations");
    assert_eq!(
        notes
            .get("kubectl.kubernetes.io/default-container")
            .map(String::as_str),
        Some("worker")
    );
    assert_eq!(notes.get("scalr.io/attempt").map(String::as_str), Some("2"));
}

#[test]
fn long_or_odd_ids_are_hashed_in_labels_and_exact_in_annotations() {
    let mut task = identity();
    task.task_id = format!("task-{}", "a".repeat(80));
    task.workspace_id = "ws with spaces".into();
    let built = build(&chart_fixture(), &task);
    let labels = built.job.metadata.labels.as_ref().expect("labels");
    let notes = built
        .job
        .metadata
        .annotations
        .as_ref()
        .expect("annotations");
    let label = &labels["scalr.io/task-id"];
    assert!(
        crate::controller::naming::is_label_value(label) && label.len() <= 63,
        "{label}"
    );
    assert_eq!(notes["scalr.io/task-id"], task.task_id);
    assert_eq!(notes["scalr.io/workspace-id"], "ws with spaces");
    assert_eq!(
        crate::controller::labels::task_id_of(&built.job.metadata),
        Some(task.task_id.as_str())
    );
}

#[test]
fn only_the_worker_gets_the_credentials_and_the_identity() {
    let built = build(&chart_fixture(), &identity());
    let pod = pod(&built.job);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "credentials")
        .expect("credentials volume");
    let source = volume.secret.as_ref().expect("secret volume");
    assert_eq!(source.secret_name.as_deref(), Some(built.secret.name()));
    // The chart sets fsGroup, so the token is group-readable only.
    assert_eq!(source.default_mode, Some(0o440));
    let worker = container(&built.job, "worker");
    let mount = worker
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "credentials")
        .expect("worker mounts credentials");
    assert_eq!(mount.mount_path, "/var/run/secrets/scalr-agent");
    assert_eq!(mount.read_only, Some(true));
    for (var, value) in [
        ("SCALR_AGENT_TASK_ID", "task-v0ouj5re5mn1ggk8"),
        ("SCALR_AGENT_RUN_ID", "run-v0ouj5re4ss0ab12"),
        ("SCALR_AGENT_TASK_STAGE", "plan"),
        ("SCALR_AGENT_WORKSPACE_ID", "ws-v0ouj1abcdef"),
        ("SCALR_AGENT_ENVIRONMENT_ID", "env-v0ouj0xyz"),
        ("SCALR_AGENT_TASK_ATTEMPT", "2"),
        (
            "SCALR_AGENT_TASK_TOKEN_FILE",
            "/var/run/secrets/scalr-agent/task-token",
        ),
    ] {
        assert_eq!(env_of(worker, var), vec![value], "worker {var}");
    }
    // Template env stays.
    assert_eq!(
        env_of(worker, "SCALR_URL"),
        vec!["https://example.scalr.io"]
    );
    for name in ["runner", "install"] {
        let c = container(&built.job, name);
        assert!(
            !c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "credentials"),
            "{name} must not mount credentials"
        );
        assert!(
            !c.env
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("SCALR_AGENT_TASK")),
            "{name} must not get the task identity"
        );
    }
}

#[test]
fn template_values_of_our_variables_are_replaced_not_duplicated() {
    let mut v = chart_fixture();
    let worker = v
        .pointer_mut("/spec/jobTemplate/spec/template/spec/containers/1")
        .expect("worker");
    assert_eq!(worker["name"], "worker");
    worker["env"]
        .as_array_mut()
        .expect("env")
        .push(json!({"name": "SCALR_AGENT_TASK_ID", "value": "from-template"}));
    v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["automountServiceAccountToken"] =
        json!(true);
    let built = build(&v, &identity());
    assert_eq!(
        env_of(container(&built.job, "worker"), "SCALR_AGENT_TASK_ID"),
        vec!["task-v0ouj5re5mn1ggk8"]
    );
    assert_eq!(pod(&built.job).automount_service_account_token, Some(false));
}

#[test]
fn token_mode_is_world_readable_only_without_fs_group() {
    let mut v = chart_fixture();
    v["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"] =
        json!({"runAsUser": 1000});
    let built = build(&v, &identity());
    let mode = pod(&built.job)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "credentials")
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.default_mode);
    assert_eq!(mode, Some(0o444));
}

#[test]
fn secret_holds_the_token_and_never_shows_it() {
    let built = build(&chart_fixture(), &identity());
    let secret = built.secret.as_k8s();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret.immutable, Some(true));
    let data = secret.data.as_ref().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data["task-token"].0, TOKEN.as_bytes());
    assert!(
        secret.metadata.owner_references.is_none(),
        "owner set by the launcher"
    );
    let shown = format!("{built:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(shown.contains("task-token"), "{shown}");
    let redacted = built.secret.redacted();
    assert!(redacted.data.is_none());
    assert_eq!(
        redacted
            .string_data
            .as_ref()
            .map(|d| d["task-token"].as_str()),
        Some("***")
    );
    let json = serde_json::to_string(&redacted).expect("json");
    assert!(
        !json.contains(TOKEN) && !json.contains(&base64_of(TOKEN)),
        "{json}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn owner_reference_ties_the_secret_to_its_job() {
    let mut built = build(&chart_fixture(), &identity());
    built.secret.set_owner("job-a", "uid-1");
    built.secret.set_owner("job-a", "uid-1");
    let refs = built
        .secret
        .as_k8s()
        .metadata
        .owner_references
        .clone()
        .expect("owners");
    assert_eq!(refs, vec![owner_reference("job-a", "uid-1")]);
    assert_eq!(refs[0].api_version, "batch/v1");
    assert_eq!(refs[0].kind, "Job");
}

#[test]
fn building_is_deterministic_and_round_trips() {
    let a = build(&chart_fixture(), &identity());
    let b = build(&chart_fixture(), &identity());
    assert_eq!(a, b);
    let json = serde_json::to_value(&a.job).expect("json");
    assert_eq!(json["apiVersion"], "batch/v1");
    assert_eq!(json["kind"], "Job");
    let back: Job = serde_json::from_value(json).expect("parses back");
    assert_eq!(back, a.job);
}

#[test]
fn incomplete_tasks_are_refused() {
    let t = AgentTaskTemplate::from_value(&chart_fixture()).expect("valid");
    for (field, blank) in [
        (
            "task id",
            (|i: &mut TaskIdentity| i.task_id.clear()) as fn(&mut TaskIdentity),
        ),
        ("run id", |i| i.run_id = " ".into()),
        ("stage", |i| i.stage.clear()),
    ] {
        let mut task = identity();
        blank(&mut task);
        let err = build_task(&t, &task, &Secret::new(TOKEN), &ctx()).expect_err(field);
        assert!(
            matches!(err, BuildError::IncompleteTask { field: f, .. } if f == field),
            "{err:?}"
        );
    }
}
