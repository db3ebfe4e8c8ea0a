//! The `AgentTaskTemplate` (group `scalr.io`): parsed from JSON, checked once, then trusted.
//!
//! Pure; no thread. The launcher (after reading the object from the cluster), `check` and `render`
//! turn a `serde_json::Value` into an [`AgentTaskTemplate`] with [`AgentTaskTemplate::from_value`].
//! Only a template that passed [`validate`] exists as that type, so the Job builder never sees a bad
//! one. Errors name the template, the path at fault and what to change; fields that Kubernetes 1.33
//! does not know (typos, or fields newer than the API we model) come back as warnings, because they
//! would silently vanish from every Job.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::batch::v1::{JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::labels::{
    APP_INSTANCE, CREDENTIALS_MOUNT_PATH, CREDENTIALS_VOLUME, INSTALL_CONTAINER, RUNNER_CONTAINER,
    WORKER_CONTAINER,
};

/// The API group of the template's CRD.
pub const GROUP: &str = "scalr.io";
/// The kind.
pub const KIND: &str = "AgentTaskTemplate";
/// Basename used when the template has none.
pub const DEFAULT_BASENAME: &str = "scalr-agent";
/// Where the pod spec is, for messages.
const POD_SPEC_PATH: &str = "spec.jobTemplate.spec.template.spec";

/// `spec` of an `AgentTaskTemplate`: a batch/v1 JobTemplateSpec and the Job name prefix.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskTemplateSpec {
    /// Prefix of Job names (`<basename>-<run-id>-<stage>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basename: Option<String>,
    /// The Job every task gets, before the controller adds names, labels and credentials.
    pub job_template: JobTemplateSpec,
}

/// A template that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentTaskTemplate {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    spec: AgentTaskTemplateSpec,
    warnings: Vec<String>,
}

impl AgentTaskTemplate {
    /// Parses and validates a whole `AgentTaskTemplate` object (as read from the API or a manifest).
    pub fn from_value(value: &Value) -> Result<Self, TemplateError> {
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string();
        let err = |problem| TemplateError {
            template: name.clone(),
            problem,
        };
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if kind != KIND || !api_version.starts_with(&format!("{GROUP}/")) {
            return Err(err(TemplateProblem::NotAnAgentTaskTemplate {
                found: format!("{} {}", api_version, kind).trim().to_string(),
            }));
        }
        let metadata: ObjectMeta = match value.get("metadata") {
            None | Some(Value::Null) => ObjectMeta::default(),
            Some(m) => serde_json::from_value(m.clone()).map_err(|e| {
                err(TemplateProblem::Malformed {
                    path: "metadata".into(),
                    cause: e.to_string(),
                })
            })?,
        };
        let spec = value
            .get("spec")
            .filter(|s| s.is_object())
            .ok_or_else(|| err(TemplateProblem::MissingField { path: "spec" }))?;
        let basename = match spec.get("basename") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(err(TemplateProblem::Malformed {
                    path: "spec.basename".into(),
                    cause: format!("expected a string, found {other}"),
                }));
            }
        };
        let raw_job = spec
            .get("jobTemplate")
            .filter(|j| j.is_object())
            .ok_or_else(|| {
                err(TemplateProblem::MissingField {
                    path: "spec.jobTemplate",
                })
            })?;
        let job_template: JobTemplateSpec =
            serde_json::from_value(raw_job.clone()).map_err(|e| {
                let (path, cause) =
                    locate_error(raw_job).unwrap_or(("spec.jobTemplate".into(), e.to_string()));
                err(TemplateProblem::Malformed { path, cause })
            })?;
        let mut warnings = Vec::new();
        let reparsed = serde_json::to_value(&job_template).unwrap_or(Value::Null);
        dropped_fields(raw_job, &reparsed, "spec.jobTemplate", &mut warnings);
        let warnings = warnings
            .into_iter()
            .map(|path| {
                format!(
                    "AgentTaskTemplate {name}: {path} is not a field of Kubernetes 1.33 and is left out \
                     of task Jobs; check its spelling"
                )
            })
            .collect();
        let mut template = Self::from_spec(
            name.clone(),
            AgentTaskTemplateSpec {
                basename,
                job_template,
            },
        )?;
        template.namespace = metadata.namespace;
        template.labels = metadata.labels.unwrap_or_default();
        template.warnings = warnings;
        Ok(template)
    }

    /// Validates an already typed spec (for a client that deserialized the object itself).
    pub fn from_spec(
        name: impl Into<String>,
        spec: AgentTaskTemplateSpec,
    ) -> Result<Self, TemplateError> {
        let name = name.into();
        validate(&spec).map_err(|problem| TemplateError {
            template: name.clone(),
            problem,
        })?;
        Ok(AgentTaskTemplate {
            name,
            namespace: None,
            labels: BTreeMap::new(),
            spec,
            warnings: Vec::new(),
        })
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object's namespace, when it said.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The validated spec.
    pub fn spec(&self) -> &AgentTaskTemplateSpec {
        &self.spec
    }

    /// The Job name prefix: `spec.basename`, else [`DEFAULT_BASENAME`].
    pub fn basename(&self) -> &str {
        match self.spec.basename.as_deref() {
            Some(b) if !b.trim().is_empty() => b,
            _ => DEFAULT_BASENAME,
        }
    }

    /// The Helm release of the template: `app.kubernetes.io/instance` on the object or on its
    /// jobTemplate. The controller selects its tasks by this when it is not configured otherwise.
    pub fn instance(&self) -> Option<&str> {
        self.labels
            .get(APP_INSTANCE)
            .map(String::as_str)
            .or_else(|| {
                self.spec
                    .job_template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref())
                    .and_then(|l| l.get(APP_INSTANCE))
                    .map(String::as_str)
            })
    }

    /// Fields of the manifest that Kubernetes 1.33 does not know (dropped from Jobs): log them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// A template the controller cannot use, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// The template's name.
    pub template: String,
    /// What is wrong.
    pub problem: TemplateProblem,
}

/// What is wrong with a template; each says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateProblem {
    /// The object is of another kind.
    NotAnAgentTaskTemplate { found: String },
    /// A required part is absent.
    MissingField { path: &'static str },
    /// A part does not parse as the Kubernetes type it should be.
    Malformed { path: String, cause: String },
    /// The pod lacks a container the task needs (`runner`, `worker`).
    MissingContainer { name: &'static str },
    /// The pod lacks the `install` init container.
    MissingInitContainer { name: &'static str },
    /// `restartPolicy` is not `Never`.
    RestartPolicyNotNever { found: Option<String> },
    /// The runner container is given a credential.
    RunnerGetsSecret { detail: String },
    /// A template volume uses the name the controller reserves.
    ReservedVolume { name: &'static str },
    /// The worker already mounts something where the controller mounts the token.
    MountPathTaken {
        container: &'static str,
        path: &'static str,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentTaskTemplate {}: {}", self.template, self.problem)
    }
}

impl std::error::Error for TemplateError {}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateProblem::NotAnAgentTaskTemplate { found } => write!(
                f,
                "the object is {found:?}, not an {KIND} of {GROUP}; point \
                 SCALR_AGENT_KUBERNETES_TASK_TEMPLATE (or --template) at the chart's task template"
            ),
            TemplateProblem::MissingField { path } => write!(
                f,
                "{path} is missing; the chart's task-template.yaml sets it: upgrade the release or \
                 restore the field"
            ),
            TemplateProblem::Malformed { path, cause } => write!(
                f,
                "{path} is not valid: {cause}; correct it in the chart values that produce it"
            ),
            TemplateProblem::MissingContainer { name } => write!(
                f,
                "no container named {name:?} in {POD_SPEC_PATH}.containers; every task pod needs the \
                 {name} container: restore it from the chart"
            ),
            TemplateProblem::MissingInitContainer { name } => write!(
                f,
                "no init container named {name:?} in {POD_SPEC_PATH}.initContainers; it copies \
                 scalr-agent into the runner's volume: restore it from the chart"
            ),
            TemplateProblem::RestartPolicyNotNever { found } => write!(
                f,
                "{POD_SPEC_PATH}.restartPolicy is {}; set it to Never: a restarted task container \
                 would run terraform twice",
                found.as_deref().unwrap_or("unset")
            ),
            TemplateProblem::RunnerGetsSecret { detail } => write!(
                f,
                "the runner container is given a credential ({detail}); the runner must get none \
                 (the worker hands each command what it needs): move it to the worker or remove it"
            ),
            TemplateProblem::ReservedVolume { name } => write!(
                f,
                "{POD_SPEC_PATH}.volumes has a volume named {name:?}, which the controller adds for \
                 the task token; rename that volume"
            ),
            TemplateProblem::MountPathTaken { container, path } => write!(
                f,
                "the {container} container already mounts something at {path}, where the controller \
                 mounts the task token; mount it elsewhere"
            ),
        }
    }
}

/// Checks what the controller relies on: a pod spec with `install`, `runner` and `worker`,
/// `restartPolicy: Never`, no credential for the runner, and room for the credentials volume.
pub fn validate(spec: &AgentTaskTemplateSpec) -> Result<(), TemplateProblem> {
    let job = spec
        .job_template
        .spec
        .as_ref()
        .ok_or(TemplateProblem::MissingField {
            path: "spec.jobTemplate.spec",
        })?;
    let pod = job
        .template
        .spec
        .as_ref()
        .ok_or(TemplateProblem::MissingField {
            path: "spec.jobTemplate.spec.template.spec",
        })?;
    let init = pod.init_containers.as_deref().unwrap_or_default();
    if !init.iter().any(|c| c.name == INSTALL_CONTAINER) {
        return Err(TemplateProblem::MissingInitContainer {
            name: INSTALL_CONTAINER,
        });
    }
    let find = |name: &'static str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .ok_or(TemplateProblem::MissingContainer { name })
    };
    let runner = find(RUNNER_CONTAINER)?;
    let worker = find(WORKER_CONTAINER)?;
    if pod.restart_policy.as_deref() != Some("Never") {
        return Err(TemplateProblem::RestartPolicyNotNever {
            found: pod.restart_policy.clone(),
        });
    }
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    if volumes.iter().any(|v| v.name == CREDENTIALS_VOLUME) {
        return Err(TemplateProblem::ReservedVolume {
            name: CREDENTIALS_VOLUME,
        });
    }
    let mounts_token_path = worker.volume_mounts.iter().flatten().any(|m| {
        let path = m.mount_path.trim_end_matches('/');
        path == CREDENTIALS_MOUNT_PATH
            || CREDENTIALS_MOUNT_PATH.starts_with(&format!("{path}/"))
            || path.starts_with(&format!("{CREDENTIALS_MOUNT_PATH}/"))
    });
    if mounts_token_path {
        return Err(TemplateProblem::MountPathTaken {
            container: WORKER_CONTAINER,
            path: CREDENTIALS_MOUNT_PATH,
        });
    }
    if let Some(detail) = credential_given_to(runner, volumes) {
        return Err(TemplateProblem::RunnerGetsSecret { detail });
    }
    Ok(())
}

/// The first credential a container gets from its spec: env from a Secret, envFrom a Secret, or a
/// mounted volume holding a Secret or a service-account token.
fn credential_given_to(container: &Container, volumes: &[Volume]) -> Option<String> {
    for env in container.env.iter().flatten() {
        if let Some(r) = env
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        {
            return Some(format!("env {} from Secret {}", env.name, r.name));
        }
    }
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.secret_ref {
            return Some(format!("envFrom Secret {}", r.name));
        }
    }
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
            continue;
        };
        if let Some(s) = &volume.secret {
            let secret = s.secret_name.as_deref().unwrap_or("?");
            return Some(format!(
                "volume {} (Secret {secret}) at {}",
                volume.name, mount.mount_path
            ));
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(s) = &source.secret {
                return Some(format!(
                    "projected volume {} (Secret {}) at {}",
                    volume.name, s.name, mount.mount_path
                ));
            }
            if source.service_account_token.is_some() {
                return Some(format!(
                    "projected volume {} (service-account token) at {}",
                    volume.name, mount.mount_path
                ));
            }
        }
    }
    None
}

/// When a jobTemplate fails to parse, finds the smallest part that fails: the metadata, one
/// container, one volume, the rest of the pod spec, the rest of the Job spec.
fn locate_error(job: &Value) -> Option<(String, String)> {
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    let base = "spec.jobTemplate";
    let mut candidates: Vec<(String, Result<(), String>)> = Vec::new();
    if let Some(m) = job.get("metadata") {
        candidates.push((format!("{base}.metadata"), check::<ObjectMeta>(m)));
    }
    let template = job.pointer("/spec/template");
    if let Some(m) = template.and_then(|t| t.get("metadata")) {
        candidates.push((
            format!("{base}.spec.template.metadata"),
            check::<ObjectMeta>(m),
        ));
    }
    if let Some(pod) = template.and_then(|t| t.get("spec")) {
        for list in ["initContainers", "containers"] {
            for (i, c) in pod
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                candidates.push((
                    format!("{POD_SPEC_PATH}.{list}[{i}] ({name})"),
                    check::<Container>(c),
                ));
            }
        }
        for (i, v) in pod
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
            candidates.push((
                format!("{POD_SPEC_PATH}.volumes[{i}] ({name})"),
                check::<Volume>(v),
            ));
        }
        let mut rest = pod.clone();
        if let Some(obj) = rest.as_object_mut() {
            for key in ["initContainers", "containers", "volumes"] {
                obj.remove(key);
            }
            obj.insert("containers".into(), Value::Array(Vec::new()));
        }
        candidates.push((POD_SPEC_PATH.to_string(), check::<PodSpec>(&rest)));
    }
    if let Some(spec) = job.get("spec") {
        let mut rest = spec.clone();
        if let Some(obj) = rest.as_object_mut() {
            obj.insert("template".into(), serde_json::json!({}));
        }
        candidates.push((format!("{base}.spec"), check::<JobSpec>(&rest)));
    }
    candidates
        .into_iter()
        .find_map(|(path, result)| result.err().map(|cause| (path, cause)))
}

/// Paths present (and not null) in `original` but absent after a round trip through the typed model.
fn dropped_fields(original: &Value, reparsed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, reparsed) {
        (Value::Object(o), Value::Object(r)) => {
            for (key, value) in o {
                if value.is_null() {
                    continue;
                }
                let child = format!("{path}.{key}");
                match r.get(key) {
                    None => out.push(child),
                    Some(rv) => dropped_fields(value, rv, &child, out),
                }
            }
        }
        (Value::Array(o), Value::Array(r)) => {
            for (i, (ov, rv)) in o.iter().zip(r).enumerate() {
                dropped_fields(ov, rv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
pub(crate) mod tests;
