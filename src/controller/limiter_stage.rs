//! The limiter stage: the `limiter` thread around the pure [`Limiter`]. It admits offers into free
//! slots and hands them to the launcher, keeps the rest waiting until a slot frees or their lease
//! lapses, and publishes the free capacity the poller and heartbeat advertise.
//!
//! Receives [`LimiterInput`] (offers from the poller, held tasks from the housekeeper, this
//! controller's Job observations from the supervisor, abandoned launches from the launcher); sends
//! [`LaunchRequest`]s to the launcher. Who decides a slot's fate:
//! - a slot is taken at admission (`Launching`) and only the Jobs watch confirms it (`Launched`): a
//!   launch confirmed by the launcher could predate a relist's snapshot and be dropped wrongly;
//! - a `Launching` slot ends only when the launcher abandons it or the supervisor ends the task;
//!   watch news of a finished or deleted Job of that task (an older attempt being replaced) does
//!   not end it;
//! - a `Launched` slot ends when the watch shows its Job terminal or gone, and at a relist whose
//!   snapshot lacks it (`relist_started` then `rebuild`).
//!
//! Never blocks on a send: the launcher's inbox holds at least every slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use super::limiter::{Limiter, Offer, SlotState};
use super::metrics::Metrics;
use crate::model::{JobSeen, LaunchRequest, LimiterInput, SlotFreed, TaskOffered};
use crate::shutdown::Shutdown;

/// An offer is dropped this long before its lease ends: acquiring takes a moment.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// The free capacity, published by the limiter for the poller and heartbeat.
#[derive(Clone, Debug, Default)]
pub struct FreeSlots(Arc<AtomicU32>);

impl FreeSlots {
    /// Free slots now.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
    fn set(&self, value: u32) {
        self.0.store(value, Ordering::SeqCst);
    }
}

/// The limiter actor.
pub struct LimiterStage {
    limiter: Limiter<LaunchRequest>,
    launcher: Sender<LaunchRequest>,
    free: FreeSlots,
    metrics: Arc<Metrics>,
    draining: bool,
}

impl LimiterStage {
    /// A limiter of `capacity` slots sending admitted tasks to `launcher`.
    pub fn new(
        capacity: u32,
        launcher: Sender<LaunchRequest>,
        free: FreeSlots,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stage = LimiterStage {
            limiter: Limiter::new(capacity as usize),
            launcher,
            free,
            metrics,
            draining: false,
        };
        stage.publish();
        stage
    }

    /// The pure limiter (tests and metrics).
    pub fn limiter(&self) -> &Limiter<LaunchRequest> {
        &self.limiter
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, input: LimiterInput, now: Instant) {
        let admitted = match input {
            LimiterInput::Offered { offers, reply } => {
                let mut admitted = Vec::new();
                for offer in offers {
                    admitted.extend(self.offer(offer, now));
                }
                self.send(admitted, now);
                if let Some(reply) = reply {
                    let _ = reply.send(self.free_now());
                }
                self.publish();
                return;
            }
            LimiterInput::Held(held) => {
                let id = held.identity.task_id.clone();
                match self
                    .limiter
                    .offer(&id, LaunchRequest::Held(held), now, None)
                {
                    Offer::Admitted(request) => vec![request],
                    Offer::Queued => {
                        log::info!("held task {id} waits for a free slot");
                        Vec::new()
                    }
                    Offer::Duplicate => Vec::new(),
                }
            }
            LimiterInput::JobsListed(jobs) => {
                self.limiter.relist_started();
                self.limiter
                    .rebuild(jobs.into_iter().map(|j| (j.task_id, j.terminal)), now)
            }
            LimiterInput::JobChanged(JobSeen { task_id, terminal }) => {
                match (terminal, self.limiter.slot(&task_id)) {
                    (true, Some(SlotState::Launching)) => Vec::new(),
                    (true, _) => self.limiter.release(&task_id, now),
                    (false, _) => {
                        self.limiter.launched(&task_id);
                        Vec::new()
                    }
                }
            }
            LimiterInput::JobGone { task_id } => match self.limiter.slot(&task_id) {
                Some(SlotState::Launching) => Vec::new(),
                _ => self.limiter.release(&task_id, now),
            },
            LimiterInput::SlotFreed(SlotFreed { task_id, cause }) => {
                log::debug!("slot of task {task_id} returns ({cause:?})");
                self.limiter.release(&task_id, now)
            }
            LimiterInput::Drain => {
                self.draining = true;
                Vec::new()
            }
        };
        self.send(admitted, now);
        self.publish();
    }

    /// Drops offers whose lease is about to lapse.
    pub fn tick(&mut self, now: Instant) {
        for expired in self.limiter.expire(now) {
            log::debug!(
                "offer of task {} lapsed while waiting for a slot; the platform offers it again",
                expired.task_id()
            );
        }
        self.publish();
    }

    /// When [`LimiterStage::tick`] is next due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.limiter.next_expiry()
    }

    fn offer(&mut self, offer: TaskOffered, now: Instant) -> Vec<LaunchRequest> {
        let id = offer.identity.task_id.clone();
        let expires = offer.expires_at.map(|at| {
            let left = at.duration_since(jiff::Timestamp::now());
            let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
            now + left.saturating_sub(LEASE_MARGIN)
        });
        let request = LaunchRequest::Offer {
            offer,
            received_at: now,
        };
        if self.draining {
            return Vec::new();
        }
        match self.limiter.offer(&id, request, now, expires) {
            Offer::Admitted(request) => vec![request],
            Offer::Queued | Offer::Duplicate => Vec::new(),
        }
    }

    fn send(&mut self, admitted: Vec<LaunchRequest>, now: Instant) {
        let mut queue: std::collections::VecDeque<LaunchRequest> = admitted.into();
        while let Some(request) = queue.pop_front() {
            let id = request.task_id().to_string();
            if self.draining {
                queue.extend(self.limiter.release(&id, now));
                continue;
            }
            if let LaunchRequest::Offer { received_at, .. } = &request {
                self.metrics
                    .limiter_slot_wait_seconds
                    .observe(now.saturating_duration_since(*received_at));
            }
            match self.launcher.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    log::error!("the launcher's inbox is full; task {id} is not launched now");
                    queue.extend(self.limiter.release(&id, now));
                }
                Err(TrySendError::Disconnected(_)) => {
                    queue.extend(self.limiter.release(&id, now));
                }
            }
        }
    }

    fn free_now(&self) -> u32 {
        if self.draining {
            0
        } else {
            self.limiter.free() as u32
        }
    }

    fn publish(&self) {
        self.free.set(self.free_now());
        self.metrics
            .limiter_in_flight
            .set(self.limiter.in_flight() as i64);
        self.metrics
            .limiter_waiting
            .set(self.limiter.waiting() as i64);
    }
}

/// The `limiter` thread: handles inputs and lease deadlines until shutdown or the inbox closes.
pub fn run(mut stage: LimiterStage, inbox: &Receiver<LimiterInput>, shutdown: &Shutdown) {
    let stop = shutdown.channel();
    loop {
        let timeout = stage
            .next_deadline()
            .map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
        select! {
            recv(inbox) -> input => match input {
                Ok(input) => stage.handle(input, Instant::now()),
                Err(_) => return,
            },
            recv(stop) -> _ => return,
            default(timeout) => stage.tick(Instant::now()),
        }
    }
}

#[cfg(test)]
#[path = "limiter_stage_tests.rs"]
mod tests;
