//! A Kubernetes API simulator for tests, examples and benchmarks: the subset of the API the agent
//! and its chart use, done the way the real apiserver does it, on 127.0.0.1 (port 0) over TLS with
//! a CA made for it, or plain HTTP. See `docs/kube-simulator.md` for what it models and what not.
//!
//! Threads: the test server's accept and per-connection threads run `server::handle`; watches
//! stream on their connection's thread; the garbage collector runs on `kube-sim-gc`. All share one
//! locked [`state::State`] and a condvar signalled on every change. Dropping the [`KubeSim`]
//! stops everything.
//!
//! ```ignore
//! let sim = KubeSim::start(KubeSimOptions::default());
//! let token = sim.add_service_account_token("ci", "agent");
//! sim.put(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}}));
//! let kubeconfig = sim.write_kubeconfig(dir.path(), &Credential::Token(sim.admin_token().into()), "default");
//! ```

#![allow(dead_code)]

pub mod defaults;
pub mod discovery;
pub mod faults;
pub mod gc;
pub mod handlers;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod proto;
pub mod rbac;
pub mod resources;
pub mod routes;
pub mod selectors;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod validate;
pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::http_server::TestServer;
use super::pki::{self, ClientAuth, Leaf, TestCa};

pub use faults::{Fault, FaultAction};
pub use rbac::UserInfo;
pub use resources::Propagation;
pub use state::{KubeSimOptions, RequestRecord};
pub use status::ApiError;

use gc::DeleteOptions;
use handlers::Scope;
use resources::ResourceType;
use state::{Shared, State};

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// How a kubeconfig authenticates.
#[derive(Clone)]
pub enum Credential {
    /// A bearer token registered with `add_token` (or the admin token).
    Token(String),
    /// A client certificate from `client_cert` (user = CN, groups = O).
    ClientCert(Leaf),
}

/// A running simulator. Stopped on drop.
pub struct KubeSim {
    shared: Arc<Shared>,
    ca: Option<TestCa>,
    admin_token: String,
    gc: Option<JoinHandle<()>>,
    // Dropped last: connections are cut after the state is marked stopped.
    server: TestServer,
}

impl KubeSim {
    /// Starts a simulator with `options`: the system namespaces (and `options.namespaces`) exist,
    /// an admin token (group `system:masters`) is registered, the collector runs unless disabled.
    pub fn start(options: KubeSimOptions) -> KubeSim {
        let mut state = State::new(&options);
        let admin_token = format!("admin-{}", objects::new_uid());
        state.tokens.insert(
            admin_token.clone(),
            UserInfo::new("kube-sim-admin", &[rbac::SUPERUSER_GROUP]),
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            options: options.clone(),
        });
        let handler_shared = shared.clone();
        let handler: super::http_server::Handler = Arc::new(move |req, out| {
            server::handle(&handler_shared, req, out);
        });
        let (server, ca) = if options.tls {
            let ca = TestCa::new("kube-sim-ca");
            let config = pki::server_config(&ca.server_cert(), ClientAuth::Optional(&ca));
            (TestServer::start_tls(handler, config), Some(ca))
        } else {
            (TestServer::start(handler), None)
        };
        let gc = options.gc.then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kube-sim-gc".into())
                .spawn(move || gc::run(shared))
                .expect("spawn the simulator's collector thread")
        });
        let sim = KubeSim {
            shared,
            ca,
            admin_token,
            gc,
            server,
        };
        let mut names: Vec<String> = SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect();
        names.extend(options.namespaces.iter().cloned());
        for ns in names {
            sim.put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        }
        sim
    }

    /// `https://127.0.0.1:PORT` (or `http://`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The CA certificate (PEM) that signed the server's certificate; `None` over plain HTTP.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|ca| ca.cert_pem.as_str())
    }

    /// A client certificate for user `cn` in `groups`, signed by the simulator's CA (TLS only).
    pub fn client_cert(&self, cn: &str, groups: &[&str]) -> Leaf {
        self.ca
            .as_ref()
            .expect("client certificates need a TLS simulator")
            .client_cert(cn, groups)
    }

    /// The token of `kube-sim-admin` (group `system:masters`: never denied).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Registers `token` for `user` in `groups` (plus `system:authenticated`).
    pub fn add_token(&self, token: &str, user: &str, groups: &[&str]) {
        self.shared
            .lock()
            .tokens
            .insert(token.to_string(), UserInfo::new(user, groups));
    }

    /// Registers and returns a token for service account `name` in `namespace`.
    pub fn add_service_account_token(&self, namespace: &str, name: &str) -> String {
        let token = format!("sa-{namespace}-{name}-{}", objects::new_uid());
        self.shared
            .lock()
            .tokens
            .insert(token.clone(), UserInfo::service_account(namespace, name));
        token
    }

    /// Forgets `token`: its next request gets 401 (a revoked or rotated credential).
    pub fn revoke_token(&self, token: &str) {
        self.shared.lock().tokens.remove(token);
    }

    /// Enforces RBAC from now on.
    pub fn enable_rbac(&self) {
        self.shared.lock().rbac = true;
    }

    /// Stops enforcing RBAC.
    pub fn disable_rbac(&self) {
        self.shared.lock().rbac = false;
    }

    fn resolve(&self, resource: &str) -> ResourceType {
        self.shared
            .lock()
            .registry
            .resolve(resource)
            .cloned()
            .unwrap_or_else(|| panic!("the simulator serves no resource {resource:?}"))
    }

    /// One object (`resource` as kubectl names it: `jobs`, `jobs.batch`, `agenttasktemplates`);
    /// `namespace` is ignored for cluster-scoped resources.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = self.resolve(resource);
        let st = self.shared.lock();
        handlers::get(&st, &rt, rt.version(), Some(namespace), name).ok()
    }

    /// The objects of `resource` in `namespace` ("" for all namespaces), in name order.
    pub fn list(&self, resource: &str, namespace: &str) -> Vec<Value> {
        let rt = self.resolve(resource);
        let ns = (!namespace.is_empty() && rt.namespaced).then_some(namespace);
        self.shared
            .lock()
            .store
            .list(&rt.gr(), ns)
            .map(|(_, o)| objects::served(&rt, rt.version(), o.clone()))
            .collect()
    }

    /// Creates or replaces `object` (by apiVersion, kind, namespace, name) as a controller would:
    /// status included, no resourceVersion needed. Validation and defaults apply; panics with the
    /// server's message when the object is rejected. Returns the stored object.
    pub fn put(&self, object: Value) -> Value {
        self.try_put(object)
            .unwrap_or_else(|e| panic!("the simulator rejected the object: {}", e.message()))
    }

    /// [`put`](Self::put) that returns the server's error instead of panicking.
    pub fn try_put(&self, mut object: Value) -> Result<Value, ApiError> {
        let api_version = object["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = object["kind"].as_str().unwrap_or("").to_string();
        let rt = self
            .shared
            .lock()
            .registry
            .by_kind(&api_version, &kind)
            .cloned()
            .unwrap_or_else(|| panic!("the simulator serves no {api_version} {kind}"));
        let version = api_version.rsplit('/').next().unwrap_or("v1").to_string();
        let ns = object["metadata"]["namespace"].as_str().map(String::from);
        let ns = if rt.namespaced {
            Some(ns.unwrap_or_else(|| "default".into()))
        } else {
            None
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let result = {
            let mut st = self.shared.lock();
            let key = handlers::key(&rt, ns.as_deref(), &name);
            match st
                .store
                .get(&key)
                .map(|o| o["metadata"]["resourceVersion"].clone())
            {
                Some(rv) if !name.is_empty() => {
                    object["metadata"]["resourceVersion"] = rv;
                    handlers::update(
                        &mut st,
                        &rt,
                        &version,
                        ns.as_deref(),
                        &name,
                        object,
                        Scope::All,
                        false,
                    )
                }
                _ => {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                    handlers::create(
                        &mut st,
                        &rt,
                        &version,
                        ns.as_deref(),
                        object,
                        Scope::All,
                        false,
                    )
                }
            }
        };
        self.shared.notify();
        result
    }

    /// Replaces the status of an object (what a controller or kubelet does through `/status`).
    pub fn set_status(&self, resource: &str, namespace: &str, name: &str, status: Value) -> Value {
        let rt = self.resolve(resource);
        let result = {
            let mut st = self.shared.lock();
            let mut obj = handlers::get(&st, &rt, rt.version(), Some(namespace), name)
                .unwrap_or_else(|e| panic!("set_status: {}", e.message()));
            obj["status"] = status;
            let scope = if rt.status { Scope::Status } else { Scope::All };
            handlers::update(
                &mut st,
                &rt,
                rt.version(),
                Some(namespace),
                name,
                obj,
                scope,
                false,
            )
        };
        self.shared.notify();
        result.unwrap_or_else(|e| panic!("set_status: {}", e.message()))
    }

    /// Deletes an object with `propagation`, as a DELETE would; false when it did not exist.
    pub fn delete(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        propagation: Propagation,
    ) -> bool {
        let rt = self.resolve(resource);
        let opts = DeleteOptions {
            propagation: Some(propagation),
            ..DeleteOptions::default()
        };
        let done = {
            let mut st = self.shared.lock();
            let key = handlers::key(&rt, Some(namespace), name);
            gc::delete_object(
                &mut st,
                &rt,
                &rt.versions[0].clone(),
                &key,
                &opts,
                self.shared.options.graceful_pod_deletion,
            )
            .is_ok()
        };
        self.shared.notify();
        done
    }

    /// The current (last written) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.rv()
    }

    /// Compacts the history: watches and lists from older resourceVersions answer 410 Gone.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
        self.shared.notify();
    }

    /// Cuts every open watch stream mid-body (no final chunk), as a restarted apiserver would.
    pub fn drop_watches(&self) {
        self.shared.lock().drop_epoch += 1;
        self.shared.notify();
    }

    /// Ends every open watch stream with an ERROR event (410 Expired), as a lagging watcher gets.
    pub fn expire_watches(&self) {
        self.shared.lock().expire_epoch += 1;
        self.shared.notify();
    }

    /// Cuts every connection, idle keep-alive ones included.
    pub fn drop_connections(&self) {
        self.server.drop_all_connections();
    }

    /// Watch streams open right now.
    pub fn active_watches(&self) -> usize {
        self.shared.lock().active_watches
    }

    /// Adds a scripted fault.
    pub fn fault(&self, fault: Fault) {
        self.shared.lock().faults.add(fault);
    }

    /// The next `times` calls of `method` (`"*"` for any) on `path` (trailing `*` for a prefix)
    /// fail with `status` (500, 429 with Retry-After, 409, 503, ...).
    pub fn fail_next(&self, method: &str, path: &str, times: usize, status: u16) {
        self.fault(Fault::new(method, path, times, FaultAction::Status(status)));
    }

    /// The next `times` calls are answered after `delay`.
    pub fn delay_next(&self, method: &str, path: &str, times: usize, delay: Duration) {
        self.fault(Fault::new(method, path, times, FaultAction::Delay(delay)));
    }

    /// The next `times` calls lose their connection without an answer.
    pub fn drop_next(&self, method: &str, path: &str, times: usize) {
        self.fault(Fault::new(method, path, times, FaultAction::Drop));
    }

    /// Scripted faults not yet used up.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.pending()
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Waits until `condition` holds, re-checking after every change (write, request, fault used,
    /// watch start or end) and at least every 20 ms, because conditions may also look outside the
    /// simulator (a process, the platform); false when `timeout` passes first.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&KubeSim) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let ticks = self.shared.lock().ticks;
            if condition(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let st = self.shared.lock();
            if st.ticks == ticks {
                let slice = (deadline - now).min(Duration::from_millis(20));
                drop(self.shared.wait(st, slice));
            }
        }
    }

    /// What the simulator holds and what it was asked, for a failing test to print (no bodies).
    pub fn dump(&self) -> String {
        let st = self.shared.lock();
        let mut out = format!(
            "resourceVersion {} (compacted at {})\nobjects:\n",
            st.store.rv(),
            st.store.compacted()
        );
        for (k, v) in st.store.iter() {
            out.push_str(&format!(
                "  {} {}/{} rv={}{}\n",
                k.0,
                k.1,
                k.2,
                v["metadata"]["resourceVersion"].as_str().unwrap_or("?"),
                if v["metadata"]["deletionTimestamp"].is_string() {
                    " (deleting)"
                } else {
                    ""
                }
            ));
        }
        out.push_str("requests:\n");
        for r in &st.log {
            out.push_str(&format!("  {}\n", r.summary()));
        }
        out
    }

    /// A kubeconfig (YAML) for this simulator with `credential`, default namespace `namespace`.
    pub fn kubeconfig(&self, credential: &Credential, namespace: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut cluster = json!({"server": self.url()});
        if let Some(ca) = self.ca_pem() {
            cluster["certificate-authority-data"] = json!(b64(ca));
        }
        let user = match credential {
            Credential::Token(t) => json!({"token": t}),
            Credential::ClientCert(leaf) => json!({
                "client-certificate-data": b64(&leaf.cert_pem),
                "client-key-data": b64(&leaf.key_pem),
            }),
        };
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kube-sim", "cluster": cluster}],
            "users": [{"name": "kube-sim-user", "user": user}],
            "contexts": [{"name": "kube-sim", "context":
                {"cluster": "kube-sim", "user": "kube-sim-user", "namespace": namespace}}],
            "current-context": "kube-sim",
            "preferences": {},
        });
        serde_yaml_ng::to_string(&config).expect("a JSON value always renders as YAML")
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) to `dir/kubeconfig` and returns the path.
    pub fn write_kubeconfig(
        &self,
        dir: &Path,
        credential: &Credential,
        namespace: &str,
    ) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig(credential, namespace))
            .expect("write the kubeconfig");
        path
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.notify();
        if let Some(gc) = self.gc.take() {
            let _ = gc.join();
        }
    }
}
