//! Benchmark of a run through `scalr-agent worker` and `scalr-agent exec-loop` (two processes, as
//! in a task pod) against the platform simulator; prints figures, asserts nothing.
//!
//! `cargo build --release && cargo run --release --example bench_worker [-- --mb 50 --rate 2000
//! --seconds 5]`
//!
//! Two plan-only runs whose pre-plan hook (python3) prints lines that start with the wall-clock
//! time they were written (ns):
//!
//! 1. bulk: `--mb` MB as fast as the pipeline takes them — log-shipping throughput;
//! 2. paced: `--rate` lines per second for `--seconds` s, flushed line by line — lag.
//!
//! Lag is the time from a line's output by the command to the platform simulator storing the
//! append that holds it (measured in this process, which hosts the simulator, on every change of
//! its log). Peak memory is `VmHWM` of the worker and exec-loop processes (exec-loop's children
//! not included), sampled every 20 ms.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use support::platform_sim::{RunSpec, Stage};
use support::task_pod::{PodOptions, World};

struct Args {
    mb: u64,
    rate: u64,
    seconds: u64,
}

fn args() -> Args {
    let mut args = Args {
        mb: 50,
        rate: 2000,
        seconds: 5,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    for pair in raw.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--mb", Some(v)) => args.mb = v,
            ("--rate", Some(v)) => args.rate = v,
            ("--seconds", Some(v)) => args.seconds = v,
            _ => {
                eprintln!("usage: bench_worker [--mb N] [--rate LINES_PER_S] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    args
}

/// `target/<profile>/scalr-agent`, next to this example's directory.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples")
        .join("scalr-agent");
    if !bin.exists() {
        eprintln!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        );
        std::process::exit(2);
    }
    bin
}

fn bulk_hook(mb: u64) -> String {
    format!(
        "python3 -c 'import sys, time\nw = sys.stdout.write\npad = \"x\" * 80\nfor i in \
         range({lines}):\n    w(f\"{{time.time_ns()}} {{i}} {{pad}}\\n\")\n'",
        lines = mb * 1_000_000 / 108
    )
}

fn paced_hook(rate: u64, seconds: u64) -> String {
    format!(
        "python3 -c 'import sys, time\nstart = time.time()\npad = \"x\" * 80\nfor i in \
         range({n}):\n    d = start + i / {rate} - time.time()\n    if d > 0: time.sleep(d)\n    \
         sys.stdout.write(f\"{{time.time_ns()}} {{i}} {{pad}}\\n\")\n    sys.stdout.flush()\n'",
        n = rate * seconds
    )
}

/// The highest `VmHWM` of `pid` seen until it exits, in kB.
fn sample_hwm(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::SeqCst) {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                break;
            };
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

struct Figures {
    bytes: u64,
    lines: u64,
    elapsed: Duration,
    lags: Vec<Duration>,
    worker_kb: u64,
    exec_loop_kb: u64,
    shipping: String,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

fn run(world: &World, hook: String) -> Figures {
    let cv = world.cv(&[("main.tf", "")]);
    let mut spec = RunSpec::new(&cv);
    spec.is_dry = true;
    spec.hooks.pre_plan = Some(hook);
    let run = world.sim.queue_run(&world.ws, spec);
    let held = world.acquire(&run, Stage::Plan);
    let task = held.task.id.clone();
    let mut pod = world.launch(&held, &PodOptions::default());
    let stop = Arc::new(AtomicBool::new(false));
    let worker_hwm = sample_hwm(pod.worker_pid() as u32, stop.clone());
    let exec_loop_hwm = sample_hwm(pod.exec_loop_pid() as u32, stop.clone());

    let (mut seen, mut carry) = (0usize, Vec::new());
    let (mut bytes, mut lines, mut first_ns, mut last_ack) = (0u64, 0u64, None, 0u128);
    let mut lags = Vec::new();
    loop {
        let (len, done) =
            world
                .sim
                .wait_until(Duration::from_secs(900), "the log to grow", |sim| {
                    let len = sim.log_len(&task);
                    let done = sim.run(&run).status.is_final();
                    (len > seen || done).then_some((len, done))
                });
        let ack = now_ns();
        carry.extend(world.sim.log_from(&task, seen));
        seen = len;
        let end = carry.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in carry[..end].split(|&b| b == b'\n') {
            let Some(stamp) = line
                .split(|&b| b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u128>().ok())
                .filter(|ns| *ns > 1_000_000_000_000_000_000)
            else {
                continue;
            };
            first_ns.get_or_insert(stamp);
            last_ack = ack;
            bytes += line.len() as u64 + 1;
            lines += 1;
            lags.push(Duration::from_nanos(ack.saturating_sub(stamp) as u64));
        }
        carry.drain(..end);
        if done {
            break;
        }
    }
    let status = pod.wait(Duration::from_secs(900));
    stop.store(true, Ordering::SeqCst);
    assert!(status.success(), "the worker failed\n{}", pod.logs());
    let shipping = pod
        .worker_log()
        .lines()
        .find_map(|l| l.split_once("log shipping: ").map(|(_, s)| s.to_string()))
        .unwrap_or_default();
    Figures {
        bytes,
        lines,
        elapsed: Duration::from_nanos(last_ack.saturating_sub(first_ns.unwrap_or(last_ack)) as u64),
        lags,
        worker_kb: worker_hwm.join().expect("sampler"),
        exec_loop_kb: exec_loop_hwm.join().expect("sampler"),
        shipping,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn print(name: &str, mut f: Figures) {
    f.lags.sort();
    let secs = f.elapsed.as_secs_f64().max(1e-9);
    println!("{name}:");
    println!(
        "  output {:.1} MB in {} lines, first line written to last line stored: {:.2} s",
        f.bytes as f64 / 1e6,
        f.lines,
        secs
    );
    println!(
        "  log-shipping throughput {:.1} MB/s ({:.0} lines/s)",
        f.bytes as f64 / 1e6 / secs,
        f.lines as f64 / secs
    );
    println!(
        "  lag (line written → append stored): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&f.lags, 0.50),
        percentile(&f.lags, 0.99),
        f.lags.last().copied().unwrap_or_default()
    );
    println!(
        "  peak RSS (VmHWM): worker {:.1} MiB, exec-loop {:.1} MiB",
        f.worker_kb as f64 / 1024.0,
        f.exec_loop_kb as f64 / 1024.0
    );
    println!("  worker's own summary: {}", f.shipping);
}

fn main() {
    let args = args();
    let bin = binary();
    let started = Instant::now();
    let world = World::new(&bin);
    print(
        &format!("bulk ({} MB as fast as possible)", args.mb),
        run(&world, bulk_hook(args.mb)),
    );
    print(
        &format!("paced ({} lines/s for {} s)", args.rate, args.seconds),
        run(&world, paced_hook(args.rate, args.seconds)),
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
