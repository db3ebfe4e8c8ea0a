//! The housekeeper's reconcile and scan, driven with fakes.

use std::collections::BTreeMap;

use crossbeam_channel::unbounded;
use k8s_openapi::api::batch::v1::Job;

use super::*;
use crate::controller::fakes::{FakeCluster, FakePlatform, summary};
use crate::controller::labels::{ATTEMPT, CONTROLLER, TASK_ID};

struct Rig {
    keeper: Housekeeper,
    platform: Arc<FakePlatform>,
    cluster: Arc<FakeCluster>,
    limiter: Receiver<LimiterInput>,
    supervisor: Receiver<SupervisorInput>,
}

fn rig() -> Rig {
    let platform = Arc::new(FakePlatform::default());
    let cluster = Arc::new(FakeCluster::default());
    let (limiter_tx, limiter) = unbounded();
    let (supervisor_tx, supervisor) = unbounded();
    let lease = LeaseKeeper::new(cluster.clone(), "prod", "me", lease::DEFAULT_DURATION);
    let keeper = Housekeeper::new(
        HousekeeperConfig::new("prod", "me"),
        platform.clone(),
        cluster.clone(),
        lease,
        limiter_tx,
        supervisor_tx,
        EventRecorder::new(cluster.clone(), "me"),
        Arc::new(Metrics::default()),
        Lifecycle::new(),
    );
    Rig {
        keeper,
        platform,
        cluster,
        limiter,
        supervisor,
    }
}

fn job(rig: &Rig, name: &str, task: &str, attempt: u32, controller: &str) {
    let mut j = Job::default();
    j.metadata.name = Some(name.into());
    j.metadata.annotations = Some(BTreeMap::from([
        (TASK_ID.to_string(), task.to_string()),
        (ATTEMPT.to_string(), attempt.to_string()),
        (CONTROLLER.to_string(), controller.to_string()),
    ]));
    rig.cluster.create_job(&j).expect("job");
}

#[test]
fn reconcile_launches_held_tasks_and_releases_jobs_of_tasks_that_moved_on() {
    let mut rig = rig();
    rig.platform.task_is(summary(
        "t-held",
        1,
        TaskStatus::Acquired,
        Some("agent-self"),
    ));
    rig.platform
        .task_is(summary("t-reoffered", 2, TaskStatus::Queued, None));
    rig.platform.task_is(summary(
        "t-running",
        1,
        TaskStatus::Running,
        Some("agent-gone"),
    ));
    job(&rig, "j-reoffered", "t-reoffered", 1, "me");
    job(&rig, "j-running", "t-running", 1, "me");
    rig.keeper.reconcile("test");
    let launched: Vec<String> = rig
        .limiter
        .try_iter()
        .filter_map(|m| match m {
            LimiterInput::Held(t) => Some(t.identity.task_id),
            _ => None,
        })
        .collect();
    assert_eq!(launched, ["t-held"]);
    let unheld: Vec<(String, u32)> = rig
        .supervisor
        .try_iter()
        .filter_map(|m| match m {
            SupervisorInput::Unheld { task_id, attempt } => Some((task_id, attempt)),
            _ => None,
        })
        .collect();
    assert_eq!(unheld, [("t-reoffered".to_string(), 1)]);
    assert!(rig.cluster.calls().contains(&"list_jobs ".to_string()));
}

#[test]
fn a_scan_adopts_jobs_of_a_controller_without_a_lease_once_its_own_lease_is_healthy() {
    let mut rig = rig();
    job(&rig, "j-orphan", "t1", 1, "vanished");
    rig.keeper.scan();
    assert!(
        !rig.cluster
            .calls()
            .iter()
            .any(|c| c.starts_with("set_job_controller")),
        "no adoption without a healthy own Lease"
    );
    rig.keeper.tick();
    let jobs = rig.cluster.jobs.lock().expect("jobs");
    let ann = jobs["j-orphan"]
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(ann.get(CONTROLLER).map(String::as_str), Some("me"));
    drop(jobs);
    assert!(
        rig.cluster
            .event_reasons()
            .contains(&reason::ADOPTED.to_string())
    );
}

#[test]
fn a_task_whose_job_this_process_made_is_not_launched_again_when_the_job_is_gone() {
    // Someone deleted the Job before the worker started: the supervisor fails the task, and until
    // that report lands the platform still lists the task as held without a Job.
    let launching = Launching::default();
    let mut rig = rig();
    rig.keeper = rig.keeper.with_launching(launching.clone());
    for task in ["t-deleted", "t-never", "t-retried"] {
        let attempt = if task == "t-retried" { 2 } else { 1 };
        rig.platform.task_is(summary(
            task,
            attempt,
            TaskStatus::Acquired,
            Some("agent-self"),
        ));
    }
    launching.mark_launched("t-deleted", 1);
    // Launched at attempt 1, now held at attempt 2 (offered again): the new attempt needs a Job.
    launching.mark_launched("t-retried", 1);
    rig.keeper.reconcile("test");
    let mut launched: Vec<String> = rig
        .limiter
        .try_iter()
        .filter_map(|m| match m {
            LimiterInput::Held(t) => Some(t.identity.task_id),
            _ => None,
        })
        .collect();
    launched.sort();
    assert_eq!(launched, ["t-never", "t-retried"]);
    assert!(launching.launched("t-deleted", 1), "still held: remembered");
}

#[test]
fn a_cancel_of_a_task_launched_just_now_is_left_to_the_supervisor() {
    // The reconcile listed the Jobs before this task's Job was created and the held tasks after
    // its cancel: it looks held, cancelled and without a Job, but its Job exists. The supervisor
    // deletes that Job and confirms the cancel (with its Event); the reconcile stays out of it.
    let launching = Launching::default();
    let mut rig = rig();
    rig.keeper = rig.keeper.with_launching(launching.clone());
    for task in ["t-just-launched", "t-never-launched"] {
        let mut s = summary(task, 1, TaskStatus::Acquired, Some("agent-self"));
        s.cancel_requested = Some(crate::platform::CancelMode::Graceful);
        rig.platform.task_is(s);
    }
    launching.mark_launched("t-just-launched", 1);
    rig.keeper.reconcile("test");
    let confirmed: Vec<String> = rig
        .platform
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("confirm-cancel"))
        .collect();
    assert_eq!(confirmed, ["confirm-cancel t-never-launched"]);
}
