//! The memory monitor against fake cgroup trees (v2 and v1 layouts) whose usage the test drives.
//!
//! For exact control the v2 test makes `memory.current` a FIFO fed by a thread: every read by
//! exec-loop consumes exactly one value the test chose, and the test can count samples.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use scalr_agent::ipc::{CommandEvent, ExitReport, RunHandle};

use super::*;

/// Serves `value` to every reader of a FIFO, one value per open, and counts them.
struct FifoFeeder {
    path: PathBuf,
    value: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FifoFeeder {
    fn start(path: &Path, initial: u64) -> FifoFeeder {
        let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: a valid C string and mode.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let value = Arc::new(AtomicU64::new(initial));
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (path, value, served, stop) = (
                path.to_path_buf(),
                value.clone(),
                served.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // Blocks until exec-loop opens the FIFO to take a sample.
                    let Ok(mut fifo) = OpenOptions::new().write(true).open(&path) else {
                        return;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let text = format!("{}\n", value.load(Ordering::SeqCst));
                    if fifo.write_all(text.as_bytes()).is_ok() {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        FifoFeeder {
            path: path.to_path_buf(),
            value,
            served,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, value: u64) {
        self.value.store(value, Ordering::SeqCst);
    }

    /// Sets `value` and returns once exec-loop has certainly processed a sample of it: the value
    /// is read after the feeder's open returns, so the second open after the change proves a full
    /// sample with the new value was taken.
    fn set_and_wait_for_samples(&self, value: u64) {
        let before = self.served.load(Ordering::SeqCst);
        self.set(value);
        assert!(
            wait_until(DEADLINE, || self.served.load(Ordering::SeqCst)
                >= before + 3),
            "exec-loop stopped sampling"
        );
    }
}

impl Drop for FifoFeeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock a writer waiting in open() by being a reader for a moment.
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_atomically(path: &Path, content: &str) {
    let temp = path.with_extension("tmp");
    fs::write(&temp, content).expect("write");
    fs::rename(&temp, path).expect("rename");
}

/// Reads events until every line in `lines` was printed on stdout.
fn read_until_lines(handle: &mut RunHandle<'_>, lines: &[&str], events: &mut Vec<CommandEvent>) {
    let printed = |events: &Vec<CommandEvent>| {
        let stdout = stdout_of(events);
        lines.iter().all(|l| stdout.lines().any(|s| s == *l))
    };
    while !printed(events) {
        match handle.next_event().expect("event") {
            Some(event) => events.push(event),
            None => panic!("command ended before printing {lines:?}: {events:?}"),
        }
    }
}

fn stdout_of(events: &[CommandEvent]) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            CommandEvent::Stdout(b) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn soft_limit_events(events: &[CommandEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            CommandEvent::MemorySoftLimitReached {
                usage_bytes,
                limit_bytes,
            } => Some((*usage_bytes, *limit_bytes)),
            _ => None,
        })
        .collect()
}

fn exit_of(events: &[CommandEvent]) -> ExitReport {
    match events.last() {
        Some(CommandEvent::Exited(report)) => *report,
        other => panic!("the last event is not Exited: {other:?}"),
    }
}

fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| *l == line).count()
}

fn fast_sampling(cgroup: &Path) -> Options {
    Options {
        args: vec!["--memory-sample-interval-ms".into(), "10".into()],
        cgroup_root: Some(cgroup.to_path_buf()),
        ..Options::default()
    }
}

#[test]
fn v2_soft_limit_sends_sigterm_once_to_the_group_and_reports_the_peak() {
    let cg = tempfile::tempdir().expect("tempdir");
    fs::write(cg.path().join("memory.max"), "10000\n").expect("write");
    let feeder = FifoFeeder::start(&cg.path().join("memory.current"), 1000);
    let exec_loop = ExecLoop::start_with(fast_sampling(cg.path()));
    let mut client = exec_loop.connect();
    let script = r#"trap 'echo parent-term' TERM
sh -c 'trap "echo child-term" TERM; echo child-ready; while [ ! -e release ]; do sleep 0.01; done' &
echo parent-ready
while [ ! -e release ]; do sleep 0.01; done
wait
echo done"#;
    let mut spec = sh(script);
    spec.cwd = Some(exec_loop.dir.path().to_path_buf());
    let mut handle = client.run(&spec).expect("run");
    let mut events = Vec::new();
    read_until_lines(&mut handle, &["parent-ready", "child-ready"], &mut events);

    feeder.set(9000); // 90 % of the limit: above the 80 % soft limit
    while soft_limit_events(&events).is_empty() {
        events.push(handle.next_event().expect("event").expect("still running"));
    }
    // Keep sampling above the soft limit, and higher: no second SIGTERM, and a new peak.
    feeder.set_and_wait_for_samples(9500);
    fs::write(exec_loop.path("release"), "").expect("release");
    while let Some(event) = handle.next_event().expect("event") {
        events.push(event);
    }

    assert_eq!(
        soft_limit_events(&events),
        [(9000, 10000)],
        "{}",
        exec_loop.log()
    );
    let stdout = stdout_of(&events);
    assert_eq!(count_lines(&stdout, "parent-term"), 1, "{stdout}");
    assert_eq!(count_lines(&stdout, "child-term"), 1, "{stdout}");
    assert_eq!(count_lines(&stdout, "done"), 1, "{stdout}");
    let exit = exit_of(&events);
    assert_eq!(exit.code, Some(0));
    assert_eq!(exit.peak_memory_bytes, Some(9500));
    assert_eq!(exit.memory_limit_bytes, Some(10000));
}

#[test]
fn v1_soft_limit_counts_the_working_set() {
    let cg = tempfile::tempdir().expect("tempdir");
    let memory = cg.path().join("memory");
    fs::create_dir(&memory).expect("mkdir");
    let usage = memory.join("memory.usage_in_bytes");
    fs::write(&usage, "1000\n").expect("write");
    fs::write(memory.join("memory.limit_in_bytes"), "10000\n").expect("write");
    fs::write(
        memory.join("memory.stat"),
        "cache 600\ntotal_inactive_file 500\n",
    )
    .expect("write");
    let exec_loop = ExecLoop::start_with(fast_sampling(cg.path()));
    let mut client = exec_loop.connect();
    let mut handle = client
        .run(&sh(
            "trap 'echo term; exit 0' TERM; echo ready; while :; do sleep 0.01; done",
        ))
        .expect("run");
    let mut events = Vec::new();
    read_until_lines(&mut handle, &["ready"], &mut events);
    // 9500 used, 500 of it reclaimable cache: a working set of 9000, above 80 % of 10000.
    write_atomically(&usage, "9500\n");
    while let Some(event) = handle.next_event().expect("event") {
        events.push(event);
    }
    assert_eq!(
        soft_limit_events(&events),
        [(9000, 10000)],
        "{}",
        exec_loop.log()
    );
    assert_eq!(count_lines(&stdout_of(&events), "term"), 1);
    let exit = exit_of(&events);
    assert_eq!(exit.code, Some(0));
    assert_eq!(exit.peak_memory_bytes, Some(9000));
    assert_eq!(exit.memory_limit_bytes, Some(10000));
}

fn v2_tree(current: &str, max: &str) -> tempfile::TempDir {
    let cg = tempfile::tempdir().expect("tempdir");
    fs::write(cg.path().join("memory.current"), current).expect("write");
    fs::write(cg.path().join("memory.max"), max).expect("write");
    cg
}

#[test]
fn a_disabled_monitor_does_nothing() {
    // Above the soft limit from the first sample: an enabled monitor would fire at once.
    let cg = v2_tree("9000\n", "10000\n");
    let mut options = fast_sampling(cg.path());
    options.env = vec![("SCALR_AGENT_MEMORY_MONITOR_ENABLED".into(), "false".into())];
    let exec_loop = ExecLoop::start_with(options);
    let mut client = exec_loop.connect();
    let output = run_to_end(&mut client, &sh("echo hi"));
    assert_eq!(output.memory_soft_limit, None);
    assert_eq!(output.exit.code, Some(0));
    assert_eq!(
        (
            output.exit.peak_memory_bytes,
            output.exit.memory_limit_bytes
        ),
        (None, None)
    );
    assert!(exec_loop.log().contains("memory monitor disabled"));
}

#[test]
fn the_same_usage_fires_with_a_limit_and_is_only_recorded_without_one() {
    let limited = v2_tree("9000\n", "10000\n");
    let exec_loop = ExecLoop::start_with(fast_sampling(limited.path()));
    let mut client = exec_loop.connect();
    let output = run_to_end(
        &mut client,
        &sh("trap 'exit 0' TERM; while :; do sleep 0.01; done"),
    );
    assert_eq!(output.memory_soft_limit.map(|m| m.usage_bytes), Some(9000));
    assert_eq!(output.exit.peak_memory_bytes, Some(9000));

    let unlimited = v2_tree("9000\n", "max\n");
    let exec_loop = ExecLoop::start_with(fast_sampling(unlimited.path()));
    let mut client = exec_loop.connect();
    let output = run_to_end(&mut client, &sh("echo hi"));
    assert_eq!(output.memory_soft_limit, None);
    assert_eq!(output.exit.code, Some(0));
    assert_eq!(
        (
            output.exit.peak_memory_bytes,
            output.exit.memory_limit_bytes
        ),
        (Some(9000), None)
    );
}

#[test]
fn an_invalid_monitor_setting_stops_exec_loop_with_a_clear_error() {
    let output = Command::new(BIN)
        .arg("exec-loop")
        .env("SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT", "150")
        .env("SCALR_AGENT_DATA_DIR", "/nonexistent/never-created")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT")
            && stderr.contains("1 to 100"),
        "{stderr}"
    );
}
