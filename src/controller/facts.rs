//! Facts read from Kubernetes objects: what a Job, a task pod and their Events say, in the terms the
//! supervisor decides on.
//!
//! Pure readers, no thread. The supervisor's [`super::supervision::assess`] uses them; the limiter's
//! stage uses [`job_is_terminal`]; the supervisor's stage uses [`current_pod`] to choose which pod of a
//! Job to assess.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStatus, Event, Pod, PodCondition,
};

use super::labels::WORKER_CONTAINER;

/// Waiting reasons that mean an image (or the container built from it) cannot start; they may clear
/// (a registry hiccup, a Secret created late), so they get a grace period.
pub const IMAGE_PROBLEMS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];
/// Waiting reasons that never clear by themselves: fail at once.
pub const IMAGE_PROBLEMS_FATAL: [&str; 2] = ["InvalidImageName", "ErrImageNeverPull"];
/// At most this many Events go into a failure message, the latest.
pub const MAX_EVENTS: usize = 5;

/// Whether the Job is finished for good (`Complete` or `Failed`): finished Jobs never hold a slot.
pub fn job_is_terminal(job: &Job) -> bool {
    job_condition(job, "Complete").is_some() || job_condition(job, "Failed").is_some()
}

/// The Job's condition of this type when it is `True`.
pub fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Failed, or about to be (`FailureTarget`: pods are being terminated).
pub fn job_failed(job: &Job) -> Option<&k8s_openapi::api::batch::v1::JobCondition> {
    job_condition(job, "Failed").or_else(|| job_condition(job, "FailureTarget"))
}

/// Complete, or about to be (`SuccessCriteriaMet`).
pub fn job_complete(job: &Job) -> bool {
    job_condition(job, "Complete").is_some() || job_condition(job, "SuccessCriteriaMet").is_some()
}

/// The pod to assess among a Job's pods: the newest (a Job may replace a lost pod).
pub fn current_pod<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.into_iter().max_by(|a, b| {
        let key = |p: &'a Pod| {
            (
                p.metadata.creation_timestamp.clone(),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    })
}

/// The pod's name, for messages.
pub fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

/// Statuses of init and regular containers.
pub fn container_statuses(pod: &Pod) -> impl Iterator<Item = (&ContainerStatus, bool)> {
    let status = pod.status.as_ref();
    let init = status
        .and_then(|s| s.init_container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| (c, true));
    let main = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|c| (c, false));
    init.chain(main)
}

/// The worker container's status.
pub fn worker_status(pod: &Pod) -> Option<&ContainerStatus> {
    container_statuses(pod)
        .find(|(c, init)| !init && c.name == WORKER_CONTAINER)
        .map(|(c, _)| c)
}

/// "Worker started": the worker container runs and its startup probe passed. The chart's probe checks
/// the `started` marker the worker writes once it has read its task, so from then on the worker owns
/// the task's status. (Kubernetes resets `started` when a container stops, so callers remember it.)
pub fn worker_started(pod: &Pod) -> bool {
    worker_status(pod).is_some_and(|c| {
        c.started == Some(true) && c.state.as_ref().is_some_and(|s| s.running.is_some())
    })
}

/// How the worker container ended, if it did.
pub fn worker_terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    worker_status(pod)?.state.as_ref()?.terminated.as_ref()
}

/// Bound to a node.
pub fn is_scheduled(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
        || pod_condition(pod, "PodScheduled").is_some_and(|c| c.status == "True")
}

/// The `PodScheduled=False, reason Unschedulable` condition.
pub fn unschedulable(pod: &Pod) -> Option<&PodCondition> {
    pod_condition(pod, "PodScheduled")
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
}

fn pod_condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// Phase `Succeeded` or `Failed`: no container of it runs any more.
pub fn pod_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Evicted (kubelet pressure, API eviction) or marked for disruption (preemption, drain, taint).
pub fn evicted(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
        || pod_condition(pod, "DisruptionTarget").is_some_and(|c| c.status == "True")
}

/// The first container terminated by the OOM killer: its name.
pub fn oom_killed(pod: &Pod) -> Option<&str> {
    container_statuses(pod)
        .find(|(c, _)| {
            let term = |s: &Option<k8s_openapi::api::core::v1::ContainerState>| {
                s.as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
            };
            term(&c.state) || term(&c.last_state)
        })
        .map(|(c, _)| c.name.as_str())
}

/// The memory limit of a container of the pod, for the OOM message.
pub fn memory_limit<'a>(pod: &'a Pod, container: &str) -> Option<&'a str> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)?
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .map(|q| q.0.as_str())
}

/// An init container (not a restartable sidecar) that exited non-zero.
pub fn failed_init(pod: &Pod) -> Option<(&str, &ContainerStateTerminated)> {
    let sidecars: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.as_str())
        .collect();
    container_statuses(pod)
        .filter(|(c, init)| *init && !sidecars.contains(&c.name.as_str()))
        .find_map(|(c, _)| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then_some((c.name.as_str(), t))
        })
}

/// A container waiting because of its image or its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageProblem {
    /// The container.
    pub container: String,
    /// The waiting reason (`ImagePullBackOff`…).
    pub reason: String,
    /// The kubelet's message.
    pub message: String,
    /// Whether it can never clear by itself.
    pub fatal: bool,
}

/// The first container waiting on an image problem, fatal ones first.
pub fn image_problem(pod: &Pod) -> Option<ImageProblem> {
    let mut found: Option<ImageProblem> = None;
    for (c, _) in container_statuses(pod) {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.as_deref().unwrap_or_default();
        let fatal = IMAGE_PROBLEMS_FATAL.contains(&reason);
        if !fatal && !IMAGE_PROBLEMS.contains(&reason) {
            continue;
        }
        let problem = ImageProblem {
            container: c.name.clone(),
            reason: reason.to_string(),
            message: w.message.clone().unwrap_or_default(),
            fatal,
        };
        if fatal {
            return Some(problem);
        }
        found.get_or_insert(problem);
    }
    found
}

/// One line on where the pod is: phase, scheduling, each container's state.
pub fn pod_summary(pod: &Pod) -> String {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Unknown");
    let mut parts = vec![format!("pod {} is {phase}", pod_name(pod))];
    if let Some(reason) = pod.status.as_ref().and_then(|s| s.reason.as_deref()) {
        parts.push(format!("reason {reason}"));
    }
    if let Some(c) = unschedulable(pod) {
        parts.push(format!(
            "unschedulable: {}",
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    for (c, init) in container_statuses(pod) {
        let kind = if init { "init container" } else { "container" };
        let Some(state) = c.state.as_ref() else {
            continue;
        };
        let what = if let Some(w) = &state.waiting {
            let mut s = format!("waiting ({})", w.reason.as_deref().unwrap_or("?"));
            if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
                s.push_str(&format!(": {m}"));
            }
            s
        } else if state.running.is_some() {
            if c.started == Some(true) {
                "running, started".to_string()
            } else {
                "running, not started yet".to_string()
            }
        } else if let Some(t) = &state.terminated {
            terminated_text(t)
        } else {
            continue;
        };
        parts.push(format!("{kind} {} {what}", c.name));
    }
    parts.join("; ")
}

/// `exited 1 (Error): message`.
pub fn terminated_text(t: &ContainerStateTerminated) -> String {
    let mut s = format!("exited {}", t.exit_code);
    if let Some(r) = t.reason.as_deref() {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        s.push_str(&format!(": {m}"));
    }
    s
}

/// Whether an Event about `object` with `reason` exists (e.g. the autoscaler's `TriggeredScaleUp`).
pub fn has_event(events: &[Event], object: &str, reason: &str) -> bool {
    events.iter().any(|e| {
        e.involved_object.name.as_deref() == Some(object) && e.reason.as_deref() == Some(reason)
    })
}

/// Whether a Warning Event with `reason` is about `object`.
pub fn has_warning(events: &[Event], object: &str, reason: &str) -> bool {
    events.iter().any(|e| {
        e.type_.as_deref() == Some("Warning")
            && e.involved_object.name.as_deref() == Some(object)
            && e.reason.as_deref() == Some(reason)
    })
}

/// The Warning Events about the named objects, oldest first, deduplicated, the last [`MAX_EVENTS`]:
/// `"Pod Failed: Failed to pull image …"` lines.
pub fn warning_lines(events: &[Event], objects: &[&str]) -> Vec<String> {
    let mut relevant: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| {
            e.involved_object
                .name
                .as_deref()
                .is_some_and(|n| objects.contains(&n))
        })
        .collect();
    relevant.sort_by_key(|e| event_time(e));
    let mut lines: Vec<String> = Vec::new();
    for e in relevant {
        let line = format!(
            "{} {}: {}",
            e.involved_object.kind.as_deref().unwrap_or("Object"),
            e.reason.as_deref().unwrap_or("?"),
            e.message.as_deref().unwrap_or("").trim()
        );
        lines.retain(|l| *l != line);
        lines.push(line);
    }
    let skip = lines.len().saturating_sub(MAX_EVENTS);
    lines.split_off(skip)
}

fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}
