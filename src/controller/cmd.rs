//! `scalr-agent controller`: the subcommand's arguments and the entry `main.rs` calls.
//!
//! Runs on the main thread: resolves [`ControllerOptions`] from the settings, installs the SIGTERM
//! and SIGINT handlers on the intake signal, runs [`super::run`] and turns its end into an exit
//! status (0 stopped, 2 configuration, 3 credential refused, 1 anything else).

use std::sync::Arc;

use argh::FromArgs;

use super::lifecycle::Lifecycle;
use super::metrics::Metrics;
use super::options::{ControllerError, ControllerOptions};
use crate::config::{ConfigErrors, Settings};
use crate::threads::error_chain;

/// Exit status for a configuration the user must fix.
pub const EXIT_CONFIG: u8 = 2;

/// Run the controller: take tasks from the agent pool and run each in its own Kubernetes Job.
#[derive(FromArgs, Debug, PartialEq, Eq)]
#[argh(subcommand, name = "controller")]
pub struct ControllerCmd {}

/// Runs the controller with `settings`; returns the process exit status.
pub fn main(settings: &Result<Settings, ConfigErrors>) -> u8 {
    let settings = match settings {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("scalr-agent: {errors}");
            return EXIT_CONFIG;
        }
    };
    let options = match ControllerOptions::from_settings(settings) {
        Ok(o) => o,
        Err(e @ (ControllerError::Config(_) | ControllerError::KubeConfig(_))) => {
            log::error!("{e}");
            return EXIT_CONFIG;
        }
        Err(e) => {
            log::error!("{}", error_chain(&e));
            return 1;
        }
    };
    let lifecycle = Lifecycle::new();
    if let Err(e) = crate::shutdown::install_signal_handlers(&lifecycle.intake) {
        log::error!("cannot install signal handlers: {e}");
        return 1;
    }
    match super::run(options, lifecycle, Arc::new(Metrics::default())) {
        Ok(exit) => exit.exit_code(),
        Err(e) => {
            log::error!("{}", error_chain(&e));
            1
        }
    }
}
