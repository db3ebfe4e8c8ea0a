//! Per-kind defaults the apiserver applies on every write, where clients rely on them: Secret
//! `stringData` folded into `data`, Namespace finalizers and name label, pod-spec defaults (also in
//! Job and Deployment templates), Deployment and Job spec defaults, the Job's generated selector and
//! labels, and a new CRD's accepted status. Pure.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::objects::{meta_mut, now};
use super::resources::ResourceType;
use super::status::{self, ApiError, Cause};

/// The CRD cleanup finalizer the apiextensions server adds.
pub const CRD_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Defaults for a pod spec: the fields the apiserver fills in that clients see come back.
fn pod_defaults(spec: &mut Value, restart_default: Option<&str>) {
    let Some(m) = spec.as_object_mut() else {
        return;
    };
    if let Some(r) = restart_default {
        m.entry("restartPolicy").or_insert(json!(r));
    }
    m.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    m.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    m.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    m.entry("securityContext").or_insert(json!({}));
    for list in ["initContainers", "containers"] {
        for c in m
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let latest =
                !image.rsplit('/').next().unwrap_or("").contains(':') || image.ends_with(":latest");
            let pull = if latest && !image.contains('@') {
                "Always"
            } else {
                "IfNotPresent"
            };
            c.entry("imagePullPolicy").or_insert(json!(pull));
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            c.entry("resources").or_insert(json!({}));
        }
    }
}

/// Applies the defaults of the resource's kind; `creating` adds what only creation sets.
pub fn apply(rt: &ResourceType, obj: &mut Value, creating: bool) -> Result<(), ApiError> {
    if rt.custom {
        return Ok(());
    }
    match rt.plural.as_str() {
        "secrets" => {
            let engine = base64::engine::general_purpose::STANDARD;
            for (k, v) in obj["data"].as_object().into_iter().flatten() {
                let ok = v.as_str().is_some_and(|s| engine.decode(s).is_ok());
                if !ok {
                    return Err(status::bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k}]"
                    )));
                }
            }
            if let Some(Value::Object(plain)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                if !obj["data"].is_object() {
                    obj["data"] = json!({});
                }
                for (k, v) in plain {
                    let s = v.as_str().unwrap_or("");
                    obj["data"][&k] = json!(engine.encode(s));
                }
            }
            if obj["type"].as_str().is_none_or(str::is_empty) {
                obj["type"] = json!("Opaque");
            }
        }
        "namespaces" => {
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if creating {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
        }
        "pods" => pod_defaults(&mut obj["spec"], Some("Always")),
        "deployments" => {
            let spec = &mut obj["spec"];
            if spec.is_object() {
                spec.as_object_mut()
                    .expect("checked")
                    .entry("replicas")
                    .or_insert(json!(1));
                spec.as_object_mut()
                    .expect("checked")
                    .entry("revisionHistoryLimit")
                    .or_insert(json!(10));
                spec.as_object_mut()
                    .expect("checked")
                    .entry("progressDeadlineSeconds")
                    .or_insert(json!(600));
                if spec["strategy"].is_null() {
                    spec["strategy"] = json!({"type": "RollingUpdate",
                        "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}});
                }
                pod_defaults(&mut spec["template"]["spec"], Some("Always"));
            }
        }
        "jobs" => job_defaults(obj, creating)?,
        "customresourcedefinitions" if creating => {
            let names = obj["spec"]["names"].clone();
            let storage: Vec<Value> = obj["spec"]["versions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect();
            let at = now();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": storage,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                     "message": "no conflicts found", "lastTransitionTime": at},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "message": "the initial names have been accepted", "lastTransitionTime": at},
                ],
            });
            let meta = meta_mut(obj);
            let finalizers = meta.entry("finalizers").or_insert(json!([]));
            if let Some(list) = finalizers.as_array_mut()
                && !list.contains(&json!(CRD_FINALIZER))
            {
                list.push(json!(CRD_FINALIZER));
            }
        }
        _ => {}
    }
    Ok(())
}

fn job_defaults(obj: &mut Value, creating: bool) -> Result<(), ApiError> {
    if !obj["spec"].is_object() {
        return Ok(());
    }
    let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    if creating
        && template_labels.as_object().is_some_and(|m| !m.is_empty())
        && obj["metadata"]["labels"]
            .as_object()
            .is_none_or(Map::is_empty)
    {
        obj["metadata"]["labels"] = template_labels;
    }
    {
        let spec = obj["spec"].as_object_mut().expect("checked above");
        if !spec.contains_key("parallelism") && !spec.contains_key("completions") {
            spec.insert("completions".into(), json!(1));
        }
        spec.entry("parallelism").or_insert(json!(1));
        spec.entry("backoffLimit").or_insert(json!(6));
        spec.entry("completionMode").or_insert(json!("NonIndexed"));
        spec.entry("suspend").or_insert(json!(false));
        let replacement = if spec.contains_key("podFailurePolicy") {
            "Failed"
        } else {
            "TerminatingOrFailed"
        };
        spec.entry("podReplacementPolicy")
            .or_insert(json!(replacement));
    }
    pod_defaults(&mut obj["spec"]["template"]["spec"], None);
    if !creating || obj["spec"]["manualSelector"].as_bool() == Some(true) {
        return Ok(());
    }
    let uid = obj["metadata"]["uid"].clone();
    let name = obj["metadata"]["name"].clone();
    let template = &mut obj["spec"]["template"];
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    let labels = template["metadata"]["labels"]
        .as_object_mut()
        .expect("labels were just made an object");
    for key in ["job-name", "batch.kubernetes.io/job-name"] {
        labels.entry(key).or_insert(name.clone());
    }
    for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        labels.entry(key).or_insert(uid.clone());
    }
    let generated = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let sent = obj["spec"]["selector"].clone();
    if !sent.is_null() && sent != generated {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        return Err(status::invalid(
            "batch",
            "Job",
            &name,
            &[Cause::invalid(
                "spec.selector",
                &sent,
                "`selector` not auto-generated",
            )],
        ));
    }
    obj["spec"]["selector"] = generated;
    Ok(())
}
