//! The run log: a 50 MB log arrives complete and in order although appends fail and responses get
//! lost on the way; no token and no sensitive value reaches any log — the platform's run log, the
//! final message, the worker's and exec-loop's own logs.

use super::*;
use crate::support::platform_sim::{Fault, Route, SimVariable};

#[test]
fn a_50_mb_log_arrives_complete_and_in_order_despite_failed_appends() {
    let world = world();
    let cv = world.cv(&[("main.tf", "")]);
    let lines: u64 = 6_500_000;
    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    spec.hooks.pre_plan = Some(format!("seq 1 {lines}"));
    world.sim.inject(Route::AppendLog, 5, Fault::LoseResponse);
    world.sim.inject(Route::AppendLog, 2, Fault::Drop);
    world.sim.inject(Route::AppendLog, 2, Fault::server_error());
    world.sim.inject(Route::AppendLog, 1, Fault::unavailable(1));
    let (run, pods) = world.run_to_end(spec, &PodOptions::default());
    assert_eq!(world.sim.pending_faults(), 0, "every fault was used");
    let log = world.log(&run, Stage::Plan);
    assert!(log.len() > 50_000_000, "{} bytes", log.len());
    let body = section(&log, "==> Running the pre-plan hook");
    let mut expected = 1u64;
    for line in body.lines().take_while(|l| !l.starts_with("==> ")) {
        assert_eq!(line, expected.to_string(), "line {expected}");
        expected += 1;
    }
    assert_eq!(expected, lines + 1, "every line, once");
    position(&log, "==> No changes.");
    let shipping = pods[0]
        .worker_log()
        .lines()
        .find(|l| l.contains("log shipping:"))
        .map(str::to_string)
        .expect("shipping summary");
    assert!(!shipping.contains("(0 retried)"), "{shipping}");
}

const SECRET_TF: &str = r#"
variable "api_key" {
  type      = string
  sensitive = true
}

resource "terraform_data" "x" {
  provisioner "local-exec" {
    command = "echo local-exec db=$DB_PASSWORD"
  }
}

output "leak" {
  value = nonsensitive(var.api_key)
}
"#;

const DB_PASSWORD: &str = "s3cret-db-password-value";
const API_KEY: &str = "the-api-key-value-0123";

#[test]
fn no_token_or_sensitive_value_reaches_any_log() {
    let world = world();
    let cv = world.cv(&[("main.tf", SECRET_TF)]);
    let mut spec = RunSpec::new(&cv);
    spec.variables = vec![
        SimVariable::shell("DB_PASSWORD", DB_PASSWORD).sensitive(),
        SimVariable::terraform("api_key", API_KEY).sensitive(),
    ];
    spec.hooks.pre_plan = Some(
        "echo db=$DB_PASSWORD key=$TF_VAR_api_key token=$SCALR_TOKEN http=$TF_HTTP_PASSWORD; \
         printf 'partial=s3cret-db-'; sleep 1; printf 'password-value tail\\n'"
            .into(),
    );
    spec.hooks.post_apply = Some("echo post db=$DB_PASSWORD".into());
    let (run, pods) = world.run_to_end(spec.clone(), &PodOptions::default());
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);
    let run_token = world.sim.run_token(&run);

    // A failing hook whose error names the secret: the final message is masked too.
    let mut failing = spec;
    failing.hooks.pre_plan =
        Some("echo \"Error: login failed for $DB_PASSWORD\" >&2; exit 1".into());
    let (failed_run, failed_pods) = world.run_to_end(failing, &PodOptions::default());
    let message = world.sim.run(&failed_run).message.expect("message");
    assert!(message.contains("Error: login failed for ***"), "{message}");

    let plan = world.log(&run, Stage::Plan);
    position(&plan, "db=*** key=*** token=*** http=***");
    position(&plan, "partial=*** tail");
    position(&plan, "leak = \"***\"");
    position(&world.log(&run, Stage::Apply), "post db=***");
    let mut texts = vec![
        ("plan log", plan.clone()),
        ("apply log", world.log(&run, Stage::Apply)),
        ("failed plan log", world.log(&failed_run, Stage::Plan)),
        ("failed message", message),
    ];
    let mut secrets = vec![DB_PASSWORD.to_string(), API_KEY.to_string(), run_token];
    for pod in pods.iter().chain(&failed_pods) {
        secrets.push(pod.token.clone());
        texts.push(("worker log", pod.worker_log()));
        texts.push(("exec-loop log", pod.exec_loop_log()));
    }
    secrets.push(world.sim.run_token(&failed_run));
    for (name, text) in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret in the {name}:\n{text}"
            );
        }
    }
}
