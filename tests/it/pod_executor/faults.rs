//! Scripted node faults, each seen the way the controller will see it through the API: image pulls
//! that fail (retried with back-off) or can never work, unschedulable pods, OOM kills (scripted and
//! from real memory use over the limit), evictions (API with PodDisruptionBudgets, node pressure),
//! and the loss of the node.

use serde_json::{Value, json};

use super::{NS, any_condition, condition, container, job, options, sh, world, world_with};
use crate::support::pod_executor::{EvictionError, ExecutorOptions, PullFailure};

fn waiting_reason(pod: &Value, c: &str) -> Value {
    container(pod, c)["state"]["waiting"]["reason"].clone()
}

#[test]
fn image_pull_failure_backs_off_and_recovers_when_the_registry_does() {
    let w = world();
    w.exec
        .fail_image_pulls("docker.io/library/busybox:*", PullFailure::ErrImagePull);
    w.sim
        .put(job("pull", json!([sh("main", "echo pulled")]), json!({})));
    let name = w.pod_of("pull")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait("ErrImagePull", |s| {
        s.get("pods", NS, &name)
            .is_some_and(|p| waiting_reason(&p, "main") == "ErrImagePull")
    });
    w.wait("ImagePullBackOff", |s| {
        s.get("pods", NS, &name)
            .is_some_and(|p| waiting_reason(&p, "main") == "ImagePullBackOff")
    });
    let pod = w.pod(&name);
    assert_eq!(pod["status"]["phase"], "Pending");
    let message = container(&pod, "main")["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.starts_with("Back-off pulling image \"busybox\": ErrImagePull: rpc error"),
        "{message}"
    );
    assert!(w.has_event(&name, "Failed", "Failed to pull image \"busybox\""));
    assert!(w.has_event(&name, "Failed", "Error: ErrImagePull"));
    assert!(w.has_event(&name, "BackOff", "Back-off pulling image \"busybox\""));
    assert!(w.exec.processes().is_empty());
    w.exec.clear_image_pull_failures();
    w.wait_job("pull", "Complete");
    assert_eq!(w.logs(&name, "main"), "pulled\n");
}

#[test]
fn an_image_the_registry_lacks_fails_to_pull_as_not_found() {
    let w = world();
    w.sim.put(job(
        "absent",
        json!([{"name": "main", "image": "scalr/nothing:1.0"}]),
        json!({}),
    ));
    let name = w.pod_of("absent")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait("ErrImagePull", |s| {
        s.get("pods", NS, &name)
            .is_some_and(|p| waiting_reason(&p, "main") == "ErrImagePull")
    });
    let message = container(&w.pod(&name), "main")["state"]["waiting"]["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("docker.io/scalr/nothing:1.0: not found")),
        "{message}"
    );
}

#[test]
fn invalid_image_names_never_pull() {
    let w = world();
    w.exec
        .fail_image_pulls("registry.local/broken:*", PullFailure::InvalidImageName);
    let containers = json!([{"name": "bad", "image": "Upper/Case"},
        {"name": "scripted", "image": "registry.local/broken:1"}]);
    w.sim.put(job("invalid", containers, json!({})));
    let name = w.pod_of("invalid")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait("both InvalidImageName", |s| {
        s.get("pods", NS, &name).is_some_and(|p| {
            waiting_reason(&p, "bad") == "InvalidImageName"
                && waiting_reason(&p, "scripted") == "InvalidImageName"
        })
    });
    let message = container(&w.pod(&name), "bad")["state"]["waiting"]["message"].clone();
    assert_eq!(
        message,
        "Failed to apply default image tag \"Upper/Case\": couldn't parse image name \"Upper/Case\": invalid reference format"
    );
    assert!(w.has_event(&name, "InspectFailed", "Upper/Case"));
    assert!(w.has_event(&name, "Failed", "Error: InvalidImageName"));
    let pulls = w
        .events_of(&name)
        .iter()
        .filter(|(_, r, _)| r == "Pulling")
        .count();
    assert_eq!(pulls, 0, "never pulled");
}

#[test]
fn unschedulable_pods_stay_pending_until_the_fault_clears() {
    let w = world();
    w.exec.make_unschedulable("app=blocked");
    w.sim
        .put(job("blocked", json!([sh("main", "true")]), json!({})));
    let mut picky = job("picky", json!([sh("main", "true")]), json!({}));
    picky["spec"]["template"]["spec"]["nodeSelector"] = json!({"disktype": "ssd"});
    w.sim.put(picky);
    let name = w.pod_of("blocked")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let picky_pod = w.pod_of("picky")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let unschedulable = |p: &Value| {
        any_condition(p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
    };
    w.wait("both unschedulable", |s| {
        s.get("pods", NS, &name).is_some_and(|p| unschedulable(&p))
            && s.get("pods", NS, &picky_pod)
                .is_some_and(|p| unschedulable(&p))
    });
    let pod = w.pod(&name);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(pod["spec"].get("nodeName").is_none());
    let cond = any_condition(&pod, "PodScheduled").expect("condition");
    assert_eq!(cond["status"], "False");
    w.wait("both FailedScheduling events", |_| {
        w.has_event(
            &name,
            "FailedScheduling",
            "0/1 nodes are available: 1 node(s) were unschedulable.",
        ) && w.has_event(
            &picky_pod,
            "FailedScheduling",
            "didn't match Pod's node affinity/selector",
        )
    });
    w.exec.make_schedulable();
    w.wait_job("blocked", "Complete");
    assert!(condition(&w.pods_of("blocked")[0], "PodScheduled").is_some());
    assert!(
        w.pod(&picky_pod)["spec"].get("nodeName").is_none(),
        "a nodeSelector still keeps it off"
    );
}

#[test]
fn oom_kill_terminates_one_container_as_oomkilled() {
    let w = world();
    let containers = json!([
        sh("victim", "exec sleep 300"),
        sh("bystander", "exec sleep 300")
    ]);
    w.sim.put(job("oom", containers, json!({})));
    let name = w.pod_of("oom")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait_phase(&name, "Running");
    assert!(w.exec.oom_kill(NS, &name, "victim"));
    w.wait("victim OOMKilled", |s| {
        s.get("pods", NS, &name)
            .is_some_and(|p| container(&p, "victim")["state"]["terminated"].is_object())
    });
    let pod = w.pod(&name);
    let t = &container(&pod, "victim")["state"]["terminated"];
    assert_eq!(
        (t["reason"].clone(), t["exitCode"].clone()),
        (json!("OOMKilled"), json!(137))
    );
    assert!(container(&pod, "bystander")["state"]["running"].is_object());
    assert_eq!(pod["status"]["phase"], "Running");
}

#[test]
fn memory_over_the_limit_is_oom_killed_and_the_cgroup_files_show_it() {
    let w = world_with(ExecutorOptions {
        cgroup_env: Some("CGROUP".into()),
        ..options()
    });
    let script = "echo max=$(cat $CGROUP/memory.max); x=$(head -c 60000000 /dev/zero | tr '\\0' a); \
        echo allocated; sleep 30; echo survived";
    let mut c = sh("hog", script);
    c["resources"] = json!({"limits": {"memory": "16Mi"}});
    w.sim.put(job("hog", json!([c]), json!({})));
    let name = w.pod_of("hog")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let pod = w.wait_phase(&name, "Failed");
    let t = &container(&pod, "hog")["state"]["terminated"];
    assert_eq!(
        (t["reason"].clone(), t["exitCode"].clone()),
        (json!("OOMKilled"), json!(137))
    );
    let log = w.logs(&name, "hog");
    assert!(
        log.starts_with(&format!("max={}\n", 16 * 1024 * 1024)),
        "{log}"
    );
    assert!(!log.contains("survived"), "{log}");
}

#[test]
fn eviction_respects_budgets_marks_disruption_and_the_job_ignores_it() {
    let w = world();
    let script =
        "if [ -f /c/evicted-once ]; then exit 0; fi; touch /c/evicted-once; exec sleep 300";
    let mut c = sh("main", script);
    c["volumeMounts"] = json!([{"name": "c", "mountPath": "/c"}]);
    w.sim.put(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}));
    let policy = json!({"podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
        "template": {"spec": {"volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "c"}}]}}});
    w.sim.put(job("evictee", json!([c]), policy));
    let name = w.pod_of("evictee")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait_phase(&name, "Running");
    let marker = w.exec.claim_dir(NS, "c").join("evicted-once");
    assert!(
        w.exec.wait_until(super::PATIENCE, |_| marker.exists()),
        "the first pod marks the claim"
    );
    w.sim.put(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "keep", "namespace": NS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "evictee"}}}}));
    assert_eq!(
        w.exec.evict(NS, &name),
        Err(EvictionError::DisruptionBudget("keep".into()))
    );
    w.sim.delete(
        "poddisruptionbudgets",
        NS,
        "keep",
        crate::support::kube_sim::Propagation::Background,
    );
    assert_eq!(w.exec.evict(NS, &name), Ok(()));
    w.wait("the evicted pod's DisruptionTarget", |s| {
        s.get("pods", NS, &name)
            .is_none_or(|p| condition(&p, "DisruptionTarget").is_some())
    });
    let j = w.wait_job("evictee", "Complete");
    assert_eq!(j["status"]["succeeded"], 1);
    assert!(
        j["status"].get("failed").is_none(),
        "the evicted pod is ignored: {}",
        j["status"]
    );
    assert_eq!(
        w.pods_of("evictee").len(),
        1,
        "the evicted pod went, its replacement stays"
    );
    let status_path = format!("/pods/{name}/status");
    w.wait("DisruptionTarget EvictionByEvictionAPI written", |s| {
        s.requests().iter().any(|r| {
            r.method == "PATCH"
                && r.path.ends_with(&status_path)
                && r.body.contains("EvictionByEvictionAPI")
        })
    });
}

#[test]
fn node_pressure_eviction_fails_the_pod_and_leaves_it() {
    let w = world();
    w.sim.put(job(
        "pressed",
        json!([sh("main", "exec sleep 300")]),
        json!({}),
    ));
    let name = w.pod_of("pressed")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait_phase(&name, "Running");
    assert!(w.exec.evict_for_pressure(NS, &name));
    let pod = w.wait_phase(&name, "Failed");
    assert_eq!(pod["status"]["reason"], "Evicted");
    assert_eq!(
        condition(&pod, "DisruptionTarget").expect("DisruptionTarget")["reason"],
        "TerminationByKubelet"
    );
    assert!(w.has_event(&name, "Evicted", "The node was low on resource: memory."));
    assert!(
        pod["metadata"].get("deletionTimestamp").is_none(),
        "evicted pods stay"
    );
    w.wait_job("pressed", "Failed");
}

#[test]
fn losing_the_node_kills_its_processes_and_the_job_replaces_the_pod_elsewhere() {
    let w = world();
    let policy = json!({"backoffLimit": 0, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}});
    w.sim
        .put(job("lost", json!([sh("main", "exec sleep 300")]), policy));
    let first = w.pod_of("lost")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait_phase(&first, "Running");
    let old = w.exec.node_name();
    let new = w.exec.lose_node();
    assert_ne!(old, new);
    let info = w
        .exec
        .processes()
        .into_iter()
        .find(|p| p.pod == first)
        .expect("the process");
    assert!(!info.running);
    assert_eq!(info.exit_code, Some(137));
    w.wait("a replacement running on the new node", |s| {
        s.list("pods", NS).iter().any(|p| {
            p["metadata"]["name"] != first.as_str()
                && p["spec"]["nodeName"] == new.as_str()
                && p["status"]["phase"] == "Running"
        })
    });
    w.wait("the lost pod gone", |s| s.get("pods", NS, &first).is_none());
    let status_path = format!("/pods/{first}/status");
    w.wait("pod GC marked the lost pod", |s| {
        s.requests().iter().any(|r| {
            r.method == "PATCH"
                && r.path.ends_with(&status_path)
                && r.body.contains("DeletionByPodGC")
        })
    });
    let j = w.sim.get("jobs", NS, "lost").expect("job");
    assert!(
        j["status"].get("failed").is_none(),
        "ignored: {}",
        j["status"]
    );
    assert!(condition(&j, "Failed").is_none());
}
