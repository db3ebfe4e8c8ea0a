//! `Status` error bodies shaped like the real API server's, one constructor per reason.
//!
//! Pure values: handlers return an [`ApiError`], the dispatcher in `server.rs` writes it. Messages
//! follow the apiserver's wording (`jobs.batch "x" not found`, `Operation cannot be fulfilled on ...`)
//! because clients and users read them.

use serde_json::{Value, json};

/// An error answer: the HTTP code and its `Status` body.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &str, message: String, details: Option<Value>) -> ApiError {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(details) = details {
            body["details"] = details;
        }
        if reason.is_empty() {
            body.as_object_mut()
                .expect("a json object")
                .remove("reason");
        }
        ApiError {
            code,
            body,
            retry_after: None,
        }
    }

    /// The `reason` field.
    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }

    /// The `message` field.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
}

/// The resource as the apiserver names it in messages: `jobs.batch`, `pods`.
pub fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// `details` with name, group (omitted when core) and kind (the resource, as the server does).
pub fn details(group: &str, plural: &str, name: &str) -> Value {
    let mut d = serde_json::Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), json!(group));
    }
    d.insert("kind".into(), json!(plural));
    Value::Object(d)
}

/// 404 for a named object.
pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", qualified(group, plural)),
        Some(details(group, plural, name)),
    )
}

/// 404 for a path under a served group-version that names no resource.
pub fn no_resource() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource".into(),
        Some(json!({})),
    )
}

/// 409 on create of an existing name.
pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
    ApiError::new(
        409,
        "AlreadyExists",
        format!("{} \"{name}\" already exists", qualified(group, plural)),
        Some(details(group, plural, name)),
    )
}

/// 409 for a write with a stale resourceVersion.
pub fn conflict(group: &str, plural: &str, name: &str) -> ApiError {
    conflict_because(
        group,
        plural,
        name,
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

/// 409 with a given cause (failed preconditions).
pub fn conflict_because(group: &str, plural: &str, name: &str, why: &str) -> ApiError {
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            qualified(group, plural)
        ),
        Some(details(group, plural, name)),
    )
}

/// One field problem of a 422.
#[derive(Clone, Debug)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueForbidden`, `FieldValueTooLong`, ...
    pub reason: &'static str,
    pub field: String,
    /// The message without the field prefix, as the server renders it.
    pub message: String,
}

impl Cause {
    /// `Invalid value: "v": why`.
    pub fn invalid(field: &str, value: &Value, why: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value}: {why}"),
        }
    }

    /// `Required value: why`.
    pub fn required(field: &str, why: &str) -> Cause {
        let message = if why.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {why}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }

    /// `Forbidden: why`.
    pub fn forbidden(field: &str, why: &str) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {why}"),
        }
    }

    /// `Too long: must have at most N bytes`.
    pub fn too_long(field: &str, max: usize) -> Cause {
        Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: must have at most {max} bytes"),
        }
    }

    /// `Duplicate value: v`.
    pub fn duplicate(field: &str, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value}"),
        }
    }

    /// `Not found: v`.
    pub fn not_found(field: &str, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueNotFound",
            field: field.into(),
            message: format!("Not found: {value}"),
        }
    }
}

/// 422: `Job.batch "x" is invalid: [a: ..., b: ...]`; details carry the Kind, not the resource.
pub fn invalid(group: &str, kind: &str, name: &str, causes: &[Cause]) -> ApiError {
    let what = if group.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{group}")
    };
    let rendered: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let list = if rendered.len() == 1 {
        rendered[0].clone()
    } else {
        format!("[{}]", rendered.join(", "))
    };
    let mut d = details(group, kind, name);
    d["causes"] = Value::Array(
        causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect(),
    );
    ApiError::new(
        422,
        "Invalid",
        format!("{what} \"{name}\" is invalid: {list}"),
        Some(d),
    )
}

/// Any other failure (scripted faults with codes that have no better constructor).
pub fn other(code: u16, reason: &str, message: &str) -> ApiError {
    ApiError::new(code, reason, message.into(), None)
}

/// 422 without field causes (a patch that does not apply).
pub fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "Invalid", message.into(), None)
}

/// 400 with a message.
pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "BadRequest", message.into(), None)
}

/// 401.
pub fn unauthorized() -> ApiError {
    ApiError::new(401, "Unauthorized", "Unauthorized".into(), None)
}

/// 403 with the message already rendered (see `rbac::forbidden_message`).
pub fn forbidden(message: String, details: Value) -> ApiError {
    ApiError::new(403, "Forbidden", message, Some(details))
}

/// 405.
pub fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource".into(),
        Some(json!({})),
    )
}

/// 406 when the client accepts nothing we produce.
pub fn not_acceptable() -> ApiError {
    ApiError::new(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml".into(),
        None,
    )
}

/// 415 for a body or patch type the resource does not take.
pub fn unsupported_media_type(content_type: &str, accepted: &[&str]) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        ),
        Some(json!({"causes": [{"reason": "UnexpectedHeader", "message": content_type}]})),
    )
}

/// 410 for a resourceVersion older than the compacted history.
pub fn expired(requested: u64, oldest: u64) -> ApiError {
    ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

/// 410 for a continue token older than the compacted history.
pub fn continue_expired() -> ApiError {
    ApiError::new(
        410,
        "Expired",
        "The provided continue parameter is too old to display a consistent list result. You can \
         start a new list without the continue parameter, or use the continue token in this \
         response to retrieve the remainder of the results. Continuing with the provided token \
         results in an inconsistent list - objects that were created, modified, or deleted \
         between the time the first chunk was returned and now may show up in the list."
            .into(),
        None,
    )
}

/// 500.
pub fn internal(message: &str) -> ApiError {
    ApiError::new(
        500,
        "InternalError",
        format!("Internal error occurred: {message}"),
        Some(json!({"causes": [{"message": message}]})),
    )
}

/// 429 with `Retry-After`.
pub fn too_many_requests(retry_after_secs: u64) -> ApiError {
    let mut e = ApiError::new(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.".into(),
        Some(json!({"retryAfterSeconds": retry_after_secs})),
    );
    e.retry_after = Some(retry_after_secs);
    e
}

/// 504 when a requested resourceVersion is newer than the store.
pub fn too_large_resource_version(requested: u64, current: u64) -> ApiError {
    ApiError::new(
        504,
        "Timeout",
        format!("Too large resource version: {requested}, current: {current}"),
        Some(json!({"causes": [{"reason": "ResourceVersionTooLarge",
            "message": "Too large resource version"}], "retryAfterSeconds": 1})),
    )
}

/// A `Status` of success after a delete (resources that do not return the deleted object).
pub fn delete_success(group: &str, plural: &str, name: &str, uid: &str) -> Value {
    let mut d = details(group, plural, name);
    d["uid"] = json!(uid);
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_the_real_body() {
        let e = not_found("batch", "jobs", "x");
        assert_eq!(
            e.body,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"jobs.batch \"x\" not found","reason":"NotFound",
                "details":{"name":"x","group":"batch","kind":"jobs"},"code":404})
        );
        let core = not_found("", "pods", "p");
        assert_eq!(core.body["details"], json!({"name":"p","kind":"pods"}));
    }

    #[test]
    fn invalid_lists_several_causes() {
        let e = invalid(
            "batch",
            "Job",
            "x",
            &[
                Cause::required("metadata.name", ""),
                Cause::invalid("spec.a", &json!("b"), "bad"),
            ],
        );
        assert_eq!(
            e.message(),
            "Job.batch \"x\" is invalid: [metadata.name: Required value, spec.a: Invalid value: \"b\": bad]"
        );
        assert_eq!(e.body["details"]["kind"], "Job");
    }
}
