//! The simulator is as strict as a real server: raw requests (not our client) with wrong tokens,
//! paths, methods, content types and documents get the right status, error code, pointer and a detail
//! that says what is wrong.

use base64::Engine;
use scalr_agent::http::{HttpClient, HttpOptions, Request};

use super::fixture::fixture;
use super::table::{JSONAPI, Tok, case, check, raw};

const REGISTER: &str = r#"{"data":{"type":"agents","attributes":{"name":"x","version":"1","os":"linux",
  "cpu-platform":"linux_amd64","runtime":"kubernetes","driver":"kubernetes-job","capacity":1}}}"#;
const OCTETS: &str = "application/octet-stream";

fn register_with(attr: &str, value: &str) -> String {
    REGISTER.replace(
        r#""capacity":1"#,
        &format!(r#""capacity":1,"{attr}":{value}"#),
    )
}

#[test]
fn wrong_tokens_paths_methods_and_documents_are_rejected_with_useful_errors() {
    let f = fixture();
    let a = f.agent("controller-a", 1);
    let b = f.agent("controller-b", 1);
    let (run, held) = f.acquired(&a);
    let task = held.task.id.clone();
    f.client
        .task(&task, held.token.clone())
        .start()
        .expect("start");
    let other_ws = f.sim.create_workspace(&f.pool.id, "production", "other");
    let agent_a = a.session().agent_id.clone();
    let v3 = |p: &str| format!("/api/iacp/v3/{p}");
    let hb = v3(&format!("agents/{agent_a}/actions/heartbeat"));
    let heartbeat = r#"{"data":{"type":"heartbeats","attributes":{"free-capacity":1}}}"#;
    let events = |q: &str| v3(&format!("agents/{agent_a}/events?{q}"));
    let finish =
        |attrs: &str| format!(r#"{{"data":{{"type":"task-results","attributes":{attrs}}}}}"#);
    let state = v3(&format!("workspaces/{}/state", f.ws));

    let cases = vec![
        case(
            "no token",
            "POST",
            v3("agents"),
            Tok::None,
            401,
            "unauthorized",
        )
        .body(JSONAPI, REGISTER),
        case(
            "unknown token",
            "POST",
            hb.clone(),
            Tok::Bogus,
            401,
            "unauthorized",
        )
        .body(JSONAPI, heartbeat),
        case(
            "pool token on a session call",
            "POST",
            hb.clone(),
            Tok::Pool,
            403,
            "wrong-token-kind",
        )
        .body(JSONAPI, heartbeat)
        .detail("takes a session token, not a pool token"),
        case(
            "another agent's session",
            "POST",
            hb.clone(),
            Tok::SessionB,
            403,
            "out-of-scope",
        )
        .body(JSONAPI, heartbeat),
        case(
            "session token on a worker call",
            "GET",
            v3(&format!("tasks/{task}")),
            Tok::SessionA,
            403,
            "wrong-token-kind",
        ),
        case(
            "task token on another task",
            "GET",
            v3("tasks/task-other"),
            Tok::Task,
            403,
            "out-of-scope",
        ),
        case(
            "unknown task",
            "GET",
            v3(&format!("agents/{agent_a}/tasks/task-nope")),
            Tok::SessionA,
            404,
            "not-found",
        ),
        case(
            "unknown path",
            "GET",
            v3("nope"),
            Tok::SessionA,
            404,
            "not-found",
        ),
        case(
            "outside the API",
            "POST",
            "/api/v2/agents".into(),
            Tok::Pool,
            404,
            "not-found",
        ),
        case(
            "trailing slash",
            "POST",
            v3("agents/"),
            Tok::Pool,
            404,
            "not-found",
        ),
        case(
            "wrong method",
            "PUT",
            v3("agents"),
            Tok::Pool,
            405,
            "method-not-allowed",
        )
        .detail("allowed: POST"),
        case(
            "plain JSON content type",
            "POST",
            v3("agents"),
            Tok::Pool,
            415,
            "unsupported-media-type",
        )
        .body("application/json", REGISTER),
        case(
            "media type parameters",
            "POST",
            v3("agents"),
            Tok::Pool,
            415,
            "unsupported-media-type",
        )
        .body("application/vnd.api+json; charset=utf-8", REGISTER),
        case(
            "malformed JSON",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(JSONAPI, r#"{"data":"#)
        .detail("not valid JSON"),
        case(
            "unknown attribute",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &register_with("colour", "\"blue\""))
        .pointer("/data/attributes/colour")
        .detail("unknown field `colour`"),
        case(
            "unknown top-level member",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &REGISTER.replacen('{', r#"{"links":{},"#, 1))
        .pointer("/links"),
        case(
            "unknown resource member",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(
            JSONAPI,
            &REGISTER.replace(r#""type":"agents","#, r#""type":"agents","id":"x","#),
        )
        .pointer("/data/id"),
        case(
            "wrong type",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(
            JSONAPI,
            &REGISTER.replace(r#""type":"agents""#, r#""type":"agent""#),
        )
        .pointer("/data/type")
        .detail("expected a resource of type agents"),
        case(
            "missing attribute",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &REGISTER.replace(r#","capacity":1"#, ""))
        .pointer("/data/attributes/capacity")
        .detail("missing field `capacity`"),
        case(
            "bad enum value",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &REGISTER.replace(r#""kubernetes""#, r#""lambda""#))
        .pointer("/data/attributes/runtime"),
        case(
            "capacity out of range",
            "POST",
            v3("agents"),
            Tok::Pool,
            422,
            "invalid-document",
        )
        .body(
            JSONAPI,
            &REGISTER.replace(r#""capacity":1"#, r#""capacity":0"#),
        )
        .pointer("/data/attributes/capacity"),
        case(
            "wrong attribute type",
            "POST",
            hb.clone(),
            Tok::SessionA,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &heartbeat.replace("1}", "\"one\"}")),
        case(
            "wait too long",
            "GET",
            events("wait-seconds=99&free-capacity=1"),
            Tok::SessionA,
            422,
            "invalid-parameter",
        )
        .detail("outside 0..=30"),
        case(
            "missing parameter",
            "GET",
            events("wait-seconds=1"),
            Tok::SessionA,
            422,
            "invalid-parameter",
        )
        .detail("free-capacity is required"),
        case(
            "unknown parameter",
            "GET",
            events("wait-seconds=1&free-capacity=1&x=1"),
            Tok::SessionA,
            422,
            "invalid-parameter",
        ),
        case(
            "body on a bodyless action",
            "POST",
            v3(&format!("tasks/{task}/actions/acquire")),
            Tok::SessionA,
            422,
            "invalid-document",
        )
        .body(JSONAPI, "{}")
        .detail("takes no request body"),
        case(
            "unknown action",
            "POST",
            v3(&format!("tasks/{task}/actions/explode")),
            Tok::Task,
            404,
            "not-found",
        ),
        case(
            "log as JSON",
            "PUT",
            v3(&format!("tasks/{task}/log?offset=0")),
            Tok::Task,
            415,
            "unsupported-media-type",
        )
        .body(JSONAPI, "x"),
        case(
            "log offset not a number",
            "PUT",
            v3(&format!("tasks/{task}/log?offset=abc")),
            Tok::Task,
            422,
            "invalid-parameter",
        )
        .body(OCTETS, "x"),
        case(
            "finish with an unknown status",
            "POST",
            v3(&format!("tasks/{task}/actions/finish")),
            Tok::Task,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &finish(r#"{"status":"done"}"#))
        .pointer("/data/attributes/status"),
        case(
            "finished without counts",
            "POST",
            v3(&format!("tasks/{task}/actions/finish")),
            Tok::Task,
            422,
            "invalid-document",
        )
        .body(JSONAPI, &finish(r#"{"status":"finished"}"#))
        .pointer("/data/attributes/has-changes"),
        case(
            "artefact without checksum",
            "PUT",
            v3(&format!("runs/{run}/artefacts/plan-file")),
            Tok::Task,
            422,
            "checksum-mismatch",
        )
        .body(OCTETS, "plan"),
        case(
            "artefact with a wrong checksum",
            "PUT",
            v3(&format!("runs/{run}/artefacts/plan-file")),
            Tok::Task,
            422,
            "checksum-mismatch",
        )
        .body(OCTETS, "plan")
        .header("X-Checksum-Sha256", "abcd"),
        case(
            "unknown artefact kind",
            "GET",
            v3(&format!("runs/{run}/artefacts/core-dump")),
            Tok::Task,
            404,
            "not-found",
        ),
        case(
            "state with a session token",
            "GET",
            state.clone(),
            Tok::SessionA,
            403,
            "wrong-token-kind",
        ),
        case(
            "state with the wrong username",
            "GET",
            state.clone(),
            Tok::BasicRun("admin"),
            401,
            "unauthorized",
        )
        .detail("the username must be token"),
        case(
            "state of another workspace",
            "GET",
            v3(&format!("workspaces/{other_ws}/state")),
            Tok::Run,
            403,
            "out-of-scope",
        ),
        case(
            "lock without lock info",
            "LOCK",
            format!("{state}/lock"),
            Tok::BasicRun("token"),
            422,
            "invalid-document",
        ),
        case(
            "state that is not JSON",
            "POST",
            state.clone(),
            Tok::BasicRun("token"),
            422,
            "invalid-document",
        )
        .body("application/json", "not json"),
        case(
            "state without lineage",
            "POST",
            state.clone(),
            Tok::Run,
            422,
            "invalid-document",
        )
        .body("application/json", r#"{"version":4,"serial":1}"#),
    ];

    let http = HttpClient::new(&HttpOptions::default()).expect("http client");
    let run_token = f.sim.run_token(&run);
    let mut failures = Vec::new();
    for c in &cases {
        let token = match c.token {
            Tok::None => None,
            Tok::Bogus => Some(format!("Bearer {}", "b".repeat(48))),
            Tok::Pool => Some(format!("Bearer {}", f.pool.token)),
            Tok::SessionA => Some(format!("Bearer {}", a.session().token.expose())),
            Tok::SessionB => Some(format!("Bearer {}", b.session().token.expose())),
            Tok::Task => Some(format!("Bearer {}", held.token.expose())),
            Tok::Run => Some(format!("Bearer {run_token}")),
            Tok::BasicRun(user) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{run_token}"))
            )),
        };
        let mut request = Request::new(c.method, format!("{}{}", f.sim.url(), c.path));
        if let Some(t) = token {
            request = request.header("Authorization", t);
        }
        if let Some(ct) = c.content_type {
            request = request.header("Content-Type", ct).body(c.body.clone());
        }
        for (k, v) in &c.headers {
            request = request.header(k, *v);
        }
        // ureq refuses WebDAV-style methods; terraform sends them, so speak HTTP/1.1 by hand.
        let response = if matches!(c.method, "LOCK" | "UNLOCK") {
            raw(&f.sim.url(), &request)
        } else {
            http.send(request).expect("send")
        };
        if let Err(why) = check(c, &response) {
            failures.push(format!(
                "{}: {why}\n  body: {}",
                c.name,
                response.body_excerpt()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        f.sim.agents().len(),
        2,
        "no rejected request registered an agent"
    );

    // The request log names token kinds, never tokens.
    let log: String = f.sim.requests().iter().map(|r| format!("{r}\n")).collect();
    assert!(
        log.contains("[session]") && log.contains("[pool]") && log.contains("[no token]"),
        "{log}"
    );
    assert!(
        !log.contains(&f.pool.token) && !log.contains(held.token.expose()),
        "{log}"
    );
}
