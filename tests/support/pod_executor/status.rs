//! The pod status a kubelet reports, as a model the pod's thread updates and a pure rendering to
//! the `status` JSON: phase from the container states (restartPolicy Never), the kubelet's own
//! conditions (PodReadyToStartContainers, Initialized, Ready, ContainersReady) with stable
//! transition times, the conditions others own (PodScheduled from the binding, DisruptionTarget)
//! kept, and one status per init and regular container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};

use super::env::resource_of;

/// Condition types the kubelet owns; others in the stored status are kept as they are.
pub const OWN_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
];

/// A container's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<String>,
        finished_at: String,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> State {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }

    fn to_json(&self, container_id: &Option<String>) -> Value {
        match self {
            State::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit_code, "reason": reason,
                    "startedAt": started_at, "finishedAt": finished_at});
                if let Some(m) = message {
                    t["message"] = json!(m);
                }
                if let Some(id) = container_id {
                    t["containerID"] = json!(id);
                }
                json!({"terminated": t})
            }
        }
    }
}

/// One container as the kubelet tracks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerModel {
    pub name: String,
    pub image: String,
    pub init: bool,
    /// An init container with `restartPolicy: Always`.
    pub sidecar: bool,
    pub state: State,
    pub started: bool,
    pub ready: bool,
    pub image_id: Option<String>,
    pub container_id: Option<String>,
}

impl ContainerModel {
    pub fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    pub fn terminated(&self) -> Option<i32> {
        match self.state {
            State::Terminated { exit_code, .. } => Some(exit_code),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id.clone().unwrap_or_default(),
            "ready": self.ready,
            "started": self.started,
            "restartCount": 0,
            "state": self.state.to_json(&self.container_id),
            "lastState": {},
        });
        if let Some(id) = &self.container_id {
            v["containerID"] = json!(id);
        }
        v
    }
}

/// The pod as the kubelet tracks it.
#[derive(Clone, Debug)]
pub struct PodModel {
    /// Init containers first, in spec order.
    pub containers: Vec<ContainerModel>,
    pub sandbox_ready: bool,
    pub start_time: String,
    pub ip: String,
    pub qos: String,
    /// A phase decided outside the containers (deleted, evicted): Failed or Succeeded.
    pub forced_phase: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// `DisruptionTarget=True` with this reason and message.
    pub disruption: Option<(String, String)>,
    /// Own conditions: type → (status, lastTransitionTime).
    transitions: BTreeMap<String, (String, String)>,
}

/// The QoS class of a pod spec.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let all: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let any = all.iter().any(|c| {
        ["cpu", "memory"].iter().any(|r| {
            resource_of(c, "limits", r).is_some() || resource_of(c, "requests", r).is_some()
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = resource_of(c, "limits", r);
            limit.is_some() && resource_of(c, "requests", r).is_none_or(|q| Some(q) == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl PodModel {
    /// A fresh model: every container waiting (`PodInitializing` behind init containers).
    pub fn new(spec: &PodSpec, now: &str) -> PodModel {
        let has_init = spec.init_containers.as_ref().is_some_and(|v| !v.is_empty());
        let mut containers = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            containers.push(ContainerModel {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                init: true,
                sidecar: c.restart_policy.as_deref() == Some("Always"),
                state: State::waiting("PodInitializing", None),
                started: false,
                ready: false,
                image_id: None,
                container_id: None,
            });
        }
        for c in &spec.containers {
            let reason = if has_init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            containers.push(ContainerModel {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                init: false,
                sidecar: false,
                state: State::waiting(reason, None),
                started: false,
                ready: false,
                image_id: None,
                container_id: None,
            });
        }
        PodModel {
            containers,
            sandbox_ready: false,
            start_time: now.to_string(),
            ip: "127.0.0.1".into(),
            qos: qos_class(spec).to_string(),
            forced_phase: None,
            reason: None,
            message: None,
            disruption: None,
            transitions: BTreeMap::new(),
        }
    }

    pub fn container(&self, name: &str) -> Option<&ContainerModel> {
        self.containers.iter().find(|c| c.name == name)
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerModel> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    fn main(&self) -> impl Iterator<Item = &ContainerModel> {
        self.containers.iter().filter(|c| !c.init)
    }

    fn blocking_init(&self) -> impl Iterator<Item = &ContainerModel> {
        self.containers.iter().filter(|c| c.init && !c.sidecar)
    }

    /// Whether every regular container has terminated.
    pub fn all_main_terminated(&self) -> bool {
        self.main().all(|c| c.terminated().is_some())
    }

    /// The phase, as the kubelet computes it for restartPolicy Never.
    pub fn phase(&self) -> String {
        if let Some(p) = &self.forced_phase {
            return p.clone();
        }
        if self
            .blocking_init()
            .any(|c| c.terminated().is_some_and(|code| code != 0))
        {
            return "Failed".into();
        }
        if self.blocking_init().any(|c| c.terminated() != Some(0)) {
            return "Pending".into();
        }
        let main: Vec<&ContainerModel> = self.main().collect();
        if main
            .iter()
            .any(|c| matches!(c.state, State::Waiting { .. }))
        {
            return "Pending".into();
        }
        if main.iter().any(|c| c.running()) {
            return "Running".into();
        }
        if main.iter().all(|c| c.terminated() == Some(0)) {
            "Succeeded".into()
        } else {
            "Failed".into()
        }
    }

    /// Whether the phase is Succeeded or Failed.
    pub fn terminal(&self) -> bool {
        matches!(self.phase().as_str(), "Succeeded" | "Failed")
    }

    fn condition(
        &mut self,
        kind: &str,
        ok: bool,
        reason: Option<String>,
        message: Option<String>,
        now: &str,
    ) -> Value {
        let status = if ok { "True" } else { "False" };
        let entry = self
            .transitions
            .entry(kind.to_string())
            .or_insert_with(|| (status.to_string(), now.to_string()));
        if entry.0 != status {
            *entry = (status.to_string(), now.to_string());
        }
        let mut c = json!({"type": kind, "status": status, "lastProbeTime": null,
            "lastTransitionTime": entry.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        if let Some(m) = message {
            c["message"] = json!(m);
        }
        c
    }

    /// The `status` to write. `stored` is the status the API holds now: conditions the kubelet
    /// does not own are kept from it.
    pub fn render(&mut self, stored: &Value, now: &str) -> Value {
        let phase = self.phase();
        let terminal = matches!(phase.as_str(), "Succeeded" | "Failed");
        let list = |names: Vec<&str>| format!("[{}]", names.join(" "));
        let not_init: Vec<&str> = self
            .blocking_init()
            .filter(|c| c.terminated() != Some(0))
            .map(|c| c.name.as_str())
            .collect();
        let unready: Vec<&str> = self
            .main()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let (ready_reason, ready_message) = if terminal {
            (Some("PodCompleted".to_string()), None)
        } else if unready.is_empty() {
            (None, None)
        } else {
            (
                Some("ContainersNotReady".to_string()),
                Some(format!(
                    "containers with unready status: {}",
                    list(unready.clone())
                )),
            )
        };
        let init_ok = not_init.is_empty();
        let init_reason = (!init_ok).then(|| "ContainersNotInitialized".to_string());
        let init_message =
            (!init_ok).then(|| format!("containers with incomplete status: {}", list(not_init)));
        let sandbox = self.sandbox_ready && !terminal;
        let ready = unready.is_empty() && !terminal;
        let mut conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox, None, None, now),
            self.condition(
                "Initialized",
                init_ok,
                if terminal && !init_ok {
                    Some("PodCompleted".into())
                } else {
                    init_reason
                },
                init_message,
                now,
            ),
            self.condition(
                "Ready",
                ready,
                ready_reason.clone(),
                ready_message.clone(),
                now,
            ),
            self.condition("ContainersReady", ready, ready_reason, ready_message, now),
        ];
        for c in stored["conditions"].as_array().into_iter().flatten() {
            let kind = c["type"].as_str().unwrap_or("");
            if OWN_CONDITIONS.contains(&kind)
                || (kind == "DisruptionTarget" && self.disruption.is_some())
            {
                continue;
            }
            conditions.push(c.clone());
        }
        if let Some((reason, message)) = self.disruption.clone() {
            conditions.push(self.condition(
                "DisruptionTarget",
                true,
                Some(reason),
                Some(message),
                now,
            ));
        }
        let init: Vec<Value> = self
            .containers
            .iter()
            .filter(|c| c.init)
            .map(ContainerModel::to_json)
            .collect();
        let main: Vec<Value> = self.main().map(ContainerModel::to_json).collect();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ip,
            "hostIPs": [{"ip": self.ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": main,
            "qosClass": self.qos,
            "reason": self.reason,
            "message": self.message,
        });
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(init: bool) -> PodSpec {
        serde_json::from_value(json!({
            "initContainers": if init { json!([{"name": "install", "image": "a"}]) } else { json!([]) },
            "containers": [{"name": "runner", "image": "r",
                "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}},
                {"name": "worker", "image": "a"}],
        }))
        .expect("spec")
    }

    fn run(m: &mut PodModel, name: &str) {
        m.container_mut(name).expect("c").state = State::Running {
            started_at: "t".into(),
        };
    }

    fn end(m: &mut PodModel, name: &str, code: i32) {
        m.container_mut(name).expect("c").state = State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some("t".into()),
            finished_at: "t".into(),
        };
    }

    #[test]
    fn phase_follows_containers() {
        let mut m = PodModel::new(&spec(true), "t0");
        assert_eq!(m.phase(), "Pending");
        assert_eq!(m.qos, "Burstable");
        run(&mut m, "install");
        assert_eq!(m.phase(), "Pending");
        end(&mut m, "install", 0);
        run(&mut m, "runner");
        assert_eq!(m.phase(), "Pending", "worker still waiting");
        run(&mut m, "worker");
        assert_eq!(m.phase(), "Running");
        end(&mut m, "worker", 0);
        assert_eq!(m.phase(), "Running");
        end(&mut m, "runner", 0);
        assert_eq!(m.phase(), "Succeeded");
        end(&mut m, "runner", 137);
        assert_eq!(m.phase(), "Failed");
        let mut failed_init = PodModel::new(&spec(true), "t0");
        end(&mut failed_init, "install", 1);
        assert_eq!(failed_init.phase(), "Failed");
    }

    #[test]
    fn conditions_keep_foreign_ones_and_transition_times() {
        let mut m = PodModel::new(&spec(false), "t0");
        m.sandbox_ready = true;
        let stored = json!({"conditions": [{"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"}]});
        let s = m.render(&stored, "t1");
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| c["type"].as_str().expect("type"))
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert_eq!(
            s["conditions"][2]["message"],
            "containers with unready status: [runner worker]"
        );
        for name in ["runner", "worker"] {
            run(&mut m, name);
            m.container_mut(name).expect("c").ready = true;
        }
        m.disruption = Some((
            "EvictionByEvictionAPI".into(),
            "Eviction API: evicting".into(),
        ));
        let s = m.render(&stored, "t2");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["conditions"][0]["lastTransitionTime"], "t1");
        assert_eq!(s["conditions"][2]["status"], "True");
        assert_eq!(s["conditions"][2]["lastTransitionTime"], "t2");
        assert_eq!(s["conditions"][5]["type"], "DisruptionTarget");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "t"
        );
    }
}
