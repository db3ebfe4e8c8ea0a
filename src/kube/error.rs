//! Errors of the Kubernetes client: decoded from `Status` bodies and classified once, here.
//!
//! Pure: [`KubeError::from_response`] and [`KubeError::from_status`] turn a status code, headers and
//! body (or a watch `ERROR` event) into one variant per class. Every API variant carries the same
//! [`ApiFailure`] context (method, path, status, reason, message, field causes, `Retry-After`).
//! [`Retryable`] says once whether retrying can help: throttling, 5xx and transport failures are
//! retried (honouring `Retry-After`), 401 is fatal, everything else permanent. Messages never hold a
//! credential: bodies pass through the redaction list and request headers are never quoted.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

use crate::http::{HttpError, Retryable, Verdict, excerpt};

/// One field-level cause of an `Invalid` (422) answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldCause {
    /// The field path, e.g. `spec.template.spec.containers[0].image`.
    pub field: String,
    /// The machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// The human-readable message.
    pub message: String,
}

/// What the API server answered to a failed call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiFailure {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, without the server (e.g. `/apis/batch/v1/namespaces/ci/jobs`).
    pub path: String,
    /// The HTTP status (or the `code` of a watch `ERROR` event).
    pub status: u16,
    /// `Status.reason` (`NotFound`, `AlreadyExists`, `Expired`, ...), empty when the body had none.
    pub reason: String,
    /// `Status.message`, or an excerpt of a non-`Status` body.
    pub message: String,
    /// `Status.details.causes`.
    pub causes: Vec<FieldCause>,
    /// From the `Retry-After` header, else `Status.details.retryAfterSeconds`.
    pub retry_after: Option<Duration>,
}

/// Why a Kubernetes call failed.
#[derive(Debug)]
pub enum KubeError {
    /// 404: the object (or the resource type: is the CRD installed?) does not exist.
    NotFound(Box<ApiFailure>),
    /// 409 `AlreadyExists`: create of a name that is taken.
    AlreadyExists(Box<ApiFailure>),
    /// 409 otherwise: the object changed since it was read (resourceVersion or uid precondition).
    Conflict(Box<ApiFailure>),
    /// 410: the resourceVersion or continue token is too old (compacted): relist.
    Gone(Box<ApiFailure>),
    /// 401: the credential was rejected.
    Unauthorized(Box<ApiFailure>),
    /// 403: RBAC or admission said no; the message names the verb and resource.
    Forbidden(Box<ApiFailure>),
    /// 422: the object failed validation; see `causes`.
    Invalid(Box<ApiFailure>),
    /// 429: the API server asks us to slow down, for `retry_after`.
    Throttled(Box<ApiFailure>),
    /// 5xx: the API server (or something in front of it) failed; retried.
    ServerError(Box<ApiFailure>),
    /// Any other refusal (400, 405, 406, 415, ...): a bug on our side or an unsupported server.
    Rejected(Box<ApiFailure>),
    /// No HTTP answer: connection, TLS, timeout or a broken stream.
    Transport(HttpError),
    /// The HTTP client could not be built (bad CA, client certificate, proxy).
    Setup(HttpError),
    /// The answer was not what the API promises (bad JSON, wrong shape).
    Decode {
        method: String,
        path: String,
        detail: String,
    },
    /// The service-account token file could not be read.
    Credentials { path: String, detail: String },
}

impl KubeError {
    /// Classifies a non-2xx answer. `retry_after_header` is the parsed `Retry-After` header.
    pub fn from_response(
        method: &str,
        path: &str,
        status: u16,
        retry_after_header: Option<Duration>,
        body: &[u8],
    ) -> KubeError {
        let parsed = serde_json::from_slice::<Status>(body)
            .ok()
            .filter(|s| s.reason.is_some() || s.message.is_some() || s.code.is_some());
        let mut failure = match parsed {
            Some(s) => failure_from_status(method, path, status, &s),
            None => ApiFailure {
                method: method.to_string(),
                path: path.to_string(),
                status,
                message: excerpt(body),
                ..ApiFailure::default()
            },
        };
        if retry_after_header.is_some() {
            failure.retry_after = retry_after_header;
        }
        classify(failure)
    }

    /// Classifies a `Status` carried by a watch `ERROR` event (its `code` is the status).
    pub fn from_status(method: &str, path: &str, status: &Status) -> KubeError {
        let code = status
            .code
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        classify(failure_from_status(method, path, code, status))
    }

    /// The server's answer, for API variants.
    pub fn failure(&self) -> Option<&ApiFailure> {
        match self {
            KubeError::NotFound(f)
            | KubeError::AlreadyExists(f)
            | KubeError::Conflict(f)
            | KubeError::Gone(f)
            | KubeError::Unauthorized(f)
            | KubeError::Forbidden(f)
            | KubeError::Invalid(f)
            | KubeError::Throttled(f)
            | KubeError::ServerError(f)
            | KubeError::Rejected(f) => Some(f),
            _ => None,
        }
    }

    /// 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::NotFound(_))
    }

    /// 409 `AlreadyExists`.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, KubeError::AlreadyExists(_))
    }

    /// 409 other than `AlreadyExists`.
    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Conflict(_))
    }

    /// 410.
    pub fn is_gone(&self) -> bool {
        matches!(self, KubeError::Gone(_))
    }
}

fn failure_from_status(method: &str, path: &str, status: u16, s: &Status) -> ApiFailure {
    let details = s.details.as_ref();
    let causes = details
        .and_then(|d| d.causes.as_ref())
        .map(|causes| {
            causes
                .iter()
                .map(|c| FieldCause {
                    field: c.field.clone().unwrap_or_default(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: crate::secret::redact(c.message.as_deref().unwrap_or_default())
                        .into_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    let retry_after = details
        .and_then(|d| d.retry_after_seconds)
        .filter(|secs| *secs > 0)
        .map(|secs| Duration::from_secs(secs.unsigned_abs().into()));
    ApiFailure {
        method: method.to_string(),
        path: path.to_string(),
        status,
        reason: s.reason.clone().unwrap_or_default(),
        message: crate::secret::redact(s.message.as_deref().unwrap_or_default()).into_owned(),
        causes,
        retry_after,
    }
}

/// The one place a failure becomes a class: by status code, with `reason` telling apart the two 409s.
fn classify(failure: ApiFailure) -> KubeError {
    let status = failure.status;
    let already_exists = failure.reason == "AlreadyExists";
    let failure = Box::new(failure);
    match status {
        401 => KubeError::Unauthorized(failure),
        403 => KubeError::Forbidden(failure),
        404 => KubeError::NotFound(failure),
        409 if already_exists => KubeError::AlreadyExists(failure),
        409 => KubeError::Conflict(failure),
        410 => KubeError::Gone(failure),
        422 => KubeError::Invalid(failure),
        429 => KubeError::Throttled(failure),
        500..=599 => KubeError::ServerError(failure),
        _ => KubeError::Rejected(failure),
    }
}

impl Retryable for KubeError {
    fn verdict(&self) -> Verdict {
        match self {
            KubeError::Throttled(f) | KubeError::ServerError(f) => Verdict::Retry {
                after: f.retry_after,
            },
            KubeError::Transport(e) => e.verdict(),
            KubeError::Unauthorized(_) => Verdict::Fatal,
            _ => Verdict::Permanent,
        }
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (failure, class, hint) = match self {
            KubeError::Transport(e) => return write!(f, "Kubernetes API: {e}"),
            KubeError::Setup(e) => {
                return write!(
                    f,
                    "Kubernetes API client: {e}; check the kubeconfig or flags"
                );
            }
            KubeError::Decode {
                method,
                path,
                detail,
            } => {
                return write!(
                    f,
                    "{method} {path}: unexpected answer from the Kubernetes API: {detail}; is the \
                     server a supported Kubernetes version (see docs/kubernetes.md)?"
                );
            }
            KubeError::Credentials { path, detail } => {
                return write!(
                    f,
                    "cannot read the Kubernetes token file {path}: {detail}; check that the \
                     service-account token is mounted (automountServiceAccountToken)"
                );
            }
            KubeError::NotFound(x) => (x, "not found", ""),
            KubeError::AlreadyExists(x) => (x, "already exists", ""),
            KubeError::Conflict(x) => (
                x,
                "conflict",
                "; the object changed since it was read: read it again and retry",
            ),
            KubeError::Gone(x) => (x, "gone", "; the resourceVersion was compacted: list again"),
            KubeError::Unauthorized(x) => (
                x,
                "unauthorized",
                "; the Kubernetes credential was rejected: check the service-account token or \
                 the kubeconfig user",
            ),
            KubeError::Forbidden(x) => (
                x,
                "forbidden",
                "; the controller's Role (the chart creates it unless rbac.create is false) must \
                 grant this verb on this resource in this namespace",
            ),
            KubeError::Invalid(x) => (x, "invalid", ""),
            KubeError::Throttled(x) => (x, "throttled", "; retried after a pause"),
            KubeError::ServerError(x) => (x, "server error", "; retried"),
            KubeError::Rejected(x) => (x, "rejected", ""),
        };
        write!(
            f,
            "{} {}: {class} ({}",
            failure.method, failure.path, failure.status
        )?;
        if !failure.reason.is_empty() {
            write!(f, " {}", failure.reason)?;
        }
        f.write_str(")")?;
        if !failure.message.is_empty() {
            write!(f, ": {}", failure.message)?;
        }
        for cause in &failure.causes {
            write!(f, "; {}: {}", cause.field, cause.message)?;
        }
        if let Some(after) = failure.retry_after {
            write!(f, " (retry after {}s)", after.as_secs())?;
        }
        f.write_str(hint)
    }
}

impl std::error::Error for KubeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KubeError::Transport(e) | KubeError::Setup(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_body(code: u16, reason: &str, extra: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} message"), "reason": reason, "code": code,
        });
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        serde_json::to_vec(&v).expect("json")
    }

    #[test]
    fn status_bodies_are_classified_once() {
        type Check = fn(&KubeError) -> bool;
        let cases: &[(u16, &str, Check, Verdict)] = &[
            (404, "NotFound", |e| e.is_not_found(), Verdict::Permanent),
            (
                409,
                "AlreadyExists",
                |e| e.is_already_exists(),
                Verdict::Permanent,
            ),
            (409, "Conflict", |e| e.is_conflict(), Verdict::Permanent),
            (410, "Expired", |e| e.is_gone(), Verdict::Permanent),
            (410, "Gone", |e| e.is_gone(), Verdict::Permanent),
            (
                401,
                "Unauthorized",
                |e| matches!(e, KubeError::Unauthorized(_)),
                Verdict::Fatal,
            ),
            (
                403,
                "Forbidden",
                |e| matches!(e, KubeError::Forbidden(_)),
                Verdict::Permanent,
            ),
            (
                422,
                "Invalid",
                |e| matches!(e, KubeError::Invalid(_)),
                Verdict::Permanent,
            ),
            (
                429,
                "TooManyRequests",
                |e| matches!(e, KubeError::Throttled(_)),
                Verdict::Retry { after: None },
            ),
            (
                500,
                "InternalError",
                |e| matches!(e, KubeError::ServerError(_)),
                Verdict::Retry { after: None },
            ),
            (
                504,
                "Timeout",
                |e| matches!(e, KubeError::ServerError(_)),
                Verdict::Retry { after: None },
            ),
            (
                400,
                "BadRequest",
                |e| matches!(e, KubeError::Rejected(_)),
                Verdict::Permanent,
            ),
            (
                415,
                "UnsupportedMediaType",
                |e| matches!(e, KubeError::Rejected(_)),
                Verdict::Permanent,
            ),
        ];
        for (code, reason, check, verdict) in cases {
            let body = status_body(*code, reason, serde_json::json!({}));
            let err = KubeError::from_response("GET", "/api/v1/x", *code, None, &body);
            assert!(check(&err), "{code} {reason}: {err:?}");
            assert_eq!(err.verdict(), *verdict, "{code} {reason}");
            let failure = err.failure().expect("api failure");
            assert_eq!((failure.status, failure.reason.as_str()), (*code, *reason));
            assert_eq!(failure.message, format!("{reason} message"));
        }
    }

    #[test]
    fn invalid_carries_field_causes() {
        let body = status_body(
            422,
            "Invalid",
            serde_json::json!({"details": {"name": "j", "kind": "Job", "causes": [
                {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.template"},
                {"reason": "FieldValueInvalid", "message": "bad", "field": "metadata.name"},
            ]}}),
        );
        let err = KubeError::from_response(
            "POST",
            "/apis/batch/v1/namespaces/ci/jobs",
            422,
            None,
            &body,
        );
        let KubeError::Invalid(f) = &err else {
            panic!("not invalid: {err:?}")
        };
        assert_eq!(
            f.causes,
            vec![
                FieldCause {
                    field: "spec.template".into(),
                    reason: "FieldValueRequired".into(),
                    message: "Required value".into()
                },
                FieldCause {
                    field: "metadata.name".into(),
                    reason: "FieldValueInvalid".into(),
                    message: "bad".into()
                },
            ]
        );
        let text = err.to_string();
        assert!(text.contains("spec.template: Required value"), "{text}");
        assert!(text.starts_with("POST /apis/batch/v1/namespaces/ci/jobs: invalid (422 Invalid)"));
    }

    #[test]
    fn retry_after_comes_from_header_else_details() {
        let body = status_body(
            429,
            "TooManyRequests",
            serde_json::json!({"details": {"retryAfterSeconds": 7}}),
        );
        let from_details = KubeError::from_response("GET", "/p", 429, None, &body);
        assert_eq!(
            from_details.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(7))
            }
        );
        let from_header =
            KubeError::from_response("GET", "/p", 429, Some(Duration::from_secs(3)), &body);
        assert_eq!(
            from_header.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(3))
            }
        );
        let unavailable =
            KubeError::from_response("GET", "/p", 503, Some(Duration::from_secs(2)), b"");
        assert_eq!(
            unavailable.verdict(),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn non_status_bodies_keep_an_excerpt() {
        let err =
            KubeError::from_response("GET", "/p", 502, None, b"<html>\n bad   gateway </html>");
        let KubeError::ServerError(f) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(f.message, "<html> bad gateway </html>");
        assert_eq!(f.reason, "");
    }

    #[test]
    fn watch_error_status_uses_its_code() {
        let status: Status =
            serde_json::from_slice(&status_body(410, "Expired", serde_json::json!({})))
                .expect("status");
        assert!(KubeError::from_status("GET", "/w", &status).is_gone());
        let no_code = Status {
            message: Some("x".into()),
            ..Status::default()
        };
        assert!(matches!(
            KubeError::from_status("GET", "/w", &no_code),
            KubeError::ServerError(_)
        ));
    }

    #[test]
    fn forbidden_message_says_what_to_do() {
        let body = status_body(403, "Forbidden", serde_json::json!({}));
        let text = KubeError::from_response(
            "POST",
            "/apis/batch/v1/namespaces/ci/jobs",
            403,
            None,
            &body,
        )
        .to_string();
        assert!(
            text.contains("forbidden") && text.contains("rbac.create"),
            "{text}"
        );
    }

    #[test]
    fn registered_secrets_in_bodies_are_masked() {
        let token = crate::secret::Secret::new("kube-unit-token-0123456789");
        let body = format!(
            r#"{{"kind":"Status","code":401,"reason":"Unauthorized","message":"token {} rejected"}}"#,
            token.expose()
        );
        let err = KubeError::from_response("GET", "/p", 401, None, body.as_bytes());
        assert!(!err.to_string().contains(token.expose()));
        assert!(!format!("{err:?}").contains(token.expose()));
    }
}
