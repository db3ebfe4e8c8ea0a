//! Label and annotation keys, fixed values and the contract paths between controller and worker, in
//! one place.
//!
//! Pure constants and two small readers; no thread. The Job builder writes these keys, the watches
//! select on them ([`task_selector`]), the supervisor and the limiter read a Job's task back through
//! [`task_id_of`]. The worker reads the environment variables and the token file named here.
//!
//! Labels hold values shortened and hashed to stay valid (see [`super::naming::label_value`]); the
//! annotations with the same keys hold the full, unaltered values, so a task id is always recoverable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The platform task id (label: possibly hashed; annotation: exact).
pub const TASK_ID: &str = "scalr.io/task-id";
/// The run the task belongs to.
pub const RUN_ID: &str = "scalr.io/run-id";
/// The run stage: plan, apply, policy…
pub const STAGE: &str = "scalr.io/stage";
/// The workspace of the run.
pub const WORKSPACE_ID: &str = "scalr.io/workspace-id";
/// The environment of the run (annotation only).
pub const ENVIRONMENT_ID: &str = "scalr.io/environment-id";
/// The platform's attempt number for the task (annotation only): a re-offered task has a new attempt
/// and a new task token, so an existing Job of an older attempt holds a fenced token.
pub const ATTEMPT: &str = "scalr.io/attempt";
/// The agent name of the controller replica that launched the Job.
pub const CONTROLLER: &str = "scalr.io/controller";

/// `app.kubernetes.io/name`; the chart sets it, we set it when the template does not.
pub const APP_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the Helm release. Watches select on it.
pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`, always [`COMPONENT_TASK`] on what the controller creates.
pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`, always [`MANAGED_BY_VALUE`] on what the controller creates
/// (the chart's template says `Helm`, but Helm never sees these Jobs).
pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Value of [`APP_NAME`] when the template has none.
pub const APP_NAME_VALUE: &str = "scalr-agent";
/// Value of [`APP_COMPONENT`] on task Jobs, pods and Secrets.
pub const COMPONENT_TASK: &str = "task";
/// Value of [`APP_MANAGED_BY`] on task Jobs, pods and Secrets.
pub const MANAGED_BY_VALUE: &str = "scalr-agent";

/// Name of the init container that copies the binary into the shared volume.
pub const INSTALL_CONTAINER: &str = "install";
/// Name of the container that runs terraform through `exec-loop`; it must get no credentials.
pub const RUNNER_CONTAINER: &str = "runner";
/// Name of the container that runs `scalr-agent worker`; the only one that gets the task token.
pub const WORKER_CONTAINER: &str = "worker";

/// Name of the credentials volume the controller adds to every task pod.
pub const CREDENTIALS_VOLUME: &str = "credentials";
/// Where the worker finds its credentials (read-only).
pub const CREDENTIALS_MOUNT_PATH: &str = "/var/run/secrets/scalr-agent";
/// Key of the task token in the credentials Secret (and file name under the mount path).
pub const TASK_TOKEN_KEY: &str = "task-token";
/// Suffix of the credentials Secret's name: `<job>-credentials`.
pub const CREDENTIALS_SUFFIX: &str = "-credentials";

/// Environment of the worker container: the task identity and where its token is.
pub const ENV_TASK_ID: &str = "SCALR_AGENT_TASK_ID";
/// The run id.
pub const ENV_RUN_ID: &str = "SCALR_AGENT_RUN_ID";
/// The run stage.
pub const ENV_TASK_STAGE: &str = "SCALR_AGENT_TASK_STAGE";
/// The workspace id.
pub const ENV_WORKSPACE_ID: &str = "SCALR_AGENT_WORKSPACE_ID";
/// The environment id.
pub const ENV_ENVIRONMENT_ID: &str = "SCALR_AGENT_ENVIRONMENT_ID";
/// The platform's attempt number.
pub const ENV_TASK_ATTEMPT: &str = "SCALR_AGENT_TASK_ATTEMPT";
/// Path of the task token file: `/var/run/secrets/scalr-agent/task-token`.
pub const ENV_TASK_TOKEN_FILE: &str = "SCALR_AGENT_TASK_TOKEN_FILE";

/// The full path of the task token file inside the worker container.
pub fn task_token_path() -> String {
    format!("{CREDENTIALS_MOUNT_PATH}/{TASK_TOKEN_KEY}")
}

/// The equality label selector of this release's task Jobs, pods and Secrets, for list and watch.
pub fn task_selector(instance: &str) -> String {
    format!(
        "{APP_MANAGED_BY}={MANAGED_BY_VALUE},{APP_COMPONENT}={COMPONENT_TASK},{APP_INSTANCE}={}",
        super::naming::label_value(instance)
    )
}

/// The task id of an object the controller created: the exact annotation, else the label.
pub fn task_id_of(meta: &ObjectMeta) -> Option<&str> {
    fn from(map: &Option<std::collections::BTreeMap<String, String>>) -> Option<&str> {
        map.as_ref()
            .and_then(|m| m.get(TASK_ID))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    from(&meta.annotations).or_else(|| from(&meta.labels))
}

/// The task an object of the controller was made for, from its exact annotations; `None` when the
/// task id is missing. Absent fields are empty; an absent attempt is 0.
pub fn identity_of(meta: &ObjectMeta) -> Option<crate::model::TaskIdentity> {
    let notes = meta.annotations.as_ref();
    let get = |key: &str| notes.and_then(|n| n.get(key)).cloned().unwrap_or_default();
    Some(crate::model::TaskIdentity {
        task_id: task_id_of(meta)?.to_string(),
        run_id: get(RUN_ID),
        stage: get(STAGE),
        workspace_id: get(WORKSPACE_ID),
        environment_id: get(ENVIRONMENT_ID),
        attempt: get(ATTEMPT).parse().unwrap_or(0),
    })
}

/// The controller named on an object (exact annotation, else label).
pub fn controller_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(CONTROLLER))
        .or_else(|| meta.labels.as_ref().and_then(|l| l.get(CONTROLLER)))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_names_managed_by_component_and_instance() {
        assert_eq!(
            task_selector("prod"),
            "app.kubernetes.io/managed-by=scalr-agent,app.kubernetes.io/component=task,\
             app.kubernetes.io/instance=prod"
        );
    }

    #[test]
    fn task_id_prefers_the_exact_annotation_over_the_label() {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "labels": {"scalr.io/task-id": "task-short-abc123"},
            "annotations": {"scalr.io/task-id": "task-the-full-id"}
        }))
        .expect("meta");
        assert_eq!(task_id_of(&meta), Some("task-the-full-id"));
        let label_only: ObjectMeta = serde_json::from_value(serde_json::json!({
            "labels": {"scalr.io/task-id": "task-1"}
        }))
        .expect("meta");
        assert_eq!(task_id_of(&label_only), Some("task-1"));
        assert_eq!(task_id_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn identity_and_controller_come_back_from_annotations() {
        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "labels": {"scalr.io/controller": "ctl-short"},
            "annotations": {"scalr.io/task-id": "task-1", "scalr.io/run-id": "run-1",
                            "scalr.io/stage": "plan", "scalr.io/attempt": "3",
                            "scalr.io/controller": "ctl-0"}
        }))
        .expect("meta");
        let id = identity_of(&meta).expect("identity");
        assert_eq!(
            (id.task_id.as_str(), id.attempt, id.stage.as_str()),
            ("task-1", 3, "plan")
        );
        assert_eq!(controller_of(&meta), Some("ctl-0"));
        assert_eq!(identity_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn token_path_is_under_the_mount() {
        assert_eq!(task_token_path(), "/var/run/secrets/scalr-agent/task-token");
    }
}
