//! Controller-side routes (pool and session tokens): register, heartbeat, the events long-poll,
//! acquire, fail, confirm-cancel, held tasks, one task, deregister. Run on connection threads; each
//! takes the world lock, and the long-poll waits on the simulator's condition variable.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Shared;
use super::clock::rfc3339;
use super::jsonapi::{self, ApiError, document};
use super::model::*;
use super::world::Event;
use crate::support::http_server::{HttpRequest, HttpResponse};

type Reply = Result<HttpResponse, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RegisterAttrs {
    name: String,
    version: String,
    os: String,
    cpu_platform: String,
    runtime: String,
    driver: String,
    #[serde(default)]
    kubernetes_driver_mode: Option<String>,
    capacity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HeartbeatAttrs {
    free_capacity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FailAttrs {
    reason: String,
}

fn one_of(pointer: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            pointer,
            format!("{value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// `POST /agents` with a pool token.
pub fn register(shared: &Shared, req: &HttpRequest) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let Grant::Pool { pool } = jsonapi::authenticate(&world, req, "pool")? else {
        unreachable!("authenticate checked the kind")
    };
    let a: RegisterAttrs = jsonapi::parse_doc(req, "agents")?;
    let p = "/data/attributes";
    if a.name.is_empty() || a.name.chars().count() > 128 {
        return Err(ApiError::invalid(
            &format!("{p}/name"),
            "name must be 1 to 128 characters",
        ));
    }
    one_of(
        &format!("{p}/cpu-platform"),
        &a.cpu_platform,
        &["linux_amd64", "linux_arm64"],
    )?;
    one_of(
        &format!("{p}/runtime"),
        &a.runtime,
        &["docker", "kubernetes", "vm", "fargate"],
    )?;
    one_of(
        &format!("{p}/driver"),
        &a.driver,
        &["local", "docker", "kubernetes", "kubernetes-job"],
    )?;
    if let Some(mode) = &a.kubernetes_driver_mode {
        one_of(
            &format!("{p}/kubernetes-driver-mode"),
            mode,
            &["default", "controller", "worker"],
        )?;
    }
    if !(1..=1000).contains(&a.capacity) {
        return Err(ApiError::invalid(
            &format!("{p}/capacity"),
            "capacity must be 1 to 1000",
        ));
    }
    let token = req.bearer().unwrap_or_default().to_string();
    let attrs = AgentAttrs {
        name: a.name,
        version: a.version,
        os: a.os,
        cpu_platform: a.cpu_platform,
        runtime: a.runtime,
        driver: a.driver,
        kubernetes_driver_mode: a.kubernetes_driver_mode,
        capacity: a.capacity,
    };
    let (now, wall) = (world.now, world.wall);
    let id = world.register(&token, &pool, attrs, now, wall);
    let mut body = json!({ "data": render_agent(&world, &id) });
    body["meta"] = timing(&world);
    body["meta"]["session-token"] = world.agents[&id].session.clone().into();
    Ok(document(201, body))
}

fn timing(world: &World) -> Value {
    json!({
        "heartbeat-interval-seconds": world.cfg.heartbeat_interval.as_secs(),
        "offline-threshold-seconds": world.cfg.offline_threshold.as_secs(),
        "max-wait-seconds": world.cfg.max_wait.as_secs(),
    })
}

/// Authenticates a session call for the agent in the path and records that it called.
fn session(
    world: &mut World,
    req: &HttpRequest,
    agent_in_path: Option<&str>,
) -> Result<String, ApiError> {
    let Grant::Session { agent } = jsonapi::authenticate(world, req, "session")? else {
        unreachable!("authenticate checked the kind")
    };
    if let Some(path_agent) = agent_in_path
        && path_agent != agent
    {
        return Err(ApiError::forbidden(
            "out-of-scope",
            format!("this session belongs to another agent than {path_agent}"),
        ));
    }
    let (now, wall) = (world.now, world.wall);
    world.seen(&agent, now, wall);
    Ok(agent)
}

/// `POST /agents/{id}/actions/heartbeat`.
pub fn heartbeat(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, Some(&p[0]))?;
    let a: HeartbeatAttrs = jsonapi::parse_doc(req, "heartbeats")?;
    if a.free_capacity > 1000 {
        return Err(ApiError::invalid(
            "/data/attributes/free-capacity",
            "free-capacity must be at most 1000",
        ));
    }
    let mut body = json!({ "data": render_agent(&world, &agent) });
    body["meta"] = timing(&world);
    Ok(document(200, body))
}

/// `GET /agents/{id}/events?wait-seconds=W&free-capacity=N`: the long-poll.
pub fn events(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &["wait-seconds", "free-capacity"])?;
    let max_wait = world.cfg.max_wait.as_secs();
    let wait = jsonapi::int_param(req, "wait-seconds", 0..=max_wait)?;
    let capacity = jsonapi::int_param(req, "free-capacity", 0..=1000)? as u32;
    let deadline = super::routes::wait_deadline(wait);
    session(&mut world, req, Some(&p[0]))?;
    loop {
        // Re-authenticated on every wake: a session that expires or is revoked mid-wait ends it.
        let Grant::Session { agent } = jsonapi::authenticate(&world, req, "session")? else {
            unreachable!("authenticate checked the kind")
        };
        let (now, wall) = (world.now, world.wall);
        let events = world.events(&agent, capacity, now, wall);
        if !events.is_empty() || std::time::Instant::now() >= deadline {
            let data: Vec<Value> = events.iter().map(|e| render_event(&world, e)).collect();
            return Ok(document(200, json!({ "data": data })));
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

fn render_event(world: &World, event: &Event) -> Value {
    match event {
        Event::Offer(id) => {
            let task = &world.tasks[id];
            let run = &world.runs[&task.run];
            let ws = &world.workspaces[&run.workspace];
            json!({
                "type": "task-offers",
                "id": id,
                "attributes": {
                    "stage": task.stage.as_str(),
                    "run-id": run.id,
                    "workspace-id": ws.id,
                    "workspace-name": ws.name,
                    "environment-id": ws.environment,
                    "environment-name": world.environments[&ws.environment],
                    "attempt": task.attempt,
                    "offer-expires-at": task.lease_until_wall.map(rfc3339),
                }
            })
        }
        Event::Cancel(id, mode) => {
            let task = &world.tasks[id];
            json!({
                "type": "cancel-signals",
                "id": id,
                "attributes": {
                    "run-id": task.run,
                    "mode": mode.as_str(),
                    "requested-at": task.cancel.map(|(_, at)| rfc3339(at)),
                }
            })
        }
    }
}

/// `POST /tasks/{id}/actions/acquire`.
pub fn acquire(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, None)?;
    jsonapi::require_no_body(req)?;
    world.acquire(&agent, &p[0])?;
    Ok(document(
        200,
        json!({ "data": render_task(&world, &p[0], Some(&agent)) }),
    ))
}

/// `POST /tasks/{id}/actions/fail`.
pub fn fail(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, None)?;
    let a: FailAttrs = jsonapi::parse_doc(req, "task-failures")?;
    if a.reason.is_empty() || a.reason.chars().count() > 4000 {
        return Err(ApiError::invalid(
            "/data/attributes/reason",
            "reason must be 1 to 4000 characters",
        ));
    }
    world.fail_task(&agent, &p[0], &a.reason)?;
    Ok(document(
        200,
        json!({ "data": render_task(&world, &p[0], Some(&agent)) }),
    ))
}

/// `POST /tasks/{id}/actions/confirm-cancel`.
pub fn confirm_cancel(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, None)?;
    jsonapi::require_no_body(req)?;
    world.confirm_cancel(&agent, &p[0])?;
    Ok(document(
        200,
        json!({ "data": render_task(&world, &p[0], Some(&agent)) }),
    ))
}

/// `GET /agents/{id}/tasks`: the non-final tasks this agent holds, with their tokens.
pub fn held_tasks(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, Some(&p[0]))?;
    let mut held: Vec<(u64, String)> = world
        .tasks
        .values()
        .filter(|t| t.holder.as_deref() == Some(agent.as_str()) && !t.state.is_final())
        .map(|t| (t.order, t.id.clone()))
        .collect();
    held.sort();
    let data: Vec<Value> = held
        .iter()
        .map(|(_, id)| render_task(&world, id, Some(&agent)))
        .collect();
    Ok(document(200, json!({ "data": data })))
}

/// `GET /agents/{id}/tasks/{task}`: any task of the agent's pool.
pub fn agent_task(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    let agent = session(&mut world, req, Some(&p[0]))?;
    world.pool_task(&agent, &p[1])?;
    Ok(document(
        200,
        json!({ "data": render_task(&world, &p[1], Some(&agent)) }),
    ))
}

/// `DELETE /agents/{id}`.
pub fn deregister(shared: &Shared, req: &HttpRequest, p: &[String]) -> Reply {
    let mut world = shared.world();
    jsonapi::only_params(req, &[])?;
    jsonapi::require_no_body(req)?;
    // A repeat with the session token this call revoked is still a success.
    if let Some(entry) = req.bearer().and_then(|t| world.tokens.get(t))
        && entry.revoked
        && entry.grant
            == (Grant::Session {
                agent: p[0].clone(),
            })
        && world
            .agents
            .get(&p[0])
            .is_some_and(|a| a.presence == Presence::Deregistered)
    {
        return Ok(HttpResponse::empty(204));
    }
    let agent = session(&mut world, req, Some(&p[0]))?;
    world.end_session(&agent, Presence::Deregistered);
    Ok(HttpResponse::empty(204))
}

/// The agent resource.
pub fn render_agent(world: &World, id: &str) -> Value {
    let a = &world.agents[id];
    let busy = world
        .tasks
        .values()
        .any(|t| t.holder.as_deref() == Some(id) && !t.state.is_final());
    let status = match (a.presence, busy) {
        (Presence::Online, true) => "busy",
        (Presence::Online, false) => "idle",
        _ => "offline",
    };
    json!({
        "type": "agents",
        "id": id,
        "attributes": {
            "name": a.attrs.name,
            "status": status,
            "version": a.attrs.version,
            "os": a.attrs.os,
            "cpu-platform": a.attrs.cpu_platform,
            "runtime": a.attrs.runtime,
            "driver": a.attrs.driver,
            "kubernetes-driver-mode": a.attrs.kubernetes_driver_mode,
            "capacity": a.attrs.capacity,
            "last-seen-at": rfc3339(a.last_seen_wall),
            "created-at": rfc3339(a.created_at),
        },
        "relationships": { "pool": { "data": { "type": "agent-pools", "id": a.pool } } },
    })
}

/// A task summary; `meta.task-token` when `viewer` holds the task and it is not final.
pub fn render_task(world: &World, id: &str, viewer: Option<&str>) -> Value {
    let task = &world.tasks[id];
    let run = &world.runs[&task.run];
    let ws = &world.workspaces[&run.workspace];
    let mut resource = json!({
        "type": "tasks",
        "id": id,
        "attributes": {
            "stage": task.stage.as_str(),
            "status": task.state.as_str(),
            "attempt": task.attempt,
            "run-id": run.id,
            "workspace-id": ws.id,
            "workspace-name": ws.name,
            "environment-id": ws.environment,
            "environment-name": world.environments[&ws.environment],
            "cancel-requested": task.cancel.map(|(m, _)| m.as_str()),
            "created-at": rfc3339(task.created_at),
        },
        "relationships": {
            "agent": { "data": task.holder.as_ref().map(|a| json!({ "type": "agents", "id": a })) },
        },
    });
    if viewer.is_some() && task.holder.as_deref() == viewer && !task.state.is_final() {
        resource["meta"] = json!({ "task-token": task.token });
    }
    resource
}
