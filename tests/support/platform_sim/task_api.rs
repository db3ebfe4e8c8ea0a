//! Worker-side routes (task token): start, get, downloads (configuration version, tools,
//! artefacts), log appends, artefact uploads, task heartbeat, the cancel long-poll and finish. Run on
//! connection threads under the world lock; the cancel wait blocks on the simulator's condvar.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::clock::rfc3339;
use super::jsonapi::{self, ApiError, document};
use super::model::*;
use super::routes::PREFIX;
use crate::support::http_server::{HttpRequest, HttpResponse};

type Reply = Result<HttpResponse, ApiError>;

/// Largest log chunk.
pub const MAX_LOG_CHUNK: usize = 1024 * 1024;
/// Artefact kinds.
pub const ARTEFACT_KINDS: [&str; 2] = ["plan-file", "plan-json"];

/// Authenticates the task token for the task in the path; records the worker's call.
fn task_auth(world: &mut World, req: &HttpRequest, task_in_path: &str) -> Result<(), ApiError> {
    let Grant::Task { task } = jsonapi::authenticate(world, req, "task")? else {
        unreachable!("authenticate checked the kind")
    };
    if task != task_in_path {
        return Err(ApiError::forbidden(
            "out-of-scope",
            format!("this task token is for another task than {task_in_path}"),
        ));
    }
    let now = world.now;
    world.worker_contact(&task, now);
    Ok(())
}

/// Authenticates a task token and returns its task id (for run-scoped paths).
fn any_task(world: &mut World, req: &HttpRequest) -> Result<String, ApiError> {
    let Grant::Task { task } = jsonapi::authenticate(world, req, "task")? else {
        unreachable!("authenticate checked the kind")
    };
    let now = world.now;
    world.worker_contact(&task, now);
    Ok(task)
}

/// `POST /tasks/{id}/actions/start`.
pub fn start(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    task_auth(&mut world, req, &p[0])?;
    jsonapi::require_no_body(req)?;
    let now = world.now;
    world.start(&p[0], now)?;
    Ok(document(200, render_spec(&world, &p[0])))
}

/// `GET /tasks/{id}`.
pub fn get(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    task_auth(&mut world, req, &p[0])?;
    Ok(document(200, render_spec(&world, &p[0])))
}

fn octets(bytes: &[u8]) -> HttpResponse {
    HttpResponse::new(200, "application/octet-stream", bytes.to_vec())
        .with_header("X-Checksum-Sha256", &sha256_hex(bytes))
}

/// `GET /configuration-versions/{cv}/download`.
pub fn download_cv(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let task = any_task(&mut world, req)?;
    let cv = world.cvs.get(&p[0]).ok_or_else(|| {
        ApiError::not_found(format!("configuration version {} does not exist", p[0]))
    })?;
    let run = &world.runs[&world.tasks[&task].run];
    if run.spec.configuration_version != p[0] {
        return Err(ApiError::forbidden(
            "out-of-scope",
            format!("configuration version {} is not this task's", p[0]),
        ));
    }
    Ok(octets(&cv.bytes))
}

/// `GET /tools/{name}/{version}/{platform}`.
pub fn download_tool(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    any_task(&mut world, req)?;
    let key = (p[0].clone(), p[1].clone(), p[2].clone());
    let tool = world
        .tools
        .get(&key)
        .ok_or_else(|| ApiError::not_found(format!("no tool {} {} for {}", p[0], p[1], p[2])))?;
    Ok(octets(&tool.bytes))
}

/// `PUT /tasks/{id}/log?offset=N`.
pub fn append_log(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &["offset"])?;
    task_auth(&mut world, req, &p[0])?;
    let offset = jsonapi::int_param(req, "offset", 0..=u64::MAX)?;
    jsonapi::require_content_type(req, "application/octet-stream")?;
    if req.body.len() > MAX_LOG_CHUNK {
        return Err(ApiError::new(
            413,
            "too-large",
            format!("a log chunk may have at most {MAX_LOG_CHUNK} bytes"),
        ));
    }
    let length = world.append_log(&p[0], offset, &req.body)?;
    Ok(document(200, json!({ "meta": { "length": length } })))
}

/// The run and kind of an artefact path, checked against the task token.
fn artefact_scope(world: &mut World, req: &HttpRequest, p: &[String]) -> Result<String, ApiError> {
    let task = any_task(world, req)?;
    if !world.runs.contains_key(&p[0]) {
        return Err(ApiError::not_found(format!("run {} does not exist", p[0])));
    }
    if world.tasks[&task].run != p[0] {
        return Err(ApiError::forbidden(
            "out-of-scope",
            format!("run {} is not this task's", p[0]),
        ));
    }
    if !ARTEFACT_KINDS.contains(&p[1].as_str()) {
        return Err(ApiError::not_found(format!(
            "no artefact kind {}; kinds: {}",
            p[1],
            ARTEFACT_KINDS.join(", ")
        )));
    }
    Ok(task)
}

/// `PUT /runs/{run}/artefacts/{kind}`.
pub fn upload_artefact(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let task = artefact_scope(&mut world, req, p)?;
    if world.tasks[&task].stage != Stage::Plan {
        return Err(ApiError::forbidden(
            "out-of-scope",
            "only the plan stage uploads artefacts",
        ));
    }
    world.require_running(&task)?;
    jsonapi::require_content_type(req, "application/octet-stream")?;
    let claimed = req
        .header("x-checksum-sha256")
        .ok_or_else(|| ApiError::new(422, "checksum-mismatch", "X-Checksum-Sha256 is required"))?;
    let actual = sha256_hex(&req.body);
    if !claimed.eq_ignore_ascii_case(&actual) {
        return Err(ApiError::new(
            422,
            "checksum-mismatch",
            format!("X-Checksum-Sha256 is {claimed} but the body's sha256 is {actual}"),
        ));
    }
    let run = world.runs.get_mut(&p[0]).expect("checked");
    match run.artefacts.get(&p[1]) {
        Some(existing) if *existing == req.body => {}
        Some(_) => {
            return Err(ApiError::conflict(
                "artefact-exists",
                format!(
                    "artefact {} of run {} was already uploaded with other bytes",
                    p[1], p[0]
                ),
            ));
        }
        None => {
            run.artefacts.insert(p[1].clone(), req.body.clone());
        }
    }
    Ok(document(
        200,
        json!({ "meta": { "sha256": actual, "size": req.body.len() } }),
    ))
}

/// `GET /runs/{run}/artefacts/{kind}`.
pub fn download_artefact(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    artefact_scope(&mut world, req, p)?;
    let bytes = world.runs[&p[0]]
        .artefacts
        .get(&p[1])
        .ok_or_else(|| ApiError::not_found(format!("run {} has no {} yet", p[0], p[1])))?;
    Ok(octets(bytes))
}

/// `POST /tasks/{id}/actions/heartbeat`.
pub fn heartbeat(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    task_auth(&mut world, req, &p[0])?;
    jsonapi::require_no_body(req)?;
    let task = &world.tasks[&p[0]];
    if task.state.is_final() {
        return Err(ApiError::conflict(
            "task-completed",
            format!("task {} is already {}", p[0], task.state.as_str()),
        ));
    }
    let cancel = task.cancel.map(|(m, _)| m.as_str());
    Ok(document(
        200,
        json!({ "meta": { "cancel-requested": cancel } }),
    ))
}

/// `GET /tasks/{id}/cancel?wait-seconds=W[&seen=graceful]`.
pub fn wait_cancel(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &["wait-seconds", "seen"])?;
    task_auth(&mut world, req, &p[0])?;
    let max_wait = world.cfg.max_wait.as_secs();
    let wait = jsonapi::int_param(req, "wait-seconds", 0..=max_wait)?;
    let seen = match req.query_param("seen").as_deref() {
        None => None,
        Some("graceful") => Some(CancelMode::Graceful),
        Some(other) => {
            return Err(ApiError::parameter(
                "seen",
                format!("seen={other}: the only value is graceful"),
            ));
        }
    };
    let deadline = super::routes::wait_deadline(wait);
    loop {
        jsonapi::authenticate(&world, req, "task")?;
        let task = &world.tasks[&p[0]];
        if let Some((mode, at)) = task.cancel
            && Some(mode) > seen
        {
            let signal = json!({
                "type": "cancel-signals",
                "id": p[0],
                "attributes": { "run-id": task.run, "mode": mode.as_str(), "requested-at": rfc3339(at) },
            });
            return Ok(document(200, json!({ "data": signal })));
        }
        if task.state.is_final() || std::time::Instant::now() >= deadline {
            return Ok(document(200, json!({ "data": null })));
        }
        if shared.stopping() {
            return Err(ApiError::new(
                503,
                "unavailable",
                "the simulator is stopping",
            ));
        }
        world.wait_until(deadline);
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FinishAttrs {
    status: String,
    #[serde(default)]
    has_changes: Option<bool>,
    #[serde(default)]
    resource_additions: Option<u64>,
    #[serde(default)]
    resource_changes: Option<u64>,
    #[serde(default)]
    resource_destructions: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

/// `POST /tasks/{id}/actions/finish`.
pub fn finish(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    task_auth(&mut world, req, &p[0])?;
    let a: FinishAttrs = jsonapi::parse_doc(req, "task-results")?;
    let at = |name: &str| format!("/data/attributes/{name}");
    let status = match a.status.as_str() {
        "finished" => TaskState::Finished,
        "errored" => TaskState::Errored,
        "canceled" => TaskState::Canceled,
        other => {
            return Err(ApiError::invalid(
                &at("status"),
                format!("{other:?} is not one of finished, errored, canceled"),
            ));
        }
    };
    if status == TaskState::Finished {
        for (name, present) in [
            ("has-changes", a.has_changes.is_some()),
            ("resource-additions", a.resource_additions.is_some()),
            ("resource-changes", a.resource_changes.is_some()),
            ("resource-destructions", a.resource_destructions.is_some()),
        ] {
            if !present {
                return Err(ApiError::invalid(
                    &at(name),
                    format!("{name} is required when status is finished"),
                ));
            }
        }
    }
    let message = a.message.unwrap_or_default();
    if message.chars().count() > 4000 {
        return Err(ApiError::invalid(
            &at("message"),
            "message must be at most 4000 characters",
        ));
    }
    let result = TaskResult {
        status,
        has_changes: a.has_changes.unwrap_or(false),
        additions: a.resource_additions.unwrap_or(0),
        changes: a.resource_changes.unwrap_or(0),
        destructions: a.resource_destructions.unwrap_or(0),
        message,
    };
    world.finish(&p[0], result)?;
    Ok(document(
        200,
        json!({ "data": super::agent_api::render_task(&world, &p[0], None) }),
    ))
}

/// The full task document the worker works from.
pub fn render_spec(world: &World, id: &str) -> Value {
    let task = &world.tasks[id];
    let run = &world.runs[&task.run];
    let ws = &world.workspaces[&run.workspace];
    let cv = &world.cvs[&run.spec.configuration_version];
    let s = &run.spec;
    let downloads: Vec<Value> = world
        .tools
        .iter()
        .filter(|((n, v, _), _)| *n == ws.iac_platform && *v == ws.tool_version)
        .map(|((n, v, platform), tool)| {
            json!({
                "platform": platform,
                "format": tool.format,
                "path": format!("{PREFIX}tools/{n}/{v}/{platform}"),
                "sha256": tool.sha256,
                "size": tool.bytes.len(),
            })
        })
        .collect();
    let variables: Vec<Value> = s
        .variables
        .iter()
        .map(|v| {
            json!({ "key": v.key, "value": v.value, "category": v.category,
                    "sensitive": v.sensitive, "hcl": v.hcl })
        })
        .collect();
    let artefacts: Vec<Value> = run
        .artefacts
        .iter()
        .filter(|_| task.stage == Stage::Apply)
        .map(|(kind, bytes)| {
            json!({ "kind": kind, "path": format!("{PREFIX}runs/{}/artefacts/{kind}", run.id),
                    "sha256": sha256_hex(bytes), "size": bytes.len() })
        })
        .collect();
    let state = format!("{PREFIX}workspaces/{}/state", ws.id);
    json!({
        "data": {
            "type": "tasks",
            "id": id,
            "attributes": {
                "stage": task.stage.as_str(),
                "status": task.state.as_str(),
                "attempt": task.attempt,
                "cancel-requested": task.cancel.map(|(m, _)| m.as_str()),
                "run": {
                    "id": run.id, "message": s.message, "is-destroy": s.is_destroy, "is-dry": s.is_dry,
                    "refresh": s.refresh, "refresh-only": s.refresh_only,
                    "target-addrs": s.target_addrs, "replace-addrs": s.replace_addrs,
                    "source": "api", "vcs-branch": null, "vcs-commit": null,
                },
                "workspace": {
                    "id": ws.id, "name": ws.name, "working-directory": ws.working_directory,
                    "iac-platform": ws.iac_platform,
                },
                "environment": { "id": ws.environment, "name": world.environments[&ws.environment] },
                "tool": { "name": ws.iac_platform, "version": ws.tool_version, "downloads": downloads },
                "configuration-version": {
                    "id": run.spec.configuration_version,
                    "path": format!("{PREFIX}configuration-versions/{}/download", run.spec.configuration_version),
                    "sha256": cv.sha256,
                    "size": cv.bytes.len(),
                },
                "variables": variables,
                "hooks": {
                    "pre-init": s.hooks.pre_init, "pre-plan": s.hooks.pre_plan,
                    "post-plan": s.hooks.post_plan, "pre-apply": s.hooks.pre_apply,
                    "post-apply": s.hooks.post_apply,
                },
                "state-backend": {
                    "address": state, "lock-address": format!("{state}/lock"),
                    "unlock-address": format!("{state}/lock"), "lock-method": "LOCK",
                    "unlock-method": "UNLOCK", "username": "token",
                },
                "artefacts": artefacts,
            },
        },
        "meta": { "run-token": run.token },
    })
}
