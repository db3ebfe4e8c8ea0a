//! The simulator's state machine for agents and tasks (runs are in `runs.rs`), as methods on `World`
//! that take "now" as a value and return a protocol error (`ApiError`) when the protocol forbids the
//! step. No I/O and no locking here: the route handlers call these under the world lock, and the
//! reaper thread calls `sweep`.

use std::time::{Instant, SystemTime};

use super::jsonapi::ApiError;
use super::model::*;

/// What a long-poll returns to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Offer(String),
    Cancel(String, CancelMode),
}

impl World {
    // ---- agents -------------------------------------------------------------------------------

    /// Registers `attrs` in `pool`, replacing a same-named agent's session. Returns the agent id.
    pub fn register(
        &mut self,
        pool_token: &str,
        pool: &str,
        attrs: AgentAttrs,
        now: Instant,
        wall: SystemTime,
    ) -> String {
        let existing = self
            .agents
            .values()
            .find(|a| a.pool == pool && a.attrs.name == attrs.name)
            .map(|a| (a.id.clone(), a.session.clone()));
        let id = match &existing {
            Some((id, old_session)) => {
                self.revoke(old_session);
                id.clone()
            }
            None => self.new_id("agent"),
        };
        let session = self.new_token(Grant::Session { agent: id.clone() });
        let created_at = self.agents.get(&id).map_or(wall, |a| a.created_at);
        self.agents.insert(
            id.clone(),
            Agent {
                id: id.clone(),
                pool: pool.to_string(),
                attrs,
                session,
                pool_token: pool_token.to_string(),
                presence: Presence::Online,
                last_seen: now,
                last_seen_wall: wall,
                created_at,
                delivered_cancels: Default::default(),
            },
        );
        self.touch();
        id
    }

    /// Records that the agent called in.
    pub fn seen(&mut self, agent: &str, now: Instant, wall: SystemTime) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.last_seen = now;
            a.last_seen_wall = wall;
        }
    }

    /// Ends an agent's session: `Offline` expires its token (410), `Deregistered` revokes it (401).
    /// Its acquired-but-unstarted tasks are offered again (or canceled when a cancel was pending).
    pub fn end_session(&mut self, agent: &str, presence: Presence) {
        let Some(a) = self.agents.get_mut(agent) else {
            return;
        };
        if a.presence != Presence::Online {
            return;
        }
        a.presence = presence;
        let session = a.session.clone();
        if let Some(entry) = self.tokens.get_mut(&session) {
            match presence {
                Presence::Offline => entry.expired = true,
                _ => entry.revoked = true,
            }
        }
        let unstarted: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.holder.as_deref() == Some(agent) && t.state == TaskState::Acquired)
            .map(|t| t.id.clone())
            .collect();
        for task in unstarted {
            if self.tasks[&task].cancel.is_some() {
                self.complete(&task, canceled("canceled before the task started"));
            } else {
                self.requeue(&task);
            }
        }
        self.touch();
    }

    /// Revokes `token`; revoking a pool token also ends the sessions registered with it.
    pub fn revoke_cascading(&mut self, token: &str) {
        self.revoke(token);
        let agents: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.pool_token == token && a.presence == Presence::Online)
            .map(|a| a.id.clone())
            .collect();
        for agent in agents {
            self.end_session(&agent, Presence::Deregistered);
        }
        self.touch();
    }

    /// Applies the clock: agents past the offline threshold go offline, running tasks whose worker
    /// went silent error. Returns whether anything changed.
    pub fn sweep(&mut self, now: Instant) -> bool {
        let threshold = self.cfg.offline_threshold;
        let offline: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                a.presence == Presence::Online
                    && now.saturating_duration_since(a.last_seen) > threshold
            })
            .map(|a| a.id.clone())
            .collect();
        let worker_threshold = self.cfg.worker_threshold;
        let lost: Vec<String> = self
            .tasks
            .values()
            .filter(|t| {
                t.state == TaskState::Running
                    && now.saturating_duration_since(t.last_worker_contact) > worker_threshold
            })
            .map(|t| t.id.clone())
            .collect();
        let changed = !offline.is_empty() || !lost.is_empty();
        for agent in offline {
            self.end_session(&agent, Presence::Offline);
        }
        for task in lost {
            let message = format!(
                "worker lost: no call from the worker for {} s",
                worker_threshold.as_secs()
            );
            self.complete(&task, errored(&message));
        }
        changed
    }

    /// The pool a task belongs to.
    pub fn task_pool(&self, task: &Task) -> &str {
        let ws = &self.runs[&task.run].workspace;
        &self.workspaces[ws].pool
    }

    /// Collects (and marks delivered / leased) what `agent` should hear now.
    pub fn events(
        &mut self,
        agent: &str,
        free_capacity: u32,
        now: Instant,
        wall: SystemTime,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(a) = self.agents.get(agent) else {
            return events;
        };
        let pool = a.pool.clone();
        let delivered = a.delivered_cancels.clone();
        let mut cancels: Vec<(u64, String, CancelMode)> = self
            .tasks
            .values()
            .filter(|t| t.holder.as_deref() == Some(agent) && !t.state.is_final())
            .filter_map(|t| t.cancel.map(|(mode, _)| (t.order, t.id.clone(), mode)))
            .filter(|(_, id, mode)| !delivered.contains(&(id.clone(), *mode)))
            .collect();
        cancels.sort();
        for (_, task, mode) in cancels {
            if let Some(a) = self.agents.get_mut(agent) {
                a.delivered_cancels.insert((task.clone(), mode));
            }
            events.push(Event::Cancel(task, mode));
        }
        if free_capacity > 0 {
            let duplicate = self.duplicate_offers;
            let mut offers: Vec<(u64, String)> = self
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Queued && self.task_pool(t) == pool)
                .filter(|t| match &t.lease {
                    Some((holder, until)) if *until > now => holder != agent && duplicate,
                    _ => true,
                })
                .map(|t| (t.order, t.id.clone()))
                .collect();
            offers.sort();
            let lease = self.cfg.offer_lease;
            for (_, task) in offers.into_iter().take(free_capacity as usize) {
                if let Some(t) = self.tasks.get_mut(&task) {
                    t.lease = Some((agent.to_string(), now + lease));
                    t.lease_until_wall = Some(wall + lease);
                }
                events.push(Event::Offer(task));
            }
        }
        events
    }

    /// Acquire: the first agent wins, a repeat by the winner is the same success.
    pub fn acquire(&mut self, agent: &str, task_id: &str) -> Result<(), ApiError> {
        let task = self.pool_task(agent, task_id)?;
        match (task.state, task.holder.as_deref()) {
            (TaskState::Queued, _) => {
                let token = self.new_token(Grant::Task {
                    task: task_id.to_string(),
                });
                let t = self.tasks.get_mut(task_id).expect("task exists");
                t.state = TaskState::Acquired;
                t.holder = Some(agent.to_string());
                t.token = Some(token);
                t.lease = None;
                t.lease_until_wall = None;
                let run = t.run.clone();
                self.advance_run(&run);
                Ok(())
            }
            (TaskState::Acquired | TaskState::Running, Some(holder)) if holder == agent => Ok(()),
            (TaskState::Acquired | TaskState::Running, _) => Err(ApiError::conflict(
                "already-acquired",
                format!("task {task_id} was acquired by another agent"),
            )),
            (state, _) => Err(ApiError::conflict(
                "not-available",
                format!(
                    "task {task_id} is {} and cannot be acquired",
                    state.as_str()
                ),
            )),
        }
    }

    /// The controller reports a task it holds as failed.
    pub fn fail_task(&mut self, agent: &str, task_id: &str, reason: &str) -> Result<(), ApiError> {
        let task = self.pool_task(agent, task_id)?;
        if task.state.is_final() {
            return if task.failed_by.as_deref() == Some(agent) {
                Ok(())
            } else {
                Err(completed(task_id, task.state))
            };
        }
        if task.holder.as_deref() != Some(agent) {
            return Err(not_held(task_id));
        }
        self.complete(task_id, errored(reason));
        if let Some(t) = self.tasks.get_mut(task_id) {
            t.failed_by = Some(agent.to_string());
        }
        Ok(())
    }

    /// The controller removed the Job of a canceled, unstarted task.
    pub fn confirm_cancel(&mut self, agent: &str, task_id: &str) -> Result<(), ApiError> {
        let task = self.pool_task(agent, task_id)?;
        let held = task.holder.as_deref() == Some(agent);
        match task.state {
            TaskState::Canceled if held => Ok(()),
            s if s.is_final() => Err(completed(task_id, s)),
            _ if !held => Err(not_held(task_id)),
            TaskState::Running => Err(ApiError::conflict(
                "task-started",
                format!("task {task_id} has started; its worker will finish it"),
            )),
            _ if task.cancel.is_none() => Err(ApiError::conflict(
                "no-cancel-requested",
                format!("no cancel was requested for task {task_id}"),
            )),
            _ => {
                self.complete(task_id, canceled("canceled before the task started"));
                Ok(())
            }
        }
    }

    /// A task of the agent's pool, or 404/403.
    pub fn pool_task(&self, agent: &str, task_id: &str) -> Result<&Task, ApiError> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| ApiError::not_found(format!("task {task_id} does not exist")))?;
        let pool = &self.agents[agent].pool;
        if self.task_pool(task) != pool {
            return Err(ApiError::forbidden(
                "out-of-scope",
                format!("task {task_id} belongs to another agent pool"),
            ));
        }
        Ok(task)
    }

    // ---- worker -------------------------------------------------------------------------------

    /// Records a call from the task's worker.
    pub fn worker_contact(&mut self, task: &str, now: Instant) {
        if let Some(t) = self.tasks.get_mut(task) {
            t.last_worker_contact = now;
        }
    }

    /// The worker starts the task.
    pub fn start(&mut self, task_id: &str, now: Instant) -> Result<(), ApiError> {
        let t = self
            .tasks
            .get_mut(task_id)
            .expect("token names an existing task");
        match t.state {
            TaskState::Acquired => {
                t.state = TaskState::Running;
                t.last_worker_contact = now;
                let run = t.run.clone();
                self.advance_run(&run);
                Ok(())
            }
            TaskState::Running => Ok(()),
            state => Err(completed(task_id, state)),
        }
    }

    /// Whether the task accepts worker writes (logs, artefacts, finish).
    pub fn require_running(&self, task_id: &str) -> Result<&Task, ApiError> {
        let t = &self.tasks[task_id];
        match t.state {
            TaskState::Running => Ok(t),
            s if s.is_final() => Err(completed(task_id, s)),
            _ => Err(ApiError::conflict(
                "task-not-started",
                format!("task {task_id} has not been started; call start first"),
            )),
        }
    }

    /// Appends `bytes` at `offset` by the offset rules; returns the new length.
    pub fn append_log(
        &mut self,
        task_id: &str,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u64, ApiError> {
        self.require_running(task_id)?;
        let log = &mut self.tasks.get_mut(task_id).expect("checked").log;
        let len = log.len() as u64;
        let expected = serde_json::json!({ "expected-offset": len });
        if offset > len {
            return Err(ApiError::conflict(
                "log-gap",
                format!("chunk starts at {offset} but the log has {len} bytes; resend from {len}"),
            )
            .with_meta(expected));
        }
        let start = offset as usize;
        let overlap = (log.len() - start).min(bytes.len());
        if log[start..start + overlap] != bytes[..overlap] {
            return Err(ApiError::conflict(
                "log-mismatch",
                format!("bytes at offset {offset} differ from the stored log; it has {len} bytes"),
            )
            .with_meta(expected));
        }
        log.extend_from_slice(&bytes[overlap..]);
        Ok(log.len() as u64)
    }

    /// The worker reports the final status.
    pub fn finish(&mut self, task_id: &str, result: TaskResult) -> Result<(), ApiError> {
        let t = &self.tasks[task_id];
        if t.state.is_final() {
            return if t.result.as_ref() == Some(&result) {
                Ok(())
            } else {
                Err(completed(task_id, t.state))
            };
        }
        self.require_running(task_id)?;
        if result.status == TaskState::Canceled && t.cancel.is_none() {
            return Err(ApiError::invalid(
                "/data/attributes/status",
                "status canceled needs a cancel request; report errored instead",
            )
            .with_code("invalid-final-status"));
        }
        self.complete(task_id, result);
        Ok(())
    }
}

/// A final result with status errored.
pub fn errored(message: &str) -> TaskResult {
    TaskResult {
        status: TaskState::Errored,
        has_changes: false,
        additions: 0,
        changes: 0,
        destructions: 0,
        message: message.to_string(),
    }
}

/// A final result with status canceled.
pub fn canceled(message: &str) -> TaskResult {
    TaskResult {
        status: TaskState::Canceled,
        ..errored(message)
    }
}

fn completed(task_id: &str, state: TaskState) -> ApiError {
    ApiError::conflict(
        "task-completed",
        format!("task {task_id} is already {}", state.as_str()),
    )
}

fn not_held(task_id: &str) -> ApiError {
    ApiError::forbidden(
        "out-of-scope",
        format!("task {task_id} is not held by this agent"),
    )
}
