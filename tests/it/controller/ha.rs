//! Two controllers of one release: racing for the same tasks they never create two Jobs for one task
//! nor both act on one Job; the Jobs of a replica that stops (or whose Lease expires) are adopted.

use std::collections::BTreeMap;

use serde_json::json;

use super::world::{NS, World, container, running, waiting};
use crate::support::kube_sim::Propagation;
use crate::support::platform_sim::{Route, RunStatus, TaskState};

#[test]
fn two_controllers_racing_for_the_same_tasks_make_one_job_each() {
    let world = World::new();
    // Every polling agent is offered every task: both acquire the same ones, one wins each.
    world.platform.set_duplicate_offers(true);
    let a = world.start("ctl-a", 10);
    let b = world.start("ctl-b", 10);
    let runs = world.queue(20);
    let tasks: Vec<String> = runs.iter().map(|r| world.task_of(r)).collect();
    world.eventually("a Job for every task", |w| {
        tasks.iter().all(|t| !w.jobs_of(t).is_empty())
    });
    // The simulator logs a request just after answering it: wait for the log to catch up.
    let created = |w: &World| {
        w.kube
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.status == 201)
            .count()
    };
    world.eventually("every creation logged", |w| created(w) >= tasks.len());
    assert_eq!(created(&world), tasks.len(), "one Job per task");
    let mut per_controller: BTreeMap<String, usize> = BTreeMap::new();
    for task in &tasks {
        let jobs = world.jobs_of(task);
        assert_eq!(jobs.len(), 1);
        let on_job = jobs[0]["metadata"]["annotations"]["scalr.io/controller"]
            .as_str()
            .expect("controller")
            .to_string();
        let holder = world.platform.task(task).holder.expect("held");
        assert_eq!(
            world.platform.agent(&holder).name,
            on_job,
            "the Job names its acquirer"
        );
        *per_controller.entry(on_job).or_default() += 1;
    }
    assert_eq!(
        per_controller.len(),
        2,
        "both took tasks: {per_controller:?}"
    );
    let lost =
        a.metrics.launcher_acquire_lost_total.get() + b.metrics.launcher_acquire_lost_total.get();
    assert!(lost > 0, "the race happened");

    // Every pod fails at once: each task is failed exactly once, by the controller that holds it.
    for task in &tasks {
        let job = world.job_of(task);
        world.pod(
            &job,
            json!({"phase": "Pending", "containerStatuses": [
                container("worker", waiting("InvalidImageName", "bad"), false)]}),
        );
    }
    for run in &runs {
        world
            .platform
            .wait_for_run(run, super::world::WAIT, |s| s == RunStatus::Errored);
    }
    // The log records a request when it arrives and its status once answered.
    let fails: Vec<String> = world.platform_eventually("every failure answered", |p| {
        let fails = p.requests_of(Route::FailTask);
        fails
            .iter()
            .all(|r| r.status.is_some())
            .then(|| fails.iter().map(|r| r.to_string()).collect())
    });
    assert_eq!(fails.len(), tasks.len(), "{fails:#?}");
    assert!(fails.iter().all(|r| r.ends_with("-> 200")), "{fails:#?}");
}

#[test]
fn the_jobs_of_a_replica_that_stops_are_adopted() {
    let world = World::new();
    let a = world.start("ctl-a", 5);
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let job = world.job_of(&task);
    world.pod_with_worker(&job, running(), true);
    world
        .worker(&task, &job)
        .start()
        .expect("the worker starts");
    let b = world.start("ctl-b", 5);
    world.eventually("b ready", |_| b.ready());
    // An orderly stop drops a's Lease: b takes the running task's Job over.
    a.stop();
    world.eventually("the Job adopted by ctl-b", |w| {
        w.jobs_of(&task)
            .first()
            .is_some_and(|j| j["metadata"]["annotations"]["scalr.io/controller"] == "ctl-b")
    });
    let name = job["metadata"]["name"].as_str().expect("name");
    world.eventually("a TaskAdopted Event", |w| {
        w.controller_events(name)
            .iter()
            .any(|(r, _)| r == "TaskAdopted")
    });
    // The worker runs on; when its pod is lost, b (which does not hold the task) cleans the Job up
    // without trying to fail a task that is not its own.
    world
        .kube
        .delete("pods", NS, &format!("{name}-pod"), Propagation::Background);
    world.eventually("the lost worker's Job deleted by ctl-b", |w| {
        w.jobs_of(&task).is_empty()
    });
    assert!(
        world
            .platform
            .requests_of(Route::FailTask)
            .iter()
            .all(|r| r.status != Some(403)),
        "no controller acted on a task it does not hold"
    );
    assert_eq!(world.platform.task(&task).state, TaskState::Running);
}

#[test]
fn a_job_whose_controller_lease_expired_is_adopted() {
    let world = World::new();
    // A Job of controller "ghost", whose Lease ran out long ago.
    world.kube.put(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "prod-scalr-agent-run-ghost-plan", "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "scalr-agent", "app.kubernetes.io/component": "task",
                       "app.kubernetes.io/instance": "prod", "scalr.io/task-id": "task-ghost",
                       "scalr.io/controller": "ghost"},
            "annotations": {"scalr.io/task-id": "task-ghost", "scalr.io/attempt": "1",
                            "scalr.io/controller": "ghost"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "scalr/agent:1"}]}}}
    }));
    world.kube.put(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "scalr-agent-prod-ghost", "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "scalr-agent", "app.kubernetes.io/component": "controller",
                       "app.kubernetes.io/instance": "prod"}},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 10,
                 "renewTime": "2020-01-01T00:00:00.000000Z"}
    }));
    let _b = world.start("ctl-b", 5);
    world.eventually("the ghost's Job adopted", |w| {
        w.kube
            .get("jobs", NS, "prod-scalr-agent-run-ghost-plan")
            .is_some_and(|j| j["metadata"]["labels"]["scalr.io/controller"] == "ctl-b")
    });
    // Once no Job names the ghost, its stale Lease goes too.
    world.eventually("the stale Lease deleted", |w| {
        w.kube.get("leases", NS, "scalr-agent-prod-ghost").is_none()
    });
    let events = world.controller_events("prod-scalr-agent-run-ghost-plan");
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "TaskAdopted" && m.contains("ghost")),
        "{events:?}"
    );
}
