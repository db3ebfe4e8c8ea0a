//! `PlatformClient`: the blocking transport under every platform call. It joins paths to the
//! configured platform URL, sets the bearer token and JSON:API headers, classifies every non-success
//! status once into a [`PlatformError`], and retries within its [`RetryPolicy`] (transport errors,
//! 429/503/5xx, honouring `Retry-After`; every call of the protocol is idempotent). Downloads stream
//! into a temporary file, are checked against their sha256 and size, and renamed into place.
//! Cheap to clone; `Send + Sync`; used from any thread. Tokens never reach a log line or an error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{CallSite, PlatformError, TokenKind};
use super::types::Download;
use super::wire::{self, MEDIA_TYPE};
use crate::http::{
    HttpClient, HttpError, HttpOptions, Request, Response, RetryPolicy, TransportKind,
};
use crate::secret::Secret;
use crate::shutdown::Shutdown;

/// Added to a long-poll's wait to get its read timeout.
pub const DEFAULT_LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// The longest long-poll wait the protocol allows.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// A request body.
pub(crate) enum Body<'a> {
    Empty,
    Json(Value),
    /// Raw bytes, with an `X-Checksum-Sha256` header when given.
    Bytes {
        bytes: &'a [u8],
        sha256: Option<String>,
    },
}

/// One call: where, with which token, what body, how long a read may block.
pub(crate) struct Call<'a> {
    pub site: CallSite,
    pub token: &'a Secret,
    pub body: Body<'a>,
    pub read_timeout: Option<Duration>,
}

/// The platform client. See `docs/protocol.md` for the calls.
#[derive(Clone)]
pub struct PlatformClient {
    http: HttpClient,
    base: String,
    retry: RetryPolicy,
    shutdown: Option<Shutdown>,
    long_poll_margin: Duration,
}

impl std::fmt::Debug for PlatformClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformClient")
            .field("base", &self.base)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PlatformClient {
    /// A client for the platform at `url` (`SCALR_URL`: `https://host[:port]`, no path).
    pub fn new(url: &str, http: &HttpOptions) -> Result<Self, PlatformError> {
        let base = url.trim().trim_end_matches('/').to_string();
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| PlatformError::Setup {
                detail: format!("SCALR_URL {base:?} must start with https:// (or http://)"),
            })?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(PlatformError::Setup {
                detail: format!(
                    "SCALR_URL {:?} must be scheme://host[:port] without a path, query or credentials",
                    crate::secret::redact(&base)
                ),
            });
        }
        let http = HttpClient::new(http).map_err(|e| PlatformError::Setup {
            detail: e.to_string(),
        })?;
        Ok(PlatformClient {
            http,
            base,
            retry: RetryPolicy::default(),
            shutdown: None,
            long_poll_margin: DEFAULT_LONG_POLL_MARGIN,
        })
    }

    /// Replaces the retry policy (default: [`RetryPolicy::default`]).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Makes backoff sleeps end early when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Replaces the margin added to a long-poll's wait for its read timeout (default 10 s).
    pub fn with_long_poll_margin(mut self, margin: Duration) -> Self {
        self.long_poll_margin = margin;
        self
    }

    /// The platform URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The read timeout of a long-poll waiting `wait`.
    pub(crate) fn long_poll_timeout(&self, wait: Duration) -> Duration {
        wait + self.long_poll_margin
    }

    /// Sends `call`, retrying within the policy; returns the success response.
    pub(crate) fn send(&self, call: Call<'_>) -> Result<Response, PlatformError> {
        crate::http::retry::retry(self.retry, self.shutdown.as_ref(), call.site.call, |_| {
            self.attempt(&call)
        })
    }

    /// Sends `call` and parses the JSON body of its success response.
    pub(crate) fn send_json(&self, call: Call<'_>) -> Result<(CallSite, Value), PlatformError> {
        let site = call.site.clone();
        let response = self.send(call)?;
        let value = serde_json::from_slice(&response.body).map_err(|e| PlatformError::Decode {
            at: Box::new(site.clone()),
            detail: format!("invalid JSON: {e}"),
        })?;
        Ok((site, value))
    }

    fn attempt(&self, call: &Call<'_>) -> Result<Response, PlatformError> {
        let mut request =
            Request::new(call.site.method, format!("{}{}", self.base, call.site.path))
                .header("Authorization", format!("Bearer {}", call.token.expose()))
                .header("Accept", MEDIA_TYPE);
        match &call.body {
            Body::Empty => {}
            Body::Json(value) => {
                request = request
                    .header("Content-Type", MEDIA_TYPE)
                    .body(value.to_string());
            }
            Body::Bytes { bytes, sha256 } => {
                request = request
                    .header("Content-Type", "application/octet-stream")
                    .body(bytes.to_vec());
                if let Some(sum) = sha256 {
                    request = request.header("X-Checksum-Sha256", sum.clone());
                }
            }
        }
        if let Some(timeout) = call.read_timeout {
            request = request.read_timeout(timeout);
        }
        let response = self
            .http
            .send(request)
            .map_err(|source| PlatformError::Transport {
                at: Box::new(call.site.clone()),
                source,
            })?;
        if (200..300).contains(&response.status) {
            Ok(response)
        } else {
            Err(PlatformError::from_response(call.site.clone(), &response))
        }
    }

    /// Downloads `download` to `dest` with `token`: streamed to a temporary file beside it, checked
    /// against the document's sha256 and size, fsynced, renamed. Retried from scratch on failure.
    pub(crate) fn download(
        &self,
        call: &'static str,
        token: &Secret,
        download: &Download,
        dest: &Path,
    ) -> Result<u64, PlatformError> {
        let at = site(call, "GET", download.path.clone(), TokenKind::Task);
        wire::check_path(&download.path).map_err(|detail| PlatformError::InvalidArgument {
            at: Box::new(at.clone()),
            detail,
        })?;
        crate::http::retry::retry(self.retry, self.shutdown.as_ref(), call, |_| {
            self.download_once(&at, token, download, dest)
        })
    }

    fn download_once(
        &self,
        at: &CallSite,
        token: &Secret,
        download: &Download,
        dest: &Path,
    ) -> Result<u64, PlatformError> {
        let url = format!("{}{}", self.base, download.path);
        let request = Request::new("GET", url.clone())
            .header("Authorization", format!("Bearer {}", token.expose()))
            .header("Accept", "application/octet-stream");
        let transport = |source| PlatformError::Transport {
            at: Box::new(at.clone()),
            source,
        };
        let mut response = self.http.stream(request).map_err(transport)?;
        if !(200..300).contains(&response.status) {
            let mut body = Vec::new();
            let _ = response
                .body
                .by_ref()
                .take(64 * 1024)
                .read_to_end(&mut body);
            let buffered = Response {
                status: response.status,
                headers: response.headers,
                body,
            };
            return Err(PlatformError::from_response(at.clone(), &buffered));
        }
        let temp = temp_path(dest);
        let io = |source| PlatformError::Io {
            at: Box::new(at.clone()),
            path: temp.clone(),
            source,
        };
        let result = (|| {
            let mut file = std::fs::File::create(&temp).map_err(io)?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let n = response.body.read(&mut buffer).map_err(|e| {
                    transport(HttpError::Transport {
                        method: "GET".into(),
                        url: url.clone(),
                        kind: TransportKind::Io,
                        detail: e.to_string(),
                    })
                })?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > download.size {
                    return Err(PlatformError::Checksum {
                        at: Box::new(at.clone()),
                        expected: format!("{} bytes", download.size),
                        actual: format!("more than {} bytes", download.size),
                    });
                }
                hasher.update(&buffer[..n]);
                file.write_all(&buffer[..n]).map_err(io)?;
            }
            let actual = hex(&hasher.finalize());
            if size != download.size || !actual.eq_ignore_ascii_case(&download.sha256) {
                return Err(PlatformError::Checksum {
                    at: Box::new(at.clone()),
                    expected: format!("sha256 {} ({} bytes)", download.sha256, download.size),
                    actual: format!("sha256 {actual} ({size} bytes)"),
                });
            }
            file.sync_all().map_err(io)?;
            std::fs::rename(&temp, dest).map_err(|source| PlatformError::Io {
                at: Box::new(at.clone()),
                path: dest.to_path_buf(),
                source,
            })?;
            if let Some(dir) = dest.parent().and_then(|d| std::fs::File::open(d).ok()) {
                let _ = dir.sync_all();
            }
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

/// A call site.
pub(crate) fn site(
    call: &'static str,
    method: &'static str,
    path: String,
    token: TokenKind,
) -> CallSite {
    CallSite {
        call,
        method,
        path,
        token,
    }
}

/// Ids go into paths: only `[A-Za-z0-9._-]`.
pub(crate) fn check_id(at: &CallSite, id: &str) -> Result<(), PlatformError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(PlatformError::InvalidArgument {
            at: Box::new(at.clone()),
            detail: format!("{id:?} is not a valid identifier"),
        })
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dir/.name.partial-<pid>-<n>`: invisible to readers of `name` until renamed.
fn temp_path(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "download".into());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.partial-{}-{n}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_url_must_be_scheme_and_host() {
        let options = HttpOptions::default();
        for good in [
            "https://acme.scalr.io",
            "https://acme.scalr.io/",
            "http://127.0.0.1:8080",
        ] {
            let client = PlatformClient::new(good, &options).expect(good);
            assert!(!client.base_url().ends_with('/'));
        }
        for bad in [
            "acme.scalr.io",
            "https://",
            "https://host/api",
            "https://u:p@host",
            "ftp://x",
        ] {
            assert!(
                matches!(
                    PlatformClient::new(bad, &options),
                    Err(PlatformError::Setup { .. })
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn ids_cannot_escape_their_path_segment() {
        let at = site("t", "GET", "/x".into(), TokenKind::Task);
        for good in ["task-v0o3hpgf", "run_1", "a.b"] {
            assert!(check_id(&at, good).is_ok(), "{good}");
        }
        for bad in ["", "..", "a/b", "a?b", "a b", "a%2F"] {
            assert!(check_id(&at, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn temp_files_are_hidden_siblings() {
        let temp = temp_path(Path::new("/cache/bin/terraform"));
        assert_eq!(temp.parent(), Some(Path::new("/cache/bin")));
        let name = temp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".terraform.partial-"), "{name}");
    }
}
