//! The steps of a stage: which hooks and terraform commands run, in which order, with which flags,
//! and which of them run even after a failure. Pure: the task's run flags and hooks in, a list of
//! [`Step`]s out; the worker's main thread (`task_run.rs`) runs them through exec-loop.
//!
//! Plan stage: `pre-init` hook, `init`, `pre-plan` hook, `plan` (saved plan, `-detailed-exitcode`,
//! and the run's destroy, refresh, refresh-only, target and replace flags), `show -json` of the
//! saved plan (captured for the `plan-json` artefact, not logged), `post-plan` hook (always).
//! Apply stage: `pre-init` hook, `init`, `pre-apply` hook, `apply` of the plan file the plan stage
//! uploaded, `post-apply` hook (always). Unset hooks are left out. Hooks run as `sh -c <script>`.

use std::path::Path;

use crate::platform::{Hooks, RunInfo};

/// A hook of the stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PreInit,
    PrePlan,
    PostPlan,
    PreApply,
    PostApply,
}

impl Hook {
    /// The name users know from the workspace settings.
    pub fn name(self) -> &'static str {
        match self {
            Hook::PreInit => "pre-init",
            Hook::PrePlan => "pre-plan",
            Hook::PostPlan => "post-plan",
            Hook::PreApply => "pre-apply",
            Hook::PostApply => "post-apply",
        }
    }

    /// After-hooks see `SCALR_TERRAFORM_EXIT_CODE` and run even when the stage failed.
    pub fn is_after(self) -> bool {
        matches!(self, Hook::PostPlan | Hook::PostApply)
    }
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Hook(Hook),
    Init,
    /// Its exit code 2 means "changes" (`-detailed-exitcode`).
    Plan,
    /// `show -json` of the saved plan; stdout is captured, not logged. Runs only after a plan that
    /// succeeded.
    ShowPlanJson,
    Apply,
}

/// One command of a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub argv: Vec<String>,
    /// The header line written into the run log before it runs (no secrets: no values).
    pub header: String,
    /// Runs even when an earlier step failed (not after a cancel).
    pub always: bool,
}

impl Step {
    /// Whether exit code `code` means success for this step.
    pub fn succeeded(&self, code: Option<i32>) -> bool {
        matches!(
            (self.kind, code),
            (StepKind::Plan, Some(0 | 2)) | (_, Some(0))
        )
    }
}

/// The tool the steps run: its name (`terraform`, `tofu`) and the cached executable.
#[derive(Clone, Copy, Debug)]
pub struct Tool<'a> {
    pub name: &'a str,
    pub path: &'a Path,
}

fn hook_step(hook: Hook, script: &Option<String>) -> Option<Step> {
    let script = script.as_ref().filter(|s| !s.trim().is_empty())?;
    Some(Step {
        kind: StepKind::Hook(hook),
        argv: vec!["sh".into(), "-c".into(), script.clone()],
        header: format!("==> Running the {} hook", hook.name()),
        always: hook.is_after(),
    })
}

fn tool_step(kind: StepKind, tool: Tool<'_>, args: Vec<String>, always: bool) -> Step {
    let shown: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut argv = vec![tool.path.to_string_lossy().into_owned()];
    argv.extend(args.iter().cloned());
    Step {
        kind,
        argv,
        header: format!("==> {} {}", tool.name, shown.join(" ")),
        always,
    }
}

fn init(tool: Tool<'_>) -> Step {
    tool_step(
        StepKind::Init,
        tool,
        vec!["init".into(), "-input=false".into()],
        false,
    )
}

/// The plan command's arguments for the run's flags.
pub fn plan_args(run: &RunInfo, plan_file: &Path) -> Vec<String> {
    let mut args = vec![
        "plan".to_string(),
        "-input=false".into(),
        format!("-out={}", plan_file.display()),
        "-detailed-exitcode".into(),
    ];
    if run.is_destroy {
        args.push("-destroy".into());
    }
    if run.refresh_only {
        args.push("-refresh-only".into());
    } else if !run.refresh {
        args.push("-refresh=false".into());
    }
    args.extend(run.target_addrs.iter().map(|a| format!("-target={a}")));
    args.extend(run.replace_addrs.iter().map(|a| format!("-replace={a}")));
    args
}

/// The plan stage's steps.
pub fn plan_stage(run: &RunInfo, hooks: &Hooks, tool: Tool<'_>, plan_file: &Path) -> Vec<Step> {
    let mut steps = Vec::new();
    steps.extend(hook_step(Hook::PreInit, &hooks.pre_init));
    steps.push(init(tool));
    steps.extend(hook_step(Hook::PrePlan, &hooks.pre_plan));
    steps.push(tool_step(
        StepKind::Plan,
        tool,
        plan_args(run, plan_file),
        false,
    ));
    let show = vec![
        "show".to_string(),
        "-json".into(),
        plan_file.display().to_string(),
    ];
    steps.push(tool_step(StepKind::ShowPlanJson, tool, show, false));
    steps.extend(hook_step(Hook::PostPlan, &hooks.post_plan));
    steps
}

/// The apply stage's steps: apply the saved plan at `plan_file`.
pub fn apply_stage(hooks: &Hooks, tool: Tool<'_>, plan_file: &Path) -> Vec<Step> {
    let mut steps = Vec::new();
    steps.extend(hook_step(Hook::PreInit, &hooks.pre_init));
    steps.push(init(tool));
    steps.extend(hook_step(Hook::PreApply, &hooks.pre_apply));
    let apply = vec![
        "apply".to_string(),
        "-input=false".into(),
        plan_file.display().to_string(),
    ];
    steps.push(tool_step(StepKind::Apply, tool, apply, false));
    steps.extend(hook_step(Hook::PostApply, &hooks.post_apply));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
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
        }
    }

    fn tool() -> Tool<'static> {
        Tool {
            name: "terraform",
            path: Path::new("/cache/binaries/terraform/1.15.5/terraform"),
        }
    }

    #[test]
    fn plan_flags_follow_the_run() {
        let plan = Path::new("/run/plan.tfplan");
        let base = [
            "plan",
            "-input=false",
            "-out=/run/plan.tfplan",
            "-detailed-exitcode",
        ];
        let mut destroy = run();
        destroy.is_destroy = true;
        let mut no_refresh = run();
        no_refresh.refresh = false;
        let mut refresh_only = run();
        refresh_only.refresh_only = true;
        refresh_only.refresh = false;
        let mut targeted = run();
        targeted.target_addrs = vec!["terraform_data.a".into(), "module.m".into()];
        targeted.replace_addrs = vec!["terraform_data.b".into()];
        let cases: Vec<(RunInfo, Vec<&str>)> = vec![
            (run(), vec![]),
            (destroy, vec!["-destroy"]),
            (no_refresh, vec!["-refresh=false"]),
            (refresh_only, vec!["-refresh-only"]),
            (
                targeted,
                vec![
                    "-target=terraform_data.a",
                    "-target=module.m",
                    "-replace=terraform_data.b",
                ],
            ),
        ];
        for (run, extra) in cases {
            let mut want: Vec<&str> = base.to_vec();
            want.extend(extra);
            assert_eq!(plan_args(&run, plan), want);
        }
    }

    #[test]
    fn stages_list_only_the_hooks_that_are_set_and_mark_after_hooks_always() {
        let hooks = Hooks {
            pre_init: Some("echo init".into()),
            pre_plan: None,
            post_plan: Some("echo after".into()),
            pre_apply: Some("  ".into()),
            post_apply: Some("echo done".into()),
        };
        let plan_file = Path::new("/run/plan.tfplan");
        let plan: Vec<(StepKind, bool)> = plan_stage(&run(), &hooks, tool(), plan_file)
            .iter()
            .map(|s| (s.kind, s.always))
            .collect();
        assert_eq!(
            plan,
            [
                (StepKind::Hook(Hook::PreInit), false),
                (StepKind::Init, false),
                (StepKind::Plan, false),
                (StepKind::ShowPlanJson, false),
                (StepKind::Hook(Hook::PostPlan), true),
            ]
        );
        let apply = apply_stage(&hooks, tool(), plan_file);
        let kinds: Vec<StepKind> = apply.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Hook(Hook::PreInit),
                StepKind::Init,
                StepKind::Apply,
                StepKind::Hook(Hook::PostApply),
            ]
        );
        assert_eq!(
            apply[2].argv,
            [
                "/cache/binaries/terraform/1.15.5/terraform",
                "apply",
                "-input=false",
                "/run/plan.tfplan"
            ]
        );
        assert_eq!(
            apply[2].header,
            "==> terraform apply -input=false /run/plan.tfplan"
        );
        assert_eq!(apply[0].argv, ["sh", "-c", "echo init"]);
        assert_eq!(apply[0].header, "==> Running the pre-init hook");
    }

    #[test]
    fn plan_exit_code_two_is_success_with_changes() {
        let steps = plan_stage(&run(), &Hooks::default(), tool(), Path::new("/p"));
        let plan = steps
            .iter()
            .find(|s| s.kind == StepKind::Plan)
            .expect("plan");
        let init = &steps[0];
        for (code, plan_ok, init_ok) in [
            (Some(0), true, true),
            (Some(2), true, false),
            (Some(1), false, false),
            (None, false, false),
        ] {
            assert_eq!(plan.succeeded(code), plan_ok, "{code:?}");
            assert_eq!(init.succeeded(code), init_ok, "{code:?}");
        }
    }
}
