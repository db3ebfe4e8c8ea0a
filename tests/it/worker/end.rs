//! The beginning and the end of a worker: a runner that never comes (the task is never started, so
//! the controller can report why), a fenced token or a task already final at start (exit
//! without reporting), a cancel requested before the worker came, and a platform that fails at the
//! end — transiently (the report still goes through), for the log only (the status is reported,
//! the log is not complete), or until the grace deadline (non-zero exit, never 0 without the
//! final status accepted).

use super::*;
use crate::support::platform_sim::{Fault, Route, TaskState};

fn quick_run(world: &World) -> String {
    let cv = world.cv(&[("main.tf", "")]);
    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    world.sim.queue_run(&world.ws, spec)
}

fn grace(seconds: u32) -> PodOptions {
    PodOptions {
        worker_env: vec![(
            "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT".into(),
            seconds.to_string(),
        )],
        ..PodOptions::default()
    }
}

#[test]
fn a_fenced_token_at_start_exits_3_without_reporting() {
    let world = world();
    let run = quick_run(&world);
    let held = world.acquire(&run, Stage::Plan);
    world.sim.revoke_token(held.token.expose());
    let mut pod = world.launch(&held, &PodOptions::default());
    let status = pod.wait(DEADLINE);
    assert_eq!(status.code(), Some(3), "{}", pod.logs());
    assert!(
        pod.worker_log().contains("a newer attempt runs it"),
        "{}",
        pod.logs()
    );
    assert!(!pod.marker("started").exists(), "not started");
    assert!(world.sim.requests_of(Route::FinishTask).is_empty());
    assert_eq!(world.sim.task(&held.task.id).state, TaskState::Acquired);
    let runner = pod
        .wait_exec_loop(DEADLINE)
        .expect("exec-loop told to exit");
    assert!(runner.success(), "{}", pod.logs());
}

#[test]
fn a_task_final_before_start_exits_4_and_a_pending_cancel_is_reported_at_once() {
    let world = world();
    let run = quick_run(&world);
    let held = world.acquire(&run, Stage::Plan);
    world.sim.cancel_run(&run);
    world
        .agent
        .confirm_cancel(&held.task.id)
        .expect("confirm cancel");
    let mut pod = world.launch(&held, &PodOptions::default());
    assert_eq!(pod.wait(DEADLINE).code(), Some(4), "{}", pod.logs());
    assert!(pod.wait_exec_loop(DEADLINE).is_some_and(|s| s.success()));

    // A cancel the controller did not confirm yet: the worker starts, sees it, runs nothing.
    let run = quick_run(&world);
    let held = world.acquire(&run, Stage::Plan);
    world.sim.cancel_run(&run);
    let mut pod = world.launch(&held, &PodOptions::default());
    assert!(pod.wait(DEADLINE).success(), "{}", pod.logs());
    assert_eq!(world.sim.run(&run).status, RunStatus::Canceled);
    let log = world.log(&run, Stage::Plan);
    assert!(!log.contains("==> terraform"), "{log}");
    position(
        &log,
        "==> Run canceled (graceful) before the first command.",
    );
}

#[test]
fn a_transiently_failing_report_is_retried_until_accepted() {
    let world = world();
    let run = quick_run(&world);
    world
        .sim
        .inject(Route::FinishTask, 7, Fault::server_error());
    let pod = world.run_stage(&run, Stage::Plan, &grace(60));
    assert_eq!(world.sim.run(&run).status, RunStatus::PlannedAndFinished);
    assert!(world.sim.requests_of(Route::FinishTask).len() >= 8);
    assert!(
        pod.worker_log()
            .contains("could not report the final status")
    );
    position(&world.log(&run, Stage::Plan), "==> No changes.");
}

#[test]
fn an_unreachable_log_store_does_not_cost_the_final_status() {
    let world = world();
    let run = quick_run(&world);
    world
        .sim
        .inject(Route::AppendLog, 100_000, Fault::unavailable(0));
    let pod = world.run_stage(&run, Stage::Plan, &grace(2));
    assert_eq!(world.sim.run(&run).status, RunStatus::PlannedAndFinished);
    assert!(
        pod.worker_log()
            .contains("of the run log could not be delivered"),
        "{}",
        pod.logs()
    );
}

#[test]
fn a_platform_unreachable_until_the_deadline_means_a_non_zero_exit() {
    let world = world();
    let run = quick_run(&world);
    world
        .sim
        .inject(Route::FinishTask, 100_000, Fault::unavailable(0));
    let held = world.acquire(&run, Stage::Plan);
    let mut pod = world.launch(&held, &grace(2));
    let status = pod.wait(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", pod.logs());
    assert!(
        pod.worker_log()
            .contains("could not be reached before the grace deadline"),
        "{}",
        pod.logs()
    );
    assert_eq!(world.sim.task(&held.task.id).state, TaskState::Running);
    // The log was flushed before the report was tried.
    position(&world.log(&run, Stage::Plan), "==> No changes.");
}

#[test]
fn a_runner_that_never_answers_leaves_the_task_unstarted() {
    // The runner container never gets to exec-loop (here: exec-loop refuses its arguments, as a
    // broken runner command would; in a cluster, also an image that cannot be pulled).
    let world = world();
    let run = quick_run(&world);
    let held = world.acquire(&run, Stage::Plan);
    let options = PodOptions {
        exec_loop_args: vec!["--no-such-flag".into()],
        worker_args: vec!["--runner-timeout-secs".into(), "2".into()],
        ..PodOptions::default()
    };
    let mut pod = world.launch(&held, &options);
    let status = pod.wait(DEADLINE);
    assert_eq!(status.code(), Some(5), "{}", pod.logs());
    let worker = pod.worker_log();
    assert!(
        worker.contains("did not answer within 2 s") && worker.contains("not started"),
        "{worker}"
    );
    let task = world.sim.task(&pod.task);
    assert_eq!(task.state, TaskState::Acquired, "never started");
    assert_eq!(task.result, None);
    assert!(!pod.marker("started").exists(), "no started marker");
}

#[test]
fn sigterm_while_waiting_for_the_runner_exits_without_starting_the_task() {
    let world = world();
    let run = quick_run(&world);
    let held = world.acquire(&run, Stage::Plan);
    let options = PodOptions {
        exec_loop_args: vec!["--no-such-flag".into()],
        ..PodOptions::default()
    };
    let mut pod = world.launch(&held, &options);
    world
        .sim
        .wait_until(DEADLINE, "the worker to wait for the runner", |_| {
            pod.worker_log().contains("worker for task").then_some(())
        });
    kill(pod.worker_pid(), libc::SIGTERM);
    let status = pod.wait(DEADLINE);
    assert_eq!(status.code(), Some(5), "{}", pod.logs());
    assert!(
        pod.worker_log()
            .contains("stopped while waiting for the runner container"),
        "{}",
        pod.logs()
    );
    assert_eq!(world.sim.task(&pod.task).state, TaskState::Acquired);
}
