//! The environment every command of a run gets: the run variables (shell variables as they are,
//! terraform variables as `TF_VAR_<key>`), what hooks carried in `SCALR_AGENT_ENV`, and what the
//! agent sets — the Terraform settings (`TF_CLI_CONFIG_FILE`, `TF_PLUGIN_CACHE_DIR`,
//! `TF_IN_AUTOMATION`, `TF_INPUT=0`, the state backend's password), the run environment Scalr users
//! rely on (`SCALR_RUN_ID`, `SCALR_HOSTNAME`, `SCALR_TERRAFORM_OPERATION`, ...) and mirror tokens.
//! Later entries win, so a variable cannot override what the agent sets.
//!
//! Terraform variables go by environment, never into a `*.tfvars` file the runner could keep: a
//! value marked `hcl` is passed as it is, and Terraform parses `TF_VAR_` values as HCL for
//! variables of complex types (lists, maps, objects), which is where HCL values are used; an `hcl`
//! value for a variable declared `string` stays a literal string.
//!
//! Pure: the task document and paths in, name/value pairs out. Built once on the worker's main
//! thread; values are handed to exec-loop per command (never on a command line, never in a file).
//! `Debug` shows names only.

use std::path::Path;

use crate::platform::{Stage, TaskSpec, VariableCategory};
use crate::secret::Secret;

/// What the run environment is built from.
#[derive(Clone, Copy, Debug)]
pub struct RunContext<'a> {
    pub spec: &'a TaskSpec,
    /// `SCALR_URL`, for `SCALR_HOSTNAME`.
    pub platform_url: &'a str,
    /// Where the configuration version was extracted (`SCALR_RUN_CONTENT_ROOT`).
    pub content_root: &'a Path,
    pub cli_config: &'a Path,
    pub plugin_cache: &'a Path,
    /// The `SCALR_AGENT_ENV` file.
    pub agent_env_file: &'a Path,
    /// `TF_TOKEN_<host>` variables of the network mirrors.
    pub mirror_tokens: &'a [(String, Secret)],
}

/// A run variable whose name cannot be an environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidVariable {
    pub key: String,
}

impl std::fmt::Display for InvalidVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "variable {:?} cannot be passed to the run: a name must be non-empty and hold no '=' \
             or NUL; rename it in the workspace's variables",
            self.key
        )
    }
}

impl std::error::Error for InvalidVariable {}

/// The environment of a run's commands.
#[derive(Clone)]
pub struct RunEnv {
    user: Vec<(String, String)>,
    agent: Vec<(String, String)>,
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for RunEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("RunEnv")
            .field("user", &names(&self.user))
            .field("agent", &names(&self.agent))
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

fn flag(value: bool) -> String {
    if value { "1" } else { "0" }.to_string()
}

/// `host[:port]` of the platform URL.
fn hostname(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// `SCALR_RUN_MODE`: apply, dry (plan-only), refresh (refresh-only) or skip_refresh.
fn run_mode(spec: &TaskSpec) -> &'static str {
    let run = &spec.run;
    if run.refresh_only {
        "refresh"
    } else if run.is_dry {
        "dry"
    } else if !run.refresh {
        "skip_refresh"
    } else {
        "apply"
    }
}

impl RunEnv {
    /// Builds the environment; fails on a variable name no environment can hold.
    pub fn new(ctx: &RunContext<'_>) -> Result<RunEnv, InvalidVariable> {
        let spec = ctx.spec;
        let mut user = Vec::new();
        let mut secrets = vec![spec.run_token.clone()];
        for variable in &spec.variables {
            if !valid_name(&variable.key) {
                return Err(InvalidVariable {
                    key: variable.key.clone(),
                });
            }
            let name = match variable.category {
                VariableCategory::Shell => variable.key.clone(),
                VariableCategory::Terraform => format!("TF_VAR_{}", variable.key),
            };
            if let crate::platform::VariableValue::Sensitive(secret) = &variable.value {
                secrets.push(secret.clone());
            }
            user.push((name, variable.value.expose().to_string()));
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let run = &spec.run;
        let mut agent: Vec<(String, String)> = vec![
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TF_CLI_CONFIG_FILE".into(), path(ctx.cli_config)),
            ("TF_PLUGIN_CACHE_DIR".into(), path(ctx.plugin_cache)),
            ("SCALR_AGENT_ENV".into(), path(ctx.agent_env_file)),
            ("SCALR_RUN_ID".into(), run.id.clone()),
            ("SCALR_HOSTNAME".into(), hostname(ctx.platform_url)),
            (
                "SCALR_TERRAFORM_OPERATION".into(),
                match &spec.stage {
                    Stage::Apply => "apply".into(),
                    other => other.as_str().to_string(),
                },
            ),
            ("SCALR_RUN_IS_DESTROY".into(), flag(run.is_destroy)),
            ("SCALR_RUN_MODE".into(), run_mode(spec).into()),
            ("SCALR_RUN_SOURCE".into(), run.source.clone()),
            ("SCALR_WORKSPACE_ID".into(), spec.workspace.id.clone()),
            ("SCALR_WORKSPACE_NAME".into(), spec.workspace.name.clone()),
            ("SCALR_ENVIRONMENT_ID".into(), spec.environment.id.clone()),
            (
                "SCALR_ENVIRONMENT_NAME".into(),
                spec.environment.name.clone(),
            ),
            ("SCALR_RUN_CONTENT_ROOT".into(), path(ctx.content_root)),
            ("SCALR_TOKEN".into(), spec.run_token.expose().to_string()),
        ];
        if let Some(branch) = &run.vcs_branch {
            agent.push(("SCALR_RUN_VCS_BRANCH".into(), branch.clone()));
        }
        if let Some(commit) = &run.vcs_commit {
            agent.push(("SCALR_RUN_VCS_COMMIT".into(), commit.clone()));
        }
        for (name, secret) in super::tf_config::backend_env(&spec.run_token) {
            agent.push((name.to_string(), secret.expose().to_string()));
        }
        for (name, token) in ctx.mirror_tokens {
            agent.push((name.clone(), token.expose().to_string()));
            secrets.push(token.clone());
        }
        Ok(RunEnv {
            user,
            agent,
            secrets,
        })
    }

    /// The environment of one command: variables, then what hooks carried (`carried`, from the
    /// `SCALR_AGENT_ENV` file), then the agent's own; after-hooks also get
    /// `SCALR_TERRAFORM_EXIT_CODE`.
    pub fn for_command(
        &self,
        carried: &[(String, String)],
        exit_code: Option<i32>,
    ) -> Vec<(String, String)> {
        let mut env = Vec::with_capacity(self.user.len() + carried.len() + self.agent.len() + 1);
        env.extend(self.user.iter().cloned());
        env.extend(carried.iter().cloned());
        env.extend(self.agent.iter().cloned());
        if let Some(code) = exit_code {
            env.push(("SCALR_TERRAFORM_EXIT_CODE".into(), code.to_string()));
        }
        env
    }

    /// The values that must never reach a log: the run token, sensitive variables, mirror tokens.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::*;

    fn spec(variables: Vec<Variable>) -> TaskSpec {
        let download = Download {
            path: "/api/iacp/v3/x".into(),
            sha256: "0".repeat(64),
            size: 1,
        };
        TaskSpec {
            id: "task-1".into(),
            stage: Stage::Plan,
            status: TaskStatus::Running,
            attempt: 1,
            cancel_requested: None,
            run: RunInfo {
                id: "run-1".into(),
                message: String::new(),
                is_destroy: true,
                is_dry: false,
                refresh: true,
                refresh_only: false,
                target_addrs: vec![],
                replace_addrs: vec![],
                source: "api".into(),
                vcs_branch: Some("main".into()),
                vcs_commit: None,
            },
            workspace: WorkspaceInfo {
                id: "ws-1".into(),
                name: "network".into(),
                working_directory: String::new(),
                iac_platform: "terraform".into(),
            },
            environment: EnvironmentInfo {
                id: "env-1".into(),
                name: "prod".into(),
            },
            tool: ToolInfo {
                name: "terraform".into(),
                version: "1.15.5".into(),
                downloads: vec![],
            },
            configuration_version: ConfigurationVersionInfo {
                id: "cv-1".into(),
                download,
            },
            variables,
            hooks: Hooks::default(),
            state_backend: StateBackend {
                address: "http://x/state".into(),
                lock_address: "http://x/lock".into(),
                unlock_address: "http://x/lock".into(),
                lock_method: "LOCK".into(),
                unlock_method: "UNLOCK".into(),
                username: "token".into(),
            },
            artefacts: vec![],
            run_token: Secret::new("run-token-for-env-tests"),
        }
    }

    fn var(key: &str, value: VariableValue, category: VariableCategory) -> Variable {
        Variable {
            key: key.into(),
            value,
            category,
            hcl: false,
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn variables_then_carried_then_the_agents_own() {
        let mirror = [(
            "TF_TOKEN_mirror_example".to_string(),
            Secret::new("mirror-tok-1234"),
        )];
        let spec = spec(vec![
            var(
                "region",
                VariableValue::Plain("eu-west-1".into()),
                VariableCategory::Terraform,
            ),
            var(
                "AWS_SECRET",
                VariableValue::Sensitive(Secret::new("aws-secret-value")),
                VariableCategory::Shell,
            ),
            var(
                "SCALR_TOKEN",
                VariableValue::Plain("user-tries-to-override".into()),
                VariableCategory::Shell,
            ),
        ]);
        let ctx = RunContext {
            spec: &spec,
            platform_url: "https://acme.scalr.io:8443",
            content_root: Path::new("/data/runs/task-1/config"),
            cli_config: Path::new("/data/runs/task-1/.scalr/terraform.rc"),
            plugin_cache: Path::new("/data/runs/task-1/.scalr/plugin-cache"),
            agent_env_file: Path::new("/data/runs/task-1/.scalr/agent.env"),
            mirror_tokens: &mirror,
        };
        let env = RunEnv::new(&ctx).expect("env");
        let carried = vec![("FROM_HOOK".to_string(), "1".to_string())];
        let cmd = env.for_command(&carried, None);
        let cases = [
            ("TF_VAR_region", Some("eu-west-1")),
            ("AWS_SECRET", Some("aws-secret-value")),
            ("FROM_HOOK", Some("1")),
            ("SCALR_TOKEN", Some("run-token-for-env-tests")),
            ("TF_HTTP_PASSWORD", Some("run-token-for-env-tests")),
            ("TF_IN_AUTOMATION", Some("1")),
            ("TF_INPUT", Some("0")),
            (
                "TF_CLI_CONFIG_FILE",
                Some("/data/runs/task-1/.scalr/terraform.rc"),
            ),
            (
                "TF_PLUGIN_CACHE_DIR",
                Some("/data/runs/task-1/.scalr/plugin-cache"),
            ),
            (
                "SCALR_AGENT_ENV",
                Some("/data/runs/task-1/.scalr/agent.env"),
            ),
            ("SCALR_HOSTNAME", Some("acme.scalr.io:8443")),
            ("SCALR_RUN_ID", Some("run-1")),
            ("SCALR_TERRAFORM_OPERATION", Some("plan")),
            ("SCALR_RUN_IS_DESTROY", Some("1")),
            ("SCALR_RUN_MODE", Some("apply")),
            ("SCALR_RUN_VCS_BRANCH", Some("main")),
            ("SCALR_RUN_VCS_COMMIT", None),
            ("SCALR_WORKSPACE_NAME", Some("network")),
            ("SCALR_ENVIRONMENT_NAME", Some("prod")),
            ("SCALR_RUN_CONTENT_ROOT", Some("/data/runs/task-1/config")),
            ("TF_TOKEN_mirror_example", Some("mirror-tok-1234")),
            ("SCALR_TERRAFORM_EXIT_CODE", None),
        ];
        for (name, want) in cases {
            assert_eq!(get(&cmd, name), want, "{name}");
        }
        let after = env.for_command(&[], Some(2));
        assert_eq!(get(&after, "SCALR_TERRAFORM_EXIT_CODE"), Some("2"));
        let secrets: Vec<&str> = env.secrets().iter().map(Secret::expose).collect();
        assert_eq!(
            secrets,
            [
                "run-token-for-env-tests",
                "aws-secret-value",
                "mirror-tok-1234"
            ]
        );
        let debug = format!("{env:?}");
        assert!(!debug.contains("aws-secret-value") && !debug.contains("run-token-for"));
    }

    #[test]
    fn run_modes_and_invalid_names() {
        let mut s = spec(vec![]);
        let ctx = |s: &TaskSpec| run_mode(s).to_string();
        s.run.refresh = false;
        assert_eq!(ctx(&s), "skip_refresh");
        s.run.is_dry = true;
        assert_eq!(ctx(&s), "dry");
        s.run.refresh_only = true;
        assert_eq!(ctx(&s), "refresh");
        let bad = spec(vec![var(
            "A=B",
            VariableValue::Plain("x".into()),
            VariableCategory::Shell,
        )]);
        let c = RunContext {
            spec: &bad,
            platform_url: "https://x",
            content_root: Path::new("/c"),
            cli_config: Path::new("/c"),
            plugin_cache: Path::new("/c"),
            agent_env_file: Path::new("/c"),
            mirror_tokens: &[],
        };
        assert_eq!(
            RunEnv::new(&c).map(|_| ()),
            Err(InvalidVariable { key: "A=B".into() })
        );
    }
}
