//! Names and label values: pure functions of the task, so every replica and every restart computes the
//! same Job name for the same task (that is what makes Job creation idempotent).
//!
//! No thread, no state. Rules:
//! - Job name: `<basename>-<run-id>-<stage>`, lower-cased, every character outside `[a-z0-9-]` made a
//!   `-`, runs of `-` collapsed and trimmed (a DNS-1123 label). Longer than [`MAX_NAME_LEN`]: the
//!   basename is dropped (Scalr's own agent does the same, so names stay familiar). Still longer: cut
//!   and suffixed with `-` and [`HASH_LEN`] hex digits of the SHA-256 of the unaltered parts, so two
//!   long names that share a prefix stay distinct.
//! - Credentials Secret: `<job>-credentials` (at most 75 characters; Secret names allow 253).
//! - Label values: kept as given when valid; otherwise cleaned, cut and hash-suffixed the same way.

use sha2::{Digest, Sha256};

use super::labels::CREDENTIALS_SUFFIX;

/// Longest Job name and label value: a Job's name becomes its pods' `job-name` label, so it must be a
/// valid label value (63), not merely a valid object name (253).
pub const MAX_NAME_LEN: usize = 63;
/// Hex digits of the hash suffix: 40 bits, enough that two tasks colliding is not a concern.
pub const HASH_LEN: usize = 10;

/// The Job name of a task: `<basename>-<run-id>-<stage>` made a DNS-1123 label of at most 63.
pub fn job_name(basename: &str, run_id: &str, stage: &str) -> String {
    let (base, run, stage_part) = (dns_part(basename), dns_part(run_id), dns_part(stage));
    let full = join(&[&base, &run, &stage_part]);
    if !full.is_empty() && full.len() <= MAX_NAME_LEN {
        return full;
    }
    let short = join(&[&run, &stage_part]);
    if !short.is_empty() && short.len() <= MAX_NAME_LEN {
        return short;
    }
    let hash = short_hash(&[basename, run_id, stage]);
    let prefix = if short.is_empty() { "task" } else { &short };
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    let cut = prefix[..prefix.len().min(keep)].trim_end_matches('-');
    format!("{cut}-{hash}")
}

/// The name of a Job's credentials Secret: `<job>-credentials`.
pub fn secret_name(job_name: &str) -> String {
    format!("{job_name}{CREDENTIALS_SUFFIX}")
}

/// A valid label value for `value`: unchanged when already valid, else cleaned, cut to fit and
/// suffixed with a hash of the original (the exact value goes in an annotation).
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_string();
    }
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let hash = short_hash(&[value]);
    let keep = MAX_NAME_LEN - HASH_LEN - 1;
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let cut =
        trimmed[..trimmed.len().min(keep)].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

/// Whether `s` is a valid label value: empty, or at most 63 of `[A-Za-z0-9._-]` starting and ending
/// with an alphanumeric.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let bytes = s.as_bytes();
    s.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `s` is a DNS-1123 label: 1..=63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// One name part as DNS-1123 characters: lower case, others to `-`, runs collapsed, ends trimmed.
fn dns_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("-")
}

/// The first [`HASH_LEN`] hex digits of the SHA-256 of the parts, NUL-separated so that
/// `("ab", "c")` and `("a", "bc")` differ.
fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(HASH_LEN);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
        if hex.len() >= HASH_LEN {
            break;
        }
    }
    hex.truncate(HASH_LEN);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG_BASE: &str = "a-very-long-release-name-chosen-by-someone-who-likes-words";

    #[test]
    fn job_names_follow_the_rule() {
        // (basename, run id, stage, expected)
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "scalr-agent",
                "run-v0abc123",
                "plan",
                "scalr-agent-run-v0abc123-plan",
            ),
            (
                "Scalr_Agent",
                "RUN-V0ABC",
                "Apply",
                "scalr-agent-run-v0abc-apply",
            ),
            ("agent", "run-1", "policy.check", "agent-run-1-policy-check"),
            ("--agent--", "run--1", "plan", "agent-run-1-plan"),
            ("", "run-1", "plan", "run-1-plan"),
            ("agent", "run-1", "", "agent-run-1"),
            ("agent", "rün-1", "plan", "agent-r-n-1-plan"),
            // 63 exactly keeps the basename.
            (
                &"b".repeat(52),
                "run-1",
                "plan",
                &format!("{}-run-1-plan", "b".repeat(52)),
            ),
            // 64 drops it.
            (&"b".repeat(53), "run-1", "plan", "run-1-plan"),
            (
                LONG_BASE,
                "run-v0ouj5re5mn1ggk8",
                "apply",
                "run-v0ouj5re5mn1ggk8-apply",
            ),
        ];
        for (base, run, stage, want) in cases {
            let got = job_name(base, run, stage);
            assert_eq!(&got, want, "job_name({base:?}, {run:?}, {stage:?})");
            assert!(is_dns1123_label(&got), "{got} is not a DNS-1123 label");
        }
    }

    #[test]
    fn names_too_long_without_basename_are_cut_and_hashed() {
        let run = format!("run-{}", "x".repeat(70));
        let name = job_name("agent", &run, "plan");
        assert_eq!(name.len(), MAX_NAME_LEN, "{name}");
        assert!(is_dns1123_label(&name), "{name}");
        assert!(name.starts_with("run-xxxx"), "{name}");
        // Stable: same input, same name.
        assert_eq!(name, job_name("agent", &run, "plan"));
        // Unique: a different stage or basename, same long prefix, different name.
        assert_ne!(name, job_name("agent", &run, "apply"));
        assert_ne!(name, job_name("other", &run, "plan"));
        let hash = &name[name.len() - HASH_LEN..];
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        // A cut that lands on a '-' does not leave "--".
        let dashy = format!("{}-{}", "r".repeat(51), "y".repeat(30));
        let name = job_name("", &dashy, "plan");
        assert!(is_dns1123_label(&name) && !name.contains("--"), "{name}");
    }

    #[test]
    fn names_of_nothing_valid_still_make_a_label() {
        for (base, run, stage) in [("", "", ""), ("!!!", "???", "..."), ("ä", "ö", "ü")] {
            let name = job_name(base, run, stage);
            assert!(
                is_dns1123_label(&name),
                "{name:?} from {base:?},{run:?},{stage:?}"
            );
            assert!(name.starts_with("task-"), "{name}");
        }
        assert_ne!(job_name("", "???", ""), job_name("", "!!!", ""));
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(short_hash(&["ab", "c"]), short_hash(&["a", "bc"]));
        assert_eq!(short_hash(&["x"]).len(), HASH_LEN);
    }

    #[test]
    fn secret_name_appends_credentials_and_fits() {
        let job = job_name(LONG_BASE, &"r".repeat(200), "plan");
        let secret = secret_name(&job);
        assert_eq!(secret, format!("{job}-credentials"));
        assert!(secret.len() <= 253);
        assert_eq!(secret_name("a-run-1-plan"), "a-run-1-plan-credentials");
    }

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_when_not() {
        let keep = ["", "task-v0abc", "run_1.2", "A", &"x".repeat(63)];
        for v in keep {
            assert_eq!(label_value(v), v, "{v:?} should be kept");
        }
        let fix = [
            &"x".repeat(64) as &str,
            "-leading",
            "trailing.",
            "has space",
            "slash/in/it",
            "ünïcode",
            "////",
        ];
        for v in fix {
            let got = label_value(v);
            assert!(is_label_value(&got), "{v:?} -> {got:?} invalid");
            assert!(!got.is_empty(), "{v:?}");
            assert_ne!(got, v);
            assert_eq!(got, label_value(v), "stable");
        }
        assert_ne!(label_value(&"x".repeat(64)), label_value(&"x".repeat(65)));
        assert!(label_value("has space").starts_with("has-space-"));
    }

    #[test]
    fn validators_agree_with_the_kubernetes_rules() {
        let cases: &[(&str, bool, bool)] = &[
            // (s, label value?, dns label?)
            ("abc", true, true),
            ("a-b", true, true),
            ("A", true, false),
            ("a_b", true, false),
            ("a.b", true, false),
            ("-a", false, false),
            ("a-", false, false),
            ("", true, false),
            (&"a".repeat(63), true, true),
            (&"a".repeat(64), false, false),
        ];
        for (s, label, dns) in cases {
            assert_eq!(is_label_value(s), *label, "label {s:?}");
            assert_eq!(is_dns1123_label(s), *dns, "dns {s:?}");
        }
    }
}
