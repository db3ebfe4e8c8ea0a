//! The Kubernetes client: one [`HttpClient`] for one API server, with the bearer token attached to
//! every request and every non-2xx answer turned into a classified [`KubeError`].
//!
//! `Client` is `Clone + Send + Sync` (the HTTP agent and the token cache are shared); any thread may
//! call it. It never retries on its own: callers wrap calls in [`crate::http::retry::retry`] and
//! `KubeError`'s verdict decides. The one exception is a 401 with a token file: the file is read
//! again and, if the token rotated, the request is sent once more with the new one.
//! Typed calls live in [`super::api`].

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    SubjectAccessReviewStatus,
};

use super::api::Api;
use super::config::{Auth, KubeConfig};
use super::error::KubeError;
use crate::http::{HttpClient, HttpError, HttpOptions, Request, Response, StreamingResponse};

/// The largest error body read from a failed watch request.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// A request body and its content type.
pub(crate) struct Body {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// A client for one API server.
#[derive(Clone, Debug)]
pub struct Client {
    http: HttpClient,
    server: String,
    auth: Auth,
    namespace: String,
}

impl Client {
    /// Builds the client from a resolved configuration. `base` supplies the connect and read
    /// timeouts (watches override the read timeout per request) and the environment's proxies.
    /// Fails when the CA, client certificate or proxy is unusable.
    pub fn new(config: &KubeConfig, base: &HttpOptions) -> Result<Client, KubeError> {
        let options = config.http_options(base)?;
        let http = HttpClient::new(&options).map_err(KubeError::Setup)?;
        Ok(Client {
            http,
            server: config.server.clone(),
            auth: config.auth.clone(),
            namespace: config.namespace.clone(),
        })
    }

    /// The configured namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Asks the API server whether our credential may do `verb` on `group`/`resource`
    /// (SelfSubjectAccessReview, `authorization.k8s.io/v1`). `namespace` None asks cluster-wide.
    pub fn can_i(
        &self,
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<SubjectAccessReviewStatus, KubeError> {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.to_string()),
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: subresource.map(str::to_string),
                    namespace: namespace.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = Api::<SelfSubjectAccessReview>::all(self).create(&review)?;
        Ok(answer.status.unwrap_or_default())
    }

    fn request(&self, method: &str, path: &str, accept_stream: bool) -> Result<Request, KubeError> {
        let mut request = Request::new(method, format!("{}{path}", self.server))
            .header("Accept", "application/json");
        if accept_stream {
            // Keep the watch stream free of intermediaries' compression; it is line-delimited JSON.
            request = request.header("Accept-Encoding", "identity");
        }
        let token = match &self.auth {
            Auth::None => None,
            Auth::Token(token) => Some(token.clone()),
            Auth::TokenFile(file) => Some(file.token()?),
        };
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {}", token.expose()));
        }
        Ok(request)
    }

    /// After a 401: re-reads a token file; `true` when the token changed and a second try may help.
    fn token_rotated(&self) -> Result<bool, KubeError> {
        match &self.auth {
            Auth::TokenFile(file) => {
                let changed = file.reload()?;
                if changed {
                    log::info!(
                        "Kubernetes API answered 401; using the rotated token from {}",
                        file.path().display()
                    );
                }
                Ok(changed)
            }
            _ => Ok(false),
        }
    }

    /// Sends one call and returns the 2xx answer, or the classified error.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Body>,
    ) -> Result<Response, KubeError> {
        let mut rotated_once = false;
        loop {
            let mut request = self.request(method, path, false)?;
            if let Some(body) = body {
                request = request
                    .header("Content-Type", body.content_type)
                    .body(body.bytes.clone());
            }
            let response = self.http.send(request).map_err(KubeError::Transport)?;
            if response.status == 401 && !rotated_once && self.token_rotated()? {
                rotated_once = true;
                continue;
            }
            if (200..300).contains(&response.status) {
                return Ok(response);
            }
            return Err(KubeError::from_response(
                method,
                path,
                response.status,
                response.retry_after(),
                &response.body,
            ));
        }
    }

    /// Opens a streaming GET (watch) with a per-read timeout; non-2xx answers become errors.
    pub(crate) fn stream(
        &self,
        path: &str,
        read_timeout: Duration,
    ) -> Result<StreamingResponse, KubeError> {
        let mut rotated_once = false;
        loop {
            let request = self.request("GET", path, true)?.read_timeout(read_timeout);
            let mut response = self.http.stream(request).map_err(KubeError::Transport)?;
            if response.status == 401 && !rotated_once && self.token_rotated()? {
                rotated_once = true;
                continue;
            }
            if (200..300).contains(&response.status) {
                return Ok(response);
            }
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut response.body, MAX_ERROR_BODY),
                &mut body,
            );
            let retry_after = response.header("retry-after").and_then(|v| {
                crate::http::retry::parse_retry_after(v, std::time::SystemTime::now())
            });
            return Err(KubeError::from_response(
                "GET",
                path,
                response.status,
                retry_after,
                &body,
            ));
        }
    }

    /// A transport error for a broken stream on `path`.
    pub(crate) fn stream_error(&self, path: &str, error: &std::io::Error) -> KubeError {
        let kind = match error.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                crate::http::TransportKind::Timeout
            }
            _ => crate::http::TransportKind::Io,
        };
        KubeError::Transport(HttpError::Transport {
            method: "GET".into(),
            url: format!("{}{path}", self.server),
            kind,
            detail: crate::secret::redact(&error.to_string()).into_owned(),
        })
    }
}
