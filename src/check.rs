//! `scalr-agent check`: a preflight that says, line by line, what works and what to fix.
//!
//! Runs on the caller's thread, once. Each [`CheckLine`] is PASS or FAIL with a detail and, when it
//! fails, the fix. Today it covers the configuration and the platform's reachability over TLS; the
//! credential, Kubernetes and template checks join as those clients land.

use std::time::Instant;

use crate::config::{ConfigErrors, Settings};
use crate::http::{HttpClient, Request, Route};

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
    lines.push(reachability(settings, &url));
    lines
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
