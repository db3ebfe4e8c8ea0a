//! Scripted faults and the request log. A test queues faults per route ("the next 2 acquires answer
//! 503 with Retry-After: 1"); the dispatcher takes one before handling each request. Every request is
//! logged with its route, the kind of token it carried (never the token) and the status it got.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::routes::Route;

/// What to do instead of (or around) the normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` (429, 503, 500, ...) without handling, with `Retry-After` when given.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Close the connection without answering, without handling.
    Drop,
    /// Hold the request for this long without answering, then close (a hung long-poll).
    Hang(Duration),
    /// Handle the request, then close without answering (a lost response).
    LoseResponse,
    /// Wait this long, then handle normally (a slow server).
    Delay(Duration),
    /// Handle at once (the log shows the status), then wait this long before answering (a slow
    /// way back: the platform has acted, the client does not know yet).
    SlowResponse(Duration),
}

impl Fault {
    /// 429 with `Retry-After: secs`.
    pub fn throttled(secs: u64) -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(secs),
        }
    }

    /// 503 with `Retry-After: secs`.
    pub fn unavailable(secs: u64) -> Self {
        Fault::Status {
            status: 503,
            retry_after: Some(secs),
        }
    }

    /// 500 without `Retry-After`.
    pub fn server_error() -> Self {
        Fault::Status {
            status: 500,
            retry_after: None,
        }
    }
}

/// Faults waiting per route, in order.
#[derive(Debug, Default)]
pub struct FaultScript {
    queued: HashMap<Route, VecDeque<Fault>>,
}

impl FaultScript {
    /// The next `count` requests of `route` get `fault`.
    pub fn push(&mut self, route: Route, count: usize, fault: Fault) {
        let queue = self.queued.entry(route).or_default();
        queue.extend(std::iter::repeat_n(fault, count));
    }

    /// Takes the fault for this request, if any.
    pub fn take(&mut self, route: Route) -> Option<Fault> {
        self.queued.get_mut(&route)?.pop_front()
    }

    /// Faults still waiting.
    pub fn pending(&self) -> usize {
        self.queued.values().map(VecDeque::len).sum()
    }
}

/// One request as the simulator saw it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When it arrived (real time).
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    /// `None` for 404/405.
    pub route: Option<Route>,
    /// `pool`, `session`, `task`, `run`, or `None` (no or unknown token).
    pub token_kind: Option<&'static str>,
    /// The status sent; `None` while the request is being handled (a waiting long-poll) and when
    /// the connection was dropped without an answer.
    pub status: Option<u16>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

impl std::fmt::Display for LoggedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.status.map_or("dropped".to_string(), |s| s.to_string());
        let query = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        write!(
            f,
            "{} {}{} [{}] -> {}",
            self.method,
            self.path,
            query,
            self.token_kind.unwrap_or("no token"),
            status
        )?;
        if let Some(fault) = &self.fault {
            write!(f, " (fault {fault:?})")?;
        }
        Ok(())
    }
}
