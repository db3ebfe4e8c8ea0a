//! The supervisor's inputs from other stages: launched tasks, replacements, cancels and tasks the
//! platform no longer gives this agent. Part of the [`Supervisor`] actor (same thread, same state);
//! a separate file only to keep each file short.

use std::time::Instant;

use jiff::Timestamp;

use super::{Phase, Supervisor, arm_force_deadline, new_entry};
use crate::model::{CancelMode, CancelRequested, ReporterInput, SupervisorInput};

impl Supervisor {
    pub(super) fn on_input(&mut self, input: SupervisorInput, now: Timestamp) {
        match input {
            SupervisorInput::Launched(launched) => {
                let task = launched.identity.task_id.clone();
                let known = self
                    .entries
                    .get(&task)
                    .is_some_and(|e| e.job.uid == launched.job_uid);
                if !known {
                    // The watch may have shown the Job first: keep what it taught.
                    self.entries.insert(task.clone(), new_entry(&launched));
                }
                self.apply_pending_cancel(&task, now);
                self.assess_task(&task, now);
            }
            SupervisorInput::Replacing { task_id, attempt } => {
                if self
                    .entries
                    .get(&task_id)
                    .is_some_and(|e| e.state.identity.attempt == attempt)
                {
                    self.entries.remove(&task_id);
                }
            }
            SupervisorInput::CancelRequested(CancelRequested { task_id, mode }) => {
                if self.entries.contains_key(&task_id) {
                    self.cancel(&task_id, mode, now);
                } else {
                    let entry = self
                        .pending_cancels
                        .entry(task_id)
                        .or_insert((mode, Instant::now()));
                    if mode == CancelMode::Force {
                        entry.0 = mode;
                    }
                }
            }
            SupervisorInput::Started { task_id, attempt } => {
                if self.entries.contains_key(&task_id) {
                    self.started(&task_id, attempt, now);
                } else {
                    self.pending_started
                        .insert(task_id, (attempt, Instant::now()));
                }
            }
            SupervisorInput::Unheld { task_id, attempt } => {
                if self.entries.contains_key(&task_id) {
                    self.unheld(&task_id, attempt);
                } else {
                    // The watches may not have shown the Job yet (a reconcile at start).
                    self.pending_unheld
                        .insert(task_id, (attempt, Instant::now()));
                }
            }
        }
    }

    fn unheld(&mut self, task: &str, attempt: u32) {
        let Some(entry) = self.entries.get_mut(task) else {
            return;
        };
        if entry.done
            || entry.state.identity.attempt != attempt
            || entry.state.phase() >= Phase::WorkerStarted
            || entry.state.cancel_requested
        {
            return;
        }
        // The Job's disappearance then ends supervision without a failure.
        entry.state.cancel_requested = true;
        let _ = self.reporter.send(ReporterInput::DeleteJob {
            identity: entry.state.identity.clone(),
            job: entry.job.clone(),
            why: "the platform no longer gives this agent the task at this attempt (re-offered, \
                  canceled or finished) and its worker has not started"
                .into(),
        });
    }

    /// The platform says the worker of `task` at `attempt` started: judge it as started, reopening
    /// an entry whose pre-start verdict the platform overruled.
    fn started(&mut self, task: &str, attempt: u32, now: Timestamp) {
        let Some(entry) = self.entries.get_mut(task) else {
            return;
        };
        if entry.state.identity.attempt != attempt || entry.state.phase() == Phase::WorkerStarted {
            return;
        }
        log::info!(
            "{}: the platform says its worker started; supervising it as started",
            entry.state.identity
        );
        let uid = entry.job.uid.clone();
        let pod = self.current_pod(task, &uid);
        if let Some(entry) = self.entries.get_mut(task) {
            entry.state.mark_started(pod.as_ref());
            entry.done = false;
            entry.recheck = None;
            arm_force_deadline(entry, self.cfg.force_cancel_deadline);
        }
        self.assess_task(task, now);
    }

    pub(super) fn apply_pending_cancel(&mut self, task: &str, now: Timestamp) {
        if let Some((mode, _)) = self.pending_cancels.remove(task) {
            self.cancel(task, mode, now);
        }
        if let Some((attempt, _)) = self.pending_unheld.remove(task) {
            self.unheld(task, attempt);
        }
        if let Some((attempt, _)) = self.pending_started.remove(task) {
            self.started(task, attempt, now);
        }
    }

    fn cancel(&mut self, task: &str, mode: CancelMode, now: Timestamp) {
        let deadline = self.cfg.force_cancel_deadline;
        let Some(entry) = self.entries.get_mut(task) else {
            return;
        };
        if entry.done {
            return;
        }
        if mode == CancelMode::Force && entry.force_at.is_none() {
            entry.force_at = Some(now);
        }
        if entry.state.phase() < Phase::WorkerStarted {
            // If the worker turns out to have started (the reporter asks the platform first), the
            // entry is re-judged as started and a force cancel's deadline is armed then.
            if !entry.state.cancel_requested {
                entry.state.cancel_requested = true;
                let _ = self.reporter.send(ReporterInput::CancelUnstarted {
                    identity: entry.state.identity.clone(),
                    job: entry.job.clone(),
                });
            }
        } else {
            arm_force_deadline(entry, deadline);
        }
    }
}
