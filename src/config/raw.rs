//! Phase one: raw values, exactly as given, with where each came from.
//!
//! Precedence: command-line flag > environment variable > legacy environment variable > default.
//! An empty environment value counts as unset (templates often render `VAR: ""`).

use std::collections::BTreeMap;

use super::vars::{VARS, Var};

/// Where a value came from, for messages and `scalr-agent config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag(&'static str),
    /// The variable itself.
    Env(&'static str),
    /// A deprecated alias.
    LegacyEnv(&'static str),
    /// The built-in default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::LegacyEnv(name) => write!(f, "legacy environment {name}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A raw value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawValue {
    /// The text given.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Values given on the command line, keyed by the variable they override.
#[derive(Clone, Debug, Default)]
pub struct Flags(pub Vec<(&'static str, String)>);

/// Phase-one configuration: every variable that was given, untyped. Its `Debug` shows names and
/// sources only: raw values may hold secrets (tokens, mirror tokens, proxy passwords).
#[derive(Clone, Default)]
pub struct RawConfig {
    values: BTreeMap<&'static str, RawValue>,
    /// Deprecation notices for legacy names in use.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.values.iter().map(|(k, v)| (k, v.source)))
            .finish()
    }
}

impl RawConfig {
    /// Collects values from `flags` and the environment (read through `env`, so tests need not touch
    /// the process environment).
    pub fn collect(env: &dyn Fn(&str) -> Option<String>, flags: &Flags) -> RawConfig {
        let mut raw = RawConfig::default();
        let present = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        for var in VARS {
            if let Some((_, value)) = flags.0.iter().rev().find(|(name, _)| *name == var.name) {
                let flag = var.flag.unwrap_or("--?");
                raw.insert(var, value.clone(), Source::Flag(flag));
                continue;
            }
            if let Some(value) = present(var.name) {
                raw.insert(var, value, Source::Env(var.name));
                continue;
            }
            for legacy in var.legacy {
                if let Some(value) = present(legacy) {
                    // Lower-case proxy variables are a convention, not a deprecation.
                    if !legacy.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        raw.warnings.push(format!(
                            "{legacy} is deprecated; rename it to {} (same meaning)",
                            var.name
                        ));
                    }
                    raw.insert(var, value, Source::LegacyEnv(legacy));
                    break;
                }
            }
        }
        raw
    }

    fn insert(&mut self, var: &'static Var, value: String, source: Source) {
        self.values.insert(var.name, RawValue { value, source });
    }

    /// The raw value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&RawValue> {
        self.values.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn precedence_is_flag_then_env_then_legacy_then_nothing() {
        let env = env_of(&[
            ("SCALR_AGENT_CONCURRENCY", "5"),
            ("SCALR_CONCURRENCY", "7"),
            ("SCALR_DATA_HOME", "/legacy"),
            ("SCALR_AGENT_NAME", "from-env"),
        ]);
        let flags = Flags(vec![("SCALR_AGENT_NAME", "from-flag".into())]);
        let raw = RawConfig::collect(&env, &flags);
        assert_eq!(
            raw.get("SCALR_AGENT_NAME"),
            Some(&RawValue {
                value: "from-flag".into(),
                source: Source::Flag("--name")
            })
        );
        assert_eq!(
            raw.get("SCALR_AGENT_CONCURRENCY").map(|v| v.value.as_str()),
            Some("5")
        );
        assert_eq!(
            raw.get("SCALR_AGENT_DATA_DIR").map(|v| v.source),
            Some(Source::LegacyEnv("SCALR_DATA_HOME"))
        );
        assert_eq!(raw.warnings.len(), 1, "{:?}", raw.warnings);
        assert!(
            raw.warnings[0].contains("SCALR_DATA_HOME")
                && raw.warnings[0].contains("SCALR_AGENT_DATA_DIR")
        );
        assert_eq!(raw.get("SCALR_URL"), None);
    }

    #[test]
    fn empty_values_are_unset_and_lowercase_proxies_are_not_deprecated() {
        let env = env_of(&[("HTTPS_PROXY", " "), ("https_proxy", "http://p:1")]);
        let raw = RawConfig::collect(&env, &Flags::default());
        assert_eq!(
            raw.get("HTTPS_PROXY").map(|v| v.value.as_str()),
            Some("http://p:1")
        );
        assert!(raw.warnings.is_empty());
    }
}
