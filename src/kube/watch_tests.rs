//! Transitions of the watch state machine, driven input by input.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Status, WatchEvent as RawEvent};

use super::*;
use crate::http::{HttpError, RetryPolicy, TransportKind};
use crate::kube::error::ApiFailure;

const INITIAL: Duration = Duration::from_millis(100);

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        initial: INITIAL,
        max_delay: Duration::from_secs(10),
        max_elapsed: Duration::from_secs(100 * 365 * 86_400),
    }
}

fn machine(page_size: u32) -> WatchMachine<ConfigMap> {
    WatchMachine::new(page_size, Backoff::with_seed(policy(), 42))
}

fn cm(name: &str, rv: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: Some(rv.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn page(items: &[(&str, &str)], rv: &str, cont: Option<&str>) -> Input<ConfigMap> {
    Input::Listed(Ok(ObjectList {
        items: items.iter().map(|(n, v)| cm(n, v)).collect(),
        resource_version: rv.into(),
        continue_token: cont.map(str::to_string),
        remaining_item_count: None,
    }))
}

fn api_error(status: u16, reason: &str, retry_after: Option<Duration>) -> KubeError {
    KubeError::from_response("GET", "/api/v1/configmaps", status, retry_after, &serde_json::to_vec(
        &serde_json::json!({"kind": "Status", "code": status, "reason": reason, "message": reason}),
    ).expect("json"))
}

fn gone() -> KubeError {
    KubeError::Gone(Box::new(ApiFailure {
        status: 410,
        reason: "Expired".into(),
        ..ApiFailure::default()
    }))
}

fn broken() -> KubeError {
    KubeError::Transport(HttpError::Transport {
        method: "GET".into(),
        url: "watch".into(),
        kind: TransportKind::Io,
        detail: "connection reset".into(),
    })
}

fn list(cont: Option<&str>, limit: Option<u32>) -> Action {
    Action::List {
        continue_token: cont.map(str::to_string),
        limit,
    }
}

fn watch(rv: &str) -> Action {
    Action::Watch {
        resource_version: rv.into(),
    }
}

fn names(events: &[WatchEvent<ConfigMap>]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let (tag, objects) = match e {
                WatchEvent::Restarted(v) => ("restarted", v.iter().collect::<Vec<_>>()),
                WatchEvent::Applied(o) => ("applied", vec![o]),
                WatchEvent::Deleted(o) => ("deleted", vec![o]),
            };
            let names: Vec<_> = objects
                .iter()
                .map(|o| o.metadata.name.clone().unwrap_or_default())
                .collect();
            format!("{tag}:{}", names.join(","))
        })
        .collect()
}

/// Feeds `steps` (input, expected consumer events, expected next action) in order.
fn run(m: &mut WatchMachine<ConfigMap>, steps: Vec<(Input<ConfigMap>, Vec<&str>, Action)>) {
    for (i, (input, want_events, want_action)) in steps.into_iter().enumerate() {
        let events = m.handle(input).expect("not fatal");
        assert_eq!(names(&events), want_events, "step {i} events");
        let action = m.action();
        match (&action, &want_action) {
            // Delays are jittered: check the kind here, bounds in dedicated tests.
            (Action::Wait(_), Action::Wait(_)) => {}
            _ => assert_eq!(action, want_action, "step {i} action"),
        }
    }
}

fn wait() -> Action {
    Action::Wait(Duration::ZERO)
}

fn bookmark(rv: &str) -> Input<ConfigMap> {
    Input::Event(RawEvent::Bookmark {
        annotations: Default::default(),
        resource_version: rv.into(),
    })
}

fn ended(lasted_ms: u64) -> Input<ConfigMap> {
    Input::StreamEnded {
        error: None,
        lasted: Duration::from_millis(lasted_ms),
    }
}

#[test]
fn initial_list_then_watch_from_the_list_version_and_events_in_order() {
    let mut m = machine(2);
    assert_eq!(m.action(), list(None, Some(2)));
    run(
        &mut m,
        vec![
            (
                page(&[("a", "3"), ("b", "5")], "10", Some("c1")),
                vec![],
                list(Some("c1"), Some(2)),
            ),
            (
                page(&[("c", "7")], "10", None),
                vec!["restarted:a,b,c"],
                watch("10"),
            ),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            (
                Input::Event(RawEvent::Added(cm("d", "11"))),
                vec!["applied:d"],
                Action::Read,
            ),
            (
                Input::Event(RawEvent::Modified(cm("a", "12"))),
                vec!["applied:a"],
                Action::Read,
            ),
            (
                Input::Event(RawEvent::Deleted(cm("b", "13"))),
                vec!["deleted:b"],
                Action::Read,
            ),
        ],
    );
    assert_eq!(m.resource_version(), "13");
}

#[test]
fn bookmark_advances_the_version_only() {
    let mut m = machine(0);
    run(
        &mut m,
        vec![
            (page(&[], "10", None), vec!["restarted:"], watch("10")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            (bookmark("20"), vec![], Action::Read),
            (ended(5), vec![], watch("20")),
        ],
    );
}

#[test]
fn stream_end_rewatches_from_the_last_version() {
    let mut m = machine(0);
    run(
        &mut m,
        vec![
            (page(&[], "10", None), vec!["restarted:"], watch("10")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            (
                Input::Event(RawEvent::Added(cm("x", "11"))),
                vec!["applied:x"],
                Action::Read,
            ),
            (ended(0), vec![], watch("11")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            // An idle stream that lasted its timeout ends normally.
            (ended(60_000), vec![], watch("11")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            // One that closes at once with nothing is retried after a backoff.
            (ended(0), vec![], wait()),
            (Input::Waited, vec![], watch("11")),
        ],
    );
}

#[test]
fn gone_relists_and_restarts_the_view() {
    let mut m = machine(0);
    run(
        &mut m,
        vec![
            (
                page(&[("a", "1")], "10", None),
                vec!["restarted:a"],
                watch("10"),
            ),
            (Input::WatchOpened(Err(gone())), vec![], list(None, None)),
            (
                page(&[("b", "30")], "30", None),
                vec!["restarted:b"],
                watch("30"),
            ),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
        ],
    );
    let expired = Status {
        code: Some(410),
        reason: Some("Expired".into()),
        message: Some("too old resource version".into()),
        ..Status::default()
    };
    run(
        &mut m,
        vec![
            (
                Input::Event(RawEvent::ErrorStatus(expired)),
                vec![],
                list(None, None),
            ),
            (
                page(&[("c", "40")], "40", None),
                vec!["restarted:c"],
                watch("40"),
            ),
        ],
    );
}

#[test]
fn compaction_during_a_paged_relist_lists_again_unpaged() {
    let mut m = machine(2);
    run(
        &mut m,
        vec![
            (
                page(&[("a", "1"), ("b", "2")], "10", Some("c1")),
                vec![],
                list(Some("c1"), Some(2)),
            ),
            (Input::Listed(Err(gone())), vec![], list(None, None)),
            // Page one's items are not in the snapshot: it is the unpaged list alone.
            (
                page(&[("b", "2"), ("c", "12")], "12", None),
                vec!["restarted:b,c"],
                watch("12"),
            ),
            (Input::WatchOpened(Err(gone())), vec![], list(None, Some(2))),
        ],
    );
}

#[test]
fn list_errors_back_off_then_restart_from_the_first_page() {
    let mut m = machine(2);
    run(
        &mut m,
        vec![
            (
                page(&[("a", "1"), ("b", "2")], "10", Some("c1")),
                vec![],
                list(Some("c1"), Some(2)),
            ),
            (
                Input::Listed(Err(api_error(500, "InternalError", None))),
                vec![],
                wait(),
            ),
            (Input::Waited, vec![], list(None, Some(2))),
            (
                Input::Listed(Err(api_error(403, "Forbidden", None))),
                vec![],
                wait(),
            ),
            (Input::Waited, vec![], list(None, Some(2))),
            (
                page(&[("z", "9")], "11", None),
                vec!["restarted:z"],
                watch("11"),
            ),
        ],
    );
}

#[test]
fn watch_errors_back_off_and_keep_the_version() {
    let mut m = machine(0);
    let other = Status {
        code: Some(500),
        reason: Some("InternalError".into()),
        ..Status::default()
    };
    run(
        &mut m,
        vec![
            (page(&[], "10", None), vec!["restarted:"], watch("10")),
            (
                Input::WatchOpened(Err(api_error(503, "ServiceUnavailable", None))),
                vec![],
                wait(),
            ),
            (Input::Waited, vec![], watch("10")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            (
                Input::Event(RawEvent::Added(cm("a", "15"))),
                vec!["applied:a"],
                Action::Read,
            ),
            // Dropped under load: the connection breaks mid-stream.
            (
                Input::StreamEnded {
                    error: Some(broken()),
                    lasted: Duration::ZERO,
                },
                vec![],
                wait(),
            ),
            (Input::Waited, vec![], watch("15")),
            (Input::WatchOpened(Ok(())), vec![], Action::Read),
            (Input::Event(RawEvent::ErrorStatus(other)), vec![], wait()),
            (Input::Waited, vec![], watch("15")),
        ],
    );
}

#[test]
fn retry_after_is_a_floor_and_backoff_is_jittered_within_its_window() {
    let mut m = machine(0);
    m.handle(Input::Listed(Err(api_error(
        429,
        "TooManyRequests",
        Some(Duration::from_secs(7)),
    ))))
    .expect("not fatal");
    let Action::Wait(delay) = m.action() else {
        panic!("{:?}", m.action())
    };
    assert!(delay >= Duration::from_secs(7), "{delay:?}");
    // Consecutive failures: each delay within the doubling window, capped at max_delay.
    let mut m = machine(0);
    for n in 0..12u32 {
        m.handle(Input::Listed(Err(api_error(500, "InternalError", None))))
            .expect("not fatal");
        let Action::Wait(delay) = m.action() else {
            panic!("{:?}", m.action())
        };
        let window = INITIAL.saturating_mul(1 << n).min(Duration::from_secs(10));
        assert!(delay <= window, "failure {n}: {delay:?} > {window:?}");
        m.handle(Input::Waited).expect("waited");
    }
    // A success resets the backoff to its first window.
    m.handle(page(&[], "1", None)).expect("listed");
    m.handle(Input::WatchOpened(Err(api_error(
        500,
        "InternalError",
        None,
    ))))
    .expect("not fatal");
    let Action::Wait(delay) = m.action() else {
        panic!("{:?}", m.action())
    };
    assert!(delay <= INITIAL, "{delay:?}");
}

#[test]
fn unauthorized_stops_the_machine() {
    let mut m = machine(0);
    let err = m
        .handle(Input::Listed(Err(api_error(401, "Unauthorized", None))))
        .expect_err("fatal");
    assert!(matches!(err, KubeError::Unauthorized(_)));
    let mut m = machine(0);
    m.handle(page(&[], "1", None)).expect("listed");
    let err = m
        .handle(Input::WatchOpened(Err(api_error(
            401,
            "Unauthorized",
            None,
        ))))
        .expect_err("fatal");
    assert!(matches!(err, KubeError::Unauthorized(_)));
}

#[test]
fn inputs_that_do_not_fit_the_state_are_ignored() {
    let mut m = machine(0);
    assert!(m.handle(Input::Waited).expect("ignored").is_empty());
    assert_eq!(m.action(), list(None, None));
    assert!(m.handle(bookmark("5")).expect("ignored").is_empty());
    assert_eq!(m.action(), list(None, None));
}
