//! The cache volume and its claim, PodDisruptionBudgets, the metadata NetworkPolicy, CA bundles.

use super::templates::selects;
use super::{container, env, mount, render, volume};
use serde_json::{Value, json};

#[test]
fn cache_volume_follows_persistence_settings() {
    struct Case {
        args: &'static [&'static str],
        cache: Value,
        /// The claim the chart creates: `None` for no claim, else its `storageClassName` field.
        created_claim: Option<Option<&'static str>>,
        sub_path: Option<&'static str>,
        provider_cache: &'static str,
    }
    let claim = |name: &str| json!({"persistentVolumeClaim": {"claimName": name}});
    let cases = [
        Case {
            args: &[],
            cache: json!({"emptyDir": {"sizeLimit": "1Gi"}}),
            created_claim: None,
            sub_path: None,
            provider_cache: "0",
        },
        Case {
            args: &[
                "persistence.emptyDir.sizeLimit=2Gi",
                "persistence.persistentVolumeClaim.subPath=x",
            ],
            cache: json!({"emptyDir": {"sizeLimit": "2Gi"}}),
            created_claim: None,
            sub_path: None,
            provider_cache: "0",
        },
        Case {
            args: &["persistence.enabled=true"],
            cache: claim("scalr-agent-cache"),
            created_claim: Some(None),
            sub_path: None,
            provider_cache: "1",
        },
        Case {
            args: &[
                "persistence.enabled=true",
                "persistence.persistentVolumeClaim.storageClassName=-",
            ],
            cache: claim("scalr-agent-cache"),
            created_claim: Some(Some("")),
            sub_path: None,
            provider_cache: "1",
        },
        Case {
            args: &[
                "persistence.enabled=true",
                "persistence.persistentVolumeClaim.storageClassName=efs-sc",
            ],
            cache: claim("scalr-agent-cache"),
            created_claim: Some(Some("efs-sc")),
            sub_path: None,
            provider_cache: "1",
        },
        Case {
            args: &[
                "persistence.enabled=true",
                "persistence.persistentVolumeClaim.claimName=nfs-disk-pvc",
                "persistence.persistentVolumeClaim.subPath=team-a",
            ],
            cache: claim("nfs-disk-pvc"),
            created_claim: None,
            sub_path: Some("team-a"),
            provider_cache: "1",
        },
        Case {
            args: &[
                "persistence.enabled=true",
                "task.providerCache.enabled=false",
            ],
            cache: claim("scalr-agent-cache"),
            created_claim: Some(None),
            sub_path: None,
            provider_cache: "0",
        },
        Case {
            args: &["task.providerCache.enabled=true"],
            cache: json!({"emptyDir": {"sizeLimit": "1Gi"}}),
            created_claim: None,
            sub_path: None,
            provider_cache: "1",
        },
    ];
    for case in cases {
        let args: Vec<&str> = case.args.iter().flat_map(|a| ["--set", a]).collect();
        let r = render(&args);
        let pod = r.task_pod();
        let mut cache = volume(pod, "cache").clone();
        cache
            .as_object_mut()
            .expect("volume is an object")
            .remove("name");
        assert_eq!(cache, case.cache, "{:?}", case.args);
        let claims = r.of_kind("PersistentVolumeClaim");
        match case.created_claim {
            None => assert!(claims.is_empty(), "{:?} created a claim", case.args),
            Some(class) => {
                let spec = &r.one("PersistentVolumeClaim")["spec"];
                assert_eq!(
                    r.one("PersistentVolumeClaim")["metadata"]["name"],
                    "scalr-agent-cache"
                );
                assert_eq!(spec["accessModes"], json!(["ReadWriteMany"]));
                assert_eq!(spec["resources"]["requests"]["storage"], "90Gi");
                assert_eq!(spec["storageClassName"].as_str(), class, "{:?}", case.args);
            }
        }
        for name in ["runner", "worker"] {
            let m = mount(container(pod, name), "cache").expect("cache mount");
            assert_eq!(
                m["subPath"].as_str(),
                case.sub_path,
                "{name} {:?}",
                case.args
            );
        }
        let worker = container(pod, "worker");
        assert_eq!(
            env(worker, "SCALR_AGENT_PROVIDER_CACHE_ENABLED"),
            Some(case.provider_cache),
            "{:?}",
            case.args
        );
    }
}

#[test]
fn task_pods_resist_drains_and_controllers_keep_one_replica() {
    let r = render(&[]);
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 0);
    let task_labels = &r.job_template()["spec"]["template"]["metadata"]["labels"];
    let controller_labels = &r.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&pdb["spec"]["selector"], task_labels));
    assert!(!selects(&pdb["spec"]["selector"], controller_labels));

    let ha = render(&["--set", "agent.replicaCount=3"]);
    let controller_pdb = ha.named("PodDisruptionBudget", "scalr-agent-controller");
    assert_eq!(controller_pdb["spec"]["minAvailable"], 1);
    assert!(selects(
        &controller_pdb["spec"]["selector"],
        controller_labels
    ));
    assert!(!selects(&controller_pdb["spec"]["selector"], task_labels));
    assert_eq!(ha.one("Deployment")["spec"]["replicas"], 3);

    let off = render(&["--set", "task.podDisruptionBudget.enabled=false"]);
    assert!(off.of_kind("PodDisruptionBudget").is_empty());
}

#[test]
fn metadata_service_policy_denies_only_the_metadata_endpoints() {
    assert!(
        render(&[]).of_kind("NetworkPolicy").is_empty(),
        "off by default"
    );
    let r = render(&["--set", "restrictMetadataService=true"]);
    let policy = r.one("NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Egress"]));
    assert_eq!(
        policy["spec"]["egress"],
        json!([
            {"to": [{"namespaceSelector": {}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}},
                    {"ipBlock": {"cidr": "::/0", "except": ["fd00:ec2::254/128"]}}]}
        ])
    );
    let selector = &policy["spec"]["podSelector"];
    let task_labels = &r.job_template()["spec"]["template"]["metadata"]["labels"];
    let controller_labels = &r.one("Deployment")["spec"]["template"]["metadata"]["labels"];
    assert!(selects(selector, task_labels), "task pods are restricted");
    assert!(
        selects(selector, controller_labels),
        "the controller is restricted"
    );
    let other =
        json!({"app.kubernetes.io/name": "scalr-agent", "app.kubernetes.io/instance": "other"});
    assert!(
        !selects(selector, &other),
        "another release's pods are not this policy's business"
    );
}

#[test]
fn ca_bundle_from_an_existing_secret_is_mounted_everywhere_without_a_config_map() {
    let r = render(&[
        "--set",
        "tls.caBundleSecret.name=corp-ca",
        "--set",
        "tls.caBundleSecret.key=bundle.pem",
        "--set",
        "tls.caBundle=ignored-when-a-secret-is-named",
    ]);
    assert!(r.of_kind("ConfigMap").is_empty());
    let want = json!({"secretName": "corp-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]});
    assert_eq!(volume(r.task_pod(), "ca-bundle")["secret"], want);
    assert_eq!(volume(r.controller_pod(), "ca-bundle")["secret"], want);
    for (pod, name) in [
        (r.task_pod(), "runner"),
        (r.task_pod(), "worker"),
        (r.controller_pod(), "controller"),
    ] {
        let c = container(pod, name);
        assert_eq!(
            env(c, "SSL_CERT_FILE"),
            Some("/etc/scalr-agent/ca/ca.crt"),
            "{name}"
        );
        let m = mount(c, "ca-bundle").unwrap_or_else(|| panic!("{name} mounts the CA"));
        assert_eq!(m["readOnly"], true);
    }
}

#[test]
fn token_change_restarts_the_controller_and_nothing_else() {
    let annotation = |token: &str| {
        let r = render(&["--set", &format!("agent.token={token}")]);
        let pod_meta = &r.one("Deployment")["spec"]["template"]["metadata"];
        let sum = pod_meta["annotations"]["checksum/token"]
            .as_str()
            .expect("checksum")
            .to_owned();
        (sum, r.one("AgentTaskTemplate").clone())
    };
    let (a, template_a) = annotation("token-a");
    let (a_again, _) = annotation("token-a");
    let (b, template_b) = annotation("token-b");
    assert_eq!(a.len(), 64);
    assert_eq!(a, a_again, "same token, same pods");
    assert_ne!(a, b, "a new token rolls the controller");
    assert_eq!(
        template_a, template_b,
        "task pods do not depend on the pool token"
    );
}
