//! The poller: long-polls the platform for offers and cancel signals, advertising the free capacity
//! the limiter publishes.
//!
//! Runs on the `poller` thread. Sends [`LimiterInput::Offered`] (and waits for the limiter's reply,
//! so the next poll advertises what is really free) and [`SupervisorInput::CancelRequested`]. Each
//! long-poll runs on a short-lived `poller-call` helper thread, so SIGTERM stops intake at once
//! instead of after a 30-second poll; an answer that arrives after that is dropped (its offers'
//! leases lapse, and the platform cancels unstarted tasks of an agent that deregistered).
//! When no slot is free it still polls, with free capacity 0 and a short wait ([`FULL_WAIT`]), to
//! receive cancel signals and to advertise a slot soon after one frees. Errors back off with full
//! jitter; a 401 stops the controller in order.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, select};

use super::agent_api::{self, AgentApi};
use super::lifecycle::Lifecycle;
use super::limiter_stage::FreeSlots;
use super::metrics::Metrics;
use crate::http::{Backoff, RetryPolicy};
use crate::model::{CancelRequested, LimiterInput, SupervisorInput};
use crate::platform::{AgentEvent, PlatformError};

/// The long-poll wait when no slot is free: a freed slot is advertised within this.
pub const FULL_WAIT: Duration = Duration::from_secs(2);
/// Most offers asked for in one poll (the protocol's limit).
pub const MAX_FREE: u32 = 1000;

/// The poller actor.
pub struct Poller {
    platform: Arc<dyn AgentApi>,
    limiter: Sender<LimiterInput>,
    supervisor: Sender<SupervisorInput>,
    free: FreeSlots,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    backoff: Backoff,
    hint: Option<u32>,
}

impl Poller {
    /// A poller advertising `free`.
    pub fn new(
        platform: Arc<dyn AgentApi>,
        limiter: Sender<LimiterInput>,
        supervisor: Sender<SupervisorInput>,
        free: FreeSlots,
        metrics: Arc<Metrics>,
        lifecycle: Lifecycle,
    ) -> Self {
        Poller {
            platform,
            limiter,
            supervisor,
            free,
            metrics,
            lifecycle,
            backoff: Backoff::new(RetryPolicy {
                max_attempts: u32::MAX,
                initial: Duration::from_millis(500),
                max_delay: Duration::from_secs(30),
                max_elapsed: Duration::MAX,
            }),
            hint: None,
        }
    }

    /// The free capacity and wait of the next poll.
    pub fn next_poll(&mut self) -> (u32, Duration) {
        let free = self
            .hint
            .take()
            .unwrap_or_else(|| self.free.get())
            .min(MAX_FREE);
        let wait = if free == 0 {
            FULL_WAIT.min(self.platform.max_wait())
        } else {
            self.platform.max_wait()
        };
        (free, wait)
    }

    /// Handles one poll's answer; returns how long to wait before the next poll.
    pub fn handle(&mut self, answer: Result<Vec<AgentEvent>, PlatformError>) -> Duration {
        let events = match answer {
            Ok(events) => events,
            Err(e) if agent_api::is_fatal(&e) => {
                self.lifecycle.unauthorized(&format!(
                    "the platform refused the controller's session (401) while waiting for tasks: {e}"
                ));
                return Duration::ZERO;
            }
            Err(e) => {
                self.metrics
                    .api_error("platform", agent_api::error_class(&e));
                let delay = self
                    .backoff
                    .next_delay(Duration::ZERO, None)
                    .unwrap_or(Duration::from_secs(30));
                log::warn!("waiting for tasks failed: {e}; polling again in {delay:?}");
                return delay;
            }
        };
        self.backoff.reset();
        self.metrics.poller_polls_total.inc();
        let mut offers = Vec::new();
        for event in events {
            match event {
                AgentEvent::Offer(offer) => offers.push(agent_api::offered(&offer)),
                AgentEvent::Cancel(signal) => {
                    log::info!(
                        "task {} (run {}): cancel requested ({})",
                        signal.task_id,
                        signal.run_id,
                        signal.mode.as_str()
                    );
                    let _ =
                        self.supervisor
                            .send(SupervisorInput::CancelRequested(CancelRequested {
                                task_id: signal.task_id,
                                mode: agent_api::cancel_mode(signal.mode),
                            }));
                }
            }
        }
        if !offers.is_empty() && self.lifecycle.accepting() {
            for _ in &offers {
                self.metrics.poller_offers_total.inc();
            }
            log::debug!("{} offer(s) received", offers.len());
            let (reply, answer) = bounded(1);
            let sent = self.limiter.send(LimiterInput::Offered {
                offers,
                reply: Some(reply),
            });
            if sent.is_ok() {
                self.hint = answer.recv_timeout(Duration::from_secs(5)).ok();
            }
        }
        Duration::ZERO
    }
}

/// The `poller` thread: polls until intake stops.
pub fn run(mut poller: Poller) {
    let intake = poller.lifecycle.intake.channel();
    let stop = poller.lifecycle.stop.channel();
    while poller.lifecycle.accepting() {
        let (free, wait) = poller.next_poll();
        let (tx, rx) = bounded(1);
        let platform = poller.platform.clone();
        let spawned = std::thread::Builder::new()
            .name("poller-call".into())
            .spawn(move || {
                let _ = tx.send(platform.poll(free, wait));
            });
        if let Err(e) = spawned {
            log::error!("cannot start a poll: {e}");
            if poller.lifecycle.stop.wait_timeout(Duration::from_secs(1)) {
                return;
            }
            continue;
        }
        let delay = select! {
            recv(rx) -> answer => match answer {
                Ok(answer) => poller.handle(answer),
                Err(_) => Duration::from_secs(1),
            },
            recv(intake) -> _ => return,
            recv(stop) -> _ => return,
        };
        if !delay.is_zero() && poller.lifecycle.intake.wait_timeout(delay) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fakes::{FakePlatform, platform_error};
    use crate::model::CancelMode;
    use crate::platform::{CancelMode as WireMode, CancelSignal, Stage, TaskOffer};
    use crossbeam_channel::unbounded;

    fn offer(id: &str) -> AgentEvent {
        AgentEvent::Offer(TaskOffer {
            task_id: id.into(),
            stage: Stage::Plan,
            run_id: format!("run-{id}"),
            workspace_id: "ws-1".into(),
            workspace_name: "network".into(),
            environment_id: "env-1".into(),
            environment_name: "prod".into(),
            attempt: 1,
            expires_at: None,
        })
    }

    #[test]
    fn offers_go_to_the_limiter_and_cancels_to_the_supervisor() {
        let (limiter_tx, limiter) = unbounded();
        let (supervisor_tx, supervisor) = unbounded();
        let free = FreeSlots::default();
        let mut poller = Poller::new(
            Arc::new(FakePlatform::default()),
            limiter_tx,
            supervisor_tx,
            free,
            Arc::new(Metrics::default()),
            Lifecycle::new(),
        );
        // The limiter answers the reply as it would.
        let answering = std::thread::spawn(move || match limiter.recv() {
            Ok(LimiterInput::Offered { offers, reply }) => {
                let _ = reply.expect("a reply channel").send(7);
                offers.len()
            }
            other => panic!("{other:?}"),
        });
        let events = vec![
            offer("t1"),
            offer("t2"),
            AgentEvent::Cancel(CancelSignal {
                task_id: "t0".into(),
                run_id: "run-t0".into(),
                mode: WireMode::Force,
            }),
        ];
        assert_eq!(poller.handle(Ok(events)), Duration::ZERO);
        assert_eq!(answering.join().expect("limiter"), 2);
        assert_eq!(
            poller.next_poll().0,
            7,
            "the next poll advertises the reply"
        );
        assert!(matches!(
            supervisor.try_recv(),
            Ok(SupervisorInput::CancelRequested(CancelRequested {
                mode: CancelMode::Force,
                ..
            }))
        ));
        assert_eq!(poller.metrics.poller_offers_total.get(), 2);
    }

    #[test]
    fn a_full_controller_polls_briefly_for_cancels_only() {
        let (limiter_tx, _limiter) = unbounded();
        let (supervisor_tx, _supervisor) = unbounded();
        let mut poller = Poller::new(
            Arc::new(FakePlatform::default()),
            limiter_tx,
            supervisor_tx,
            FreeSlots::default(),
            Arc::new(Metrics::default()),
            Lifecycle::new(),
        );
        assert_eq!(poller.next_poll(), (0, FULL_WAIT));
    }

    #[test]
    fn errors_back_off_and_a_401_stops_intake() {
        let (limiter_tx, _limiter) = unbounded();
        let (supervisor_tx, _supervisor) = unbounded();
        let lifecycle = Lifecycle::new();
        let mut poller = Poller::new(
            Arc::new(FakePlatform::default()),
            limiter_tx,
            supervisor_tx,
            FreeSlots::default(),
            Arc::new(Metrics::default()),
            lifecycle.clone(),
        );
        let delay = poller.handle(Err(platform_error(503, None)));
        assert!(delay <= Duration::from_millis(500));
        assert!(lifecycle.accepting());
        poller.handle(Err(platform_error(401, None)));
        assert!(!lifecycle.accepting());
    }
}
