//! Typed calls on one resource type in one namespace: [`Api<K>`] for any k8s-openapi type (Jobs,
//! Pods, Secrets, Events, Leases, SelfSubjectAccessReviews) and for [`super::AgentTaskTemplate`].
//!
//! get, list (label and field selectors, `limit`/`continue` paging), create, replace, JSON merge
//! patch, delete (propagation policy, uid precondition), the status subresource, and watch, whose
//! [`WatchStream`] yields the raw events of one HTTP stream (the state machine around it is in
//! [`super::watch`]). Bodies are JSON. Blocking; `Api` is `Clone + Send + Sync`.

use std::io::{BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent as RawEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::client::{Body, Client};
use super::error::KubeError;
use super::resource::{ApiResource, KubeObject, ObjectList, Scope, WireList, encode};

/// Longest line (one watch event) a watch stream accepts: 16 MiB.
pub const MAX_WATCH_EVENT_BYTES: u64 = 16 * 1024 * 1024;

/// The server-side watch timeout kube-rs and client-go use (about five minutes).
pub const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(290);

/// How much longer than `timeoutSeconds` a read may block before the stream counts as dead.
pub const DEFAULT_WATCH_READ_MARGIN: Duration = Duration::from_secs(30);

/// Options of a list call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    /// `labelSelector`, e.g. `app.kubernetes.io/instance=agent,scalr.io/task-id`.
    pub label_selector: Option<String>,
    /// `fieldSelector`, e.g. `involvedObject.name=job-1`.
    pub field_selector: Option<String>,
    /// `limit`: page size; the answer carries a continue token when more remain.
    pub limit: Option<u32>,
    /// `continue`: the token from the previous page.
    pub continue_token: Option<String>,
}

impl ListParams {
    /// Selects by labels.
    pub fn labels(selector: &str) -> Self {
        ListParams {
            label_selector: Some(selector.to_string()),
            ..ListParams::default()
        }
    }

    /// Adds a field selector.
    pub fn fields(mut self, selector: &str) -> Self {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// Options of a watch call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchParams {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// Watch changes after this version (from a list or the last event).
    pub resource_version: String,
    /// `timeoutSeconds`: the server ends the stream after this long. Default 290 s.
    pub timeout: Duration,
    /// Extra time a single read may block beyond `timeout`. Default 30 s.
    pub read_margin: Duration,
    /// `allowWatchBookmarks`. Default true.
    pub bookmarks: bool,
}

impl Default for WatchParams {
    fn default() -> Self {
        WatchParams {
            label_selector: None,
            field_selector: None,
            resource_version: String::new(),
            timeout: DEFAULT_WATCH_TIMEOUT,
            read_margin: DEFAULT_WATCH_READ_MARGIN,
            bookmarks: true,
        }
    }
}

/// What happens to an object's dependents on delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the garbage collector removes dependents afterwards.
    Background,
    /// Dependents first, then the object.
    Foreground,
    /// Leave dependents.
    Orphan,
}

/// Options of a delete call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteParams {
    /// `propagationPolicy`; the server's default (for Jobs: orphan pods) when unset.
    pub propagation: Option<Propagation>,
    /// Delete only if the object still has this uid (`preconditions.uid`); else 409 Conflict.
    pub uid: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period_secs: Option<i64>,
}

impl DeleteParams {
    /// Background propagation: what `kubectl delete` does for Jobs.
    pub fn background() -> Self {
        DeleteParams {
            propagation: Some(Propagation::Background),
            ..DeleteParams::default()
        }
    }

    /// Adds a uid precondition.
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_string());
        self
    }

    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(p) = self.propagation {
            body["propagationPolicy"] = match p {
                Propagation::Background => "Background",
                Propagation::Foreground => "Foreground",
                Propagation::Orphan => "Orphan",
            }
            .into();
        }
        if let Some(uid) = &self.uid {
            body["preconditions"] = serde_json::json!({ "uid": uid });
        }
        if let Some(secs) = self.grace_period_secs {
            body["gracePeriodSeconds"] = secs.into();
        }
        body
    }
}

/// A query string under construction.
#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn push(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            self.0.push(format!("{key}={}", encode(value)));
        }
    }

    fn append_to(self, path: String) -> String {
        if self.0.is_empty() {
            path
        } else {
            format!("{path}?{}", self.0.join("&"))
        }
    }
}

/// The list query for `params`.
pub(crate) fn list_query(params: &ListParams) -> String {
    let mut q = Query::default();
    q.push("labelSelector", params.label_selector.as_deref());
    q.push("fieldSelector", params.field_selector.as_deref());
    q.push("limit", params.limit.map(|l| l.to_string()).as_deref());
    q.push("continue", params.continue_token.as_deref());
    q.append_to(String::new())
}

/// The watch query for `params`.
pub(crate) fn watch_query(params: &WatchParams) -> String {
    let mut q = Query::default();
    q.push("watch", Some("true"));
    q.push("labelSelector", params.label_selector.as_deref());
    q.push("fieldSelector", params.field_selector.as_deref());
    q.push("resourceVersion", Some(params.resource_version.as_str()));
    q.push("allowWatchBookmarks", params.bookmarks.then_some("true"));
    q.push(
        "timeoutSeconds",
        Some(&params.timeout.as_secs().max(1).to_string()),
    );
    q.append_to(String::new())
}

/// Typed access to one resource type, in one namespace or cluster-wide.
pub struct Api<K> {
    client: Client,
    resource: ApiResource,
    namespace: Option<String>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for Api<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("resource", &self.resource)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl<K: KubeObject> Api<K> {
    /// Objects of a namespaced type in `namespace`.
    pub fn namespaced(client: &Client, namespace: &str) -> Self
    where
        K: k8s_openapi::Resource,
        K::Scope: Scope,
    {
        Self::with_resource(client, ApiResource::of::<K>(), Some(namespace))
    }

    /// Objects in the client's configured namespace.
    pub fn default_namespaced(client: &Client) -> Self
    where
        K: k8s_openapi::Resource,
        K::Scope: Scope,
    {
        let namespace = client.namespace().to_string();
        Self::namespaced(client, &namespace)
    }

    /// A cluster-scoped type, or every namespace of a namespaced one (list and watch only).
    pub fn all(client: &Client) -> Self
    where
        K: k8s_openapi::Resource,
        K::Scope: Scope,
    {
        Self::with_resource(client, ApiResource::of::<K>(), None)
    }

    /// Any resource described at run time, decoded as `K`.
    pub fn with_resource(client: &Client, resource: ApiResource, namespace: Option<&str>) -> Self {
        Api {
            client: client.clone(),
            resource,
            namespace: namespace.map(str::to_string),
            _kind: PhantomData,
        }
    }

    /// The resource this handle addresses.
    pub fn resource(&self) -> &ApiResource {
        &self.resource
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    fn path(&self, name: Option<&str>, subresource: Option<&str>) -> String {
        self.resource
            .path(self.namespace.as_deref(), name, subresource)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Body>,
    ) -> Result<T, KubeError> {
        let response = self.client.send(method, path, body.as_ref())?;
        // No body excerpt in the message: the body may be a Secret.
        serde_json::from_slice(&response.body).map_err(|e| KubeError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            detail: format!("{e} (in a {}-byte body)", response.body.len()),
        })
    }

    fn json_body<T: Serialize>(
        &self,
        value: &T,
        content_type: &'static str,
        method: &str,
        path: &str,
    ) -> Result<Option<Body>, KubeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| KubeError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            detail: format!("cannot encode the request body: {e}"),
        })?;
        Ok(Some(Body {
            bytes,
            content_type,
        }))
    }

    /// Reads one object.
    pub fn get(&self, name: &str) -> Result<K, KubeError> {
        self.call("GET", &self.path(Some(name), None), None)
    }

    /// Reads one object; `None` when it does not exist.
    pub fn get_opt(&self, name: &str) -> Result<Option<K>, KubeError> {
        match self.get(name) {
            Ok(object) => Ok(Some(object)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Lists one page.
    pub fn list(&self, params: &ListParams) -> Result<ObjectList<K>, KubeError> {
        let path = format!("{}{}", self.path(None, None), list_query(params));
        let list: WireList<K> = self.call("GET", &path, None)?;
        Ok(list.into())
    }

    /// Lists every page (following continue tokens, `params.limit` per page). The result holds
    /// all items and the resourceVersion of the snapshot. A 410 on a continue token (the snapshot
    /// was compacted) is returned as `Gone`: list again.
    pub fn list_all(&self, params: &ListParams) -> Result<ObjectList<K>, KubeError> {
        let mut page_params = params.clone();
        let mut all = self.list(&page_params)?;
        while let Some(token) = all.continue_token.take() {
            page_params.continue_token = Some(token);
            let page = self.list(&page_params)?;
            all.items.extend(page.items);
            all.continue_token = page.continue_token;
            all.remaining_item_count = page.remaining_item_count;
            if !page.resource_version.is_empty() {
                all.resource_version = page.resource_version;
            }
        }
        Ok(all)
    }

    /// Creates an object (POST). `AlreadyExists` when the name is taken.
    pub fn create(&self, object: &K) -> Result<K, KubeError> {
        let path = self.path(None, None);
        let body = self.json_body(object, "application/json", "POST", &path)?;
        self.call("POST", &path, body)
    }

    /// Replaces an object (PUT). With `metadata.resourceVersion` set, `Conflict` when it changed.
    pub fn replace(&self, name: &str, object: &K) -> Result<K, KubeError> {
        let path = self.path(Some(name), None);
        let body = self.json_body(object, "application/json", "PUT", &path)?;
        self.call("PUT", &path, body)
    }

    /// Applies a JSON merge patch (RFC 7386, `application/merge-patch+json`).
    pub fn patch_merge(&self, name: &str, patch: &serde_json::Value) -> Result<K, KubeError> {
        self.patch_path(self.path(Some(name), None), patch)
    }

    fn patch_path(&self, path: String, patch: &serde_json::Value) -> Result<K, KubeError> {
        let body = self.json_body(patch, "application/merge-patch+json", "PATCH", &path)?;
        self.call("PATCH", &path, body)
    }

    /// Deletes an object. The server may answer with the object (still finalising) or a `Status`;
    /// both mean the deletion was accepted. `NotFound` when it is already gone, `Conflict` when the
    /// uid precondition failed.
    pub fn delete(&self, name: &str, params: &DeleteParams) -> Result<(), KubeError> {
        let path = self.path(Some(name), None);
        let body = self.json_body(&params.body(), "application/json", "DELETE", &path)?;
        self.client.send("DELETE", &path, body.as_ref()).map(|_| ())
    }

    /// Reads the status subresource.
    pub fn get_status(&self, name: &str) -> Result<K, KubeError> {
        self.call("GET", &self.path(Some(name), Some("status")), None)
    }

    /// Replaces the status subresource (the server ignores everything but `status`).
    pub fn replace_status(&self, name: &str, object: &K) -> Result<K, KubeError> {
        let path = self.path(Some(name), Some("status"));
        let body = self.json_body(object, "application/json", "PUT", &path)?;
        self.call("PUT", &path, body)
    }

    /// Merge-patches the status subresource.
    pub fn patch_status(&self, name: &str, patch: &serde_json::Value) -> Result<K, KubeError> {
        self.patch_path(self.path(Some(name), Some("status")), patch)
    }

    /// Opens one watch stream. Reads block up to `timeout + read_margin`. A 410 here means
    /// `resource_version` is too old: list again.
    pub fn watch(&self, params: &WatchParams) -> Result<WatchStream<K>, KubeError> {
        let path = format!("{}{}", self.path(None, None), watch_query(params));
        let response = self
            .client
            .stream(&path, params.timeout + params.read_margin)?;
        Ok(WatchStream {
            reader: BufReader::new(response.body),
            client: self.client.clone(),
            path,
            done: false,
            _kind: PhantomData,
        })
    }
}

/// The events of one watch response, in order; ends when the server closes the stream.
pub struct WatchStream<K> {
    reader: BufReader<Box<dyn Read + Send>>,
    client: Client,
    path: String,
    done: bool,
    _kind: PhantomData<fn() -> K>,
}

impl<K> WatchStream<K> {
    /// The request path (with its query), for logs.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl<K: DeserializeOwned> Iterator for WatchStream<K> {
    type Item = Result<RawEvent<K>, KubeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let mut line = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_WATCH_EVENT_BYTES + 1)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) if line.len() as u64 > MAX_WATCH_EVENT_BYTES => {
                    self.done = true;
                    return Some(Err(KubeError::Decode {
                        method: "GET".into(),
                        path: self.path.clone(),
                        detail: format!(
                            "a watch event is larger than {MAX_WATCH_EVENT_BYTES} bytes"
                        ),
                    }));
                }
                Ok(_) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(serde_json::from_slice(&line).map_err(|e| {
                        self.done = true;
                        KubeError::Decode {
                            method: "GET".into(),
                            path: self.path.clone(),
                            detail: format!("bad watch event ({} bytes): {e}", line.len()),
                        }
                    }));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.client.stream_error(&self.path, &e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_watch_queries() {
        assert_eq!(list_query(&ListParams::default()), "");
        let params = ListParams::labels("app=agent,scalr.io/task-id")
            .fields("status.phase=Failed")
            .limit(2);
        assert_eq!(
            list_query(&ListParams {
                continue_token: Some("abc=".into()),
                ..params
            }),
            "?labelSelector=app%3Dagent%2Cscalr.io%2Ftask-id&fieldSelector=status.phase%3DFailed&limit=2&continue=abc%3D"
        );
        let watch = WatchParams {
            label_selector: Some("a=b".into()),
            resource_version: "42".into(),
            timeout: Duration::from_secs(60),
            ..WatchParams::default()
        };
        assert_eq!(
            watch_query(&watch),
            "?watch=true&labelSelector=a%3Db&resourceVersion=42&allowWatchBookmarks=true&timeoutSeconds=60"
        );
    }

    #[test]
    fn delete_options_bodies() {
        assert_eq!(
            DeleteParams::default().body(),
            serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"})
        );
        let params = DeleteParams {
            grace_period_secs: Some(0),
            ..DeleteParams::background().uid("u-1")
        };
        assert_eq!(
            params.body(),
            serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1",
                "propagationPolicy": "Background", "preconditions": {"uid": "u-1"},
                "gracePeriodSeconds": 0})
        );
    }
}
