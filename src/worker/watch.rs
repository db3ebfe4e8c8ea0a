//! The worker's two platform watchers, each on its own named thread until `done`:
//!
//! - `heartbeat`: a task heartbeat every interval (the platform errors a running task whose
//!   worker is silent for 120 s); its answer carries the cancel requested so far.
//! - `cancel-watch`: the cancel long-poll, so a cancel reaches terraform within a second instead
//!   of at the next heartbeat; after `graceful` it waits for `force`.
//!
//! Both hand what they learn to the [`StopControl`]. A 401, or the task already final, means the
//! task ended on the platform without us: the run is abandoned (terraform stopped at once).
//!
//! They are joined with a bound ([`Watcher::join_within`]): a long-poll in flight cannot be
//! interrupted, and when the platform is unreachable at the end the worker must exit at its grace
//! deadline, not a long-poll later. Normally the cancel long-poll returns at once when the task
//! becomes final.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::cancel::Trigger;
use super::control::StopControl;
use crate::platform::{CancelMode, PlatformError, TaskClient};
use crate::shutdown::Shutdown;

/// How long one cancel long-poll waits (the protocol allows up to 30 s; shorter ends the thread
/// sooner when the platform stops answering at the end of a run).
pub const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed cancel long-poll.
const CANCEL_RETRY: Duration = Duration::from_secs(2);

/// Whether `error` means the task is over on the platform.
fn task_gone(error: &PlatformError) -> bool {
    error.is_unauthorized() || error.code() == Some("task-completed")
}

/// A watcher thread that can be joined with a bound.
pub struct Watcher {
    name: &'static str,
    handle: JoinHandle<()>,
    /// Disconnected when the thread's body returned (or unwound).
    finished: Receiver<()>,
}

impl Watcher {
    /// Spawns `body` on a thread called `name`.
    pub fn spawn(
        name: &'static str,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (ended, finished) = crossbeam_channel::bounded::<()>(0);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ended: Sender<()> = ended;
                body();
            })?;
        Ok(Watcher {
            name,
            handle,
            finished,
        })
    }

    /// Joins the thread if it ends within `timeout` (re-raising its panic); otherwise leaves it to
    /// end with the process.
    pub fn join_within(self, timeout: Duration) {
        match self.finished.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if let Err(panic) = self.handle.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(RecvTimeoutError::Timeout) => log::debug!(
                "thread {} is still waiting for the platform; not waiting for it",
                self.name
            ),
        }
    }
}

/// The `heartbeat` thread's body.
pub fn run_heartbeat(
    task: TaskClient,
    control: Arc<StopControl>,
    interval: Duration,
    done: Shutdown,
) {
    loop {
        match task.heartbeat() {
            Ok(Some(mode)) => control.trigger(Trigger::Cancel(mode)),
            Ok(None) => {}
            Err(e) if task_gone(&e) => {
                if !done.is_triggered() {
                    log::error!("the task ended on the platform while it ran: {e}");
                    control.trigger(Trigger::Abandon);
                }
                return;
            }
            Err(e) => log::warn!("task heartbeat failed: {e}"),
        }
        if done.wait_timeout(interval) {
            return;
        }
    }
}

/// How often the `healthy` marker is touched (the chart's liveness probe allows 60 s).
pub const HEALTHY_INTERVAL: Duration = Duration::from_secs(10);

/// The `markers` thread's body: touches the worker's `healthy` marker until `done`. Kept apart
/// from the platform calls, which may block for a read timeout while the platform is slow: a
/// slow platform must not get the worker container restarted.
pub fn run_markers(healthy: PathBuf, done: Shutdown) {
    loop {
        if let Err(e) = crate::probe::touch_marker(&healthy) {
            log::warn!("could not touch {}: {e}", healthy.display());
        }
        if done.wait_timeout(HEALTHY_INTERVAL) {
            return;
        }
    }
}

/// The `cancel-watch` thread's body.
pub fn run_cancel_watch(task: TaskClient, control: Arc<StopControl>, done: Shutdown) {
    let mut seen: Option<CancelMode> = None;
    while !done.is_triggered() {
        match task.wait_cancel(seen, CANCEL_WAIT) {
            Ok(Some(mode)) => {
                control.trigger(Trigger::Cancel(mode));
                seen = seen.max(Some(mode));
                if mode == CancelMode::Force {
                    return; // nothing stronger can come
                }
            }
            Ok(None) => {}
            Err(e) if task_gone(&e) => return,
            Err(e) => {
                log::debug!("cancel long-poll failed: {e}");
                if done.wait_timeout(CANCEL_RETRY) {
                    return;
                }
            }
        }
    }
}
