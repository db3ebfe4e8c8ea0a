//! Stopping a run mid-apply: a cancel from the platform (SIGINT to terraform, state pushed, status
//! canceled), SIGTERM to the worker and exec-loop as when the pod is deleted (the same escalation,
//! status errored, the report still made within the grace period), and a command that ignores
//! SIGINT and SIGTERM (SIGKILL once the grace period, less the reserve, is over).

use super::*;
use crate::support::platform_sim::{CancelMode, TaskState};

const SLOW_TF: &str = r#"
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo apply-started; sleep 60; echo apply-ended"
  }
}
"#;

/// Runs the plan, starts the apply pod and waits until its log shows the provisioner running.
fn apply_in_progress(world: &World, options: &PodOptions) -> (String, Pod) {
    let cv = world.cv(&[("main.tf", SLOW_TF)]);
    let run = world.sim.queue_run(&world.ws, RunSpec::new(&cv));
    world.run_stage(&run, Stage::Plan, options);
    let held = world.acquire(&run, Stage::Apply);
    let pod = world.launch(&held, options);
    world
        .sim
        .wait_until(DEADLINE, "the apply's provisioner to start", |sim| {
            let log = sim.log(&held.task.id);
            String::from_utf8_lossy(&log)
                .contains("apply-started")
                .then_some(())
        });
    (run, pod)
}

/// Queues a plan whose pre-plan `hook` ignores SIGINT and SIGTERM and prints `stubborn-started`,
/// launches its pod with a grace period of `grace` seconds and waits until the hook runs.
fn stubborn(world: &World, hook: &str, grace: u32) -> (String, Pod) {
    let cv = world.cv(&[("main.tf", "")]);
    let mut spec = RunSpec::new(&cv);
    spec.hooks.pre_plan = Some(hook.into());
    let run = world.sim.queue_run(&world.ws, spec);
    let held = world.acquire(&run, Stage::Plan);
    let options = PodOptions {
        worker_env: vec![(
            "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT".into(),
            grace.to_string(),
        )],
        ..PodOptions::default()
    };
    let pod = world.launch(&held, &options);
    world.sim.wait_until(DEADLINE, "the hook to start", |sim| {
        String::from_utf8_lossy(&sim.log(&held.task.id))
            .contains("stubborn-started")
            .then_some(())
    });
    (run, pod)
}

/// The state on the platform: the resource, tainted (its provisioner was interrupted).
fn assert_state_pushed(world: &World) {
    let state = world
        .sim
        .state(&world.ws)
        .expect("terraform pushed its state");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    assert_eq!(state["resources"][0]["type"], "terraform_data", "{state}");
    assert_eq!(state["resources"][0]["instances"][0]["status"], "tainted");
    assert_eq!(world.sim.state_lock(&world.ws), None, "terraform unlocked");
}

#[test]
fn cancel_mid_apply_interrupts_terraform_which_pushes_state_and_the_task_is_canceled() {
    let world = world();
    let (run, mut pod) = apply_in_progress(&world, &PodOptions::default());
    assert_eq!(world.sim.cancel_run(&run), Some(CancelMode::Graceful));
    let status = pod.wait(DEADLINE);
    assert!(status.success(), "{status}\n{}", pod.logs());
    let view = world.sim.run(&run);
    assert_eq!(view.status, RunStatus::Canceled, "{}", world.sim.dump());
    let result = world.sim.task(&pod.task).result.expect("result");
    assert_eq!(result.status, TaskState::Canceled);
    assert_eq!(
        result.message,
        "Run canceled (graceful) during terraform apply."
    );
    assert_state_pushed(&world);
    let log = world.log(&run, Stage::Apply);
    position(&log, "Interrupt received");
    position(&log, "==> Run canceled (graceful) during terraform apply.");
    assert!(!log.contains("Creation complete"), "{log}");
    assert!(pod.worker_log().contains("sending SIGINT"));
    assert!(!pod.worker_log().contains("sending SIGKILL"));
    assert!(
        pod.wait_exec_loop(DEADLINE)
            .expect("exec-loop exits")
            .success()
    );
}

#[test]
fn sigterm_to_the_pod_mid_apply_stops_terraform_gracefully_and_still_reports() {
    let world = world();
    let options = PodOptions {
        worker_env: vec![(
            "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT".into(),
            "30".into(),
        )],
        ..PodOptions::default()
    };
    let (run, mut pod) = apply_in_progress(&world, &options);
    // Kubernetes signals every container of a deleted pod.
    kill(pod.worker_pid(), libc::SIGTERM);
    kill(pod.exec_loop_pid(), libc::SIGTERM);
    let status = pod.wait(DEADLINE);
    assert!(status.success(), "the report was accepted\n{}", pod.logs());
    let view = world.sim.run(&run);
    assert_eq!(view.status, RunStatus::Errored);
    let message = view.message.expect("message");
    assert!(
        message.starts_with("The worker was stopped (SIGTERM")
            && message.contains("terraform apply"),
        "{message}"
    );
    assert_state_pushed(&world);
    let log = world.log(&run, Stage::Apply);
    position(&log, "Interrupt received");
    position(&log, "==> The worker was stopped (SIGTERM");
    assert!(
        pod.worker_log().contains("received SIGTERM"),
        "{}",
        pod.logs()
    );
    assert!(
        pod.wait_exec_loop(DEADLINE)
            .expect("exec-loop exits")
            .success()
    );
}

#[test]
fn a_command_ignoring_sigint_and_sigterm_is_killed_within_the_grace_period() {
    let world = world();
    let (run, mut pod) = stubborn(
        &world,
        "trap '' INT TERM; echo stubborn-started; sleep 60; echo stubborn-$((1 + 1))",
        3,
    );
    world.sim.cancel_run(&run);
    let status = pod.wait(DEADLINE);
    assert!(status.success(), "{status}\n{}", pod.logs());
    let result = world.sim.task(&pod.task).result.expect("result");
    assert_eq!(result.status, TaskState::Canceled);
    assert_eq!(
        result.message,
        "Run canceled (graceful) during the pre-plan hook."
    );
    let worker = pod.worker_log();
    let order = ["sending SIGINT", "sending SIGTERM", "sending SIGKILL"];
    let positions: Vec<usize> = order.iter().map(|n| position(&worker, n)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{worker}");
    let log = world.log(&run, Stage::Plan);
    assert!(!log.contains("stubborn-2"), "{log}");
}

#[test]
fn a_second_sigint_makes_the_worker_exit_at_once_with_130() {
    // Ctrl-C twice (a worker run by hand): the first stops the command gracefully, the second
    // gives up waiting. The grace period is long, so only the second signal can end it early.
    let world = world();
    let (_, mut pod) = stubborn(
        &world,
        "trap '' INT TERM; echo stubborn-started; sleep 30",
        600,
    );
    kill(pod.worker_pid(), libc::SIGINT);
    world
        .sim
        .wait_until(DEADLINE, "the worker to stop the command", |_| {
            pod.worker_log().contains("sending SIGINT").then_some(())
        });
    kill(pod.worker_pid(), libc::SIGINT);
    let status = pod.wait(DEADLINE);
    assert_eq!(status.code(), Some(130), "{}", pod.logs());
    assert!(
        pod.worker_log().contains("second interrupt"),
        "{}",
        pod.logs()
    );
    // No report was made: the controller finds the pod gone and the task without a final status.
    assert_eq!(world.sim.task(&pod.task).result, None);
}
