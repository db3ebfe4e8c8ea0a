//! Legacy discovery documents rendered from the registry: `/version`, `/api` (APIVersions), `/apis`
//! (APIGroupList), `/apis/{group}` (APIGroup) and the per group-version APIResourceLists, with
//! `namespaced`, `kind`, `verbs`, `shortNames`, `categories` and `/status` subresources. Clients
//! asking for aggregated discovery get these and fall back, as they do with older servers. Pure.

use serde_json::{Value, json};

use super::resources::{GROUP_ORDER, Registry, ResourceType};

/// `/version`.
pub fn version(git_version: &str) -> Value {
    let trimmed = git_version.trim_start_matches('v');
    let mut parts = trimmed.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "emulationMajor": major,
        "emulationMinor": minor,
        "gitVersion": git_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The named groups in the apiserver's order: built-ins by priority, then custom ones by name.
fn group_names(registry: &Registry) -> Vec<String> {
    let mut names: Vec<String> = GROUP_ORDER.iter().map(|g| g.to_string()).collect();
    let mut custom: Vec<String> = registry
        .custom
        .iter()
        .map(|t| t.group.clone())
        .filter(|g| !names.contains(g))
        .collect();
    custom.sort();
    custom.dedup();
    names.extend(custom);
    names
}

fn group_doc(registry: &Registry, name: &str) -> Option<Value> {
    let mut versions: Vec<String> = Vec::new();
    for t in registry.all().filter(|t| t.group == name) {
        for v in &t.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    if versions.is_empty() {
        return None;
    }
    versions.sort_by(|a, b| {
        super::resources::version_priority(b).cmp(&super::resources::version_priority(a))
    });
    let entry = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    Some(json!({
        "name": name,
        "versions": versions.iter().map(entry).collect::<Vec<_>>(),
        "preferredVersion": entry(&versions[0]),
    }))
}

/// `/apis`.
pub fn groups(registry: &Registry) -> Value {
    let groups: Vec<Value> = group_names(registry)
        .iter()
        .filter_map(|g| group_doc(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/{group}`.
pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let mut doc = group_doc(registry, name)?;
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn resource_entry(t: &ResourceType) -> Value {
    let mut e = json!({
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": t.verbs,
    });
    if !t.short_names.is_empty() {
        e["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        e["categories"] = json!(t.categories);
    }
    e
}

/// `/api/v1`, `/apis/{group}/{version}`.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in registry
        .all()
        .filter(|t| t.group == group && t.versions.iter().any(|v| v == version))
    {
        resources.push(resource_entry(t));
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::super::resources::from_crd;
    use super::*;

    #[test]
    fn discovery_lists_builtins_and_crd_groups() {
        let mut r = Registry::new();
        let g = groups(&r);
        let names: Vec<&str> = g["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str())
            .collect();
        assert_eq!(names[0], "apps");
        assert!(!names.contains(&"scalr.io"));
        let crd = json!({"spec": {"group": "scalr.io", "scope": "Namespaced",
            "names": {"plural": "agenttasktemplates", "kind": "AgentTaskTemplate", "shortNames": ["att"]},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
        r.custom.push(from_crd(&crd).expect("served"));
        let g = groups(&r);
        assert_eq!(
            g["groups"]
                .as_array()
                .and_then(|a| a.last())
                .map(|x| x["name"].clone()),
            Some(json!("scalr.io"))
        );
        let list = resource_list(&r, "scalr.io", "v1");
        assert_eq!(list["resources"][0]["shortNames"], json!(["att"]));
        let apps = resource_list(&r, "apps", "v1");
        assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
        assert_eq!(apps["resources"][1]["name"], "deployments/status");
        assert_eq!(version("v1.33.0")["minor"], "33");
    }
}
