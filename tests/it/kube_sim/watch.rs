//! Watches against the simulator: events from a resourceVersion, selector transitions, bookmarks,
//! sendInitialEvents, the clean end at timeoutSeconds, 410 after compaction, and the watch faults.

use std::time::Duration;

use serde_json::json;

use super::{Api, JOBS, PODS, WAIT, job, pod, rv};
use crate::support::kube_sim::{KubeSim, KubeSimOptions};

fn fast_bookmarks() -> KubeSimOptions {
    KubeSimOptions {
        bookmark_interval: Duration::from_millis(50),
        ..KubeSimOptions::default()
    }
}

#[test]
fn watch_from_a_version_sees_every_change_in_order_then_ends_at_its_timeout() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let (_, before) = api.post(JOBS, &job("old"));
    let from = rv(&before);
    let (_, created) = api.post(JOBS, &job("j"));
    let mut w = api.watch(&format!(
        "{JOBS}?watch=true&resourceVersion={from}&timeoutSeconds=2"
    ));
    let added = w.event();
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("j"))
    );
    assert_eq!(
        (
            added["object"]["kind"].as_str(),
            added["object"]["apiVersion"].as_str()
        ),
        (Some("Job"), Some("batch/v1"))
    );
    assert_eq!(added["object"], created);
    api.patch(
        &format!("{JOBS}/j"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"x": "1"}}}),
    );
    let modified = w.event();
    assert_eq!(
        (
            modified["type"].as_str(),
            modified["object"]["metadata"]["labels"]["x"].as_str()
        ),
        (Some("MODIFIED"), Some("1"))
    );
    api.delete(
        &format!("{JOBS}/j"),
        Some(&json!({"propagationPolicy": "Background"})),
    );
    let deleted = w.event();
    assert_eq!(deleted["type"], "DELETED");
    assert!(
        rv(&deleted["object"]) > rv(&modified["object"]),
        "a delete has its own version"
    );
    assert!(
        w.next().expect("a clean end").is_none(),
        "timeoutSeconds ends the stream cleanly"
    );

    let mut from_now = api.watch(&format!("{JOBS}?watch=true&timeoutSeconds=1"));
    assert_eq!(
        from_now.event()["object"]["metadata"]["name"],
        "old",
        "no resourceVersion starts with the current state"
    );
    assert!(from_now.next().expect("a clean end").is_none());
}

#[test]
fn label_selected_watches_see_objects_enter_and_leave() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let start = sim.resource_version();
    let mut w = api.watch(&format!("{PODS}?watch=true&resourceVersion={start}&labelSelector=scalr.io%2Ftask-id&timeoutSeconds=5"));
    api.post(PODS, &pod("other", json!({"app": "x"})));
    api.post(PODS, &pod("p", json!({"app": "x"})));
    let label = |v: serde_json::Value| json!({"metadata": {"labels": {"scalr.io/task-id": v}}});
    api.patch(
        &format!("{PODS}/p"),
        "application/merge-patch+json",
        &label(json!("t-1")),
    );
    let entered = w.event();
    assert_eq!(
        (
            entered["type"].as_str(),
            entered["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("p"))
    );
    api.patch(
        &format!("{PODS}/p"),
        "application/merge-patch+json",
        &label(json!(null)),
    );
    let left = w.event();
    assert_eq!(
        (
            left["type"].as_str(),
            left["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("p"))
    );
    assert!(
        left["object"]["metadata"]["labels"]
            .get("scalr.io/task-id")
            .is_none(),
        "DELETED carries the new state"
    );
}

#[test]
fn bookmarks_only_when_asked_and_carry_only_the_version() {
    let sim = KubeSim::start(fast_bookmarks());
    let api = Api::admin(&sim);
    api.post(JOBS, &job("j"));
    let now = sim.resource_version();
    let mut w = api.watch(&format!(
        "{JOBS}?watch=true&resourceVersion={now}&allowWatchBookmarks=true&timeoutSeconds=5"
    ));
    let bookmark = w.event();
    assert_eq!(
        bookmark,
        json!({"type": "BOOKMARK", "object": {"kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"resourceVersion": now.to_string()}}})
    );
    api.post(
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"name": "unrelated"}}),
    );
    let mut later = w.event();
    while rv(&later["object"]) == now {
        later = w.event();
    }
    assert_eq!(later["type"], "BOOKMARK");
    assert_eq!(
        rv(&later["object"]),
        now + 1,
        "bookmarks advance past other resources' writes"
    );

    let mut plain = api.watch(&format!(
        "{JOBS}?watch=true&resourceVersion={now}&timeoutSeconds=1"
    ));
    assert!(
        plain.next().expect("a clean end").is_none(),
        "no bookmarks unless allowWatchBookmarks"
    );

    let mut initial = api.watch(&format!("{JOBS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5"));
    assert_eq!(initial.event()["type"], "ADDED");
    let end = initial.event();
    assert_eq!(
        (
            end["type"].as_str(),
            end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"].as_str()
        ),
        (Some("BOOKMARK"), Some("true"))
    );
}

#[test]
fn compacted_history_answers_410_and_watch_faults_end_streams() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let (_, first) = api.post(JOBS, &job("a"));
    api.post(JOBS, &job("b"));
    sim.compact();
    let mut w = api.watch(&format!("{JOBS}?watch=true&resourceVersion={}", rv(&first)));
    let error = w.event();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(
        (
            error["object"]["code"].clone(),
            error["object"]["reason"].clone()
        ),
        (json!(410), json!("Expired"))
    );
    assert!(
        error["object"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("too old resource version"))
    );
    assert!(w.next().expect("ends cleanly").is_none());

    let current = sim.resource_version();
    let mut live = api.watch(&format!("{JOBS}?watch=true&resourceVersion={current}"));
    assert!(sim.wait_until(WAIT, |s| s.active_watches() == 1));
    sim.compact();
    api.post(JOBS, &job("c"));
    assert_eq!(
        live.change()["type"],
        "ADDED",
        "an up-to-date watch survives compaction"
    );
    sim.expire_watches();
    let expired = live.change();
    assert_eq!(
        (expired["type"].as_str(), expired["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410))
    );

    let mut dropped = api.watch(&format!(
        "{JOBS}?watch=true&resourceVersion={}",
        sim.resource_version()
    ));
    assert!(sim.wait_until(WAIT, |s| s.active_watches() == 1));
    sim.drop_watches();
    assert!(dropped.next().is_err(), "a dropped watch is cut, not ended");
    assert!(sim.wait_until(WAIT, |s| s.active_watches() == 0));

    let (code, too_old) = api.get(&format!("{JOBS}?watch=true&resourceVersion=abc"));
    assert_eq!(code, 400, "{too_old}");
}
