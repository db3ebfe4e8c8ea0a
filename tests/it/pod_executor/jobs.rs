//! The Job controller side: one pod per Job with the labels, owner and finalizer a real controller
//! gives it; success and failure conditions as 1.33 writes them; podFailurePolicy; backoffLimit;
//! ttlSecondsAfterFinished taking the Job's owned Secret with it.

use serde_json::json;

use super::{NS, condition, container, job, sh, world};
use crate::support::kube_sim::Propagation;

#[test]
fn job_pod_runs_to_success_and_the_job_completes() {
    let w = world();
    let created = w.sim.put(job(
        "hello",
        json!([sh("main", "echo hello from $HOSTNAME")]),
        json!({}),
    ));
    let job_uid = created["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    let pod = w.pod_of("hello");
    let name = pod["metadata"]["name"].as_str().expect("name").to_string();
    let suffix = name.strip_prefix("hello-").expect("named after the Job");
    assert_eq!(suffix.len(), 5, "{name}");
    assert_eq!(pod["metadata"]["labels"]["job-name"], "hello");
    assert_eq!(
        pod["metadata"]["labels"]["controller-uid"],
        job_uid.as_str()
    );
    assert_eq!(pod["metadata"]["labels"]["app"], "hello");
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["uid"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("Job"), Some(job_uid.as_str()), Some(true))
    );
    let done = w.wait_phase(&name, "Succeeded");
    let main = container(&done, "main");
    assert_eq!(main["state"]["terminated"]["exitCode"], 0);
    assert_eq!(main["state"]["terminated"]["reason"], "Completed");
    assert!(
        main["containerID"]
            .as_str()
            .is_some_and(|id| id.starts_with("containerd://"))
    );
    assert_eq!(done["spec"]["nodeName"], "kube-sim-node");
    assert_eq!(done["status"]["podIP"], "127.0.0.1");
    assert_eq!(
        condition(&done, "PodScheduled").map(|c| c["status"].clone()),
        Some(json!("True"))
    );
    assert_eq!(w.logs(&name, "main"), format!("hello from {name}\n"));

    let j = w.wait_job("hello", "Complete");
    assert!(
        condition(&j, "SuccessCriteriaMet").is_some(),
        "{}",
        j["status"]
    );
    assert_eq!(
        condition(&j, "Complete").expect("Complete")["reason"],
        "CompletionsReached"
    );
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(j["status"]["completionTime"].is_string() && j["status"]["startTime"].is_string());
    assert!(j["status"].get("active").is_none(), "{}", j["status"]);
    w.wait("the tracking finalizer released", |s| {
        s.get("pods", NS, &name).is_some_and(|p| {
            p["metadata"]
                .get("finalizers")
                .is_none_or(|f| f == &json!([]))
        })
    });
    for (reason, text) in [
        ("Scheduled", "Successfully assigned ci/"),
        ("Pulling", "busybox"),
        ("Pulled", "busybox"),
        ("Created", "Created container: main"),
        ("Started", "Started container main"),
    ] {
        assert!(
            w.has_event(&name, reason, text),
            "no {reason} event:\n{}",
            w.pods_text()
        );
    }
    assert!(w.has_event("hello", "SuccessfulCreate", &format!("Created pod: {name}")));
    w.wait("the Completed event", |_| {
        w.has_event("hello", "Completed", "Job completed")
    });
    assert_eq!(w.pods_of("hello").len(), 1);
}

#[test]
fn failed_init_container_fails_the_pod_before_any_container_starts() {
    let w = world();
    let mut spec = job("init", json!([sh("main", "echo must not run")]), json!({}));
    spec["spec"]["template"]["spec"]["initContainers"] =
        json!([sh("prepare", "echo preparing; exit 3")]);
    w.sim.put(spec);
    let name = w.pod_of("init")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let pod = w.wait_phase(&name, "Failed");
    let prepare = container(&pod, "prepare");
    assert_eq!(prepare["state"]["terminated"]["exitCode"], 3);
    assert_eq!(prepare["state"]["terminated"]["reason"], "Error");
    assert_eq!(
        container(&pod, "main")["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    let init = super::any_condition(&pod, "Initialized").expect("Initialized");
    assert_eq!(init["status"], "False");
    assert_eq!(w.logs(&name, "prepare"), "preparing\n");
    assert_eq!(w.logs(&name, "main"), "", "the container never ran");
    let j = w.wait_job("init", "Failed");
    assert_eq!(
        condition(&j, "Failed").expect("Failed")["reason"],
        "BackoffLimitExceeded"
    );
    assert!(condition(&j, "FailureTarget").is_some());
    assert_eq!(j["status"]["failed"], 1);
}

#[test]
fn exit_code_matching_a_fail_job_rule_fails_the_job_without_retry() {
    let w = world();
    let policy = json!({"backoffLimit": 3, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [0]}},
    ]}});
    w.sim
        .put(job("policy", json!([sh("main", "exit 5")]), policy));
    let j = w.wait_job("policy", "Failed");
    let failed = condition(&j, "Failed").expect("Failed");
    assert_eq!(failed["reason"], "PodFailurePolicy");
    let pods = w.pods_of("policy");
    assert_eq!(pods.len(), 1, "no retry despite backoffLimit 3");
    let pod = pods[0]["metadata"]["name"].as_str().expect("name");
    assert_eq!(
        failed["message"],
        format!(
            "Container main for pod ci/{pod} failed with exit code 5 matching FailJob rule at index 0"
        )
    );
    w.wait("the PodFailurePolicy event", |_| {
        w.has_event("policy", "PodFailurePolicy", "exit code 5")
    });
}

#[test]
fn backoff_limit_replaces_a_failed_pod_which_finds_the_first_ones_claim() {
    let w = world();
    w.sim.put(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "shared", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}));
    let script = "if [ -f /claim/tried ]; then echo second; exit 0; fi; echo first; touch /claim/tried; exit 1";
    let mut spec = job(
        "retry",
        json!([sh("main", script)]),
        json!({"backoffLimit": 1}),
    );
    spec["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "c", "mountPath": "/claim"}]);
    spec["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "c", "persistentVolumeClaim": {"claimName": "shared"}}]);
    w.sim.put(spec);
    let j = w.wait_job("retry", "Complete");
    assert_eq!(
        (
            j["status"]["failed"].clone(),
            j["status"]["succeeded"].clone()
        ),
        (json!(1), json!(1))
    );
    let pods = w.pods_of("retry");
    assert_eq!(pods.len(), 2);
    let names: Vec<&str> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(pods[0]["status"]["phase"], "Failed");
    assert_eq!(w.logs(names[0], "main"), "first\n");
    assert_eq!(w.logs(names[1], "main"), "second\n");
    assert!(w.exec.claim_dir(NS, "shared").join("tried").exists());
}

#[test]
fn backoff_limit_exceeded_fails_the_job_after_the_last_retry() {
    let w = world();
    w.sim.put(job(
        "flaky",
        json!([sh("main", "exit 1")]),
        json!({"backoffLimit": 2}),
    ));
    let j = w.wait_job("flaky", "Failed");
    let failed = condition(&j, "Failed").expect("Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    assert_eq!(j["status"]["failed"], 3);
    assert_eq!(w.pods_of("flaky").len(), 3);
}

#[test]
fn ttl_after_finished_deletes_the_job_its_pods_and_its_secret() {
    let w = world();
    let created = w.sim.put(job(
        "short",
        json!([sh("main", "true")]),
        json!({"ttlSecondsAfterFinished": 1}),
    ));
    let uid = created["metadata"]["uid"].as_str().expect("uid");
    w.sim.put(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "short-credentials", "namespace": NS,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "short", "uid": uid}]},
        "stringData": {"token": "t"}}));
    w.wait_job("short", "Complete");
    w.wait("the Job, its pod and its Secret gone", |s| {
        s.get("jobs", NS, "short").is_none()
            && s.get("secrets", NS, "short-credentials").is_none()
            && s.list("pods", NS).is_empty()
    });
    let path = format!("/apis/batch/v1/namespaces/{NS}/jobs/short");
    w.wait("the TTL delete in the request log", |s| {
        s.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == path)
    });
    let deletes: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == path)
        .collect();
    assert_eq!(deletes.len(), 1, "one TTL delete");
    assert!(
        deletes[0].body.contains("Background"),
        "{}",
        deletes[0].body
    );
}

#[test]
fn deleting_a_running_job_with_background_propagation_stops_its_pod() {
    let w = world();
    w.sim.put(job(
        "long",
        json!([sh("main", "echo up; exec sleep 300")]),
        json!({}),
    ));
    let name = w.pod_of("long")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait_phase(&name, "Running");
    assert!(w.sim.delete("jobs", NS, "long", Propagation::Background));
    w.wait("the pod gone", |s| s.list("pods", NS).is_empty());
    let info = w
        .exec
        .processes()
        .into_iter()
        .find(|p| p.pod == name)
        .expect("the process");
    assert!(!info.running);
    assert_eq!(info.exit_code, Some(143), "sleep ends on SIGTERM");
    assert!(w.has_event(&name, "Killing", "Stopping container main"));
}

#[test]
fn the_executor_rides_out_dropped_watches_and_compaction() {
    let w = world();
    w.wait("both watches open", |s| s.active_watches() >= 2);
    w.sim.drop_watches();
    w.sim
        .put(job("first", json!([sh("main", "true")]), json!({})));
    w.sim.compact();
    w.sim.expire_watches();
    w.sim
        .put(job("second", json!([sh("main", "true")]), json!({})));
    w.wait_job("first", "Complete");
    w.wait_job("second", "Complete");
    assert!(w.exec.errors().is_empty(), "{:?}", w.exec.errors());
}
