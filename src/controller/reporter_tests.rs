//! The reporter's `decide` table and `handle`, driven with fakes of the platform and the cluster.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::batch::v1::Job;

use super::*;
use crate::controller::fakes::{FakeCluster, FakePlatform, kube_error, platform_error, summary};
use crate::model::{FailureReason, TaskFailed};

fn identity(id: &str, attempt: u32) -> TaskIdentity {
    TaskIdentity {
        task_id: id.into(),
        run_id: format!("run-{id}"),
        stage: "plan".into(),
        workspace_id: "ws-1".into(),
        environment_id: "env-1".into(),
        attempt,
    }
}

#[test]
fn decide_table() {
    let me = "agent-self";
    let cases = [
        (TaskStatus::Acquired, 1, Some(me), false, Decision::Report),
        (TaskStatus::Running, 1, Some(me), true, Decision::Report),
        (TaskStatus::Running, 1, Some(me), false, Decision::Started),
        (TaskStatus::Errored, 1, Some(me), false, Decision::Final),
        (TaskStatus::Canceled, 1, Some(me), true, Decision::Final),
        (TaskStatus::Acquired, 2, Some(me), false, Decision::Stale),
        (TaskStatus::Queued, 2, None, false, Decision::Stale),
        (
            TaskStatus::Acquired,
            1,
            Some("agent-other"),
            false,
            Decision::NotOurs,
        ),
        (
            TaskStatus::Running,
            1,
            Some("agent-other"),
            true,
            Decision::NotOurs,
        ),
    ];
    for (status, attempt, agent, after_start, want) in cases {
        let s = summary("t1", attempt, status, agent);
        assert_eq!(
            decide(&s, &identity("t1", 1), me, after_start),
            want,
            "{status:?} attempt {attempt} agent {agent:?} after_start {after_start}"
        );
    }
    assert!(!Decision::Started.deletes_job());
    assert!(Decision::Stale.deletes_job());
}

struct Rig {
    reporter: Reporter,
    platform: Arc<FakePlatform>,
    cluster: Arc<FakeCluster>,
    lifecycle: Lifecycle,
}

fn rig() -> Rig {
    let platform = Arc::new(FakePlatform::default());
    let cluster = Arc::new(FakeCluster::default());
    let lifecycle = Lifecycle::new();
    let reporter = Reporter::new(
        platform.clone(),
        cluster.clone(),
        EventRecorder::new(cluster.clone(), "ctl-0"),
        Arc::new(Metrics::default()),
        lifecycle.clone(),
    );
    Rig {
        reporter,
        platform,
        cluster,
        lifecycle,
    }
}

fn job(rig: &Rig, name: &str) -> JobRef {
    let mut job = Job::default();
    job.metadata.name = Some(name.into());
    let created = rig.cluster.create_job(&job).expect("job");
    JobRef {
        name: name.into(),
        uid: created.metadata.uid.expect("uid"),
    }
}

fn fail(id: &str, job: Option<JobRef>, confirm_final: bool) -> ReporterInput {
    ReporterInput::Fail {
        failed: TaskFailed {
            identity: identity(id, 1),
            reason: FailureReason::ImagePull,
            message: "container worker cannot start: ErrImagePull".into(),
        },
        job,
        confirm_final,
    }
}

#[test]
fn a_failure_is_reported_recorded_and_its_job_deleted() {
    let mut rig = rig();
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Acquired, Some("agent-self")));
    let j = job(&rig, "j1");
    assert_eq!(
        rig.reporter.handle(fail("t1", Some(j), false)),
        Handled::Reported
    );
    assert_eq!(rig.platform.calls(), ["task t1", "fail t1"]);
    assert!(rig.cluster.jobs.lock().expect("jobs").is_empty());
    assert_eq!(rig.cluster.event_reasons(), [reason::FAILED]);
    assert_eq!(
        rig.reporter.metrics.failed_count(FailureReason::ImagePull),
        1
    );
}

#[test]
fn nothing_is_reported_for_tasks_that_moved_on_and_started_jobs_are_left_alone() {
    let cases = [
        (TaskStatus::Finished, "agent-self", 1, Decision::Final, true),
        (TaskStatus::Acquired, "agent-self", 2, Decision::Stale, true),
        (
            TaskStatus::Acquired,
            "agent-other",
            1,
            Decision::NotOurs,
            true,
        ),
        (
            TaskStatus::Running,
            "agent-self",
            1,
            Decision::Started,
            false,
        ),
    ];
    for (status, agent, attempt, decision, deleted) in cases {
        let mut rig = rig();
        rig.platform
            .task_is(summary("t1", attempt, status, Some(agent)));
        let j = job(&rig, "j1");
        assert_eq!(
            rig.reporter.handle(fail("t1", Some(j), false)),
            Handled::Skipped(decision)
        );
        assert!(!rig.platform.calls().iter().any(|c| c.starts_with("fail")));
        assert_eq!(
            rig.cluster.jobs.lock().expect("jobs").is_empty(),
            deleted,
            "{decision:?}"
        );
    }
}

#[test]
fn an_overruled_verdict_is_told_to_the_supervisor() {
    let mut rig = rig();
    let (tx, rx) = crossbeam_channel::unbounded();
    rig.reporter = rig.reporter.with_supervisor(tx);
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Running, Some("agent-self")));
    assert_eq!(
        rig.reporter.handle(fail("t1", None, false)),
        Handled::Skipped(Decision::Started)
    );
    assert!(matches!(
        rx.try_recv(),
        Ok(SupervisorInput::Started { attempt: 1, .. })
    ));
}

#[test]
fn retryable_trouble_is_queued_and_a_401_stops_intake() {
    let mut rig = rig();
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Acquired, Some("agent-self")));
    rig.platform.fail_next("fail", platform_error(503, None));
    assert_eq!(
        rig.reporter.handle(fail("t1", None, false)),
        Handled::Retrying
    );
    assert_eq!(rig.reporter.pending(), 1);
    rig.reporter.retry_due(Instant::now() + RETRY_MAX);
    assert_eq!(rig.reporter.pending(), 0);
    assert_eq!(
        rig.platform.calls(),
        ["task t1", "fail t1", "task t1", "fail t1"]
    );

    rig.platform.fail_next("task", platform_error(401, None));
    assert_eq!(
        rig.reporter.handle(fail("t1", None, false)),
        Handled::Dropped
    );
    assert!(!rig.lifecycle.accepting());
}

#[test]
fn a_kubernetes_error_on_delete_is_retried() {
    let mut rig = rig();
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Errored, Some("agent-self")));
    let j = job(&rig, "j1");
    rig.cluster.fail_next("delete_job", kube_error(500));
    assert_eq!(
        rig.reporter.handle(fail("t1", Some(j), false)),
        Handled::Retrying
    );
    rig.reporter.retry_due(Instant::now() + RETRY_MAX);
    assert!(rig.cluster.jobs.lock().expect("jobs").is_empty());
}

#[test]
fn a_cancel_before_start_deletes_the_job_then_confirms() {
    let mut rig = rig();
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Acquired, Some("agent-self")));
    let j = job(&rig, "j1");
    let input = ReporterInput::CancelUnstarted {
        identity: identity("t1", 1),
        job: j,
    };
    assert_eq!(rig.reporter.handle(input), Handled::Reported);
    assert_eq!(rig.platform.calls(), ["task t1", "confirm-cancel t1"]);
    assert!(rig.cluster.jobs.lock().expect("jobs").is_empty());
    assert_eq!(rig.cluster.event_reasons(), [reason::CANCELLED]);

    // The worker won the race: its Job stays.
    let mut rig2 = self::rig();
    rig2.platform
        .task_is(summary("t2", 1, TaskStatus::Running, Some("agent-self")));
    let j = job(&rig2, "j2");
    let input = ReporterInput::CancelUnstarted {
        identity: identity("t2", 1),
        job: j,
    };
    assert_eq!(
        rig2.reporter.handle(input),
        Handled::Skipped(Decision::Started)
    );
    assert_eq!(rig2.cluster.jobs.lock().expect("jobs").len(), 1);
}

#[test]
fn a_force_cancel_deadline_deletes_a_job_still_running() {
    let mut rig = rig();
    rig.platform
        .task_is(summary("t1", 1, TaskStatus::Running, Some("agent-self")));
    let j = job(&rig, "j1");
    let input = ReporterInput::ForceCancelExpired {
        identity: identity("t1", 1),
        job: j,
    };
    assert_eq!(rig.reporter.handle(input), Handled::Deleted);
    assert_eq!(rig.cluster.event_reasons(), [reason::FORCE_CANCELLED]);
}
