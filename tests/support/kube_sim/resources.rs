//! The resource types the simulator serves: the built-in table and the types that
//! CustomResourceDefinitions add. Pure data and lookups; discovery documents are rendered from here.

use serde_json::Value;

/// The verbs of an ordinary stored resource.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// What a delete does with dependents when the request does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Orphan,
    Background,
    Foreground,
}

impl Propagation {
    /// Parses `propagationPolicy`.
    pub fn parse(s: &str) -> Option<Propagation> {
        match s {
            "Orphan" => Some(Propagation::Orphan),
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            _ => None,
        }
    }
}

/// One served resource.
#[derive(Clone, Debug)]
pub struct ResourceType {
    /// API group, empty for core.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    /// Has a `/status` subresource.
    pub status: bool,
    /// Served from a CustomResourceDefinition.
    pub custom: bool,
    /// Not stored: the review types answered from RBAC.
    pub virtual_review: bool,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`.
    pub fields: Vec<String>,
    /// PUT without `metadata.resourceVersion` is accepted (false for custom resources).
    pub unconditional_update: bool,
    /// DELETE answers with the object rather than a `Status`.
    pub return_deleted: bool,
    /// Propagation when the request gives none (batch/v1 Jobs orphan, for compatibility).
    pub default_propagation: Propagation,
}

impl ResourceType {
    /// `jobs.batch`, `pods`: the storage key prefix and the name used in messages.
    pub fn gr(&self) -> String {
        super::status::qualified(&self.group, &self.plural)
    }

    /// `batch/v1` for `version`, `v1` for core.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The preferred version.
    pub fn version(&self) -> &str {
        &self.versions[0]
    }

    /// Whether `name` (lower-cased kubectl-style) names this type: plural, singular, kind or short name.
    pub fn answers_to(&self, name: &str) -> bool {
        self.plural == name
            || self.singular == name
            || self.kind.to_ascii_lowercase() == name
            || self.short_names.iter().any(|s| s == name)
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    fields: &'static [&'static str],
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];

const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

#[allow(clippy::too_many_arguments)] // a row of the table below
const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
    fields: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        status,
        fields,
    }
}

// One row per resource: group, version, kind, plural, namespaced, short names, status
// subresource, extra field selectors.
#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], true, &["status.phase"]),
    b("", "v1", "Pod", "pods", true, &["po"], true, POD_FIELDS),
    b("", "v1", "Secret", "secrets", true, &[], false, &["type"]),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false, &[]),
    b("", "v1", "Event", "events", true, &["ev"], false, EVENT_FIELDS),
    b("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false, &[]),
    b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"], true, &[]),
    b("", "v1", "Service", "services", true, &["svc"], true, &[]),
    b("apps", "v1", "Deployment", "deployments", true, &["deploy"], true, &[]),
    b("batch", "v1", "Job", "jobs", true, &[], true, &["status.successful"]),
    b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false, &[]),
    b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false, &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false, &[]),
    b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false, &[]),
    b("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], false, &[]),
    b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"], true, &[]),
    b("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false, &[]),
    b("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false, &["crd", "crds"], true, &[]),
    b("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false, &[], false, &[]),
    b("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false, &[], false, &[]),
    b("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", false, &[], false, &[]),
];

/// The order of built-in groups in `/apis` (the apiserver lists them by priority, not by name).
pub const GROUP_ORDER: &[&str] = &[
    "apps",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "batch",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "coordination.k8s.io",
    "apiextensions.k8s.io",
];

/// The built-in types.
pub fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|t| {
            let review = t.plural.ends_with("reviews");
            let mut verbs: Vec<String> = if review {
                vec!["create".into()]
            } else {
                ALL_VERBS.iter().map(|v| v.to_string()).collect()
            };
            if t.plural == "namespaces" {
                verbs.retain(|v| v != "deletecollection");
            }
            let categories = if matches!(t.plural, "pods" | "jobs" | "deployments" | "services") {
                vec!["all".to_string()]
            } else {
                Vec::new()
            };
            ResourceType {
                group: t.group.into(),
                versions: vec![t.version.into()],
                kind: t.kind.into(),
                list_kind: format!("{}List", t.kind),
                plural: t.plural.into(),
                singular: t.kind.to_ascii_lowercase(),
                namespaced: t.namespaced,
                short_names: t.short.iter().map(|s| s.to_string()).collect(),
                categories,
                verbs,
                status: t.status,
                custom: false,
                virtual_review: review,
                fields: t.fields.iter().map(|s| s.to_string()).collect(),
                unconditional_update: true,
                return_deleted: matches!(t.plural, "pods" | "namespaces"),
                default_propagation: if t.plural == "jobs" {
                    Propagation::Orphan
                } else {
                    Propagation::Background
                },
            }
        })
        .collect()
}

/// The type a CustomResourceDefinition serves, or `None` when it serves no version.
pub fn from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = spec["group"].as_str()?.to_string();
    let plural = names["plural"].as_str()?.to_string();
    let kind = names["kind"].as_str()?.to_string();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let served: Vec<&Value> = spec["versions"]
        .as_array()?
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(false))
        .collect();
    let mut versions: Vec<String> = served
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    if versions.is_empty() {
        return None;
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    let status = served
        .iter()
        .any(|v| v["subresources"]["status"].is_object());
    let mut fields = Vec::new();
    for v in &served {
        for f in v["selectableFields"].as_array().into_iter().flatten() {
            if let Some(path) = f["jsonPath"].as_str() {
                let path = path.trim_start_matches('.').to_string();
                if !fields.contains(&path) {
                    fields.push(path);
                }
            }
        }
    }
    Some(ResourceType {
        group,
        versions,
        singular: names["singular"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kind.to_ascii_lowercase()),
        list_kind: names["listKind"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{kind}List")),
        kind,
        plural,
        namespaced: spec["scope"].as_str() != Some("Cluster"),
        short_names: strings(&names["shortNames"]),
        categories: strings(&names["categories"]),
        verbs: ALL_VERBS.iter().map(|v| v.to_string()).collect(),
        status,
        custom: true,
        virtual_review: false,
        fields,
        unconditional_update: false,
        return_deleted: true,
        default_propagation: Propagation::Background,
    })
}

/// Kubernetes version ordering: GA above beta above alpha, higher numbers first, others last.
pub fn version_priority(v: &str) -> (u8, u64, u64) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0);
    };
    let tail = &rest[digits.len()..];
    if tail.is_empty() {
        return (3, major, 0);
    }
    let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
        (2, n)
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n)
    } else {
        return (0, 0, 0);
    };
    match n.parse::<u64>() {
        Ok(n) => (level, major, n),
        Err(_) => (0, 0, 0),
    }
}

/// The built-in and custom types together, with lookups.
#[derive(Clone, Debug)]
pub struct Registry {
    pub builtin: Vec<ResourceType>,
    pub custom: Vec<ResourceType>,
}

impl Registry {
    /// Only the built-ins.
    pub fn new() -> Registry {
        Registry {
            builtin: builtins(),
            custom: Vec::new(),
        }
    }

    /// Every type.
    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.builtin.iter().chain(self.custom.iter())
    }

    /// The type served at `group`/`version` under `plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.all().find(|t| {
            t.group == group && t.plural == plural && t.versions.iter().any(|v| v == version)
        })
    }

    /// The type whose storage key is `gr` (`jobs.batch`).
    pub fn by_gr(&self, gr: &str) -> Option<&ResourceType> {
        self.all().find(|t| t.gr() == gr)
    }

    /// The type of an object's `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        self.all()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
    }

    /// kubectl-style resolution: `jobs`, `job`, `jobs.batch`, `deploy`, `agenttasktemplates.scalr.io`.
    pub fn resolve(&self, name: &str) -> Option<&ResourceType> {
        let name = name.to_ascii_lowercase();
        self.all().find(|t| t.answers_to(&name)).or_else(|| {
            let (short, group) = name.split_once('.')?;
            self.all().find(|t| t.group == group && t.answers_to(short))
        })
    }

    /// Whether `group/version` is served at all.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.all()
            .any(|t| t.group == group && t.versions.iter().any(|v| v == version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_kubectl_names() {
        let r = Registry::new();
        for (name, gr) in [
            ("jobs", "jobs.batch"),
            ("job", "jobs.batch"),
            ("jobs.batch", "jobs.batch"),
            ("deploy", "deployments.apps"),
            ("po", "pods"),
            ("Pod", "pods"),
            ("crd", "customresourcedefinitions.apiextensions.k8s.io"),
        ] {
            assert_eq!(
                r.resolve(name).map(|t| t.gr()),
                Some(gr.to_string()),
                "{name}"
            );
        }
        assert!(r.resolve("widgets").is_none());
    }

    #[test]
    fn crd_versions_sort_by_kubernetes_priority() {
        let crd = json!({"spec": {"group": "scalr.io", "scope": "Namespaced",
            "names": {"plural": "agenttasktemplates", "kind": "AgentTaskTemplate"},
            "versions": [
                {"name": "v1alpha1", "served": true, "storage": false},
                {"name": "v1", "served": true, "storage": true},
                {"name": "v2beta1", "served": true, "storage": false},
                {"name": "v3", "served": false, "storage": false}]}});
        let t = from_crd(&crd).expect("served");
        assert_eq!(t.versions, vec!["v1", "v2beta1", "v1alpha1"]);
        assert_eq!(t.singular, "agenttasktemplate");
        assert_eq!(t.list_kind, "AgentTaskTemplateList");
        assert!(t.namespaced && t.custom && !t.status);
    }
}
