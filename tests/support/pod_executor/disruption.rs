//! Disruptions, on the control thread: the Eviction API (PodDisruptionBudgets checked, then
//! `DisruptionTarget` and a graceful delete) and the loss of the node (its pods' processes killed
//! with no word from the kubelet; pod GC marks the pods Failed with `DisruptionTarget`
//! `DeletionByPodGC` and force-deletes them; a new node takes its place).

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scalr_agent::kube::{Api, DeleteParams};
use serde_json::{Value, json};

use super::super::kube_sim::selectors::LabelSelector;
use super::control::{Control, key_of, node_of, phase, terminal, uid_of};
use super::jobs;
use super::node::PodMsg;

/// Why an eviction was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvictionError {
    /// No such pod.
    NotFound,
    /// A PodDisruptionBudget allows no disruption now (the API answers 429).
    DisruptionBudget(String),
    /// The delete failed.
    Api(String),
}

impl Control {
    /// The Eviction API: PodDisruptionBudgets first, then DisruptionTarget and a graceful delete.
    pub(super) fn evict(&mut self, ns: &str, name: &str) -> Result<(), EvictionError> {
        let pod = self.find(ns, name).ok_or(EvictionError::NotFound)?;
        let value = serde_json::to_value(&pod).unwrap_or(Value::Null);
        let budgets = Api::<PodDisruptionBudget>::namespaced(&self.node.client, ns)
            .list_all(&Default::default())
            .map_err(|e| EvictionError::Api(e.to_string()))?;
        for pdb in budgets.items {
            let Some(spec) = pdb.spec.as_ref() else {
                continue;
            };
            let selector = spec
                .selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            let text: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let Ok(sel) = LabelSelector::parse(&text.join(",")) else {
                continue;
            };
            if !sel.matches(&value) || terminal(&pod) {
                continue;
            }
            let healthy = self
                .pods
                .values()
                .filter(|p| sel.matches(&serde_json::to_value(p).unwrap_or(Value::Null)))
                .filter(|p| p.metadata.deletion_timestamp.is_none() && phase(p) == "Running")
                .count() as i64;
            let zero = |q: &IntOrString| match q {
                IntOrString::Int(n) => *n as i64,
                IntOrString::String(s) => s.trim_end_matches('%').parse::<i64>().unwrap_or(0),
            };
            let blocked = spec.max_unavailable.as_ref().is_some_and(|m| zero(m) == 0)
                || spec
                    .min_available
                    .as_ref()
                    .is_some_and(|m| healthy - 1 < zero(m));
            if blocked {
                return Err(EvictionError::DisruptionBudget(
                    pdb.metadata.name.clone().unwrap_or_default(),
                ));
            }
        }
        let uid = uid_of(&pod.metadata);
        let (reason, message) = (
            "EvictionByEvictionAPI".to_string(),
            "Eviction API: evicting".to_string(),
        );
        if !terminal(&pod) {
            if let Some(w) = self.workers.get(&uid) {
                let _ = w.tx.send(PodMsg::Disrupted { reason, message });
            } else {
                let mut conditions: Vec<Value> = value["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                conditions.retain(|c| c["type"] != "DisruptionTarget");
                conditions.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": jobs::stamp(SystemTime::now()), "reason": reason, "message": message}));
                let _ = self
                    .pods_api(ns)
                    .patch_status(name, &json!({"status": {"conditions": conditions}}));
            }
        }
        self.pods_api(ns)
            .delete(name, &DeleteParams::default().uid(&uid))
            .map_err(|e| EvictionError::Api(e.to_string()))
    }

    /// The node dies: its pods' processes are killed with no word from the kubelet; pod GC marks
    /// them Failed (DisruptionTarget `DeletionByPodGC`) and force-deletes them; a new node joins.
    pub(super) fn lose_node(&mut self) -> String {
        let (old, new) = self.node.shared.update(|st| {
            let old = st.node.clone();
            st.lost_nodes.push(old.clone());
            let base = old.split("-gen").next().unwrap_or(&old).to_string();
            st.node = format!("{base}-gen{}", st.lost_nodes.len() + 1);
            (old, st.node.clone())
        });
        let lost: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| w.node == old)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in lost {
            if let Some(w) = self.workers.remove(&uid) {
                let _ = w.tx.send(PodMsg::NodeLost);
                let _ = w.handle.join();
            }
        }
        let on_node: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| node_of(p) == Some(old.as_str()))
            .cloned()
            .collect();
        for pod in on_node {
            let (ns, name) = key_of(&pod.metadata);
            let uid = uid_of(&pod.metadata);
            self.collected.insert(uid.clone());
            if !terminal(&pod) {
                let value = serde_json::to_value(&pod).unwrap_or(Value::Null);
                let mut conditions: Vec<Value> = value["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                conditions.retain(|c| c["type"] != "DisruptionTarget");
                conditions.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": jobs::stamp(SystemTime::now()), "reason": "DeletionByPodGC",
                    "message": "PodGC: node no longer exists"}));
                if let Err(e) = self.pods_api(&ns).patch_status(
                    &name,
                    &json!({"status": {"phase": "Failed", "conditions": conditions}}),
                ) && !e.is_not_found()
                {
                    self.error(format!("fail pod {ns}/{name} of the lost node: {e}"));
                }
            }
            self.force_delete(&ns, &name, &uid);
        }
        new
    }
}
