//! What the chart renders: the controller Deployment, the task Job template, RBAC against
//! `scalr_agent::permissions`, and every object parsed as its Kubernetes type.

use super::{Rendered, container, env, env_names, env_var, mount, render, values_file, volume};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Values that switch on every optional branch of the templates.
pub const EVERYTHING: &str = r#"
imagePullSecrets: [{name: regcred}]
restrictMetadataService: true
agent:
  url: https://example.scalr.io
  token: every-branch-token
  replicaCount: 2
  nodeSelector: {pool: agents}
  tolerations: [{key: dedicated, operator: Equal, value: agents, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]}]
  podAnnotations: {example.com/note: controller}
  podLabels: {team: infra}
  extraEnv: [{name: TZ, value: UTC}]
  metrics: {enabled: true, port: 9102}
serviceAccount: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/agent"}}
tls:
  caBundle: |
    -----BEGIN CERTIFICATE-----
    MIIBszCCAVmgAwIBAgIUEXAMPLE
    -----END CERTIFICATE-----
proxy: {httpProxy: "http://proxy:3128", httpsProxy: "http://proxy:3128", noProxy: kubernetes.default.svc}
task:
  serviceAccountName: runs
  jobLabels: {team: infra}
  jobAnnotations: {example.com/job: "yes"}
  podLabels: {team: infra}
  podAnnotations: {example.com/pod: "yes"}
  nodeSelector: {pool: runs}
  tolerations: [{key: dedicated, operator: Equal, value: runs, effect: NoSchedule}]
  affinity: {podAntiAffinity: {}}
  extraVolumes: [{name: cloud, secret: {secretName: cloud-creds}}]
  extraVolumeMounts: [{name: cloud, mountPath: /etc/cloud, readOnly: true}]
  sidecars:
    - {name: envoy, image: "envoyproxy/envoy:v1.30.1", args: ["--log-level", "warn"]}
    - {name: once, image: "busybox:1.36", restartPolicy: Never}
  worker: {extraEnv: [{name: WORKER_ONLY, value: "1"}]}
  runner: {extraEnv: [{name: TF_LOG, value: INFO}]}
  providerNetworkMirrors:
    - {url: "https://mirror.example.com/", token: mirror-token, include: ["registry.terraform.io/hashicorp/*"]}
persistence:
  enabled: true
  persistentVolumeClaim: {storageClassName: efs-sc, subPath: team-a}
"#;

fn render_everything() -> Rendered {
    let file = values_file(EVERYTHING);
    let path = file.path().to_str().expect("temp paths are UTF-8");
    render(&["-f", path])
}

#[test]
fn controller_deployment_runs_the_binary_hardened_with_the_designed_environment() {
    let r = render(&["--set", "agent.token=t"]);
    let deployment = r.one("Deployment");
    assert_eq!(deployment["metadata"]["name"], "scalr-agent");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = r.controller_pod();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(pod_labels["app.kubernetes.io/component"], "controller");
    assert!(selects(&deployment["spec"]["selector"], pod_labels));
    assert_eq!(
        pod["serviceAccountName"],
        r.one("ServiceAccount")["metadata"]["name"]
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 60);
    assert_eq!(
        pod["automountServiceAccountToken"], true,
        "the controller needs its API token"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    let c = container(pod, "controller");
    assert_eq!(
        c["image"], "scalr-agent/scalr-agent:0.1.0",
        "tag defaults to appVersion"
    );
    assert_eq!(
        c["command"],
        json!(["/usr/local/bin/scalr-agent", "controller"])
    );
    assert_hardened(c);
    assert!(c.get("ports").is_none(), "the controller exposes no port");
    let probe = |p: &str| c[p]["exec"]["command"].clone();
    let marker = "/var/lib/scalr-agent/markers/controller";
    let bin = "/usr/local/bin/scalr-agent";
    assert_eq!(
        probe("livenessProbe"),
        json!([
            bin,
            "probe",
            "--file",
            format!("{marker}/healthy"),
            "--max-age-secs",
            "60"
        ])
    );
    assert_eq!(
        probe("readinessProbe"),
        json!([bin, "probe", "--file", format!("{marker}/ready")])
    );
    assert_eq!(
        mount(c, "data").expect("data mount")["mountPath"],
        "/var/lib/scalr-agent"
    );
    assert!(volume(pod, "data")["emptyDir"].is_object());

    let want: BTreeSet<&str> = [
        "SCALR_URL",
        "SCALR_AGENT_TOKEN",
        "SCALR_AGENT_NAME",
        "SCALR_AGENT_KUBERNETES_NAMESPACE",
        "SCALR_AGENT_DATA_DIR",
        "SCALR_AGENT_DEBUG",
        "SCALR_AGENT_LOG_FORMAT",
        "SCALR_AGENT_CONCURRENCY",
        "SCALR_AGENT_KUBERNETES_TASK_TEMPLATE",
        "SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS",
        "SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT",
    ]
    .into();
    assert_eq!(env_names(c).into_iter().collect::<BTreeSet<_>>(), want);
    let token = &env_var(c, "SCALR_AGENT_TOKEN").expect("token env")["valueFrom"]["secretKeyRef"];
    assert_eq!(token, &json!({"name": "scalr-agent-token", "key": "token"}));
    let field =
        |n: &str| env_var(c, n).expect("field env")["valueFrom"]["fieldRef"]["fieldPath"].clone();
    assert_eq!(field("SCALR_AGENT_NAME"), "metadata.name");
    assert_eq!(
        field("SCALR_AGENT_KUBERNETES_NAMESPACE"),
        "metadata.namespace"
    );
    let template_name = &r.one("AgentTaskTemplate")["metadata"]["name"];
    assert_eq!(template_name, "scalr-agent-task-template");
    let literal = [
        ("SCALR_AGENT_DATA_DIR", "/var/lib/scalr-agent"),
        ("SCALR_AGENT_DEBUG", "0"),
        ("SCALR_AGENT_LOG_FORMAT", "json"),
        ("SCALR_AGENT_CONCURRENCY", "10"),
        (
            "SCALR_AGENT_KUBERNETES_TASK_TEMPLATE",
            "scalr-agent-task-template",
        ),
        ("SCALR_AGENT_KUBERNETES_TASK_STARTUP_TIMEOUT_SECONDS", "180"),
        ("SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT", "300"),
    ];
    for (name, value) in literal {
        assert_eq!(env(c, name), Some(value), "{name}");
    }
}

#[test]
fn task_template_is_the_designed_job() {
    let r = render(&[
        "--set",
        "agent.token=t",
        "--set",
        "agent.url=https://acme.scalr.io",
    ]);
    let template = r.one("AgentTaskTemplate");
    assert_eq!(template["apiVersion"], "scalr.io/v1");
    assert_eq!(template["spec"]["basename"], "scalr-agent");
    let job = r.job_template();
    assert_eq!(job["spec"]["backoffLimit"], 1);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 60);
    let fail_on = |c: &str| json!({"action": "FailJob", "onExitCodes": {"containerName": c, "operator": "NotIn", "values": [0]}});
    let disrupted = json!({"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]});
    assert_eq!(
        job["spec"]["podFailurePolicy"]["rules"],
        json!([fail_on("runner"), fail_on("worker"), disrupted])
    );
    let meta = &job["spec"]["template"]["metadata"];
    assert_eq!(meta["labels"]["app.kubernetes.io/component"], "task");
    assert_eq!(
        job["metadata"]["labels"]["app.kubernetes.io/component"],
        "task"
    );
    for (key, value) in [
        ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false"),
        ("karpenter.sh/do-not-evict", "true"),
        ("karpenter.sh/do-not-disrupt", "true"),
    ] {
        assert_eq!(meta["annotations"][key], value, "{key}");
    }
    let text = serde_json::to_string(job).expect("serialize");
    assert!(
        !text.contains("scalr.io/"),
        "the controller adds the scalr.io/* task labels itself"
    );

    let pod = r.task_pod();
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["terminationGracePeriodSeconds"], 360);
    let sc = &pod["securityContext"];
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert_eq!(
            sc[key], 1000,
            "{key}: worker and runner share one non-root UID/GID"
        );
    }
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let names = |list: &str| -> Vec<&str> {
        pod[list]
            .as_array()
            .expect(list)
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect()
    };
    assert_eq!(names("initContainers"), ["install"]);
    assert_eq!(names("containers"), ["runner", "worker"]);

    let install = container(pod, "install");
    assert_eq!(install["image"], "scalr-agent/scalr-agent:0.1.0");
    assert_eq!(
        install["command"],
        json!([
            "/usr/local/bin/scalr-agent",
            "install",
            "/opt/scalr-agent/bin"
        ])
    );
    assert_eq!(
        mount(install, "agent-bin"),
        Some(&json!({"name": "agent-bin", "mountPath": "/opt/scalr-agent/bin"}))
    );
    assert_hardened(install);

    let runner = container(pod, "runner");
    assert_eq!(runner["image"], "scalr/runner:0.2.0");
    let runner_bin = "/opt/scalr-agent/bin/scalr-agent";
    assert_eq!(runner["command"], json!([runner_bin, "exec-loop"]));
    assert_hardened(runner);
    assert_mount(runner, "agent-bin", "/opt/scalr-agent/bin", true);
    assert_mount(runner, "data", "/var/lib/scalr-agent/data", false);
    assert_mount(runner, "cache", "/var/lib/scalr-agent/cache", true);
    assert_markers(runner, runner_bin, "runner");
    assert!(
        runner["resources"]["limits"]["memory"].is_string(),
        "the memory monitor needs a limit"
    );
    for (name, value) in [
        ("SCALR_AGENT_DATA_DIR", "/var/lib/scalr-agent/data"),
        ("SCALR_AGENT_CACHE_DIR", "/var/lib/scalr-agent/cache"),
        ("SCALR_AGENT_MEMORY_MONITOR_ENABLED", "1"),
        ("SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT", "80"),
        ("SCALR_AGENT_MEMORY_MONITOR_WARN_PERCENT", "90"),
    ] {
        assert_eq!(env(runner, name), Some(value), "runner {name}");
    }
    assert_no_credentials(runner);

    let worker = container(pod, "worker");
    let agent_bin = "/usr/local/bin/scalr-agent";
    assert_eq!(worker["image"], "scalr-agent/scalr-agent:0.1.0");
    assert_eq!(worker["command"], json!([agent_bin, "worker"]));
    assert_hardened(worker);
    assert_mount(worker, "data", "/var/lib/scalr-agent/data", false);
    assert_mount(worker, "cache", "/var/lib/scalr-agent/cache", false);
    assert_markers(worker, agent_bin, "worker");
    for (name, value) in [
        ("SCALR_URL", "https://acme.scalr.io"),
        ("SCALR_AGENT_DATA_DIR", "/var/lib/scalr-agent/data"),
        ("SCALR_AGENT_CACHE_DIR", "/var/lib/scalr-agent/cache"),
        ("SCALR_AGENT_DEBUG", "0"),
        ("SCALR_AGENT_LOG_FORMAT", "json"),
        ("SCALR_AGENT_WORKER_GRACE_SHUTDOWN_TIMEOUT", "300"),
        ("SCALR_AGENT_PROVIDER_CACHE_ENABLED", "0"),
        ("SCALR_AGENT_PROVIDER_CACHE_SIZE_LIMIT_MB", "40960"),
        ("SCALR_AGENT_BINARY_CACHE_SIZE_LIMIT_MB", "4096"),
        ("SCALR_AGENT_BINARY_CACHE_THRESHOLD_DAYS", "30"),
    ] {
        assert_eq!(env(worker, name), Some(value), "worker {name}");
    }
    assert!(
        env_var(worker, "SCALR_AGENT_TOKEN").is_none(),
        "the pool token stays in the controller"
    );
    assert!(env_var(worker, "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS").is_none());

    assert!(volume(pod, "agent-bin")["emptyDir"].is_object());
    assert_eq!(volume(pod, "data")["emptyDir"], json!({"sizeLimit": "4Gi"}));
    assert_eq!(
        volume(pod, "cache")["emptyDir"],
        json!({"sizeLimit": "1Gi"})
    );
}

#[test]
fn every_rendered_object_is_a_valid_kubernetes_object_without_unknown_fields() {
    // k8s-openapi drops fields it does not know, so a round trip through the typed object that
    // changes nothing proves every field name and type is real Kubernetes API.
    use k8s_openapi::api::{apps, batch, core, networking, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    for r in [render(&[]), render_everything()] {
        for object in &r.objects {
            let kind = object["kind"].as_str().expect("every object has a kind");
            let ok = match kind {
                "ServiceAccount" => round_trips::<core::v1::ServiceAccount>(object),
                "Secret" => round_trips::<core::v1::Secret>(object),
                "ConfigMap" => round_trips::<core::v1::ConfigMap>(object),
                "PersistentVolumeClaim" => round_trips::<core::v1::PersistentVolumeClaim>(object),
                "Role" => round_trips::<rbac::v1::Role>(object),
                "RoleBinding" => round_trips::<rbac::v1::RoleBinding>(object),
                "Deployment" => round_trips::<apps::v1::Deployment>(object),
                "PodDisruptionBudget" => round_trips::<policy::v1::PodDisruptionBudget>(object),
                "NetworkPolicy" => round_trips::<networking::v1::NetworkPolicy>(object),
                "CustomResourceDefinition" => {
                    round_trips::<apiext::CustomResourceDefinition>(object)
                }
                "AgentTaskTemplate" => {
                    round_trips::<batch::v1::JobTemplateSpec>(&object["spec"]["jobTemplate"])
                }
                other => panic!("no round-trip check for kind {other}: add one"),
            };
            if let Err(diff) = ok {
                panic!(
                    "{kind} {} changed in a typed round trip: {diff}",
                    object["metadata"]["name"]
                );
            }
        }
    }
}

fn round_trips<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if &back == object {
        Ok(())
    } else {
        Err(format!("\nrendered: {object:#}\ntyped:    {back:#}"))
    }
}

#[test]
fn everything_branch_renders_every_optional_piece() {
    let r = render_everything();
    let kinds: BTreeSet<&str> = r
        .objects
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "ConfigMap",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(kind), "{kind} missing: {:?}", r.summary());
    }
    assert_eq!(
        r.of_kind("PodDisruptionBudget").len(),
        2,
        "task PDB and controller PDB"
    );
    assert_eq!(r.of_kind("Secret").len(), 2, "token and provider mirrors");

    let pod = r.task_pod();
    assert_eq!(pod["serviceAccountName"], "runs");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["nodeSelector"], json!({"pool": "runs"}));
    assert_eq!(pod["tolerations"][0]["value"], "runs");
    assert_eq!(volume(pod, "cloud")["secret"]["secretName"], "cloud-creds");
    let inits: Vec<&Value> = pod["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .collect();
    assert_eq!(
        inits[0]["name"], "install",
        "install runs before any sidecar"
    );
    assert_eq!(
        inits[1]["restartPolicy"], "Always",
        "sidecars are native sidecars"
    );
    assert_eq!(inits[1]["args"], json!(["--log-level", "warn"]));
    assert_eq!(
        inits[2]["restartPolicy"], "Never",
        "an explicit restartPolicy is kept"
    );

    let (runner, worker) = (container(pod, "runner"), container(pod, "worker"));
    for c in [runner, worker] {
        assert_eq!(
            mount(c, "cloud").expect("extra mount")["mountPath"],
            "/etc/cloud"
        );
        assert_eq!(mount(c, "cache").expect("cache")["subPath"], "team-a");
        assert_eq!(
            mount(c, "ca-bundle").expect("CA mount")["mountPath"],
            "/etc/scalr-agent/ca"
        );
        assert_eq!(env(c, "SSL_CERT_FILE"), Some("/etc/scalr-agent/ca/ca.crt"));
        assert_eq!(env(c, "HTTPS_PROXY"), Some("http://proxy:3128"));
        assert_eq!(env(c, "NO_PROXY"), Some("kubernetes.default.svc"));
    }
    assert_eq!(env(runner, "TF_LOG"), Some("INFO"));
    assert!(env_var(runner, "SCALR_AGENT_CA_CERT").is_none());
    assert_no_credentials(runner);
    assert_eq!(
        env(worker, "SCALR_AGENT_CA_CERT"),
        Some("/etc/scalr-agent/ca/ca.crt")
    );
    assert_eq!(
        env(worker, "TZ"),
        Some("UTC"),
        "agent.extraEnv reaches the worker"
    );
    assert_eq!(env(worker, "WORKER_ONLY"), Some("1"));
    let mirrors =
        &env_var(worker, "SCALR_AGENT_PROVIDER_NETWORK_MIRRORS").expect("mirrors")["valueFrom"];
    assert_eq!(
        mirrors["secretKeyRef"],
        json!({"name": "scalr-agent-provider-mirrors", "key": "mirrors.json"})
    );
    let ca = &volume(pod, "ca-bundle")["configMap"];
    assert_eq!(ca["name"], r.one("ConfigMap")["metadata"]["name"]);

    let controller = container(r.controller_pod(), "controller");
    assert_eq!(
        env(controller, "SCALR_AGENT_CA_CERT"),
        Some("/etc/scalr-agent/ca/ca.crt")
    );
    assert_eq!(env(controller, "TZ"), Some("UTC"));
    assert_eq!(env(controller, "HTTP_PROXY"), Some("http://proxy:3128"));
    assert_eq!(env(controller, "SCALR_AGENT_METRICS_PORT"), Some("9102"));
    assert_eq!(
        controller["ports"],
        json!([{"name": "metrics", "containerPort": 9102, "protocol": "TCP"}])
    );
    assert!(
        env_var(controller, "TF_LOG").is_none(),
        "runner env stays in the runner"
    );
}

/// Whether a LabelSelector (matchLabels, matchExpressions In/NotIn/Exists) selects `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let labels_match = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| &labels[k] == v));
    let expressions_match = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let value = &labels[e["key"].as_str().unwrap_or_default()];
            let among = e["values"].as_array().is_some_and(|vs| vs.contains(value));
            match e["operator"].as_str() {
                Some("In") => among,
                Some("NotIn") => !among,
                Some("Exists") => !value.is_null(),
                Some("DoesNotExist") => value.is_null(),
                other => panic!("unknown selector operator {other:?}"),
            }
        })
    });
    labels_match && expressions_match
}

fn assert_hardened(c: &Value) {
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
    assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
    assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{}", c["name"]);
}

fn assert_mount(c: &Value, name: &str, path: &str, read_only: bool) {
    let m = mount(c, name).unwrap_or_else(|| panic!("{} does not mount {name}", c["name"]));
    assert_eq!(m["mountPath"], path);
    assert_eq!(
        m["readOnly"].as_bool().unwrap_or(false),
        read_only,
        "{} {name}",
        c["name"]
    );
}

fn assert_markers(c: &Value, bin: &str, role: &str) {
    let dir = format!("/var/lib/scalr-agent/data/markers/{role}");
    assert_eq!(
        c["startupProbe"]["exec"]["command"],
        json!([bin, "probe", "--file", format!("{dir}/started")])
    );
    assert_eq!(
        c["livenessProbe"]["exec"]["command"],
        json!([
            bin,
            "probe",
            "--file",
            format!("{dir}/healthy"),
            "--max-age-secs",
            "60"
        ])
    );
    assert!(c.get("ports").is_none(), "task containers open no port");
}

/// The runner gets no credential of any kind: no Secret-backed env, no token-like names.
pub fn assert_no_credentials(runner: &Value) {
    assert!(runner.get("envFrom").is_none());
    for e in runner["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default();
        assert!(
            e["valueFrom"]["secretKeyRef"].is_null(),
            "runner env {name} reads a Secret"
        );
        assert!(
            !name.contains("TOKEN") && name != "SCALR_URL",
            "runner env {name}"
        );
    }
    for m in runner["volumeMounts"].as_array().into_iter().flatten() {
        assert_ne!(m["name"], "credentials");
    }
}
