//! The scheduler of the one node, on the control thread: a pending pod is bound to the node with a
//! Binding (as kube-scheduler posts it), or marked `PodScheduled=False` (`Unschedulable`) with a
//! `FailedScheduling` Event when a scripted fault, its nodeSelector or a missing claim keeps it
//! off. The node's labels are `kubernetes.io/hostname`, `kubernetes.io/os=linux` and
//! `kubernetes.io/arch=amd64`; taints, affinity and resources are not modelled.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use scalr_agent::kube::{Api, ApiResource};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::super::kube_sim::selectors::LabelSelector;
use super::control::{Control, key_of, node_of, terminal, uid_of};
use super::events::{self, Regarding, Source};
use super::jobs;

/// A Binding as the scheduler posts it; the answer (a `Status`) decodes into it leniently.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Binding {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    target: Value,
}

impl k8s_openapi::Resource for Binding {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Binding";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "bindings";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Binding {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Control {
    /// Why `pod` cannot go on the node, as the scheduler says it.
    fn unschedulable_reason(
        &self,
        pod: &Pod,
        node: &str,
        fault: Option<&LabelSelector>,
    ) -> Option<String> {
        let tail =
            " preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.";
        let value = serde_json::to_value(pod).unwrap_or(Value::Null);
        if fault.is_some_and(|s| s.matches(&value)) {
            return Some(format!(
                "0/1 nodes are available: 1 node(s) were unschedulable.{tail}"
            ));
        }
        let labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), node.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ]);
        let selector = pod.spec.as_ref().and_then(|s| s.node_selector.clone());
        if selector
            .iter()
            .flatten()
            .any(|(k, v)| labels.get(k) != Some(v))
        {
            return Some(format!(
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.{tail}"
            ));
        }
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(claim) = &v.persistent_volume_claim else {
                continue;
            };
            let found = Api::<PersistentVolumeClaim>::namespaced(&self.node.client, ns)
                .get_opt(&claim.claim_name);
            if let Ok(None) = found {
                return Some(format!(
                    "0/1 nodes are available: persistentvolumeclaim {:?} not found.{tail}",
                    claim.claim_name
                ));
            }
        }
        None
    }

    pub(super) fn schedule(&mut self) {
        let (node, fault) = {
            let st = self.node.shared.lock();
            (st.node.clone(), st.unschedulable.clone())
        };
        let pending: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| {
                node_of(p).is_none() && p.metadata.deletion_timestamp.is_none() && !terminal(p)
            })
            .cloned()
            .collect();
        for pod in pending {
            let (ns, name) = key_of(&pod.metadata);
            let uid = uid_of(&pod.metadata);
            let about = Regarding {
                kind: "Pod",
                api_version: "v1",
                namespace: ns.clone(),
                name: name.clone(),
                uid: uid.clone(),
                field_path: None,
            };
            if let Some(message) = self.unschedulable_reason(&pod, &node, fault.as_ref()) {
                if self.unschedulable.get(&uid) == Some(&message) {
                    continue;
                }
                let condition = json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                    "lastTransitionTime": jobs::stamp(SystemTime::now()), "reason": "Unschedulable",
                    "message": message});
                let patch = json!({"status": {"phase": "Pending", "conditions": [condition]}});
                match self.pods_api(&ns).patch_status(&name, &patch) {
                    Ok(_) => {
                        self.unschedulable.insert(uid, message.clone());
                        if let Err(e) = events::record(
                            &self.node.client,
                            &about,
                            Source::Scheduler,
                            true,
                            "FailedScheduling",
                            &message,
                        ) {
                            self.error(e);
                        }
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => {
                        self.error(format!("mark pod {ns}/{name} unschedulable: {e}"));
                        self.soon(Duration::from_secs(1));
                    }
                }
                continue;
            }
            let binding = Binding {
                api_version: "v1".into(),
                kind: "Binding".into(),
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    uid: Some(uid.clone()),
                    ..ObjectMeta::default()
                },
                target: json!({"apiVersion": "v1", "kind": "Node", "name": node}),
            };
            let api = Api::<Binding>::with_resource(
                &self.node.client,
                ApiResource::of::<Binding>(),
                Some(&ns),
            );
            match api.create(&binding) {
                Ok(_) => {
                    self.unschedulable.remove(&uid);
                    let message = format!("Successfully assigned {ns}/{name} to {node}");
                    if let Err(e) = events::record(
                        &self.node.client,
                        &about,
                        Source::Scheduler,
                        false,
                        "Scheduled",
                        &message,
                    ) {
                        self.error(e);
                    }
                }
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    self.error(format!("bind pod {ns}/{name}: {e}"));
                    self.soon(Duration::from_secs(1));
                }
            }
        }
    }
}
