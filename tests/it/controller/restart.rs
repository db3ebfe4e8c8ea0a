//! The real binary SIGKILLed at each point of a launch, then started again under the same name:
//! exactly one Job per task, its Secret owned by it and holding the platform's current token, and
//! no task stuck. The kill points are made reachable with simulator faults (a held Secret or Job
//! create, failing owner patches), never with hooks in the binary.

use std::time::Duration;

use serde_json::Value;

use super::world::{NS, Process, World, waiting};
use crate::support::kube_sim::{Fault, FaultAction};
use crate::support::platform_sim::TaskState;

/// What every scenario must end with: one Job of `attempt`, its Secret owned by it with the token
/// the platform holds for the task now, the task held by agent `name` and not final.
fn settled(world: &World, task: &str, attempt: u32, name: &str, controller: &Process) {
    world.eventually(
        "one Job with an owned Secret holding the current token",
        |w| {
            let jobs = w.jobs_of(task);
            let [job] = jobs.as_slice() else {
                return false;
            };
            let secret = format!(
                "{}-credentials",
                job["metadata"]["name"].as_str().unwrap_or("")
            );
            job["metadata"]["annotations"]["scalr.io/attempt"].as_str()
                == Some(attempt.to_string().as_str())
                && w.kube.get("secrets", NS, &secret).is_some_and(|s| {
                    s["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
                })
                && w.secret_token(job) == w.platform.task_token(task)
        },
    );
    let view = world.platform.task(task);
    assert_eq!(view.state, TaskState::Acquired, "{}", controller.log());
    assert_eq!(view.attempt, attempt);
    let agent = view.holder.expect("a holder");
    assert_eq!(world.platform.agent(&agent).name, name);
    assert_eq!(world.jobs_of(task).len(), 1);
}

/// Starts the binary, queues one run, arms `fault` for the launch, waits until the launch hit it,
/// and SIGKILLs the controller.
fn killed_at(
    world: &World,
    fault: impl Fn(&World, &str),
    reached: impl Fn(&World) -> bool,
) -> String {
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    world.eventually("the controller ready", |_| controller.ready());
    let run = world.queue(1).remove(0);
    fault(world, &run);
    let task = world.task_of(&run);
    world.eventually("the launch reached the kill point", |w| reached(w));
    controller.kill();
    task
}

#[test]
fn killed_between_acquire_and_secret() {
    let world = World::quick();
    let task = killed_at(
        &world,
        |w, _| {
            w.kube.fault(Fault::new(
                "POST",
                "/api/v1/namespaces/ci/secrets",
                1,
                FaultAction::Delay(Duration::from_secs(2)),
            ))
        },
        |w| w.kube.pending_faults() == 0,
    );
    // Acquired, no Secret yet (the held create lands later, racing the restarted controller).
    assert_eq!(world.platform.task(&task).state, TaskState::Acquired);
    assert!(world.jobs_of(&task).is_empty());
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    settled(&world, &task, 1, "ctl-0", &controller);
}

#[test]
fn killed_between_secret_and_job() {
    let world = World::quick();
    let task = killed_at(
        &world,
        |w, _| {
            w.kube.fault(Fault::new(
                "POST",
                "/apis/batch/v1/namespaces/ci/jobs",
                1,
                FaultAction::Delay(Duration::from_secs(2)),
            ))
        },
        |w| w.kube.pending_faults() == 0,
    );
    // The held create lands while the controller is dead: a Job whose Secret has no owner.
    let job = world.job_of(&task);
    let secret = format!(
        "{}-credentials",
        job["metadata"]["name"].as_str().expect("name")
    );
    let unowned = world.kube.get("secrets", NS, &secret).expect("secret");
    assert!(unowned["metadata"]["ownerReferences"].is_null());
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    settled(&world, &task, 1, "ctl-0", &controller);
}

#[test]
fn killed_after_the_job_before_the_secret_is_owned() {
    let world = World::quick();
    let task = killed_at(
        &world,
        |w, run| {
            let secret = format!("prod-scalr-agent-{run}-plan-credentials");
            w.kube.fail_next(
                "PATCH",
                &format!("/api/v1/namespaces/ci/secrets/{secret}"),
                3,
                500,
            );
        },
        |w| {
            w.kube
                .requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.path.contains("/secrets/") && r.status == 500)
        },
    );
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    settled(&world, &task, 1, "ctl-0", &controller);
}

#[test]
fn killed_after_a_complete_launch_then_supervision_resumes() {
    let world = World::quick();
    let task = killed_at(
        &world,
        |_, _| {},
        |w| {
            w.jobs().iter().any(|j| {
                let secret = format!(
                    "{}-credentials",
                    j["metadata"]["name"].as_str().unwrap_or("")
                );
                w.kube
                    .get("secrets", NS, &secret)
                    .is_some_and(|s| !s["metadata"]["ownerReferences"].is_null())
            })
        },
    );
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    settled(&world, &task, 1, "ctl-0", &controller);
    // The restarted controller supervises the Job it found: an image that can never be pulled
    // fails the task at once.
    let job = world.job_of(&task);
    world.pod(
        &job,
        serde_json::json!({"phase": "Pending", "containerStatuses": [
            super::world::container("worker", waiting("InvalidImageName", "bad reference"), false)]}),
    );
    world.platform_eventually("the task failed by the restarted controller", |p| {
        (p.task(&task).state == TaskState::Errored).then_some(())
    });
    world.eventually("its Job deleted", |w| w.jobs_of(&task).is_empty());
}

#[test]
fn killed_long_enough_to_be_replaced_then_restarted() {
    let world = World::quick();
    let task = killed_at(&world, |_, _| {}, |w| !w.jobs().is_empty());
    let old: Value = world.job_of(&task);
    // Offline past the threshold: the platform offers the task again (attempt 2, old token fenced).
    world.platform.advance(Duration::from_secs(31));
    world.platform_eventually("the task offered again", |p| {
        let t = p.task(&task);
        (t.state == TaskState::Queued && t.attempt == 2).then_some(())
    });
    let controller = world.spawn_binary("ctl-0", 4, &[]);
    settled(&world, &task, 2, "ctl-0", &controller);
    let new = world.job_of(&task);
    assert_ne!(
        new["metadata"]["uid"], old["metadata"]["uid"],
        "the fenced Job was replaced"
    );
}
