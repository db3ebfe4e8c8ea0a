//! Whole runs: plan then apply with the state on the platform, a second plan without changes, a
//! destroy run, hooks and `SCALR_AGENT_ENV`, the run environment and variables, a failing plan,
//! and a targeted plan-only run.

use super::*;
use crate::support::platform_sim::{Route, SimHooks, SimVariable, TaskState};

const MAIN_TF: &str = r#"
variable "greeting" {
  type = string
}

resource "terraform_data" "hello" {
  input = var.greeting

  provisioner "local-exec" {
    command = "echo local-exec says $GREETING_FROM_SHELL"
  }
}

output "greeting" {
  value = terraform_data.hello.output
}
"#;

fn spec(cv: &str) -> RunSpec {
    let mut spec = RunSpec::new(cv);
    spec.variables = vec![
        SimVariable::terraform("greeting", "hello"),
        SimVariable::shell("GREETING_FROM_SHELL", "hi-from-a-shell-variable"),
    ];
    spec
}

fn resources(world: &World) -> Vec<serde_json::Value> {
    let state = world.sim.state(&world.ws).expect("a state on the platform");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    state["resources"].as_array().cloned().unwrap_or_default()
}

#[test]
fn plan_then_apply_keeps_state_on_the_platform_then_no_changes_then_destroy() {
    let world = world();
    let cv = world.cv(&[("main.tf", MAIN_TF)]);
    let options = PodOptions::default();

    // Plan: changes, artefacts uploaded, the apply stage queued.
    let run = world.sim.queue_run(&world.ws, spec(&cv));
    let mut plan_pod = world.run_stage(&run, Stage::Plan, &options);
    let plan_task = world.sim.task(&plan_pod.task);
    let result = plan_task.result.expect("a result");
    assert_eq!(result.status, TaskState::Finished, "{}", plan_pod.logs());
    assert!(result.has_changes);
    assert_eq!(
        (result.additions, result.changes, result.destructions),
        (1, 0, 0)
    );
    assert_eq!(result.message, "Plan: 1 to add, 0 to change, 0 to destroy.");
    assert_eq!(world.sim.run(&run).status, RunStatus::ApplyQueued);
    assert!(world.sim.artefact(&run, "plan-file").is_some());
    let plan_json: serde_json::Value = serde_json::from_slice(
        &world
            .sim
            .artefact(&run, "plan-json")
            .expect("plan JSON uploaded"),
    )
    .expect("plan JSON");
    assert_eq!(
        plan_json["resource_changes"][0]["address"],
        "terraform_data.hello"
    );
    let log = world.log(&run, Stage::Plan);
    for needle in [
        "==> terraform init -input=false",
        "==> terraform plan -input=false",
        "-detailed-exitcode",
        "terraform_data.hello",
        "==> Plan: 1 to add, 0 to change, 0 to destroy.",
    ] {
        position(&log, needle);
    }
    assert!(
        !log.contains("\"resource_changes\""),
        "show -json is not logged"
    );
    assert!(plan_pod.marker("started").exists() && plan_pod.marker("healthy").exists());
    assert!(!world.sim.requests_of(Route::TaskHeartbeat).is_empty());
    let exec_loop = plan_pod.wait_exec_loop(DEADLINE).expect("exec-loop exits");
    assert!(exec_loop.success(), "exec-loop was shut down cleanly");
    assert!(
        world.sim.state(&world.ws).is_none(),
        "a plan writes no state"
    );

    // Apply: the saved plan, state stored on the platform.
    let apply_pod = world.run_stage(&run, Stage::Apply, &options);
    let view = world.sim.run(&run);
    assert_eq!(view.status, RunStatus::Applied, "{}", apply_pod.logs());
    let result = world.sim.task(&apply_pod.task).result.expect("result");
    assert_eq!(
        (result.additions, result.changes, result.destructions),
        (1, 0, 0)
    );
    assert!(result.has_changes);
    assert_eq!(
        result.message,
        "Apply complete! Resources: 1 added, 0 changed, 0 destroyed."
    );
    let log = world.log(&run, Stage::Apply);
    position(&log, "local-exec says hi-from-a-shell-variable");
    position(&log, "/.scalr/plan.tfplan");
    let stored = resources(&world);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["instances"][0]["attributes"]["input"]["value"],
        "hello"
    );
    assert_eq!(world.sim.state_lock(&world.ws), None);

    // The same configuration again: no changes, the run ends after the plan.
    let (again, pods) = world.run_to_end(spec(&cv), &options);
    assert_eq!(pods.len(), 1, "no apply stage");
    assert_eq!(world.sim.run(&again).status, RunStatus::PlannedAndFinished);
    let result = world.sim.task(&pods[0].task).result.expect("result");
    assert!(!result.has_changes);
    assert!(
        result.message.starts_with("No changes."),
        "{}",
        result.message
    );

    // Destroy.
    let mut destroy = spec(&cv);
    destroy.is_destroy = true;
    let (run, pods) = world.run_to_end(destroy, &options);
    assert_eq!(pods.len(), 2);
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);
    let plan = world.sim.task(&pods[0].task).result.expect("result");
    assert_eq!((plan.additions, plan.destructions), (0, 1));
    let apply = world.sim.task(&pods[1].task).result.expect("result");
    assert_eq!((apply.additions, apply.destructions), (0, 1));
    assert!(resources(&world).is_empty(), "destroyed");
    position(&world.log(&run, Stage::Plan), "-destroy");
    assert!(world.sim.state_versions(&world.ws) >= 2);
}

#[test]
fn hooks_run_in_order_and_carry_variables_through_scalr_agent_env() {
    let world = world();
    let main_tf = r#"
resource "terraform_data" "x" {
  provisioner "local-exec" {
    command = "echo local-exec sees FROM_PRE_APPLY=$FROM_PRE_APPLY"
  }
}
"#;
    let cv = world.cv(&[("main.tf", main_tf)]);
    let mut spec = RunSpec::new(&cv);
    spec.hooks = SimHooks {
        pre_init: Some(
            "echo pre-init ran; echo FROM_PRE_INIT=carried-value >> \"$SCALR_AGENT_ENV\"".into(),
        ),
        pre_plan: Some(
            "echo pre-plan sees FROM_PRE_INIT=$FROM_PRE_INIT; \
             echo run=$SCALR_RUN_ID ws=$SCALR_WORKSPACE_NAME env=$SCALR_ENVIRONMENT_NAME \
             op=$SCALR_TERRAFORM_OPERATION destroy=$SCALR_RUN_IS_DESTROY mode=$SCALR_RUN_MODE \
             automation=$TF_IN_AUTOMATION input=$TF_INPUT exit=${SCALR_TERRAFORM_EXIT_CODE:-unset}; \
             printf 'MULTI<<EOF\\nline one\\nline two\\nEOF\\n' >> \"$SCALR_AGENT_ENV\""
                .into(),
        ),
        post_plan: Some(
            "echo post-plan exit=$SCALR_TERRAFORM_EXIT_CODE; echo \"multi=[$MULTI]\"".into(),
        ),
        pre_apply: Some(
            "echo pre-apply sees FROM_PRE_INIT=$FROM_PRE_INIT op=$SCALR_TERRAFORM_OPERATION; \
             echo FROM_PRE_APPLY=from-the-pre-apply-hook >> \"$SCALR_AGENT_ENV\""
                .into(),
        ),
        post_apply: Some("echo post-apply exit=$SCALR_TERRAFORM_EXIT_CODE".into()),
    };
    let (run, _pods) = world.run_to_end(spec, &PodOptions::default());
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);

    let plan = world.log(&run, Stage::Plan);
    let order = [
        "==> Running the pre-init hook",
        "pre-init ran",
        "==> terraform init",
        "==> Running the pre-plan hook",
        "pre-plan sees FROM_PRE_INIT=carried-value",
        "==> terraform plan",
        "==> Running the post-plan hook",
        "post-plan exit=2",
        "multi=[line one\nline two]",
    ];
    let positions: Vec<usize> = order.iter().map(|n| position(&plan, n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "order {positions:?}\n{plan}"
    );
    position(
        &plan,
        &format!(
            "run={run} ws=network env=production op=plan destroy=0 mode=apply automation=1 \
             input=0 exit=unset"
        ),
    );

    let apply = world.log(&run, Stage::Apply);
    let order = [
        "==> Running the pre-init hook",
        "==> terraform init",
        "==> Running the pre-apply hook",
        "pre-apply sees FROM_PRE_INIT=carried-value op=apply",
        "==> terraform apply",
        "local-exec sees FROM_PRE_APPLY=from-the-pre-apply-hook",
        "==> Running the post-apply hook",
        "post-apply exit=0",
    ];
    let positions: Vec<usize> = order.iter().map(|n| position(&apply, n)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "order {positions:?}\n{apply}"
    );
}

#[test]
fn a_failing_plan_is_reported_errored_with_the_error_in_the_log() {
    let world = world();
    let broken = "output \"x\" {\n  value = terraform_data.missing.id\n}\n";
    let cv = world.cv(&[("main.tf", broken)]);
    let mut spec = RunSpec::new(&cv);
    spec.hooks.post_plan =
        Some("echo post-plan after failure exit=$SCALR_TERRAFORM_EXIT_CODE".into());
    spec.hooks.pre_apply = Some("echo never".into());
    let (run, pods) = world.run_to_end(spec, &PodOptions::default());
    let view = world.sim.run(&run);
    assert_eq!(view.status, RunStatus::Errored);
    let message = view.message.expect("a message");
    assert!(
        message.contains(
            "terraform plan failed (exit code 1): Error: Reference to undeclared resource"
        ),
        "{message}"
    );
    let log = world.log(&run, Stage::Plan);
    position(&log, "Reference to undeclared resource");
    position(&log, "post-plan after failure exit=1");
    position(&log, "==> Errored: terraform plan failed");
    assert!(world.sim.artefact(&run, "plan-file").is_none());
    assert!(pods[0].marker("started").exists());
}

#[test]
fn a_targeted_plan_only_run_plans_only_the_target() {
    let world = world();
    let two = "resource \"terraform_data\" \"a\" {}\nresource \"terraform_data\" \"b\" {}\n";
    let ws = world.sim.create_workspace_with(
        &world.pool.id,
        "production",
        "stacked",
        "terraform",
        "1.15.5",
        "stacks/net",
    );
    let cv = world
        .sim
        .upload_configuration_version(&ws, tar_gz(&[("stacks/net/main.tf", two.as_bytes())]));
    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    spec.target_addrs = vec!["terraform_data.b".into()];
    spec.refresh = false;
    let run = world.sim.queue_run(&ws, spec);
    let pod = world.run_stage(&run, Stage::Plan, &PodOptions::default());
    assert_eq!(world.sim.run(&run).status, RunStatus::PlannedAndFinished);
    let result = world.sim.task(&pod.task).result.expect("result");
    assert!(result.has_changes);
    assert_eq!(result.additions, 1, "only the target");
    let log = world.log(&run, Stage::Plan);
    position(&log, "-target=terraform_data.b");
    position(&log, "-refresh=false");
}
