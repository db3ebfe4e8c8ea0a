//! The resource operations on the locked state: get, list (selectors, paging, resourceVersion
//! semantics), create, replace, patch (merge, JSON, strategic) and delete-collection. Called by the
//! dispatcher for HTTP requests and by `KubeSim`'s helpers; deletes live in `gc.rs`.

use base64::Engine;
use serde_json::{Value, json};

use super::gc::{self, DeleteOptions};
use super::objects::{self, Updated};
use super::patch;
use super::resources::ResourceType;
use super::routes::ListParams;
use super::state::State;
use super::status::{self, ApiError};
use super::store::ObjKey;

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource: status is kept from the stored object.
    Main,
    /// The `/status` subresource: only status changes.
    Status,
    /// Test helpers acting as controllers: everything as given.
    All,
}

/// The storage key of an object.
pub fn key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjKey {
    let ns = if rt.namespaced {
        namespace.unwrap_or("")
    } else {
        ""
    };
    (rt.gr(), ns.to_string(), name.to_string())
}

/// GET of one object.
pub fn get(
    st: &State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    st.store
        .get(&key(rt, ns, name))
        .map(|o| objects::served(rt, version, o.clone()))
        .ok_or_else(|| status::not_found(&rt.group, &rt.plural, name))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

fn encode_continue(t: &ContinueToken) -> String {
    let json = serde_json::to_vec(t).expect("a token always serializes");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_continue(s: &str) -> Result<ContinueToken, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| status::bad_request("continue key is not valid: illegal base64 data"))
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| status::bad_request(format!("invalid resource version: {s:?}")))
}

/// LIST: a consistent snapshot, filtered, paged with limit/continue.
pub fn list(
    st: &State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    p: &ListParams,
) -> Result<Value, ApiError> {
    let current = st.store.rv();
    let mut start_after: Option<(String, String)> = None;
    let at = if let Some(token) = &p.continue_token {
        let t = decode_continue(token)?;
        if t.rv < st.store.compacted() {
            return Err(status::continue_expired());
        }
        start_after = Some((t.ns, t.name));
        t.rv
    } else {
        match (
            p.resource_version.as_deref(),
            p.resource_version_match.as_deref(),
        ) {
            (Some(rv), Some("Exact")) => {
                let rv = parse_rv(rv)?;
                if rv > current {
                    return Err(status::too_large_resource_version(rv, current));
                }
                if rv < st.store.compacted() {
                    return Err(status::expired(rv, st.store.compacted()));
                }
                rv
            }
            (Some(rv), _) => {
                let rv = parse_rv(rv)?;
                if rv > current {
                    return Err(status::too_large_resource_version(rv, current));
                }
                current
            }
            (None, _) => current,
        }
    };
    let snapshot = st
        .store
        .snapshot(&rt.gr(), if rt.namespaced { ns } else { None }, at)
        .map_err(|oldest| status::expired(at, oldest))?;
    let matching: Vec<(ObjKey, Value)> = snapshot
        .into_iter()
        .filter(|(k, _)| {
            start_after
                .as_ref()
                .is_none_or(|(sn, sname)| (&k.1, &k.2) > (sn, sname))
        })
        .filter(|(_, o)| p.labels.matches(o) && p.fields.matches(o))
        .collect();
    let take = p.limit.unwrap_or(matching.len()).min(matching.len());
    let remaining = matching.len() - take;
    let mut meta = json!({"resourceVersion": at.to_string()});
    if remaining > 0 {
        let last = &matching[take - 1].0;
        meta["continue"] = json!(encode_continue(&ContinueToken {
            rv: at,
            ns: last.1.clone(),
            name: last.2.clone(),
        }));
        if p.labels.0.is_empty() && p.fields.0.is_empty() {
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    let items: Vec<Value> = matching
        .into_iter()
        .take(take)
        .map(|(_, o)| list_item(rt, version, o))
        .collect();
    Ok(json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version(version),
        "metadata": meta,
        "items": items,
    }))
}

/// Items of built-in lists carry no kind/apiVersion (typed lists omit them); custom ones do.
fn list_item(rt: &ResourceType, version: &str, obj: Value) -> Value {
    let mut obj = objects::served(rt, version, obj);
    if !rt.custom
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("kind");
        m.remove("apiVersion");
    }
    obj
}

fn check_namespace_open(
    st: &State,
    rt: &ResourceType,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    match st
        .store
        .get(&("namespaces".into(), String::new(), ns.to_string()))
    {
        None => Err(status::not_found("", "namespaces", ns)),
        Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
            let mut e = status::forbidden(
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    status::qualified(&rt.group, &rt.plural)
                ),
                status::details(&rt.group, &rt.plural, name),
            );
            e.body["details"]["causes"] = json!([{"reason": "NamespaceTerminating",
                "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]);
            Err(e)
        }
        Some(_) => Ok(()),
    }
}

/// POST: creates `body` in `ns`.
pub fn create(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    mut body: Value,
    scope: Scope,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if rt.namespaced && ns.is_none() {
        return Err(status::method_not_allowed());
    }
    objects::check_envelope(rt, version, ns, None, &mut body)?;
    let given_status = body.get("status").cloned();
    let mut obj = objects::prepare_create(rt, body)?;
    if scope == Scope::All
        && let Some(s) = given_status
    {
        obj["status"] = s;
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    check_namespace_open(st, rt, ns.unwrap_or(""), &name)?;
    let k = key(rt, ns, &name);
    if st.store.get(&k).is_some() {
        return Err(status::already_exists(&rt.group, &rt.plural, &name));
    }
    if dry_run {
        return Ok(objects::served(rt, version, obj));
    }
    let stored = st.write_create(k, obj);
    Ok(objects::served(rt, version, stored))
}

/// Stores the outcome of an update, deleting an object whose last finalizer went away.
fn commit(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    k: ObjKey,
    updated: Updated,
    dry_run: bool,
) -> Value {
    let obj = match updated {
        Updated::Unchanged(o) => return objects::served(rt, version, o),
        Updated::Changed(o) => o,
    };
    if dry_run {
        return objects::served(rt, version, obj);
    }
    let finalized = obj["metadata"]["deletionTimestamp"].is_string()
        && obj["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        && !(rt.plural == "namespaces"
            && obj["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty()))
        && !(rt.plural == "pods"
            && obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0);
    let stored = st.write_update(k.clone(), obj);
    if finalized {
        st.write_remove(&k);
    }
    objects::served(rt, version, stored)
}

/// PUT: replaces `name` with `body`.
#[allow(clippy::too_many_arguments)]
pub fn update(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    name: &str,
    mut body: Value,
    scope: Scope,
    dry_run: bool,
) -> Result<Value, ApiError> {
    objects::check_envelope(rt, version, ns, Some(name), &mut body)?;
    let k = key(rt, ns, name);
    let old = st
        .store
        .get(&k)
        .cloned()
        .ok_or_else(|| status::not_found(&rt.group, &rt.plural, name))?;
    let given_status = body.get("status").cloned();
    let sub = (scope == Scope::Status).then_some("status");
    let updated = objects::prepare_update(rt, &old, body, sub)?;
    let updated = match (scope, updated, given_status) {
        (Scope::All, Updated::Changed(mut o) | Updated::Unchanged(mut o), Some(s)) => {
            o["status"] = s;
            if o == old {
                Updated::Unchanged(o)
            } else {
                Updated::Changed(o)
            }
        }
        (_, u, _) => u,
    };
    Ok(commit(st, rt, version, k, updated, dry_run))
}

/// The patch types each kind of resource takes.
const CUSTOM_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
];
const BUILTIN_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];

/// PATCH: applies `body` (of `content_type`) to `name`.
#[allow(clippy::too_many_arguments)]
pub fn patch(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    name: &str,
    content_type: &str,
    body: &[u8],
    scope: Scope,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let accepted = if rt.custom {
        CUSTOM_PATCH_TYPES
    } else {
        BUILTIN_PATCH_TYPES
    };
    if !accepted.contains(&media) {
        return Err(status::unsupported_media_type(content_type, accepted));
    }
    let k = key(rt, ns, name);
    let old = st
        .store
        .get(&k)
        .cloned()
        .ok_or_else(|| status::not_found(&rt.group, &rt.plural, name))?;
    let patch_doc: Value = serde_json::from_slice(body)
        .map_err(|e| status::bad_request(format!("error decoding patch: {e}")))?;
    let target = objects::served(rt, version, old.clone());
    let mut patched = match media {
        "application/merge-patch+json" => {
            if !patch_doc.is_object() {
                return Err(status::bad_request(
                    "json: cannot unmarshal patch into an object",
                ));
            }
            patch::merge_patch(&target, &patch_doc)
        }
        "application/json-patch+json" => {
            patch::json_patch(&target, &patch_doc).map_err(status::unprocessable)?
        }
        _ => patch::strategic_merge(&target, &patch_doc).map_err(status::unprocessable)?,
    };
    objects::check_envelope(rt, version, ns, Some(name), &mut patched)?;
    let sub = (scope == Scope::Status).then_some("status");
    let updated = objects::prepare_update(rt, &old, patched, sub)?;
    Ok(commit(st, rt, version, k, updated, dry_run))
}

/// DELETE on a collection: deletes every matching object, answers the list of what it deleted.
pub fn delete_collection(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    p: &ListParams,
    opts: &DeleteOptions,
    graceful_pods: bool,
) -> Result<Value, ApiError> {
    let keys: Vec<ObjKey> = st
        .store
        .list(&rt.gr(), if rt.namespaced { ns } else { None })
        .filter(|(_, o)| p.labels.matches(o) && p.fields.matches(o))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for k in keys {
        let (_, obj) = gc::delete_object(st, rt, version, &k, opts, graceful_pods)?;
        if obj["kind"] != "Status" {
            items.push(list_item(rt, version, obj));
        }
    }
    Ok(json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version(version),
        "metadata": {"resourceVersion": st.store.rv().to_string()},
        "items": items,
    }))
}
