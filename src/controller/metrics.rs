//! The controller's metrics: counters, gauges and histograms held in one [`Metrics`] value that every
//! stage gets a clone of (an `Arc`, never a global), rendered as Prometheus text, and served on an
//! optional port (`SCALR_AGENT_METRICS_PORT`, off by default) by the `metrics` thread.
//!
//! Names follow the stage that owns them: `scalr_agent_<stage>_<what>`:
//! - `poller_offers_total`, `poller_polls_total`;
//! - `launcher_acquired_total`, `launcher_acquire_lost_total`, `launcher_launched_total`,
//!   `launcher_launch_latency_seconds` (offer received → Job created, histogram);
//! - `limiter_in_flight`, `limiter_waiting`, `limiter_slot_wait_seconds` (histogram);
//! - `supervisor_failed_total{reason}`, `supervisor_cancelled_total`, `supervisor_unstarted`;
//! - `api_errors_total{api="platform"|"kubernetes",class}`.
//!
//! Updates are lock-free atomics except the error map (a mutex held for one insert). The server
//! answers `GET /metrics` (and `/`) with `text/plain; version=0.0.4`, one request per connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::model::FailureReason;
use crate::shutdown::Shutdown;

/// Bucket bounds (seconds) of the latency histograms: 10 ms to 10 min.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0,
];

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram over [`LATENCY_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every metric of the controller.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Offers received from the platform.
    pub poller_offers_total: Counter,
    /// Long-polls answered.
    pub poller_polls_total: Counter,
    /// Tasks acquired.
    pub launcher_acquired_total: Counter,
    /// Acquisitions another agent won (or the task went away).
    pub launcher_acquire_lost_total: Counter,
    /// Jobs created (or found created for the same task and attempt).
    pub launcher_launched_total: Counter,
    /// Offer received → Job created.
    pub launcher_launch_latency_seconds: Histogram,
    /// Launches being worked on now.
    pub launcher_in_progress: Gauge,
    /// Tasks holding a slot.
    pub limiter_in_flight: Gauge,
    /// Offers waiting for a slot.
    pub limiter_waiting: Gauge,
    /// How long admitted offers waited for a slot.
    pub limiter_slot_wait_seconds: Histogram,
    /// Supervised tasks whose worker has not started.
    pub supervisor_unstarted: Gauge,
    /// Tasks cancelled before their worker started (counted when the platform confirms).
    pub supervisor_cancelled_total: Counter,
    failed: [Counter; FailureReason::ALL.len()],
    api_errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    /// A task failed by the controller, by reason.
    pub fn failed(&self, reason: FailureReason) {
        if let Some(i) = FailureReason::ALL.iter().position(|r| *r == reason) {
            self.failed[i].inc();
        }
    }

    /// Failures of one reason so far.
    pub fn failed_count(&self, reason: FailureReason) -> u64 {
        FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.failed[i].get())
    }

    /// An API call failed: `api` is `platform` or `kubernetes`, `class` the error's class.
    pub fn api_error(&self, api: &'static str, class: &'static str) {
        let mut map = self.api_errors.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((api, class)).or_default() += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &Counter); 6] = [
            (
                "poller_offers_total",
                "Task offers received from the platform.",
                &self.poller_offers_total,
            ),
            (
                "poller_polls_total",
                "Long-polls answered by the platform.",
                &self.poller_polls_total,
            ),
            (
                "launcher_acquired_total",
                "Tasks acquired.",
                &self.launcher_acquired_total,
            ),
            (
                "launcher_acquire_lost_total",
                "Acquisitions lost to another agent or a task that went away.",
                &self.launcher_acquire_lost_total,
            ),
            (
                "launcher_launched_total",
                "Task Jobs created.",
                &self.launcher_launched_total,
            ),
            (
                "supervisor_cancelled_total",
                "Tasks cancelled before their worker started.",
                &self.supervisor_cancelled_total,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP scalr_agent_{name} {help}\n# TYPE scalr_agent_{name} counter\nscalr_agent_{name} {}",
                counter.get()
            );
        }
        let gauges: [(&str, &str, &Gauge); 4] = [
            (
                "launcher_in_progress",
                "Launches being worked on.",
                &self.launcher_in_progress,
            ),
            (
                "limiter_in_flight",
                "Unfinished tasks holding a slot.",
                &self.limiter_in_flight,
            ),
            (
                "limiter_waiting",
                "Offers waiting for a slot.",
                &self.limiter_waiting,
            ),
            (
                "supervisor_unstarted",
                "Supervised tasks whose worker has not started.",
                &self.supervisor_unstarted,
            ),
        ];
        for (name, help, gauge) in gauges {
            let _ = writeln!(
                out,
                "# HELP scalr_agent_{name} {help}\n# TYPE scalr_agent_{name} gauge\nscalr_agent_{name} {}",
                gauge.get()
            );
        }
        self.launcher_launch_latency_seconds.render(
            &mut out,
            "scalr_agent_launcher_launch_latency_seconds",
            "Seconds from receiving an offer to its Job being created.",
        );
        self.limiter_slot_wait_seconds.render(
            &mut out,
            "scalr_agent_limiter_slot_wait_seconds",
            "Seconds an offer waited for a free slot.",
        );
        let name = "scalr_agent_supervisor_failed_total";
        let _ = writeln!(
            out,
            "# HELP {name} Tasks the controller failed, by reason.\n# TYPE {name} counter"
        );
        for (reason, counter) in FailureReason::ALL.iter().zip(&self.failed) {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", counter.get());
        }
        let name = "scalr_agent_api_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed API calls after retries, by API and error class.\n# TYPE {name} counter"
        );
        let map = self.api_errors.lock().unwrap_or_else(|e| e.into_inner());
        for ((api, class), n) in map.iter() {
            let _ = writeln!(out, "{name}{{api=\"{api}\",class=\"{class}\"}} {n}");
        }
        out
    }
}

/// Binds the metrics listener (so a taken port fails the start, and the bound port is known).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serves `GET /metrics` on `listener` until shutdown: the `metrics` thread's loop.
pub fn serve(listener: TcpListener, metrics: &Metrics, shutdown: &Shutdown) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    // A blocking accept cannot see the shutdown: a helper wakes it with a connection.
    let waker = {
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("metrics-waker".into())
            .spawn(move || {
                let _ = shutdown.channel().recv();
                let _ = TcpStream::connect_timeout(&local, Duration::from_secs(1));
            })?
    };
    for stream in listener.incoming() {
        if shutdown.is_triggered() {
            break;
        }
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, metrics) {
                    log::debug!("metrics: a scrape failed: {e}");
                }
            }
            Err(e) => log::debug!("metrics: accept failed: {e}"),
        }
    }
    let _ = waker.join();
    Ok(())
}

fn answer(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics" | "/") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "use GET\n".into()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family_and_counts() {
        let m = Metrics::default();
        m.poller_offers_total.inc();
        m.launcher_launch_latency_seconds
            .observe(Duration::from_millis(30));
        m.failed(FailureReason::ImagePull);
        m.api_error("kubernetes", "server_error");
        m.limiter_in_flight.set(3);
        let text = m.render();
        for needle in [
            "scalr_agent_poller_offers_total 1",
            "scalr_agent_launcher_launch_latency_seconds_bucket{le=\"0.025\"} 0",
            "scalr_agent_launcher_launch_latency_seconds_bucket{le=\"0.05\"} 1",
            "scalr_agent_launcher_launch_latency_seconds_count 1",
            "scalr_agent_supervisor_failed_total{reason=\"image_pull\"} 1",
            "scalr_agent_supervisor_failed_total{reason=\"worker_lost\"} 0",
            "scalr_agent_api_errors_total{api=\"kubernetes\",class=\"server_error\"} 1",
            "scalr_agent_limiter_in_flight 3",
            "# TYPE scalr_agent_limiter_slot_wait_seconds histogram",
        ] {
            assert!(text.contains(needle), "missing {needle}:\n{text}");
        }
        assert_eq!(m.failed_count(FailureReason::ImagePull), 1);
    }

    #[test]
    fn serves_metrics_over_http_until_shutdown() {
        let metrics = std::sync::Arc::new(Metrics::default());
        metrics.launcher_launched_total.inc();
        let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = Shutdown::new();
        let server = {
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            std::thread::spawn(move || serve(listener, &metrics, &shutdown))
        };
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).expect("read");
            text
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("scalr_agent_launcher_launched_total 1"), "{ok}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
        shutdown.trigger(crate::shutdown::Reason::Requested);
        server.join().expect("join").expect("serve");
    }
}
