//! The `SCALR_AGENT_ENV` file: hooks append `KEY=value` lines to it, and later steps of the run get
//! those variables. Read by the worker on its main thread after each hook; pure parsing.
//!
//! Format (close to GitHub Actions' `GITHUB_ENV`): one `NAME=value` per line, the value taken
//! verbatim up to the end of the line (quotes are kept, nothing is expanded); a multi-line value as
//! `NAME<<DELIMITER`, its lines, then a line holding only `DELIMITER`. Blank lines and lines
//! starting with `#` are ignored. Names are `[A-Za-z_][A-Za-z0-9_]*`. A later line for the same
//! name wins. Names the agent sets for every command ([`PROTECTED`], `TF_HTTP_*`) are refused.
//! Errors name the line and the variable, never the value (which may be a secret).

use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest file read: 1 MiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Variables the agent controls; a hook cannot override them.
pub const PROTECTED: &[&str] = &[
    "SCALR_AGENT_ENV",
    "SCALR_TOKEN",
    "TF_CLI_CONFIG_FILE",
    "TF_PLUGIN_CACHE_DIR",
];

/// Prefixes of variables the agent controls (the state backend's settings).
/// (`TF_TOKEN_*` stays open: hooks may add private registry credentials.)
pub const PROTECTED_PREFIXES: &[&str] = &["TF_HTTP_"];

/// Why the file was refused.
#[derive(Debug)]
pub enum AgentEnvError {
    /// Reading the file failed.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    TooLarge { path: PathBuf, limit: u64 },
    /// The file is not UTF-8.
    NotUtf8 { path: PathBuf },
    /// A line is neither `NAME=value` nor `NAME<<DELIMITER`.
    MissingEquals { line: usize },
    /// The name is not a valid variable name.
    InvalidName { line: usize, name: String },
    /// The name belongs to the agent.
    Protected { line: usize, name: String },
    /// A `NAME<<DELIMITER` block has no closing line.
    UnterminatedHeredoc { line: usize, name: String },
}

impl std::fmt::Display for AgentEnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use AgentEnvError::*;
        match self {
            Read { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            TooLarge { path, limit } => write!(
                f,
                "{} is larger than {limit} bytes; hooks should write only variables to \
                 $SCALR_AGENT_ENV",
                path.display()
            ),
            NotUtf8 { path } => write!(f, "{} is not UTF-8 text", path.display()),
            MissingEquals { line } => write!(
                f,
                "$SCALR_AGENT_ENV line {line}: expected NAME=value or NAME<<DELIMITER"
            ),
            InvalidName { line, name } => write!(
                f,
                "$SCALR_AGENT_ENV line {line}: {name:?} is not a variable name; use letters, \
                 digits and '_', not starting with a digit, and write NAME=value (no `export`, \
                 no spaces around '=')"
            ),
            Protected { line, name } => write!(
                f,
                "$SCALR_AGENT_ENV line {line}: {name} is set by the agent for every command and \
                 cannot be changed from a hook"
            ),
            UnterminatedHeredoc { line, name } => write!(
                f,
                "$SCALR_AGENT_ENV line {line}: the multi-line value of {name} is never closed; \
                 end it with a line holding only its delimiter"
            ),
        }
    }
}

impl std::error::Error for AgentEnvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AgentEnvError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads and parses the file at `path`; a missing file means no variables.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, AgentEnvError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AgentEnvError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| AgentEnvError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(AgentEnvError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| AgentEnvError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    parse(&text)
}

/// Parses the file's text into variables, in first-appearance order, later values winning.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, AgentEnvError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((number, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let heredoc = line
            .find("<<")
            .filter(|&at| line.find('=').is_none_or(|eq| at < eq));
        let (name, value) = if let Some(at) = heredoc {
            let name = &line[..at];
            let delimiter = line[at + 2..].trim();
            check_name(number, name)?;
            let mut value = Vec::new();
            loop {
                match lines.next() {
                    Some((_, l)) if l == delimiter => break,
                    Some((_, l)) => value.push(l),
                    None => {
                        return Err(AgentEnvError::UnterminatedHeredoc {
                            line: number,
                            name: name.to_string(),
                        });
                    }
                }
            }
            (name, value.join("\n"))
        } else {
            let Some((name, value)) = line.split_once('=') else {
                return Err(AgentEnvError::MissingEquals { line: number });
            };
            check_name(number, name)?;
            (name, value.to_string())
        };
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1 = value,
            None => vars.push((name.to_string(), value)),
        }
    }
    Ok(vars)
}

fn check_name(line: usize, name: &str) -> Result<(), AgentEnvError> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(AgentEnvError::InvalidName {
            line,
            name: name.chars().take(80).collect(),
        });
    }
    if PROTECTED.contains(&name) || PROTECTED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(AgentEnvError::Protected {
            line,
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_heredocs_and_overrides() {
        let text = "# set by pre-init\n\nFOO=bar\nQUOTED=\"kept\" as=is\nEMPTY=\r\n\
                    MULTI<<EOF\nline 1\nline=2\nEOF\nFOO=baz\n  # indented comment\n";
        let vars = parse(text).expect("parse");
        let want = [
            ("FOO", "baz"),
            ("QUOTED", "\"kept\" as=is"),
            ("EMPTY", ""),
            ("MULTI", "line 1\nline=2"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_with_the_line_and_never_the_value() {
        type Check = fn(&AgentEnvError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("novalue-secret-xyz", |e| {
                matches!(e, AgentEnvError::MissingEquals { line: 1 })
            }),
            ("export FOO=secret-xyz", |e| {
                matches!(e, AgentEnvError::InvalidName { line: 1, .. })
            }),
            ("OK=1\n1BAD=secret-xyz", |e| {
                matches!(e, AgentEnvError::InvalidName { line: 2, .. })
            }),
            (" FOO=secret-xyz", |e| {
                matches!(e, AgentEnvError::InvalidName { .. })
            }),
            ("TF_HTTP_PASSWORD=secret-xyz", |e| {
                matches!(e, AgentEnvError::Protected { .. })
            }),
            ("SCALR_TOKEN=secret-xyz", |e| {
                matches!(e, AgentEnvError::Protected { .. })
            }),
            ("X<<END\nsecret-xyz\n", |e| {
                matches!(e, AgentEnvError::UnterminatedHeredoc { line: 1, .. })
            }),
        ];
        for (text, check) in cases {
            let err = parse(text).expect_err(text);
            assert!(check(&err), "{text}: {err:?}");
            assert!(!err.to_string().contains("secret-xyz"), "{err}");
        }
    }

    #[test]
    fn reads_files_with_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("env");
        assert!(read(&path).expect("missing is empty").is_empty());
        std::fs::write(&path, "A=1\n").expect("write");
        assert_eq!(
            read(&path).expect("read"),
            [("A".to_string(), "1".to_string())]
        );
        std::fs::write(&path, vec![b'#'; (MAX_FILE_BYTES + 1) as usize]).expect("write");
        assert!(matches!(read(&path), Err(AgentEnvError::TooLarge { .. })));
        std::fs::write(&path, b"A=\xff\n").expect("write");
        assert!(matches!(read(&path), Err(AgentEnvError::NotUtf8 { .. })));
    }
}
