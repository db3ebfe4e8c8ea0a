//! The shutdown handle: one flag every thread can poll, wait on, or select on.
//!
//! `Shutdown` is cheap to clone. [`Shutdown::trigger`] records the first reason and wakes every waiter:
//! threads blocked in [`Shutdown::wait_timeout`] return, and [`Shutdown::channel`] receivers become
//! ready (the sender is dropped), so a `crossbeam_channel::select!` loop can include it.
//! [`install_signal_handlers`] runs the `signals` thread: SIGTERM or SIGINT trigger the handle; a second
//! SIGINT exits the process at once with status 130.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

/// Why the process is stopping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A signal arrived (SIGTERM, SIGINT).
    Signal(i32),
    /// The platform rejected our credential (401): nothing useful can be done without a new one.
    Unauthorized(String),
    /// A thread failed and the process must stop.
    Failed(String),
    /// Asked to stop by the program itself (tests, a finished task).
    Requested,
}

struct Inner {
    triggered: AtomicBool,
    reason: Mutex<Option<Reason>>,
    wake: Condvar,
    sender: Mutex<Option<Sender<()>>>,
    receiver: Receiver<()>,
}

/// A clonable handle to the process-wide shutdown state.
#[derive(Clone)]
pub struct Shutdown(Arc<Inner>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A fresh, untriggered handle.
    pub fn new() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(0);
        Shutdown(Arc::new(Inner {
            triggered: AtomicBool::new(false),
            reason: Mutex::new(None),
            wake: Condvar::new(),
            sender: Mutex::new(Some(sender)),
            receiver,
        }))
    }

    /// Starts the shutdown. Only the first reason is kept; later calls are no-ops.
    pub fn trigger(&self, reason: Reason) {
        let mut slot = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.0.triggered.store(true, Ordering::SeqCst);
        self.0
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.0.wake.notify_all();
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.0.triggered.load(Ordering::SeqCst)
    }

    /// The first reason given, once triggered.
    pub fn reason(&self) -> Option<Reason> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sleeps up to `timeout`; returns `true` as soon as shutdown is triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.reason.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_triggered() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .0
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A receiver that becomes ready (disconnected) when shutdown is triggered; for `select!`.
    pub fn channel(&self) -> Receiver<()> {
        self.0.receiver.clone()
    }
}

/// Spawns the `signals` thread. The first SIGTERM or SIGINT triggers `shutdown`; a SIGINT after that
/// exits the process with status 130 (the user pressed Ctrl-C twice).
pub fn install_signal_handlers(shutdown: &Shutdown) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let shutdown = shutdown.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGINT && shutdown.is_triggered() {
                    log::warn!("second interrupt: exiting now without cleanup");
                    std::process::exit(130);
                }
                log::info!("received signal {signal}: shutting down");
                shutdown.trigger(Reason::Signal(signal));
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_wakes_waiters_and_keeps_first_reason() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.wait_timeout(Duration::from_millis(1)));
        let waiter = {
            let s = shutdown.clone();
            std::thread::spawn(move || s.wait_timeout(Duration::from_secs(60)))
        };
        shutdown.trigger(Reason::Requested);
        shutdown.trigger(Reason::Failed("later".into()));
        assert!(waiter.join().expect("waiter thread"));
        assert_eq!(shutdown.reason(), Some(Reason::Requested));
    }

    #[test]
    fn channel_is_ready_after_trigger() {
        let shutdown = Shutdown::new();
        let rx = shutdown.channel();
        assert!(rx.try_recv().is_err() && !shutdown.is_triggered());
        shutdown.trigger(Reason::Requested);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
    }
}
