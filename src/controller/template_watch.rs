//! The task template as the controller currently knows it: a [`TemplateCache`] shared by the
//! launcher threads, kept current by the `watch-template` thread ([`run`]) so an edit of the
//! `AgentTaskTemplate` applies to the next task without a restart.
//!
//! The watch selects the one object by `metadata.name`. Each version is validated once
//! ([`AgentTaskTemplate::from_value`]); a transition (valid → invalid, present → missing, fixed) is
//! logged with what to change. Until the watch has listed once, the launcher reads the object itself
//! ([`TemplateCache::current`]), so a missing CRD or RBAC rule shows as a task failure with a reason
//! rather than a wait.

use std::sync::{Arc, RwLock};

use crossbeam_channel::bounded;
use serde_json::Value;

use super::cluster::{Cluster, TemplateObject};
use super::template::{AgentTaskTemplate, TemplateError};
use crate::kube::{Api, KubeError, WatchConfig, WatchEvent, watcher};
use crate::shutdown::Shutdown;

/// What the controller knows about its template.
#[derive(Clone, Debug, PartialEq)]
pub enum TemplateState {
    /// Not read yet.
    Unknown,
    /// No object of that name (or the CRD is not installed).
    Missing,
    /// The API server would not give it (forbidden, unreachable): the error's text.
    Unreadable(String),
    /// Present but unusable.
    Invalid(TemplateError),
    /// Present and valid.
    Valid(Arc<AgentTaskTemplate>),
}

/// The shared, current template. Cheap to clone.
#[derive(Clone)]
pub struct TemplateCache {
    name: String,
    namespace: String,
    state: Arc<RwLock<TemplateState>>,
}

impl TemplateCache {
    /// A cache for the template `name` in `namespace`, not read yet.
    pub fn new(name: &str, namespace: &str) -> Self {
        TemplateCache {
            name: name.to_string(),
            namespace: namespace.to_string(),
            state: Arc::new(RwLock::new(TemplateState::Unknown)),
        }
    }

    /// The template's name (`SCALR_AGENT_KUBERNETES_TASK_TEMPLATE`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state now.
    pub fn state(&self) -> TemplateState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a new version of the object (`None`: it is gone) and logs the transition.
    pub fn apply(&self, object: Option<&Value>) {
        let next = match object {
            None => TemplateState::Missing,
            Some(value) => match AgentTaskTemplate::from_value(value) {
                Ok(t) => TemplateState::Valid(Arc::new(t)),
                Err(e) => TemplateState::Invalid(e),
            },
        };
        self.set(next);
    }

    /// Records that the object could not be read.
    pub fn unreadable(&self, error: &KubeError) {
        self.set(TemplateState::Unreadable(error.to_string()));
    }

    fn set(&self, next: TemplateState) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let changed = match (&*state, &next) {
            (TemplateState::Valid(a), TemplateState::Valid(b)) => a.spec() != b.spec(),
            (a, b) => a != b,
        };
        if changed {
            match &next {
                TemplateState::Valid(t) => {
                    log::info!(
                        "AgentTaskTemplate {} in namespace {} is valid (basename {}); new tasks use it",
                        self.name,
                        self.namespace,
                        t.basename()
                    );
                    for warning in t.warnings() {
                        log::warn!("{warning}");
                    }
                }
                TemplateState::Missing => log::error!("{}", self.missing_text()),
                TemplateState::Invalid(e) => {
                    log::error!("{e}; tasks fail until the template is fixed")
                }
                TemplateState::Unreadable(e) => log::error!(
                    "cannot read AgentTaskTemplate {} in namespace {}: {e}",
                    self.name,
                    self.namespace
                ),
                TemplateState::Unknown => {}
            }
        }
        *state = next;
    }

    /// What the user reads when the template is missing.
    pub fn missing_text(&self) -> String {
        format!(
            "AgentTaskTemplate {} not found in namespace {}: install or upgrade the chart (it creates \
             the CRD agenttasktemplates.scalr.io and the template), or point \
             SCALR_AGENT_KUBERNETES_TASK_TEMPLATE at an existing template",
            self.name, self.namespace
        )
    }

    /// The template to launch with, reading it through `cluster` if the watch has not yet; else the
    /// text of the failure the task gets.
    pub fn current(&self, cluster: &dyn Cluster) -> Result<Arc<AgentTaskTemplate>, String> {
        if self.state() == TemplateState::Unknown {
            match cluster.get_template(&self.name) {
                Ok(object) => self.apply(object.as_ref()),
                Err(e) => self.unreadable(&e),
            }
        }
        match self.state() {
            TemplateState::Valid(t) => Ok(t),
            TemplateState::Missing | TemplateState::Unknown => Err(self.missing_text()),
            TemplateState::Invalid(e) => Err(format!(
                "{e} (kubectl -n {} edit agenttasktemplate {})",
                self.namespace, self.name
            )),
            TemplateState::Unreadable(e) => Err(format!(
                "cannot read AgentTaskTemplate {} in namespace {}: {e}",
                self.name, self.namespace
            )),
        }
    }
}

/// Watches the template until shutdown, keeping `cache` current: the `watch-template` thread.
/// Returns the watch's 401 as an error (the credential is gone).
pub fn run(
    api: &Api<TemplateObject>,
    cache: &TemplateCache,
    shutdown: &Shutdown,
) -> Result<(), KubeError> {
    let config = WatchConfig {
        field_selector: Some(format!("metadata.name={}", cache.name())),
        ..WatchConfig::default()
    };
    let (tx, rx) = bounded(16);
    let consumer = {
        let cache = cache.clone();
        let name = cache.name().to_string();
        std::thread::Builder::new()
            .name("watch-template-apply".into())
            .spawn(move || {
                for event in rx {
                    match event {
                        WatchEvent::Restarted(objects) => {
                            let found = objects
                                .iter()
                                .find(|o: &&TemplateObject| {
                                    o.metadata.name.as_deref() == Some(&name)
                                })
                                .map(TemplateObject::to_value);
                            cache.apply(found.as_ref());
                        }
                        WatchEvent::Applied(o) => cache.apply(Some(&o.to_value())),
                        WatchEvent::Deleted(_) => cache.apply(None),
                    }
                }
            })
            .map_err(|e| {
                KubeError::Setup(crate::http::HttpError::Setup {
                    what: "thread watch-template-apply".into(),
                    detail: e.to_string(),
                })
            })?
    };
    let result = watcher::run(api, &config, &tx, shutdown);
    drop(tx);
    let _ = consumer.join();
    result
}
