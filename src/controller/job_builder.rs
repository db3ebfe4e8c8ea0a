//! The Task→Job builder: a pure function from a validated template, a task and its token to the Job
//! and the credentials Secret the launcher creates.
//!
//! No thread, no I/O; the launcher calls [`build_task`] per acquired task and `render` calls it for a
//! sample task. The controller adds only what is per task — names, labels, annotations, the task's
//! identity in the worker's environment, the credentials volume (worker only) and
//! `automountServiceAccountToken: false` — and leaves everything else to the chart's template.
//! The Secret's `ownerReferences` are set by the launcher once the Job exists ([`owned_by`]), so the
//! Secret goes with its Job.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, PodTemplateSpec, Secret as K8sSecret, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::labels::*;
use super::naming::{job_name, label_value, secret_name};
use super::template::AgentTaskTemplate;
use crate::model::TaskIdentity;
use crate::secret::{MASK, Secret};

/// File mode of the token when the pod has an `fsGroup` (the chart sets 1000): owner root, readable by
/// the group the worker runs in, nobody else.
pub const TOKEN_MODE_WITH_FS_GROUP: i32 = 0o440;
/// File mode without an `fsGroup`: the file is root's, so it must be world-readable for a non-root
/// worker. Only the worker container mounts it, so no other container can see it either way.
pub const TOKEN_MODE_WITHOUT_FS_GROUP: i32 = 0o444;

/// What the builder needs to know about the controller that launches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchContext {
    /// Namespace of the Job and Secret.
    pub namespace: String,
    /// The Helm release (`app.kubernetes.io/instance`): the watches select this release's tasks by it.
    pub instance: String,
    /// The launching controller's agent name (`scalr.io/controller`).
    pub controller_id: String,
}

/// The objects for one task, ready to create.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltTask {
    /// The Job.
    pub job: Job,
    /// Its credentials Secret (create it with [`CredentialsSecret::as_k8s`]).
    pub secret: CredentialsSecret,
}

/// A credentials Secret. `Debug` shows its metadata and keys, never a value.
#[derive(Clone, PartialEq)]
pub struct CredentialsSecret(K8sSecret);

impl CredentialsSecret {
    /// The Secret's name, `<job>-credentials`.
    pub fn name(&self) -> &str {
        self.0.metadata.name.as_deref().unwrap_or_default()
    }

    /// The object to send to the API server (it holds the token: never log it).
    pub fn as_k8s(&self) -> &K8sSecret {
        &self.0
    }

    /// The same Secret with every value replaced by `***` in `stringData`: for printing.
    pub fn redacted(&self) -> K8sSecret {
        let mut shown = self.0.clone();
        let keys = shown.data.take().into_iter().flatten().map(|(k, _)| k);
        let string_data: BTreeMap<String, String> = keys
            .chain(
                shown
                    .string_data
                    .take()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k),
            )
            .map(|k| (k, MASK.to_string()))
            .collect();
        shown.string_data = Some(string_data);
        shown
    }

    /// Makes the Job the Secret's owner (see [`owned_by`]).
    pub fn set_owner(&mut self, job_name: &str, job_uid: &str) {
        owned_by(&mut self.0, job_name, job_uid);
    }
}

impl fmt::Debug for CredentialsSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.0.data.iter().flatten().map(|(k, _)| k).collect();
        f.debug_struct("CredentialsSecret")
            .field("metadata", &self.0.metadata)
            .field("keys", &keys)
            .field("values", &MASK)
            .finish()
    }
}

/// Why a Job could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The task lacks an id the Job name or the worker needs (a platform bug: report it).
    IncompleteTask {
        task_id: String,
        field: &'static str,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::IncompleteTask { task_id, field } => write!(
                f,
                "task {task_id:?} came from the platform without a {field}; cannot name its Job \
                 (a platform or protocol bug: report it with this task id)"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Builds the Job and the credentials Secret of one task.
pub fn build_task(
    template: &AgentTaskTemplate,
    task: &TaskIdentity,
    task_token: &Secret,
    ctx: &LaunchContext,
) -> Result<BuiltTask, BuildError> {
    for (field, value) in [
        ("task id", &task.task_id),
        ("run id", &task.run_id),
        ("stage", &task.stage),
    ] {
        if value.trim().is_empty() {
            return Err(BuildError::IncompleteTask {
                task_id: task.task_id.clone(),
                field,
            });
        }
    }
    let job_name = job_name(template.basename(), &task.run_id, &task.stage);
    let secret_name = secret_name(&job_name);
    let ours = task_labels(task, ctx);
    let notes = task_annotations(task, ctx);

    let source = &template.spec().job_template;
    let source_meta = source.metadata.clone().unwrap_or_default();
    let job_labels = merged_labels(source_meta.labels, &ours);
    let metadata = ObjectMeta {
        name: Some(job_name.clone()),
        namespace: Some(ctx.namespace.clone()),
        labels: Some(job_labels.clone()),
        annotations: Some(merged(source_meta.annotations, &notes)),
        ..ObjectMeta::default()
    };

    let mut spec = source
        .spec
        .clone()
        .expect("AgentTaskTemplate exists only validated: spec.jobTemplate.spec is present");
    let PodTemplateSpec {
        metadata: pod_meta,
        spec: pod_spec,
    } = &mut spec.template;
    let pod_meta = pod_meta.get_or_insert_with(ObjectMeta::default);
    pod_meta.labels = Some(merged_labels(pod_meta.labels.take(), &ours));
    pod_meta.annotations = Some(merged(pod_meta.annotations.take(), &notes));
    let pod = pod_spec
        .as_mut()
        .expect("AgentTaskTemplate exists only validated: the pod spec is present");
    pod.automount_service_account_token = Some(false);
    let has_fs_group = pod
        .security_context
        .as_ref()
        .is_some_and(|s| s.fs_group.is_some());
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: CREDENTIALS_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name.clone()),
            default_mode: Some(if has_fs_group {
                TOKEN_MODE_WITH_FS_GROUP
            } else {
                TOKEN_MODE_WITHOUT_FS_GROUP
            }),
            optional: Some(false),
            items: None,
        }),
        ..Volume::default()
    });
    let worker = pod
        .containers
        .iter_mut()
        .find(|c| c.name == WORKER_CONTAINER)
        .expect("AgentTaskTemplate exists only validated: the worker container is present");
    let env = worker_env(task);
    let worker_env_list = worker.env.get_or_insert_with(Vec::new);
    worker_env_list.retain(|e| !env.iter().any(|ours| ours.name == e.name));
    worker_env_list.extend(env);
    worker
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: CREDENTIALS_VOLUME.to_string(),
            mount_path: CREDENTIALS_MOUNT_PATH.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });

    let job = Job {
        metadata,
        spec: Some(spec),
        status: None,
    };
    let secret = K8sSecret {
        metadata: ObjectMeta {
            name: Some(secret_name),
            namespace: Some(ctx.namespace.clone()),
            labels: Some(job_labels),
            annotations: Some(notes),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            TASK_TOKEN_KEY.to_string(),
            ByteString(task_token.expose().as_bytes().to_vec()),
        )])),
        string_data: None,
    };
    Ok(BuiltTask {
        job,
        secret: CredentialsSecret(secret),
    })
}

/// The owner reference that ties a Secret to its Job, so garbage collection deletes it with the Job.
/// `blockOwnerDeletion` stays unset: setting it needs `update` on `jobs/finalizers`, which the
/// controller does not otherwise need.
pub fn owner_reference(job_name: &str, job_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".to_string(),
        kind: "Job".to_string(),
        name: job_name.to_string(),
        uid: job_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// Sets the Secret's only owner to the Job (idempotent).
pub fn owned_by(secret: &mut K8sSecret, job_name: &str, job_uid: &str) {
    secret.metadata.owner_references = Some(vec![owner_reference(job_name, job_uid)]);
}

/// The labels the controller puts on the Job, its pods and its Secret (values made valid).
pub fn task_labels(task: &TaskIdentity, ctx: &LaunchContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TASK_ID.to_string(), label_value(&task.task_id)),
        (RUN_ID.to_string(), label_value(&task.run_id)),
        (STAGE.to_string(), label_value(&task.stage)),
        (WORKSPACE_ID.to_string(), label_value(&task.workspace_id)),
        (CONTROLLER.to_string(), label_value(&ctx.controller_id)),
        (APP_INSTANCE.to_string(), label_value(&ctx.instance)),
        (APP_COMPONENT.to_string(), COMPONENT_TASK.to_string()),
        (APP_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
    ])
}

/// The annotations with the exact, unshortened values.
pub fn task_annotations(task: &TaskIdentity, ctx: &LaunchContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TASK_ID.to_string(), task.task_id.clone()),
        (RUN_ID.to_string(), task.run_id.clone()),
        (STAGE.to_string(), task.stage.clone()),
        (WORKSPACE_ID.to_string(), task.workspace_id.clone()),
        (ENVIRONMENT_ID.to_string(), task.environment_id.clone()),
        (ATTEMPT.to_string(), task.attempt.to_string()),
        (CONTROLLER.to_string(), ctx.controller_id.clone()),
    ])
}

/// The worker's view of its task: identity and where its token is.
fn worker_env(task: &TaskIdentity) -> Vec<EnvVar> {
    [
        (ENV_TASK_ID, task.task_id.clone()),
        (ENV_RUN_ID, task.run_id.clone()),
        (ENV_TASK_STAGE, task.stage.clone()),
        (ENV_WORKSPACE_ID, task.workspace_id.clone()),
        (ENV_ENVIRONMENT_ID, task.environment_id.clone()),
        (ENV_TASK_ATTEMPT, task.attempt.to_string()),
        (ENV_TASK_TOKEN_FILE, task_token_path()),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    })
    .collect()
}

/// `base` with `ours` laid over it.
fn merged(
    base: Option<BTreeMap<String, String>>,
    ours: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = base.unwrap_or_default();
    out.extend(ours.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Template labels with ours laid over them, and `app.kubernetes.io/name` when the template has none.
fn merged_labels(
    base: Option<BTreeMap<String, String>>,
    ours: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = merged(base, ours);
    out.entry(APP_NAME.to_string())
        .or_insert_with(|| APP_NAME_VALUE.to_string());
    out
}

#[cfg(test)]
#[path = "job_builder_tests.rs"]
mod tests;
