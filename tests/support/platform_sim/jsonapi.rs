//! JSON:API plumbing of the simulator: protocol errors (`ApiError`) and their `errors` bodies, strict
//! request-document parsing (content type, `type`, unknown members → 422 with a pointer), responses,
//! and token authentication (401 / 403 / 410). Called by the route handlers on request threads.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::{Grant, World};
use crate::support::http_server::{HttpRequest, HttpResponse};

/// The JSON:API media type.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";

/// A protocol error: status, code, detail, optional pointer and meta. Boxed: handlers return it in
/// every `Result`, and it is rare.
#[derive(Clone, Debug)]
pub struct ApiError(Box<ApiErrorBody>);

/// The fields of an [`ApiError`].
#[derive(Clone, Debug)]
pub struct ApiErrorBody {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    pub pointer: Option<String>,
    pub meta: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl std::ops::Deref for ApiError {
    type Target = ApiErrorBody;
    fn deref(&self) -> &ApiErrorBody {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorBody {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError(Box::new(ApiErrorBody {
            status,
            code,
            detail: detail.into(),
            pointer: None,
            meta: None,
            headers: Vec::new(),
        }))
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(403, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "not-found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(409, code, detail)
    }

    /// 422 `invalid-document` at `pointer`.
    pub fn invalid(pointer: &str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(422, "invalid-document", detail);
        e.pointer = Some(pointer.to_string());
        e
    }

    /// 422 `invalid-parameter` for a query parameter.
    pub fn parameter(name: &str, detail: impl Into<String>) -> Self {
        let mut e = Self::new(422, "invalid-parameter", detail);
        e.pointer = None;
        e.meta = Some(json!({ "parameter": name }));
        e
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The JSON:API error response.
    pub fn to_response(&self) -> HttpResponse {
        let mut error = json!({
            "status": self.status.to_string(),
            "code": self.code,
            "title": self.code.replace('-', " "),
            "detail": self.detail,
        });
        if let Some(pointer) = &self.pointer {
            error["source"] = json!({ "pointer": pointer });
        }
        let mut body = json!({ "errors": [error] });
        if let Some(meta) = &self.meta {
            body["meta"] = meta.clone();
        }
        let mut response = HttpResponse::new(self.status, MEDIA_TYPE, body.to_string());
        for (k, v) in &self.headers {
            response = response.with_header(k, v);
        }
        response
    }
}

/// A JSON:API success response.
pub fn document(status: u16, body: Value) -> HttpResponse {
    HttpResponse::new(status, MEDIA_TYPE, body.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc<A> {
    data: Data<A>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Data<A> {
    #[serde(rename = "type")]
    kind: String,
    attributes: A,
}

/// Parses a request document of `expected_type` strictly.
pub fn parse_doc<A: DeserializeOwned>(
    req: &HttpRequest,
    expected_type: &str,
) -> Result<A, ApiError> {
    require_content_type(req, MEDIA_TYPE)?;
    let value: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::invalid("", format!("the body is not valid JSON: {e}")))?;
    let kind = value.pointer("/data/type").and_then(Value::as_str);
    if let Some(kind) = kind
        && kind != expected_type
    {
        return Err(ApiError::invalid(
            "/data/type",
            format!("expected a resource of type {expected_type}, got {kind}"),
        ));
    }
    let doc: Doc<A> = serde_json::from_value(value.clone()).map_err(|e| {
        let message = e.to_string();
        ApiError::invalid(&pointer_for(&value, &message), message)
    })?;
    debug_assert_eq!(doc.data.kind, expected_type);
    Ok(doc.data.attributes)
}

/// Finds where a serde complaint about a field points, for `source.pointer`.
fn pointer_for(value: &Value, message: &str) -> String {
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"));
    let Some(field) = field else {
        return "/data/attributes".into();
    };
    let unknown = message.starts_with("unknown field");
    for base in ["", "/data", "/data/attributes"] {
        let holder = if base.is_empty() {
            Some(value)
        } else {
            value.pointer(base)
        };
        let has = holder
            .and_then(Value::as_object)
            .is_some_and(|o| o.contains_key(field));
        if unknown && has {
            return format!("{base}/{field}");
        }
    }
    if !unknown {
        let base = if value.get("data").is_none() {
            ""
        } else if value.pointer("/data/attributes").is_none() {
            "/data"
        } else {
            "/data/attributes"
        };
        return format!("{base}/{field}");
    }
    "/data/attributes".into()
}

/// Requires an empty body (actions without a document).
pub fn require_no_body(req: &HttpRequest) -> Result<(), ApiError> {
    if req.body.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid("", "this action takes no request body"))
    }
}

/// Requires `Content-Type: expected` exactly (no parameters).
pub fn require_content_type(req: &HttpRequest, expected: &str) -> Result<(), ApiError> {
    match req.header("content-type").map(str::trim) {
        Some(ct) if ct.eq_ignore_ascii_case(expected) => Ok(()),
        other => Err(ApiError::new(
            415,
            "unsupported-media-type",
            format!(
                "Content-Type must be {expected}, got {}",
                other.unwrap_or("nothing")
            ),
        )),
    }
}

/// A required integer query parameter in `range`.
pub fn int_param(
    req: &HttpRequest,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let raw = req
        .query_param(name)
        .ok_or_else(|| ApiError::parameter(name, format!("query parameter {name} is required")))?;
    let value: u64 = raw.parse().map_err(|_| {
        ApiError::parameter(name, format!("{name}={raw} is not a non-negative integer"))
    })?;
    if !range.contains(&value) {
        return Err(ApiError::parameter(
            name,
            format!(
                "{name}={value} is outside {}..={}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

/// Rejects query parameters other than `allowed`.
pub fn only_params(req: &HttpRequest, allowed: &[&str]) -> Result<(), ApiError> {
    for (k, _) in req.query_pairs() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::parameter(
                &k,
                format!(
                    "unknown query parameter {k}; allowed: {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The grant of the request's bearer token: 401 for none, unknown or revoked, 410 for an expired
/// session, 403 when its kind is not `kind`.
pub fn authenticate(world: &World, req: &HttpRequest, kind: &str) -> Result<Grant, ApiError> {
    let token = req
        .bearer()
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    grant_of(world, token, kind)
}

/// Checks a token string (bearer or basic password) as `authenticate` does.
pub fn grant_of(world: &World, token: &str, kind: &str) -> Result<Grant, ApiError> {
    let entry = world
        .tokens
        .get(token)
        .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
    if entry.revoked {
        return Err(ApiError::unauthorized("the token was revoked"));
    }
    if entry.grant.kind() != kind {
        return Err(ApiError::forbidden(
            "wrong-token-kind",
            format!(
                "this call takes a {kind} token, not a {} token",
                entry.grant.kind()
            ),
        ));
    }
    if entry.expired {
        return Err(ApiError::new(
            410,
            "session-expired",
            "the agent went offline and its session ended; register again",
        ));
    }
    Ok(entry.grant.clone())
}

/// The kind of the request's token, for the request log (never the token itself).
pub fn token_kind(world: &World, req: &HttpRequest) -> Option<&'static str> {
    let token = req.bearer()?;
    world.tokens.get(token).map(|e| e.grant.kind())
}
