//! Run flags through real terraform: `-replace` recreates the named resource, `-refresh-only`
//! proposes only state and output updates, and a tool release served as a `.tar.gz` is unpacked
//! into the binary cache and runs.

use super::*;
use crate::support::platform_sim::TaskState;
use crate::support::task_pod::terraform_bytes;

const TWO: &str = r#"
resource "terraform_data" "a" {
  input = "a"
}

resource "terraform_data" "b" {
  input = "b"
}
"#;

/// The ids terraform gave the resources in the platform's state, by resource name.
fn ids(world: &World) -> Vec<(String, String)> {
    let state = world.sim.state(&world.ws).expect("a state on the platform");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    let mut out: Vec<(String, String)> = state["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_string(),
                r["instances"][0]["attributes"]["id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Applies `TWO` once; returns its configuration version and the resource ids it made.
fn applied(world: &World, options: &PodOptions) -> (String, Vec<(String, String)>) {
    let cv = world.cv(&[("main.tf", TWO)]);
    let (run, _) = world.run_to_end(RunSpec::new(&cv), options);
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);
    let ids = ids(world);
    assert_eq!(ids.len(), 2, "{ids:?}");
    (cv, ids)
}

#[test]
fn a_replace_run_recreates_only_the_named_resource() {
    let world = world();
    let options = PodOptions::default();
    let (cv, before) = applied(&world, &options);

    let mut spec = RunSpec::new(&cv);
    spec.replace_addrs = vec!["terraform_data.a".into()];
    let (run, pods) = world.run_to_end(spec, &options);
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);
    let plan = world.sim.task(&pods[0].task).result.expect("plan result");
    assert_eq!(
        (plan.additions, plan.changes, plan.destructions),
        (1, 0, 1),
        "{}",
        plan.message
    );
    position(&world.log(&run, Stage::Plan), "-replace=terraform_data.a");
    let after = ids(&world);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_ne!(after[0], before[0], "a was replaced");
    assert_eq!(after[1], before[1], "b was left alone");
}

#[test]
fn a_refresh_only_run_updates_outputs_and_leaves_resources_alone() {
    let world = world();
    let options = PodOptions::default();
    let (_, before) = applied(&world, &options);

    // A new resource and a new output: refresh-only mode proposes the output, never the resource.
    let more = format!(
        "{TWO}\nresource \"terraform_data\" \"c\" {{}}\n\noutput \"seen\" {{\n  value = \"yes\"\n}}\n"
    );
    let cv = world.cv(&[("main.tf", more.as_str())]);
    let mut spec = RunSpec::new(&cv);
    spec.refresh_only = true;
    let (run, pods) = world.run_to_end(spec, &options);
    let plan = world.sim.task(&pods[0].task).result.expect("plan result");
    assert_eq!(plan.status, TaskState::Finished, "{}", pods[0].logs());
    assert!(plan.has_changes, "the output is a change");
    assert_eq!((plan.additions, plan.changes, plan.destructions), (0, 0, 0));
    assert_eq!(
        plan.message,
        "Plan: no resource changes; outputs or the state will be updated."
    );
    position(&world.log(&run, Stage::Plan), "-refresh-only");
    assert_eq!(world.sim.run(&run).status, RunStatus::Applied);
    assert_eq!(ids(&world), before, "no resource was created or replaced");
    let state = world.sim.state(&world.ws).expect("state");
    let state: serde_json::Value = serde_json::from_slice(&state).expect("state JSON");
    assert_eq!(state["outputs"]["seen"]["value"], "yes", "{state}");
}

#[test]
fn a_tool_served_as_a_tar_gz_is_unpacked_into_the_cache_and_runs() {
    let world = world();
    // The same release, now served as an archive holding the executable under a directory.
    world.sim.register_tool(
        "terraform",
        "1.15.5",
        "linux_amd64",
        "tar.gz",
        tar_gz(&[
            ("terraform_1.15.5/LICENSE.txt", b"license text".as_slice()),
            ("terraform_1.15.5/terraform", terraform_bytes().as_slice()),
        ]),
    );
    let cv = world.cv(&[("main.tf", TWO)]);
    let (run, pods) = world.run_to_end(RunSpec::new(&cv), &PodOptions::default());
    assert_eq!(
        world.sim.run(&run).status,
        RunStatus::Applied,
        "{}",
        pods[0].logs()
    );
    assert_eq!(ids(&world).len(), 2);
}
