//! A task becomes a Job with the right spec; the template is read live; a missing or invalid
//! template fails the task with what to fix.

use serde_json::json;

use super::world::{NS, TEMPLATE, World, template};
use crate::support::platform_sim::{RunStatus, TaskState};
use scalr_agent::controller::ControllerExit;

#[test]
fn a_task_becomes_a_job_with_the_right_spec_and_an_owned_secret() {
    let world = World::new();
    let controller = world.start("ctl-0", 2);
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let job = world.job_of(&task);
    let name = job["metadata"]["name"].as_str().expect("name").to_string();
    assert_eq!(name, format!("prod-scalr-agent-{run}-plan"));

    let labels = &job["metadata"]["labels"];
    for (key, want) in [
        ("scalr.io/task-id", task.as_str()),
        ("scalr.io/run-id", run.as_str()),
        ("scalr.io/stage", "plan"),
        ("scalr.io/workspace-id", world.ws.as_str()),
        ("scalr.io/controller", "ctl-0"),
        ("app.kubernetes.io/instance", "prod"),
        ("app.kubernetes.io/component", "task"),
        ("app.kubernetes.io/managed-by", "scalr-agent"),
    ] {
        assert_eq!(labels[key], want, "label {key}: {job:#}");
    }
    assert_eq!(job["metadata"]["annotations"]["scalr.io/attempt"], "1");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let worker = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "worker"))
        .expect("worker");
    let env = worker["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "SCALR_AGENT_TASK_ID" && e["value"] == task.as_str())
    );
    let runner = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "runner"))
        .expect("runner");
    assert!(
        runner["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().all(|m| m["name"] != "credentials")),
        "the runner gets no credentials"
    );

    // The Secret: the platform's token for this attempt, owned by the Job.
    let secret_name = format!("{name}-credentials");
    world.eventually("the Secret owned by its Job", |w| {
        w.kube
            .get("secrets", NS, &secret_name)
            .is_some_and(|s| s["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"])
    });
    assert_eq!(world.secret_token(&job), world.platform.task_token(&task));
    let view = world.platform.task(&task);
    assert_eq!(view.state, TaskState::Acquired);

    // An Event on the Job, the metrics, the ready marker.
    world.eventually("the launch Event", |w| {
        w.controller_events(&name)
            .iter()
            .any(|(reason, _)| reason == "TaskLaunched")
    });
    assert_eq!(controller.metrics.launcher_launched_total.get(), 1);
    assert_eq!(
        controller.metrics.launcher_launch_latency_seconds.count(),
        1
    );
    world.eventually("ready", |_| controller.ready());

    // Stopping deregisters and leaves the Job alone.
    assert_eq!(controller.stop(), ControllerExit::Stopped);
    assert_eq!(world.jobs_of(&task).len(), 1);
    assert!(
        world
            .kube
            .list("leases", NS)
            .iter()
            .all(|l| l["spec"]["holderIdentity"] != "ctl-0"),
        "the Lease is released on an orderly stop"
    );
}

#[test]
fn template_edits_apply_to_the_next_task_without_a_restart() {
    let world = World::new();
    let _controller = world.start("ctl-0", 10);
    let first = world.task_of(&world.queue(1)[0]);
    let job = world.job_of(&first);
    let image = |job: &serde_json::Value| {
        job["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "runner"))
            .map(|c| c["image"].clone())
    };
    assert_eq!(image(&job), Some(json!("scalr/runner:0.2.0")));

    let mut edited = world
        .kube
        .get("agenttasktemplates", NS, TEMPLATE)
        .expect("template");
    for c in edited["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
    {
        if c["name"] == "runner" {
            c["image"] = json!("scalr/runner:9.9.9");
        }
    }
    world.kube.put(edited);
    // The edit reaches the controller through its watch: some next task uses it, no restart.
    let mut applied = false;
    for _ in 0..50 {
        let task = world.task_of(&world.queue(1)[0]);
        if image(&world.job_of(&task)) == Some(json!("scalr/runner:9.9.9")) {
            applied = true;
            break;
        }
    }
    assert!(applied, "the edit never applied\n{}", world.kube.dump());
}

#[test]
fn a_missing_or_invalid_template_fails_the_task_with_what_to_fix() {
    let world = World::new();
    world.kube.delete(
        "agenttasktemplates",
        NS,
        TEMPLATE,
        crate::support::kube_sim::Propagation::Background,
    );
    let _controller = world.start("ctl-0", 2);
    let run = world.queue(1).remove(0);
    let view = world
        .platform
        .wait_for_run(&run, super::world::WAIT, |s| s == RunStatus::Errored);
    let message = view.message.unwrap_or_default();
    assert!(
        message.contains("task template invalid")
            && message.contains(TEMPLATE)
            && message.contains("not found in namespace ci"),
        "{message}"
    );
    assert!(world.jobs().is_empty());

    // An invalid one names the problem; once fixed, the next task runs, without a restart. The
    // watch brings each edit: keep queueing until a task shows it.
    let mut bad = template();
    bad["metadata"]["namespace"] = json!(NS);
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    world.kube.put(bad);
    until_a_task(
        &world,
        "fails for restartPolicy",
        |outcome| matches!(outcome, Outcome::Errored(m) if m.contains("restartPolicy is Always")),
    );
    let mut good = template();
    good["metadata"]["namespace"] = json!(NS);
    world.kube.put(good);
    until_a_task(&world, "gets a Job", |outcome| {
        matches!(outcome, Outcome::Job)
    });
}

/// What became of a task.
#[derive(Debug)]
enum Outcome {
    Job,
    Errored(String),
}

/// Queues runs one by one until a task's outcome satisfies `want` (at most 50).
fn until_a_task(world: &World, what: &str, want: impl Fn(&Outcome) -> bool) {
    for _ in 0..50 {
        let run = world.queue(1).remove(0);
        let task = world.task_of(&run);
        let outcome = world.platform_eventually(&format!("an outcome for {task}"), |p| {
            if !world.jobs_of(&task).is_empty() {
                return Some(Outcome::Job);
            }
            let view = p.run(&run);
            (view.status == RunStatus::Errored)
                .then(|| Outcome::Errored(view.message.unwrap_or_default()))
        });
        if want(&outcome) {
            return;
        }
    }
    panic!("no task {what}\n{}", world.kube.dump());
}

#[test]
fn a_same_named_job_of_another_task_fails_the_task_and_is_left_alone() {
    let world = World::new();
    let run = world.queue(1).remove(0);
    let task = world.task_of(&run);
    let name = format!("prod-scalr-agent-{run}-plan");
    let foreign = world.kube.put(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS,
                     "annotations": {"scalr.io/task-id": "task-someone-else", "scalr.io/attempt": "1"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox"}]}}}
    }));
    let _controller = world.start("ctl-0", 2);
    let view = world
        .platform
        .wait_for_run(&run, super::world::WAIT, |s| s == RunStatus::Errored);
    let message = view.message.unwrap_or_default();
    assert!(
        message.contains("Job name taken by another task") && message.contains("task-someone-else"),
        "{message}"
    );
    let still = world
        .kube
        .get("jobs", NS, &name)
        .expect("the other task's Job stays");
    assert_eq!(still["metadata"]["uid"], foreign["metadata"]["uid"]);
    assert!(world.jobs_of(&task).is_empty());
    // The credentials Secret is removed right after the failure is reported: wait for it.
    world.eventually("no token left behind", |w| {
        w.kube
            .get("secrets", NS, &format!("{name}-credentials"))
            .is_none()
    });
}

#[test]
fn metrics_are_served_on_the_optional_port() {
    let world = World::quick();
    let controller = world.spawn_binary("ctl-0", 2, &[("SCALR_AGENT_METRICS_PORT", "127.0.0.1:0")]);
    let task = world.task_of(&world.queue(1)[0]);
    world.job_of(&task);
    let mut addr = None;
    world.eventually("the metrics address in the log", |_| {
        addr = controller
            .log()
            .split("serving metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string);
        addr.is_some()
    });
    let addr = addr.expect("address");
    let mut body = String::new();
    world.eventually("a scrape after the launch", |_| {
        let response =
            scalr_agent::http::HttpClient::new(&scalr_agent::http::HttpOptions::default())
                .expect("client")
                .send(scalr_agent::http::Request::new(
                    "GET",
                    format!("http://{addr}/metrics"),
                ))
                .expect("scrape");
        assert_eq!(response.status, 200);
        body = String::from_utf8_lossy(&response.body).into_owned();
        body.contains("scalr_agent_launcher_launched_total 1")
    });
    for family in [
        "scalr_agent_poller_offers_total",
        "scalr_agent_launcher_acquired_total 1",
        "scalr_agent_launcher_launch_latency_seconds_count 1",
        "scalr_agent_limiter_in_flight 1",
        "scalr_agent_limiter_slot_wait_seconds_bucket",
        "scalr_agent_supervisor_failed_total{reason=\"image_pull\"} 0",
        "scalr_agent_api_errors_total",
    ] {
        assert!(body.contains(family), "{family}:\n{body}");
    }
}
