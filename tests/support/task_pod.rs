//! A task pod made of local processes, for the worker's tests and benchmark: the real binary as
//! `exec-loop` and as `worker`, sharing a temporary data directory like the runner and worker
//! containers, against the platform simulator, with real terraform (1.15.5 from
//! `scripts/install-tools.sh`) served by the simulator as the tool binary. [`World`] plays the
//! controller: it acquires each task with an agent session and hands its token to the worker
//! through a file, as the per-task Secret would.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use scalr_agent::http::{HttpOptions, RetryPolicy};
use scalr_agent::platform::{AgentClient, AgentEvent, HeldTask, PlatformClient, Registration};
use scalr_agent::secret::Secret;

use super::platform_sim::{PlatformSim, RunSpec, RunStatus, SimPool, Stage, tar_gz};

/// Waiting ends as soon as the condition holds; the bound only matters when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(90);
/// PATH of the runner: a shell, coreutils and python3 (the terraform shim).
pub const RUNNER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A simulator with a pool, a workspace, terraform registered, and a controller session.
pub struct World {
    /// The `scalr-agent` binary.
    pub bin: PathBuf,
    pub sim: PlatformSim,
    pub pool: SimPool,
    pub ws: String,
    pub agent: AgentClient,
    /// The shared cache volume of every pod of this world (a ReadWriteMany cache).
    pub cache: tempfile::TempDir,
}

/// How a pod's containers are started.
#[derive(Clone, Default)]
pub struct PodOptions {
    /// More environment for the worker (e.g. the grace period).
    pub worker_env: Vec<(String, String)>,
    /// More arguments for the worker.
    pub worker_args: Vec<String>,
    /// More arguments for exec-loop.
    pub exec_loop_args: Vec<String>,
    /// More environment for exec-loop (what the runner image sets).
    pub exec_loop_env: Vec<(String, String)>,
    /// exec-loop's cgroup root (default: an empty directory: no memory monitor).
    pub cgroup_root: Option<PathBuf>,
}

/// A task pod: exec-loop and the worker, killed on drop if still running.
pub struct Pod {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub task: String,
    pub token: String,
    exec_loop: Child,
    worker: Child,
    worker_status: Option<ExitStatus>,
}

fn client_for(sim: &PlatformSim) -> PlatformClient {
    let options = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(40),
        ..HttpOptions::default()
    };
    PlatformClient::new(&sim.url(), &options)
        .expect("client for the simulator")
        .with_retry(RetryPolicy::fast(5))
}

/// The real terraform the simulator serves as the tool binary.
pub fn terraform_bytes() -> Vec<u8> {
    fs::read(super::tools::tool("terraform")).expect("read the terraform shim")
}

impl World {
    /// A fresh world whose pods run `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> World {
        let sim = PlatformSim::start();
        let pool = sim.create_pool("k8s");
        let ws = sim.create_workspace(&pool.id, "production", "network");
        sim.register_tool(
            "terraform",
            "1.15.5",
            "linux_amd64",
            "binary",
            terraform_bytes(),
        );
        let agent = client_for(&sim)
            .register(
                &Secret::new(pool.token.clone()),
                &Registration::kubernetes_controller("controller-0", 4),
            )
            .expect("register the test's controller");
        World {
            bin: bin.into(),
            sim,
            pool,
            ws,
            agent,
            cache: tempfile::tempdir().expect("cache dir"),
        }
    }

    /// Uploads a configuration version of `(path, content)` files.
    pub fn cv(&self, files: &[(&str, &str)]) -> String {
        let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
        self.sim
            .upload_configuration_version(&self.ws, tar_gz(&files))
    }

    /// Acquires the queued task of `run`'s `stage`, as the controller would.
    pub fn acquire(&self, run: &str, stage: Stage) -> HeldTask {
        let task = self
            .sim
            .wait_until(DEADLINE, &format!("the {stage:?} task of {run}"), |sim| {
                sim.stage_task(run, stage)
            });
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            let events = self.agent.poll(4, Duration::from_secs(2)).expect("poll");
            if events
                .iter()
                .any(|e| matches!(e, AgentEvent::Offer(o) if o.task_id == task))
            {
                return self.agent.acquire(&task).expect("acquire");
            }
        }
        panic!("task {task} was never offered\n{}", self.sim.dump());
    }

    /// Starts a pod for `held` (exec-loop first, then the worker).
    pub fn launch(&self, held: &HeldTask, options: &PodOptions) -> Pod {
        let dir = tempfile::tempdir().expect("pod dir");
        let data = dir.path().join("data");
        let home = dir.path().join("home");
        let cgroup = dir.path().join("no-cgroup");
        for d in [&data, &home, &cgroup, &dir.path().join("credentials")] {
            fs::create_dir_all(d).expect("mkdir");
        }
        let token_file = dir.path().join("credentials/task-token");
        fs::write(&token_file, held.token.expose()).expect("write the task token");
        let mut exec_loop = Command::new(&self.bin);
        exec_loop
            .arg("exec-loop")
            .args(&options.exec_loop_args)
            .env_clear()
            .env("PATH", RUNNER_PATH)
            .env("HOME", &home)
            .env("SCALR_AGENT_DATA_DIR", &data)
            .env(
                "SCALR_AGENT_CGROUP_ROOT",
                options.cgroup_root.as_deref().unwrap_or(&cgroup),
            )
            .envs(options.exec_loop_env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("exec-loop.log")).expect("log file"));
        let exec_loop = exec_loop.spawn().expect("spawn exec-loop");
        let mut worker = Command::new(&self.bin);
        worker
            .arg("worker")
            .args(&options.worker_args)
            .env_clear()
            .env("PATH", RUNNER_PATH)
            .env("HOME", &home)
            .env("SCALR_URL", self.sim.url())
            .env("SCALR_AGENT_DEBUG", "true")
            .env("SCALR_AGENT_DATA_DIR", &data)
            .env("SCALR_AGENT_CACHE_DIR", self.cache.path())
            .env("SCALR_AGENT_TASK_ID", &held.task.id)
            .env("SCALR_AGENT_RUN_ID", &held.task.run_id)
            .env("SCALR_AGENT_TASK_STAGE", held.task.stage.as_str())
            .env("SCALR_AGENT_TASK_ATTEMPT", held.task.attempt.to_string())
            .env("SCALR_AGENT_TASK_TOKEN_FILE", &token_file)
            .envs(options.worker_env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("worker.log")).expect("log file"));
        let worker = worker.spawn().expect("spawn worker");
        Pod {
            dir,
            data,
            task: held.task.id.clone(),
            token: held.token.expose().to_string(),
            exec_loop,
            worker,
            worker_status: None,
        }
    }

    /// Acquires, launches and waits for the stage's pod; asserts the worker exited 0.
    pub fn run_stage(&self, run: &str, stage: Stage, options: &PodOptions) -> Pod {
        let held = self.acquire(run, stage);
        let mut pod = self.launch(&held, options);
        let status = pod.wait(DEADLINE);
        assert!(
            status.success(),
            "worker exited with {status}\n{}\n{}",
            pod.logs(),
            self.sim.dump()
        );
        pod
    }

    /// Queues a run and runs its plan (and apply, if there is one) to the end.
    pub fn run_to_end(&self, spec: RunSpec, options: &PodOptions) -> (String, Vec<Pod>) {
        let run = self.sim.queue_run(&self.ws, spec);
        let mut pods = vec![self.run_stage(&run, Stage::Plan, options)];
        if self.sim.run(&run).status == RunStatus::ApplyQueued {
            pods.push(self.run_stage(&run, Stage::Apply, options));
        }
        (run, pods)
    }

    /// The run log of `run`'s `stage` task, as text.
    pub fn log(&self, run: &str, stage: Stage) -> String {
        let task = self.sim.stage_task(run, stage).expect("task exists");
        String::from_utf8_lossy(&self.sim.log(&task)).into_owned()
    }
}

impl Pod {
    /// Waits for the worker to exit, then for exec-loop (which the worker tells to shut down).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.worker.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.worker_status = Some(status);
        status
    }

    /// Whether exec-loop exits by itself within `timeout`, and how.
    pub fn wait_exec_loop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exec_loop.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn worker_pid(&self) -> i32 {
        self.worker.id() as i32
    }

    pub fn exec_loop_pid(&self) -> i32 {
        self.exec_loop.id() as i32
    }

    pub fn worker_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default()
    }

    pub fn exec_loop_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("exec-loop.log")).unwrap_or_default()
    }

    /// Both containers' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- worker log ---\n{}\n--- exec-loop log ---\n{}",
            self.worker_log(),
            self.exec_loop_log()
        )
    }

    pub fn marker(&self, name: &str) -> PathBuf {
        self.data.join("markers/worker").join(name)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for child in [&mut self.worker, &mut self.exec_loop] {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
