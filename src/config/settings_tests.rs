//! Tests of validation: every rule's error path, defaults, precedence and redaction.

use super::*;

fn errors_for(pairs: &[(&str, &str)]) -> ConfigErrors {
    match Settings::from_pairs(pairs) {
        Ok(_) => panic!("expected errors for {pairs:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults_are_documented_values() {
    let s = Settings::from_pairs(&[]).expect("empty config is valid");
    assert_eq!(s.concurrency, 10);
    assert_eq!(s.startup_timeout, Duration::from_secs(180));
    assert_eq!(s.grace_shutdown, Duration::from_secs(300));
    assert_eq!(s.data_dir, PathBuf::from("/var/lib/scalr-agent"));
    assert_eq!(s.cache_dir, PathBuf::from("/var/lib/scalr-agent/cache"));
    assert_eq!(s.log_format, LogFormat::Plain);
    assert!(!s.debug && s.memory.enabled && s.provider_cache.enabled);
    assert_eq!(
        (s.memory.soft_limit_percent, s.memory.warn_percent),
        (80, 90)
    );
    assert_eq!(s.task_template, "scalr-agent-task-template");
    assert!(s.url.is_none() && s.token.is_none());
    for var in VARS {
        if let Some(default) = var.default {
            let shown = s.effective().into_iter().find(|(n, _, _)| *n == var.name);
            assert!(
                shown.is_some(),
                "{} missing from effective config ({default})",
                var.name
            );
        }
    }
}

#[test]
fn each_bad_value_names_the_variable_and_the_fix() {
    let cases: &[(&str, &str, &str)] = &[
        ("SCALR_URL", "acme.scalr.io", "full URL"),
        ("SCALR_URL", "http://acme.scalr.io", "unencrypted"),
        ("SCALR_URL", "https://acme.scalr.io/?x=1", "query"),
        ("SCALR_AGENT_DEBUG", "yes", "true, false, 1 or 0"),
        ("SCALR_AGENT_LOG_FORMAT", "xml", "plain or json"),
        ("SCALR_AGENT_CONCURRENCY", "0", "between 1 and 1000"),
        ("SCALR_AGENT_CONCURRENCY", "ten", "digits only"),
        (
            "SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS",
            "180s",
            "digits only",
        ),
        (
            "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT",
            "0",
            "between 1 and 86400",
        ),
        ("SCALR_AGENT_DATA_DIR", "relative/dir", "absolute"),
        ("SCALR_AGENT_CACHE_DIR", "cache", "absolute"),
        ("SCALR_AGENT_NAME", "bad name!", "letters, digits"),
        (
            "SCALR_AGENT_KUBERNETES_TASK_TEMPLATE",
            "Bad_Name",
            "lower-case",
        ),
        ("SCALR_AGENT_KUBERNETES_NAMESPACE", "a.b", "namespace"),
        (
            "SCALR_AGENT_CA_CERT",
            "/nonexistent/ca.pem",
            "mount the CA bundle",
        ),
        ("SCALR_AGENT_CA_CERT", "%%%not-base64", "base64"),
        (
            "SCALR_AGENT_TLS_CERT_FILE",
            "/nonexistent/cert.pem",
            "readable file",
        ),
        (
            "SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT",
            "150",
            "between 1 and 100",
        ),
        ("SCALR_AGENT_MEMORY_MONITOR_ENABLED", "on", "true, false"),
        (
            "SCALR_AGENT_PROVIDER_CACHE_SIZE_LIMIT_MB",
            "1GB",
            "digits only",
        ),
        (
            "SCALR_AGENT_BINARY_CACHE_THRESHOLD_DAYS",
            "0",
            "between 1 and 3650",
        ),
        ("SCALR_AGENT_PROVIDER_NETWORK_MIRRORS", "{}", "JSON list"),
        (
            "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
            r#"[{"url":"ftp://x"}]"#,
            "https URL",
        ),
        (
            "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
            r#"[{"url":"https://m/","include":["a/b"]}]"#,
            "hostname/namespace/type",
        ),
        (
            "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
            r#"[{"url":"https://m/","extra":1}]"#,
            "JSON list",
        ),
        ("HTTPS_PROXY", "proxy:3128", "full URL"),
        (
            "SCALR_AGENT_TOKEN_FILE",
            "/nonexistent/token",
            "Secret is mounted",
        ),
    ];
    for (var, value, fix) in cases {
        let errors = errors_for(&[(var, value)]);
        assert_eq!(errors.0.len(), 1, "{var}={value}: {errors}");
        let error = &errors.0[0];
        assert_eq!(error.var, *var, "{var}={value}: {errors}");
        let text = error.to_string();
        assert!(
            text.starts_with(var),
            "message must start with the variable: {text}"
        );
        assert!(
            text.contains(fix),
            "{var}={value}: message lacks {fix:?}: {text}"
        );
        assert!(text.contains("from environment"), "{text}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let errors = errors_for(&[
        ("SCALR_AGENT_CONCURRENCY", "-1"),
        ("SCALR_AGENT_DEBUG", "maybe"),
        ("SCALR_URL", "ftp://x"),
    ]);
    assert_eq!(errors.0.len(), 3, "{errors}");
    assert!(
        errors
            .to_string()
            .starts_with("invalid configuration (3 problems):")
    );
}

#[test]
fn booleans_accept_true_false_1_0_in_any_case() {
    for (value, want) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("false", false),
        ("0", false),
        ("False", false),
    ] {
        let s = Settings::from_pairs(&[("SCALR_AGENT_DEBUG", value)]).expect("valid");
        assert_eq!(s.debug, want, "{value}");
    }
}

#[test]
fn loopback_may_use_plain_http_and_trailing_slash_is_dropped() {
    let s = Settings::from_pairs(&[("SCALR_URL", "http://127.0.0.1:8080/")]).expect("valid");
    assert_eq!(s.url.as_deref(), Some("http://127.0.0.1:8080"));
    let s = Settings::from_pairs(&[("HTTPS_PROXY", "http://proxy.corp:3128")]).expect("valid");
    assert_eq!(s.proxy.https.as_deref(), Some("http://proxy.corp:3128"));
}

#[test]
fn token_sources_and_their_conflicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "  file-token-value-123\n").expect("write");
    let path = file.to_str().expect("utf8 path");

    let s = Settings::from_pairs(&[("SCALR_AGENT_TOKEN_FILE", path)]).expect("valid");
    assert_eq!(
        s.token.as_ref().map(Secret::expose),
        Some("file-token-value-123")
    );

    let s = Settings::from_pairs(&[("SCALR_TOKEN", "legacy-token-value-123")]).expect("valid");
    assert_eq!(
        s.token.as_ref().map(Secret::expose),
        Some("legacy-token-value-123")
    );
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("SCALR_TOKEN is deprecated"))
    );

    let errors = errors_for(&[
        ("SCALR_AGENT_TOKEN", "env-token-value-123"),
        ("SCALR_AGENT_TOKEN_FILE", path),
    ]);
    assert!(errors.mentions("SCALR_AGENT_TOKEN_FILE"), "{errors}");

    // A --token-file flag overrides a token from the environment.
    let env = |name: &str| (name == "SCALR_AGENT_TOKEN").then(|| "env-token-value-123".to_string());
    let flags = Flags(vec![("SCALR_AGENT_TOKEN_FILE", path.to_string())]);
    let s = Settings::validate(RawConfig::collect(&env, &flags)).expect("valid");
    assert_eq!(
        s.token.as_ref().map(Secret::expose),
        Some("file-token-value-123")
    );

    std::fs::write(&file, "\n").expect("write");
    assert!(
        errors_for(&[("SCALR_AGENT_TOKEN_FILE", path)])
            .to_string()
            .contains("empty")
    );
}

#[test]
fn secrets_never_appear_in_errors_or_effective_config() {
    let token = "tok-never-printed-98765";
    let errors = errors_for(&[("SCALR_AGENT_TOKEN", "tok never-printed")]);
    assert!(!errors.to_string().contains("never-printed"), "{errors}");
    let s = Settings::from_pairs(&[
        ("SCALR_AGENT_TOKEN", token),
        (
            "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
            r#"[{"url":"https://m.example/","token":"mirror-secret-4567"}]"#,
        ),
        ("HTTPS_PROXY", "http://user:proxy-pass-4567@proxy.corp:3128"),
    ])
    .expect("valid");
    let shown = format!("{:?} {:?}", s.effective(), s);
    assert!(
        !shown.contains(token) && !shown.contains("mirror-secret-4567"),
        "{shown}"
    );
    let printed = format!("{:?} {:?}", s.effective(), s);
    assert!(!printed.contains("proxy-pass-4567"), "{printed}");
    let (_, value, source) = s
        .effective()
        .into_iter()
        .find(|(n, _, _)| *n == "SCALR_AGENT_TOKEN")
        .expect("token row");
    assert_eq!(
        (value.as_str(), source.as_str()),
        ("***", "environment SCALR_AGENT_TOKEN")
    );
}

#[test]
fn require_platform_names_what_is_missing() {
    let s = Settings::from_pairs(&[]).expect("valid");
    let errors = s.require_platform().expect_err("missing both");
    assert!(
        errors.mentions("SCALR_URL") && errors.mentions("SCALR_AGENT_TOKEN"),
        "{errors}"
    );
    let s = Settings::from_pairs(&[
        ("SCALR_URL", "https://a.scalr.io"),
        ("SCALR_AGENT_TOKEN", "abcdefgh"),
    ])
    .expect("valid");
    assert_eq!(
        s.require_platform()
            .map(|(u, _)| u.to_string())
            .ok()
            .as_deref(),
        Some("https://a.scalr.io")
    );
}

#[test]
fn mirrors_and_tls_pairs() {
    let s = Settings::from_pairs(&[(
        "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS",
        r#"[{"url":"https://m.example/p","include":["registry.terraform.io/hashicorp/*"]}]"#,
    )])
    .expect("valid");
    assert_eq!(s.network_mirrors[0].url, "https://m.example/p/");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("c.pem");
    std::fs::write(&cert, "x").expect("write");
    let errors = errors_for(&[("SCALR_AGENT_TLS_CERT_FILE", cert.to_str().expect("utf8"))]);
    assert!(errors.mentions("SCALR_AGENT_TLS_KEY_FILE"), "{errors}");
}

#[test]
fn metrics_port_is_off_by_default_and_takes_a_port_or_an_address() {
    assert_eq!(Settings::from_pairs(&[]).expect("valid").metrics_addr, None);
    let cases = [
        ("9090", Some("0.0.0.0:9090")),
        ("127.0.0.1:9464", Some("127.0.0.1:9464")),
        ("[::1]:9090", Some("[::1]:9090")),
        ("0", None),
        ("http://x:1", None),
        ("70000", None),
    ];
    for (value, want) in cases {
        let got = Settings::from_pairs(&[("SCALR_AGENT_METRICS_PORT", value)]);
        match want {
            Some(addr) => assert_eq!(
                got.expect("valid")
                    .metrics_addr
                    .map(|a| a.to_string())
                    .as_deref(),
                Some(addr),
                "{value}"
            ),
            None => assert!(
                got.expect_err(value).mentions("SCALR_AGENT_METRICS_PORT"),
                "{value}"
            ),
        }
    }
}
