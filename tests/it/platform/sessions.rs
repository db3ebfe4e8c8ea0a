//! Sessions and tokens: an agent that stops heartbeating goes offline and its unstarted tasks are
//! offered again with their old tokens fenced; a 410 makes the client register again; a restarted
//! controller keeps its tasks; revoked tokens are fatal; silent workers lose their task; and no token
//! ever shows in a `Debug`, a `Display` or an error.

use std::time::Duration;

use scalr_agent::http::{Retryable, Verdict};
use scalr_agent::platform::{PlatformError, Registration, TaskResult, TaskStatus};
use scalr_agent::secret::Secret;

use super::fixture::fixture;
use crate::support::platform_sim::{Fault, Presence, Route, RunStatus, TaskState};

#[test]
fn an_unstarted_task_is_offered_again_when_its_agent_goes_offline_and_the_old_token_is_fenced() {
    let f = fixture();
    let a = f.agent("controller-a", 1);
    let b = f.agent("controller-b", 1);
    let (run, held) = f.acquired(&a);
    // The started task of another run stays with its worker when the agent goes away.
    let (_, running_worker, running) = f.started(&a);

    // b keeps heartbeating, a does not; the clock passes the offline threshold.
    f.sim.advance(Duration::from_secs(20));
    b.heartbeat(1).expect("b heartbeat");
    f.sim.advance(Duration::from_secs(11));
    assert_eq!(
        f.sim.agent(&a.session().agent_id).presence,
        Presence::Offline
    );
    assert_eq!(
        f.sim.agent(&b.session().agent_id).presence,
        Presence::Online
    );
    let task = f.sim.task(&held.task.id);
    assert_eq!(
        (task.state, task.attempt, task.holder),
        (TaskState::Queued, 2, None)
    );
    assert_eq!(f.sim.run(&run).status, RunStatus::PlanQueued);
    assert_eq!(
        f.sim.task(&running.id).state,
        TaskState::Running,
        "a started task stays"
    );
    running_worker
        .append_log(0, b"still here")
        .expect("the running worker carries on");

    let offered = f.offered(&b);
    assert_eq!(offered, held.task.id);
    let again = b.acquire(&offered).expect("b acquires the re-offered task");
    assert_eq!(again.task.attempt, 2);
    let stale = f
        .client
        .task(&held.task.id, held.token.clone())
        .start()
        .expect_err("fenced");
    assert!(stale.is_unauthorized(), "{stale:?}");
    assert_eq!(stale.verdict(), Verdict::Fatal);
    f.client
        .task(&again.task.id, again.token)
        .start()
        .expect("the new attempt starts");
}

#[test]
fn an_expired_session_registers_again_transparently() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let first = agent.session();
    f.sim.expire_session(&first.agent_id);
    assert_eq!(agent.generation(), 0);
    let info = agent.heartbeat(1).expect("heartbeat after expiry");
    assert_eq!(agent.generation(), 1);
    assert_eq!(info.id, first.agent_id, "registration is keyed by name");
    assert_ne!(agent.session().token, first.token, "a new session token");
    let statuses: Vec<Option<u16>> = f
        .sim
        .requests_of(Route::Heartbeat)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![Some(410), Some(200)]);
    assert_eq!(f.sim.requests_of(Route::Register).len(), 2);
    assert_eq!(f.sim.agents().len(), 1);
}

#[test]
fn a_call_fenced_by_another_threads_registration_waits_for_it_and_is_repeated() {
    // Thread A finds the session expired and registers again; the platform fences the old session
    // as soon as it handles that, but A learns the new token only when the answer arrives. A call
    // from thread B in between is refused (401) with the old token: it must wait for A, then be
    // repeated with the new session, not be taken for a revoked credential.
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    f.sim.expire_session(&agent.session().agent_id);
    f.sim.inject(
        Route::Register,
        1,
        Fault::SlowResponse(Duration::from_millis(1500)),
    );
    let renewing = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.heartbeat(1))
    };
    f.sim
        .wait_until(Duration::from_secs(10), "the registration handled", |sim| {
            sim.requests_of(Route::Register)
                .iter()
                .skip(1)
                .any(|r| r.status == Some(201))
                .then_some(())
        });
    assert_eq!(agent.generation(), 0, "A has not seen the answer yet");
    let held = agent.held_tasks().expect("repeated with the new session");
    assert!(held.is_empty());
    assert_eq!(agent.generation(), 1);
    renewing
        .join()
        .expect("thread A")
        .expect("heartbeat after registering again");
    let statuses: Vec<Option<u16>> = f
        .sim
        .requests_of(Route::HeldTasks)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![Some(401), Some(200)]);
}

#[test]
fn a_session_expiring_during_a_long_poll_registers_again() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let poller = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.poll(1, Duration::from_secs(3)))
    };
    f.sim
        .wait_until(Duration::from_secs(10), "the poll to wait", |sim| {
            (!sim.requests_of(Route::Events).is_empty()).then_some(())
        });
    f.sim.advance(Duration::from_secs(31));
    let events = poller.join().expect("poller").expect("poll");
    assert!(events.is_empty());
    assert_eq!(agent.generation(), 1);
    let statuses: Vec<Option<u16>> = f
        .sim
        .requests_of(Route::Events)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![Some(410), Some(200)]);
}

#[test]
fn a_restarted_controller_with_the_same_name_keeps_its_tasks() {
    let f = fixture();
    let before = f.agent("controller-0", 2);
    let (_, held) = f.acquired(&before);
    let after = f.agent("controller-0", 2);
    assert_eq!(after.session().agent_id, before.session().agent_id);
    let tasks = after.held_tasks().expect("held tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].task.id, held.task.id);
    assert_eq!(
        tasks[0].token, held.token,
        "the token the Job's Secret needs"
    );
    assert_eq!(
        after.task(&held.task.id).expect("one task").status,
        TaskStatus::Acquired
    );
    // The replaced session is gone for whoever still holds it.
    let err = before.heartbeat(1).expect_err("old session");
    assert!(err.is_unauthorized(), "{err:?}");
    assert!(
        err.to_string()
            .contains("replaced by an agent with the same name"),
        "{err}"
    );
}

#[test]
fn a_revoked_pool_token_is_fatal_for_registration_and_its_sessions() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (_, held) = f.acquired(&agent);
    f.sim.revoke_token(&f.pool.token);
    let err = agent
        .heartbeat(1)
        .expect_err("session of a revoked pool token");
    assert_eq!(err.verdict(), Verdict::Fatal);
    assert_eq!(
        f.sim.requests_of(Route::Heartbeat).len(),
        1,
        "401 is never retried"
    );
    let err = f
        .client
        .register(
            &f.pool_token(),
            &Registration::kubernetes_controller("controller-1", 1),
        )
        .expect_err("register with a revoked token");
    assert!(matches!(err, PlatformError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("SCALR_AGENT_TOKEN"), "{err}");
    assert_eq!(
        f.sim.task(&held.task.id).state,
        TaskState::Queued,
        "its unstarted task is offered again"
    );
    // A second pool token still works.
    let token = Secret::new(f.sim.create_pool_token(&f.pool.id));
    f.client
        .register(
            &token,
            &Registration::kubernetes_controller("controller-1", 1),
        )
        .expect("register with a fresh token");
}

#[test]
fn a_deregistered_agent_releases_its_unstarted_tasks_at_once() {
    let f = fixture();
    let agent = f.agent("controller-0", 2);
    let (_, held) = f.acquired(&agent);
    let (_, _, running) = f.started(&agent);
    agent.deregister().expect("deregister");
    assert_eq!(f.sim.task(&held.task.id).state, TaskState::Queued);
    assert_eq!(f.sim.task(&held.task.id).attempt, 2);
    assert_eq!(f.sim.task(&running.id).state, TaskState::Running);
    let err = agent
        .poll(1, Duration::ZERO)
        .expect_err("a deregistered session");
    assert!(err.is_unauthorized());
}

#[test]
fn a_silent_worker_loses_its_task() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, worker, spec) = f.started(&agent);
    f.sim.advance(Duration::from_secs(100));
    worker.heartbeat().expect("heartbeat keeps it");
    f.sim.advance(Duration::from_secs(100));
    assert_eq!(f.sim.task(&spec.id).state, TaskState::Running);
    f.sim.advance(Duration::from_secs(21));
    let view = f.sim.run(&run);
    assert_eq!(view.status, RunStatus::Errored);
    assert!(
        view.message.unwrap_or_default().starts_with("worker lost"),
        "{}",
        f.sim.dump()
    );
    let err = worker
        .finish(&TaskResult::errored("too late"))
        .expect_err("finish after loss");
    assert_eq!(err.code(), Some("task-completed"));
}

#[test]
fn tokens_never_show_in_debug_display_or_errors() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (_, held) = f.acquired(&agent);
    let worker = f.client.task(&held.task.id, held.token.clone());
    let spec = worker.start().expect("start");
    let mut printed = vec![
        format!("{agent:?}"),
        format!("{:?}", agent.session()),
        format!("{held:?}"),
        format!("{worker:?}"),
        format!("{spec:?}"),
        format!("{:?}", f.client),
    ];
    // Errors of every kind, each with its Display and Debug.
    let errors = vec![
        worker.append_log(7, b"gap").expect_err("gap"),
        f.client
            .task(&held.task.id, Secret::new("not-a-real-token-but-long"))
            .get()
            .expect_err("bad token"),
        agent.acquire("task-does-not-exist").expect_err("404"),
        agent.acquire("../escape").expect_err("invalid id"),
    ];
    for e in &errors {
        printed.push(format!("{e} {e:?}"));
    }
    let tokens = [
        f.pool.token.clone(),
        agent.session().token.expose().to_string(),
        held.token.expose().to_string(),
        spec.run_token.expose().to_string(),
        "not-a-real-token-but-long".to_string(),
    ];
    for text in &printed {
        for token in &tokens {
            assert!(
                !text.contains(token.as_str()),
                "a token leaked into: {text}"
            );
        }
    }
    assert_eq!(errors[2].status(), Some(404));
    assert!(matches!(errors[3], PlatformError::InvalidArgument { .. }));
}
