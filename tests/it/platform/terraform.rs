//! Real terraform (1.15.5, `scripts/install-tools.sh`) against the simulator's state backend, the way
//! the worker will point it there: the `http` backend with the task document's addresses, username
//! `token` and the run token as password. It writes state, locks and unlocks, is refused while another
//! holder has the lock, and is locked out with a wrong or expired run token.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use scalr_agent::platform::{ResourceCounts, StateBackend, TaskResult};

use super::fixture::fixture;
use crate::support::platform_sim::Route;

const MAIN_TF: &str = r#"
terraform {
  backend "http" {}
}

resource "terraform_data" "greeting" {
  input = "hello"
}

output "greeting" {
  value = terraform_data.greeting.output
}
"#;

fn terraform_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/tools/bin/terraform");
    if !bin.exists() {
        let status = Command::new(root.join("scripts/install-tools.sh"))
            .status()
            .expect("run scripts/install-tools.sh");
        assert!(status.success(), "scripts/install-tools.sh failed");
    }
    bin
}

struct Terraform {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Terraform {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("main.tf"), MAIN_TF).expect("write main.tf");
        std::fs::write(dir.path().join("empty.tfrc"), "").expect("write cli config");
        Terraform {
            bin: terraform_binary(),
            dir,
        }
    }

    fn run(&self, backend: &StateBackend, password: &str, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("empty.tfrc"))
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_HTTP_ADDRESS", &backend.address)
            .env("TF_HTTP_LOCK_ADDRESS", &backend.lock_address)
            .env("TF_HTTP_UNLOCK_ADDRESS", &backend.unlock_address)
            .env("TF_HTTP_LOCK_METHOD", &backend.lock_method)
            .env("TF_HTTP_UNLOCK_METHOD", &backend.unlock_method)
            .env("TF_HTTP_USERNAME", &backend.username)
            .env("TF_HTTP_PASSWORD", password)
            .env("TF_HTTP_RETRY_MAX", "0")
            .output()
            .expect("run terraform")
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn terraform_writes_state_through_the_simulator_with_locking() {
    let f = fixture();
    let agent = f.agent("controller-0", 1);
    let (run, worker, spec) = f.started(&agent);
    let backend = &spec.state_backend;
    let token = spec.run_token.expose();
    let tf = Terraform::new();

    let init = tf.run(backend, token, &["init", "-input=false", "-no-color"]);
    assert!(
        init.status.success(),
        "init failed\n{}\n{}",
        text(&init),
        f.sim.dump()
    );
    let apply = tf.run(
        backend,
        token,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    );
    assert!(
        apply.status.success(),
        "apply failed\n{}\n{}",
        text(&apply),
        f.sim.dump()
    );

    let versions = f.sim.state_versions(&f.ws);
    let state: serde_json::Value =
        serde_json::from_slice(&f.sim.state(&f.ws).expect("a state was written"))
            .expect("state JSON");
    assert_eq!(state["resources"][0]["type"], "terraform_data", "{state}");
    assert_eq!(state["outputs"]["greeting"]["value"], "hello");
    assert_eq!(f.sim.state_lock(&f.ws), None, "terraform unlocked");
    for route in [
        Route::StateLock,
        Route::StateUnlock,
        Route::StatePost,
        Route::StateGet,
    ] {
        let seen = f.sim.requests_of(route);
        assert!(
            !seen.is_empty() && seen.iter().all(|r| r.status.is_some_and(|s| s < 300)),
            "{route:?}: {seen:?}"
        );
    }

    // Someone else holds the lock: terraform is refused and names the holder.
    f.sim.lock_state(&f.ws, "held-by-someone-else");
    let plan = tf.run(
        backend,
        token,
        &["plan", "-input=false", "-no-color", "-lock-timeout=0s"],
    );
    assert!(
        !plan.status.success(),
        "plan ran under someone else's lock\n{}",
        text(&plan)
    );
    assert!(
        text(&plan).contains("held-by-someone-else"),
        "{}",
        text(&plan)
    );
    assert!(
        f.sim
            .requests_of(Route::StateLock)
            .iter()
            .any(|r| r.status == Some(423))
    );

    // Unlocked again, the state read back matches the configuration: no changes.
    f.sim.unlock_state(&f.ws);
    let plan = tf.run(
        backend,
        token,
        &["plan", "-input=false", "-no-color", "-detailed-exitcode"],
    );
    assert_eq!(
        plan.status.code(),
        Some(0),
        "expected no changes\n{}",
        text(&plan)
    );

    // A wrong token is refused.
    let wrong = tf.run(
        backend,
        &"x".repeat(48),
        &["plan", "-input=false", "-no-color"],
    );
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(text(&wrong).contains("requires auth"), "{}", text(&wrong));

    // Once the run is over, its token no longer opens the state.
    let counts = ResourceCounts::default();
    worker
        .finish(&TaskResult::finished(false, counts, "No changes."))
        .expect("finish");
    assert!(f.sim.run(&run).status.is_final());
    let late = tf.run(backend, token, &["plan", "-input=false", "-no-color"]);
    assert!(!late.status.success(), "{}", text(&late));
    assert_eq!(
        f.sim.state_versions(&f.ws),
        versions,
        "only the apply wrote state"
    );
}
