//! The control thread (`pod-exec-control`): the cluster-side controllers of the one simulated
//! node. It keeps the Jobs and Pods the two watch threads send, and after every batch of events:
//! - the scheduler (`scheduler.rs`) binds pending pods to the node or marks them unschedulable;
//! - pod GC fails and force-deletes unscheduled pods that are being deleted;
//! - the kubelet side starts one thread per pod bound to the node and forwards its updates;
//! - the Job controller (`jobs.rs` decides) creates pods, counts them, writes Job status, deletes
//!   finished Jobs after their TTL, and releases the tracking finalizer of orphaned pods.
//!
//! Commands from the test (evict, OOM kill, signal, node loss: `disruption.rs`) arrive on a
//! channel and are done here, in order with the watch events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scalr_agent::kube::{Api, DeleteParams, WatchEvent};
use serde_json::json;

use super::disruption::EvictionError;
use super::events::{self, Regarding, Source};
use super::jobs::{self, JobAction, JobRecord, TRACKING_FINALIZER};
use super::kubelet::PodWorker;
use super::node::{Node, PodMsg};

/// A test's request to the control thread.
pub enum Command {
    /// Faults changed: schedule again.
    Resync,
    Evict {
        namespace: String,
        pod: String,
        reply: Sender<Result<(), EvictionError>>,
    },
    /// Send `msg` to the pod's thread; replies whether the pod has one.
    ToPod {
        namespace: String,
        pod: String,
        msg: PodMsg,
        reply: Sender<bool>,
    },
    /// The node dies; replies with the replacement node's name.
    LoseNode { reply: Sender<String> },
}

/// The thread of one pod on the node.
pub(super) struct Worker {
    pub(super) tx: Sender<PodMsg>,
    pub(super) handle: JoinHandle<()>,
    rv: String,
    pub(super) node: String,
}

/// The control thread's state.
pub struct Control {
    pub(super) node: Arc<Node>,
    jobs: BTreeMap<String, Job>,
    pub(super) pods: BTreeMap<String, Pod>,
    records: HashMap<String, JobRecord>,
    pub(super) workers: HashMap<String, Worker>,
    ended: Vec<JoinHandle<()>>,
    spawned: HashSet<String>,
    /// Pods marked unschedulable, with the message written.
    pub(super) unschedulable: HashMap<String, String>,
    /// Pods pod GC (or a lost node) already dealt with.
    pub(super) collected: HashSet<String>,
    wake_at: Option<SystemTime>,
}

pub(super) fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

pub(super) fn uid_of(meta: &ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

pub(super) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub(super) fn terminal(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub(super) fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn controller_uid(pod: &Pod) -> Option<(String, String)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Job")
        .map(|o| (o.uid.clone(), o.name.clone()))
}

fn apply<K: Clone>(
    map: &mut BTreeMap<String, K>,
    event: WatchEvent<K>,
    meta: fn(&K) -> &ObjectMeta,
) {
    match event {
        WatchEvent::Restarted(all) => {
            map.clear();
            for o in all {
                map.insert(uid_of(meta(&o)), o);
            }
        }
        WatchEvent::Applied(o) => {
            map.insert(uid_of(meta(&o)), o);
        }
        WatchEvent::Deleted(o) => {
            map.remove(&uid_of(meta(&o)));
        }
    }
}

impl Control {
    pub fn new(node: Arc<Node>) -> Control {
        Control {
            node,
            jobs: BTreeMap::new(),
            pods: BTreeMap::new(),
            records: HashMap::new(),
            workers: HashMap::new(),
            ended: Vec::new(),
            spawned: HashSet::new(),
            unschedulable: HashMap::new(),
            collected: HashSet::new(),
            wake_at: None,
        }
    }

    /// The loop: one batch of inputs, then a sync; ends when `stop` fires.
    pub fn run(
        mut self,
        jobs_rx: Receiver<WatchEvent<Job>>,
        pods_rx: Receiver<WatchEvent<Pod>>,
        commands: Receiver<Command>,
        stop: Receiver<()>,
    ) {
        loop {
            let timeout = self
                .wake_at
                .map(|at| {
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(3600));
            select! {
                recv(jobs_rx) -> e => if let Ok(e) = e { apply(&mut self.jobs, e, |j: &Job| &j.metadata) },
                recv(pods_rx) -> e => if let Ok(e) = e { apply(&mut self.pods, e, |p: &Pod| &p.metadata) },
                recv(commands) -> c => if let Ok(c) = c { self.command(c) },
                recv(stop) -> _ => break,
                default(timeout) => {},
            }
            while let Ok(e) = jobs_rx.try_recv() {
                apply(&mut self.jobs, e, |j: &Job| &j.metadata);
            }
            while let Ok(e) = pods_rx.try_recv() {
                apply(&mut self.pods, e, |p: &Pod| &p.metadata);
            }
            self.sync();
        }
        for (_, w) in self.workers.drain() {
            let _ = w.tx.send(PodMsg::Stop);
            self.ended.push(w.handle);
        }
        for h in self.ended.drain(..) {
            let _ = h.join();
        }
    }

    pub(super) fn error(&self, text: String) {
        self.node.shared.error(text);
    }

    pub(super) fn soon(&mut self, after: Duration) {
        let at = SystemTime::now() + after;
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn sync(&mut self) {
        self.wake_at = None;
        self.collect_unscheduled();
        self.schedule();
        self.dispatch();
        self.control_jobs();
        self.release_orphans();
    }

    pub(super) fn pods_api(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(&self.node.client, ns)
    }

    /// Pod GC: an unscheduled pod being deleted has no kubelet to end it.
    fn collect_unscheduled(&mut self) {
        let doomed: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_none())
            .filter(|p| !self.collected.contains(&uid_of(&p.metadata)))
            .cloned()
            .collect();
        for pod in doomed {
            let (ns, name) = key_of(&pod.metadata);
            self.collected.insert(uid_of(&pod.metadata));
            if !terminal(&pod)
                && let Err(e) = self
                    .pods_api(&ns)
                    .patch_status(&name, &json!({"status": {"phase": "Failed"}}))
            {
                if !e.is_not_found() {
                    self.error(format!("fail unscheduled pod {ns}/{name}: {e}"));
                }
                continue;
            }
            self.force_delete(&ns, &name, &uid_of(&pod.metadata));
        }
    }

    pub(super) fn force_delete(&self, ns: &str, name: &str, uid: &str) {
        let params = DeleteParams {
            grace_period_secs: Some(0),
            ..DeleteParams::default()
        }
        .uid(uid);
        match self.pods_api(ns).delete(name, &params) {
            Ok(()) => {}
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => self.error(format!("force delete pod {ns}/{name}: {e}")),
        }
    }

    /// The kubelet side: a thread per pod bound to the node, updates forwarded, removals told.
    fn dispatch(&mut self) {
        let node = self.node.shared.lock().node.clone();
        for (uid, pod) in &self.pods {
            if let Some(w) = self.workers.get_mut(uid) {
                let rv = pod.metadata.resource_version.clone().unwrap_or_default();
                if w.rv != rv {
                    w.rv = rv;
                    let _ = w.tx.send(PodMsg::Updated(Box::new(pod.clone())));
                }
                continue;
            }
            if node_of(pod) != Some(node.as_str()) || self.spawned.contains(uid) || terminal(pod) {
                continue;
            }
            self.spawned.insert(uid.clone());
            let (tx, rx) = crossbeam_channel::unbounded();
            let worker =
                PodWorker::new(self.node.clone(), node.clone(), pod.clone(), rx, tx.clone());
            let name = pod.metadata.name.clone().unwrap_or_default();
            match std::thread::Builder::new()
                .name(format!("pod-{name}"))
                .spawn(move || worker.run())
            {
                Ok(handle) => {
                    self.workers.insert(
                        uid.clone(),
                        Worker {
                            tx,
                            handle,
                            rv: pod.metadata.resource_version.clone().unwrap_or_default(),
                            node: node.clone(),
                        },
                    );
                }
                Err(e) => self
                    .node
                    .shared
                    .error(format!("spawn the thread of pod {name}: {e}")),
            }
        }
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !self.pods.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(w) = self.workers.remove(&uid) {
                let _ = w.tx.send(PodMsg::Removed);
                self.ended.push(w.handle);
            }
        }
        // Terminal pods being deleted with nobody to finish them (their thread already ended).
        let orphans: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some() && terminal(p) && node_of(p).is_some()
            })
            .filter(|p| {
                self.workers
                    .get(&uid_of(&p.metadata))
                    .is_none_or(|w| w.handle.is_finished())
            })
            .filter(|p| !self.collected.contains(&uid_of(&p.metadata)))
            .cloned()
            .collect();
        for pod in orphans {
            let (ns, name) = key_of(&pod.metadata);
            self.collected.insert(uid_of(&pod.metadata));
            self.force_delete(&ns, &name, &uid_of(&pod.metadata));
        }
    }

    fn control_jobs(&mut self) {
        let now = SystemTime::now();
        let jobs: Vec<Job> = self.jobs.values().cloned().collect();
        for job in jobs {
            let uid = uid_of(&job.metadata);
            let owned: Vec<Pod> = self
                .pods
                .values()
                .filter(|p| controller_uid(p).is_some_and(|(u, _)| u == uid))
                .cloned()
                .collect();
            let refs: Vec<&Pod> = owned.iter().collect();
            let mut rec = self
                .records
                .remove(&uid)
                .unwrap_or_else(|| JobRecord::from_job(&job));
            let actions = jobs::sync(&job, &mut rec, &refs, now, self.node.tunables.pod_backoff);
            for action in actions {
                self.perform(&job, &mut rec, &owned, action);
            }
            self.records.insert(uid, rec);
        }
        let live: HashSet<String> = self.jobs.keys().cloned().collect();
        self.records.retain(|uid, _| live.contains(uid));
    }

    fn job_event(&self, job: &Job, warning: bool, reason: &str, message: &str) {
        let (ns, name) = key_of(&job.metadata);
        let about = Regarding {
            kind: "Job",
            api_version: "batch/v1",
            namespace: ns,
            name,
            uid: uid_of(&job.metadata),
            field_path: None,
        };
        if let Err(e) = events::record(
            &self.node.client,
            &about,
            Source::JobController,
            warning,
            reason,
            message,
        ) {
            self.error(e);
        }
    }

    fn perform(&mut self, job: &Job, rec: &mut JobRecord, pods: &[Pod], action: JobAction) {
        let (ns, name) = key_of(&job.metadata);
        let job_api = Api::<Job>::namespaced(&self.node.client, &ns);
        match action {
            JobAction::WriteStatus(status) => {
                if let Err(e) = job_api.patch_status(&name, &json!({"status": status})) {
                    rec.written = None;
                    if !e.is_not_found() {
                        self.error(format!("write status of Job {ns}/{name}: {e}"));
                        self.soon(Duration::from_secs(1));
                    }
                }
            }
            JobAction::ReleasePod(pod) => {
                let remaining: Vec<String> = pods
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                    .map(|p| p.metadata.finalizers.clone().unwrap_or_default())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| f != TRACKING_FINALIZER)
                    .collect();
                self.release(&ns, &pod, remaining);
            }
            JobAction::CreatePod => {
                let template = job
                    .spec
                    .as_ref()
                    .map(|s| s.template.clone())
                    .unwrap_or_default();
                let meta = template.metadata.clone().unwrap_or_default();
                let pod = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": meta.labels,
                        "annotations": meta.annotations,
                        "finalizers": [TRACKING_FINALIZER],
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                            "uid": uid_of(&job.metadata), "controller": true, "blockOwnerDeletion": true}],
                    },
                    "spec": template.spec,
                });
                let created = serde_json::from_value::<Pod>(pod)
                    .map_err(|e| e.to_string())
                    .and_then(|p| self.pods_api(&ns).create(&p).map_err(|e| e.to_string()));
                match created {
                    Ok(p) => {
                        let pod_name = p.metadata.name.clone().unwrap_or_default();
                        rec.expected_pod = Some(pod_name.clone());
                        self.job_event(
                            job,
                            false,
                            "SuccessfulCreate",
                            &format!("Created pod: {pod_name}"),
                        );
                    }
                    Err(e) => {
                        self.job_event(job, true, "FailedCreate", &format!("Error creating: {e}"));
                        self.soon(Duration::from_secs(1));
                    }
                }
            }
            JobAction::DeletePod(pod) => {
                match self.pods_api(&ns).delete(&pod, &DeleteParams::default()) {
                    Ok(()) => self.job_event(
                        job,
                        false,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pod}"),
                    ),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => self.error(format!("delete pod {ns}/{pod}: {e}")),
                }
            }
            JobAction::Event {
                warning,
                reason,
                message,
            } => self.job_event(job, warning, &reason, &message),
            JobAction::DeleteJob => {
                let params = DeleteParams::background().uid(&uid_of(&job.metadata));
                match job_api.delete(&name, &params) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() || e.is_conflict() => {}
                    Err(e) => {
                        rec.ttl_deleted = false;
                        self.error(format!("delete Job {ns}/{name} after its TTL: {e}"));
                        self.soon(Duration::from_secs(1));
                    }
                }
            }
            JobAction::WakeAt(at) => {
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
        }
    }

    fn release(&self, ns: &str, pod: &str, remaining: Vec<String>) {
        let patch = json!({"metadata": {"finalizers": remaining}});
        match self.pods_api(ns).patch_merge(pod, &patch) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => self.error(format!("release pod {ns}/{pod}: {e}")),
        }
    }

    /// Pods whose Job is gone keep no tracking finalizer (confirmed with a live read of the Job).
    fn release_orphans(&mut self) {
        let candidates: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| {
                p.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == TRACKING_FINALIZER)
            })
            .filter(|p| controller_uid(p).is_none_or(|(uid, _)| !self.jobs.contains_key(&uid)))
            .cloned()
            .collect();
        for pod in candidates {
            let (ns, name) = key_of(&pod.metadata);
            if let Some((uid, job)) = controller_uid(&pod) {
                match Api::<Job>::namespaced(&self.node.client, &ns).get_opt(&job) {
                    Ok(Some(j)) if j.metadata.uid.as_deref() == Some(uid.as_str()) => continue,
                    Ok(_) => {}
                    Err(e) => {
                        self.error(format!("read Job {ns}/{job}: {e}"));
                        continue;
                    }
                }
            }
            let remaining = pod
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != TRACKING_FINALIZER)
                .collect();
            self.release(&ns, &name, remaining);
        }
    }

    pub(super) fn find(&self, ns: &str, name: &str) -> Option<Pod> {
        self.pods
            .values()
            .find(|p| key_of(&p.metadata) == (ns.to_string(), name.to_string()))
            .cloned()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Resync => {
                self.unschedulable.clear();
            }
            Command::Evict {
                namespace,
                pod,
                reply,
            } => {
                let _ = reply.send(self.evict(&namespace, &pod));
            }
            Command::ToPod {
                namespace,
                pod,
                msg,
                reply,
            } => {
                let sent = self
                    .find(&namespace, &pod)
                    .and_then(|p| self.workers.get(&uid_of(&p.metadata)))
                    .is_some_and(|w| w.tx.send(msg).is_ok());
                let _ = reply.send(sent);
            }
            Command::LoseNode { reply } => {
                let _ = reply.send(self.lose_node());
            }
        }
    }
}
