//! A plan-and-apply run through the whole system, then a second run that finds no changes.

use super::*;
use crate::support::platform_sim::RunStatus;

#[test]
fn a_run_is_planned_and_applied_through_jobs_and_its_state_lands_on_the_platform() {
    let world = world(4);
    let _controller = world.start_controller("scalr-agent-7d9f8-abcde");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, RUN_TIMEOUT);
    assert_eq!(view.status, RunStatus::Applied, "{}", world.diagnostics());
    let log = world.run_log(&run);
    for expected in [
        "Plan: 1 to add, 0 to change, 0 to destroy",
        "provisioned: hello",
        "Apply complete! Resources: 1 added",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    let state = world
        .platform
        .state(&view.workspace)
        .expect("state on the platform");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    assert_eq!(state["resources"][0]["type"], "terraform_data");
    assert_eq!(view.tasks.len(), 2, "a plan task and an apply task");
    let created = world.job_creations();
    assert_eq!(created.len(), 2, "one Job per task: {created:?}");
    assert_no_double_launch(&world);
    world.wait_clean(RUN_TIMEOUT);

    // A second run of the same configuration plans no changes and ends after the plan.
    let again = world.queue_run_in(&view.workspace, &[("main.tf", SAMPLE_TF)], |_| {});
    let view = world.wait_terminal(&again, RUN_TIMEOUT);
    assert_eq!(
        view.status,
        RunStatus::PlannedAndFinished,
        "{}",
        world.diagnostics()
    );
    assert!(world.run_log(&again).contains("No changes."));
    world.wait_clean(RUN_TIMEOUT);
    assert_no_double_launch(&world);
}
