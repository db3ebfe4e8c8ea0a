//! Providers: the first run installs the null provider from a network mirror named in
//! `SCALR_AGENT_PROVIDER_NETWORK_MIRRORS` (an HTTPS server speaking Terraform's network mirror
//! protocol, with a token) into its own `TF_PLUGIN_CACHE_DIR`; the worker then publishes the
//! verified package into the shared filesystem mirror, from which the next run installs it without
//! downloading it again.

use std::process::Command;
use std::sync::{Arc, Mutex};

use super::*;
use crate::support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};
use crate::support::pki::{self, ClientAuth, TestCa};

const NULL_TF: &str = r#"
terraform {
  required_providers {
    null = { source = "hashicorp/null", version = "2.1.2" }
  }
}

resource "null_resource" "x" {}
"#;

const MIRROR_TOKEN: &str = "mirror-token-for-worker-tests";
const BASE: &str = "/providers/registry.terraform.io/hashicorp/null/";
const ZIP: &str = "terraform-provider-null_2.1.2_linux_amd64.zip";

/// The null provider as the zip a network mirror serves.
fn provider_zip(dir: &Path) -> Vec<u8> {
    let source = crate::support::tools::tool("terraform")
        .parent()
        .and_then(Path::parent)
        .expect("tools dir")
        .join("providers/registry.terraform.io/hashicorp/null/2.1.2/linux_amd64");
    let zip = dir.join(ZIP);
    let out = Command::new("python3")
        .args(["-m", "zipfile", "-c"])
        .arg(&zip)
        .arg("terraform-provider-null_v2.1.2_x4")
        .current_dir(&source)
        .output()
        .expect("run python3 -m zipfile");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&zip).expect("read zip")
}

/// `(path, authorization header)` of every request a mirror received.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTPS network mirror recording every request.
fn mirror(zip: Vec<u8>, ca: &TestCa) -> (TestServer, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = Arc::new(move |req: &HttpRequest, out: &mut Responder<'_>| {
        let auth = req.header("authorization").unwrap_or_default().to_string();
        log.lock().expect("log").push((req.path.clone(), auth));
        let response = match req.path.strip_prefix(BASE) {
            Some("index.json") => {
                HttpResponse::json(200, &serde_json::json!({"versions": {"2.1.2": {}}}))
            }
            Some("2.1.2.json") => HttpResponse::json(
                200,
                &serde_json::json!({"archives": {"linux_amd64": {"url": ZIP}}}),
            ),
            Some(ZIP) => HttpResponse::new(200, "application/zip", zip.clone()),
            _ => HttpResponse::empty(404),
        };
        let _ = out.respond(response);
    });
    let config = pki::server_config(&ca.server_cert(), ClientAuth::None);
    (TestServer::start_tls(handler, config), seen)
}

#[test]
fn a_provider_from_the_network_mirror_is_published_and_the_next_run_uses_the_shared_mirror() {
    let world = world();
    let scratch = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("mirror-ca");
    let ca_file = scratch.path().join("ca.pem");
    fs::write(&ca_file, &ca.cert_pem).expect("write CA");
    let (server, seen) = mirror(provider_zip(scratch.path()), &ca);
    let mirrors = serde_json::json!([{
        "url": format!("{}/providers/", server.url()),
        "token": MIRROR_TOKEN,
        "include": ["registry.terraform.io/hashicorp/*"],
    }]);
    let options = PodOptions {
        worker_env: vec![(
            "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS".into(),
            mirrors.to_string(),
        )],
        exec_loop_env: vec![("SSL_CERT_FILE".into(), path_text(&ca_file))],
        ..PodOptions::default()
    };
    let cv = world.cv(&[("main.tf", NULL_TF)]);
    let zip_downloads = || {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|(p, _)| p.ends_with(ZIP))
            .count()
    };

    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    let (run, pods) = world.run_to_end(spec.clone(), &options);
    assert_eq!(
        world.sim.run(&run).status,
        RunStatus::PlannedAndFinished,
        "{}",
        pods[0].logs()
    );
    assert_eq!(zip_downloads(), 1);
    assert!(
        seen.lock()
            .expect("log")
            .iter()
            .filter(|(path, _)| path.ends_with(".json"))
            .all(|(_, auth)| auth == &format!("Bearer {MIRROR_TOKEN}")),
        "the mirror's token went with the protocol's requests (terraform sends none with the \
         archive): {:?}",
        seen.lock().expect("log")
    );
    let package =
        "registry.terraform.io/hashicorp/null/2.1.2/linux_amd64/terraform-provider-null_v2.1.2_x4";
    let run_dir = pods[0].data.join("runs").join(&pods[0].task);
    assert!(
        run_dir.join(".scalr/plugin-cache").join(package).is_file(),
        "per-run plugin cache"
    );
    assert!(
        world.cache.path().join("providers").join(package).is_file(),
        "published"
    );
    assert!(
        pods[0].worker_log().contains("provider cache: 1 published"),
        "{}",
        pods[0].logs()
    );

    let (run, pods) = world.run_to_end(spec, &options);
    assert_eq!(
        world.sim.run(&run).status,
        RunStatus::PlannedAndFinished,
        "{}",
        pods[0].logs()
    );
    assert_eq!(
        zip_downloads(),
        1,
        "the second run installed from the shared mirror"
    );
    assert!(
        pods[0].worker_log().contains("1 already present"),
        "{}",
        pods[0].logs()
    );
    for pod in &pods {
        assert!(!pod.worker_log().contains(MIRROR_TOKEN));
    }
    assert!(!world.log(&run, Stage::Plan).contains(MIRROR_TOKEN));
}
