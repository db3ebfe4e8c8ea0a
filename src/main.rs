//! The `scalr-agent` command line: parses arguments (argh), loads the configuration, starts logging
//! and dispatches to a role. Nothing else lives here.

use std::process::ExitCode;

use argh::FromArgs;
use scalr_agent::config::{ConfigErrors, Flags, Settings, vars};
use scalr_agent::controller::cmd::ControllerCmd;
use scalr_agent::controller::render::{self, RenderCmd, RenderContext};
use scalr_agent::{install, probe, runner, worker};

/// scalr-agent: a self-hosted Scalr agent that runs every Terraform/OpenTofu run stage in its own
/// Kubernetes Job. Configuration comes from SCALR_* environment variables; the global flags below
/// override them and go before the subcommand (scalr-agent --debug check).
#[derive(FromArgs)]
struct Cli {
    /// scalr account URL (overrides SCALR_URL)
    #[argh(option)]
    url: Option<String>,
    /// file holding the agent pool token (overrides SCALR_AGENT_TOKEN_FILE)
    #[argh(option)]
    token_file: Option<String>,
    /// agent name (overrides SCALR_AGENT_NAME)
    #[argh(option)]
    name: Option<String>,
    /// debug logging (overrides SCALR_AGENT_DEBUG)
    #[argh(switch)]
    debug: bool,
    /// log format: plain or json (overrides SCALR_AGENT_LOG_FORMAT)
    #[argh(option)]
    log_format: Option<String>,
    /// data directory (overrides SCALR_AGENT_DATA_DIR)
    #[argh(option)]
    data_dir: Option<String>,
    /// cache directory (overrides SCALR_AGENT_CACHE_DIR)
    #[argh(option)]
    cache_dir: Option<String>,
    /// most tasks run at once (overrides SCALR_AGENT_CONCURRENCY)
    #[argh(option)]
    concurrency: Option<String>,
    /// name of the AgentTaskTemplate (overrides SCALR_AGENT_KUBERNETES_TASK_TEMPLATE)
    #[argh(option)]
    task_template: Option<String>,
    /// namespace for task Jobs (overrides SCALR_AGENT_KUBERNETES_NAMESPACE)
    #[argh(option)]
    namespace: Option<String>,
    /// CA bundle replacing the built-in roots (overrides SCALR_AGENT_CA_CERT)
    #[argh(option)]
    ca_cert: Option<String>,
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Version(VersionCmd),
    Config(ConfigCmd),
    Check(CheckCmd),
    Install(install::InstallArgs),
    ExecLoop(runner::ExecLoopArgs),
    Worker(worker::WorkerArgs),
    Probe(probe::ProbeArgs),
    Render(RenderCmd),
    Controller(ControllerCmd),
}

/// Print the version, git commit, target and whether the binary is static.
#[derive(FromArgs)]
#[argh(subcommand, name = "version")]
struct VersionCmd {}

/// Print the effective configuration (every variable, its value and source; secrets as ***).
#[derive(FromArgs)]
#[argh(subcommand, name = "config")]
struct ConfigCmd {}

/// Preflight: check the configuration and that the platform is reachable; PASS/FAIL per line.
#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
struct CheckCmd {}

impl Cli {
    fn flags(&self) -> Flags {
        let pairs = [
            (vars::SCALR_URL, &self.url),
            (vars::TOKEN_FILE, &self.token_file),
            (vars::NAME, &self.name),
            (vars::LOG_FORMAT, &self.log_format),
            (vars::DATA_DIR, &self.data_dir),
            (vars::CACHE_DIR, &self.cache_dir),
            (vars::CONCURRENCY, &self.concurrency),
            (vars::TASK_TEMPLATE, &self.task_template),
            (vars::NAMESPACE, &self.namespace),
            (vars::CA_CERT, &self.ca_cert),
        ];
        let mut flags: Vec<(&'static str, String)> = pairs
            .into_iter()
            .filter_map(|(var, value)| value.clone().map(|v| (var, v)))
            .collect();
        if self.debug {
            flags.push((vars::DEBUG, "true".to_string()));
        }
        Flags(flags)
    }
}

/// Exit status for a configuration the user must fix.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    let settings = Settings::load(&cli.flags());
    if let Ok(s) = &settings {
        scalr_agent::logging::init(s.log_format, s.debug);
        for warning in &s.warnings {
            log::warn!("{warning}");
        }
    }
    match cli.command {
        Command::Version(_) => {
            print!("{}", scalr_agent::version::report());
            ExitCode::SUCCESS
        }
        Command::Config(_) => match settings {
            Ok(s) => {
                for (name, value, source) in s.effective() {
                    println!("{name}={value}  # {source}");
                }
                ExitCode::SUCCESS
            }
            Err(errors) => config_failure(&errors),
        },
        Command::Check(_) => {
            let lines = scalr_agent::check::run(&settings);
            for line in &lines {
                println!("{line}");
            }
            if scalr_agent::check::all_passed(&lines) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        // Probes and the installer must work whatever else is configured: they read no settings.
        Command::Probe(args) => match probe::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // Kubernetes shows a probe's output in the pod's events: one line, no log prefix.
                eprintln!("probe failed: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Install(args) => {
            if settings.is_err() {
                scalr_agent::logging::init(scalr_agent::logging::LogFormat::Plain, false);
            }
            match install::run(&args) {
                Ok(path) => {
                    log::info!("installed {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => failure(&e),
            }
        }
        Command::ExecLoop(args) => match settings {
            Ok(s) => match runner::run(&args, &s) {
                Ok(reason) => ExitCode::from(reason.exit_code()),
                Err(e) => failure(&e),
            },
            Err(errors) => config_failure(&errors),
        },
        Command::Worker(args) => match settings {
            Ok(s) => ExitCode::from(worker::run(&args, &s)),
            Err(errors) => config_failure(&errors),
        },
        Command::Controller(_) => ExitCode::from(scalr_agent::controller::cmd::main(&settings)),
        Command::Render(cmd) => {
            let settings = settings.ok();
            let ctx = RenderContext {
                namespace: settings.as_ref().and_then(|s| s.namespace.clone()),
                controller_id: settings.as_ref().map(|s| s.name.clone()),
                task_template: settings.as_ref().map(|s| s.task_template.clone()),
            };
            match render::run(&cmd, &ctx) {
                Ok(rendered) => {
                    for warning in &rendered.warnings {
                        eprintln!("warning: {warning}");
                    }
                    print!("{}", rendered.text);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("scalr-agent: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// Prints every configuration problem and returns the configuration exit status.
fn config_failure(errors: &ConfigErrors) -> ExitCode {
    eprintln!("scalr-agent: {errors}");
    ExitCode::from(EXIT_CONFIG)
}

/// Logs the error with its cause chain once, and returns failure.
fn failure(error: &(dyn std::error::Error + 'static)) -> ExitCode {
    log::error!("{}", scalr_agent::threads::error_chain(error));
    ExitCode::FAILURE
}
