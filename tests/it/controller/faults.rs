//! Faults: watches dropped and history compacted mid-flight; Kubernetes 500s and 429s during launch;
//! platform 503s; a 401 mid-flight from either API; SIGTERM.

use std::collections::BTreeSet;
use std::time::Duration;

use super::world::{NS, WAIT, World, running};
use crate::support::kube_sim::Credential;
use crate::support::platform_sim::{Fault, Route, TaskState};

fn created_jobs(world: &World) -> usize {
    world
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.status == 201)
        .count()
}

#[test]
fn watches_dropped_and_history_compacted_mid_flight() {
    const LIMIT: usize = 3;
    let world = World::new();
    let controller = world.start("ctl-0", LIMIT as u32);
    let runs = world.queue(12);
    let mut seen = BTreeSet::new();
    let mut round = 0;
    world.eventually("every task launched through the faults", |w| {
        let jobs = w.jobs();
        let unfinished: Vec<_> = jobs
            .iter()
            .filter(|j| j["status"]["conditions"].is_null())
            .collect();
        assert!(unfinished.len() <= LIMIT, "{} unfinished", unfinished.len());
        for j in &jobs {
            seen.insert(j["metadata"]["annotations"]["scalr.io/task-id"].to_string());
        }
        if unfinished.len() < LIMIT {
            return seen.len() == runs.len() && unfinished.is_empty();
        }
        // Between batches, break the watches one way or another, then finish the batch.
        match round % 3 {
            0 => w.kube.drop_watches(),
            1 => {
                w.kube.compact();
                w.kube.drop_watches();
            }
            _ => w.kube.expire_watches(),
        }
        round += 1;
        for job in unfinished {
            w.job_condition(job, "Complete", "Completed", "done");
        }
        false
    });
    world.eventually("every creation logged", |w| created_jobs(w) >= runs.len());
    assert_eq!(created_jobs(&world), runs.len(), "one Job per task");
    assert!(controller.metrics.limiter_in_flight.get() <= LIMIT as i64);
}

#[test]
fn kubernetes_500s_and_429s_during_launch_are_retried_into_one_job_each() {
    let world = World::new();
    world
        .kube
        .fail_next("POST", "/api/v1/namespaces/ci/secrets", 2, 429);
    world
        .kube
        .fail_next("POST", "/apis/batch/v1/namespaces/ci/jobs", 2, 500);
    world
        .kube
        .fail_next("PATCH", "/api/v1/namespaces/ci/secrets/*", 1, 503);
    let _controller = world.start("ctl-0", 3);
    let tasks: Vec<String> = world.queue(3).iter().map(|r| world.task_of(r)).collect();
    // Every fault met, every Job created once, every Secret owned by its Job.
    world.eventually("a Job with an owned Secret for every task", |w| {
        w.kube.pending_faults() == 0
            && tasks.iter().all(|t| {
                let jobs = w.jobs_of(t);
                jobs.len() == 1 && {
                    let secret = format!(
                        "{}-credentials",
                        jobs[0]["metadata"]["name"].as_str().unwrap_or("")
                    );
                    w.kube.get("secrets", NS, &secret).is_some_and(|s| {
                        s["metadata"]["ownerReferences"][0]["uid"] == jobs[0]["metadata"]["uid"]
                    })
                }
            })
    });
    world.eventually("every creation logged", |w| created_jobs(w) >= 3);
    assert_eq!(created_jobs(&world), 3);
    for task in &tasks {
        assert_eq!(world.platform.task(task).state, TaskState::Acquired);
    }
}

#[test]
fn platform_503s_are_ridden_out() {
    let world = World::new();
    world
        .platform
        .inject(Route::Events, 2, Fault::unavailable(1));
    world
        .platform
        .inject(Route::Acquire, 2, Fault::unavailable(1));
    world
        .platform
        .inject(Route::Heartbeat, 1, Fault::throttled(1));
    let _controller = world.start("ctl-0", 3);
    let tasks: Vec<String> = world.queue(2).iter().map(|r| world.task_of(r)).collect();
    world.eventually("a Job for every task", |w| {
        tasks.iter().all(|t| w.jobs_of(t).len() == 1)
    });
    assert_eq!(world.platform.pending_faults(), 0);
}

#[test]
fn a_platform_401_mid_flight_stops_the_controller_with_a_clear_line() {
    let world = World::quick();
    let mut controller = world.spawn_binary("ctl-0", 2, &[]);
    let task = world.task_of(&world.queue(1)[0]);
    let job = world.job_of(&task);
    world.platform.revoke_token(&world.pool.token);
    assert_eq!(controller.wait_exit(WAIT), Some(3), "{}", controller.log());
    let log = controller.log();
    assert!(
        log.contains("(401)") && log.contains("stopping the controller"),
        "{log}"
    );
    assert!(!controller.ready());
    assert_eq!(
        world
            .jobs_of(&task)
            .first()
            .map(|j| j["metadata"]["uid"].clone()),
        Some(job["metadata"]["uid"].clone()),
        "running Jobs are left alone"
    );
}

#[test]
fn a_kubernetes_401_mid_flight_stops_the_controller_with_a_clear_line() {
    let world = World::quick();
    world
        .kube
        .add_token("controller-token-0123456789", "ctl", &["system:masters"]);
    let kubeconfig = world.kubeconfig(
        "ctl-kube",
        &Credential::Token("controller-token-0123456789".into()),
    );
    let kubeconfig = kubeconfig.to_str().expect("utf8").to_string();
    let mut controller = world.spawn_binary("ctl-0", 2, &[("KUBECONFIG", kubeconfig.as_str())]);
    world.eventually("ready", |_| controller.ready());
    world.kube.revoke_token("controller-token-0123456789");
    // The next watch request or call is refused.
    world.kube.drop_watches();
    assert_eq!(controller.wait_exit(WAIT), Some(3), "{}", controller.log());
    let log = controller.log();
    assert!(
        log.contains("Kubernetes refused the controller's credential (401)"),
        "{log}"
    );
    assert!(!log.contains("controller-token-0123456789"));
}

#[test]
fn sigterm_stops_intake_deregisters_and_leaves_running_jobs_alone() {
    let world = World::quick();
    let mut controller = world.spawn_binary("ctl-0", 2, &[]);
    let task = world.task_of(&world.queue(1)[0]);
    let job = world.job_of(&task);
    world.pod_with_worker(&job, running(), true);
    world
        .worker(&task, &job)
        .start()
        .expect("the worker starts");
    world.eventually("ready", |_| controller.ready());
    controller.signal(libc::SIGTERM);
    // The chart's grace period is 60 s.
    assert_eq!(
        controller.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        controller.log()
    );
    let log = controller.log();
    assert!(log.contains("deregistered agent"), "{log}");
    assert!(!controller.ready());
    assert_eq!(
        world.jobs_of(&task).len(),
        1,
        "the running Job is left alone"
    );
    assert_eq!(world.platform.task(&task).state, TaskState::Running);
    let agent = world.platform.task(&task).holder.expect("holder");
    assert_ne!(
        format!("{:?}", world.platform.agent(&agent).presence),
        "Online",
        "deregistered"
    );
    // Its Lease is gone: another replica may adopt the Job at once.
    assert!(world.kube.list("leases", NS).is_empty());
}

#[test]
fn an_expired_session_is_renewed_and_the_reoffered_task_relaunched() {
    let world = World::quick();
    let _controller = world.start("ctl-0", 2);
    let task = world.task_of(&world.queue(1)[0]);
    let first = world.job_of(&task);
    let agent = world.platform.task(&task).holder.expect("held");
    // The platform ends the session (as after missed heartbeats): the unstarted task is offered
    // again with attempt 2 and a new token; the controller registers again when told 410.
    world.platform.expire_session(&agent);
    world.eventually("the task relaunched at attempt 2", |w| {
        let jobs = w.jobs_of(&task);
        jobs.len() == 1
            && jobs[0]["metadata"]["annotations"]["scalr.io/attempt"] == "2"
            && w.secret_token(&jobs[0]) == w.platform.task_token(&task)
    });
    let view = world.platform.task(&task);
    assert_eq!((view.state, view.attempt), (TaskState::Acquired, 2));
    assert_eq!(
        view.holder.as_deref(),
        Some(agent.as_str()),
        "the same agent, a new session"
    );
    assert_ne!(
        world.job_of(&task)["metadata"]["uid"],
        first["metadata"]["uid"],
        "the fenced Job was replaced"
    );
    assert!(world.platform.requests_of(Route::Register).len() >= 2);
}
