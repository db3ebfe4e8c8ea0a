//! A chart rendered by real `helm template` (helm v4.3.1), applied with kubectl v1.37 and v1.32:
//! CRD first, then the rendered manifests, re-applied unchanged; the chart's RBAC then holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Kubectl, kubectl_1_37, machine_kubectl_1_32, tools_bin};
use crate::support::kube_sim::{Credential, KubeSim, KubeSimOptions};

/// A small chart like ours: CRD in `crds/`, controller Deployment, RBAC, PDB, NetworkPolicy and the
/// AgentTaskTemplate custom resource.
fn write_chart(dir: &Path) -> PathBuf {
    let chart = dir.join("agent-job");
    for (path, text) in [
        (
            "Chart.yaml",
            "apiVersion: v2\nname: agent-job\nversion: 0.1.0\nappVersion: \"0.1.0\"\n",
        ),
        ("values.yaml", "image: scalr/agent:0.1.0\nreplicaCount: 2\n"),
        (
            "crds/agenttasktemplates.yaml",
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: agenttasktemplates.scalr.io
spec:
  group: scalr.io
  scope: Namespaced
  names: {plural: agenttasktemplates, singular: agenttasktemplate, kind: AgentTaskTemplate, shortNames: [att]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
        ),
        (
            "templates/rbac.yaml",
            r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ .Release.Name }}
  labels: {app.kubernetes.io/instance: {{ .Release.Name }}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: {{ .Release.Name }}}
rules:
- {apiGroups: [batch], resources: [jobs], verbs: [create, get, list, watch, delete]}
- {apiGroups: [""], resources: [secrets], verbs: [create, delete]}
- {apiGroups: [scalr.io], resources: [agenttasktemplates], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: {{ .Release.Name }}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: {{ .Release.Name }}}
subjects:
- {kind: ServiceAccount, name: {{ .Release.Name }}, namespace: {{ .Release.Namespace }}}
"#,
        ),
        (
            "templates/controller.yaml",
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app.kubernetes.io/instance: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicaCount }}
  selector:
    matchLabels: {app.kubernetes.io/instance: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app.kubernetes.io/instance: {{ .Release.Name }}}
    spec:
      serviceAccountName: {{ .Release.Name }}
      containers:
      - name: controller
        image: {{ .Values.image }}
        args: [controller]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: {{ .Release.Name }}}
spec:
  minAvailable: 1
  selector: {matchLabels: {app.kubernetes.io/instance: {{ .Release.Name }}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: {{ .Release.Name }}-tasks}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/component: task}}
  policyTypes: [Ingress]
---
apiVersion: scalr.io/v1
kind: AgentTaskTemplate
metadata: {name: {{ .Release.Name }}-task}
spec:
  basename: {{ .Release.Name }}
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          automountServiceAccountToken: false
          containers: [{name: worker, image: {{ .Values.image }}}]
"#,
        ),
    ] {
        let p = chart.join(path);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("chart dir");
        std::fs::write(p, text).expect("write chart file");
    }
    chart
}

#[test]
fn helm_template_output_applies_with_kubectl() {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec!["agents".into()],
        ..KubeSimOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = write_chart(dir.path());
    let helm_home = dir.path().join("helm-home");
    let rendered = Command::new(tools_bin().join("helm"))
        .args([
            "template",
            "pool",
            chart.to_str().expect("a UTF-8 path"),
            "--namespace",
            "agents",
        ])
        .env("HOME", &helm_home)
        .env("HELM_CONFIG_HOME", helm_home.join("config"))
        .env("HELM_CACHE_HOME", helm_home.join("cache"))
        .env("HELM_DATA_HOME", helm_home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm template");
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );

    for bin in [kubectl_1_37(), machine_kubectl_1_32()] {
        let admin = Kubectl::new(
            &bin,
            &sim,
            dir.path(),
            "admin",
            &Credential::Token(sim.admin_token().into()),
            "agents",
        );
        let crds = admin.ok(&[
            "apply",
            "-f",
            chart.join("crds").to_str().expect("a UTF-8 path"),
        ]);
        assert!(
            crds.contains(
                "customresourcedefinition.apiextensions.k8s.io/agenttasktemplates.scalr.io"
            ),
            "{crds}"
        );
        let applied = admin.ok_with_stdin(&["apply", "-f", "-"], Some(&rendered.stdout));
        for line in [
            "serviceaccount/pool",
            "role.rbac.authorization.k8s.io/pool",
            "rolebinding.rbac.authorization.k8s.io/pool",
            "deployment.apps/pool",
            "poddisruptionbudget.policy/pool",
            "networkpolicy.networking.k8s.io/pool-tasks",
            "agenttasktemplate.scalr.io/pool-task",
        ] {
            assert!(applied.contains(line), "{line} not applied:\n{applied}");
        }
    }
    let template = sim
        .get("agenttasktemplates", "agents", "pool-task")
        .expect("the template custom resource");
    assert_eq!(template["spec"]["basename"], "pool");
    assert_eq!(
        sim.get("deployments", "agents", "pool")
            .expect("controller")["spec"]["replicas"],
        2
    );
    let listed = Kubectl::new(
        &kubectl_1_37(),
        &sim,
        dir.path(),
        "admin",
        &Credential::Token(sim.admin_token().into()),
        "agents",
    );
    assert!(
        listed.ok(&["get", "att"]).contains("pool-task"),
        "the CRD's short name resolves"
    );

    sim.enable_rbac();
    let token = sim.add_service_account_token("agents", "pool");
    let controller = Kubectl::new(
        &kubectl_1_37(),
        &sim,
        dir.path(),
        "controller",
        &Credential::Token(token),
        "agents",
    );
    for (verb, resource, want) in [
        ("create", "jobs", "yes"),
        ("delete", "secrets", "yes"),
        ("get", "agenttasktemplates", "yes"),
        ("get", "pods", "no"),
        ("create", "deployments", "no"),
    ] {
        let out = controller.run(&["auth", "can-i", verb, resource], None);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "can-i {verb} {resource}"
        );
    }
}
