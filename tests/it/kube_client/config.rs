//! Each configuration form reaches the simulator and authenticates as the right user; the token
//! file is re-read when it rotates.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use scalr_agent::http::HttpOptions;
use scalr_agent::kube::{
    Api, Auth, Client, ConfigError, Explicit, KubeConfig, KubeEnv, KubeError, ListParams, Origin,
    TokenFile,
};

use super::{NS, dump, eventually, sim};
use crate::support::kube_sim::{Credential, KubeSim};

fn env_with_kubeconfig(path: &Path) -> KubeEnv {
    KubeEnv {
        kubeconfig: Some(path.display().to_string()),
        service_account_dir: "/nonexistent".into(),
        ..KubeEnv::default()
    }
}

/// Lists Jobs in `ci` and returns the user the simulator saw.
fn list_as(sim: &KubeSim, config: &KubeConfig) -> String {
    let served = |s: &KubeSim| {
        s.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.status == 200)
            .collect::<Vec<_>>()
    };
    let before = served(sim).len();
    let client = Client::new(config, &HttpOptions::default()).expect("client");
    Api::<Job>::default_namespaced(&client)
        .list(&ListParams::default())
        .unwrap_or_else(|e| panic!("list: {e}\n{}", dump(sim)));
    eventually(sim, "the list is logged", |s| served(s).len() > before);
    served(sim)
        .last()
        .and_then(|r| r.user.clone())
        .unwrap_or_default()
}

fn service_account_dir(sim: &KubeSim, dir: &Path, token: &str) {
    std::fs::write(dir.join("token"), token).expect("token");
    std::fs::write(dir.join("ca.crt"), sim.ca_pem().expect("tls")).expect("ca");
    std::fs::write(dir.join("namespace"), NS).expect("namespace");
}

fn in_cluster_env(sim: &KubeSim, dir: &Path) -> KubeEnv {
    let port = sim.url().rsplit(':').next().unwrap_or_default().to_string();
    KubeEnv {
        service_host: Some("127.0.0.1".into()),
        service_port: Some(port),
        service_account_dir: dir.to_path_buf(),
        ..KubeEnv::default()
    }
}

#[test]
fn kubeconfig_with_a_token_and_ca_data() {
    let sim = sim();
    let token = sim.add_service_account_token(NS, "agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sim.write_kubeconfig(dir.path(), &Credential::Token(token), NS);
    let config =
        KubeConfig::discover(&env_with_kubeconfig(&path), &Explicit::default()).expect("config");
    assert!(matches!(config.origin, Origin::Kubeconfig { .. }));
    assert_eq!(config.namespace, NS);
    assert_eq!(list_as(&sim, &config), "system:serviceaccount:ci:agent");
}

#[test]
fn kubeconfig_with_client_certificate_data() {
    let sim = sim();
    let leaf = sim.client_cert("alice", &["system:masters"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sim.write_kubeconfig(dir.path(), &Credential::ClientCert(leaf), NS);
    let config =
        KubeConfig::discover(&env_with_kubeconfig(&path), &Explicit::default()).expect("config");
    assert!(matches!(config.auth, Auth::None));
    assert_eq!(list_as(&sim, &config), "alice");
}

#[test]
fn kubeconfig_with_files_relative_to_it_and_a_token_file() {
    let sim = sim();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("pki")).expect("pki dir");
    std::fs::write(dir.path().join("pki/ca.pem"), sim.ca_pem().expect("tls")).expect("ca");
    let leaf = sim.client_cert("bob", &["system:masters"]);
    std::fs::write(dir.path().join("pki/bob.pem"), &leaf.cert_pem).expect("cert");
    std::fs::write(dir.path().join("pki/bob.key"), &leaf.key_pem).expect("key");
    let kubeconfig = |user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: other\n\
             clusters:\n- name: sim\n  cluster:\n    server: {}\n    certificate-authority: pki/ca.pem\n\
             contexts:\n- name: other\n  context: {{cluster: sim, user: nobody}}\n\
             - name: chosen\n  context: {{cluster: sim, user: u, namespace: {NS}}}\n\
             users:\n- name: u\n  user:\n{user}",
            sim.url()
        )
    };
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        kubeconfig("    client-certificate: pki/bob.pem\n    client-key: pki/bob.key\n"),
    )
    .expect("kubeconfig");
    let explicit = Explicit {
        kubeconfig: Some(path.clone()),
        context: Some("chosen".into()),
        ..Explicit::default()
    };
    let config = KubeConfig::discover(&KubeEnv::default(), &explicit).expect("config");
    assert_eq!(list_as(&sim, &config), "bob");

    let token = sim.add_service_account_token(NS, "from-file");
    std::fs::write(dir.path().join("pki/token"), format!("{token}\n")).expect("token file");
    std::fs::write(&path, kubeconfig("    tokenFile: pki/token\n")).expect("kubeconfig");
    let config = KubeConfig::discover(&KubeEnv::default(), &explicit).expect("config");
    assert_eq!(list_as(&sim, &config), "system:serviceaccount:ci:from-file");
}

#[test]
fn kubeconfig_insecure_skip_tls_verify() {
    let sim = sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config");
    let write = |insecure: bool| {
        std::fs::write(
            &path,
            format!(
                "current-context: c\nclusters: [{{name: k, cluster: {{server: '{}', insecure-skip-tls-verify: {insecure}}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u, namespace: {NS}}}}}]\n\
                 users: [{{name: u, user: {{token: '{}'}}}}]\n",
                sim.url(),
                sim.admin_token()
            ),
        )
        .expect("kubeconfig")
    };
    write(true);
    let config =
        KubeConfig::discover(&env_with_kubeconfig(&path), &Explicit::default()).expect("config");
    assert_eq!(list_as(&sim, &config), "kube-sim-admin");
    write(false);
    let config =
        KubeConfig::discover(&env_with_kubeconfig(&path), &Explicit::default()).expect("config");
    let client = Client::new(&config, &HttpOptions::default()).expect("client");
    let err = Api::<Job>::default_namespaced(&client)
        .list(&ListParams::default())
        .expect_err("not trusted without the CA");
    assert!(matches!(err, KubeError::Transport(_)), "{err:?}");
}

#[test]
fn kubeconfig_with_an_exec_plugin_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        "current-context: eks\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: eks, context: {cluster: k, user: u}}]\n\
         users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: aws}}}]\n",
    )
    .expect("kubeconfig");
    let err =
        KubeConfig::discover(&env_with_kubeconfig(&path), &Explicit::default()).expect_err("exec");
    assert!(matches!(err, ConfigError::Kubeconfig { .. }));
    let text = err.to_string();
    assert!(
        text.contains("exec plugin \"aws\"") && text.contains("token"),
        "{text}"
    );
}

#[test]
fn in_cluster_service_account() {
    let sim = sim();
    let token = sim.add_service_account_token(NS, "controller");
    let dir = tempfile::tempdir().expect("tempdir");
    service_account_dir(&sim, dir.path(), &token);
    let config = KubeConfig::discover(&in_cluster_env(&sim, dir.path()), &Explicit::default())
        .expect("in-cluster");
    assert_eq!(
        (config.origin.clone(), config.namespace.as_str()),
        (Origin::InCluster, NS)
    );
    assert_eq!(
        list_as(&sim, &config),
        "system:serviceaccount:ci:controller"
    );
}

#[test]
fn explicit_flags() {
    let sim = sim();
    let token = sim.add_service_account_token(NS, "flags");
    let config = KubeConfig::discover(&KubeEnv::default(), &super::explicit(&sim, &token))
        .expect("explicit");
    assert_eq!(config.origin, Origin::Explicit);
    assert_eq!(list_as(&sim, &config), "system:serviceaccount:ci:flags");
}

#[test]
fn a_rotated_token_is_picked_up_after_a_401_without_failing_the_call() {
    let sim = sim();
    let old = sim.add_service_account_token(NS, "controller");
    let dir = tempfile::tempdir().expect("tempdir");
    service_account_dir(&sim, dir.path(), &old);
    let config = KubeConfig::discover(&in_cluster_env(&sim, dir.path()), &Explicit::default())
        .expect("in-cluster");
    let client = Client::new(&config, &HttpOptions::default()).expect("client");
    let jobs: Api<Job> = Api::default_namespaced(&client);
    jobs.list(&ListParams::default())
        .expect("with the first token");
    eventually(&sim, "the first call is logged", |s| {
        s.requests().len() == 1
    });

    // The kubelet writes a new token; the old one stops working. The cache (60 s) still holds the
    // old token, so the next call gets 401, re-reads the file and succeeds.
    let new = sim.add_service_account_token(NS, "controller");
    std::fs::write(dir.path().join("token"), &new).expect("rotate");
    sim.revoke_token(&old);
    sim.clear_requests();
    jobs.list(&ListParams::default())
        .expect("with the rotated token");
    eventually(&sim, "both calls are logged", |s| s.requests().len() == 2);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200], "{}", dump(&sim));

    // A revoked token that did not rotate stays a fatal 401, and is never printed.
    sim.revoke_token(&new);
    let err = jobs.list(&ListParams::default()).expect_err("revoked");
    assert!(matches!(err, KubeError::Unauthorized(_)), "{err:?}");
    assert!(!err.to_string().contains(&new) && !format!("{config:?}").contains(&new));
}

#[test]
fn a_stale_token_is_re_read_before_use() {
    let sim = sim();
    let old = sim.add_service_account_token(NS, "controller");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    std::fs::write(&path, &old).expect("token");
    let mut config = KubeConfig::explicit(&super::explicit(&sim, &old)).expect("config");
    // Refresh interval zero: every call re-reads the file (the default is 60 s).
    config.auth = Auth::TokenFile(TokenFile::with_refresh(&path, Duration::ZERO));
    let client = Client::new(&config, &HttpOptions::default()).expect("client");
    let jobs: Api<Job> = Api::default_namespaced(&client);
    jobs.list(&ListParams::default()).expect("first token");
    eventually(&sim, "the first call is logged", |s| {
        s.requests().len() == 1
    });
    let new = sim.add_service_account_token(NS, "rotated");
    std::fs::write(&path, &new).expect("rotate");
    sim.clear_requests();
    jobs.list(&ListParams::default()).expect("second token");
    eventually(&sim, "the call is logged", |s| s.requests().len() == 1);
    let seen: Vec<(u16, Option<String>)> = sim
        .requests()
        .iter()
        .map(|r| (r.status, r.user.clone()))
        .collect();
    assert_eq!(
        seen,
        [(200, Some("system:serviceaccount:ci:rotated".to_string()))]
    );
}
