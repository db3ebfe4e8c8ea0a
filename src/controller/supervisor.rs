//! The supervisor: follows every task of this controller from its Job's creation until the worker
//! owns it (and, after that, until its pod is gone), and decides with [`assess`] when the controller
//! must act.
//!
//! Runs on the `supervisor` thread. Receives the Jobs watch and the Pods watch (both label-selected
//! on this release) and [`SupervisorInput`]s (launched tasks, replacements, cancels, tasks the
//! platform no longer gives this agent); sends this controller's Job observations to the limiter and
//! verdicts to the reporter. Reads Kubernetes Events about a task only when they can change a
//! decision or explain one (a Job without a pod, an unschedulable pod, a failure about to be
//! reported), at most every [`SupervisorConfig::events_refresh`].
//!
//! Which Jobs are this controller's: those whose `scalr.io/controller` names it (adoption by the
//! housekeeper re-labels a dead replica's Jobs; a Job re-labelled away is forgotten without a
//! verdict). Nothing is assessed until both watches have listed once, so a restart never judges a
//! task by a half-read cluster. Entries whose verdict is given stay (as tombstones) until their Job
//! is gone, so a later event about the Job never brings a second verdict.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select_biased};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};

use super::cluster::{self, Cluster};
use super::facts::{self, job_is_terminal};
use super::labels::{controller_of, identity_of, task_id_of};
use super::launcher::attempt_of;
use super::metrics::Metrics;
use super::naming::label_value;
use super::supervision::{Phase, SupervisionSettings, TaskState, Verdict, assess};
use crate::kube::WatchEvent;
use crate::model::{
    CancelMode, JobRef, JobSeen, LimiterInput, ReporterInput, SlotFreed, SlotFreedCause,
    SupervisorInput, TaskFailed, TaskLaunched,
};
use crate::shutdown::Shutdown;

/// How the supervisor behaves.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// This controller's agent name (`scalr.io/controller`).
    pub controller: String,
    /// The time limits of [`assess`].
    pub settings: SupervisionSettings,
    /// After a force cancel of a started task, how long its Job may live before it is deleted.
    pub force_cancel_deadline: Duration,
    /// Least time between two reads of a task's Events.
    pub events_refresh: Duration,
    /// How long a Job may be without a pod before its Events are read.
    pub pod_expected_after: Duration,
}

impl SupervisorConfig {
    /// Defaults for `controller` with `settings`.
    pub fn new(controller: &str, settings: SupervisionSettings) -> Self {
        SupervisorConfig {
            controller: controller.to_string(),
            settings,
            force_cancel_deadline: Duration::from_secs(60),
            events_refresh: Duration::from_secs(10),
            pod_expected_after: Duration::from_secs(5),
        }
    }
}

/// What the supervisor's loop hands to [`Supervisor::handle`].
// One value at a time lives on the supervisor's stack; boxing the watch events would cost an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SupervisorEvent {
    /// From the Jobs watch.
    Jobs(WatchEvent<Job>),
    /// From the Pods watch.
    Pods(WatchEvent<Pod>),
    /// From another stage.
    Input(SupervisorInput),
    /// A deadline passed.
    Tick,
}

/// One supervised task.
#[derive(Debug)]
struct Entry {
    state: TaskState,
    job: JobRef,
    events: Vec<Event>,
    events_at: Option<Instant>,
    recheck: Option<Timestamp>,
    /// When a force cancel was first seen (whatever the phase then: the worker may turn out to
    /// have started already, and the deadline is armed once the supervisor knows it did).
    force_at: Option<Timestamp>,
    /// When the Job of a force-cancelled started task is deleted if it still runs.
    force_deadline: Option<Timestamp>,
    /// The force-cancel deadline passed and the deletion went to the reporter.
    force_fired: bool,
    done: bool,
}

/// The supervisor actor.
pub struct Supervisor {
    cfg: SupervisorConfig,
    cluster: Arc<dyn Cluster>,
    limiter: Sender<LimiterInput>,
    reporter: Sender<ReporterInput>,
    metrics: Arc<Metrics>,
    jobs: HashMap<String, Job>,
    pods: HashMap<String, BTreeMap<String, Pod>>,
    entries: HashMap<String, Entry>,
    pending_cancels: HashMap<String, (CancelMode, Instant)>,
    pending_unheld: HashMap<String, (u32, Instant)>,
    pending_started: HashMap<String, (u32, Instant)>,
    jobs_listed: bool,
    pods_listed: bool,
    synced: Arc<AtomicBool>,
}

impl Supervisor {
    /// A supervisor; `synced` becomes true once both watches have listed.
    pub fn new(
        cfg: SupervisorConfig,
        cluster: Arc<dyn Cluster>,
        limiter: Sender<LimiterInput>,
        reporter: Sender<ReporterInput>,
        metrics: Arc<Metrics>,
        synced: Arc<AtomicBool>,
    ) -> Self {
        Supervisor {
            cfg,
            cluster,
            limiter,
            reporter,
            metrics,
            jobs: HashMap::new(),
            pods: HashMap::new(),
            entries: HashMap::new(),
            pending_cancels: HashMap::new(),
            pending_unheld: HashMap::new(),
            pending_started: HashMap::new(),
            jobs_listed: false,
            pods_listed: false,
            synced,
        }
    }

    /// Tasks supervised and not yet judged whose worker has not started.
    pub fn unstarted(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !e.done && e.state.phase() < Phase::WorkerStarted)
            .count()
    }

    /// The phase of a task's entry (tests).
    pub fn phase(&self, task_id: &str) -> Option<Phase> {
        self.entries.get(task_id).map(|e| e.state.phase())
    }

    /// When [`SupervisorEvent::Tick`] is next due.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter(|e| !e.done)
            .flat_map(|e| [e.recheck, e.force_deadline])
            .flatten()
            .min()
    }

    /// Handles one event at `now`.
    pub fn handle(&mut self, event: SupervisorEvent, now: Timestamp) {
        match event {
            SupervisorEvent::Jobs(e) => self.on_jobs(e, now),
            SupervisorEvent::Pods(e) => self.on_pods(e, now),
            SupervisorEvent::Input(input) => self.on_input(input, now),
            SupervisorEvent::Tick => {
                let due: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|(_, e)| {
                        !e.done
                            && (e.recheck.is_some_and(|t| t <= now)
                                || e.force_deadline.is_some_and(|t| t <= now))
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for task in due {
                    self.assess_task(&task, now);
                }
                let hour = Duration::from_secs(3600);
                self.pending_cancels
                    .retain(|_, (_, at)| at.elapsed() < hour);
                self.pending_unheld.retain(|_, (_, at)| at.elapsed() < hour);
                self.pending_started
                    .retain(|_, (_, at)| at.elapsed() < hour);
            }
        }
        self.metrics
            .supervisor_unstarted
            .set(self.unstarted() as i64);
    }

    fn ours(&self, job: &Job) -> bool {
        let me = &self.cfg.controller;
        match controller_of(&job.metadata) {
            Some(c) => c == me || *c == label_value(me),
            None => false,
        }
    }

    fn on_jobs(&mut self, event: WatchEvent<Job>, now: Timestamp) {
        match event {
            WatchEvent::Restarted(list) => {
                let mut ours = HashMap::new();
                let mut elsewhere = Vec::new();
                for job in list {
                    let Some(task) = task_id_of(&job.metadata).map(str::to_string) else {
                        continue;
                    };
                    if self.ours(&job) {
                        ours.insert(task, job);
                    } else {
                        elsewhere.push(task);
                    }
                }
                for task in elsewhere {
                    if !ours.contains_key(&task) {
                        self.forget(&task);
                    }
                }
                self.jobs = ours;
                let seen = self
                    .jobs
                    .iter()
                    .map(|(task, job)| JobSeen {
                        task_id: task.clone(),
                        attempt: attempt_of(&job.metadata),
                        terminal: job_is_terminal(job),
                    })
                    .collect();
                let _ = self.limiter.send(LimiterInput::JobsListed(seen));
                let tasks: Vec<String> = self.jobs.keys().cloned().collect();
                for task in tasks {
                    self.ensure_entry(&task, now);
                }
                self.jobs_listed = true;
                self.assess_all(now);
            }
            WatchEvent::Applied(job) => {
                let Some(task) = task_id_of(&job.metadata).map(str::to_string) else {
                    return;
                };
                if self.ours(&job) {
                    let _ = self.limiter.send(LimiterInput::JobChanged(JobSeen {
                        task_id: task.clone(),
                        attempt: attempt_of(&job.metadata),
                        terminal: job_is_terminal(&job),
                    }));
                    self.jobs.insert(task.clone(), job);
                    self.ensure_entry(&task, now);
                    self.assess_task(&task, now);
                } else if self
                    .jobs
                    .get(&task)
                    .is_some_and(|j| j.metadata.uid == job.metadata.uid)
                {
                    log::info!(
                        "task {task}: Job {} now belongs to controller {}; no longer supervised here",
                        job.metadata.name.as_deref().unwrap_or("?"),
                        controller_of(&job.metadata).unwrap_or("?")
                    );
                    self.jobs.remove(&task);
                    self.forget(&task);
                    let _ = self.limiter.send(LimiterInput::JobGone {
                        task_id: task,
                        attempt: attempt_of(&job.metadata),
                    });
                }
            }
            WatchEvent::Deleted(job) => {
                let Some(task) = task_id_of(&job.metadata).map(str::to_string) else {
                    return;
                };
                let same = self
                    .jobs
                    .get(&task)
                    .is_some_and(|j| j.metadata.uid == job.metadata.uid);
                if same {
                    self.jobs.remove(&task);
                    let _ = self.limiter.send(LimiterInput::JobGone {
                        task_id: task.clone(),
                        attempt: attempt_of(&job.metadata),
                    });
                    self.assess_task(&task, now);
                }
            }
        }
    }

    fn on_pods(&mut self, event: WatchEvent<Pod>, now: Timestamp) {
        let touched: Vec<String> = match event {
            WatchEvent::Restarted(list) => {
                self.pods.clear();
                for pod in list {
                    self.put_pod(pod);
                }
                self.pods_listed = true;
                self.assess_all(now);
                return;
            }
            WatchEvent::Applied(pod) => self.put_pod(pod).into_iter().collect(),
            WatchEvent::Deleted(pod) => {
                let task = task_id_of(&pod.metadata).map(str::to_string);
                if let (Some(task), Some(name)) = (&task, &pod.metadata.name)
                    && let Some(pods) = self.pods.get_mut(task)
                {
                    pods.remove(name);
                    if pods.is_empty() {
                        self.pods.remove(task);
                    }
                }
                task.into_iter().collect()
            }
        };
        for task in touched {
            self.assess_task(&task, now);
        }
    }

    fn put_pod(&mut self, pod: Pod) -> Option<String> {
        let task = task_id_of(&pod.metadata)?.to_string();
        let name = pod.metadata.name.clone()?;
        self.pods.entry(task.clone()).or_default().insert(name, pod);
        Some(task)
    }

    /// Stops supervising a task without a verdict (its Job is another controller's now).
    fn forget(&mut self, task: &str) {
        self.entries.remove(task);
    }

    fn ensure_entry(&mut self, task: &str, now: Timestamp) {
        let Some(job) = self.jobs.get(task) else {
            return;
        };
        let Some(identity) = identity_of(&job.metadata) else {
            return;
        };
        let uid = job.metadata.uid.clone().unwrap_or_default();
        if let Some(entry) = self.entries.get(task)
            && (entry.job.uid == uid || entry.state.identity.attempt > identity.attempt)
        {
            return;
        }
        let launched = TaskLaunched {
            job_name: job.metadata.name.clone().unwrap_or_default(),
            job_uid: uid,
            created_at: job
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or_else(Timestamp::now, |t| t.0),
            identity,
        };
        log::debug!(
            "{}: supervising Job {} found in the cluster",
            launched.identity,
            launched.job_name
        );
        self.entries.insert(task.to_string(), new_entry(&launched));
        self.apply_pending_cancel(task, now);
    }

    fn assess_all(&mut self, now: Timestamp) {
        let tasks: Vec<String> = self.entries.keys().cloned().collect();
        for task in tasks {
            self.assess_task(&task, now);
        }
    }

    pub(super) fn assess_task(&mut self, task: &str, now: Timestamp) {
        if !(self.jobs_listed && self.pods_listed) {
            return;
        }
        let Some(entry) = self.entries.get(task) else {
            return;
        };
        let uid = entry.job.uid.clone();
        let job = self
            .jobs
            .get(task)
            .filter(|j| uid.is_empty() || j.metadata.uid.as_deref() == Some(uid.as_str()))
            .cloned();
        if entry.done {
            if job.is_none() {
                self.entries.remove(task);
            }
            return;
        }
        let pod = self.current_pod(task, &uid);
        if self.events_needed(task, job.as_ref(), pod.as_ref(), now) {
            self.refresh_events(task, pod.as_ref());
        }
        let settings = self.cfg.settings.clone();
        let Some(entry) = self.entries.get_mut(task) else {
            return;
        };
        let mut trial = entry.state.clone();
        let mut verdict = assess(
            &mut trial,
            job.as_ref(),
            pod.as_ref(),
            &entry.events,
            now,
            &settings,
        );
        if matches!(verdict, Verdict::Fail { .. } | Verdict::ConfirmFinal { .. }) {
            // A failure is reported once and read by people: judge it on the latest Events.
            self.refresh_events(task, pod.as_ref());
            let Some(entry) = self.entries.get_mut(task) else {
                return;
            };
            trial = entry.state.clone();
            verdict = assess(
                &mut trial,
                job.as_ref(),
                pod.as_ref(),
                &entry.events,
                now,
                &settings,
            );
        }
        let Some(entry) = self.entries.get_mut(task) else {
            return;
        };
        entry.state = trial;
        arm_force_deadline(entry, self.cfg.force_cancel_deadline);
        if let Some(at) = entry.force_deadline
            && at <= now
            && job.is_some()
            && !matches!(verdict, Verdict::Done)
        {
            entry.force_deadline = None;
            entry.force_fired = true;
            let _ = self.reporter.send(ReporterInput::ForceCancelExpired {
                identity: entry.state.identity.clone(),
                job: entry.job.clone(),
            });
        }
        let confirm_final = matches!(verdict, Verdict::ConfirmFinal { .. });
        let no_pod_yet = job.is_some() && pod.is_none() && entry.state.phase() == Phase::Launched;
        match verdict {
            Verdict::Wait { recheck_at } if no_pod_yet => {
                // A Job without a pod is looked at again (its Events may say why) until one appears.
                let poll = now.checked_add(self.cfg.events_refresh).ok();
                entry.recheck = [recheck_at, poll].into_iter().flatten().min();
            }
            Verdict::Wait { recheck_at } => entry.recheck = recheck_at,
            Verdict::Fail { reason, message } | Verdict::ConfirmFinal { reason, message } => {
                log::warn!("{}: {}: {message}", entry.state.identity, reason.summary());
                entry.done = true;
                // The Pods watch may be ahead of the Jobs watch: a Job not in view yet but not known
                // gone still gets the failure's Event and is deleted.
                let job_ref = (job.is_some() || !entry.state.job_seen())
                    .then(|| entry.job.clone())
                    .filter(|j| !j.uid.is_empty());
                let _ = self.reporter.send(ReporterInput::Fail {
                    failed: TaskFailed {
                        identity: entry.state.identity.clone(),
                        reason,
                        message,
                    },
                    job: job_ref,
                    confirm_final,
                });
            }
            Verdict::Done => entry.done = true,
        }
        if entry.done && job.is_none() {
            // No Job in view will report its deletion: return the slot here.
            self.entries.remove(task);
            let _ = self.limiter.send(LimiterInput::SlotFreed(SlotFreed {
                task_id: task.to_string(),
                cause: SlotFreedCause::JobDeleted,
            }));
        }
    }

    /// The newest pod of the task's Job (`job_uid`; any of the task's pods when unknown).
    fn current_pod(&self, task: &str, job_uid: &str) -> Option<Pod> {
        let pods: Vec<&Pod> = self
            .pods
            .get(task)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| job_uid.is_empty() || owned_by(p, job_uid))
            .collect();
        facts::current_pod(pods).cloned()
    }

    fn events_needed(
        &self,
        task: &str,
        job: Option<&Job>,
        pod: Option<&Pod>,
        now: Timestamp,
    ) -> bool {
        let Some(entry) = self.entries.get(task) else {
            return false;
        };
        if entry.state.phase() >= Phase::WorkerStarted {
            return false;
        }
        if entry
            .events_at
            .is_some_and(|at| at.elapsed() < self.cfg.events_refresh)
        {
            return false;
        }
        let waited = now
            .duration_since(entry.state.launched_at)
            .try_into()
            .unwrap_or(Duration::ZERO);
        match pod {
            None => job.is_some() && waited >= self.cfg.pod_expected_after,
            Some(p) => facts::unschedulable(p).is_some(),
        }
    }

    fn refresh_events(&mut self, task: &str, pod: Option<&Pod>) {
        let Some(entry) = self.entries.get(task) else {
            return;
        };
        let mut names = vec![entry.job.name.clone()];
        if let Some(name) = pod.and_then(|p| p.metadata.name.clone()) {
            names.push(name);
        }
        let mut events = Vec::new();
        for name in names {
            match self.cluster.list_events(&name) {
                Ok(found) => events.extend(found),
                Err(e) => {
                    self.metrics
                        .api_error("kubernetes", cluster::error_class(&e));
                    log::debug!("task {task}: cannot read the Events of {name}: {e}");
                    return;
                }
            }
        }
        if let Some(entry) = self.entries.get_mut(task) {
            entry.events = events;
            entry.events_at = Some(Instant::now());
        }
    }
}

fn new_entry(launched: &TaskLaunched) -> Entry {
    Entry {
        state: TaskState::new(launched),
        job: JobRef {
            name: launched.job_name.clone(),
            uid: launched.job_uid.clone(),
        },
        events: Vec::new(),
        events_at: None,
        recheck: None,
        force_at: None,
        force_deadline: None,
        force_fired: false,
        done: false,
    }
}

/// Arms the force-cancel deadline of a force-cancelled task once its worker is known to have
/// started (counted from when the force cancel was seen, so learning late never extends it).
fn arm_force_deadline(entry: &mut Entry, deadline: Duration) {
    let Some(at) = entry.force_at else {
        return;
    };
    if entry.force_deadline.is_some()
        || entry.force_fired
        || entry.done
        || entry.state.phase() < Phase::WorkerStarted
    {
        return;
    }
    log::info!(
        "{}: force cancel; the worker stops it, and Job {} is deleted if it still runs {}s after \
         the force cancel",
        entry.state.identity,
        entry.job.name,
        deadline.as_secs()
    );
    entry.force_deadline = Some(at.checked_add(deadline).unwrap_or(Timestamp::MAX));
}

/// Whether the pod's controlling owner is the Job with this uid (pods without owners count, for
/// clusters that strip them).
fn owned_by(pod: &Pod, job_uid: &str) -> bool {
    match pod.metadata.owner_references.as_deref() {
        Some(refs) if !refs.is_empty() => refs.iter().any(|r| r.uid == job_uid),
        _ => true,
    }
}

/// The `supervisor` thread: inputs first (so a replacement is known before the deletion it
/// announces), then watch events, then deadlines, until shutdown.
pub fn run(
    mut supervisor: Supervisor,
    inbox: &Receiver<SupervisorInput>,
    jobs: &Receiver<WatchEvent<Job>>,
    pods: &Receiver<WatchEvent<Pod>>,
    shutdown: &Shutdown,
) {
    let stop = shutdown.channel();
    loop {
        let timeout = supervisor
            .next_deadline()
            .map(|at| {
                let left = at.duration_since(Timestamp::now());
                Duration::try_from(left).unwrap_or(Duration::ZERO)
            })
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        let event = select_biased! {
            recv(stop) -> _ => return,
            recv(inbox) -> m => match m { Ok(m) => SupervisorEvent::Input(m), Err(_) => return },
            recv(jobs) -> m => match m { Ok(m) => SupervisorEvent::Jobs(m), Err(_) => return },
            recv(pods) -> m => match m { Ok(m) => SupervisorEvent::Pods(m), Err(_) => return },
            default(timeout) => SupervisorEvent::Tick,
        };
        supervisor.handle(event, Timestamp::now());
        if supervisor.jobs_listed && supervisor.pods_listed {
            supervisor.synced.store(true, Ordering::SeqCst);
        }
    }
}

#[path = "supervisor_inputs.rs"]
mod inputs;

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
