//! The Job controller's decisions, pure: given a Job, what the controller remembers of it
//! ([`JobRecord`]) and its pods now, what to do — create the next pod, count terminal pods
//! (podFailurePolicy: FailJob, Ignore, Count), fail the Job past its backoffLimit, add the 1.33
//! conditions (`SuccessCriteriaMet`/`FailureTarget`, then `Complete`/`Failed` once no pod of it
//! runs), delete active pods of a failing Job, write the status, release the pods' tracking
//! finalizer, and delete the Job `ttlSecondsAfterFinished` after it finished.
//!
//! Models completions = parallelism = 1 (NonIndexed), which is what task Jobs use. The controller
//! thread (`control.rs`) performs the actions in order.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The finalizer the Job controller puts on its pods so that it sees every pod's end.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// What the controller remembers of one Job (it is the only writer of the Job's status).
#[derive(Clone, Debug, Default)]
pub struct JobRecord {
    /// Pods already counted, by uid.
    pub counted: HashSet<String>,
    pub succeeded: i32,
    pub failed: i32,
    pub start_time: Option<String>,
    pub completion_time: Option<String>,
    /// Conditions in the order they were added.
    pub conditions: Vec<Value>,
    /// The failure decided (reason, message): `FailureTarget`, then `Failed`.
    pub failure: Option<(String, String)>,
    /// `SuccessCriteriaMet` reached.
    pub success: bool,
    /// When the Job got `Complete` or `Failed` (for the TTL).
    pub finished_at: Option<SystemTime>,
    /// When the last counted pod failed (for the pod backoff).
    pub last_failure: Option<SystemTime>,
    /// A pod this controller created and has not yet seen in its cache.
    pub expected_pod: Option<String>,
    /// The status last written.
    pub written: Option<Value>,
    /// The Job was deleted for its TTL.
    pub ttl_deleted: bool,
}

/// One step for the controller thread.
#[derive(Clone, Debug, PartialEq)]
pub enum JobAction {
    /// Merge-patch the status with this (explicit nulls clear fields).
    WriteStatus(Value),
    /// Remove the tracking finalizer from this pod.
    ReleasePod(String),
    /// Create a pod from the template.
    CreatePod,
    /// Delete this pod (the Job failed while it ran).
    DeletePod(String),
    /// Record an Event on the Job.
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
    /// Delete the Job (background propagation).
    DeleteJob,
    /// Sync again at this time.
    WakeAt(SystemTime),
}

/// RFC 3339 seconds, as Kubernetes writes times.
pub fn stamp(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == TRACKING_FINALIZER)
}

/// The first podFailurePolicy rule a failed pod matches: `(action, message)`.
pub fn match_policy(rules: &[PodFailurePolicyRule], pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    for (index, rule) in rules.iter().enumerate() {
        if let Some(req) = &rule.on_exit_codes {
            let statuses = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten());
            for cs in statuses {
                let Some(t) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                if req.container_name.as_ref().is_some_and(|n| *n != cs.name) || t.exit_code == 0 {
                    continue;
                }
                let listed = req.values.contains(&t.exit_code);
                if (req.operator == "In") == listed {
                    return Some((
                        rule.action.clone(),
                        format!(
                            "Container {} for pod {ns}/{name} failed with exit code {} matching {} rule at index {index}",
                            cs.name, t.exit_code, rule.action
                        ),
                    ));
                }
            }
        }
        for pattern in rule.on_pod_conditions.iter().flatten() {
            let hit = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == pattern.type_ && c.status == pattern.status);
            if hit {
                return Some((
                    rule.action.clone(),
                    format!(
                        "Pod {ns}/{name} has condition {} matching {} rule at index {index}",
                        pattern.type_, rule.action
                    ),
                ));
            }
        }
    }
    None
}

fn condition(kind: &str, reason: &str, message: &str, now: &str) -> Value {
    json!({"type": kind, "status": "True", "lastProbeTime": now, "lastTransitionTime": now,
        "reason": reason, "message": message})
}

impl JobRecord {
    /// A record for a Job first seen with `job`'s stored status (so a restart does not recount).
    pub fn from_job(job: &Job) -> JobRecord {
        let mut rec = JobRecord::default();
        let value = serde_json::to_value(job).unwrap_or(Value::Null);
        let status = &value["status"];
        rec.succeeded = status["succeeded"].as_i64().unwrap_or(0) as i32;
        rec.failed = status["failed"].as_i64().unwrap_or(0) as i32;
        rec.start_time = status["startTime"].as_str().map(String::from);
        rec.completion_time = status["completionTime"].as_str().map(String::from);
        for c in status["conditions"].as_array().into_iter().flatten() {
            rec.conditions.push(c.clone());
            let kind = c["type"].as_str().unwrap_or("");
            let why = || {
                (
                    c["reason"].as_str().unwrap_or("").to_string(),
                    c["message"].as_str().unwrap_or("").to_string(),
                )
            };
            match kind {
                "FailureTarget" | "Failed" => rec.failure = Some(why()),
                "SuccessCriteriaMet" | "Complete" => rec.success = true,
                _ => {}
            }
            if matches!(kind, "Failed" | "Complete") {
                rec.finished_at = c["lastTransitionTime"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(SystemTime::from)
                    .or(Some(SystemTime::now()));
            }
        }
        rec
    }

    fn has(&self, kind: &str) -> bool {
        self.conditions.iter().any(|c| c["type"] == kind)
    }

    fn add(&mut self, kind: &str, reason: &str, message: &str, now: &str) {
        if !self.has(kind) {
            self.conditions.push(condition(kind, reason, message, now));
        }
    }

    /// Whether the Job is `Complete` or `Failed`.
    pub fn finished(&self) -> bool {
        self.has("Complete") || self.has("Failed")
    }
}

/// Decides what to do for `job` now. `pods` are the Job's pods (owned by its uid).
pub fn sync(
    job: &Job,
    rec: &mut JobRecord,
    pods: &[&Pod],
    now: SystemTime,
    pod_backoff: Duration,
) -> Vec<JobAction> {
    let mut actions = Vec::new();
    let mut events = Vec::new();
    let now_s = stamp(now);
    let spec = job.spec.clone().unwrap_or_default();
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let completions = spec.completions.unwrap_or(1).max(1);
    let rules = spec
        .pod_failure_policy
        .as_ref()
        .map(|p| p.rules.clone())
        .unwrap_or_default();
    if rec.start_time.is_none() {
        rec.start_time = Some(now_s.clone());
    }
    if let Some(expected) = &rec.expected_pod
        && pods
            .iter()
            .any(|p| p.metadata.name.as_ref() == Some(expected))
    {
        rec.expected_pod = None;
    }
    let mut release = Vec::new();
    for pod in pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let terminal = matches!(phase(pod), "Succeeded" | "Failed");
        if terminal && rec.counted.insert(uid) {
            if phase(pod) == "Succeeded" {
                rec.succeeded += 1;
            } else {
                match match_policy(&rules, pod) {
                    Some((action, _)) if action == "Ignore" => {}
                    Some((action, message)) if action == "FailJob" => {
                        rec.failed += 1;
                        rec.last_failure = Some(now);
                        rec.failure
                            .get_or_insert(("PodFailurePolicy".to_string(), message));
                    }
                    _ => {
                        rec.failed += 1;
                        rec.last_failure = Some(now);
                    }
                }
            }
        }
        if terminal && has_finalizer(pod) {
            release.push(pod.metadata.name.clone().unwrap_or_default());
        }
    }
    let running: Vec<&&Pod> = pods
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let active: Vec<&&Pod> = running.iter().copied().filter(|p| !deleting(p)).collect();
    let terminating = running.len() - active.len();
    let ready = active
        .iter()
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count();
    let busy = !running.is_empty() || rec.expected_pod.is_some();

    if !rec.finished() {
        if rec.failure.is_none() && rec.succeeded >= completions {
            rec.success = true;
        }
        if rec.failure.is_none() && !rec.success && rec.failed > backoff_limit {
            rec.failure = Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ));
        }
        if let Some((reason, message)) = rec.failure.clone() {
            rec.add("FailureTarget", &reason, &message, &now_s);
            for p in &active {
                actions.push(JobAction::DeletePod(
                    p.metadata.name.clone().unwrap_or_default(),
                ));
            }
            if !busy {
                rec.add("Failed", &reason, &message, &now_s);
                rec.finished_at = Some(now);
                events.push(JobAction::Event {
                    warning: true,
                    reason: reason.clone(),
                    message,
                });
            }
        } else if rec.success {
            let why = "Reached expected number of succeeded pods";
            rec.add("SuccessCriteriaMet", "CompletionsReached", why, &now_s);
            if !busy {
                rec.add("Complete", "CompletionsReached", why, &now_s);
                rec.completion_time = Some(now_s.clone());
                rec.finished_at = Some(now);
                events.push(JobAction::Event {
                    warning: false,
                    reason: "Completed".into(),
                    message: "Job completed".into(),
                });
            }
        } else if !busy {
            let delay = rec.last_failure.map(|at| {
                let factor = 1u32 << (rec.failed.clamp(1, 6) - 1) as u32;
                at + (pod_backoff * factor).min(Duration::from_secs(360))
            });
            match delay {
                Some(at) if at > now => actions.push(JobAction::WakeAt(at)),
                _ => actions.push(JobAction::CreatePod),
            }
        }
    }

    let count = |n: usize| if n > 0 { json!(n) } else { Value::Null };
    let mut status = json!({
        "startTime": rec.start_time,
        "active": count(active.len() + usize::from(rec.expected_pod.is_some() && running.is_empty())),
        "ready": ready,
        "terminating": terminating,
        "succeeded": count(rec.succeeded.max(0) as usize),
        "failed": count(rec.failed.max(0) as usize),
        "completionTime": rec.completion_time,
        "uncountedTerminatedPods": {},
    });
    if !rec.conditions.is_empty() {
        status["conditions"] = json!(rec.conditions);
    }
    let mut out = Vec::new();
    if rec.written.as_ref() != Some(&status) {
        rec.written = Some(status.clone());
        out.push(JobAction::WriteStatus(status));
    }
    out.extend(release.into_iter().map(JobAction::ReleasePod));
    out.extend(events);
    out.extend(actions);
    if rec.finished()
        && !rec.ttl_deleted
        && let (Some(ttl), Some(at)) = (spec.ttl_seconds_after_finished, rec.finished_at)
    {
        let due = at + Duration::from_secs(ttl.max(0) as u64);
        if due <= now {
            rec.ttl_deleted = true;
            out.push(JobAction::DeleteJob);
        } else {
            out.push(JobAction::WakeAt(due));
        }
    }
    out
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
