//! Every call of the protocol through the real client against the simulator: a run's whole life
//! (plan, artefacts, apply), what the worker receives, log offsets, artefact rules, final statuses and
//! how they advance the run.

use std::time::Duration;

use scalr_agent::platform::{
    AgentEvent, ArtefactKind, FinalStatus, MAX_LOG_CHUNK, PlatformError, ResourceCounts, Stage,
    TaskResult, TaskStatus, VariableCategory,
};

use super::fixture::{FAKE_TERRAFORM, fixture};
use crate::support::platform_sim::{
    Presence, Route, RunSpec, RunStatus, SimHooks, SimVariable, TaskState, tar_gz,
};

fn counts(additions: u64) -> ResourceCounts {
    ResourceCounts {
        additions,
        changes: 0,
        destructions: 0,
    }
}

#[test]
fn a_run_goes_through_plan_and_apply_over_the_protocol() {
    let f = fixture();
    let agent = f.agent("controller-0", 2);
    let session = agent.session();
    assert!(session.agent_id.starts_with("agent-"));
    assert_eq!(session.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(session.offline_threshold, Duration::from_secs(30));
    let info = agent.heartbeat(2).expect("heartbeat");
    assert_eq!(
        (info.name.as_str(), info.status.as_str()),
        ("controller-0", "idle")
    );

    let mut spec = RunSpec::new(&f.cv);
    spec.target_addrs = vec!["terraform_data.x".into()];
    spec.variables = vec![
        SimVariable::terraform("region", "eu-west-1"),
        SimVariable::shell("AWS_SECRET_ACCESS_KEY", "very-secret-key-123").sensitive(),
    ];
    spec.hooks = SimHooks {
        pre_plan: Some("./check.sh".into()),
        ..SimHooks::default()
    };
    let run = f.sim.queue_run(&f.ws, spec);
    let events = agent.poll(2, Duration::from_secs(5)).expect("poll");
    let [AgentEvent::Offer(offer)] = events.as_slice() else {
        panic!("expected one offer, got {events:?}");
    };
    assert_eq!(
        (offer.run_id.as_str(), &offer.stage, offer.attempt),
        (run.as_str(), &Stage::Plan, 1)
    );
    assert_eq!(
        (
            offer.workspace_name.as_str(),
            offer.environment_name.as_str()
        ),
        ("network", "production")
    );
    let lease = offer.expires_at.expect("offers say when their lease ends");
    assert!(lease > jiff::Timestamp::now(), "{lease}");

    let held = agent.acquire(&offer.task_id).expect("acquire");
    assert_eq!(held.task.status, TaskStatus::Acquired);
    assert_eq!(
        held.task.agent_id.as_deref(),
        Some(session.agent_id.as_str())
    );
    assert_eq!(agent.heartbeat(1).expect("heartbeat").status, "busy");
    assert_eq!(f.sim.run(&run).status, RunStatus::Planning);

    // The worker.
    let worker = f.client.task(&held.task.id, held.token.clone());
    let plan = worker.start().expect("start");
    assert_eq!(
        (plan.status, &plan.stage, plan.attempt),
        (TaskStatus::Running, &Stage::Plan, 1)
    );
    assert_eq!(plan.run.id, run);
    assert_eq!(plan.run.target_addrs, vec!["terraform_data.x".to_string()]);
    assert!(!plan.run.is_destroy && !plan.run.is_dry && plan.run.refresh && !plan.run.refresh_only);
    assert_eq!(
        (plan.workspace.id.as_str(), plan.workspace.name.as_str()),
        (f.ws.as_str(), "network")
    );
    assert_eq!(plan.environment.name, "production");
    assert_eq!(
        (plan.tool.name.as_str(), plan.tool.version.as_str()),
        ("terraform", "1.15.5")
    );
    assert_eq!(plan.hooks.pre_plan.as_deref(), Some("./check.sh"));
    assert_eq!(plan.hooks.post_apply, None);
    assert_eq!(plan.variables.len(), 2);
    let secret = &plan.variables[1];
    assert_eq!(
        (secret.category, secret.value.is_sensitive()),
        (VariableCategory::Shell, true)
    );
    assert_eq!(secret.value.expose(), "very-secret-key-123");
    assert!(
        !format!("{plan:?}").contains("very-secret-key-123"),
        "a sensitive value printed"
    );
    assert_eq!(plan.variables[0].value.expose(), "eu-west-1");
    assert!(plan.artefacts.is_empty());
    let backend = &plan.state_backend;
    assert_eq!(
        backend.address,
        format!("{}/api/iacp/v3/workspaces/{}/state", f.sim.url(), f.ws)
    );
    assert_eq!(backend.lock_address, format!("{}/lock", backend.address));
    assert_eq!(
        (backend.lock_method.as_str(), backend.username.as_str()),
        ("LOCK", "token")
    );
    assert_eq!(plan.run_token.expose(), f.sim.run_token(&run));
    assert_eq!(worker.get().expect("get").id, plan.id);

    let dir = tempfile::tempdir().expect("tempdir");
    let cv_path = dir.path().join("config.tar.gz");
    let size = worker
        .download(&plan.configuration_version.download, &cv_path)
        .expect("download cv");
    assert_eq!(std::fs::read(&cv_path).expect("read cv").len() as u64, size);
    let tool = plan
        .tool
        .download_for("linux_amd64")
        .expect("linux_amd64 build");
    assert_eq!(tool.format, "binary");
    let tool_path = dir.path().join("terraform");
    worker
        .download(&tool.download, &tool_path)
        .expect("download tool");
    assert_eq!(
        std::fs::read(&tool_path).expect("read tool"),
        FAKE_TERRAFORM
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        2,
        "no temporary files left"
    );

    let offset = worker.append_log(0, b"Initializing...\n").expect("log");
    let offset = worker.append_log(offset, b"Plan: 1 to add\n").expect("log");
    assert_eq!(worker.heartbeat().expect("task heartbeat"), None);
    worker
        .upload_artefact(&run, ArtefactKind::PlanFile, b"binary plan")
        .expect("plan file");
    worker
        .upload_artefact(
            &run,
            ArtefactKind::PlanJson,
            b"{\"format_version\":\"1.2\"}",
        )
        .expect("plan json");
    let done = worker
        .finish(&TaskResult::finished(
            true,
            counts(1),
            "Plan: 1 to add, 0 to change, 0 to destroy.",
        ))
        .expect("finish plan");
    assert_eq!(done.status, TaskStatus::Finished);
    assert_eq!(f.sim.log(&plan.id), b"Initializing...\nPlan: 1 to add\n");
    assert_eq!(offset, 31);
    assert_eq!(f.sim.run(&run).status, RunStatus::ApplyQueued);

    // The apply stage, on the same agent.
    let apply_task = f.offered(&agent);
    let held = agent.acquire(&apply_task).expect("acquire apply");
    let worker = f.client.task(&held.task.id, held.token);
    let apply = worker.start().expect("start apply");
    assert_eq!(apply.stage, Stage::Apply);
    assert_eq!(f.sim.run(&run).status, RunStatus::Applying);
    let kinds: Vec<ArtefactKind> = apply.artefacts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, vec![ArtefactKind::PlanFile, ArtefactKind::PlanJson]);
    let plan_path = dir.path().join("plan.tfplan");
    worker
        .download(&apply.artefacts[0].download, &plan_path)
        .expect("download plan file");
    assert_eq!(
        std::fs::read(&plan_path).expect("read plan"),
        b"binary plan"
    );
    worker
        .append_log(0, b"Apply complete!\n")
        .expect("apply log");
    worker
        .finish(&TaskResult::finished(
            true,
            counts(1),
            "Apply complete! Resources: 1 added.",
        ))
        .expect("finish apply");
    let view = f.sim.run(&run);
    assert_eq!(view.status, RunStatus::Applied, "{}", f.sim.dump());
    assert_eq!(
        view.message.as_deref(),
        Some("Apply complete! Resources: 1 added.")
    );

    assert!(agent.held_tasks().expect("held").is_empty());
    assert_eq!(
        agent.task(&apply_task).expect("one task").status,
        TaskStatus::Finished
    );
    agent.deregister().expect("deregister");
    assert_eq!(
        f.sim.agent(&session.agent_id).presence,
        Presence::Deregistered
    );
    agent
        .deregister()
        .expect("a repeated deregister is still a success");
}

#[test]
fn plan_only_and_no_change_plans_end_the_run_after_the_plan() {
    // (plan-only, plan has changes) -> run status after the plan
    let cases = [
        (false, true, RunStatus::ApplyQueued),
        (false, false, RunStatus::PlannedAndFinished),
        (true, true, RunStatus::PlannedAndFinished),
        (true, false, RunStatus::PlannedAndFinished),
    ];
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    for (is_dry, has_changes, expected) in cases {
        let mut spec = RunSpec::new(&f.cv);
        spec.is_dry = is_dry;
        let run = f.sim.queue_run(&f.ws, spec);
        let task = f.offered(&agent);
        let held = agent.acquire(&task).expect("acquire");
        let worker = f.client.task(&task, held.token);
        assert_eq!(worker.start().expect("start").run.is_dry, is_dry);
        worker
            .finish(&TaskResult::finished(
                has_changes,
                counts(u64::from(has_changes)),
                "planned",
            ))
            .expect("finish");
        assert_eq!(
            f.sim.run(&run).status,
            expected,
            "is_dry={is_dry} has_changes={has_changes}"
        );
        if expected == RunStatus::ApplyQueued {
            f.sim.cancel_run(&run);
            assert_eq!(f.sim.run(&run).status, RunStatus::Canceled);
        }
    }
}

#[test]
fn an_errored_task_errors_the_run_and_final_statuses_do_not_change() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, worker, spec) = f.started(&agent);
    let result = TaskResult::errored("Error: Invalid reference");
    worker.finish(&result).expect("finish errored");
    worker
        .finish(&result)
        .expect("an identical repeat succeeds");
    let err = worker
        .finish(&TaskResult::finished(false, counts(0), "ok"))
        .expect_err("different result");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("task-completed")),
        "{err}"
    );
    assert_eq!(
        f.sim.task(&spec.id).result.map(|r| r.status),
        Some(TaskState::Errored)
    );
    let view = f.sim.run(&run);
    assert_eq!(
        (view.status, view.message.as_deref()),
        (RunStatus::Errored, Some("Error: Invalid reference"))
    );
    // After the final status nothing more may be written.
    let err = worker.append_log(0, b"late").expect_err("log after finish");
    assert_eq!(err.code(), Some("task-completed"));
}

#[test]
fn canceled_is_only_a_final_status_after_a_cancel_request() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (_, worker, _) = f.started(&agent);
    let err = worker
        .finish(&TaskResult::canceled("stopped"))
        .expect_err("no cancel was requested");
    assert_eq!(
        (err.status(), err.code()),
        (Some(422), Some("invalid-final-status")),
        "{err}"
    );
    assert_eq!(TaskResult::canceled("x").status, FinalStatus::Canceled);
}

#[test]
fn log_appends_are_idempotent_and_reject_gaps_and_mismatches() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (_, worker, spec) = f.started(&agent);
    assert_eq!(worker.append_log(0, b"").expect("empty append"), 0);
    assert_eq!(worker.append_log(0, b"abc").expect("append"), 3);
    assert_eq!(
        worker.append_log(0, b"abc").expect("repeat"),
        3,
        "a repeated append is a no-op"
    );
    assert_eq!(worker.append_log(1, b"bc").expect("inner repeat"), 3);
    assert_eq!(
        worker.append_log(1, b"bcde").expect("overlap"),
        5,
        "the new tail is appended"
    );
    let gap = worker.append_log(10, b"x").expect_err("gap");
    assert_eq!(
        (gap.status(), gap.code(), gap.expected_offset()),
        (Some(409), Some("log-gap"), Some(5))
    );
    let mismatch = worker.append_log(0, b"xyz").expect_err("different bytes");
    assert_eq!(
        (mismatch.code(), mismatch.expected_offset()),
        (Some("log-mismatch"), Some(5))
    );
    // A chunk larger than the limit goes out in pieces, each a valid append.
    let big = vec![b'.'; MAX_LOG_CHUNK * 2 + 10];
    assert_eq!(
        worker.append_log(5, &big).expect("big append"),
        5 + big.len() as u64
    );
    assert_eq!(
        f.sim
            .requests_of(Route::AppendLog)
            .last()
            .and_then(|r| r.status),
        Some(200)
    );
    let log = f.sim.log(&spec.id);
    assert_eq!((&log[..5], log.len()), (&b"abcde"[..], 5 + big.len()));
}

#[test]
fn artefacts_are_write_once_and_plan_stage_only() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, worker, _) = f.started(&agent);
    worker
        .upload_artefact(&run, ArtefactKind::PlanFile, b"plan-v1")
        .expect("upload");
    worker
        .upload_artefact(&run, ArtefactKind::PlanFile, b"plan-v1")
        .expect("same bytes again");
    let err = worker
        .upload_artefact(&run, ArtefactKind::PlanFile, b"plan-v2")
        .expect_err("other bytes");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("artefact-exists"))
    );
    assert_eq!(
        f.sim.artefact(&run, "plan-file").as_deref(),
        Some(&b"plan-v1"[..])
    );
    worker
        .finish(&TaskResult::finished(true, counts(1), "planned"))
        .expect("finish");

    let task = f.offered(&agent);
    let held = agent.acquire(&task).expect("acquire apply");
    let apply = f.client.task(&task, held.token);
    apply.start().expect("start apply");
    let err = apply
        .upload_artefact(&run, ArtefactKind::PlanJson, b"{}")
        .expect_err("apply uploads");
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("out-of-scope"))
    );
}

#[test]
fn a_corrupted_download_is_rejected_and_leaves_no_file() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (_, worker, spec) = f.started(&agent);
    let mut wrong = spec.configuration_version.download.clone();
    wrong.sha256 = "00".repeat(32);
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("config.tar.gz");
    let err = worker
        .download(&wrong, &dest)
        .expect_err("checksum mismatch");
    assert!(matches!(err, PlatformError::Checksum { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "no partial file left"
    );
    assert_eq!(
        f.sim.requests_of(Route::DownloadConfigurationVersion).len(),
        5,
        "retried within the policy"
    );
}

#[test]
fn a_tar_gz_tool_and_a_working_directory_reach_the_worker() {
    let f = fixture();
    let ws = f.sim.create_workspace_with(
        &f.pool.id,
        "staging",
        "apps",
        "terraform",
        "1.0.3",
        "stacks/apps",
    );
    let archive = tar_gz(&[("terraform", b"#!/bin/sh\n")]);
    f.sim.register_tool(
        "terraform",
        "1.0.3",
        "linux_amd64",
        "tar.gz",
        archive.clone(),
    );
    f.sim
        .register_tool("terraform", "1.0.3", "linux_arm64", "tar.gz", archive);
    let cv = f
        .sim
        .upload_configuration_version(&ws, tar_gz(&[("stacks/apps/main.tf", b"")]));
    f.sim.queue_run(&ws, RunSpec::new(&cv));
    let agent = f.agent("controller-0", 1);
    let task = f.offered(&agent);
    let held = agent.acquire(&task).expect("acquire");
    let spec = f.client.task(&task, held.token).start().expect("start");
    assert_eq!(spec.workspace.working_directory, "stacks/apps");
    assert_eq!(spec.tool.version, "1.0.3");
    assert_eq!(spec.tool.downloads.len(), 2);
    assert_eq!(
        spec.tool
            .download_for("linux_arm64")
            .map(|d| d.format.as_str()),
        Some("tar.gz")
    );
    assert_eq!(spec.environment.name, "staging");
}

#[test]
fn the_controller_fails_a_task_with_a_reason_once() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, held) = f.acquired(&agent);
    let reason = "pod never started: ImagePullBackOff for scalr/runner:nope";
    let summary = agent.fail_task(&held.task.id, reason).expect("fail");
    assert_eq!(summary.status, TaskStatus::Errored);
    agent
        .fail_task(&held.task.id, reason)
        .expect("a repeated fail is a success");
    let view = f.sim.run(&run);
    assert_eq!(
        (view.status, view.message.as_deref()),
        (RunStatus::Errored, Some(reason))
    );
    // Its worker, starting late, learns the task is over.
    let err = f
        .client
        .task(&held.task.id, held.token)
        .start()
        .expect_err("start after fail");
    assert_eq!(err.code(), Some("task-completed"));

    // A task the worker finished cannot be failed by the controller; one held by another agent
    // cannot be failed at all.
    let (_, worker, spec) = f.started(&agent);
    worker
        .finish(&TaskResult::finished(false, counts(0), "No changes."))
        .expect("finish");
    let err = agent
        .fail_task(&spec.id, "pod vanished")
        .expect_err("fail after finish");
    assert_eq!(err.code(), Some("task-completed"));
    let other = f.agent("controller-1", 1);
    let (_, held) = f.acquired(&agent);
    let err = other
        .fail_task(&held.task.id, "not mine")
        .expect_err("fail another agent's task");
    assert_eq!(
        (err.status(), err.code()),
        (Some(403), Some("out-of-scope"))
    );
}

#[test]
fn offers_respect_free_capacity_and_leases() {
    let f = fixture();
    let a = f.agent("controller-a", 2);
    let b = f.agent("controller-b", 5);
    let runs: Vec<String> = (0..3).map(|_| f.queue()).collect();
    let offers = |events: Vec<AgentEvent>| -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| match e {
                AgentEvent::Offer(o) => Some(o.run_id),
                AgentEvent::Cancel(_) => None,
            })
            .collect()
    };
    assert_eq!(
        offers(a.poll(2, Duration::ZERO).expect("poll a")),
        runs[..2].to_vec(),
        "oldest first"
    );
    assert_eq!(
        offers(b.poll(5, Duration::ZERO).expect("poll b")),
        runs[2..].to_vec(),
        "a's offers are leased"
    );
    assert!(
        offers(a.poll(2, Duration::ZERO).expect("poll a")).is_empty(),
        "a lease is offered once"
    );
    assert!(
        offers(b.poll(0, Duration::ZERO).expect("poll b")).is_empty(),
        "no capacity, no offers"
    );
    f.sim
        .advance(f.sim.config().offer_lease + Duration::from_secs(1));
    let lapsed = offers(b.poll(5, Duration::ZERO).expect("poll b"));
    assert_eq!(lapsed, runs.to_vec(), "lapsed leases are offered again");
}

#[test]
fn a_waiting_poll_returns_when_a_run_is_queued() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let poller = {
        let agent = agent.clone();
        std::thread::spawn(move || agent.poll(1, Duration::from_secs(20)))
    };
    f.sim
        .wait_until(Duration::from_secs(10), "the poll to arrive", |sim| {
            (!sim.requests_of(Route::Events).is_empty()).then_some(())
        });
    let run = f.queue();
    let events = poller.join().expect("poller thread").expect("poll");
    assert!(
        matches!(events.as_slice(), [AgentEvent::Offer(o)] if o.run_id == run),
        "{events:?}"
    );
}
