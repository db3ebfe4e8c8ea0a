//! The Kubernetes API simulator's own behaviour, through plain HTTP requests made with our HTTP
//! layer: discovery, metadata and resourceVersions, conflicts, selectors, paging, patch types,
//! deletion and garbage collection (here); watches (`watch.rs`); authentication, RBAC and faults
//! (`access.rs`).

mod access;
mod watch;

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use scalr_agent::http::{CaSource, HttpClient, HttpError, HttpOptions, Request};
use serde_json::{Value, json};

use crate::support::kube_sim::{KubeSim, KubeSimOptions, Propagation};

/// Long enough for anything the simulator does asynchronously (the collector).
pub const WAIT: Duration = Duration::from_secs(10);

/// A client for one identity.
pub struct Api {
    http: HttpClient,
    base: String,
    token: Option<String>,
}

impl Api {
    /// As the simulator's admin.
    pub fn admin(sim: &KubeSim) -> Api {
        Api::with_token(sim, Some(sim.admin_token()))
    }

    /// As the holder of `token` (or nobody).
    pub fn with_token(sim: &KubeSim, token: Option<&str>) -> Api {
        Api::with_options(sim, token, HttpOptions::default())
    }

    /// With extra HTTP options (client certificates).
    pub fn with_options(sim: &KubeSim, token: Option<&str>, mut options: HttpOptions) -> Api {
        options.ca = sim
            .ca_pem()
            .map(|pem| CaSource::Pem(pem.as_bytes().to_vec()));
        options.read_timeout = Duration::from_secs(30);
        Api {
            http: HttpClient::new(&options).expect("an HTTP client"),
            base: sim.url(),
            token: token.map(String::from),
        }
    }

    fn request(&self, method: &str, path: &str) -> Request {
        let mut r = Request::new(method, format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(t) = &self.token {
            r = r.header("Authorization", format!("Bearer {t}"));
        }
        r
    }

    /// Sends and decodes the JSON answer (Null when the body is not JSON).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value), HttpError> {
        let mut r = self.request(method, path);
        if let Some(ct) = content_type {
            r = r.header("Content-Type", ct);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let response = self.http.send(r)?;
        let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        Ok((response.status, value))
    }

    fn must(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.send(
            method,
            path,
            content_type,
            body.map(|b| b.to_string().into_bytes()),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.must("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.must("POST", path, Some("application/json"), Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.must("PUT", path, Some("application/json"), Some(body))
    }

    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.must("PATCH", path, Some(content_type), Some(body))
    }

    pub fn delete(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.must("DELETE", path, body.map(|_| "application/json"), body)
    }

    /// Opens a watch (`path` with its query); events are read one line at a time.
    pub fn watch(&self, path: &str) -> Watch {
        let response = self
            .http
            .stream(self.request("GET", path))
            .unwrap_or_else(|e| panic!("watch {path}: {e:?}"));
        assert_eq!(response.status, 200, "watch {path}");
        Watch {
            lines: BufReader::new(response.body),
        }
    }
}

/// An open watch stream.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send>>,
}

impl Watch {
    /// The next event; `Ok(None)` when the server ended the stream cleanly.
    pub fn next(&mut self) -> std::io::Result<Option<Value>> {
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&line).expect("one JSON event per line"),
        ))
    }

    /// The next event, which must exist.
    pub fn event(&mut self) -> Value {
        self.next()
            .expect("the stream reads")
            .expect("an event before the end")
    }

    /// The next event that is not a BOOKMARK.
    pub fn change(&mut self) -> Value {
        loop {
            let e = self.event();
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

/// A minimal valid Job.
pub fn job(name: &str) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox:1.36"}]}}}})
}

/// A minimal Pod with labels.
pub fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a resourceVersion")
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const PODS: &str = "/api/v1/namespaces/default/pods";

/// A CRD like the chart's AgentTaskTemplate.
pub fn template_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "agenttasktemplates.scalr.io"},
        "spec": {"group": "scalr.io", "scope": "Namespaced",
            "names": {"plural": "agenttasktemplates", "singular": "agenttasktemplate", "kind": "AgentTaskTemplate"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[test]
fn discovery_serves_builtins_and_a_crds_group_while_the_crd_exists() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let (code, version) = api.get("/version");
    assert_eq!(
        (code, version["gitVersion"].as_str()),
        (200, Some("v1.33.0"))
    );
    assert_eq!(api.get("/api").1["versions"], json!(["v1"]));
    let core = api.get("/api/v1").1;
    let pods = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "pods")
        .cloned()
        .expect("pods");
    assert_eq!(
        (
            pods["kind"].clone(),
            pods["namespaced"].clone(),
            pods["shortNames"].clone()
        ),
        (json!("Pod"), json!(true), json!(["po"]))
    );
    let apps = api.get("/apis/apps/v1").1;
    assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
    let group_names = |api: &Api| -> Vec<String> {
        api.get("/apis").1["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["name"].as_str().map(String::from))
            .collect()
    };
    assert!(group_names(&api).contains(&"batch".to_string()));
    assert!(!group_names(&api).contains(&"scalr.io".to_string()));
    assert_eq!(
        api.get("/apis/scalr.io/v1/namespaces/default/agenttasktemplates")
            .0,
        404
    );

    let (code, crd) = api.post(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &template_crd(),
    );
    assert_eq!(code, 201, "{crd}");
    let established = crd["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{crd}");
    assert!(group_names(&api).contains(&"scalr.io".to_string()));
    assert_eq!(
        api.get("/apis/scalr.io").1["preferredVersion"]["groupVersion"],
        "scalr.io/v1"
    );
    assert_eq!(
        api.get("/apis/scalr.io/v1").1["resources"][0]["kind"],
        "AgentTaskTemplate"
    );
    let cr = json!({"apiVersion": "scalr.io/v1", "kind": "AgentTaskTemplate", "metadata": {"name": "t"},
        "spec": {"basename": "b", "jobTemplate": {}}});
    let (code, created) = api.post(
        "/apis/scalr.io/v1/namespaces/default/agenttasktemplates",
        &cr,
    );
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let (_, list) = api.get("/apis/scalr.io/v1/namespaces/default/agenttasktemplates");
    assert_eq!(
        list["items"][0]["kind"], "AgentTaskTemplate",
        "custom lists carry kind"
    );

    let (code, _) = api.delete(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/agenttasktemplates.scalr.io",
        None,
    );
    assert_eq!(code, 200);
    assert!(
        sim.wait_until(WAIT, |s| s.list("customresourcedefinitions", "").is_empty()),
        "{}",
        sim.dump()
    );
    assert_eq!(
        api.get("/apis/scalr.io/v1/namespaces/default/agenttasktemplates")
            .0,
        404
    );
    assert!(!group_names(&api).contains(&"scalr.io".to_string()));
    assert!(
        sim.dump()
            .lines()
            .all(|l| !l.contains("agenttasktemplates.scalr.io default/t")),
        "the CR went with its CRD"
    );
}

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

#[test]
fn delete_honours_preconditions_and_propagation_policies() {
    let sim = KubeSim::start(KubeSimOptions::default());
    let api = Api::admin(&sim);
    let owned_by = |owner: &Value, block: bool| {
        json!([{"apiVersion": "batch/v1", "kind": "Job",
        "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": block}])
    };
    let secret = |name: &str, owner: &Value| json!({"metadata": {"name": name, "ownerReferences": owned_by(owner, true)}});

    // Background: the owner goes at once, the collector takes its dependents.
    let (_, j1) = api.post(JOBS, &job("j1"));
    api.post(
        "/api/v1/namespaces/default/secrets",
        &secret("j1-credentials", &j1),
    );
    let (code, wrong) = api.delete(
        &format!("{JOBS}/j1"),
        Some(&json!({"preconditions": {"uid": "not-it"}})),
    );
    assert_eq!((code, wrong["reason"].as_str()), (409, Some("Conflict")));
    let (code, done) = api.delete(
        &format!("{JOBS}/j1"),
        Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1",
        "propagationPolicy": "Background", "preconditions": {"uid": j1["metadata"]["uid"]}})),
    );
    assert_eq!(
        (
            code,
            done["status"].as_str(),
            done["details"]["uid"].clone()
        ),
        (200, Some("Success"), j1["metadata"]["uid"].clone())
    );
    assert!(
        sim.wait_until(WAIT, |s| s
            .get("secrets", "default", "j1-credentials")
            .is_none()),
        "{}",
        sim.dump()
    );

    // Foreground: the owner stays, marked, until blocking dependents are gone.
    let (_, j2) = api.post(JOBS, &job("j2"));
    let mut held = pod("j2-pod", json!({}));
    held["metadata"]["ownerReferences"] = owned_by(&j2, true);
    held["metadata"]["finalizers"] = json!(["test/hold"]);
    api.post(PODS, &held);
    let (code, pending) = api.delete(&format!("{JOBS}/j2?propagationPolicy=Foreground"), None);
    assert_eq!(code, 200);
    assert!(pending["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        pending["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    assert!(
        sim.wait_until(WAIT, |s| s
            .get("pods", "default", "j2-pod")
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())),
        "{}",
        sim.dump()
    );
    assert!(
        sim.get("jobs", "default", "j2").is_some(),
        "the owner waits for its blocking dependent"
    );
    let (code, _) = api.patch(
        &format!("{PODS}/j2-pod"),
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    );
    assert_eq!(code, 200);
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "default", "j2").is_none()),
        "{}",
        sim.dump()
    );
    assert!(sim.get("pods", "default", "j2-pod").is_none());

    // batch/v1 Jobs orphan their dependents when the request names no policy.
    let (_, j3) = api.post(JOBS, &job("j3"));
    api.post(
        "/api/v1/namespaces/default/secrets",
        &secret("j3-credentials", &j3),
    );
    api.delete(&format!("{JOBS}/j3"), None);
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "default", "j3").is_none()),
        "{}",
        sim.dump()
    );
    let orphan = sim
        .get("secrets", "default", "j3-credentials")
        .expect("orphaned, not collected");
    assert_eq!(orphan["metadata"]["ownerReferences"], json!([]));

    // A dependent created after its owner is gone is collected.
    api.post("/api/v1/namespaces/default/secrets", &secret("late", &j1));
    assert!(
        sim.wait_until(WAIT, |s| s.get("secrets", "default", "late").is_none()),
        "{}",
        sim.dump()
    );
    assert!(sim.delete(
        "secrets",
        "default",
        "j3-credentials",
        Propagation::Background
    ));
}

#[test]
fn deleting_a_namespace_empties_it_first() {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec!["ci".into()],
        ..KubeSimOptions::default()
    });
    let api = Api::admin(&sim);
    let mut held = json!({"metadata": {"name": "held", "finalizers": ["test/hold"]}});
    assert_eq!(api.post("/api/v1/namespaces/ci/configmaps", &held).0, 201);
    assert_eq!(
        api.post("/apis/batch/v1/namespaces/ci/jobs", &job("j")).0,
        201
    );
    let (code, ns) = api.delete("/api/v1/namespaces/ci", None);
    assert_eq!(
        (code, ns["status"]["phase"].as_str()),
        (200, Some("Terminating"))
    );
    assert!(
        sim.wait_until(WAIT, |s| s.get("jobs", "ci", "j").is_none()),
        "{}",
        sim.dump()
    );
    let (code, refused) = api.post(
        "/api/v1/namespaces/ci/configmaps",
        &json!({"metadata": {"name": "new"}}),
    );
    assert_eq!(code, 403);
    assert_eq!(
        refused["message"],
        "configmaps \"new\" is forbidden: unable to create new content in namespace ci because it is being terminated"
    );
    assert!(
        sim.get("namespaces", "", "ci").is_some(),
        "a finalizer inside holds the namespace"
    );
    held = api.get("/api/v1/namespaces/ci/configmaps/held").1;
    held["metadata"]["finalizers"] = json!([]);
    assert_eq!(
        api.put("/api/v1/namespaces/ci/configmaps/held", &held).0,
        200
    );
    assert!(
        sim.wait_until(WAIT, |s| s.get("namespaces", "", "ci").is_none()),
        "{}",
        sim.dump()
    );
}
