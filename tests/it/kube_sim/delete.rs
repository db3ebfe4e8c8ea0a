//! Deletion through the API: preconditions, background/foreground/orphan propagation by the
//! collector, dangling dependents, and namespace termination.

use serde_json::{Value, json};

use super::{Api, JOBS, PODS, WAIT, job, pod};
use crate::support::kube_sim::{KubeSim, KubeSimOptions, Propagation};

#[test]
fn delete_honours_preconditions_and_propagation_policies() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let owned_by = |owner: &Value, block: bool| {
        json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": block}])
    };
    let secret = |name: &str, owner: &Value| json!({"metadata": {"name": name, "ownerReferences": owned_by(owner, true)}});

    // Background: the owner goes at once, the collector takes its dependents.
    let (_, j1) = api.post(JOBS, &job("j1"));
    api.post(
        "/api/v1/namespaces/default/secrets",
        &secret("j1-credentials", &j1),
    );
    let (code, wrong) = api.delete(
        &format!("{JOBS}/j1"),
        Some(&json!({"preconditions": {"uid": "not-it"}})),
    );
    assert_eq!((code, wrong["reason"].as_str()), (409, Some("Conflict")));
    let (code, done) = api.delete(
        &format!("{JOBS}/j1"),
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "propagationPolicy": "Background", "preconditions": {"uid": j1["metadata"]["uid"]}})),
    );
    assert_eq!(
        (
            code,
            done["status"].as_str(),
            done["details"]["uid"].clone()
        ),
        (200, Some("Success"), j1["metadata"]["uid"].clone())
    );
    assert!(
        sim.wait_until(WAIT, |s| s
            .get("secrets", "default", "j1-credentials")
            .is_none()),
        "{}",
        sim.dump()
    );

    // Foreground: the owner stays, marked, until blocking dependents are gone.
    let (_, j2) = api.post(JOBS, &job("j2"));
    let mut held = pod("j2-pod", json!({}));
    held["metadata"]["ownerReferences"] = owned_by(&j2, true);
    held["metadata"]["finalizers"] = json!(["test/hold"]);
    api.post(PODS, &held);
    let (code, pending) = api.delete(&format!("{JOBS}/j2?propagationPolicy=Foreground"), None);
    assert_eq!(code, 200);
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        pending["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(
        sim.wait_until(WAIT, |s| s
            .get("pods", "default", "j2-pod")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())),
        "{}",
        sim.dump()
    );
    assert!(
        sim.get("jobs", "default", "j2").is_some(),
        "the owner waits for its blocking dependent"
    );
    let (code, _) = api.patch(
        &format!("{PODS}/j2-pod"),
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    );
    assert_eq!(code, 200);
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "default", "j2").is_none()),
        "{}",
        sim.dump()
    );
    assert!(sim.get("pods", "default", "j2-pod").is_none());

    // batch/v1 Jobs orphan their dependents when the request names no policy.
    let (_, j3) = api.post(JOBS, &job("j3"));
    api.post(
        "/api/v1/namespaces/default/secrets",
        &secret("j3-credentials", &j3),
    );
    api.delete(&format!("{JOBS}/j3"), None);
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "default", "j3").is_none()),
        "{}",
        sim.dump()
    );
    let orphan = sim
        .get("secrets", "default", "j3-credentials")
        .expect("orphaned, not collected");
    assert_eq!(orphan["metadata"]["ownerReferences"], json!([]));

    // A dependent created after its owner is gone is collected.
    api.post("/api/v1/namespaces/default/secrets", &secret("late", &j1));
    assert!(
        sim.wait_until(WAIT, |s| s.get("secrets", "default", "late").is_none()),
        "{}",
        sim.dump()
    );
    assert!(sim.delete(
        "secrets",
        "default",
        "j3-credentials",
        Propagation::Background
    ));
}

#[test]
fn deleting_a_namespace_empties_it_first() {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec!["ci".into()],
        ..KubeSimOptions::default()
    });
    let api = Api::admin(&sim);
    let mut held = json!({"metadata": {"name": "held", "finalizers": ["test/hold"]}});
    assert_eq!(api.post("/api/v1/namespaces/ci/configmaps", &held).0, 201);
    assert_eq!(
        api.post("/apis/batch/v1/namespaces/ci/jobs", &job("j")).0,
        201
    );
    let (code, ns) = api.delete("/api/v1/namespaces/ci", None);
    assert_eq!(
        (code, ns["status"]["phase"].as_str()),
        (200, Some("Terminating"))
    );
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "ci", "j").is_none()),
        "{}",
        sim.dump()
    );
    let (code, refused) = api.post(
        "/api/v1/namespaces/ci/configmaps",
        &json!({"metadata": {"name": "new"}}),
    );
    assert_eq!(code, 403);
    assert_eq!(
        refused["message"],
        "configmaps \"new\" is forbidden: unable to create new content in namespace ci because it is being terminated"
    );
    assert!(
        sim.get("namespaces", "", "ci").is_some(),
        "a finalizer inside holds the namespace"
    );
    held = api.get("/api/v1/namespaces/ci/configmaps/held").1;
    held["metadata"]["finalizers"] = json!([]);
    assert_eq!(
        api.put("/api/v1/namespaces/ci/configmaps/held", &held).0,
        200
    );
    assert!(
        sim.wait_until(WAIT, |s| s.get("namespaces", "", "ci").is_none()),
        "{}",
        sim.dump()
    );
}

#[test]
fn graceful_pod_deletion_waits_for_the_kubelets_final_delete() {
    let sim = KubeSim::start(KubeSimOptions {
        graceful_pod_deletion: true,
        ..KubeSimOptions::default()
    });
    let api = Api::admin(&sim);
    let mut scheduled = pod("running", json!({}));
    scheduled["spec"]["nodeName"] = json!("node-1");
    api.post(PODS, &scheduled);
    api.post(PODS, &pod("pending", json!({})));
    let (code, terminating) = api.delete(&format!("{PODS}/running"), None);
    assert_eq!(code, 200);
    assert!(terminating["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(
        sim.get("pods", "default", "running").is_some(),
        "a scheduled pod waits for its kubelet"
    );
    let (code, gone) = api.delete(&format!("{PODS}/pending"), None);
    assert_eq!(
        (code, gone["kind"].as_str()),
        (200, Some("Pod")),
        "pods answer with the deleted object"
    );
    assert!(
        sim.get("pods", "default", "pending").is_none(),
        "an unscheduled pod goes at once"
    );
    let (code, _) = api.delete(&format!("{PODS}/running?gracePeriodSeconds=0"), None);
    assert_eq!(code, 200);
    assert!(sim.get("pods", "default", "running").is_none());
}
