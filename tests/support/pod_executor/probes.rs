//! A container's probes, on a thread of their own (`<pod>/<container>-probe`) while it runs: the
//! startup probe until it passes (then `started: true`), then readiness and liveness at their own
//! periods. `exec` probes run in the container's view (same rewriting, same environment) with their
//! timeout; httpGet, tcpSocket and grpc probes are not modelled and count as passing. Reports
//! transitions and failures to the pod's thread; stops when told or when the pod's thread is gone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use k8s_openapi::api::core::v1::{Container, Probe};

use super::node::{PodMsg, ProbeEvent};
use super::process::{self, Spec};
use super::view::View;

/// Everything a probe run needs from the container.
pub struct ProbeContext {
    pub container: String,
    pub view: View,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Scratch file for one probe's output.
    pub output: PathBuf,
}

struct Schedule<'a> {
    kind: &'static str,
    probe: &'a Probe,
    next: Instant,
    failures: i32,
    successes: i32,
}

impl<'a> Schedule<'a> {
    fn new(kind: &'static str, probe: &'a Probe, start: Instant) -> Self {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        Schedule {
            kind,
            probe,
            next: start + delay,
            failures: 0,
            successes: 0,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }
}

/// Whether the container has any probe.
pub fn has_probes(c: &Container) -> bool {
    c.startup_probe.is_some() || c.readiness_probe.is_some() || c.liveness_probe.is_some()
}

fn run_once(ctx: &ProbeContext, probe: &Probe) -> (bool, String) {
    let Some(exec) = &probe.exec else {
        return (true, String::new());
    };
    let argv: Vec<String> = exec
        .command
        .iter()
        .flatten()
        .map(|a| ctx.view.rewrite(a))
        .collect();
    let Some(first) = exec.command.as_ref().and_then(|c| c.first()) else {
        return (false, "exec probe without a command".into());
    };
    let path_env = ctx
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let Some(program) = ctx.view.resolve_command(first, path_env) else {
        return (
            false,
            format!("exec: {first:?}: executable file not found in $PATH"),
        );
    };
    let env: Vec<(String, String)> = ctx
        .env
        .iter()
        .map(|(k, v)| (k.clone(), ctx.view.rewrite(v)))
        .collect();
    let _ = std::fs::remove_file(&ctx.output);
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let spec = Spec {
        program: &program,
        argv: &argv,
        env: &env,
        cwd: &ctx.cwd,
        log: &ctx.output,
    };
    match process::run_probe(&spec, timeout) {
        Ok(result) => result,
        Err(e) => (false, format!("cannot run the probe: {e}")),
    }
}

/// Runs the container's probes until `stop` fires or the pod's thread hangs up.
pub fn run(c: Container, ctx: ProbeContext, pod: Sender<PodMsg>, stop: Receiver<()>) {
    let send = |event: ProbeEvent| {
        pod.send(PodMsg::Probe {
            container: ctx.container.clone(),
            event,
        })
        .is_ok()
    };
    let wait_until = |at: Instant| -> bool {
        let now = Instant::now();
        let left = at.saturating_duration_since(now);
        !matches!(
            stop.recv_timeout(left),
            Ok(()) | Err(RecvTimeoutError::Disconnected)
        )
    };
    let start = Instant::now();
    if let Some(probe) = &c.startup_probe {
        let mut s = Schedule::new("Startup", probe, start);
        loop {
            if !wait_until(s.next) {
                return;
            }
            let (ok, output) = run_once(&ctx, probe);
            s.next = Instant::now() + s.period();
            if ok {
                break;
            }
            s.failures += 1;
            if !send(ProbeEvent::Failed {
                kind: s.kind,
                output,
            }) {
                return;
            }
            if s.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                send(ProbeEvent::Kill { kind: s.kind });
                return;
            }
        }
    }
    if !send(ProbeEvent::Started) {
        return;
    }
    let after = Instant::now();
    let mut ready = c
        .readiness_probe
        .as_ref()
        .map(|p| Schedule::new("Readiness", p, after));
    let mut live = c
        .liveness_probe
        .as_ref()
        .map(|p| Schedule::new("Liveness", p, after));
    let mut is_ready = false;
    if ready.is_none() {
        is_ready = true;
        if !send(ProbeEvent::Ready(true)) {
            return;
        }
    }
    loop {
        let next = [
            ready.as_ref().map(|s| s.next),
            live.as_ref().map(|s| s.next),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            // Nothing more to probe: wait for the end.
            let _ = stop.recv();
            return;
        };
        if !wait_until(next) {
            return;
        }
        for slot in [&mut ready, &mut live] {
            let Some(s) = slot.as_mut() else { continue };
            if s.next > Instant::now() {
                continue;
            }
            let (ok, output) = run_once(&ctx, s.probe);
            s.next = Instant::now() + s.period();
            if ok {
                s.failures = 0;
                s.successes += 1;
                if s.kind == "Readiness"
                    && !is_ready
                    && s.successes >= s.probe.success_threshold.unwrap_or(1).max(1)
                {
                    is_ready = true;
                    if !send(ProbeEvent::Ready(true)) {
                        return;
                    }
                }
                continue;
            }
            s.successes = 0;
            s.failures += 1;
            if !send(ProbeEvent::Failed {
                kind: s.kind,
                output,
            }) {
                return;
            }
            if s.failures >= s.probe.failure_threshold.unwrap_or(3).max(1) {
                if s.kind == "Liveness" {
                    send(ProbeEvent::Kill { kind: s.kind });
                    return;
                }
                if is_ready {
                    is_ready = false;
                    if !send(ProbeEvent::Ready(false)) {
                        return;
                    }
                }
            }
        }
    }
}
