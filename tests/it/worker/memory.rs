//! The memory monitor seen from the run: exec-loop samples a fake cgroup v2 tree (1000 MB limit)
//! whose usage the run's own command sets, as if it allocated. Past the soft limit (80 %) terraform
//! gets SIGTERM, saves its state and the task errors with the reason in the log; a peak above the
//! warning threshold (90 % of the soft limit) but below it leaves a warning in the run log.

use super::*;
use crate::support::platform_sim::TaskState;

const LIMIT: u64 = 1_000_000_000;

/// A cgroup v2 tree using 100 MB of a 1000 MB limit.
fn fake_cgroup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("cgroup dir");
    fs::write(dir.path().join("memory.current"), "100000000\n").expect("write");
    fs::write(dir.path().join("memory.max"), format!("{LIMIT}\n")).expect("write");
    fs::write(dir.path().join("memory.stat"), "inactive_file 0\n").expect("write");
    dir
}

/// Shell that sets the fake usage atomically (exec-loop never reads a half-written file).
fn set_usage(cgroup: &Path, bytes: u64) -> String {
    let dir = cgroup.display();
    format!("echo {bytes} > {dir}/next && mv {dir}/next {dir}/memory.current")
}

fn monitored(cgroup: &Path) -> PodOptions {
    PodOptions {
        exec_loop_args: vec!["--memory-sample-interval-ms".into(), "20".into()],
        cgroup_root: Some(cgroup.to_path_buf()),
        ..PodOptions::default()
    }
}

#[test]
fn terraform_past_the_soft_limit_is_stopped_saves_state_and_the_task_errors() {
    let world = world();
    let cgroup = fake_cgroup();
    let main_tf = format!(
        "resource \"terraform_data\" \"big\" {{\n  provisioner \"local-exec\" {{\n    command = \"{}; echo allocated; sleep 60\"\n  }}\n}}\n",
        set_usage(cgroup.path(), 900_000_000)
    );
    let cv = world.cv(&[("main.tf", &main_tf)]);
    let run = world.sim.queue_run(&world.ws, RunSpec::new(&cv));
    world.run_stage(&run, Stage::Plan, &PodOptions::default());
    let pod = world.run_stage(&run, Stage::Apply, &monitored(cgroup.path()));
    let view = world.sim.run(&run);
    assert_eq!(view.status, RunStatus::Errored, "{}", pod.logs());
    let message = view.message.expect("message");
    assert!(
        message.contains("terraform apply was stopped at the runner's memory soft limit (858 MiB used of 953 MiB)"),
        "{message}"
    );
    let log = world.log(&run, Stage::Apply);
    let allocated = position(&log, "allocated");
    let stopped = position(
        &log,
        "Error: the runner reached its memory soft limit (858 MiB used of a 953 MiB limit)",
    );
    assert!(allocated < stopped, "{log}");
    // terraform treated the SIGTERM as an interrupt and pushed its state.
    let state = world.sim.state(&world.ws).expect("state pushed");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    assert_eq!(
        state["resources"][0]["instances"][0]["status"], "tainted",
        "{state}"
    );
    assert_eq!(
        world.sim.task(&pod.task).result.expect("result").status,
        TaskState::Errored
    );
}

#[test]
fn a_peak_close_to_the_soft_limit_leaves_a_warning_in_the_log() {
    let world = world();
    let cgroup = fake_cgroup();
    let cv = world.cv(&[("main.tf", "resource \"terraform_data\" \"x\" {}\n")]);
    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    spec.hooks.pre_plan = Some(format!(
        "{}; sleep 0.3; {}",
        set_usage(cgroup.path(), 750_000_000),
        set_usage(cgroup.path(), 100_000_000)
    ));
    let run = world.sim.queue_run(&world.ws, spec);
    let pod = world.run_stage(&run, Stage::Plan, &monitored(cgroup.path()));
    assert_eq!(
        world.sim.run(&run).status,
        RunStatus::PlannedAndFinished,
        "{}",
        pod.logs()
    );
    let log = world.log(&run, Stage::Plan);
    let hook = position(&log, "==> Running the pre-plan hook");
    let warning = position(
        &log,
        "Warning: the runner's memory use peaked at 715 MiB of its 953 MiB limit (75%)",
    );
    let plan = position(&log, "==> terraform plan");
    assert!(hook < warning && warning < plan, "{log}");
    assert_eq!(
        log.matches("Warning: the runner's memory use").count(),
        1,
        "warned once"
    );
}
