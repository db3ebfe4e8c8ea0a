//! Our Kubernetes client (`src/kube/`) against the Kubernetes API simulator: every call, every
//! error class, every watch transition, token rotation, paging and each configuration form. Each
//! test starts its own simulator (TLS, port 0) and drives it through the real client only.

mod calls;
mod config;
mod errors;
mod watch;

use k8s_openapi::api::batch::v1::Job;
use scalr_agent::http::{CaSource, HttpOptions};
use scalr_agent::kube::{Client, Explicit, KubeConfig};
use scalr_agent::secret::Secret;
use serde_json::{Value, json};

use crate::support::kube_sim::{KubeSim, KubeSimOptions};

/// The namespace the tests work in.
pub const NS: &str = "ci";

/// A TLS simulator with namespace `ci`, quick bookmarks for watch tests.
pub fn sim() -> KubeSim {
    KubeSim::start(KubeSimOptions {
        namespaces: vec![NS.into()],
        bookmark_interval: std::time::Duration::from_millis(100),
        ..KubeSimOptions::default()
    })
}

/// Explicit configuration for the simulator with `token` and its CA.
pub fn explicit(sim: &KubeSim, token: &str) -> Explicit {
    Explicit {
        server: Some(sim.url()),
        token: Some(Secret::new(token)),
        ca: sim
            .ca_pem()
            .map(|pem| CaSource::Pem(pem.as_bytes().to_vec())),
        namespace: Some(NS.into()),
        ..Explicit::default()
    }
}

/// A client with `token`.
pub fn client_with(sim: &KubeSim, token: &str) -> Client {
    let config = KubeConfig::explicit(&explicit(sim, token)).expect("explicit config");
    Client::new(&config, &HttpOptions::default()).expect("client")
}

/// A client with the simulator's admin token.
pub fn admin(sim: &KubeSim) -> Client {
    client_with(sim, sim.admin_token())
}

/// A valid Job named `name` with `labels`.
pub fn job(name: &str, labels: Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}],
        }}},
    }))
    .expect("job")
}

/// The AgentTaskTemplate CRD as the chart installs it, with a status subresource.
pub fn template_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "agenttasktemplates.scalr.io"},
        "spec": {"group": "scalr.io", "scope": "Namespaced",
            "names": {"plural": "agenttasktemplates", "singular": "agenttasktemplate",
                "kind": "AgentTaskTemplate"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

/// The simulator's request log and objects, for failure messages.
pub fn dump(sim: &KubeSim) -> String {
    sim.dump()
}

/// Waits until `condition` holds (the simulator logs a request just after answering it, so the
/// log may trail what the client already saw); panics with the simulator's state after 20 s.
pub fn eventually(sim: &KubeSim, what: &str, condition: impl FnMut(&KubeSim) -> bool) {
    assert!(
        sim.wait_until(std::time::Duration::from_secs(20), condition),
        "never happened: {what}\n{}",
        sim.dump()
    );
}
