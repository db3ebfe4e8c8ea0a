//! What runs inside a pod: environment (values, fieldRefs, Secret and ConfigMap references),
//! Secret files with their modes, emptyDir shared by containers, claims shared by pods, missing
//! sources retried, a command the image lacks, probes setting `started`/`ready` and liveness
//! kills, and deletion: SIGTERM, then SIGKILL after the grace period.

use std::time::Duration;

use serde_json::{Value, json};

use super::{NS, World, condition, container, job, sh, world};
use crate::support::kube_sim::Propagation;

fn bare_pod(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    super::merge(
        &mut spec,
        &json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 5}),
    );
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn uid(w: &World, pod: &str) -> String {
    w.pod(pod)["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string()
}

#[test]
fn env_field_refs_and_secret_volume_files_reach_the_process() {
    let w = world();
    w.sim.put(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
        "stringData": {"token": "s3cr3t", "other": "x1"}}),
    );
    w.sim.put(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": NS},
        "data": {"LEVEL": "debug"}}));
    let script = "echo A=$A; echo NAME=$MY_NAME; echo NS=$MY_NS; echo UID=$MY_UID; echo NODE=$MY_NODE; \
        echo IP=$MY_IP; echo TOKEN=$TOKEN; echo LEVEL=$LEVEL; echo CM_LEVEL=$CM_LEVEL; echo B=$B; \
        cat $TOKEN_FILE; echo; stat -c %a /secrets/token; cat /more/nested/path; echo; stat -c %a /more/nested/path";
    let mut c = sh("main", script);
    c["env"] = json!([
        {"name": "A", "value": "alpha"},
        {"name": "B", "value": "$(A)-beta"},
        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MY_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
        {"name": "TOKEN_FILE", "value": "/secrets/token"},
    ]);
    c["envFrom"] = json!([{"configMapRef": {"name": "settings"}, "prefix": "CM_"}]);
    c["volumeMounts"] = json!([{"name": "all", "mountPath": "/secrets", "readOnly": true},
        {"name": "some", "mountPath": "/more", "readOnly": true}]);
    w.sim.put(bare_pod("envy", json!({"containers": [c], "volumes": [
        {"name": "all", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "some", "secret": {"secretName": "creds", "items": [{"key": "other", "path": "nested/path", "mode": 0o440}]}},
    ]})));
    w.wait_phase("envy", "Succeeded");
    let uid = uid(&w, "envy");
    let want = format!(
        "A=alpha\nNAME=envy\nNS=ci\nUID={uid}\nNODE=kube-sim-node\nIP=127.0.0.1\nTOKEN=s3cr3t\n\
         LEVEL=debug\nCM_LEVEL=debug\nB=alpha-beta\ns3cr3t\n400\nx1\n440\n"
    );
    assert_eq!(w.logs("envy", "main"), want);
}

#[test]
fn empty_dir_is_shared_by_the_containers_of_a_pod() {
    let w = world();
    let mut writer = sh(
        "writer",
        "echo handed over > /shared/note.tmp && mv /shared/note.tmp /shared/note",
    );
    writer["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/shared"}]);
    let mut reader = sh(
        "reader",
        "while [ ! -f /inbox/note ]; do sleep 0.05; done; cat /inbox/note",
    );
    reader["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/inbox"}]);
    w.sim.put(bare_pod(
        "pair",
        json!({"containers": [reader, writer], "volumes": [{"name": "scratch", "emptyDir": {}}]}),
    ));
    w.wait_phase("pair", "Succeeded");
    assert_eq!(w.logs("pair", "reader"), "handed over\n");
    let other = world();
    other.sim.put(bare_pod(
        "alone",
        json!({"containers": [sh("main", "ls /shared 2>&1 || true")]}),
    ));
    other.wait_phase("alone", "Succeeded");
    assert!(
        other.logs("alone", "main").contains("No such file"),
        "{}",
        other.logs("alone", "main")
    );
}

#[test]
fn a_claim_is_shared_by_pods_and_a_missing_claim_keeps_a_pod_pending() {
    let w = world();
    let claim = |name: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    };
    w.sim.put(claim("cache"));
    let with_claim = |name: &str, claim: &str, script: &str| {
        let mut c = sh("main", script);
        c["volumeMounts"] = json!([{"name": "cache", "mountPath": "/var/cache/x"}]);
        job(
            name,
            json!([c]),
            json!({"template": {"spec": {"volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": claim}}]}}}),
        )
    };
    w.sim.put(with_claim(
        "fill",
        "cache",
        "echo provider > /var/cache/x/p",
    ));
    w.wait_job("fill", "Complete");
    w.sim.put(with_claim("use", "cache", "cat /var/cache/x/p"));
    w.wait_job("use", "Complete");
    let reader = w.pods_of("use")[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert_eq!(w.logs(&reader, "main"), "provider\n");

    w.sim.put(with_claim("orphan", "missing", "true"));
    let name = w.pod_of("orphan")["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    w.wait("the pod unschedulable", |s| {
        s.get("pods", NS, &name).is_some_and(|p| {
            super::any_condition(&p, "PodScheduled").is_some_and(|c| c["reason"] == "Unschedulable")
        })
    });
    w.wait("the FailedScheduling event", |_| {
        w.has_event(
            &name,
            "FailedScheduling",
            "persistentvolumeclaim \"missing\" not found",
        )
    });
    w.sim.put(claim("missing"));
    w.wait_job("orphan", "Complete");
}

#[test]
fn missing_secret_is_retried_for_env_and_volumes() {
    let w = world();
    let mut env_user = sh("main", "echo $PASSWORD");
    env_user["env"] = json!([{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "late", "key": "password"}}}]);
    w.sim
        .put(bare_pod("by-env", json!({"containers": [env_user]})));
    let mut file_user = sh("main", "cat /s/password");
    file_user["volumeMounts"] = json!([{"name": "s", "mountPath": "/s"}]);
    w.sim.put(bare_pod(
        "by-file",
        json!({"containers": [file_user],
        "volumes": [{"name": "s", "secret": {"secretName": "late"}}]}),
    ));
    w.wait("a config error and a failed mount", |s| {
        let env_waiting = s.get("pods", NS, "by-env").is_some_and(|p| {
            container(&p, "main")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        });
        env_waiting && w.has_event("by-file", "FailedMount", "secret \"late\" not found")
    });
    let waiting = container(&w.pod("by-env"), "main")["state"]["waiting"].clone();
    assert_eq!(waiting["message"], "secret \"late\" not found");
    assert!(w.has_event("by-env", "Failed", "Error: secret \"late\" not found"));
    assert_eq!(
        container(&w.pod("by-file"), "main")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    w.sim.put(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late", "namespace": NS},
        "stringData": {"password": "hunter2"}}),
    );
    w.wait_phase("by-env", "Succeeded");
    w.wait_phase("by-file", "Succeeded");
    assert_eq!(w.logs("by-env", "main"), "hunter2\n");
    assert_eq!(w.logs("by-file", "main"), "hunter2");
}

#[test]
fn a_command_the_image_lacks_is_a_start_error() {
    let w = world();
    let c = json!({"name": "main", "image": "busybox", "command": ["/opt/tool/run"]});
    w.sim.put(bare_pod("nocmd", json!({"containers": [c]})));
    let pod = w.wait_phase("nocmd", "Failed");
    let t = container(&pod, "main")["state"]["terminated"].clone();
    assert_eq!(
        (t["exitCode"].clone(), t["reason"].clone()),
        (json!(128), json!("StartError"))
    );
    assert!(
        t["message"]
            .as_str()
            .is_some_and(|m| m.contains("exec: \"/opt/tool/run\": executable file not found"))
    );
}

#[test]
fn probes_set_started_and_ready_and_a_failing_liveness_probe_kills() {
    let w = world();
    let test_file = |path: &str| json!({"exec": {"command": ["test", "-f", path]}, "periodSeconds": 1, "failureThreshold": 60});
    let mut main = sh("main", "exec sleep 300");
    main["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    main["startupProbe"] = test_file("/work/ready");
    main["readinessProbe"] = test_file("/work/ready");
    let mut doomed = sh("doomed", "exec sleep 300");
    doomed["volumeMounts"] = json!([{"name": "work", "mountPath": "/work"}]);
    doomed["livenessProbe"] = json!({"exec": {"command": ["test", "-f", "/work/alive"]}, "periodSeconds": 1, "failureThreshold": 2});
    w.sim.put(bare_pod(
        "probed",
        json!({"containers": [main, doomed], "volumes": [{"name": "work", "emptyDir": {}}]}),
    ));
    w.wait("a failed startup probe", |_| {
        w.has_event("probed", "Unhealthy", "Startup probe failed")
    });
    let pod = w.pod("probed");
    assert_eq!(container(&pod, "main")["started"], false);
    assert_eq!(container(&pod, "main")["ready"], false);
    assert!(container(&pod, "main")["state"]["running"].is_object());
    std::fs::write(
        w.exec
            .volume_dir(NS, "probed", "work")
            .expect("work")
            .join("ready"),
        "",
    )
    .expect("write the marker");
    w.wait("main started and ready", |s| {
        s.get("pods", NS, "probed").is_some_and(|p| {
            container(&p, "main")["started"] == true && container(&p, "main")["ready"] == true
        })
    });
    w.wait("doomed killed by its liveness probe", |s| {
        s.get("pods", NS, "probed")
            .is_some_and(|p| container(&p, "doomed")["state"]["terminated"].is_object())
    });
    let pod = w.pod("probed");
    assert_eq!(
        container(&pod, "doomed")["state"]["terminated"]["exitCode"],
        143
    );
    assert!(w.has_event(
        "probed",
        "Killing",
        "Container doomed failed liveness probe"
    ));
    assert!(w.has_event("probed", "Unhealthy", "Liveness probe failed"));
    assert_eq!(
        condition(&pod, "Ready"),
        None,
        "doomed is not ready any more"
    );
}

#[test]
fn deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period() {
    let w = world();
    let stubborn = sh(
        "stubborn",
        "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.1; done",
    );
    let polite = sh("polite", "exec sleep 300");
    let mut pod = bare_pod("doomed", json!({"containers": [stubborn, polite]}));
    pod["spec"]["terminationGracePeriodSeconds"] = json!(2);
    w.sim.put(pod);
    w.wait_phase("doomed", "Running");
    w.exec.wait_until(Duration::from_secs(30), |e| {
        e.logs(NS, "doomed", "stubborn").contains("ready")
    });
    assert!(w.sim.delete("pods", NS, "doomed", Propagation::Background));
    assert!(
        w.pod("doomed")["metadata"]["deletionTimestamp"].is_string(),
        "deleted gracefully"
    );
    w.wait("the pod gone", |s| s.get("pods", NS, "doomed").is_none());
    let exit = |c: &str| {
        w.exec
            .processes()
            .into_iter()
            .find(|p| p.pod == "doomed" && p.container == c)
            .and_then(|p| p.exit_code)
    };
    assert_eq!(exit("polite"), Some(143), "SIGTERM ended it");
    assert_eq!(
        exit("stubborn"),
        Some(137),
        "SIGKILL after the grace period"
    );
    assert!(
        w.logs("doomed", "stubborn").contains("got TERM"),
        "{}",
        w.logs("doomed", "stubborn")
    );
    assert!(w.has_event("doomed", "Killing", "Stopping container stubborn"));
    // The simulator logs a request just after answering it.
    w.wait("the kubelet's final delete in the request log", |s| {
        s.requests().into_iter().any(|r| {
            r.method == "DELETE"
                && r.path.ends_with("/pods/doomed")
                && r.body.contains("\"gracePeriodSeconds\":0")
        })
    });
}
