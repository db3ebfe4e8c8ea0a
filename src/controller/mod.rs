//! The controller: acquires tasks from the platform and runs each in its own Kubernetes Job.
//!
//! ```text
//! platform ──long-poll──▶ poller ──LimiterInput::Offered──▶ limiter ──LaunchRequest──▶ launcher-N
//!                            │                                ▲  ▲                       │ acquire, Secret, Job
//!                            │ CancelRequested                │  └── SlotFreed ──────────┤
//!                            ▼                                │ JobsListed/JobChanged/    │ Launched
//! Kubernetes ──watch Jobs, Pods──▶ supervisor ◀───────────────┼── JobGone ───────────────┘
//!                                    │ verdicts               │ Held (reconcile)
//!                                    ▼                        │
//!                                 reporter ──fail / confirm-cancel / delete Job + Events──▶ platform, Kubernetes
//! heartbeat ──Reconcile──▶ housekeeper (Lease, adoption, orphaned Secrets, reconcile) ─────┘
//! watch-template keeps the TemplateCache the launchers read. signals → intake stop → drain.
//! ```
//!
//! [`run`] wires that topology in one place: it builds the clients, reads the template once (the
//! release name comes from its labels), registers, takes its Lease, spawns every thread through
//! [`Threads`], then waits for the intake signal (SIGTERM or a 401) and stops in order: no new offers,
//! wait for launched tasks to start (bounded), deregister, drop the Lease, stop every thread, join.
//! Running Jobs are left alone. The types crossing channels are in [`crate::model`]; the design is in
//! `docs/architecture.md`.
//!
//! The pure decisions are their own modules: [`naming`], [`labels`], [`template`], [`job_builder`],
//! [`limiter`], [`supervision`], [`facts`], [`reconcile`], [`lease`]'s tables, [`reporter::decide`].

pub mod agent_api;
pub mod cluster;
pub mod cmd;
pub mod events;
pub mod facts;
pub mod heartbeat;
pub mod housekeeper;
pub mod job_builder;
pub mod labels;
pub mod launcher;
pub mod lease;
pub mod lifecycle;
pub mod limiter;
pub mod limiter_stage;
pub mod metrics;
pub mod naming;
pub mod options;
pub mod poller;
pub mod reconcile;
pub mod render;
pub mod reporter;
pub mod supervision;
pub mod supervisor;
pub mod template;
pub mod template_watch;

#[cfg(test)]
mod fakes;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select};
use k8s_openapi::api::core::v1::Pod;

use crate::http::{Backoff, RetryPolicy};
use crate::kube::{Api, Client, KubeError, WatchConfig, watcher};
use crate::platform::{PlatformClient, Registration};
use crate::shutdown::Reason;
use crate::threads::Threads;

use agent_api::AgentApi;
use cluster::{Cluster, KubeCluster};
use events::EventRecorder;
use job_builder::LaunchContext;
use lifecycle::{Lifecycle, Markers};
use limiter_stage::{FreeSlots, LimiterStage};
use metrics::Metrics;
pub use options::{ControllerError, ControllerExit, ControllerOptions, Timing};
use supervisor::{Supervisor, SupervisorConfig};
use template_watch::{TemplateCache, TemplateState};

/// Runs the controller until `lifecycle.intake` triggers (SIGTERM, a 401) or a thread fails, then
/// stops in order. `metrics` may be shared with the caller (benchmarks read it).
pub fn run(
    options: ControllerOptions,
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
) -> Result<ControllerExit, ControllerError> {
    let ns = options.namespace.clone();
    let name = options.name.clone();
    let markers = Markers::new(&options.data_dir);
    markers.clear_ready();
    markers.touch_healthy();

    // Kubernetes.
    let client =
        Client::new(&options.kube, &options.kube_http).map_err(ControllerError::KubeClient)?;
    let stop = lifecycle.stop.clone();
    let kube = KubeCluster::new(&client, &ns, options.timing.kube_retry, Some(stop.clone()));
    let cluster: Arc<dyn Cluster> = Arc::new(kube.clone());
    let cluster_fast: Arc<dyn Cluster> = Arc::new(KubeCluster::new(
        &client,
        &ns,
        options.timing.kube_retry_fast,
        Some(stop.clone()),
    ));
    log::info!(
        "controller {name}: Kubernetes API {} ({}), namespace {ns}",
        client.server(),
        options.kube.origin
    );

    // The template, once, for the release name; the watch keeps it current afterwards.
    let template = TemplateCache::new(&options.task_template, &ns);
    match cluster.get_template(&options.task_template) {
        Ok(found) => template.apply(found.as_ref()),
        Err(KubeError::Unauthorized(e)) => {
            return Ok(ControllerExit::Unauthorized(format!(
                "Kubernetes refused the controller's credential (401): {}",
                e.message
            )));
        }
        Err(e) => template.unreadable(&e),
    }
    let instance = match template.state() {
        TemplateState::Valid(t) => t.instance().map(str::to_string),
        _ => None,
    }
    .unwrap_or_else(|| options.task_template.clone());
    let selector = labels::task_selector(&instance);
    log::info!("selecting this release's task Jobs and Pods by {selector}");

    // The platform.
    let platform_client = PlatformClient::new(&options.platform_url, &options.platform_http)
        .map_err(ControllerError::Register)?
        .with_retry(options.timing.platform_retry)
        .with_shutdown(stop.clone());
    let registration = Registration::kubernetes_controller(&name, options.concurrency);
    let agent = match register(&platform_client, &options, &registration, &lifecycle) {
        Ok(Some(agent)) => agent,
        Ok(None) => return Ok(exit_of(&lifecycle)),
        Err(e) if e.is_unauthorized() => {
            return Ok(ControllerExit::Unauthorized(format!(
                "the platform refused the agent pool token (401): {e}"
            )));
        }
        Err(e) => return Err(ControllerError::Register(e)),
    };
    let platform: Arc<dyn AgentApi> = Arc::new(agent);
    log::info!(
        "registered as agent {} ({name}), capacity {}",
        platform.agent_id(),
        options.concurrency
    );

    // This controller's Lease, before anything is launched.
    let mut lease = lease::LeaseKeeper::new(
        cluster.clone(),
        &instance,
        &name,
        options.timing.lease_duration,
    );
    if let Err(e) = lease.renew() {
        log::warn!(
            "cannot hold Lease {}: {e}; other replicas will not adopt this controller's Jobs \
             correctly until it can",
            lease.name()
        );
    }

    let metrics_listener = match options.metrics_addr {
        Some(addr) => {
            let listener =
                metrics::bind(addr).map_err(|source| ControllerError::Metrics { addr, source })?;
            let local = listener.local_addr().unwrap_or(addr);
            log::info!("serving metrics on http://{local}/metrics");
            Some(listener)
        }
        None => None,
    };

    // Channels. The launcher's inbox holds every slot, so the limiter never blocks on it.
    let capacity = options.concurrency as usize;
    let (limiter_tx, limiter_rx) = bounded(4 * capacity + 1024);
    let (launch_tx, launch_rx) = bounded(2 * capacity + 64);
    let (supervisor_tx, supervisor_rx) = bounded(2 * capacity + 256);
    let (reporter_tx, reporter_rx) = bounded(2 * capacity + 256);
    let (housekeeper_tx, housekeeper_rx) = bounded(16);
    let (jobs_tx, jobs_rx) = bounded(256);
    let (pods_tx, pods_rx) = bounded(256);

    let free = FreeSlots::default();
    let launching = launcher::Launching::default();
    let synced = Arc::new(AtomicBool::new(false));
    let events = EventRecorder::new(cluster.clone(), &name);
    let mut threads = Threads::new(stop.clone());
    let spawn_err = ControllerError::Threads;

    // Watches.
    let watch_config = WatchConfig {
        backoff_initial: options.timing.watch_backoff,
        ..WatchConfig::labels(&selector)
    };
    {
        let (api, config, lc) = (kube.jobs().clone(), watch_config.clone(), lifecycle.clone());
        threads
            .spawn("watch-jobs", move || {
                watch_ended(&lc, watcher::run(&api, &config, &jobs_tx, &lc.stop))
            })
            .map_err(spawn_err)?;
    }
    {
        let api: Api<Pod> = Api::namespaced(&client, &ns);
        let (config, lc) = (watch_config.clone(), lifecycle.clone());
        threads
            .spawn("watch-pods", move || {
                watch_ended(&lc, watcher::run(&api, &config, &pods_tx, &lc.stop))
            })
            .map_err(spawn_err)?;
    }
    {
        let (api, cache, lc) = (
            kube.templates().clone(),
            template.clone(),
            lifecycle.clone(),
        );
        threads
            .spawn("watch-template", move || {
                watch_ended(&lc, template_watch::run(&api, &cache, &lc.stop))
            })
            .map_err(spawn_err)?;
    }

    // Stages.
    {
        let supervisor = Supervisor::new(
            SupervisorConfig {
                force_cancel_deadline: options.timing.force_cancel_deadline,
                events_refresh: options.timing.events_refresh,
                pod_expected_after: options.timing.pod_expected_after,
                ..SupervisorConfig::new(&name, options.timing.supervision.clone())
            },
            cluster_fast,
            limiter_tx.clone(),
            reporter_tx.clone(),
            metrics.clone(),
            synced.clone(),
        );
        let stop = stop.clone();
        threads
            .spawn("supervisor", move || {
                supervisor::run(supervisor, &supervisor_rx, &jobs_rx, &pods_rx, &stop);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    {
        let stage = LimiterStage::new(
            options.concurrency,
            launch_tx,
            free.clone(),
            metrics.clone(),
        );
        let stop = stop.clone();
        threads
            .spawn("limiter", move || {
                limiter_stage::run(stage, &limiter_rx, &stop);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    for n in 0..options.timing.launch_workers.max(1) {
        let launcher = launcher::Launcher {
            platform: platform.clone(),
            cluster: cluster.clone(),
            template: template.clone(),
            context: LaunchContext {
                namespace: ns.clone(),
                instance: instance.clone(),
                controller_id: name.clone(),
            },
            limiter: limiter_tx.clone(),
            supervisor: supervisor_tx.clone(),
            reporter: reporter_tx.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            lifecycle: lifecycle.clone(),
            launching: launching.clone(),
        };
        let inbox = launch_rx.clone();
        threads
            .spawn(&format!("launcher-{n}"), move || {
                launcher::run(launcher, &inbox);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    {
        let reporter = reporter::Reporter::new(
            platform.clone(),
            cluster.clone(),
            events.clone(),
            metrics.clone(),
            lifecycle.clone(),
        )
        .with_supervisor(supervisor_tx.clone());
        threads
            .spawn("reporter", move || {
                reporter::run(reporter, &reporter_rx);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    {
        let housekeeper = housekeeper::Housekeeper::new(
            options.housekeeper(&instance),
            platform.clone(),
            cluster.clone(),
            lease,
            limiter_tx.clone(),
            supervisor_tx.clone(),
            events.clone(),
            metrics.clone(),
            lifecycle.clone(),
        )
        .with_launching(launching.clone());
        threads
            .spawn("housekeeper", move || {
                housekeeper::run(housekeeper, &housekeeper_rx);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    {
        let heartbeat = heartbeat::Heartbeat::new(
            platform.clone(),
            free.clone(),
            markers.clone(),
            housekeeper_tx,
            lifecycle.clone(),
            metrics.clone(),
        );
        threads
            .spawn("heartbeat", move || {
                heartbeat::run(heartbeat);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    {
        let poller = poller::Poller::new(
            platform.clone(),
            limiter_tx.clone(),
            supervisor_tx,
            free,
            metrics.clone(),
            lifecycle.clone(),
        );
        threads
            .spawn("poller", move || {
                poller::run(poller);
                Ok(())
            })
            .map_err(spawn_err)?;
    }
    if let Some(listener) = metrics_listener {
        let (metrics, stop) = (metrics.clone(), stop.clone());
        threads
            .spawn("metrics", move || {
                metrics::serve(listener, &metrics, &stop).map_err(Into::into)
            })
            .map_err(spawn_err)?;
    }

    // Ready once the watches have listed; then wait for the intake signal.
    let intake = lifecycle.intake.channel();
    let stopped = stop.channel();
    let mut ready = false;
    loop {
        if !ready && synced.load(Ordering::SeqCst) {
            ready = true;
            markers.set_ready();
        }
        select! {
            recv(intake) -> _ => break,
            recv(stopped) -> _ => break,
            default(Duration::from_millis(200)) => {}
        }
    }

    // Stop in order.
    markers.clear_ready();
    let _ = limiter_tx.send(crate::model::LimiterInput::Drain);
    let reason = lifecycle.intake.reason().or_else(|| stop.reason());
    if matches!(reason, Some(Reason::Signal(_) | Reason::Requested)) && !stop.is_triggered() {
        drain(&metrics, &lifecycle, options.timing.drain_timeout);
    }
    match platform.deregister() {
        Ok(()) => log::info!("deregistered agent {}", platform.agent_id()),
        Err(e) if e.is_unauthorized() => log::debug!("not deregistered: the session is gone ({e})"),
        Err(e) => log::warn!("could not deregister: {e}"),
    }
    lease::LeaseKeeper::new(
        cluster.clone(),
        &instance,
        &name,
        options.timing.lease_duration,
    )
    .release();
    stop.trigger(Reason::Requested);
    let joined = threads.join_all();
    let exit = match (reason, joined) {
        (Some(Reason::Unauthorized(what)), _) => ControllerExit::Unauthorized(what),
        (_, Err(e)) => ControllerExit::Failed(e.to_string()),
        (Some(Reason::Failed(what)), _) => ControllerExit::Failed(what),
        _ => ControllerExit::Stopped,
    };
    match &exit {
        ControllerExit::Stopped => log::info!("controller stopped; running Jobs are left alone"),
        ControllerExit::Unauthorized(what) => log::error!("controller stopped: {what}"),
        ControllerExit::Failed(what) => log::error!("controller stopped: {what}"),
    }
    Ok(exit)
}

/// Waits (bounded) for launches in progress to finish and launched tasks to start: deregistering
/// re-offers unstarted tasks, whose Jobs would then be replaced.
fn drain(metrics: &Metrics, lifecycle: &Lifecycle, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let busy = || metrics.launcher_in_progress.get() + metrics.supervisor_unstarted.get();
    if busy() > 0 {
        log::info!(
            "stopping: no new tasks; waiting up to {}s for {} launched task(s) to start",
            timeout.as_secs(),
            busy()
        );
    }
    while busy() > 0 && Instant::now() < deadline {
        if lifecycle.stop.wait_timeout(Duration::from_millis(200)) {
            return;
        }
    }
    if busy() > 0 {
        log::warn!(
            "stopping with {} task(s) not started; the platform offers them again",
            busy()
        );
    }
}

/// A watch thread's end: a 401 stops the controller in order instead of failing the thread.
fn watch_ended(
    lifecycle: &Lifecycle,
    result: Result<(), KubeError>,
) -> crate::threads::ThreadResult {
    match result {
        Err(e @ KubeError::Unauthorized(_)) => {
            lifecycle.unauthorized(&format!(
                "Kubernetes refused the controller's credential (401) on a watch: {e}"
            ));
            Ok(())
        }
        other => other.map_err(Into::into),
    }
}

fn exit_of(lifecycle: &Lifecycle) -> ControllerExit {
    match lifecycle.intake.reason() {
        Some(Reason::Unauthorized(what)) => ControllerExit::Unauthorized(what),
        _ => ControllerExit::Stopped,
    }
}

/// Registers, retrying while the platform is unavailable; `None` when intake stopped first.
fn register(
    client: &PlatformClient,
    options: &ControllerOptions,
    registration: &Registration,
    lifecycle: &Lifecycle,
) -> Result<Option<crate::platform::AgentClient>, crate::platform::PlatformError> {
    let mut backoff = Backoff::new(RetryPolicy {
        max_attempts: u32::MAX,
        initial: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        max_elapsed: Duration::MAX,
    });
    loop {
        match client.register(&options.pool_token, registration) {
            Ok(agent) => return Ok(Some(agent)),
            Err(e) if agent_api::is_retryable(&e) => {
                let delay = backoff
                    .next_delay(Duration::ZERO, None)
                    .unwrap_or(Duration::from_secs(30));
                log::warn!("registration failed: {e}; trying again in {delay:?}");
                if lifecycle.intake.wait_timeout(delay) {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
