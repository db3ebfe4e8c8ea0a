//! Every error class, produced by the simulator the way a real API server produces it, decoded from
//! its `Status` body and classified by the client; and how `retry` treats each verdict.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use scalr_agent::http::retry::{RetryPolicy, retry};
use scalr_agent::http::{Retryable, TransportKind, Verdict};
use scalr_agent::kube::{Api, DeleteParams, KubeError, ListParams};
use serde_json::json;

use super::{NS, admin, client_with, dump, job, sim};

const JOBS: &str = "/apis/batch/v1/namespaces/ci/jobs";

#[test]
fn not_found_already_exists_and_conflict() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let err = jobs.get("nope").expect_err("missing");
    let KubeError::NotFound(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        (f.method.as_str(), f.path.as_str(), f.status),
        ("GET", "/apis/batch/v1/namespaces/ci/jobs/nope", 404)
    );
    assert_eq!(f.reason, "NotFound");
    assert_eq!(err.verdict(), Verdict::Permanent);

    let first = jobs.create(&job("j", json!({}))).expect("create");
    let err = jobs.create(&job("j", json!({}))).expect_err("taken");
    assert!(err.is_already_exists(), "{err:?}");
    assert_eq!(
        err.failure().map(|f| f.reason.as_str()),
        Some("AlreadyExists")
    );

    jobs.patch_merge("j", &json!({"metadata": {"labels": {"x": "1"}}}))
        .expect("patch");
    let err = jobs
        .replace("j", &first)
        .expect_err("stale resourceVersion");
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(err.failure().map(|f| f.status), Some(409));
}

#[test]
fn gone_for_a_compacted_continue_token() {
    let sim = sim();
    let maps: Api<ConfigMap> = Api::namespaced(&admin(&sim), NS);
    for name in ["a", "b"] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm");
        maps.create(&cm).expect("create");
    }
    let page = maps.list(&ListParams::default().limit(1)).expect("page");
    maps.delete("a", &DeleteParams::default()).expect("write");
    sim.compact();
    let err = maps
        .list(&ListParams {
            continue_token: page.continue_token,
            ..ListParams::default().limit(1)
        })
        .expect_err("expired");
    let KubeError::Gone(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((f.status, f.reason.as_str()), (410, "Expired"));
}

#[test]
fn forbidden_carries_the_servers_reason() {
    let sim = sim();
    sim.enable_rbac();
    let token = sim.add_service_account_token(NS, "agent");
    let jobs: Api<Job> = Api::namespaced(&client_with(&sim, &token), NS);
    let err = jobs.create(&job("j", json!({}))).expect_err("no role");
    let KubeError::Forbidden(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((f.status, f.reason.as_str()), (403, "Forbidden"));
    assert!(
        f.message.contains("system:serviceaccount:ci:agent")
            && f.message.contains("cannot create resource \"jobs\""),
        "{}",
        f.message
    );
    let text = err.to_string();
    assert!(
        text.contains("rbac.create"),
        "the message says what to do: {text}"
    );
    assert_eq!(err.verdict(), Verdict::Permanent);
}

#[test]
fn invalid_carries_field_causes() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let mut bad = job("bad", json!({}));
    if let Some(pod) = bad.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.containers.clear();
        pod.restart_policy = Some("Always".into());
    }
    let err = jobs.create(&bad).expect_err("invalid");
    let KubeError::Invalid(f) = &err else {
        panic!("{err:?}")
    };
    let fields: Vec<&str> = f.causes.iter().map(|c| c.field.as_str()).collect();
    assert!(
        fields.contains(&"spec.template.spec.containers"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"spec.template.spec.restartPolicy"),
        "{fields:?}"
    );
    assert!(f.causes.iter().all(|c| !c.reason.is_empty()));
    assert_eq!(err.verdict(), Verdict::Permanent);
}

#[test]
fn throttled_with_retry_after_and_server_errors_are_retryable() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    sim.fail_next("GET", JOBS, 1, 429);
    let err = jobs.list(&ListParams::default()).expect_err("throttled");
    let KubeError::Throttled(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(
        err.verdict(),
        Verdict::Retry {
            after: Some(Duration::from_secs(1))
        }
    );

    for code in [500, 503, 504] {
        sim.fail_next("GET", JOBS, 1, code);
        let err = jobs.list(&ListParams::default()).expect_err("server error");
        assert!(
            matches!(&err, KubeError::ServerError(f) if f.status == code),
            "{err:?}"
        );
        assert!(matches!(err.verdict(), Verdict::Retry { .. }));
    }

    // The retry loop gets through two server errors.
    sim.fail_next("GET", JOBS, 2, 500);
    let mut attempts = 0;
    let list = retry(RetryPolicy::fast(5), None, "list jobs", |n| {
        attempts = n;
        jobs.list(&ListParams::default())
    })
    .expect("third attempt succeeds");
    assert_eq!((attempts, list.items.len()), (3, 0), "{}", dump(&sim));
}

#[test]
fn unauthorized_is_fatal_and_never_shows_the_token() {
    let sim = sim();
    let token = "never-registered-token-0123456789";
    let jobs: Api<Job> = Api::namespaced(&client_with(&sim, token), NS);
    let err = jobs
        .list(&ListParams::default())
        .expect_err("unknown token");
    assert!(matches!(err, KubeError::Unauthorized(_)), "{err:?}");
    assert_eq!(err.verdict(), Verdict::Fatal);
    let mut attempts = 0;
    let _ = retry(RetryPolicy::fast(5), None, "list jobs", |_| {
        attempts += 1;
        jobs.list(&ListParams::default())
    });
    assert_eq!(attempts, 1, "401 is not retried");
    for text in [err.to_string(), format!("{err:?}"), format!("{jobs:?}")] {
        assert!(!text.contains(token), "token leaked: {text}");
    }
}

#[test]
fn rejected_for_other_client_errors() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    let err = jobs
        .list(&ListParams::labels("app in (a"))
        .expect_err("bad selector");
    let KubeError::Rejected(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((f.status, f.reason.as_str()), (400, "BadRequest"));
    assert_eq!(err.verdict(), Verdict::Permanent);
}

#[test]
fn transport_failures_are_retryable_and_tls_failures_are_not() {
    let sim = sim();
    let jobs: Api<Job> = Api::namespaced(&admin(&sim), NS);
    sim.drop_next("GET", JOBS, 1);
    let err = jobs.list(&ListParams::default()).expect_err("dropped");
    assert!(matches!(err, KubeError::Transport(_)), "{err:?}");
    assert!(matches!(err.verdict(), Verdict::Retry { .. }));
    jobs.list(&ListParams::default()).expect("next call works");

    // No CA: the simulator's certificate is not trusted.
    let mut explicit = super::explicit(&sim, sim.admin_token());
    explicit.ca = None;
    let config = scalr_agent::kube::KubeConfig::explicit(&explicit).expect("config");
    let client = scalr_agent::kube::Client::new(&config, &Default::default()).expect("client");
    let err = Api::<Job>::namespaced(&client, NS)
        .list(&ListParams::default())
        .expect_err("untrusted");
    let KubeError::Transport(scalr_agent::http::HttpError::Transport { kind, .. }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*kind, TransportKind::Tls);
    assert_eq!(err.verdict(), Verdict::Permanent);
}
