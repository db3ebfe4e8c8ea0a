//! The pod executor: a one-node cluster's Job controller, scheduler, pod GC and kubelet for the
//! Kubernetes API simulator. It watches Jobs and Pods through our own client (`scalr_agent::kube`),
//! creates a pod per Job, binds pods to its node, and runs each pod's containers as local processes
//! of the configured images, reporting status and Events as a kubelet does. Scripted node faults:
//! image pulls that fail, unschedulable pods, OOM kills, evictions, node loss.
//! See the "Pod executor" section of `docs/kube-simulator.md` for the model and its limits.
//!
//! Threads: `pod-exec-jobs` and `pod-exec-pods` (list-then-watch), `pod-exec-control` (the
//! controllers, `control.rs`), `pod-exec-memory` (memory sampler), one `pod-<name>` per pod (the
//! kubelet's work, `kubelet.rs`) with a waiter thread per container process and a probe thread per
//! probed container. Dropping the [`PodExecutor`] kills every process and joins every thread.
//!
//! ```ignore
//! let sim = KubeSim::start(KubeSimOptions { graceful_pod_deletion: true, ..Default::default() });
//! let exec = PodExecutor::start(&sim, ExecutorOptions::default().image("busybox", Image::busybox()));
//! sim.put(job_json);                  // → a pod, bound, run, Succeeded → Job Complete
//! exec.fail_image_pulls("scalr/*", PullFailure::ErrImagePull);
//! exec.logs("ci", &pod_name, "main");
//! ```

pub mod containers;
pub mod control;
pub mod disruption;
pub mod env;
pub mod events;
pub mod image;
pub mod jobs;
pub mod kubelet;
pub mod node;
pub mod probes;
pub mod process;
pub mod sampler;
pub mod scheduler;
pub mod status;
pub mod termination;
pub mod view;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use scalr_agent::http::{CaSource, HttpOptions};
use scalr_agent::kube::{Api, Client, Explicit, KubeConfig, WatchConfig, watcher};
use scalr_agent::secret::Secret;
use scalr_agent::shutdown::{Reason, Shutdown};

use super::kube_sim::KubeSim;
use super::kube_sim::selectors::LabelSelector;
use control::{Command, Control};
pub use disruption::EvictionError;
pub use image::{Image, ImageRegistry, PullFailure, PullFault};
pub use node::ProcessInfo;
use node::{Node, PodMsg, Shared, Tunables};

/// How the executor behaves.
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    /// Image reference → image. A reference not listed fails to pull (`ErrImagePull`).
    pub images: ImageRegistry,
    /// Watch only this namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// The node's name (`spec.nodeName`, Event source). Default `kube-sim-node`.
    pub node_name: String,
    /// Where pods' volumes, claims and logs go. Default: a temporary directory removed on drop.
    /// Keep paths short: Unix sockets in volumes must fit 107 bytes.
    pub work_dir: Option<PathBuf>,
    /// First image pull back-off, doubled per failure up to 300 s; also the retry period of
    /// `CreateContainerConfigError` and `FailedMount`. Default 10 s (the kubelet's).
    pub image_pull_backoff: Duration,
    /// Delay before a failed Job pod is replaced, doubled per failure up to 6 min. Default zero
    /// (the Job controller's is 10 s; tests rarely want to wait).
    pub pod_backoff: Duration,
    /// How often container memory is sampled into the fake cgroup files. Default 100 ms.
    pub memory_sample_interval: Duration,
    /// When set, each container gets this environment variable naming its fake cgroup directory
    /// (`memory.max`, `memory.current`, `memory.stat`), e.g. `SCALR_AGENT_CGROUP_ROOT`.
    pub cgroup_env: Option<String>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            images: ImageRegistry::default(),
            namespace: None,
            node_name: "kube-sim-node".into(),
            work_dir: None,
            image_pull_backoff: Duration::from_secs(10),
            pod_backoff: Duration::ZERO,
            memory_sample_interval: Duration::from_millis(100),
            cgroup_env: None,
        }
    }
}

impl ExecutorOptions {
    /// Registers `image` under `reference`.
    pub fn image(mut self, reference: &str, image: Image) -> Self {
        self.images.insert(reference, image);
        self
    }
}

/// A running pod executor. Stops on drop, killing every container process.
pub struct PodExecutor {
    node: Arc<Node>,
    commands: Sender<Command>,
    shutdown: Shutdown,
    threads: Vec<JoinHandle<()>>,
    _temp: Option<tempfile::TempDir>,
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .unwrap_or_else(|e| panic!("spawn thread {name}: {e}"))
}

impl PodExecutor {
    /// Starts the executor against `sim` with its own identity (`system:node:<node>`, a member of
    /// `system:masters`, so RBAC never stops it).
    pub fn start(sim: &KubeSim, options: ExecutorOptions) -> PodExecutor {
        let token = format!("node-{}", super::kube_sim::objects::new_uid());
        sim.add_token(
            &token,
            &format!("system:node:{}", options.node_name),
            &["system:nodes", "system:masters"],
        );
        let explicit = Explicit {
            server: Some(sim.url()),
            token: Some(Secret::new(&token)),
            ca: sim
                .ca_pem()
                .map(|pem| CaSource::Pem(pem.as_bytes().to_vec())),
            namespace: Some(
                options
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ..Explicit::default()
        };
        let config = KubeConfig::explicit(&explicit).expect("the simulator's URL and CA are valid");
        let client =
            Client::new(&config, &HttpOptions::default()).expect("a client for the simulator");
        let api_port = sim
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(443);
        let (temp, work) = match &options.work_dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("pe")
                    .tempdir()
                    .expect("create the executor's work directory");
                let path = t.path().to_path_buf();
                (Some(t), path)
            }
        };
        let shared = Arc::new(Shared::default());
        shared.update(|st| st.node = options.node_name.clone());
        let node = Arc::new(Node {
            client: client.clone(),
            images: options.images.clone(),
            work,
            shared: shared.clone(),
            tunables: Tunables {
                image_pull_backoff: options.image_pull_backoff,
                pod_backoff: options.pod_backoff,
                memory_sample_interval: options.memory_sample_interval,
                cgroup_env: options.cgroup_env.clone(),
            },
            api_port,
        });
        let shutdown = Shutdown::new();
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(64);
        let (pods_tx, pods_rx) = crossbeam_channel::bounded(64);
        let (commands, commands_rx) = crossbeam_channel::unbounded();
        let ns = options.namespace.clone();
        let mut threads = Vec::new();
        {
            let (client, ns, shutdown, shared) =
                (client.clone(), ns.clone(), shutdown.clone(), shared.clone());
            threads.push(spawn("pod-exec-jobs", move || {
                let api: Api<Job> = match &ns {
                    Some(ns) => Api::namespaced(&client, ns),
                    None => Api::all(&client),
                };
                if let Err(e) = watcher::run(&api, &WatchConfig::default(), &jobs_tx, &shutdown) {
                    shared.error(format!("watch Jobs: {e}"));
                }
            }));
        }
        {
            let (client, shutdown, shared) = (client.clone(), shutdown.clone(), shared.clone());
            threads.push(spawn("pod-exec-pods", move || {
                let api: Api<Pod> = match &ns {
                    Some(ns) => Api::namespaced(&client, ns),
                    None => Api::all(&client),
                };
                if let Err(e) = watcher::run(&api, &WatchConfig::default(), &pods_tx, &shutdown) {
                    shared.error(format!("watch Pods: {e}"));
                }
            }));
        }
        {
            let (node, stop) = (node.clone(), shutdown.channel());
            threads.push(spawn("pod-exec-control", move || {
                Control::new(node).run(jobs_rx, pods_rx, commands_rx, stop)
            }));
        }
        {
            let (shared, stop) = (shared.clone(), shutdown.channel());
            let interval = options.memory_sample_interval;
            threads.push(spawn("pod-exec-memory", move || {
                sampler::run(shared, interval, stop)
            }));
        }
        PodExecutor {
            node,
            commands,
            shutdown,
            threads,
            _temp: temp,
        }
    }

    fn shared(&self) -> &Shared {
        &self.node.shared
    }

    /// The node pods are bound to now.
    pub fn node_name(&self) -> String {
        self.shared().lock().node.clone()
    }

    /// The work directory (volumes under `pods/`, claims under `claims/`, logs under `logs/`).
    pub fn work_dir(&self) -> &Path {
        &self.node.work
    }

    /// From now on, pulls of images matching `pattern` (`*` wildcards, written or normalised
    /// form) fail with `failure`. Pods already running are not touched; waiting ones retry.
    pub fn fail_image_pulls(&self, pattern: &str, failure: PullFailure) {
        self.shared().update(|st| {
            st.pull_faults.push(PullFault {
                pattern: pattern.to_string(),
                failure,
            })
        });
    }

    /// Pulls work again.
    pub fn clear_image_pull_failures(&self) {
        self.shared().update(|st| st.pull_faults.clear());
    }

    /// Pods matching the label `selector` (`""`: every pod) cannot be scheduled from now on.
    pub fn make_unschedulable(&self, selector: &str) {
        let parsed = LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("bad label selector {selector:?}: {e}"));
        self.shared().update(|st| st.unschedulable = Some(parsed));
        let _ = self.commands.send(Command::Resync);
    }

    /// Pending pods can be scheduled again.
    pub fn make_schedulable(&self) {
        self.shared().update(|st| st.unschedulable = None);
        let _ = self.commands.send(Command::Resync);
    }

    fn to_pod(&self, namespace: &str, pod: &str, msg: PodMsg) -> bool {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let sent = self.commands.send(Command::ToPod {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            msg,
            reply,
        });
        sent.is_ok() && answer.recv().unwrap_or(false)
    }

    /// The kernel's OOM killer ends `container` (SIGKILL to all its processes; terminated with
    /// exit code 137, reason `OOMKilled`). False when the pod has no running thread here.
    pub fn oom_kill(&self, namespace: &str, pod: &str, container: &str) -> bool {
        self.to_pod(namespace, pod, PodMsg::OomKill(container.to_string()))
    }

    /// Sends `signal` to the main process of `container`.
    pub fn signal(&self, namespace: &str, pod: &str, container: &str, signal: i32) -> bool {
        self.to_pod(
            namespace,
            pod,
            PodMsg::Signal(container.to_string(), signal),
        )
    }

    /// Evicts through the Eviction API, as a drain does: refused while a PodDisruptionBudget
    /// allows no disruption; else `DisruptionTarget` (`EvictionByEvictionAPI`) and a graceful delete.
    pub fn evict(&self, namespace: &str, pod: &str) -> Result<(), EvictionError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.commands
            .send(Command::Evict {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                reply,
            })
            .map_err(|_| EvictionError::Api("the executor stopped".into()))?;
        answer
            .recv()
            .unwrap_or(Err(EvictionError::Api("the executor stopped".into())))
    }

    /// The kubelet evicts the pod for memory pressure: containers killed, phase Failed, reason
    /// `Evicted`, `DisruptionTarget` (`TerminationByKubelet`); the pod is not deleted.
    pub fn evict_for_pressure(&self, namespace: &str, pod: &str) -> bool {
        self.to_pod(namespace, pod, PodMsg::Pressure)
    }

    /// The node is lost: every process on it is killed at once, its pods are marked Failed with
    /// `DisruptionTarget` (`DeletionByPodGC`) and force-deleted, and a new node takes its place.
    /// Returns the new node's name.
    pub fn lose_node(&self) -> String {
        let (reply, answer) = crossbeam_channel::bounded(1);
        if self.commands.send(Command::LoseNode { reply }).is_err() {
            return self.node_name();
        }
        answer.recv().unwrap_or_else(|_| self.node_name())
    }

    /// Every container process started so far, in start order.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.shared().lock().processes.clone()
    }

    /// The log file of `container` in `pod` (stdout and stderr together).
    pub fn log_path(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.node
            .work
            .join("logs")
            .join(format!("{namespace}_{pod}_{container}.log"))
    }

    /// What `container` of `pod` printed so far ("" when it never ran).
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(self.log_path(namespace, pod, container)).unwrap_or_default()
    }

    /// The host directory of a PersistentVolumeClaim.
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> PathBuf {
        volumes::claim_dir(&self.node.work.join("claims"), namespace, claim)
    }

    /// The host path of volume `volume` of `pod` (any type: emptyDir, secret, configMap, claim,
    /// hostPath), from when the pod's volumes are set up until it is gone.
    pub fn volume_dir(&self, namespace: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        self.shared()
            .lock()
            .volumes
            .get(&(namespace.to_string(), pod.to_string()))
            .and_then(|v| v.get(volume))
            .cloned()
    }

    /// API calls that failed unexpectedly (for failure messages).
    pub fn errors(&self) -> Vec<String> {
        self.shared().lock().errors.clone()
    }

    /// Waits until `condition` holds, re-checking after every change of the executor's state
    /// (a process started or ended, a fault set) and at least every 50 ms; false after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&PodExecutor) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let ticks = self.shared().lock().ticks;
            if condition(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let st = self.shared().lock();
            if st.ticks == ticks {
                let wait = (deadline - now).min(Duration::from_millis(50));
                let _ = self.shared().changed.wait_timeout(st, wait);
            }
        }
    }

    /// The processes and errors, for a failing test to print.
    pub fn dump(&self) -> String {
        let st = self.shared().lock();
        let mut out = format!("pod executor on node {}\nprocesses:\n", st.node);
        for p in &st.processes {
            out.push_str(&format!(
                "  {}/{} {} pid {} {}\n",
                p.namespace,
                p.pod,
                p.container,
                p.pid,
                match p.exit_code {
                    Some(c) => format!("exited {c}"),
                    None => "running".into(),
                }
            ));
        }
        out.push_str("errors:\n");
        for e in &st.errors {
            out.push_str(&format!("  {e}\n"));
        }
        out
    }
}

impl Drop for PodExecutor {
    fn drop(&mut self) {
        self.shutdown.trigger(Reason::Requested);
        self.shared().update(|st| st.stopped = true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
