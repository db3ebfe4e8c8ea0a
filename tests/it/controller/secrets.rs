//! No token in any log line, Event or `render` output; `check` against both simulators.

use std::process::Command;

use serde_json::{Value, json};

use super::world::{BIN, NS, TEMPLATE, WAIT, World, container, running, waiting};
use crate::support::kube_sim::{Credential, Propagation};
use crate::support::platform_sim::RunStatus;
use scalr_agent::permissions::{CONTROLLER_PERMISSIONS, controller_access_checks};
use scalr_agent::platform::{ResourceCounts, TaskResult};

fn run_binary(world: &World, args: &[&str], kubeconfig: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", kubeconfig)
        .env("SCALR_URL", world.platform.url())
        .env("SCALR_AGENT_TOKEN", &world.pool.token)
        .env("SCALR_AGENT_NAME", "ctl-0")
        .env("SCALR_AGENT_KUBERNETES_NAMESPACE", NS)
        .env("SCALR_AGENT_KUBERNETES_TASK_TEMPLATE", TEMPLATE)
        .env("SCALR_AGENT_DEBUG", "true")
        .output()
        .expect("run scalr-agent");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn no_token_in_any_log_line_event_or_render_output() {
    let world = World::quick();
    let mut controller = world.spawn_binary("ctl-0", 4, &[]);
    let runs = world.queue(3);
    let tasks: Vec<String> = runs.iter().map(|r| world.task_of(r)).collect();
    let jobs: Vec<Value> = tasks.iter().map(|t| world.job_of(t)).collect();
    let mut tokens = vec![
        world.pool.token.clone(),
        world.kube.admin_token().to_string(),
    ];
    for (task, run) in tasks.iter().zip(&runs) {
        tokens.extend(world.platform.task_token(task));
        tokens.push(world.platform.run_token(run));
    }
    let agent = world
        .platform
        .agents()
        .into_iter()
        .find(|a| a.name == "ctl-0")
        .expect("registered");
    tokens.push(world.platform.session_token(&agent.id));

    // One fails (its message goes to the platform, an Event and the log), one is cancelled, one
    // runs to its end.
    world.pod(
        &jobs[0],
        json!({"phase": "Pending", "containerStatuses": [
            container("worker", waiting("InvalidImageName", "bad reference"), false)]}),
    );
    world.platform.cancel_run(&runs[1]);
    world.pod_with_worker(&jobs[2], running(), true);
    let worker = world.worker(&tasks[2], &jobs[2]);
    worker.start().expect("start");
    worker
        .finish(&TaskResult::finished(
            false,
            ResourceCounts::default(),
            "No changes.",
        ))
        .expect("finish");
    world
        .platform
        .wait_for_run(&runs[0], WAIT, |s| s == RunStatus::Errored);
    world
        .platform
        .wait_for_run(&runs[1], WAIT, |s| s == RunStatus::Canceled);
    // Events are written asynchronously after the platform is told: wait for the TaskFailed one
    // before stopping the controller.
    let seen = world.kube.wait_until(WAIT, |k| {
        serde_json::to_string(&k.list("events", NS))
            .expect("json")
            .contains("TaskFailed")
    });
    assert!(seen, "no TaskFailed Event\n{}", controller.log());
    controller.signal(libc::SIGTERM);
    assert_eq!(controller.wait_exit(WAIT), Some(0), "{}", controller.log());

    let log = controller.log();
    assert!(
        log.contains("launched Job") && log.contains("failed on the platform"),
        "{log}"
    );
    let events = serde_json::to_string(&world.kube.list("events", NS)).expect("json");
    let kubeconfig = world.dir.path().join("kubeconfig");
    let (code, rendered) = run_binary(&world, &["render"], kubeconfig.to_str().expect("utf8"));
    assert_eq!(code, Some(0), "{rendered}");
    assert!(
        rendered.contains("kind: Job") && rendered.contains("***"),
        "{rendered}"
    );
    let (_, checked) = run_binary(&world, &["check"], kubeconfig.to_str().expect("utf8"));
    for token in &tokens {
        assert!(token.len() >= 8, "a real token: {token}");
        for (what, text) in [
            ("log", &log),
            ("Events", &events),
            ("render", &rendered),
            ("check", &checked),
        ] {
            assert!(!text.contains(token.as_str()), "a token reached the {what}");
        }
    }
}

#[test]
fn check_passes_against_the_simulators_and_names_what_is_missing() {
    let world = World::new();
    let kubeconfig = world.dir.path().join("kubeconfig");
    world.kube.write_kubeconfig(
        world.dir.path(),
        &Credential::Token(world.kube.admin_token().to_string()),
        NS,
    );
    let (code, report) = run_binary(&world, &["check"], kubeconfig.to_str().expect("utf8"));
    assert_eq!(code, Some(0), "{report}");
    for line in [
        "PASS platform credential",
        "PASS kubernetes credential",
        "PASS task template: AgentTaskTemplate prod-scalr-agent-task-template in namespace ci is valid",
    ] {
        assert!(report.contains(line), "{line}: {report}");
    }
    assert_eq!(
        report.matches("PASS permission").count(),
        controller_access_checks().len(),
        "{report}"
    );
    let checker = world
        .platform
        .agents()
        .into_iter()
        .find(|a| a.name == "ctl-0-check")
        .expect("the check registered an agent");
    assert_eq!(format!("{:?}", checker.presence), "Deregistered");

    // With RBAC: a Role that lacks one verb, and no template.
    world.kube.enable_rbac();
    let sa = world.kube.add_service_account_token(NS, "agent");
    let rules: Vec<Value> = CONTROLLER_PERMISSIONS
        .iter()
        .map(|p| {
            let verbs: Vec<&str> = p
                .verbs
                .iter()
                .copied()
                .filter(|v| !(p.resource == "jobs" && *v == "delete"))
                .collect();
            json!({"apiGroups": [p.group], "resources": [p.resource], "verbs": verbs})
        })
        .collect();
    world.kube.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "agent", "namespace": NS}, "rules": rules}),
    );
    world.kube.put(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "agent", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": NS}]}),
    );
    world
        .kube
        .delete("agenttasktemplates", NS, TEMPLATE, Propagation::Background);
    let sa_config = world.kubeconfig("sa", &Credential::Token(sa));
    let (code, report) = run_binary(&world, &["check"], sa_config.to_str().expect("utf8"));
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("FAIL permission: may not delete batch/jobs in namespace ci")
            && report.contains("verbs [\"delete\"]"),
        "{report}"
    );
    assert_eq!(
        report.matches("PASS permission").count(),
        controller_access_checks().len() - 1,
        "{report}"
    );
    assert!(
        report.contains("FAIL task template") && report.contains("not found in namespace ci"),
        "{report}"
    );
}
