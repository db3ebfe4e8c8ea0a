//! Real Terraform (1.15.5, from `scripts/install-tools.sh`) against our files and caches: the `h1:`
//! hash we compute equals the one `terraform init` writes into the lock file, a second run installs
//! the provider from the mirror we published using the CLI configuration we write, and the backend
//! override stores state on a real HTTP backend with the run token only in the environment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use base64::Engine;
use scalr_agent::config::ProviderCache as Settings;
use scalr_agent::secret::Secret;
use scalr_agent::worker::provider_cache::{PackageId, ProviderCache, dirhash, lock_file};
use scalr_agent::worker::tf_config::{self, CliConfig, HttpBackend, TokenPlacement};

use crate::support::http_server::{HttpRequest, HttpResponse, Responder, TestServer};

/// The tools directory, installing the tools first if needed (cached).
fn tools() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/install-tools.sh"))
        .output()
        .expect("run install-tools.sh");
    assert!(out.status.success(), "install-tools.sh: {}", text(&out));
    root.join("target/tools")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn terraform(dir: &Path, cli_config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(tools().join("bin/terraform"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("TF_CLI_CONFIG_FILE", cli_config)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run terraform")
}

const NULL: &str = "registry.terraform.io/hashicorp/null";

fn null_config(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("main.tf"),
        "terraform {\n  required_providers {\n    null = { source = \"hashicorp/null\", version = \"2.1.2\" }\n  }\n}\nresource \"null_resource\" \"x\" {}\n",
    )
    .expect("write main.tf");
}

fn locked_h1(run: &Path) -> String {
    let text = std::fs::read_to_string(run.join(".terraform.lock.hcl")).expect("lock file");
    let providers = lock_file::parse(&text).expect("parse lock file");
    let null = providers
        .iter()
        .find(|p| p.address == NULL)
        .expect("null provider locked");
    null.h1_hashes().next().expect("an h1 hash").to_string()
}

#[test]
fn provider_cache_hash_matches_terraform_and_terraform_installs_from_the_mirror() {
    let origin = tools().join("providers");
    let t = tempfile::tempdir().expect("tempdir");

    // Run 1 installs from the origin mirror into its own plugin cache.
    let run1 = t.path().join("run1");
    let plugins1 = t.path().join("plugins1");
    std::fs::create_dir_all(&plugins1).expect("mkdir");
    null_config(&run1);
    let cli1 = t.path().join("cli1.tfrc");
    std::fs::write(
        &cli1,
        format!(
            "plugin_cache_dir = {}\nprovider_installation {{\n  filesystem_mirror {{\n    path = {}\n  }}\n}}\n",
            tf_config::hcl_string(plugins1.to_str().expect("utf8")),
            tf_config::hcl_string(origin.to_str().expect("utf8")),
        ),
    )
    .expect("write cli config");
    let out = terraform(&run1, &cli1, &["init", "-input=false", "-no-color"], &[]);
    assert!(out.status.success(), "init 1: {}", text(&out));
    let terraform_h1 = locked_h1(&run1);

    let cache_dir = t.path().join("cache");
    let settings = Settings {
        enabled: true,
        size_limit_mb: 200,
        concurrency: 2,
    };
    let cache = ProviderCache::new(&cache_dir, &settings);
    let report = cache
        .publish(
            &plugins1,
            &run1.join(".terraform.lock.hcl"),
            std::slice::from_ref(&origin),
        )
        .expect("publish");
    let null = PackageId {
        address: NULL.into(),
        version: "2.1.2".into(),
        platform: "linux_amd64".into(),
    };
    assert_eq!(report.published, std::slice::from_ref(&null), "{report:?}");
    let package = cache.mirror_dir().join(NULL).join("2.1.2/linux_amd64");
    assert_eq!(
        dirhash::hash_dir(&package).expect("hash"),
        terraform_h1,
        "our h1 must be Terraform's"
    );

    // Run 2 uses the CLI configuration we write: only the shared mirror, no network.
    let run2 = t.path().join("run2");
    let plugins2 = t.path().join("plugins2");
    std::fs::create_dir_all(&plugins2).expect("mkdir");
    null_config(&run2);
    let cli2 = t.path().join("cli2.tfrc");
    std::fs::write(
        &cli2,
        tf_config::cli_config(&CliConfig {
            filesystem_mirror: Some(cache.mirror_dir()),
            network_mirrors: &[],
            direct: false,
            plugin_cache_dir: Some(&plugins2),
            tokens: TokenPlacement::Env,
        }),
    )
    .expect("write cli config");
    let out = terraform(&run2, &cli2, &["init", "-input=false", "-no-color"], &[]);
    assert!(out.status.success(), "init 2: {}", text(&out));
    assert_eq!(locked_h1(&run2), terraform_h1);
    let installed = std::fs::canonicalize(plugins2.join(NULL).join("2.1.2/linux_amd64"))
        .expect("installed in the run's plugin cache");
    assert_eq!(
        installed,
        std::fs::canonicalize(&package).expect("package"),
        "installed from our mirror"
    );
    let report = cache
        .publish(&plugins2, &run2.join(".terraform.lock.hcl"), &[])
        .expect("publish again");
    assert!(report.published.is_empty());
    assert_eq!(report.present, [null]);
}

/// A minimal Terraform `http` state backend with basic auth and locking.
#[derive(Default)]
struct StateStore {
    state: Option<Vec<u8>>,
    locked: bool,
    log: Vec<String>,
}

#[test]
fn backend_override_keeps_state_on_the_http_backend_and_the_token_out_of_files() {
    let token = format!("run-token-{:x}", std::process::id() as u64 * 0x9e37_79b9);
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("run-1:{token}"))
    );
    let store = Arc::new(Mutex::new(StateStore::default()));
    let handler_store = store.clone();
    let server = TestServer::start(Arc::new(
        move |req: &HttpRequest, out: &mut Responder<'_>| {
            let mut s = handler_store.lock().expect("store");
            let authorized = req.header("authorization") == Some(expected_auth.as_str());
            s.log
                .push(format!("{} {} auth={authorized}", req.method, req.path));
            let response = if !authorized {
                HttpResponse::new(401, "text/plain", "unauthorized")
            } else {
                match (req.method.as_str(), req.path.as_str()) {
                    ("GET", "/state") => match &s.state {
                        Some(body) => HttpResponse::new(200, "application/json", body.clone()),
                        None => HttpResponse::empty(404),
                    },
                    ("POST", "/state") => {
                        s.state = Some(req.body.clone());
                        HttpResponse::empty(200)
                    }
                    ("LOCK", "/state/lock") if s.locked => HttpResponse::empty(423),
                    ("LOCK", "/state/lock") => {
                        s.locked = true;
                        HttpResponse::empty(200)
                    }
                    ("UNLOCK", "/state/lock") => {
                        s.locked = false;
                        HttpResponse::empty(200)
                    }
                    _ => HttpResponse::empty(405),
                }
            };
            let _ = out.respond(response);
        },
    ));

    let t = tempfile::tempdir().expect("tempdir");
    let run = t.path().join("run");
    std::fs::create_dir_all(&run).expect("mkdir");
    // The user's configuration declares another backend: the override must win.
    std::fs::write(
        run.join("main.tf"),
        "terraform {\n  backend \"local\" {}\n}\nresource \"terraform_data\" \"x\" {\n  input = \"hello\"\n}\noutput \"x\" {\n  value = terraform_data.x.output\n}\n",
    )
    .expect("write main.tf");
    let state_url = format!("{}/state", server.url());
    let lock_url = format!("{state_url}/lock");
    std::fs::write(
        run.join(tf_config::BACKEND_OVERRIDE_FILE),
        tf_config::backend_override(&HttpBackend {
            address: &state_url,
            lock_address: &lock_url,
            unlock_address: &lock_url,
            username: "run-1",
        }),
    )
    .expect("write override");
    let cli = t.path().join("cli.tfrc");
    std::fs::write(
        &cli,
        tf_config::cli_config(&CliConfig {
            filesystem_mirror: None,
            network_mirrors: &[],
            direct: false,
            plugin_cache_dir: None,
            tokens: TokenPlacement::Env,
        }),
    )
    .expect("write cli config");

    // Without the token the backend refuses.
    let out = terraform(
        &run,
        &cli,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
        &[],
    );
    assert!(!out.status.success(), "apply without a token must fail");

    let env = tf_config::backend_env(&Secret::new(token.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.expose())).collect();
    let out = terraform(
        &run,
        &cli,
        &["init", "-input=false", "-no-color", "-reconfigure"],
        &env,
    );
    assert!(out.status.success(), "init: {}", text(&out));
    let out = terraform(
        &run,
        &cli,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
        &env,
    );
    assert!(out.status.success(), "apply: {}", text(&out));

    let s = store.lock().expect("store");
    let state = String::from_utf8_lossy(s.state.as_deref().expect("state stored"));
    assert!(state.contains("terraform_data"), "{state}");
    assert!(!s.locked, "unlocked after apply");
    let log = s.log.join("\n");
    assert!(log.contains("LOCK /state/lock auth=true"), "{log}");
    assert!(log.contains("UNLOCK /state/lock auth=true"), "{log}");
    assert!(log.contains("POST /state auth=true"), "{log}");
    assert!(!run.join("terraform.tfstate").exists(), "no local state");

    // The token is in no file Terraform or we wrote.
    let mut stack = vec![t.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).expect("read");
                assert!(
                    !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                    "the run token was written to {}",
                    path.display()
                );
            }
        }
    }
}
