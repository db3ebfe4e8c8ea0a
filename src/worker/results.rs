//! What a stage's output means for its final report: resource counts from the saved plan's JSON
//! and from apply's summary line, the error a failed command printed, and the messages users see
//! with the run. Pure: bytes and lines in, counts and text out; used by the worker's main thread.

use crate::platform::ResourceCounts;

/// Longest message the platform accepts with a final status.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// `text` without ANSI escape sequences (terraform colours its output), lossily decoded.
pub fn strip_ansi(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters final-byte (0x40..=0x7e); anything else: drop ESC and one char.
        if chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

/// Counts of a saved plan from `terraform show -json`: a replacement counts as one addition and one
/// destruction, as terraform's own summary does; reads and no-ops count nothing.
pub fn plan_counts(plan_json: &[u8]) -> Result<ResourceCounts, String> {
    let plan: serde_json::Value =
        serde_json::from_slice(plan_json).map_err(|e| format!("invalid plan JSON: {e}"))?;
    let mut counts = ResourceCounts::default();
    let changes = plan
        .get("resource_changes")
        .and_then(|c| c.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for change in changes {
        let actions: Vec<&str> = change
            .pointer("/change/actions")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for action in actions {
            match action {
                "create" => counts.additions += 1,
                "update" => counts.changes += 1,
                "delete" => counts.destructions += 1,
                _ => {}
            }
        }
    }
    Ok(counts)
}

/// Counts from apply's summary line (`Apply complete! Resources: 1 added, 0 changed, 0
/// destroyed.` or `Destroy complete! Resources: 2 destroyed.`), the last one in `lines`.
pub fn apply_counts<'a>(lines: impl DoubleEndedIterator<Item = &'a str>) -> Option<ResourceCounts> {
    for line in lines.rev() {
        let Some((_, rest)) = line.split_once(" complete! Resources: ") else {
            continue;
        };
        let mut counts = ResourceCounts::default();
        for part in rest.trim_end_matches('.').split(", ") {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "added" | "imported" => counts.additions += n,
                "changed" => counts.changes += n,
                "destroyed" => counts.destructions += n,
                _ => {}
            }
        }
        return Some(counts);
    }
    None
}

/// The first error terraform (or a hook) printed, from the tail of its output: the text of the
/// first `Error: ...` line without terraform's box drawing, else the last non-empty line.
pub fn error_summary<'a>(lines: impl Iterator<Item = &'a str> + Clone) -> Option<String> {
    let clean = |line: &'a str| {
        line.trim()
            .trim_start_matches(['│', '╷', '╵', '|'])
            .trim()
            .to_string()
    };
    if let Some(error) = lines
        .clone()
        .map(clean)
        .find(|l| l.starts_with("Error: ") || l.starts_with("Error:"))
    {
        return Some(error);
    }
    lines.map(clean).filter(|l| !l.is_empty()).last()
}

/// The message of a finished plan.
pub fn plan_message(has_changes: bool, counts: ResourceCounts) -> String {
    if has_changes && counts == ResourceCounts::default() {
        "Plan: no resource changes; outputs or the state will be updated.".to_string()
    } else if has_changes {
        format!(
            "Plan: {} to add, {} to change, {} to destroy.",
            counts.additions, counts.changes, counts.destructions
        )
    } else {
        "No changes. Your infrastructure matches the configuration.".to_string()
    }
}

/// The message of a finished apply.
pub fn apply_message(counts: ResourceCounts) -> String {
    format!(
        "Apply complete! Resources: {} added, {} changed, {} destroyed.",
        counts.additions, counts.changes, counts.destructions
    )
}

/// `message` cut to what the platform accepts.
pub fn truncate_message(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_string();
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(additions: u64, changes: u64, destructions: u64) -> ResourceCounts {
        ResourceCounts {
            additions,
            changes,
            destructions,
        }
    }

    #[test]
    fn ansi_sequences_are_removed() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x1b[1m\x1b[32mPlan:\x1b[0m 1 to add", "Plan: 1 to add"),
            (b"plain", "plain"),
            (b"\x1b]x", "x"),
            (b"bad \xff byte", "bad \u{fffd} byte"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_ansi(input), *want);
        }
    }

    #[test]
    fn plan_json_counts_replacements_twice() {
        let json = br#"{"resource_changes":[
            {"address":"a","change":{"actions":["create"]}},
            {"address":"b","change":{"actions":["update"]}},
            {"address":"c","change":{"actions":["delete","create"]}},
            {"address":"d","change":{"actions":["no-op"]}},
            {"address":"e","change":{"actions":["read"]}},
            {"address":"f","change":{"actions":["delete"]}}]}"#;
        assert_eq!(plan_counts(json), Ok(counts(2, 1, 2)));
        assert_eq!(plan_counts(b"{}"), Ok(counts(0, 0, 0)));
        assert!(plan_counts(b"not json").is_err());
    }

    #[test]
    fn apply_summary_lines() {
        let cases: &[(&[&str], Option<ResourceCounts>)] = &[
            (
                &[
                    "x",
                    "Apply complete! Resources: 1 added, 2 changed, 3 destroyed.",
                ],
                Some(counts(1, 2, 3)),
            ),
            (
                &["Destroy complete! Resources: 2 destroyed."],
                Some(counts(0, 0, 2)),
            ),
            (
                &["Apply complete! Resources: 1 imported, 0 added, 0 changed, 0 destroyed."],
                Some(counts(1, 0, 0)),
            ),
            (&["Error: boom"], None),
        ];
        for (lines, want) in cases {
            assert_eq!(apply_counts(lines.iter().copied()), *want, "{lines:?}");
        }
    }

    #[test]
    fn error_summary_prefers_terraforms_error_line() {
        let tf = [
            "╷",
            "│ Error: Reference to undeclared resource",
            "│ ",
            "│   on main.tf line 2",
            "╵",
        ];
        assert_eq!(
            error_summary(tf.iter().copied()).as_deref(),
            Some("Error: Reference to undeclared resource")
        );
        let hook = ["starting", "missing file: x.sh", ""];
        assert_eq!(
            error_summary(hook.iter().copied()).as_deref(),
            Some("missing file: x.sh")
        );
        assert_eq!(error_summary([].iter().copied()), None);
    }

    #[test]
    fn messages() {
        assert_eq!(
            plan_message(true, counts(1, 0, 0)),
            "Plan: 1 to add, 0 to change, 0 to destroy."
        );
        assert!(plan_message(false, counts(0, 0, 0)).starts_with("No changes."));
        assert_eq!(
            apply_message(counts(0, 0, 1)),
            "Apply complete! Resources: 0 added, 0 changed, 1 destroyed."
        );
        let long = "x".repeat(5000);
        assert_eq!(truncate_message(&long).chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(truncate_message("short"), "short");
    }
}
