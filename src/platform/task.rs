//! `TaskClient`: the worker's calls with its task token — start, get, downloads (configuration
//! version, tool binaries, plan artefacts), log appends at an offset, artefact uploads, task heartbeat,
//! the cancel long-poll and finish. One per task; cheap to clone for the worker's threads (log
//! shipper, heartbeat, cancel watcher).

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::client::{Body, Call, MAX_WAIT, PlatformClient, check_id, hex, site};
use super::error::{CallSite, PlatformError, TokenKind};
use super::types::*;
use super::wire;
use crate::secret::Secret;

/// Largest log chunk the platform accepts; longer appends are split.
pub const MAX_LOG_CHUNK: usize = 1024 * 1024;

/// The worker's handle on its task.
#[derive(Clone)]
pub struct TaskClient {
    client: PlatformClient,
    task_id: String,
    token: Secret,
}

impl std::fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskClient")
            .field("task_id", &self.task_id)
            .field("token", &self.token)
            .finish()
    }
}

impl PlatformClient {
    /// The client for task `task_id` with its task token (from the per-task Secret).
    pub fn task(&self, task_id: &str, token: Secret) -> TaskClient {
        TaskClient {
            client: self.clone(),
            task_id: task_id.to_string(),
            token,
        }
    }
}

impl TaskClient {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.task_id
    }

    fn at(
        &self,
        call: &'static str,
        method: &'static str,
        suffix: &str,
    ) -> Result<CallSite, PlatformError> {
        let at = site(
            call,
            method,
            format!("/api/iacp/v3/tasks/{}{suffix}", self.task_id),
            TokenKind::Task,
        );
        check_id(&at, &self.task_id)?;
        Ok(at)
    }

    fn json(
        &self,
        at: CallSite,
        body: Body<'_>,
        read_timeout: Option<Duration>,
    ) -> Result<(CallSite, serde_json::Value), PlatformError> {
        self.client.send_json(Call {
            site: at,
            token: &self.token,
            body,
            read_timeout,
        })
    }

    fn spec(&self, at: CallSite, body: &serde_json::Value) -> Result<TaskSpec, PlatformError> {
        wire::parse_spec(body, self.client.base_url())
            .map_err(|detail| PlatformError::decode(at, detail))
    }

    /// Starts the task (acquired → running) and returns everything the worker needs. A `Rejected`
    /// with code `task-completed` means it was failed or canceled before the worker got to it; an
    /// `Unauthorized` means it was offered again to another agent: exit either way.
    pub fn start(&self) -> Result<TaskSpec, PlatformError> {
        let (at, body) = self.json(
            self.at("start task", "POST", "/actions/start")?,
            Body::Empty,
            None,
        )?;
        self.spec(at, &body)
    }

    /// Reads the task document again.
    pub fn get(&self) -> Result<TaskSpec, PlatformError> {
        let (at, body) = self.json(self.at("read task", "GET", "")?, Body::Empty, None)?;
        self.spec(at, &body)
    }

    /// Downloads a configuration version, tool or artefact to `dest` (sha256- and size-checked,
    /// written to a temporary sibling and renamed). Returns the size.
    pub fn download(&self, download: &Download, dest: &Path) -> Result<u64, PlatformError> {
        self.client
            .download("download", &self.token, download, dest)
    }

    /// Appends `chunk` at `offset` of the task's log and returns the log's new length. Repeating an
    /// append is a no-op; a gap is a `Rejected` with code `log-gap` and
    /// [`PlatformError::expected_offset`]. Chunks over 1 MiB are sent in pieces.
    pub fn append_log(&self, offset: u64, chunk: &[u8]) -> Result<u64, PlatformError> {
        if chunk.is_empty() {
            return self.append_piece(offset, &[]);
        }
        let (mut next, mut length) = (offset, offset);
        for piece in chunk.chunks(MAX_LOG_CHUNK) {
            length = self.append_piece(next, piece)?;
            next += piece.len() as u64;
        }
        Ok(length)
    }

    fn append_piece(&self, offset: u64, piece: &[u8]) -> Result<u64, PlatformError> {
        let at = self.at("append log", "PUT", &format!("/log?offset={offset}"))?;
        let (at, body) = self.json(
            at,
            Body::Bytes {
                bytes: piece,
                sha256: None,
            },
            None,
        )?;
        wire::parse_log_length(&body).map_err(|detail| PlatformError::decode(at, detail))
    }

    /// Uploads a plan artefact of run `run_id` (plan stage only). The same bytes again succeed;
    /// different bytes are a `Rejected` with code `artefact-exists`.
    pub fn upload_artefact(
        &self,
        run_id: &str,
        kind: ArtefactKind,
        bytes: &[u8],
    ) -> Result<(), PlatformError> {
        let path = format!("/api/iacp/v3/runs/{run_id}/artefacts/{}", kind.as_str());
        let at = site("upload artefact", "PUT", path, TokenKind::Task);
        check_id(&at, run_id)?;
        let sha256 = hex(&Sha256::digest(bytes));
        self.json(
            at,
            Body::Bytes {
                bytes,
                sha256: Some(sha256),
            },
            None,
        )
        .map(drop)
    }

    /// Tells the platform the worker is alive (every 10 s; silent for 120 s → "worker lost") and
    /// returns the cancel requested so far.
    pub fn heartbeat(&self) -> Result<Option<CancelMode>, PlatformError> {
        let (at, body) = self.json(
            self.at("send task heartbeat", "POST", "/actions/heartbeat")?,
            Body::Empty,
            None,
        )?;
        wire::parse_task_heartbeat(&body).map_err(|detail| PlatformError::decode(at, detail))
    }

    /// Long-polls for a cancel stronger than `seen`, up to `wait` (at most 30 s). `None` when the
    /// wait ended without one (or the task is final).
    pub fn wait_cancel(
        &self,
        seen: Option<CancelMode>,
        wait: Duration,
    ) -> Result<Option<CancelMode>, PlatformError> {
        let wait = wait.min(MAX_WAIT);
        let mut suffix = format!("/cancel?wait-seconds={}", wait.as_secs());
        if seen.is_some() {
            suffix.push_str("&seen=graceful");
        }
        let at = self.at("wait for cancel", "GET", &suffix)?;
        let timeout = self.client.long_poll_timeout(wait);
        let (at, body) = self.json(at, Body::Empty, Some(timeout))?;
        wire::parse_cancel(&body).map_err(|detail| PlatformError::decode(at, detail))
    }

    /// Reports the final status. Repeating the same result succeeds; a different one after the task
    /// is final is a `Rejected` with code `task-completed`.
    pub fn finish(&self, result: &TaskResult) -> Result<TaskSummary, PlatformError> {
        let at = self.at("finish task", "POST", "/actions/finish")?;
        let (at, body) = self.json(at, Body::Json(wire::result_doc(result)), None)?;
        wire::parse_summary(&body).map_err(|detail| PlatformError::decode(at, detail))
    }
}
