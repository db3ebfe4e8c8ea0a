//! Reconciling with the platform: the pure comparison of this controller's Jobs with the tasks the
//! platform says it holds, and the pure janitor of orphaned credentials Secrets.
//!
//! The housekeeper runs both at start, after a re-registration, and periodically; it lists the Jobs
//! *before* it asks the platform for the held tasks, so a Job in the list was created after its
//! acquire and its task, if still held, is in the answer.
//! - A held task without a Job of its attempt gets one ([`Plan::launch`]; the limiter queues it).
//! - A held task with a cancel requested and no Job is confirmed at once ([`Plan::confirm_cancel`]).
//! - A Job of this controller whose task is not held at its attempt is looked up one by one
//!   ([`Plan::check`]): re-offered, finished or canceled tasks' Jobs go, unless the worker started.
//! - A credentials Secret without an owner gets its Job as owner if the Job of that task and attempt
//!   exists; else, once older than a grace period (a launch may be between its Secret and its Job),
//!   it is deleted ([`orphan_secrets`]): a token never outlives its Job for long, whatever crash came
//!   between the Secret and the Job.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret as K8sSecret;

use super::facts::job_is_terminal;
use super::labels::{CREDENTIALS_SUFFIX, controller_of, identity_of, task_id_of};
use super::launcher::{Existing, attempt_of, existing};
use super::naming::label_value;
use crate::model::{CancelRequested, TaskAcquired};
use crate::platform::HeldTask;

/// What a reconcile does.
#[derive(Debug, Default)]
pub struct Plan {
    /// Held tasks that need a Job.
    pub launch: Vec<TaskAcquired>,
    /// Cancels the platform lists for held tasks that have a Job.
    pub cancels: Vec<CancelRequested>,
    /// Held tasks with a cancel and no Job: confirm the cancel now. (task, attempt)
    pub confirm_cancel: Vec<(String, u32)>,
    /// This controller's unfinished Jobs whose task is not held at their attempt: (task, attempt).
    pub check: Vec<(String, u32)>,
    /// Held tasks with a Job whose worker the platform says started: (task, attempt).
    pub started: Vec<(String, u32)>,
}

fn mine(job: &Job, me: &str) -> bool {
    controller_of(&job.metadata).is_some_and(|c| c == me || c == label_value(me))
}

/// Compares the release's Jobs (listed first) with the tasks this agent holds.
pub fn plan(jobs: &[Job], held: &[HeldTask], me: &str) -> Plan {
    let mut out = Plan::default();
    let live: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect();
    for h in held {
        let identity = super::agent_api::identity(&h.task);
        let has_job = live
            .iter()
            .any(|j| existing(&j.metadata, &identity) == Existing::Same);
        match (h.task.cancel_requested, has_job) {
            (Some(mode), true) => out.cancels.push(CancelRequested {
                task_id: identity.task_id.clone(),
                mode: super::agent_api::cancel_mode(mode),
            }),
            (Some(_), false) => out
                .confirm_cancel
                .push((identity.task_id.clone(), identity.attempt)),
            (None, true) if h.task.status == crate::platform::TaskStatus::Running => out
                .started
                .push((identity.task_id.clone(), identity.attempt)),
            (None, true) => {}
            (None, false) => out.launch.push(TaskAcquired {
                identity,
                task_token: h.token.clone(),
            }),
        }
    }
    let held_at: BTreeSet<(&str, u32)> = held
        .iter()
        .map(|h| (h.task.id.as_str(), h.task.attempt))
        .collect();
    for job in live {
        if !mine(job, me) || job_is_terminal(job) {
            continue;
        }
        let Some(task) = task_id_of(&job.metadata) else {
            continue;
        };
        let attempt = attempt_of(&job.metadata);
        if !held_at.contains(&(task, attempt)) {
            out.check.push((task.to_string(), attempt));
        }
    }
    out
}

/// What to do about an ownerless credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretAction {
    /// Its Job exists: make it the owner.
    SetOwner {
        secret: String,
        job: String,
        job_uid: String,
    },
    /// No Job of its task and attempt: delete it.
    Delete { secret: String, uid: String },
}

/// What to do about the ownerless credentials Secrets this controller should handle (its own, or
/// those of controllers without a live Lease, `live`; never those of tasks it is `launching`): own
/// them by their Job, or delete them once older than `grace`.
pub fn orphan_secrets(
    secrets: &[K8sSecret],
    jobs: &[Job],
    me: &str,
    live: &BTreeSet<String>,
    launching: &dyn Fn(&str) -> bool,
    now: Timestamp,
    grace: Duration,
) -> Vec<SecretAction> {
    let mut out = Vec::new();
    for secret in secrets {
        let meta = &secret.metadata;
        if meta.deletion_timestamp.is_some()
            || meta
                .owner_references
                .as_ref()
                .is_some_and(|o| !o.is_empty())
        {
            continue;
        }
        let old_enough = meta
            .creation_timestamp
            .as_ref()
            .and_then(|t| t.0.checked_add(grace).ok())
            .is_some_and(|until| until <= now);
        let whose = controller_of(meta).unwrap_or("");
        let ours = whose == me || whose == label_value(me) || !live.contains(whose);
        let (Some(name), Some(uid), Some(identity)) =
            (meta.name.as_ref(), meta.uid.as_ref(), identity_of(meta))
        else {
            continue;
        };
        if !ours || launching(&identity.task_id) {
            continue;
        }
        let job_name = name.strip_suffix(CREDENTIALS_SUFFIX).unwrap_or(name);
        let job = jobs.iter().find(|j| {
            j.metadata.name.as_deref() == Some(job_name)
                && j.metadata.deletion_timestamp.is_none()
                && existing(&j.metadata, &identity) == Existing::Same
        });
        // Owning is always right; deleting waits out a launch that may be between Secret and Job.
        match job {
            Some(j) => out.push(SecretAction::SetOwner {
                secret: name.clone(),
                job: job_name.to_string(),
                job_uid: j.metadata.uid.clone().unwrap_or_default(),
            }),
            None if old_enough => out.push(SecretAction::Delete {
                secret: name.clone(),
                uid: uid.clone(),
            }),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    use super::*;
    use crate::controller::fakes::summary;
    use crate::controller::labels::{ATTEMPT, CONTROLLER, TASK_ID};
    use crate::platform::{CancelMode, TaskStatus};
    use crate::secret::Secret;

    fn meta(name: &str, task: &str, attempt: u32, controller: &str, created: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(
                Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(created),
            )),
            annotations: Some(BTreeMap::from([
                (TASK_ID.to_string(), task.to_string()),
                (ATTEMPT.to_string(), attempt.to_string()),
                (CONTROLLER.to_string(), controller.to_string()),
            ])),
            ..ObjectMeta::default()
        }
    }

    fn job(name: &str, task: &str, attempt: u32, controller: &str) -> Job {
        Job {
            metadata: meta(name, task, attempt, controller, 0),
            ..Job::default()
        }
    }

    fn held(task: &str, attempt: u32, cancel: Option<CancelMode>) -> HeldTask {
        let mut s = summary(task, attempt, TaskStatus::Acquired, Some("agent-self"));
        s.cancel_requested = cancel;
        HeldTask {
            task: s,
            token: Secret::new("reconcile-test-token"),
        }
    }

    #[test]
    fn held_tasks_without_a_job_of_their_attempt_are_launched() {
        let jobs = vec![
            job("j1", "t1", 1, "me"),
            job("j2", "t2", 1, "me"),
            job("j3", "t3", 2, "me"),
            job("j4", "t4", 1, "other"),
        ];
        let held = vec![
            held("t1", 1, None),
            held("t2", 2, None),
            held("t5", 1, None),
            held("t3", 2, Some(CancelMode::Graceful)),
            held("t6", 1, Some(CancelMode::Force)),
        ];
        let p = plan(&jobs, &held, "me");
        let launch: Vec<(&str, u32)> = p
            .launch
            .iter()
            .map(|a| (a.identity.task_id.as_str(), a.identity.attempt))
            .collect();
        assert_eq!(launch, [("t2", 2), ("t5", 1)]);
        assert_eq!(p.cancels.len(), 1);
        assert_eq!(p.cancels[0].task_id, "t3");
        assert_eq!(p.confirm_cancel, [("t6".to_string(), 1)]);
        // j2 (t2 at attempt 1) is no longer held at its attempt; j4 is another controller's.
        assert_eq!(p.check, [("t2".to_string(), 1)]);
    }

    #[test]
    fn orphaned_secrets_get_their_job_or_go() {
        let secret =
            |name: &str, task: &str, attempt: u32, controller: &str, created: i64| K8sSecret {
                metadata: meta(name, task, attempt, controller, created),
                ..K8sSecret::default()
            };
        let mut owned = secret("j9-credentials", "t9", 1, "me", 0);
        owned.metadata.owner_references = Some(vec![OwnerReference::default()]);
        let secrets = vec![
            secret("j1-credentials", "t1", 1, "me", 0),
            secret("j2-credentials", "t2", 1, "me", 0),
            secret("j3-credentials", "t3", 1, "me", 995),
            secret("j6-credentials", "t6", 1, "me", 995),
            secret("j7-credentials", "t7", 2, "me", 0),
            secret("j4-credentials", "t4", 1, "alive", 0),
            secret("j5-credentials", "t5", 1, "dead", 0),
            owned,
        ];
        let jobs = vec![
            job("j1", "t1", 1, "me"),
            job("j2", "t2", 2, "me"),
            job("j6", "t6", 1, "me"),
        ];
        let live = BTreeSet::from(["alive".to_string(), "me".to_string()]);
        let now = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1000);
        let launching = |task: &str| task == "t7";
        let actions = orphan_secrets(
            &secrets,
            &jobs,
            "me",
            &live,
            &launching,
            now,
            Duration::from_secs(60),
        );
        assert_eq!(
            actions,
            [
                SecretAction::SetOwner {
                    secret: "j1-credentials".into(),
                    job: "j1".into(),
                    job_uid: "uid-j1".into()
                },
                SecretAction::Delete {
                    secret: "j2-credentials".into(),
                    uid: "uid-j2-credentials".into()
                },
                SecretAction::SetOwner {
                    secret: "j6-credentials".into(),
                    job: "j6".into(),
                    job_uid: "uid-j6".into()
                },
                SecretAction::Delete {
                    secret: "j5-credentials".into(),
                    uid: "uid-j5-credentials".into()
                },
            ]
        );
    }
}
