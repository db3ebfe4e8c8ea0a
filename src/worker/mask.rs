//! Masking of secret values in run output: the run token, the task token, sensitive variables and
//! mirror tokens become `***` before a byte leaves the worker. Pure, byte-level (terraform's output
//! need not be UTF-8); used by the log shipper thread on whole lines, and by the worker when it
//! keeps the tail of a command's output for messages.
//!
//! Output arrives in chunks that may cut a secret in two, so masking works on complete lines; a
//! partial line sent early (a prompt without a newline) keeps back its longest suffix that could be
//! the start of a secret ([`Masker::unsafe_suffix`]). A multi-line secret is masked line by line.
//! Values shorter than [`crate::secret::MIN_REDACTED_LEN`] are not masked: masking "1" everywhere
//! would destroy the log without protecting anything (the same rule as the process log).

use std::sync::Arc;

use crate::secret::{MASK, MIN_REDACTED_LEN, Secret};

/// The secret values of a run, longest first. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Masker {
    patterns: Arc<Vec<Vec<u8>>>,
    /// Whether some secret starts with this byte: most bytes of a log are skipped with one lookup.
    starts: Arc<[bool; 256]>,
}

impl Default for Masker {
    /// A masker with nothing to mask.
    fn default() -> Self {
        Masker::new([])
    }
}

impl Masker {
    /// A masker for `secrets` (each line of a multi-line value counts on its own).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            for part in secret.expose().split(['\n', '\r']) {
                let part = part.trim();
                if part.len() >= MIN_REDACTED_LEN && !patterns.iter().any(|p| p == part.as_bytes())
                {
                    patterns.push(part.as_bytes().to_vec());
                }
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut starts = [false; 256];
        for pattern in &patterns {
            starts[usize::from(pattern[0])] = true;
        }
        Masker {
            patterns: Arc::new(patterns),
            starts: Arc::new(starts),
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every secret replaced by `***`.
    pub fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        self.mask_into(text, &mut out);
        out
    }

    /// Appends `text`, masked, to `out`.
    pub fn mask_into(&self, text: &[u8], out: &mut Vec<u8>) {
        if self.patterns.is_empty() {
            out.extend_from_slice(text);
            return;
        }
        let mut i = 0;
        let mut plain_from = 0;
        while i < text.len() {
            if !self.starts[usize::from(text[i])] {
                i += 1;
                continue;
            }
            let hit = self
                .patterns
                .iter()
                .find(|p| text[i..].starts_with(p))
                .map(Vec::len);
            match hit {
                Some(len) => {
                    out.extend_from_slice(&text[plain_from..i]);
                    out.extend_from_slice(MASK.as_bytes());
                    i += len;
                    plain_from = i;
                }
                None => i += 1,
            }
        }
        out.extend_from_slice(&text[plain_from..]);
    }

    /// The length of the longest suffix of `text` that is a proper prefix of a secret: bytes that
    /// must wait for what follows before they can be masked and sent.
    pub fn unsafe_suffix(&self, text: &[u8]) -> usize {
        let mut longest = 0;
        for pattern in self.patterns.iter() {
            let max = (pattern.len() - 1).min(text.len());
            for len in (longest + 1..=max).rev() {
                if text[text.len() - len..] == pattern[..len] {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        let secrets: Vec<Secret> = values.iter().map(|v| Secret::new(*v)).collect();
        Masker::new(&secrets)
    }

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = masker(&["hunter2-mask", "hunter2-mask-longer", "tok-abcdef"]);
        let cases: &[(&str, &str)] = &[
            ("nothing here", "nothing here"),
            ("pw=hunter2-mask!", "pw=***!"),
            ("pw=hunter2-mask-longer", "pw=***"),
            ("tok-abcdeftok-abcdef", "******"),
            ("a hunter2-mas b", "a hunter2-mas b"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(
                String::from_utf8(m.mask(text.as_bytes())).expect("utf8"),
                *want,
                "{text}"
            );
        }
    }

    #[test]
    fn short_and_multi_line_values() {
        let m = masker(&["ab", "first-line\nsecond-line\n"]);
        assert_eq!(m.mask(b"ab first-line x"), b"ab *** x");
        assert_eq!(m.mask(b"second-line"), b"***");
        assert!(masker(&["ab"]).is_empty());
    }

    #[test]
    fn binary_output_is_masked_too() {
        let m = masker(&["s3cr3t-value"]);
        assert_eq!(m.mask(b"\xff\x00s3cr3t-value\xfe"), b"\xff\x00***\xfe");
    }

    #[test]
    fn unsafe_suffix_holds_back_a_possible_secret_start() {
        let m = masker(&["s3cr3t-value", "other-token"]);
        let cases: &[(&[u8], usize)] = &[
            (b"prompt: ", 0),
            (b"prompt: s", 1),
            (b"prompt: s3cr", 4),
            (b"prompt: s3cr3t-valu", 11),
            (b"prompt: s3cr3t-value", 0),
            (b"x oth", 3),
            (b"", 0),
        ];
        for (text, want) in cases {
            assert_eq!(
                m.unsafe_suffix(text),
                *want,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
