//! The controller's boundary to Kubernetes: the [`Cluster`] trait every stage calls for the
//! writes and one-off reads it makes (the two watches run through `kube::watcher` instead), and
//! [`KubeCluster`], its implementation on the real client.
//!
//! No thread of its own; stages share an `Arc<dyn Cluster>`. Every call of `KubeCluster` is retried
//! within one [`RetryPolicy`] on 429, 5xx and transport errors (honouring `Retry-After`), and the
//! retry sleeps end at shutdown. Deletes take a uid precondition, so a same-named newer object
//! survives, and treat NotFound as done. The trait exists so stage `handle`s can be unit-tested with
//! an in-memory fake; integration tests use `KubeCluster` against the Kubernetes API simulator.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Secret as K8sSecret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::labels::CONTROLLER;
use super::naming::label_value;
use crate::http::RetryPolicy;
use crate::http::retry::retry;
use crate::kube::{Api, Client, DeleteParams, KubeError, ListParams};
use crate::shutdown::Shutdown;

/// The Kubernetes calls the controller makes, all in its namespace.
pub trait Cluster: Send + Sync {
    /// The namespace of Jobs, Secrets, Events, Leases and the template.
    fn namespace(&self) -> &str;

    /// Creates a Secret.
    fn create_secret(&self, secret: &K8sSecret) -> Result<K8sSecret, KubeError>;
    /// Reads a Secret; `None` when absent.
    fn get_secret(&self, name: &str) -> Result<Option<K8sSecret>, KubeError>;
    /// Deletes the Secret with this uid (NotFound: done).
    fn delete_secret(&self, name: &str, uid: &str) -> Result<(), KubeError>;
    /// Makes `owner` the Secret's only owner (merge patch of its metadata).
    fn set_secret_owner(&self, name: &str, owner: &OwnerReference) -> Result<(), KubeError>;
    /// Secrets matching a label selector.
    fn list_secrets(&self, selector: &str) -> Result<Vec<K8sSecret>, KubeError>;

    /// Creates a Job.
    fn create_job(&self, job: &Job) -> Result<Job, KubeError>;
    /// Reads a Job; `None` when absent.
    fn get_job(&self, name: &str) -> Result<Option<Job>, KubeError>;
    /// Deletes the Job with this uid, its pods in the background (NotFound: done).
    fn delete_job(&self, name: &str, uid: &str) -> Result<(), KubeError>;
    /// Jobs matching a label selector.
    fn list_jobs(&self, selector: &str) -> Result<Vec<Job>, KubeError>;
    /// Re-labels a Job as `controller`'s, if it still has `resource_version` (else Conflict).
    fn set_job_controller(
        &self,
        name: &str,
        resource_version: &str,
        controller: &str,
    ) -> Result<Job, KubeError>;

    /// Events about the named object (`involvedObject.name`).
    fn list_events(&self, object: &str) -> Result<Vec<Event>, KubeError>;
    /// Records an Event.
    fn create_event(&self, event: &Event) -> Result<(), KubeError>;

    /// Reads a Lease; `None` when absent.
    fn get_lease(&self, name: &str) -> Result<Option<Lease>, KubeError>;
    /// Creates a Lease.
    fn create_lease(&self, lease: &Lease) -> Result<Lease, KubeError>;
    /// Replaces a Lease (its `resourceVersion` makes it a compare-and-swap).
    fn replace_lease(&self, lease: &Lease) -> Result<Lease, KubeError>;
    /// Deletes the Lease with this uid (NotFound: done).
    fn delete_lease(&self, name: &str, uid: &str) -> Result<(), KubeError>;
    /// Leases matching a label selector.
    fn list_leases(&self, selector: &str) -> Result<Vec<Lease>, KubeError>;

    /// The `AgentTaskTemplate` as JSON (for `template::AgentTaskTemplate::from_value`); `None`
    /// when absent.
    fn get_template(&self, name: &str) -> Result<Option<Value>, KubeError>;
}

/// An `AgentTaskTemplate` kept as JSON, so validation sees every field the server returned (fields
/// unknown to the typed model become warnings instead of vanishing silently).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateObject {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Everything else: apiVersion, kind, spec, status.
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl TemplateObject {
    /// The whole object as JSON.
    pub fn to_value(&self) -> Value {
        let mut value = Value::Object(self.rest.clone());
        value["metadata"] = serde_json::to_value(&self.metadata).unwrap_or(Value::Null);
        if value.get("apiVersion").is_none() {
            value["apiVersion"] = json!(crate::kube::resource::SCALR_GROUP.to_string() + "/v1");
        }
        if value.get("kind").is_none() {
            value["kind"] = json!(super::template::KIND);
        }
        value
    }
}

impl k8s_openapi::Resource for TemplateObject {
    const API_VERSION: &'static str = "scalr.io/v1";
    const GROUP: &'static str = crate::kube::resource::SCALR_GROUP;
    const KIND: &'static str = "AgentTaskTemplate";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "agenttasktemplates";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for TemplateObject {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// [`Cluster`] on the real Kubernetes client.
#[derive(Clone)]
pub struct KubeCluster {
    namespace: String,
    jobs: Api<Job>,
    secrets: Api<K8sSecret>,
    events: Api<Event>,
    leases: Api<Lease>,
    templates: Api<TemplateObject>,
    retry: RetryPolicy,
    shutdown: Option<Shutdown>,
}

impl KubeCluster {
    /// Calls in `namespace`, each retried within `retry`; retry sleeps end when `shutdown` triggers.
    pub fn new(
        client: &Client,
        namespace: &str,
        retry: RetryPolicy,
        shutdown: Option<Shutdown>,
    ) -> Self {
        KubeCluster {
            namespace: namespace.to_string(),
            jobs: Api::namespaced(client, namespace),
            secrets: Api::namespaced(client, namespace),
            events: Api::namespaced(client, namespace),
            leases: Api::namespaced(client, namespace),
            templates: Api::namespaced(client, namespace),
            retry,
            shutdown,
        }
    }

    /// The Jobs API (for the watch).
    pub fn jobs(&self) -> &Api<Job> {
        &self.jobs
    }

    /// The template API (for the watch).
    pub fn templates(&self) -> &Api<TemplateObject> {
        &self.templates
    }

    fn call<T>(
        &self,
        what: &str,
        op: impl FnMut(u32) -> Result<T, KubeError>,
    ) -> Result<T, KubeError> {
        retry(self.retry, self.shutdown.as_ref(), what, op)
    }
}

fn gone_is_done(result: Result<(), KubeError>) -> Result<(), KubeError> {
    match result {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

fn selected(selector: &str) -> ListParams {
    ListParams::labels(selector).limit(500)
}

impl Cluster for KubeCluster {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn create_secret(&self, secret: &K8sSecret) -> Result<K8sSecret, KubeError> {
        self.call("create Secret", |_| self.secrets.create(secret))
    }

    fn get_secret(&self, name: &str) -> Result<Option<K8sSecret>, KubeError> {
        self.call("read Secret", |_| self.secrets.get_opt(name))
    }

    fn delete_secret(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        let params = DeleteParams::background().uid(uid);
        self.call("delete Secret", |_| {
            gone_is_done(self.secrets.delete(name, &params))
        })
    }

    fn set_secret_owner(&self, name: &str, owner: &OwnerReference) -> Result<(), KubeError> {
        let patch = json!({"metadata": {"ownerReferences": [owner]}});
        self.call("set the Secret's owner", |_| {
            self.secrets.patch_merge(name, &patch).map(drop)
        })
    }

    fn list_secrets(&self, selector: &str) -> Result<Vec<K8sSecret>, KubeError> {
        self.call("list Secrets", |_| {
            self.secrets.list_all(&selected(selector)).map(|l| l.items)
        })
    }

    fn create_job(&self, job: &Job) -> Result<Job, KubeError> {
        self.call("create Job", |_| self.jobs.create(job))
    }

    fn get_job(&self, name: &str) -> Result<Option<Job>, KubeError> {
        self.call("read Job", |_| self.jobs.get_opt(name))
    }

    fn delete_job(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        let params = DeleteParams::background().uid(uid);
        self.call("delete Job", |_| {
            gone_is_done(self.jobs.delete(name, &params))
        })
    }

    fn list_jobs(&self, selector: &str) -> Result<Vec<Job>, KubeError> {
        self.call("list Jobs", |_| {
            self.jobs.list_all(&selected(selector)).map(|l| l.items)
        })
    }

    fn set_job_controller(
        &self,
        name: &str,
        resource_version: &str,
        controller: &str,
    ) -> Result<Job, KubeError> {
        let patch = json!({"metadata": {
            "resourceVersion": resource_version,
            "labels": {CONTROLLER: label_value(controller)},
            "annotations": {CONTROLLER: controller},
        }});
        self.call("adopt Job", |_| self.jobs.patch_merge(name, &patch))
    }

    fn list_events(&self, object: &str) -> Result<Vec<Event>, KubeError> {
        let params = ListParams::default().fields(&format!("involvedObject.name={object}"));
        self.call("list Events", |_| {
            self.events.list(&params).map(|l| l.items)
        })
    }

    fn create_event(&self, event: &Event) -> Result<(), KubeError> {
        // Best effort: one attempt. An Event is never worth delaying a task for.
        self.events.create(event).map(drop)
    }

    fn get_lease(&self, name: &str) -> Result<Option<Lease>, KubeError> {
        self.call("read Lease", |_| self.leases.get_opt(name))
    }

    fn create_lease(&self, lease: &Lease) -> Result<Lease, KubeError> {
        self.call("create Lease", |_| self.leases.create(lease))
    }

    fn replace_lease(&self, lease: &Lease) -> Result<Lease, KubeError> {
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.call("renew Lease", |_| self.leases.replace(&name, lease))
    }

    fn delete_lease(&self, name: &str, uid: &str) -> Result<(), KubeError> {
        let params = DeleteParams::background().uid(uid);
        self.call("delete Lease", |_| {
            gone_is_done(self.leases.delete(name, &params))
        })
    }

    fn list_leases(&self, selector: &str) -> Result<Vec<Lease>, KubeError> {
        self.call("list Leases", |_| {
            self.leases.list_all(&selected(selector)).map(|l| l.items)
        })
    }

    fn get_template(&self, name: &str) -> Result<Option<Value>, KubeError> {
        self.call("read AgentTaskTemplate", |_| {
            self.templates
                .get_opt(name)
                .map(|t| t.map(|t| t.to_value()))
        })
    }
}

/// The metrics class of a Kubernetes error.
pub fn error_class(error: &KubeError) -> &'static str {
    match error {
        KubeError::NotFound(_) => "not_found",
        KubeError::AlreadyExists(_) => "already_exists",
        KubeError::Conflict(_) => "conflict",
        KubeError::Gone(_) => "gone",
        KubeError::Unauthorized(_) => "unauthorized",
        KubeError::Forbidden(_) => "forbidden",
        KubeError::Invalid(_) => "invalid",
        KubeError::Throttled(_) => "throttled",
        KubeError::ServerError(_) => "server_error",
        KubeError::Rejected(_) => "rejected",
        KubeError::Transport(_) => "transport",
        _ => "other",
    }
}
