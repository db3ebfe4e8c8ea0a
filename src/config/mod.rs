//! Configuration: environment first, flags override, validated once at start-up.
//!
//! Two phases, like ripgrep's: [`raw::RawConfig`] collects what was given and where from;
//! [`settings::Settings::validate`] turns it into typed settings or a list of [`ConfigError`]s, each
//! naming the variable, what is wrong with the value and how to fix it. [`vars::VARS`] is the one
//! table of names, defaults and meanings.

pub mod raw;
mod rules;
pub mod settings;
pub mod vars;

pub use raw::{Flags, RawConfig, Source};
pub use settings::{BinaryCache, MemoryMonitor, NetworkMirror, ProviderCache, Settings};

/// One bad value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable (or flag) at fault.
    pub var: &'static str,
    /// Where the value came from; `None` when the value is missing.
    pub source: Option<Source>,
    /// The value as given, or `***` for secrets.
    pub value: Option<String>,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.value, &self.source) {
            (Some(value), Some(source)) => write!(
                f,
                "{}={value:?} (from {source}): {}; {}",
                self.var, self.problem, self.fix
            ),
            _ => write!(f, "{}: {}; {}", self.var, self.problem, self.fix),
        }
    }
}

/// Every bad value found, so the user fixes them all in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Whether any error concerns `var`.
    pub fn mentions(&self, var: &str) -> bool {
        self.0.iter().any(|e| e.var == var)
    }
}
