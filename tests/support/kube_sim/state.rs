//! The simulator's shared state: the store, the served types, identities, RBAC switch, faults, the
//! request log and the watch epochs, behind one mutex with one condition variable that every change
//! signals (watch streams, the garbage collector and `KubeSim::wait_until` wait on it).

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::faults::Faults;
use super::rbac::UserInfo;
use super::resources::{Registry, from_crd};
use super::store::{ObjKey, Store};

/// The CRD resource key.
pub const CRD_GR: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct KubeSimOptions {
    /// HTTPS with a CA made for this simulator (default), or plain HTTP.
    pub tls: bool,
    /// Enforce RBAC from the start (see also `KubeSim::enable_rbac`).
    pub rbac: bool,
    /// Run the garbage collector, namespace and CRD cleanup (default on).
    pub gc: bool,
    /// Namespaces created at start, besides default, kube-system, kube-public and kube-node-lease.
    pub namespaces: Vec<String>,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (real servers: ~1 min).
    pub bookmark_interval: Duration,
    /// How long a watch without `timeoutSeconds` lasts (real servers: 30–60 min).
    pub default_watch_timeout: Duration,
    /// Keep at most this many events; older resourceVersions then answer 410 (etcd compaction).
    pub history_limit: Option<usize>,
    /// Requests without credentials run as `system:anonymous` instead of getting 401.
    pub anonymous: bool,
    /// Pods with `spec.nodeName` are deleted gracefully (deletionTimestamp, then a kubelet — the
    /// pod executor — deletes them with `gracePeriodSeconds=0`). Off: pods go at once.
    pub graceful_pod_deletion: bool,
    /// What `/version` reports.
    pub server_version: String,
}

impl Default for KubeSimOptions {
    fn default() -> Self {
        KubeSimOptions {
            tls: true,
            rbac: false,
            gc: true,
            namespaces: Vec::new(),
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            history_limit: None,
            anonymous: false,
            graceful_pod_deletion: false,
            server_version: "v1.33.0".into(),
        }
    }
}

/// One served request, for assertions.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The authenticated user, when authentication succeeded.
    pub user: Option<String>,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    pub user_agent: Option<String>,
    /// The status sent; 200 for watches (at their start); 0 when the connection was dropped.
    pub status: u16,
    /// The request body (never printed by `summary`: it may hold Secret data).
    pub body: String,
}

impl RequestRecord {
    /// `GET /api/v1/pods?watch=true -> 200 (user)`, without the body.
    pub fn summary(&self) -> String {
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        format!(
            "{} {}{q} -> {} ({})",
            self.method,
            self.path,
            self.status,
            self.user.as_deref().unwrap_or("-")
        )
    }

    /// The value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| super::super::http_server::percent_decode(v))
    }
}

/// Everything behind the lock.
pub struct State {
    pub store: Store,
    pub registry: Registry,
    pub tokens: HashMap<String, UserInfo>,
    pub rbac: bool,
    pub faults: Faults,
    pub log: Vec<RequestRecord>,
    /// Bumped by `drop_watches`: streams see it and cut their connection.
    pub drop_epoch: u64,
    /// Bumped by `expire_watches`: streams send a 410 ERROR event and end.
    pub expire_epoch: u64,
    pub active_watches: usize,
    /// Bumped on every change (writes and log entries), for waiters.
    pub ticks: u64,
    pub stopped: bool,
}

impl State {
    /// Empty state with the built-in types.
    pub fn new(options: &KubeSimOptions) -> State {
        let mut store = Store::default();
        store.history_limit = options.history_limit;
        State {
            store,
            registry: Registry::new(),
            tokens: HashMap::new(),
            rbac: options.rbac,
            faults: Faults::default(),
            log: Vec::new(),
            drop_epoch: 0,
            expire_epoch: 0,
            active_watches: 0,
            ticks: 0,
            stopped: false,
        }
    }

    fn after_write(&mut self, key: &ObjKey) {
        self.ticks += 1;
        if key.0 == CRD_GR {
            self.refresh_crds();
        }
    }

    /// Re-derives the custom types from the stored CRDs (a CRD being deleted still serves until gone).
    pub fn refresh_crds(&mut self) {
        self.registry.custom = self
            .store
            .list(CRD_GR, None)
            .filter_map(|(_, crd)| from_crd(crd))
            .collect();
    }

    /// Stores a new object.
    pub fn write_create(&mut self, key: ObjKey, obj: Value) -> Value {
        let out = self.store.create(key.clone(), obj);
        self.after_write(&key);
        out
    }

    /// Replaces an object.
    pub fn write_update(&mut self, key: ObjKey, obj: Value) -> Value {
        let out = self.store.update(key.clone(), obj);
        self.after_write(&key);
        out
    }

    /// Removes an object.
    pub fn write_remove(&mut self, key: &ObjKey) -> Option<Value> {
        let out = self.store.remove(key);
        if out.is_some() {
            self.after_write(key);
        }
        out
    }

    /// Appends to the request log.
    pub fn log_request(&mut self, record: RequestRecord) {
        self.log.push(record);
        self.ticks += 1;
    }
}

/// The lock, the signal and the options.
pub struct Shared {
    pub state: Mutex<State>,
    pub changed: Condvar,
    pub options: KubeSimOptions,
}

impl Shared {
    /// Locks the state (a panicked holder does not poison it for the other tests' threads).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits for a change or `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        }
    }
}
