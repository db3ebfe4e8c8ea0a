//! The reporter: carries out what the supervisor (and the launcher) decided — fail a task on the
//! platform, confirm a cancel, delete a Job — and records the Kubernetes Events that say so.
//!
//! Runs on the `reporter` thread, so slow API calls never hold up the supervisor. Receives
//! [`ReporterInput`]s; sends nothing. Before it writes to the platform it reads the task back and
//! asks [`decide`] whether the write is still this controller's to make: a task that is final, that
//! was re-offered (another attempt), that another agent holds, or whose worker has started is not
//! failed (the supervisor may have judged from a stale view; a replica may have adopted the Job).
//! Work that fails on a retryable error (the clients' own retries spent) waits in a queue with
//! backoff ([`RETRY_INITIAL`] doubling to [`RETRY_MAX`], at most [`RETRY_ATTEMPTS`] tries); a 401
//! stops the controller in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use super::agent_api::{self, AgentApi};
use super::cluster::{self, Cluster};
use super::events::{EventRecorder, EventType, reason};
use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use crate::kube::KubeError;
use crate::model::{JobRef, ReporterInput, SupervisorInput, TaskIdentity};
use crate::platform::{PlatformError, TaskStatus, TaskSummary};

/// First wait before retrying work that failed.
pub const RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait between retries.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Tries before giving up (about 15 minutes with the waits above).
pub const RETRY_ATTEMPTS: u32 = 20;

/// Whether the controller may still write about a task, given what the platform says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The task is this agent's, at this attempt, and needs the write.
    Report,
    /// The task has a final status already: nothing to report; its Job can go.
    Final,
    /// The platform moved on to another attempt: this Job's token is fenced; it can go.
    Stale,
    /// Another agent holds the task (the Job was adopted): nothing to report; the Job can go.
    NotOurs,
    /// The worker started after the verdict: it owns the task; leave everything alone.
    Started,
}

impl Decision {
    /// Whether the Job should be deleted.
    pub fn deletes_job(self) -> bool {
        !matches!(self, Decision::Started)
    }
}

/// Decides whether to fail a task. `after_start`: the verdict came after the worker started
/// (report only if the platform has no final status).
pub fn decide(
    summary: &TaskSummary,
    identity: &TaskIdentity,
    agent_id: &str,
    after_start: bool,
) -> Decision {
    if summary.status.is_final() {
        Decision::Final
    } else if summary.attempt != identity.attempt {
        Decision::Stale
    } else if summary.agent_id.as_deref() != Some(agent_id) {
        Decision::NotOurs
    } else if !after_start && summary.status == TaskStatus::Running {
        Decision::Started
    } else {
        Decision::Report
    }
}

/// What became of one input (tests, logs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Written to the platform (failure or cancel confirmation), Job deleted if there was one.
    Reported,
    /// Nothing written to the platform, for this reason; the Job deleted if the decision says so.
    Skipped(Decision),
    /// A Job deleted without a platform write.
    Deleted,
    /// Queued for a retry.
    Retrying,
    /// Dropped (a permanent error, or a 401).
    Dropped,
}

enum Trouble {
    Retry(String),
    Drop(String),
}

struct Pending {
    input: ReporterInput,
    attempts: u32,
    due: Instant,
}

/// The reporter actor.
pub struct Reporter {
    supervisor: Option<Sender<SupervisorInput>>,
    platform: Arc<dyn AgentApi>,
    cluster: Arc<dyn Cluster>,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    pending: VecDeque<Pending>,
}

impl Reporter {
    /// A reporter writing through these boundaries.
    pub fn new(
        platform: Arc<dyn AgentApi>,
        cluster: Arc<dyn Cluster>,
        events: EventRecorder,
        metrics: Arc<Metrics>,
        lifecycle: Lifecycle,
    ) -> Self {
        Reporter {
            supervisor: None,
            platform,
            cluster,
            events,
            metrics,
            lifecycle,
            pending: VecDeque::new(),
        }
    }

    /// Tells `supervisor` when the platform overrules a verdict (the worker had started).
    pub fn with_supervisor(mut self, supervisor: Sender<SupervisorInput>) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    fn overruled(&self, identity: &TaskIdentity) {
        if let Some(tx) = &self.supervisor {
            // Never block: the supervisor may be sending to this reporter right now.
            let _ = tx.try_send(SupervisorInput::Started {
                task_id: identity.task_id.clone(),
                attempt: identity.attempt,
            });
        }
    }

    /// Work waiting for a retry.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// When the next retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }

    /// Handles one input (attempt `attempts`, counting from 0).
    pub fn handle(&mut self, input: ReporterInput) -> Handled {
        self.attempt(input, 0)
    }

    /// Retries what is due at `now`.
    pub fn retry_due(&mut self, now: Instant) {
        let (due, later): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| p.due <= now);
        self.pending = later.into();
        for p in due {
            self.attempt(p.input, p.attempts);
        }
    }

    fn attempt(&mut self, input: ReporterInput, attempts: u32) -> Handled {
        let result = match &input {
            ReporterInput::Fail {
                failed,
                job,
                confirm_final,
            } => self.fail(failed, job.as_ref(), *confirm_final),
            ReporterInput::CancelUnstarted { identity, job } => self.cancel(identity, job),
            ReporterInput::ForceCancelExpired { identity, job } => {
                self.force_cancel_expired(identity, job)
            }
            ReporterInput::DeleteJob { identity, job, why } => self.delete_job(job).map(|()| {
                log::info!("{identity}: deleted Job {}: {why}", job.name);
                self.events
                    .record(job, EventType::Normal, reason::RELEASED, why);
                Handled::Deleted
            }),
        };
        match result {
            Ok(handled) => handled,
            Err(Trouble::Drop(why)) => {
                log::error!("{why}");
                Handled::Dropped
            }
            Err(Trouble::Retry(why)) if attempts + 1 < RETRY_ATTEMPTS => {
                let wait = RETRY_INITIAL
                    .saturating_mul(1 << attempts.min(10))
                    .min(RETRY_MAX);
                log::warn!("{why}; trying again in {}s", wait.as_secs());
                self.pending.push_back(Pending {
                    input,
                    attempts: attempts + 1,
                    due: Instant::now() + wait,
                });
                Handled::Retrying
            }
            Err(Trouble::Retry(why)) => {
                log::error!("{why}; giving up after {RETRY_ATTEMPTS} tries");
                Handled::Dropped
            }
        }
    }

    fn platform_trouble(&self, what: &str, e: PlatformError) -> Trouble {
        self.metrics
            .api_error("platform", agent_api::error_class(&e));
        if agent_api::is_fatal(&e) {
            let text = format!(
                "the platform refused the controller's session (401) while it tried to {what}: {e}"
            );
            self.lifecycle.unauthorized(&text);
            Trouble::Drop(text)
        } else if agent_api::is_retryable(&e) {
            Trouble::Retry(format!("could not {what}: {e}"))
        } else {
            Trouble::Drop(format!("could not {what}: {e}"))
        }
    }

    fn kube_trouble(&self, what: &str, e: KubeError) -> Trouble {
        self.metrics
            .api_error("kubernetes", cluster::error_class(&e));
        match e {
            KubeError::Unauthorized(_) => {
                let text = format!(
                    "Kubernetes refused the controller's credential (401) while it tried to {what}: {e}"
                );
                self.lifecycle.unauthorized(&text);
                Trouble::Drop(text)
            }
            KubeError::Throttled(_) | KubeError::ServerError(_) | KubeError::Transport(_) => {
                Trouble::Retry(format!("could not {what}: {e}"))
            }
            // A uid precondition failed: a newer Job took the name; it is not ours to delete.
            KubeError::Conflict(_) => Trouble::Drop(format!("did not {what}: {e}")),
            _ => Trouble::Drop(format!("could not {what}: {e}")),
        }
    }

    fn summary(&self, identity: &TaskIdentity) -> Result<Option<TaskSummary>, Trouble> {
        match self.platform.task(&identity.task_id) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(self.platform_trouble(&format!("read task {}", identity.task_id), e)),
        }
    }

    fn delete_job(&self, job: &JobRef) -> Result<(), Trouble> {
        self.cluster
            .delete_job(&job.name, &job.uid)
            .map_err(|e| self.kube_trouble(&format!("delete Job {}", job.name), e))
    }

    fn fail(
        &mut self,
        failed: &crate::model::TaskFailed,
        job: Option<&JobRef>,
        after_start: bool,
    ) -> Result<Handled, Trouble> {
        let identity = &failed.identity;
        let decision = match self.summary(identity)? {
            None => Decision::Final,
            Some(s) => decide(&s, identity, &self.platform.agent_id(), after_start),
        };
        let mut handled = Handled::Skipped(decision);
        if decision == Decision::Report {
            match self
                .platform
                .fail_task(&identity.task_id, &failed.platform_text())
            {
                Ok(_) => {
                    self.metrics.failed(failed.reason);
                    log::warn!(
                        "{identity}: failed on the platform: {}",
                        failed.platform_text()
                    );
                    handled = Handled::Reported;
                }
                Err(e) if e.code() == Some("task-completed") => {
                    handled = Handled::Skipped(Decision::Final);
                }
                Err(e) => {
                    return Err(
                        self.platform_trouble(&format!("fail task {}", identity.task_id), e)
                    );
                }
            }
        } else {
            log::info!(
                "{identity}: not failed on the platform ({decision:?}): {}",
                failed.message
            );
            if decision == Decision::Started {
                self.overruled(identity);
            }
        }
        if let Some(job) = job {
            if handled == Handled::Reported {
                self.events.record(
                    job,
                    EventType::Warning,
                    reason::FAILED,
                    &failed.platform_text(),
                );
            }
            if decision.deletes_job() {
                self.delete_job(job)?;
            }
        }
        Ok(handled)
    }

    fn cancel(&mut self, identity: &TaskIdentity, job: &JobRef) -> Result<Handled, Trouble> {
        let decision = match self.summary(identity)? {
            None => Decision::Final,
            Some(s) => decide(&s, identity, &self.platform.agent_id(), false),
        };
        if decision == Decision::Started {
            log::info!("{identity}: cancel: the worker started first and handles it");
            self.overruled(identity);
            return Ok(Handled::Skipped(decision));
        }
        self.delete_job(job)?;
        if decision != Decision::Report {
            return Ok(Handled::Skipped(decision));
        }
        match self.platform.confirm_cancel(&identity.task_id) {
            Ok(_) => {
                self.metrics.supervisor_cancelled_total.inc();
                log::info!(
                    "{identity}: cancelled before its worker started; Job {} deleted",
                    job.name
                );
                self.events.record(
                    job,
                    EventType::Normal,
                    reason::CANCELLED,
                    "the run was cancelled before the worker started; the Job is deleted",
                );
                Ok(Handled::Reported)
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some("task-started" | "task-completed" | "no-cancel-requested")
                ) =>
            {
                log::info!("{identity}: cancel not confirmed: {e}");
                Ok(Handled::Skipped(Decision::Final))
            }
            Err(e) => {
                Err(self
                    .platform_trouble(&format!("confirm the cancel of {}", identity.task_id), e))
            }
        }
    }

    fn force_cancel_expired(
        &mut self,
        identity: &TaskIdentity,
        job: &JobRef,
    ) -> Result<Handled, Trouble> {
        if let Some(s) = self.summary(identity)?
            && s.status.is_final()
        {
            return Ok(Handled::Skipped(Decision::Final));
        }
        self.delete_job(job)?;
        log::warn!(
            "{identity}: force-cancelled and still running after the deadline; Job {} deleted",
            job.name
        );
        self.events.record(
            job,
            EventType::Warning,
            reason::FORCE_CANCELLED,
            "the run was force-cancelled and its Job still ran after the deadline; the Job is deleted",
        );
        Ok(Handled::Deleted)
    }
}

/// The `reporter` thread: inputs and due retries until shutdown.
pub fn run(mut reporter: Reporter, inbox: &Receiver<ReporterInput>) {
    let stop = reporter.lifecycle.stop.channel();
    loop {
        let timeout = reporter.next_due().map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        select! {
            recv(stop) -> _ => return,
            recv(inbox) -> input => match input {
                Ok(input) => { reporter.handle(input); }
                Err(_) => return,
            },
            default(timeout) => reporter.retry_due(Instant::now()),
        }
    }
}

#[cfg(test)]
#[path = "reporter_tests.rs"]
mod tests;
