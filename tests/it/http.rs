//! The HTTP layer against a real TLS server with a CA made in the test: trust through a CA bundle,
//! a wrong CA rejected, mTLS required and presented, proxies and NO_PROXY, Retry-After, body limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalr_agent::http::{
    CaSource, ClientIdentity, HttpClient, HttpError, HttpOptions, NoProxy, ProxySettings, Request,
    RetryPolicy, Retryable, TransportKind, Verdict,
};

use crate::support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};
use crate::support::pki::{self, ClientAuth, TestCa};
use crate::support::proxy::ConnectProxy;

fn hello() -> Arc<dyn Fn(&HttpRequest, &mut Responder<'_>) + Send + Sync> {
    Arc::new(|req: &HttpRequest, out: &mut Responder<'_>| {
        let ua = req.header("user-agent").unwrap_or("").to_string();
        let _ = out.respond(HttpResponse::new(200, "text/plain", format!("hello {ua}")));
    })
}

fn ca_file(dir: &tempfile::TempDir, ca: &TestCa) -> std::path::PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &ca.cert_pem).expect("write ca");
    path
}

fn options_trusting(path: std::path::PathBuf) -> HttpOptions {
    HttpOptions {
        ca: Some(CaSource::File(path)),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        ..HttpOptions::default()
    }
}

#[test]
fn https_through_a_ca_bundle_file_and_base64() {
    let ca = TestCa::new("test-ca");
    let server = TestServer::start_tls(hello(), pki::server_config(&ca.server_cert(), ClientAuth::None));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = HttpClient::new(&options_trusting(ca_file(&dir, &ca))).expect("client");
    let response = client.send(Request::new("GET", format!("{}/x", server.url()))).expect("send");
    assert_eq!(response.status, 200);
    let body = String::from_utf8(response.body).expect("utf8");
    assert!(body.starts_with("hello scalr-agent/"), "user agent missing: {body}");

    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem);
    let options = HttpOptions {
        ca: Some(CaSource::from_setting(&b64).expect("base64 ca")),
        ..HttpOptions::default()
    };
    let client = HttpClient::new(&options).expect("client");
    assert_eq!(client.send(Request::new("GET", server.url())).expect("send").status, 200);
}

#[test]
fn a_server_signed_by_another_ca_is_rejected_as_tls_error() {
    let ca = TestCa::new("trusted");
    let other = TestCa::new("untrusted");
    let server =
        TestServer::start_tls(hello(), pki::server_config(&other.server_cert(), ClientAuth::None));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = HttpClient::new(&options_trusting(ca_file(&dir, &ca))).expect("client");
    let err = client.send(Request::new("GET", server.url())).expect_err("must fail");
    assert!(
        matches!(err, HttpError::Transport { kind: TransportKind::Tls, .. }),
        "{err:?}"
    );
    assert_eq!(err.verdict(), Verdict::Permanent);
    assert!(err.to_string().contains("SCALR_AGENT_CA_CERT"), "{err}");
    // The built-in roots do not trust a private CA either.
    let client = HttpClient::new(&HttpOptions::default()).expect("client");
    assert!(client.send(Request::new("GET", server.url())).is_err());
}

#[test]
fn mtls_required_by_the_server_and_presented_by_the_client() {
    let ca = TestCa::new("mtls-ca");
    let server =
        TestServer::start_tls(hello(), pki::server_config(&ca.server_cert(), ClientAuth::Required(&ca)));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca_file(&dir, &ca);

    let without = HttpClient::new(&options_trusting(ca_path.clone())).expect("client");
    assert!(without.send(Request::new("GET", server.url())).is_err(), "no client cert must fail");

    let leaf = ca.client_cert("agent", &[]);
    let cert_file = dir.path().join("client.pem");
    let key_file = dir.path().join("client.key");
    std::fs::write(&cert_file, &leaf.cert_pem).expect("write cert");
    std::fs::write(&key_file, &leaf.key_pem).expect("write key");
    let options = HttpOptions {
        client_identity: Some(ClientIdentity { cert_file, key_file }),
        ..options_trusting(ca_path)
    };
    let with = HttpClient::new(&options).expect("client");
    assert_eq!(with.send(Request::new("GET", server.url())).expect("send").status, 200);
}

#[test]
fn bad_tls_material_fails_at_setup_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.pem");
    std::fs::write(&path, "not a pem").expect("write");
    let err = HttpClient::new(&options_trusting(path)).expect_err("must fail");
    assert!(matches!(err, HttpError::Setup { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.pem"), "{err}");
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    let ca = TestCa::new("proxy-ca");
    let server = TestServer::start_tls(hello(), pki::server_config(&ca.server_cert(), ClientAuth::None));
    let proxy = ConnectProxy::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = options_trusting(ca_file(&dir, &ca));
    options.proxy = ProxySettings {
        http: None,
        https: Some(proxy.url()),
        no_proxy: NoProxy::parse("example.invalid"),
    };
    let client = HttpClient::new(&options).expect("client");
    assert_eq!(client.send(Request::new("GET", server.url())).expect("via proxy").status, 200);
    assert_eq!(proxy.targets(), vec![server.addr().to_string()]);

    options.proxy.no_proxy = NoProxy::parse("127.0.0.1");
    let client = HttpClient::new(&options).expect("client");
    assert_eq!(client.send(Request::new("GET", server.url())).expect("direct").status, 200);
    assert_eq!(proxy.targets().len(), 1, "NO_PROXY host went through the proxy");
}

/// A status error as a platform client would classify it, to drive `retry` end to end.
#[derive(Debug)]
enum CallError {
    Status(u16, Option<Duration>),
    Http(HttpError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Retryable for CallError {
    fn verdict(&self) -> Verdict {
        match self {
            CallError::Status(401, _) => Verdict::Fatal,
            CallError::Status(429 | 503, after) => Verdict::Retry { after: *after },
            CallError::Status(_, _) => Verdict::Permanent,
            CallError::Http(e) => e.verdict(),
        }
    }
}

#[test]
fn retry_after_is_honoured_and_attempts_are_bounded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = TestServer::start(Arc::new(move |_req: &HttpRequest, out: &mut Responder<'_>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let response = if n < 2 {
            HttpResponse::new(503, "text/plain", "busy").with_header("Retry-After", "1")
        } else {
            HttpResponse::new(200, "text/plain", "ok")
        };
        let _ = out.respond(response);
    }));
    let client = HttpClient::new(&HttpOptions::default()).expect("client");
    let started = std::time::Instant::now();
    let call = |_attempt: u32| {
        let r = client
            .send(Request::new("GET", server.url()))
            .map_err(CallError::Http)?;
        match r.status {
            200 => Ok(r),
            s => Err(CallError::Status(s, r.retry_after())),
        }
    };
    let response = scalr_agent::http::retry::retry(RetryPolicy::fast(5), None, "test call", call)
        .expect("succeeds on the third attempt");
    assert_eq!(response.status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Two waits of at least the server's Retry-After (1 s each): honoured, not a timing benchmark.
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After ignored");

    let always_busy = TestServer::start(Arc::new(|_req: &HttpRequest, out: &mut Responder<'_>| {
        let _ = out.respond(HttpResponse::new(429, "text/plain", "slow down"));
    }));
    let attempts = Mutex::new(0);
    let result = scalr_agent::http::retry::retry(RetryPolicy::fast(4), None, "busy", |_| {
        *attempts.lock().expect("lock") += 1;
        let r = client
            .send(Request::new("GET", always_busy.url()))
            .map_err(CallError::Http)?;
        Err::<(), _>(CallError::Status(r.status, r.retry_after()))
    });
    assert!(matches!(result, Err(CallError::Status(429, None))));
    assert_eq!(*attempts.lock().expect("lock"), 4);
}

#[test]
fn connection_refused_is_a_retryable_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let client = HttpClient::new(&HttpOptions::default()).expect("client");
    let err = client
        .send(Request::new("GET", format!("http://127.0.0.1:{port}/")))
        .expect_err("nothing listens");
    assert!(
        matches!(err, HttpError::Transport { kind: TransportKind::Connect, .. }),
        "{err:?}"
    );
    assert_eq!(err.verdict(), Verdict::Retry { after: None });
}

#[test]
fn oversized_bodies_are_refused_and_streams_are_not_buffered() {
    let server = TestServer::start(Arc::new(|_req: &HttpRequest, out: &mut Responder<'_>| {
        let _ = out.respond(HttpResponse::new(200, "application/octet-stream", vec![b'x'; 4096]));
    }));
    let options = HttpOptions {
        max_response_bytes: 1024,
        ..HttpOptions::default()
    };
    let client = HttpClient::new(&options).expect("client");
    let err = client.send(Request::new("GET", server.url())).expect_err("too big");
    assert!(matches!(err, HttpError::BodyTooLarge { limit: 1024, .. }), "{err:?}");
    let mut stream = client.stream(Request::new("GET", server.url())).expect("stream");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut stream.body, &mut body).expect("read stream");
    assert_eq!(body.len(), 4096);
}
