use super::*;

fn job(extra: Value) -> Job {
    let mut spec = json!({"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
    "containers": [{"name": "runner", "image": "busybox"}, {"name": "worker", "image": "busybox"}]}},
    "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "runner", "operator": "NotIn", "values": [0]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    serde_json::from_value(
        json!({"metadata": {"name": "j", "namespace": "ci", "uid": "ju"}, "spec": spec}),
    )
    .expect("job")
}

fn pod(name: &str, phase: &str, exits: &[(&str, i32)], conditions: Value) -> Pod {
    let statuses: Vec<Value> = exits
        .iter()
        .map(|(c, code)| {
            json!({"name": c, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code}}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ci", "uid": format!("uid-{name}"),
            "finalizers": [TRACKING_FINALIZER]},
        "status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions},
    }))
    .expect("pod")
}

fn run(job: &Job, rec: &mut JobRecord, pods: &[&Pod]) -> Vec<JobAction> {
    sync(job, rec, pods, SystemTime::now(), Duration::ZERO)
}

fn kinds(actions: &[JobAction]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            JobAction::WriteStatus(_) => "status",
            JobAction::ReleasePod(_) => "release",
            JobAction::CreatePod => "create",
            JobAction::DeletePod(_) => "delete-pod",
            JobAction::Event { .. } => "event",
            JobAction::DeleteJob => "delete-job",
            JobAction::WakeAt(_) => "wake",
        })
        .collect()
}

fn conditions(rec: &JobRecord) -> Vec<(String, String)> {
    rec.conditions
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

#[test]
fn creates_one_pod_then_waits_for_it() {
    let j = job(json!({}));
    let mut rec = JobRecord::default();
    assert_eq!(kinds(&run(&j, &mut rec, &[])), ["status", "create"]);
    rec.expected_pod = Some("j-abcde".into());
    assert_eq!(
        kinds(&run(&j, &mut rec, &[])),
        ["status"],
        "active counts the pod being created"
    );
    let p = pod(
        "j-abcde",
        "Running",
        &[],
        json!([{"type": "Ready", "status": "True"}]),
    );
    assert_eq!(kinds(&run(&j, &mut rec, &[&p])), ["status"]);
    assert_eq!(rec.expected_pod, None);
    assert_eq!(rec.written.as_ref().expect("written")["ready"], 1);
    assert!(
        run(&j, &mut rec, &[&p]).is_empty(),
        "nothing changed, nothing written"
    );
}

/// (pod phase, exits, pod conditions) → Job conditions, (succeeded, failed), actions.
type Case = (
    &'static str,
    Vec<(&'static str, i32)>,
    Value,
    Vec<(&'static str, &'static str)>,
    (i32, i32),
    Vec<&'static str>,
);

#[test]
fn terminal_pods_decide_the_job() {
    let cases: Vec<Case> = vec![
        (
            "Succeeded",
            vec![("runner", 0), ("worker", 0)],
            json!([]),
            vec![
                ("SuccessCriteriaMet", "CompletionsReached"),
                ("Complete", "CompletionsReached"),
            ],
            (1, 0),
            vec!["status", "release", "event"],
        ),
        (
            "Failed",
            vec![("runner", 3), ("worker", 0)],
            json!([]),
            vec![
                ("FailureTarget", "PodFailurePolicy"),
                ("Failed", "PodFailurePolicy"),
            ],
            (0, 1),
            vec!["status", "release", "event"],
        ),
        (
            "Failed",
            vec![("worker", 2)],
            json!([]),
            vec![],
            (0, 1),
            vec!["status", "release", "create"],
        ),
        (
            "Failed",
            vec![("runner", 137)],
            json!([{"type": "DisruptionTarget", "status": "True"}]),
            vec![
                ("FailureTarget", "PodFailurePolicy"),
                ("Failed", "PodFailurePolicy"),
            ],
            (0, 1),
            vec!["status", "release", "event"],
        ),
        (
            "Failed",
            vec![],
            json!([{"type": "DisruptionTarget", "status": "True"}]),
            vec![],
            (0, 0),
            vec!["status", "release", "create"],
        ),
    ];
    for (phase, exits, conds, want_conditions, (succeeded, failed), want_actions) in cases {
        let j = job(json!({}));
        let mut rec = JobRecord::default();
        let p = pod("j-1", phase, &exits, conds.clone());
        let actions = run(&j, &mut rec, &[&p]);
        let want: Vec<(String, String)> = want_conditions
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(conditions(&rec), want, "{phase} {exits:?} {conds}");
        assert_eq!(
            (rec.succeeded, rec.failed),
            (succeeded, failed),
            "{phase} {exits:?}"
        );
        assert_eq!(kinds(&actions), want_actions, "{phase} {exits:?} {conds}");
    }
}

#[test]
fn policy_message_names_container_code_and_rule() {
    let j = job(json!({}));
    let p = pod("j-1", "Failed", &[("runner", 3)], json!([]));
    let rules = j
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.clone())
        .expect("policy")
        .rules;
    assert_eq!(
        match_policy(&rules, &p),
        Some(("FailJob".into(), "Container runner for pod ci/j-1 failed with exit code 3 matching FailJob rule at index 0".into()))
    );
}

#[test]
fn backoff_limit_counts_failures_and_recreates_until_exceeded() {
    let j = job(json!({"podFailurePolicy": null}));
    let mut rec = JobRecord::default();
    let first = pod("j-1", "Failed", &[("worker", 1)], json!([]));
    assert_eq!(
        kinds(&run(&j, &mut rec, &[&first])),
        ["status", "release", "create"]
    );
    let second = pod("j-2", "Failed", &[("worker", 1)], json!([]));
    let actions = run(&j, &mut rec, &[&first, &second]);
    assert_eq!(rec.failed, 2);
    assert_eq!(
        conditions(&rec),
        [
            (
                "FailureTarget".to_string(),
                "BackoffLimitExceeded".to_string()
            ),
            ("Failed".to_string(), "BackoffLimitExceeded".to_string())
        ]
    );
    assert!(!actions.contains(&JobAction::CreatePod));
}

#[test]
fn pod_backoff_delays_the_replacement() {
    let j = job(json!({"podFailurePolicy": null}));
    let mut rec = JobRecord::default();
    let failed = pod("j-1", "Failed", &[("worker", 1)], json!([]));
    let now = SystemTime::now();
    let actions = sync(&j, &mut rec, &[&failed], now, Duration::from_secs(10));
    assert!(
        actions.contains(&JobAction::WakeAt(now + Duration::from_secs(10))),
        "{actions:?}"
    );
    let later = sync(
        &j,
        &mut rec,
        &[&failed],
        now + Duration::from_secs(10),
        Duration::from_secs(10),
    );
    assert!(later.contains(&JobAction::CreatePod), "{later:?}");
}

#[test]
fn failing_job_deletes_its_running_pod_before_failed() {
    let j = job(json!({"podFailurePolicy": null, "backoffLimit": 0}));
    let mut rec = JobRecord::default();
    let failed = pod("j-1", "Failed", &[("worker", 1)], json!([]));
    let running = pod("j-2", "Running", &[], json!([]));
    let actions = run(&j, &mut rec, &[&failed, &running]);
    assert!(actions.contains(&JobAction::DeletePod("j-2".into())));
    assert_eq!(conditions(&rec)[0].0, "FailureTarget");
    assert_eq!(rec.conditions.len(), 1, "Failed waits until no pod runs");
}

#[test]
fn ttl_deletes_the_finished_job_once() {
    let j = job(json!({"ttlSecondsAfterFinished": 5}));
    let mut rec = JobRecord::default();
    let done = pod("j-1", "Succeeded", &[("runner", 0)], json!([]));
    let now = SystemTime::now();
    let actions = sync(&j, &mut rec, &[&done], now, Duration::ZERO);
    assert!(
        actions.contains(&JobAction::WakeAt(now + Duration::from_secs(5))),
        "{actions:?}"
    );
    let later = sync(
        &j,
        &mut rec,
        &[&done],
        now + Duration::from_secs(5),
        Duration::ZERO,
    );
    assert!(later.contains(&JobAction::DeleteJob));
    let again = sync(
        &j,
        &mut rec,
        &[&done],
        now + Duration::from_secs(6),
        Duration::ZERO,
    );
    assert!(!again.contains(&JobAction::DeleteJob));
}

#[test]
fn record_from_a_finished_job_does_not_recount() {
    let mut j = job(json!({}));
    j.status = serde_json::from_value(json!({"succeeded": 1, "startTime": "2025-01-01T00:00:00Z",
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2025-01-01T00:00:01Z"}]}))
        .expect("status");
    let rec = JobRecord::from_job(&j);
    assert!(rec.finished() && rec.success);
    assert_eq!(rec.succeeded, 1);
    assert_eq!(
        rec.finished_at.map(stamp).as_deref(),
        Some("2025-01-01T00:00:01Z")
    );
}
