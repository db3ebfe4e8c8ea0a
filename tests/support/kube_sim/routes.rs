//! Request routing: the URL layout of the Kubernetes API (`/api/v1/...`, `/apis/g/v/...`,
//! `namespaces/{ns}/{resource}/{name}/{subresource}`, legacy `/watch/` paths), the verb a request
//! maps to for authorization, and the query parameters of list and watch. Pure parsing.

use super::super::http_server::{HttpRequest, percent_decode};
use super::resources::Registry;
use super::selectors::{FieldSelector, LabelSelector};

/// What a path addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Version,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    GroupVersion(String, String),
    /// `/healthz`, `/livez`, `/readyz`
    Health,
    /// `/openapi/v3`
    OpenApiIndex,
    /// `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`
    OpenApi(String, String),
    Resource(ResourcePath),
    /// A group-version we serve but a resource we do not.
    NoResource,
    /// Anything else: a plain-text 404 like the real server's.
    Unknown,
}

/// A resource path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Came through the deprecated `/watch/` prefix.
    pub watch_path: bool,
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(&s.replace('+', "%2B")))
        .collect()
}

/// Routes `path` against the served types.
pub fn route(path: &str, registry: &Registry) -> Route {
    let segs = segments(path);
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", "api", "v1"] => Route::OpenApi(String::new(), "v1".into()),
        ["openapi", "v3", "apis", group, version]
            if registry.serves_group_version(group, version) =>
        {
            Route::OpenApi(group.to_string(), version.to_string())
        }
        ["api"] => Route::CoreVersions,
        ["api", "v1"] => Route::GroupVersion(String::new(), "v1".into()),
        ["api", "v1", rest @ ..] => resource("", "v1", rest, registry),
        ["apis"] => Route::Groups,
        ["apis", group] if registry.all().any(|t| t.group == *group) => {
            Route::Group(group.to_string())
        }
        ["apis", group, version] if registry.serves_group_version(group, version) => {
            Route::GroupVersion(group.to_string(), version.to_string())
        }
        ["apis", group, version, rest @ ..] if registry.serves_group_version(group, version) => {
            resource(group, version, rest, registry)
        }
        _ => Route::Unknown,
    }
}

fn resource(group: &str, version: &str, rest: &[&str], registry: &Registry) -> Route {
    let (watch_path, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let has = |plural: &str| registry.find(group, version, plural).is_some();
    let make = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: version.into(),
            namespace: ns.map(String::from),
            plural: plural.into(),
            name: name.map(|n| n.to_string()),
            subresource: sub.map(|n| n.to_string()),
            watch_path,
        })
    };
    match rest {
        [] => Route::NoResource,
        ["namespaces", ns, plural, tail @ ..] if group.is_empty() || has(plural) => {
            if group.is_empty() && !has(plural) && tail.is_empty() {
                // `/api/v1/namespaces/{name}/status` and `/finalize`.
                return make(None, "namespaces", Some(ns), Some(plural));
            }
            if tail.len() > 2 || !has(plural) {
                return Route::NoResource;
            }
            make(Some(ns), plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] if has(plural) && tail.len() <= 2 => {
            make(None, plural, tail.first(), tail.get(1))
        }
        _ => Route::NoResource,
    }
}

/// The authorization verb of a resource request.
pub fn verb(method: &str, has_name: bool, watch: bool) -> &'static str {
    match (method, has_name) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "get",
        ("GET" | "HEAD", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

/// Whether the query asks for a watch.
pub fn wants_watch(req: &HttpRequest, path: &ResourcePath) -> bool {
    path.watch_path
        || req
            .query_param("watch")
            .is_some_and(|v| v == "true" || v == "1")
}

/// The query parameters of list and watch, parsed.
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub label_text: String,
    pub field_text: String,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub allow_bookmarks: bool,
    pub timeout_secs: Option<u64>,
    pub send_initial_events: bool,
}

/// Parses list/watch parameters; `Err` is the 400 message.
pub fn list_params(
    req: &HttpRequest,
    supported_fields: &[String],
    custom: bool,
) -> Result<ListParams, String> {
    let mut p = ListParams::default();
    for (k, v) in req.query_pairs() {
        match k.as_str() {
            "labelSelector" => {
                p.labels = LabelSelector::parse(&v)?;
                p.label_text = v;
            }
            "fieldSelector" => {
                p.fields = FieldSelector::parse(&v, supported_fields, custom)?;
                p.field_text = v;
            }
            "limit" => {
                let n: i64 = v.parse().map_err(|_| format!("invalid limit: {v:?}"))?;
                p.limit = (n > 0).then_some(n as usize);
            }
            "continue" if !v.is_empty() => p.continue_token = Some(v),
            "resourceVersion" if !v.is_empty() => p.resource_version = Some(v),
            "resourceVersionMatch" if !v.is_empty() => {
                if !matches!(v.as_str(), "Exact" | "NotOlderThan") {
                    return Err(format!(
                        "resourceVersionMatch: Unsupported value: \"{v}\": supported values: \"Exact\", \"NotOlderThan\""
                    ));
                }
                p.resource_version_match = Some(v);
            }
            "allowWatchBookmarks" => p.allow_bookmarks = v == "true" || v == "1",
            "timeoutSeconds" => {
                p.timeout_secs = Some(
                    v.parse()
                        .map_err(|_| format!("invalid timeoutSeconds: {v:?}"))?,
                )
            }
            "sendInitialEvents" => p.send_initial_events = v == "true" || v == "1",
            _ => {}
        }
    }
    if p.continue_token.is_some() && p.resource_version.is_some() {
        return Err("specifying resource version is not allowed when using continue".into());
    }
    if p.resource_version_match.is_some() && p.resource_version.is_none() && !p.send_initial_events
    {
        return Err("resourceVersionMatch is forbidden unless resourceVersion is provided".into());
    }
    if p.resource_version_match.as_deref() == Some("Exact")
        && p.resource_version.as_deref() == Some("0")
    {
        return Err("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(
        group: &str,
        ns: Option<&str>,
        plural: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Route {
        Route::Resource(ResourcePath {
            group: group.into(),
            version: "v1".into(),
            namespace: ns.map(String::from),
            plural: plural.into(),
            name: name.map(String::from),
            subresource: sub.map(String::from),
            watch_path: false,
        })
    }

    #[test]
    fn paths_route_like_the_apiserver() {
        let r = Registry::new();
        let cases = [
            ("/version", Route::Version),
            ("/api", Route::CoreVersions),
            ("/apis", Route::Groups),
            ("/apis/batch", Route::Group("batch".into())),
            ("/api/v1", Route::GroupVersion("".into(), "v1".into())),
            (
                "/apis/batch/v1",
                Route::GroupVersion("batch".into(), "v1".into()),
            ),
            ("/api/v1/pods", res("", None, "pods", None, None)),
            (
                "/api/v1/namespaces",
                res("", None, "namespaces", None, None),
            ),
            (
                "/api/v1/namespaces/ci",
                res("", None, "namespaces", Some("ci"), None),
            ),
            (
                "/api/v1/namespaces/ci/status",
                res("", None, "namespaces", Some("ci"), Some("status")),
            ),
            (
                "/api/v1/namespaces/ci/pods",
                res("", Some("ci"), "pods", None, None),
            ),
            (
                "/api/v1/namespaces/ci/pods/p/status",
                res("", Some("ci"), "pods", Some("p"), Some("status")),
            ),
            (
                "/apis/batch/v1/namespaces/ci/jobs/j",
                res("batch", Some("ci"), "jobs", Some("j"), None),
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Aa",
                res(
                    "rbac.authorization.k8s.io",
                    None,
                    "clusterroles",
                    Some("system:a"),
                    None,
                ),
            ),
            ("/apis/batch/v1/widgets", Route::NoResource),
            ("/apis/batch/v2/jobs", Route::Unknown),
            ("/apis/scalr.io/v1/things", Route::Unknown),
            ("/openapi/v2", Route::Unknown),
            ("/openapi/v3", Route::OpenApiIndex),
            (
                "/openapi/v3/apis/batch/v1",
                Route::OpenApi("batch".into(), "v1".into()),
            ),
            ("/openapi/v3/apis/scalr.io/v1", Route::Unknown),
        ];
        for (path, want) in cases {
            assert_eq!(route(path, &r), want, "{path}");
        }
        let Route::Resource(p) = route("/api/v1/watch/namespaces/ci/pods", &r) else {
            panic!("a watch path routes to the resource");
        };
        assert!(p.watch_path);
        assert_eq!(p.plural, "pods");
    }

    #[test]
    fn verbs() {
        assert_eq!(verb("GET", false, true), "watch");
        assert_eq!(verb("GET", true, false), "get");
        assert_eq!(verb("GET", false, false), "list");
        assert_eq!(verb("DELETE", false, false), "deletecollection");
        assert_eq!(verb("PATCH", true, false), "patch");
    }
}
