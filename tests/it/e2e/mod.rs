//! End to end: the chart rendered by real helm into the Kubernetes simulator, the controller started
//! from the Deployment, task pods run by the pod executor (real exec-loop, worker and terraform), runs
//! queued on the platform simulator. Every test checks nothing was lost: each queued run reaches a
//! terminal status, its log is complete, no task Job or Secret is left, no Job was created twice.

mod faults;
mod happy;

use std::time::Duration;

pub use crate::support::e2e::{E2e, E2eOptions, SAMPLE_TF};

/// Longest any run may take here (terraform plans take about 0.25 s; pods start in well under 1 s).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A world with the built binary.
pub fn world(concurrency: u32) -> E2e {
    let mut options = E2eOptions::new(env!("CARGO_BIN_EXE_scalr-agent"));
    options.concurrency = concurrency;
    E2e::start(options)
}

/// No Job name was created more than once.
pub fn assert_no_double_launch(world: &E2e) {
    let created = world.job_creations();
    let twice: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "Jobs created more than once: {twice:?}");
}
