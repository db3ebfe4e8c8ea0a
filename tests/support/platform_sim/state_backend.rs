//! The state store as terraform's `http` backend sees it: GET and POST the state, LOCK and UNLOCK
//! with terraform's lock info, 423 with the holder's info when locked. Guarded by the run token, sent
//! as HTTP Basic (`token:<run token>`) or Bearer. Answers in plain text/JSON as terraform expects, not
//! JSON:API. Runs on connection threads under the world lock.

use base64::Engine;
use serde_json::Value;

use super::Shared;
use super::jsonapi::{self, ApiError};
use super::model::{Grant, World};
use super::routes::Route;
use crate::support::http_server::{HttpRequest, HttpResponse};

/// The Basic-auth username the run token goes with.
pub const USERNAME: &str = "token";

fn text(status: u16, message: impl Into<String>) -> HttpResponse {
    let mut body = message.into();
    body.push('\n');
    HttpResponse::new(status, "text/plain; charset=utf-8", body)
}

fn from_api(error: ApiError) -> HttpResponse {
    text(error.status, format!("{}: {}", error.code, error.detail))
}

/// The run token from `Authorization: Basic` (username `token`) or `Bearer`.
fn credential(req: &HttpRequest) -> Result<String, HttpResponse> {
    let header = req.header("authorization").ok_or_else(|| {
        text(
            401,
            "unauthorized: send the run token as basic auth password (username token)",
        )
    })?;
    if let Some(token) = req.bearer() {
        return Ok(token.to_string());
    }
    let encoded = header
        .strip_prefix("Basic ")
        .ok_or_else(|| text(401, "unauthorized: expected Basic or Bearer authorization"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| text(401, "unauthorized: malformed basic credentials"))?;
    match decoded.split_once(':') {
        Some((USERNAME, password)) => Ok(password.to_string()),
        _ => Err(text(
            401,
            format!("unauthorized: the username must be {USERNAME}"),
        )),
    }
}

/// Handles the four state routes for the workspace in `p[0]`.
pub fn handle(shared: &Shared, route: Route, p: &[String], req: &HttpRequest) -> HttpResponse {
    let mut world = shared.world();
    match handle_locked(&mut world, route, &p[0], req) {
        Ok(response) | Err(response) => response,
    }
}

fn handle_locked(
    world: &mut World,
    route: Route,
    ws_id: &str,
    req: &HttpRequest,
) -> Result<HttpResponse, HttpResponse> {
    let token = credential(req)?;
    let Grant::Run { run } = jsonapi::grant_of(world, &token, "run").map_err(from_api)? else {
        unreachable!("grant_of checked the kind")
    };
    if !world.workspaces.contains_key(ws_id) {
        return Err(text(404, format!("no workspace {ws_id}")));
    }
    if world.runs[&run].workspace != ws_id {
        return Err(text(
            403,
            "out-of-scope: the run token is for another workspace",
        ));
    }
    let allowed: &[&str] = if route == Route::StatePost {
        &["ID"]
    } else {
        &[]
    };
    jsonapi::only_params(req, allowed).map_err(from_api)?;
    if !req.body.is_empty() {
        jsonapi::require_content_type(req, "application/json").map_err(from_api)?;
    }
    let store = &mut world.workspaces.get_mut(ws_id).expect("checked").state;
    match route {
        Route::StateGet => Ok(match store.versions.last() {
            Some(state) => HttpResponse::new(200, "application/json", state.clone()),
            None => HttpResponse::empty(204),
        }),
        Route::StatePost => {
            if let Some((holder, info)) = &store.lock
                && req.query_param("ID").as_deref() != Some(holder.as_str())
            {
                return Err(HttpResponse::new(423, "application/json", info.clone()));
            }
            let state: Value = serde_json::from_slice(&req.body)
                .map_err(|e| text(422, format!("invalid-document: the state is not JSON: {e}")))?;
            let serial = state.get("serial").and_then(Value::as_u64);
            let lineage = state.get("lineage").and_then(Value::as_str);
            let (Some(serial), Some(lineage), Some(_)) = (
                serial,
                lineage,
                state.get("version").and_then(Value::as_u64),
            ) else {
                return Err(text(
                    422,
                    "invalid-document: a state needs version, serial and lineage",
                ));
            };
            if let Some(previous) = store.versions.last() {
                let previous: Value = serde_json::from_slice(previous).unwrap_or_default();
                if previous.get("lineage").and_then(Value::as_str) != Some(lineage) {
                    return Err(text(
                        409,
                        "lineage-mismatch: the state belongs to another lineage",
                    ));
                }
                if previous
                    .get("serial")
                    .and_then(Value::as_u64)
                    .is_some_and(|s| serial < s)
                {
                    return Err(text(
                        409,
                        "serial-regression: the state is older than the stored one",
                    ));
                }
            }
            store.versions.push(req.body.clone());
            Ok(text(200, "stored"))
        }
        Route::StateLock => {
            let id = lock_id(&req.body)
                .ok_or_else(|| text(422, "invalid-document: lock info needs an ID"))?;
            match &store.lock {
                Some((_, info)) => Err(HttpResponse::new(423, "application/json", info.clone())),
                None => {
                    store.lock = Some((id, req.body.clone()));
                    Ok(text(200, "locked"))
                }
            }
        }
        Route::StateUnlock => {
            if req.body.is_empty() {
                store.lock = None;
                return Ok(text(200, "unlocked"));
            }
            let id = lock_id(&req.body)
                .ok_or_else(|| text(422, "invalid-document: lock info needs an ID"))?;
            match &store.lock {
                Some((holder, info)) if *holder != id => {
                    Err(HttpResponse::new(409, "application/json", info.clone()))
                }
                _ => {
                    store.lock = None;
                    Ok(text(200, "unlocked"))
                }
            }
        }
        _ => unreachable!("only state routes come here"),
    }
}

fn lock_id(body: &[u8]) -> Option<String> {
    let info: Value = serde_json::from_slice(body).ok()?;
    info.get("ID")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
