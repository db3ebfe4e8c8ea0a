//! Tests of template parsing and validation, on the chart's rendered template and mutations of it.

use serde_json::{Value, json};

use super::*;

/// The chart's template as `helm template` renders it (tests/fixtures/agent-task-template.yaml).
pub(crate) fn chart_fixture() -> Value {
    serde_yaml_ng::from_str(include_str!(
        "../../tests/fixtures/agent-task-template.yaml"
    ))
    .expect("fixture is YAML")
}

fn pod_spec(v: &mut Value) -> &mut Value {
    v.pointer_mut("/spec/jobTemplate/spec/template/spec")
        .expect("pod spec")
}

fn container<'a>(v: &'a mut Value, name: &str) -> &'a mut Value {
    pod_spec(v)["containers"]
        .as_array_mut()
        .expect("containers")
        .iter_mut()
        .find(|c| c["name"] == name)
        .expect("container")
}

#[test]
fn the_chart_template_is_valid() {
    let t = AgentTaskTemplate::from_value(&chart_fixture()).expect("valid");
    assert_eq!(t.name(), "prod-scalr-agent-task-template");
    assert_eq!(t.basename(), "prod-scalr-agent");
    assert_eq!(t.instance(), Some("prod"));
    assert!(t.warnings().is_empty(), "{:?}", t.warnings());
}

#[test]
fn problems_are_found_and_named() {
    type Mutation = fn(&mut Value);
    let cases: Vec<(&str, Mutation, TemplateProblem)> = vec![
        (
            "wrong kind",
            |v| v["kind"] = json!("ConfigMap"),
            TemplateProblem::NotAnAgentTaskTemplate {
                found: "scalr.io/v1 ConfigMap".into(),
            },
        ),
        (
            "wrong group",
            |v| v["apiVersion"] = json!("example.com/v1"),
            TemplateProblem::NotAnAgentTaskTemplate {
                found: "example.com/v1 AgentTaskTemplate".into(),
            },
        ),
        (
            "no spec",
            |v| {
                v.as_object_mut().expect("object").remove("spec");
            },
            TemplateProblem::MissingField { path: "spec" },
        ),
        (
            "no jobTemplate",
            |v| {
                v["spec"]
                    .as_object_mut()
                    .expect("spec")
                    .remove("jobTemplate");
            },
            TemplateProblem::MissingField {
                path: "spec.jobTemplate",
            },
        ),
        (
            "no job spec",
            |v| {
                v["spec"]["jobTemplate"]
                    .as_object_mut()
                    .expect("jt")
                    .remove("spec");
            },
            TemplateProblem::MissingField {
                path: "spec.jobTemplate.spec",
            },
        ),
        (
            "no install",
            |v| pod_spec(v)["initContainers"] = json!([]),
            TemplateProblem::MissingInitContainer { name: "install" },
        ),
        (
            "runner renamed",
            |v| container(v, "runner")["name"] = json!("terraform"),
            TemplateProblem::MissingContainer { name: "runner" },
        ),
        (
            "worker removed",
            |v| {
                pod_spec(v)["containers"]
                    .as_array_mut()
                    .expect("containers")
                    .retain(|c| c["name"] != "worker")
            },
            TemplateProblem::MissingContainer { name: "worker" },
        ),
        (
            "restart on failure",
            |v| pod_spec(v)["restartPolicy"] = json!("OnFailure"),
            TemplateProblem::RestartPolicyNotNever {
                found: Some("OnFailure".into()),
            },
        ),
        (
            "restart policy unset",
            |v| {
                pod_spec(v)
                    .as_object_mut()
                    .expect("pod")
                    .remove("restartPolicy");
            },
            TemplateProblem::RestartPolicyNotNever { found: None },
        ),
        (
            "runner env from a Secret",
            |v| {
                container(v, "runner")["env"]
                    .as_array_mut()
                    .expect("env")
                    .push(json!({"name": "AWS_SECRET_ACCESS_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "aws", "key": "secret"}}}))
            },
            TemplateProblem::RunnerGetsSecret {
                detail: "env AWS_SECRET_ACCESS_KEY from Secret aws".into(),
            },
        ),
        (
            "runner envFrom a Secret",
            |v| container(v, "runner")["envFrom"] = json!([{"secretRef": {"name": "all-keys"}}]),
            TemplateProblem::RunnerGetsSecret {
                detail: "envFrom Secret all-keys".into(),
            },
        ),
        (
            "runner mounts a Secret volume",
            |v| {
                pod_spec(v)["volumes"]
                    .as_array_mut()
                    .expect("volumes")
                    .push(json!({"name": "keys", "secret": {"secretName": "ssh-keys"}}));
                container(v, "runner")["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(json!({"name": "keys", "mountPath": "/keys"}));
            },
            TemplateProblem::RunnerGetsSecret {
                detail: "volume keys (Secret ssh-keys) at /keys".into(),
            },
        ),
        (
            "runner mounts a service-account token",
            |v| {
                pod_spec(v)["volumes"].as_array_mut().expect("volumes").push(json!({
                    "name": "sa", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}
                }));
                container(v, "runner")["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(json!({"name": "sa", "mountPath": "/var/run/sa"}));
            },
            TemplateProblem::RunnerGetsSecret {
                detail: "projected volume sa (service-account token) at /var/run/sa".into(),
            },
        ),
        (
            "a volume named credentials",
            |v| {
                pod_spec(v)["volumes"]
                    .as_array_mut()
                    .expect("volumes")
                    .push(json!({"name": "credentials", "emptyDir": {}}))
            },
            TemplateProblem::ReservedVolume {
                name: "credentials",
            },
        ),
        (
            "worker mounts over the token path",
            |v| {
                container(v, "worker")["volumeMounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(json!({"name": "data", "mountPath": "/var/run/secrets"}))
            },
            TemplateProblem::MountPathTaken {
                container: "worker",
                path: "/var/run/secrets/scalr-agent",
            },
        ),
    ];
    for (what, mutate, want) in cases {
        let mut v = chart_fixture();
        mutate(&mut v);
        let err = AgentTaskTemplate::from_value(&v).expect_err(what);
        assert_eq!(err.problem, want, "{what}");
        assert_eq!(
            err.template, "prod-scalr-agent-task-template",
            "{what}: names the template"
        );
    }
}

#[test]
fn what_the_worker_may_have_is_accepted() {
    let mut v = chart_fixture();
    // The worker may read Secrets (the chart's provider mirrors), and run another command.
    container(&mut v, "worker")["env"]
        .as_array_mut()
        .expect("env")
        .push(json!({"name": "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
            "valueFrom": {"secretKeyRef": {"name": "mirrors", "key": "mirrors.json"}}}));
    container(&mut v, "worker")["command"] = json!(["/bin/custom-worker"]);
    // A sidecar with a Secret is the user's business.
    pod_spec(&mut v)["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "vault-agent", "image": "vault:1",
            "envFrom": [{"secretRef": {"name": "vault"}}]}));
    AgentTaskTemplate::from_value(&v).expect("valid");
}

#[test]
fn malformed_parts_are_located() {
    let mut v = chart_fixture();
    container(&mut v, "worker")["ports"] = json!("8080");
    let err = AgentTaskTemplate::from_value(&v).expect_err("malformed");
    match &err.problem {
        TemplateProblem::Malformed { path, cause } => {
            assert_eq!(
                path,
                "spec.jobTemplate.spec.template.spec.containers[1] (worker)"
            );
            assert!(cause.contains("invalid type"), "{cause}");
        }
        other => panic!("{other:?}"),
    }
    let mut v = chart_fixture();
    v["spec"]["jobTemplate"]["spec"]["backoffLimit"] = json!("one");
    let err = AgentTaskTemplate::from_value(&v).expect_err("malformed");
    assert!(
        matches!(&err.problem, TemplateProblem::Malformed { path, .. } if path == "spec.jobTemplate.spec"),
        "{err:?}"
    );
    let mut v = chart_fixture();
    v["spec"]["basename"] = json!(5);
    let err = AgentTaskTemplate::from_value(&v).expect_err("malformed");
    assert!(
        matches!(&err.problem, TemplateProblem::Malformed { path, .. } if path == "spec.basename"),
        "{err:?}"
    );
}

#[test]
fn unknown_fields_come_back_as_warnings() {
    let mut v = chart_fixture();
    container(&mut v, "runner")["resourcez"] = json!({"limits": {"memory": "1Gi"}});
    pod_spec(&mut v)["nodeSelectr"] = json!({"pool": "runs"});
    pod_spec(&mut v)["priorityClassName"] = Value::Null;
    let t = AgentTaskTemplate::from_value(&v).expect("valid");
    let w = t.warnings().join("\n");
    assert!(
        w.contains("spec.jobTemplate.spec.template.spec.containers[0].resourcez is not a field"),
        "{w}"
    );
    assert!(
        w.contains("spec.jobTemplate.spec.template.spec.nodeSelectr"),
        "{w}"
    );
    assert_eq!(t.warnings().len(), 2, "{w}");
}

#[test]
fn messages_say_what_to_do() {
    let mut v = chart_fixture();
    pod_spec(&mut v)["restartPolicy"] = json!("OnFailure");
    let text = AgentTaskTemplate::from_value(&v)
        .expect_err("invalid")
        .to_string();
    assert_eq!(
        text,
        "AgentTaskTemplate prod-scalr-agent-task-template: \
         spec.jobTemplate.spec.template.spec.restartPolicy is OnFailure; set it to Never: a \
         restarted task container would run terraform twice"
    );
}

#[test]
fn basename_defaults_when_absent_or_blank() {
    for basename in [Value::Null, json!("  ")] {
        let mut v = chart_fixture();
        v["spec"]["basename"] = basename;
        let t = AgentTaskTemplate::from_value(&v).expect("valid");
        assert_eq!(t.basename(), DEFAULT_BASENAME);
    }
}
