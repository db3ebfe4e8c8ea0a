//! Starting one container, as the kubelet and the runtime do it, on the pod's thread: pull the
//! image (registry lookup, `imagePullPolicy`, scripted failures: `ErrImagePull` then
//! `ImagePullBackOff` with a doubling back-off, `InvalidImageName`, `ErrImageNeverPull`), build the
//! environment (`CreateContainerConfigError` when a source is missing, retried), resolve the
//! command through the container's view (`StartError` when it is not there), then spawn the process
//! with its log file, its fake cgroup directory and its probe thread. Events as the kubelet records
//! them: Pulling, Pulled, Failed, BackOff, Created, Started.

use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Container;

use super::super::kube_sim::objects::new_uid;
use super::env::{self, PodPlace};
use super::image::{Image, PullFailure, image_id, normalize};
use super::kubelet::{ApiLookup, End, PodWorker, Proc, Retry};
use super::node::{MemoryWatch, PodMsg, ProcessInfo};
use super::probes::{self, ProbeContext};
use super::process::{ContainerProcess, Spec};
use super::status::State;
use super::view::View;
use super::volumes;

/// Largest image pull back-off, as the kubelet's.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

enum PullFail {
    /// Retried after the back-off (`ErrImagePull`).
    Retry(String),
    /// Never retried.
    Never {
        reason: &'static str,
        message: String,
    },
}

impl PodWorker {
    fn container_spec(&self, name: &str) -> Option<Container> {
        self.spec
            .init_containers
            .iter()
            .flatten()
            .chain(self.spec.containers.iter())
            .find(|c| c.name == name)
            .cloned()
    }

    fn set_state(&mut self, name: &str, state: State) {
        if let Some(c) = self.model.container_mut(name) {
            c.state = state;
        }
    }

    /// Starts what is due: retries whose time came, the `ImagePullBackOff` display, liveness kills.
    pub fn due(&mut self) -> Result<(), End> {
        let now = Instant::now();
        for p in self.procs.values_mut() {
            if p.kill_at.is_some_and(|at| at <= now) {
                p.kill_at = None;
                p.process.kill_all();
            }
        }
        let names: Vec<String> = self.retries.keys().cloned().collect();
        for name in names {
            let Some(retry) = self.retries.get(&name).cloned() else {
                continue;
            };
            if retry.show_backoff_at.is_some_and(|at| at <= now) {
                let reference = self
                    .container_spec(&name)
                    .and_then(|c| c.image)
                    .unwrap_or_default();
                let message = match self.model.container(&name).map(|c| &c.state) {
                    Some(State::Waiting {
                        message: Some(m), ..
                    }) => m.clone(),
                    _ => String::new(),
                };
                self.set_state(
                    &name,
                    State::waiting(
                        "ImagePullBackOff",
                        Some(format!(
                            "Back-off pulling image {reference:?}: ErrImagePull: {message}"
                        )),
                    ),
                );
                self.event(
                    Some(&name),
                    false,
                    "BackOff",
                    &format!("Back-off pulling image {reference:?}"),
                );
                self.event(Some(&name), true, "Failed", "Error: ImagePullBackOff");
                if let Some(r) = self.retries.get_mut(&name) {
                    r.show_backoff_at = None;
                }
                self.report()?;
            }
            if retry.at <= now
                && let Some(c) = self.container_spec(&name)
            {
                self.attempt(&c)?;
            }
        }
        Ok(())
    }

    fn pull(&mut self, c: &Container) -> Result<Image, PullFail> {
        let reference = c.image.clone().unwrap_or_default();
        let name = c.name.as_str();
        let fault = self
            .node
            .shared
            .lock()
            .pull_faults
            .iter()
            .find(|f| f.matches(&reference))
            .map(|f| f.failure);
        let normal = match normalize(&reference) {
            Some(n) if fault != Some(PullFailure::InvalidImageName) => n,
            _ => {
                let message = format!(
                    "Failed to apply default image tag {reference:?}: couldn't parse image name \
                     {reference:?}: invalid reference format"
                );
                self.event(Some(name), true, "InspectFailed", &message);
                self.event(Some(name), true, "Failed", "Error: InvalidImageName");
                return Err(PullFail::Never {
                    reason: "InvalidImageName",
                    message,
                });
            }
        };
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| "IfNotPresent".into());
        let image = self.node.images.get(&reference).cloned();
        let present = image.is_some() && self.node.shared.lock().pulled.contains(&normal);
        if present && policy != "Always" && fault.is_none() {
            self.event(
                Some(name),
                false,
                "Pulled",
                &format!("Container image {reference:?} already present on machine"),
            );
            return Ok(image.expect("present implies known"));
        }
        if policy == "Never" {
            let message =
                format!("Container image {reference:?} is not present with pull policy of Never");
            self.event(Some(name), true, "ErrImageNeverPull", &message);
            self.event(Some(name), true, "Failed", "Error: ErrImageNeverPull");
            return Err(PullFail::Never {
                reason: "ErrImageNeverPull",
                message,
            });
        }
        self.event(
            Some(name),
            false,
            "Pulling",
            &format!("Pulling image {reference:?}"),
        );
        let message = match (fault, image) {
            (None, Some(image)) => {
                self.node
                    .shared
                    .update(|st| st.pulled.insert(normal.clone()));
                self.event(
                    Some(name),
                    false,
                    "Pulled",
                    &format!(
                        "Successfully pulled image {reference:?} in 1ms (1ms including waiting). \
                         Image size: {} bytes.",
                        image.paths.len() * 1024
                    ),
                );
                return Ok(image);
            }
            (Some(_), _) => format!(
                "rpc error: code = Unknown desc = failed to pull and unpack image {normal:?}: \
                 failed to resolve reference {normal:?}: pull access denied, repository does not \
                 exist or may require authorization: server message: insufficient_scope: \
                 authorization failed"
            ),
            (None, None) => format!(
                "rpc error: code = NotFound desc = failed to pull and unpack image {normal:?}: \
                 failed to resolve reference {normal:?}: {normal}: not found"
            ),
        };
        self.event(
            Some(name),
            true,
            "Failed",
            &format!("Failed to pull image {reference:?}: {message}"),
        );
        self.event(Some(name), true, "Failed", "Error: ErrImagePull");
        Err(PullFail::Retry(message))
    }

    fn config_error(&mut self, name: &str, message: String) -> Result<(), End> {
        self.event(Some(name), true, "Failed", &format!("Error: {message}"));
        self.set_state(
            name,
            State::waiting("CreateContainerConfigError", Some(message)),
        );
        let backoff = self.node.tunables.image_pull_backoff;
        self.retries.insert(
            name.to_string(),
            Retry {
                at: Instant::now() + backoff,
                show_backoff_at: None,
                backoff,
            },
        );
        self.report()
    }

    fn start_error(&mut self, name: &str, message: String) -> Result<(), End> {
        self.event(Some(name), true, "Failed", &format!("Error: {message}"));
        let now = super::jobs::stamp(SystemTime::now());
        self.set_state(
            name,
            State::Terminated {
                exit_code: 128,
                reason: "StartError".into(),
                message: Some(message),
                started_at: Some("1970-01-01T00:00:00Z".into()),
                finished_at: now,
            },
        );
        self.report()
    }

    /// Tries to start container `c`: running, waiting with a retry, or terminated (`StartError`).
    pub fn attempt(&mut self, c: &Container) -> Result<(), End> {
        let name = c.name.clone();
        self.retries.remove(&name);
        let image = match self.pull(c) {
            Ok(image) => image,
            Err(PullFail::Never { reason, message }) => {
                self.set_state(&name, State::waiting(reason, Some(message)));
                return self.report();
            }
            Err(PullFail::Retry(message)) => {
                let backoff = *self
                    .backoffs
                    .entry(name.clone())
                    .or_insert(self.node.tunables.image_pull_backoff);
                self.backoffs
                    .insert(name.clone(), (backoff * 2).min(MAX_BACKOFF));
                let now = Instant::now();
                self.retries.insert(
                    name.clone(),
                    Retry {
                        at: now + backoff,
                        show_backoff_at: Some(now + (backoff / 2).min(Duration::from_secs(1))),
                        backoff,
                    },
                );
                self.set_state(&name, State::waiting("ErrImagePull", Some(message)));
                return self.report();
            }
        };
        self.backoffs.remove(&name);
        let place = PodPlace {
            node_name: self.node_name.clone(),
            pod_ip: self.model.ip.clone(),
            host_ip: self.model.ip.clone(),
            api_host: "127.0.0.1".into(),
            api_port: self.node.api_port,
        };
        let lookup = ApiLookup {
            client: &self.node.client,
            namespace: &self.ns,
        };
        let env = match env::resolve(&self.pod, c, &image.env, &place, &lookup) {
            Ok(env) => env,
            Err(e) => return self.config_error(&name, e.0),
        };
        let mounts = match volumes::mounts(c, &self.volumes) {
            Ok(m) => m,
            Err(e) => return self.config_error(&name, e),
        };
        let view = View::new(&image.paths, mounts);
        let argv = env::argv(c, &image.entrypoint, &image.cmd, &env);
        let own = self.dirs.container(&name);
        let (home, root, cgroup) = (own.join("home"), own.join("root"), own.join("cgroup"));
        for d in [&home, &root, &cgroup] {
            if let Err(e) = std::fs::create_dir_all(d) {
                return self.config_error(&name, format!("create {}: {e}", d.display()));
            }
        }
        let limit = env::resource_of(c, "limits", "memory").map(|b| b as u64);
        write_cgroup(&cgroup, limit, 0);
        let path_env = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let path_env = path_env.unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        let hostname = self
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| self.name.clone());
        let mut proc_env: Vec<(String, String)> = vec![
            ("PATH".into(), view.rewrite(&path_env)),
            ("HOSTNAME".into(), hostname),
        ];
        for (k, v) in &env {
            if k != "PATH" {
                proc_env.push((k.clone(), view.rewrite(v)));
            }
        }
        if !proc_env.iter().any(|(k, _)| k == "HOME") {
            proc_env.push(("HOME".into(), home.to_string_lossy().into_owned()));
        }
        if let Some(var) = &self.node.tunables.cgroup_env {
            proc_env.push((var.clone(), cgroup.to_string_lossy().into_owned()));
        }
        let cwd = c
            .working_dir
            .clone()
            .or(image.working_dir.clone())
            .and_then(|w| view.to_host(&w))
            .unwrap_or(root);
        let _ = std::fs::create_dir_all(&cwd);
        self.event(
            Some(&name),
            false,
            "Created",
            &format!("Created container: {name}"),
        );
        let Some(first) = argv.first().cloned() else {
            return self.start_error(&name, "no command specified".into());
        };
        let Some(program) = view.resolve_command(&first, Some(&path_env)) else {
            return self.start_error(
                &name,
                format!(
                    "failed to create containerd task: failed to create shim task: OCI runtime \
                     create failed: runc create failed: unable to start container process: error \
                     during container init: exec: {first:?}: executable file not found in $PATH: \
                     unknown"
                ),
            );
        };
        let args: Vec<String> = std::iter::once(first)
            .chain(argv.iter().skip(1).map(|a| view.rewrite(a)))
            .collect();
        let log = self
            .node
            .work
            .join("logs")
            .join(format!("{}_{}_{name}.log", self.ns, self.name));
        let _ = std::fs::create_dir_all(self.node.work.join("logs"));
        let spec = Spec {
            program: &program,
            argv: &args,
            env: &proc_env,
            cwd: &cwd,
            log: &log,
        };
        let tx = self.tx.clone();
        let waited = name.clone();
        let thread = format!("{}/{name}-wait", self.name);
        let process = match ContainerProcess::spawn(&spec, thread, move |code| {
            let _ = tx.send(PodMsg::Exited {
                container: waited,
                code,
            });
        }) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .start_error(&name, format!("failed to start {}: {e}", program.display()));
            }
        };
        self.event(
            Some(&name),
            false,
            "Started",
            &format!("Started container {name}"),
        );
        let started_at = super::jobs::stamp(SystemTime::now());
        let init = self.model.container(&name).is_some_and(|m| m.init);
        let sidecar = self.model.container(&name).is_some_and(|m| m.sidecar);
        let probed = probes::has_probes(c) && (!init || sidecar);
        if let Some(m) = self.model.container_mut(&name) {
            m.state = State::Running {
                started_at: started_at.clone(),
            };
            m.image_id = Some(image_id(&m.image));
            m.container_id = Some(format!(
                "containerd://{}{}",
                new_uid().replace('-', ""),
                new_uid().replace('-', "")
            ));
            m.started = !probed;
            m.ready = !probed && !init;
        }
        let probe_stop = probed.then(|| {
            let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
            let ctx = ProbeContext {
                container: name.clone(),
                view: view.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                output: own.join("probe.out"),
            };
            let container = c.clone();
            let pod_tx = self.tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}/{name}-probe", self.name))
                .spawn(move || probes::run(container, ctx, pod_tx, stop_rx));
            if let Err(e) = spawned {
                self.node
                    .shared
                    .error(format!("spawn the probe thread: {e}"));
            }
            stop_tx
        });
        let pid = process.pid;
        let info = ProcessInfo {
            namespace: self.ns.clone(),
            pod: self.name.clone(),
            container: name.clone(),
            pid,
            running: true,
            exit_code: None,
            log,
        };
        let watch = MemoryWatch {
            pid,
            container: name.clone(),
            limit,
            cgroup,
            pod: self.tx.clone(),
        };
        self.node.shared.update(|st| {
            st.processes.push(info);
            st.memory.push(watch);
        });
        self.procs.insert(
            name,
            Proc {
                process,
                oom: false,
                started_at,
                probe_stop,
                kill_at: None,
            },
        );
        self.report()
    }
}

/// Writes the cgroup v2 memory files exec-loop's monitor reads: limit (`max` without one), usage.
pub fn write_cgroup(dir: &std::path::Path, limit: Option<u64>, usage: u64) {
    let max = limit.map_or_else(|| "max".to_string(), |l| l.to_string());
    // Written aside and renamed: the monitor never reads half a file.
    let put = |name: &str, text: String| {
        let tmp = dir.join(format!(".{name}.tmp"));
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(name));
        }
    };
    put("memory.max", format!("{max}\n"));
    put("memory.current", format!("{usage}\n"));
    put(
        "memory.stat",
        format!("anon {usage}\nfile 0\ninactive_file 0\n"),
    );
}
