//! One stage of a run, on the worker's main thread: provision it, connect to exec-loop, run the
//! stage's steps in order (hooks and terraform commands, see `steps.rs`) with the run environment
//! and the `SCALR_AGENT_ENV` variables carried from step to step, publish verified providers after
//! `init`, upload the plan artefacts, and decide the [`TaskResult`]. Output streams to the log
//! shipper as it comes; a stop (cancel, SIGTERM) ends the loop and is reported as such.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cancel::StopCause;
use super::control::StopControl;
use super::exec::{self, CommandResult, ExecError};
use super::log_shipper::LogSender;
use super::mask::Masker;
use super::provision::{self, Provisioned, RunPaths};
use super::results;
use super::run_env::{RunContext, RunEnv};
use super::steps::{self, Step, StepKind, Tool};
use crate::config::Settings;
use crate::ipc::{CommandSpec, IpcClient, IpcError};
use crate::platform::{ArtefactKind, ResourceCounts, Stage, TaskClient, TaskResult, TaskSpec};
use crate::runner::MemoryMonitorSettings;
use crate::shutdown::Shutdown;

/// What a stage runs with.
pub struct StageContext<'a> {
    pub task: &'a TaskClient,
    pub spec: &'a TaskSpec,
    pub settings: &'a Settings,
    pub platform_url: &'a str,
    pub control: &'a StopControl,
    pub log: &'a LogSender,
    pub masker: &'a Masker,
    pub paths: &'a RunPaths,
}

/// Progress through the steps.
#[derive(Default)]
struct Progress {
    /// The first failure's message.
    failure: Option<String>,
    /// The loop ended early: stopped, or exec-loop went away.
    interrupted: bool,
    /// Where the run was stopped: `during <step>` or `before <step>`.
    stopped_at: Option<String>,
    /// Exit code of plan or apply (`-detailed-exitcode` for plan).
    main_exit: Option<i32>,
    plan_json: Option<Vec<u8>>,
    applied: Option<ResourceCounts>,
    carried: Vec<(String, String)>,
    memory_warned: bool,
}

fn what(step: &Step, tool: &str) -> String {
    match step.kind {
        StepKind::Hook(hook) => format!("the {} hook", hook.name()),
        StepKind::Init => format!("{tool} init"),
        StepKind::Plan => format!("{tool} plan"),
        StepKind::ShowPlanJson => format!("{tool} show -json"),
        StepKind::Apply => format!("{tool} apply"),
    }
}

/// The exit code a shell would show: the code, or 128 + the signal.
fn shell_code(result: &CommandResult) -> i32 {
    match (result.exit.code, result.exit.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

fn describe_failure(step: &Step, tool: &str, result: &CommandResult) -> String {
    let what = what(step, tool);
    if let Some(m) = result.soft_limit {
        return format!(
            "{what} was stopped at the runner's memory soft limit ({} MiB used of {} MiB); give \
             the runner container more memory",
            m.usage_bytes >> 20,
            m.limit_bytes >> 20
        );
    }
    let how = match (result.exit.code, result.exit.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "no exit status".to_string(),
    };
    match results::error_summary(result.tail.iter().map(String::as_str)) {
        Some(error) => format!("{what} failed ({how}): {error}"),
        None => format!("{what} failed ({how})"),
    }
}

/// Why [`wait_for_runner`] gave up.
#[derive(Debug)]
pub enum RunnerWait {
    /// SIGTERM (or SIGINT) arrived first.
    Stopped,
    /// exec-loop did not answer in time, or answered wrongly (another user, another version).
    Unreachable(IpcError),
}

/// Connects to exec-loop at `socket`, waiting up to `timeout` while its socket is missing (the
/// runner container may still be pulling its image or starting); gives up early when `stop` is
/// triggered. The worker waits for this before it starts the task, so a runner that never comes
/// leaves the task unstarted and the controller, which sees the pod, reports why.
pub fn wait_for_runner(
    socket: &Path,
    timeout: Duration,
    stop: &Shutdown,
) -> Result<IpcClient, RunnerWait> {
    let deadline = Instant::now() + timeout;
    loop {
        if stop.is_triggered() {
            return Err(RunnerWait::Stopped);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match IpcClient::connect(socket, left.min(RUNNER_WAIT_SLICE)) {
            Ok(client) => return Ok(client),
            Err(IpcError::Connect { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && left > RUNNER_WAIT_SLICE => {}
            Err(e) => return Err(RunnerWait::Unreachable(e)),
        }
    }
}

/// How often [`wait_for_runner`] looks at its stop signal.
const RUNNER_WAIT_SLICE: Duration = Duration::from_secs(1);

/// Runs the stage through `client` (connected before the task was started) and returns the result
/// to report; tells exec-loop to exit at the end. Never panics on a run's failure: every failure
/// becomes an `errored` result with a message for the user.
pub fn run_stage(ctx: &StageContext<'_>, mut client: IpcClient) -> TaskResult {
    let result = stage_result(ctx, &mut client);
    stop_runner(client);
    result
}

/// Tells exec-loop to exit, so the runner container ends with the worker instead of waiting for
/// its worker-gone timeout.
pub fn stop_runner(client: IpcClient) {
    match client.shutdown() {
        Ok(()) => log::info!("exec-loop told to exit"),
        Err(e) => log::warn!("could not tell exec-loop to exit: {e}"),
    }
}

fn stage_result(ctx: &StageContext<'_>, client: &mut IpcClient) -> TaskResult {
    let spec = ctx.spec;
    ctx.log.line(format!(
        "scalr-agent {}: {} stage of run {} in workspace {} (environment {}), attempt {}",
        crate::version::VERSION,
        spec.stage.as_str(),
        spec.run.id,
        spec.workspace.name,
        spec.environment.name,
        spec.attempt
    ));
    if let Stage::Other(name) = &spec.stage {
        return fail(
            ctx,
            format!("this scalr-agent does not run {name} stages; upgrade the agent"),
        );
    }
    let mut note = |line: String| ctx.log.line(line);
    let provisioned = match provision::provision(ctx.task, spec, ctx.settings, ctx.paths, &mut note)
    {
        Ok(p) => p,
        Err(e) => return fail(ctx, crate::threads::error_chain(&e)),
    };
    if let Some(cause) = ctx.control.cause() {
        return stopped(ctx, cause, "before the first command");
    }
    ctx.control.set_signaller(client.signaller());
    run_steps(ctx, client, &provisioned)
}

fn run_steps(
    ctx: &StageContext<'_>,
    client: &mut IpcClient,
    provisioned: &Provisioned,
) -> TaskResult {
    let (spec, paths) = (ctx.spec, ctx.paths);
    let env = match RunEnv::new(&RunContext {
        spec,
        platform_url: ctx.platform_url,
        content_root: &paths.content_root,
        cli_config: &paths.cli_config,
        plugin_cache: &paths.plugin_cache,
        agent_env_file: &paths.agent_env,
        mirror_tokens: &provisioned.mirror_tokens,
    }) {
        Ok(env) => env,
        Err(e) => return fail(ctx, e.to_string()),
    };
    let tool = Tool {
        name: &spec.tool.name,
        path: provisioned.binary.path(),
    };
    let steps = match spec.stage {
        Stage::Apply => steps::apply_stage(&spec.hooks, tool, &paths.plan_file),
        _ => steps::plan_stage(&spec.run, &spec.hooks, tool, &paths.plan_file),
    };
    let memory = MemoryMonitorSettings::from(&ctx.settings.memory);
    let mut p = Progress::default();
    for step in &steps {
        if ctx.control.cause().is_some() {
            p.interrupted = true;
            p.stopped_at
                .get_or_insert_with(|| format!("before {}", what(step, tool.name)));
            break;
        }
        if p.failure.is_some() && !step.always {
            continue;
        }
        let exit_code = match step.kind {
            StepKind::Hook(hook) if hook.is_after() => Some(p.main_exit.unwrap_or(1)),
            _ => None,
        };
        let capture = step.kind == StepKind::ShowPlanJson;
        if !capture {
            ctx.log.line(&step.header);
        }
        let command = CommandSpec {
            argv: step.argv.clone(),
            env: env.for_command(&p.carried, exit_code),
            cwd: Some(paths.working_dir.clone()),
            clear_env: false,
        };
        let result =
            match exec::run_command(client, ctx.control, &command, ctx.log, ctx.masker, capture) {
                Ok(result) => result,
                Err(ExecError::Stopped(_)) => {
                    p.interrupted = true;
                    p.stopped_at = Some(format!("during {}", what(step, tool.name)));
                    break;
                }
                Err(e @ ExecError::Ipc(_)) => {
                    p.failure
                        .get_or_insert(format!("{} did not finish: {e}", what(step, tool.name)));
                    p.interrupted = true;
                    break;
                }
                Err(e @ ExecError::CaptureTooLarge) => {
                    p.failure
                        .get_or_insert(format!("{}: {e}", what(step, tool.name)));
                    continue;
                }
            };
        let (peak, limit) = (
            result.exit.peak_memory_bytes,
            result.exit.memory_limit_bytes,
        );
        if !p.memory_warned && result.soft_limit.is_none() && memory.should_warn(peak, limit) {
            p.memory_warned = true;
            let (peak, limit) = (peak.unwrap_or(0), limit.unwrap_or(0));
            ctx.log.line(exec::memory_warning_line(peak, limit));
        }
        if matches!(step.kind, StepKind::Plan | StepKind::Apply) {
            p.main_exit = Some(shell_code(&result));
        }
        if !step.succeeded(result.exit.code) {
            if ctx.control.cause().is_some() {
                p.interrupted = true;
                p.stopped_at = Some(format!("during {}", what(step, tool.name)));
                break;
            }
            let message = describe_failure(step, tool.name, &result);
            ctx.log.line(format!("Error: {message}"));
            p.failure.get_or_insert(message);
        } else {
            after_success(ctx, provisioned, step, result, &mut p);
        }
        match super::agent_env::read(&paths.agent_env) {
            Ok(vars) => p.carried = vars,
            Err(e) => {
                ctx.log.line(format!("Error: {e}"));
                p.failure.get_or_insert(e.to_string());
            }
        }
    }
    if spec.stage == Stage::Plan
        && p.failure.is_none()
        && !p.interrupted
        && let Err(message) = upload_artefacts(ctx, &p)
    {
        ctx.log.line(format!("Error: {message}"));
        p.failure = Some(message);
    }
    conclude(ctx, p)
}

fn after_success(
    ctx: &StageContext<'_>,
    provisioned: &Provisioned,
    step: &Step,
    result: CommandResult,
    p: &mut Progress,
) {
    match step.kind {
        StepKind::Init => publish_providers(ctx, provisioned),
        StepKind::ShowPlanJson => p.plan_json = result.captured,
        StepKind::Apply => {
            p.applied = results::apply_counts(result.tail.iter().map(String::as_str));
        }
        StepKind::Plan | StepKind::Hook(_) => {}
    }
}

/// Copies the providers `init` verified into the shared mirror; a failure only costs later runs a
/// download, so it is logged, not fatal.
fn publish_providers(ctx: &StageContext<'_>, provisioned: &Provisioned) {
    let Some(cache) = &provisioned.provider_cache else {
        return;
    };
    let lock_file = ctx
        .paths
        .working_dir
        .join(super::provider_cache::LOCK_FILE_NAME);
    let trusted = [cache.mirror_dir().to_path_buf()];
    match cache.publish(&ctx.paths.plugin_cache, &lock_file, &trusted) {
        Ok(report) => {
            log::info!(
                "provider cache: {} published, {} already present, {} skipped, {} evicted",
                report.published.len(),
                report.present.len(),
                report.skipped.len(),
                report.evicted.len()
            );
            for (package, reason) in &report.skipped {
                log::warn!("provider cache: {package} not published: {reason:?}");
            }
        }
        Err(e) => log::warn!("provider cache: {e}"),
    }
}

fn upload_artefacts(ctx: &StageContext<'_>, p: &Progress) -> Result<(), String> {
    let run = &ctx.spec.run.id;
    let plan = std::fs::read(&ctx.paths.plan_file)
        .map_err(|e| format!("cannot read the saved plan: {e}"))?;
    ctx.task
        .upload_artefact(run, ArtefactKind::PlanFile, &plan)
        .map_err(|e| format!("cannot upload the plan file: {e}"))?;
    if let Some(json) = &p.plan_json {
        ctx.task
            .upload_artefact(run, ArtefactKind::PlanJson, json)
            .map_err(|e| format!("cannot upload the plan JSON: {e}"))?;
    }
    Ok(())
}

fn conclude(ctx: &StageContext<'_>, p: Progress) -> TaskResult {
    if p.interrupted || p.failure.is_some() {
        if let Some(cause) = ctx.control.cause() {
            let when = p.stopped_at.as_deref().unwrap_or("during the run");
            return stopped(ctx, cause, when);
        }
        return fail(
            ctx,
            p.failure
                .unwrap_or_else(|| "the stage did not finish".into()),
        );
    }
    let result = match ctx.spec.stage {
        Stage::Apply => {
            let counts = p.applied.unwrap_or_default();
            TaskResult::finished(
                counts != ResourceCounts::default(),
                counts,
                &results::apply_message(counts),
            )
        }
        _ => {
            let has_changes = p.main_exit == Some(2);
            let counts = match p.plan_json.as_deref().map(results::plan_counts) {
                Some(Ok(counts)) => counts,
                Some(Err(e)) => {
                    log::warn!("cannot count the plan's changes: {e}");
                    ResourceCounts::default()
                }
                None => ResourceCounts::default(),
            };
            TaskResult::finished(
                has_changes,
                counts,
                &results::plan_message(has_changes, counts),
            )
        }
    };
    ctx.log.line(format!("==> {}", result.message));
    result
}

fn masked(ctx: &StageContext<'_>, message: &str) -> String {
    let text = String::from_utf8_lossy(&ctx.masker.mask(message.as_bytes())).into_owned();
    results::truncate_message(&text)
}

fn fail(ctx: &StageContext<'_>, message: String) -> TaskResult {
    let message = masked(ctx, &message);
    ctx.log.line(format!("==> Errored: {message}"));
    TaskResult::errored(&message)
}

/// The result of a stopped run; `when` is `during <step>`, `before <step>`, ...
fn stopped(ctx: &StageContext<'_>, cause: StopCause, when: &str) -> TaskResult {
    let result = match cause {
        StopCause::Canceled(mode) => TaskResult::canceled(&masked(
            ctx,
            &format!("Run canceled ({}) {when}.", mode.as_str()),
        )),
        StopCause::Terminated => TaskResult::errored(&masked(
            ctx,
            &format!(
                "The worker was stopped (SIGTERM: the pod was deleted or its node drained) \
                 {when}; the running command was interrupted (terraform saves its state when \
                 interrupted). Queue the run again."
            ),
        )),
        StopCause::Abandoned => TaskResult::errored(&masked(
            ctx,
            &format!("The task ended on the platform {when}."),
        )),
    };
    ctx.log.line(format!("==> {}", result.message));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::ExitReport;
    use crate::worker::steps::Hook;

    fn result(code: Option<i32>, signal: Option<i32>, tail: &[&str]) -> CommandResult {
        CommandResult {
            exit: ExitReport {
                code,
                signal,
                ..ExitReport::default()
            },
            soft_limit: None,
            captured: None,
            tail: tail.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn failures_name_the_step_the_exit_and_the_error() {
        let steps = steps::plan_stage(
            &crate::platform::RunInfo {
                id: "run-1".into(),
                message: String::new(),
                is_destroy: false,
                is_dry: false,
                refresh: true,
                refresh_only: false,
                target_addrs: vec![],
                replace_addrs: vec![],
                source: "api".into(),
                vcs_branch: None,
                vcs_commit: None,
            },
            &crate::platform::Hooks {
                pre_plan: Some("exit 3".into()),
                ..Default::default()
            },
            Tool {
                name: "terraform",
                path: Path::new("/bin/terraform"),
            },
            Path::new("/plan"),
        );
        let plan = steps
            .iter()
            .find(|s| s.kind == StepKind::Plan)
            .expect("plan");
        let hook = steps
            .iter()
            .find(|s| s.kind == StepKind::Hook(Hook::PrePlan))
            .expect("hook");
        assert_eq!(
            describe_failure(
                plan,
                "terraform",
                &result(Some(1), None, &["│ Error: Unsupported argument", "│"])
            ),
            "terraform plan failed (exit code 1): Error: Unsupported argument"
        );
        assert_eq!(
            describe_failure(hook, "terraform", &result(None, Some(9), &[])),
            "the pre-plan hook failed (killed by signal 9)"
        );
        assert_eq!(shell_code(&result(None, Some(15), &[])), 143);
        let mut oom = result(None, Some(15), &[]);
        oom.soft_limit = Some(crate::ipc::MemorySoftLimit {
            usage_bytes: 900 << 20,
            limit_bytes: 1000 << 20,
        });
        assert!(
            describe_failure(plan, "terraform", &oom)
                .contains("memory soft limit (900 MiB used of 1000 MiB)")
        );
    }
}
