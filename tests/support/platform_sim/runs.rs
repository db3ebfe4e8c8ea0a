//! Run transitions of the simulator's `World`: queueing a run, cancel requests, re-queuing a task
//! for a new attempt, completing a task, and deriving the run's status (which queues the apply stage
//! after a plan with changes and revokes the run token once the run is final). Pure, under the lock.

use std::time::{Instant, SystemTime};

use super::model::*;
use super::world::canceled;

impl World {
    /// Queues a run whose plan task is offered to the workspace's pool.
    pub fn queue_run(
        &mut self,
        workspace: &str,
        spec: RunSpec,
        wall: SystemTime,
        now: Instant,
    ) -> String {
        let ws = self
            .workspaces
            .get(workspace)
            .expect("queue_run: unknown workspace");
        let cv = self
            .cvs
            .get(&spec.configuration_version)
            .expect("queue_run: unknown configuration version");
        assert_eq!(
            cv.workspace, workspace,
            "queue_run: configuration version of another workspace"
        );
        assert!(
            self.tools
                .keys()
                .any(|(n, v, _)| *n == ws.iac_platform && *v == ws.tool_version),
            "queue_run: register tool {} {} first",
            ws.iac_platform,
            ws.tool_version
        );
        let id = self.new_id("run");
        let token = self.new_token(Grant::Run { run: id.clone() });
        self.runs.insert(
            id.clone(),
            Run {
                id: id.clone(),
                workspace: workspace.to_string(),
                spec,
                status: RunStatus::PlanQueued,
                message: None,
                tasks: Vec::new(),
                artefacts: Default::default(),
                token,
                created_at: wall,
            },
        );
        self.add_task(&id, Stage::Plan, wall, now);
        self.advance_run(&id);
        id
    }

    pub(super) fn add_task(&mut self, run: &str, stage: Stage, wall: SystemTime, now: Instant) {
        let id = self.new_id("task");
        let order = self.next_order();
        self.tasks.insert(
            id.clone(),
            Task {
                id: id.clone(),
                order,
                run: run.to_string(),
                stage,
                state: TaskState::Queued,
                attempt: 1,
                holder: None,
                token: None,
                lease: None,
                lease_until_wall: None,
                cancel: None,
                log: Vec::new(),
                result: None,
                failed_by: None,
                last_worker_contact: now,
                created_at: wall,
            },
        );
        self.runs.get_mut(run).expect("run exists").tasks.push(id);
        self.touch();
    }

    /// A user cancels the run: queued tasks at once, others get a graceful then a force request.
    /// Returns the mode requested, or `None` when the run was already final.
    pub fn cancel_run(&mut self, run_id: &str, wall: SystemTime) -> Option<CancelMode> {
        let run = self.runs.get(run_id).expect("cancel_run: unknown run");
        if run.status.is_final() {
            return None;
        }
        let task_id = run
            .tasks
            .iter()
            .find(|t| !self.tasks[*t].state.is_final())
            .cloned()?;
        let task = self.tasks.get_mut(&task_id).expect("task exists");
        let mode = match task.cancel {
            None => CancelMode::Graceful,
            Some(_) => CancelMode::Force,
        };
        if task.state == TaskState::Queued {
            self.complete(&task_id, canceled("canceled by the user"));
        } else {
            task.cancel = Some((mode, wall));
            self.touch();
        }
        Some(mode)
    }

    pub(super) fn requeue(&mut self, task_id: &str) {
        let old = {
            let t = self.tasks.get_mut(task_id).expect("task exists");
            t.attempt += 1;
            t.state = TaskState::Queued;
            t.holder = None;
            t.lease = None;
            t.lease_until_wall = None;
            t.token.take()
        };
        if let Some(token) = old {
            self.revoke(&token);
        }
        let run = self.tasks[task_id].run.clone();
        self.advance_run(&run);
    }

    pub(super) fn complete(&mut self, task_id: &str, result: TaskResult) {
        let t = self.tasks.get_mut(task_id).expect("task exists");
        t.state = result.status;
        t.result = Some(result);
        t.lease = None;
        let run = t.run.clone();
        self.advance_run(&run);
    }

    /// Derives the run's status from its tasks, queuing the apply stage after a plan with changes.
    pub(super) fn advance_run(&mut self, run_id: &str) {
        let run = &self.runs[run_id];
        let tasks: Vec<Task> = run.tasks.iter().map(|t| self.tasks[t].clone()).collect();
        let Some(last) = tasks.last() else { return };
        let (status, message) = match (last.stage, last.state) {
            (_, TaskState::Errored) => (
                RunStatus::Errored,
                last.result.as_ref().map(|r| r.message.clone()),
            ),
            (_, TaskState::Canceled) => (
                RunStatus::Canceled,
                last.result.as_ref().map(|r| r.message.clone()),
            ),
            (Stage::Plan, TaskState::Queued) => (RunStatus::PlanQueued, None),
            (Stage::Plan, TaskState::Acquired | TaskState::Running) => (RunStatus::Planning, None),
            (Stage::Plan, TaskState::Finished) => {
                let changes = last.result.as_ref().is_some_and(|r| r.has_changes);
                if changes && !run.spec.is_dry {
                    let (wall, now) = (self.wall, self.now);
                    self.add_task(run_id, Stage::Apply, wall, now);
                    (RunStatus::ApplyQueued, None)
                } else {
                    (
                        RunStatus::PlannedAndFinished,
                        last.result.as_ref().map(|r| r.message.clone()),
                    )
                }
            }
            (Stage::Apply, TaskState::Queued) => (RunStatus::ApplyQueued, None),
            (Stage::Apply, TaskState::Acquired | TaskState::Running) => (RunStatus::Applying, None),
            (Stage::Apply, TaskState::Finished) => (
                RunStatus::Applied,
                last.result.as_ref().map(|r| r.message.clone()),
            ),
        };
        let run = self.runs.get_mut(run_id).expect("run exists");
        run.status = status;
        run.message = message;
        if status.is_final() {
            let token = run.token.clone();
            self.revoke(&token);
        }
        self.touch();
    }
}
