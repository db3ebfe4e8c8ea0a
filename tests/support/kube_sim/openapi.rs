//! A minimal OpenAPI v3 surface: the `/openapi/v3` index of group-versions and, per group-version,
//! a document with the PATCH operation of each resource tagged with its group-version-kind and the
//! `fieldValidation` query parameter. That is what kubectl reads to decide that the server validates
//! fields itself (so `kubectl create/apply` work without `--validate=false`). No schemas: kubectl
//! then computes strategic merge patches from its built-in types, as with servers that publish none.
//! Pure.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::resources::{Registry, ResourceType};

/// `api/v1` or `apis/{group}/{version}`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn group_versions(registry: &Registry) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for t in registry.all() {
        for v in &t.versions {
            let gv = (t.group.clone(), v.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

fn patch_path(t: &ResourceType, version: &str) -> String {
    let base = format!("/{}", gv_path(&t.group, version));
    if t.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
    } else {
        format!("{base}/{}/{{name}}", t.plural)
    }
}

/// The document of one group-version, or `None` when it is not served.
pub fn group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut paths = Map::new();
    for t in registry.all().filter(|t| {
        t.group == group && t.versions.iter().any(|v| v == version) && !t.virtual_review
    }) {
        paths.insert(
            patch_path(t, version),
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "x-kubernetes-group-version-kind": {"group": t.group, "version": version, "kind": t.kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() && !registry.serves_group_version(group, version) {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v3`: every served group-version with a content-hashed URL.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions(registry) {
        let Some(doc) = group_version(registry, &group, &version) else {
            continue;
        };
        let digest = Sha256::digest(doc.to_string().as_bytes());
        let hash: String = digest.iter().take(16).map(|b| format!("{b:02X}")).collect();
        let path = gv_path(&group, &version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_documents_name_each_patch_operation() {
        let r = Registry::new();
        let idx = index(&r);
        let url = idx["paths"]["apis/batch/v1"]["serverRelativeURL"]
            .as_str()
            .expect("batch/v1 listed");
        assert!(url.starts_with("/openapi/v3/apis/batch/v1?hash="));
        let doc = group_version(&r, "batch", "v1").expect("served");
        let op = &doc["paths"]["/apis/batch/v1/namespaces/{namespace}/jobs/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Job");
        assert_eq!(op["parameters"][0]["name"], "fieldValidation");
        assert!(doc["paths"]["/api/v1/namespaces/{name}"].is_null());
        let core = group_version(&r, "", "v1").expect("served");
        assert!(core["paths"]["/api/v1/namespaces/{name}"]["patch"].is_object());
        assert!(group_version(&r, "scalr.io", "v1").is_none());
    }
}
