//! Objects through the API: server-set metadata and one resourceVersion, Status errors, replace
//! with optimistic concurrency, the status subresource, selectors, paging and the patch types.

use serde_json::json;

use super::{Api, JOBS, PODS, job, names, pod, rv, template_crd};
use crate::support::kube_sim::{KubeSim, KubeSimOptions};

#[test]
fn create_stamps_metadata_and_one_global_resource_version_and_errors_like_the_server() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let (code, first) = api.post("/api/v1/namespaces/default/configmaps", &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}));
    assert_eq!(code, 201);
    let (_, second) = api.post(JOBS, &job("j"));
    assert!(rv(&second) > rv(&first), "one clock across resource types");
    assert_eq!(second["metadata"]["generation"], 1);
    assert_eq!(second["metadata"]["uid"].as_str().map(str::len), Some(36));
    assert!(
        second["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(
        second["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        second["metadata"]["uid"]
    );
    assert_eq!(api.get(&format!("{JOBS}/j")).1, second);

    let (code, exists) = api.post(JOBS, &job("j"));
    assert_eq!(code, 409);
    assert_eq!(
        exists,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch \"j\" already exists", "reason": "AlreadyExists",
        "details": {"name": "j", "group": "batch", "kind": "jobs"}, "code": 409})
    );
    let (code, missing) = api.get(&format!("{JOBS}/x"));
    assert_eq!(code, 404);
    assert_eq!(
        missing,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "jobs.batch \"x\" not found", "reason": "NotFound",
        "details": {"name": "x", "group": "batch", "kind": "jobs"}, "code": 404})
    );
    let (code, no_ns) = api.post("/apis/batch/v1/namespaces/nope/jobs", &job("j"));
    assert_eq!(
        (code, no_ns["message"].as_str()),
        (404, Some("namespaces \"nope\" not found"))
    );
    let mut bad = job("Bad_Name");
    bad["metadata"]["labels"] = json!({"scalr.io/task-id": "not valid!"});
    let (code, invalid) = api.post(JOBS, &bad);
    assert_eq!((code, invalid["reason"].as_str()), (422, Some("Invalid")));
    let fields: Vec<&str> = invalid["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["metadata.name", "metadata.labels"]);

    let (code, dry) = api.post(&format!("{JOBS}?dryRun=All"), &job("dry"));
    assert_eq!((code, dry["metadata"]["name"].as_str()), (201, Some("dry")));
    assert!(
        sim.get("jobs", "default", "dry").is_none(),
        "a dry run stores nothing"
    );
    let (code, generated) = api.post(
        "/api/v1/namespaces/default/configmaps",
        &json!({"metadata": {"generateName": "cm-"}}),
    );
    assert_eq!(code, 201);
    assert!(
        generated["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("cm-") && n.len() == 8)
    );
    let (code, secret) = api.post(
        "/api/v1/namespaces/default/secrets",
        &json!({"metadata": {"name": "s"}, "stringData": {"token": "t0k"}}),
    );
    assert_eq!(
        (
            code,
            secret["data"]["token"].as_str(),
            secret["type"].as_str()
        ),
        (201, Some("dDBr"), Some("Opaque"))
    );
    assert!(secret.get("stringData").is_none());
}

#[test]
fn replace_checks_the_resource_version_and_the_status_subresource_is_separate() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let (_, created) = api.post(JOBS, &job("j"));
    let mut stale = created.clone();
    stale["metadata"]["labels"] = json!({"a": "1"});
    let (code, updated) = api.put(&format!("{JOBS}/j"), &stale);
    assert_eq!(code, 200, "{updated}");
    assert!(rv(&updated) > rv(&created));
    let (code, conflict) = api.put(&format!("{JOBS}/j"), &stale);
    assert_eq!(code, 409);
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on jobs.batch \"j\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let (_, same) = api.put(&format!("{JOBS}/j"), &updated);
    assert_eq!(rv(&same), rv(&updated), "a no-op replace writes nothing");

    let mut with_status = updated.clone();
    with_status["status"] = json!({"active": 1});
    with_status["spec"]["parallelism"] = json!(3);
    let (_, via_main) = api.put(&format!("{JOBS}/j"), &with_status);
    assert_eq!(
        via_main["status"],
        json!({}),
        "the main resource ignores status"
    );
    assert_eq!(
        via_main["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    let mut status_write = via_main.clone();
    status_write["status"] = json!({"active": 1});
    status_write["spec"]["parallelism"] = json!(9);
    let (code, via_status) = api.put(&format!("{JOBS}/j/status"), &status_write);
    assert_eq!(code, 200);
    assert_eq!(
        (
            via_status["status"]["active"].clone(),
            via_status["spec"]["parallelism"].clone()
        ),
        (json!(1), json!(3))
    );
    assert_eq!(
        via_status["metadata"]["generation"], 2,
        "status writes keep generation"
    );
    let (code, merged) = api.patch(
        &format!("{JOBS}/j/status"),
        "application/merge-patch+json",
        &json!({"status": {"succeeded": 1}}),
    );
    assert_eq!(
        (
            code,
            merged["status"]["succeeded"].clone(),
            merged["status"]["active"].clone()
        ),
        (200, json!(1), json!(1))
    );
    let mut template = merged.clone();
    template["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:1");
    assert_eq!(
        api.put(&format!("{JOBS}/j"), &template).0,
        422,
        "a Job's template is immutable"
    );

    api.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &template_crd(),
    );
    let crs = "/apis/scalr.io/v1/namespaces/default/agenttasktemplates";
    api.post(crs, &json!({"apiVersion": "scalr.io/v1", "kind": "AgentTaskTemplate", "metadata": {"name": "t"}, "spec": {}}));
    let (code, unconditional) = api.put(&format!("{crs}/t"), &json!({"apiVersion": "scalr.io/v1", "kind": "AgentTaskTemplate", "metadata": {"name": "t"}, "spec": {"x": 1}}));
    assert_eq!(
        code, 422,
        "custom resources need a resourceVersion on replace: {unconditional}"
    );
}

#[test]
fn label_and_field_selectors_and_consistent_paging() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    for (name, app) in [
        ("p1", "a"),
        ("p2", "b"),
        ("p3", "a"),
        ("p4", "a"),
        ("p5", "c"),
    ] {
        assert_eq!(
            api.post(PODS, &pod(name, json!({"app": app, "tier": "web"})))
                .0,
            201
        );
    }
    sim.set_status("pods", "default", "p3", json!({"phase": "Running"}));
    let list = |q: &str| api.get(&format!("{PODS}?{q}"));
    assert_eq!(names(&list("labelSelector=app%3Da").1), ["p1", "p3", "p4"]);
    assert_eq!(
        names(&list("labelSelector=app!%3Da,tier%3Dweb").1),
        ["p2", "p5"]
    );
    assert_eq!(names(&list("labelSelector=app+in+(b,c)").1), ["p2", "p5"]);
    assert_eq!(
        names(&list("fieldSelector=status.phase%3DRunning").1),
        ["p3"]
    );
    assert_eq!(names(&list("fieldSelector=metadata.name%3Dp2").1), ["p2"]);
    assert_eq!(
        names(
            &api.get(
                "/api/v1/pods?fieldSelector=metadata.namespace%3Ddefault,status.phase!%3DRunning"
            )
            .1
        ),
        ["p1", "p2", "p4", "p5"]
    );
    let (code, bad) = list("fieldSelector=spec.foo%3Dx");
    assert_eq!(code, 400);
    assert_eq!(
        bad["message"],
        "Unable to find \"/v1, Resource=pods\" that match label selector \"\", field selector \"spec.foo=x\": field label not supported: spec.foo"
    );
    assert_eq!(list("labelSelector=a+in+b").0, 400);

    let (_, page1) = list("limit=2");
    assert_eq!(names(&page1), ["p1", "p2"]);
    assert_eq!(page1["metadata"]["remainingItemCount"], 3);
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    api.post(PODS, &pod("p0", json!({"app": "a"})));
    api.delete(&format!("{PODS}/p4"), None);
    let (_, page2) = list(&format!("limit=2&continue={token}"));
    assert_eq!(
        names(&page2),
        ["p3", "p4"],
        "pages read the snapshot of the first page"
    );
    assert_eq!(
        page2["metadata"]["resourceVersion"],
        page1["metadata"]["resourceVersion"]
    );
    let token2 = page2["metadata"]["continue"]
        .as_str()
        .expect("more to come")
        .to_string();
    let (_, page3) = list(&format!("limit=2&continue={token2}"));
    assert_eq!(names(&page3), ["p5"]);
    assert!(page3["metadata"].get("continue").is_none());
    let (_, exact) = list(&format!(
        "resourceVersion={}&resourceVersionMatch=Exact",
        page1["metadata"]["resourceVersion"].as_str().expect("rv")
    ));
    assert_eq!(names(&exact), ["p1", "p2", "p3", "p4", "p5"]);
    sim.compact();
    let (code, gone) = list(&format!("limit=2&continue={token2}"));
    assert_eq!((code, gone["reason"].as_str()), (410, Some("Expired")));
    let (code, too_old) = list(&format!(
        "resourceVersion={}&resourceVersionMatch=Exact",
        page1["metadata"]["resourceVersion"].as_str().expect("rv")
    ));
    assert_eq!((code, too_old["reason"].as_str()), (410, Some("Expired")));
    assert_eq!(names(&list("").1), ["p0", "p1", "p2", "p3", "p5"]);
}

#[test]
fn patch_types_merge_json_and_strategic() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1", "b": "2"}},
        "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}},
            "spec": {"containers": [{"name": "main", "image": "i:1", "env": [{"name": "A", "value": "1"}]}, {"name": "side", "image": "s:1"}]}}}});
    let path = "/apis/apps/v1/namespaces/default/deployments";
    assert_eq!(api.post(path, &deploy).0, 201);
    let d = format!("{path}/d");
    let (code, merged) = api.patch(
        &d,
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
    );
    assert_eq!(code, 200);
    assert_eq!(merged["metadata"]["labels"], json!({"b": "2", "c": "3"}));
    let (code, smp) = api.patch(
        &d,
        "application/strategic-merge-patch+json",
        &json!({"spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": "i:2", "env": [{"name": "B", "value": "2"}]}]}}}}),
    );
    assert_eq!(code, 200, "{smp}");
    let containers = &smp["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers.as_array().map(Vec::len),
        Some(2),
        "containers merge by name"
    );
    assert_eq!(
        (
            containers[0]["image"].clone(),
            containers[0]["env"].as_array().map(Vec::len)
        ),
        (json!("i:2"), Some(2))
    );
    assert_eq!(smp["metadata"]["generation"], 2);
    let (code, jp) = api.patch(
        &d,
        "application/json-patch+json",
        &json!([
        {"op": "test", "path": "/spec/replicas", "value": 1},
        {"op": "replace", "path": "/spec/replicas", "value": 3}]),
    );
    assert_eq!((code, jp["spec"]["replicas"].clone()), (200, json!(3)));
    let (code, failed) = api.patch(
        &d,
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/spec/replicas", "value": 1}]),
    );
    assert_eq!((code, failed["reason"].as_str()), (422, Some("Invalid")));
    let (code, stale) = api.patch(
        &d,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}),
    );
    assert_eq!((code, stale["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(
        api.patch(&d, "application/apply-patch+yaml", &json!({})).0,
        415
    );
    assert_eq!(
        api.patch(
            &format!("{path}/none"),
            "application/merge-patch+json",
            &json!({})
        )
        .0,
        404
    );

    api.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &template_crd(),
    );
    let crs = "/apis/scalr.io/v1/namespaces/default/agenttasktemplates";
    api.post(crs, &json!({"apiVersion": "scalr.io/v1", "kind": "AgentTaskTemplate", "metadata": {"name": "t"}, "spec": {"a": 1}}));
    let (code, unsupported) = api.patch(
        &format!("{crs}/t"),
        "application/strategic-merge-patch+json",
        &json!({"spec": {"b": 2}}),
    );
    assert_eq!(
        (code, unsupported["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    let (code, cr) = api.patch(
        &format!("{crs}/t"),
        "application/merge-patch+json",
        &json!({"spec": {"b": 2}}),
    );
    assert_eq!((code, cr["spec"].clone()), (200, json!({"a": 1, "b": 2})));
}
