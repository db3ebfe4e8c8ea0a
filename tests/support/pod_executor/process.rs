//! Container processes: each container is a host process started in a session of its own (its
//! pid is the session id), stdout and stderr appended to one log file, stdin empty. The session
//! plays the container's cgroup: when the main process exits, or when the container is killed,
//! every process left in the session gets SIGKILL, as a runtime tears down the container. Memory
//! is the session's resident set, read from `/proc`.
//!
//! [`ContainerProcess::spawn`] starts the process and a waiter thread (`<pod>/<container>-wait`)
//! that sees the exit without reaping (`waitid(WNOWAIT)`), kills the rest of the session, reaps,
//! and sends the exit code. Signals go through the same lock, so a pid is never signalled after it
//! was reaped.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running (or finished) container process.
#[derive(Clone)]
pub struct ContainerProcess {
    pub pid: i32,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    child: Option<Child>,
    exited: Option<i32>,
}

/// What to run.
pub struct Spec<'a> {
    pub program: &'a Path,
    /// argv[0] as the container names it, then the arguments.
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub log: &'a Path,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Starts `spec` in a new session; the returned child is not yet reaped by anyone.
pub fn start(spec: &Spec<'_>) -> io::Result<Child> {
    let log = open_log(spec.log)?;
    let mut cmd = Command::new(spec.program);
    if let Some(first) = spec.argv.first() {
        cmd.arg0(first);
    }
    cmd.args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.cwd)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// The exit code a runtime reports: the status, or 128 + the signal that killed the process.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl ContainerProcess {
    /// Starts the process and its waiter thread; `on_exit(code)` runs on the waiter thread after
    /// the session was killed and the process reaped.
    pub fn spawn(
        spec: &Spec<'_>,
        thread_name: String,
        on_exit: impl FnOnce(i32) + Send + 'static,
    ) -> io::Result<ContainerProcess> {
        let child = start(spec)?;
        let pid = child.id() as i32;
        let inner = Arc::new(Mutex::new(Inner {
            child: Some(child),
            exited: None,
        }));
        let waiter = inner.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                wait_exit_no_reap(pid);
                let code = {
                    let mut g = waiter.lock().unwrap_or_else(|e| e.into_inner());
                    kill_session(pid, libc::SIGKILL);
                    let status = g.child.take().map(|mut c| c.wait());
                    let code = match status {
                        Some(Ok(s)) => exit_code(s),
                        _ => 255,
                    };
                    g.exited = Some(code);
                    code
                };
                on_exit(code);
            })?;
        Ok(ContainerProcess { pid, inner })
    }

    /// Sends `signal` to the main process, unless it has exited.
    pub fn signal(&self, signal: i32) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.exited.is_none() && g.child.is_some() {
            // SAFETY: plain syscall; the pid is ours and not yet reaped (checked under the lock).
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// SIGKILL to every process of the container's session.
    pub fn kill_all(&self) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.exited.is_none() && g.child.is_some() {
            kill_session(self.pid, libc::SIGKILL);
        }
    }

    /// The exit code, once the waiter reaped the process.
    pub fn exited(&self) -> Option<i32> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).exited
    }

    /// Resident memory of the container's session, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        session_rss(self.pid)
    }
}

/// Blocks until `pid` has exited, leaving it unreaped.
fn wait_exit_no_reap(pid: i32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall on our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// `(pid, session, rss pages)` of every process, from `/proc/<pid>/stat`.
fn processes() -> Vec<(i32, i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields from 3 (state) on: session is field 6, rss field 24.
        let session: i32 = fields.get(3)?.parse().ok()?;
        let rss: u64 = fields.get(21)?.parse().ok()?;
        Some((pid, session, rss))
    })
    .collect()
}

/// SIGKILL (or `signal`) to every process whose session is `sid`.
pub fn kill_session(sid: i32, signal: i32) {
    for (pid, session, _) in processes() {
        if session == sid {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Resident set of the processes in session `sid`, in bytes.
pub fn session_rss(sid: i32) -> u64 {
    rss_by_session().get(&sid).copied().unwrap_or(0)
}

/// Resident set per session, in bytes, from one pass over `/proc`.
pub fn rss_by_session() -> std::collections::HashMap<i32, u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let mut out = std::collections::HashMap::new();
    for (_, session, rss) in processes() {
        *out.entry(session).or_insert(0) += rss * page;
    }
    out
}

/// Runs a probe command to completion within `timeout`: `Ok(true)` on exit 0, the output kept for
/// the `Unhealthy` event. A probe that outlives its timeout is killed and fails.
pub fn run_probe(spec: &Spec<'_>, timeout: std::time::Duration) -> io::Result<(bool, String)> {
    let mut child = start(spec)?;
    let pid = child.id() as i32;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("probe-wait".into())
        .spawn(move || {
            let status = child.wait();
            let _ = tx.send(status);
        })?;
    let ok = match rx.recv_timeout(timeout) {
        Ok(Ok(status)) => status.success(),
        _ => {
            kill_session(pid, libc::SIGKILL);
            let _ = rx.recv();
            false
        }
    };
    let output = std::fs::read_to_string(spec.log).unwrap_or_default();
    Ok((ok, output.trim().to_string()))
}
