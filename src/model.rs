//! The values that cross channels between the controller's stages.
//!
//! ```text
//! poller ──TaskOffered──▶ limiter ──▶ launcher (acquire ⇒ TaskAcquired) ──create Secret+Job──▶ Kubernetes
//!                            ▲               │ TaskLaunched
//!                            └── SlotFreed ── supervisor ──TaskFailed──▶ platform
//! poller ──CancelRequested──▶ supervisor (deletes the Job of a task that has not started)
//! supervisor ──ReporterInput──▶ reporter (platform calls, Job deletion, Kubernetes Events)
//! heartbeat ──HousekeeperInput──▶ housekeeper (reconcile with the platform, leases, adoption)
//! ```
//!
//! Stages depend on this module, never on each other. Names: events are past tense, commands
//! imperative. Each stage's inbox is one enum here (`LimiterInput`, `LaunchRequest`,
//! `SupervisorInput`, `ReporterInput`, `HousekeeperInput`). Nothing here does I/O; a task token only
//! ever travels inside a [`Secret`], so `Debug` of any event is safe to log.

use std::fmt;
use std::time::Instant;

use crossbeam_channel::Sender;
use jiff::Timestamp;

use crate::secret::Secret;

/// Who a task is: the ids the platform gave it. Every field is as the platform sent it (unaltered);
/// names and label values are derived from it by `controller::naming`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskIdentity {
    /// The platform's task id (`task-…`): the key of every per-task map.
    pub task_id: String,
    /// The run (`run-…`).
    pub run_id: String,
    /// The run stage: `plan`, `apply`, `policy`, …
    pub stage: String,
    /// The run's workspace (`ws-…`).
    pub workspace_id: String,
    /// The workspace's environment (`env-…`).
    pub environment_id: String,
    /// The platform's attempt number, from 1; a re-offered task gets a new attempt and a new token.
    pub attempt: u32,
}

impl fmt::Display for TaskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} (run {}, stage {}, workspace {})",
            self.task_id, self.run_id, self.stage, self.workspace_id
        )
    }
}

/// The platform offered a task to this agent (poller → limiter). An offer is a lease: it may expire
/// before a slot frees, and then another agent may take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOffered {
    /// The task.
    pub identity: TaskIdentity,
    /// When the platform takes the offer back, if it said.
    pub expires_at: Option<Timestamp>,
}

/// This agent won the task (launcher, after acquire): it now holds the task and its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskAcquired {
    /// The task.
    pub identity: TaskIdentity,
    /// The worker's token for this task; goes only into the credentials Secret.
    pub task_token: Secret,
}

/// The Job of a task exists (launcher → supervisor): created now, or found already created for this
/// same task (an idempotent retry, a restart, another replica).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLaunched {
    /// The task.
    pub identity: TaskIdentity,
    /// The Job's name.
    pub job_name: String,
    /// The Job's uid, owner of the credentials Secret.
    pub job_uid: String,
    /// When the Job was created (its `creationTimestamp`); the startup timeout counts from here.
    pub created_at: Timestamp,
}

/// A task no longer holds a slot (supervisor or launcher → limiter). Harmless when repeated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFreed {
    /// The task whose slot returns.
    pub task_id: String,
    /// Why.
    pub cause: SlotFreedCause,
}

/// Why a slot returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotFreedCause {
    /// The Job reached Complete or Failed.
    JobFinished,
    /// The Job was deleted (by us after a failure or cancel, by its TTL, or by someone else).
    JobDeleted,
    /// The task never got a Job: acquire lost, template invalid, creation refused.
    LaunchAbandoned,
}

/// The controller must fail a task on the platform (launcher or supervisor → platform reporter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailed {
    /// The task.
    pub identity: TaskIdentity,
    /// The class of failure: metrics label and the first words of the platform message.
    pub reason: FailureReason,
    /// What happened and what to fix, with the relevant Kubernetes Events; never a secret.
    pub message: String,
}

impl TaskFailed {
    /// The text the platform shows the user: `"<reason>: <message>"`.
    pub fn platform_text(&self) -> String {
        format!("{}: {}", self.reason.summary(), self.message)
    }
}

/// Why the controller failed a task. Each is a case of issue 5's supervision list or of launching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// The `AgentTaskTemplate` is missing or invalid.
    TemplateInvalid,
    /// A Job with the task's name exists for another task.
    JobNameConflict,
    /// The API server refused the Job or Secret for good (forbidden, invalid).
    LaunchRejected,
    /// The Job never created a pod (quota, admission, missing ServiceAccount).
    PodNotCreated,
    /// An image could not be pulled (or a container could not be created from its config).
    ImagePull,
    /// The pod stayed unschedulable.
    Unschedulable,
    /// The `install` init container (or another init container) failed.
    InitContainerFailed,
    /// The worker did not start within the startup timeout.
    StartupTimeout,
    /// The Job failed before the worker started.
    JobFailed,
    /// The Job disappeared before the worker started.
    JobDeleted,
    /// The pod was evicted or disrupted and the worker could not report.
    PodEvicted,
    /// A container was OOM-killed and the worker could not report.
    OomKilled,
    /// The worker's pod went away after it started and the platform has no final status.
    WorkerLost,
}

impl FailureReason {
    /// Stable snake_case name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::TemplateInvalid => "template_invalid",
            FailureReason::JobNameConflict => "job_name_conflict",
            FailureReason::LaunchRejected => "launch_rejected",
            FailureReason::PodNotCreated => "pod_not_created",
            FailureReason::ImagePull => "image_pull",
            FailureReason::Unschedulable => "unschedulable",
            FailureReason::InitContainerFailed => "init_container_failed",
            FailureReason::StartupTimeout => "startup_timeout",
            FailureReason::JobFailed => "job_failed",
            FailureReason::JobDeleted => "job_deleted",
            FailureReason::PodEvicted => "pod_evicted",
            FailureReason::OomKilled => "oom_killed",
            FailureReason::WorkerLost => "worker_lost",
        }
    }

    /// A few words for people, the start of the platform message.
    pub fn summary(self) -> &'static str {
        match self {
            FailureReason::TemplateInvalid => "task template invalid",
            FailureReason::JobNameConflict => "Job name taken by another task",
            FailureReason::LaunchRejected => "Kubernetes refused the task's Job",
            FailureReason::PodNotCreated => "the task's Job created no pod",
            FailureReason::ImagePull => "image pull failed",
            FailureReason::Unschedulable => "task pod unschedulable",
            FailureReason::InitContainerFailed => "init container failed",
            FailureReason::StartupTimeout => "worker did not start in time",
            FailureReason::JobFailed => "task Job failed before the worker started",
            FailureReason::JobDeleted => "task Job deleted before the worker started",
            FailureReason::PodEvicted => "task pod evicted",
            FailureReason::OomKilled => "task container OOM-killed",
            FailureReason::WorkerLost => "worker lost",
        }
    }

    /// Every reason, for metrics that pre-register their label values.
    pub const ALL: [FailureReason; 13] = [
        FailureReason::TemplateInvalid,
        FailureReason::JobNameConflict,
        FailureReason::LaunchRejected,
        FailureReason::PodNotCreated,
        FailureReason::ImagePull,
        FailureReason::Unschedulable,
        FailureReason::InitContainerFailed,
        FailureReason::StartupTimeout,
        FailureReason::JobFailed,
        FailureReason::JobDeleted,
        FailureReason::PodEvicted,
        FailureReason::OomKilled,
        FailureReason::WorkerLost,
    ];
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user cancelled a task's run (poller → supervisor). Before the worker started the controller
/// deletes the Job and confirms; after, the worker handles it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRequested {
    /// The task.
    pub task_id: String,
    /// Graceful or forced.
    pub mode: CancelMode,
}

/// How hard a cancel is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CancelMode {
    /// Interrupt terraform and let it finish.
    Graceful,
    /// Kill.
    Force,
}

/// A Job of this controller as the Jobs watch shows it (supervisor → limiter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSeen {
    /// The task the Job runs.
    pub task_id: String,
    /// The platform attempt the Job was made for (0 when unknown).
    pub attempt: u32,
    /// Complete or Failed: it no longer holds a slot.
    pub terminal: bool,
}

/// The limiter stage's inbox.
#[derive(Debug)]
pub enum LimiterInput {
    /// Offers from one long-poll (poller). `reply` gets the free capacity once they are admitted or
    /// queued, so the next poll advertises the truth.
    Offered {
        offers: Vec<TaskOffered>,
        reply: Option<Sender<u32>>,
    },
    /// A task this agent already holds that has no Job of its attempt (housekeeper, after a restart or
    /// a re-registration): launch it with its token when a slot is free.
    Held(TaskAcquired),
    /// A full relist of this controller's Jobs (supervisor): the slots are rebuilt from it.
    JobsListed(Vec<JobSeen>),
    /// One of this controller's Jobs was added or changed (supervisor).
    JobChanged(JobSeen),
    /// A Job of this controller is gone: deleted, or adopted by another replica (supervisor).
    JobGone { task_id: String, attempt: u32 },
    /// A slot returns whatever its state: the launch was abandoned (launcher) or supervision ended
    /// while the Job was not in view (supervisor).
    SlotFreed(SlotFreed),
    /// SIGTERM: stop admitting, drop waiting offers (their leases lapse and others take them).
    Drain,
}

/// What the launcher is asked to do (limiter → launcher). Every request holds a slot.
#[derive(Debug)]
pub enum LaunchRequest {
    /// Acquire an offered task, then create its Secret and Job.
    Offer {
        offer: TaskOffered,
        /// When the poller received the offer: launch latency counts from here.
        received_at: Instant,
    },
    /// Create the Secret and Job of a task this agent already holds.
    Held(TaskAcquired),
}

impl LaunchRequest {
    /// The task's id.
    pub fn task_id(&self) -> &str {
        match self {
            LaunchRequest::Offer { offer, .. } => &offer.identity.task_id,
            LaunchRequest::Held(held) => &held.identity.task_id,
        }
    }
}

/// The supervisor's inbox (besides its two watches).
#[derive(Debug)]
pub enum SupervisorInput {
    /// The launcher created (or found) a task's Job.
    Launched(TaskLaunched),
    /// The launcher is about to delete the Job of an older attempt of this task to replace it: forget
    /// that Job without a verdict.
    Replacing { task_id: String, attempt: u32 },
    /// The platform relayed a cancel (poller) or listed one (housekeeper).
    CancelRequested(CancelRequested),
    /// The platform no longer gives this agent the task at this attempt (re-offered, finished,
    /// canceled): delete its Job if the worker has not started.
    Unheld { task_id: String, attempt: u32 },
    /// The platform says the task's worker started (housekeeper after a restart or an adoption,
    /// reporter when it overruled a verdict): judge it as started from now on.
    Started { task_id: String, attempt: u32 },
}

/// A Job by name and uid; the uid makes a delete a precondition, so a same-named newer Job survives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRef {
    /// The Job's name.
    pub name: String,
    /// The Job's uid.
    pub uid: String,
}

/// What the reporter does: the platform and Kubernetes writes that follow a supervision verdict.
#[derive(Debug)]
pub enum ReporterInput {
    /// Fail the task on the platform (unless the platform says it is no longer this agent's to fail)
    /// and delete its Job. `confirm_final`: the worker had started, fail only when the platform has
    /// no final status.
    Fail {
        failed: TaskFailed,
        job: Option<JobRef>,
        confirm_final: bool,
    },
    /// Cancel before the worker started: delete the Job, then confirm the cancel.
    CancelUnstarted { identity: TaskIdentity, job: JobRef },
    /// A force-cancelled task's Job outlived its deadline: delete it.
    ForceCancelExpired { identity: TaskIdentity, job: JobRef },
    /// Delete a Job without reporting anything (task no longer held by this agent).
    DeleteJob {
        identity: TaskIdentity,
        job: JobRef,
        why: String,
    },
}

/// The housekeeper's inbox (besides its own ticks).
#[derive(Debug)]
pub enum HousekeeperInput {
    /// Compare this controller's Jobs with the tasks the platform says it holds, now.
    Reconcile { why: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquired_task_debug_never_shows_the_token() {
        let acquired = TaskAcquired {
            identity: TaskIdentity {
                task_id: "task-1".into(),
                run_id: "run-1".into(),
                stage: "plan".into(),
                workspace_id: "ws-1".into(),
                environment_id: "env-1".into(),
                attempt: 1,
            },
            task_token: Secret::new("model-test-token-abcdef"),
        };
        let shown = format!("{acquired:?}");
        assert!(!shown.contains("model-test-token-abcdef"), "{shown}");
        assert!(shown.contains("task-1"), "{shown}");
    }

    #[test]
    fn reason_names_are_unique_snake_case() {
        let mut names: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureReason::ALL.len());
    }
}
