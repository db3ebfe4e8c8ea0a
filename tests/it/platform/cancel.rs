//! Cancellation in every task state: queued (at once), acquired (the controller hears it, removes the
//! Job and confirms), running (the worker hears graceful, then force, and finishes canceled).

use std::time::Duration;

use scalr_agent::platform::{AgentEvent, CancelMode, CancelSignal, TaskResult, TaskStatus};

use super::fixture::fixture;
use crate::support::platform_sim::{CancelMode as SimMode, Route, RunStatus, TaskState};

#[test]
fn a_queued_run_is_canceled_at_once() {
    let f = fixture();
    let run = f.queue();
    assert_eq!(f.sim.cancel_run(&run), Some(SimMode::Graceful));
    assert_eq!(f.sim.run(&run).status, RunStatus::Canceled);
    assert_eq!(
        f.sim.cancel_run(&run),
        None,
        "a final run cannot be canceled again"
    );
    let agent = f.agent("controller-0", 1);
    assert!(
        agent.poll(1, Duration::ZERO).expect("poll").is_empty(),
        "a canceled task is not offered"
    );
}

#[test]
fn an_acquired_task_is_canceled_by_its_controller() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, held) = f.acquired(&agent);
    let err = agent
        .confirm_cancel(&held.task.id)
        .expect_err("nothing to confirm yet");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("no-cancel-requested"))
    );

    f.sim.cancel_run(&run);
    let events = agent.poll(1, Duration::from_secs(5)).expect("poll");
    assert_eq!(
        events,
        vec![AgentEvent::Cancel(CancelSignal {
            task_id: held.task.id.clone(),
            run_id: run.clone(),
            mode: CancelMode::Graceful,
        })]
    );
    assert!(
        agent.poll(0, Duration::ZERO).expect("poll").is_empty(),
        "a signal is delivered once"
    );
    let held_now = agent.held_tasks().expect("held");
    assert_eq!(
        held_now[0].task.cancel_requested,
        Some(CancelMode::Graceful),
        "the list shows it"
    );

    let summary = agent.confirm_cancel(&held.task.id).expect("confirm");
    assert_eq!(summary.status, TaskStatus::Canceled);
    agent
        .confirm_cancel(&held.task.id)
        .expect("a repeated confirm is a success");
    assert_eq!(f.sim.run(&run).status, RunStatus::Canceled);
    let err = f
        .client
        .task(&held.task.id, held.token)
        .start()
        .expect_err("late worker");
    assert_eq!(err.code(), Some("task-completed"));
}

#[test]
fn a_running_task_hears_graceful_then_force_and_finishes_canceled() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, worker, spec) = f.started(&agent);
    assert_eq!(
        worker
            .wait_cancel(None, Duration::ZERO)
            .expect("no cancel yet"),
        None
    );

    let waiter = {
        let worker = worker.clone();
        std::thread::spawn(move || worker.wait_cancel(None, Duration::from_secs(20)))
    };
    f.sim.wait_until(
        Duration::from_secs(10),
        "the cancel wait to arrive",
        |sim| (sim.requests_of(Route::WaitCancel).len() >= 2).then_some(()),
    );
    f.sim.cancel_run(&run);
    assert_eq!(
        waiter.join().expect("waiter").expect("wait"),
        Some(CancelMode::Graceful)
    );
    assert_eq!(
        worker.heartbeat().expect("heartbeat"),
        Some(CancelMode::Graceful)
    );
    assert_eq!(
        worker.wait_cancel(None, Duration::ZERO).expect("level"),
        Some(CancelMode::Graceful)
    );
    assert_eq!(
        worker
            .wait_cancel(Some(CancelMode::Graceful), Duration::ZERO)
            .expect("no force"),
        None
    );
    let err = agent
        .confirm_cancel(&spec.id)
        .expect_err("the worker owns a started task");
    assert_eq!(err.code(), Some("task-started"));

    assert_eq!(f.sim.cancel_run(&run), Some(SimMode::Force));
    let force = worker
        .wait_cancel(Some(CancelMode::Graceful), Duration::from_secs(5))
        .expect("force");
    assert_eq!(force, Some(CancelMode::Force));
    // The controller heard both, once each.
    let signals: Vec<CancelMode> = agent
        .poll(0, Duration::ZERO)
        .expect("poll")
        .into_iter()
        .filter_map(|e| match e {
            AgentEvent::Cancel(c) => Some(c.mode),
            AgentEvent::Offer(_) => None,
        })
        .collect();
    assert_eq!(
        signals,
        vec![CancelMode::Force],
        "graceful was superseded before the agent polled"
    );

    worker
        .finish(&TaskResult::canceled("Run canceled: terraform interrupted"))
        .expect("finish");
    assert_eq!(f.sim.task(&spec.id).state, TaskState::Canceled);
    assert_eq!(f.sim.run(&run).status, RunStatus::Canceled);
    assert_eq!(
        worker
            .wait_cancel(None, Duration::from_secs(5))
            .expect("final"),
        Some(CancelMode::Force)
    );
}
