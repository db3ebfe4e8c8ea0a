//! Every configuration variable: name, legacy aliases, default, unit and meaning, in one table.
//!
//! The README's configuration reference and the `config` subcommand are produced from this table, and
//! a test checks the README lists every name.

/// One configuration variable.
#[derive(Debug)]
pub struct Var {
    /// The environment variable users set.
    pub name: &'static str,
    /// Older names still read, with a deprecation warning.
    pub legacy: &'static [&'static str],
    /// The command-line flag that overrides it (global flags come before the subcommand).
    pub flag: Option<&'static str>,
    /// The default, as the user would write it; `None` when there is none.
    pub default: Option<&'static str>,
    /// Whether the value is a secret (never printed).
    pub secret: bool,
    /// One line: what it does, in which unit.
    pub help: &'static str,
}

macro_rules! var {
    ($name:expr, legacy $legacy:expr, flag $flag:expr, default $default:expr, secret $secret:expr, $help:expr) => {
        Var {
            name: $name,
            legacy: $legacy,
            flag: $flag,
            default: $default,
            secret: $secret,
            help: $help,
        }
    };
}

pub const SCALR_URL: &str = "SCALR_URL";
pub const TOKEN: &str = "SCALR_AGENT_TOKEN";
pub const TOKEN_FILE: &str = "SCALR_AGENT_TOKEN_FILE";
pub const NAME: &str = "SCALR_AGENT_NAME";
pub const DEBUG: &str = "SCALR_AGENT_DEBUG";
pub const LOG_FORMAT: &str = "SCALR_AGENT_LOG_FORMAT";
pub const DATA_DIR: &str = "SCALR_AGENT_DATA_DIR";
pub const CACHE_DIR: &str = "SCALR_AGENT_CACHE_DIR";
pub const CONCURRENCY: &str = "SCALR_AGENT_CONCURRENCY";
pub const TASK_TEMPLATE: &str = "SCALR_AGENT_KUBERNETES_TASK_TEMPLATE";
pub const STARTUP_TIMEOUT: &str = "SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS";
pub const NAMESPACE: &str = "SCALR_AGENT_KUBERNETES_NAMESPACE";
pub const GRACE_SHUTDOWN: &str = "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT";
pub const CA_CERT: &str = "SCALR_AGENT_CA_CERT";
pub const TLS_CERT_FILE: &str = "SCALR_AGENT_TLS_CERT_FILE";
pub const TLS_KEY_FILE: &str = "SCALR_AGENT_TLS_KEY_FILE";
pub const MEMORY_ENABLED: &str = "SCALR_AGENT_MEMORY_MONITOR_ENABLED";
pub const MEMORY_SOFT: &str = "SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT";
pub const MEMORY_WARN: &str = "SCALR_AGENT_MEMORY_MONITOR_WARN_PERCENT";
pub const PROVIDER_CACHE_ENABLED: &str = "SCALR_AGENT_PROVIDER_CACHE_ENABLED";
pub const PROVIDER_CACHE_SIZE: &str = "SCALR_AGENT_PROVIDER_CACHE_SIZE_LIMIT_MB";
pub const PROVIDER_CACHE_CONCURRENCY: &str = "SCALR_AGENT_PROVIDER_CACHE_CONCURRENCY";
pub const NETWORK_MIRRORS: &str = "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS";
pub const BINARY_CACHE_SIZE: &str = "SCALR_AGENT_BINARY_CACHE_SIZE_LIMIT_MB";
pub const BINARY_CACHE_DAYS: &str = "SCALR_AGENT_BINARY_CACHE_THRESHOLD_DAYS";
pub const METRICS_PORT: &str = "SCALR_AGENT_METRICS_PORT";
pub const HTTPS_PROXY: &str = "HTTPS_PROXY";
pub const HTTP_PROXY: &str = "HTTP_PROXY";
pub const NO_PROXY: &str = "NO_PROXY";

/// The table. Order is the order of the README reference and of `scalr-agent config`.
pub const VARS: &[Var] = &[
    var!(SCALR_URL, legacy &[], flag Some("--url"), default None, secret false,
        "URL of the Scalr account, e.g. https://acme.scalr.io (https required except for loopback hosts)"),
    var!(TOKEN, legacy &["SCALR_TOKEN"], flag None, default None, secret true,
        "agent pool token; used only to register (prefer a token file or a Secret)"),
    var!(TOKEN_FILE, legacy &[], flag Some("--token-file"), default None, secret false,
        "file holding the agent pool token (read at start, surrounding whitespace ignored)"),
    var!(NAME, legacy &[], flag Some("--name"), default Some("the host name"), secret false,
        "agent name shown in Scalr (the chart sets the pod name); letters, digits, '.', '_' and '-'"),
    var!(DEBUG, legacy &["SCALR_DEBUG"], flag Some("--debug"), default Some("false"), secret false,
        "debug logging: true/false/1/0"),
    var!(LOG_FORMAT, legacy &["SCALR_LOG_FORMAT"], flag Some("--log-format"), default Some("plain"), secret false,
        "log line format: plain or json (one object per line)"),
    var!(DATA_DIR, legacy &["SCALR_DATA_HOME"], flag Some("--data-dir"), default Some("/var/lib/scalr-agent"), secret false,
        "absolute directory for run data, markers and the exec-loop socket"),
    var!(CACHE_DIR, legacy &[], flag Some("--cache-dir"), default Some("$SCALR_AGENT_DATA_DIR/cache"), secret false,
        "absolute directory for the binary and provider caches (may be a shared ReadWriteMany volume)"),
    var!(CONCURRENCY, legacy &["SCALR_CONCURRENCY"], flag Some("--concurrency"), default Some("10"), secret false,
        "most tasks this controller runs at once (1-1000)"),
    var!(TASK_TEMPLATE, legacy &[], flag Some("--task-template"), default Some("scalr-agent-task-template"), secret false,
        "name of the AgentTaskTemplate object holding the task Job template"),
    var!(STARTUP_TIMEOUT, legacy &[], flag None, default Some("180"), secret false,
        "seconds a task's worker may take to start before the controller fails the run and deletes the Job (10-86400)"),
    var!(NAMESPACE, legacy &[], flag Some("--namespace"), default Some("the pod's namespace"), secret false,
        "namespace where task Jobs are created and the template is read"),
    var!(GRACE_SHUTDOWN, legacy &[], flag None, default Some("300"), secret false,
        "seconds between SIGTERM to terraform and SIGKILL when a run is cancelled or its pod stops (1-86400)"),
    var!(CA_CERT, legacy &["SCALR_CA_CERT"], flag Some("--ca-cert"), default None, secret false,
        "CA bundle that replaces the built-in roots: a PEM file path, or the PEM base64-encoded"),
    var!(TLS_CERT_FILE, legacy &[], flag None, default None, secret false,
        "client certificate (PEM) for mTLS to the platform; needs SCALR_AGENT_TLS_KEY_FILE"),
    var!(TLS_KEY_FILE, legacy &[], flag None, default None, secret false,
        "private key (PEM) of the mTLS client certificate; needs SCALR_AGENT_TLS_CERT_FILE"),
    var!(MEMORY_ENABLED, legacy &[], flag None, default Some("true"), secret false,
        "watch the runner's memory and stop terraform gracefully before an OOM kill: true/false/1/0"),
    var!(MEMORY_SOFT, legacy &[], flag None, default Some("80"), secret false,
        "percent of the runner's memory limit at which terraform gets SIGTERM (1-100)"),
    var!(MEMORY_WARN, legacy &[], flag None, default Some("90"), secret false,
        "percent of the soft limit that adds a memory warning to the run log (1-100)"),
    var!(PROVIDER_CACHE_ENABLED, legacy &[], flag None, default Some("true"), secret false,
        "keep verified providers in a shared filesystem mirror for later runs: true/false/1/0"),
    var!(PROVIDER_CACHE_SIZE, legacy &[], flag None, default Some("10240"), secret false,
        "soft size limit of the provider cache, in MB"),
    var!(PROVIDER_CACHE_CONCURRENCY, legacy &[], flag None, default Some("4"), secret false,
        "providers copied into the cache at once (1-64)"),
    var!(NETWORK_MIRRORS, legacy &[], flag None, default None, secret false,
        "JSON list of provider network mirrors: [{\"url\":\"https://...\",\"token\":\"...\",\"include\":[\"registry.terraform.io/hashicorp/*\"]}]"),
    var!(BINARY_CACHE_SIZE, legacy &[], flag None, default Some("10240"), secret false,
        "soft size limit of the tool binary cache, in MB (a binary in use is never evicted)"),
    var!(BINARY_CACHE_DAYS, legacy &[], flag None, default Some("30"), secret false,
        "days after its last use that a cached tool binary may be removed (1-3650)"),
    var!(METRICS_PORT, legacy &[], flag None, default None, secret false,
        "controller: serve Prometheus metrics at http://0.0.0.0:PORT/metrics (or ADDRESS:PORT); unset: off"),
    var!(HTTPS_PROXY, legacy &["https_proxy"], flag None, default None, secret false,
        "proxy for https:// requests (http://host:port)"),
    var!(HTTP_PROXY, legacy &["http_proxy"], flag None, default None, secret false,
        "proxy for http:// requests (http://host:port)"),
    var!(NO_PROXY, legacy &["no_proxy"], flag None, default None, secret false,
        "hosts reached without the proxy: names, .domain or *.domain suffixes, IPs, host:port, or *"),
];

/// Looks a variable up by name.
pub fn find(name: &str) -> Option<&'static Var> {
    VARS.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_documented() {
        let mut names: Vec<&str> = VARS.iter().map(|v| v.name).collect();
        names.extend(VARS.iter().flat_map(|v| v.legacy.iter().copied()));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a name or alias appears twice");
        assert!(VARS.iter().all(|v| !v.help.is_empty()));
    }
}
