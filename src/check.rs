//! `scalr-agent check`: a preflight that says, line by line, what works and what to fix.
//!
//! Runs on the caller's thread, once. Each [`CheckLine`] is PASS or FAIL with a detail and, when it
//! fails, the fix. In order: the configuration; the platform's reachability over TLS and the pool
//! token (registering and deregistering a `<name>-check` agent, so the running controller's session
//! is untouched); the Kubernetes configuration and credential; every permission of
//! [`crate::permissions::controller_access_checks`] (SelfSubjectAccessReview, in the controller's
//! namespace); and the `AgentTaskTemplate` (present and valid).

use std::time::Instant;

use crate::config::{ConfigErrors, Settings};
use crate::controller::template::AgentTaskTemplate;
use crate::http::{HttpClient, Request, RetryPolicy, Route};
use crate::kube::{Client, Explicit, KubeConfig, KubeEnv, KubeError};
use crate::permissions::{CONTROLLER_PERMISSIONS, controller_access_checks};
use crate::platform::{PlatformClient, Registration};

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it failed.
    pub fix: Option<String>,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "PASS" } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n     fix: {fix}")?;
        }
        Ok(())
    }
}

fn pass(name: &'static str, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        name,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> CheckLine {
    CheckLine {
        name,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check that applies and returns the report.
pub fn run(settings: &Result<Settings, ConfigErrors>) -> Vec<CheckLine> {
    let settings = match settings {
        Ok(s) => s,
        Err(errors) => {
            return errors
                .0
                .iter()
                .map(|e| fail("configuration", e.to_string(), e.fix.clone()))
                .collect();
        }
    };
    let mut lines = vec![pass(
        "configuration",
        format!(
            "valid (agent {}, concurrency {})",
            settings.name, settings.concurrency
        ),
    )];
    let url = match settings.require_platform() {
        Ok((url, _token)) => {
            lines.push(pass(
                "platform settings",
                format!("SCALR_URL={url}, token present"),
            ));
            url.to_string()
        }
        Err(errors) => {
            lines.extend(errors.0.iter().map(|e| {
                fail(
                    "platform settings",
                    format!("{} {}", e.var, e.problem),
                    e.fix.clone(),
                )
            }));
            match &settings.url {
                Some(url) => url.clone(),
                None => return lines,
            }
        }
    };
    let reachable = reachability(settings, &url);
    let reached = reachable.ok;
    lines.push(reachable);
    if reached && let Ok((url, token)) = settings.require_platform() {
        lines.push(platform_credential(settings, url, token));
    }
    match KubeConfig::discover(
        &KubeEnv::from_process(),
        &Explicit {
            namespace: settings.namespace.clone(),
            ..Explicit::default()
        },
    ) {
        Ok(config) => lines.extend(kubernetes(&config, settings)),
        Err(e) => lines.push(fail(
            "kubernetes configuration",
            e.to_string(),
            "run inside the cluster with a service account, or set KUBECONFIG",
        )),
    }
    lines
}

/// The pool token works: registers a `<name>-check` agent and deregisters it at once.
fn platform_credential(settings: &Settings, url: &str, token: &crate::secret::Secret) -> CheckLine {
    const NAME: &str = "platform credential";
    let client = match PlatformClient::new(url, &settings.http_options()) {
        Ok(c) => c.with_retry(RetryPolicy::fast(3)),
        Err(e) => return fail(NAME, e.to_string(), "fix SCALR_URL and the TLS settings"),
    };
    let check_name: String = format!("{}-check", settings.name)
        .chars()
        .take(128)
        .collect();
    let registration = Registration::kubernetes_controller(&check_name, 1);
    match client.register(token, &registration) {
        Ok(agent) => {
            let id = agent.session().agent_id.clone();
            let _ = agent.deregister();
            pass(
                NAME,
                format!(
                    "the agent pool token registers agents (checked as {check_name}, {id}, deregistered)"
                ),
            )
        }
        Err(e) if e.is_unauthorized() => fail(
            NAME,
            format!("the platform refused the agent pool token: {e}"),
            "create a new token for the agent pool in Scalr and update SCALR_AGENT_TOKEN (chart: agent.token)",
        ),
        Err(e) => fail(
            NAME,
            format!("registration failed: {e}"),
            "check SCALR_URL and that the token belongs to an agent pool",
        ),
    }
}

/// The Kubernetes credential, every permission the controller needs, and the template.
pub fn kubernetes(config: &KubeConfig, settings: &Settings) -> Vec<CheckLine> {
    let ns = config.namespace.clone();
    let client = match Client::new(
        config,
        &crate::http::HttpOptions {
            proxy: settings.proxy.clone(),
            ..crate::http::HttpOptions::default()
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            return vec![fail(
                "kubernetes credential",
                e.to_string(),
                "fix the CA, client certificate or proxy of the Kubernetes configuration",
            )];
        }
    };
    let mut lines = Vec::new();
    let mut checks = controller_access_checks().into_iter();
    // The first review also proves the credential: any authenticated identity may ask.
    let first = checks.next();
    let mut results = Vec::new();
    if let Some(c) = first {
        match ask(&client, &c, &ns) {
            Ok(allowed) => {
                lines.push(pass(
                    "kubernetes credential",
                    format!(
                        "{} accepts the credential ({})",
                        client.server(),
                        config.origin
                    ),
                ));
                results.push((c, allowed));
            }
            Err(e) => {
                let fix = match e {
                    KubeError::Unauthorized(_) => {
                        "the service account token is invalid or expired: restart the pod, or refresh the kubeconfig's credential"
                    }
                    _ => {
                        "check that the API server is reachable from here (network policy, proxy, CA)"
                    }
                };
                lines.push(fail("kubernetes credential", e.to_string(), fix));
                return lines;
            }
        }
    }
    for c in checks {
        match ask(&client, &c, &ns) {
            Ok(allowed) => results.push((c, allowed)),
            Err(e) => lines.push(fail(
                "permission",
                format!("cannot ask about {} {}: {e}", c.verb, resource_text(&c)),
                "check the API server's SelfSubjectAccessReview support",
            )),
        }
    }
    for (c, allowed) in results {
        let what = format!("{} {} in namespace {ns}", c.verb, resource_text(&c));
        if allowed {
            lines.push(pass("permission", format!("may {what}")));
        } else {
            let why = CONTROLLER_PERMISSIONS
                .iter()
                .find(|p| p.group == c.group && p.resource == c.resource)
                .map_or("", |p| p.why);
            lines.push(fail(
                "permission",
                format!("may not {what}: {why}"),
                format!(
                    "the chart's Role grants it (rbac.create=true); or add to the controller's Role: \
                     apiGroups [\"{}\"], resources [\"{}\"], verbs [\"{}\"]",
                    c.group,
                    if c.subresource.is_empty() {
                        c.resource.to_string()
                    } else {
                        format!("{}/{}", c.resource, c.subresource)
                    },
                    c.verb
                ),
            ));
        }
    }
    lines.push(template_line(&client, &ns, &settings.task_template));
    lines
}

fn resource_text(c: &crate::permissions::AccessCheck) -> String {
    let group = if c.group.is_empty() { "core" } else { c.group };
    if c.subresource.is_empty() {
        format!("{group}/{}", c.resource)
    } else {
        format!("{group}/{}/{}", c.resource, c.subresource)
    }
}

fn ask(client: &Client, c: &crate::permissions::AccessCheck, ns: &str) -> Result<bool, KubeError> {
    let sub = (!c.subresource.is_empty()).then_some(c.subresource);
    client
        .can_i(c.verb, c.group, c.resource, sub, Some(ns))
        .map(|status| status.allowed)
}

fn template_line(client: &Client, ns: &str, name: &str) -> CheckLine {
    const NAME: &str = "task template";
    let cluster =
        crate::controller::cluster::KubeCluster::new(client, ns, RetryPolicy::fast(3), None);
    match crate::controller::cluster::Cluster::get_template(&cluster, name) {
        Ok(Some(value)) => match AgentTaskTemplate::from_value(&value) {
            Ok(t) => {
                let mut detail = format!(
                    "AgentTaskTemplate {name} in namespace {ns} is valid (basename {}, release {})",
                    t.basename(),
                    t.instance().unwrap_or("unlabelled")
                );
                for w in t.warnings() {
                    detail.push_str(&format!("; warning: {w}"));
                }
                pass(NAME, detail)
            }
            Err(e) => fail(
                NAME,
                e.to_string(),
                format!(
                    "kubectl -n {ns} edit agenttasktemplate {name}, or upgrade the chart release"
                ),
            ),
        },
        Ok(None) => fail(
            NAME,
            format!("AgentTaskTemplate {name} not found in namespace {ns}"),
            "install or upgrade the chart (it creates the CRD and the template), or set \
             SCALR_AGENT_KUBERNETES_TASK_TEMPLATE to the template's name",
        ),
        Err(e) => fail(
            NAME,
            format!("cannot read AgentTaskTemplate {name} in namespace {ns}: {e}"),
            "the chart's Role grants get on agenttasktemplates; is the CRD agenttasktemplates.scalr.io installed?",
        ),
    }
}

fn reachability(settings: &Settings, url: &str) -> CheckLine {
    const NAME: &str = "platform reachable";
    let client = match HttpClient::new(&settings.http_options()) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                NAME,
                e.to_string(),
                "fix the TLS or proxy settings named above",
            );
        }
    };
    let target = format!("{url}/api/iacp/v3/");
    let route = match client.route(&target) {
        Route::Direct => "directly",
        Route::HttpProxy | Route::HttpsProxy => "through the proxy",
    };
    let started = Instant::now();
    match client.send(Request::new("GET", &target)) {
        Ok(response) => pass(
            NAME,
            format!(
                "{target} answered HTTP {} {route} in {} ms",
                response.status,
                started.elapsed().as_millis()
            ),
        ),
        Err(e) => fail(
            NAME,
            e.to_string(),
            "check SCALR_URL, DNS, egress rules, proxy and CA settings",
        ),
    }
}

/// Whether every line passed.
pub fn all_passed(lines: &[CheckLine]) -> bool {
    lines.iter().all(|l| l.ok)
}
