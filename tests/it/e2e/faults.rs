//! The fault matrix through the whole system. Each test ends with the same accounting: every queued
//! run is terminal, its log is there, no task Job or Secret is left, no Job was created twice.

use std::time::Duration;

use super::*;
use crate::support::e2e::NAMESPACE;
use crate::support::platform_sim::{Fault, Route, RunStatus};
use crate::support::pod_executor::PullFailure;

/// A configuration whose apply runs long enough to be interrupted.
const SLOW_TF: &str = r#"
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo apply-started; sleep 30; echo apply-ended"
  }
}
"#;

fn world_with(values: &[&str], concurrency: u32) -> E2e {
    let mut options = E2eOptions::new(env!("CARGO_BIN_EXE_scalr-agent"));
    options.concurrency = concurrency;
    options.values = values.iter().map(|v| v.to_string()).collect();
    E2e::start(options)
}

fn nothing_lost(world: &E2e, runs: &[String]) {
    for run in runs {
        let view = world.wait_terminal(run, RUN_TIMEOUT);
        assert!(!view.tasks.is_empty(), "run {run} has tasks");
        for task in &view.tasks {
            let _ = world.platform.log(task);
        }
    }
    world.wait_clean(RUN_TIMEOUT);
    assert_no_double_launch(world);
}

#[test]
fn an_invalid_runner_image_fails_the_run_at_once_with_the_reason() {
    let world = world(2);
    world
        .executor
        .fail_image_pulls("scalr/runner*", PullFailure::InvalidImageName);
    let _controller = world.start_controller("scalr-agent-0");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Errored, "{}", world.diagnostics());
    let message = view.message.unwrap_or_default();
    assert!(message.to_lowercase().contains("image"), "{message}");
    nothing_lost(&world, &[run]);
}

#[test]
fn an_image_the_registry_refuses_fails_the_run_after_the_pull_grace_with_the_events() {
    // ErrImagePull then ImagePullBackOff, retried by the kubelet: the controller gives the pull its
    // grace (30 s) before failing the task, and the reason carries the kubelet's own words.
    let world = world(2);
    world
        .executor
        .fail_image_pulls("scalr/runner*", PullFailure::ErrImagePull);
    let _controller = world.start_controller("scalr-agent-0");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Errored, "{}", world.diagnostics());
    let message = view.message.unwrap_or_default();
    assert!(
        message.contains("ErrImagePull") || message.contains("ImagePullBackOff"),
        "{message}"
    );
    assert!(message.contains("pull access denied"), "{message}");
    nothing_lost(&world, &[run]);
}

#[test]
fn an_unschedulable_pod_fails_the_run_after_the_startup_timeout() {
    let world = world_with(&["task.startupTimeoutSeconds=10"], 2);
    world.executor.make_unschedulable("");
    let _controller = world.start_controller("scalr-agent-0");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Errored, "{}", world.diagnostics());
    let message = view.message.unwrap_or_default();
    assert!(
        message.contains("Unschedulable")
            || message.contains("schedul")
            || message.contains("start"),
        "{message}"
    );
    nothing_lost(&world, &[run]);
}

#[test]
fn deleting_the_pod_mid_apply_stops_terraform_gracefully_and_reports() {
    let world = world(2);
    let _controller = world.start_controller("scalr-agent-0");
    let run = world.queue_run(&[("main.tf", SLOW_TF)]);
    world
        .platform
        .wait_until(RUN_TIMEOUT, "the apply to start", |sim| {
            let task = sim.run(&run).tasks.last()?.clone();
            String::from_utf8_lossy(&sim.log(&task))
                .contains("apply-started")
                .then_some(())
        });
    let pod = world
        .kube
        .list("pods", NAMESPACE)
        .into_iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("-apply-"))
        })
        .expect("the apply pod");
    let name = pod["metadata"]["name"].as_str().expect("name").to_string();
    world.kube.delete(
        "pods",
        NAMESPACE,
        &name,
        crate::support::kube_sim::Propagation::Background,
    );
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Errored, "{}", world.diagnostics());
    let log = world.run_log(&run);
    // The provisioner was interrupted: its first line is there, its last never ran (the command
    // text itself, echoed by terraform, mentions both).
    let ran = |word: &str| {
        log.lines()
            .any(|l| l.trim_end().ends_with(word) && !l.contains("echo"))
    };
    assert!(ran("apply-started") && !ran("apply-ended"), "{log}");
    assert!(log.contains("The worker was stopped (SIGTERM"), "{log}");
    let state = world
        .platform
        .state(&view.workspace)
        .expect("state pushed before exit");
    assert!(String::from_utf8_lossy(&state).contains("terraform_data"));
    nothing_lost(&world, &[run]);
}

#[test]
fn a_controller_killed_mid_flight_is_replaced_and_nothing_is_launched_twice() {
    let world = world(4);
    let mut first = world.start_controller("scalr-agent-0");
    let runs: Vec<String> = (0..3)
        .map(|_| world.queue_run(&[("main.tf", SAMPLE_TF)]))
        .collect();
    // Kill it as soon as the first Job exists: some tasks acquired, some launched, some not.
    assert!(
        world
            .kube
            .wait_until(RUN_TIMEOUT, |k| !k.list("jobs", NAMESPACE).is_empty()),
        "{}",
        world.diagnostics()
    );
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let _second = world.start_controller("scalr-agent-0");
    for run in &runs {
        let view = world.wait_terminal(run, RUN_TIMEOUT);
        assert_eq!(
            view.status,
            RunStatus::Applied,
            "{run}\n{}",
            world.diagnostics()
        );
    }
    nothing_lost(&world, &runs);
}

#[test]
fn platform_503_storms_and_kubernetes_watch_drops_delay_but_lose_nothing() {
    let world = world(4);
    for route in [
        Route::Events,
        Route::Acquire,
        Route::Heartbeat,
        Route::StartTask,
        Route::AppendLog,
        Route::FinishTask,
        Route::StatePost,
    ] {
        world.platform.inject(route, 3, Fault::unavailable(1));
    }
    let _controller = world.start_controller("scalr-agent-0");
    let runs: Vec<String> = (0..2)
        .map(|_| world.queue_run(&[("main.tf", SAMPLE_TF)]))
        .collect();
    for _ in 0..5 {
        world.kube.drop_watches();
        world.kube.compact();
        std::thread::sleep(Duration::from_millis(300));
    }
    for run in &runs {
        let view = world.wait_terminal(run, RUN_TIMEOUT);
        assert_eq!(
            view.status,
            RunStatus::Applied,
            "{run}\n{}",
            world.diagnostics()
        );
    }
    nothing_lost(&world, &runs);
}

#[test]
fn two_controllers_share_the_work_and_never_launch_a_task_twice() {
    let world = world(2);
    let _a = world.start_controller("scalr-agent-a");
    let _b = world.start_controller("scalr-agent-b");
    let runs: Vec<String> = (0..6)
        .map(|_| world.queue_run(&[("main.tf", SAMPLE_TF)]))
        .collect();
    for run in &runs {
        let view = world.wait_terminal(run, RUN_TIMEOUT);
        assert_eq!(
            view.status,
            RunStatus::Applied,
            "{run}\n{}",
            world.diagnostics()
        );
    }
    nothing_lost(&world, &runs);
}

#[test]
fn a_revoked_pool_token_stops_the_controller_with_a_clear_message() {
    let world = world(2);
    let mut controller = world.start_controller("scalr-agent-0");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Applied, "{}", world.diagnostics());
    world.platform.revoke_token(&world.pool.token);
    let status = controller
        .wait(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the controller kept running\n{}", controller.log()));
    assert!(!status.success(), "a 401 must end in a non-zero exit");
    let log = controller.log();
    assert!(
        log.contains("401") || log.to_lowercase().contains("unauthorized"),
        "{log}"
    );
    assert!(
        !log.contains(&world.pool.token),
        "the token leaked into the log"
    );
    nothing_lost(&world, &[run]);
}

#[test]
fn runner_memory_at_the_soft_limit_stops_terraform_which_pushes_state_and_the_run_errors() {
    // A runner limit of 800Mi: the soft limit (80 %) is 640Mi. The apply's provisioner holds 550 MB
    // on top of terraform itself; the pod executor reports the container's resident memory in its
    // cgroup, exec-loop's monitor sees it cross the soft limit and stops the command gracefully.
    let world = world_with(&["task.runner.resources.limits.memory=800Mi"], 2);
    let _controller = world.start_controller("scalr-agent-0");
    let hungry = r#"
resource "terraform_data" "hungry" {
  provisioner "local-exec" {
    command = "python3 -c 'import time; b = bytearray(550 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(60)'"
  }
}
"#;
    let run = world.queue_run(&[("main.tf", hungry)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Errored, "{}", world.diagnostics());
    let text = format!(
        "{}\n{}",
        view.message.clone().unwrap_or_default(),
        world.run_log(&run)
    );
    assert!(text.to_lowercase().contains("memory"), "{text}");
    let state = world
        .platform
        .state(&view.workspace)
        .expect("terraform pushed its state before exiting");
    assert!(String::from_utf8_lossy(&state).contains("terraform_data"));
    nothing_lost(&world, &[run]);
}
