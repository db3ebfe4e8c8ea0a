//! The chart's real task template, rendered by real helm, stored in the simulator, read back and
//! turned into a Job and credentials Secret by the controller's pure builder — then run by the pod
//! executor: `install` copies the built binary into the shared volume, the runner container runs
//! that copy's exec-loop with a PATH holding real terraform and passes its startup probe, and the
//! worker finds its task token where the builder mounted it. (The worker itself needs a platform;
//! the end-to-end tests cover it.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use scalr_agent::controller::job_builder::{LaunchContext, TOKEN_MODE_WITH_FS_GROUP, build_task};
use scalr_agent::controller::labels;
use scalr_agent::controller::template::AgentTaskTemplate;
use scalr_agent::model::TaskIdentity;
use scalr_agent::secret::Secret;
use serde_json::{Value, json};

use super::{NS, container, options, world_with};
use crate::support::pod_executor::Image;
use crate::support::tools;

const AGENT_IMAGE: &str = "scalr-agent/scalr-agent:test";
const RUNNER_IMAGE: &str = "scalr/runner:0.2.0";
const TOKEN: &str = "task-token-for-the-chart-test";

fn environ(pid: i32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let text = String::from_utf8_lossy(kv);
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn chart_task_template_runs_install_then_exec_loop_with_the_task_credentials() {
    let tools_bin = tools::tool("terraform")
        .parent()
        .expect("tools dir")
        .to_path_buf();
    let binary = env!("CARGO_BIN_EXE_scalr-agent");
    let agent = Image::new().path("/usr/local/bin/scalr-agent", binary);
    let runner = Image::busybox()
        .path("/usr/local/bin", &tools_bin)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let w = world_with(
        options()
            .image(AGENT_IMAGE, agent)
            .image(RUNNER_IMAGE, runner),
    );

    let rendered = crate::chart::render(&[
        "--set",
        "agent.url=http://127.0.0.1:9",
        "--set",
        "agent.image.tag=test",
    ]);
    w.sim.put(rendered.one("CustomResourceDefinition").clone());
    let mut template = rendered.one("AgentTaskTemplate").clone();
    template["metadata"]["namespace"] = json!(NS);
    let stored = w.sim.put(template);
    let template = AgentTaskTemplate::from_value(&stored).expect("the chart's template is valid");
    let task = TaskIdentity {
        task_id: "task-chart1".into(),
        run_id: "run-chart1".into(),
        stage: "plan".into(),
        workspace_id: "ws-1".into(),
        environment_id: "env-1".into(),
        attempt: 1,
    };
    let ctx = LaunchContext {
        namespace: NS.into(),
        instance: crate::chart::RELEASE.into(),
        controller_id: "agent-chart-test".into(),
    };
    let mut built =
        build_task(&template, &task, &Secret::new(TOKEN), &ctx).expect("build the task");
    let secret: Value = serde_json::to_value(built.secret.as_k8s()).expect("secret json");
    w.sim.put(with_kind(secret, "v1", "Secret"));
    let job = w.sim.put(with_kind(
        serde_json::to_value(&built.job).expect("job json"),
        "batch/v1",
        "Job",
    ));
    let job_name = job["metadata"]["name"].as_str().expect("name").to_string();
    built
        .secret
        .set_owner(&job_name, job["metadata"]["uid"].as_str().expect("uid"));
    w.sim.put(with_kind(
        serde_json::to_value(built.secret.as_k8s()).expect("secret json"),
        "v1",
        "Secret",
    ));

    let pod = w.pod_of(&job_name);
    let name = pod["metadata"]["name"]
        .as_str()
        .expect("pod name")
        .to_string();
    w.wait("install done and the runner started", |s| {
        s.get("pods", NS, &name).is_some_and(|p| {
            container(&p, labels::INSTALL_CONTAINER)["state"]["terminated"]["exitCode"] == 0
                && container(&p, labels::RUNNER_CONTAINER)["started"] == true
        })
    });
    let pod = w.pod(&name);
    let runner = container(&pod, labels::RUNNER_CONTAINER);
    assert!(runner["state"]["running"].is_object(), "{runner}");
    assert_eq!(runner["image"], RUNNER_IMAGE);
    assert!(
        container(&pod, labels::WORKER_CONTAINER).is_object(),
        "the worker was started too"
    );

    let installed = w
        .exec
        .volume_dir(NS, &name, "agent-bin")
        .expect("agent-bin")
        .join("scalr-agent");
    assert_eq!(
        std::fs::metadata(&installed)
            .expect("installed binary")
            .len(),
        std::fs::metadata(binary).expect("built binary").len()
    );
    let data = w.exec.volume_dir(NS, &name, "data").expect("data");
    assert!(data.join("markers/runner/started").exists());
    assert!(
        data.join("exec-loop.sock").exists(),
        "exec-loop listens on the data volume"
    );

    let process = w
        .exec
        .processes()
        .into_iter()
        .find(|p| p.pod == name && p.container == labels::RUNNER_CONTAINER)
        .expect("the runner process");
    let exe = std::fs::read_link(format!("/proc/{}/exe", process.pid)).expect("runner exe");
    assert_eq!(exe, installed, "the runner runs the copy install made");
    let env = environ(process.pid);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let path = get("PATH").expect("PATH");
    assert!(
        path.split(':')
            .any(|dir| Path::new(dir).join("terraform").is_file()),
        "terraform on the runner's PATH: {path}"
    );
    assert_eq!(
        get("SCALR_AGENT_DATA_DIR").map(std::path::PathBuf::from),
        Some(data.clone())
    );
    assert!(
        get(labels::ENV_TASK_TOKEN_FILE).is_none(),
        "the runner gets no credentials"
    );

    let token = w
        .exec
        .volume_dir(NS, &name, labels::CREDENTIALS_VOLUME)
        .expect("credentials")
        .join(labels::TASK_TOKEN_KEY);
    assert_eq!(std::fs::read_to_string(&token).expect("token file"), TOKEN);
    let mode = std::fs::metadata(&token)
        .expect("token file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, TOKEN_MODE_WITH_FS_GROUP as u32,
        "the chart sets an fsGroup"
    );
    assert!(!w.logs(&name, labels::RUNNER_CONTAINER).contains(TOKEN));
}

/// k8s-openapi leaves out `apiVersion`/`kind` only when absent; the simulator's `put` wants them.
fn with_kind(mut object: Value, api_version: &str, kind: &str) -> Value {
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    object
}
