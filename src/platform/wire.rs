//! JSON:API envelopes: the request documents the client sends and the parsing of the documents it
//! receives into the types of `types.rs`. Lenient on what it reads (unknown members are ignored so a
//! newer platform does not break the agent), exact in what it writes. Pure functions.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::types::*;
use crate::secret::Secret;

/// The JSON:API media type.
pub const MEDIA_TYPE: &str = "application/vnd.api+json";
/// Every link in a document starts with this.
pub const API_PREFIX: &str = "/api/iacp/v3/";

pub fn registration_doc(r: &Registration) -> Value {
    let mut attributes = json!({
        "name": r.name, "version": r.version, "os": r.os, "cpu-platform": r.cpu_platform,
        "runtime": r.runtime, "driver": r.driver, "capacity": r.capacity,
    });
    if let Some(mode) = &r.kubernetes_driver_mode {
        attributes["kubernetes-driver-mode"] = json!(mode);
    }
    json!({ "data": { "type": "agents", "attributes": attributes } })
}

pub fn heartbeat_doc(free_capacity: u32) -> Value {
    json!({ "data": { "type": "heartbeats", "attributes": { "free-capacity": free_capacity } } })
}

pub fn failure_doc(reason: &str) -> Value {
    let reason: String = reason.chars().take(4000).collect();
    json!({ "data": { "type": "task-failures", "attributes": { "reason": reason } } })
}

pub fn result_doc(r: &TaskResult) -> Value {
    let message: String = r.message.chars().take(4000).collect();
    json!({ "data": { "type": "task-results", "attributes": {
        "status": r.status.as_str(), "has-changes": r.has_changes,
        "resource-additions": r.counts.additions, "resource-changes": r.counts.changes,
        "resource-destructions": r.counts.destructions, "message": message,
    } } })
}

#[derive(Deserialize)]
struct Resource<A> {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    attributes: A,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default)]
    relationships: Option<Value>,
}

fn from<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("{what}: {e}"))
}

fn resource<A: DeserializeOwned>(value: &Value, kind: &str) -> Result<Resource<A>, String> {
    let r: Resource<A> = from(value, kind)?;
    if r.kind != kind {
        return Err(format!("expected a {kind} resource, got {}", r.kind));
    }
    Ok(r)
}

fn token_in(meta: Option<&Value>, name: &str) -> Result<Secret, String> {
    meta.and_then(|m| m.get(name))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(Secret::new)
        .ok_or_else(|| format!("meta.{name} is missing"))
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct AgentAttrs {
    name: String,
    status: String,
    last_seen_at: String,
}

pub fn parse_agent(body: &Value) -> Result<AgentInfo, String> {
    let r: Resource<AgentAttrs> = resource(&body["data"], "agents")?;
    Ok(AgentInfo {
        id: r.id,
        name: r.attributes.name,
        status: r.attributes.status,
        last_seen_at: r.attributes.last_seen_at,
    })
}

pub fn parse_session(body: &Value) -> Result<AgentSession, String> {
    let agent = parse_agent(body)?;
    let meta = body.get("meta");
    let secs = |name: &str| {
        meta.and_then(|m| m.get(name))
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("meta.{name} is missing"))
    };
    Ok(AgentSession {
        agent_id: agent.id,
        token: token_in(meta, "session-token")?,
        heartbeat_interval: secs("heartbeat-interval-seconds")?,
        offline_threshold: secs("offline-threshold-seconds")?,
        max_wait: secs("max-wait-seconds")?,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct OfferAttrs {
    stage: Stage,
    run_id: String,
    workspace_id: String,
    workspace_name: String,
    environment_id: String,
    environment_name: String,
    attempt: u32,
    #[serde(default)]
    offer_expires_at: Option<String>,
}

pub fn parse_events(body: &Value) -> Result<Vec<AgentEvent>, String> {
    let items = body["data"].as_array().ok_or("data is not a list")?;
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("task-offers") => {
                let r: Resource<OfferAttrs> = resource(item, "task-offers")?;
                let a = r.attributes;
                let expires_at = match a.offer_expires_at {
                    Some(at) => Some(
                        at.parse()
                            .map_err(|e| format!("offer-expires-at {at:?}: {e}"))?,
                    ),
                    None => None,
                };
                events.push(AgentEvent::Offer(TaskOffer {
                    task_id: r.id,
                    stage: a.stage,
                    run_id: a.run_id,
                    workspace_id: a.workspace_id,
                    workspace_name: a.workspace_name,
                    environment_id: a.environment_id,
                    environment_name: a.environment_name,
                    attempt: a.attempt,
                    expires_at,
                }));
            }
            Some("cancel-signals") => {
                let r: Resource<CancelSignal> = resource(item, "cancel-signals")?;
                events.push(AgentEvent::Cancel(CancelSignal {
                    task_id: r.id,
                    ..r.attributes
                }));
            }
            other => log::debug!("ignoring an event of unknown type {other:?}"),
        }
    }
    Ok(events)
}

fn summary(item: &Value) -> Result<(TaskSummary, Option<Value>), String> {
    let r: Resource<TaskSummary> = resource(item, "tasks")?;
    let agent_id = r
        .relationships
        .as_ref()
        .and_then(|rel| rel.pointer("/agent/data/id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((
        TaskSummary {
            id: r.id,
            agent_id,
            ..r.attributes
        },
        r.meta,
    ))
}

pub fn parse_summary(body: &Value) -> Result<TaskSummary, String> {
    Ok(summary(&body["data"])?.0)
}

fn held(item: &Value) -> Result<HeldTask, String> {
    let (task, meta) = summary(item)?;
    let token = token_in(meta.as_ref(), "task-token")?;
    Ok(HeldTask { task, token })
}

pub fn parse_held(body: &Value) -> Result<HeldTask, String> {
    held(&body["data"])
}

pub fn parse_held_list(body: &Value) -> Result<Vec<HeldTask>, String> {
    body["data"]
        .as_array()
        .ok_or("data is not a list")?
        .iter()
        .map(held)
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct WireVariable {
    key: String,
    value: String,
    category: VariableCategory,
    sensitive: bool,
    #[serde(default)]
    hcl: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SpecAttrs {
    stage: Stage,
    status: TaskStatus,
    attempt: u32,
    cancel_requested: Option<CancelMode>,
    run: RunInfo,
    workspace: WorkspaceInfo,
    environment: EnvironmentInfo,
    tool: ToolInfo,
    configuration_version: ConfigurationVersionInfo,
    variables: Vec<WireVariable>,
    hooks: Hooks,
    state_backend: StateBackend,
    artefacts: Vec<ArtefactInfo>,
}

/// Checks that a link is a path below the API (so a token never leaves the configured host).
pub fn check_path(path: &str) -> Result<(), String> {
    if path.starts_with(API_PREFIX) && !path.contains("..") && !path.contains("://") {
        Ok(())
    } else {
        Err(format!("link {path:?} is not a path below {API_PREFIX}"))
    }
}

/// Parses the task document; `base` is the platform URL the state backend paths are joined to.
pub fn parse_spec(body: &Value, base: &str) -> Result<TaskSpec, String> {
    let r: Resource<SpecAttrs> = resource(&body["data"], "tasks")?;
    let a = r.attributes;
    check_path(&a.configuration_version.download.path)?;
    for d in &a.tool.downloads {
        check_path(&d.download.path)?;
    }
    for artefact in &a.artefacts {
        check_path(&artefact.download.path)?;
    }
    let mut state_backend = a.state_backend;
    for address in [
        &mut state_backend.address,
        &mut state_backend.lock_address,
        &mut state_backend.unlock_address,
    ] {
        check_path(address)?;
        *address = format!("{base}{address}");
    }
    let variables = a
        .variables
        .into_iter()
        .map(|v| Variable {
            key: v.key,
            value: if v.sensitive {
                VariableValue::Sensitive(Secret::new(v.value))
            } else {
                VariableValue::Plain(v.value)
            },
            category: v.category,
            hcl: v.hcl,
        })
        .collect();
    Ok(TaskSpec {
        id: r.id,
        stage: a.stage,
        status: a.status,
        attempt: a.attempt,
        cancel_requested: a.cancel_requested,
        run: a.run,
        workspace: a.workspace,
        environment: a.environment,
        tool: a.tool,
        configuration_version: a.configuration_version,
        variables,
        hooks: a.hooks,
        state_backend,
        artefacts: a.artefacts,
        run_token: token_in(body.get("meta"), "run-token")?,
    })
}

/// `{"data": null}` or a cancel signal.
pub fn parse_cancel(body: &Value) -> Result<Option<CancelMode>, String> {
    match &body["data"] {
        Value::Null => Ok(None),
        item => {
            let r: Resource<CancelSignal> = resource(item, "cancel-signals")?;
            Ok(Some(r.attributes.mode))
        }
    }
}

/// `{"meta": {"cancel-requested": ...}}` of a task heartbeat.
pub fn parse_task_heartbeat(body: &Value) -> Result<Option<CancelMode>, String> {
    from(&body["meta"]["cancel-requested"], "meta.cancel-requested")
}

/// `{"meta": {"length": N}}` of a log append.
pub fn parse_log_length(body: &Value) -> Result<u64, String> {
    body.pointer("/meta/length")
        .and_then(Value::as_u64)
        .ok_or_else(|| "meta.length is missing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_below_the_api() {
        assert!(check_path("/api/iacp/v3/tools/terraform/1.15.5/linux_amd64").is_ok());
        for bad in [
            "https://evil.example/api/iacp/v3/x",
            "/api/iacp/v3/../../etc",
            "/other/path",
            "//evil.example/api/iacp/v3/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn events_of_both_kinds_parse_and_unknown_kinds_are_skipped() {
        let body = json!({"data": [
            {"type": "task-offers", "id": "task-1", "attributes": {"stage": "plan", "run-id": "run-1",
             "workspace-id": "ws-1", "workspace-name": "w", "environment-id": "env-1",
             "environment-name": "e", "attempt": 2, "offer-expires-at": "2026-11-30T10:00:15Z",
             "new-field": 1}},
            {"type": "cancel-signals", "id": "task-2", "attributes": {"run-id": "run-2", "mode": "force"}},
            {"type": "something-new", "id": "x", "attributes": {}}
        ]});
        let events = parse_events(&body).expect("parses");
        assert_eq!(events.len(), 2);
        let AgentEvent::Offer(offer) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (offer.task_id.as_str(), offer.attempt, &offer.stage),
            ("task-1", 2, &Stage::Plan)
        );
        assert_eq!(
            events[1],
            AgentEvent::Cancel(CancelSignal {
                task_id: "task-2".into(),
                run_id: "run-2".into(),
                mode: CancelMode::Force
            })
        );
    }

    #[test]
    fn a_held_task_without_its_token_is_a_decode_error() {
        let body = json!({"data": {"type": "tasks", "id": "task-1", "attributes": {
            "stage": "apply", "status": "acquired", "attempt": 1, "run-id": "r", "workspace-id": "w",
            "workspace-name": "n", "environment-id": "e", "environment-name": "m",
            "cancel-requested": null}}});
        assert!(parse_held(&body).unwrap_err().contains("task-token"));
        let summary = parse_summary(&body).expect("summary");
        assert_eq!(summary.stage, Stage::Apply);
        assert_eq!(summary.agent_id, None);
    }

    #[test]
    fn result_document_has_every_attribute() {
        let doc = result_doc(&TaskResult::finished(
            true,
            ResourceCounts {
                additions: 1,
                changes: 2,
                destructions: 3,
            },
            "Plan: 1 to add",
        ));
        let a = &doc["data"]["attributes"];
        assert_eq!(doc["data"]["type"], "task-results");
        assert_eq!(
            (
                a["status"].as_str(),
                a["has-changes"].as_bool(),
                a["resource-destructions"].as_u64()
            ),
            (Some("finished"), Some(true), Some(3))
        );
    }
}
