//! The whole system on one machine: the platform simulator, the Kubernetes API simulator (TLS, RBAC,
//! garbage collection, graceful pod deletion), the chart rendered by real helm and stored in the
//! simulator, the pod executor running task pods as local processes (the agent image is the built
//! binary, the runner image carries real terraform), and the controller started as the real binary
//! from the chart's Deployment: its command and environment, with the Deployment's `fieldRef`s and
//! `secretKeyRef`s resolved and the ServiceAccount's token handed over as a kubeconfig (the pod
//! executor cannot project the in-cluster token path; see docs/kube-simulator.md).
//!
//! Used by the end-to-end tests (`tests/it/e2e`) and the quick start (`examples/quickstart.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use super::kube_sim::{Credential, KubeSim, KubeSimOptions, Propagation};
use super::platform_sim::{PlatformSim, RunSpec, RunStatus, RunView, SimConfig, SimPool, tar_gz};
use super::pod_executor::{ExecutorOptions, Image, PodExecutor};
use super::tools;

/// The release and namespace, as in the chart README's commands.
pub const RELEASE: &str = "scalr-agent";
pub const NAMESPACE: &str = "scalr-agent";

/// A configuration with one resource whose provisioner prints a line: plan shows a change, apply
/// runs `local-exec`, a second plan shows none.
pub const SAMPLE_TF: &str = r#"
resource "terraform_data" "hello" {
  input = "hello from scalr-agent"
  provisioner "local-exec" {
    command = "echo provisioned: $GREETING"
    environment = { GREETING = "hello" }
  }
}

output "greeting" {
  value = terraform_data.hello.output
}
"#;

/// How to build the world.
#[derive(Clone, Debug)]
pub struct E2eOptions {
    /// `agent.concurrency`.
    pub concurrency: u32,
    /// More `--set` values for helm.
    pub values: Vec<String>,
    /// The platform simulator's timing.
    pub platform: SimConfig,
    /// The binary every agent container runs.
    pub binary: PathBuf,
}

impl E2eOptions {
    /// Defaults for `binary` (pass `env!("CARGO_BIN_EXE_scalr-agent")`).
    pub fn new(binary: impl Into<PathBuf>) -> E2eOptions {
        E2eOptions {
            concurrency: 4,
            values: Vec::new(),
            platform: SimConfig::default(),
            binary: binary.into(),
        }
    }
}

/// A running controller process.
pub struct ControllerProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl ControllerProcess {
    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The world.
pub struct E2e {
    pub platform: PlatformSim,
    pub kube: KubeSim,
    pub executor: PodExecutor,
    pub pool: SimPool,
    pub workspace: String,
    pub options: E2eOptions,
    /// Every object the chart rendered.
    pub objects: Vec<Value>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    controllers: Mutex<usize>,
    workspaces: Mutex<usize>,
}

impl E2e {
    /// Starts every part; the controller is started separately ([`E2e::start_controller`]).
    pub fn start(options: E2eOptions) -> E2e {
        let dir = tempfile::tempdir().expect("world dir");
        let platform = PlatformSim::with_config(options.platform.clone());
        let pool = platform.create_pool("kubernetes");
        let workspace = platform.create_workspace(&pool.id, "production", "e2e");
        let terraform = std::fs::read(tools::tool("terraform")).expect("the terraform shim");
        platform.register_tool("terraform", "1.15.5", "linux_amd64", "binary", terraform);

        let kube = KubeSim::start(KubeSimOptions {
            tls: true,
            rbac: false,
            gc: true,
            graceful_pod_deletion: true,
            namespaces: vec![NAMESPACE.into()],
            ..KubeSimOptions::default()
        });

        let objects = render_chart(&platform.url(), &pool.token, &options);
        for object in objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
        {
            kube.put(object.clone());
        }
        for object in objects
            .iter()
            .filter(|o| o["kind"] != "CustomResourceDefinition")
        {
            let mut object = object.clone();
            if object["metadata"]["namespace"].is_null() {
                object["metadata"]["namespace"] = Value::from(NAMESPACE);
            }
            kube.put(object);
        }
        let service_account = objects
            .iter()
            .find(|o| o["kind"] == "ServiceAccount")
            .and_then(|o| o["metadata"]["name"].as_str())
            .expect("the chart's ServiceAccount")
            .to_string();
        let token = kube.add_service_account_token(NAMESPACE, &service_account);
        kube.enable_rbac();
        let kubeconfig = kube.write_kubeconfig(dir.path(), &Credential::Token(token), NAMESPACE);

        let images = images_of(&objects);
        let mut executor_options = ExecutorOptions {
            namespace: Some(NAMESPACE.into()),
            work_dir: Some(dir.path().join("node")),
            cgroup_env: Some("SCALR_AGENT_CGROUP_ROOT".into()),
            ..ExecutorOptions::default()
        };
        executor_options = executor_options
            .image(&images.agent, Image::scalr_agent(&options.binary))
            .image(
                &images.runner,
                Image::runner(tools::tool("terraform").parent().expect("bin dir")),
            );
        let executor = PodExecutor::start(&kube, executor_options);

        E2e {
            platform,
            kube,
            executor,
            pool,
            workspace,
            options,
            objects,
            dir,
            kubeconfig,
            controllers: Mutex::new(0),
            workspaces: Mutex::new(0),
        }
    }

    /// The controller container of the chart's Deployment.
    fn controller_container(&self) -> &Value {
        let deployment = self
            .objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("the chart's Deployment");
        deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "controller").or(c.first()))
            .expect("the controller container")
    }

    /// Starts a controller as the Deployment would run it, in a pod called `pod_name`.
    pub fn start_controller(&self, pod_name: &str) -> ControllerProcess {
        let container = self.controller_container();
        let command: Vec<String> = container["command"]
            .as_array()
            .expect("command")
            .iter()
            .chain(container["args"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        assert_eq!(
            command[0], "/usr/local/bin/scalr-agent",
            "the image's binary"
        );
        let data = self.dir.path().join(format!("controller-{pod_name}"));
        std::fs::create_dir_all(&data).expect("controller data dir");
        let mut cmd = Command::new(&self.options.binary);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBECONFIG", &self.kubeconfig);
        for (name, value) in resolve_env(container, pod_name, &self.objects) {
            let value = if name == "SCALR_AGENT_DATA_DIR" {
                data.display().to_string()
            } else {
                value
            };
            cmd.env(name, value);
        }
        let mut n = self.controllers.lock().expect("controllers");
        *n += 1;
        let log = self
            .dir
            .path()
            .join(format!("controller-{pod_name}-{n}.log"));
        let file = std::fs::File::create(&log).expect("controller log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the controller");
        ControllerProcess {
            name: pod_name.into(),
            child,
            log,
        }
    }

    /// Queues a plan-and-apply run of `files` in a workspace of its own (the platform runs one run
    /// of a workspace at a time; the simulator leaves that to its users, like the state lock does).
    pub fn queue_run(&self, files: &[(&str, &str)]) -> String {
        let n = {
            let mut n = self.workspaces.lock().expect("workspaces");
            *n += 1;
            *n
        };
        let workspace =
            self.platform
                .create_workspace(&self.pool.id, "production", &format!("e2e-{n}"));
        self.queue_run_in(&workspace, files, |_| {})
    }

    /// Queues a run of `files` in `workspace`, with changes to the run.
    pub fn queue_run_in(
        &self,
        workspace: &str,
        files: &[(&str, &str)],
        edit: impl FnOnce(&mut RunSpec),
    ) -> String {
        let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
        let cv = self
            .platform
            .upload_configuration_version(workspace, tar_gz(&files));
        let mut spec = RunSpec::new(&cv);
        edit(&mut spec);
        self.platform.queue_run(workspace, spec)
    }

    /// Waits until `run` is terminal (applied, planned and finished, errored, canceled).
    pub fn wait_terminal(&self, run: &str, timeout: Duration) -> RunView {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.platform.run(run);
            if is_terminal(view.status) {
                return view;
            }
            if Instant::now() >= deadline {
                panic!(
                    "run {run} is still {:?} after {timeout:?}\n{}",
                    view.status,
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The run's logs, every task in order.
    pub fn run_log(&self, run: &str) -> String {
        let view = self.platform.run(run);
        view.tasks
            .iter()
            .map(|t| String::from_utf8_lossy(&self.platform.log(t)).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Task Jobs and credentials Secrets still in the namespace.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (resource, kind) in [("jobs", "Job"), ("secrets", "Secret")] {
            for object in self.kube.list(resource, NAMESPACE) {
                let labels = &object["metadata"]["labels"];
                if labels["scalr.io/task-id"].is_string() {
                    left.push(format!(
                        "{kind}/{}",
                        object["metadata"]["name"].as_str().unwrap_or("?")
                    ));
                }
            }
        }
        left
    }

    /// Waits until no task Job or Secret is left.
    pub fn wait_clean(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.leftovers().is_empty() {
            if Instant::now() >= deadline {
                panic!(
                    "left behind: {:?}\n{}",
                    self.leftovers(),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many times each Job name was created (201) through the API.
    pub fn job_creations(&self) -> BTreeMap<String, usize> {
        let mut created = BTreeMap::new();
        let path = format!("/apis/batch/v1/namespaces/{NAMESPACE}/jobs");
        for request in self.kube.requests() {
            if request.method == "POST" && request.path == path && request.status == 201 {
                let body: Value = serde_json::from_str(&request.body).unwrap_or(Value::Null);
                let name = body["metadata"]["name"].as_str().unwrap_or("?").to_string();
                *created.entry(name).or_insert(0) += 1;
            }
        }
        created
    }

    /// Deletes a Job as `kubectl delete job` would (background propagation).
    pub fn delete_job(&self, name: &str) -> bool {
        self.kube
            .delete("jobs", NAMESPACE, name, Propagation::Background)
    }

    /// What helps when a test fails: runs, Jobs, pods, executor errors, controller logs.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("platform:\n{}\n", self.platform.dump()));
        for resource in ["jobs", "pods"] {
            for o in self.kube.list(resource, NAMESPACE) {
                out.push_str(&format!(
                    "{resource}/{}: {}\n",
                    o["metadata"]["name"].as_str().unwrap_or("?"),
                    o["status"]
                ));
            }
        }
        out.push_str(&format!("executor errors: {:?}\n", self.executor.errors()));
        for p in self.executor.processes() {
            out.push_str(&format!(
                "--- {}/{} exit {:?}\n{}\n",
                p.pod,
                p.container,
                p.exit_code,
                tail(&std::fs::read_to_string(&p.log).unwrap_or_default(), 40)
            ));
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    out.push_str(&format!(
                        "--- {}\n{}\n",
                        path.display(),
                        tail(&std::fs::read_to_string(&path).unwrap_or_default(), 60)
                    ));
                }
            }
        }
        out
    }

    /// The world's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a run status is final.
pub fn is_terminal(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Applied
            | RunStatus::PlannedAndFinished
            | RunStatus::Errored
            | RunStatus::Canceled
    )
}

struct ChartImages {
    agent: String,
    runner: String,
}

/// The agent and runner image references the chart rendered into the task template.
fn images_of(objects: &[Value]) -> ChartImages {
    let template = objects
        .iter()
        .find(|o| o["kind"] == "AgentTaskTemplate")
        .expect("the AgentTaskTemplate");
    let pod = &template["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let image = |name: &str| {
        pod["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .and_then(|c| c["image"].as_str())
            .unwrap_or_else(|| panic!("container {name} in the task template"))
            .to_string()
    };
    ChartImages {
        agent: image("worker"),
        runner: image("runner"),
    }
}

/// `helm template` of the real chart, pointed at the simulators.
fn render_chart(url: &str, token: &str, options: &E2eOptions) -> Vec<Value> {
    let chart = tools::repo_root().join("helm/agent-job");
    let mut cmd = tools::helm();
    cmd.args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE, "--include-crds"])
        .args(["--set", &format!("agent.url={url}")])
        .args(["--set", &format!("agent.token={token}")])
        .args([
            "--set",
            &format!("agent.concurrency={}", options.concurrency),
        ])
        .args([
            "--set",
            "agent.debug=true",
            "--set",
            "agent.logFormat=plain",
        ])
        .args(["--set", "task.ttlSecondsAfterFinished=1"]);
    for value in &options.values {
        cmd.args(["--set", value]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use serde::Deserialize;
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// A container's environment as the kubelet would give it.
fn resolve_env(container: &Value, pod_name: &str, objects: &[Value]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("env name").to_string();
        if let Some(value) = var["value"].as_str() {
            env.push((name, value.to_string()));
            continue;
        }
        let from = &var["valueFrom"];
        let value = if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => Some(pod_name.to_string()),
                "metadata.namespace" => Some(NAMESPACE.to_string()),
                other => panic!("fieldRef {other} is not resolved by the e2e world"),
            }
        } else if from["secretKeyRef"].is_object() {
            let name_ref = from["secretKeyRef"]["name"].as_str().expect("secret name");
            let key = from["secretKeyRef"]["key"].as_str().expect("secret key");
            objects
                .iter()
                .find(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name_ref)
                .and_then(|s| {
                    s["stringData"][key]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| {
                            s["data"][key].as_str().and_then(|b| {
                                base64::engine::general_purpose::STANDARD
                                    .decode(b)
                                    .ok()
                                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                            })
                        })
                })
        } else {
            None
        };
        if let Some(value) = value {
            env.push((name, value));
        }
    }
    env
}
