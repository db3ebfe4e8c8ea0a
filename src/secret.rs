//! Secrets and the process-wide redaction list.
//!
//! Every token or sensitive value the process learns is wrapped in [`Secret`]; creating one registers
//! its value so the log formatter replaces it with `***` in every line, whoever logs it. `Debug` and
//! `Display` of a `Secret` never show the value. Thread-safe: the list is behind a `RwLock` read on
//! every log line and written only when a new secret appears.

use std::borrow::Cow;
use std::sync::RwLock;

/// The text that stands in for a secret value.
pub const MASK: &str = "***";

/// Values shorter than this are not masked in free text: masking "1" or "ab" everywhere would destroy
/// the logs without protecting anything. They are still hidden wherever a `Secret` is printed.
pub const MIN_REDACTED_LEN: usize = 4;

static REGISTRY: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// A secret value: a token, a password, a sensitive variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` and registers it for redaction.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The value itself, for the one place that must send it (an Authorization header, a file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

/// Adds `value` to the redaction list (no-op for short or already known values).
pub fn register(value: &str) {
    let value = value.trim();
    if value.len() < MIN_REDACTED_LEN {
        return;
    }
    let mut list = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if list.iter().any(|known| known == value) {
        return;
    }
    list.push(value.to_string());
    // Longest first, so a secret that contains another is masked whole.
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Replaces every registered secret in `text` with [`MASK`].
pub fn redact(text: &str) -> Cow<'_, str> {
    let list = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_in_debug_display_and_free_text() {
        let s = Secret::new("tok-unit-test-1234567890");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "tok-unit-test-1234567890");
        assert_eq!(
            redact("Authorization: Bearer tok-unit-test-1234567890 done"),
            "Authorization: Bearer *** done"
        );
    }

    #[test]
    fn longer_secret_containing_a_shorter_one_is_masked_whole() {
        register("abcd-unit");
        register("abcd-unit-longer-secret");
        assert_eq!(redact("x abcd-unit-longer-secret y"), "x *** y");
        assert_eq!(redact("x abcd-unit y"), "x *** y");
    }

    #[test]
    fn short_values_are_not_registered() {
        register("ab");
        assert_eq!(redact("ab cd ab"), "ab cd ab");
    }
}
