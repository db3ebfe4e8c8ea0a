//! Kubernetes Events as the kubelet, the scheduler and the Job controller record them (core/v1,
//! `<object>.<hex>` names, source and reporting component), created through our client. Called
//! from the control and pod threads; a failure to record is kept in the executor's error list.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Event;
use scalr_agent::kube::{Api, Client};
use serde_json::json;

use super::jobs::stamp;

/// The object an Event is about.
#[derive(Clone, Debug)]
pub struct Regarding {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{runner}` for container events.
    pub field_path: Option<String>,
}

/// Who records.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Kubelet(&'a str),
    Scheduler,
    JobController,
}

/// Records one Event; returns the error text when the API refused it.
pub fn record(
    client: &Client,
    about: &Regarding,
    source: Source<'_>,
    warning: bool,
    reason: &str,
    message: &str,
) -> Result<(), String> {
    // Unique per process even when two threads record in the same nanosecond.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        + u128::from(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    let (component, host) = match source {
        Source::Kubelet(node) => ("kubelet", Some(node)),
        Source::Scheduler => ("default-scheduler", None),
        Source::JobController => ("job-controller", None),
    };
    let mut involved = json!({"kind": about.kind, "apiVersion": about.api_version,
        "namespace": about.namespace, "name": about.name, "uid": about.uid});
    if let Some(f) = &about.field_path {
        involved["fieldPath"] = json!(f);
    }
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{:x}", about.name, nanos), "namespace": about.namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": if warning { "Warning" } else { "Normal" },
        "source": source,
        "firstTimestamp": stamp(now),
        "lastTimestamp": stamp(now),
        "count": 1,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or(""),
    });
    let event: Event = serde_json::from_value(event).map_err(|e| e.to_string())?;
    Api::<Event>::namespaced(client, &about.namespace)
        .create(&event)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "record Event {reason} for {}/{}: {e}",
                about.namespace, about.name
            )
        })
}
