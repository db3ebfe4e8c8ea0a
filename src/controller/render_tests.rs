//! Render tests on the chart's template: what is printed, what is chosen, what never appears.

use base64::Engine as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret as K8sSecret;

use super::*;

const FIXTURE: &str = include_str!("../../tests/fixtures/agent-task-template.yaml");

fn cmd(output: OutputFormat) -> RenderCmd {
    RenderCmd {
        template: Some("tpl.yaml".into()),
        name: None,
        task_id: "task-sample0000000001".into(),
        run_id: "run-sample0000000001".into(),
        stage: "plan".into(),
        workspace_id: "ws-sample0000000001".into(),
        environment_id: "env-sample0000000001".into(),
        output,
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn assert_no_token(text: &str) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(SAMPLE_TOKEN);
    assert!(
        !text.contains(SAMPLE_TOKEN) && !text.contains(&b64),
        "{text}"
    );
}

#[test]
fn yaml_output_is_the_job_then_the_redacted_secret() {
    let out =
        render(FIXTURE, &cmd(OutputFormat::Yaml), &RenderContext::default()).expect("renders");
    assert_no_token(&out.text);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let docs = yaml_docs(&out.text);
    assert_eq!(docs.len(), 2, "{}", out.text);
    let job: Job = serde_json::from_value(docs[0].clone()).expect("a Job");
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("prod-scalr-agent-run-sample0000000001-plan")
    );
    assert_eq!(job.metadata.namespace.as_deref(), Some("default"));
    let labels = job.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["app.kubernetes.io/instance"], "prod");
    assert_eq!(labels["scalr.io/controller"], "scalr-agent-render");
    let secret: K8sSecret = serde_json::from_value(docs[1].clone()).expect("a Secret");
    assert_eq!(
        secret.metadata.name.as_deref(),
        Some("prod-scalr-agent-run-sample0000000001-plan-credentials")
    );
    assert!(secret.data.is_none());
    assert_eq!(
        secret
            .string_data
            .as_ref()
            .map(|d| d["task-token"].as_str()),
        Some("***")
    );
    assert!(
        out.text.starts_with("# The Job and credentials Secret"),
        "{}",
        out.text
    );
}

#[test]
fn json_output_is_a_list() {
    let ctx = RenderContext {
        namespace: Some("ci".into()),
        controller_id: Some("prod-scalr-agent-abc".into()),
        task_template: None,
    };
    let mut c = cmd(OutputFormat::Json);
    c.task_id = "task-custom".into();
    c.stage = "apply".into();
    let out = render(FIXTURE, &c, &ctx).expect("renders");
    assert_no_token(&out.text);
    let list: Value = serde_json::from_str(&out.text).expect("json");
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items[0]["kind"], "Job");
    assert_eq!(items[0]["metadata"]["namespace"], "ci");
    assert_eq!(
        items[0]["metadata"]["name"],
        "prod-scalr-agent-run-sample0000000001-apply"
    );
    assert_eq!(
        items[0]["metadata"]["annotations"]["scalr.io/task-id"],
        "task-custom"
    );
    assert_eq!(
        items[0]["metadata"]["labels"]["scalr.io/controller"],
        "prod-scalr-agent-abc"
    );
    assert_eq!(items[1]["kind"], "Secret");
    assert_eq!(items[1]["stringData"]["task-token"], "***");
}

#[test]
fn the_template_is_picked_from_many_documents() {
    let manifest = format!(
        "---\n# Source: agent-job/templates/serviceaccount.yaml\napiVersion: v1\nkind: ServiceAccount\n\
         metadata:\n  name: prod-scalr-agent\n---\n# only a comment\n---\n{FIXTURE}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\ndata:\n  a: b\n"
    );
    let out = render(
        &manifest,
        &cmd(OutputFormat::Yaml),
        &RenderContext::default(),
    )
    .expect("renders");
    assert_eq!(yaml_docs(&out.text).len(), 2);
}

#[test]
fn choosing_among_several_templates_needs_a_name() {
    let second = FIXTURE.replace(
        "name: prod-scalr-agent-task-template",
        "name: other-task-template",
    );
    let manifest = format!("{FIXTURE}\n---\n{second}");
    let err = render(
        &manifest,
        &cmd(OutputFormat::Yaml),
        &RenderContext::default(),
    )
    .expect_err("ambiguous");
    assert!(
        matches!(&err, RenderError::SeveralTemplates { names, .. } if names.len() == 2),
        "{err:?}"
    );
    assert!(err.to_string().contains("choose one with --name"), "{err}");
    let mut c = cmd(OutputFormat::Json);
    c.name = Some("other-task-template".into());
    render(&manifest, &c, &RenderContext::default()).expect("chosen");
    c.name = Some("missing".into());
    let err = render(&manifest, &c, &RenderContext::default()).expect_err("missing");
    assert!(
        matches!(err, RenderError::TemplateNotFound { .. }),
        "{err:?}"
    );
}

#[test]
fn bad_inputs_say_what_is_wrong() {
    let no_template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n";
    let err = render(
        no_template,
        &cmd(OutputFormat::Yaml),
        &RenderContext::default(),
    )
    .expect_err("none");
    assert!(
        matches!(&err, RenderError::NoTemplate { kinds, .. } if kinds == &["ConfigMap"]),
        "{err:?}"
    );
    let broken = format!("{FIXTURE}\n---\nkind: [unclosed\n");
    let err =
        render(&broken, &cmd(OutputFormat::Yaml), &RenderContext::default()).expect_err("broken");
    assert!(
        matches!(err, RenderError::ParseManifest { document: 2, .. }),
        "{err:?}"
    );
    let invalid = FIXTURE.replace("restartPolicy: Never", "restartPolicy: Always");
    let err = render(
        &invalid,
        &cmd(OutputFormat::Yaml),
        &RenderContext::default(),
    )
    .expect_err("invalid");
    assert!(matches!(err, RenderError::Template(_)), "{err:?}");
    assert!(err.to_string().contains("set it to Never"), "{err}");
}

#[test]
fn json_manifests_and_lists_are_read() {
    let template: Value = serde_yaml_ng::from_str(FIXTURE).expect("yaml");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [template]});
    let out = render(
        &list.to_string(),
        &cmd(OutputFormat::Yaml),
        &RenderContext::default(),
    )
    .expect("renders");
    assert_no_token(&out.text);
}

#[test]
fn output_format_parses() {
    assert_eq!("yaml".parse::<OutputFormat>(), Ok(OutputFormat::Yaml));
    assert_eq!("json".parse::<OutputFormat>(), Ok(OutputFormat::Json));
    assert!("xml".parse::<OutputFormat>().is_err());
}
