//! Benchmark of the platform client and simulator on loopback; prints figures, asserts nothing.
//!
//! `cargo run --release --example bench_platform [-- --calls N --runs M --agents K]`
//!
//! 1. Per-call latency (p50/p99) of the client's calls against the simulator, and of the same request
//!    sent raw through `HttpClient`: the difference is what the client adds (documents, parsing,
//!    classification).
//! 2. The simulator's throughput: K agent threads poll (advertising capacity) and acquire M queued
//!    tasks as fast as they can; offers and acquires per second.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scalr_agent::http::{HttpClient, HttpOptions, Request, RetryPolicy};
use scalr_agent::platform::{AgentEvent, PlatformClient, Registration};
use scalr_agent::secret::Secret;
use support::platform_sim::{PlatformSim, RunSpec, tar_gz};

struct Args {
    calls: usize,
    runs: usize,
    agents: usize,
}

fn args() -> Args {
    let mut args = Args {
        calls: 2000,
        runs: 5000,
        agents: 8,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--calls", Some(v)) => args.calls = v,
            ("--runs", Some(v)) => args.runs = v,
            ("--agents", Some(v)) => args.agents = v,
            _ => {
                eprintln!("usage: bench_platform [--calls N] [--runs M] [--agents K]");
                std::process::exit(2);
            }
        }
    }
    args
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn measure(calls: usize, mut op: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..calls / 10 {
        op(); // warm up connections and caches
    }
    let samples = (0..calls)
        .map(|_| {
            let started = Instant::now();
            op();
            started.elapsed()
        })
        .collect();
    percentiles(samples)
}

fn setup() -> (PlatformSim, String, String, Secret) {
    let sim = PlatformSim::start();
    let pool = sim.create_pool("bench");
    let ws = sim.create_workspace(&pool.id, "bench", "bench");
    let cv = sim.upload_configuration_version(&ws, tar_gz(&[("main.tf", b"")]));
    sim.register_tool(
        "terraform",
        "1.15.5",
        "linux_amd64",
        "binary",
        vec![0; 1024],
    );
    (sim, ws, cv, Secret::new(pool.token))
}

fn client(sim: &PlatformSim) -> PlatformClient {
    PlatformClient::new(&sim.url(), &HttpOptions::default())
        .expect("client")
        .with_retry(RetryPolicy::fast(3))
}

fn latency(calls: usize) {
    let (sim, ws, cv, pool_token) = setup();
    let client = client(&sim);
    let agent = client
        .register(
            &pool_token,
            &Registration::kubernetes_controller("bench-latency", 4),
        )
        .expect("register");
    sim.queue_run(&ws, RunSpec::new(&cv));
    let offer = agent
        .poll(1, Duration::from_secs(5))
        .expect("poll")
        .into_iter()
        .find_map(|e| match e {
            AgentEvent::Offer(o) => Some(o),
            AgentEvent::Cancel(_) => None,
        })
        .expect("an offer");
    let held = agent.acquire(&offer.task_id).expect("acquire");
    let worker = client.task(&offer.task_id, held.token.clone());
    worker.start().expect("start");

    let http = HttpClient::new(&HttpOptions::default()).expect("http");
    let session = agent.session();
    let heartbeat_url = format!(
        "{}/api/iacp/v3/agents/{}/actions/heartbeat",
        sim.url(),
        session.agent_id
    );
    let heartbeat_doc = r#"{"data":{"type":"heartbeats","attributes":{"free-capacity":3}}}"#;
    let bearer = format!("Bearer {}", session.token.expose());

    println!(
        "client per-call latency on loopback ({calls} calls each, after {} warm-up calls)",
        calls / 10
    );
    println!("{:<44} {:>10} {:>10}", "call", "p50 µs", "p99 µs");
    let row = |name: &str, (p50, p99): (Duration, Duration)| {
        println!("{name:<44} {:>10} {:>10}", p50.as_micros(), p99.as_micros());
    };
    row(
        "raw HttpClient POST heartbeat (baseline)",
        measure(calls, || {
            let request = Request::new("POST", heartbeat_url.clone())
                .header("Authorization", bearer.clone())
                .header("Content-Type", "application/vnd.api+json")
                .body(heartbeat_doc);
            assert_eq!(http.send(request).expect("raw").status, 200);
        }),
    );
    row(
        "AgentClient::heartbeat",
        measure(calls, || drop(agent.heartbeat(3).expect("heartbeat"))),
    );
    row(
        "AgentClient::poll (wait 0, nothing)",
        measure(calls, || drop(agent.poll(0, Duration::ZERO).expect("poll"))),
    );
    row(
        "AgentClient::held_tasks (1 task)",
        measure(calls, || drop(agent.held_tasks().expect("held"))),
    );
    row(
        "TaskClient::get (full task document)",
        measure(calls, || drop(worker.get().expect("get"))),
    );
    row(
        "TaskClient::heartbeat",
        measure(calls, || {
            worker.heartbeat().expect("task heartbeat");
        }),
    );
    let mut offset = 0;
    let line = [b'x'; 100];
    row(
        "TaskClient::append_log (100 B)",
        measure(calls, || {
            offset = worker.append_log(offset, &line).expect("append")
        }),
    );
}

fn throughput(runs: usize, agents: usize) {
    let (sim, ws, cv, pool_token) = setup();
    let client = client(&sim);
    for _ in 0..runs {
        sim.queue_run(&ws, RunSpec::new(&cv));
    }
    let acquired = Arc::new(AtomicU64::new(0));
    let offered = Arc::new(AtomicU64::new(0));
    let polls = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let agent_clients: Vec<_> = (0..agents)
        .map(|i| {
            client
                .register(
                    &pool_token,
                    &Registration::kubernetes_controller(&format!("bench-{i}"), 16),
                )
                .expect("register")
        })
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = agent_clients
        .into_iter()
        .map(|agent| {
            let (acquired, offered, polls, lost) = (
                acquired.clone(),
                offered.clone(),
                polls.clone(),
                lost.clone(),
            );
            std::thread::spawn(move || {
                while acquired.load(Ordering::SeqCst) < runs as u64 {
                    let events = agent.poll(16, Duration::ZERO).expect("poll");
                    polls.fetch_add(1, Ordering::Relaxed);
                    if events.is_empty() {
                        std::thread::yield_now();
                    }
                    for event in events {
                        let AgentEvent::Offer(offer) = event else {
                            continue;
                        };
                        offered.fetch_add(1, Ordering::Relaxed);
                        match agent.acquire(&offer.task_id) {
                            Ok(_) => {
                                acquired.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) if e.status() == Some(409) => {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("acquire: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("agent thread");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acquired = acquired.load(Ordering::SeqCst);
    println!();
    println!(
        "simulator throughput: {runs} queued tasks, {agents} agent threads, capacity 16, wait 0"
    );
    println!(
        "  acquired {acquired} in {elapsed:.2} s: {:.0} acquires/s",
        acquired as f64 / elapsed
    );
    println!(
        "  offers delivered {} ({:.0}/s), polls {} ({:.0}/s), acquires lost to another agent {}",
        offered.load(Ordering::Relaxed),
        offered.load(Ordering::Relaxed) as f64 / elapsed,
        polls.load(Ordering::Relaxed),
        polls.load(Ordering::Relaxed) as f64 / elapsed,
        lost.load(Ordering::Relaxed)
    );
}

fn main() {
    let args = args();
    latency(args.calls);
    throughput(args.runs, args.agents);
}
