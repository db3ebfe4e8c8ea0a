//! Deletion and the controllers that finish it: DELETE with preconditions and propagation policy
//! (finalizers `orphan` and `foregroundDeletion`), the garbage collector (dependents of deleted
//! owners, dangling ownerReferences), the namespace controller (a Terminating namespace empties, then
//! goes) and CRD cleanup (a deleted CRD takes its custom resources). The collector runs on its own
//! thread (`kube-sim-gc`), woken by every write, and works under the state lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::objects::{self, CRD_FINALIZER};
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

fn remove_finalizer(st: &mut State, key: &ObjKey, obj: &Value, finalizer: &str) {
    let mut obj = obj.clone();
    let fins: Vec<String> = finalizers(&obj)
        .into_iter()
        .filter(|f| f != finalizer)
        .collect();
    let empty = fins.is_empty();
    obj["metadata"]["finalizers"] = json!(fins);
    if empty {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("finalizers");
        }
    }
    st.write_update(key.clone(), obj);
    let namespace_held = key.0 == "namespaces";
    if empty && !namespace_held {
        st.write_remove(key);
    }
}

fn delete_quietly(st: &mut State, key: &ObjKey, policy: Propagation, graceful_pods: bool) -> bool {
    let Some(rt) = st.registry.by_gr(&key.0).cloned() else {
        return st.write_remove(key).is_some();
    };
    let opts = DeleteOptions {
        propagation: Some(policy),
        ..DeleteOptions::default()
    };
    let before = st.store.rv();
    let _ = delete_object(st, &rt, &rt.versions[0].clone(), key, &opts, graceful_pods);
    st.store.rv() != before
}

/// One collection pass; true when it wrote something (run again until it does not).
pub fn collect(st: &mut State, graceful_pods: bool) -> bool {
    let objects: Vec<(ObjKey, Value)> = st
        .store
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let by_uid: HashMap<&str, (&ObjKey, &Value)> = objects
        .iter()
        .filter_map(|(k, v)| v["metadata"]["uid"].as_str().map(|u| (u, (k, v))))
        .collect();
    let mut changed = false;

    // Dependents of absent or departing owners.
    for (key, obj) in &objects {
        let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else {
            continue;
        };
        if refs.is_empty() || deleting(obj) {
            continue;
        }
        let states: Vec<Owner> = refs
            .iter()
            .map(|r| {
                let uid = r["uid"].as_str().unwrap_or("");
                match by_uid.get(uid) {
                    Some((owner_key, owner)) if owner_key.1.is_empty() || owner_key.1 == key.1 => {
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
                    _ => Owner::Absent,
                }
            })
            .collect();
        let doomed = states
            .iter()
            .all(|s| matches!(s, Owner::Absent | Owner::Foreground));
        if doomed {
            let policy = if states.contains(&Owner::Foreground) {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            changed |= delete_quietly(st, key, policy, graceful_pods);
            continue;
        }
        let keep: Vec<Value> = refs
            .iter()
            .zip(&states)
            .filter(|(_, s)| matches!(s, Owner::Live | Owner::Deleting))
            .map(|(r, _)| r.clone())
            .collect();
        if keep.len() != refs.len() {
            let mut updated = obj.clone();
            updated["metadata"]["ownerReferences"] = json!(keep);
            st.write_update(key.clone(), updated);
            changed = true;
        }
    }
    if changed {
        return true;
    }

    // Owners, namespaces and CRDs waiting on their finalizers.
    for (key, obj) in &objects {
        if !deleting(obj) {
            continue;
        }
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
        let dependents: Vec<&Value> = objects
            .iter()
            .filter(|(_, d)| {
                d["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
            })
            .map(|(_, d)| d)
            .collect();
        let fins = finalizers(obj);
        if fins.iter().any(|f| f == ORPHAN) && dependents.is_empty() {
            remove_finalizer(st, key, obj, ORPHAN);
            return true;
        }
        let blocking = dependents.iter().any(|d| {
            d["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == uid && r["blockOwnerDeletion"].as_bool() == Some(true))
        });
        if fins.iter().any(|f| f == FOREGROUND) && !blocking {
            remove_finalizer(st, key, obj, FOREGROUND);
            return true;
        }
        if key.0 == "namespaces" {
            let ns = key.2.clone();
            let contents: Vec<(ObjKey, bool)> = objects
                .iter()
                .filter(|(k, _)| k.1 == ns)
                .map(|(k, o)| (k.clone(), deleting(o)))
                .collect();
            if contents.is_empty() {
                st.write_remove(key);
                return true;
            }
            for (k, already) in contents {
                if !already {
                    changed |= delete_quietly(st, &k, Propagation::Background, graceful_pods);
                }
            }
            if changed {
                return true;
            }
        }
        if key.0 == CRD_GR && fins.iter().any(|f| f == CRD_FINALIZER) {
            let gr = key.2.clone();
            let instances: Vec<(ObjKey, bool)> = objects
                .iter()
                .filter(|(k, _)| k.0 == gr)
                .map(|(k, o)| (k.clone(), deleting(o)))
                .collect();
            if instances.is_empty() {
                remove_finalizer(st, key, obj, CRD_FINALIZER);
                return true;
            }
            for (k, already) in instances {
                if !already {
                    changed |= delete_quietly(st, &k, Propagation::Background, graceful_pods);
                }
            }
            if changed {
                return true;
            }
        }
    }
    changed
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
