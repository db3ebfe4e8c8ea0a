//! `PlatformError`: every way a platform call can fail, classified once into retryable, permanent or
//! fatal (401) through [`Retryable`], with the call, method, path, status, the protocol's error code
//! and a redacted excerpt of the body. Built by the client from HTTP responses; read by the controller
//! and worker loops, which branch on [`PlatformError::code`], [`PlatformError::is_session_expired`]
//! and the verdict, never on message text.

use std::path::PathBuf;
use std::time::Duration;

use crate::http::{HttpError, Response, Retryable, Verdict};

/// Which token a call carries; decides what a 401 means for the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The agent pool token (`SCALR_AGENT_TOKEN`).
    Pool,
    /// The controller's session token.
    Session,
    /// A worker's task token.
    Task,
}

/// Where a failed call was going: a human name, the method and the path (never a token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSite {
    /// What the call does, e.g. `acquire task`.
    pub call: &'static str,
    pub method: &'static str,
    /// The path below the platform URL, with the query string.
    pub path: String,
    pub token: TokenKind,
}

impl std::fmt::Display for CallSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} {})", self.call, self.method, self.path)
    }
}

/// Why a platform call failed.
#[derive(Debug)]
pub enum PlatformError {
    /// The client could not be built (bad URL, TLS material, proxy).
    Setup { detail: String },
    /// An argument cannot be sent (an id with characters a path cannot carry).
    InvalidArgument { at: Box<CallSite>, detail: String },
    /// No HTTP response: connect, TLS, timeout, broken connection.
    Transport {
        at: Box<CallSite>,
        source: HttpError,
    },
    /// 401: the credential is gone. Stop.
    Unauthorized { at: Box<CallSite>, detail: String },
    /// 410: the agent's session ended (missed heartbeats). Register again.
    SessionExpired { at: Box<CallSite> },
    /// 429, 503 or another 5xx: come back later (`retry_after` when the server said when).
    Unavailable {
        at: Box<CallSite>,
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    /// Any other non-success status: the request cannot succeed as it is (403, 404, 409, 422, ...).
    Rejected {
        at: Box<CallSite>,
        status: u16,
        /// The protocol's error code (`already-acquired`, `log-gap`, ...), when the body had one.
        code: Option<String>,
        detail: String,
        /// `meta.expected-offset` of log conflicts.
        expected_offset: Option<u64>,
    },
    /// A success response whose body does not match the protocol.
    Decode { at: Box<CallSite>, detail: String },
    /// A download whose sha256 or size differs from what the task document promised.
    Checksum {
        at: Box<CallSite>,
        expected: String,
        actual: String,
    },
    /// Writing a download to disk failed.
    Io {
        at: Box<CallSite>,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PlatformError {
    /// The call this error came from (none for `Setup`).
    pub fn call_site(&self) -> Option<&CallSite> {
        match self {
            PlatformError::Setup { .. } => None,
            PlatformError::InvalidArgument { at, .. }
            | PlatformError::Transport { at, .. }
            | PlatformError::Unauthorized { at, .. }
            | PlatformError::SessionExpired { at }
            | PlatformError::Unavailable { at, .. }
            | PlatformError::Rejected { at, .. }
            | PlatformError::Decode { at, .. }
            | PlatformError::Checksum { at, .. }
            | PlatformError::Io { at, .. } => Some(at),
        }
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        match self {
            PlatformError::Unauthorized { .. } => Some(401),
            PlatformError::SessionExpired { .. } => Some(410),
            PlatformError::Unavailable { status, .. } | PlatformError::Rejected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The protocol's error code of a rejected call (`already-acquired`, `log-gap`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            PlatformError::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Where the server's copy of a log ends, from a `log-gap` or `log-mismatch` conflict.
    pub fn expected_offset(&self) -> Option<u64> {
        match self {
            PlatformError::Rejected {
                expected_offset, ..
            } => *expected_offset,
            _ => None,
        }
    }

    /// 410: register again with the pool token.
    pub fn is_session_expired(&self) -> bool {
        matches!(self, PlatformError::SessionExpired { .. })
    }

    /// 401: the credential is gone; stop in order.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, PlatformError::Unauthorized { .. })
    }

    /// A response that does not match the protocol.
    pub(crate) fn decode(at: CallSite, detail: String) -> Self {
        PlatformError::Decode {
            at: Box::new(at),
            detail,
        }
    }

    /// Classifies a non-success response.
    pub(crate) fn from_response(at: CallSite, response: &Response) -> Self {
        let at = Box::new(at);
        let body = ErrorBody::parse(response);
        match response.status {
            401 => PlatformError::Unauthorized {
                at,
                detail: body.detail,
            },
            410 => PlatformError::SessionExpired { at },
            status @ (429 | 500..=599) => PlatformError::Unavailable {
                at,
                status,
                retry_after: response.retry_after(),
                detail: body.detail,
            },
            status => PlatformError::Rejected {
                at,
                status,
                code: body.code,
                detail: body.detail,
                expected_offset: body.expected_offset,
            },
        }
    }
}

/// The first JSON:API error of a body, or an excerpt of whatever the body was.
struct ErrorBody {
    code: Option<String>,
    detail: String,
    expected_offset: Option<u64>,
}

impl ErrorBody {
    fn parse(response: &Response) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        let first = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(|e| e.get(0));
        let text = |key: &str| {
            first
                .and_then(|e| e.get(key))
                .and_then(|v| v.as_str())
                .map(|s| crate::secret::redact(s).into_owned())
        };
        let expected_offset = parsed
            .as_ref()
            .and_then(|v| v.pointer("/meta/expected-offset"))
            .and_then(|v| v.as_u64());
        ErrorBody {
            code: text("code"),
            detail: text("detail").unwrap_or_else(|| crate::http::excerpt(&response.body)),
            expected_offset,
        }
    }
}

impl std::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlatformError::Setup { detail } => {
                write!(f, "cannot set up the platform client: {detail}")
            }
            PlatformError::InvalidArgument { at, detail } => write!(f, "{at}: {detail}"),
            PlatformError::Transport { at, source } => write!(f, "{}: {source}", at.call),
            PlatformError::Unauthorized { at, detail } => {
                let hint = match at.token {
                    TokenKind::Pool => {
                        "the agent pool token was revoked or is wrong; set a valid SCALR_AGENT_TOKEN"
                    }
                    TokenKind::Session => {
                        "the agent's session was ended (deregistered, replaced by an agent with the \
                         same name, or its pool token revoked)"
                    }
                    TokenKind::Task => {
                        "the task token is no longer valid (the task was offered again or its run \
                         ended); this worker must stop"
                    }
                };
                write!(f, "{at}: 401 unauthorized: {detail} — {hint}")
            }
            PlatformError::SessionExpired { at } => write!(
                f,
                "{at}: 410 session expired: the platform missed this agent's heartbeats; it \
                 registers again"
            ),
            PlatformError::Unavailable {
                at,
                status,
                retry_after,
                detail,
            } => {
                write!(f, "{at}: {status}: {detail}")?;
                if let Some(after) = retry_after {
                    write!(f, " (retry after {} s)", after.as_secs())?;
                }
                Ok(())
            }
            PlatformError::Rejected {
                at,
                status,
                code,
                detail,
                ..
            } => match code {
                Some(code) => write!(f, "{at}: {status} {code}: {detail}"),
                None => write!(f, "{at}: {status}: {detail}"),
            },
            PlatformError::Decode { at, detail } => {
                write!(f, "{at}: unexpected response from the platform: {detail}")
            }
            PlatformError::Checksum {
                at,
                expected,
                actual,
            } => write!(
                f,
                "{at}: download corrupted: expected {expected}, got {actual}"
            ),
            PlatformError::Io { at, path, source } => {
                write!(f, "{at}: cannot write {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PlatformError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlatformError::Transport { source, .. } => Some(source),
            PlatformError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Retryable for PlatformError {
    fn verdict(&self) -> Verdict {
        match self {
            PlatformError::Unauthorized { .. } => Verdict::Fatal,
            PlatformError::Unavailable { retry_after, .. } => Verdict::Retry {
                after: *retry_after,
            },
            PlatformError::Transport { source, .. } => source.verdict(),
            // A corrupted download is worth fetching again.
            PlatformError::Checksum { .. } => Verdict::Retry { after: None },
            _ => Verdict::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> CallSite {
        CallSite {
            call: "acquire task",
            method: "POST",
            path: "/api/iacp/v3/tasks/task-1/actions/acquire".into(),
            token: TokenKind::Session,
        }
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn statuses_are_classified_once() {
        let conflict = r#"{"errors":[{"status":"409","code":"log-gap","detail":"resend from 3"}],
                           "meta":{"expected-offset":3}}"#;
        // (status, headers, body, verdict, code)
        type Case<'a> = (
            u16,
            &'a [(&'a str, &'a str)],
            &'a str,
            Verdict,
            Option<&'a str>,
        );
        let cases: &[Case<'_>] = &[
            (401, &[], "{}", Verdict::Fatal, None),
            (410, &[], "{}", Verdict::Permanent, None),
            (
                429,
                &[("retry-after", "7")],
                "",
                Verdict::Retry {
                    after: Some(Duration::from_secs(7)),
                },
                None,
            ),
            (503, &[], "", Verdict::Retry { after: None }, None),
            (500, &[], "boom", Verdict::Retry { after: None }, None),
            (502, &[], "", Verdict::Retry { after: None }, None),
            (403, &[], "{}", Verdict::Permanent, None),
            (404, &[], "{}", Verdict::Permanent, None),
            (409, &[], conflict, Verdict::Permanent, Some("log-gap")),
            (422, &[], "{}", Verdict::Permanent, None),
        ];
        for (status, headers, body, verdict, code) in cases {
            let error = PlatformError::from_response(site(), &response(*status, headers, body));
            assert_eq!(error.verdict(), *verdict, "status {status}");
            assert_eq!(error.status(), Some(*status));
            assert_eq!(error.code(), *code, "status {status}");
        }
        let gap = PlatformError::from_response(site(), &response(409, &[], conflict));
        assert_eq!(gap.expected_offset(), Some(3));
        assert!(
            gap.to_string().contains("409 log-gap: resend from 3"),
            "{gap}"
        );
        assert!(PlatformError::from_response(site(), &response(410, &[], "")).is_session_expired());
    }

    #[test]
    fn messages_name_the_call_and_say_what_to_do() {
        let mut at = site();
        at.token = TokenKind::Pool;
        let e = PlatformError::from_response(at, &response(401, &[], "{}"));
        let text = e.to_string();
        assert!(
            text.starts_with("acquire task (POST /api/iacp/v3/tasks/task-1/actions/acquire): 401"),
            "{text}"
        );
        assert!(text.contains("SCALR_AGENT_TOKEN"), "{text}");
        let e = PlatformError::from_response(site(), &response(500, &[], "<html>oops</html>"));
        assert!(e.to_string().contains("<html>oops</html>"), "{e}");
    }
}
