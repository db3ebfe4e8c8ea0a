//! Validation rules shared by the settings: the problem collector and the checks for booleans,
//! bounded integers, directories, files, URLs and names. Pure except for `file` (a stat) and
//! `host_name` (gethostname).

use std::path::PathBuf;

use super::ConfigError;
use super::raw::{RawConfig, Source};
use super::vars;

/// Collects problems while validating.
pub(super) struct Check<'a> {
    pub(super) raw: &'a RawConfig,
    pub(super) errors: Vec<ConfigError>,
}

impl Check<'_> {
    pub(super) fn value(&self, name: &'static str) -> Option<(&str, Source)> {
        self.raw.get(name).map(|v| (v.value.trim(), v.source))
    }

    pub(super) fn fail(
        &mut self,
        name: &'static str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let secret = vars::find(name).is_some_and(|v| v.secret);
        let given = self.raw.get(name);
        self.errors.push(ConfigError {
            var: name,
            source: given.map(|v| v.source),
            value: given.map(|v| {
                if secret {
                    crate::secret::MASK.to_string()
                } else {
                    v.value.clone()
                }
            }),
            problem: problem.into(),
            fix: fix.into(),
        });
    }

    pub(super) fn boolean(&mut self, name: &'static str, default: bool) -> bool {
        let Some((value, _)) = self.value(name) else {
            return default;
        };
        match value.to_ascii_lowercase().as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => {
                self.fail(
                    name,
                    "not a boolean",
                    format!("use true, false, 1 or 0, e.g. {name}=true"),
                );
                default
            }
        }
    }

    pub(super) fn integer(
        &mut self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
        unit: &str,
    ) -> u64 {
        let Some((value, _)) = self.value(name) else {
            return default;
        };
        match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(_) => {
                self.fail(
                    name,
                    format!("out of range {min}-{max} {unit}"),
                    format!("set a whole number between {min} and {max}, e.g. {name}={default}"),
                );
                default
            }
            Err(_) => {
                self.fail(
                    name,
                    format!("not a whole number of {unit}"),
                    format!("write digits only, without units, e.g. {name}={default}"),
                );
                default
            }
        }
    }

    pub(super) fn directory(&mut self, name: &'static str, default: PathBuf) -> PathBuf {
        let Some((value, _)) = self.value(name) else {
            return default;
        };
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            self.fail(
                name,
                "not an absolute path",
                format!("use an absolute directory, e.g. {name}=/var/lib/scalr-agent"),
            );
            return default;
        }
        path
    }

    pub(super) fn file(&mut self, name: &'static str) -> Option<PathBuf> {
        let (value, _) = self.value(name)?;
        let path = PathBuf::from(value);
        if !path.is_file() {
            self.fail(
                name,
                "no such file",
                "point it at a readable file (is the volume mounted?)",
            );
            return None;
        }
        Some(path)
    }

    pub(super) fn url(
        &mut self,
        name: &'static str,
        example: &str,
        any_http: bool,
    ) -> Option<String> {
        let (value, _) = self.value(name)?;
        let checked = if any_http {
            // A proxy tunnels TLS with CONNECT: plain http to it exposes no token.
            check_url(&value.replacen("http://", "https://", 1))
                .map(|_| value.trim_end_matches('/').to_string())
        } else {
            check_url(value)
        };
        match checked {
            Ok(url) => {
                // A proxy password is a secret: mask it in every log line.
                if let Some((_, rest)) = url.split_once("://")
                    && let Some((userinfo, _)) = rest.split_once('@')
                    && let Some((_, password)) = userinfo.split_once(':')
                {
                    crate::secret::register(password);
                }
                Some(url)
            }
            Err(problem) => {
                self.fail(
                    name,
                    problem,
                    format!("write the full URL, e.g. {name}={example}"),
                );
                None
            }
        }
    }
}

/// Checks a URL: scheme, host, no query or fragment; `http` only for loopback. Returns it without
/// a trailing slash.
pub fn check_url(value: &str) -> Result<String, String> {
    let Some((scheme, host, _port)) = crate::http::proxy::split_url(value) else {
        return Err("not an http(s) URL with a host".into());
    };
    if value.contains(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    if value.contains('?') || value.contains('#') {
        return Err("must not have a query or fragment".into());
    }
    let loopback = host == "localhost" || host.starts_with("127.") || host == "::1";
    if scheme == "http" && !loopback {
        return Err("plain http would send tokens unencrypted; https is required".into());
    }
    Ok(value.trim_end_matches('/').to_string())
}

pub(super) fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// DNS-1123 subdomain (Kubernetes object names).
pub(super) fn valid_object_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

pub(super) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if valid_name(&name) {
        name
    } else {
        "scalr-agent".to_string()
    }
}
