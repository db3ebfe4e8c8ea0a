//! The end of a task, on the worker's main thread: flush the run log, then report the final
//! status, both retried with backoff until a deadline (the grace deadline after a stop, else the
//! grace period from now). The log goes first because the platform refuses appends to a final
//! task; the report keeps a share of the time for itself, so an unreachable log store cannot
//! cost the status. Only an accepted report lets the worker exit 0.

use std::time::{Duration, Instant};

use super::log_shipper::{LogSender, ShipReport};
use crate::http::{Backoff, RetryPolicy, Retryable, Verdict};
use crate::platform::{PlatformClient, PlatformError, TaskResult};
use crate::secret::Secret;

/// The most of the remaining time kept for the report after the log flush.
pub const MAX_REPORT_SHARE: Duration = Duration::from_secs(10);

/// Why the final status was not accepted.
#[derive(Debug)]
pub enum ReportError {
    /// The platform refused it (the task was already final, the token revoked, ...).
    Rejected(PlatformError),
    /// The platform could not be reached before the deadline.
    Unreachable(Option<PlatformError>),
}

impl std::fmt::Display for ReportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportError::Rejected(e) => write!(f, "the platform refused the final status: {e}"),
            ReportError::Unreachable(Some(e)) => write!(
                f,
                "the platform could not be reached before the grace deadline; last error: {e}"
            ),
            ReportError::Unreachable(None) => {
                write!(f, "no time was left before the grace deadline to report")
            }
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::Rejected(e) | ReportError::Unreachable(Some(e)) => Some(e),
            ReportError::Unreachable(None) => None,
        }
    }
}

/// Flushes the log and reports `result` for task `task_id` before `deadline`. Returns what the
/// log shipper delivered (`None` if it did not answer) and whether the report was accepted.
pub fn report(
    platform: &PlatformClient,
    task_id: &str,
    token: &Secret,
    log: &LogSender,
    result: &TaskResult,
    deadline: Instant,
) -> (Option<ShipReport>, Result<(), ReportError>) {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let report_share = (remaining / 2).min(MAX_REPORT_SHARE);
    let flush_deadline = deadline - report_share;
    // An append in flight at the flush deadline may eat into the report's share, never all of it.
    let shipped = log.flush(flush_deadline, flush_deadline + report_share / 2);
    match &shipped {
        Some(report) if report.complete() => {}
        Some(report) => log::warn!(
            "{} bytes of the run log could not be delivered{}",
            report.unsent_bytes,
            report
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        None => log::warn!("the log shipper did not finish its flush in time"),
    }
    (shipped, finish(platform, task_id, token, result, deadline))
}

fn finish(
    platform: &PlatformClient,
    task_id: &str,
    token: &Secret,
    result: &TaskResult,
    deadline: Instant,
) -> Result<(), ReportError> {
    let mut backoff = Backoff::new(RetryPolicy {
        max_attempts: u32::MAX,
        initial: Duration::from_millis(250),
        max_delay: Duration::from_secs(5),
        max_elapsed: Duration::from_secs(365 * 24 * 3600),
    });
    let mut last = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() && last.is_some() {
            return Err(ReportError::Unreachable(last));
        }
        // Each attempt retries briefly by itself, never past the deadline.
        let client = platform.clone().with_retry(RetryPolicy {
            max_attempts: 3,
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: remaining.max(Duration::from_millis(1)),
        });
        match client.task(task_id, token.clone()).finish(result) {
            Ok(summary) => {
                log::info!(
                    "final status {} accepted (task {:?})",
                    result.status.as_str(),
                    summary.status
                );
                return Ok(());
            }
            Err(e) => match e.verdict() {
                Verdict::Retry { after } => {
                    let delay = backoff
                        .next_delay(Duration::ZERO, after)
                        .unwrap_or(Duration::from_secs(5))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    log::warn!("could not report the final status: {e}; retrying in {delay:?}");
                    last = Some(e);
                    std::thread::sleep(delay);
                }
                Verdict::Permanent | Verdict::Fatal => return Err(ReportError::Rejected(e)),
            },
        }
    }
}
