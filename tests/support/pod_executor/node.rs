//! What every thread of the pod executor shares: the node (its name, pulled images, scripted
//! faults), the registry of container processes, the API client, and the messages a pod's thread
//! receives. One mutex and one condition variable, signalled on every change so that tests can
//! wait on the executor's own state.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;
use k8s_openapi::api::core::v1::Pod;
use scalr_agent::kube::Client;

use super::super::kube_sim::selectors::LabelSelector;
use super::image::{ImageRegistry, PullFault};

/// One container process the executor started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: i32,
    /// Still running.
    pub running: bool,
    /// Its exit code once it ended (128 + signal when killed).
    pub exit_code: Option<i32>,
    /// stdout and stderr.
    pub log: PathBuf,
}

/// A running container the memory sampler watches.
#[derive(Clone, Debug)]
pub struct MemoryWatch {
    pub pid: i32,
    pub container: String,
    pub limit: Option<u64>,
    pub cgroup: PathBuf,
    pub pod: Sender<PodMsg>,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub struct ExecState {
    /// The node pods are bound to now (a new one after `lose_node`).
    pub node: String,
    pub lost_nodes: Vec<String>,
    pub pull_faults: Vec<PullFault>,
    /// Pods matching this selector are unschedulable.
    pub unschedulable: Option<LabelSelector>,
    /// Images present on the node (`IfNotPresent` skips the pull).
    pub pulled: HashSet<String>,
    pub processes: Vec<ProcessInfo>,
    /// Each running pod's volumes: (namespace, pod) → volume name → host path.
    pub volumes: BTreeMap<(String, String), BTreeMap<String, PathBuf>>,
    pub memory: Vec<MemoryWatch>,
    /// API calls that failed unexpectedly, for diagnostics.
    pub errors: Vec<String>,
    /// Bumped on every change.
    pub ticks: u64,
    pub stopped: bool,
}

/// The lock and its signal.
#[derive(Debug, Default)]
pub struct Shared {
    pub state: Mutex<ExecState>,
    pub changed: Condvar,
}

impl Shared {
    /// Locks the state (a panicked holder does not poison it).
    pub fn lock(&self) -> MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state under the lock and wakes waiters.
    pub fn update<T>(&self, f: impl FnOnce(&mut ExecState) -> T) -> T {
        let out = {
            let mut st = self.lock();
            st.ticks += 1;
            f(&mut st)
        };
        self.changed.notify_all();
        out
    }

    /// Keeps an unexpected error for `PodExecutor::errors`.
    pub fn error(&self, text: String) {
        self.update(|st| st.errors.push(text));
    }
}

/// Tunables of the node.
#[derive(Clone, Debug)]
pub struct Tunables {
    pub image_pull_backoff: Duration,
    pub pod_backoff: Duration,
    pub memory_sample_interval: Duration,
    pub cgroup_env: Option<String>,
}

/// The node's fixed parts, shared by every thread.
pub struct Node {
    pub client: Client,
    pub images: ImageRegistry,
    pub work: PathBuf,
    pub shared: std::sync::Arc<Shared>,
    pub tunables: Tunables,
    /// Where pods reach the API server (`KUBERNETES_SERVICE_HOST`/`PORT`).
    pub api_port: u16,
}

/// What a probe thread reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    /// One probe failed (an `Unhealthy` event): kind (`Startup`, `Readiness`, `Liveness`) and output.
    Failed { kind: &'static str, output: String },
    /// The startup probe passed (or there is none): `started: true`.
    Started,
    /// Readiness changed.
    Ready(bool),
    /// Startup or liveness failed past its threshold: kill the container.
    Kill { kind: &'static str },
}

/// How the Eviction API or the kubelet evicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionKind {
    /// `pods/eviction` (a drain): DisruptionTarget, then a graceful delete.
    Api,
    /// Node pressure: the kubelet kills the pod and marks it Failed/Evicted; it is not deleted.
    NodePressure,
}

/// A message to a pod's thread.
#[derive(Debug)]
pub enum PodMsg {
    /// The pod as the watch saw it now.
    Updated(Box<Pod>),
    /// The pod is gone from the API.
    Removed,
    /// A container's main process ended.
    Exited {
        container: String,
        code: i32,
    },
    Probe {
        container: String,
        event: ProbeEvent,
    },
    /// The Eviction API is about to delete the pod: add DisruptionTarget first.
    Disrupted {
        reason: String,
        message: String,
    },
    /// Evict for node pressure.
    Pressure,
    OomKill(String),
    Signal(String, i32),
    /// The node died: kill everything, report nothing.
    NodeLost,
    /// The executor stops: kill everything.
    Stop,
}
