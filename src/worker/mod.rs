//! `scalr-agent worker`: the task pod's worker container. It reads its task credentials from the
//! mounted Secret, waits for exec-loop in the runner container, starts the task on the platform,
//! writes its `started` marker, provisions the run
//! and drives its stage through exec-loop, streams the output to the platform, and reports the final
//! status. It exits 0 only when the platform accepted that status.
//!
//! Threads (all named, joined at the end): the main thread runs the stage (`task_run.rs`) and the
//! report (`report.rs`); `log-shipper` streams output (`log_shipper.rs`); `heartbeat` and
//! `cancel-watch` watch the platform (`watch.rs`); `markers` touches the `healthy` marker;
//! `canceller` turns SIGTERM and cancels into signals for the running command (`control.rs`,
//! `cancel.rs`); `signals` receives SIGTERM/SIGINT. The platform watchers are joined with a bound
//! (a long-poll in flight cannot be interrupted).
//!
//! Building blocks, each with its own tests: [`archive`] (safe extraction of the configuration
//! version), [`binary_cache`] and [`provider_cache`] (the shared caches), [`tf_config`] (CLI
//! configuration and backend override), [`agent_env`] (`SCALR_AGENT_ENV`), `run_env.rs` (the
//! environment of a run), `steps.rs` (commands and flags per stage), `results.rs` (counts and
//! messages), `mask.rs` and `log_batch.rs` (masking, batching, offsets).

pub mod agent_env;
pub mod archive;
pub mod binary_cache;
pub mod cancel;
mod checksum;
mod control;
mod eviction;
pub mod exec;
pub mod log_batch;
pub mod log_shipper;
pub mod mask;
pub mod provider_cache;
pub mod provision;
mod report;
pub mod results;
pub mod run_env;
pub mod steps;
mod task_run;
pub mod tf_config;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use argh::FromArgs;

use crate::config::Settings;
use crate::controller::labels;
use crate::http::RetryPolicy;
use crate::platform::{PlatformClient, TaskResult};
use crate::secret::Secret;
use crate::shutdown::{Reason, Shutdown};
use crate::threads::Threads;

/// Exit status: the platform accepted the final status.
pub const EXIT_REPORTED: u8 = 0;
/// Exit status: the run happened (or not) but its final status was not accepted.
pub const EXIT_NOT_REPORTED: u8 = 1;
/// Exit status: the worker's own setup is wrong (identity, token file, URL).
pub const EXIT_SETUP: u8 = 2;
/// Exit status: the task token was refused at start: the task was offered again to a newer
/// attempt, whose worker runs it.
pub const EXIT_FENCED: u8 = 3;
/// Exit status: the task was already final at start (failed or canceled before the worker came).
pub const EXIT_TASK_FINAL: u8 = 4;
/// Exit status: exec-loop never answered (or SIGTERM came first); the task was not started.
pub const EXIT_RUNNER: u8 = 5;

/// Run one task stage in a task pod: fetch it, provision it, drive exec-loop, stream the log,
/// report the final status. Reads SCALR_AGENT_TASK_ID and the task token file.
#[derive(FromArgs, Debug, Clone, PartialEq, Eq)]
#[argh(subcommand, name = "worker")]
pub struct WorkerArgs {
    /// exec-loop's socket (default: $SCALR_AGENT_DATA_DIR/exec-loop.sock)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// directory for the worker's `started` and `healthy` markers
    /// (default: $SCALR_AGENT_DATA_DIR/markers/worker)
    #[argh(option)]
    pub markers_dir: Option<PathBuf>,
    /// how long to wait for exec-loop before starting the task, in seconds (default: 300)
    #[argh(option, default = "300")]
    pub runner_timeout_secs: u64,
    /// seconds between task heartbeats (default: 10)
    #[argh(option, default = "10")]
    pub heartbeat_interval_secs: u64,
    /// longest output waits before it is sent to the platform, in milliseconds (default: 500)
    #[argh(option, default = "500")]
    pub log_delay_ms: u64,
}

/// Who the worker is: the task identity the controller put into the container's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskIdentity {
    pub task_id: String,
    pub token_file: PathBuf,
    /// Informational (logs): run, stage and attempt as the controller saw them.
    pub run_id: Option<String>,
    pub stage: Option<String>,
    pub attempt: Option<String>,
}

impl TaskIdentity {
    /// Reads the identity through `env` (the process environment in production).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let task_id = env(labels::ENV_TASK_ID)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!(
                    "{} is not set; the controller sets it on the worker container of every task pod",
                    labels::ENV_TASK_ID
                )
            })?;
        let token_file = env(labels::ENV_TASK_TOKEN_FILE)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(labels::task_token_path);
        Ok(TaskIdentity {
            task_id,
            token_file: PathBuf::from(token_file),
            run_id: env(labels::ENV_RUN_ID),
            stage: env(labels::ENV_TASK_STAGE),
            attempt: env(labels::ENV_TASK_ATTEMPT),
        })
    }

    /// The task token from the mounted Secret.
    pub fn read_token(&self) -> Result<Secret, String> {
        match std::fs::read_to_string(&self.token_file) {
            Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim())),
            Ok(_) => Err(format!(
                "the task token file {} is empty",
                self.token_file.display()
            )),
            Err(e) => Err(format!(
                "cannot read the task token file {}: {e}; is the credentials Secret mounted?",
                self.token_file.display()
            )),
        }
    }
}

/// How long the end of the worker waits for a platform watcher stuck in a call.
const WATCHER_JOIN: Duration = Duration::from_secs(1);

/// The client's retry policy for the worker's calls: a few quick attempts, so the loops that own
/// the waiting (log shipper, heartbeat, final report) stay in control of their deadlines.
fn worker_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        max_elapsed: Duration::from_secs(20),
    }
}

/// Runs the `worker` subcommand; returns the process exit status.
pub fn run(args: &WorkerArgs, settings: &Settings) -> u8 {
    let identity = match TaskIdentity::from_env(|name| std::env::var(name).ok()) {
        Ok(identity) => identity,
        Err(e) => {
            log::error!("{e}");
            return EXIT_SETUP;
        }
    };
    let Some(url) = settings.url.clone() else {
        log::error!("SCALR_URL is not set; the chart sets it on the worker container");
        return EXIT_SETUP;
    };
    let token = match identity.read_token() {
        Ok(token) => token,
        Err(e) => {
            log::error!("{e}");
            return EXIT_SETUP;
        }
    };
    let sigterm = Shutdown::new();
    if let Err(e) = crate::shutdown::install_signal_handlers(&sigterm) {
        log::error!("cannot install signal handlers: {e}");
        return EXIT_SETUP;
    }
    let done = Shutdown::new();
    let platform = match PlatformClient::new(&url, &settings.http_options()) {
        Ok(client) => client
            .with_retry(worker_retry())
            .with_shutdown(done.clone()),
        Err(e) => {
            log::error!("{e}");
            return EXIT_SETUP;
        }
    };
    log::info!(
        "worker for task {} (run {}, stage {}, attempt {})",
        identity.task_id,
        identity.run_id.as_deref().unwrap_or("?"),
        identity.stage.as_deref().unwrap_or("?"),
        identity.attempt.as_deref().unwrap_or("?")
    );
    let code = run_task(
        args,
        settings,
        &identity,
        &url,
        platform,
        token,
        sigterm,
        done.clone(),
    );
    done.trigger(Reason::Requested);
    code
}

#[allow(clippy::too_many_arguments)]
fn run_task(
    args: &WorkerArgs,
    settings: &Settings,
    identity: &TaskIdentity,
    url: &str,
    platform: PlatformClient,
    token: Secret,
    sigterm: Shutdown,
    done: Shutdown,
) -> u8 {
    let task = platform.task(&identity.task_id, token.clone());
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(crate::runner::settings::SOCKET_FILE));
    // The runner first: until exec-loop answers, the task stays unstarted and the controller, which
    // sees the pod (an image that cannot be pulled, a runner that crashes), judges and reports it.
    let runner_timeout = Duration::from_secs(args.runner_timeout_secs);
    let runner = match task_run::wait_for_runner(&socket, runner_timeout, &sigterm) {
        Ok(client) => client,
        Err(task_run::RunnerWait::Stopped) => {
            log::warn!("stopped while waiting for the runner container; the task was not started");
            return EXIT_RUNNER;
        }
        Err(task_run::RunnerWait::Unreachable(e)) => {
            log::error!(
                "the runner container's exec-loop did not answer within {} s ({e}); the task was \
                 not started, and the controller reports why the runner did not come up",
                runner_timeout.as_secs()
            );
            return EXIT_RUNNER;
        }
    };
    let spec = match task.start() {
        Ok(spec) => spec,
        Err(e) => {
            let code = if e.is_unauthorized() {
                log::error!(
                    "the platform refused this worker's task token at start: the task was \
                     offered again and a newer attempt runs it; exiting without reporting ({e})"
                );
                EXIT_FENCED
            } else if e.code() == Some("task-completed") {
                log::error!(
                    "the task was already final when this worker started (failed or canceled \
                     before the pod came up); nothing to run ({e})"
                );
                EXIT_TASK_FINAL
            } else {
                log::error!("cannot start the task: {e}");
                EXIT_NOT_REPORTED
            };
            task_run::stop_runner(runner);
            return code;
        }
    };
    let markers = args
        .markers_dir
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("markers/worker"));
    if let Err(e) = std::fs::create_dir_all(&markers)
        .and_then(|()| crate::probe::touch_marker(&markers.join("started")))
    {
        log::warn!(
            "cannot write the started marker in {}: {e}",
            markers.display()
        );
    }
    log::info!(
        "task started: {} stage of run {}",
        spec.stage.as_str(),
        spec.run.id
    );

    let control = control::StopControl::new(settings.grace_shutdown);
    if let Some(mode) = spec.cancel_requested {
        control.trigger(cancel::Trigger::Cancel(mode));
    }
    let mut secrets: Vec<Secret> = vec![token.clone(), spec.run_token.clone()];
    for variable in &spec.variables {
        if let crate::platform::VariableValue::Sensitive(secret) = &variable.value {
            secrets.push(secret.clone());
        }
    }
    secrets.extend(
        settings
            .network_mirrors
            .iter()
            .filter_map(|m| m.token.clone()),
    );
    let masker = mask::Masker::new(&secrets);

    let mut threads = Threads::new(done.clone());
    let shipper_settings = log_shipper::ShipperSettings {
        max_delay: Duration::from_millis(args.log_delay_ms.max(1)),
        ..Default::default()
    };
    let mut watchers = Vec::new();
    let started = (|| {
        let shipper_task = platform
            .clone()
            .with_retry(log_shipper::client_retry())
            .task(&spec.id, token.clone());
        let log = log_shipper::spawn(&mut threads, shipper_task, masker.clone(), shipper_settings)?;
        let (c, s, d) = (control.clone(), sigterm.clone(), done.clone());
        threads.spawn("canceller", move || {
            control::run_canceller(c, s, d);
            Ok(())
        })?;
        let (healthy, d) = (markers.join("healthy"), done.clone());
        threads.spawn("markers", move || {
            watch::run_markers(healthy, d);
            Ok(())
        })?;
        let (t, c, d) = (task.clone(), control.clone(), done.clone());
        let interval = Duration::from_secs(args.heartbeat_interval_secs.max(1));
        watchers.push(watch::Watcher::spawn("heartbeat", move || {
            watch::run_heartbeat(t, c, interval, d)
        })?);
        let (t, c, d) = (task.clone(), control.clone(), done.clone());
        watchers.push(watch::Watcher::spawn("cancel-watch", move || {
            watch::run_cancel_watch(t, c, d)
        })?);
        Ok::<_, Box<dyn std::error::Error>>(log)
    })();
    let log = match started {
        Ok(log) => log,
        Err(e) => {
            log::error!("cannot start the worker's threads: {e}");
            done.trigger(Reason::Failed(e.to_string()));
            let _ = threads.join_all();
            return EXIT_NOT_REPORTED;
        }
    };

    let result = match provision::RunPaths::new(
        &settings.data_dir,
        &spec.id,
        &spec.workspace.working_directory,
    ) {
        Ok(paths) => task_run::run_stage(
            &task_run::StageContext {
                task: &task,
                spec: &spec,
                settings,
                platform_url: url,
                control: &control,
                log: &log,
                masker: &masker,
                paths: &paths,
            },
            runner,
        ),
        Err(e) => {
            log.line(format!("==> Errored: {e}"));
            task_run::stop_runner(runner);
            TaskResult::errored(&e.to_string())
        }
    };
    // After a stop, the grace deadline; but never less than the reserve from now, so a stop that
    // came long ago (a cancel during a slow download) still leaves time to report.
    let now = Instant::now();
    let deadline = match control.report_deadline() {
        Some(deadline) => deadline.max(now + control.reserve()),
        None => now + settings.grace_shutdown,
    };
    let (shipped, reported) = report::report(&platform, &spec.id, &token, &log, &result, deadline);
    // Nothing needs the platform any more: the watchers stop (a heartbeat to a final task would
    // look like the task ending under us).
    done.trigger(Reason::Requested);
    if let Some(s) = &shipped {
        log::info!(
            "log shipping: {} bytes in {} appends ({} retried), lag p50 {:?} p99 {:?} max {:?}",
            s.acknowledged_bytes,
            s.appends,
            s.retries,
            s.lag_p50,
            s.lag_p99,
            s.lag_max
        );
    }
    drop(log);
    let cache = binary_cache::BinaryCache::new(&settings.cache_dir, &settings.binary_cache);
    if let Err(e) = cache.cleanup(std::time::SystemTime::now()) {
        log::warn!("binary cache cleanup: {e}");
    }
    if let Err(e) = threads.join_all() {
        log::error!("{e}");
    }
    for watcher in watchers {
        watcher.join_within(WATCHER_JOIN);
    }
    match reported {
        Ok(()) => EXIT_REPORTED,
        Err(e) => {
            log::error!("{}", crate::threads::error_chain(&e));
            EXIT_NOT_REPORTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_the_controllers_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let id = TaskIdentity::from_env(env(&[
            ("SCALR_AGENT_TASK_ID", "task-1"),
            ("SCALR_AGENT_RUN_ID", "run-1"),
        ]))
        .expect("identity");
        assert_eq!(id.task_id, "task-1");
        assert_eq!(
            id.token_file,
            PathBuf::from("/var/run/secrets/scalr-agent/task-token")
        );
        assert_eq!(id.run_id.as_deref(), Some("run-1"));
        let id = TaskIdentity::from_env(env(&[
            ("SCALR_AGENT_TASK_ID", "task-1"),
            ("SCALR_AGENT_TASK_TOKEN_FILE", "/tmp/tok"),
        ]))
        .expect("identity");
        assert_eq!(id.token_file, PathBuf::from("/tmp/tok"));
        let err = TaskIdentity::from_env(env(&[])).expect_err("no task id");
        assert!(err.contains("SCALR_AGENT_TASK_ID"), "{err}");
    }

    #[test]
    fn token_file_problems_say_what_to_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut id = TaskIdentity {
            task_id: "task-1".into(),
            token_file: dir.path().join("missing"),
            run_id: None,
            stage: None,
            attempt: None,
        };
        assert!(
            id.read_token()
                .expect_err("missing")
                .contains("Secret mounted")
        );
        std::fs::write(dir.path().join("empty"), "\n").expect("write");
        id.token_file = dir.path().join("empty");
        assert!(id.read_token().expect_err("empty").contains("empty"));
        std::fs::write(dir.path().join("tok"), "task-token-for-unit-test\n").expect("write");
        id.token_file = dir.path().join("tok");
        assert_eq!(
            id.read_token().expect("token").expose(),
            "task-token-for-unit-test"
        );
    }
}
