//! The launcher's `handle`, driven directly with fakes of the platform and the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};

use super::*;
use crate::controller::fakes::{FakeCluster, FakePlatform, kube_error, platform_error, summary};
use crate::controller::labels::{ATTEMPT, TASK_ID};
use crate::controller::template::tests::chart_fixture;
use crate::model::{TaskAcquired, TaskOffered};
use crate::platform::TaskStatus;

struct Rig {
    launcher: Launcher,
    platform: Arc<FakePlatform>,
    cluster: Arc<FakeCluster>,
    limiter: Receiver<LimiterInput>,
    supervisor: Receiver<SupervisorInput>,
    reporter: Receiver<ReporterInput>,
}

fn rig() -> Rig {
    let platform = Arc::new(FakePlatform::default());
    let cluster = Arc::new(FakeCluster::default());
    *cluster.template.lock().expect("template") = Some(chart_fixture());
    let (limiter_tx, limiter) = unbounded();
    let (supervisor_tx, supervisor) = unbounded();
    let (reporter_tx, reporter) = unbounded();
    let launcher = Launcher {
        platform: platform.clone(),
        cluster: cluster.clone(),
        template: TemplateCache::new("scalr-agent-task-template", "ci"),
        context: LaunchContext {
            namespace: "ci".into(),
            instance: "prod".into(),
            controller_id: "ctl-0".into(),
        },
        limiter: limiter_tx,
        supervisor: supervisor_tx,
        reporter: reporter_tx,
        events: EventRecorder::new(cluster.clone(), "ctl-0"),
        metrics: Arc::new(Metrics::default()),
        lifecycle: Lifecycle::new(),
        launching: Launching::default(),
    };
    Rig {
        launcher,
        platform,
        cluster,
        limiter,
        supervisor,
        reporter,
    }
}

fn offer(rig: &Rig, id: &str, attempt: u32) -> LaunchRequest {
    rig.platform
        .task_is(summary(id, attempt, TaskStatus::Queued, None));
    LaunchRequest::Offer {
        offer: TaskOffered {
            identity: TaskIdentity {
                task_id: id.into(),
                run_id: format!("run-{id}"),
                stage: "plan".into(),
                workspace_id: "ws-1".into(),
                environment_id: "env-1".into(),
                attempt,
            },
            expires_at: None,
        },
        received_at: Instant::now(),
    }
}

/// A Job (or Secret) name the builder gives task `id`.
fn job_name(id: &str) -> String {
    format!("prod-scalr-agent-run-{id}-plan")
}

/// Puts an object for `task` at `attempt` under the name the launch will use.
fn existing_job(rig: &Rig, name: &str, task: &str, attempt: u32) {
    let mut job = Job::default();
    job.metadata.name = Some(name.into());
    job.metadata.annotations = Some(BTreeMap::from([
        (TASK_ID.to_string(), task.to_string()),
        (ATTEMPT.to_string(), attempt.to_string()),
    ]));
    rig.cluster.create_job(&job).expect("seed job");
}

#[test]
fn an_offer_becomes_an_owned_secret_and_a_job() {
    let mut rig = rig();
    let request = offer(&rig, "t1", 1);
    let Outcome::Launched(launched) = rig.launcher.handle(request) else {
        panic!("not launched: {:?}", rig.cluster.calls());
    };
    let name = job_name("t1");
    assert_eq!(launched.job_name, name);
    let secret =
        rig.cluster.secrets.lock().expect("secrets")[&format!("{name}-credentials")].clone();
    let owner = &secret.metadata.owner_references.expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", launched.job_uid.as_str())
    );
    assert!(matches!(rig.supervisor.try_recv(), Ok(SupervisorInput::Launched(l)) if l == launched));
    assert!(
        rig.limiter.try_recv().is_err(),
        "the watch confirms the slot, not the launcher"
    );
    assert_eq!(rig.cluster.event_reasons(), [reason::LAUNCHED]);
    assert_eq!(rig.platform.calls(), ["acquire t1"]);
    assert_eq!(rig.launcher.metrics.launcher_launched_total.get(), 1);
    assert_eq!(
        rig.launcher.metrics.launcher_launch_latency_seconds.count(),
        1
    );
}

#[test]
fn a_job_of_the_same_attempt_is_reused_and_one_of_an_older_attempt_replaced() {
    for (attempt_found, want_replace) in [(2, false), (1, true)] {
        let mut rig = rig();
        existing_job(&rig, &job_name("t1"), "t1", attempt_found);
        let request = offer(&rig, "t1", 2);
        let outcome = rig.launcher.handle(request);
        assert!(matches!(outcome, Outcome::Launched(_)), "{outcome:?}");
        let calls = rig.cluster.calls();
        assert_eq!(
            calls.iter().any(|c| c.starts_with("delete_job")),
            want_replace,
            "{calls:?}"
        );
        let replacing = rig
            .supervisor
            .try_iter()
            .any(|m| matches!(m, SupervisorInput::Replacing { attempt: 1, .. }));
        assert_eq!(replacing, want_replace);
        let jobs = rig.cluster.jobs.lock().expect("jobs");
        assert_eq!(
            super::attempt_of(&jobs[&job_name("t1")].metadata),
            attempt_found.max(2)
        );
    }
}

#[test]
fn a_newer_attempt_makes_the_launch_stale_and_leaves_no_secret() {
    let mut rig = rig();
    existing_job(&rig, &job_name("t1"), "t1", 3);
    let request = offer(&rig, "t1", 2);
    assert!(matches!(
        rig.launcher.handle(request),
        Outcome::Abandoned(_)
    ));
    assert!(rig.cluster.secrets.lock().expect("secrets").is_empty());
    assert!(matches!(
        rig.limiter.try_recv(),
        Ok(LimiterInput::SlotFreed(SlotFreed {
            cause: SlotFreedCause::LaunchAbandoned,
            ..
        }))
    ));
    assert!(rig.reporter.try_recv().is_err());
}

#[test]
fn a_same_named_job_of_another_task_fails_the_task_and_is_left_alone() {
    let mut rig = rig();
    existing_job(&rig, &job_name("t1"), "task-other", 1);
    let request = offer(&rig, "t1", 1);
    assert_eq!(
        rig.launcher.handle(request),
        Outcome::Failed(FailureReason::JobNameConflict)
    );
    match rig.reporter.try_recv() {
        Ok(ReporterInput::Fail { failed, job, .. }) => {
            assert_eq!(job, None, "the other task's Job must not be deleted");
            assert!(failed.message.contains("task-other"), "{}", failed.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        rig.cluster
            .jobs
            .lock()
            .expect("jobs")
            .contains_key(&job_name("t1"))
    );
    assert!(rig.cluster.secrets.lock().expect("secrets").is_empty());
}

#[test]
fn a_missing_or_invalid_template_fails_the_task_with_what_to_fix() {
    let mut bad = chart_fixture();
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"] = serde_json::json!([]);
    for (template, needle) in [(None, "not found in namespace ci"), (Some(bad), "runner")] {
        let mut rig = rig();
        *rig.cluster.template.lock().expect("template") = template;
        let request = offer(&rig, "t1", 1);
        assert_eq!(
            rig.launcher.handle(request),
            Outcome::Failed(FailureReason::TemplateInvalid)
        );
        match rig.reporter.try_recv() {
            Ok(ReporterInput::Fail { failed, .. }) => {
                assert!(failed.message.contains(needle), "{}", failed.message)
            }
            other => panic!("{other:?}"),
        }
        assert!(rig.cluster.jobs.lock().expect("jobs").is_empty());
    }
}

#[test]
fn refusals_fail_the_task_and_api_trouble_abandons_the_launch() {
    let cases = [
        (403, Some(FailureReason::LaunchRejected), "rbac.create"),
        (
            422,
            Some(FailureReason::LaunchRejected),
            "AgentTaskTemplate",
        ),
        (500, None, "reconcile"),
    ];
    for (status, want, needle) in cases {
        let mut rig = rig();
        rig.cluster.fail_next("create_job", kube_error(status));
        let request = offer(&rig, "t1", 1);
        let outcome = rig.launcher.handle(request);
        match want {
            Some(reason) => {
                assert_eq!(outcome, Outcome::Failed(reason), "{status}");
                let Ok(ReporterInput::Fail { failed, .. }) = rig.reporter.try_recv() else {
                    panic!("no failure reported for {status}");
                };
                assert!(failed.message.contains(needle), "{}", failed.message);
            }
            None => assert!(
                matches!(&outcome, Outcome::Abandoned(why) if why.contains(needle)),
                "{outcome:?}"
            ),
        }
        assert!(
            rig.cluster.secrets.lock().expect("secrets").is_empty(),
            "the token is not left behind ({status})"
        );
    }
}

#[test]
fn a_lost_acquire_touches_nothing_and_a_401_stops_intake() {
    let mut rig = rig();
    rig.platform
        .fail_next("acquire", platform_error(409, Some("already-acquired")));
    let request = offer(&rig, "t1", 1);
    assert!(matches!(
        rig.launcher.handle(request),
        Outcome::Abandoned(_)
    ));
    assert!(rig.cluster.calls().is_empty());
    assert_eq!(rig.launcher.metrics.launcher_acquire_lost_total.get(), 1);
    assert!(rig.launcher.lifecycle.accepting());

    rig.platform.fail_next("acquire", platform_error(401, None));
    let request = offer(&rig, "t2", 1);
    assert!(matches!(
        rig.launcher.handle(request),
        Outcome::Abandoned(_)
    ));
    assert!(!rig.launcher.lifecycle.accepting());
}

#[test]
fn a_held_task_is_launched_with_its_token_without_acquiring() {
    let mut rig = rig();
    let held = LaunchRequest::Held(TaskAcquired {
        identity: TaskIdentity {
            task_id: "t9".into(),
            run_id: "run-t9".into(),
            stage: "plan".into(),
            workspace_id: "ws-1".into(),
            environment_id: "env-1".into(),
            attempt: 1,
        },
        task_token: Secret::new("launcher-test-held-token"),
    });
    assert!(matches!(rig.launcher.handle(held), Outcome::Launched(_)));
    assert!(rig.platform.calls().is_empty());
}
