//! What the apiserver does to an object between decoding and storage: envelope checks (kind,
//! apiVersion, namespace, name against the URL), server-set metadata (uid, creationTimestamp,
//! generation), per-kind defaults (Secret `stringData`, the Job selector, pod template defaults,
//! Namespace finalizers, CRD status), status-subresource rules, optimistic concurrency and
//! immutability on update. Pure: values in, values out; storage is the caller's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::defaults;
use super::resources::ResourceType;
use super::status::{self, ApiError, Cause};
use super::validate;

/// Now, as Kubernetes writes times (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (u64::from(std::process::id()) << 32);
    // splitmix64
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random version-4 UUID.
pub fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// The 5-character suffix of `generateName` (the apiserver's alphabet, no vowels).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

pub(super) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// Checks `kind`/`apiVersion`, the namespace and the name against the request, and fills them in.
pub fn check_envelope(
    rt: &ResourceType,
    version: &str,
    url_ns: Option<&str>,
    url_name: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(status::bad_request(format!(
            "the object provided is unrecognized (must be of type {})",
            rt.kind
        )));
    }
    let api_version = rt.api_version(version);
    if let Some(sent) = obj["apiVersion"].as_str()
        && sent != api_version
        && !(rt.custom && rt.versions.iter().any(|v| rt.api_version(v) == sent))
    {
        return Err(status::bad_request(format!(
            "the API version in the data ({sent}) does not match the expected API version ({api_version})"
        )));
    }
    if let Some(sent) = obj["kind"].as_str()
        && sent != rt.kind
    {
        return Err(status::bad_request(format!(
            "the kind in the data ({sent}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(rt.kind);
    let meta = meta_mut(obj);
    if rt.namespaced {
        match (meta.get("namespace").and_then(Value::as_str), url_ns) {
            (Some(sent), Some(url)) if !sent.is_empty() && sent != url => {
                return Err(status::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (_, Some(url)) => {
                meta.insert("namespace".into(), json!(url));
            }
            (_, None) => {}
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = url_name {
        match meta.get("name").and_then(Value::as_str) {
            Some(sent) if sent != url_name => {
                return Err(status::bad_request(format!(
                    "the name of the object ({sent}) does not match the name on the URL ({url_name})"
                )));
            }
            _ => {
                meta.insert("name".into(), json!(url_name));
            }
        }
    }
    Ok(())
}

/// Whether the resource keeps `metadata.generation`.
fn has_generation(rt: &ResourceType) -> bool {
    rt.custom
        || matches!(
            rt.plural.as_str(),
            "pods"
                | "jobs"
                | "deployments"
                | "poddisruptionbudgets"
                | "networkpolicies"
                | "customresourcedefinitions"
        )
}

fn invalid(rt: &ResourceType, obj: &Value, causes: Vec<Cause>) -> Result<(), ApiError> {
    if causes.is_empty() {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    Err(status::invalid(&rt.group, &rt.kind, name, &causes))
}

/// Prepares a client's object for creation. The resourceVersion is stamped by the store.
pub fn prepare_create(rt: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
    let meta = meta_mut(&mut obj);
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(status::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let name = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(status::invalid(
                    &rt.group,
                    &rt.kind,
                    "",
                    &[Cause::required(
                        "metadata.name",
                        "name or generateName is required",
                    )],
                ));
            }
        }
    }
    for server_set in [
        "uid",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
        "generation",
    ] {
        meta.remove(server_set);
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now()));
    if has_generation(rt) {
        meta.insert("generation".into(), json!(1));
    }
    if rt.status {
        let initial = match rt.plural.as_str() {
            "pods" | "persistentvolumeclaims" => json!({"phase": "Pending"}),
            "namespaces" => json!({"phase": "Active"}),
            _ => json!({}),
        };
        obj["status"] = initial;
    }
    defaults::apply(rt, &mut obj, true)?;
    validate_object(rt, &obj)?;
    Ok(obj)
}

/// The result of preparing an update.
#[derive(Debug)]
pub enum Updated {
    /// Nothing changed: no write, no event, the old resourceVersion stays.
    Unchanged(Value),
    /// The object to store.
    Changed(Value),
}

fn strip_for_compare(obj: &Value, keep_status: bool) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if !keep_status {
            m.remove("status");
        }
    }
    v
}

/// Prepares an update (PUT or the result of a PATCH) of `old` to `new`; `subresource` is `status`
/// for writes through `/status`. Checks the resourceVersion precondition and immutable fields.
pub fn prepare_update(
    rt: &ResourceType,
    old: &Value,
    mut new: Value,
    subresource: Option<&str>,
) -> Result<Updated, ApiError> {
    let name = old["metadata"]["name"].as_str().unwrap_or("").to_string();
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            return Err(status::conflict(&rt.group, &rt.plural, &name));
        }
        Some(rv) if !rv.is_empty() => {}
        _ if !rt.unconditional_update => {
            return Err(status::invalid(
                &rt.group,
                &rt.kind,
                &name,
                &[Cause::invalid(
                    "metadata.resourceVersion",
                    &json!("0x0"),
                    "must be specified for an update",
                )],
            ));
        }
        _ => {}
    }
    let old_uid = old["metadata"]["uid"].as_str().unwrap_or("");
    if let Some(uid) = new["metadata"]["uid"].as_str()
        && !uid.is_empty()
        && uid != old_uid
    {
        return Err(status::conflict_because(
            &rt.group,
            &rt.plural,
            &name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            ),
        ));
    }
    if subresource == Some("status") {
        let mut merged = old.clone();
        merged["status"] = new["status"].clone();
        new = merged;
    } else if rt.status {
        new["status"] = old["status"].clone();
    }
    {
        let old_meta = &old["metadata"];
        let meta = meta_mut(&mut new);
        for kept in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "generation",
        ] {
            match old_meta.get(kept) {
                Some(v) => meta.insert(kept.into(), v.clone()),
                None => meta.remove(kept),
            };
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
        if new["status"].is_null() {
            new.as_object_mut().expect("an object").remove("status");
        }
    }
    defaults::apply(rt, &mut new, false)?;
    invalid(rt, &new, validate::immutable_fields(&rt.plural, old, &new))?;
    if old["metadata"]["deletionTimestamp"].is_string() {
        let before: Vec<&Value> = old["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        let added = new["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| !before.contains(&f));
        if added {
            return Err(status::invalid(
                &rt.group,
                &rt.kind,
                &name,
                &[Cause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )],
            ));
        }
    }
    validate_object(rt, &new)?;
    if has_generation(rt) {
        let spec_changed =
            strip_for_compare(old, !rt.status) != strip_for_compare(&new, !rt.status);
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(if spec_changed {
            generation + 1
        } else {
            generation
        });
    }
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    if new == *old {
        return Ok(Updated::Unchanged(new));
    }
    Ok(Updated::Changed(new))
}

fn validate_object(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let mut causes = validate::object_name(&rt.plural, name);
    causes.extend(validate::metadata(&obj["metadata"], "metadata"));
    if !rt.custom {
        causes.extend(validate::kind_rules(&rt.plural, obj));
    }
    invalid(rt, obj, causes)
}

/// The object as served at `version`: custom resources carry the requested version.
pub fn served(rt: &ResourceType, version: &str, mut obj: Value) -> Value {
    if rt.custom {
        obj["apiVersion"] = json!(rt.api_version(version));
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::super::resources::Registry;
    use super::*;

    fn rt(name: &str) -> ResourceType {
        Registry::new().resolve(name).expect("builtin").clone()
    }

    #[test]
    fn uids_and_suffixes_look_real() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        assert_ne!(uid, new_uid());
        assert_eq!(random_suffix().len(), 5);
    }

    #[test]
    fn create_sets_metadata_defaults_and_the_job_selector() {
        let job = json!({"metadata": {"name": "j"}, "spec": {"template": {
            "metadata": {"labels": {"app": "a"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1"}]}}},
            "status": {"succeeded": 1}});
        let out = prepare_create(&rt("jobs"), job).expect("valid");
        let uid = out["metadata"]["uid"].as_str().expect("uid");
        assert_eq!(out["metadata"]["generation"], 1);
        assert_eq!(out["status"], json!({}));
        assert_eq!(out["metadata"]["labels"], json!({"app": "a"}));
        assert_eq!(
            out["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            uid
        );
        assert_eq!(
            out["spec"]["template"]["metadata"]["labels"]["job-name"],
            "j"
        );
        assert_eq!(out["spec"]["backoffLimit"], 6);
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );

        let secret = json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}});
        let out = prepare_create(&rt("secrets"), secret).expect("valid");
        assert_eq!(out["data"], json!({"k": "dg=="}));
        assert_eq!(out["type"], "Opaque");
        assert!(out["stringData"].is_null());
        assert!(out["metadata"]["generation"].is_null());

        let e = prepare_create(&rt("configmaps"), json!({"metadata": {}})).expect_err("no name");
        assert_eq!(e.code, 422);
        let generated = prepare_create(
            &rt("configmaps"),
            json!({"metadata": {"generateName": "x-"}}),
        )
        .expect("valid");
        assert_eq!(
            generated["metadata"]["name"].as_str().map(str::len),
            Some(7)
        );
    }

    #[test]
    fn update_checks_versions_keeps_status_and_bumps_generation() {
        let jobs = rt("jobs");
        let mut old = prepare_create(
            &jobs,
            json!({"metadata": {"name": "j"}, "spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}),
        )
        .expect("valid");
        old["metadata"]["resourceVersion"] = json!("5");
        old["status"] = json!({"active": 1});

        let mut stale = old.clone();
        stale["metadata"]["resourceVersion"] = json!("4");
        assert_eq!(
            prepare_update(&jobs, &old, stale, None)
                .expect_err("stale")
                .reason(),
            "Conflict"
        );

        let mut labelled = old.clone();
        labelled["metadata"]["labels"] = json!({"x": "y"});
        labelled["status"] = json!({});
        let Updated::Changed(out) = prepare_update(&jobs, &old, labelled, None).expect("valid")
        else {
            panic!("a label change is a change");
        };
        assert_eq!(out["status"], json!({"active": 1}));
        assert_eq!(out["metadata"]["generation"], 1);

        let mut parallel = old.clone();
        parallel["spec"]["parallelism"] = json!(2);
        let Updated::Changed(out) = prepare_update(&jobs, &old, parallel, None).expect("valid")
        else {
            panic!("a spec change is a change");
        };
        assert_eq!(out["metadata"]["generation"], 2);

        let mut status_only = old.clone();
        status_only["status"] = json!({"succeeded": 1});
        status_only["spec"]["parallelism"] = json!(3);
        let Updated::Changed(out) =
            prepare_update(&jobs, &old, status_only, Some("status")).expect("valid")
        else {
            panic!("a status change is a change");
        };
        assert_eq!(out["spec"]["parallelism"], 1);
        assert_eq!(out["status"], json!({"succeeded": 1}));

        assert!(matches!(
            prepare_update(&jobs, &old, old.clone(), None),
            Ok(Updated::Unchanged(_))
        ));
        let mut template = old.clone();
        template["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        assert_eq!(
            prepare_update(&jobs, &old, template, None)
                .expect_err("immutable")
                .code,
            422
        );
    }
}
