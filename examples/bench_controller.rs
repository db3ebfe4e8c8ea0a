//! Benchmark of `scalr-agent controller`; prints figures, asserts nothing.
//!
//! `cargo build --release --bin scalr-agent && cargo run --release --example bench_controller
//! [-- --tasks N --trickle M]`
//!
//! Runs the release binary as its own process against the platform simulator and the Kubernetes API
//! simulator (TLS) in this process, with concurrency N, and watches Jobs with the project's
//! Kubernetes client:
//! 1. Trickle: M runs queued one after another (each when the previous task's Job exists): dispatch
//!    latency, run queued (offer available) → Job seen by a watch, p50/p99, with no queueing.
//! 2. Burst: N runs queued at once: dispatch latency p50/p99 (this includes waiting behind the other
//!    launches), time until every Job exists, and the controller's resident memory with N tasks in
//!    flight (VmRSS and the peak VmHWM from /proc).
//!
//! The binary is `$SCALR_AGENT_BIN`, else `target/release/scalr-agent` beside this example.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use k8s_openapi::api::batch::v1::Job;
use scalr_agent::http::{CaSource, HttpOptions};
use scalr_agent::kube::{Api, Client, Explicit, KubeConfig, WatchConfig, WatchEvent, watcher};
use scalr_agent::secret::Secret;
use scalr_agent::shutdown::{Reason, Shutdown};
use serde_json::Value;
use support::kube_sim::{Credential, KubeSim, KubeSimOptions};
use support::platform_sim::{PlatformSim, RunSpec, SimConfig, Stage, tar_gz};

const NS: &str = "ci";
const TEMPLATE: &str = "prod-scalr-agent-task-template";

struct Args {
    tasks: usize,
    trickle: usize,
}

fn args() -> Args {
    let mut args = Args {
        tasks: 1000,
        trickle: 200,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--tasks", Some(v)) => args.tasks = v,
            ("--trickle", Some(v)) => args.trickle = v,
            _ => {
                eprintln!("usage: bench_controller [--tasks N] [--trickle M]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SCALR_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples");
    release.join("scalr-agent")
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99), at(1.0))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Watches the namespace's Jobs; sends (task id, when first seen).
fn watch_jobs(sim: &KubeSim, shutdown: &Shutdown) -> Receiver<(String, Instant)> {
    let config = KubeConfig::explicit(&Explicit {
        server: Some(sim.url()),
        token: Some(Secret::new(sim.admin_token())),
        ca: sim.ca_pem().map(|p| CaSource::Pem(p.as_bytes().to_vec())),
        namespace: Some(NS.into()),
        ..Explicit::default()
    })
    .expect("kube config");
    let client = Client::new(&config, &HttpOptions::default()).expect("client");
    let api: Api<Job> = Api::namespaced(&client, NS);
    let (events_tx, events_rx) = unbounded();
    let (seen_tx, seen_rx) = unbounded();
    let shutdown = shutdown.clone();
    std::thread::spawn(move || {
        let _ = watcher::run(&api, &WatchConfig::default(), &events_tx, &shutdown);
    });
    std::thread::spawn(move || {
        for event in events_rx {
            let now = Instant::now();
            let jobs = match event {
                WatchEvent::Restarted(jobs) => jobs,
                WatchEvent::Applied(job) => vec![job],
                WatchEvent::Deleted(_) => continue,
            };
            for job in jobs {
                if let Some(task) = job
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("scalr.io/task-id"))
                {
                    let _ = seen_tx.send((task.clone(), now));
                }
            }
        }
    });
    seen_rx
}

fn main() {
    let args = args();
    let bin = binary();
    assert!(
        bin.exists(),
        "{} not found: cargo build --release --bin scalr-agent, or set SCALR_AGENT_BIN",
        bin.display()
    );
    let platform = PlatformSim::with_config(SimConfig::default());
    let pool = platform.create_pool("bench");
    let ws = platform.create_workspace(&pool.id, "production", "bench");
    let cv = platform.upload_configuration_version(&ws, tar_gz(&[("main.tf", b"# bench\n")]));
    platform.register_tool(
        "terraform",
        "1.15.5",
        "linux_amd64",
        "binary",
        b"#!/bin/sh\n".to_vec(),
    );
    let kube = KubeSim::start(KubeSimOptions {
        namespaces: vec![NS.into()],
        ..KubeSimOptions::default()
    });
    let crd: Value = serde_yaml_ng::from_str(include_str!(
        "../helm/agent-job/crds/agenttasktemplates.scalr.io.yaml"
    ))
    .expect("crd");
    kube.put(crd);
    let mut template: Value =
        serde_yaml_ng::from_str(include_str!("../tests/fixtures/agent-task-template.yaml"))
            .expect("template");
    template["metadata"]["namespace"] = NS.into();
    kube.put(template);

    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(
        dir.path(),
        &Credential::Token(kube.admin_token().to_string()),
        NS,
    );
    let mut controller = Command::new(&bin)
        .arg("controller")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("KUBECONFIG", &kubeconfig)
        .env("SCALR_URL", platform.url())
        .env("SCALR_AGENT_TOKEN", &pool.token)
        .env("SCALR_AGENT_NAME", "bench-controller")
        .env("SCALR_AGENT_KUBERNETES_NAMESPACE", NS)
        .env("SCALR_AGENT_KUBERNETES_TASK_TEMPLATE", TEMPLATE)
        .env("SCALR_AGENT_CONCURRENCY", args.tasks.to_string())
        .env("SCALR_AGENT_DATA_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the controller");
    let pid = controller.id();
    let shutdown = Shutdown::new();
    let seen = watch_jobs(&kube, &shutdown);
    let ready = dir.path().join("markers/controller/ready");
    let started = Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the controller never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (idle_rss, _) = memory(pid);

    let queue = |n: usize| -> HashMap<String, Instant> {
        (0..n)
            .map(|_| {
                let run = platform.queue_run(&ws, RunSpec::new(&cv));
                let at = Instant::now();
                (
                    platform.stage_task(&run, Stage::Plan).expect("plan task"),
                    at,
                )
            })
            .collect()
    };
    let collect = |queued: &HashMap<String, Instant>, latencies: &mut Vec<Duration>| {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut left = queued.len();
        while left > 0 {
            let (task, at) = seen
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("every Job appears within 10 minutes");
            if let Some(queued_at) = queued.get(&task) {
                latencies.push(at.saturating_duration_since(*queued_at));
                left -= 1;
            }
        }
    };

    // 1. Trickle.
    let mut trickle = Vec::new();
    for _ in 0..args.trickle {
        let queued = queue(1);
        collect(&queued, &mut trickle);
    }
    let (t50, t99, tmax) = percentiles(trickle);

    // 2. Burst up to the concurrency (the trickle's tasks hold slots too; their Jobs never finish).
    let burst_n = args.tasks.saturating_sub(args.trickle);
    let burst_start = Instant::now();
    let queued = queue(burst_n);
    let mut burst = Vec::new();
    collect(&queued, &mut burst);
    let all_in = burst_start.elapsed();
    let (b50, b99, bmax) = percentiles(burst);
    let (rss, hwm) = memory(pid);

    println!(
        "scalr-agent controller benchmark: {} (pid {pid})",
        bin.display()
    );
    println!(
        "trickle, {} runs queued one at a time: dispatch (run queued -> Job watched) p50 {}, p99 {}, max {}",
        args.trickle,
        ms(t50),
        ms(t99),
        ms(tmax)
    );
    println!(
        "burst, {burst_n} runs queued at once: p50 {}, p99 {}, max {}; all Jobs in {}",
        ms(b50),
        ms(b99),
        ms(bmax),
        ms(all_in)
    );
    println!(
        "memory: {:.1} MiB idle; {:.1} MiB with {} tasks in flight (peak {:.1} MiB)",
        idle_rss, rss, args.tasks, hwm
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let stop = Instant::now();
    let status = controller.wait().expect("wait");
    println!(
        "SIGTERM -> exit {:?} in {}",
        status.code(),
        ms(stop.elapsed())
    );
    shutdown.trigger(Reason::Requested);
}
