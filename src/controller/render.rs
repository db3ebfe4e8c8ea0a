//! `scalr-agent render`: the Job and credentials Secret the controller would create for a sample task,
//! with the Secret's values redacted — a debugging aid for the task template.
//!
//! Runs on the main thread, once. Reads an `AgentTaskTemplate` manifest from a file (YAML or JSON, one
//! or more documents, e.g. `helm template` output; `-` is stdin), builds the task with the same
//! [`build_task`] the launcher uses, and returns YAML (two documents) or JSON (a `v1` `List`). The
//! sample token never appears in the output: the Secret is printed through
//! [`super::job_builder::CredentialsSecret::redacted`]. Without `--template`, the template is read
//! from the cluster: the object `SCALR_AGENT_KUBERNETES_TASK_TEMPLATE` (or `--name`) in the
//! configured namespace, through the same Kubernetes configuration the controller uses.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use argh::FromArgs;
use serde::Deserialize;
use serde_json::{Value, json};

use super::job_builder::{BuildError, LaunchContext, build_task};
use super::template::{AgentTaskTemplate, KIND, TemplateError};
use crate::model::TaskIdentity;
use crate::secret::Secret;

/// The stand-in token the sample task is built with; only ever printed as `***`.
const SAMPLE_TOKEN: &str = "render-sample-task-token-not-a-credential";
/// Namespace when neither the configuration nor the manifest names one.
const DEFAULT_NAMESPACE: &str = "default";

/// Print the Job and Secret the controller would create for a sample task (Secret values redacted).
#[derive(FromArgs, Clone, Debug, PartialEq)]
#[argh(subcommand, name = "render")]
pub struct RenderCmd {
    /// file with the AgentTaskTemplate manifest: YAML or JSON, one or more documents (e.g. helm
    /// template output); - reads stdin; without it, the template is read from the cluster
    #[argh(option)]
    pub template: Option<String>,
    /// name of the AgentTaskTemplate to use when the file holds several, or to read from the
    /// cluster (default: SCALR_AGENT_KUBERNETES_TASK_TEMPLATE)
    #[argh(option)]
    pub name: Option<String>,
    /// sample task id
    #[argh(option, default = "String::from(\"task-sample0000000001\")")]
    pub task_id: String,
    /// sample run id
    #[argh(option, default = "String::from(\"run-sample0000000001\")")]
    pub run_id: String,
    /// sample run stage: plan, apply, policy…
    #[argh(option, default = "String::from(\"plan\")")]
    pub stage: String,
    /// sample workspace id
    #[argh(option, default = "String::from(\"ws-sample0000000001\")")]
    pub workspace_id: String,
    /// sample environment id
    #[argh(option, default = "String::from(\"env-sample0000000001\")")]
    pub environment_id: String,
    /// output format: yaml (default) or json
    #[argh(option, default = "OutputFormat::Yaml")]
    pub output: OutputFormat,
}

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Two YAML documents, Job then Secret.
    Yaml,
    /// One `v1` `List` holding both.
    Json,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "yaml" => Ok(OutputFormat::Yaml),
            "json" => Ok(OutputFormat::Json),
            other => Err(format!("unknown output format {other:?}: use yaml or json")),
        }
    }
}

/// Where the rendered objects go, from the configuration (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenderContext {
    /// `SCALR_AGENT_KUBERNETES_NAMESPACE` when set.
    pub namespace: Option<String>,
    /// The agent name (`SCALR_AGENT_NAME`).
    pub controller_id: Option<String>,
    /// `SCALR_AGENT_KUBERNETES_TASK_TEMPLATE`: the object read from the cluster without `--template`.
    pub task_template: Option<String>,
}

/// What `render` prints: the manifest on stdout, warnings on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The Job and the redacted Secret.
    pub text: String,
    /// Template fields Kubernetes 1.33 does not know, and the like.
    pub warnings: Vec<String>,
}

/// Why rendering failed.
#[derive(Debug)]
pub enum RenderError {
    /// The file could not be read.
    ReadTemplate { path: String, error: std::io::Error },
    /// A document is not valid YAML or JSON.
    ParseManifest {
        path: String,
        document: usize,
        cause: String,
    },
    /// No document is an AgentTaskTemplate.
    NoTemplate { path: String, kinds: Vec<String> },
    /// Several are, and `--name` did not choose.
    SeveralTemplates { path: String, names: Vec<String> },
    /// `--name` matched none.
    TemplateNotFound {
        path: String,
        name: String,
        names: Vec<String>,
    },
    /// The template is invalid.
    Template(TemplateError),
    /// The sample task is incomplete.
    Build(BuildError),
    /// Printing failed (a bug).
    Serialize(String),
    /// The template could not be read from the cluster.
    Cluster { name: String, detail: String },
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::ReadTemplate { path, error } => {
                write!(f, "cannot read {path}: {error}; check the --template path")
            }
            RenderError::ParseManifest {
                path,
                document,
                cause,
            } => write!(
                f,
                "{path}: document {document} is not valid YAML or JSON: {cause}"
            ),
            RenderError::NoTemplate { path, kinds } => write!(
                f,
                "{path} holds no {KIND} (found: {}); render the chart's templates/task-template.yaml",
                if kinds.is_empty() {
                    "nothing".to_string()
                } else {
                    kinds.join(", ")
                }
            ),
            RenderError::SeveralTemplates { path, names } => write!(
                f,
                "{path} holds several {KIND}s ({}); choose one with --name",
                names.join(", ")
            ),
            RenderError::TemplateNotFound { path, name, names } => write!(
                f,
                "{path} has no {KIND} named {name:?} (it has: {})",
                names.join(", ")
            ),
            RenderError::Template(e) => write!(f, "{e}"),
            RenderError::Build(e) => write!(f, "{e}"),
            RenderError::Serialize(e) => write!(f, "cannot print the objects: {e}"),
            RenderError::Cluster { name, detail } => write!(
                f,
                "cannot read AgentTaskTemplate {name} from the cluster: {detail}; pass --template \
                 FILE to render from a manifest instead"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

/// Reads `cmd.template` (or stdin for `-`, or the cluster without it) and renders it.
pub fn run(cmd: &RenderCmd, ctx: &RenderContext) -> Result<Rendered, RenderError> {
    let Some(path) = cmd.template.as_deref() else {
        return from_cluster(cmd, ctx);
    };
    let mut text = String::new();
    let read = if path == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    read.map_err(|error| RenderError::ReadTemplate {
        path: path.to_string(),
        error,
    })?;
    render(&text, cmd, ctx)
}

/// Reads the template from the cluster (in-cluster, `KUBECONFIG` or `~/.kube/config`) and renders it.
pub fn from_cluster(cmd: &RenderCmd, ctx: &RenderContext) -> Result<Rendered, RenderError> {
    use crate::kube::{Client, Explicit, KubeConfig, KubeEnv};
    let name = cmd
        .name
        .clone()
        .or_else(|| ctx.task_template.clone())
        .unwrap_or_else(|| "scalr-agent-task-template".to_string());
    let fail = |detail: String| RenderError::Cluster {
        name: name.clone(),
        detail,
    };
    let explicit = Explicit {
        namespace: ctx.namespace.clone(),
        ..Explicit::default()
    };
    let config = KubeConfig::discover(&KubeEnv::from_process(), &explicit)
        .map_err(|e| fail(e.to_string()))?;
    let client = Client::new(&config, &crate::http::HttpOptions::default())
        .map_err(|e| fail(e.to_string()))?;
    let cluster = super::cluster::KubeCluster::new(
        &client,
        &config.namespace,
        crate::http::RetryPolicy::fast(3),
        None,
    );
    let value = super::cluster::Cluster::get_template(&cluster, &name)
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| {
            fail(format!(
                "it does not exist in namespace {}; is the chart installed there?",
                config.namespace
            ))
        })?;
    let ctx = RenderContext {
        namespace: Some(config.namespace.clone()),
        ..ctx.clone()
    };
    let cmd = RenderCmd {
        name: Some(name.clone()),
        template: Some(format!("cluster:{}/{name}", config.namespace)),
        ..cmd.clone()
    };
    render_value(&value, &cmd, &ctx)
}

/// Renders one `AgentTaskTemplate` object.
pub fn render_value(
    value: &Value,
    cmd: &RenderCmd,
    ctx: &RenderContext,
) -> Result<Rendered, RenderError> {
    let text = serde_json::to_string(value).map_err(|e| RenderError::Serialize(e.to_string()))?;
    render(&text, cmd, ctx)
}

/// Renders the manifest text for the sample task `cmd` describes.
pub fn render(
    manifest: &str,
    cmd: &RenderCmd,
    ctx: &RenderContext,
) -> Result<Rendered, RenderError> {
    let path = cmd.template.as_deref().unwrap_or("-");
    let docs = documents(manifest).map_err(|(document, cause)| RenderError::ParseManifest {
        path: path.to_string(),
        document,
        cause,
    })?;
    let chosen = choose(&docs, path, cmd.name.as_deref())?;
    let template = AgentTaskTemplate::from_value(chosen).map_err(RenderError::Template)?;
    let identity = TaskIdentity {
        task_id: cmd.task_id.clone(),
        run_id: cmd.run_id.clone(),
        stage: cmd.stage.clone(),
        workspace_id: cmd.workspace_id.clone(),
        environment_id: cmd.environment_id.clone(),
        attempt: 1,
    };
    let launch = LaunchContext {
        namespace: ctx
            .namespace
            .clone()
            .or_else(|| template.namespace().map(str::to_string))
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        instance: template
            .instance()
            .unwrap_or_else(|| template.name())
            .to_string(),
        controller_id: ctx
            .controller_id
            .clone()
            .unwrap_or_else(|| "scalr-agent-render".to_string()),
    };
    let built = build_task(&template, &identity, &Secret::new(SAMPLE_TOKEN), &launch)
        .map_err(RenderError::Build)?;
    let secret = built.secret.redacted();
    let text = match cmd.output {
        OutputFormat::Yaml => {
            let job = serde_yaml_ng::to_string(&built.job)
                .map_err(|e| RenderError::Serialize(e.to_string()))?;
            let secret = serde_yaml_ng::to_string(&secret)
                .map_err(|e| RenderError::Serialize(e.to_string()))?;
            format!(
                "# The Job and credentials Secret scalr-agent would create for a sample task\n\
                 # (AgentTaskTemplate {}; Secret values redacted).\n---\n{job}---\n{secret}",
                template.name()
            )
        }
        OutputFormat::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": [built.job, secret]});
            let mut s = serde_json::to_string_pretty(&list)
                .map_err(|e| RenderError::Serialize(e.to_string()))?;
            s.push('\n');
            s
        }
    };
    Ok(Rendered {
        text,
        warnings: template.warnings().to_vec(),
    })
}

/// The documents of a manifest, `List`s flattened, empty documents skipped. Errors carry the
/// 1-based document number.
fn documents(text: &str) -> Result<Vec<Value>, (usize, String)> {
    let mut raw = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        raw.push(serde_json::from_str::<Value>(text).map_err(|e| (1, e.to_string()))?);
    } else {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            raw.push(Value::deserialize(doc).map_err(|e| (i + 1, e.to_string()))?);
        }
    }
    let mut out = Vec::new();
    for doc in raw {
        match doc {
            Value::Null => {}
            Value::Array(items) => out.extend(items),
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    o.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

fn choose<'a>(docs: &'a [Value], path: &str, name: Option<&str>) -> Result<&'a Value, RenderError> {
    let name_of = |d: &Value| {
        d.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_string()
    };
    let templates: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("kind").and_then(Value::as_str) == Some(KIND))
        .collect();
    let names: Vec<String> = templates.iter().map(|d| name_of(d)).collect();
    match (name, templates.as_slice()) {
        (Some(wanted), _) => templates
            .iter()
            .find(|d| name_of(d) == wanted)
            .copied()
            .ok_or_else(|| RenderError::TemplateNotFound {
                path: path.to_string(),
                name: wanted.to_string(),
                names,
            }),
        (None, [one]) => Ok(one),
        (None, []) => Err(RenderError::NoTemplate {
            path: path.to_string(),
            kinds: docs
                .iter()
                .map(|d| {
                    d.get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string()
                })
                .collect(),
        }),
        (None, _) => Err(RenderError::SeveralTemplates {
            path: path.to_string(),
            names,
        }),
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
