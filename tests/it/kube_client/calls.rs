//! Every call on every resource type the agent uses, through `Api<K>` against the simulator.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use scalr_agent::kube::{AgentTaskTemplate, Api, DeleteParams, KubeObject, ListParams, ObjectList};
use serde_json::json;

use super::{NS, admin, client_with, dump, eventually, job, sim, template_crd};

fn names<K: KubeObject>(list: &ObjectList<K>) -> Vec<String> {
    list.items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

#[test]
fn jobs_get_list_create_replace_patch_status_and_delete() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let created = jobs
        .create(&job(
            "j1",
            json!({"app": "agent", "scalr.io/task-id": "t1"}),
        ))
        .expect("create");
    let uid = created.metadata.uid.clone().expect("the server sets a uid");
    jobs.create(&job("j2", json!({"app": "other"})))
        .expect("create j2");

    assert_eq!(jobs.get("j1").expect("get").metadata.uid, Some(uid.clone()));
    assert!(jobs.get_opt("missing").expect("get_opt").is_none());
    let all = ListParams::default();
    assert_eq!(names(&jobs.list(&all).expect("list")), ["j1", "j2"]);
    assert_eq!(
        names(&jobs.list(&ListParams::labels("app=agent")).expect("list")),
        ["j1"]
    );
    assert_eq!(
        names(
            &jobs
                .list(&ListParams::labels("scalr.io/task-id"))
                .expect("list")
        ),
        ["j1"]
    );
    let by_name = all.clone().fields("metadata.name=j2");
    assert_eq!(names(&jobs.list(&by_name).expect("list")), ["j2"]);

    let mut changed = created.clone();
    changed.metadata.annotations = Some([("note".to_string(), "replaced".to_string())].into());
    let replaced = jobs.replace("j1", &changed).expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );

    let patched = jobs
        .patch_merge("j1", &json!({"metadata": {"labels": {"extra": "yes"}}}))
        .expect("merge patch");
    let labels = patched.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        (labels["extra"].as_str(), labels["app"].as_str()),
        ("yes", "agent")
    );
    assert_eq!(
        patched.metadata.annotations.unwrap_or_default()["note"],
        "replaced"
    );
    eventually(&sim, "the PATCH is logged", |s| {
        s.requests().iter().any(|r| r.method == "PATCH")
    });
    let patch = sim
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .expect("a PATCH was sent");
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );

    let with_status = jobs
        .patch_status("j1", &json!({"status": {"active": 1}}))
        .expect("patch status");
    assert_eq!(with_status.status.and_then(|s| s.active), Some(1));
    let mut read = jobs.get_status("j1").expect("get status");
    if let Some(status) = read.status.as_mut() {
        status.active = Some(0);
        status.failed = Some(1);
    }
    // The status subresource ignores everything but status.
    read.metadata.labels = None;
    let replaced = jobs.replace_status("j1", &read).expect("replace status");
    let status = replaced.status.clone().unwrap_or_default();
    assert_eq!((status.active, status.failed), (Some(0), Some(1)));
    assert_eq!(replaced.metadata.labels, patched.metadata.labels);

    let err = jobs
        .delete("j1", &DeleteParams::background().uid("not-the-uid"))
        .expect_err("uid precondition");
    assert!(err.is_conflict(), "{err}");
    jobs.delete("j1", &DeleteParams::background().uid(&uid))
        .expect("delete");
    eventually(&sim, "the DELETE is logged", |s| {
        s.requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 200)
    });
    let delete = sim
        .requests()
        .into_iter()
        .rfind(|r| r.method == "DELETE" && r.status == 200)
        .expect("a DELETE was sent");
    let body: serde_json::Value = serde_json::from_str(&delete.body).expect("DeleteOptions body");
    assert_eq!(body["propagationPolicy"], "Background");
    assert_eq!(body["preconditions"]["uid"], uid.as_str());
    assert!(jobs.get_opt("j1").expect("get").is_none(), "{}", dump(&sim));
}

#[test]
fn pods_by_field_selector_and_delete() {
    let sim = sim();
    let pods: Api<Pod> = Api::namespaced(&admin(&sim), NS);
    for name in ["p1", "p2"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "agent"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("pod");
        pods.create(&pod).expect("create pod");
    }
    sim.set_status("pods", NS, "p1", json!({"phase": "Running"}));
    let running = ListParams::labels("app=agent").fields("status.phase=Running");
    assert_eq!(names(&pods.list(&running).expect("list")), ["p1"]);
    pods.delete("p2", &DeleteParams::default()).expect("delete");
    assert_eq!(
        names(&pods.list(&ListParams::default()).expect("list")),
        ["p1"]
    );
}

#[test]
fn secrets_owned_by_a_job_go_with_it() {
    let sim = sim();
    let client = admin(&sim);
    let jobs: Api<Job> = Api::namespaced(&client, NS);
    let secrets: Api<Secret> = Api::namespaced(&client, NS);
    let owner = jobs.create(&job("run-1", json!({}))).expect("job");
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "run-1-credentials"},
        "stringData": {"token": "task-token-value"},
    }))
    .expect("secret");
    secrets.create(&secret).expect("create secret");
    let read = secrets.get("run-1-credentials").expect("get secret");
    let data = read.data.unwrap_or_default();
    assert_eq!(data["token"].0, b"task-token-value");
    secrets
        .patch_merge(
            "run-1-credentials",
            &json!({"metadata": {"ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                "name": "run-1", "uid": owner.metadata.uid, "controller": true}]}}),
        )
        .expect("owner reference");
    jobs.delete("run-1", &DeleteParams::background())
        .expect("delete job");
    assert!(
        sim.wait_until(Duration::from_secs(10), |s| s
            .get("secrets", NS, "run-1-credentials")
            .is_none()),
        "{}",
        dump(&sim)
    );
    assert!(secrets.get_opt("run-1-credentials").expect("get").is_none());
}

#[test]
fn events_are_created_and_listed_by_involved_object() {
    let sim = sim();
    let events: Api<Event> = Api::namespaced(&admin(&sim), NS);
    for (name, object) in [("e1", "job-a"), ("e2", "job-b")] {
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": name},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": object, "namespace": NS},
            "reason": "TaskFailed", "message": "image pull failed", "type": "Warning",
            "source": {"component": "scalr-agent"},
        }))
        .expect("event");
        events.create(&event).expect("create event");
    }
    let about_a = ListParams::default().fields("involvedObject.name=job-a,involvedObject.kind=Job");
    let listed = events.list(&about_a).expect("list");
    assert_eq!(names(&listed), ["e1"]);
    assert_eq!(listed.items[0].reason.as_deref(), Some("TaskFailed"));
}

#[test]
fn agent_task_templates_through_the_custom_resource() {
    let sim = sim();
    sim.put(template_crd());
    let templates: Api<AgentTaskTemplate> = Api::namespaced(&admin(&sim), NS);
    let mut template = AgentTaskTemplate::default();
    template.metadata.name = Some("default".into());
    template.spec.basename = "scalr".into();
    template.spec.job_template = serde_json::from_value(json!({"spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "worker", "image": "scalr/agent"}]}}}}))
    .expect("job template");
    let created = templates.create(&template).expect("create");
    assert_eq!(created.spec, template.spec);
    let stored = sim
        .get("agenttasktemplates", NS, "default")
        .expect("stored");
    assert_eq!(
        (stored["apiVersion"].as_str(), stored["kind"].as_str()),
        (Some("scalr.io/v1"), Some("AgentTaskTemplate"))
    );

    assert_eq!(
        names(&templates.list(&ListParams::default()).expect("list")),
        ["default"]
    );
    let patched = templates
        .patch_merge("default", &json!({"spec": {"basename": "agent"}}))
        .expect("patch");
    assert_eq!(patched.spec.basename, "agent");
    assert_eq!(patched.spec.job_template, template.spec.job_template);

    let stale = templates
        .replace("default", &created)
        .expect_err("stale resourceVersion");
    assert!(stale.is_conflict(), "{stale}");

    let with_status = templates
        .patch_status("default", &json!({"status": {"observedGeneration": 2}}))
        .expect("patch status");
    assert_eq!(with_status.status, Some(json!({"observedGeneration": 2})));
    let mut read = templates.get_status("default").expect("get status");
    read.status = Some(json!({"observedGeneration": 3, "valid": true}));
    read.spec.basename = "ignored-by-status".into();
    let replaced = templates
        .replace_status("default", &read)
        .expect("replace status");
    assert_eq!(replaced.status, read.status);
    assert_eq!(
        templates.get("default").expect("get").spec.basename,
        "agent"
    );

    templates
        .delete("default", &DeleteParams::default())
        .expect("delete");
    assert!(templates.get_opt("default").expect("get").is_none());
}

#[test]
fn self_subject_access_reviews_follow_rbac() {
    let sim = sim();
    sim.enable_rbac();
    let admin = admin(&sim);
    let allowed = admin
        .can_i("create", "batch", "jobs", None, Some(NS))
        .expect("review");
    assert!(allowed.allowed);
    let token = sim.add_service_account_token(NS, "agent");
    let agent = client_with(&sim, &token);
    let denied = agent
        .can_i("create", "batch", "jobs", None, Some(NS))
        .expect("review");
    assert!(!denied.allowed);
    sim.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "agent", "namespace": NS},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get"]}]}),
    );
    sim.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "agent", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": NS}]}),
    );
    let granted = agent
        .can_i("create", "batch", "jobs", None, Some(NS))
        .expect("review");
    assert!(granted.allowed, "{granted:?}");
    let other = agent
        .can_i("delete", "batch", "jobs", None, Some(NS))
        .expect("review");
    assert!(!other.allowed);
}

#[test]
fn leases_are_renewed_with_optimistic_concurrency() {
    let sim = sim();
    let leases: Api<Lease> = Api::namespaced(&admin(&sim), NS);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "scalr-agent"},
        "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = leases.create(&lease).expect("create");
    let mut renewed = leases.get("scalr-agent").expect("get");
    if let Some(spec) = renewed.spec.as_mut() {
        spec.lease_transitions = Some(1);
    }
    let renewed = leases.replace("scalr-agent", &renewed).expect("renew");
    assert_eq!(renewed.spec.and_then(|s| s.lease_transitions), Some(1));
    // A replica holding an old copy loses.
    let err = leases.replace("scalr-agent", &created).expect_err("stale");
    assert!(err.is_conflict(), "{err}");
    leases
        .delete("scalr-agent", &DeleteParams::default())
        .expect("delete");
    assert!(leases.get_opt("scalr-agent").expect("get").is_none());
}

#[test]
fn paging_with_limit_and_continue_and_an_expired_token() {
    let sim = sim();
    let secrets: Api<Secret> = Api::namespaced(&admin(&sim), NS);
    for i in 0..7 {
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": format!("s{i}"), "labels": {"page": "yes"}}}),
        )
        .expect("secret");
        secrets.create(&secret).expect("create");
    }
    let params = ListParams::labels("page=yes").limit(3);
    let first = secrets.list(&params).expect("page 1");
    assert_eq!(names(&first), ["s0", "s1", "s2"]);
    let token = first.continue_token.clone().expect("more pages");
    // A write between pages is not in the snapshot.
    secrets
        .create(
            &serde_json::from_value(json!({"metadata": {"name": "s9", "labels": {"page": "yes"}}}))
                .expect("s9"),
        )
        .expect("create s9");
    let second = secrets
        .list(&ListParams {
            continue_token: Some(token),
            ..params.clone()
        })
        .expect("page 2");
    assert_eq!(names(&second), ["s3", "s4", "s5"]);
    assert_eq!(second.resource_version, first.resource_version);

    let all = secrets.list_all(&params).expect("all pages");
    assert_eq!(
        names(&all),
        ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s9"]
    );
    assert_eq!(all.continue_token, None);
    let pages = |s: &crate::support::kube_sim::KubeSim| {
        s.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.query_param("limit").as_deref() == Some("3"))
            .count()
    };
    eventually(&sim, "two manual pages, then three for list_all", |s| {
        pages(s) == 5
    });

    // Compaction between pages expires the continue token: 410 Gone.
    let first = secrets.list(&params).expect("page 1");
    secrets
        .delete("s9", &DeleteParams::default())
        .expect("write");
    sim.compact();
    let err = secrets
        .list(&ListParams {
            continue_token: first.continue_token,
            ..params.clone()
        })
        .expect_err("expired");
    assert!(err.is_gone(), "{err}");
    let err = secrets.list_all(&params.clone().limit(1));
    assert!(
        err.is_ok(),
        "a fresh paged list after compaction works: {err:?}"
    );
}
