//! RBAC: the Role equals `scalr_agent::permissions::CONTROLLER_PERMISSIONS`, bound to the
//! ServiceAccount the controller runs as.

use super::{render, try_render};
use k8s_openapi::api::rbac::v1::Role;
use scalr_agent::permissions::CONTROLLER_PERMISSIONS;
use serde_json::json;
use std::collections::BTreeSet;

#[test]
fn role_grants_exactly_the_controller_permissions_table() {
    let r = render(&[]);
    let role: Role = r.typed("Role");
    let mut granted = BTreeSet::new();
    for rule in role.rules.expect("the Role has rules") {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        granted.insert((group.clone(), resource.clone(), verb.clone())),
                        "{verb} {group}/{resource} granted twice"
                    );
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = CONTROLLER_PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.to_owned(), p.rbac_resource(), (*v).to_owned()))
        })
        .collect();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    let missing: Vec<_> = wanted.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "templates/rbac.yaml and src/permissions.rs disagree: Role grants more {extra:?}, \
         lacks {missing:?}"
    );

    let binding = r.one("RoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        r.one("Role")["metadata"]["name"]
    );
    let sa = r.controller_pod()["serviceAccountName"].clone();
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa, "namespace": super::NAMESPACE}])
    );

    let without = render(&["--set", "rbac.create=false"]);
    assert!(without.of_kind("Role").is_empty() && without.of_kind("RoleBinding").is_empty());
}

#[test]
fn service_account_can_be_brought_by_the_user() {
    let r = render(&[
        "--set",
        "serviceAccount.create=false",
        "--set",
        "serviceAccount.name=mine",
    ]);
    assert!(r.of_kind("ServiceAccount").is_empty());
    assert_eq!(r.controller_pod()["serviceAccountName"], "mine");
    assert_eq!(r.one("RoleBinding")["subjects"][0]["name"], "mine");
    let err = try_render(&["--set", "serviceAccount.create=false"])
        .err()
        .expect("refused");
    assert!(err.contains("serviceAccount.name is required"), "{err}");
}
