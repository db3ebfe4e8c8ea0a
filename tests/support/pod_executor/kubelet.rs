//! The kubelet's work for one pod, on the pod's own thread (`pod-<name>`): report the pod
//! Pending, set up its volumes, run the init containers one by one, start the containers, follow
//! their exits and probes, and end the pod — all containers done (phase Succeeded/Failed), deleted
//! (SIGTERM, SIGKILL after the grace period, terminal phase, then the final delete with
//! `gracePeriodSeconds=0`), evicted for node pressure, removed from the API, node lost, executor
//! stopped.
//!
//! The thread is an actor: it waits only for its inbox ([`PodMsg`]: watch updates from the control
//! thread, exits from process waiters, probe results, faults) or for the next retry deadline. The
//! container starts (pull, env, spawn) are in `containers.rs`, the endings in `termination.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret};
use scalr_agent::kube::Api;
use serde_json::{Value, json};

use super::env::Lookup;
use super::events::{self, Regarding, Source};
use super::jobs::stamp;
use super::node::{Node, PodMsg, ProbeEvent};
use super::process::ContainerProcess;
use super::status::{PodModel, State};
use super::volumes::{self, PodDirs};

/// Why a pod's life ends early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    Deleted { grace: Duration },
    Gone,
    Pressure,
    NodeLost,
    Stop,
}

/// A started container.
pub struct Proc {
    pub process: ContainerProcess,
    pub oom: bool,
    pub started_at: String,
    pub probe_stop: Option<Sender<()>>,
    /// Liveness or startup failed: SIGKILL at this time unless it exits first.
    pub kill_at: Option<Instant>,
}

/// A container waiting to be started again.
#[derive(Clone, Debug)]
pub struct Retry {
    pub at: Instant,
    /// When `ErrImagePull` turns into `ImagePullBackOff`.
    pub show_backoff_at: Option<Instant>,
    pub backoff: Duration,
}

/// One pod's kubelet.
pub struct PodWorker {
    pub node: Arc<Node>,
    pub node_name: String,
    pub pod: Pod,
    pub ns: String,
    pub name: String,
    pub uid: String,
    pub spec: PodSpec,
    pub model: PodModel,
    pub inbox: Receiver<PodMsg>,
    pub tx: Sender<PodMsg>,
    pub dirs: PodDirs,
    pub volumes: BTreeMap<String, PathBuf>,
    pub procs: BTreeMap<String, Proc>,
    pub retries: BTreeMap<String, Retry>,
    pub backoffs: BTreeMap<String, Duration>,
    written: Option<Value>,
    last_mount_error: Option<String>,
}

/// Secrets and ConfigMaps of the pod's namespace, read through the API.
pub struct ApiLookup<'a> {
    pub client: &'a scalr_agent::kube::Client,
    pub namespace: &'a str,
}

impl Lookup for ApiLookup<'_> {
    fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Api::<Secret>::namespaced(self.client, self.namespace)
            .get_opt(name)
            .map(|s| {
                s.map(|s| {
                    let mut data: BTreeMap<String, Vec<u8>> = s
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    for (k, v) in s.string_data.unwrap_or_default() {
                        data.insert(k, v.into_bytes());
                    }
                    data
                })
            })
            .map_err(|e| e.to_string())
    }

    fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        Api::<ConfigMap>::namespaced(self.client, self.namespace)
            .get_opt(name)
            .map(|c| c.map(|c| c.data.unwrap_or_default()))
            .map_err(|e| e.to_string())
    }
}

fn uid_prefix(uid: &str) -> String {
    uid.chars().filter(|c| *c != '-').take(12).collect()
}

impl PodWorker {
    /// A worker for `pod`, bound to `node_name`.
    pub fn new(
        node: Arc<Node>,
        node_name: String,
        pod: Pod,
        inbox: Receiver<PodMsg>,
        tx: Sender<PodMsg>,
    ) -> PodWorker {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let model = PodModel::new(&spec, &stamp(SystemTime::now()));
        let dirs = PodDirs {
            root: node.work.join("pods").join(uid_prefix(&uid)),
            claims: node.work.join("claims"),
        };
        PodWorker {
            node,
            node_name,
            pod,
            ns,
            name,
            uid,
            spec,
            model,
            inbox,
            tx,
            dirs,
            volumes: BTreeMap::new(),
            procs: BTreeMap::new(),
            retries: BTreeMap::new(),
            backoffs: BTreeMap::new(),
            written: None,
            last_mount_error: None,
        }
    }

    /// The pod's whole life; returns when the pod is gone or the executor stops.
    pub fn run(mut self) {
        let end = match self.live() {
            Ok(()) => self.after_containers(),
            Err(end) => end,
        };
        self.end(end);
    }

    /// What an Event about this pod (or one of its containers) names.
    pub fn regarding(&self, container: Option<&str>) -> Regarding {
        let field_path = container.map(|c| {
            let init = self
                .spec
                .init_containers
                .iter()
                .flatten()
                .any(|x| x.name == c);
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        Regarding {
            kind: "Pod",
            api_version: "v1",
            namespace: self.ns.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            field_path,
        }
    }

    /// Records a kubelet Event.
    pub fn event(&self, container: Option<&str>, warning: bool, reason: &str, message: &str) {
        if let Err(e) = events::record(
            &self.node.client,
            &self.regarding(container),
            Source::Kubelet(&self.node_name),
            warning,
            reason,
            message,
        ) {
            self.node.shared.error(e);
        }
    }

    pub(super) fn pods(&self) -> Api<Pod> {
        Api::namespaced(&self.node.client, &self.ns)
    }

    /// Writes the status if it changed. `Err(Gone)` when the pod no longer exists.
    pub fn report(&mut self) -> Result<(), End> {
        let stored = serde_json::to_value(&self.pod.status).unwrap_or(Value::Null);
        let status = self.model.render(&stored, &stamp(SystemTime::now()));
        if self.written.as_ref() == Some(&status) {
            return Ok(());
        }
        match self
            .pods()
            .patch_status(&self.name, &json!({"status": status}))
        {
            Ok(pod) => {
                self.written = Some(status);
                if pod.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    self.pod = pod;
                }
                Ok(())
            }
            Err(e) if e.is_not_found() => Err(End::Gone),
            Err(e) => {
                self.node.shared.error(format!(
                    "write status of pod {}/{}: {e}",
                    self.ns, self.name
                ));
                Ok(())
            }
        }
    }

    pub(super) fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self.spec.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    fn live(&mut self) -> Result<(), End> {
        if self.pod.metadata.deletion_timestamp.is_some() {
            return Err(End::Deleted {
                grace: self.grace(),
            });
        }
        self.report()?;
        self.mount()?;
        self.model.sandbox_ready = true;
        self.report()?;
        let init = self.spec.init_containers.clone().unwrap_or_default();
        for c in &init {
            self.attempt(c)?;
            while matches!(
                self.model.container(&c.name).map(|m| &m.state),
                Some(State::Waiting { .. })
            ) {
                self.step()?;
            }
            if self.model.container(&c.name).is_some_and(|m| m.sidecar) {
                continue;
            }
            while self
                .model
                .container(&c.name)
                .and_then(|m| m.terminated())
                .is_none()
            {
                self.step()?;
            }
            if self.model.container(&c.name).and_then(|m| m.terminated()) != Some(0) {
                return Ok(());
            }
        }
        for c in self.spec.containers.clone() {
            self.attempt(&c)?;
        }
        while !self.model.all_main_terminated() {
            self.step()?;
        }
        Ok(())
    }

    fn mount(&mut self) -> Result<(), End> {
        loop {
            let lookup = ApiLookup {
                client: &self.node.client,
                namespace: &self.ns,
            };
            match volumes::set_up_all(&self.pod, &self.dirs, &lookup) {
                Ok(v) => {
                    let key = (self.ns.clone(), self.name.clone());
                    self.node
                        .shared
                        .update(|st| st.volumes.insert(key, v.clone()));
                    self.volumes = v;
                    return Ok(());
                }
                Err(message) => {
                    if self.last_mount_error.as_ref() != Some(&message) {
                        self.event(None, true, "FailedMount", &message);
                        self.last_mount_error = Some(message);
                    }
                    let at = Instant::now() + self.node.tunables.image_pull_backoff;
                    self.wait(Some(at))?;
                }
            }
        }
    }

    /// Waits for the next message or deadline, then starts what is due.
    fn step(&mut self) -> Result<(), End> {
        let deadline = self
            .retries
            .values()
            .flat_map(|r| [Some(r.at), r.show_backoff_at])
            .chain(self.procs.values().map(|p| p.kill_at))
            .flatten()
            .min();
        self.wait(deadline)?;
        self.due()
    }

    /// Handles one message, or returns at `deadline`.
    pub fn wait(&mut self, deadline: Option<Instant>) -> Result<(), End> {
        let msg = match deadline {
            Some(d) => match self.inbox.recv_deadline(d) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return Ok(()),
                Err(RecvTimeoutError::Disconnected) => return Err(End::Stop),
            },
            None => self.inbox.recv().map_err(|_| End::Stop)?,
        };
        self.handle(msg)
    }

    fn handle(&mut self, msg: PodMsg) -> Result<(), End> {
        match msg {
            PodMsg::Updated(pod) => {
                let deleting = pod.metadata.deletion_timestamp.is_some();
                self.pod = *pod;
                if deleting {
                    return Err(End::Deleted {
                        grace: self.grace(),
                    });
                }
                Ok(())
            }
            PodMsg::Removed => Err(End::Gone),
            PodMsg::Exited { container, code } => {
                self.exited(&container, code);
                self.report()
            }
            PodMsg::Probe { container, event } => self.probed(&container, event),
            PodMsg::Disrupted { reason, message } => {
                self.model.disruption = Some((reason, message));
                self.report()
            }
            PodMsg::Pressure => Err(End::Pressure),
            PodMsg::OomKill(container) => {
                if let Some(p) = self.procs.get_mut(&container)
                    && p.process.exited().is_none()
                {
                    p.oom = true;
                    p.process.kill_all();
                }
                Ok(())
            }
            PodMsg::Signal(container, signal) => {
                if let Some(p) = self.procs.get(&container) {
                    p.process.signal(signal);
                }
                Ok(())
            }
            PodMsg::NodeLost => Err(End::NodeLost),
            PodMsg::Stop => Err(End::Stop),
        }
    }

    fn probed(&mut self, container: &str, event: ProbeEvent) -> Result<(), End> {
        let running = self.model.container(container).is_some_and(|c| c.running());
        if !running {
            return Ok(());
        }
        match event {
            ProbeEvent::Failed { kind, output } => {
                self.event(
                    Some(container),
                    true,
                    "Unhealthy",
                    &format!("{kind} probe failed: {output}"),
                );
            }
            ProbeEvent::Started => {
                if let Some(c) = self.model.container_mut(container) {
                    c.started = true;
                }
            }
            ProbeEvent::Ready(ready) => {
                if let Some(c) = self.model.container_mut(container) {
                    c.ready = ready && c.started && !c.init;
                }
            }
            ProbeEvent::Kill { kind } => {
                self.event(
                    Some(container),
                    false,
                    "Killing",
                    &format!(
                        "Container {container} failed {} probe, will be restarted",
                        kind.to_lowercase()
                    ),
                );
                let grace = Duration::from_secs(
                    self.spec
                        .termination_grace_period_seconds
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                if let Some(p) = self.procs.get_mut(container) {
                    p.process.signal(libc::SIGTERM);
                    p.kill_at = Some(Instant::now() + grace);
                }
            }
        }
        self.report()
    }

    /// A container's main process ended with `code`.
    pub fn exited(&mut self, container: &str, code: i32) {
        let Some(p) = self.procs.get_mut(container) else {
            return;
        };
        p.kill_at = None;
        if let Some(stop) = p.probe_stop.take() {
            let _ = stop.send(());
        }
        let (code, reason) = if p.oom {
            (137, "OOMKilled")
        } else if code == 0 {
            (0, "Completed")
        } else {
            (code, "Error")
        };
        let started_at = p.started_at.clone();
        let pid = p.process.pid;
        if let Some(c) = self.model.container_mut(container) {
            c.state = State::Terminated {
                exit_code: code,
                reason: reason.to_string(),
                message: None,
                started_at: Some(started_at),
                finished_at: stamp(SystemTime::now()),
            };
            c.started = false;
            c.ready = false;
        }
        self.node.shared.update(|st| {
            st.memory.retain(|m| m.pid != pid);
            if let Some(info) = st.processes.iter_mut().find(|i| i.pid == pid) {
                info.running = false;
                info.exit_code = Some(code);
            }
        });
    }
}
