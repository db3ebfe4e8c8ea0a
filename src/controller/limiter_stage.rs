//! The limiter stage: the `limiter` thread around the pure [`Limiter`]. It admits offers into free
//! slots and hands them to the launcher, keeps the rest waiting until a slot frees or their lease
//! lapses, and publishes the free capacity the poller and heartbeat advertise.
//!
//! Receives [`LimiterInput`] (offers from the poller, held tasks from the housekeeper, this
//! controller's Job observations from the supervisor, abandoned launches from the launcher); sends
//! [`LaunchRequest`]s to the launcher. Who decides a slot's fate:
//! - a slot is taken at admission (`Launching`, remembering the attempt being launched) and only the
//!   Jobs watch confirms it (`Launched`): a launch confirmed by the launcher could predate a relist's
//!   snapshot and be dropped wrongly;
//! - while `Launching`, news of a Job of an *older* attempt (being replaced) changes nothing; a Job
//!   of the launched attempt confirms the slot, or ends it when terminal or gone; the launcher
//!   abandoning the launch, or the supervisor ending the task, ends it too;
//! - a `Launched` slot ends when the watch shows its Job terminal or gone, and at a relist whose
//!   snapshot lacks it (`relist_started` then `rebuild`; the snapshot also confirms or ends the
//!   `Launching` slots whose Job of the launched attempt it shows).
//!
//! Never blocks on a send: the launcher's inbox holds at least every slot.

use std::collections::HashMap;
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
    /// The attempt of each slot's task: admitted at, or seen on its Job.
    attempts: HashMap<String, u32>,
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
            attempts: HashMap::new(),
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
                let mut admitted = self
                    .limiter
                    .rebuild(jobs.iter().map(|j| (j.task_id.clone(), j.terminal)), now);
                // The snapshot confirms (or ends) launches whose Job of that attempt it shows.
                for job in jobs {
                    match self.limiter.slot(&job.task_id) {
                        Some(SlotState::Launching) => admitted.extend(self.job_seen(job, now)),
                        Some(SlotState::Launched) => {
                            self.attempts.entry(job.task_id).or_insert(job.attempt);
                        }
                        None => {}
                    }
                }
                admitted
            }
            LimiterInput::JobChanged(job) => self.job_seen(job, now),
            LimiterInput::JobGone { task_id, attempt } => {
                if self.older_than_launch(&task_id, attempt) {
                    Vec::new()
                } else {
                    self.release(&task_id, now)
                }
            }
            LimiterInput::SlotFreed(SlotFreed { task_id, cause }) => {
                log::debug!("slot of task {task_id} returns ({cause:?})");
                self.release(&task_id, now)
            }
            LimiterInput::Drain => {
                self.draining = true;
                Vec::new()
            }
        };
        self.send(admitted, now);
        self.publish();
    }

    /// A Job of this controller was seen: confirm its slot, or end it when the Job is terminal;
    /// a Job of an older attempt than the one being launched changes nothing.
    fn job_seen(&mut self, job: JobSeen, now: Instant) -> Vec<LaunchRequest> {
        if self.older_than_launch(&job.task_id, job.attempt) {
            return Vec::new();
        }
        if job.terminal {
            self.release(&job.task_id, now)
        } else {
            self.attempts.insert(job.task_id.clone(), job.attempt);
            self.limiter.launched(&job.task_id);
            Vec::new()
        }
    }

    fn older_than_launch(&self, task_id: &str, attempt: u32) -> bool {
        self.limiter.slot(task_id) == Some(SlotState::Launching)
            && self
                .attempts
                .get(task_id)
                .is_some_and(|launching| attempt < *launching)
    }

    fn release(&mut self, task_id: &str, now: Instant) -> Vec<LaunchRequest> {
        self.attempts.remove(task_id);
        self.limiter.release(task_id, now)
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
        // Offered again at a higher attempt: the platform fenced the attempt this slot was for
        // (a re-registration, an agent offline); the new launch replaces its Job.
        let mut freed = Vec::new();
        if let (Some(held), LaunchRequest::Offer { offer, .. }) = (self.attempts.get(&id), &request)
            && offer.identity.attempt > *held
            && self.limiter.slot(&id).is_some()
        {
            log::info!(
                "task {id} is offered again at attempt {} (attempt {held} was fenced)",
                offer.identity.attempt
            );
            freed = self.release(&id, now);
        }
        match self.limiter.offer(&id, request, now, expires) {
            Offer::Admitted(request) => freed.push(request),
            Offer::Queued | Offer::Duplicate => {}
        }
        freed
    }

    fn send(&mut self, admitted: Vec<LaunchRequest>, now: Instant) {
        let mut queue: std::collections::VecDeque<LaunchRequest> = admitted.into();
        while let Some(request) = queue.pop_front() {
            let id = request.task_id().to_string();
            if self.draining {
                queue.extend(self.release(&id, now));
                continue;
            }
            let attempt = match &request {
                LaunchRequest::Offer { offer, .. } => offer.identity.attempt,
                LaunchRequest::Held(held) => held.identity.attempt,
            };
            self.attempts.insert(id.clone(), attempt);
            if let LaunchRequest::Offer { received_at, .. } = &request {
                self.metrics
                    .limiter_slot_wait_seconds
                    .observe(now.saturating_duration_since(*received_at));
            }
            match self.launcher.try_send(request) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    log::error!("the launcher's inbox is full; task {id} is not launched now");
                    queue.extend(self.release(&id, now));
                }
                Err(TrySendError::Disconnected(_)) => {
                    queue.extend(self.release(&id, now));
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
