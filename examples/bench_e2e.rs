//! Load through the whole system: N runs queued at once (default 200) with a concurrency limit
//! (default 50), on the simulators, with real task pods (exec-loop, worker, real terraform).
//!
//! `cargo run --release --example bench_e2e -- [--runs 200] [--concurrency 50]`
//!
//! Prints: whether every run completed; API calls per task (platform, and Kubernetes by the
//! controller); controller and worker peak memory (VmHWM); dispatch latency percentiles (a task
//! visible on the platform → its Job created); wall time. Figures go to docs/performance.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::e2e::{E2e, E2eOptions, NAMESPACE, SAMPLE_TF, is_terminal};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let runs_n = arg("--runs", 200);
    let concurrency = arg("--concurrency", 50) as u32;
    let binary = std::env::current_exe()
        .expect("own path")
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("scalr-agent"))
        .expect("target dir");
    assert!(
        binary.exists(),
        "build the agent first: cargo build --release --bin scalr-agent ({})",
        binary.display()
    );
    let mut options = E2eOptions::new(&binary);
    options.concurrency = concurrency;
    options.values = vec!["agent.debug=false".into()];
    let world = E2e::start(options);
    let controller = world.start_controller("scalr-agent-bench");
    let started = Instant::now();
    let runs: Vec<String> = (0..runs_n)
        .map(|_| world.queue_run(&[("main.tf", SAMPLE_TF)]))
        .collect();
    println!("bench_e2e: {runs_n} runs queued, concurrency {concurrency}");

    let mut task_seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut job_seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut worker_hwm = 0u64;
    let mut controller_hwm = 0u64;
    let mut max_in_flight = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let now = Instant::now();
        let mut done = 0;
        for run in &runs {
            let view = world.platform.run(run);
            for task in view.tasks {
                task_seen.entry(task).or_insert(now);
            }
            if is_terminal(view.status) {
                done += 1;
            }
        }
        let jobs = world.kube.list("jobs", NAMESPACE);
        let active = jobs
            .iter()
            .filter(|j| j["status"]["completionTime"].is_null() && j["status"]["failed"].is_null())
            .count();
        max_in_flight = max_in_flight.max(active);
        for job in jobs {
            if let Some(task) = job["metadata"]["labels"]["scalr.io/task-id"].as_str() {
                job_seen.entry(task.to_string()).or_insert(now);
            }
        }
        for p in world.executor.processes() {
            if p.running && p.container == "worker" {
                worker_hwm = worker_hwm.max(vm_hwm_kib(p.pid as u32).unwrap_or(0));
            }
        }
        controller_hwm = controller_hwm.max(vm_hwm_kib(controller.pid() as u32).unwrap_or(0));
        if done == runs.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let wall = started.elapsed();
    let mut statuses: BTreeMap<&'static str, usize> = BTreeMap::new();
    for run in &runs {
        *statuses
            .entry(world.platform.run(run).status.as_str())
            .or_insert(0) += 1;
    }
    let tasks = task_seen.len().max(1);
    let platform_calls = world.platform.requests().len();
    let kube_calls = world
        .kube
        .requests()
        .iter()
        .filter(|r| {
            r.user
                .as_deref()
                .is_some_and(|u| u.contains("serviceaccount"))
        })
        .count();
    let mut latencies: Vec<Duration> = job_seen
        .iter()
        .filter_map(|(task, job)| {
            task_seen
                .get(task)
                .map(|t| job.saturating_duration_since(*t))
        })
        .collect();
    latencies.sort();
    println!(
        "bench_e2e: wall time {:.1} s for {} runs ({} tasks)",
        wall.as_secs_f64(),
        runs.len(),
        tasks
    );
    println!("bench_e2e: run statuses {statuses:?}");
    println!("bench_e2e: most Jobs active at once: {max_in_flight} (limit {concurrency})");
    println!(
        "bench_e2e: API calls per task: platform {:.1} (all callers), Kubernetes {:.1} (controller)",
        platform_calls as f64 / tasks as f64,
        kube_calls as f64 / tasks as f64
    );
    println!(
        "bench_e2e: peak memory: controller {:.1} MiB, worker {:.1} MiB (largest)",
        controller_hwm as f64 / 1024.0,
        worker_hwm as f64 / 1024.0
    );
    println!(
        "bench_e2e: dispatch latency (task visible → Job created, 25 ms sampling): p50 {:?} p90 {:?} p99 {:?} max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let all_done = statuses.get("applied").copied().unwrap_or(0) == runs.len();
    if !all_done {
        eprintln!("bench_e2e: not every run applied\n{}", world.diagnostics());
        std::process::exit(1);
    }
}
