//! What the controller is started with: [`ControllerOptions`] (resolved from [`Settings`] by
//! [`ControllerOptions::from_settings`], or built directly by tests and benchmarks), its timing
//! ([`Timing`]), how it ends ([`ControllerExit`]) and why it could not start ([`ControllerError`]).
//!
//! Pure data; no thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::housekeeper::HousekeeperConfig;
use super::lease;
use super::supervision::SupervisionSettings;
use crate::config::{ConfigErrors, Settings};
use crate::http::{HttpOptions, RetryPolicy};
use crate::kube::{Explicit, KubeConfig, KubeEnv};
use crate::secret::Secret;

/// Everything the controller needs.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// The agent name (`SCALR_AGENT_NAME`; the chart sets the pod name).
    pub name: String,
    /// `SCALR_URL`.
    pub platform_url: String,
    /// The agent pool token.
    pub pool_token: Secret,
    /// TLS, proxy and timeouts for the platform.
    pub platform_http: HttpOptions,
    /// Where the Kubernetes API is and how to authenticate.
    pub kube: KubeConfig,
    /// Proxy and timeouts for Kubernetes (the CA comes from `kube`).
    pub kube_http: HttpOptions,
    /// Namespace of Jobs, Secrets, Leases and the template.
    pub namespace: String,
    /// The `AgentTaskTemplate`'s name.
    pub task_template: String,
    /// Most unfinished tasks at once.
    pub concurrency: u32,
    /// Where the probe markers go.
    pub data_dir: PathBuf,
    /// Where metrics are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Time limits and retry pacing.
    pub timing: Timing,
}

/// Time limits, intervals and retry pacing. [`Timing::default`] is production; tests shorten it.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Supervision limits (startup timeout from `SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS`).
    pub supervision: SupervisionSettings,
    /// After a force cancel of a started task, how long its Job may live (60 s).
    pub force_cancel_deadline: Duration,
    /// Least time between two reads of a task's Events (10 s); a Job without a pod is re-read this
    /// often.
    pub events_refresh: Duration,
    /// How long a Job may be without a pod before its Events are read (5 s).
    pub pod_expected_after: Duration,
    /// Lease renewal tick (10 s).
    pub housekeeping_tick: Duration,
    /// Lease duration (60 s).
    pub lease_duration: Duration,
    /// Adoption and orphaned-Secret scans (30 s).
    pub scan_interval: Duration,
    /// Periodic reconcile with the platform (5 min).
    pub reconcile_interval: Duration,
    /// Age before an ownerless credentials Secret is cleaned up (5 min).
    pub orphan_grace: Duration,
    /// On SIGTERM, how long to wait for launched tasks to start before deregistering (20 s; the
    /// chart's grace period is 60 s).
    pub drain_timeout: Duration,
    /// Platform retries (the client's policy).
    pub platform_retry: RetryPolicy,
    /// Kubernetes retries of launches and housekeeping.
    pub kube_retry: RetryPolicy,
    /// Kubernetes retries of the supervisor's Event reads (kept short: it must stay responsive).
    pub kube_retry_fast: RetryPolicy,
    /// First backoff of a broken watch (0.5 s).
    pub watch_backoff: Duration,
    /// Launcher threads (4).
    pub launch_workers: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            supervision: SupervisionSettings::default(),
            force_cancel_deadline: Duration::from_secs(60),
            events_refresh: Duration::from_secs(10),
            pod_expected_after: Duration::from_secs(5),
            housekeeping_tick: Duration::from_secs(10),
            lease_duration: lease::DEFAULT_DURATION,
            scan_interval: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(300),
            orphan_grace: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(20),
            platform_retry: RetryPolicy::default(),
            kube_retry: RetryPolicy::default(),
            kube_retry_fast: RetryPolicy {
                max_attempts: 2,
                initial: Duration::from_millis(200),
                max_delay: Duration::from_secs(1),
                max_elapsed: Duration::from_secs(5),
            },
            watch_backoff: Duration::from_millis(500),
            launch_workers: 4,
        }
    }
}

impl ControllerOptions {
    /// Resolves the options from validated settings and the process environment (Kubernetes
    /// configuration: in-cluster, `KUBECONFIG` or `~/.kube/config`).
    pub fn from_settings(settings: &Settings) -> Result<Self, ControllerError> {
        let (url, token) = settings
            .require_platform()
            .map_err(ControllerError::Config)?;
        let kube = KubeConfig::discover(
            &KubeEnv::from_process(),
            &Explicit {
                namespace: settings.namespace.clone(),
                ..Explicit::default()
            },
        )
        .map_err(ControllerError::KubeConfig)?;
        let namespace = kube.namespace.clone();
        Ok(ControllerOptions {
            name: settings.name.clone(),
            platform_url: url.to_string(),
            pool_token: token.clone(),
            platform_http: settings.http_options(),
            kube,
            kube_http: HttpOptions {
                proxy: settings.proxy.clone(),
                ..HttpOptions::default()
            },
            namespace,
            task_template: settings.task_template.clone(),
            concurrency: settings.concurrency,
            data_dir: settings.data_dir.clone(),
            metrics_addr: settings.metrics_addr,
            timing: Timing {
                supervision: SupervisionSettings::with_startup_timeout(settings.startup_timeout),
                ..Timing::default()
            },
        })
    }

    /// The housekeeper's configuration for release `instance`.
    pub fn housekeeper(&self, instance: &str) -> HousekeeperConfig {
        HousekeeperConfig {
            tick: self.timing.housekeeping_tick,
            lease_duration: self.timing.lease_duration,
            scan_interval: self.timing.scan_interval,
            reconcile_interval: self.timing.reconcile_interval,
            orphan_grace: self.timing.orphan_grace,
            ..HousekeeperConfig::new(instance, &self.name)
        }
    }
}

/// How the controller ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerExit {
    /// Stopped in order (SIGTERM, or asked to).
    Stopped,
    /// A credential was refused (401): the pool token was revoked or the Kubernetes token is gone.
    Unauthorized(String),
    /// A thread failed.
    Failed(String),
}

impl ControllerExit {
    /// The process exit status: 0, 3 (credential refused) or 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ControllerExit::Stopped => 0,
            ControllerExit::Unauthorized(_) => 3,
            ControllerExit::Failed(_) => 1,
        }
    }
}

/// Why the controller could not start.
#[derive(Debug)]
pub enum ControllerError {
    /// The settings lack what the controller needs.
    Config(ConfigErrors),
    /// No usable Kubernetes configuration.
    KubeConfig(crate::kube::ConfigError),
    /// The Kubernetes client could not be built.
    KubeClient(crate::kube::KubeError),
    /// The platform client could not be built, or registration failed for good.
    Register(crate::platform::PlatformError),
    /// The metrics port could not be bound.
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A thread could not be started.
    Threads(crate::threads::ThreadError),
}

impl std::fmt::Display for ControllerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControllerError::Config(e) => write!(f, "{e}"),
            ControllerError::KubeConfig(e) => write!(f, "{e}"),
            ControllerError::KubeClient(e) => write!(f, "cannot build the Kubernetes client: {e}"),
            ControllerError::Register(e) => write!(
                f,
                "cannot register with the platform: {e}; check SCALR_URL and the agent pool token"
            ),
            ControllerError::Metrics { addr, source } => write!(
                f,
                "cannot serve metrics on {addr}: {source}; choose another SCALR_AGENT_METRICS_PORT"
            ),
            ControllerError::Threads(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ControllerError {}
