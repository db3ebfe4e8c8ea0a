//! The controller's test world: a platform simulator with a pool, workspace and configuration
//! version; a Kubernetes API simulator with namespace `ci`, the chart's CRD and task template; a
//! controller run in-process (`controller::run` with short timings) or as the real binary; and a
//! small "kubelet" the tests drive by hand (pods with the statuses a scenario needs, Job conditions),
//! since no pod executor runs here.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use scalr_agent::controller::lifecycle::Lifecycle;
use scalr_agent::controller::metrics::Metrics;
use scalr_agent::controller::supervision::SupervisionSettings;
use scalr_agent::controller::{self, ControllerExit, ControllerOptions, Timing};
use scalr_agent::http::{CaSource, HttpOptions, RetryPolicy};
use scalr_agent::kube::{Explicit, KubeConfig};
use scalr_agent::platform::{PlatformClient, TaskClient};
use scalr_agent::secret::Secret;
use scalr_agent::shutdown::Reason;
use serde_json::{Value, json};

use crate::support::kube_sim::{Credential, KubeSim, KubeSimOptions};
use crate::support::platform_sim::{PlatformSim, RunSpec, SimConfig, SimPool, Stage, tar_gz};

/// The namespace of everything.
pub const NS: &str = "ci";
/// The template's name (as the chart names it for release `prod`).
pub const TEMPLATE: &str = "prod-scalr-agent-task-template";
/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scalr-agent");
/// How long any wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(60);

/// Quick retries for tests.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(20),
    }
}

/// Short timings: a scan every 300 ms, short supervision limits where a test needs them.
pub fn fast_timing() -> Timing {
    Timing {
        supervision: SupervisionSettings::default(),
        force_cancel_deadline: Duration::from_secs(1),
        events_refresh: Duration::from_millis(300),
        pod_expected_after: Duration::from_millis(300),
        housekeeping_tick: Duration::from_millis(200),
        lease_duration: Duration::from_secs(3),
        scan_interval: Duration::from_millis(300),
        reconcile_interval: Duration::from_secs(60),
        orphan_grace: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(5),
        platform_retry: fast_retry(),
        kube_retry: fast_retry(),
        kube_retry_fast: RetryPolicy::fast(2),
        watch_backoff: Duration::from_millis(50),
        launch_workers: 4,
    }
}

/// Both simulators and what the tests share.
pub struct World {
    pub platform: PlatformSim,
    pub pool: SimPool,
    pub ws: String,
    pub cv: String,
    pub kube: KubeSim,
    pub dir: tempfile::TempDir,
}

/// The chart's task template, as `helm template` renders it.
pub fn template() -> Value {
    serde_yaml_ng::from_str(include_str!("../../fixtures/agent-task-template.yaml")).expect("yaml")
}

/// The chart's CRD.
pub fn crd() -> Value {
    serde_yaml_ng::from_str(include_str!(
        "../../../helm/agent-job/crds/agenttasktemplates.scalr.io.yaml"
    ))
    .expect("yaml")
}

impl World {
    /// Fresh simulators on port 0, the CRD and the template in place.
    pub fn new() -> World {
        World::with(SimConfig::default())
    }

    /// A world whose platform heartbeats every second and long-polls at most 5 s, so the real
    /// binary (which takes its timing from the platform) reacts fast.
    pub fn quick() -> World {
        World::with(SimConfig {
            heartbeat_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(5),
            ..SimConfig::default()
        })
    }

    /// Fresh simulators with this platform timing.
    pub fn with(config: SimConfig) -> World {
        let platform = PlatformSim::with_config(config);
        let pool = platform.create_pool("k8s");
        let ws = platform.create_workspace(&pool.id, "production", "network");
        let cv = platform.upload_configuration_version(&ws, tar_gz(&[("main.tf", b"# empty\n")]));
        platform.register_tool(
            "terraform",
            "1.15.5",
            "linux_amd64",
            "binary",
            b"#!/bin/sh\necho 'Terraform v1.15.5'\n".to_vec(),
        );
        let kube = KubeSim::start(KubeSimOptions {
            namespaces: vec![NS.into()],
            bookmark_interval: Duration::from_millis(200),
            ..KubeSimOptions::default()
        });
        kube.put(crd());
        let mut t = template();
        t["metadata"]["namespace"] = json!(NS);
        kube.put(t);
        World {
            platform,
            pool,
            ws,
            cv,
            kube,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Options for an in-process controller named `name`.
    pub fn options(&self, name: &str, concurrency: u32) -> ControllerOptions {
        let kube = KubeConfig::explicit(&Explicit {
            server: Some(self.kube.url()),
            token: Some(Secret::new(self.kube.admin_token())),
            ca: self
                .kube
                .ca_pem()
                .map(|p| CaSource::Pem(p.as_bytes().to_vec())),
            namespace: Some(NS.into()),
            ..Explicit::default()
        })
        .expect("kube config");
        ControllerOptions {
            name: name.into(),
            platform_url: self.platform.url(),
            pool_token: Secret::new(self.pool.token.clone()),
            platform_http: HttpOptions::default(),
            kube,
            kube_http: HttpOptions::default(),
            namespace: NS.into(),
            task_template: TEMPLATE.into(),
            concurrency,
            data_dir: self.dir.path().join(name),
            metrics_addr: None,
            timing: fast_timing(),
        }
    }

    /// Starts an in-process controller.
    pub fn start(&self, name: &str, concurrency: u32) -> Running {
        self.start_with(self.options(name, concurrency))
    }

    /// Starts an in-process controller with these options.
    pub fn start_with(&self, options: ControllerOptions) -> Running {
        let lifecycle = Lifecycle::new();
        let metrics = Arc::new(Metrics::default());
        let data_dir = options.data_dir.clone();
        let handle = {
            let (lifecycle, metrics) = (lifecycle.clone(), metrics.clone());
            std::thread::Builder::new()
                .name(format!("test-controller-{}", options.name))
                .spawn(move || {
                    controller::run(options, lifecycle, metrics).map_err(|e| e.to_string())
                })
                .expect("spawn the controller")
        };
        Running {
            lifecycle,
            metrics,
            handle: Some(handle),
            data_dir,
        }
    }

    /// Queues `n` runs; returns their ids.
    pub fn queue(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.platform.queue_run(&self.ws, RunSpec::new(&self.cv)))
            .collect()
    }

    /// The plan task of a run.
    pub fn task_of(&self, run: &str) -> String {
        self.platform
            .stage_task(run, Stage::Plan)
            .expect("a plan task")
    }

    /// Every Job in the namespace.
    pub fn jobs(&self) -> Vec<Value> {
        self.kube.list("jobs", NS)
    }

    /// The Jobs of a task (by the exact annotation).
    pub fn jobs_of(&self, task: &str) -> Vec<Value> {
        self.jobs()
            .into_iter()
            .filter(|j| j["metadata"]["annotations"]["scalr.io/task-id"] == task)
            .collect()
    }

    /// Waits for the Job of `task` and returns it.
    pub fn job_of(&self, task: &str) -> Value {
        let mut found = None;
        self.eventually(&format!("a Job for {task}"), |w| {
            found = w.jobs_of(task).into_iter().next();
            found.is_some()
        });
        found.expect("found")
    }

    /// Waits until `condition` holds on the cluster (re-checked on every change); panics with both
    /// simulators' state after [`WAIT`].
    pub fn eventually(&self, what: &str, mut condition: impl FnMut(&World) -> bool) {
        let ok = self.kube.wait_until(WAIT, |_| condition(self));
        assert!(
            ok,
            "never happened: {what}\n{}\n{}",
            self.kube.dump(),
            self.platform.dump()
        );
    }

    /// Waits until the platform shows what `check` wants.
    pub fn platform_eventually<T>(
        &self,
        what: &str,
        check: impl FnMut(&PlatformSim) -> Option<T>,
    ) -> T {
        self.platform.wait_until(WAIT, what, check)
    }

    /// The token in a Job's credentials Secret.
    pub fn secret_token(&self, job: &Value) -> Option<String> {
        let name = format!("{}-credentials", job["metadata"]["name"].as_str()?);
        let secret = self.kube.get("secrets", NS, &name)?;
        let b64 = secret["data"]["task-token"].as_str()?;
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).ok()?;
        String::from_utf8(bytes).ok()
    }

    /// A worker's platform client for the task of `job`, with the token from its Secret.
    pub fn worker(&self, task: &str, job: &Value) -> TaskClient {
        let token = self.secret_token(job).expect("a task token in the Secret");
        PlatformClient::new(&self.platform.url(), &HttpOptions::default())
            .expect("client")
            .with_retry(fast_retry())
            .task(task, Secret::new(token))
    }

    /// Kubelet: puts the Job's pod with `status` (owned by the Job, labelled as the Job controller
    /// would), named `<job>-pod`.
    pub fn pod(&self, job: &Value, status: Value) -> Value {
        let job_name = job["metadata"]["name"].as_str().expect("name");
        let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
        labels["job-name"] = json!(job_name);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{job_name}-pod"), "namespace": NS, "labels": labels,
                "annotations": job["spec"]["template"]["metadata"]["annotations"].clone(),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                    "uid": job["metadata"]["uid"].clone(), "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": job["spec"]["template"]["spec"].clone(),
            "status": status,
        });
        let mut pod = pod;
        if status_is_scheduled(&pod["status"]) {
            pod["spec"]["nodeName"] = json!("node-1");
        }
        self.kube.put(pod)
    }

    /// Kubelet: the Job's pod with the worker container in `state` (`started` as its startup probe).
    pub fn pod_with_worker(&self, job: &Value, state: Value, started: bool) -> Value {
        self.pod(
            job,
            json!({"phase": if state.get("terminated").is_some() { "Failed" } else { "Running" },
                   "conditions": [{"type": "PodScheduled", "status": "True"}],
                   "containerStatuses": [container("worker", state, started)]}),
        )
    }

    /// Job controller: sets a condition (`Complete`, `Failed`) on a Job.
    pub fn job_condition(&self, job: &Value, type_: &str, reason: &str, message: &str) {
        let name = job["metadata"]["name"].as_str().expect("name");
        let mut conditions = vec![json!({"type": type_, "status": "True", "reason": reason,
                                         "message": message})];
        if type_ == "Failed" {
            conditions.insert(
                0,
                json!({"type": "FailureTarget", "status": "True", "reason": reason, "message": message}),
            );
        }
        self.kube.set_status(
            "jobs",
            NS,
            name,
            json!({"conditions": conditions, "startTime": "2026-01-01T00:00:00Z"}),
        );
    }

    /// An Event about an object, as the kubelet or the Job controller would record it.
    pub fn event(&self, kind: &str, name: &str, type_: &str, reason: &str, message: &str) {
        self.kube.put(json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{reason}").to_lowercase(), "namespace": NS},
            "involvedObject": {"kind": kind, "name": name, "namespace": NS},
            "type": type_, "reason": reason, "message": message,
            "lastTimestamp": jiff::Timestamp::now().to_string(), "count": 1,
        }));
    }

    /// The Events recorded by the controller about `job`, as `(reason, message)`.
    pub fn controller_events(&self, job: &str) -> Vec<(String, String)> {
        self.kube
            .list("events", NS)
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == job)
            .filter(|e| e["reportingComponent"] == "scalr-agent-controller")
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Starts the binary as `controller` with `name`; stderr goes to a file (see [`Process::log`]).
    pub fn spawn_binary(&self, name: &str, concurrency: u32, extra: &[(&str, &str)]) -> Process {
        let kubeconfig = self.dir.path().join("kubeconfig");
        if !kubeconfig.exists() {
            self.kube.write_kubeconfig(
                self.dir.path(),
                &Credential::Token(self.kube.admin_token().to_string()),
                NS,
            );
        }
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", std::process::id() ^ rand_suffix()));
        let file = std::fs::File::create(&log).expect("log file");
        let data = self.dir.path().join(name);
        let mut cmd = Command::new(BIN);
        cmd.arg("controller")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBECONFIG", &kubeconfig)
            .env("SCALR_URL", self.platform.url())
            .env("SCALR_AGENT_TOKEN", &self.pool.token)
            .env("SCALR_AGENT_NAME", name)
            .env("SCALR_AGENT_KUBERNETES_NAMESPACE", NS)
            .env("SCALR_AGENT_KUBERNETES_TASK_TEMPLATE", TEMPLATE)
            .env("SCALR_AGENT_CONCURRENCY", concurrency.to_string())
            .env("SCALR_AGENT_DATA_DIR", &data)
            .env("SCALR_AGENT_DEBUG", "true");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the controller binary");
        Process::new(child, log, data)
    }

    /// Writes the kubeconfig for `credential` into its own directory and returns its path.
    pub fn kubeconfig(&self, dir: &str, credential: &Credential) -> PathBuf {
        let dir = self.dir.path().join(dir);
        std::fs::create_dir_all(&dir).expect("kubeconfig dir");
        self.kube.write_kubeconfig(&dir, credential, NS)
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn status_is_scheduled(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True")
    })
}

/// A container status.
pub fn container(name: &str, state: Value, started: bool) -> Value {
    json!({"name": name, "image": format!("example/{name}:1"), "imageID": "", "ready": started,
           "restartCount": 0, "started": started, "state": state})
}

/// `running` state.
pub fn running() -> Value {
    json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
}

/// `waiting` state.
pub fn waiting(reason: &str, message: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": message}})
}

/// `terminated` state.
pub fn terminated(code: i32, reason: &str) -> Value {
    json!({"terminated": {"exitCode": code, "reason": reason,
                          "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:01:00Z"}})
}

/// An in-process controller.
pub struct Running {
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub data_dir: PathBuf,
    handle: Option<JoinHandle<Result<ControllerExit, String>>>,
}

impl Running {
    /// Asks it to stop (as SIGTERM would) and waits for its end.
    pub fn stop(mut self) -> ControllerExit {
        self.lifecycle.intake.trigger(Reason::Requested);
        self.join()
    }

    /// Waits for it to end on its own.
    pub fn join(&mut self) -> ControllerExit {
        let handle = self.handle.take().expect("joined once");
        handle
            .join()
            .expect("the controller thread panicked")
            .expect("the controller started")
    }

    /// Whether the ready marker exists.
    pub fn ready(&self) -> bool {
        self.data_dir.join("markers/controller/ready").exists()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.lifecycle.intake.trigger(Reason::Requested);
            let _ = handle.join();
        }
    }
}

/// The controller binary, running. A waiter thread owns the child and reports its exit.
pub struct Process {
    pub pid: i32,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    exit: crossbeam_channel::Receiver<Option<i32>>,
    code: Option<Option<i32>>,
}

impl Process {
    fn new(mut child: Child, log: PathBuf, data_dir: PathBuf) -> Process {
        let pid = child.id() as i32;
        let (tx, exit) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let code = child.wait().ok().and_then(|s| s.code());
                let _ = tx.send(code);
            })
            .expect("spawn the waiter");
        Process {
            pid,
            log,
            data_dir,
            exit,
            code: None,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        if self.code.is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid with a valid signal number touches no memory.
        let rc = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.wait_exit(WAIT);
    }

    /// Waits for the process to exit (at most `limit`) and returns its exit code (`None`: killed by
    /// a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        if let Some(code) = self.code {
            return code;
        }
        match self.exit.recv_timeout(limit) {
            Ok(code) => {
                self.code = Some(code);
                code
            }
            Err(_) => panic!(
                "the controller did not exit within {limit:?}\n{}",
                self.log()
            ),
        }
    }

    /// Whether the ready marker exists.
    pub fn ready(&self) -> bool {
        self.data_dir.join("markers/controller/ready").exists()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.code.is_none() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.exit.recv_timeout(WAIT);
        }
    }
}
