//! Authentication, RBAC (403 bodies, SelfSubjectAccessReview from the same rules, x509 identities)
//! and scripted faults against the simulator, plus the request log.

use scalr_agent::http::{ClientIdentity, HttpOptions};
use serde_json::{Value, json};

use super::{Api, JOBS, job};
use crate::support::kube_sim::{Fault, FaultAction, KubeSim, KubeSimOptions};

fn review(api: &Api, verb: &str, group: &str, resource: &str, ns: &str) -> Value {
    let (code, answer) = api.post(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "group": group, "resource": resource}}}),
    );
    assert_eq!(code, 201, "{answer}");
    answer["status"].clone()
}

#[test]
fn unknown_and_missing_credentials_get_401() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let unauthorized = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
    assert_eq!(
        Api::with_token(&sim, None).get("/api/v1/namespaces"),
        (401, unauthorized.clone())
    );
    assert_eq!(
        Api::with_token(&sim, Some("made-up")).get("/api/v1/namespaces"),
        (401, unauthorized.clone())
    );
    let token = sim.add_service_account_token("default", "agent");
    let api = Api::with_token(&sim, Some(&token));
    assert_eq!(
        api.get("/api/v1/namespaces").0,
        200,
        "RBAC is off by default"
    );
    sim.revoke_token(&token);
    assert_eq!(api.get("/api/v1/namespaces"), (401, unauthorized));
}

#[test]
fn rbac_denies_with_the_real_message_and_access_reviews_use_the_same_rules() {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec!["ci".into()],
        ..KubeSimOptions::default()
    });
    let admin = Api::admin(&sim);
    let token = sim.add_service_account_token("ci", "agent");
    let agent = Api::with_token(&sim, Some(&token));
    assert_eq!(
        review(&agent, "create", "batch", "jobs", "ci"),
        json!({"allowed": true}),
        "RBAC off allows"
    );
    sim.enable_rbac();
    let jobs = "/apis/batch/v1/namespaces/ci/jobs";
    let (code, denied) = agent.post(jobs, &job("j"));
    assert_eq!(code, 403);
    assert_eq!(
        denied,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch is forbidden: User \"system:serviceaccount:ci:agent\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ci\"",
        "reason": "Forbidden", "details": {"group": "batch", "kind": "jobs"}, "code": 403})
    );
    assert_eq!(
        review(&agent, "create", "batch", "jobs", "ci")["allowed"],
        false
    );
    assert_eq!(
        agent.get("/apis").0,
        200,
        "discovery stays open to authenticated users"
    );

    admin.post("/apis/rbac.authorization.k8s.io/v1/namespaces/ci/roles", &json!({"metadata": {"name": "launcher"},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs", "jobs/status"], "verbs": ["create", "get", "watch"]}]}));
    admin.post(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/ci/rolebindings",
        &json!({"metadata": {"name": "launcher"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "launcher"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "ci"}]}),
    );
    assert_eq!(agent.post(jobs, &job("j")).0, 201);
    let allowed = review(&agent, "create", "batch", "jobs", "ci");
    assert_eq!(allowed["allowed"], true);
    assert_eq!(
        allowed["reason"],
        "RBAC: allowed by RoleBinding \"launcher/ci\" of Role \"launcher\" to ServiceAccount \"agent/ci\""
    );
    let (code, no_delete) = agent.delete(&format!("{jobs}/j"), None);
    assert_eq!(code, 403);
    assert_eq!(
        no_delete["message"],
        "jobs.batch \"j\" is forbidden: User \"system:serviceaccount:ci:agent\" cannot delete resource \"jobs\" in API group \"batch\" in the namespace \"ci\""
    );
    assert_eq!(
        review(&agent, "delete", "batch", "jobs", "ci")["allowed"],
        false
    );
    assert_eq!(
        agent.get("/apis/batch/v1/namespaces/default/jobs/x").0,
        403,
        "a Role binds only its namespace"
    );
    let (code, cluster) = agent.get("/api/v1/namespaces");
    assert_eq!(code, 403);
    assert!(
        cluster["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("at the cluster scope"))
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let leaf = sim.client_cert("ops", &["ops-team"]);
    std::fs::write(dir.path().join("c.pem"), &leaf.cert_pem).expect("write cert");
    std::fs::write(dir.path().join("k.pem"), &leaf.key_pem).expect("write key");
    let options = HttpOptions {
        client_identity: Some(ClientIdentity {
            cert_file: dir.path().join("c.pem"),
            key_file: dir.path().join("k.pem"),
        }),
        ..HttpOptions::default()
    };
    let ops = Api::with_options(&sim, None, options);
    let (code, x509_denied) = ops.get("/api/v1/namespaces");
    assert_eq!(code, 403);
    assert!(
        x509_denied["message"]
            .as_str()
            .is_some_and(|m| m.contains("User \"ops\"")),
        "{x509_denied}"
    );
    admin.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        &json!({"metadata": {"name": "ns-reader"},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list"]}]}),
    );
    admin.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", &json!({"metadata": {"name": "ops"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ns-reader"},
        "subjects": [{"kind": "Group", "name": "ops-team"}]}));
    assert_eq!(
        ops.get("/api/v1/namespaces").0,
        200,
        "the certificate's O is the group"
    );
    let whoami = ops
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .1;
    assert_eq!(whoami["status"]["userInfo"]["username"], "ops");
}

#[test]
fn scripted_faults_fail_delay_and_drop_calls_and_the_log_records_them() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    sim.fail_next("POST", JOBS, 2, 500);
    let (code, first) = api.post(JOBS, &job("j"));
    assert_eq!(
        (code, first["reason"].as_str()),
        (500, Some("InternalError"))
    );
    assert_eq!(api.post(JOBS, &job("j")).0, 500);
    assert_eq!(api.post(JOBS, &job("j")).0, 201, "the fault is used up");

    sim.fail_next("*", "/apis/batch/v1/*", 1, 429);
    let response = api.send("GET", JOBS, None, None).expect("an answer");
    assert_eq!(
        (response.0, response.1["reason"].as_str()),
        (429, Some("TooManyRequests"))
    );
    sim.fail_next("PUT", &format!("{JOBS}/j"), 1, 409);
    let current = api.get(&format!("{JOBS}/j")).1;
    let (code, conflict) = api.put(&format!("{JOBS}/j"), &current);
    assert_eq!(
        (code, conflict["message"].as_str()),
        (
            409,
            Some(
                "Operation cannot be fulfilled on jobs.batch \"j\": the object has been modified; please apply your changes to the latest version and try again"
            )
        )
    );

    sim.drop_next("GET", &format!("{JOBS}/j"), 1);
    assert!(
        api.send("GET", &format!("{JOBS}/j"), None, None).is_err(),
        "a dropped call gets no answer"
    );
    sim.delay_next(
        "GET",
        &format!("{JOBS}/j"),
        1,
        std::time::Duration::from_millis(20),
    );
    assert_eq!(
        api.get(&format!("{JOBS}/j")).0,
        200,
        "a delayed call is still served"
    );
    sim.fault(Fault::new("GET", JOBS, 1, FaultAction::Status(503)).with_query("watch=true"));
    assert_eq!(api.get(JOBS).0, 200, "the rule only matches watches");
    assert_eq!(api.get(&format!("{JOBS}?watch=true")).0, 503);
    assert_eq!(sim.pending_faults(), 0);

    let log = sim.requests();
    let statuses: Vec<u16> = log
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 201]);
    assert!(
        log.iter().any(|r| r.status == 0),
        "the dropped call is logged with status 0"
    );
    assert!(
        log.iter()
            .all(|r| r.user.as_deref() == Some("kube-sim-admin"))
    );
    assert!(
        log.iter().all(|r| !r.summary().contains("busybox")),
        "summaries leave bodies out"
    );
}
