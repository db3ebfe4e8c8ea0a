//! The simulator's objects: pools, tokens, agents, workspaces, configuration versions, tools, runs and
//! tasks, and the small enums of their states with their wire spellings. Plain data; the transitions
//! live in `world.rs`. Everything here is owned by the `World` behind the simulator's one lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::SimConfig;

/// What a token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    Pool { pool: String },
    Session { agent: String },
    Task { task: String },
    Run { run: String },
}

impl Grant {
    /// The kind, as the request log and error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Grant::Pool { .. } => "pool",
            Grant::Session { .. } => "session",
            Grant::Task { .. } => "task",
            Grant::Run { .. } => "run",
        }
    }
}

/// A token and whether it still works.
#[derive(Clone, Debug)]
pub struct TokenEntry {
    pub grant: Grant,
    /// Revoked tokens answer 401.
    pub revoked: bool,
    /// Session tokens of agents that went offline answer 410.
    pub expired: bool,
}

#[derive(Clone, Debug)]
pub struct Pool {
    pub name: String,
}

/// Online, offline (session expired) or gone (deregistered, revoked or replaced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Online,
    Offline,
    Deregistered,
}

/// The attributes an agent registers with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAttrs {
    pub name: String,
    pub version: String,
    pub os: String,
    pub cpu_platform: String,
    pub runtime: String,
    pub driver: String,
    pub kubernetes_driver_mode: Option<String>,
    pub capacity: u32,
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub id: String,
    pub pool: String,
    pub attrs: AgentAttrs,
    pub session: String,
    /// The pool token it registered with: revoking that token ends the session.
    pub pool_token: String,
    pub presence: Presence,
    pub last_seen: Instant,
    pub last_seen_wall: SystemTime,
    pub created_at: SystemTime,
    /// `(task, mode)` cancel signals already delivered in this session.
    pub delivered_cancels: BTreeSet<(String, CancelMode)>,
}

#[derive(Clone, Debug)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub pool: String,
    pub iac_platform: String,
    pub tool_version: String,
    pub working_directory: String,
    pub state: StateStore,
}

#[derive(Clone, Debug, Default)]
pub struct StateStore {
    /// Every state written, oldest first.
    pub versions: Vec<Vec<u8>>,
    /// The lock id and the lock info terraform sent.
    pub lock: Option<(String, Vec<u8>)>,
}

#[derive(Clone, Debug)]
pub struct ConfigVersion {
    pub workspace: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

#[derive(Clone, Debug)]
pub struct ToolBinary {
    pub format: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
}

/// A run stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Plan,
    Apply,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Plan => "plan",
            Stage::Apply => "apply",
        }
    }
}

/// A task's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Acquired,
    Running,
    Finished,
    Errored,
    Canceled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Acquired => "acquired",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
            TaskState::Errored => "errored",
            TaskState::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Errored | TaskState::Canceled
        )
    }
}

/// A run's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    PlanQueued,
    Planning,
    PlannedAndFinished,
    ApplyQueued,
    Applying,
    Applied,
    Errored,
    Canceled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::PlanQueued => "plan_queued",
            RunStatus::Planning => "planning",
            RunStatus::PlannedAndFinished => "planned_and_finished",
            RunStatus::ApplyQueued => "apply_queued",
            RunStatus::Applying => "applying",
            RunStatus::Applied => "applied",
            RunStatus::Errored => "errored",
            RunStatus::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::PlannedAndFinished
                | RunStatus::Applied
                | RunStatus::Errored
                | RunStatus::Canceled
        )
    }
}

/// How hard a cancel is; ordered, `Force` > `Graceful`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

/// A variable of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimVariable {
    pub key: String,
    pub value: String,
    /// `terraform` or `shell`.
    pub category: String,
    pub sensitive: bool,
    pub hcl: bool,
}

impl SimVariable {
    /// A terraform input variable.
    pub fn terraform(key: &str, value: &str) -> Self {
        SimVariable {
            key: key.into(),
            value: value.into(),
            category: "terraform".into(),
            sensitive: false,
            hcl: false,
        }
    }

    /// An environment variable.
    pub fn shell(key: &str, value: &str) -> Self {
        SimVariable {
            category: "shell".into(),
            ..Self::terraform(key, value)
        }
    }

    /// The same variable marked sensitive.
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }
}

/// Hook scripts of a workspace, as the run carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimHooks {
    pub pre_init: Option<String>,
    pub pre_plan: Option<String>,
    pub post_plan: Option<String>,
    pub pre_apply: Option<String>,
    pub post_apply: Option<String>,
}

/// What a test queues.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub configuration_version: String,
    pub message: String,
    pub is_destroy: bool,
    /// Plan-only.
    pub is_dry: bool,
    pub refresh: bool,
    pub refresh_only: bool,
    pub target_addrs: Vec<String>,
    pub replace_addrs: Vec<String>,
    pub variables: Vec<SimVariable>,
    pub hooks: SimHooks,
}

impl RunSpec {
    /// A normal plan-and-apply run of `configuration_version`.
    pub fn new(configuration_version: &str) -> Self {
        RunSpec {
            configuration_version: configuration_version.into(),
            message: "Triggered by the test".into(),
            is_destroy: false,
            is_dry: false,
            refresh: true,
            refresh_only: false,
            target_addrs: Vec::new(),
            replace_addrs: Vec::new(),
            variables: Vec::new(),
            hooks: SimHooks::default(),
        }
    }
}

/// What a worker reported at the end of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub status: TaskState,
    pub has_changes: bool,
    pub additions: u64,
    pub changes: u64,
    pub destructions: u64,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub id: String,
    pub workspace: String,
    pub spec: RunSpec,
    pub status: RunStatus,
    pub message: Option<String>,
    pub tasks: Vec<String>,
    pub artefacts: BTreeMap<String, Vec<u8>>,
    pub token: String,
    pub created_at: SystemTime,
}

#[derive(Clone, Debug)]
pub struct Task {
    pub id: String,
    /// Creation order, for fair offers.
    pub order: u64,
    pub run: String,
    pub stage: Stage,
    pub state: TaskState,
    pub attempt: u32,
    pub holder: Option<String>,
    pub token: Option<String>,
    /// The agent an offer is leased to, until when.
    pub lease: Option<(String, Instant)>,
    pub lease_until_wall: Option<SystemTime>,
    pub cancel: Option<(CancelMode, SystemTime)>,
    pub log: Vec<u8>,
    pub result: Option<TaskResult>,
    /// Set when the controller failed the task (so a repeated fail is a no-op).
    pub failed_by: Option<String>,
    pub last_worker_contact: Instant,
    pub created_at: SystemTime,
}

/// Everything the simulator knows.
pub struct World {
    pub cfg: SimConfig,
    seed: u64,
    seq: u64,
    /// Bumped whenever something a long-poll may wait for changed.
    pub generation: u64,
    pub pools: BTreeMap<String, Pool>,
    pub tokens: HashMap<String, TokenEntry>,
    pub agents: BTreeMap<String, Agent>,
    pub environments: BTreeMap<String, String>,
    pub workspaces: BTreeMap<String, Workspace>,
    pub cvs: BTreeMap<String, ConfigVersion>,
    pub tools: BTreeMap<(String, String, String), ToolBinary>,
    pub runs: BTreeMap<String, Run>,
    pub tasks: BTreeMap<String, Task>,
    /// Fault: offers ignore leases, so every polling agent sees every queued task.
    pub duplicate_offers: bool,
    /// The simulator clock as of the current locked section (set by `at`).
    pub now: Instant,
    pub wall: SystemTime,
}

impl World {
    pub fn new(cfg: SimConfig) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        World {
            cfg,
            seed: nanos ^ (u64::from(std::process::id()) << 32),
            seq: 0,
            generation: 0,
            pools: BTreeMap::new(),
            tokens: HashMap::new(),
            agents: BTreeMap::new(),
            environments: BTreeMap::new(),
            workspaces: BTreeMap::new(),
            cvs: BTreeMap::new(),
            tools: BTreeMap::new(),
            runs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            duplicate_offers: false,
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Sets the clock for the locked section that follows.
    pub fn at(&mut self, now: Instant, wall: SystemTime) {
        self.now = now;
        self.wall = wall;
    }

    fn digest(&mut self, what: &str) -> [u8; 32] {
        self.seq += 1;
        let mut hasher = Sha256::new();
        hasher.update(self.seed.to_le_bytes());
        hasher.update(self.seq.to_le_bytes());
        hasher.update(what.as_bytes());
        hasher.finalize().into()
    }

    /// The next creation order number.
    pub fn next_order(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A fresh identifier `prefix-` + 17 characters of `[0-9a-v]`.
    pub fn new_id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuv";
        let digest = self.digest(prefix);
        let suffix: String = digest
            .iter()
            .take(17)
            .map(|b| ALPHABET[usize::from(b % 32)] as char)
            .collect();
        format!("{prefix}-{suffix}")
    }

    /// A fresh opaque token granting `grant`.
    pub fn new_token(&mut self, grant: Grant) -> String {
        let digest = self.digest("token");
        let token: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens.insert(
            token.clone(),
            TokenEntry {
                grant,
                revoked: false,
                expired: false,
            },
        );
        token
    }

    /// Marks `token` revoked (401 from now on).
    pub fn revoke(&mut self, token: &str) {
        if let Some(entry) = self.tokens.get_mut(token) {
            entry.revoked = true;
        }
    }

    /// Something changed that waiters may care about.
    pub fn touch(&mut self) {
        self.generation += 1;
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
