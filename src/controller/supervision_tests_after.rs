//! Supervision tests after the worker's start, failure messages, and the facts readers.

use super::*;

#[test]
fn the_phases_advance_and_a_started_worker_owns_the_task() {
    let mut s = state();
    let j = job(json!([]));
    assert_eq!(s.phase(), Phase::Launched);
    assess(
        &mut s,
        Some(&j),
        Some(&pending_pod(waiting("ContainerCreating", ""))),
        &[],
        t(5),
        &settings(),
    );
    assert_eq!(s.phase(), Phase::Scheduled);
    let v = assess(
        &mut s,
        Some(&j),
        Some(&started_pod()),
        &[],
        t(25),
        &settings(),
    );
    assert_eq!(s.phase(), Phase::WorkerStarted);
    assert_eq!(v, Verdict::Wait { recheck_at: None });
    // Long past the startup timeout, a running worker is left alone.
    let v = assess(
        &mut s,
        Some(&j),
        Some(&started_pod()),
        &[],
        t(4000),
        &settings(),
    );
    assert_eq!(v, Verdict::Wait { recheck_at: None });
    // Running but its probe has not passed: not started.
    let mut s = state();
    let not_yet = pod(
        "pod-1",
        Some("node-a"),
        "Running",
        json!({}),
        installed(),
        json!([
            cs("runner", running(), true),
            cs("worker", running(), false)
        ]),
    );
    assess(&mut s, Some(&j), Some(&not_yet), &[], t(25), &settings());
    assert_eq!(s.phase(), Phase::Scheduled);
}

#[test]
fn a_worker_that_exits_zero_is_done() {
    let mut s = state();
    let j = job(json!([]));
    assess(
        &mut s,
        Some(&j),
        Some(&started_pod()),
        &[],
        t(25),
        &settings(),
    );
    let finished = pod(
        "pod-1",
        Some("node-a"),
        "Succeeded",
        json!({}),
        installed(),
        json!([
            cs("runner", terminated(0, "Completed"), false),
            cs("worker", terminated(0, "Completed"), false)
        ]),
    );
    assert_eq!(
        assess(&mut s, Some(&j), Some(&finished), &[], t(300), &settings()),
        Verdict::Done
    );
    assert_eq!(s.phase(), Phase::Done);
}

/// After the start: (name, the pod afterwards, expected reason). Each waits the grace, then asks.
#[test]
fn after_the_start_only_a_gone_worker_is_reported_after_a_grace() {
    let oom = pod(
        "pod-1",
        Some("node-a"),
        "Failed",
        json!({}),
        installed(),
        json!([
            cs("runner", terminated(143, "Error"), false),
            cs("worker", terminated(137, "OOMKilled"), false)
        ]),
    );
    let evicted = pod(
        "pod-1",
        Some("node-a"),
        "Failed",
        json!({"reason": "Evicted", "message": "The node was low on resource: memory."}),
        installed(),
        json!([
            cs("runner", terminated(137, "Error"), false),
            cs("worker", terminated(137, "Error"), false)
        ]),
    );
    let crashed = pod(
        "pod-1",
        Some("node-a"),
        "Running",
        json!({}),
        installed(),
        json!([
            cs("runner", running(), true),
            cs("worker", terminated(2, "Error"), false)
        ]),
    );
    let replaced = pod(
        "pod-2",
        Some("node-b"),
        "Pending",
        json!({}),
        installed(),
        json!([
            cs("runner", waiting("ContainerCreating", ""), false),
            cs("worker", waiting("ContainerCreating", ""), false)
        ]),
    );
    let cases: Vec<(&str, Option<Pod>, FailureReason, &str)> = vec![
        (
            "pod deleted (node lost)",
            None,
            FailureReason::WorkerLost,
            "is gone",
        ),
        (
            "worker OOM-killed",
            Some(oom),
            FailureReason::OomKilled,
            "container worker of pod",
        ),
        (
            "pod evicted",
            Some(evicted),
            FailureReason::PodEvicted,
            "was evicted",
        ),
        (
            "worker crashed",
            Some(crashed),
            FailureReason::WorkerLost,
            "worker exited 2 (Error)",
        ),
        (
            "pod replaced by the Job",
            Some(replaced),
            FailureReason::WorkerLost,
            "was replaced by",
        ),
    ];
    for (name, after, reason, words) in cases {
        let mut s = state();
        let j = job(json!([]));
        assess(
            &mut s,
            Some(&j),
            Some(&started_pod()),
            &[],
            t(25),
            &settings(),
        );
        let first = assess(&mut s, Some(&j), after.as_ref(), &[], t(100), &settings());
        assert_eq!(
            first,
            Verdict::Wait {
                recheck_at: Some(t(115))
            },
            "{name}"
        );
        let second = assess(&mut s, Some(&j), after.as_ref(), &[], t(115), &settings());
        assert_eq!(fail_reason(&second), Some(reason), "{name}: {second:?}");
        assert!(matches!(second, Verdict::ConfirmFinal { .. }), "{name}");
        assert!(text(&second).contains(words), "{name}: {}", text(&second));
        assert_eq!(
            assess(&mut s, Some(&j), after.as_ref(), &[], t(200), &settings()),
            Verdict::Done
        );
    }
}

#[test]
fn a_worker_pod_that_comes_back_within_the_grace_is_not_reported() {
    // The pod watch relisted: for a moment the pod was missing from the view.
    let mut s = state();
    let j = job(json!([]));
    assess(
        &mut s,
        Some(&j),
        Some(&started_pod()),
        &[],
        t(25),
        &settings(),
    );
    assert!(matches!(
        assess(&mut s, Some(&j), None, &[], t(100), &settings()),
        Verdict::Wait {
            recheck_at: Some(_)
        }
    ));
    assert_eq!(
        assess(
            &mut s,
            Some(&j),
            Some(&started_pod()),
            &[],
            t(105),
            &settings()
        ),
        Verdict::Wait { recheck_at: None }
    );
    assert!(matches!(
        assess(&mut s, Some(&j), None, &[], t(200), &settings()),
        Verdict::Wait {
            recheck_at: Some(_)
        }
    ));
}

#[test]
fn oom_messages_name_the_limit_to_raise() {
    let mut s = state();
    let j = job_failed("PodFailurePolicy", "exit 137");
    let p = pod(
        "pod-1",
        Some("node-a"),
        "Failed",
        json!({}),
        installed(),
        json!([cs("runner", terminated(137, "OOMKilled"), false)]),
    );
    let v = assess(&mut s, Some(&j), Some(&p), &[], t(40), &settings());
    assert!(text(&v).contains("container runner of pod"), "{v:?}");
    assert!(text(&v).contains("memory limit 2Gi"), "{v:?}");
}

#[test]
fn startup_timeout_says_where_the_pod_is_stuck() {
    let mut s = state();
    let j = job(json!([]));
    let p = pending_pod(waiting("ContainerCreating", ""));
    let events = vec![event(
        "Pod",
        POD,
        "Warning",
        "FailedMount",
        "MountVolume.SetUp failed for volume \"cache\" : persistentvolumeclaim \"cache\" not found",
        30,
    )];
    let v = assess(&mut s, Some(&j), Some(&p), &events, t(200), &settings());
    let m = text(&v);
    assert_eq!(fail_reason(&v), Some(FailureReason::StartupTimeout));
    assert!(m.contains("within 180s"), "{m}");
    assert!(
        m.contains("container worker waiting (ContainerCreating)"),
        "{m}"
    );
    assert!(
        m.contains("- Pod FailedMount: MountVolume.SetUp failed"),
        "{m}"
    );
}

#[test]
fn messages_keep_the_last_events_once_each_and_no_secret() {
    let leaked = crate::secret::Secret::new("supervision-test-secret-42");
    let mut events: Vec<Event> = (0..8)
        .map(|i| {
            event(
                "Pod",
                POD,
                "Warning",
                "BackOff",
                &format!("back-off {i}"),
                i,
            )
        })
        .collect();
    events.push(event("Pod", POD, "Warning", "BackOff", "back-off 7", 9));
    events.push(event(
        "Pod",
        "another-pod",
        "Warning",
        "Failed",
        "not ours",
        9,
    ));
    events.push(event("Pod", POD, "Normal", "Pulling", "Pulling image", 9));
    events.push(event(
        "Pod",
        POD,
        "Warning",
        "Failed",
        &format!("token {} in a message", leaked.expose()),
        10,
    ));
    let mut s = state();
    let j = job(json!([]));
    let v = assess(
        &mut s,
        Some(&j),
        Some(&pending_pod(waiting("InvalidImageName", ""))),
        &events,
        t(5),
        &settings(),
    );
    let m = text(&v);
    assert!(!m.contains("supervision-test-secret-42"), "{m}");
    assert!(
        !m.contains("not ours") && !m.contains("Pulling image"),
        "{m}"
    );
    assert_eq!(m.matches("back-off 7").count(), 1, "{m}");
    assert_eq!(m.matches("\n- ").count(), facts::MAX_EVENTS, "{m}");
    assert!(m.ends_with("- Pod Failed: token *** in a message"), "{m}");
}

#[test]
fn current_pod_is_the_newest() {
    let mut old = started_pod();
    old.metadata.name = Some("a-old".into());
    let mut new = started_pod();
    new.metadata.name = Some("b-new".into());
    new.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(100)));
    let pods = [new.clone(), old];
    assert_eq!(
        facts::current_pod(&pods).and_then(|p| p.metadata.name.as_deref()),
        Some("b-new")
    );
    assert!(facts::current_pod(&[]).is_none());
}

#[test]
fn terminal_jobs_are_complete_or_failed_only() {
    assert!(!facts::job_is_terminal(&job(json!([]))));
    assert!(facts::job_is_terminal(&job(
        json!([{"type": "Complete", "status": "True"}])
    )));
    assert!(facts::job_is_terminal(&job_failed(
        "BackoffLimitExceeded",
        "x"
    )));
    assert!(!facts::job_is_terminal(&job(
        json!([{"type": "FailureTarget", "status": "True"}])
    )));
    assert!(!facts::job_is_terminal(&job(
        json!([{"type": "Failed", "status": "False"}])
    )));
}

#[test]
fn failed_job_messages_carry_the_condition_and_the_pod() {
    let mut s = state();
    let j = job_failed(
        "PodFailurePolicy",
        "Container runner failed with exit code 1",
    );
    let p = pod(
        "pod-1",
        Some("node-a"),
        "Failed",
        json!({}),
        installed(),
        json!([cs("runner", terminated(1, "Error"), false)]),
    );
    let v = assess(&mut s, Some(&j), Some(&p), &[], t(40), &settings());
    let m = text(&v);
    assert!(
        m.contains("(PodFailurePolicy: Container runner failed with exit code 1)"),
        "{m}"
    );
    assert!(m.contains("container runner exited 1 (Error)"), "{m}");
}

#[test]
fn the_configured_startup_timeout_is_used() {
    let custom = SupervisionSettings::with_startup_timeout(Duration::from_secs(600));
    assert_eq!(custom.image_pull_grace, settings().image_pull_grace);
    let mut s = state();
    let j = job(json!([]));
    let v = assess(&mut s, Some(&j), None, &[], t(300), &custom);
    assert_eq!(
        v,
        Verdict::Wait {
            recheck_at: Some(t(600))
        }
    );
}
