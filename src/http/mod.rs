//! The HTTP layer shared by the platform and Kubernetes clients.
//!
//! One [`HttpClient`] per remote: blocking `ureq` agents on rustls (ring), with connect and per-read
//! timeouts, proxies chosen per URL ([`proxy`]), an optional CA bundle that replaces the built-in
//! webpki roots and an optional client certificate ([`tls`]), the `scalr-agent/<version>` user agent,
//! no redirects (credentials must not follow them) and a cap on buffered response bodies. It returns
//! every HTTP status as a [`Response`]: deciding what a status means belongs to the caller, which
//! also applies [`retry`] explicitly. Clients are `Clone + Send + Sync`; connections are pooled.

pub mod proxy;
pub mod retry;
pub mod tls;

use std::io::Read;
use std::time::{Duration, SystemTime};

pub use proxy::{NoProxy, ProxySettings, Route};
pub use retry::{Backoff, RetryPolicy, Retryable, Verdict};
pub use tls::{CaSource, ClientIdentity, ClientIdentityPem, TlsError};

/// Default time to establish a connection, TLS included.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time one read may block (long-polls and watches override it per request).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on a buffered response body: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// How to build an [`HttpClient`].
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Connection set-up timeout (TCP, proxy and TLS).
    pub connect_timeout: Duration,
    /// Longest a single read or write may block.
    pub read_timeout: Duration,
    /// Largest body [`HttpClient::send`] buffers.
    pub max_response_bytes: u64,
    /// Replaces the built-in roots when set.
    pub ca: Option<CaSource>,
    /// Presented when the server asks for a client certificate.
    pub client_identity: Option<ClientIdentity>,
    /// A client certificate given as PEM bytes (kubeconfig `*-data`); exclusive with
    /// `client_identity`.
    pub client_identity_pem: Option<ClientIdentityPem>,
    /// Skips server verification (kubeconfig `insecure-skip-tls-verify` only).
    pub insecure_skip_verify: bool,
    /// Proxies and exceptions.
    pub proxy: ProxySettings,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca: None,
            client_identity: None,
            client_identity_pem: None,
            insecure_skip_verify: false,
            proxy: ProxySettings::default(),
        }
    }
}

/// A request: method, absolute URL, headers, optional body, optional per-read timeout.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Header names and values. Values are never logged by this module.
    pub headers: Vec<(String, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
    /// Overrides the client's read timeout (long-polls, watches).
    pub read_timeout: Option<Duration>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Request {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            read_timeout: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets a per-read timeout for this request.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }
}

/// A buffered response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The whole body (at most `max_response_bytes`).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    /// The server's `Retry-After`, as a duration from now.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()))
    }

    /// A short, printable excerpt of the body for error messages (first 300 characters).
    pub fn body_excerpt(&self) -> String {
        excerpt(&self.body)
    }
}

/// A response whose body is read as it arrives (watch streams, downloads).
pub struct StreamingResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Box<dyn Read + Send>,
}

impl StreamingResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Up to 300 characters of `body`, lossily decoded, whitespace collapsed.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(1200)]);
    let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = collapsed.chars().take(300).collect();
    if collapsed.chars().count() > 300 {
        out.push('…');
    }
    crate::secret::redact(&out).into_owned()
}

/// Why a request got no HTTP response.
#[derive(Debug)]
pub enum HttpError {
    /// The client could not be built from its options.
    Setup { what: String, detail: String },
    /// The URL or a header was not acceptable.
    InvalidRequest {
        method: String,
        url: String,
        detail: String,
    },
    /// Connecting, TLS, sending or receiving failed.
    Transport {
        method: String,
        url: String,
        kind: TransportKind,
        detail: String,
    },
    /// The response body was larger than allowed.
    BodyTooLarge {
        method: String,
        url: String,
        limit: u64,
    },
}

/// The broad class of a transport failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// DNS, refused, reset, proxy failure.
    Connect,
    /// TLS handshake or certificate verification.
    Tls,
    /// A timeout fired.
    Timeout,
    /// The connection broke mid-exchange, or the peer spoke bad HTTP.
    Io,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Setup { what, detail } => write!(f, "cannot set up HTTPS: {what}: {detail}"),
            HttpError::InvalidRequest {
                method,
                url,
                detail,
            } => write!(f, "{method} {url}: invalid request: {detail}"),
            HttpError::Transport {
                method,
                url,
                kind,
                detail,
            } => {
                let hint = match kind {
                    TransportKind::Connect => {
                        "check the URL, DNS, firewall and HTTPS_PROXY/NO_PROXY"
                    }
                    TransportKind::Tls => {
                        "check the server certificate and SCALR_AGENT_CA_CERT (it replaces the \
                         built-in roots)"
                    }
                    TransportKind::Timeout => "the server or network is slow or unreachable",
                    TransportKind::Io => "the connection broke; it is retried",
                };
                write!(f, "{method} {url}: {detail} ({hint})")
            }
            HttpError::BodyTooLarge { method, url, limit } => {
                write!(f, "{method} {url}: response body larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for HttpError {}

impl Retryable for HttpError {
    fn verdict(&self) -> Verdict {
        match self {
            HttpError::Transport {
                kind: TransportKind::Tls,
                ..
            } => Verdict::Permanent,
            HttpError::Transport { .. } => Verdict::Retry { after: None },
            _ => Verdict::Permanent,
        }
    }
}

/// A blocking HTTP client with per-URL proxy routing.
#[derive(Clone)]
pub struct HttpClient {
    direct: ureq::Agent,
    via_http_proxy: Option<ureq::Agent>,
    via_https_proxy: Option<ureq::Agent>,
    proxy: ProxySettings,
    read_timeout: Duration,
    max_response_bytes: u64,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client; fails when TLS material or a proxy URL is unusable.
    pub fn new(options: &HttpOptions) -> Result<Self, HttpError> {
        let roots = match &options.ca {
            Some(ca) => {
                ureq::tls::RootCerts::Specific(std::sync::Arc::new(ca.load().map_err(|e| {
                    HttpError::Setup {
                        what: "CA bundle".into(),
                        detail: e.to_string(),
                    }
                })?))
            }
            None => ureq::tls::RootCerts::WebPki,
        };
        let cert_error = |e: TlsError| HttpError::Setup {
            what: "client certificate".into(),
            detail: e.to_string(),
        };
        let client_cert = match (&options.client_identity, &options.client_identity_pem) {
            (Some(_), Some(_)) => {
                return Err(HttpError::Setup {
                    what: "client certificate".into(),
                    detail: "given both as files and as PEM data; give one".into(),
                });
            }
            (Some(identity), None) => Some(identity.load().map_err(cert_error)?),
            (None, Some(identity)) => Some(identity.load().map_err(cert_error)?),
            (None, None) => None,
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(roots)
            .client_cert(client_cert)
            .disable_verification(options.insecure_skip_verify)
            .build();
        let build = |proxy: Option<&str>| -> Result<ureq::Agent, HttpError> {
            let proxy = match proxy {
                Some(url) => Some(ureq::Proxy::new(url).map_err(|e| HttpError::Setup {
                    what: format!("proxy {}", redact_userinfo(url)),
                    detail: format!("{e}; expected http://host:port"),
                })?),
                None => None,
            };
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .user_agent(crate::version::user_agent())
                .timeout_connect(Some(options.connect_timeout))
                .timeout_per_read(Some(options.read_timeout))
                .timeout_per_write(Some(options.read_timeout))
                .tls_config(tls.clone())
                .proxy(proxy)
                .build();
            Ok(ureq::Agent::new_with_config(config))
        };
        Ok(HttpClient {
            direct: build(None)?,
            via_http_proxy: options
                .proxy
                .http
                .as_deref()
                .map(|p| build(Some(p)))
                .transpose()?,
            via_https_proxy: options
                .proxy
                .https
                .as_deref()
                .map(|p| build(Some(p)))
                .transpose()?,
            proxy: options.proxy.clone(),
            read_timeout: options.read_timeout,
            max_response_bytes: options.max_response_bytes,
        })
    }

    /// How `url` would be reached (tests and `check` output).
    pub fn route(&self, url: &str) -> Route {
        self.proxy.route(url)
    }

    /// Sends `request` and buffers the whole response body (up to the configured limit).
    pub fn send(&self, request: Request) -> Result<Response, HttpError> {
        let method = request.method.clone();
        let url = request.url.clone();
        let (status, headers, body) = self.exchange(request)?;
        let bytes = body
            .into_with_config()
            .limit(self.max_response_bytes)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => HttpError::BodyTooLarge {
                    method: method.clone(),
                    url: url.clone(),
                    limit: self.max_response_bytes,
                },
                other => transport_error(&method, &url, other),
            })?;
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }

    /// Sends `request` and returns the body as a reader, for streams and large downloads. The body
    /// is not size-limited; the caller bounds what it reads.
    pub fn stream(&self, request: Request) -> Result<StreamingResponse, HttpError> {
        let (status, headers, body) = self.exchange(request)?;
        let reader = body.into_with_config().limit(u64::MAX).reader();
        Ok(StreamingResponse {
            status,
            headers,
            body: Box::new(reader),
        })
    }

    fn exchange(&self, request: Request) -> Result<Exchanged, HttpError> {
        let agent = match self.proxy.route(&request.url) {
            Route::Direct => &self.direct,
            Route::HttpProxy => self.via_http_proxy.as_ref().unwrap_or(&self.direct),
            Route::HttpsProxy => self.via_https_proxy.as_ref().unwrap_or(&self.direct),
        };
        let invalid = |detail: String| HttpError::InvalidRequest {
            method: request.method.clone(),
            url: request.url.clone(),
            detail,
        };
        let mut builder = ureq::http::Request::builder()
            .method(request.method.as_str())
            .uri(request.url.as_str());
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let read_timeout = request.read_timeout.unwrap_or(self.read_timeout);
        let result = match &request.body {
            Some(body) => {
                let http_request = builder
                    .body(body.clone())
                    .map_err(|e| invalid(e.to_string()))?;
                agent
                    .configure_request(http_request)
                    .timeout_per_read(Some(read_timeout))
                    .build()
                    .with_agent(agent)
                    .run()
            }
            None => {
                let http_request = builder.body(()).map_err(|e| invalid(e.to_string()))?;
                agent
                    .configure_request(http_request)
                    .timeout_per_read(Some(read_timeout))
                    .build()
                    .with_agent(agent)
                    .run()
            }
        };
        let response = result.map_err(|e| transport_error(&request.method, &request.url, e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok((status, headers, response.into_body()))
    }
}

use ureq::RequestExt;

/// Status, lower-cased headers and the unread body of one exchange.
type Exchanged = (u16, Vec<(String, String)>, ureq::Body);

fn transport_error(method: &str, url: &str, error: ureq::Error) -> HttpError {
    let kind = match &error {
        ureq::Error::Timeout(_) => TransportKind::Timeout,
        ureq::Error::Tls(_) => TransportKind::Tls,
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::ConnectProxyFailed(_) => TransportKind::Connect,
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                TransportKind::Connect
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => TransportKind::Timeout,
            _ if is_tls_io_error(io) => TransportKind::Tls,
            _ => TransportKind::Io,
        },
        ureq::Error::Rustls(_) => TransportKind::Tls,
        _ => TransportKind::Io,
    };
    HttpError::Transport {
        method: method.to_string(),
        url: url.to_string(),
        kind,
        detail: crate::secret::redact(&error.to_string()).into_owned(),
    }
}

/// rustls reports handshake failures as `io::Error`s wrapping a `rustls::Error`.
fn is_tls_io_error(io: &std::io::Error) -> bool {
    io.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// `http://user:pass@host` → `http://***@host` for messages.
pub fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_short_and_collapsed() {
        assert_eq!(excerpt(b"  a\n\n b  "), "a b");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(long.as_bytes()).chars().count(), 301);
    }

    #[test]
    fn proxy_credentials_are_hidden_in_messages() {
        assert_eq!(
            redact_userinfo("http://u:p@proxy:3128"),
            "http://***@proxy:3128"
        );
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
    }
}
