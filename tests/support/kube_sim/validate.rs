//! Validation the apiserver does that clients run into: object names, labels, annotation size,
//! owner references, pod templates (containers, volumes, restart policy) and a few per-kind rules.
//! Pure: each check returns the 422 causes it finds, worded like the server's.

use serde_json::{Value, json};

use super::status::Cause;

const SUBDOMAIN_WHY: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric \
characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', \
regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_WHY: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex \
used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_WHY: &str = "a valid label must be an empty string or consist of alphanumeric \
characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  \
or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const NAME_PART_WHY: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and \
must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex \
used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// Largest total size of annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Largest Secret or ConfigMap payload.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why `s` is not a DNS-1123 subdomain, if it is not.
pub fn subdomain(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    if s.split('.').all(is_label) {
        None
    } else {
        Some(SUBDOMAIN_WHY.into())
    }
}

/// Why `s` is not a DNS-1123 label, if it is not.
pub fn label(s: &str) -> Option<String> {
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if is_label(s) {
        None
    } else {
        Some(LABEL_WHY.into())
    }
}

fn path_segment(s: &str) -> Option<String> {
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            return Some(format!("may not contain '{bad}'"));
        }
    }
    None
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Why `key` is not a qualified name (`prefix/name`), if it is not.
pub fn qualified_name(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(why) = subdomain(p) {
            return Some(format!("prefix part {why}"));
        }
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if is_name_part(name) {
        None
    } else {
        Some(NAME_PART_WHY.into())
    }
}

/// Why `v` is not a valid label value, if it is not.
pub fn label_value(v: &str) -> Option<String> {
    if v.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    if v.is_empty() || is_name_part(v) {
        None
    } else {
        Some(LABEL_VALUE_WHY.into())
    }
}

/// Checks `metadata.name` for resource `plural`.
pub fn object_name(plural: &str, name: &str) -> Vec<Cause> {
    let why = match plural {
        "namespaces" | "services" => label(name),
        "roles" | "rolebindings" | "clusterroles" | "clusterrolebindings" => path_segment(name),
        "jobs" if name.len() > 63 => Some("must be no more than 63 characters".into()),
        _ => subdomain(name),
    };
    why.map(|w| vec![Cause::invalid("metadata.name", &json!(name), &w)])
        .unwrap_or_default()
}

/// Checks labels, annotations and owner references under `metadata` (at `path`).
pub fn metadata(meta: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if let Some(why) = qualified_name(k) {
                causes.push(Cause::invalid(&format!("{path}.labels"), &json!(k), &why));
            }
            match v.as_str() {
                Some(s) => {
                    if let Some(why) = label_value(s) {
                        causes.push(Cause::invalid(&format!("{path}.labels"), v, &why));
                    }
                }
                None => causes.push(Cause::invalid(
                    &format!("{path}.labels"),
                    v,
                    "must be a string",
                )),
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            if let Some(why) = qualified_name(k) {
                causes.push(Cause::invalid(
                    &format!("{path}.annotations"),
                    &json!(k),
                    &why,
                ));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > MAX_ANNOTATIONS_BYTES {
            causes.push(Cause::too_long(
                &format!("{path}.annotations"),
                MAX_ANNOTATIONS_BYTES,
            ));
        }
    }
    if let Some(refs) = meta["ownerReferences"].as_array() {
        let mut controllers = 0;
        for (i, r) in refs.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if r[field].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(
                        &format!("{path}.ownerReferences[{i}].{field}"),
                        "",
                    ));
                }
            }
            if r["controller"].as_bool() == Some(true) {
                controllers += 1;
            }
        }
        if controllers > 1 {
            causes.push(Cause::invalid(
                &format!("{path}.ownerReferences"),
                &Value::Array(refs.clone()),
                "Only one reference can have Controller set to true",
            ));
        }
    }
    causes
}

/// Checks a pod spec at `path` (`spec`, `spec.template.spec`).
pub fn pod_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut volume_names = Vec::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or("");
        let field = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            causes.push(Cause::required(&field, ""));
        } else if let Some(why) = label(name) {
            causes.push(Cause::invalid(&field, &json!(name), &why));
        } else if volume_names.contains(&name) {
            causes.push(Cause::duplicate(&field, &json!(name)));
        }
        volume_names.push(name);
    }
    let containers = spec["containers"].as_array();
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(&format!("{path}.containers"), ""));
    }
    let mut names = Vec::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required(&format!("{at}.name"), ""));
            } else if let Some(why) = label(name) {
                causes.push(Cause::invalid(&format!("{at}.name"), &json!(name), &why));
            } else if names.contains(&name) {
                causes.push(Cause::duplicate(&format!("{at}.name"), &json!(name)));
            }
            names.push(name);
            if c["image"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(&format!("{at}.image"), ""));
            }
            for (j, m) in c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mount = m["name"].as_str().unwrap_or("");
                if !volume_names.contains(&mount) {
                    causes.push(Cause::not_found(
                        &format!("{at}.volumeMounts[{j}].name"),
                        &json!(mount),
                    ));
                }
                if m["mountPath"].as_str().is_none_or(str::is_empty) {
                    causes.push(Cause::required(
                        &format!("{at}.volumeMounts[{j}].mountPath"),
                        "",
                    ));
                }
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str()
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: format!("{path}.restartPolicy"),
            message: format!(
                "Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""
            ),
        });
    }
    causes
}

/// Per-kind checks of a whole object about to be stored.
pub fn kind_rules(plural: &str, obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    match plural {
        "pods" => pod_spec(spec, "spec"),
        "jobs" => {
            let mut causes = metadata(&spec["template"]["metadata"], "spec.template.metadata");
            causes.extend(pod_spec(&spec["template"]["spec"], "spec.template.spec"));
            let policy = spec["template"]["spec"]["restartPolicy"].as_str();
            if !matches!(policy, Some("Never" | "OnFailure")) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "spec.template.spec.restartPolicy".into(),
                    message: format!(
                        "Unsupported value: \"{}\": supported values: \"OnFailure\", \"Never\"",
                        policy.unwrap_or("Always")
                    ),
                });
            }
            causes
        }
        "deployments" => {
            let mut causes = metadata(&spec["template"]["metadata"], "spec.template.metadata");
            causes.extend(pod_spec(&spec["template"]["spec"], "spec.template.spec"));
            match spec["selector"]["matchLabels"].as_object() {
                None => causes.push(Cause::required("spec.selector", "")),
                Some(wanted) => {
                    let labels = &spec["template"]["metadata"]["labels"];
                    if wanted.iter().any(|(k, v)| &labels[k] != v) {
                        causes.push(Cause::invalid(
                            "spec.template.metadata.labels",
                            labels,
                            "`selector` does not match template `labels`",
                        ));
                    }
                }
            }
            causes
        }
        "secrets" | "configmaps" => {
            let mut causes = Vec::new();
            let mut total = 0;
            for field in ["data", "binaryData"] {
                for (k, v) in obj[field].as_object().into_iter().flatten() {
                    let ok = !k.is_empty()
                        && k.len() <= 253
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        causes.push(Cause::invalid(
                            &format!("{field}[{k}]"),
                            &json!(k),
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                        ));
                    }
                    total += k.len() + v.as_str().map_or(0, str::len);
                }
            }
            if total > MAX_DATA_BYTES * 4 / 3 {
                causes.push(Cause::too_long("data", MAX_DATA_BYTES));
            }
            causes
        }
        "customresourcedefinitions" => crd(obj),
        _ => Vec::new(),
    }
}

fn crd(obj: &Value) -> Vec<Cause> {
    let spec = &obj["spec"];
    let mut causes = Vec::new();
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if spec["names"]["kind"].as_str().is_none_or(str::is_empty) {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if !matches!(spec["scope"].as_str(), Some("Namespaced" | "Cluster")) {
        causes.push(Cause::required("spec.scope", ""));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    } else if versions
        .iter()
        .filter(|v| v["storage"].as_bool() == Some(true))
        .count()
        != 1
    {
        causes.push(Cause::invalid(
            "spec.versions",
            &Value::Array(versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    causes
}

/// Fields of `plural` that an update may not change (a 422 cause each).
pub fn immutable_fields(plural: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let immutable = |field: &str, a: &Value, b: &Value, causes: &mut Vec<Cause>| {
        if a != b {
            causes.push(Cause::invalid(field, b, "field is immutable"));
        }
    };
    match plural {
        "jobs" => {
            immutable(
                "spec.selector",
                &old["spec"]["selector"],
                &new["spec"]["selector"],
                &mut causes,
            );
            if new["spec"]["suspend"].as_bool() != Some(true) {
                immutable(
                    "spec.template",
                    &old["spec"]["template"],
                    &new["spec"]["template"],
                    &mut causes,
                );
            }
            immutable(
                "spec.completionMode",
                &old["spec"]["completionMode"],
                &new["spec"]["completionMode"],
                &mut causes,
            );
        }
        "deployments" => {
            immutable(
                "spec.selector",
                &old["spec"]["selector"],
                &new["spec"]["selector"],
                &mut causes,
            );
        }
        "secrets" | "configmaps" if old["immutable"].as_bool() == Some(true) => {
            for field in ["data", "binaryData", "immutable"] {
                if old[field] != new[field] {
                    causes.push(Cause::forbidden(
                        field,
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        "pods" => {
            let mutable_only = |v: &Value| {
                let mut s = v["spec"].clone();
                for list in ["containers", "initContainers"] {
                    for c in s[list].as_array_mut().into_iter().flatten() {
                        c["image"] = Value::Null;
                    }
                }
                for f in [
                    "activeDeadlineSeconds",
                    "tolerations",
                    "terminationGracePeriodSeconds",
                ] {
                    if let Some(m) = s.as_object_mut() {
                        m.remove(f);
                    }
                }
                s
            };
            if mutable_only(old) != mutable_only(new) {
                causes.push(Cause::forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"));
            }
        }
        "customresourcedefinitions" => {
            immutable(
                "spec.group",
                &old["spec"]["group"],
                &new["spec"]["group"],
                &mut causes,
            );
            immutable(
                "spec.names.plural",
                &old["spec"]["names"]["plural"],
                &new["spec"]["names"]["plural"],
                &mut causes,
            );
        }
        _ => {}
    }
    causes
}

const META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Top-level and `metadata` fields of `obj` that kind `plural` does not declare, as strict
/// decoding names them (`dataa`, `metadata.nmae`). Custom resources: `metadata` only (their
/// schemas are not modelled).
pub fn unknown_fields(plural: &str, custom: bool, obj: &Value) -> Vec<String> {
    let own: &[&str] = match plural {
        "configmaps" => &["data", "binaryData", "immutable"],
        "secrets" => &["data", "stringData", "type", "immutable"],
        "serviceaccounts" => &[
            "secrets",
            "imagePullSecrets",
            "automountServiceAccountToken",
        ],
        "roles" => &["rules"],
        "clusterroles" => &["rules", "aggregationRule"],
        "rolebindings" | "clusterrolebindings" => &["roleRef", "subjects"],
        "events" => &[
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        ],
        _ => &["spec", "status"],
    };
    let mut out = Vec::new();
    if let Some(m) = obj.as_object()
        && !custom
    {
        for k in m.keys() {
            let declared = matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                || own.contains(&k.as_str());
            if !declared && !k.starts_with('$') {
                out.push(k.clone());
            }
        }
    }
    if let Some(meta) = obj["metadata"].as_object() {
        for k in meta.keys() {
            if !META_FIELDS.contains(&k.as_str()) && !k.starts_with('$') {
                out.push(format!("metadata.{k}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding_names_undeclared_fields() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "lables": {}},
            "data": {}, "dataa": {}});
        assert_eq!(
            unknown_fields("configmaps", false, &cm),
            vec!["dataa", "metadata.lables"]
        );
        let job = json!({"kind": "Job", "metadata": {"name": "j"}, "spec": {}, "status": {}});
        assert!(unknown_fields("jobs", false, &job).is_empty());
        let cr = json!({"kind": "X", "metadata": {"name": "x"}, "anything": 1});
        assert!(unknown_fields("xs", true, &cr).is_empty());
    }

    #[test]
    fn names_and_labels() {
        assert!(subdomain("a.b-c").is_none());
        assert!(subdomain("A").is_some());
        assert!(subdomain("-a").is_some());
        assert!(label("a.b").is_some());
        assert!(object_name("roles", "system:x").is_empty());
        assert!(!object_name("jobs", &"a".repeat(64)).is_empty());
        assert!(qualified_name("scalr.io/task-id").is_none());
        assert!(qualified_name("bad key").is_some());
        assert!(qualified_name("/x").is_some());
        assert!(label_value("").is_none());
        assert!(label_value("a_b.c-D").is_none());
        assert!(label_value("a b").is_some());
        assert!(label_value(&"a".repeat(64)).is_some());
    }

    #[test]
    fn metadata_and_pod_template_causes() {
        let meta = json!({"labels": {"ok": "v", "bad": "has space"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "a", "uid": "1", "controller": true},
                                {"apiVersion": "v1", "kind": "X", "name": "b", "controller": true}]});
        let fields: Vec<String> = metadata(&meta, "metadata")
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "metadata.labels",
                "metadata.ownerReferences[1].uid",
                "metadata.ownerReferences"
            ]
        );

        let job = json!({"spec": {"template": {"spec": {
            "restartPolicy": "Always",
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "a", "image": "i", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]},
                           {"name": "a"}]}}}});
        let causes: Vec<String> = kind_rules("jobs", &job)
            .into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        assert_eq!(
            causes,
            vec![
                "spec.template.spec.containers[0].volumeMounts[0].name: Not found: \"nope\"",
                "spec.template.spec.containers[1].name: Duplicate value: \"a\"",
                "spec.template.spec.containers[1].image: Required value",
                "spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
            ]
        );
    }
}
