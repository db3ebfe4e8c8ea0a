//! The limit holds with 50 tasks offered at once: never more unfinished Jobs than the concurrency,
//! slots return when Jobs finish or are deleted, and every task gets its Job in the end.

use std::collections::BTreeSet;

use super::world::{NS, World};
use crate::support::kube_sim::Propagation;

/// Unfinished Jobs: no Complete or Failed condition.
fn live(jobs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    jobs.iter()
        .filter(|j| {
            !j["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True"
                })
            })
        })
        .collect()
}

#[test]
fn the_limit_holds_with_50_tasks_offered_at_once() {
    const LIMIT: usize = 5;
    let world = World::new();
    let controller = world.start("ctl-0", LIMIT as u32);
    let runs = world.queue(50);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut most = 0;
    let mut finished = 0usize;
    // Only this closure finishes Jobs, so between two of its runs the number of unfinished Jobs can
    // only grow: every state above the limit stays visible until it runs again. It finishes them a
    // full batch at a time (50 is a multiple of the limit), so the limit is also reached.
    world.eventually("every task launched", |w| {
        let jobs = w.jobs();
        let unfinished = live(&jobs);
        most = most.max(unfinished.len());
        assert!(
            unfinished.len() <= LIMIT,
            "{} unfinished Jobs with a limit of {LIMIT}",
            unfinished.len()
        );
        assert!(controller.metrics.limiter_in_flight.get() <= LIMIT as i64);
        for job in &jobs {
            if let Some(task) = job["metadata"]["annotations"]["scalr.io/task-id"].as_str() {
                seen.insert(task.to_string());
            }
        }
        if unfinished.len() < LIMIT {
            return seen.len() == runs.len() && unfinished.is_empty();
        }
        // Finish half of them, delete the other half: both return the slot.
        for job in unfinished {
            let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
            if finished.is_multiple_of(2) {
                w.job_condition(job, "Complete", "Completed", "done");
            } else {
                w.kube.delete("jobs", NS, &name, Propagation::Background);
            }
            finished += 1;
        }
        false
    });
    assert_eq!(most, LIMIT, "the controller used every slot");
    // Exactly one Job per task ever: Job names are unique per task, so count distinct creations.
    let created = |w: &World| {
        w.kube
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/jobs") && r.status == 201)
            .count()
    };
    world.eventually("every creation logged", |w| created(w) >= runs.len());
    assert_eq!(created(&world), runs.len());
}
