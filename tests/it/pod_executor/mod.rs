//! The pod executor (`tests/support/pod_executor/`) against the Kubernetes API simulator: Jobs
//! become pods that run as local processes and end as a kubelet and the Job controller would
//! report them. `jobs` covers the Job controller (completion, init failure, podFailurePolicy,
//! backoffLimit, TTL); `pods` what runs inside a pod (env, volumes, claims, probes, deletion);
//! `faults` the scripted node faults; `chart` the chart's real task template, built by the
//! controller's Job builder, running install and exec-loop. Each test has its own simulator and
//! executor, and checks only what the API (and the process logs) show.

mod chart;
mod faults;
mod jobs;
mod pods;

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::kube_sim::{KubeSim, KubeSimOptions};
use crate::support::pod_executor::{ExecutorOptions, Image, PodExecutor};

/// The namespace every test uses.
pub const NS: &str = "ci";

/// How long any awaited state may take.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A simulator and an executor on it. The executor is declared first so that it stops first.
pub struct World {
    pub exec: PodExecutor,
    pub sim: KubeSim,
}

/// Executor options for tests: the busybox image, namespace `ci`, quick back-offs.
pub fn options() -> ExecutorOptions {
    ExecutorOptions {
        namespace: Some(NS.into()),
        image_pull_backoff: Duration::from_millis(400),
        ..ExecutorOptions::default()
    }
    .image("busybox", Image::busybox())
}

/// A simulator with graceful pod deletion, and an executor with `options`.
pub fn world_with(options: ExecutorOptions) -> World {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec![NS.into()],
        graceful_pod_deletion: true,
        bookmark_interval: Duration::from_millis(200),
        ..KubeSimOptions::default()
    });
    let exec = PodExecutor::start(&sim, options);
    World { exec, sim }
}

/// The default world.
pub fn world() -> World {
    world_with(options())
}

impl World {
    /// Waits until `condition` holds; panics with the state of both after [`PATIENCE`].
    pub fn wait(&self, what: &str, mut condition: impl FnMut(&KubeSim) -> bool) {
        if !self.sim.wait_until(PATIENCE, &mut condition) {
            panic!(
                "never happened: {what}\n{}\n{}\n{}",
                self.exec.dump(),
                self.pods_text(),
                self.sim.dump()
            );
        }
    }

    /// Every pod's status and every Event, for failure messages.
    pub fn pods_text(&self) -> String {
        let mut out = String::from("pods:\n");
        for p in self.sim.list("pods", NS) {
            out.push_str(&format!("  {} {}\n", p["metadata"]["name"], p["status"]));
        }
        out.push_str("events:\n");
        for e in self.sim.list("events", NS) {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                e["involvedObject"]["name"], e["type"], e["reason"], e["message"]
            ));
        }
        out
    }

    /// The pods of Job `job`, oldest first.
    pub fn pods_of(&self, job: &str) -> Vec<Value> {
        let mut pods: Vec<Value> = self
            .sim
            .list("pods", NS)
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["job-name"] == job)
            .collect();
        pods.sort_by_key(|p| {
            (
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                p["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0),
            )
        });
        pods
    }

    /// The one pod of Job `job`, once it exists.
    pub fn pod_of(&self, job: &str) -> Value {
        self.wait(&format!("a pod for Job {job}"), |_| {
            !self.pods_of(job).is_empty()
        });
        self.pods_of(job).remove(0)
    }

    /// The pod `name` now.
    pub fn pod(&self, name: &str) -> Value {
        self.sim.get("pods", NS, name).unwrap_or(Value::Null)
    }

    /// Waits for pod `name` to reach `phase`, and returns it.
    pub fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.wait(&format!("pod {name} {phase}"), |s| {
            s.get("pods", NS, name)
                .is_some_and(|p| p["status"]["phase"] == phase)
        });
        self.pod(name)
    }

    /// Waits for Job `job` to have condition `kind` (`Complete`, `Failed`), and returns the Job.
    pub fn wait_job(&self, job: &str, kind: &str) -> Value {
        self.wait(&format!("Job {job} {kind}"), |s| {
            s.get("jobs", NS, job)
                .is_some_and(|j| condition(&j, kind).is_some())
        });
        self.sim.get("jobs", NS, job).expect("the Job")
    }

    /// `(type, reason, message)` of every Event about `object`, oldest first.
    pub fn events_of(&self, object: &str) -> Vec<(String, String, String)> {
        let mut events = self.sim.list("events", NS);
        events.retain(|e| e["involvedObject"]["name"] == object);
        events.sort_by_key(|e| {
            e["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
        });
        events
            .iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["reason"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Whether an Event about `object` has `reason` and a message containing `text`.
    pub fn has_event(&self, object: &str, reason: &str, text: &str) -> bool {
        self.events_of(object)
            .iter()
            .any(|(_, r, m)| r == reason && m.contains(text))
    }

    /// The log of `container` in pod `pod`.
    pub fn logs(&self, pod: &str, container: &str) -> String {
        self.exec.logs(NS, pod, container)
    }
}

/// The condition of `kind` with status True, if any.
pub fn condition(object: &Value, kind: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .cloned()
}

/// The condition of `kind` whatever its status.
pub fn any_condition(object: &Value, kind: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// The status of container (or init container) `name`.
pub fn container(pod: &Value, name: &str) -> Value {
    ["containerStatuses", "initContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][k].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == name)
        .unwrap_or(Value::Null)
}

/// A busybox container running `script` with `sh -c`.
pub fn sh(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "busybox", "command": ["/bin/sh", "-c", script]})
}

/// A Job in `ci` with `containers`, backoffLimit 0, and `extra` merged into its spec.
pub fn job(name: &str, containers: Value, extra: Value) -> Value {
    let mut spec = json!({"backoffLimit": 0, "template": {
        "metadata": {"labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5, "containers": containers}}});
    merge(&mut spec, &extra);
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// JSON merge (objects merged key by key, anything else replaced).
pub fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}
