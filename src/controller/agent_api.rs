//! The controller's boundary to the platform: the [`AgentApi`] trait its stages call, implemented by
//! the real [`AgentClient`], plus the conversions from platform types to [`crate::model`] types.
//!
//! No thread of its own; every stage that talks to the platform (poller, heartbeat, launcher,
//! reporter, housekeeper) holds an `Arc<dyn AgentApi>`. The trait exists so each stage's `handle` can
//! be unit-tested with a fake; integration tests use the real client against the platform simulator.
//! Errors are the client's [`PlatformError`]s, already retried within the client's policy and
//! classified once: [`is_fatal`] (401) stops the controller.

use std::time::Duration;

use crate::http::{Retryable, Verdict};
use crate::model::{CancelMode, TaskIdentity, TaskOffered};
use crate::platform::{
    AgentClient, AgentEvent, CancelMode as WireCancelMode, HeldTask, PlatformError, TaskOffer,
    TaskSummary,
};

/// The platform calls the controller makes with its session (see `docs/protocol.md`).
pub trait AgentApi: Send + Sync {
    /// The agent id of the current session.
    fn agent_id(&self) -> String;
    /// Bumped each time the client registered again after the session expired.
    fn generation(&self) -> u64;
    /// How often to send a heartbeat.
    fn heartbeat_interval(&self) -> Duration;
    /// The longest long-poll wait the platform accepts.
    fn max_wait(&self) -> Duration;
    /// Tells the platform the agent is alive, advertising `free` slots.
    fn heartbeat(&self, free: u32) -> Result<(), PlatformError>;
    /// Long-polls for offers (at most `free`) and cancel signals.
    fn poll(&self, free: u32, wait: Duration) -> Result<Vec<AgentEvent>, PlatformError>;
    /// Acquires an offered task (one agent wins).
    fn acquire(&self, task_id: &str) -> Result<HeldTask, PlatformError>;
    /// Fails a held task with a reason the user reads.
    fn fail_task(&self, task_id: &str, reason: &str) -> Result<TaskSummary, PlatformError>;
    /// Confirms that the Job of a canceled, unstarted task is gone.
    fn confirm_cancel(&self, task_id: &str) -> Result<TaskSummary, PlatformError>;
    /// Every non-final task this agent holds, with tokens.
    fn held_tasks(&self) -> Result<Vec<HeldTask>, PlatformError>;
    /// One task of the pool.
    fn task(&self, task_id: &str) -> Result<TaskSummary, PlatformError>;
    /// Ends the session.
    fn deregister(&self) -> Result<(), PlatformError>;
}

impl AgentApi for AgentClient {
    fn agent_id(&self) -> String {
        self.session().agent_id.clone()
    }
    fn generation(&self) -> u64 {
        AgentClient::generation(self)
    }
    fn heartbeat_interval(&self) -> Duration {
        self.session().heartbeat_interval
    }
    fn max_wait(&self) -> Duration {
        self.session().max_wait
    }
    fn heartbeat(&self, free: u32) -> Result<(), PlatformError> {
        AgentClient::heartbeat(self, free).map(drop)
    }
    fn poll(&self, free: u32, wait: Duration) -> Result<Vec<AgentEvent>, PlatformError> {
        AgentClient::poll(self, free, wait)
    }
    fn acquire(&self, task_id: &str) -> Result<HeldTask, PlatformError> {
        AgentClient::acquire(self, task_id)
    }
    fn fail_task(&self, task_id: &str, reason: &str) -> Result<TaskSummary, PlatformError> {
        AgentClient::fail_task(self, task_id, reason)
    }
    fn confirm_cancel(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        AgentClient::confirm_cancel(self, task_id)
    }
    fn held_tasks(&self) -> Result<Vec<HeldTask>, PlatformError> {
        AgentClient::held_tasks(self)
    }
    fn task(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        AgentClient::task(self, task_id)
    }
    fn deregister(&self) -> Result<(), PlatformError> {
        AgentClient::deregister(self)
    }
}

/// 401: the credential is gone; the controller stops in order.
pub fn is_fatal(error: &PlatformError) -> bool {
    error.verdict() == Verdict::Fatal
}

/// Worth trying again later (429, 5xx, transport), after the client's own retries ran out.
pub fn is_retryable(error: &PlatformError) -> bool {
    matches!(error.verdict(), Verdict::Retry { .. })
}

/// The metrics class of a platform error.
pub fn error_class(error: &PlatformError) -> &'static str {
    match error {
        PlatformError::Unauthorized { .. } => "unauthorized",
        PlatformError::SessionExpired { .. } => "session_expired",
        PlatformError::Unavailable { status: 429, .. } => "throttled",
        PlatformError::Unavailable { .. } => "unavailable",
        PlatformError::Transport { .. } => "transport",
        PlatformError::Rejected { status: 409, .. } => "conflict",
        PlatformError::Rejected { .. } => "rejected",
        _ => "other",
    }
}

/// The identity of an offered task.
pub fn offered(offer: &TaskOffer) -> TaskOffered {
    TaskOffered {
        identity: TaskIdentity {
            task_id: offer.task_id.clone(),
            run_id: offer.run_id.clone(),
            stage: offer.stage.as_str().to_string(),
            workspace_id: offer.workspace_id.clone(),
            environment_id: offer.environment_id.clone(),
            attempt: offer.attempt,
        },
        expires_at: offer.expires_at,
    }
}

/// The identity of a task as the platform summarises it (acquire, held tasks).
pub fn identity(summary: &TaskSummary) -> TaskIdentity {
    TaskIdentity {
        task_id: summary.id.clone(),
        run_id: summary.run_id.clone(),
        stage: summary.stage.as_str().to_string(),
        workspace_id: summary.workspace_id.clone(),
        environment_id: summary.environment_id.clone(),
        attempt: summary.attempt,
    }
}

/// The model's cancel mode.
pub fn cancel_mode(mode: WireCancelMode) -> CancelMode {
    match mode {
        WireCancelMode::Graceful => CancelMode::Graceful,
        WireCancelMode::Force => CancelMode::Force,
    }
}
