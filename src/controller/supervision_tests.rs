//! Supervision tests: every case of issue 5's item 3, on Job, Pod and Event JSON shaped like the API
//! server's (deserialized into the k8s-openapi types the watches yield). Before the worker's start
//! here; after it, messages and facts in `supervision_tests_after.rs`.

use serde_json::{Value, json};

use super::*;
use crate::model::TaskIdentity;

const JOB: &str = "prod-scalr-agent-run-1-plan";
const POD: &str = "prod-scalr-agent-run-1-plan-x7k2p";
const T0: &str = "2026-03-01T10:00:00Z";

fn t(secs: i64) -> Timestamp {
    let t0: Timestamp = T0.parse().expect("time");
    t0.checked_add(jiff::SignedDuration::from_secs(secs))
        .expect("time")
}

fn ts(secs: i64) -> String {
    t(secs).to_string()
}

fn state() -> TaskState {
    TaskState::new(&TaskLaunched {
        identity: TaskIdentity {
            task_id: "task-1".into(),
            run_id: "run-1".into(),
            stage: "plan".into(),
            workspace_id: "ws-1".into(),
            environment_id: "env-1".into(),
            attempt: 1,
        },
        job_name: JOB.into(),
        job_uid: "job-uid-1".into(),
        created_at: t(0),
    })
}

fn job(conditions: Value) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": JOB, "namespace": "ci", "uid": "job-uid-1",
                     "creationTimestamp": ts(0)},
        "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "scalr/agent:1"}]}}},
        "status": {"active": 1, "conditions": conditions}
    }))
    .expect("job")
}

fn job_failed(reason: &str, message: &str) -> Job {
    job(json!([
        {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
        {"type": "Failed", "status": "True", "reason": reason, "message": message}
    ]))
}

fn cs(name: &str, state: Value, started: bool) -> Value {
    json!({"name": name, "image": format!("example/{name}:1"), "imageID": "", "ready": false,
           "restartCount": 0, "started": started, "state": state})
}

fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

fn running() -> Value {
    json!({"running": {"startedAt": ts(20)}})
}

fn terminated(code: i32, reason: &str) -> Value {
    json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": ts(20), "finishedAt": ts(60)}})
}

/// A task pod: `uid`, `node` (None: not scheduled), phase, status extras, init and container statuses.
fn pod(uid: &str, node: Option<&str>, phase: &str, extra: Value, init: Value, main: Value) -> Pod {
    let mut status =
        json!({"phase": phase, "initContainerStatuses": init, "containerStatuses": main});
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let mut spec = json!({
        "restartPolicy": "Never",
        "initContainers": [{"name": "install", "image": "scalr/agent:1"}],
        "containers": [
            {"name": "runner", "image": "scalr/runner:0.2.0",
             "resources": {"limits": {"memory": "2Gi"}}},
            {"name": "worker", "image": "scalr/agent:1"}]
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": "ci", "uid": uid, "creationTimestamp": ts(1),
                     "labels": {"batch.kubernetes.io/job-name": JOB}},
        "spec": spec,
        "status": status
    }))
    .expect("pod")
}

fn installed() -> Value {
    json!([cs("install", terminated(0, "Completed"), false)])
}

fn pending_pod(worker_state: Value) -> Pod {
    pod(
        "pod-1",
        Some("node-a"),
        "Pending",
        json!({}),
        installed(),
        json!([
            cs("runner", waiting("ContainerCreating", ""), false),
            cs("worker", worker_state, false)
        ]),
    )
}

fn started_pod() -> Pod {
    pod(
        "pod-1",
        Some("node-a"),
        "Running",
        json!({}),
        installed(),
        json!([cs("runner", running(), true), cs("worker", running(), true)]),
    )
}

fn event(kind: &str, name: &str, type_: &str, reason: &str, message: &str, at: i64) -> Event {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{at}"), "namespace": "ci"},
        "involvedObject": {"kind": kind, "name": name, "namespace": "ci"},
        "type": type_, "reason": reason, "message": message,
        "firstTimestamp": ts(at), "lastTimestamp": ts(at), "count": 1
    }))
    .expect("event")
}

fn settings() -> SupervisionSettings {
    SupervisionSettings::default()
}

fn fail_reason(v: &Verdict) -> Option<FailureReason> {
    match v {
        Verdict::Fail { reason, .. } | Verdict::ConfirmFinal { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn text(v: &Verdict) -> &str {
    match v {
        Verdict::Fail { message, .. } | Verdict::ConfirmFinal { message, .. } => message,
        _ => "",
    }
}

/// One observation each; a fresh state per case. (name, job, pod, events, now, want)
#[test]
fn before_the_start_each_case_gets_its_verdict() {
    let pull_failed = event(
        "Pod",
        POD,
        "Warning",
        "Failed",
        "Failed to pull image \"scalr/runner:nope\": not found",
        5,
    );
    let unsched = |since: i64| {
        pod(
            "pod-1",
            None,
            "Pending",
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
                "lastTransitionTime": ts(since)}]}),
            json!([]),
            json!([]),
        )
    };
    type Case = (
        &'static str,
        Option<Job>,
        Option<Pod>,
        Vec<Event>,
        i64,
        Result<FailureReason, Option<i64>>,
    );
    let cases: Vec<Case> = vec![
        ("nothing seen yet", None, None, vec![], 10, Err(Some(180))),
        (
            "job without pod",
            Some(job(json!([]))),
            None,
            vec![],
            10,
            Err(Some(180)),
        ),
        (
            "job cannot create its pod",
            Some(job(json!([]))),
            None,
            vec![event(
                "Job",
                JOB,
                "Warning",
                "FailedCreate",
                "Error creating: pods \"x\" is forbidden: exceeded quota: compute, requested: memory=2Gi",
                3,
            )],
            31,
            Ok(FailureReason::PodNotCreated),
        ),
        (
            "job cannot create its pod, still in grace",
            Some(job(json!([]))),
            None,
            vec![event("Job", JOB, "Warning", "FailedCreate", "forbidden", 3)],
            10,
            Err(Some(30)),
        ),
        (
            "pod creating, within the timeout",
            Some(job(json!([]))),
            Some(pending_pod(waiting("ContainerCreating", ""))),
            vec![],
            100,
            Err(Some(180)),
        ),
        (
            "startup timeout",
            Some(job(json!([]))),
            Some(pending_pod(waiting("ContainerCreating", ""))),
            vec![],
            180,
            Ok(FailureReason::StartupTimeout),
        ),
        (
            "invalid image name fails at once",
            Some(job(json!([]))),
            Some(pending_pod(waiting(
                "InvalidImageName",
                "couldn't parse image name \"scalr/agent::1\"",
            ))),
            vec![],
            5,
            Ok(FailureReason::ImagePull),
        ),
        (
            "image pull back-off starts a grace",
            Some(job(json!([]))),
            Some(pending_pod(waiting(
                "ImagePullBackOff",
                "Back-off pulling image",
            ))),
            vec![pull_failed.clone()],
            20,
            Err(Some(50)),
        ),
        (
            "unschedulable past the limit",
            Some(job(json!([]))),
            Some(unsched(2)),
            vec![event(
                "Pod",
                POD,
                "Warning",
                "FailedScheduling",
                "0/3 nodes are available: 3 Insufficient memory.",
                2,
            )],
            122,
            Ok(FailureReason::Unschedulable),
        ),
        (
            "unschedulable within the limit",
            Some(job(json!([]))),
            Some(unsched(2)),
            vec![],
            60,
            Err(Some(122)),
        ),
        (
            "unschedulable while the autoscaler adds a node",
            Some(job(json!([]))),
            Some(unsched(2)),
            vec![event(
                "Pod",
                POD,
                "Normal",
                "TriggeredScaleUp",
                "pod triggered scale-up",
                3,
            )],
            150,
            Err(Some(180)),
        ),
        (
            "install init container fails",
            Some(job(json!([]))),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({}),
                json!([cs("install", terminated(1, "Error"), false)]),
                json!([
                    cs("runner", waiting("PodInitializing", ""), false),
                    cs("worker", waiting("PodInitializing", ""), false)
                ]),
            )),
            vec![],
            15,
            Ok(FailureReason::InitContainerFailed),
        ),
        (
            "job failed after install failed",
            Some(job_failed(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({}),
                json!([cs("install", terminated(126, "ContainerCannotRun"), false)]),
                json!([]),
            )),
            vec![],
            40,
            Ok(FailureReason::InitContainerFailed),
        ),
        (
            "job failed before the start",
            Some(job_failed(
                "PodFailurePolicy",
                "Container runner for pod ci/x failed with exit code 1",
            )),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({}),
                installed(),
                json!([
                    cs("runner", terminated(1, "Error"), false),
                    cs("worker", terminated(143, "Error"), false)
                ]),
            )),
            vec![],
            40,
            Ok(FailureReason::JobFailed),
        ),
        (
            "runner OOM-killed before the start",
            Some(job_failed(
                "PodFailurePolicy",
                "Container runner failed with exit code 137",
            )),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({}),
                installed(),
                json!([
                    cs("runner", terminated(137, "OOMKilled"), false),
                    cs("worker", terminated(143, "Error"), false)
                ]),
            )),
            vec![],
            40,
            Ok(FailureReason::OomKilled),
        ),
        (
            "evicted, then the job gave up",
            Some(job_failed(
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({"reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."}),
                installed(),
                json!([]),
            )),
            vec![],
            40,
            Ok(FailureReason::PodEvicted),
        ),
        (
            "evicted before the start: the Job replaces the pod",
            Some(job(json!([]))),
            Some(pod(
                "pod-1",
                Some("node-a"),
                "Failed",
                json!({"reason": "Evicted", "conditions": [{"type": "DisruptionTarget", "status": "True",
                       "reason": "TerminationByKubelet"}]}),
                installed(),
                json!([]),
            )),
            vec![],
            40,
            Err(Some(180)),
        ),
        (
            "job complete",
            Some(job(json!([{"type": "Complete", "status": "True"}]))),
            None,
            vec![],
            400,
            Err(None),
        ),
    ];
    for (name, job, pod, events, now, want) in cases {
        let mut s = state();
        let v = assess(
            &mut s,
            job.as_ref(),
            pod.as_ref(),
            &events,
            t(now),
            &settings(),
        );
        match want {
            Ok(reason) => {
                assert_eq!(fail_reason(&v), Some(reason), "{name}: {v:?}");
                assert!(matches!(v, Verdict::Fail { .. }), "{name}: {v:?}");
                assert_eq!(s.phase(), Phase::Done, "{name}: verdicts are one-shot");
            }
            Err(Some(at)) => assert_eq!(
                v,
                Verdict::Wait {
                    recheck_at: Some(t(at))
                },
                "{name}"
            ),
            Err(None) => assert_eq!(v, Verdict::Done, "{name}"),
        }
    }
}

#[test]
fn image_pull_fails_after_the_grace_with_the_kubelets_words() {
    let mut s = state();
    let p = pending_pod(waiting(
        "ImagePullBackOff",
        "Back-off pulling image \"scalr/agent:nope\"",
    ));
    let events = vec![event(
        "Pod",
        POD,
        "Warning",
        "Failed",
        "Failed to pull image \"scalr/agent:nope\": rpc error: not found",
        5,
    )];
    let j = job(json!([]));
    let first = assess(&mut s, Some(&j), Some(&p), &events, t(10), &settings());
    assert_eq!(
        first,
        Verdict::Wait {
            recheck_at: Some(t(40))
        }
    );
    let second = assess(&mut s, Some(&j), Some(&p), &events, t(40), &settings());
    assert_eq!(fail_reason(&second), Some(FailureReason::ImagePull));
    let m = text(&second);
    assert!(m.contains("container worker of pod"), "{m}");
    assert!(m.contains("ImagePullBackOff"), "{m}");
    assert!(
        m.contains("- Pod Failed: Failed to pull image \"scalr/agent:nope\": rpc error: not found"),
        "{m}"
    );
}

#[test]
fn an_image_problem_that_clears_restarts_the_grace() {
    let mut s = state();
    let j = job(json!([]));
    let bad = pending_pod(waiting("ErrImagePull", "timeout"));
    let ok = pending_pod(waiting("ContainerCreating", ""));
    assess(&mut s, Some(&j), Some(&bad), &[], t(10), &settings());
    assess(&mut s, Some(&j), Some(&ok), &[], t(30), &settings());
    let v = assess(&mut s, Some(&j), Some(&bad), &[], t(45), &settings());
    assert_eq!(
        v,
        Verdict::Wait {
            recheck_at: Some(t(75))
        }
    );
}

#[test]
fn a_job_that_disappears_before_the_start_fails_the_task() {
    let mut s = state();
    let j = job(json!([]));
    assert!(matches!(
        assess(&mut s, Some(&j), None, &[], t(5), &settings()),
        Verdict::Wait { .. }
    ));
    let v = assess(&mut s, None, None, &[], t(6), &settings());
    assert_eq!(fail_reason(&v), Some(FailureReason::JobDeleted), "{v:?}");
    // A Job being deleted counts as gone too.
    let mut s = state();
    let mut deleting = j.clone();
    assess(&mut s, Some(&j), None, &[], t(5), &settings());
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(6)));
    let v = assess(&mut s, Some(&deleting), None, &[], t(6), &settings());
    assert_eq!(fail_reason(&v), Some(FailureReason::JobDeleted), "{v:?}");
}

#[test]
fn a_cancelled_task_ends_quietly_when_its_job_goes() {
    let mut s = state();
    let j = job(json!([]));
    assess(&mut s, Some(&j), None, &[], t(5), &settings());
    s.cancel_requested = true;
    let p = pending_pod(waiting("ImagePullBackOff", ""));
    assert_eq!(
        assess(&mut s, Some(&j), Some(&p), &[], t(500), &settings()),
        Verdict::Wait { recheck_at: None }
    );
    assert_eq!(
        assess(&mut s, None, None, &[], t(501), &settings()),
        Verdict::Done
    );
}

#[path = "supervision_tests_after.rs"]
mod after;
