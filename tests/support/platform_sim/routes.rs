//! The simulator's front door, run on the test server's connection threads: it resolves method and
//! path to a `Route` (404/405 otherwise), applies a scripted fault if one is queued for that route,
//! calls the handler, logs the exchange and answers.

use std::time::{Duration, Instant};

use super::faults::{Fault, LoggedRequest};
use super::jsonapi::{self, ApiError};
use super::{Shared, agent_api, state_backend, task_api};
use crate::support::http_server::{HttpRequest, HttpResponse, Responder};

/// Every route of the protocol; faults are scripted per route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Register,
    Heartbeat,
    Events,
    HeldTasks,
    AgentTask,
    Deregister,
    Acquire,
    FailTask,
    ConfirmCancel,
    StartTask,
    GetTask,
    DownloadConfigurationVersion,
    DownloadTool,
    AppendLog,
    UploadArtefact,
    DownloadArtefact,
    TaskHeartbeat,
    WaitCancel,
    FinishTask,
    StateGet,
    StatePost,
    StateLock,
    StateUnlock,
}

/// The API prefix.
pub const PREFIX: &str = "/api/iacp/v3/";

/// Resolves a request to its route and path parameters, or the 404/405 answer.
pub fn resolve(method: &str, path: &str) -> Result<(Route, Vec<String>), ApiError> {
    use Route::*;
    let not_found = || ApiError::not_found(format!("no such path: {path}"));
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    let owned = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (methods, params): (&[(&str, Route)], Vec<String>) = match segments.as_slice() {
        ["agents"] => (&[("POST", Register)], vec![]),
        ["agents", a] => (&[("DELETE", Deregister)], owned(&[a])),
        ["agents", a, "actions", "heartbeat"] => (&[("POST", Heartbeat)], owned(&[a])),
        ["agents", a, "events"] => (&[("GET", Events)], owned(&[a])),
        ["agents", a, "tasks"] => (&[("GET", HeldTasks)], owned(&[a])),
        ["agents", a, "tasks", t] => (&[("GET", AgentTask)], owned(&[a, t])),
        ["tasks", t] => (&[("GET", GetTask)], owned(&[t])),
        ["tasks", t, "actions", action] => {
            let methods: &'static [(&str, Route)] = match *action {
                "acquire" => &[("POST", Acquire)],
                "fail" => &[("POST", FailTask)],
                "confirm-cancel" => &[("POST", ConfirmCancel)],
                "start" => &[("POST", StartTask)],
                "heartbeat" => &[("POST", TaskHeartbeat)],
                "finish" => &[("POST", FinishTask)],
                _ => return Err(not_found()),
            };
            (methods, owned(&[t]))
        }
        ["tasks", t, "log"] => (&[("PUT", AppendLog)], owned(&[t])),
        ["tasks", t, "cancel"] => (&[("GET", WaitCancel)], owned(&[t])),
        ["configuration-versions", cv, "download"] => {
            (&[("GET", DownloadConfigurationVersion)], owned(&[cv]))
        }
        ["tools", name, version, platform] => {
            (&[("GET", DownloadTool)], owned(&[name, version, platform]))
        }
        ["runs", r, "artefacts", kind] => (
            &[("GET", DownloadArtefact), ("PUT", UploadArtefact)],
            owned(&[r, kind]),
        ),
        ["workspaces", ws, "state"] => (&[("GET", StateGet), ("POST", StatePost)], owned(&[ws])),
        ["workspaces", ws, "state", "lock"] => (
            &[("LOCK", StateLock), ("UNLOCK", StateUnlock)],
            owned(&[ws]),
        ),
        _ => return Err(not_found()),
    };
    match methods.iter().find(|(m, _)| *m == method) {
        Some((_, route)) => Ok((*route, params)),
        None => {
            let allow: Vec<&str> = methods.iter().map(|(m, _)| *m).collect();
            Err(ApiError::new(
                405,
                "method-not-allowed",
                format!(
                    "{method} is not allowed on {path}; allowed: {}",
                    allow.join(", ")
                ),
            )
            .with_header("Allow", &allow.join(", ")))
        }
    }
}

/// Handles one request end to end.
pub fn handle(shared: &Shared, req: &HttpRequest, out: &mut Responder<'_>) {
    let token_kind = jsonapi::token_kind(&shared.world(), req);
    let resolved = resolve(&req.method, &req.path);
    let route = resolved.as_ref().ok().map(|(route, _)| *route);
    let fault = route.and_then(|r| shared.faults().take(r));
    let index = shared.arrived(LoggedRequest {
        at: Instant::now(),
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        route,
        token_kind,
        status: None,
        fault: fault.clone(),
    });
    let (route, params) = match resolved {
        Ok(found) => found,
        Err(error) => {
            shared.answered(index, Some(error.status));
            let _ = out.respond(error.to_response());
            return;
        }
    };
    let lose_response = match fault {
        Some(Fault::Status {
            status,
            retry_after,
        }) => {
            let code = match status {
                429 => "throttled",
                503 => "unavailable",
                _ => "server-error",
            };
            let mut error = ApiError::new(status, code, "scripted fault");
            if let Some(secs) = retry_after {
                error = error.with_header("Retry-After", &secs.to_string());
            }
            shared.answered(index, Some(status));
            let _ = out.respond(error.to_response());
            return;
        }
        Some(Fault::Drop) => {
            out.drop_connection();
            return;
        }
        Some(Fault::Hang(duration)) => {
            shared.sleep(duration);
            out.drop_connection();
            return;
        }
        Some(Fault::Delay(duration)) => {
            shared.sleep(duration);
            false
        }
        Some(Fault::LoseResponse) => true,
        Some(Fault::SlowResponse(_)) | None => false,
    };
    let response = dispatch(shared, route, &params, req);
    if lose_response {
        out.drop_connection();
        return;
    }
    shared.answered(index, Some(response.status));
    if let Some(Fault::SlowResponse(duration)) = fault {
        shared.sleep(duration);
    }
    let _ = out.respond(response);
}

fn dispatch(shared: &Shared, route: Route, p: &[String], req: &HttpRequest) -> HttpResponse {
    use Route::*;
    let result = match route {
        Register => agent_api::register(shared, req),
        Heartbeat => agent_api::heartbeat(shared, req, p),
        Events => agent_api::events(shared, req, p),
        HeldTasks => agent_api::held_tasks(shared, req, p),
        AgentTask => agent_api::agent_task(shared, req, p),
        Deregister => agent_api::deregister(shared, req, p),
        Acquire => agent_api::acquire(shared, req, p),
        FailTask => agent_api::fail(shared, req, p),
        ConfirmCancel => agent_api::confirm_cancel(shared, req, p),
        StartTask => task_api::start(shared, req, p),
        GetTask => task_api::get(shared, req, p),
        DownloadConfigurationVersion => task_api::download_cv(shared, req, p),
        DownloadTool => task_api::download_tool(shared, req, p),
        AppendLog => task_api::append_log(shared, req, p),
        UploadArtefact => task_api::upload_artefact(shared, req, p),
        DownloadArtefact => task_api::download_artefact(shared, req, p),
        TaskHeartbeat => task_api::heartbeat(shared, req, p),
        WaitCancel => task_api::wait_cancel(shared, req, p),
        FinishTask => task_api::finish(shared, req, p),
        StateGet | StatePost | StateLock | StateUnlock => {
            return state_backend::handle(shared, route, p, req);
        }
    };
    result.unwrap_or_else(|e| e.to_response())
}

/// How long a long-poll may wait at most, given the request's `wait-seconds`.
pub fn wait_deadline(wait_secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(wait_secs)
}
