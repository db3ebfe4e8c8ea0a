//! The platform simulator: a real HTTP server on 127.0.0.1 implementing `docs/protocol.md` with
//! state, plus the Rust API a test uses to play the platform's users (create pools and workspaces,
//! upload configuration versions, register tools, queue and cancel runs, revoke tokens), to read what
//! happened (run status, logs, state, artefacts, the request log) and to script faults.
//!
//! Threads: the test server's connection threads run the routes; a `platform-sim-reaper` thread
//! applies the clock (agents offline, workers lost) every `reaper_tick`. All state is one `World`
//! behind one mutex; long-polls wait on a condition variable signalled whenever the world changes.
//! Time is `SimClock`: real time plus what the test `advance`s, so no test sleeps through a threshold.
//!
//! Self-contained in `tests/support` (examples and benchmarks `#[path]`-include it).

#![allow(dead_code)]
// The test API is used piecemeal by tests, examples and benchmarks.
#![allow(unused_imports)]

mod agent_api;
pub mod clock;
mod faults;
mod inspect;
mod jsonapi;
mod model;
mod routes;
mod runs;
mod state_backend;
mod task_api;
mod world;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use faults::{Fault, LoggedRequest};
pub use inspect::{AgentView, RunView, TaskView};
pub use model::{
    CancelMode, Presence, RunSpec, RunStatus, SimHooks, SimVariable, Stage, TaskResult, TaskState,
};
pub use routes::Route;
pub use state_backend::USERNAME as STATE_USERNAME;

use clock::SimClock;
use faults::FaultScript;
use model::{ConfigVersion, Grant, Pool, ToolBinary, Workspace, World};

/// The simulator's timing. Defaults are the protocol's.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Advertised heartbeat interval (10 s).
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long: offline (30 s).
    pub offline_threshold: Duration,
    /// Longest long-poll wait a client may ask for (30 s).
    pub max_wait: Duration,
    /// How long an offer is reserved for the agent it was made to (15 s).
    pub offer_lease: Duration,
    /// A running task whose worker is silent this long errors (120 s).
    pub worker_threshold: Duration,
    /// How often the reaper applies the clock (50 ms).
    pub reaper_tick: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            heartbeat_interval: Duration::from_secs(10),
            offline_threshold: Duration::from_secs(30),
            max_wait: Duration::from_secs(30),
            offer_lease: Duration::from_secs(15),
            worker_threshold: Duration::from_secs(120),
            reaper_tick: Duration::from_millis(50),
        }
    }
}

/// State shared by the routes, the reaper and the test API.
pub struct Shared {
    world: Mutex<World>,
    changed: Condvar,
    faults: Mutex<FaultScript>,
    log: Mutex<Vec<LoggedRequest>>,
    clock: SimClock,
    stopping: AtomicBool,
}

/// The locked world, with the clock set; wakes long-polls on drop when something changed.
pub struct WorldGuard<'a> {
    guard: Option<MutexGuard<'a, World>>,
    shared: &'a Shared,
    generation: u64,
}

impl Deref for WorldGuard<'_> {
    type Target = World;
    fn deref(&self) -> &World {
        self.guard.as_ref().expect("guard present outside wait")
    }
}

impl DerefMut for WorldGuard<'_> {
    fn deref_mut(&mut self) -> &mut World {
        self.guard.as_mut().expect("guard present outside wait")
    }
}

impl WorldGuard<'_> {
    fn notify_if_changed(&mut self) {
        if let Some(g) = &self.guard
            && g.generation != self.generation
        {
            self.generation = g.generation;
            self.shared.changed.notify_all();
        }
    }

    /// Releases the lock until the world changes or `deadline` passes (real time).
    pub fn wait_until(&mut self, deadline: Instant) {
        self.notify_if_changed();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let guard = self.guard.take().expect("guard present");
        let (mut guard, _) = self
            .shared
            .changed
            .wait_timeout(guard, remaining)
            .unwrap_or_else(|e| e.into_inner());
        guard.at(self.shared.clock.now(), self.shared.clock.wall());
        self.generation = guard.generation;
        self.guard = Some(guard);
    }
}

impl Drop for WorldGuard<'_> {
    fn drop(&mut self) {
        self.notify_if_changed();
    }
}

impl Shared {
    /// Locks the world and sets its clock.
    pub fn world(&self) -> WorldGuard<'_> {
        let mut guard = self.world.lock().unwrap_or_else(|e| e.into_inner());
        guard.at(self.clock.now(), self.clock.wall());
        let generation = guard.generation;
        WorldGuard {
            guard: Some(guard),
            shared: self,
            generation,
        }
    }

    fn faults(&self) -> MutexGuard<'_, FaultScript> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a request as it arrives; returns its index for `answered`.
    fn arrived(&self, entry: LoggedRequest) -> usize {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push(entry);
        let index = log.len() - 1;
        drop(log);
        // Tests wait on the request log too (`wait_until`): wake them.
        self.changed.notify_all();
        index
    }

    /// Records the status a logged request got (`None`: dropped without an answer).
    fn answered(&self, index: usize, status: Option<u16>) {
        if let Some(entry) = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(index)
        {
            entry.status = status;
        }
        self.changed.notify_all();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps up to `duration`, cut short when the simulator stops.
    fn sleep(&self, duration: Duration) {
        let deadline = Instant::now() + duration;
        let mut world = self.world();
        while Instant::now() < deadline && !self.stopping() {
            world.wait_until(deadline);
        }
    }
}

/// A pool and its first token.
#[derive(Clone, Debug)]
pub struct SimPool {
    pub id: String,
    pub token: String,
}

/// A running simulator; stops on drop.
pub struct PlatformSim {
    server: crate::support::http_server::TestServer,
    shared: Arc<Shared>,
}

impl PlatformSim {
    /// Starts a simulator with the protocol's default timing.
    pub fn start() -> Self {
        Self::with_config(SimConfig::default())
    }

    /// Starts a simulator with `config`.
    pub fn with_config(config: SimConfig) -> Self {
        let tick = config.reaper_tick;
        let shared = Arc::new(Shared {
            world: Mutex::new(World::new(config)),
            changed: Condvar::new(),
            faults: Mutex::new(FaultScript::default()),
            log: Mutex::new(Vec::new()),
            clock: SimClock::default(),
            stopping: AtomicBool::new(false),
        });
        let handler_shared = shared.clone();
        let server = crate::support::http_server::TestServer::start(Arc::new(move |req, out| {
            routes::handle(&handler_shared, req, out)
        }));
        let reaper = shared.clone();
        std::thread::Builder::new()
            .name("platform-sim-reaper".into())
            .spawn(move || {
                while !reaper.stopping() {
                    std::thread::sleep(tick);
                    let mut world = reaper.world();
                    let now = world.now;
                    world.sweep(now);
                }
            })
            .expect("spawn the simulator's reaper");
        PlatformSim { server, shared }
    }

    /// `http://127.0.0.1:PORT`, the platform URL a client is configured with.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The timing in force.
    pub fn config(&self) -> SimConfig {
        self.shared.world().cfg.clone()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    // ---- what an administrator does --------------------------------------------------------------

    /// Creates an agent pool and its first pool token.
    pub fn create_pool(&self, name: &str) -> SimPool {
        let mut world = self.shared.world();
        let id = world.new_id("apool");
        world.pools.insert(id.clone(), Pool { name: name.into() });
        let token = world.new_token(Grant::Pool { pool: id.clone() });
        SimPool { id, token }
    }

    /// Issues another token for `pool`.
    pub fn create_pool_token(&self, pool: &str) -> String {
        let mut world = self.shared.world();
        assert!(
            world.pools.contains_key(pool),
            "create_pool_token: unknown pool {pool}"
        );
        world.new_token(Grant::Pool { pool: pool.into() })
    }

    /// Creates a workspace (and its environment, by name) served by `pool`, running terraform 1.15.5.
    pub fn create_workspace(&self, pool: &str, environment: &str, name: &str) -> String {
        self.create_workspace_with(pool, environment, name, "terraform", "1.15.5", "")
    }

    /// Creates a workspace with an explicit tool and working directory.
    pub fn create_workspace_with(
        &self,
        pool: &str,
        environment: &str,
        name: &str,
        iac_platform: &str,
        tool_version: &str,
        working_directory: &str,
    ) -> String {
        let mut world = self.shared.world();
        assert!(
            world.pools.contains_key(pool),
            "create_workspace: unknown pool {pool}"
        );
        let env = match world.environments.iter().find(|(_, n)| *n == environment) {
            Some((id, _)) => id.clone(),
            None => {
                let id = world.new_id("env");
                world.environments.insert(id.clone(), environment.into());
                id
            }
        };
        let id = world.new_id("ws");
        let workspace = Workspace {
            id: id.clone(),
            name: name.into(),
            environment: env,
            pool: pool.into(),
            iac_platform: iac_platform.into(),
            tool_version: tool_version.into(),
            working_directory: working_directory.into(),
            state: Default::default(),
        };
        world.workspaces.insert(id.clone(), workspace);
        id
    }

    /// Uploads a configuration version (a tar.gz) to `workspace`.
    pub fn upload_configuration_version(&self, workspace: &str, tar_gz: Vec<u8>) -> String {
        let mut world = self.shared.world();
        assert!(
            world.workspaces.contains_key(workspace),
            "unknown workspace {workspace}"
        );
        let id = world.new_id("cv");
        let sha256 = model::sha256_hex(&tar_gz);
        world.cvs.insert(
            id.clone(),
            ConfigVersion {
                workspace: workspace.into(),
                bytes: tar_gz,
                sha256,
            },
        );
        id
    }

    /// Registers a tool release; `format` is `binary` or `tar.gz`.
    pub fn register_tool(
        &self,
        name: &str,
        version: &str,
        platform: &str,
        format: &str,
        bytes: Vec<u8>,
    ) {
        assert!(
            matches!(format, "binary" | "tar.gz"),
            "register_tool: format {format}"
        );
        let sha256 = model::sha256_hex(&bytes);
        self.shared.world().tools.insert(
            (name.into(), version.into(), platform.into()),
            ToolBinary {
                format: format.into(),
                bytes,
                sha256,
            },
        );
    }

    /// Queues a run in `workspace`; its plan task is offered to the workspace's pool.
    pub fn queue_run(&self, workspace: &str, spec: RunSpec) -> String {
        let mut world = self.shared.world();
        let (now, wall) = (world.now, world.wall);
        world.queue_run(workspace, spec, wall, now)
    }

    /// Cancels a run: a queued task at once; otherwise graceful the first time, force the second.
    pub fn cancel_run(&self, run: &str) -> Option<CancelMode> {
        let mut world = self.shared.world();
        let wall = world.wall;
        world.cancel_run(run, wall)
    }

    /// Revokes any token (401 from now on). Revoking a pool token ends its agents' sessions.
    pub fn revoke_token(&self, token: &str) {
        self.shared.world().revoke_cascading(token);
    }

    /// Ends an agent's session now, as if it had missed the offline threshold.
    pub fn expire_session(&self, agent: &str) {
        self.shared.world().end_session(agent, Presence::Offline);
    }

    /// Moves the simulator's clock forward and applies it at once.
    pub fn advance(&self, by: Duration) {
        self.shared.clock.advance(by);
        let mut world = self.shared.world();
        let now = world.now;
        world.sweep(now);
        world.touch();
    }

    /// Fault: offers ignore leases, so the same task is offered to every polling agent.
    pub fn set_duplicate_offers(&self, on: bool) {
        self.shared.world().duplicate_offers = on;
    }

    /// The next `count` requests of `route` get `fault`.
    pub fn inject(&self, route: Route, count: usize, fault: Fault) {
        self.shared.faults().push(route, count, fault);
    }

    /// Faults not yet used.
    pub fn pending_faults(&self) -> usize {
        self.shared.faults().pending()
    }

    /// Locks a workspace's state as another terraform would (lock id `id`).
    pub fn lock_state(&self, workspace: &str, id: &str) {
        let info = serde_json::json!({
            "ID": id, "Operation": "OperationTypeApply", "Info": "", "Who": "someone@elsewhere",
            "Version": "1.15.5", "Created": "2026-01-01T00:00:00Z", "Path": "",
        });
        let mut world = self.shared.world();
        let ws = world
            .workspaces
            .get_mut(workspace)
            .expect("lock_state: unknown workspace");
        ws.state.lock = Some((id.into(), info.to_string().into_bytes()));
    }

    /// Releases a workspace's state lock.
    pub fn unlock_state(&self, workspace: &str) {
        let mut world = self.shared.world();
        let ws = world
            .workspaces
            .get_mut(workspace)
            .expect("unlock_state: unknown workspace");
        ws.state.lock = None;
    }
}

impl Drop for PlatformSim {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
    }
}

/// A tar.gz of `(path, content)` files, for configuration versions and tool archives.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(if path.ends_with(".sh") || !path.contains('.') {
            0o755
        } else {
            0o644
        });
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *content)
            .expect("append to an in-memory tar");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("finish an in-memory tar.gz")
}
