//! What the client needs to know about a resource type: where it lives in the API ([`ApiResource`]),
//! how to read an object's metadata ([`KubeObject`]), the list envelope ([`ObjectList`]) and our one
//! custom resource, [`AgentTaskTemplate`]. Pure data; no I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where a resource type lives in the REST API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResource {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Job` (error messages and `apiVersion`/`kind` checks).
    pub kind: String,
    /// Lower-case plural used in paths, e.g. `jobs`.
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

/// Whether a k8s-openapi scope is namespaced; lets [`ApiResource::of`] read it off the type.
pub trait Scope {
    /// `true` for namespaced resources.
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

impl ApiResource {
    /// The resource of a k8s-openapi type (or of [`AgentTaskTemplate`]).
    pub fn of<K>() -> ApiResource
    where
        K: k8s_openapi::Resource,
        K::Scope: Scope,
    {
        ApiResource {
            group: K::GROUP.to_string(),
            version: K::VERSION.to_string(),
            kind: K::KIND.to_string(),
            plural: K::URL_PATH_SEGMENT.to_string(),
            namespaced: <K::Scope as Scope>::NAMESPACED,
        }
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    pub fn base_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The path of the collection (`name` = None) or of one object, optionally of its subresource.
    /// `namespace` is ignored for cluster-scoped resources; `None` on a namespaced resource addresses
    /// all namespaces (list and watch only).
    pub fn path(
        &self,
        namespace: Option<&str>,
        name: Option<&str>,
        subresource: Option<&str>,
    ) -> String {
        let mut path = self.base_path();
        if let (true, Some(ns)) = (self.namespaced, namespace) {
            path.push_str("/namespaces/");
            path.push_str(&encode(ns));
        }
        path.push('/');
        path.push_str(&self.plural);
        if let Some(name) = name {
            path.push('/');
            path.push_str(&encode(name));
            if let Some(sub) = subresource {
                path.push('/');
                path.push_str(sub);
            }
        }
        path
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (query values and path segments).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An object the client can read, write and watch: serde both ways, with standard metadata.
/// Implemented for every k8s-openapi type and for [`AgentTaskTemplate`].
pub trait KubeObject: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The object's metadata.
    fn meta(&self) -> &ObjectMeta;
}

impl<K> KubeObject for K
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta>
        + Serialize
        + DeserializeOwned
        + Clone
        + Send
        + 'static,
{
    fn meta(&self) -> &ObjectMeta {
        self.metadata()
    }
}

/// One page of a list: the items and where the list stands.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectList<K> {
    /// The objects on this page.
    pub items: Vec<K>,
    /// The list's resourceVersion: a watch from here misses nothing.
    pub resource_version: String,
    /// Set when more pages follow (pass it as `continue`).
    pub continue_token: Option<String>,
    /// The server's estimate of the items not yet returned.
    pub remaining_item_count: Option<i64>,
}

/// The list envelope on the wire (`kind` is not checked, so CRD lists decode too).
#[derive(Deserialize)]
pub(crate) struct WireList<K> {
    #[serde(default)]
    pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta,
    #[serde(default = "Vec::new")]
    pub items: Vec<K>,
}

impl<K> From<WireList<K>> for ObjectList<K> {
    fn from(list: WireList<K>) -> Self {
        ObjectList {
            items: list.items,
            resource_version: list.metadata.resource_version.unwrap_or_default(),
            continue_token: list.metadata.continue_.filter(|c| !c.is_empty()),
            remaining_item_count: list.metadata.remaining_item_count,
        }
    }
}

/// API group of our custom resource.
pub const SCALR_GROUP: &str = "scalr.io";

/// The Job template the chart manages: `scalr.io/v1` `AgentTaskTemplate`, namespaced, plural
/// `agenttasktemplates`, with a status subresource. The controller reads it and stamps one Job per
/// task from `spec.jobTemplate`.
///
/// `spec.jobTemplate` is decoded into the k8s-openapi v1.33 model: fields that Kubernetes added
/// after 1.33 are dropped when the controller copies the template (see `docs/kubernetes.md`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct AgentTaskTemplate {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the chart asks for.
    #[serde(default)]
    pub spec: AgentTaskTemplateSpec,
    /// Written by the controller through the status subresource (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `spec` of [`AgentTaskTemplate`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskTemplateSpec {
    /// Prefix of Job names (`<basename>-<run-id>-<stage>`).
    #[serde(default)]
    pub basename: String,
    /// The Job every task starts from.
    #[serde(default)]
    pub job_template: k8s_openapi::api::batch::v1::JobTemplateSpec,
}

impl k8s_openapi::Resource for AgentTaskTemplate {
    const API_VERSION: &'static str = "scalr.io/v1";
    const GROUP: &'static str = SCALR_GROUP;
    const KIND: &'static str = "AgentTaskTemplate";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "agenttasktemplates";
    type Scope = NamespaceResourceScope;
}

impl k8s_openapi::Metadata for AgentTaskTemplate {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Serialize for AgentTaskTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a ObjectMeta,
            spec: &'a AgentTaskTemplateSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: &'a Option<serde_json::Value>,
        }
        Wire {
            api_version: <Self as k8s_openapi::Resource>::API_VERSION,
            kind: <Self as k8s_openapi::Resource>::KIND,
            metadata: &self.metadata,
            spec: &self.spec,
            status: &self.status,
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Event, Pod, Secret};

    #[test]
    fn paths_for_each_resource_we_use() {
        let cases = [
            (
                ApiResource::of::<Job>(),
                Some("ci"),
                Some("j1"),
                None,
                "/apis/batch/v1/namespaces/ci/jobs/j1",
            ),
            (
                ApiResource::of::<Job>(),
                Some("ci"),
                Some("j1"),
                Some("status"),
                "/apis/batch/v1/namespaces/ci/jobs/j1/status",
            ),
            (
                ApiResource::of::<Pod>(),
                Some("ci"),
                None,
                None,
                "/api/v1/namespaces/ci/pods",
            ),
            (ApiResource::of::<Pod>(), None, None, None, "/api/v1/pods"),
            (
                ApiResource::of::<Secret>(),
                Some("ci"),
                Some("s"),
                None,
                "/api/v1/namespaces/ci/secrets/s",
            ),
            (
                ApiResource::of::<Event>(),
                Some("ci"),
                None,
                None,
                "/api/v1/namespaces/ci/events",
            ),
            (
                ApiResource::of::<Lease>(),
                Some("ci"),
                Some("l"),
                None,
                "/apis/coordination.k8s.io/v1/namespaces/ci/leases/l",
            ),
            (
                ApiResource::of::<AgentTaskTemplate>(),
                Some("ci"),
                Some("t"),
                None,
                "/apis/scalr.io/v1/namespaces/ci/agenttasktemplates/t",
            ),
            (
                ApiResource::of::<SelfSubjectAccessReview>(),
                Some("ignored"),
                None,
                None,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            ),
        ];
        for (resource, ns, name, sub, want) in cases {
            assert_eq!(resource.path(ns, name, sub), want);
        }
        assert!(!ApiResource::of::<SelfSubjectAccessReview>().namespaced);
        assert!(ApiResource::of::<AgentTaskTemplate>().namespaced);
    }

    #[test]
    fn encoding_keeps_unreserved_only() {
        assert_eq!(encode("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(
            encode("app=x,scalr.io/task-id!=y"),
            "app%3Dx%2Cscalr.io%2Ftask-id%21%3Dy"
        );
        assert_eq!(encode("a b"), "a%20b");
    }

    #[test]
    fn agent_task_template_round_trips_with_api_version_and_kind() {
        let json = serde_json::json!({
            "apiVersion": "scalr.io/v1", "kind": "AgentTaskTemplate",
            "metadata": {"name": "t", "namespace": "ci", "resourceVersion": "5"},
            "spec": {"basename": "scalr", "jobTemplate": {"spec": {"template": {"spec": {
                "containers": [{"name": "worker", "image": "scalr/agent"}]}}}}},
        });
        let template: AgentTaskTemplate = serde_json::from_value(json).expect("decode");
        assert_eq!(template.spec.basename, "scalr");
        assert_eq!(template.meta().resource_version.as_deref(), Some("5"));
        let containers = template
            .spec
            .job_template
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| s.containers.len());
        assert_eq!(containers, Some(1));
        let back = serde_json::to_value(&template).expect("encode");
        assert_eq!(back["apiVersion"], "scalr.io/v1");
        assert_eq!(back["kind"], "AgentTaskTemplate");
        assert_eq!(
            back["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"],
            "worker"
        );
        assert!(back.get("status").is_none());
    }

    #[test]
    fn lists_decode_without_kind_checks() {
        let list: WireList<AgentTaskTemplate> = serde_json::from_value(serde_json::json!({
            "kind": "AgentTaskTemplateList", "apiVersion": "scalr.io/v1",
            "metadata": {"resourceVersion": "10", "continue": "", "remainingItemCount": 0},
            "items": [{"metadata": {"name": "a"}}],
        }))
        .expect("list");
        let list = ObjectList::from(list);
        assert_eq!(list.resource_version, "10");
        assert_eq!(list.continue_token, None);
        assert_eq!(list.items.len(), 1);
    }
}
