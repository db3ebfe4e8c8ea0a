//! In-memory fakes of the controller's two I/O boundaries, [`AgentApi`] and [`Cluster`], for the
//! stages' unit tests (which drive `handle` directly). They record every call and fail on demand.
//! Integration tests never use these: they run the real clients against the simulators.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Secret as K8sSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use serde_json::Value;

use super::agent_api::AgentApi;
use super::cluster::Cluster;
use crate::kube::{ApiFailure, KubeError};
use crate::platform::{
    AgentEvent, CallSite, HeldTask, PlatformError, Stage, TaskStatus, TaskSummary, TokenKind,
};
use crate::secret::Secret;

/// A Kubernetes error of `status` (409 with `AlreadyExists` for 409).
pub fn kube_error(status: u16) -> KubeError {
    let body = serde_json::json!({
        "kind": "Status", "code": status,
        "reason": match status { 409 => "AlreadyExists", 404 => "NotFound", 403 => "Forbidden",
                                 422 => "Invalid", 401 => "Unauthorized", _ => "InternalError" },
        "message": format!("fake error {status}"),
    });
    KubeError::from_response("POST", "/fake", status, None, body.to_string().as_bytes())
}

/// A platform error of `status` with a protocol `code`.
pub fn platform_error(status: u16, code: Option<&str>) -> PlatformError {
    let at = Box::new(CallSite {
        call: "fake call",
        method: "POST",
        path: "/fake".into(),
        token: TokenKind::Session,
    });
    match status {
        401 => PlatformError::Unauthorized {
            at,
            detail: "revoked".into(),
        },
        429 | 500..=599 => PlatformError::Unavailable {
            at,
            status,
            retry_after: None,
            detail: "busy".into(),
        },
        _ => PlatformError::Rejected {
            at,
            status,
            code: code.map(str::to_string),
            detail: "rejected".into(),
            expected_offset: None,
        },
    }
}

/// A task summary as the platform would give it.
pub fn summary(id: &str, attempt: u32, status: TaskStatus, agent: Option<&str>) -> TaskSummary {
    TaskSummary {
        id: id.into(),
        stage: Stage::Plan,
        status,
        attempt,
        run_id: format!("run-{id}"),
        workspace_id: "ws-1".into(),
        workspace_name: "network".into(),
        environment_id: "env-1".into(),
        environment_name: "prod".into(),
        cancel_requested: None,
        agent_id: agent.map(str::to_string),
    }
}

/// The fake platform.
#[derive(Default)]
pub struct FakePlatform {
    /// Every call, as `"<call> <task>"`.
    pub calls: Mutex<Vec<String>>,
    /// Tasks by id (what `task` and `acquire` answer).
    pub tasks: Mutex<BTreeMap<String, TaskSummary>>,
    /// Errors for the next calls of a name (`acquire`, `fail`, ...).
    pub errors: Mutex<BTreeMap<&'static str, VecDeque<PlatformError>>>,
    /// What `poll` answers next.
    pub events: Mutex<VecDeque<Vec<AgentEvent>>>,
}

impl FakePlatform {
    /// Adds a task the platform knows.
    pub fn task_is(&self, summary: TaskSummary) {
        self.tasks
            .lock()
            .expect("tasks")
            .insert(summary.id.clone(), summary);
    }

    /// The next call of `name` fails with `error`.
    pub fn fail_next(&self, name: &'static str, error: PlatformError) {
        self.errors
            .lock()
            .expect("errors")
            .entry(name)
            .or_default()
            .push_back(error);
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    fn call(&self, name: &'static str, task: &str) -> Result<(), PlatformError> {
        self.calls
            .lock()
            .expect("calls")
            .push(format!("{name} {task}").trim().to_string());
        match self
            .errors
            .lock()
            .expect("errors")
            .get_mut(name)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn summary_of(&self, task: &str) -> Result<TaskSummary, PlatformError> {
        self.tasks
            .lock()
            .expect("tasks")
            .get(task)
            .cloned()
            .ok_or_else(|| platform_error(404, Some("not-found")))
    }
}

impl AgentApi for FakePlatform {
    fn agent_id(&self) -> String {
        "agent-self".into()
    }
    fn generation(&self) -> u64 {
        0
    }
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
    fn max_wait(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn heartbeat(&self, free: u32) -> Result<(), PlatformError> {
        self.call("heartbeat", &free.to_string())
    }
    fn poll(&self, free: u32, _wait: Duration) -> Result<Vec<AgentEvent>, PlatformError> {
        self.call("poll", &free.to_string())?;
        Ok(self
            .events
            .lock()
            .expect("events")
            .pop_front()
            .unwrap_or_default())
    }
    fn acquire(&self, task_id: &str) -> Result<HeldTask, PlatformError> {
        self.call("acquire", task_id)?;
        let mut summary = self.summary_of(task_id)?;
        summary.status = TaskStatus::Acquired;
        summary.agent_id = Some(self.agent_id());
        self.task_is(summary.clone());
        Ok(HeldTask {
            token: Secret::new(format!("fake-task-token-{task_id}-{}", summary.attempt)),
            task: summary,
        })
    }
    fn fail_task(&self, task_id: &str, _reason: &str) -> Result<TaskSummary, PlatformError> {
        self.call("fail", task_id)?;
        let mut summary = self.summary_of(task_id)?;
        summary.status = TaskStatus::Errored;
        self.task_is(summary.clone());
        Ok(summary)
    }
    fn confirm_cancel(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        self.call("confirm-cancel", task_id)?;
        let mut summary = self.summary_of(task_id)?;
        summary.status = TaskStatus::Canceled;
        self.task_is(summary.clone());
        Ok(summary)
    }
    fn held_tasks(&self) -> Result<Vec<HeldTask>, PlatformError> {
        self.call("held", "")?;
        let me = self.agent_id();
        Ok(self
            .tasks
            .lock()
            .expect("tasks")
            .values()
            .filter(|t| t.agent_id.as_deref() == Some(&me) && !t.status.is_final())
            .map(|t| HeldTask {
                token: Secret::new(format!("fake-task-token-{}-{}", t.id, t.attempt)),
                task: t.clone(),
            })
            .collect())
    }
    fn task(&self, task_id: &str) -> Result<TaskSummary, PlatformError> {
        self.call("task", task_id)?;
        self.summary_of(task_id)
    }
    fn deregister(&self) -> Result<(), PlatformError> {
        self.call("deregister", "")
    }
}

/// The fake cluster: objects by name, a uid counter, errors on demand.
#[derive(Default)]
pub struct FakeCluster {
    /// Secrets by name.
    pub secrets: Mutex<BTreeMap<String, K8sSecret>>,
    /// Jobs by name.
    pub jobs: Mutex<BTreeMap<String, Job>>,
    /// Events recorded.
    pub events: Mutex<Vec<Event>>,
    /// Leases by name.
    pub leases: Mutex<BTreeMap<String, Lease>>,
    /// The template, when present.
    pub template: Mutex<Option<Value>>,
    /// Every call, as `"<op> <name>"`.
    pub calls: Mutex<Vec<String>>,
    /// Errors for the next calls of an op (`create_job`, ...).
    pub errors: Mutex<BTreeMap<&'static str, VecDeque<KubeError>>>,
    next_uid: Mutex<u64>,
}

impl FakeCluster {
    /// The next call of `op` fails with `error`.
    pub fn fail_next(&self, op: &'static str, error: KubeError) {
        self.errors
            .lock()
            .expect("errors")
            .entry(op)
            .or_default()
            .push_back(error);
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Event reasons recorded so far.
    pub fn event_reasons(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|e| e.reason.clone())
            .collect()
    }

    fn call(&self, op: &'static str, name: &str) -> Result<(), KubeError> {
        self.calls
            .lock()
            .expect("calls")
            .push(format!("{op} {name}"));
        match self
            .errors
            .lock()
            .expect("errors")
            .get_mut(op)
            .and_then(VecDeque::pop_front)
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn uid(&self) -> String {
        let mut n = self.next_uid.lock().expect("uid");
        *n += 1;
        format!("uid-{n}")
    }

    fn stamp(&self, meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        meta.uid = Some(self.uid());
        meta.resource_version = Some(self.uid().trim_start_matches("uid-").to_string());
        meta.creation_timestamp = Some(Time(jiff::Timestamp::now()));
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn delete_from<T: Clone>(
    map: &Mutex<BTreeMap<String, T>>,
    name: &str,
    uid: &str,
    uid_of: impl Fn(&T) -> Option<String>,
) -> Result<(), KubeError> {
    let mut map = map.lock().expect("map");
    match map.get(name) {
        Some(o) if uid_of(o).as_deref() != Some(uid) => Err(conflict()),
        Some(_) => {
            map.remove(name);
            Ok(())
        }
        None => Ok(()),
    }
}

fn conflict() -> KubeError {
    KubeError::Conflict(Box::new(ApiFailure {
        status: 409,
        reason: "Conflict".into(),
        ..ApiFailure::default()
    }))
}

impl Cluster for FakeCluster {
    fn namespace(&self) -> &str {
        "ci"
    }
    fn create_secret(&self, secret: &K8sSecret) -> Result<K8sSecret, KubeError> {
        let name = name_of(&secret.metadata);
        self.call("create_secret", &name)?;
        let mut map = self.secrets.lock().expect("secrets");
        if map.contains_key(&name) {
            return Err(kube_error(409));
        }
        let mut s = secret.clone();
        self.stamp(&mut s.metadata);
        map.insert(name, s.clone());
        Ok(s)
    }
    fn get_secret(&self, name: &str) -> Result<Option<K8sSecret>, KubeError> {
        self.call("get_secret", name)?;
        Ok(self.secrets.lock().expect("secrets").get(name).cloned())
    }
    fn delete_secret(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        self.call("delete_secret", name)?;
        delete_from(&self.secrets, name, uid, |s| s.metadata.uid.clone())
    }
    fn set_secret_owner(&self, name: &str, owner: &OwnerReference) -> Result<(), KubeError> {
        self.call("set_secret_owner", name)?;
        let mut map = self.secrets.lock().expect("secrets");
        let s = map.get_mut(name).ok_or_else(|| kube_error(404))?;
        s.metadata.owner_references = Some(vec![owner.clone()]);
        Ok(())
    }
    fn list_secrets(&self, _selector: &str) -> Result<Vec<K8sSecret>, KubeError> {
        self.call("list_secrets", "")?;
        Ok(self
            .secrets
            .lock()
            .expect("secrets")
            .values()
            .cloned()
            .collect())
    }
    fn create_job(&self, job: &Job) -> Result<Job, KubeError> {
        let name = name_of(&job.metadata);
        self.call("create_job", &name)?;
        let mut map = self.jobs.lock().expect("jobs");
        if map.contains_key(&name) {
            return Err(kube_error(409));
        }
        let mut j = job.clone();
        self.stamp(&mut j.metadata);
        map.insert(name, j.clone());
        Ok(j)
    }
    fn get_job(&self, name: &str) -> Result<Option<Job>, KubeError> {
        self.call("get_job", name)?;
        Ok(self.jobs.lock().expect("jobs").get(name).cloned())
    }
    fn delete_job(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        self.call("delete_job", name)?;
        delete_from(&self.jobs, name, uid, |j| j.metadata.uid.clone())
    }
    fn list_jobs(&self, _selector: &str) -> Result<Vec<Job>, KubeError> {
        self.call("list_jobs", "")?;
        Ok(self.jobs.lock().expect("jobs").values().cloned().collect())
    }
    fn set_job_controller(
        &self,
        name: &str,
        resource_version: &str,
        controller: &str,
    ) -> Result<Job, KubeError> {
        self.call("set_job_controller", name)?;
        let mut map = self.jobs.lock().expect("jobs");
        let job = map.get_mut(name).ok_or_else(|| kube_error(404))?;
        if job.metadata.resource_version.as_deref() != Some(resource_version) {
            return Err(conflict());
        }
        for m in [&mut job.metadata.labels, &mut job.metadata.annotations] {
            m.get_or_insert_with(BTreeMap::new)
                .insert(super::labels::CONTROLLER.into(), controller.into());
        }
        job.metadata.resource_version = Some(format!("{resource_version}0"));
        Ok(job.clone())
    }
    fn list_events(&self, object: &str) -> Result<Vec<Event>, KubeError> {
        self.call("list_events", object)?;
        Ok(self
            .events
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(object))
            .cloned()
            .collect())
    }
    fn create_event(&self, event: &Event) -> Result<(), KubeError> {
        self.call("create_event", event.reason.as_deref().unwrap_or(""))?;
        self.events.lock().expect("events").push(event.clone());
        Ok(())
    }
    fn get_lease(&self, name: &str) -> Result<Option<Lease>, KubeError> {
        self.call("get_lease", name)?;
        Ok(self.leases.lock().expect("leases").get(name).cloned())
    }
    fn create_lease(&self, lease: &Lease) -> Result<Lease, KubeError> {
        let name = name_of(&lease.metadata);
        self.call("create_lease", &name)?;
        let mut map = self.leases.lock().expect("leases");
        if map.contains_key(&name) {
            return Err(kube_error(409));
        }
        let mut l = lease.clone();
        self.stamp(&mut l.metadata);
        map.insert(name, l.clone());
        Ok(l)
    }
    fn replace_lease(&self, lease: &Lease) -> Result<Lease, KubeError> {
        let name = name_of(&lease.metadata);
        self.call("replace_lease", &name)?;
        let mut map = self.leases.lock().expect("leases");
        let stored = map.get(&name).ok_or_else(|| kube_error(404))?;
        if stored.metadata.resource_version != lease.metadata.resource_version {
            return Err(conflict());
        }
        let mut l = lease.clone();
        l.metadata.resource_version = Some(self.uid());
        map.insert(name, l.clone());
        Ok(l)
    }
    fn delete_lease(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        self.call("delete_lease", name)?;
        delete_from(&self.leases, name, uid, |l| l.metadata.uid.clone())
    }
    fn list_leases(&self, _selector: &str) -> Result<Vec<Lease>, KubeError> {
        self.call("list_leases", "")?;
        Ok(self
            .leases
            .lock()
            .expect("leases")
            .values()
            .cloned()
            .collect())
    }
    fn get_template(&self, name: &str) -> Result<Option<Value>, KubeError> {
        self.call("get_template", name)?;
        Ok(self.template.lock().expect("template").clone())
    }
}
