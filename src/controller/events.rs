//! Kubernetes Events the controller records on task Jobs, so `kubectl describe job` and
//! `kubectl get events` tell users what happened: the launch, why a task failed, a cancel, an
//! adoption by another replica.
//!
//! [`job_event`] builds a `core/v1` Event (pure); [`EventRecorder::record`] sends it through the
//! [`Cluster`] boundary, once, best effort: a failed Event is logged at debug and never delays a task.
//! Messages are redacted and bounded. Called from the launcher, reporter and housekeeper threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

use super::cluster::Cluster;
use crate::model::JobRef;
use crate::secret::redact;

/// `reportingComponent` and `source.component` of every Event.
pub const COMPONENT: &str = "scalr-agent-controller";
/// Longest Event message (the API server accepts 1 KiB in `events.k8s.io`; core allows more, but
/// `kubectl describe` is for reading).
pub const MAX_MESSAGE: usize = 1024;

/// Event reasons (CamelCase, as Kubernetes spells them).
pub mod reason {
    /// The Job and its credentials Secret were created for a task.
    pub const LAUNCHED: &str = "TaskLaunched";
    /// The controller failed the task on the platform.
    pub const FAILED: &str = "TaskFailed";
    /// A cancel before the worker started: the Job is deleted.
    pub const CANCELLED: &str = "TaskCancelled";
    /// A force-cancelled task's Job outlived its deadline.
    pub const FORCE_CANCELLED: &str = "ForceCancelDeadline";
    /// Another replica took over a Job whose controller stopped renewing its Lease.
    pub const ADOPTED: &str = "TaskAdopted";
    /// The Job is deleted because the platform no longer gives this agent the task.
    pub const RELEASED: &str = "TaskReleased";
}

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something users may want to know.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Who records: the namespace and the controller's agent name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The namespace of the Job and its Events.
    pub namespace: String,
    /// `reportingInstance`: the agent name.
    pub controller: String,
}

/// A core/v1 Event about a Job, named `<job>.<unique hex>` as client-go names them (`unique`
/// separates Events recorded within one nanosecond).
pub fn job_event(
    origin: &Origin,
    job: &JobRef,
    type_: EventType,
    reason: &str,
    message: &str,
    now: Timestamp,
    unique: u64,
) -> Event {
    let (namespace, controller) = (origin.namespace.as_str(), origin.controller.as_str());
    let mut text = redact(message).into_owned();
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    let nanos = now.as_nanosecond().unsigned_abs() as u64;
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", job.name, nanos.wrapping_add(unique))),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(job.name.clone()),
            namespace: Some(namespace.to_string()),
            uid: Some(job.uid.clone()).filter(|u| !u.is_empty()),
            ..ObjectReference::default()
        },
        type_: Some(type_.as_str().into()),
        reason: Some(reason.into()),
        message: Some(text),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        action: Some(reason.into()),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(controller.into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        ..Event::default()
    }
}

/// Records Events on Jobs for one controller.
#[derive(Clone)]
pub struct EventRecorder {
    cluster: Arc<dyn Cluster>,
    origin: Origin,
    seq: Arc<AtomicU64>,
}

impl EventRecorder {
    /// Events reported as `controller` (the agent name).
    pub fn new(cluster: Arc<dyn Cluster>, controller: &str) -> Self {
        EventRecorder {
            origin: Origin {
                namespace: cluster.namespace().to_string(),
                controller: controller.to_string(),
            },
            cluster,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records one Event on `job`; failures are logged at debug.
    pub fn record(&self, job: &JobRef, type_: EventType, reason: &str, message: &str) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = job_event(
            &self.origin,
            job,
            type_,
            reason,
            message,
            Timestamp::now(),
            seq,
        );
        if let Err(e) = self.cluster.create_event(&event) {
            log::debug!("could not record Event {reason} on Job {}: {e}", job.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_the_job_and_is_bounded_and_redacted() {
        crate::secret::register("events-test-secret-value-123");
        let job = JobRef {
            name: "scalr-run-1-plan".into(),
            uid: "uid-1".into(),
        };
        let long = format!("token events-test-secret-value-123 {}", "x".repeat(5000));
        let origin = Origin {
            namespace: "ci".into(),
            controller: "ctl-0".into(),
        };
        let e = job_event(
            &origin,
            &job,
            EventType::Warning,
            reason::FAILED,
            &long,
            Timestamp::UNIX_EPOCH,
            7,
        );
        let message = e.message.clone().expect("message");
        assert!(!message.contains("events-test-secret-value-123"));
        assert!(message.len() <= MAX_MESSAGE && message.ends_with("..."));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Job"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("uid-1"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("ctl-0"));
        assert!(
            e.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("scalr-run-1-plan."))
        );
    }
}
