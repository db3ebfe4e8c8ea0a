//! `AgentClient`: the controller's calls with its session token — heartbeat, the events long-poll,
//! acquire, fail, confirm-cancel, held tasks, one task, deregister — and registration with the pool
//! token. Shared by the controller's threads (clone it). When the platform answers 410 (the session
//! expired after missed heartbeats) the client registers again under the same name, swaps the session
//! for every clone, bumps [`AgentClient::generation`] and repeats the call once; the controller watches
//! the generation to rebuild its view (unstarted tasks were offered again).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::client::{Body, Call, MAX_WAIT, PlatformClient, check_id, site};
use super::error::{PlatformError, TokenKind};
use super::types::*;
use super::wire;
use crate::secret::Secret;

struct Shared {
    pool_token: Secret,
    registration: Registration,
    session: RwLock<Arc<AgentSession>>,
    generation: AtomicU64,
    renewing: Mutex<()>,
}

/// The controller's handle on its agent session. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct AgentClient {
    client: PlatformClient,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("session", &self.session())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl PlatformClient {
    /// Registers an agent with the pool token (`POST /agents`) and returns its session client.
    pub fn register(
        &self,
        pool_token: &Secret,
        registration: &Registration,
    ) -> Result<AgentClient, PlatformError> {
        let session = self.register_session(pool_token, registration)?;
        Ok(AgentClient {
            client: self.clone(),
            shared: Arc::new(Shared {
                pool_token: pool_token.clone(),
                registration: registration.clone(),
                session: RwLock::new(Arc::new(session)),
                generation: AtomicU64::new(0),
                renewing: Mutex::new(()),
            }),
        })
    }

    fn register_session(
        &self,
        pool_token: &Secret,
        registration: &Registration,
    ) -> Result<AgentSession, PlatformError> {
        let (at, body) = self.send_json(Call {
            site: site(
                "register agent",
                "POST",
                "/api/iacp/v3/agents".into(),
                TokenKind::Pool,
            ),
            token: pool_token,
            body: Body::Json(wire::registration_doc(registration)),
            read_timeout: None,
        })?;
        wire::parse_session(&body).map_err(|detail| PlatformError::decode(at, detail))
    }
}

impl AgentClient {
    /// The current session (replaced after a re-registration).
    pub fn session(&self) -> Arc<AgentSession> {
        self.shared
            .session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many times the client registered again after its session expired.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Runs `op` with the current session; registers again and repeats once after a 410, and repeats
    /// once after a 401 caused by another thread's re-registration.
    fn with_session<T>(
        &self,
        op: impl Fn(&AgentSession) -> Result<T, PlatformError>,
    ) -> Result<T, PlatformError> {
        let generation = self.generation();
        let session = self.session();
        match op(&session) {
            Err(e) if e.is_session_expired() => {
                self.renew(generation)?;
                op(&self.session())
            }
            Err(e) if e.is_unauthorized() => {
                // The platform fences the old session as soon as it registers this agent again,
                // before the registering thread has swapped the new one in: wait for a renewal in
                // progress (it holds the lock through the call), then judge the 401.
                drop(
                    self.shared
                        .renewing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()),
                );
                if self.generation() != generation {
                    op(&self.session())
                } else {
                    Err(e)
                }
            }
            other => other,
        }
    }

    /// Registers again unless another thread already did since `seen` was read.
    fn renew(&self, seen: u64) -> Result<(), PlatformError> {
        let _one_at_a_time = self
            .shared
            .renewing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.generation() != seen {
            return Ok(());
        }
        let session = self
            .client
            .register_session(&self.shared.pool_token, &self.shared.registration)?;
        log::warn!(
            "the agent's session expired (missed heartbeats); registered again as agent {}",
            session.agent_id
        );
        *self
            .shared
            .session
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(session);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Tells the platform the agent is alive (`heartbeat-interval`, 10 s).
    pub fn heartbeat(&self, free_capacity: u32) -> Result<AgentInfo, PlatformError> {
        self.with_session(|s| {
            let path = format!("/api/iacp/v3/agents/{}/actions/heartbeat", s.agent_id);
            let (at, body) = self.client.send_json(Call {
                site: site("send heartbeat", "POST", path, TokenKind::Session),
                token: &s.token,
                body: Body::Json(wire::heartbeat_doc(free_capacity)),
                read_timeout: None,
            })?;
            wire::parse_agent(&body).map_err(|detail| PlatformError::decode(at, detail))
        })
    }

    /// Long-polls for offers (at most `free_capacity`) and cancel signals, waiting up to `wait`
    /// (capped at the session's `max-wait`). An empty list means nothing happened.
    pub fn poll(
        &self,
        free_capacity: u32,
        wait: Duration,
    ) -> Result<Vec<AgentEvent>, PlatformError> {
        self.with_session(|s| {
            let wait = wait.min(s.max_wait).min(MAX_WAIT);
            let path = format!(
                "/api/iacp/v3/agents/{}/events?wait-seconds={}&free-capacity={free_capacity}",
                s.agent_id,
                wait.as_secs()
            );
            let (at, body) = self.client.send_json(Call {
                site: site("wait for tasks", "GET", path, TokenKind::Session),
                token: &s.token,
                body: Body::Empty,
                read_timeout: Some(self.client.long_poll_timeout(wait)),
            })?;
            wire::parse_events(&body).map_err(|detail| PlatformError::decode(at, detail))
        })
    }

    /// Acquires a task: exactly one agent wins; the others get a `Rejected` with code
    /// `already-acquired` (or `not-available`). Repeating a won acquire returns the same token.
    pub fn acquire(&self, task_id: &str) -> Result<HeldTask, PlatformError> {
        self.task_action(
            "acquire task",
            task_id,
            "acquire",
            Body::Empty,
            |at, body| wire::parse_held(body).map_err(|detail| PlatformError::decode(at, detail)),
        )
    }

    /// Fails a task this agent holds with a reason the user will read (pod never started, died
    /// without reporting). Repeating it is harmless.
    pub fn fail_task(&self, task_id: &str, reason: &str) -> Result<TaskSummary, PlatformError> {
        let doc = wire::failure_doc(&crate::secret::redact(reason));
        self.task_action("fail task", task_id, "fail", Body::Json(doc), summary)
    }

    /// Confirms that the Job of a canceled, unstarted task is gone: the task becomes canceled.
    pub fn confirm_cancel(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        self.task_action(
            "confirm cancel",
            task_id,
            "confirm-cancel",
            Body::Empty,
            summary,
        )
    }

    fn task_action<T>(
        &self,
        call: &'static str,
        task_id: &str,
        action: &str,
        body: Body<'_>,
        parse: impl Fn(super::error::CallSite, &serde_json::Value) -> Result<T, PlatformError>,
    ) -> Result<T, PlatformError> {
        let json = match body {
            Body::Json(v) => Some(v),
            _ => None,
        };
        self.with_session(|s| {
            let path = format!("/api/iacp/v3/tasks/{task_id}/actions/{action}");
            let at = site(call, "POST", path, TokenKind::Session);
            check_id(&at, task_id)?;
            let (at, body) = self.client.send_json(Call {
                site: at,
                token: &s.token,
                body: json.clone().map_or(Body::Empty, Body::Json),
                read_timeout: None,
            })?;
            parse(at, &body)
        })
    }

    /// Every non-final task this agent holds, with tokens: the platform's half of rebuilding the
    /// controller's view after a restart.
    pub fn held_tasks(&self) -> Result<Vec<HeldTask>, PlatformError> {
        self.with_session(|s| {
            let path = format!("/api/iacp/v3/agents/{}/tasks", s.agent_id);
            let (at, body) = self.client.send_json(Call {
                site: site("list held tasks", "GET", path, TokenKind::Session),
                token: &s.token,
                body: Body::Empty,
                read_timeout: None,
            })?;
            wire::parse_held_list(&body).map_err(|detail| PlatformError::decode(at, detail))
        })
    }

    /// Any task of the agent's pool: is it still ours, still alive, canceled?
    pub fn task(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        self.with_session(|s| {
            let path = format!("/api/iacp/v3/agents/{}/tasks/{task_id}", s.agent_id);
            let at = site("read task", "GET", path, TokenKind::Session);
            check_id(&at, task_id)?;
            let (at, body) = self.client.send_json(Call {
                site: at,
                token: &s.token,
                body: Body::Empty,
                read_timeout: None,
            })?;
            summary(at, &body)
        })
    }

    /// Ends the session. Unstarted tasks are offered to other agents at once.
    pub fn deregister(&self) -> Result<(), PlatformError> {
        self.with_session(|s| {
            let path = format!("/api/iacp/v3/agents/{}", s.agent_id);
            self.client
                .send(Call {
                    site: site("deregister agent", "DELETE", path, TokenKind::Session),
                    token: &s.token,
                    body: Body::Empty,
                    read_timeout: None,
                })
                .map(drop)
        })
    }
}

fn summary(
    at: super::error::CallSite,
    body: &serde_json::Value,
) -> Result<TaskSummary, PlatformError> {
    wire::parse_summary(body).map_err(|detail| PlatformError::decode(at, detail))
}
