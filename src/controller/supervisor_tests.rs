//! The supervisor actor's `handle`, driven with watch events and inputs; the fake cluster answers
//! its Event reads. The decisions themselves are tested in `supervision_tests*.rs`; here: which
//! Jobs are this controller's, when it judges, what it sends where, and that it judges once.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Receiver, unbounded};
use serde_json::{Value, json};

use super::*;
use crate::controller::fakes::FakeCluster;
use crate::model::{CancelRequested, FailureReason, TaskIdentity};

const ME: &str = "ctl-0";

fn t(secs: i64) -> Timestamp {
    let t0: Timestamp = "2026-03-01T10:00:00Z".parse().expect("time");
    t0.checked_add(jiff::SignedDuration::from_secs(secs))
        .expect("time")
}

fn job_json(task: &str, uid: &str, controller: &str, attempt: u32, status: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": format!("job-{task}"), "namespace": "ci", "uid": uid,
                     "creationTimestamp": t(0).to_string(),
                     "labels": {"scalr.io/task-id": task, "scalr.io/controller": controller},
                     "annotations": {"scalr.io/task-id": task, "scalr.io/run-id": "run-1",
                                     "scalr.io/stage": "plan", "scalr.io/attempt": attempt.to_string(),
                                     "scalr.io/controller": controller}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "scalr/agent:1"}]}}},
        "status": status
    })
}

fn job(task: &str, uid: &str, controller: &str) -> Job {
    serde_json::from_value(job_json(task, uid, controller, 1, json!({"active": 1}))).expect("job")
}

fn job_with(task: &str, uid: &str, status: Value) -> Job {
    serde_json::from_value(job_json(task, uid, ME, 1, status)).expect("job")
}

fn pod(task: &str, job_uid: &str, worker_state: Value, started: bool) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{task}"), "namespace": "ci", "uid": format!("pod-uid-{task}"),
                     "creationTimestamp": t(1).to_string(),
                     "labels": {"scalr.io/task-id": task},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": format!("job-{task}"),
                                          "uid": job_uid, "controller": true}]},
        "spec": {"nodeName": "node-1", "containers": [{"name": "worker", "image": "scalr/agent:1"}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "worker", "image": "scalr/agent:1", "imageID": "", "ready": false,
             "restartCount": 0, "started": started, "state": worker_state}]}
    }))
    .expect("pod")
}

fn running() -> Value {
    json!({"running": {"startedAt": t(5).to_string()}})
}

fn launched(task: &str, uid: &str) -> SupervisorInput {
    SupervisorInput::Launched(TaskLaunched {
        identity: TaskIdentity {
            task_id: task.into(),
            run_id: "run-1".into(),
            stage: "plan".into(),
            workspace_id: "ws-1".into(),
            environment_id: "env-1".into(),
            attempt: 1,
        },
        job_name: format!("job-{task}"),
        job_uid: uid.into(),
        created_at: t(0),
    })
}

struct Rig {
    sup: Supervisor,
    limiter: Receiver<LimiterInput>,
    reporter: Receiver<ReporterInput>,
}

impl Rig {
    fn new() -> Rig {
        let (limiter_tx, limiter) = unbounded();
        let (reporter_tx, reporter) = unbounded();
        let sup = Supervisor::new(
            SupervisorConfig::new(ME, SupervisionSettings::default()),
            Arc::new(FakeCluster::default()),
            limiter_tx,
            reporter_tx,
            Arc::new(Metrics::default()),
            Arc::new(AtomicBool::new(false)),
        );
        Rig {
            sup,
            limiter,
            reporter,
        }
    }

    fn synced(mut self, jobs: Vec<Job>, pods: Vec<Pod>) -> Rig {
        self.sup
            .handle(SupervisorEvent::Pods(WatchEvent::Restarted(pods)), t(1));
        self.sup
            .handle(SupervisorEvent::Jobs(WatchEvent::Restarted(jobs)), t(1));
        self
    }

    fn at(&mut self, secs: i64, event: SupervisorEvent) {
        self.sup.handle(event, t(secs));
    }

    fn reports(&self) -> Vec<ReporterInput> {
        self.reporter.try_iter().collect()
    }

    fn limiter(&self) -> Vec<LimiterInput> {
        self.limiter.try_iter().collect()
    }
}

fn failure(reports: &[ReporterInput]) -> Option<(FailureReason, bool, Option<JobRef>)> {
    reports.iter().find_map(|r| match r {
        ReporterInput::Fail {
            failed,
            confirm_final,
            job,
        } => Some((failed.reason, *confirm_final, job.clone())),
        _ => None,
    })
}

#[test]
fn nothing_is_judged_until_both_watches_have_listed() {
    let mut rig = Rig::new();
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        0,
        SupervisorEvent::Jobs(WatchEvent::Restarted(vec![job("t1", "u1", ME)])),
    );
    rig.at(10_000, SupervisorEvent::Tick);
    assert!(
        rig.reports().is_empty(),
        "judged before the pods were listed"
    );
    rig.at(10_000, SupervisorEvent::Pods(WatchEvent::Restarted(vec![])));
    assert_eq!(
        failure(&rig.reports()).map(|f| f.0),
        Some(FailureReason::StartupTimeout)
    );
}

#[test]
fn a_started_worker_moves_the_task_on_and_only_then() {
    let mut rig = Rig::new().synced(vec![], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        1,
        SupervisorEvent::Jobs(WatchEvent::Applied(job("t1", "u1", ME))),
    );
    assert_eq!(rig.sup.unstarted(), 1);
    rig.at(
        2,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", running(), false))),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::Scheduled));
    rig.at(
        3,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", running(), true))),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    assert_eq!(rig.sup.unstarted(), 0);
    let seen = rig.limiter();
    assert!(seen.iter().any(|m| matches!(
        m,
        LimiterInput::JobChanged(JobSeen {
            terminal: false,
            ..
        })
    )));
    assert!(rig.reports().is_empty());
}

#[test]
fn an_image_that_can_never_be_pulled_fails_the_task_and_names_the_job() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    let bad = pod(
        "t1",
        "u1",
        json!({"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}),
        false,
    );
    rig.at(2, SupervisorEvent::Pods(WatchEvent::Applied(bad)));
    let (reason, confirm_final, job) = failure(&rig.reports()).expect("failed");
    assert_eq!((reason, confirm_final), (FailureReason::ImagePull, false));
    assert_eq!(job.map(|j| j.uid), Some("u1".to_string()));
}

#[test]
fn a_job_deleted_before_the_start_fails_the_task_and_returns_the_slot() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        3,
        SupervisorEvent::Jobs(WatchEvent::Deleted(job("t1", "u1", ME))),
    );
    let (reason, _, job) = failure(&rig.reports()).expect("failed");
    assert_eq!((reason, job), (FailureReason::JobDeleted, None));
    let sent = rig.limiter();
    assert!(
        sent.iter()
            .any(|m| matches!(m, LimiterInput::JobGone { .. }))
    );
    assert!(sent.iter().any(|m| matches!(m, LimiterInput::SlotFreed(_))));
    assert_eq!(rig.sup.phase("t1"), None);
}

#[test]
fn a_cancel_before_the_start_deletes_the_job_without_a_failure() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    // The cancel arrives before the launch is known: it waits for it.
    rig.at(
        0,
        SupervisorEvent::Input(SupervisorInput::CancelRequested(CancelRequested {
            task_id: "t1".into(),
            mode: CancelMode::Graceful,
        })),
    );
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::CancelUnstarted { .. }]
    ));
    rig.at(
        2,
        SupervisorEvent::Jobs(WatchEvent::Deleted(job("t1", "u1", ME))),
    );
    let after = rig.reports();
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(rig.sup.phase("t1"), None);
}

#[test]
fn a_force_cancel_of_a_started_task_deletes_the_job_after_the_deadline() {
    let mut rig = Rig::new().synced(
        vec![job("t1", "u1", ME)],
        vec![pod("t1", "u1", running(), true)],
    );
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    rig.at(
        10,
        SupervisorEvent::Input(SupervisorInput::CancelRequested(CancelRequested {
            task_id: "t1".into(),
            mode: CancelMode::Force,
        })),
    );
    assert_eq!(rig.sup.next_deadline(), Some(t(70)));
    rig.at(69, SupervisorEvent::Tick);
    assert!(rig.reports().is_empty());
    rig.at(70, SupervisorEvent::Tick);
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::ForceCancelExpired { .. }]
    ));
}

fn cancel(rig: &mut Rig, secs: i64, mode: CancelMode) {
    rig.at(
        secs,
        SupervisorEvent::Input(SupervisorInput::CancelRequested(CancelRequested {
            task_id: "t1".into(),
            mode,
        })),
    );
}

#[test]
fn a_cancel_pair_seen_before_the_start_gets_its_deadline_when_the_platform_says_started() {
    // The worker started, but the Pods watch has not shown it yet: the graceful cancel goes to
    // the reporter as an unstarted cancel; the force cancel right after must not be lost.
    let creating = json!({"waiting": {"reason": "ContainerCreating"}});
    let mut rig = Rig::new().synced(
        vec![job("t1", "u1", ME)],
        vec![pod("t1", "u1", creating, false)],
    );
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    cancel(&mut rig, 10, CancelMode::Graceful);
    cancel(&mut rig, 11, CancelMode::Force);
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::CancelUnstarted { .. }]
    ));
    // The reporter found the worker started (the platform overruled the unstarted cancel).
    rig.at(
        20,
        SupervisorEvent::Input(SupervisorInput::Started {
            task_id: "t1".into(),
            attempt: 1,
        }),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    // Counted from the force cancel, not from when the start was learned.
    assert_eq!(rig.sup.entries["t1"].force_deadline, Some(t(71)));
    // The watch catches up; nothing else is due before the deadline.
    rig.at(
        21,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", running(), true))),
    );
    assert_eq!(rig.sup.next_deadline(), Some(t(71)));
    rig.at(70, SupervisorEvent::Tick);
    assert!(rig.reports().is_empty());
    rig.at(71, SupervisorEvent::Tick);
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::ForceCancelExpired { .. }]
    ));
    rig.at(200, SupervisorEvent::Tick);
    assert!(rig.reports().is_empty(), "the deadline fires once");
}

#[test]
fn a_cancel_pair_seen_before_the_start_gets_its_deadline_when_the_pod_shows_the_worker() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    cancel(&mut rig, 10, CancelMode::Graceful);
    cancel(&mut rig, 11, CancelMode::Force);
    let _ = rig.reports();
    rig.at(
        12,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", running(), true))),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    assert_eq!(rig.sup.next_deadline(), Some(t(71)));
    rig.at(71, SupervisorEvent::Tick);
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::ForceCancelExpired { .. }]
    ));
}

#[test]
fn a_graceful_cancel_alone_arms_no_deadline_when_the_start_is_learned() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    cancel(&mut rig, 10, CancelMode::Graceful);
    let _ = rig.reports();
    rig.at(
        12,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", running(), true))),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    assert_eq!(rig.sup.next_deadline(), None);
}

#[test]
fn jobs_of_other_controllers_are_ignored_and_a_job_adopted_away_is_forgotten() {
    let mut rig = Rig::new().synced(vec![job("t2", "u2", "ctl-other")], vec![]);
    assert_eq!(rig.sup.phase("t2"), None);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        1,
        SupervisorEvent::Jobs(WatchEvent::Applied(job("t1", "u1", ME))),
    );
    rig.limiter();
    rig.at(
        2,
        SupervisorEvent::Jobs(WatchEvent::Applied(job("t1", "u1", "ctl-other"))),
    );
    assert_eq!(rig.sup.phase("t1"), None);
    assert!(matches!(
        rig.limiter().as_slice(),
        [LimiterInput::JobGone { .. }]
    ));
    rig.at(10_000, SupervisorEvent::Tick);
    assert!(rig.reports().is_empty());
}

#[test]
fn jobs_found_at_a_restart_are_supervised_and_judged_once() {
    let failed = job_with(
        "t1",
        "u1",
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                               "message": "Job has reached the specified backoff limit"}]}),
    );
    let mut rig = Rig::new().synced(
        vec![failed.clone(), job("t2", "u2", ME)],
        vec![pod("t2", "u2", running(), true)],
    );
    assert_eq!(rig.sup.phase("t2"), Some(Phase::WorkerStarted));
    assert_eq!(
        failure(&rig.reports()).map(|f| f.0),
        Some(FailureReason::JobFailed)
    );
    rig.at(
        5,
        SupervisorEvent::Jobs(WatchEvent::Applied(failed.clone())),
    );
    rig.at(
        6,
        SupervisorEvent::Jobs(WatchEvent::Restarted(vec![failed])),
    );
    assert!(
        rig.reports().is_empty(),
        "a judged Job is never judged again"
    );
    let listed = rig.limiter();
    assert!(
        listed
            .iter()
            .any(|m| matches!(m, LimiterInput::JobsListed(l) if l.iter().any(|j| j.terminal)))
    );
}

#[test]
fn a_replaced_attempt_is_dropped_without_a_verdict() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        1,
        SupervisorEvent::Input(SupervisorInput::Replacing {
            task_id: "t1".into(),
            attempt: 1,
        }),
    );
    rig.at(
        2,
        SupervisorEvent::Jobs(WatchEvent::Deleted(job("t1", "u1", ME))),
    );
    assert!(rig.reports().is_empty());
}

#[test]
fn a_task_no_longer_held_has_its_unstarted_job_deleted_even_if_said_early() {
    let mut rig = Rig::new();
    rig.at(
        0,
        SupervisorEvent::Input(SupervisorInput::Unheld {
            task_id: "t1".into(),
            attempt: 1,
        }),
    );
    let mut rig = {
        rig = rig.synced(vec![job("t1", "u1", ME)], vec![]);
        rig
    };
    assert!(matches!(
        rig.reports().as_slice(),
        [ReporterInput::DeleteJob { .. }]
    ));
    rig.at(
        2,
        SupervisorEvent::Jobs(WatchEvent::Deleted(job("t1", "u1", ME))),
    );
    assert!(rig.reports().is_empty(), "no failure for a released Job");
}

#[test]
fn a_lost_worker_is_confirmed_with_the_platform_after_the_grace() {
    let mut rig = Rig::new().synced(
        vec![job("t1", "u1", ME)],
        vec![pod("t1", "u1", running(), true)],
    );
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    let mut gone = pod("t1", "u1", running(), true);
    gone.metadata.name = Some("pod-t1".into());
    rig.at(30, SupervisorEvent::Pods(WatchEvent::Deleted(gone)));
    assert!(rig.reports().is_empty());
    let grace = SupervisionSettings::default().final_status_grace;
    rig.at(30 + grace.as_secs() as i64, SupervisorEvent::Tick);
    let (reason, confirm_final, _) = failure(&rig.reports()).expect("confirmed");
    assert_eq!((reason, confirm_final), (FailureReason::WorkerLost, true));
    let _ = Duration::ZERO;
}

#[test]
fn the_platform_saying_the_worker_started_makes_a_found_job_a_started_task() {
    // Adopted (or found at a restart) after its pod was gone: the watches never showed the worker
    // running, so only the platform can say it started; then the missing pod means a lost worker.
    let mut rig = Rig::new().synced(vec![], vec![]);
    rig.at(
        0,
        SupervisorEvent::Input(SupervisorInput::Started {
            task_id: "t1".into(),
            attempt: 1,
        }),
    );
    rig.at(
        1,
        SupervisorEvent::Jobs(WatchEvent::Applied(job("t1", "u1", ME))),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    let grace = SupervisionSettings::default().final_status_grace.as_secs() as i64;
    rig.at(1 + grace, SupervisorEvent::Tick);
    let (reason, confirm_final, _) = failure(&rig.reports()).expect("confirmed");
    assert_eq!((reason, confirm_final), (FailureReason::WorkerLost, true));
}

#[test]
fn a_verdict_the_platform_overruled_reopens_supervision() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(10_000, SupervisorEvent::Tick);
    assert_eq!(
        failure(&rig.reports()).map(|f| f.0),
        Some(FailureReason::StartupTimeout)
    );
    // The reporter found the task running: the worker owns it, supervision goes on.
    rig.at(
        10_001,
        SupervisorEvent::Input(SupervisorInput::Started {
            task_id: "t1".into(),
            attempt: 1,
        }),
    );
    assert_eq!(rig.sup.phase("t1"), Some(Phase::WorkerStarted));
    assert!(
        rig.sup.next_deadline().is_some(),
        "the lost pod is judged after the grace"
    );
}

#[test]
fn a_failure_seen_on_the_pod_before_the_jobs_watch_shows_the_job_still_names_the_job() {
    // The Pods watch is ahead of the Jobs watch: the pod already says the image is invalid.
    let mut rig = Rig::new().synced(vec![], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    let invalid = json!({"waiting": {"reason": "InvalidImageName", "message": "bad reference"}});
    rig.at(
        1,
        SupervisorEvent::Pods(WatchEvent::Applied(pod("t1", "u1", invalid, false))),
    );
    let (reason, _, job) = failure(&rig.reports()).expect("failed at once");
    assert_eq!(reason, FailureReason::ImagePull);
    assert_eq!(
        job.map(|j| (j.name, j.uid)),
        Some(("job-t1".to_string(), "u1".to_string())),
        "the Job gets the Event and is deleted"
    );
}

#[test]
fn a_job_known_gone_is_not_named_by_its_failure() {
    let mut rig = Rig::new().synced(vec![job("t1", "u1", ME)], vec![]);
    rig.at(0, SupervisorEvent::Input(launched("t1", "u1")));
    rig.at(
        2,
        SupervisorEvent::Jobs(WatchEvent::Deleted(job("t1", "u1", ME))),
    );
    let (reason, _, job) = failure(&rig.reports()).expect("failed");
    assert_eq!(reason, FailureReason::JobDeleted);
    assert!(job.is_none(), "nothing to delete or annotate");
}
