//! The Kubernetes API simulator's own behaviour, through plain HTTP requests made with our HTTP
//! layer: the client helpers and discovery (here); metadata, resourceVersions, conflicts,
//! selectors, paging and patch types (`objects.rs`); deletion and garbage collection
//! (`delete.rs`); watches (`watch.rs`); authentication, RBAC and faults (`access.rs`).

mod access;
mod delete;
mod objects;
mod watch;

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use scalr_agent::http::{CaSource, HttpClient, HttpError, HttpOptions, Request};
use serde_json::{Value, json};

use crate::support::kube_sim::{KubeSim, KubeSimOptions};

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

pub fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a resourceVersion")
}

pub fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

pub const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
pub const PODS: &str = "/api/v1/namespaces/default/pods";

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
