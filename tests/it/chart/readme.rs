//! The chart's README: every helm and kubectl command in it works as written, each helm command has
//! a case here asserting what it does, and README.md is exactly what `scripts/chart-readme.py`
//! generates from README.md.gotmpl and values.yaml. (The log-bundle shell loop needs a cluster; it
//! runs against the Kubernetes API simulator in that simulator's tests.)

use super::{Rendered, container, env, env_var, volume};
use crate::support::tools;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;

/// One helm command of the README: its `--set`/`--set-string` flags, as helm gets them.
struct HelmCase {
    sets: &'static [&'static str],
    check: fn(&Rendered),
}

const EXISTING_SECRET: &str = "scalr-agent-pool-token";
const PLACEHOLDER_TOKEN: &str = "<agent-pool-token>";

const CASES: &[HelmCase] = &[
    HelmCase {
        sets: &[
            "agent.url=https://<account>.scalr.io",
            "agent.token=<agent-pool-token>",
        ],
        check: |r| {
            let secret = r.named("Secret", "scalr-agent-token");
            assert_eq!(secret["data"]["token"], json!(b64(PLACEHOLDER_TOKEN)));
            let controller = container(r.controller_pod(), "controller");
            assert_eq!(
                env(controller, "SCALR_URL"),
                Some("https://<account>.scalr.io")
            );
            let worker = container(r.task_pod(), "worker");
            assert_eq!(env(worker, "SCALR_URL"), Some("https://<account>.scalr.io"));
        },
    },
    HelmCase {
        sets: &[
            "agent.url=https://<account>.scalr.io",
            "agent.tokenExistingSecret.name=scalr-agent-pool-token",
        ],
        check: |r| {
            assert!(
                r.of_kind("Secret").is_empty(),
                "the user's Secret replaces the chart's"
            );
            let controller = container(r.controller_pod(), "controller");
            let from = &env_var(controller, "SCALR_AGENT_TOKEN").expect("token env")["valueFrom"];
            assert_eq!(
                from["secretKeyRef"],
                json!({"name": EXISTING_SECRET, "key": "token"})
            );
        },
    },
    HelmCase {
        sets: &["restrictMetadataService=true"],
        check: |r| {
            let policy = r.one("NetworkPolicy");
            assert_eq!(
                policy["spec"]["egress"][1]["to"][0]["ipBlock"]["except"],
                json!(["169.254.169.254/32"])
            );
        },
    },
    HelmCase {
        sets: &["agent.debug=true"],
        check: |r| {
            let controller = container(r.controller_pod(), "controller");
            let worker = container(r.task_pod(), "worker");
            assert_eq!(env(controller, "SCALR_AGENT_DEBUG"), Some("1"));
            assert_eq!(env(worker, "SCALR_AGENT_DEBUG"), Some("1"));
        },
    },
    HelmCase {
        sets: &[
            "persistence.enabled=true",
            "persistence.persistentVolumeClaim.claimName=nfs-disk-pvc",
        ],
        check: |r| {
            assert!(
                r.of_kind("PersistentVolumeClaim").is_empty(),
                "an existing claim is used as is"
            );
            let cache = volume(r.task_pod(), "cache");
            assert_eq!(
                cache["persistentVolumeClaim"],
                json!({"claimName": "nfs-disk-pvc"})
            );
            let worker = container(r.task_pod(), "worker");
            assert_eq!(env(worker, "SCALR_AGENT_PROVIDER_CACHE_ENABLED"), Some("1"));
        },
    },
    HelmCase {
        sets: &[
            "agent.nodeSelector.pool=agents",
            "task.nodeSelector.pool=runs",
            "task.tolerations[0].key=dedicated,task.tolerations[0].operator=Equal,task.tolerations[0].value=runs,task.tolerations[0].effect=NoSchedule",
        ],
        check: |r| {
            assert_eq!(
                r.controller_pod()["nodeSelector"],
                json!({"pool": "agents"})
            );
            assert!(r.controller_pod().get("tolerations").is_none());
            let pod = r.task_pod();
            assert_eq!(pod["nodeSelector"], json!({"pool": "runs"}));
            assert_eq!(
                pod["tolerations"],
                json!([{"key": "dedicated", "operator": "Equal", "value": "runs", "effect": "NoSchedule"}])
            );
        },
    },
    HelmCase {
        sets: &[
            "agent.extraEnv[0].name=TZ,agent.extraEnv[0].value=UTC",
            "task.runner.extraEnv[0].name=TF_LOG,task.runner.extraEnv[0].value=INFO",
        ],
        check: |r| {
            let controller = container(r.controller_pod(), "controller");
            let (runner, worker) = (
                container(r.task_pod(), "runner"),
                container(r.task_pod(), "worker"),
            );
            assert_eq!(env(controller, "TZ"), Some("UTC"));
            assert_eq!(env(worker, "TZ"), Some("UTC"));
            assert_eq!(env(runner, "TF_LOG"), Some("INFO"));
            assert!(env_var(runner, "TZ").is_none() && env_var(worker, "TF_LOG").is_none());
        },
    },
];

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Commands of the README's ```console blocks: continuation lines (and `...` lines standing for
/// elided ones) joined, `$ ` prompts dropped, split into words as a POSIX shell would.
fn readme_commands() -> Vec<Vec<String>> {
    let text =
        std::fs::read_to_string(super::chart_dir().join("README.md")).expect("read README.md");
    let mut commands = Vec::new();
    let mut in_console = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_console = trimmed == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        let body = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        if body == "..." {
            pending.push_str(" ... "); // elided lines of a longer command: it goes on
            continue;
        }
        match body.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(body);
                commands.push(shell_words(&pending));
                pending.clear();
            }
        }
    }
    commands
}

fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                words.extend(word.take());
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[test]
fn shell_words_splits_like_a_shell() {
    let cases = [
        (r#"a "b c" 'd e'"#, vec!["a", "b c", "d e"]),
        (
            r#"--set agent.token="<x>""#,
            vec!["--set", "agent.token=<x>"],
        ),
        (r#"x\ y "q\"q""#, vec!["x y", "q\"q"]),
        ("  spaced   out ", vec!["spaced", "out"]),
    ];
    for (line, want) in cases {
        assert_eq!(shell_words(line), want, "{line}");
    }
}

#[test]
fn every_helm_command_in_the_readme_renders_and_does_what_it_says() {
    let commands = readme_commands();
    let helm_commands: Vec<&Vec<String>> = commands.iter().filter(|c| c[0] == "helm").collect();
    let mut covered = BTreeSet::new();
    for words in &helm_commands {
        assert_eq!(
            words[1], "upgrade",
            "README installs with `helm upgrade --install`: {words:?}"
        );
        let mut args: Vec<&str> = Vec::new();
        let mut sets = Vec::new();
        let mut iter = words.iter().skip(2);
        while let Some(word) = iter.next() {
            match word.as_str() {
                "--set" | "--set-string" => {
                    let value = iter.next().expect("a value after --set");
                    args.extend([word.as_str(), value.as_str()]);
                    sets.push(value.as_str());
                }
                "--namespace" | "-n" => {
                    assert_eq!(
                        iter.next().map(String::as_str),
                        Some(super::NAMESPACE),
                        "{words:?}"
                    );
                }
                "--install" | "--create-namespace" | "--reuse-values" | "..." | "scalr-agent" => {}
                "./helm/agent-job" => {}
                other => panic!(
                    "README command has a word this test does not know: {other} in {words:?}"
                ),
            }
        }
        let case = CASES
            .iter()
            .position(|c| c.sets == sets.as_slice())
            .unwrap_or_else(|| {
                panic!("README command {sets:?} has no HelmCase in tests/it/chart/readme.rs")
            });
        let rendered = super::try_render(&args)
            .unwrap_or_else(|e| panic!("README command {words:?} does not render:\n{e}"));
        (CASES[case].check)(&rendered);
        covered.insert(case);
    }
    let stale: Vec<_> = (0..CASES.len())
        .filter(|i| !covered.contains(i))
        .map(|i| CASES[i].sets)
        .collect();
    assert!(
        stale.is_empty(),
        "cases for commands the README no longer has: {stale:?}"
    );
}

#[test]
fn readme_kubectl_command_creates_the_secret_the_chart_reads() {
    let commands = readme_commands();
    let kubectl: Vec<&Vec<String>> = commands.iter().filter(|c| c[0] == "kubectl").collect();
    assert_eq!(kubectl.len(), 1, "{kubectl:?}");
    let out = tools::kubectl()
        .args(&kubectl[0][1..])
        .args(["--dry-run=client", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret: Value = serde_json::from_slice(&out.stdout).expect("kubectl prints JSON");
    assert_eq!(secret["metadata"]["name"], EXISTING_SECRET);
    assert_eq!(secret["metadata"]["namespace"], super::NAMESPACE);
    assert_eq!(
        secret["data"]["token"],
        json!(b64(PLACEHOLDER_TOKEN)),
        "key `token`, the chart's default"
    );
}

fn chart_readme(arg: &str) -> std::process::Output {
    Command::new("python3")
        .arg(tools::repo_root().join("scripts/chart-readme.py"))
        .arg(arg)
        .output()
        .expect("run python3 scripts/chart-readme.py")
}

#[test]
fn readme_md_is_generated_from_the_template_and_values() {
    let out = chart_readme("--check");
    assert!(
        out.status.success(),
        "{}\nrun scripts/chart-readme.py and commit helm/agent-job/README.md",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readme_script_reads_values_yaml_as_helm_does() {
    // The script's small YAML parser must agree with a real one on every default it documents.
    let out = chart_readme("--dump-values");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script: Value = serde_json::from_slice(&out.stdout).expect("--dump-values prints JSON");
    let text =
        std::fs::read_to_string(super::chart_dir().join("values.yaml")).expect("values.yaml");
    let real: Value = serde_yaml_ng::from_str(&text).expect("values.yaml is YAML");
    assert_eq!(script, real);
}

#[test]
fn schema_describes_no_value_that_values_yaml_lacks() {
    // additionalProperties:false makes helm reject keys missing from the schema; this is the other
    // direction: a settable key without a documented default would be invisible in the README.
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(super::chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("schema is JSON");
    let values: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(super::chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let mut missing = Vec::new();
    walk_schema(&schema, &values, "", &mut missing);
    assert!(
        missing.is_empty(),
        "in values.schema.json but not values.yaml: {missing:?}"
    );
}

fn walk_schema(schema: &Value, values: &Value, path: &str, missing: &mut Vec<String>) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (key, sub) in props {
        let here = format!("{path}.{key}");
        if here == ".global" || sub.get("$ref").is_some() {
            continue; // Helm's own key, and Kubernetes shapes documented as a whole.
        }
        match values.get(key) {
            None => missing.push(here),
            Some(v) => walk_schema(sub, v, &here, missing),
        }
    }
}

#[test]
fn readme_permissions_table_matches_the_controller_permissions() {
    let text = std::fs::read_to_string(super::chart_dir().join("README.md")).expect("README.md");
    let section = text
        .split("## Permissions")
        .nth(1)
        .expect("a Permissions section");
    let rows: BTreeSet<(String, String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("|-"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let unquote = |c: &str| c.trim_matches('`').trim_matches('"').to_owned();
            (unquote(cells[1]), unquote(cells[2]), cells[3].to_owned())
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = scalr_agent::permissions::CONTROLLER_PERMISSIONS
        .iter()
        .map(|p| (p.group.to_owned(), p.rbac_resource(), p.verbs.join(", ")))
        .collect();
    assert_eq!(
        rows, want,
        "README's Permissions table and src/permissions.rs disagree"
    );
}
