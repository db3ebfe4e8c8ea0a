//! The stop escalation: what signal the running command gets, and when, after a cancel from the
//! platform or a SIGTERM to the worker. Pure: triggers and the current time in, signals out; the
//! `canceller` thread (`control.rs`) feeds it and forwards the signals through exec-loop.
//!
//! Schedule, from the first trigger at `t0`, with `G` = `SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT`
//! and `R` = the reserve kept for flushing the log and reporting (a tenth of `G`, between 1 s and
//! 30 s, never more than half of `G`):
//!
//! | when | signal | why |
//! |---|---|---|
//! | `t0` | SIGINT | terraform stops gracefully: it finishes the resources in flight and pushes state |
//! | `t0 + (G − R) / 2` | SIGTERM | a second signal: terraform exits at once (state may be lost) |
//! | `t0 + G − R` | SIGKILL | nothing may outlive the grace period |
//! | `t0 + G` | — | [`Escalation::report_deadline`]: the final report must be in |
//!
//! A `force` cancel (the user cancelled twice) sends SIGTERM at once if it was not sent yet, and
//! brings SIGKILL forward to at most [`FORCE_KILL_AFTER`] later. Each signal is sent at most once.

use std::time::{Duration, Instant};

use crate::platform::CancelMode;

/// Longest a command survives a `force` cancel before SIGKILL.
pub const FORCE_KILL_AFTER: Duration = Duration::from_secs(10);
/// Bounds of the reserve kept for the final log flush and report.
pub const MIN_RESERVE: Duration = Duration::from_secs(1);
pub const MAX_RESERVE: Duration = Duration::from_secs(30);

/// What starts or sharpens the escalation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The platform asked to cancel the run.
    Cancel(CancelMode),
    /// The worker received SIGTERM (the pod is being deleted) or exec-loop did.
    Terminate,
    /// The task ended on the platform without us (failed by the controller, token revoked):
    /// nothing the command does can be reported any more. Escalates like a `force` cancel.
    Abandon,
}

/// Why the run was stopped, for the final status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// The platform asked (the final status is `canceled`).
    Canceled(CancelMode),
    /// SIGTERM without a cancel from the platform (the final status is `errored`).
    Terminated,
    /// The task is already final on the platform.
    Abandoned,
}

/// The escalation state of one run.
#[derive(Clone, Debug)]
pub struct Escalation {
    grace: Duration,
    reserve: Duration,
    started: Option<Instant>,
    cancel: Option<CancelMode>,
    terminated: bool,
    abandoned: bool,
    /// Pending signals and when they are due, in the order they go out.
    schedule: Vec<(Instant, i32)>,
    sent: Vec<i32>,
}

impl Escalation {
    /// A quiet escalation for a grace period of `grace`.
    pub fn new(grace: Duration) -> Self {
        let reserve = (grace / 10).clamp(MIN_RESERVE, MAX_RESERVE).min(grace / 2);
        Escalation {
            grace,
            reserve,
            started: None,
            cancel: None,
            terminated: false,
            abandoned: false,
            schedule: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// Time kept after SIGKILL for the final flush and report.
    pub fn reserve(&self) -> Duration {
        self.reserve
    }

    /// Applies a trigger at `now`; returns the signals to send now.
    pub fn trigger(&mut self, trigger: Trigger, now: Instant) -> Vec<i32> {
        match trigger {
            Trigger::Cancel(mode) => self.cancel = self.cancel.max(Some(mode)),
            Trigger::Terminate => self.terminated = true,
            Trigger::Abandon => self.abandoned = true,
        }
        if self.started.is_none() {
            self.started = Some(now);
            let kill_after = self.grace.saturating_sub(self.reserve);
            self.schedule = vec![
                (now, libc::SIGINT),
                (now + kill_after / 2, libc::SIGTERM),
                (now + kill_after, libc::SIGKILL),
            ];
        }
        if matches!(
            trigger,
            Trigger::Cancel(CancelMode::Force) | Trigger::Abandon
        ) {
            for (at, signal) in &mut self.schedule {
                match *signal {
                    libc::SIGTERM => *at = (*at).min(now),
                    libc::SIGKILL => *at = (*at).min(now + FORCE_KILL_AFTER),
                    _ => {}
                }
            }
        }
        self.tick(now)
    }

    /// The signals due at `now` that were not sent yet, in order.
    pub fn tick(&mut self, now: Instant) -> Vec<i32> {
        let mut due = Vec::new();
        for (at, signal) in &self.schedule {
            if *at <= now && !self.sent.contains(signal) {
                due.push(*signal);
            }
        }
        self.sent.extend(&due);
        due
    }

    /// When the next signal is due, if any is pending.
    pub fn next_wake(&self) -> Option<Instant> {
        self.schedule
            .iter()
            .filter(|(_, signal)| !self.sent.contains(signal))
            .map(|(at, _)| *at)
            .min()
    }

    /// When the final report must have been accepted: the first trigger plus the grace period.
    pub fn report_deadline(&self) -> Option<Instant> {
        self.started.map(|t0| t0 + self.grace)
    }

    /// Why the run is stopping, once triggered. A cancel from the platform wins over SIGTERM: the
    /// platform accepts `canceled` only when it asked.
    pub fn cause(&self) -> Option<StopCause> {
        match (self.abandoned, self.cancel, self.terminated) {
            (true, _, _) => Some(StopCause::Abandoned),
            (false, Some(mode), _) => Some(StopCause::Canceled(mode)),
            (false, None, true) => Some(StopCause::Terminated),
            (false, None, false) => None,
        }
    }

    /// The signals sent so far, in order.
    pub fn sent(&self) -> &[i32] {
        &self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libc::{SIGINT, SIGKILL, SIGTERM};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn graceful_cancel_escalates_int_term_kill_within_the_grace_period() {
        let t0 = Instant::now();
        let mut e = Escalation::new(secs(300));
        assert_eq!(e.reserve(), secs(30));
        assert_eq!(e.cause(), None);
        assert_eq!(e.next_wake(), None);
        assert_eq!(
            e.trigger(Trigger::Cancel(CancelMode::Graceful), t0),
            [SIGINT]
        );
        assert_eq!(e.cause(), Some(StopCause::Canceled(CancelMode::Graceful)));
        assert_eq!(e.next_wake(), Some(t0 + secs(135)));
        assert!(e.tick(t0 + secs(134)).is_empty());
        assert_eq!(e.tick(t0 + secs(135)), [SIGTERM]);
        assert_eq!(e.next_wake(), Some(t0 + secs(270)));
        assert_eq!(e.tick(t0 + secs(400)), [SIGKILL]);
        assert!(e.tick(t0 + secs(500)).is_empty(), "each signal once");
        assert_eq!(e.next_wake(), None);
        assert_eq!(e.report_deadline(), Some(t0 + secs(300)));
        assert_eq!(e.sent(), [SIGINT, SIGTERM, SIGKILL]);
    }

    #[test]
    fn force_sends_term_now_and_brings_kill_forward() {
        let t0 = Instant::now();
        let mut e = Escalation::new(secs(300));
        e.trigger(Trigger::Cancel(CancelMode::Graceful), t0);
        let t1 = t0 + secs(5);
        assert_eq!(e.trigger(Trigger::Cancel(CancelMode::Force), t1), [SIGTERM]);
        assert_eq!(e.next_wake(), Some(t1 + FORCE_KILL_AFTER));
        assert_eq!(e.tick(t1 + FORCE_KILL_AFTER), [SIGKILL]);
        assert_eq!(e.cause(), Some(StopCause::Canceled(CancelMode::Force)));
        assert_eq!(
            e.report_deadline(),
            Some(t0 + secs(300)),
            "the deadline stays"
        );
    }

    #[test]
    fn force_first_sends_int_and_term_together() {
        let t0 = Instant::now();
        let mut e = Escalation::new(secs(300));
        assert_eq!(
            e.trigger(Trigger::Cancel(CancelMode::Force), t0),
            [SIGINT, SIGTERM]
        );
    }

    #[test]
    fn sigterm_alone_is_terminated_and_a_later_cancel_turns_it_into_canceled() {
        let t0 = Instant::now();
        let mut e = Escalation::new(secs(10));
        assert_eq!(e.reserve(), secs(1));
        assert_eq!(e.trigger(Trigger::Terminate, t0), [SIGINT]);
        assert_eq!(e.cause(), Some(StopCause::Terminated));
        assert!(
            e.trigger(Trigger::Terminate, t0 + secs(1)).is_empty(),
            "a second SIGTERM changes nothing"
        );
        assert!(
            e.trigger(Trigger::Cancel(CancelMode::Graceful), t0 + secs(2))
                .is_empty()
        );
        assert_eq!(e.cause(), Some(StopCause::Canceled(CancelMode::Graceful)));
        assert_eq!(e.tick(t0 + Duration::from_millis(4500)), [SIGTERM]);
        assert_eq!(e.tick(t0 + secs(9)), [SIGKILL]);
        assert_eq!(e.report_deadline(), Some(t0 + secs(10)));
    }

    #[test]
    fn abandon_escalates_like_force_and_wins() {
        let t0 = Instant::now();
        let mut e = Escalation::new(secs(300));
        e.trigger(Trigger::Cancel(CancelMode::Graceful), t0);
        assert_eq!(e.trigger(Trigger::Abandon, t0), [SIGTERM]);
        assert_eq!(e.next_wake(), Some(t0 + FORCE_KILL_AFTER));
        assert_eq!(e.cause(), Some(StopCause::Abandoned));
    }

    #[test]
    fn reserve_scales_with_the_grace_period() {
        for (grace, reserve) in [
            (Duration::from_secs(1), Duration::from_millis(500)),
            (secs(2), secs(1)),
            (secs(50), secs(5)),
            (secs(3600), MAX_RESERVE),
        ] {
            assert_eq!(Escalation::new(grace).reserve(), reserve, "grace {grace:?}");
        }
    }
}
