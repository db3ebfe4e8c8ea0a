//! The limiter: never more unfinished tasks than the capacity (`SCALR_AGENT_CONCURRENCY`).
//!
//! A pure structure owned by the limiter stage's thread; the stage feeds it offers (from the poller),
//! launch results (from the launcher) and Job observations (from the supervisor's watch), and launches
//! what it hands back. Slots are keyed by task id, so a task counts once however many events about it
//! arrive, and a repeated release is harmless. The count is rebuilt from the cluster at start and after
//! every relist, and terminal Jobs never count: in agent-stack-k8s, leaked in-flight tokens stopped all
//! scheduling (#302) and terminal Jobs seeding the in-flight set looped forever (PR #965).
//!
//! Lifecycle of a slot: [`Limiter::offer`] admits (or queues) → the launcher acquires and creates the
//! Job → [`Limiter::launched`] (or [`Limiter::release`] when the launch is abandoned) → the Job watch
//! reports it terminal or deleted → [`Limiter::observe`] / [`Limiter::release`] frees it and admits
//! the next waiter. Times are `Instant`s the caller passes in, so tests need no clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// What became of an offer.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// A slot is reserved for the task: launch it.
    Admitted(T),
    /// No free slot: it waits (until a slot frees or it expires).
    Queued,
    /// The task already holds a slot or waits for one; nothing changed.
    Duplicate,
}

/// Why [`Limiter::try_acquire`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot is taken.
    Full,
    /// The task already holds a slot.
    Duplicate,
}

/// Where a slot's task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Admitted; its Job is not known to exist yet. Survives a rebuild (the Job may not be listed).
    Launching,
    /// Its Job exists.
    Launched,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: SlotState,
    /// The relist epoch in which the slot was last confirmed by a launch.
    epoch: u64,
}

#[derive(Debug)]
struct Waiter<T> {
    task_id: String,
    item: T,
    since: Instant,
    expires: Option<Instant>,
}

/// Counters for the `limiter_*` metrics. Gauges are [`Limiter::in_flight`] and [`Limiter::waiting`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimiterMetrics {
    /// Tasks given a slot (at once or after waiting).
    pub admitted_total: u64,
    /// Offers that had to wait.
    pub queued_total: u64,
    /// Offers and acquisitions for a task already known.
    pub duplicates_total: u64,
    /// Slots returned.
    pub released_total: u64,
    /// Waiting offers dropped because the platform's lease ran out.
    pub expired_total: u64,
    /// Rebuilds from a relist.
    pub rebuilds_total: u64,
    /// Total time admitted tasks spent waiting for a slot.
    pub slot_wait_total: Duration,
    /// Longest single wait.
    pub slot_wait_max: Duration,
}

/// Slot accounting with a FIFO of waiting offers. `T` is what waits (the offer).
#[derive(Debug)]
pub struct Limiter<T> {
    capacity: usize,
    slots: BTreeMap<String, Slot>,
    waiting: VecDeque<Waiter<T>>,
    epoch: u64,
    metrics: LimiterMetrics,
}

impl<T> Limiter<T> {
    /// A limiter with `capacity` slots (at least one).
    pub fn new(capacity: usize) -> Self {
        Limiter {
            capacity: capacity.max(1),
            slots: BTreeMap::new(),
            waiting: VecDeque::new(),
            epoch: 0,
            metrics: LimiterMetrics::default(),
        }
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tasks holding a slot. May exceed the capacity only through Jobs found in the cluster (a
    /// restart with a lower capacity); no admission happens until it is back below.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Free slots, what the poller advertises to the platform.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.slots.len())
    }

    /// Offers waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether the task holds a slot, and in which state.
    pub fn slot(&self, task_id: &str) -> Option<SlotState> {
        self.slots.get(task_id).map(|s| s.state)
    }

    /// The counters.
    pub fn metrics(&self) -> &LimiterMetrics {
        &self.metrics
    }

    /// Offers a task: admitted when a slot is free, else queued until `expires` (the offer's lease).
    pub fn offer(
        &mut self,
        task_id: &str,
        item: T,
        now: Instant,
        expires: Option<Instant>,
    ) -> Offer<T> {
        if self.slots.contains_key(task_id) || self.waiting.iter().any(|w| w.task_id == task_id) {
            self.metrics.duplicates_total += 1;
            return Offer::Duplicate;
        }
        if self.free() > 0 && self.waiting.is_empty() {
            self.admit(task_id);
            return Offer::Admitted(item);
        }
        self.metrics.queued_total += 1;
        self.waiting.push_back(Waiter {
            task_id: task_id.to_string(),
            item,
            since: now,
            expires,
        });
        Offer::Queued
    }

    /// Takes a slot directly, without queueing: for a task the platform says this agent already
    /// holds but that has no Job yet (after a restart).
    pub fn try_acquire(&mut self, task_id: &str) -> Result<(), Refusal> {
        if self.slots.contains_key(task_id) {
            self.metrics.duplicates_total += 1;
            return Err(Refusal::Duplicate);
        }
        if self.free() == 0 {
            return Err(Refusal::Full);
        }
        self.waiting.retain(|w| w.task_id != task_id);
        self.admit(task_id);
        Ok(())
    }

    /// The task's Job exists (created, or found for this task): the slot is confirmed in this epoch.
    /// A Job the limiter did not know takes a slot too: it exists, so it counts.
    pub fn launched(&mut self, task_id: &str) {
        self.waiting.retain(|w| w.task_id != task_id);
        self.slots.insert(
            task_id.to_string(),
            Slot {
                state: SlotState::Launched,
                epoch: self.epoch,
            },
        );
    }

    /// Returns the task's slot (Job finished or deleted, or launch abandoned) and admits waiters into
    /// the free slots; returns what to launch now. Releasing a task without a slot changes nothing.
    pub fn release(&mut self, task_id: &str, now: Instant) -> Vec<T> {
        if self.slots.remove(task_id).is_some() {
            self.metrics.released_total += 1;
        }
        self.waiting.retain(|w| w.task_id != task_id);
        self.admit_waiters(now)
    }

    /// A Job of the task was seen by the watch: terminal Jobs release, live ones count.
    pub fn observe(&mut self, task_id: &str, terminal: bool, now: Instant) -> Vec<T> {
        if terminal {
            return self.release(task_id, now);
        }
        if !self.slots.contains_key(task_id) {
            self.launched(task_id);
        }
        Vec::new()
    }

    /// Call before the LIST of a relist is sent: launches confirmed after this point survive a
    /// snapshot that predates them.
    pub fn relist_started(&mut self) {
        self.epoch += 1;
    }

    /// Replaces the view with a relist's snapshot of this release's task Jobs, `(task id, terminal)`.
    /// Kept besides the snapshot's live Jobs: slots still launching, and launches confirmed since
    /// [`Limiter::relist_started`] (unless the snapshot shows their Job finished). Terminal Jobs
    /// never take a slot. Returns the waiters admitted into the
    /// freed slots.
    pub fn rebuild<I, S>(&mut self, jobs: I, now: Instant) -> Vec<T>
    where
        I: IntoIterator<Item = (S, bool)>,
        S: Into<String>,
    {
        self.metrics.rebuilds_total += 1;
        let epoch = self.epoch;
        let mut next: BTreeMap<String, Slot> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == SlotState::Launching || s.epoch == epoch)
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        let mut finished = Vec::new();
        for (task_id, terminal) in jobs {
            let task_id = task_id.into();
            if terminal {
                finished.push(task_id);
            } else {
                next.entry(task_id).or_insert(Slot {
                    state: SlotState::Launched,
                    epoch,
                });
            }
        }
        // A finished Job ends its slot, unless the slot is mid-launch: then the launch decides
        // (it may be a new attempt of the task whose earlier Job is the finished one).
        for task_id in &finished {
            if next
                .get(task_id)
                .is_some_and(|s| s.state == SlotState::Launched)
            {
                next.remove(task_id);
            }
        }
        let dropped = self.slots.keys().filter(|k| !next.contains_key(*k)).count();
        self.metrics.released_total += dropped as u64;
        self.slots = next;
        let slots = &self.slots;
        self.waiting.retain(|w| !slots.contains_key(&w.task_id));
        self.admit_waiters(now)
    }

    /// Drops waiting offers whose lease has run out; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let (expired, kept): (VecDeque<_>, VecDeque<_>) = self
            .waiting
            .drain(..)
            .partition(|w| w.expires.is_some_and(|e| e <= now));
        self.waiting = kept;
        self.metrics.expired_total += expired.len() as u64;
        expired.into_iter().map(|w| w.item).collect()
    }

    /// The earliest lease expiry among the waiters: the stage's next deadline.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.waiting.iter().filter_map(|w| w.expires).min()
    }

    fn admit(&mut self, task_id: &str) {
        self.metrics.admitted_total += 1;
        self.slots.insert(
            task_id.to_string(),
            Slot {
                state: SlotState::Launching,
                epoch: self.epoch,
            },
        );
    }

    fn admit_waiters(&mut self, now: Instant) -> Vec<T> {
        let mut admitted = Vec::new();
        while self.free() > 0 {
            let Some(waiter) = self.waiting.pop_front() else {
                break;
            };
            if waiter.expires.is_some_and(|e| e <= now) {
                self.metrics.expired_total += 1;
                continue;
            }
            let waited = now.saturating_duration_since(waiter.since);
            self.metrics.slot_wait_total += waited;
            self.metrics.slot_wait_max = self.metrics.slot_wait_max.max(waited);
            self.admit(&waiter.task_id);
            admitted.push(waiter.item);
        }
        admitted
    }
}

#[cfg(test)]
#[path = "limiter_tests.rs"]
mod tests;
