//! The typed requests and responses of the platform protocol (`docs/protocol.md`): what the
//! controller and worker send and receive, free of JSON:API envelopes (those are in `wire.rs`).
//! Tokens and sensitive variable values are [`Secret`]s. Plain data, `Send + Sync`, shared freely.

use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// What an agent registers as (`POST /agents`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// Unique in the pool; the chart uses the pod name. A new registration with the same name
    /// replaces the previous session of that name.
    pub name: String,
    pub version: String,
    pub os: String,
    /// `linux_amd64` or `linux_arm64`.
    pub cpu_platform: String,
    /// `kubernetes`, `docker`, `vm`, `fargate`.
    pub runtime: String,
    /// `kubernetes-job` for this agent.
    pub driver: String,
    /// `controller` for this agent.
    pub kubernetes_driver_mode: Option<String>,
    /// Tasks it runs at once (`SCALR_AGENT_CONCURRENCY`), 1..=1000.
    pub capacity: u32,
}

impl Registration {
    /// The registration of a Kubernetes-Job controller built from this binary.
    pub fn kubernetes_controller(name: &str, capacity: u32) -> Self {
        Registration {
            name: name.to_string(),
            version: crate::version::VERSION.to_string(),
            os: "linux".into(),
            cpu_platform: cpu_platform().into(),
            runtime: "kubernetes".into(),
            driver: "kubernetes-job".into(),
            kubernetes_driver_mode: Some("controller".into()),
            capacity,
        }
    }
}

/// `linux_amd64` or `linux_arm64` for the running binary.
pub fn cpu_platform() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "linux_arm64"
    } else {
        "linux_amd64"
    }
}

/// A registered agent's session: its id, token and the timing the platform asks for.
#[derive(Clone, Debug)]
pub struct AgentSession {
    pub agent_id: String,
    pub token: Secret,
    /// Send a heartbeat this often (10 s).
    pub heartbeat_interval: Duration,
    /// Without a heartbeat for this long the agent is offline (30 s).
    pub offline_threshold: Duration,
    /// Longest long-poll wait the platform accepts (30 s).
    pub max_wait: Duration,
}

/// The agent as the platform describes it (heartbeat answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    /// `idle`, `busy` or `offline`.
    pub status: String,
    pub last_seen_at: String,
}

/// A run stage. Unknown stages are kept by name so a newer platform does not break the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(from = "String")]
pub enum Stage {
    Plan,
    Apply,
    Other(String),
}

impl From<String> for Stage {
    fn from(s: String) -> Self {
        match s.as_str() {
            "plan" => Stage::Plan,
            "apply" => Stage::Apply,
            _ => Stage::Other(s),
        }
    }
}

impl Stage {
    /// The wire name (`plan`, `apply`, ...), also used in Job names and labels.
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Plan => "plan",
            Stage::Apply => "apply",
            Stage::Other(s) => s,
        }
    }
}

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskStatus {
    Queued,
    Acquired,
    Running,
    Finished,
    Errored,
    Canceled,
}

impl TaskStatus {
    /// `finished`, `errored` or `canceled`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Finished | TaskStatus::Errored | TaskStatus::Canceled
        )
    }
}

/// How hard a cancel is: `Graceful` (interrupt, let terraform stop) then `Force` (kill).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CancelMode {
    Graceful,
    Force,
}

impl CancelMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelMode::Graceful => "graceful",
            CancelMode::Force => "force",
        }
    }
}

/// A task offered to this agent (it is not ours until acquired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOffer {
    pub task_id: String,
    pub stage: Stage,
    pub run_id: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub environment_id: String,
    pub environment_name: String,
    pub attempt: u32,
    /// When the offer's lease ends and other agents may be offered the task.
    pub expires_at: Option<jiff::Timestamp>,
}

/// A cancel request for a task this agent holds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CancelSignal {
    #[serde(skip)]
    pub task_id: String,
    pub run_id: String,
    pub mode: CancelMode,
}

/// What a long-poll returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEvent {
    /// A task the agent may acquire.
    Offer(TaskOffer),
    /// A held task's run was canceled.
    Cancel(CancelSignal),
}

/// A task as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TaskSummary {
    #[serde(skip)]
    pub id: String,
    pub stage: Stage,
    pub status: TaskStatus,
    /// Increments each time the task is offered again; goes into the Job's labels.
    pub attempt: u32,
    pub run_id: String,
    pub workspace_id: String,
    pub workspace_name: String,
    pub environment_id: String,
    pub environment_name: String,
    pub cancel_requested: Option<CancelMode>,
    /// The agent holding it, if any.
    #[serde(skip)]
    pub agent_id: Option<String>,
}

/// A task this agent holds, with the token its worker needs.
#[derive(Clone, Debug)]
pub struct HeldTask {
    pub task: TaskSummary,
    pub token: Secret,
}

/// Everything a worker needs to run its task (`start` / `get`).
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub id: String,
    pub stage: Stage,
    pub status: TaskStatus,
    pub attempt: u32,
    pub cancel_requested: Option<CancelMode>,
    pub run: RunInfo,
    pub workspace: WorkspaceInfo,
    pub environment: EnvironmentInfo,
    pub tool: ToolInfo,
    pub configuration_version: ConfigurationVersionInfo,
    pub variables: Vec<Variable>,
    pub hooks: Hooks,
    pub state_backend: StateBackend,
    /// What the plan stage uploaded (apply stage only).
    pub artefacts: Vec<ArtefactInfo>,
    /// For the state backend, handed to terraform per command.
    pub run_token: Secret,
}

/// The run's flags.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunInfo {
    pub id: String,
    pub message: String,
    /// Plan a destroy.
    pub is_destroy: bool,
    /// Plan-only run: no apply stage.
    pub is_dry: bool,
    /// `false` → `-refresh=false`.
    pub refresh: bool,
    pub refresh_only: bool,
    pub target_addrs: Vec<String>,
    pub replace_addrs: Vec<String>,
    pub source: String,
    pub vcs_branch: Option<String>,
    pub vcs_commit: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WorkspaceInfo {
    pub id: String,
    pub name: String,
    /// Relative to the configuration version's root; empty for the root.
    pub working_directory: String,
    /// `terraform` or `opentofu`.
    pub iac_platform: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EnvironmentInfo {
    pub id: String,
    pub name: String,
}

/// Something to download: a path below the platform URL, its sha256 and size.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Download {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The tool the run uses, with a download per platform.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub downloads: Vec<ToolDownload>,
}

impl ToolInfo {
    /// The download for `platform` (see [`cpu_platform`]).
    pub fn download_for(&self, platform: &str) -> Option<&ToolDownload> {
        self.downloads.iter().find(|d| d.platform == platform)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ToolDownload {
    pub platform: String,
    /// `binary` (the download is the executable) or `tar.gz` (an archive with it at the root).
    pub format: String,
    #[serde(flatten)]
    pub download: Download,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ConfigurationVersionInfo {
    pub id: String,
    #[serde(flatten)]
    pub download: Download,
}

/// A run variable. Sensitive values are [`Secret`]s.
#[derive(Clone, Debug)]
pub struct Variable {
    pub key: String,
    pub value: VariableValue,
    pub category: VariableCategory,
    /// The value is an HCL expression (terraform variables only).
    pub hcl: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VariableCategory {
    /// An input variable (`TF_VAR_…` or a tfvars file).
    Terraform,
    /// An environment variable of every command and hook.
    Shell,
}

/// A variable's value; sensitive ones never print.
#[derive(Clone, Debug)]
pub enum VariableValue {
    Plain(String),
    Sensitive(Secret),
}

impl VariableValue {
    /// The value itself, for the one place that passes it on.
    pub fn expose(&self) -> &str {
        match self {
            VariableValue::Plain(v) => v,
            VariableValue::Sensitive(s) => s.expose(),
        }
    }

    pub fn is_sensitive(&self) -> bool {
        matches!(self, VariableValue::Sensitive(_))
    }
}

/// Shell snippets run around the stages; `None` when unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Hooks {
    pub pre_init: Option<String>,
    pub pre_plan: Option<String>,
    /// Runs even when the plan failed.
    pub post_plan: Option<String>,
    pub pre_apply: Option<String>,
    /// Runs even when the apply failed.
    pub post_apply: Option<String>,
}

/// Terraform's `http` backend settings, with absolute URLs (joined to the platform URL).
/// Terraform authenticates with `username` and the run token as password.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateBackend {
    pub address: String,
    pub lock_address: String,
    pub unlock_address: String,
    pub lock_method: String,
    pub unlock_method: String,
    pub username: String,
}

/// Plan artefacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtefactKind {
    /// Terraform's binary plan file.
    PlanFile,
    /// `terraform show -json` of the plan.
    PlanJson,
}

impl ArtefactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtefactKind::PlanFile => "plan-file",
            ArtefactKind::PlanJson => "plan-json",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ArtefactInfo {
    pub kind: ArtefactKind,
    #[serde(flatten)]
    pub download: Download,
}

/// A task's final status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalStatus {
    Finished,
    Errored,
    /// Only after a cancel was requested.
    Canceled,
}

impl FinalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Finished => "finished",
            FinalStatus::Errored => "errored",
            FinalStatus::Canceled => "canceled",
        }
    }
}

/// Resource counts of a plan or apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceCounts {
    pub additions: u64,
    pub changes: u64,
    pub destructions: u64,
}

/// What the worker reports at the end (`finish`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub status: FinalStatus,
    pub has_changes: bool,
    pub counts: ResourceCounts,
    /// Shown to the user with the run, at most 4000 characters.
    pub message: String,
}

impl TaskResult {
    /// The stage ran to completion.
    pub fn finished(has_changes: bool, counts: ResourceCounts, message: &str) -> Self {
        TaskResult {
            status: FinalStatus::Finished,
            has_changes,
            counts,
            message: message.to_string(),
        }
    }

    /// The stage failed.
    pub fn errored(message: &str) -> Self {
        TaskResult {
            status: FinalStatus::Errored,
            has_changes: false,
            counts: ResourceCounts::default(),
            message: message.to_string(),
        }
    }

    /// The stage stopped after a cancel request.
    pub fn canceled(message: &str) -> Self {
        TaskResult {
            status: FinalStatus::Canceled,
            ..Self::errored(message)
        }
    }
}
