//! [`StopControl`]: the one place that decides whether a command may start and that signals the
//! running one when the run is stopped, shared by the worker's threads:
//!
//! - the main thread asks [`StopControl::begin`] before it starts each command and starts it while
//!   holding the returned guard, so a stop can never slip in between "may I?" and "started";
//! - the `heartbeat` and `cancel-watch` threads [`StopControl::trigger`] a cancel from the platform;
//! - the `canceller` thread ([`run_canceller`]) triggers a stop on SIGTERM and sends the signals the
//!   [`Escalation`] schedules later (SIGTERM, SIGKILL), waking on a channel when triggered.
//!
//! Signals go through exec-loop's [`Signaller`] to the command's process group; a signal while no
//! command runs is ignored by exec-loop, and no command starts once a stop was triggered.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::cancel::{Escalation, StopCause, Trigger};
use crate::ipc::Signaller;
use crate::shutdown::Shutdown;

/// The shared stop state of a run.
pub struct StopControl {
    inner: Mutex<Inner>,
    wake: Sender<()>,
    wake_rx: Receiver<()>,
}

/// Held while a command starts; see [`StopControl::begin`].
pub struct StartGuard<'a>(#[allow(dead_code)] MutexGuard<'a, Inner>);

struct Inner {
    escalation: Escalation,
    signaller: Option<Signaller>,
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        _ => "a signal",
    }
}

impl Inner {
    fn send(&self, signals: Vec<i32>) {
        for signal in signals {
            log::info!(
                "stopping the running command: sending {}",
                signal_name(signal)
            );
            if let Some(signaller) = &self.signaller
                && let Err(e) = signaller.signal(signal)
            {
                log::warn!(
                    "could not forward {} to exec-loop: {e}",
                    signal_name(signal)
                );
            }
        }
    }
}

impl StopControl {
    /// A control for a run whose grace period is `grace` (`SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT`).
    pub fn new(grace: Duration) -> Arc<Self> {
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        Arc::new(StopControl {
            inner: Mutex::new(Inner {
                escalation: Escalation::new(grace),
                signaller: None,
            }),
            wake,
            wake_rx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is a plain value updated in one statement; a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on signals go to exec-loop's running command.
    pub fn set_signaller(&self, signaller: Signaller) {
        self.lock().signaller = Some(signaller);
    }

    /// Starts or sharpens the stop; due signals go out at once.
    pub fn trigger(&self, trigger: Trigger) {
        let mut inner = self.lock();
        let first = inner.escalation.cause().is_none();
        let due = inner.escalation.trigger(trigger, Instant::now());
        if first {
            log::info!("stopping the run: {trigger:?}");
        }
        inner.send(due);
        drop(inner);
        let _ = self.wake.try_send(());
    }

    /// Sends the signals that fell due; returns when the next one is due.
    pub fn tick(&self) -> Option<Instant> {
        let mut inner = self.lock();
        let due = inner.escalation.tick(Instant::now());
        inner.send(due);
        inner.escalation.next_wake()
    }

    /// Why the run is stopping, once it is.
    pub fn cause(&self) -> Option<StopCause> {
        self.lock().escalation.cause()
    }

    /// When the final report must be in after a stop (`None` while not stopping).
    pub fn report_deadline(&self) -> Option<Instant> {
        self.lock().escalation.report_deadline()
    }

    /// Time the escalation keeps for the final flush and report.
    pub fn reserve(&self) -> Duration {
        self.lock().escalation.reserve()
    }

    /// Permission to start a command: `Err` with the cause once the run is stopping. Start the
    /// command while holding the guard; signals wait until it is dropped.
    pub fn begin(&self) -> Result<StartGuard<'_>, StopCause> {
        let inner = self.lock();
        match inner.escalation.cause() {
            Some(cause) => Err(cause),
            None => Ok(StartGuard(inner)),
        }
    }
}

/// The `canceller` thread: triggers the stop on SIGTERM (`sigterm`) and sends scheduled signals
/// until `done`.
pub fn run_canceller(control: Arc<StopControl>, sigterm: Shutdown, done: Shutdown) {
    let sigterm_rx = sigterm.channel();
    let done_rx = done.channel();
    let mut sigterm_seen = false;
    loop {
        let next = control.tick();
        let timeout = next.map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now())
        });
        let never = crossbeam_channel::never();
        let sigterm_rx = if sigterm_seen { &never } else { &sigterm_rx };
        crossbeam_channel::select! {
            recv(sigterm_rx) -> _ => {
                sigterm_seen = true;
                log::warn!(
                    "received SIGTERM (the pod is being deleted): stopping the run; the final \
                     report follows within SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT"
                );
                control.trigger(Trigger::Terminate);
            }
            recv(control.wake_rx) -> _ => {}
            recv(done_rx) -> _ => return,
            default(timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_command_starts_once_stopped() {
        let control = StopControl::new(Duration::from_secs(60));
        assert!(control.begin().is_ok());
        assert_eq!(control.cause(), None);
        control.trigger(Trigger::Terminate);
        assert_eq!(control.begin().err(), Some(StopCause::Terminated));
        assert!(control.report_deadline().is_some());
    }

    #[test]
    fn the_canceller_turns_sigterm_into_a_stop_and_ends_with_done() {
        let control = StopControl::new(Duration::from_secs(60));
        let (sigterm, done) = (Shutdown::new(), Shutdown::new());
        let thread = {
            let (c, s, d) = (control.clone(), sigterm.clone(), done.clone());
            std::thread::spawn(move || run_canceller(c, s, d))
        };
        sigterm.trigger(crate::shutdown::Reason::Signal(libc::SIGTERM));
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.cause().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(control.cause(), Some(StopCause::Terminated));
        done.trigger(crate::shutdown::Reason::Requested);
        thread.join().expect("canceller");
    }
}
