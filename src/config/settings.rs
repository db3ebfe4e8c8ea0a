//! Phase two: typed, validated settings.
//!
//! Rules: booleans are true/false/1/0 (any case); durations are whole seconds; sizes are whole MB;
//! directories are absolute; URLs are `https://` (plain `http://` only for loopback hosts, where
//! nothing leaves the machine). Values every role needs are checked here; what only some roles need
//! (the platform URL and token) is checked by [`Settings::require_platform`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{Flags, RawConfig, Source};
pub use super::rules::check_url;
use super::rules::{Check, host_name, valid_name, valid_object_name};
use super::vars::{self, VARS};
use super::{ConfigError, ConfigErrors};
use crate::http::{CaSource, ClientIdentity, HttpOptions, NoProxy, ProxySettings};
use crate::logging::LogFormat;
use crate::secret::Secret;

/// The runner's memory monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryMonitor {
    pub enabled: bool,
    /// Percent of the memory limit at which terraform gets SIGTERM.
    pub soft_limit_percent: u8,
    /// Percent of the soft limit that adds a warning to the run log.
    pub warn_percent: u8,
}

/// The shared provider cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCache {
    pub enabled: bool,
    pub size_limit_mb: u64,
    pub concurrency: u32,
}

/// The shared tool binary cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryCache {
    pub size_limit_mb: u64,
    pub threshold_days: u32,
}

/// A provider network mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkMirror {
    pub url: String,
    pub token: Option<Secret>,
    /// `hostname/namespace/type` patterns, `*` per segment; empty means every provider.
    pub include: Vec<String>,
}

/// Validated settings of every role.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The platform URL without a trailing slash.
    pub url: Option<String>,
    /// The agent pool token.
    pub token: Option<Secret>,
    pub name: String,
    pub debug: bool,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub concurrency: u32,
    pub task_template: String,
    pub startup_timeout: Duration,
    /// `None`: the pod's namespace (in-cluster) or the kubeconfig's.
    pub namespace: Option<String>,
    pub grace_shutdown: Duration,
    pub ca: Option<CaSource>,
    pub client_identity: Option<ClientIdentity>,
    pub memory: MemoryMonitor,
    pub provider_cache: ProviderCache,
    pub network_mirrors: Vec<NetworkMirror>,
    pub binary_cache: BinaryCache,
    pub proxy: ProxySettings,
    /// Where the controller serves Prometheus metrics (`SCALR_AGENT_METRICS_PORT`); `None`: off.
    pub metrics_addr: Option<SocketAddr>,
    /// Deprecation notices, to be logged once logging is up.
    pub warnings: Vec<String>,
    raw: RawConfig,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorDoc {
    url: String,
    token: Option<String>,
    #[serde(default)]
    include: Vec<String>,
}

impl Settings {
    /// Reads the process environment and `flags`, then validates.
    pub fn load(flags: &Flags) -> Result<Settings, ConfigErrors> {
        let env = |name: &str| std::env::var(name).ok();
        Self::validate(RawConfig::collect(&env, flags))
    }

    /// Validates phase-one values into settings, or every problem found.
    pub fn validate(raw: RawConfig) -> Result<Settings, ConfigErrors> {
        let mut c = Check {
            raw: &raw,
            errors: Vec::new(),
        };
        let url = c.url(vars::SCALR_URL, "https://acme.scalr.io", false);

        let token = match (c.value(vars::TOKEN_FILE), c.value(vars::TOKEN)) {
            (Some((_, Source::Flag(_))), _) | (Some(_), None) => {
                let path = c
                    .value(vars::TOKEN_FILE)
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_default();
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => Some(Secret::new(text.trim())),
                    Ok(_) => {
                        c.fail(
                            vars::TOKEN_FILE,
                            "the file is empty",
                            "write the agent pool token into it",
                        );
                        None
                    }
                    Err(e) => {
                        c.fail(
                            vars::TOKEN_FILE,
                            format!("cannot read it: {e}"),
                            "check the path and that the Secret is mounted",
                        );
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                c.fail(
                    vars::TOKEN_FILE,
                    "both SCALR_AGENT_TOKEN and SCALR_AGENT_TOKEN_FILE are set",
                    "keep only one of them",
                );
                None
            }
            (None, Some((value, _))) => {
                if value.contains(char::is_whitespace) {
                    c.fail(
                        vars::TOKEN,
                        "contains whitespace",
                        "paste the token exactly as Scalr shows it",
                    );
                    None
                } else {
                    Some(Secret::new(value))
                }
            }
            (None, None) => None,
        };

        let name = match c.value(vars::NAME) {
            Some((value, _)) if valid_name(value) => value.to_string(),
            Some(_) => {
                c.fail(
                    vars::NAME,
                    "not a valid agent name",
                    "use 1-128 letters, digits, '.', '_' or '-'",
                );
                host_name()
            }
            None => host_name(),
        };
        let debug = c.boolean(vars::DEBUG, false);
        let log_format = match c
            .value(vars::LOG_FORMAT)
            .map(|(v, _)| v.to_ascii_lowercase())
        {
            None => LogFormat::Plain,
            Some(v) if v == "plain" => LogFormat::Plain,
            Some(v) if v == "json" => LogFormat::Json,
            Some(_) => {
                c.fail(vars::LOG_FORMAT, "unknown log format", "use plain or json");
                LogFormat::Plain
            }
        };
        let data_dir = c.directory(vars::DATA_DIR, PathBuf::from("/var/lib/scalr-agent"));
        let cache_dir = c.directory(vars::CACHE_DIR, data_dir.join("cache"));
        let concurrency = c.integer(vars::CONCURRENCY, 10, 1, 1000, "tasks") as u32;
        let task_template = match c.value(vars::TASK_TEMPLATE) {
            None => "scalr-agent-task-template".to_string(),
            Some((v, _)) if valid_object_name(v) => v.to_string(),
            Some(_) => {
                c.fail(
                    vars::TASK_TEMPLATE,
                    "not a valid Kubernetes object name",
                    "use lower-case letters, digits, '-' and '.', as in `kubectl get agenttasktemplates`",
                );
                String::new()
            }
        };
        let startup_timeout =
            Duration::from_secs(c.integer(vars::STARTUP_TIMEOUT, 180, 10, 86_400, "seconds"));
        let namespace = match c.value(vars::NAMESPACE) {
            None => None,
            Some((v, _)) if valid_object_name(v) && !v.contains('.') && v.len() <= 63 => {
                Some(v.to_string())
            }
            Some(_) => {
                c.fail(
                    vars::NAMESPACE,
                    "not a valid namespace name",
                    "use lower-case letters, digits and '-', at most 63",
                );
                None
            }
        };
        let grace_shutdown =
            Duration::from_secs(c.integer(vars::GRACE_SHUTDOWN, 300, 1, 86_400, "seconds"));

        let ca = match c.value(vars::CA_CERT) {
            None => None,
            Some((value, _)) => match CaSource::from_setting(value) {
                Ok(CaSource::File(path)) if !path.is_file() => {
                    c.fail(
                        vars::CA_CERT,
                        "no such file",
                        "mount the CA bundle and give its path, or pass the PEM base64-encoded",
                    );
                    None
                }
                Ok(source) => match source.load() {
                    Ok(_) => Some(source),
                    Err(e) => {
                        c.fail(
                            vars::CA_CERT,
                            e.to_string(),
                            "give a PEM bundle of CA certificates",
                        );
                        None
                    }
                },
                Err(problem) => {
                    c.fail(
                        vars::CA_CERT,
                        problem,
                        "give a PEM file path or the PEM base64-encoded (base64 -w0 ca.pem)",
                    );
                    None
                }
            },
        };
        let cert_file = c.file(vars::TLS_CERT_FILE);
        let key_file = c.file(vars::TLS_KEY_FILE);
        let client_identity = match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientIdentity {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) if c.value(vars::TLS_KEY_FILE).is_none() => {
                c.fail(
                    vars::TLS_KEY_FILE,
                    "missing",
                    "set both SCALR_AGENT_TLS_CERT_FILE and SCALR_AGENT_TLS_KEY_FILE, or neither",
                );
                None
            }
            (None, Some(_)) if c.value(vars::TLS_CERT_FILE).is_none() => {
                c.fail(
                    vars::TLS_CERT_FILE,
                    "missing",
                    "set both SCALR_AGENT_TLS_CERT_FILE and SCALR_AGENT_TLS_KEY_FILE, or neither",
                );
                None
            }
            _ => None,
        };

        let memory = MemoryMonitor {
            enabled: c.boolean(vars::MEMORY_ENABLED, true),
            soft_limit_percent: c.integer(vars::MEMORY_SOFT, 80, 1, 100, "percent") as u8,
            warn_percent: c.integer(vars::MEMORY_WARN, 90, 1, 100, "percent") as u8,
        };
        let provider_cache = ProviderCache {
            enabled: c.boolean(vars::PROVIDER_CACHE_ENABLED, true),
            size_limit_mb: c.integer(vars::PROVIDER_CACHE_SIZE, 10_240, 1, 10_000_000, "MB"),
            concurrency: c.integer(vars::PROVIDER_CACHE_CONCURRENCY, 4, 1, 64, "copies") as u32,
        };
        let binary_cache = BinaryCache {
            size_limit_mb: c.integer(vars::BINARY_CACHE_SIZE, 10_240, 1, 10_000_000, "MB"),
            threshold_days: c.integer(vars::BINARY_CACHE_DAYS, 30, 1, 3650, "days") as u32,
        };
        let network_mirrors = match c.value(vars::NETWORK_MIRRORS) {
            None => Vec::new(),
            Some((value, _)) => match serde_json::from_str::<Vec<MirrorDoc>>(value) {
                Ok(docs) => {
                    let mut mirrors = Vec::new();
                    for doc in docs {
                        let problem = check_url(&doc.url).err().or_else(|| {
                            doc.include
                                .iter()
                                .find(|p| {
                                    p.split('/').count() != 3 || p.split('/').any(str::is_empty)
                                })
                                .map(|p| {
                                    format!("include pattern {p:?} is not hostname/namespace/type")
                                })
                        });
                        match problem {
                            Some(problem) => c.fail(
                                vars::NETWORK_MIRRORS,
                                format!("mirror {}: {problem}", doc.url),
                                "each mirror needs an https URL and patterns like registry.terraform.io/hashicorp/*",
                            ),
                            None => mirrors.push(NetworkMirror {
                                url: doc.url.trim_end_matches('/').to_string() + "/",
                                token: doc.token.map(Secret::new),
                                include: doc.include,
                            }),
                        }
                    }
                    mirrors
                }
                Err(e) => {
                    c.fail(
                        vars::NETWORK_MIRRORS,
                        format!("not a JSON list of mirrors ({e})"),
                        r#"write e.g. [{"url":"https://mirror.example/providers/","include":["registry.terraform.io/*/*"]}]"#,
                    );
                    Vec::new()
                }
            },
        };
        let proxy = ProxySettings {
            http: c.url(vars::HTTP_PROXY, "http://proxy.internal:3128", true),
            https: c.url(vars::HTTPS_PROXY, "http://proxy.internal:3128", true),
            no_proxy: NoProxy::parse(c.value(vars::NO_PROXY).map_or("", |(v, _)| v)),
        };

        let metrics_addr = match c.value(vars::METRICS_PORT) {
            None => None,
            Some((value, _)) => match metrics_address(value) {
                Some(addr) => Some(addr),
                None => {
                    c.fail(
                        vars::METRICS_PORT,
                        "not a port or ADDRESS:PORT",
                        "give a port such as 9090 (all interfaces) or 127.0.0.1:9090; leave unset to turn metrics off",
                    );
                    None
                }
            },
        };

        if !c.errors.is_empty() {
            return Err(ConfigErrors(c.errors));
        }
        Ok(Settings {
            url,
            token,
            name,
            debug,
            log_format,
            data_dir,
            cache_dir,
            concurrency,
            task_template,
            startup_timeout,
            namespace,
            grace_shutdown,
            ca,
            client_identity,
            memory,
            provider_cache,
            network_mirrors,
            binary_cache,
            proxy,
            metrics_addr,
            warnings: raw.warnings.clone(),
            raw,
        })
    }

    /// The platform URL and pool token, which the controller and `check` need.
    pub fn require_platform(&self) -> Result<(&str, &Secret), ConfigErrors> {
        let mut errors = Vec::new();
        if self.url.is_none() {
            errors.push(ConfigError {
                var: vars::SCALR_URL,
                source: None,
                value: None,
                problem: "not set".into(),
                fix: "set it to your Scalr account URL, e.g. SCALR_URL=https://acme.scalr.io (chart: agent.url)".into(),
            });
        }
        if self.token.is_none() {
            errors.push(ConfigError {
                var: vars::TOKEN,
                source: None,
                value: None,
                problem: "not set".into(),
                fix: "set SCALR_AGENT_TOKEN or SCALR_AGENT_TOKEN_FILE to the agent pool token (chart: agent.token)".into(),
            });
        }
        match (&self.url, &self.token) {
            (Some(url), Some(token)) => Ok((url, token)),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// HTTP options for talking to the platform.
    pub fn http_options(&self) -> HttpOptions {
        HttpOptions {
            ca: self.ca.clone(),
            client_identity: self.client_identity.clone(),
            proxy: self.proxy.clone(),
            ..HttpOptions::default()
        }
    }

    /// The effective configuration as `(name, value, source)`, secrets masked, every variable listed.
    pub fn effective(&self) -> Vec<(&'static str, String, String)> {
        VARS.iter()
            .map(|var| {
                let given = self.raw.get(var.name);
                let value = match (given, var.secret) {
                    (Some(_), true) => crate::secret::MASK.to_string(),
                    (Some(_), false) if var.name == vars::NETWORK_MIRRORS => {
                        self.mirrors_for_display()
                    }
                    (Some(v), false)
                        if matches!(var.name, vars::HTTP_PROXY | vars::HTTPS_PROXY) =>
                    {
                        crate::http::redact_userinfo(v.value.trim())
                    }
                    (Some(v), false) => v.value.trim().to_string(),
                    (None, _) => match var.name {
                        vars::NAME => self.name.clone(),
                        vars::CACHE_DIR => self.cache_dir.display().to_string(),
                        vars::TOKEN if self.token.is_some() => crate::secret::MASK.to_string(),
                        _ => var.default.unwrap_or("").to_string(),
                    },
                };
                let source = match given {
                    Some(v) => v.source.to_string(),
                    None if var.name == vars::TOKEN && self.token.is_some() => {
                        "SCALR_AGENT_TOKEN_FILE".to_string()
                    }
                    None if var.default.is_some() => "default".to_string(),
                    None => "unset".to_string(),
                };
                (var.name, value, source)
            })
            .collect()
    }

    fn mirrors_for_display(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .network_mirrors
            .iter()
            .map(|m| {
                serde_json::json!({
                    "url": m.url,
                    "token": m.token.as_ref().map(|_| crate::secret::MASK),
                    "include": m.include,
                })
            })
            .collect();
        serde_json::Value::Array(list).to_string()
    }

    /// Settings from explicit pairs (tests, examples): as if given in the environment.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        Self::validate(RawConfig::collect(&env, &Flags::default()))
    }
}

/// `PORT` (1-65535, every interface) or `ADDRESS:PORT` (`127.0.0.1:9090`, `[::1]:9090`).
fn metrics_address(value: &str) -> Option<SocketAddr> {
    if let Ok(port) = value.parse::<u16>() {
        return (port > 0).then(|| SocketAddr::from(([0, 0, 0, 0], port)));
    }
    value.parse::<SocketAddr>().ok()
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
