//! Real clients against the Kubernetes API simulator over TLS, through a kubeconfig: the machine's
//! kubectl v1.32 and kubectl v1.37.1 from `scripts/install-tools.sh` run `create -f`, client-side
//! `apply -f`, `get -o json`, `get -w`, `label`, `delete` and `auth can-i` with RBAC on; a chart
//! rendered by real `helm template` (helm v4.3.1) is applied with kubectl and its RBAC works.
//! kubectl validates as it does against real servers (no `--validate=false`): the simulator's
//! OpenAPI v3 index tells it the server checks fields (`fieldValidation=Strict`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::kube_sim::{Credential, KubeSim, KubeSimOptions};

mod helm;

const WAIT: Duration = Duration::from_secs(30);

/// `target/tools/bin`, after `scripts/install-tools.sh` ran once in this process (it caches).
pub fn tools_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("bash")
            .arg(root.join("scripts/install-tools.sh"))
            .output()
            .expect("run scripts/install-tools.sh");
        assert!(
            out.status.success(),
            "scripts/install-tools.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var_os("SCALR_AGENT_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/tools"))
            .join("bin")
    })
}

/// The machine image's kubectl v1.32. Its `kubectl` may be gcloud's dispatcher, which picks a
/// binary by the server's version; then its `kubectl.1.32` sibling is the one to run.
pub fn machine_kubectl_1_32() -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH is set");
    let found = std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|k| k.is_file())
        .expect("the machine image provides kubectl v1.32 on PATH");
    let real = std::fs::canonicalize(&found).unwrap_or(found.clone());
    let sibling = real.with_file_name("kubectl.1.32");
    let bin = if sibling.is_file() { sibling } else { found };
    let out = Command::new(&bin)
        .args(["version", "--client"])
        .output()
        .expect("run kubectl version");
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        version.contains("v1.32."),
        "{} is not kubectl v1.32: {version}",
        bin.display()
    );
    bin
}

pub fn kubectl_1_37() -> PathBuf {
    tools_bin().join("kubectl")
}

/// One kubectl binary pointed at one simulator with one identity, in its own HOME.
pub struct Kubectl<'a> {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: &'a Path,
    sim: &'a KubeSim,
}

impl<'a> Kubectl<'a> {
    pub fn new(
        bin: &Path,
        sim: &'a KubeSim,
        dir: &'a Path,
        name: &str,
        credential: &Credential,
        namespace: &str,
    ) -> Kubectl<'a> {
        let config_dir = dir.join(name);
        std::fs::create_dir_all(&config_dir).expect("kubeconfig dir");
        Kubectl {
            bin: bin.to_path_buf(),
            kubeconfig: sim.write_kubeconfig(&config_dir, credential, namespace),
            home: dir,
            sim,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home)
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .current_dir(self.home);
        cmd
    }

    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()));
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(bytes) = stdin {
            input.write_all(bytes).expect("write kubectl's stdin");
        }
        drop(input);
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with_stdin(args, None)
    }

    pub fn ok_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.sim.dump()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_with_stdin(args, &[])
    }

    pub fn fails_with_stdin(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, Some(stdin));
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

const MANIFESTS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: demo}
data:
  level: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example/web:1.0
        env:
        - {name: LEVEL, value: "1"}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: example/task:1.0}
"#;

/// create, apply, get -o json, get -w, label and delete with one kubectl binary.
fn manage_objects(bin: PathBuf) {
    let sim = KubeSim::start(KubeSimOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Credential::Token(sim.admin_token().to_string());
    let k = Kubectl::new(&bin, &sim, dir.path(), "admin", &admin, "default");
    let manifests = dir.path().join("manifests.yaml");
    std::fs::write(&manifests, MANIFESTS).expect("write manifests");
    let manifests = manifests.to_str().expect("a UTF-8 path");

    let created = k.ok(&["create", "-f", manifests]);
    assert!(created.contains("deployment.apps/web created"), "{created}");
    for (resource, name) in [
        ("configmaps", "settings"),
        ("deployments", "web"),
        ("jobs", "once"),
    ] {
        assert!(
            sim.get(resource, "default", name).is_some(),
            "{resource}/{name} missing:\n{}",
            sim.dump()
        );
    }
    let typo = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n";
    let strict = k.fails_with_stdin(&["create", "-f", "-"], typo.as_bytes());
    assert!(
        strict.contains("strict decoding error: unknown field \"datta\""),
        "{strict}"
    );
    let again = k.fails(&["create", "-f", manifests]);
    assert!(
        again.contains("Error from server (AlreadyExists)")
            && again.contains("configmaps \"settings\" already exists"),
        "{again}"
    );

    // Client-side apply over objects kubectl created: strategic merge patches for built-ins.
    let changed = MANIFESTS
        .replace("level: \"1\"", "level: \"2\"")
        .replace("web:1.0", "web:2.0")
        .replace("value: \"1\"", "value: \"2\"");
    let applied = k.ok_with_stdin(&["apply", "-f", "-"], Some(changed.as_bytes()));
    assert!(
        applied.contains("configmap/settings configured")
            && applied.contains("deployment.apps/web configured"),
        "{applied}"
    );
    let settings = sim
        .get("configmaps", "default", "settings")
        .expect("settings");
    assert_eq!(settings["data"]["level"], "2");
    assert!(
        settings["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    let web = sim.get("deployments", "default", "web").expect("web");
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        (container["image"].as_str(), container["env"].clone()),
        (
            Some("example/web:2.0"),
            json!([{"name": "LEVEL", "value": "2"}])
        )
    );
    assert_eq!(web["metadata"]["generation"], 2);
    let unchanged = k.ok_with_stdin(&["apply", "-f", "-"], Some(changed.as_bytes()));
    assert!(
        unchanged.contains("configmap/settings unchanged")
            && unchanged.contains("deployment.apps/web unchanged"),
        "{unchanged}"
    );

    let got: Value = serde_json::from_str(&k.ok(&["get", "deployment", "web", "-o", "json"]))
        .expect("kubectl prints JSON");
    assert_eq!(got["metadata"]["uid"], web["metadata"]["uid"]);
    let list: Value =
        serde_json::from_str(&k.ok(&["get", "jobs", "-o", "json"])).expect("kubectl prints JSON");
    assert_eq!(list["items"][0]["metadata"]["name"], "once");
    let table = k.ok(&["get", "configmaps"]);
    assert!(table.contains("settings"), "{table}");

    // get -w sees a change made after its watch started.
    let mut watcher = k
        .command(&["get", "configmap", "settings", "-w", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kubectl get -w");
    let stdout = watcher.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    assert!(
        sim.wait_until(WAIT, |s| s.active_watches() >= 1),
        "kubectl never watched:\n{}",
        sim.dump()
    );
    assert!(
        k.ok(&["label", "configmap", "settings", "tier=gold"])
            .contains("configmap/settings labeled")
    );
    let mut seen = false;
    while let Ok(line) = rx.recv_timeout(WAIT) {
        if line.contains("\"tier\": \"gold\"") {
            seen = true;
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        seen,
        "kubectl get -w did not print the labelled object:\n{}",
        sim.dump()
    );
    assert_eq!(
        sim.get("configmaps", "default", "settings")
            .expect("settings")["metadata"]["labels"]["tier"],
        "gold"
    );
    let no_overwrite = k.fails(&["label", "configmap", "settings", "tier=silver"]);
    assert!(
        no_overwrite.contains("already has a value (gold)"),
        "{no_overwrite}"
    );
    k.ok(&[
        "label",
        "configmap",
        "settings",
        "tier=silver",
        "--overwrite",
    ]);
    k.ok(&["label", "configmap", "settings", "tier-"]);
    assert!(
        sim.get("configmaps", "default", "settings")
            .expect("settings")["metadata"]["labels"]
            .get("tier")
            .is_none()
    );

    let deleted = k.ok(&["delete", "-f", manifests]);
    assert!(deleted.contains("\"web\" deleted"), "{deleted}");
    for (resource, name) in [
        ("configmaps", "settings"),
        ("deployments", "web"),
        ("jobs", "once"),
    ] {
        assert!(
            sim.get(resource, "default", name).is_none(),
            "{resource}/{name} still there:\n{}",
            sim.dump()
        );
    }
    let missing = k.fails(&["get", "job", "once"]);
    assert!(
        missing.contains("Error from server (NotFound): jobs.batch \"once\" not found"),
        "{missing}"
    );
}

/// `auth can-i` and a forbidden create with RBAC on, for a service account and an x509 user.
fn rbac_with(bin: PathBuf) {
    let sim = KubeSim::start(KubeSimOptions {
        namespaces: vec!["ci".into()],
        ..KubeSimOptions::default()
    });
    sim.enable_rbac();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = Kubectl::new(
        &bin,
        &sim,
        dir.path(),
        "admin",
        &Credential::Token(sim.admin_token().into()),
        "ci",
    );
    let token = sim.add_service_account_token("ci", "agent");
    let agent = Kubectl::new(
        &bin,
        &sim,
        dir.path(),
        "agent",
        &Credential::Token(token),
        "ci",
    );

    let no = agent.run(&["auth", "can-i", "create", "jobs"], None);
    assert_eq!(
        (no.status.code(), String::from_utf8_lossy(&no.stdout).trim()),
        (Some(1), "no")
    );
    let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: main, image: example/task:1.0}]\n";
    let job_file = dir.path().join("job.yaml");
    std::fs::write(&job_file, job).expect("write job");
    let job_file = job_file.to_str().expect("a UTF-8 path");
    let forbidden = agent.fails(&["create", "-f", job_file]);
    assert!(forbidden.contains("Error from server (Forbidden)") && forbidden.contains(
        "jobs.batch is forbidden: User \"system:serviceaccount:ci:agent\" cannot create resource \"jobs\" in API group \"batch\" in the namespace \"ci\""),
        "{forbidden}");

    let rbac = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: launcher}\nrules:\n- {apiGroups: [batch], resources: [jobs], verbs: [create, get, list, watch]}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: launcher}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: launcher}\nsubjects:\n- {kind: ServiceAccount, name: agent, namespace: ci}\n";
    admin.ok_with_stdin(&["apply", "-f", "-"], Some(rbac.as_bytes()));
    assert_eq!(agent.ok(&["auth", "can-i", "create", "jobs"]).trim(), "yes");
    let no_delete = agent.run(&["auth", "can-i", "delete", "jobs"], None);
    assert_eq!(
        (
            no_delete.status.code(),
            String::from_utf8_lossy(&no_delete.stdout).trim()
        ),
        (Some(1), "no")
    );
    let elsewhere = agent.run(&["auth", "can-i", "create", "jobs", "-n", "default"], None);
    assert_eq!(elsewhere.status.code(), Some(1));
    agent.ok(&["create", "-f", job_file]);
    assert!(sim.get("jobs", "ci", "j").is_some());

    let leaf = sim.client_cert("ops", &["ops-team"]);
    let ops = Kubectl::new(
        &bin,
        &sim,
        dir.path(),
        "ops",
        &Credential::ClientCert(leaf),
        "ci",
    );
    assert_eq!(
        ops.run(&["auth", "can-i", "list", "namespaces"], None)
            .status
            .code(),
        Some(1)
    );
    let binding = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: ops-view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view-namespaces}\nsubjects:\n- {kind: Group, name: ops-team}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: view-namespaces}\nrules:\n- {apiGroups: [\"\"], resources: [namespaces], verbs: [get, list]}\n";
    admin.ok_with_stdin(&["apply", "-f", "-"], Some(binding.as_bytes()));
    assert_eq!(
        ops.ok(&["auth", "can-i", "list", "namespaces"]).trim(),
        "yes"
    );
    assert!(ops.ok(&["get", "namespaces"]).contains("kube-system"));
}

#[test]
fn kubectl_1_32_manages_objects() {
    manage_objects(machine_kubectl_1_32());
}

#[test]
fn kubectl_1_37_manages_objects() {
    manage_objects(kubectl_1_37());
}

#[test]
fn kubectl_1_32_auth_can_i_with_rbac() {
    rbac_with(machine_kubectl_1_32());
}

#[test]
fn kubectl_1_37_auth_can_i_with_rbac() {
    rbac_with(kubectl_1_37());
}
