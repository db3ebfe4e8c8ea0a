//! Cancel: before the worker started, the controller deletes the Job and confirms; after, the
//! worker handles it and the controller only enforces the force-cancel deadline.

use super::world::{World, running};
use crate::support::platform_sim::{CancelMode, RunStatus};

#[test]
fn a_cancel_before_the_start_deletes_the_job_and_confirms_it() {
    let world = World::new();
    let controller = world.start("ctl-0", 2);
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let job = world.job_of(&task);
    let name = job["metadata"]["name"].as_str().expect("name").to_string();
    assert_eq!(world.platform.cancel_run(&run), Some(CancelMode::Graceful));
    world
        .platform
        .wait_for_run(&run, super::world::WAIT, |s| s == RunStatus::Canceled);
    world.eventually("the Job and its Secret gone", |w| {
        w.jobs_of(&task).is_empty()
            && w.kube
                .get("secrets", super::world::NS, &format!("{name}-credentials"))
                .is_none()
    });
    world.eventually("a TaskCancelled Event", |w| {
        w.controller_events(&name)
            .iter()
            .any(|(r, _)| r == "TaskCancelled")
    });
    assert_eq!(controller.metrics.supervisor_cancelled_total.get(), 1);
}

#[test]
fn a_started_task_is_cancelled_by_its_worker_and_a_force_cancel_has_a_deadline() {
    let world = World::new();
    let controller = world.start("ctl-0", 2);
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let job = world.job_of(&task);
    let name = job["metadata"]["name"].as_str().expect("name").to_string();
    world.pod_with_worker(&job, running(), true);
    world
        .worker(&task, &job)
        .start()
        .expect("the worker starts");
    assert_eq!(world.platform.cancel_run(&run), Some(CancelMode::Graceful));
    assert_eq!(world.platform.cancel_run(&run), Some(CancelMode::Force));
    // Sent at once, so the pair often reaches the supervisor before either watch shows the worker
    // started: the deadline must be armed when it learns. The worker never reacts here: after
    // the deadline (1 s in these tests) the Job goes.
    world.eventually("the Job deleted at the force-cancel deadline", |w| {
        w.jobs_of(&task).is_empty()
    });
    world.eventually("a ForceCancelDeadline Event", |w| {
        w.controller_events(&name)
            .iter()
            .any(|(r, _)| r == "ForceCancelDeadline")
    });
    let events = world.controller_events(&name);
    assert!(
        !events.iter().any(|(r, _)| r == "TaskCancelled"),
        "{events:?}"
    );
    assert_eq!(controller.metrics.supervisor_cancelled_total.get(), 0);
}
