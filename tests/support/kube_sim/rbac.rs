//! Identities and authorization: bearer tokens and x509 client certificates to users; RBAC decisions
//! from the Role/RoleBinding/ClusterRole/ClusterRoleBinding objects in the store, with the rule
//! matching and 403 message of the real authorizer; SelfSubjectAccessReview, SelfSubjectRulesReview
//! and SelfSubjectReview answered from the same rules. Pure over a `&Store`.

use serde_json::{Value, json};

use super::status::{self, ApiError};
use super::store::Store;

/// Members of this group bypass authorization, as on a real cluster.
pub const SUPERUSER_GROUP: &str = "system:masters";
/// Every authenticated user is in this group.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

const CRB: &str = "clusterrolebindings.rbac.authorization.k8s.io";
const CR: &str = "clusterroles.rbac.authorization.k8s.io";
const RB: &str = "rolebindings.rbac.authorization.k8s.io";
const ROLE: &str = "roles.rbac.authorization.k8s.io";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user with `groups` plus `system:authenticated`.
    pub fn new(name: &str, groups: &[&str]) -> UserInfo {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.into());
        }
        UserInfo {
            name: name.into(),
            groups,
        }
    }

    /// The identity of service account `name` in `namespace`.
    pub fn service_account(namespace: &str, name: &str) -> UserInfo {
        UserInfo::new(
            &format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
            ],
        )
    }
}

/// What a request wants to do.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub namespace: String,
    /// The path, for non-resource requests.
    pub path: String,
    pub is_resource: bool,
}

/// An authorization answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether one PolicyRule allows `attrs` (the upstream `RuleAllows`).
pub fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let verbs = strings(&rule["verbs"]);
    if !verbs.iter().any(|v| *v == "*" || *v == attrs.verb) {
        return false;
    }
    if !attrs.is_resource {
        return strings(&rule["nonResourceURLs"]).iter().any(|u| {
            *u == "*"
                || *u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|p| attrs.path.starts_with(p))
        });
    }
    if !strings(&rule["apiGroups"])
        .iter()
        .any(|g| *g == "*" || *g == attrs.group)
    {
        return false;
    }
    let combined = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let resource_ok = strings(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == combined
            || (!attrs.subresource.is_empty()
                && r.strip_prefix("*/") == Some(attrs.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    let names = strings(&rule["resourceNames"]);
    names.is_empty() || names.contains(&attrs.name.as_str())
}

fn subject_matches(subject: &Value, binding_ns: &str, user: &UserInfo) -> Option<String> {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str().unwrap_or("") {
        "User" if name == user.name => Some(format!("User {name:?}")),
        "Group" if user.groups.iter().any(|g| g == name) => Some(format!("Group {name:?}")),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_ns);
            (user.name == format!("system:serviceaccount:{ns}:{name}"))
                .then(|| format!("ServiceAccount \"{name}/{ns}\""))
        }
        _ => None,
    }
}

/// The rules a built-in cluster gives every authenticated user (system:basic-user, system:discovery,
/// system:public-info-viewer), as `(binding description, rules)`.
fn bootstrap_rules() -> Value {
    json!([
        {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
         "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]},
        {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]},
        {"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version",
            "/version/", "/healthz", "/livez", "/readyz", "/openapi", "/openapi/*"]},
    ])
}

/// Every rule that applies to `user` in `namespace` ("" = cluster scope), with where it came from.
fn applicable_rules(store: &Store, user: &UserInfo, namespace: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if user.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        for rule in bootstrap_rules().as_array().into_iter().flatten() {
            out.push((
                "ClusterRoleBinding \"system:basic-user\" of ClusterRole \"system:basic-user\" to Group \"system:authenticated\"".into(),
                rule.clone(),
            ));
        }
    }
    let mut bindings: Vec<(&Value, &str)> = store.list(CRB, None).map(|(_, b)| (b, "")).collect();
    if !namespace.is_empty() {
        bindings.extend(store.list(RB, Some(namespace)).map(|(_, b)| (b, namespace)));
    }
    for (binding, ns) in bindings {
        let Some(subject) = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|s| subject_matches(s, ns, user))
        else {
            continue;
        };
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or("");
        let role_name = binding["roleRef"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let role = match role_kind {
            "ClusterRole" => store.get(&(CR.into(), String::new(), role_name.clone())),
            "Role" if !ns.is_empty() => store.get(&(ROLE.into(), ns.into(), role_name.clone())),
            _ => None,
        };
        let Some(role) = role else { continue };
        let binding_name = binding["metadata"]["name"].as_str().unwrap_or("");
        let source = if ns.is_empty() {
            format!("ClusterRoleBinding {binding_name:?} of {role_kind} {role_name:?} to {subject}")
        } else {
            format!("RoleBinding \"{binding_name}/{ns}\" of {role_kind} {role_name:?} to {subject}")
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            out.push((source.clone(), rule.clone()));
        }
    }
    out
}

/// The RBAC decision for `attrs`.
pub fn authorize(store: &Store, user: &UserInfo, attrs: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == SUPERUSER_GROUP) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let ns = if attrs.is_resource {
        attrs.namespace.as_str()
    } else {
        ""
    };
    for (source, rule) in applicable_rules(store, user, ns) {
        if rule_allows(&rule, attrs) {
            return Decision {
                allowed: true,
                reason: format!("RBAC: allowed by {source}"),
            };
        }
    }
    Decision {
        allowed: false,
        reason: String::new(),
    }
}

/// The authorizer's message for a denied request.
pub fn forbidden_message(user: &UserInfo, attrs: &Attributes) -> String {
    if !attrs.is_resource {
        return format!(
            "User {:?} cannot {} path {:?}",
            user.name, attrs.verb, attrs.path
        );
    }
    let mut resource = attrs.resource.clone();
    if !attrs.subresource.is_empty() {
        resource = format!("{resource}/{}", attrs.subresource);
    }
    if attrs.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
            user.name, attrs.verb, attrs.group
        )
    } else {
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            user.name, attrs.verb, attrs.group, attrs.namespace
        )
    }
}

/// The 403 the apiserver answers for a denied request.
pub fn forbidden(user: &UserInfo, attrs: &Attributes) -> ApiError {
    let why = forbidden_message(user, attrs);
    if !attrs.is_resource {
        return status::forbidden(format!("forbidden: {why}"), json!({}));
    }
    let qualified = status::qualified(&attrs.group, &attrs.resource);
    let message = if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} {:?} is forbidden: {why}", attrs.name)
    };
    status::forbidden(
        message,
        status::details(&attrs.group, &attrs.resource, &attrs.name),
    )
}

/// Answers a SelfSubjectAccessReview body. `rbac` false answers as an always-allow authorizer.
pub fn access_review(
    store: &Store,
    user: &UserInfo,
    body: &Value,
    rbac: bool,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let attrs = if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        Attributes {
            verb: s(&r["verb"]),
            group: s(&r["group"]),
            resource: s(&r["resource"]),
            subresource: s(&r["subresource"]),
            name: s(&r["name"]),
            namespace: s(&r["namespace"]),
            path: String::new(),
            is_resource: true,
        }
    } else if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        Attributes {
            verb: s(&n["verb"]),
            path: s(&n["path"]),
            is_resource: false,
            ..Attributes::default()
        }
    } else {
        return Err(status::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            &[status::Cause::required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    let decision = if rbac {
        authorize(store, user, &attrs)
    } else {
        Decision {
            allowed: true,
            reason: String::new(),
        }
    };
    let mut out = body.clone();
    out["apiVersion"] = json!("authorization.k8s.io/v1");
    out["kind"] = json!("SelfSubjectAccessReview");
    out["metadata"] = json!({"creationTimestamp": null});
    out["status"] = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        out["status"]["reason"] = json!(decision.reason);
    }
    Ok(out)
}

/// Answers a SelfSubjectRulesReview body.
pub fn rules_review(store: &Store, user: &UserInfo, body: &Value, rbac: bool) -> Value {
    let namespace = body["spec"]["namespace"].as_str().unwrap_or("");
    let (resource_rules, non_resource_rules): (Vec<Value>, Vec<Value>) =
        if !rbac || user.groups.iter().any(|g| g == SUPERUSER_GROUP) {
            (
                vec![json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})],
                vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})],
            )
        } else {
            let rules = applicable_rules(store, user, namespace);
            let pick = |want_non_resource: bool| {
                rules
                    .iter()
                    .filter(|(_, r)| r.get("nonResourceURLs").is_some() == want_non_resource)
                    .map(|(_, r)| {
                        let mut r = r.clone();
                        if let Some(m) = r.as_object_mut() {
                            if want_non_resource {
                                m.retain(|k, _| k == "verbs" || k == "nonResourceURLs");
                            } else {
                                m.remove("nonResourceURLs");
                            }
                        }
                        r
                    })
                    .collect()
            };
            (pick(false), pick(true))
        };
    let mut out = body.clone();
    out["apiVersion"] = json!("authorization.k8s.io/v1");
    out["kind"] = json!("SelfSubjectRulesReview");
    out["metadata"] = json!({"creationTimestamp": null});
    out["status"] = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    });
    out
}

/// Answers a SelfSubjectReview (`kubectl auth whoami`).
pub fn self_review(user: &UserInfo) -> Value {
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_rbac() -> Store {
        let mut s = Store::default();
        s.create(
            (ROLE.into(), "ci".into(), "launcher".into()),
            json!({"metadata": {"name": "launcher", "namespace": "ci"}, "rules": [
                {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]},
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["only"]}]}),
        );
        s.create(
            (RB.into(), "ci".into(), "launcher".into()),
            json!({"metadata": {"name": "launcher", "namespace": "ci"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "launcher"},
                "subjects": [{"kind": "ServiceAccount", "name": "agent"}]}),
        );
        s
    }

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        name: &str,
        ns: &str,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: ns.into(),
            path: String::new(),
            is_resource: true,
        }
    }

    #[test]
    fn role_bindings_grant_exactly_their_rules() {
        let s = store_with_rbac();
        let sa = UserInfo::service_account("ci", "agent");
        let cases = [
            (attrs("create", "batch", "jobs", "", "", "ci"), true),
            (attrs("delete", "batch", "jobs", "", "x", "ci"), false),
            (attrs("create", "batch", "jobs", "", "", "other"), false),
            (attrs("get", "", "pods", "log", "p", "ci"), true),
            (attrs("get", "", "pods", "", "p", "ci"), false),
            (attrs("get", "", "secrets", "", "only", "ci"), true),
            (attrs("get", "", "secrets", "", "other", "ci"), false),
            (
                attrs(
                    "create",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews",
                    "",
                    "",
                    "",
                ),
                true,
            ),
        ];
        for (a, want) in cases {
            assert_eq!(authorize(&s, &sa, &a).allowed, want, "{a:?}");
        }
        let reason = authorize(&s, &sa, &attrs("create", "batch", "jobs", "", "", "ci")).reason;
        assert_eq!(
            reason,
            "RBAC: allowed by RoleBinding \"launcher/ci\" of Role \"launcher\" to ServiceAccount \"agent/ci\""
        );
        let admin = UserInfo::new("root", &[SUPERUSER_GROUP]);
        assert!(authorize(&s, &admin, &attrs("delete", "", "namespaces", "", "x", "")).allowed);
    }

    #[test]
    fn forbidden_messages_match_the_apiserver() {
        let sa = UserInfo::service_account("ns", "sa");
        let e = forbidden(&sa, &attrs("create", "batch", "jobs", "", "", "ns"));
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message(),
            "jobs.batch is forbidden: User \"system:serviceaccount:ns:sa\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ns\""
        );
        let e = forbidden(&sa, &attrs("get", "", "namespaces", "", "x", ""));
        assert_eq!(
            e.message(),
            "namespaces \"x\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot get resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        let e = forbidden(
            &sa,
            &Attributes {
                verb: "get".into(),
                path: "/metrics".into(),
                ..Attributes::default()
            },
        );
        assert_eq!(
            e.message(),
            "forbidden: User \"system:serviceaccount:ns:sa\" cannot get path \"/metrics\""
        );
    }
}
