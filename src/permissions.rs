//! The Kubernetes permissions the controller uses: one table, the single source of truth.
//!
//! Three things must agree with [`CONTROLLER_PERMISSIONS`]: the Role in the Helm chart
//! (`helm/agent-job/templates/rbac.yaml`, compared rule for rule by `tests/it/chart.rs`), the API calls
//! the controller makes, and `scalr-agent check`, which asks the API server about each
//! [`AccessCheck`] with a SelfSubjectAccessReview. Pure data and pure functions: no thread, no I/O.
//!
//! Adding an API call to the controller means adding its verb here first; the chart test then fails
//! until the Role grants it too.

/// One RBAC grant: a resource of an API group and the verbs the controller uses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group; `""` is the core group (pods, secrets, events).
    pub group: &'static str,
    /// Resource, plural and lowercase, as in the URL path (`jobs`, `agenttasktemplates`).
    pub resource: &'static str,
    /// Subresource (`log`, `status`), or `None` for the resource itself.
    pub subresource: Option<&'static str>,
    /// Verbs, as RBAC and SelfSubjectAccessReview spell them.
    pub verbs: &'static [&'static str],
    /// Why the controller needs it; shown by `check` when the permission is missing.
    pub why: &'static str,
}

/// One question for SelfSubjectAccessReview: may this identity do `verb` on this resource?
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessCheck {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Resource, plural and lowercase.
    pub resource: &'static str,
    /// Subresource, or `""` for none (the form SelfSubjectAccessReview uses).
    pub subresource: &'static str,
    /// The verb.
    pub verb: &'static str,
}

/// Every verb RBAC knows for resources (`*` is deliberately absent: we never ask for it).
pub const RBAC_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Everything the controller does against the Kubernetes API, in its own namespace.
///
/// The chart's Role grants exactly this. Task pods get no API access at all
/// (`automountServiceAccountToken: false`).
pub const CONTROLLER_PERMISSIONS: &[Permission] = &[
    Permission {
        group: "batch",
        resource: "jobs",
        subresource: None,
        verbs: &["get", "list", "watch", "create", "delete", "patch"],
        why: "one Job per task: created from the AgentTaskTemplate, watched until its pod has started, \
              patched, and deleted when the task is cancelled or never starts",
    },
    Permission {
        group: "",
        resource: "pods",
        subresource: None,
        verbs: &["get", "list", "watch", "delete"],
        why: "task pods are watched to explain failures (image pulls, unschedulable, OOM kills) and \
              deleted when stuck",
    },
    Permission {
        group: "",
        resource: "secrets",
        subresource: None,
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        why: "each task's credentials live in a Secret the controller creates beside its Job",
    },
    Permission {
        group: "",
        resource: "events",
        subresource: None,
        verbs: &["get", "list", "watch", "create", "patch"],
        why: "Events on task Jobs tell users what the controller did, and Kubernetes' own Events \
              explain why a pod failed",
    },
    Permission {
        group: "scalr.io",
        resource: "agenttasktemplates",
        subresource: None,
        verbs: &["get", "list", "watch"],
        why: "the AgentTaskTemplate the chart manages is the template of every task Job",
    },
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        verbs: &["get", "list", "watch", "create", "update", "delete"],
        why: "each controller replica renews a Lease, so a surviving replica can adopt the tasks of \
              one that died",
    },
];

impl Permission {
    /// The resource as an RBAC rule names it: `pods`, or `pods/log` for a subresource.
    pub fn rbac_resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{}", self.resource, sub),
            None => self.resource.to_owned(),
        }
    }

    /// The access checks this permission stands for, one per verb, in table order.
    pub fn access_checks(&self) -> impl Iterator<Item = AccessCheck> + '_ {
        self.verbs.iter().map(move |verb| AccessCheck {
            group: self.group,
            resource: self.resource,
            subresource: self.subresource.unwrap_or(""),
            verb,
        })
    }
}

/// Every access check of [`CONTROLLER_PERMISSIONS`], in table order: what `check` asks about.
pub fn controller_access_checks() -> Vec<AccessCheck> {
    CONTROLLER_PERMISSIONS
        .iter()
        .flat_map(Permission::access_checks)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn is_dns_label_chars(s: &str) -> bool {
        s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    }

    #[test]
    fn every_verb_is_an_rbac_verb_and_listed_once() {
        for p in CONTROLLER_PERMISSIONS {
            let unique: BTreeSet<_> = p.verbs.iter().collect();
            assert_eq!(
                unique.len(),
                p.verbs.len(),
                "duplicate verb in {}",
                p.resource
            );
            assert!(!p.verbs.is_empty(), "{} grants no verb", p.resource);
            for verb in p.verbs {
                assert!(
                    RBAC_VERBS.contains(verb),
                    "{verb} on {} is not an RBAC verb",
                    p.resource
                );
            }
        }
    }

    #[test]
    fn each_resource_appears_once() {
        let keys: BTreeSet<_> = CONTROLLER_PERMISSIONS
            .iter()
            .map(|p| (p.group, p.resource, p.subresource))
            .collect();
        assert_eq!(keys.len(), CONTROLLER_PERMISSIONS.len());
    }

    #[test]
    fn names_are_lowercase_api_names_and_every_grant_says_why() {
        for p in CONTROLLER_PERMISSIONS {
            assert!(is_dns_label_chars(p.group), "group {:?}", p.group);
            assert!(
                !p.resource.is_empty() && is_dns_label_chars(p.resource),
                "{:?}",
                p.resource
            );
            assert!(
                !p.resource.contains('/'),
                "put subresources in `subresource`: {}",
                p.resource
            );
            if let Some(sub) = p.subresource {
                assert!(!sub.is_empty() && is_dns_label_chars(sub), "{:?}", sub);
            }
            assert!(
                p.why.len() > 20,
                "{} needs a reason users can act on",
                p.resource
            );
        }
    }

    #[test]
    fn controller_never_gets_more_than_it_needs() {
        // Guards against a convenient widening: no wildcard, no bulk delete, and pods are never
        // created by the controller (the Job controller does that).
        for p in CONTROLLER_PERMISSIONS {
            assert!(!p.verbs.contains(&"*") && !p.verbs.contains(&"deletecollection"));
            assert_ne!(p.resource, "*");
        }
        let pods = CONTROLLER_PERMISSIONS
            .iter()
            .find(|p| p.group.is_empty() && p.resource == "pods")
            .expect("the controller watches task pods");
        assert!(!pods.verbs.contains(&"create"));
        let template = CONTROLLER_PERMISSIONS
            .iter()
            .find(|p| p.resource == "agenttasktemplates")
            .expect("the controller reads its template");
        assert_eq!(
            template.verbs,
            ["get", "list", "watch"],
            "the chart owns the template"
        );
    }

    #[test]
    fn access_checks_cover_every_verb_in_order() {
        let checks = controller_access_checks();
        let expected: usize = CONTROLLER_PERMISSIONS.iter().map(|p| p.verbs.len()).sum();
        assert_eq!(checks.len(), expected);
        assert_eq!(
            checks[0],
            AccessCheck {
                group: "batch",
                resource: "jobs",
                subresource: "",
                verb: "get"
            }
        );
        let unique: BTreeSet<_> = checks.iter().collect();
        assert_eq!(unique.len(), checks.len());
    }

    #[test]
    fn rbac_resource_joins_subresources() {
        let cases = [(None, "pods"), (Some("log"), "pods/log")];
        for (subresource, want) in cases {
            let p = Permission {
                group: "",
                resource: "pods",
                subresource,
                verbs: &["get"],
                why: "",
            };
            assert_eq!(p.rbac_resource(), want);
            assert_eq!(
                p.access_checks().next().map(|c| c.subresource),
                Some(subresource.unwrap_or(""))
            );
        }
    }
}
