//! Every failure path of issue 5 item 3, one run each, in one world: the controller fails the task
//! on the platform with a readable reason that includes the relevant Kubernetes Events, records a
//! `TaskFailed` Event and deletes the Job; after the worker started, only when the pod is gone and
//! the platform has no final status.

use std::time::Duration;

use serde_json::{Value, json};

use super::world::{NS, WAIT, World, container, running, terminated, waiting};
use crate::support::kube_sim::Propagation;
use crate::support::platform_sim::{Fault, Route, RunStatus};
use scalr_agent::controller::supervision::SupervisionSettings;
use scalr_agent::platform::{ResourceCounts, TaskResult};

/// What the test does to a launched task, and what the run's message must then contain.
struct Case {
    name: &'static str,
    /// Acts as kubelet, Job controller or worker.
    act: fn(&World, &str, &Value),
    /// `None`: the run must not be errored by the controller.
    message: Option<&'static [&'static str]>,
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

const CASES: &[Case] = &[
    Case {
        name: "image pull",
        act: |w, _, job| {
            w.pod(
                job,
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [container("worker", waiting("ErrImagePull", "manifest unknown"), false)]}),
            );
            let pod = format!("{}-pod", job["metadata"]["name"].as_str().unwrap_or(""));
            w.event(
                "Pod",
                &pod,
                "Warning",
                "Failed",
                "Failed to pull image \"example/worker:1\": manifest unknown",
            );
        },
        message: Some(&[
            "image pull failed",
            "ErrImagePull",
            "Pod Failed: Failed to pull image",
        ]),
    },
    Case {
        name: "unschedulable",
        act: |w, _, job| {
            w.pod(
                job,
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient memory.",
                    "lastTransitionTime": now()}]}),
            );
            let pod = format!("{}-pod", job["metadata"]["name"].as_str().unwrap_or(""));
            w.event(
                "Pod",
                &pod,
                "Warning",
                "FailedScheduling",
                "0/3 nodes are available: 3 Insufficient memory.",
            );
        },
        message: Some(&[
            "task pod unschedulable",
            "Insufficient memory",
            "FailedScheduling",
        ]),
    },
    Case {
        name: "no pod",
        act: |w, _, job| {
            let name = job["metadata"]["name"].as_str().unwrap_or("");
            w.event(
                "Job",
                name,
                "Warning",
                "FailedCreate",
                "Error creating: pods is forbidden: exceeded quota: compute, requested: cpu=2",
            );
        },
        message: Some(&["created no pod", "exceeded quota"]),
    },
    Case {
        name: "init container",
        act: |w, _, job| {
            w.pod(
                job,
                json!({"phase": "Failed", "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "initContainerStatuses": [container("install", terminated(1, "Error"), false)],
                       "containerStatuses": [container("worker", waiting("PodInitializing", ""), false)]}),
            );
        },
        message: Some(&["init container failed", "install", "exited 1"]),
    },
    Case {
        name: "startup timeout",
        act: |w, _, job| {
            w.pod_with_worker(job, running(), false);
        },
        message: Some(&["worker did not start in time", "STARTUP_TIMEOUT_SECONDS"]),
    },
    Case {
        name: "job failed",
        act: |w, _, job| {
            w.job_condition(
                job,
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            );
        },
        message: Some(&["failed before the worker started", "DeadlineExceeded"]),
    },
    Case {
        name: "job deleted",
        act: |w, _, job| {
            let name = job["metadata"]["name"].as_str().unwrap_or("");
            w.kube.delete("jobs", NS, name, Propagation::Background);
        },
        message: Some(&["deleted before the worker started"]),
    },
    Case {
        name: "worker lost",
        act: |w, task, job| {
            w.pod_with_worker(job, running(), true);
            w.worker(task, job).start().expect("the worker starts");
            // The watch delivers each state in order: started, then gone.
            let pod = format!("{}-pod", job["metadata"]["name"].as_str().unwrap_or(""));
            w.kube.delete("pods", NS, &pod, Propagation::Background);
        },
        message: Some(&["worker lost", "gone"]),
    },
    Case {
        name: "oom killed",
        act: |w, task, job| {
            w.pod_with_worker(job, running(), true);
            w.worker(task, job).start().expect("the worker starts");
            w.pod(
                job,
                json!({"phase": "Failed", "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [container("worker", terminated(137, "OOMKilled"), false)]}),
            );
        },
        message: Some(&["OOM-killed", "worker"]),
    },
    Case {
        name: "evicted",
        act: |w, task, job| {
            w.pod_with_worker(job, running(), true);
            w.worker(task, job).start().expect("the worker starts");
            w.pod(
                job,
                json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
                       "conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [container("worker", terminated(143, "Error"), false)]}),
            );
        },
        message: Some(&["evicted"]),
    },
    Case {
        name: "worker finished, then its pod went",
        act: |w, task, job| {
            w.pod_with_worker(job, running(), true);
            let worker = w.worker(task, job);
            worker.start().expect("the worker starts");
            worker
                .finish(&TaskResult::finished(
                    false,
                    ResourceCounts::default(),
                    "No changes.",
                ))
                .expect("finish");
            let pod = format!("{}-pod", job["metadata"]["name"].as_str().unwrap_or(""));
            w.kube.delete("pods", NS, &pod, Propagation::Background);
        },
        message: None,
    },
];

#[test]
fn every_failure_path_fails_the_task_with_the_events_and_deletes_the_job() {
    let world = World::new();
    let mut options = world.options("ctl-0", 20);
    options.timing.supervision = SupervisionSettings {
        startup_timeout: Duration::from_secs(8),
        image_pull_grace: Duration::from_secs(1),
        unschedulable_timeout: Duration::from_secs(1),
        no_pod_grace: Duration::from_secs(1),
        final_status_grace: Duration::from_secs(1),
    };
    let controller = world.start_with(options);
    let runs = world.queue(CASES.len());
    let mut launched = Vec::new();
    for run in &runs {
        let task = world.task_of(run);
        let job = world.job_of(&task);
        launched.push((run.clone(), task, job));
    }
    for (case, (_, task, job)) in CASES.iter().zip(&launched) {
        (case.act)(&world, task, job);
    }
    for (case, (run, task, job)) in CASES.iter().zip(&launched) {
        let name = job["metadata"]["name"].as_str().expect("name");
        match case.message {
            Some(needles) => {
                let view = world
                    .platform
                    .wait_for_run(run, WAIT, |s| s == RunStatus::Errored);
                let message = view.message.unwrap_or_default();
                for needle in needles {
                    assert!(
                        message.contains(needle),
                        "{}: {needle:?} not in {message:?}",
                        case.name
                    );
                }
                world.eventually(&format!("{}: Job deleted", case.name), |w| {
                    w.jobs_of(task).is_empty()
                });
                if case.name != "job deleted" {
                    let events = world.controller_events(name);
                    assert!(
                        events.iter().any(|(r, _)| r == "TaskFailed"),
                        "{}: {events:?}",
                        case.name
                    );
                }
            }
            None => {
                // The controller deletes the Job of a task whose pod is gone, without failing it.
                world.eventually(&format!("{}: Job deleted", case.name), |w| {
                    w.jobs_of(task).is_empty()
                });
                let view = world.platform.run(run);
                assert_ne!(view.status, RunStatus::Errored, "{}", case.name);
            }
        }
    }
    let failed: u64 = scalr_agent::model::FailureReason::ALL
        .iter()
        .map(|r| controller.metrics.failed_count(*r))
        .sum();
    assert_eq!(
        failed,
        CASES.iter().filter(|c| c.message.is_some()).count() as u64
    );
}

#[test]
fn a_job_deleted_before_the_start_is_failed_and_never_launched_again() {
    // The failure report is slow to land, and reconciles run meanwhile: the platform still lists
    // the task as held without a Job. The controller made that Job, so it must not make another.
    let world = World::quick();
    let mut options = world.options("ctl-0", 2);
    options.timing.reconcile_interval = Duration::from_millis(200);
    let _controller = world.start_with(options);
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let job = world.job_of(&task);
    world
        .platform
        .inject(Route::FailTask, 1, Fault::Delay(Duration::from_secs(2)));
    let name = job["metadata"]["name"].as_str().expect("name");
    world.kube.delete("jobs", NS, name, Propagation::Background);
    world.platform_eventually("two reconciles while the failure report is held", |p| {
        let log = p.requests();
        let at = log.iter().position(|r| r.route == Some(Route::FailTask))?;
        let reconciles = log[at..]
            .iter()
            .filter(|r| r.route == Some(Route::HeldTasks))
            .count();
        (reconciles >= 2).then_some(())
    });
    let view = world
        .platform
        .wait_for_run(&run, WAIT, |s| s == RunStatus::Errored);
    assert!(
        view.message
            .unwrap_or_default()
            .contains("deleted before the worker started")
    );
    let created = world
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.status == 201)
        .count();
    assert_eq!(created, 1, "one Job for the task");
    assert!(world.jobs_of(&task).is_empty());
}
