//! Deletion and the controllers that finish it: DELETE with preconditions and propagation policy
//! (finalizers `orphan` and `foregroundDeletion`), the garbage collector (dependents of deleted
//! owners, dangling ownerReferences), the namespace controller (a Terminating namespace empties, then
//! goes) and CRD cleanup (a deleted CRD takes its custom resources). The collector runs on its own
//! thread (`kube-sim-gc`), woken by every write, and works under the state lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::defaults::CRD_FINALIZER;
use super::objects;
use super::resources::{Propagation, ResourceType};
use super::state::{CRD_GR, Shared, State};
use super::status::{self, ApiError};
use super::store::ObjKey;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";

/// What a DELETE asked for.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub grace_period_secs: Option<i64>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body and the query parameters (query wins, like the server).
    pub fn parse(body: &[u8], query: &[(String, String)]) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions::default();
        if !body.is_empty() {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| status::bad_request(format!("invalid DeleteOptions: {e}")))?;
            o.propagation = v["propagationPolicy"].as_str().and_then(Propagation::parse);
            if v["orphanDependents"].as_bool() == Some(true) {
                o.propagation = Some(Propagation::Orphan);
            }
            o.precondition_uid = v["preconditions"]["uid"].as_str().map(String::from);
            o.precondition_rv = v["preconditions"]["resourceVersion"]
                .as_str()
                .map(String::from);
            o.grace_period_secs = v["gracePeriodSeconds"].as_i64();
            o.dry_run = v["dryRun"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "All"));
        }
        for (k, v) in query {
            match k.as_str() {
                "propagationPolicy" => {
                    o.propagation = Some(Propagation::parse(v).ok_or_else(|| {
                        status::bad_request(format!(
                            "propagationPolicy: Unsupported value: \"{v}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                        ))
                    })?)
                }
                "gracePeriodSeconds" => o.grace_period_secs = v.parse().ok(),
                "orphanDependents" if v == "true" => o.propagation = Some(Propagation::Orphan),
                "dryRun" if v == "All" => o.dry_run = true,
                _ => {}
            }
        }
        Ok(o)
    }
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

fn deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// DELETE of one object: preconditions, then at once, or pending behind finalizers.
pub fn delete_object(
    st: &mut State,
    rt: &ResourceType,
    version: &str,
    key: &ObjKey,
    opts: &DeleteOptions,
    graceful_pods: bool,
) -> Result<(u16, Value), ApiError> {
    let name = key.2.as_str();
    let old = st
        .store
        .get(key)
        .cloned()
        .ok_or_else(|| status::not_found(&rt.group, &rt.plural, name))?;
    let uid = old["metadata"]["uid"].as_str().unwrap_or("").to_string();
    if let Some(want) = &opts.precondition_uid
        && *want != uid
    {
        return Err(status::conflict_because(
            &rt.group,
            &rt.plural,
            name,
            &format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        ));
    }
    let rv = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if let Some(want) = &opts.precondition_rv
        && want != rv
    {
        return Err(status::conflict_because(
            &rt.group,
            &rt.plural,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}"
            ),
        ));
    }
    let policy = opts.propagation.unwrap_or(rt.default_propagation);
    let mut obj = old.clone();
    let mut fins = finalizers(&old);
    match policy {
        Propagation::Foreground if !fins.iter().any(|f| f == FOREGROUND) => {
            fins.push(FOREGROUND.into())
        }
        Propagation::Orphan if !fins.iter().any(|f| f == ORPHAN) => fins.push(ORPHAN.into()),
        _ => {}
    }
    let graceful = graceful_pods
        && rt.plural == "pods"
        && old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
        && opts.grace_period_secs != Some(0);
    let namespace_pending = rt.plural == "namespaces";
    let pending = !fins.is_empty() || graceful || namespace_pending;
    if pending {
        if !deleting(&old) {
            let grace = if graceful {
                opts.grace_period_secs
                    .or(old["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            } else {
                0
            };
            obj["metadata"]["deletionTimestamp"] = json!(objects::now());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
        if !fins.is_empty() {
            obj["metadata"]["finalizers"] = json!(fins);
        }
        if namespace_pending {
            obj["status"]["phase"] = json!("Terminating");
        }
        if opts.dry_run || obj == old {
            return Ok((200, objects::served(rt, version, obj)));
        }
        let stored = st.write_update(key.clone(), obj);
        return Ok((200, objects::served(rt, version, stored)));
    }
    let gone = if opts.dry_run {
        old
    } else {
        st.write_remove(key)
            .expect("the object was read under the same lock")
    };
    if rt.return_deleted {
        Ok((200, objects::served(rt, version, gone)))
    } else {
        Ok((
            200,
            status::delete_success(&rt.group, &rt.plural, name, &uid),
        ))
    }
}

/// How an ownerReference's owner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Absent,
    Live,
    Foreground,
    Orphaning,
    Deleting,
}

/// A change the collector decided on.
#[derive(Debug)]
enum Action {
    /// Delete with this propagation (a doomed dependent, a Terminating namespace's content).
    Delete(ObjKey, Propagation),
    /// Replace the ownerReferences (dangling or orphaning owners dropped).
    SetOwners(ObjKey, Vec<Value>),
    /// Remove one finalizer; the object goes if it was the last.
    RemoveFinalizer(ObjKey, &'static str),
    /// Remove the object (an emptied namespace).
    Remove(ObjKey),
}

fn owner_state(owner: &Value) -> Owner {
    let fins = finalizers(owner);
    if !deleting(owner) {
        Owner::Live
    } else if fins.iter().any(|f| f == FOREGROUND) {
        Owner::Foreground
    } else if fins.iter().any(|f| f == ORPHAN) {
        Owner::Orphaning
    } else {
        Owner::Deleting
    }
}

/// What the collector would do now, computed without writing (first the dependents, then the
/// objects waiting on finalizers).
fn plan(st: &State) -> Vec<Action> {
    let store = &st.store;
    let by_uid: HashMap<&str, (&ObjKey, &Value)> = store
        .iter()
        .filter_map(|(k, v)| v["metadata"]["uid"].as_str().map(|u| (u, (k, v))))
        .collect();
    let mut actions = Vec::new();
    // Dependents of absent or departing owners; and who depends on whom, for the second step.
    let mut dependents: HashMap<&str, Vec<bool>> = HashMap::new();
    for (key, obj) in store.iter() {
        let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else {
            continue;
        };
        for r in refs {
            if let Some(uid) = r["uid"].as_str() {
                let blocking = r["blockOwnerDeletion"].as_bool() == Some(true);
                dependents.entry(uid).or_default().push(blocking);
            }
        }
        if refs.is_empty() || deleting(obj) {
            continue;
        }
        let states: Vec<Owner> = refs
            .iter()
            .map(|r| match by_uid.get(r["uid"].as_str().unwrap_or("")) {
                Some((owner_key, owner)) if owner_key.1.is_empty() || owner_key.1 == key.1 => {
                    owner_state(owner)
                }
                _ => Owner::Absent,
            })
            .collect();
        if states
            .iter()
            .all(|s| matches!(s, Owner::Absent | Owner::Foreground))
        {
            let policy = if states.contains(&Owner::Foreground) {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            actions.push(Action::Delete(key.clone(), policy));
            continue;
        }
        let keep: Vec<Value> = refs
            .iter()
            .zip(&states)
            .filter(|(_, s)| matches!(s, Owner::Live | Owner::Deleting))
            .map(|(r, _)| r.clone())
            .collect();
        if keep.len() != refs.len() {
            actions.push(Action::SetOwners(key.clone(), keep));
        }
    }
    if !actions.is_empty() {
        return actions;
    }
    // Owners, namespaces and CRDs waiting on their finalizers.
    for (key, obj) in store.iter().filter(|(_, o)| deleting(o)) {
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
        let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        let fins = finalizers(obj);
        if fins.iter().any(|f| f == ORPHAN) && deps.is_empty() {
            return vec![Action::RemoveFinalizer(key.clone(), ORPHAN)];
        }
        if fins.iter().any(|f| f == FOREGROUND) && !deps.iter().any(|b| *b) {
            return vec![Action::RemoveFinalizer(key.clone(), FOREGROUND)];
        }
        let contents: Vec<(ObjKey, bool)> = if key.0 == "namespaces" {
            store
                .iter()
                .filter(|(k, _)| k.1 == key.2)
                .map(|(k, o)| (k.clone(), deleting(o)))
                .collect()
        } else if key.0 == CRD_GR && fins.iter().any(|f| f == CRD_FINALIZER) {
            store
                .list(&key.2, None)
                .map(|(k, o)| (k.clone(), deleting(o)))
                .collect()
        } else {
            continue;
        };
        if contents.is_empty() {
            return vec![if key.0 == "namespaces" {
                Action::Remove(key.clone())
            } else {
                Action::RemoveFinalizer(key.clone(), CRD_FINALIZER)
            }];
        }
        let doomed: Vec<Action> = contents
            .into_iter()
            .filter(|(_, already)| !already)
            .map(|(k, _)| Action::Delete(k, Propagation::Background))
            .collect();
        if !doomed.is_empty() {
            return doomed;
        }
    }
    Vec::new()
}

fn remove_finalizer(st: &mut State, key: &ObjKey, finalizer: &str) {
    let Some(mut obj) = st.store.get(key).cloned() else {
        return;
    };
    let fins: Vec<String> = finalizers(&obj)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    let empty = fins.is_empty();
    obj["metadata"]["finalizers"] = json!(fins);
    if empty && let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("finalizers");
    }
    st.write_update(key.clone(), obj);
    let namespace_held = key.0 == "namespaces";
    if empty && !namespace_held {
        st.write_remove(key);
    }
}

fn delete_quietly(st: &mut State, key: &ObjKey, policy: Propagation, graceful_pods: bool) {
    let Some(rt) = st.registry.by_gr(&key.0).cloned() else {
        st.write_remove(key);
        return;
    };
    let opts = DeleteOptions {
        propagation: Some(policy),
        ..DeleteOptions::default()
    };
    let _ = delete_object(st, &rt, &rt.versions[0].clone(), key, &opts, graceful_pods);
}

/// One collection pass; true when it changed something (run again until it does not).
pub fn collect(st: &mut State, graceful_pods: bool) -> bool {
    let before = st.store.rv();
    for action in plan(st) {
        match action {
            Action::Delete(key, policy) => delete_quietly(st, &key, policy, graceful_pods),
            Action::SetOwners(key, refs) => {
                if let Some(mut obj) = st.store.get(&key).cloned() {
                    obj["metadata"]["ownerReferences"] = json!(refs);
                    st.write_update(key, obj);
                }
            }
            Action::RemoveFinalizer(key, finalizer) => remove_finalizer(st, &key, finalizer),
            Action::Remove(key) => {
                st.write_remove(&key);
            }
        }
    }
    st.store.rv() != before
}

/// Whether the writes after `seen` can give the collector work: deletes, objects being deleted,
/// objects whose owners are not all live. Plain writes and dependents of live owners (most
/// traffic) cannot, and skip the full pass.
fn relevant_since(st: &State, seen: u64) -> bool {
    let owner_live = |dependent_ns: &str, r: &Value| -> bool {
        let api_version = r["apiVersion"].as_str().unwrap_or("");
        let kind = r["kind"].as_str().unwrap_or("");
        let Some(rt) = st.registry.by_kind(api_version, kind) else {
            return false;
        };
        let ns = if rt.namespaced { dependent_ns } else { "" };
        let key = (
            rt.gr(),
            ns.to_string(),
            r["name"].as_str().unwrap_or("").to_string(),
        );
        st.store
            .get(&key)
            .is_some_and(|o| o["metadata"]["uid"] == r["uid"] && !deleting(o))
    };
    match st.store.events_after(seen) {
        Err(_) => true,
        Ok(mut events) => events.any(|e| {
            e.kind == super::store::EventType::Deleted
                || deleting(&e.object)
                || e.object["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| !owner_live(&e.key.1, r)))
        }),
    }
}

/// The collector thread: a pass after every change until the simulator stops.
pub fn run(shared: Arc<Shared>) {
    let graceful = shared.options.graceful_pod_deletion;
    let mut seen = u64::MAX;
    let mut st = shared.lock();
    loop {
        if st.stopped {
            return;
        }
        let rv = st.store.rv();
        if rv != seen {
            let work = seen == u64::MAX || relevant_since(&st, seen);
            seen = rv;
            if work {
                let mut passes = 0;
                while passes < 1000 && collect(&mut st, graceful) {
                    passes += 1;
                }
                seen = st.store.rv();
                if seen != rv {
                    shared.notify();
                }
                continue;
            }
        }
        st = shared.wait(st, Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::KubeSimOptions;
    use super::*;

    fn state_with(objs: &[(&str, &str, Value)]) -> State {
        let mut st = State::new(&KubeSimOptions::default());
        for (gr, name, obj) in objs {
            st.write_create((gr.to_string(), "ns".into(), name.to_string()), obj.clone());
        }
        st
    }

    fn owned(uid: &str, owner_uid: &str, block: bool) -> Value {
        json!({"metadata": {"uid": uid, "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": owner_uid, "blockOwnerDeletion": block}]}})
    }

    fn settle(st: &mut State) {
        while collect(st, false) {}
    }

    #[test]
    fn background_deletes_dependents_and_foreground_waits_for_them() {
        let job = || json!({"metadata": {"uid": "j1"}});
        let mut st = state_with(&[
            ("jobs.batch", "j", job()),
            ("secrets", "s", owned("s1", "j1", true)),
            ("pods", "p", owned("p1", "j1", false)),
        ]);
        let rt = st.registry.resolve("jobs").cloned().expect("builtin");
        let key: ObjKey = ("jobs.batch".into(), "ns".into(), "j".into());
        let opts = DeleteOptions {
            propagation: Some(Propagation::Foreground),
            ..DeleteOptions::default()
        };
        let (_, pending) = delete_object(&mut st, &rt, "v1", &key, &opts, false).expect("deletes");
        assert_eq!(pending["metadata"]["finalizers"], json!([FOREGROUND]));
        assert!(
            st.store.get(&key).is_some(),
            "foreground keeps the owner until dependents go"
        );
        settle(&mut st);
        assert_eq!(st.store.iter().count(), 0, "dependents then owner are gone");

        let mut st = state_with(&[
            ("jobs.batch", "j", job()),
            ("secrets", "s", owned("s1", "j1", true)),
        ]);
        let (_, gone) = delete_object(&mut st, &rt, "v1", &key, &DeleteOptions::default(), false)
            .expect("deletes");
        assert_eq!(
            gone["metadata"]["finalizers"],
            json!([ORPHAN]),
            "batch/v1 jobs orphan by default"
        );
        settle(&mut st);
        let secret = st
            .store
            .get(&("secrets".into(), "ns".into(), "s".into()))
            .expect("orphaned, not deleted");
        assert_eq!(secret["metadata"]["ownerReferences"], json!([]));
        assert!(st.store.get(&key).is_none());

        let mut st = state_with(&[("secrets", "s", owned("s1", "missing", false))]);
        settle(&mut st);
        assert_eq!(
            st.store.iter().count(),
            0,
            "a dangling dependent is collected"
        );
    }

    #[test]
    fn delete_preconditions() {
        let mut st = state_with(&[("secrets", "s", json!({"metadata": {"uid": "u"}}))]);
        let rt = st.registry.resolve("secrets").cloned().expect("builtin");
        let key: ObjKey = ("secrets".into(), "ns".into(), "s".into());
        let wrong = DeleteOptions {
            precondition_uid: Some("other".into()),
            ..DeleteOptions::default()
        };
        let e = delete_object(&mut st, &rt, "v1", &key, &wrong, false).expect_err("uid differs");
        assert_eq!(e.reason(), "Conflict");
        let right = DeleteOptions {
            precondition_uid: Some("u".into()),
            ..DeleteOptions::default()
        };
        let (_, status) = delete_object(&mut st, &rt, "v1", &key, &right, false).expect("deletes");
        assert_eq!(status["status"], "Success");
        assert_eq!(status["details"]["uid"], "u");
    }
}
