//! The platform client: the protocol of `docs/protocol.md` from the agent's side, blocking.
//!
//! - [`PlatformClient`] (`client.rs`): transport, retries, error classification, checked downloads.
//! - [`AgentClient`] (`agent.rs`): the controller's session calls; re-registers after a 410.
//! - [`TaskClient`] (`task.rs`): the worker's task-token calls.
//! - `types.rs`: typed requests and responses; `wire.rs`: their JSON:API documents.
//! - [`PlatformError`] (`error.rs`): one error enum, classified once through `http::Retryable`.
//!
//! Every token is a [`crate::secret::Secret`]: never printed, never in an error.

mod agent;
mod client;
mod error;
mod task;
mod types;
mod wire;

pub use agent::AgentClient;
pub use client::{DEFAULT_LONG_POLL_MARGIN, MAX_WAIT, PlatformClient};
pub use error::{CallSite, PlatformError, TokenKind};
pub use task::{MAX_LOG_CHUNK, TaskClient};
pub use types::*;
