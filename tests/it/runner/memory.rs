//! The memory monitor against fake cgroup trees (v2 and v1 layouts) whose usage the test drives.
//!
//! For exact control the v2 test makes `memory.current` and `memory.max` FIFOs fed in lockstep by a
//! thread: exec-loop reads one after the other for every sample, so each sample consumes exactly one
//! pair of values the test chose, and the test can count samples.

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

/// Serves `memory.current` and `memory.max` as FIFOs, one sample at a time, and counts samples.
///
/// Lockstep matters: a FIFO opened for writing pairs with whichever reader has it open, so writing
/// `memory.current` twice in a row could feed both values to one read. exec-loop reads
/// `memory.current` to the end and closes it before it opens `memory.max`; waiting for that open
/// proves the previous read is over.
struct FifoFeeder {
    current: PathBuf,
    max: PathBuf,
    value: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn mkfifo(path: &Path) {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid C string and mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
}

impl FifoFeeder {
    fn start(cgroup: &Path, initial: u64, limit: u64) -> FifoFeeder {
        let (current, max) = (cgroup.join("memory.current"), cgroup.join("memory.max"));
        mkfifo(&current);
        mkfifo(&max);
        let value = Arc::new(AtomicU64::new(initial));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (current, max) = (current.clone(), max.clone());
            let (value, samples, stop) = (value.clone(), samples.clone(), stop.clone());
            std::thread::spawn(move || {
                let serve = |path: &Path, text: String| -> bool {
                    // Blocks until exec-loop opens the FIFO to read it.
                    let Ok(mut fifo) = OpenOptions::new().write(true).open(path) else {
                        return false;
                    };
                    !stop.load(Ordering::SeqCst) && fifo.write_all(text.as_bytes()).is_ok()
                };
                loop {
                    let Ok(mut fifo) = OpenOptions::new().write(true).open(&current) else {
                        return;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // Counted once exec-loop opened `memory.current` for this sample: every
                    // earlier sample has been fully processed by then.
                    samples.fetch_add(1, Ordering::SeqCst);
                    let text = format!("{}\n", value.load(Ordering::SeqCst));
                    if fifo.write_all(text.as_bytes()).is_err() {
                        return;
                    }
                    drop(fifo);
                    if !serve(&max, format!("{limit}\n")) {
                        return;
                    }
                }
            })
        };
        FifoFeeder {
            current,
            max,
            value,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, value: u64) {
        self.value.store(value, Ordering::SeqCst);
    }

    /// Sets `value` and returns once exec-loop has certainly processed a sample of it: the sample
    /// that opens after the change reads the new value, and the one after it proves it is done.
    fn set_and_wait_for_samples(&self, value: u64) {
        let before = self.samples.load(Ordering::SeqCst);
        self.set(value);
        assert!(
            wait_until(DEADLINE, || self.samples.load(Ordering::SeqCst)
                >= before + 2),
            "exec-loop stopped sampling"
        );
    }
}

impl Drop for FifoFeeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Unblock a writer waiting in open() by being a reader for a moment, until it has seen
        // the stop flag.
        let stopped = wait_until(DEADLINE, || {
            for path in [&self.current, &self.max] {
                let _reader = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(path);
            }
            thread.is_finished()
        });
        if stopped {
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
    let feeder = FifoFeeder::start(cg.path(), 1000, 10000);
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
    let log = exec_loop.log();
    assert!(!log.contains("memory monitor: "), "a sample failed: {log}");
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
    assert_eq!(output.status.code(), Some(2), "configuration errors exit 2");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SCALR_AGENT_MEMORY_MONITOR_SOFT_LIMIT_PERCENT")
            && stderr.contains("between 1 and 100"),
        "{stderr}"
    );
}
