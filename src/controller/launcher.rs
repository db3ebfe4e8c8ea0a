//! The launcher: turns an admitted task into its credentials Secret and Job.
//!
//! Runs on the `launcher-N` threads (a small pool sharing one inbox; the limiter never hands the
//! same task to two of them). Receives [`LaunchRequest`]s from the limiter; sends
//! [`SupervisorInput::Launched`] (or `Replacing`) to the supervisor, [`ReporterInput::Fail`] for tasks
//! it must fail, and [`SlotFreed`] to the limiter when a task gets no Job.
//!
//! One launch: acquire (offers only) → template → [`build_task`] → create the Secret → create the
//! Job → make the Job the Secret's owner → Event `TaskLaunched`. Every step is idempotent, so a
//! crash anywhere is repaired by the next launch of the same task (the housekeeper's reconcile):
//! - an existing Secret or Job of the same task and attempt is reused ([`existing`]);
//! - one of an older attempt (a re-offered task, its token fenced) is deleted and replaced;
//! - one of a newer attempt means this launch is stale: give up;
//! - a same-named Job of another task is a name conflict: the task fails, the other Job stays.
//!
//! A missing or invalid template, a refused Job (forbidden, invalid) and a name conflict fail the task
//! on the platform with the reason and the fix. API trouble that outlasts the retries abandons the
//! launch (the task stays held; the housekeeper's next reconcile launches it again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::agent_api::{self, AgentApi};
use super::cluster::{self, Cluster};
use super::events::{EventRecorder, EventType, reason};
use super::job_builder::{
    BuiltTask, CredentialsSecret, LaunchContext, build_task, owner_reference,
};
use super::labels::{ATTEMPT, task_id_of};
use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use super::template_watch::TemplateCache;
use crate::kube::KubeError;
use crate::model::{
    FailureReason, JobRef, LaunchRequest, LimiterInput, ReporterInput, SlotFreed, SlotFreedCause,
    SupervisorInput, TaskFailed, TaskIdentity, TaskLaunched,
};
use crate::secret::Secret;

/// The launchers' work, shared with the housekeeper: the tasks being launched right now (its
/// janitor never deletes the Secret of a launch between its Secret and its Job), and the attempts
/// this process launched (its reconcile never launches again a task whose Job it made and someone
/// deleted: the supervisor fails that task, and a second Job would run beside the failure).
#[derive(Clone, Debug, Default)]
pub struct Launching(Arc<std::sync::Mutex<LaunchBook>>);

#[derive(Debug, Default)]
struct LaunchBook {
    active: std::collections::BTreeSet<String>,
    /// Task → (attempt, when) of the last Job this process created or found for it.
    launched: std::collections::BTreeMap<String, (u32, Instant)>,
}

impl Launching {
    fn book(&self) -> std::sync::MutexGuard<'_, LaunchBook> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a launcher is working on `task`.
    pub fn contains(&self, task: &str) -> bool {
        self.book().active.contains(task)
    }

    fn set(&self, task: &str, on: bool) {
        let mut book = self.book();
        if on {
            book.active.insert(task.to_string());
        } else {
            book.active.remove(task);
        }
    }

    /// Records that the Job of `task` at `attempt` exists (created or found by a launcher).
    pub fn mark_launched(&self, task: &str, attempt: u32) {
        self.book()
            .launched
            .insert(task.to_string(), (attempt, Instant::now()));
    }

    /// Whether this process launched `task` at `attempt` (or a later attempt).
    pub fn launched(&self, task: &str, attempt: u32) -> bool {
        self.book()
            .launched
            .get(task)
            .is_some_and(|(a, _)| *a >= attempt)
    }

    /// Whether `task` is being launched, or was launched at `attempt` (or later) less than `within`
    /// ago.
    pub fn launched_within(&self, task: &str, attempt: u32, within: Duration) -> bool {
        let book = self.book();
        book.active.contains(task)
            || book
                .launched
                .get(task)
                .is_some_and(|(a, at)| *a >= attempt && at.elapsed() < within)
    }

    /// Forgets launches older than `age` whose task `keep` does not name (no longer held).
    pub fn forget(&self, keep: &dyn Fn(&str) -> bool, age: Duration) {
        self.book()
            .launched
            .retain(|task, (_, at)| keep(task) || at.elapsed() < age);
    }
}

/// How many times a create is repeated after replacing an object of an older attempt.
pub const CREATE_ROUNDS: usize = 4;

/// How an existing same-named object relates to the task being launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// The same task and attempt: reuse it.
    Same,
    /// The same task, an older attempt (fenced token): replace it.
    Older,
    /// The same task, a newer attempt: this launch is stale.
    Newer,
    /// Another task's.
    OtherTask,
}

/// The platform attempt an object of the controller was made for (0 when unknown).
pub fn attempt_of(meta: &ObjectMeta) -> u32 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ATTEMPT))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0)
}

/// Compares an existing object's task annotations with the task.
pub fn existing(meta: &ObjectMeta, task: &TaskIdentity) -> Existing {
    if task_id_of(meta) != Some(task.task_id.as_str()) {
        return Existing::OtherTask;
    }
    match attempt_of(meta).cmp(&task.attempt) {
        std::cmp::Ordering::Equal => Existing::Same,
        std::cmp::Ordering::Less => Existing::Older,
        std::cmp::Ordering::Greater => Existing::Newer,
    }
}

/// What became of one request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The Job exists.
    Launched(TaskLaunched),
    /// No Job; the task is failed on the platform.
    Failed(FailureReason),
    /// No Job, nothing reported: lost the acquire, stale, API trouble, or stopping.
    Abandoned(String),
}

/// Why a launch step stopped.
#[derive(Debug)]
enum Stop {
    Fatal(String),
    Fail(FailureReason, String),
    Abandon(String),
}

fn kube_stop(metrics: &Metrics, what: &str, e: KubeError) -> Stop {
    metrics.api_error("kubernetes", cluster::error_class(&e));
    match &e {
        KubeError::Unauthorized(_) => Stop::Fatal(format!(
            "Kubernetes refused the controller's credential (401) while it tried to {what}: {e}"
        )),
        KubeError::Forbidden(_) => Stop::Fail(
            FailureReason::LaunchRejected,
            format!(
                "Kubernetes refused to {what}: {e}; the chart's Role grants this (was rbac.create \
                 turned off?), or an admission policy denies it"
            ),
        ),
        KubeError::Invalid(_) | KubeError::Rejected(_) => Stop::Fail(
            FailureReason::LaunchRejected,
            format!(
                "Kubernetes refused to {what}: {e}; fix the AgentTaskTemplate that produced it"
            ),
        ),
        _ => Stop::Abandon(format!(
            "could not {what}: {e}; the task is launched again at the next reconcile"
        )),
    }
}

/// The launcher actor of one `launcher-N` thread.
pub struct Launcher {
    /// The platform.
    pub platform: Arc<dyn AgentApi>,
    /// Kubernetes.
    pub cluster: Arc<dyn Cluster>,
    /// The current template.
    pub template: TemplateCache,
    /// Namespace, release and controller name for the builder.
    pub context: LaunchContext,
    /// Slots.
    pub limiter: Sender<LimiterInput>,
    /// Launched tasks.
    pub supervisor: Sender<SupervisorInput>,
    /// Failures.
    pub reporter: Sender<ReporterInput>,
    /// Events on Jobs.
    pub events: EventRecorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Stop signals.
    pub lifecycle: Lifecycle,
    /// The tasks being launched (shared by the pool and the housekeeper).
    pub launching: Launching,
}

impl Launcher {
    /// Handles one request to its end.
    pub fn handle(&mut self, request: LaunchRequest) -> Outcome {
        self.metrics.launcher_in_progress.add(1);
        let task_id = request.task_id().to_string();
        self.launching.set(&task_id, true);
        let result = self.launch(request);
        self.launching.set(&task_id, false);
        self.metrics.launcher_in_progress.add(-1);
        let outcome = match result {
            Ok(launched) => {
                self.launching
                    .mark_launched(&task_id, launched.identity.attempt);
                Outcome::Launched(launched)
            }
            Err(failure) => {
                let (identity, stop) = *failure;
                self.stopped(&task_id, identity, stop)
            }
        };
        if !matches!(outcome, Outcome::Launched(_)) {
            let _ = self.limiter.send(LimiterInput::SlotFreed(SlotFreed {
                task_id,
                cause: SlotFreedCause::LaunchAbandoned,
            }));
        }
        outcome
    }

    fn stopped(&self, task_id: &str, identity: Option<TaskIdentity>, stop: Stop) -> Outcome {
        match stop {
            Stop::Fatal(what) => {
                self.lifecycle.unauthorized(&what);
                Outcome::Abandoned(what)
            }
            Stop::Abandon(why) => {
                log::warn!("task {task_id}: not launched: {why}");
                Outcome::Abandoned(why)
            }
            Stop::Fail(reason, message) => match identity {
                Some(identity) => {
                    log::error!("{identity}: {}: {message}", reason.summary());
                    let failed = TaskFailed {
                        identity,
                        reason,
                        message,
                    };
                    let _ = self.reporter.send(ReporterInput::Fail {
                        failed,
                        job: None,
                        confirm_final: false,
                    });
                    Outcome::Failed(reason)
                }
                None => Outcome::Abandoned(message),
            },
        }
    }

    fn launch(
        &mut self,
        request: LaunchRequest,
    ) -> Result<TaskLaunched, Box<(Option<TaskIdentity>, Stop)>> {
        let (identity, token, received_at) = match request {
            LaunchRequest::Offer { offer, received_at } => {
                let (identity, token) = self
                    .acquire(&offer.identity)
                    .map_err(|s| Box::new((None, s)))?;
                (identity, token, Some(received_at))
            }
            LaunchRequest::Held(held) => (held.identity, held.task_token, None),
        };
        if !self.lifecycle.accepting() && received_at.is_some() {
            return Err(Box::new((
                Some(identity),
                Stop::Abandon("the controller is stopping".into()),
            )));
        }
        let launched = self
            .create(&identity, &token)
            .map_err(|s| Box::new((Some(identity.clone()), s)))?;
        self.metrics.launcher_launched_total.inc();
        if let Some(at) = received_at {
            self.metrics
                .launcher_launch_latency_seconds
                .observe(Instant::now().saturating_duration_since(at));
        }
        log::info!(
            "{identity}: launched Job {} (attempt {})",
            launched.job_name,
            identity.attempt
        );
        let job_ref = JobRef {
            name: launched.job_name.clone(),
            uid: launched.job_uid.clone(),
        };
        self.events.record(
            &job_ref,
            EventType::Normal,
            reason::LAUNCHED,
            &format!(
                "{identity}, attempt {}, launched by controller {}",
                identity.attempt, self.context.controller_id
            ),
        );
        let _ = self
            .supervisor
            .send(SupervisorInput::Launched(launched.clone()));
        Ok(launched)
    }

    fn acquire(&self, offered: &TaskIdentity) -> Result<(TaskIdentity, Secret), Stop> {
        match self.platform.acquire(&offered.task_id) {
            Ok(held) => {
                self.metrics.launcher_acquired_total.inc();
                Ok((agent_api::identity(&held.task), held.token))
            }
            Err(e) if agent_api::is_fatal(&e) => Err(Stop::Fatal(format!(
                "the platform refused the controller's session (401) while acquiring {}: {e}",
                offered.task_id
            ))),
            Err(e) => {
                self.metrics
                    .api_error("platform", agent_api::error_class(&e));
                if matches!(e.code(), Some("already-acquired" | "not-available")) {
                    self.metrics.launcher_acquire_lost_total.inc();
                    log::debug!("task {}: another agent acquired it first", offered.task_id);
                }
                Err(Stop::Abandon(format!("acquire failed: {e}")))
            }
        }
    }

    fn create(&self, identity: &TaskIdentity, token: &Secret) -> Result<TaskLaunched, Stop> {
        let template = self
            .template
            .current(self.cluster.as_ref())
            .map_err(|text| Stop::Fail(FailureReason::TemplateInvalid, text))?;
        let BuiltTask { job, mut secret } =
            build_task(&template, identity, token, &self.context)
                .map_err(|e| Stop::Fail(FailureReason::LaunchRejected, e.to_string()))?;
        let (secret_uid, secret_owned) = self.ensure_secret(&secret, identity)?;
        let job = match self.ensure_job(&job, identity) {
            Ok(job) => job,
            Err(stop) => {
                if !secret_owned {
                    // No Job of this attempt will own it: do not leave the token behind.
                    let _ = self.cluster.delete_secret(secret.name(), &secret_uid);
                }
                return Err(stop);
            }
        };
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let job_uid = job.metadata.uid.clone().unwrap_or_default();
        if !secret_owned {
            secret.set_owner(&job_name, &job_uid);
            if let Err(e) = self
                .cluster
                .set_secret_owner(secret.name(), &owner_reference(&job_name, &job_uid))
            {
                // The housekeeper's janitor sets it later; the pod does not need it.
                self.metrics
                    .api_error("kubernetes", cluster::error_class(&e));
                log::warn!(
                    "{identity}: could not make Job {job_name} the owner of Secret {}: {e}",
                    secret.name()
                );
            }
        }
        Ok(TaskLaunched {
            identity: identity.clone(),
            job_name,
            job_uid,
            created_at: job
                .metadata
                .creation_timestamp
                .map_or_else(Timestamp::now, |t| t.0),
        })
    }

    /// Creates the Secret or reuses this attempt's; returns its uid and whether it is already owned
    /// by its Job.
    fn ensure_secret(
        &self,
        secret: &CredentialsSecret,
        identity: &TaskIdentity,
    ) -> Result<(String, bool), Stop> {
        let name = secret.name().to_string();
        for _ in 0..CREATE_ROUNDS {
            match self.cluster.create_secret(secret.as_k8s()) {
                Ok(created) => return Ok((created.metadata.uid.unwrap_or_default(), false)),
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(kube_stop(&self.metrics, "create the credentials Secret", e)),
            }
            let found = self
                .cluster
                .get_secret(&name)
                .map_err(|e| kube_stop(&self.metrics, "read the credentials Secret", e))?;
            let Some(found) = found else { continue };
            let uid = found.metadata.uid.clone().unwrap_or_default();
            match existing(&found.metadata, identity) {
                Existing::Same => {
                    let owned = found
                        .metadata
                        .owner_references
                        .as_ref()
                        .is_some_and(|o| !o.is_empty());
                    return Ok((uid, owned));
                }
                Existing::Older => {
                    log::info!("{identity}: replacing Secret {name} of an older attempt");
                    self.cluster
                        .delete_secret(&name, &uid)
                        .map_err(|e| kube_stop(&self.metrics, "delete an older Secret", e))?;
                }
                Existing::Newer => {
                    return Err(Stop::Abandon(format!(
                        "Secret {name} belongs to a newer attempt of the task; this launch is stale"
                    )));
                }
                Existing::OtherTask => {
                    return Err(Stop::Fail(
                        FailureReason::JobNameConflict,
                        format!(
                            "Secret {name} already exists for task {}; another task has the same \
                             run id and stage under this basename (set a distinct task.basename in \
                             the chart values of one of the releases)",
                            task_id_of(&found.metadata).unwrap_or("unknown")
                        ),
                    ));
                }
            }
        }
        Err(Stop::Abandon(format!(
            "Secret {name} kept reappearing while it was replaced"
        )))
    }

    fn ensure_job(&self, job: &Job, identity: &TaskIdentity) -> Result<Job, Stop> {
        let name = job.metadata.name.clone().unwrap_or_default();
        for round in 0..CREATE_ROUNDS {
            match self.cluster.create_job(job) {
                Ok(created) => return Ok(created),
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(kube_stop(&self.metrics, "create the task's Job", e)),
            }
            let found = self
                .cluster
                .get_job(&name)
                .map_err(|e| kube_stop(&self.metrics, "read the task's Job", e))?;
            let Some(found) = found else { continue };
            match existing(&found.metadata, identity) {
                Existing::Same if found.metadata.deletion_timestamp.is_none() => return Ok(found),
                Existing::Same | Existing::Older => {
                    let uid = found.metadata.uid.clone().unwrap_or_default();
                    if found.metadata.deletion_timestamp.is_none() {
                        log::info!("{identity}: replacing Job {name} of an older attempt");
                        let _ = self.supervisor.send(SupervisorInput::Replacing {
                            task_id: identity.task_id.clone(),
                            attempt: attempt_of(&found.metadata),
                        });
                        self.cluster
                            .delete_job(&name, &uid)
                            .map_err(|e| kube_stop(&self.metrics, "delete an older Job", e))?;
                    } else if self
                        .lifecycle
                        .stop
                        .wait_timeout(Duration::from_millis(250 << round))
                    {
                        break;
                    }
                }
                Existing::Newer => {
                    return Err(Stop::Abandon(format!(
                        "Job {name} belongs to a newer attempt of the task; this launch is stale"
                    )));
                }
                Existing::OtherTask => {
                    return Err(Stop::Fail(
                        FailureReason::JobNameConflict,
                        format!(
                            "Job {name} already exists for task {}; another task has the same run \
                             id and stage under this basename (set a distinct task.basename in the \
                             chart values of one of the releases); that Job is left alone",
                            task_id_of(&found.metadata).unwrap_or("unknown")
                        ),
                    ));
                }
            }
        }
        Err(Stop::Abandon(format!(
            "Job {name} of an older attempt is still being deleted"
        )))
    }
}

/// The `launcher-N` thread: one request at a time until shutdown or the inbox closes.
pub fn run(mut launcher: Launcher, inbox: &Receiver<LaunchRequest>) {
    let stop = launcher.lifecycle.stop.channel();
    loop {
        select! {
            recv(inbox) -> request => match request {
                Ok(request) => {
                    launcher.handle(request);
                }
                Err(_) => return,
            },
            recv(stop) -> _ => return,
        }
    }
}

#[cfg(test)]
#[path = "launcher_tests.rs"]
mod tests;
