//! The heartbeat: keeps the agent's session alive, advertises the free capacity, touches the
//! liveness marker, and notices re-registrations.
//!
//! Runs on the `heartbeat` thread, every `heartbeat-interval` the platform asked for (10 s), until
//! the final stop (it keeps beating while the controller drains, so the platform does not re-offer
//! the tasks being started). Sends [`HousekeeperInput::Reconcile`] when the client registered again
//! after its session expired (the platform re-offered this agent's unstarted tasks meanwhile). A
//! failed beat is logged and retried at the next interval (the offline threshold is three
//! intervals); a 401 stops the controller in order.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::agent_api::{self, AgentApi};
use super::lifecycle::{Lifecycle, Markers};
use super::limiter_stage::FreeSlots;
use super::metrics::Metrics;
use crate::model::HousekeeperInput;

/// The heartbeat actor.
pub struct Heartbeat {
    platform: Arc<dyn AgentApi>,
    free: FreeSlots,
    markers: Markers,
    housekeeper: Sender<HousekeeperInput>,
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
    generation: u64,
}

impl Heartbeat {
    /// A heartbeat for the session of `platform`.
    pub fn new(
        platform: Arc<dyn AgentApi>,
        free: FreeSlots,
        markers: Markers,
        housekeeper: Sender<HousekeeperInput>,
        lifecycle: Lifecycle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let generation = platform.generation();
        Heartbeat {
            platform,
            free,
            markers,
            housekeeper,
            lifecycle,
            metrics,
            generation,
        }
    }

    /// Sends one heartbeat; returns when the next is due.
    pub fn beat(&mut self) -> Duration {
        let free = if self.lifecycle.accepting() {
            self.free.get()
        } else {
            0
        };
        match self.platform.heartbeat(free) {
            Ok(()) => {}
            Err(e) if agent_api::is_fatal(&e) => self.lifecycle.unauthorized(&format!(
                "the platform refused the controller's session (401) on a heartbeat: {e}"
            )),
            Err(e) => {
                self.metrics
                    .api_error("platform", agent_api::error_class(&e));
                log::warn!("heartbeat failed: {e}; trying again at the next interval");
            }
        }
        self.markers.touch_healthy();
        let generation = self.platform.generation();
        if generation != self.generation {
            self.generation = generation;
            log::warn!(
                "registered again as agent {} after the session expired; reconciling this \
                 controller's Jobs with the tasks the platform still gives it",
                self.platform.agent_id()
            );
            let _ = self.housekeeper.send(HousekeeperInput::Reconcile {
                why: "re-registered",
            });
        }
        self.platform.heartbeat_interval()
    }
}

/// The `heartbeat` thread: beats until the final stop.
pub fn run(mut heartbeat: Heartbeat) {
    let stop = heartbeat.lifecycle.stop.clone();
    loop {
        let next = heartbeat.beat();
        if stop.wait_timeout(next) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fakes::{FakePlatform, platform_error};
    use crossbeam_channel::unbounded;

    #[test]
    fn beats_touch_the_marker_and_a_401_stops_intake() {
        let dir = tempfile::tempdir().expect("tempdir");
        let platform = Arc::new(FakePlatform::default());
        let (tx, _rx) = unbounded();
        let lifecycle = Lifecycle::new();
        let markers = Markers::new(dir.path());
        let mut hb = Heartbeat::new(
            platform.clone(),
            FreeSlots::default(),
            markers.clone(),
            tx,
            lifecycle.clone(),
            Arc::new(Metrics::default()),
        );
        assert_eq!(hb.beat(), Duration::from_secs(10));
        assert!(markers.healthy().exists());
        assert_eq!(platform.calls(), ["heartbeat 0"]);
        platform.fail_next("heartbeat", platform_error(503, None));
        hb.beat();
        assert!(lifecycle.accepting());
        platform.fail_next("heartbeat", platform_error(401, None));
        hb.beat();
        assert!(!lifecycle.accepting());
    }
}
