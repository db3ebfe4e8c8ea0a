//! The request dispatcher, run on the test server's connection threads: authentication (bearer
//! tokens, x509 client certificates), scripted faults, content negotiation, routing to discovery or
//! resources, RBAC authorization, the operations in `handlers.rs`/`gc.rs`/`watch.rs`, and one
//! request-log entry per call.

use std::sync::Arc;

use serde_json::Value;

use super::super::http_server::{HttpRequest, HttpResponse, Responder};
use super::super::pki;
use super::discovery;
use super::faults::FaultAction;
use super::gc::{self, DeleteOptions};
use super::handlers::{self, Scope};
use super::openapi;
use super::proto;
use super::rbac::{self, Attributes, UserInfo};
use super::resources::ResourceType;
use super::routes::{self, ResourcePath, Route};
use super::state::{RequestRecord, Shared};
use super::status::{self, ApiError};
use super::watch::{self, WatchRequest};

/// Logs the request once, with the status finally sent.
struct Journal<'a> {
    shared: &'a Shared,
    record: Option<RequestRecord>,
}

impl Journal<'_> {
    fn user(&mut self, name: &str) {
        if let Some(r) = &mut self.record {
            r.user = Some(name.to_string());
        }
    }

    fn done(&mut self, status: u16) {
        if let Some(mut r) = self.record.take() {
            r.status = status;
            self.shared.lock().log_request(r);
            self.shared.notify();
        }
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        self.done(0);
    }
}

fn send(out: &mut Responder<'_>, journal: &mut Journal<'_>, code: u16, body: &Value) {
    let _ = out.respond(HttpResponse::json(code, body));
    journal.done(code);
}

fn send_error(out: &mut Responder<'_>, journal: &mut Journal<'_>, e: &ApiError) {
    let mut response = HttpResponse::json(e.code, &e.body);
    if let Some(secs) = e.retry_after {
        response = response.with_header("Retry-After", &secs.to_string());
    }
    let _ = out.respond(response);
    journal.done(e.code);
}

fn authenticate(shared: &Shared, req: &HttpRequest) -> Result<UserInfo, ApiError> {
    if req.header("authorization").is_some() {
        let token = req.bearer().ok_or_else(status::unauthorized)?;
        return shared
            .lock()
            .tokens
            .get(token)
            .cloned()
            .ok_or_else(status::unauthorized);
    }
    if let Some(der) = &req.client_cert {
        let (cn, orgs) = pki::subject_names(der);
        let cn = cn.ok_or_else(status::unauthorized)?;
        let groups: Vec<&str> = orgs.iter().map(String::as_str).collect();
        return Ok(UserInfo::new(&cn, &groups));
    }
    if shared.options.anonymous {
        return Ok(UserInfo {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        });
    }
    Err(status::unauthorized())
}

fn fault_error(code: u16, req: &HttpRequest, shared: &Shared) -> ApiError {
    let target = match routes::route(&req.path, &shared.lock().registry) {
        Route::Resource(p) => Some(p),
        _ => None,
    };
    let (group, plural, name) = target
        .map(|p| (p.group, p.plural, p.name.unwrap_or_default()))
        .unwrap_or_default();
    match code {
        409 => status::conflict(&group, &plural, &name),
        429 => status::too_many_requests(1),
        500 => status::internal("injected fault"),
        401 => status::unauthorized(),
        404 => status::not_found(&group, &plural, &name),
        410 => status::expired(0, shared.lock().store.rv()),
        503 => status::other(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
        504 => status::other(
            504,
            "Timeout",
            "the server was unable to return a response in the time allotted",
        ),
        _ => status::other(code, "", "injected fault"),
    }
}

/// Whether the client takes plain JSON (a Table-only or protobuf-only Accept does not).
fn accepts_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return true;
    };
    accept.split(',').any(|m| {
        let mut parts = m.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let params: Vec<&str> = parts.collect();
        let as_other = params.iter().any(|p| p.starts_with("as="));
        matches!(media, "application/json" | "*/*" | "application/*") && !as_other
    })
}

/// Serves one request.
pub fn handle(shared: &Arc<Shared>, req: &HttpRequest, out: &mut Responder<'_>) {
    let mut journal = Journal {
        shared,
        record: Some(RequestRecord {
            method: req.method.clone(),
            path: req.path.clone(),
            query: req.query.clone(),
            user: None,
            content_type: req.header("content-type").map(String::from),
            accept: req.header("accept").map(String::from),
            user_agent: req.header("user-agent").map(String::from),
            status: 0,
            body: String::from_utf8_lossy(&req.body).into_owned(),
        }),
    };
    let user = match authenticate(shared, req) {
        Ok(u) => u,
        Err(e) => return send_error(out, &mut journal, &e),
    };
    journal.user(&user.name);
    let actions = {
        let mut st = shared.lock();
        let actions = st.faults.take(&req.method, &req.path, &req.query);
        if !actions.is_empty() {
            // A fault being used is a change waiters may be waiting for (`pending_faults`).
            st.ticks += 1;
        }
        actions
    };
    if !actions.is_empty() {
        shared.notify();
    }
    for action in actions {
        match action {
            FaultAction::Delay(d) => std::thread::sleep(d),
            FaultAction::Drop => {
                out.drop_connection();
                return journal.done(0);
            }
            FaultAction::Status(code) => {
                let e = fault_error(code, req, shared);
                return send_error(out, &mut journal, &e);
            }
        }
    }
    let route = routes::route(&req.path, &shared.lock().registry);
    if route != Route::Unknown && !accepts_json(req.header("accept")) {
        return send_error(out, &mut journal, &status::not_acceptable());
    }
    let doc = {
        let st = shared.lock();
        match &route {
            Route::Version => Some(discovery::version(&shared.options.server_version)),
            Route::CoreVersions => Some(discovery::core_versions(
                req.header("host").unwrap_or("127.0.0.1"),
            )),
            Route::Groups => Some(discovery::groups(&st.registry)),
            Route::Group(g) => discovery::group(&st.registry, g),
            Route::GroupVersion(g, v) => Some(discovery::resource_list(&st.registry, g, v)),
            Route::OpenApiIndex => Some(openapi::index(&st.registry)),
            Route::OpenApi(g, v) => openapi::group_version(&st.registry, g, v),
            _ => None,
        }
    };
    match route {
        Route::Resource(p) => resource(shared, req, &user, p, out, &mut journal),
        Route::NoResource => send_error(out, &mut journal, &status::no_resource()),
        Route::Unknown => {
            let _ = out.respond(HttpResponse::new(
                404,
                "text/plain; charset=utf-8",
                "404 page not found\n",
            ));
            journal.done(404);
        }
        Route::Health
        | Route::Version
        | Route::CoreVersions
        | Route::Groups
        | Route::Group(_)
        | Route::GroupVersion(..)
        | Route::OpenApiIndex
        | Route::OpenApi(..) => {
            if req.method != "GET" && req.method != "HEAD" {
                return send_error(out, &mut journal, &status::method_not_allowed());
            }
            let attrs = Attributes {
                verb: "get".into(),
                path: req.path.clone(),
                ..Attributes::default()
            };
            let denied = {
                let st = shared.lock();
                st.rbac && !rbac::authorize(&st.store, &user, &attrs).allowed
            };
            if denied {
                return send_error(out, &mut journal, &rbac::forbidden(&user, &attrs));
            }
            match doc {
                Some(doc) => send(out, &mut journal, 200, &doc),
                None => {
                    let _ = out.respond(HttpResponse::new(200, "text/plain; charset=utf-8", "ok"));
                    journal.done(200);
                }
            }
        }
    }
}

/// The request body as JSON: JSON as sent, or protobuf from typed clients decoded.
fn body_json(req: &HttpRequest) -> Result<Option<Value>, ApiError> {
    let ct = req.header("content-type").unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media != proto::MEDIA_TYPE {
        return Ok(None);
    }
    proto::decode(&req.body)
        .map(Some)
        .map_err(|why| status::other(415, "UnsupportedMediaType", &why))
}

fn parse_body(req: &HttpRequest, rt: &ResourceType) -> Result<Value, ApiError> {
    if let Some(v) = body_json(req)? {
        return Ok(v);
    }
    let ct = req.header("content-type").unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media != "application/json" {
        return Err(status::unsupported_media_type(
            ct,
            &[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
            ],
        ));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        status::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): {e}",
            rt.kind
        ))
    })
}

/// `fieldValidation=Strict`: undeclared top-level or metadata fields are a 400, as strict decoding
/// makes them. `Warn` and `Ignore` accept them (warnings are not modelled).
fn strict_fields(
    req: &HttpRequest,
    rt: &ResourceType,
    version: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    if req.query_param("fieldValidation").as_deref() != Some("Strict") {
        return Ok(());
    }
    let unknown = super::validate::unknown_fields(&rt.plural, rt.custom, obj);
    if unknown.is_empty() {
        return Ok(());
    }
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(status::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        fields.join(", "),
        kind = rt.kind
    )))
}

fn dry_run(req: &HttpRequest) -> Result<bool, ApiError> {
    match req.query_param("dryRun").as_deref() {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(status::bad_request(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

fn resource(
    shared: &Arc<Shared>,
    req: &HttpRequest,
    user: &UserInfo,
    p: ResourcePath,
    out: &mut Responder<'_>,
    journal: &mut Journal<'_>,
) {
    let result = run(shared, req, user, p, out, journal);
    shared.notify();
    match result {
        Ok(Some((code, body))) => send(out, journal, code, &body),
        Ok(None) => {}
        Err(e) => send_error(out, journal, &e),
    }
}

/// The operation; `Ok(None)` when it answered itself (a watch stream).
fn run(
    shared: &Arc<Shared>,
    req: &HttpRequest,
    user: &UserInfo,
    p: ResourcePath,
    out: &mut Responder<'_>,
    journal: &mut Journal<'_>,
) -> Result<Option<(u16, Value)>, ApiError> {
    let rt = shared
        .lock()
        .registry
        .find(&p.group, &p.version, &p.plural)
        .cloned()
        .ok_or_else(status::no_resource)?;
    let version = p.version.clone();
    let watch = routes::wants_watch(req, &p);
    let verb = routes::verb(&req.method, p.name.is_some(), watch);
    let name = p.name.clone().unwrap_or_default();
    let request_ns = match (&p.namespace, rt.plural.as_str()) {
        (None, "namespaces") => name.clone(),
        (ns, _) => ns.clone().unwrap_or_default(),
    };
    let attrs = Attributes {
        verb: verb.into(),
        group: rt.group.clone(),
        resource: rt.plural.clone(),
        subresource: p.subresource.clone().unwrap_or_default(),
        name: name.clone(),
        namespace: request_ns,
        path: req.path.clone(),
        is_resource: true,
    };
    {
        let st = shared.lock();
        if st.rbac && !rbac::authorize(&st.store, user, &attrs).allowed {
            return Err(rbac::forbidden(user, &attrs));
        }
    }
    if rt.plural == "bindings"
        || (rt.plural == "pods" && p.subresource.as_deref() == Some("binding"))
    {
        if req.method != "POST" {
            return Err(status::method_not_allowed());
        }
        let body = parse_body(req, &rt)?;
        let ns = p.namespace.as_deref().unwrap_or("default");
        let pod = if rt.plural == "pods" {
            p.name.as_deref()
        } else {
            None
        };
        let mut st = shared.lock();
        return handlers::bind(&mut st, ns, pod, body).map(|v| Some((201, v)));
    }
    let scope = match p.subresource.as_deref() {
        None => Scope::Main,
        Some("status") if rt.status => Scope::Status,
        Some(_) => return Err(status::no_resource()),
    };
    if rt.virtual_review {
        if req.method != "POST" {
            return Err(status::method_not_allowed());
        }
        let body = parse_body(req, &rt)?;
        let st = shared.lock();
        let answer = match rt.plural.as_str() {
            "selfsubjectaccessreviews" => rbac::access_review(&st.store, user, &body, st.rbac)?,
            "selfsubjectrulesreviews" => rbac::rules_review(&st.store, user, &body, st.rbac),
            _ => rbac::self_review(user),
        };
        return Ok(Some((201, answer)));
    }
    if let Some(fm) = req.query_param("fieldManager")
        && fm.len() > 128
    {
        return Err(status::bad_request(
            "fieldManager: Too long: must have at most 128 bytes",
        ));
    }
    let ns = p.namespace.as_deref();
    let graceful = shared.options.graceful_pod_deletion;
    match (req.method.as_str(), p.name.as_deref()) {
        ("GET" | "HEAD", _) if watch => {
            let mut params = routes::list_params(req, &rt.fields, rt.custom)
                .map_err(|m| selector_error(&rt, &version, req, m))?;
            if let Some(n) = &p.name {
                params
                    .fields
                    .0
                    .push(("metadata.name".into(), n.clone(), false));
            }
            journal.done(200);
            let w = WatchRequest {
                rt,
                version,
                namespace: p.namespace.clone(),
                params,
            };
            watch::serve(shared, w, out)?;
            Ok(None)
        }
        ("GET" | "HEAD", Some(name)) => {
            let st = shared.lock();
            handlers::get(&st, &rt, &version, ns, name).map(|o| Some((200, o)))
        }
        ("GET" | "HEAD", None) => {
            let params = routes::list_params(req, &rt.fields, rt.custom)
                .map_err(|m| selector_error(&rt, &version, req, m))?;
            let st = shared.lock();
            handlers::list(&st, &rt, &version, ns, &params).map(|o| Some((200, o)))
        }
        ("POST", None) => {
            let body = parse_body(req, &rt)?;
            strict_fields(req, &rt, &version, &body)?;
            let dry = dry_run(req)?;
            let mut st = shared.lock();
            handlers::create(&mut st, &rt, &version, ns, body, Scope::Main, dry)
                .map(|o| Some((201, o)))
        }
        ("PUT", Some(name)) => {
            let body = parse_body(req, &rt)?;
            strict_fields(req, &rt, &version, &body)?;
            let dry = dry_run(req)?;
            let mut st = shared.lock();
            handlers::update(&mut st, &rt, &version, ns, name, body, scope, dry)
                .map(|o| Some((200, o)))
        }
        ("PATCH", Some(name)) => {
            let dry = dry_run(req)?;
            if let Ok(doc) = serde_json::from_slice::<Value>(&req.body)
                && doc.is_object()
            {
                strict_fields(req, &rt, &version, &doc)?;
            }
            let ct = req.header("content-type").unwrap_or("").to_string();
            let mut st = shared.lock();
            handlers::patch(&mut st, &rt, &version, ns, name, &ct, &req.body, scope, dry)
                .map(|o| Some((200, o)))
        }
        ("DELETE", Some(name)) => {
            let mut opts = delete_options(req)?;
            opts.dry_run |= dry_run(req)?;
            let mut st = shared.lock();
            let key = handlers::key(&rt, ns, name);
            gc::delete_object(&mut st, &rt, &version, &key, &opts, graceful).map(Some)
        }
        ("DELETE", None) if rt.verbs.iter().any(|v| v == "deletecollection") => {
            let params = routes::list_params(req, &rt.fields, rt.custom)
                .map_err(|m| selector_error(&rt, &version, req, m))?;
            let mut opts = delete_options(req)?;
            opts.dry_run |= dry_run(req)?;
            let mut st = shared.lock();
            handlers::delete_collection(&mut st, &rt, &version, ns, &params, &opts, graceful)
                .map(|o| Some((200, o)))
        }
        _ => Err(status::method_not_allowed()),
    }
}

fn delete_options(req: &HttpRequest) -> Result<DeleteOptions, ApiError> {
    match body_json(req)? {
        Some(v) => DeleteOptions::parse(v.to_string().as_bytes(), &req.query_pairs()),
        None => DeleteOptions::parse(&req.body, &req.query_pairs()),
    }
}

fn selector_error(rt: &ResourceType, version: &str, req: &HttpRequest, why: String) -> ApiError {
    if why.starts_with("field label not supported") || why.contains("is not a known field selector")
    {
        return status::bad_request(super::selectors::field_error_message(
            &rt.api_version(version),
            &rt.plural,
            &req.query_param("labelSelector").unwrap_or_default(),
            &req.query_param("fieldSelector").unwrap_or_default(),
            &why,
        ));
    }
    status::bad_request(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let cases = [
            (None, true),
            (Some("application/json"), true),
            (Some("application/json, */*"), true),
            (
                Some(
                    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                ),
                true,
            ),
            (Some("application/json;as=Table;v=v1;g=meta.k8s.io"), false),
            (
                Some(
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
                ),
                true,
            ),
            (Some("application/vnd.kubernetes.protobuf"), false),
        ];
        for (accept, want) in cases {
            assert_eq!(accepts_json(accept), want, "{accept:?}");
        }
    }
}
