//! The Helm chart `helm/agent-job`, rendered by real helm (v4) and checked as parsed objects.
//!
//! `templates` asserts on the controller Deployment and the task Job template and parses every
//! object as its Kubernetes type; `policies` on storage, disruption budgets, the metadata
//! NetworkPolicy and CA bundles; `rbac` that the Role equals `scalr_agent::permissions`; `values` on
//! what users may pass (schema, lint, secrets, NOTES); `readme` that every command of the chart's
//! README renders and does what it says, and that README.md is current. Applying the rendered objects
//! to the Kubernetes API simulator with real kubectl is `kubectl::chart`.

mod policies;
mod rbac;
mod readme;
mod templates;
mod values;

use crate::support::tools;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;

/// Release name and namespace every render uses, as in the README's commands.
pub const RELEASE: &str = "scalr-agent";
pub const NAMESPACE: &str = "scalr-agent";

pub fn chart_dir() -> PathBuf {
    tools::repo_root().join("helm/agent-job")
}

/// The objects of one `helm template` run, CRDs included, in helm's order.
pub struct Rendered {
    pub objects: Vec<Value>,
}

/// Renders the chart with extra helm arguments (`--set k=v`, `-f file`); panics with helm's error.
pub fn render(args: &[&str]) -> Rendered {
    match try_render(args) {
        Ok(r) => r,
        Err(e) => panic!("helm template {args:?} failed:\n{e}"),
    }
}

/// Renders the chart, returning helm's stderr when it refuses.
pub fn try_render(args: &[&str]) -> Result<Rendered, String> {
    let out = tools::helm()
        .args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--include-crds"])
        .args(args)
        .output()
        .expect("run helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    Ok(Rendered {
        objects: parse_documents(&text),
    })
}

/// Every non-empty document of a multi-document YAML stream, as JSON values.
pub fn parse_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

impl Rendered {
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of `kind`; panics listing what was rendered when there is not exactly one.
    pub fn one(&self, kind: &str) -> &Value {
        let found = self.of_kind(kind);
        assert_eq!(
            found.len(),
            1,
            "want one {kind}, rendered: {:?}",
            self.summary()
        );
        found[0]
    }

    /// The object of `kind` named `name`.
    pub fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}, rendered: {:?}", self.summary()))
    }

    /// The one object of `kind`, as its k8s-openapi type.
    pub fn typed<T: DeserializeOwned>(&self, kind: &str) -> T {
        serde_json::from_value(self.one(kind).clone())
            .unwrap_or_else(|e| panic!("{kind} does not parse as its Kubernetes type: {e}"))
    }

    /// `kind/name` of every object, for failure messages.
    pub fn summary(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"]
                )
            })
            .collect()
    }

    /// The controller's pod spec.
    pub fn controller_pod(&self) -> &Value {
        &self.one("Deployment")["spec"]["template"]["spec"]
    }

    /// The task Job template (`spec.jobTemplate` of the AgentTaskTemplate).
    pub fn job_template(&self) -> &Value {
        &self.one("AgentTaskTemplate")["spec"]["jobTemplate"]
    }

    /// The task pod spec.
    pub fn task_pod(&self) -> &Value {
        &self.job_template()["spec"]["template"]["spec"]
    }
}

/// The container (or init container) `name` of a pod spec.
pub fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod:#}"))
}

/// The plain value of env var `name` of a container; `None` when absent or not a literal value.
pub fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env_var(container, name).and_then(|e| e["value"].as_str())
}

/// The env var entry `name` of a container.
pub fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

/// Names of the env vars of a container.
pub fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_array()
        .map(|v| v.iter().filter_map(|e| e["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The volume `name` of a pod spec.
pub fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no volume {name} in {:#}", pod["volumes"]))
}

/// The mount of volume `name` in a container.
pub fn mount<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// Writes a values file for `-f`; the file lives as long as the returned handle.
pub fn values_file(yaml: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp values file");
    file.write_all(yaml.as_bytes()).expect("write values file");
    file
}
