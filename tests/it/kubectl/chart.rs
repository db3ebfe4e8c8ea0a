//! The project's own chart `helm/agent-job`, rendered by real helm with the README's install values,
//! applied with real kubectl (v1.37 and v1.32) to the Kubernetes API simulator: every object is
//! accepted (strict field validation on), re-applying changes nothing, and with RBAC on the
//! controller's ServiceAccount may do exactly what `scalr_agent::permissions` lists.

use super::{Kubectl, kubectl_1_37, machine_kubectl_1_32};
use crate::support::kube_sim::{Credential, KubeSim, KubeSimOptions};
use crate::support::tools;

const RELEASE: &str = "scalr-agent";
const NAMESPACE: &str = "scalr-agent";

/// `helm template` of the real chart with the seed README's values (token, metadata restriction,
/// persistence with an existing claim, debug) plus the URL; CRDs rendered separately.
fn render() -> (Vec<u8>, Vec<u8>) {
    let chart = tools::repo_root().join("helm/agent-job");
    let out = tools::helm()
        .args(["template", RELEASE])
        .arg(&chart)
        .args([
            "--namespace",
            NAMESPACE,
            "--set",
            "agent.url=https://acme.scalr.io",
            "--set",
            "agent.token=pool-token-chart-apply-test",
            "--set",
            "restrictMetadataService=true",
            "--set",
            "persistence.enabled=true",
            "--set",
            "persistence.persistentVolumeClaim.claimName=nfs-disk-pvc",
            "--set",
            "agent.debug=true",
        ])
        .output()
        .expect("run helm template");
    assert!(
        out.status.success(),
        "helm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crds =
        std::fs::read(chart.join("crds/agenttasktemplates.scalr.io.yaml")).expect("CRD file");
    (crds, out.stdout)
}

#[test]
fn the_chart_applies_with_real_kubectl_and_its_role_grants_exactly_the_controller_permissions() {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec![NAMESPACE.into()],
        ..KubeSimOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (crds, manifests) = render();
    let documents = crate::chart::parse_documents(&String::from_utf8_lossy(&manifests));

    for bin in [kubectl_1_37(), machine_kubectl_1_32()] {
        let admin = Kubectl::new(
            &bin,
            &sim,
            dir.path(),
            "admin",
            &Credential::Token(sim.admin_token().into()),
            NAMESPACE,
        );
        let applied = admin.ok_with_stdin(&["apply", "-f", "-"], Some(&crds));
        assert!(applied.contains("agenttasktemplates.scalr.io"), "{applied}");
        let applied = admin.ok_with_stdin(&["apply", "-f", "-"], Some(&manifests));
        for doc in &documents {
            let kind = doc["kind"].as_str().expect("kind").to_ascii_lowercase();
            let name = doc["metadata"]["name"].as_str().expect("name");
            assert!(
                applied.contains(&format!("/{name} ")) && applied.contains(&kind),
                "{kind}/{name} not applied:\n{applied}"
            );
        }
        // Applying the same render again changes nothing on the server. (kubectl still prints
        // "configured" for the PodDisruptionBudget: its selector's patch strategy is `replace`, so
        // client-side apply always sends it, as against a real cluster.)
        let before = sim.resource_version();
        let again = admin.ok_with_stdin(&["apply", "-f", "-"], Some(&manifests));
        assert_eq!(
            sim.resource_version(),
            before,
            "re-applying wrote objects:\n{again}"
        );
        assert!(
            again
                .lines()
                .all(|l| l.ends_with(" unchanged") || l.starts_with("poddisruptionbudget")),
            "{again}"
        );
    }

    let template = sim
        .get(
            "agenttasktemplates",
            NAMESPACE,
            &format!("{RELEASE}-task-template"),
        )
        .expect("the AgentTaskTemplate object");
    scalr_agent::controller::template::AgentTaskTemplate::from_value(&template)
        .expect("the applied template is valid for the controller");

    // The controller's ServiceAccount, with RBAC enforced from the chart's Role and RoleBinding.
    let sa = documents
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("a ServiceAccount")
        .to_string();
    let token = sim.add_service_account_token(NAMESPACE, &sa);
    sim.enable_rbac();
    let controller = Kubectl::new(
        &kubectl_1_37(),
        &sim,
        dir.path(),
        "controller",
        &Credential::Token(token),
        NAMESPACE,
    );
    for permission in scalr_agent::permissions::CONTROLLER_PERMISSIONS {
        let resource = if permission.group.is_empty() {
            permission.rbac_resource()
        } else {
            let (res, sub) = match permission.rbac_resource().split_once('/') {
                Some((r, s)) => (r.to_string(), Some(s.to_string())),
                None => (permission.rbac_resource(), None),
            };
            match sub {
                Some(sub) => format!("{res}.{}/{sub}", permission.group),
                None => format!("{res}.{}", permission.group),
            }
        };
        for verb in permission.verbs {
            let answer = controller.run(&["auth", "can-i", verb, &resource], None);
            assert_eq!(
                String::from_utf8_lossy(&answer.stdout).trim(),
                "yes",
                "the chart's Role must allow {verb} {resource}"
            );
        }
    }
    for (verb, resource) in [
        ("delete", "deployments.apps"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("get", "configmaps"),
        ("update", "jobs.batch"),
    ] {
        let answer = controller.run(&["auth", "can-i", verb, resource], None);
        assert_eq!(
            String::from_utf8_lossy(&answer.stdout).trim(),
            "no",
            "the chart's Role must not allow {verb} {resource}"
        );
    }
}
