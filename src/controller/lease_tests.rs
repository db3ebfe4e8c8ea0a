//! Tables for Lease expiry, renewal and adoption; the keeper against the fake cluster.

use std::collections::BTreeMap;

use jiff::SignedDuration;
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

use super::*;
use crate::controller::fakes::FakeCluster;
use crate::controller::naming::is_dns1123_label;

fn t(secs: i64) -> Timestamp {
    Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1_700_000_000 + secs)
}

fn lease(holder: &str, renewed: i64, duration: i32) -> Lease {
    let mut l = desired(
        None,
        &lease_name("prod", holder),
        "prod",
        holder,
        Duration::from_secs(duration as u64),
        t(renewed),
    );
    l.metadata.uid = Some(format!("uid-{holder}"));
    l
}

fn job(name: &str, controller: &str, terminal: bool) -> Job {
    let mut j = Job::default();
    j.metadata.name = Some(name.into());
    j.metadata.resource_version = Some("7".into());
    j.metadata.annotations = Some(BTreeMap::from([(
        CONTROLLER.to_string(),
        controller.to_string(),
    )]));
    if terminal {
        j.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
    }
    j
}

#[test]
fn lease_names_are_dns_labels() {
    for (instance, controller) in [
        ("prod", "prod-scalr-agent-7d9c5b-abcde"),
        (
            "a-very-long-release-name-for-testing",
            "a-very-long-controller-pod-name-x1y2z3",
        ),
        ("prod", "Ctl_Upper.Case"),
    ] {
        let name = lease_name(instance, controller);
        assert!(is_dns1123_label(&name), "{name}");
    }
    assert_ne!(lease_name("prod", "a"), lease_name("prod", "b"));
}

#[test]
fn expiry_allows_for_skew() {
    let l = lease("a", 0, 60);
    let cases = [
        (30, false),
        (60, false),
        (60 + SKEW.as_secs() as i64, false),
        (66, true),
    ];
    for (at, want) in cases {
        assert_eq!(expired(&l, t(at)), want, "at {at}");
    }
    let mut never = l.clone();
    never.spec.as_mut().expect("spec").renew_time = None;
    assert!(expired(&never, t(0)));
}

#[test]
fn renewal_keeps_the_holder_and_counts_takeovers() {
    let first = lease("a", 0, 60);
    let renewed = desired(
        Some(first.clone()),
        "x",
        "prod",
        "a",
        Duration::from_secs(60),
        t(10),
    );
    let spec = renewed.spec.as_ref().expect("spec");
    assert_eq!(spec.renew_time.as_ref().map(|m| m.0), Some(t(10)));
    assert_eq!(spec.acquire_time.as_ref().map(|m| m.0), Some(t(0)));
    assert_eq!(spec.lease_transitions, Some(1));
    let taken = desired(
        Some(first),
        "x",
        "prod",
        "b",
        Duration::from_secs(60),
        t(20),
    );
    assert_eq!(
        taken.spec.as_ref().and_then(|s| s.lease_transitions),
        Some(2)
    );
}

#[test]
fn adoption_takes_unfinished_jobs_of_controllers_without_a_live_lease() {
    let leases = vec![lease("alive", 100, 60), lease("dead", 0, 60)];
    let jobs = vec![
        job("j-alive", "alive", false),
        job("j-dead", "dead", false),
        job("j-dead-done", "dead", true),
        job("j-nolease", "vanished", false),
        job("j-mine", "me", false),
    ];
    let adopted: Vec<String> = to_adopt(&jobs, &leases, "me", t(120))
        .into_iter()
        .map(|a| a.job)
        .collect();
    assert_eq!(adopted, ["j-dead", "j-nolease"]);
    let a = &to_adopt(&jobs, &leases, "me", t(120))[0];
    assert_eq!(
        (a.resource_version.as_str(), a.from.as_str()),
        ("7", "dead")
    );
}

#[test]
fn stale_leases_go_once_no_job_names_their_holder() {
    let leases = vec![
        lease("alive", 100, 60),
        lease("dead", 0, 60),
        lease("dead2", 0, 60),
    ];
    let jobs = vec![job("j", "dead", false)];
    let stale = stale_leases(&jobs, &leases, "me", t(120));
    assert_eq!(
        stale,
        [(lease_name("prod", "dead2"), "uid-dead2".to_string())]
    );
}

#[test]
fn the_keeper_creates_then_renews_then_releases() {
    let cluster = Arc::new(FakeCluster::default());
    let mut keeper = LeaseKeeper::new(cluster.clone(), "prod", "me", Duration::from_secs(60));
    assert!(!keeper.healthy());
    keeper.renew().expect("create");
    keeper.renew().expect("renew");
    assert!(keeper.healthy());
    let calls = cluster.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("create_lease")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("replace_lease")),
        "{calls:?}"
    );
    keeper.release();
    assert!(cluster.leases.lock().expect("leases").is_empty());
}
