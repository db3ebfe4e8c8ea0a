//! The housekeeper: the slow, periodic work that keeps the controller's view honest.
//!
//! Runs on the `housekeeper` thread. Every tick ([`HousekeeperConfig::tick`], 10 s) it renews this
//! controller's Lease; every scan ([`HousekeeperConfig::scan_interval`]) it adopts the Jobs of
//! replicas whose Lease ran out ([`super::lease`]), deletes their stale Leases, and hands orphaned
//! credentials Secrets to their Job or deletes them ([`super::reconcile::orphan_secrets`]); at start,
//! on [`HousekeeperInput::Reconcile`] (a re-registration) and every
//! [`HousekeeperConfig::reconcile_interval`] it reconciles this controller's Jobs with the tasks the
//! platform says it holds ([`super::reconcile::plan`]): held tasks without a Job go to the limiter,
//! listed cancels to the supervisor, and Jobs of tasks no longer held to the supervisor as
//! [`SupervisorInput::Unheld`].
//!
//! Errors are logged and counted; the next tick tries again. A 401 stops the controller in order.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use jiff::Timestamp;

use super::agent_api::{self, AgentApi};
use super::cluster::{self, Cluster};
use super::events::{EventRecorder, EventType, reason};
use super::job_builder::owner_reference;
use super::labels::task_selector;
use super::launcher::Launching;
use super::lease::{self, LeaseKeeper};
use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use super::reconcile::{SecretAction, orphan_secrets, plan};
use crate::kube::KubeError;
use crate::model::{HousekeeperInput, JobRef, LimiterInput, SupervisorInput};
use crate::platform::{PlatformError, TaskStatus};

/// How long the reconcile remembers a launch whose task it no longer sees held (a launch made
/// after the held tasks were listed is not in that list yet).
const LAUNCH_MEMORY: Duration = Duration::from_secs(600);

/// How long a cancel of a task this process launched is left to the supervisor before the reconcile
/// confirms it itself (the supervisor deletes the Job first and records the Event).
const CANCEL_HANDOFF: Duration = Duration::from_secs(60);

/// The housekeeper's timing.
#[derive(Clone, Debug)]
pub struct HousekeeperConfig {
    /// The release (`app.kubernetes.io/instance`).
    pub instance: String,
    /// This controller's agent name.
    pub controller: String,
    /// Lease renewal period.
    pub tick: Duration,
    /// How long a Lease lives without renewal.
    pub lease_duration: Duration,
    /// Adoption and orphaned-Secret scans.
    pub scan_interval: Duration,
    /// Periodic reconcile with the platform.
    pub reconcile_interval: Duration,
    /// Age before an ownerless credentials Secret is handled.
    pub orphan_grace: Duration,
}

impl HousekeeperConfig {
    /// The defaults for `controller` in release `instance`.
    pub fn new(instance: &str, controller: &str) -> Self {
        HousekeeperConfig {
            instance: instance.to_string(),
            controller: controller.to_string(),
            tick: Duration::from_secs(10),
            lease_duration: lease::DEFAULT_DURATION,
            scan_interval: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(300),
        }
    }
}

/// The housekeeper actor.
pub struct Housekeeper {
    cfg: HousekeeperConfig,
    platform: Arc<dyn AgentApi>,
    cluster: Arc<dyn Cluster>,
    lease: LeaseKeeper,
    limiter: Sender<LimiterInput>,
    supervisor: Sender<SupervisorInput>,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
    launching: Launching,
    last_scan: Option<Instant>,
    last_reconcile: Option<Instant>,
}

impl Housekeeper {
    /// A housekeeper; `lease` is this controller's (already created at start).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: HousekeeperConfig,
        platform: Arc<dyn AgentApi>,
        cluster: Arc<dyn Cluster>,
        lease: LeaseKeeper,
        limiter: Sender<LimiterInput>,
        supervisor: Sender<SupervisorInput>,
        events: EventRecorder,
        metrics: Arc<Metrics>,
        lifecycle: Lifecycle,
    ) -> Self {
        Housekeeper {
            cfg,
            platform,
            cluster,
            lease,
            limiter,
            supervisor,
            events,
            metrics,
            lifecycle,
            launching: Launching::default(),
            last_scan: None,
            last_reconcile: None,
        }
    }

    /// Shares the launchers' set of tasks in progress (their Secrets are never cleaned up).
    pub fn with_launching(mut self, launching: Launching) -> Self {
        self.launching = launching;
        self
    }

    /// Handles a request.
    pub fn handle(&mut self, input: HousekeeperInput) {
        match input {
            HousekeeperInput::Reconcile { why } => self.reconcile(why),
        }
    }

    /// Renews the Lease, and scans or reconciles when due.
    pub fn tick(&mut self) {
        if let Err(e) = self.lease.renew() {
            self.kube_error("renew the controller's Lease", &e);
        }
        let due =
            |last: Option<Instant>, every: Duration| last.is_none_or(|t| t.elapsed() >= every);
        if due(self.last_scan, self.cfg.scan_interval) {
            self.last_scan = Some(Instant::now());
            self.scan();
        }
        if due(self.last_reconcile, self.cfg.reconcile_interval) {
            self.reconcile("periodic");
        }
    }

    /// Deletes this controller's Lease (orderly stop).
    pub fn release(&self) {
        self.lease.release();
    }

    fn kube_error(&self, what: &str, e: &KubeError) {
        self.metrics
            .api_error("kubernetes", cluster::error_class(e));
        if matches!(e, KubeError::Unauthorized(_)) {
            self.lifecycle.unauthorized(&format!(
                "Kubernetes refused the controller's credential (401) while it tried to {what}: {e}"
            ));
        } else {
            log::warn!("could not {what}: {e}");
        }
    }

    fn platform_error(&self, what: &str, e: &PlatformError) {
        self.metrics
            .api_error("platform", agent_api::error_class(e));
        if agent_api::is_fatal(e) {
            self.lifecycle.unauthorized(&format!(
                "the platform refused the controller's session (401) while it tried to {what}: {e}"
            ));
        } else {
            log::warn!("could not {what}: {e}");
        }
    }

    fn selector(&self) -> String {
        task_selector(&self.cfg.instance)
    }

    /// Adoption of dead replicas' Jobs, stale Leases, orphaned Secrets.
    pub fn scan(&mut self) {
        let me = self.cfg.controller.clone();
        let leases = match self
            .cluster
            .list_leases(&lease::lease_selector(&self.cfg.instance))
        {
            Ok(l) => l,
            Err(e) => return self.kube_error("list controller Leases", &e),
        };
        let jobs = match self.cluster.list_jobs(&self.selector()) {
            Ok(j) => j,
            Err(e) => return self.kube_error("list task Jobs", &e),
        };
        let now = Timestamp::now();
        if self.lease.healthy() {
            for a in lease::to_adopt(&jobs, &leases, &me, now) {
                match self
                    .cluster
                    .set_job_controller(&a.job, &a.resource_version, &me)
                {
                    Ok(job) => {
                        log::info!(
                            "adopted Job {} from controller {}, whose Lease expired",
                            a.job,
                            a.from
                        );
                        self.tell_if_started(&job);
                        let job_ref = JobRef {
                            name: a.job.clone(),
                            uid: job.metadata.uid.unwrap_or_default(),
                        };
                        self.events.record(
                            &job_ref,
                            EventType::Normal,
                            reason::ADOPTED,
                            &format!(
                                "controller {me} took over from controller {}, which stopped renewing its Lease",
                                a.from
                            ),
                        );
                    }
                    Err(e) if e.is_conflict() || e.is_not_found() => {
                        log::debug!(
                            "Job {} changed before adoption (another replica?): {e}",
                            a.job
                        )
                    }
                    Err(e) => self.kube_error(&format!("adopt Job {}", a.job), &e),
                }
            }
        }
        for (name, uid) in lease::stale_leases(&jobs, &leases, &me, now) {
            if let Err(e) = self.cluster.delete_lease(&name, &uid) {
                self.kube_error(&format!("delete the stale Lease {name}"), &e);
            }
        }
        let secrets = match self.cluster.list_secrets(&self.selector()) {
            Ok(s) => s,
            Err(e) => return self.kube_error("list credentials Secrets", &e),
        };
        let mut live: BTreeSet<String> = lease::live_holders(&leases, now);
        live.insert(me.clone());
        let launching = |task: &str| self.launching.contains(task);
        let actions = orphan_secrets(
            &secrets,
            &jobs,
            &me,
            &live,
            &launching,
            now,
            self.cfg.orphan_grace,
        );
        for action in actions {
            let result = match &action {
                SecretAction::SetOwner {
                    secret,
                    job,
                    job_uid,
                } => self
                    .cluster
                    .set_secret_owner(secret, &owner_reference(job, job_uid)),
                SecretAction::Delete { secret, uid } => {
                    log::info!("deleting Secret {secret}: its task has no Job of that attempt");
                    self.cluster.delete_secret(secret, uid)
                }
            };
            if let Err(e) = result {
                self.kube_error(&format!("clean up {action:?}"), &e);
            }
        }
    }

    /// An adopted Job's pod may be gone already: whether its worker started is the platform's to say.
    fn tell_if_started(&self, job: &k8s_openapi::api::batch::v1::Job) {
        let Some(identity) = super::labels::identity_of(&job.metadata) else {
            return;
        };
        match self.platform.task(&identity.task_id) {
            Ok(s) if s.status == TaskStatus::Running && s.attempt == identity.attempt => {
                let _ = self.supervisor.send(SupervisorInput::Started {
                    task_id: identity.task_id,
                    attempt: identity.attempt,
                });
            }
            Ok(_) => {}
            Err(e) => self.platform_error(&format!("read task {}", identity.task_id), &e),
        }
    }

    /// Compares this controller's Jobs with the tasks the platform says it holds.
    pub fn reconcile(&mut self, why: &str) {
        self.last_reconcile = Some(Instant::now());
        // Jobs first: a Job listed was created after its acquire, so its task, if still held, is in
        // the answer that follows.
        let jobs = match self.cluster.list_jobs(&self.selector()) {
            Ok(j) => j,
            Err(e) => return self.kube_error("list task Jobs to reconcile", &e),
        };
        let held = match self.platform.held_tasks() {
            Ok(h) => h,
            Err(e) => return self.platform_error("list the tasks this agent holds", &e),
        };
        let me = self.cfg.controller.clone();
        let p = plan(&jobs, &held, &me);
        log::debug!(
            "reconcile ({why}): {} held, {} to launch, {} to check",
            held.len(),
            p.launch.len(),
            p.check.len()
        );
        for task in p.launch {
            let (id, attempt) = (&task.identity.task_id, task.identity.attempt);
            if self.launching.launched(id, attempt) {
                // Its Job was made by this process and is gone: the supervisor fails the task (the
                // report may still be on its way); launching again would run a second Job.
                log::debug!(
                    "{}: held without a Job, but this controller's Job for it is gone; the \
                     supervisor reports that",
                    task.identity
                );
                continue;
            }
            log::info!("{}: held without a Job; launching it", task.identity);
            let _ = self.limiter.send(LimiterInput::Held(task));
        }
        let still_held: BTreeSet<&str> = held.iter().map(|h| h.task.id.as_str()).collect();
        self.launching
            .forget(&|task| still_held.contains(task), LAUNCH_MEMORY);
        for (task_id, attempt) in p.started {
            let _ = self
                .supervisor
                .send(SupervisorInput::Started { task_id, attempt });
        }
        for cancel in p.cancels {
            let _ = self
                .supervisor
                .send(SupervisorInput::CancelRequested(cancel));
        }
        for (task, attempt) in p.confirm_cancel {
            if self
                .launching
                .launched_within(&task, attempt, CANCEL_HANDOFF)
            {
                // Its Job was made just now (after this reconcile listed the Jobs): the supervisor
                // deletes it and confirms the cancel, with its Event. This is only the backstop.
                continue;
            }
            match self.platform.confirm_cancel(&task) {
                Ok(_) => log::info!("task {task}: cancelled before it had a Job"),
                Err(e) => self.platform_error(&format!("confirm the cancel of {task}"), &e),
            }
        }
        let agent = self.platform.agent_id();
        for (task, attempt) in p.check {
            match self.platform.task(&task) {
                Ok(s) => {
                    let moved_on = s.status.is_final()
                        || s.attempt != attempt
                        || (s.agent_id.as_deref() != Some(&agent)
                            && s.status != TaskStatus::Running);
                    if moved_on {
                        let _ = self.supervisor.send(SupervisorInput::Unheld {
                            task_id: task,
                            attempt,
                        });
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    let _ = self.supervisor.send(SupervisorInput::Unheld {
                        task_id: task,
                        attempt,
                    });
                }
                Err(e) => self.platform_error(&format!("read task {task}"), &e),
            }
        }
    }
}

/// The `housekeeper` thread: a tick at once, then on every input and tick until the final stop.
pub fn run(mut housekeeper: Housekeeper, inbox: &Receiver<HousekeeperInput>) {
    let stop = housekeeper.lifecycle.stop.channel();
    let tick = housekeeper.cfg.tick;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            housekeeper.tick();
            next = Instant::now() + tick;
        }
        select! {
            recv(stop) -> _ => return,
            recv(inbox) -> input => match input {
                Ok(input) => housekeeper.handle(input),
                Err(_) => return,
            },
            default(next.saturating_duration_since(Instant::now())) => {}
        }
    }
}

#[cfg(test)]
#[path = "housekeeper_tests.rs"]
mod tests;
