//! scalr-agent's command line (minimal: the runner-side subcommands; the lead merges it into the
//! full CLI). Parses arguments, initialises logging, dispatches, and turns results into exit codes.

use std::process::ExitCode;

use argh::FromArgs;
use scalr_agent::{install, probe, runner};

/// Self-hosted Scalr agent that runs every run stage in its own Kubernetes Job.
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Subcommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Subcommand {
    Install(install::InstallArgs),
    ExecLoop(runner::ExecLoopArgs),
    Probe(probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Subcommand::Install(args) => match install::run(&args) {
            Ok(path) => {
                log::info!("installed {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Subcommand::ExecLoop(args) => match runner::run(&args) {
            Ok(reason) => ExitCode::from(reason.exit_code()),
            Err(e) => fail(&e),
        },
        Subcommand::Probe(args) => match probe::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Kubernetes shows the probe's output in the pod's events: one line, no log prefix.
                eprintln!("probe failed: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints the error with its cause chain once, and returns failure.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    log::error!("{message}");
    ExitCode::FAILURE
}
