//! Supervision decisions: given what the cluster shows about one launched task, what to do now.
//!
//! Pure; the supervisor's thread owns one [`TaskState`] per launched task and calls [`assess`] on every
//! watch event about the task's Job, pods or Events, and at the deadline the last verdict named.
//! Per task: `Launched → Scheduled → WorkerStarted → Done`.
//!
//! Before the worker started, the controller owns the task's fate and fails it (reason, readable
//! message with the relevant Events; then the caller deletes the Job) when:
//! - an image cannot be pulled for [`SupervisionSettings::image_pull_grace`] (`InvalidImageName` and
//!   `ErrImageNeverPull` at once);
//! - the pod stays `Unschedulable` for [`SupervisionSettings::unschedulable_timeout`] (unless the
//!   cluster autoscaler said `TriggeredScaleUp`: then only the startup timeout applies);
//! - the Job made no pod and says `FailedCreate` for [`SupervisionSettings::no_pod_grace`];
//! - an init container fails; the Job fails (OOM kill and eviction named as such) or disappears;
//! - the worker has not started [`SupervisionSettings::startup_timeout`] after the Job's creation.
//!
//! An evicted pod before the start is not fatal by itself: the chart's `podFailurePolicy` makes the Job
//! replace it, within the startup timeout.
//!
//! "Worker started" is the worker container running with its startup probe passed (see
//! [`facts::worker_started`]). From then on the worker owns the task's status; the controller speaks
//! only when the worker's pod is gone (deleted, terminal, replaced, or the worker container ended
//! non-zero) and, after [`SupervisionSettings::final_status_grace`], the platform has no final status
//! ([`Verdict::ConfirmFinal`]: the caller asks the platform, and fails the task only if it is not
//! final).
//!
//! Every verdict other than [`Verdict::Wait`] is given once: the state moves to `Done`.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};

use super::facts::{self, warning_lines};
use crate::model::{FailureReason, TaskIdentity, TaskLaunched};
use crate::secret::redact;

/// Longest failure message (the platform accepts 4000 characters).
pub const MAX_MESSAGE_CHARS: usize = 3500;

/// Time limits of supervision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisionSettings {
    /// From the Job's creation to the worker's start
    /// (`SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS`, default 180 s).
    pub startup_timeout: Duration,
    /// How long an image may fail to pull before the task fails (30 s, as agent-stack-k8s).
    pub image_pull_grace: Duration,
    /// How long the pod may stay unschedulable (120 s; an autoscaler scale-up waits for the startup
    /// timeout instead).
    pub unschedulable_timeout: Duration,
    /// How long a Job may fail to create its pod (`FailedCreate`: quota, admission, missing
    /// ServiceAccount) (30 s).
    pub no_pod_grace: Duration,
    /// After the worker's pod is gone, how long to let the platform record what the worker sent last
    /// before asking it (15 s).
    pub final_status_grace: Duration,
}

impl SupervisionSettings {
    /// The defaults with the configured startup timeout (`Settings::startup_timeout`).
    pub fn with_startup_timeout(startup_timeout: Duration) -> Self {
        SupervisionSettings {
            startup_timeout,
            ..SupervisionSettings::default()
        }
    }
}

impl Default for SupervisionSettings {
    fn default() -> Self {
        SupervisionSettings {
            startup_timeout: Duration::from_secs(180),
            image_pull_grace: Duration::from_secs(30),
            unschedulable_timeout: Duration::from_secs(120),
            no_pod_grace: Duration::from_secs(30),
            final_status_grace: Duration::from_secs(15),
        }
    }
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The Job exists (or is being created); no pod on a node yet.
    Launched,
    /// Its pod is bound to a node.
    Scheduled,
    /// The worker runs and owns the task.
    WorkerStarted,
    /// Nothing more to watch.
    Done,
}

/// What the supervisor knows about one task between events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskState {
    /// The task.
    pub identity: TaskIdentity,
    /// Its Job's name.
    pub job_name: String,
    /// When its Job was created; the startup timeout counts from here (or from the Job's
    /// `creationTimestamp` once seen).
    pub launched_at: Timestamp,
    /// Set by the supervisor when it deletes the Job of a task cancelled before the start: the Job's
    /// disappearance then ends supervision without a failure.
    pub cancel_requested: bool,
    phase: Phase,
    job_seen: bool,
    worker_pod: Option<String>,
    image_problem_since: Option<Timestamp>,
    unschedulable_since: Option<Timestamp>,
    lost_since: Option<Timestamp>,
}

impl TaskState {
    /// A task whose Job was just created (or found at a rebuild).
    pub fn new(launched: &TaskLaunched) -> Self {
        TaskState {
            identity: launched.identity.clone(),
            job_name: launched.job_name.clone(),
            launched_at: launched.created_at,
            cancel_requested: false,
            phase: Phase::Launched,
            job_seen: false,
            worker_pod: None,
            image_problem_since: None,
            unschedulable_since: None,
            lost_since: None,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the Jobs watch has shown the task's Job (so its absence now means it is gone).
    pub fn job_seen(&self) -> bool {
        self.job_seen
    }

    /// The platform says the worker started this task (a Job found at a restart or adopted, whose
    /// running pod the watches may never have shown; or a verdict the platform overruled): from now
    /// on the task is judged as started, with `pod` (the current one, if any) as the worker's.
    pub fn mark_started(&mut self, pod: Option<&Pod>) {
        if self.phase != Phase::WorkerStarted {
            self.phase = Phase::WorkerStarted;
            self.worker_pod = pod.and_then(pod_key);
            self.lost_since = None;
        }
    }
}

/// What to do about a task now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing yet; assess again on the next event about the task or at `recheck_at`.
    Wait { recheck_at: Option<Timestamp> },
    /// Fail the task on the platform with this reason and message, then delete the Job.
    Fail {
        reason: FailureReason,
        message: String,
    },
    /// The worker's pod is gone: ask the platform; if the task has no final status, fail it with this
    /// reason and message and delete the Job.
    ConfirmFinal {
        reason: FailureReason,
        message: String,
    },
    /// Supervision is over; nothing to report.
    Done,
}

/// Decides what to do about a task, given its Job and current pod (see [`facts::current_pod`]) as the
/// watches show them (`None`: not there), the Events about them, and the time.
pub fn assess(
    state: &mut TaskState,
    job: Option<&Job>,
    pod: Option<&Pod>,
    events: &[Event],
    now: Timestamp,
    settings: &SupervisionSettings,
) -> Verdict {
    if state.phase == Phase::Done {
        return Verdict::Done;
    }
    // A Job being deleted is as good as gone.
    let job = job.filter(|j| j.metadata.deletion_timestamp.is_none());
    state.job_seen |= job.is_some();
    let job_gone = job.is_none() && state.job_seen;

    if let Some(p) = pod {
        if state.phase == Phase::Launched && facts::is_scheduled(p) {
            state.phase = Phase::Scheduled;
        }
        if state.phase < Phase::WorkerStarted && facts::worker_started(p) {
            state.phase = Phase::WorkerStarted;
            state.worker_pod = pod_key(p);
        }
    }
    let worker_succeeded = pod
        .and_then(facts::worker_terminated)
        .is_some_and(|t| t.exit_code == 0);
    if worker_succeeded || job.is_some_and(facts::job_complete) {
        return done(state, Verdict::Done);
    }
    if state.cancel_requested && state.phase < Phase::WorkerStarted {
        return if job.is_none() {
            done(state, Verdict::Done)
        } else {
            Verdict::Wait { recheck_at: None }
        };
    }
    let verdict = if state.phase == Phase::WorkerStarted {
        after_start(state, pod, events, now, settings)
    } else {
        before_start(state, job, job_gone, pod, events, now, settings)
    };
    match verdict {
        Verdict::Wait { .. } => verdict,
        other => done(state, other),
    }
}

fn done(state: &mut TaskState, verdict: Verdict) -> Verdict {
    state.phase = Phase::Done;
    verdict
}

fn pod_key(pod: &Pod) -> Option<String> {
    pod.metadata
        .uid
        .clone()
        .or_else(|| pod.metadata.name.clone())
}

fn before_start(
    state: &mut TaskState,
    job: Option<&Job>,
    job_gone: bool,
    pod: Option<&Pod>,
    events: &[Event],
    now: Timestamp,
    settings: &SupervisionSettings,
) -> Verdict {
    let name = state.job_name.clone();
    let pod_name = pod.map(facts::pod_name).unwrap_or("");
    let objects = [name.as_str(), pod_name];
    let fail = |reason, text: String| Verdict::Fail {
        reason,
        message: message(text, events, &objects),
    };
    if job_gone {
        return fail(
            FailureReason::JobDeleted,
            format!("Job {name} was deleted before the worker started"),
        );
    }
    let created = job
        .and_then(|j| j.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(state.launched_at);
    if let Some(cond) = job.and_then(facts::job_failed) {
        let why = format!(
            "{}: {}",
            cond.reason.as_deref().unwrap_or("Failed"),
            cond.message.as_deref().unwrap_or("no message")
        );
        let (reason, text) = match (pod, pod.and_then(facts::oom_killed)) {
            (Some(p), Some(container)) => (FailureReason::OomKilled, oom_text(p, container, &name)),
            (Some(p), None) if facts::evicted(p) => (
                FailureReason::PodEvicted,
                format!(
                    "Job {name} failed ({why}) after its pod was evicted before the worker started"
                ),
            ),
            (Some(p), None) => match facts::failed_init(p) {
                Some((container, t)) => (
                    FailureReason::InitContainerFailed,
                    format!(
                        "init container {container} of pod {pod_name} {}; Job {name} failed ({why})",
                        facts::terminated_text(t)
                    ),
                ),
                None => (
                    FailureReason::JobFailed,
                    format!(
                        "Job {name} failed before the worker started ({why}); {}",
                        facts::pod_summary(p)
                    ),
                ),
            },
            (None, _) => (
                FailureReason::JobFailed,
                format!("Job {name} failed before the worker started ({why})"),
            ),
        };
        return fail(reason, text);
    }

    let startup_deadline = after(created, settings.startup_timeout);
    let mut deadlines = vec![startup_deadline];
    match pod {
        Some(p) => {
            if let Some((container, t)) = facts::failed_init(p) {
                return fail(
                    FailureReason::InitContainerFailed,
                    format!(
                        "init container {container} of pod {pod_name} {}",
                        facts::terminated_text(t)
                    ),
                );
            }
            match facts::image_problem(p) {
                Some(problem) => {
                    let since = *state.image_problem_since.get_or_insert(now);
                    let until = after(since, settings.image_pull_grace);
                    if problem.fatal || now >= until {
                        return fail(
                            FailureReason::ImagePull,
                            format!(
                                "container {} of pod {pod_name} cannot start: {}{}",
                                problem.container,
                                problem.reason,
                                if problem.message.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", problem.message)
                                }
                            ),
                        );
                    }
                    deadlines.push(until);
                }
                None => state.image_problem_since = None,
            }
            match facts::unschedulable(p) {
                Some(cond) => {
                    let observed = *state.unschedulable_since.get_or_insert(now);
                    let since = cond.last_transition_time.as_ref().map_or(observed, |t| t.0);
                    let until = after(since, settings.unschedulable_timeout);
                    if !facts::has_event(events, pod_name, "TriggeredScaleUp") {
                        if now >= until {
                            return fail(
                                FailureReason::Unschedulable,
                                format!(
                                    "pod {pod_name} could not be scheduled for {}s: {}",
                                    settings.unschedulable_timeout.as_secs(),
                                    cond.message.as_deref().unwrap_or("no message")
                                ),
                            );
                        }
                        deadlines.push(until);
                    }
                }
                None => state.unschedulable_since = None,
            }
        }
        None if job.is_some() && facts::has_warning(events, &name, "FailedCreate") => {
            let until = after(created, settings.no_pod_grace);
            if now >= until {
                return fail(
                    FailureReason::PodNotCreated,
                    format!("Job {name} could not create its pod"),
                );
            }
            deadlines.push(until);
        }
        None => {}
    }
    if now >= startup_deadline {
        let where_ = match (job, pod) {
            (None, _) => format!("Job {name} has not appeared"),
            (Some(_), None) => format!("Job {name} has no pod"),
            (Some(_), Some(p)) => facts::pod_summary(p),
        };
        return fail(
            FailureReason::StartupTimeout,
            format!(
                "the worker did not start within {}s of the Job's creation \
                 (SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS); {where_}",
                settings.startup_timeout.as_secs()
            ),
        );
    }
    Verdict::Wait {
        recheck_at: deadlines.into_iter().min(),
    }
}

fn after_start(
    state: &mut TaskState,
    pod: Option<&Pod>,
    events: &[Event],
    now: Timestamp,
    settings: &SupervisionSettings,
) -> Verdict {
    let name = state.job_name.clone();
    let lost = match pod {
        None => Some((
            FailureReason::WorkerLost,
            format!("the pod of Job {name} is gone"),
        )),
        Some(p) if pod_key(p) != state.worker_pod => Some((
            FailureReason::WorkerLost,
            format!(
                "the pod the worker started in was replaced by {} (its node was lost or it was \
                 disrupted)",
                facts::pod_name(p)
            ),
        )),
        Some(p) if !worker_stopped(p) => None,
        Some(p) => Some(match facts::oom_killed(p) {
            Some(container) => (FailureReason::OomKilled, oom_text(p, container, &name)),
            None if facts::evicted(p) => (
                FailureReason::PodEvicted,
                format!("pod {} was evicted while the task ran", facts::pod_name(p)),
            ),
            None => (
                FailureReason::WorkerLost,
                format!(
                    "the worker stopped without reporting a final status; {}",
                    facts::pod_summary(p)
                ),
            ),
        }),
    };
    let Some((reason, text)) = lost else {
        state.lost_since = None;
        return Verdict::Wait { recheck_at: None };
    };
    let since = *state.lost_since.get_or_insert(now);
    let until = after(since, settings.final_status_grace);
    if now < until {
        return Verdict::Wait {
            recheck_at: Some(until),
        };
    }
    let pod_name = pod.map(facts::pod_name).unwrap_or("");
    Verdict::ConfirmFinal {
        reason,
        message: message(text, events, &[name.as_str(), pod_name]),
    }
}

/// The worker container no longer runs: the pod is terminal or the worker exited.
fn worker_stopped(pod: &Pod) -> bool {
    facts::pod_terminal(pod) || facts::worker_terminated(pod).is_some()
}

fn oom_text(pod: &Pod, container: &str, job: &str) -> String {
    let limit = facts::memory_limit(pod, container)
        .map(|l| format!(" (memory limit {l}; raise it in the chart's task values)"))
        .unwrap_or_default();
    format!(
        "container {container} of pod {} (Job {job}) was OOM-killed{limit}",
        facts::pod_name(pod)
    )
}

/// The failure message: what happened, then the relevant Warning Events; redacted, bounded.
fn message(text: String, events: &[Event], objects: &[&str]) -> String {
    let mut out = text;
    let lines = warning_lines(events, objects);
    if !lines.is_empty() {
        out.push_str(". Events:");
        for line in lines {
            out.push_str("\n- ");
            out.push_str(&line);
        }
    }
    let mut out = redact(&out).into_owned();
    if out.chars().count() > MAX_MESSAGE_CHARS {
        let cut: String = out.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        out = format!("{cut}…");
    }
    out
}

fn after(at: Timestamp, d: Duration) -> Timestamp {
    at.checked_add(d).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
#[path = "supervision_tests.rs"]
mod tests;
