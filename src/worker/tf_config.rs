//! The files and environment the worker gives Terraform: the CLI configuration (provider
//! installation from the shared mirror, network mirrors, the origin registries; the plugin cache)
//! and the backend override pointing state at the platform. Pure: settings in, text out; the
//! worker writes the text where the runner can read it.
//!
//! **Secrets stay out of files where Terraform allows it.** The run token reaches the `http` backend
//! only as `TF_HTTP_PASSWORD` in the environment of each command ([`backend_env`]; Terraform ≥
//! 0.13.2 and every OpenTofu read it), and a network mirror's token as `TF_TOKEN_<host>`
//! ([`mirror_token_env`]; Terraform ≥ 1.2). Only with [`TokenPlacement::File`] (older Terraform), or
//! for a mirror whose URL has a port (which `TF_TOKEN_*` cannot name), does a token go into a
//! `credentials` block of the CLI configuration file.

use std::path::Path;

use crate::config::settings::NetworkMirror;
use crate::secret::Secret;

/// The backend override's file name: Terraform merges `*_override.tf` files last.
pub const BACKEND_OVERRIDE_FILE: &str = "_scalr_backend_override.tf";

/// Where network mirror tokens go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPlacement {
    /// `TF_TOKEN_<host>` variables (Terraform ≥ 1.2, OpenTofu): the file holds no token.
    Env,
    /// `credentials "<host>"` blocks in the CLI configuration file (older Terraform).
    File,
}

/// What the CLI configuration says.
#[derive(Clone, Copy, Debug)]
pub struct CliConfig<'a> {
    /// The shared provider mirror (`$CACHE_DIR/providers`), when the provider cache is enabled.
    pub filesystem_mirror: Option<&'a Path>,
    /// `SCALR_AGENT_PROVIDER_NETWORK_MIRRORS`, in order.
    pub network_mirrors: &'a [NetworkMirror],
    /// Whether providers not covered by a network mirror come from their origin registries
    /// (`direct`, last). Off for air-gapped pools, where asking the registry would fail `init`.
    pub direct: bool,
    /// The run's plugin cache; `None` to leave it to `TF_PLUGIN_CACHE_DIR`.
    pub plugin_cache_dir: Option<&'a Path>,
    pub tokens: TokenPlacement,
}

/// The CLI configuration file's text (`TF_CLI_CONFIG_FILE`).
///
/// Installation methods, in order: the filesystem mirror (every provider: it is a cache, Terraform
/// merges the versions it offers with the other sources'), each network mirror (its `include`
/// patterns, or every provider), then `direct` excluding what the network mirrors cover, so a
/// provider a mirror serves is never fetched from the internet. A network mirror without patterns
/// covers everything, and `direct` is then left out.
pub fn cli_config(config: &CliConfig<'_>) -> String {
    let mut out =
        String::from("# Written by scalr-agent for this run.\ndisable_checkpoint = true\n");
    if let Some(dir) = config.plugin_cache_dir {
        out.push_str(&format!(
            "plugin_cache_dir = {}\n",
            hcl_string(&path_text(dir))
        ));
    }
    out.push_str("\nprovider_installation {\n");
    if let Some(dir) = config.filesystem_mirror {
        out.push_str(&format!(
            "  filesystem_mirror {{\n    path = {}\n  }}\n",
            hcl_string(&path_text(dir))
        ));
    }
    let mut covered = Vec::new();
    let mut covers_all = false;
    for mirror in config.network_mirrors {
        out.push_str(&format!(
            "  network_mirror {{\n    url = {}\n",
            hcl_string(&mirror.url)
        ));
        if mirror.include.is_empty() {
            covers_all = true;
        } else {
            out.push_str(&format!("    include = {}\n", hcl_list(&mirror.include)));
            for pattern in &mirror.include {
                if !covered.contains(pattern) {
                    covered.push(pattern.clone());
                }
            }
        }
        out.push_str("  }\n");
    }
    if config.direct && !covers_all {
        if covered.is_empty() {
            out.push_str("  direct {}\n");
        } else {
            out.push_str(&format!(
                "  direct {{\n    exclude = {}\n  }}\n",
                hcl_list(&covered)
            ));
        }
    }
    out.push_str("}\n");
    for credential in mirror_credentials(config.network_mirrors) {
        if config.tokens == TokenPlacement::File || credential.env_name.is_none() {
            out.push_str(&format!(
                "\ncredentials {} {{\n  token = {}\n}}\n",
                hcl_string(&credential.host),
                hcl_string(credential.token.expose())
            ));
        }
    }
    out
}

/// `TF_TOKEN_<host>` variables for the mirrors' tokens (for [`TokenPlacement::Env`]); mirrors
/// whose host cannot be named that way are in the file instead.
pub fn mirror_token_env(mirrors: &[NetworkMirror]) -> Vec<(String, Secret)> {
    mirror_credentials(mirrors)
        .into_iter()
        .filter_map(|c| c.env_name.map(|name| (name, c.token)))
        .collect()
}

struct Credential {
    host: String,
    env_name: Option<String>,
    token: Secret,
}

fn mirror_credentials(mirrors: &[NetworkMirror]) -> Vec<Credential> {
    let mut out: Vec<Credential> = Vec::new();
    for mirror in mirrors {
        let (Some(token), Some(host)) = (&mirror.token, url_host(&mirror.url)) else {
            continue;
        };
        if out.iter().any(|c| c.host == host) {
            continue; // the first mirror on a host names its token
        }
        out.push(Credential {
            env_name: token_env_name(&host),
            host,
            token: token.clone(),
        });
    }
    out
}

/// `host[:port]` of an `http(s)://` URL, lower-case.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// Terraform's variable name for a host's token: `.` becomes `_`, `-` becomes `__`. `None` for
/// hosts with a port or characters outside ASCII letters, digits, `.` and `-` (IDN hosts would
/// need punycode).
pub fn token_env_name(host: &str) -> Option<String> {
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return None;
    }
    Some(format!(
        "TF_TOKEN_{}",
        host.replace('-', "__").replace('.', "_")
    ))
}

/// The platform's state endpoints for the `http` backend; the platform client defines them.
#[derive(Clone, Copy, Debug)]
pub struct HttpBackend<'a> {
    pub address: &'a str,
    pub lock_address: &'a str,
    pub unlock_address: &'a str,
    /// Basic-auth user name (not secret); the password is the run token, given by [`backend_env`].
    pub username: &'a str,
}

/// The text of [`BACKEND_OVERRIDE_FILE`]: replaces whatever backend or `cloud` block the
/// configuration declares with the platform's state store. Holds no secret.
pub fn backend_override(backend: &HttpBackend<'_>) -> String {
    format!(
        "# Written by scalr-agent: state lives on the platform for this run.\n\
         terraform {{\n  backend \"http\" {{\n    address        = {}\n    lock_address   = {}\n    \
         unlock_address = {}\n    lock_method    = \"LOCK\"\n    unlock_method  = \"UNLOCK\"\n    \
         update_method  = \"POST\"\n    username       = {}\n  }}\n}}\n",
        hcl_string(backend.address),
        hcl_string(backend.lock_address),
        hcl_string(backend.unlock_address),
        hcl_string(backend.username),
    )
}

/// Environment for every Terraform command that touches state: the run token as the backend's
/// password.
pub fn backend_env(run_token: &Secret) -> Vec<(&'static str, Secret)> {
    vec![("TF_HTTP_PASSWORD", run_token.clone())]
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// An HCL quoted string: escapes, and template sequences (`${`, `%{`) doubled so they stay literal.
pub fn hcl_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hcl_list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| hcl_string(v)).collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
#[path = "tf_config_tests.rs"]
mod tests;
