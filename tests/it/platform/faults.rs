//! The client under every scripted fault: a run's whole life with each call's first attempt answered
//! 429, 503 or 500, dropped, its response lost after the server acted (idempotency), or slowed;
//! hung long-polls; Retry-After as a floor; bounded attempts.

use std::time::Duration;

use scalr_agent::http::{HttpOptions, Retryable, Verdict};
use scalr_agent::platform::{
    AgentClient, AgentEvent, ArtefactKind, PlatformClient, PlatformError, ResourceCounts,
    TaskResult,
};

use super::fixture::{Fixture, fixture, policy};
use crate::support::platform_sim::{Fault, Route, RunStatus};

/// Polls (1 s waits) until an offer or a cancel arrives; an offer whose response was lost comes back
/// once its lease lapses.
fn next_event(f: &Fixture, agent: &AgentClient) -> AgentEvent {
    for _ in 0..4 {
        if let Some(event) = agent
            .poll(1, Duration::from_secs(1))
            .expect("poll")
            .into_iter()
            .next()
        {
            return event;
        }
        f.sim
            .advance(f.sim.config().offer_lease + Duration::from_secs(1));
    }
    panic!("no event\n{}", f.sim.dump());
}

fn offer(f: &Fixture, agent: &AgentClient) -> String {
    match next_event(f, agent) {
        AgentEvent::Offer(o) => o.task_id,
        other => panic!("expected an offer, got {other:?}"),
    }
}

/// Walks a plan-and-apply run, a canceled run and a failed run through every call, with `fault`
/// injected for the first request of each call's route.
fn lifecycle_with(fault: Fault) {
    let f = fixture();
    let inject = |route: Route| f.sim.inject(route, 1, fault.clone());
    let counts = ResourceCounts {
        additions: 1,
        changes: 0,
        destructions: 0,
    };

    inject(Route::Register);
    let agent = f.agent("controller-0", 1);
    inject(Route::Heartbeat);
    agent.heartbeat(1).expect("heartbeat");
    let run = f.queue();
    inject(Route::Events);
    let task = offer(&f, &agent);
    inject(Route::Acquire);
    let held = agent.acquire(&task).expect("acquire");
    inject(Route::HeldTasks);
    assert_eq!(agent.held_tasks().expect("held tasks").len(), 1);
    inject(Route::AgentTask);
    agent.task(&task).expect("one task");

    let worker = f.client.task(&task, held.token.clone());
    inject(Route::StartTask);
    let spec = worker.start().expect("start");
    inject(Route::GetTask);
    worker.get().expect("get");
    let dir = tempfile::tempdir().expect("tempdir");
    inject(Route::DownloadConfigurationVersion);
    worker
        .download(
            &spec.configuration_version.download,
            &dir.path().join("cv.tar.gz"),
        )
        .expect("download cv");
    inject(Route::DownloadTool);
    let tool = spec.tool.download_for("linux_amd64").expect("tool");
    worker
        .download(&tool.download, &dir.path().join("terraform"))
        .expect("download tool");
    inject(Route::AppendLog);
    assert_eq!(worker.append_log(0, b"hello ").expect("log"), 6);
    assert_eq!(worker.append_log(6, b"world").expect("log"), 11);
    inject(Route::TaskHeartbeat);
    assert_eq!(worker.heartbeat().expect("task heartbeat"), None);
    inject(Route::WaitCancel);
    assert_eq!(
        worker
            .wait_cancel(None, Duration::ZERO)
            .expect("wait cancel"),
        None
    );
    inject(Route::UploadArtefact);
    worker
        .upload_artefact(&run, ArtefactKind::PlanFile, b"plan")
        .expect("upload");
    inject(Route::FinishTask);
    worker
        .finish(&TaskResult::finished(true, counts, "planned"))
        .expect("finish plan");

    let apply = offer(&f, &agent);
    let held_apply = agent.acquire(&apply).expect("acquire apply");
    let apply_worker = f.client.task(&apply, held_apply.token);
    let apply_spec = apply_worker.start().expect("start apply");
    inject(Route::DownloadArtefact);
    apply_worker
        .download(&apply_spec.artefacts[0].download, &dir.path().join("plan"))
        .expect("download artefact");
    apply_worker
        .finish(&TaskResult::finished(true, counts, "applied"))
        .expect("finish apply");
    assert_eq!(
        f.sim.run(&run).status,
        RunStatus::Applied,
        "{}",
        f.sim.dump()
    );
    assert_eq!(f.sim.log(&task), b"hello world");
    assert_eq!(
        std::fs::read(dir.path().join("plan")).expect("plan"),
        b"plan"
    );

    // A canceled run: the controller confirms.
    let canceled = f.queue();
    let task = offer(&f, &agent);
    agent.acquire(&task).expect("acquire");
    f.sim.cancel_run(&canceled);
    assert!(matches!(next_event(&f, &agent), AgentEvent::Cancel(_)));
    inject(Route::ConfirmCancel);
    agent.confirm_cancel(&task).expect("confirm cancel");
    assert_eq!(f.sim.run(&canceled).status, RunStatus::Canceled);

    // A failed run: the controller fails it.
    let failed = f.queue();
    let task = offer(&f, &agent);
    agent.acquire(&task).expect("acquire");
    inject(Route::FailTask);
    agent.fail_task(&task, "pod never started").expect("fail");
    assert_eq!(f.sim.run(&failed).status, RunStatus::Errored);

    inject(Route::Deregister);
    agent.deregister().expect("deregister");
    assert_eq!(f.sim.pending_faults(), 0, "every fault was met");
    assert_eq!(
        f.sim.agents().len(),
        1,
        "retried registrations did not make a second agent"
    );
    let faulted = f
        .sim
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faulted, 19, "one fault per route");
}

#[test]
fn every_call_is_retried_after_429_with_retry_after() {
    lifecycle_with(Fault::throttled(0));
}

#[test]
fn every_call_is_retried_after_503_with_retry_after() {
    lifecycle_with(Fault::unavailable(0));
}

#[test]
fn every_call_is_retried_after_500() {
    lifecycle_with(Fault::server_error());
}

#[test]
fn every_call_is_retried_after_a_dropped_connection() {
    lifecycle_with(Fault::Drop);
}

#[test]
fn every_call_is_idempotent_when_its_response_is_lost() {
    lifecycle_with(Fault::LoseResponse);
}

#[test]
fn every_call_survives_slow_responses() {
    lifecycle_with(Fault::Delay(Duration::from_millis(200)));
}

#[test]
fn retry_after_is_a_floor_between_attempts() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    f.sim.inject(Route::Heartbeat, 1, Fault::unavailable(1));
    agent.heartbeat(1).expect("heartbeat");
    let attempts = f.sim.requests_of(Route::Heartbeat);
    assert_eq!(attempts.len(), 2);
    let gap = attempts[1].at.duration_since(attempts[0].at);
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, before Retry-After: 1"
    );
}

#[test]
fn a_retry_after_beyond_the_policy_goes_back_to_the_caller() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    f.sim.inject(Route::Heartbeat, 1, Fault::throttled(3600));
    let err = agent.heartbeat(1).expect_err("too long to wait here");
    assert_eq!(
        err.verdict(),
        Verdict::Retry {
            after: Some(Duration::from_secs(3600))
        }
    );
    assert!(
        matches!(err, PlatformError::Unavailable { status: 429, .. }),
        "{err:?}"
    );
    assert_eq!(f.sim.requests_of(Route::Heartbeat).len(), 1);
}

#[test]
fn persistent_server_errors_stop_after_the_bounded_attempts() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    f.sim.inject(Route::Heartbeat, 50, Fault::server_error());
    let err = agent.heartbeat(1).expect_err("still failing");
    assert_eq!(err.status(), Some(500));
    assert_eq!(
        f.sim.requests_of(Route::Heartbeat).len() as u32,
        policy().max_attempts
    );
}

#[test]
fn permanent_errors_are_not_retried() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let err = agent.acquire("task-unknown").expect_err("404");
    assert_eq!(
        (err.status(), err.verdict()),
        (Some(404), Verdict::Permanent)
    );
    assert_eq!(f.sim.requests_of(Route::Acquire).len(), 1);
}

#[test]
fn hung_long_polls_time_out_and_are_retried() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    // Read timeout = 1 s wait + 2 s margin; the simulator holds the request for 6 s.
    f.sim
        .inject(Route::Events, 1, Fault::Hang(Duration::from_secs(6)));
    let run = f.queue();
    let events = agent
        .poll(1, Duration::from_secs(1))
        .expect("poll after a hang");
    assert!(
        matches!(events.as_slice(), [AgentEvent::Offer(o)] if o.run_id == run),
        "{events:?}"
    );
    let task = match &events[0] {
        AgentEvent::Offer(o) => o.task_id.clone(),
        AgentEvent::Cancel(_) => unreachable!("matched above"),
    };
    let held = agent.acquire(&task).expect("acquire");
    let worker = f.client.task(&task, held.token);
    worker.start().expect("start");
    f.sim
        .inject(Route::WaitCancel, 1, Fault::Hang(Duration::from_secs(6)));
    f.sim.cancel_run(&run);
    let mode = worker
        .wait_cancel(None, Duration::from_secs(1))
        .expect("wait after a hang");
    assert!(mode.is_some());
    let statuses: Vec<Option<u16>> = f
        .sim
        .requests_of(Route::WaitCancel)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![None, Some(200)],
        "the hung request was never answered"
    );
}

#[test]
fn a_response_slower_than_the_read_timeout_is_retried() {
    let f = fixture();
    let options = HttpOptions {
        read_timeout: Duration::from_millis(300),
        ..HttpOptions::default()
    };
    let client = PlatformClient::new(&f.sim.url(), &options)
        .expect("client")
        .with_retry(policy());
    let agent = client
        .register(
            &f.pool_token(),
            &scalr_agent::platform::Registration::kubernetes_controller("slow", 1),
        )
        .expect("register");
    f.sim
        .inject(Route::Heartbeat, 1, Fault::Delay(Duration::from_secs(2)));
    agent.heartbeat(1).expect("heartbeat after a timeout");
    assert_eq!(f.sim.requests_of(Route::Heartbeat).len(), 2);
}
