//! One command run for the worker: spawn, stream, monitor, reap.
//!
//! [`start`] runs on exec-loop's main thread (so `PR_SET_PDEATHSIG` is tied to a thread that lives as
//! long as the process): it validates the request and spawns the child as the leader of its own
//! process group. The named thread `exec-loop-command` then owns the child: it drains stdout and
//! stderr with `poll(2)` (both at once, 64 KiB frames), samples the cgroup while the command runs,
//! notices the leader's exit through a pidfd, kills what is left of the group, reaps the leader and
//! queues `Exited` behind the last output frame. The main thread signals the group through the
//! shared [`ProcessGroup`], which refuses once the leader is reaped (no signal can hit a reused pid).

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::memory::{CgroupMemory, MemoryWatch};
use super::settings::MemoryMonitorSettings;
use crate::ipc::{CommandSpec, ErrorCode, ExitReport, MAX_OUTPUT_CHUNK, ServerMessage, Started};

/// After the leader exits, how long the rest of its group may keep the output pipes open before it
/// is killed.
pub const STRAGGLER_GRACE: Duration = Duration::from_secs(2);
/// After killing stragglers, how long to wait for the pipes to close; then the pipes are abandoned
/// (a process that left the group with `setsid` still holds them).
pub const DRAIN_AFTER_KILL: Duration = Duration::from_secs(1);
/// How often the leader's exit is checked where pidfds are unavailable (Linux < 5.3).
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a run request was refused; sent to the worker as an `Error` frame.
#[derive(Debug, PartialEq, Eq)]
pub struct StartError {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for StartError {}

/// What the memory monitor needs on the command thread.
#[derive(Clone, Debug)]
pub struct MemoryMonitor {
    pub cgroup: CgroupMemory,
    pub settings: MemoryMonitorSettings,
    pub interval: Duration,
}

/// The command's process group, shared by the main thread (signals) and the command thread (reap).
#[derive(Debug)]
pub struct ProcessGroup {
    pgid: i32,
    /// Set under the lock when the leader is reaped; from then on the pgid may be reused.
    reaped: Mutex<bool>,
}

impl ProcessGroup {
    /// Sends `signal` to every process of the group; a no-op once the leader is reaped or when the
    /// group is already empty.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        if *reaped {
            return Ok(());
        }
        // SAFETY: plain syscall; the leader is not reaped (we hold the lock), so the pgid is ours.
        if unsafe { libc::kill(-self.pgid, signal) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Whether the leader was reaped: the command is over and its `Exited` is being queued.
    pub fn is_reaped(&self) -> bool {
        *self.reaped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps the (already exited) leader and marks the group as no longer signalable.
    fn reap(&self, child: &mut Child) -> io::Result<std::process::ExitStatus> {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        let status = child.wait()?;
        *reaped = true;
        Ok(status)
    }
}

/// A started command, as the main thread holds it.
pub struct RunningCommand {
    pub pid: u32,
    pub group: Arc<ProcessGroup>,
    pub thread: JoinHandle<()>,
}

/// Checks the request, spawns the child in its own process group and starts its command thread.
///
/// The thread sends `Started`, output, `MemorySoftLimitReached` and finally `Exited` into `output`
/// (the connection's bounded queue: a slow worker slows the command, nothing piles up), then calls
/// `on_finish`.
pub fn start(
    spec: &CommandSpec,
    memory: Option<MemoryMonitor>,
    output: Sender<ServerMessage>,
    on_finish: Box<dyn FnOnce() + Send>,
) -> Result<RunningCommand, StartError> {
    validate(spec)?;
    let mut command = Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if spec.clear_env {
        command.env_clear();
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // If exec-loop dies (even by SIGKILL), the command gets SIGKILL: it never outlives us.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| StartError {
        code: ErrorCode::SpawnFailed,
        message: format!("could not start {}: {e}", spec.argv[0]),
    })?;
    let pid = child.id();
    let group = Arc::new(ProcessGroup {
        pgid: pid as i32,
        reaped: Mutex::new(false),
    });
    let pipes = child
        .stdout
        .take()
        .zip(child.stderr.take())
        .expect("both pipes were requested with Stdio::piped");
    if let Err(e) = set_nonblocking(pipes.0.as_raw_fd()).and(set_nonblocking(pipes.1.as_raw_fd())) {
        let _ = group.signal(libc::SIGKILL);
        let _ = group.reap(&mut child);
        return Err(StartError {
            code: ErrorCode::SpawnFailed,
            message: format!("could not set up the output pipes of {}: {e}", spec.argv[0]),
        });
    }
    let pidfd = pidfd_open(pid);
    let thread_group = Arc::clone(&group);
    let program = spec.argv[0].clone();
    let spawned = std::thread::Builder::new()
        .name("exec-loop-command".into())
        .spawn(move || {
            let supervisor = Supervisor {
                child,
                group: thread_group,
                pidfd,
                memory: memory.map(|m| (MemoryWatch::new(m.settings), m)),
                output: Some(output),
            };
            supervisor.run(pipes, &program);
            on_finish();
        });
    match spawned {
        Ok(thread) => Ok(RunningCommand { pid, group, thread }),
        Err(e) => {
            // Without its thread the child would be unsupervised: kill it now. The closure (and the
            // child in it) was dropped, so the zombie is reaped by the orphan reaper.
            let _ = group.signal(libc::SIGKILL);
            Err(StartError {
                code: ErrorCode::SpawnFailed,
                message: format!("could not start a thread for {}: {e}", spec.argv[0]),
            })
        }
    }
}

/// Rejects what `execve` cannot take or what would make the environment ambiguous.
fn validate(spec: &CommandSpec) -> Result<(), StartError> {
    let invalid = |message: String| StartError {
        code: ErrorCode::InvalidRequest,
        message,
    };
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return Err(invalid("argv is empty: name a program to run".into()));
    }
    if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("argument {i} contains a NUL byte")));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(invalid(format!(
                "invalid environment variable name {key:?}: it must be non-empty without '=' or NUL"
            )));
        }
        if value.contains('\0') {
            return Err(invalid(format!("the value of {key} contains a NUL byte")));
        }
    }
    if let Some(cwd) = &spec.cwd
        && !Path::new(cwd).is_dir()
    {
        return Err(StartError {
            code: ErrorCode::SpawnFailed,
            message: format!("working directory {} is not a directory", cwd.display()),
        });
    }
    Ok(())
}

/// The command thread's state.
struct Supervisor {
    child: Child,
    group: Arc<ProcessGroup>,
    pidfd: Option<OwnedFd>,
    memory: Option<(MemoryWatch, MemoryMonitor)>,
    /// `None` once the worker is gone: output is then drained and dropped.
    output: Option<Sender<ServerMessage>>,
}

struct Pipe<R> {
    reader: R,
    open: bool,
    stdout: bool,
}

impl Supervisor {
    fn run(mut self, (stdout, stderr): (ChildStdout, ChildStderr), program: &str) {
        let pid = self.child.id();
        self.send(ServerMessage::Started(Started { pid }));
        let mut out = Pipe {
            reader: stdout,
            open: true,
            stdout: true,
        };
        let mut err = Pipe {
            reader: stderr,
            open: true,
            stdout: false,
        };
        let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
        let mut next_sample = Instant::now();
        let mut exited = false;
        let mut deadline: Option<Instant> = None; // straggler grace, then drain limit
        let mut stragglers_killed = false;
        loop {
            let now = Instant::now();
            if self.memory.is_some() && now >= next_sample && !exited {
                self.sample();
                next_sample = now
                    + self
                        .memory
                        .as_ref()
                        .map_or(Duration::ZERO, |m| m.1.interval);
            }
            if exited && !out.open && !err.open {
                break;
            }
            let mut wake: Option<Instant> = deadline;
            if self.memory.is_some() && !exited {
                wake = Some(wake.map_or(next_sample, |w| w.min(next_sample)));
            }
            if !exited && self.pidfd.is_none() {
                let poll_at = now + EXIT_POLL_INTERVAL;
                wake = Some(wake.map_or(poll_at, |w| w.min(poll_at)));
            }
            let mut fds = Vec::with_capacity(3);
            if out.open {
                fds.push(pollfd(out.reader.as_raw_fd()));
            }
            if err.open {
                fds.push(pollfd(err.reader.as_raw_fd()));
            }
            if let (false, Some(pidfd)) = (exited, &self.pidfd) {
                fds.push(pollfd(pidfd.as_raw_fd()));
            }
            poll(&mut fds, wake);
            self.drain(&mut out, &mut buf);
            self.drain(&mut err, &mut buf);
            if !exited && leader_exited(pid) {
                exited = true;
                deadline = Some(Instant::now() + STRAGGLER_GRACE);
            }
            if let Some(at) = deadline
                && Instant::now() >= at
            {
                if !stragglers_killed {
                    log::info!(pid = pid; "{program} exited but its process group keeps its output open; killing the group");
                    self.kill_group();
                    stragglers_killed = true;
                    deadline = Some(Instant::now() + DRAIN_AFTER_KILL);
                } else {
                    log::warn!(pid = pid; "a process outside {program}'s group holds its output pipes; abandoning them");
                    out.open = false;
                    err.open = false;
                }
            }
        }
        // Processes of the group that closed their output are not left behind either.
        if !stragglers_killed {
            self.kill_group();
        }
        let report = match self.group.reap(&mut self.child) {
            Ok(status) => ExitReport {
                code: status.code(),
                signal: status.signal(),
                peak_memory_bytes: self.memory.as_ref().and_then(|m| m.0.peak_bytes()),
                memory_limit_bytes: self.memory.as_ref().and_then(|m| m.0.limit_bytes()),
            },
            Err(e) => {
                log::error!(pid = pid; "could not reap {program}: {e}");
                ExitReport::default()
            }
        };
        log::info!(
            pid = pid, code:? = report.code, signal:? = report.signal,
            peak_memory_bytes:? = report.peak_memory_bytes;
            "{program} finished"
        );
        self.send(ServerMessage::Exited(report));
    }

    /// Reads one chunk from a readable pipe and forwards it; closes the pipe on EOF or error.
    fn drain<R: Read>(&mut self, pipe: &mut Pipe<R>, buf: &mut [u8]) {
        if !pipe.open {
            return;
        }
        match pipe.reader.read(buf) {
            Ok(0) => pipe.open = false,
            Ok(n) => {
                let chunk = buf[..n].to_vec();
                self.send(if pipe.stdout {
                    ServerMessage::Stdout(chunk)
                } else {
                    ServerMessage::Stderr(chunk)
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                log::warn!("reading the command's output failed: {e}");
                pipe.open = false;
            }
        }
    }

    fn sample(&mut self) {
        let Some((watch, monitor)) = &mut self.memory else {
            return;
        };
        let reading = match monitor.cgroup.read() {
            Ok(reading) => reading,
            Err(e) => {
                log::warn!("memory monitor: {e}");
                return;
            }
        };
        if let Some(reached) = watch.observe(reading) {
            log::warn!(
                usage_bytes = reached.usage_bytes, limit_bytes = reached.limit_bytes;
                "memory soft limit reached ({} % of the container's limit): sending SIGTERM to the command",
                monitor.settings.soft_limit_percent
            );
            if let Err(e) = self.group.signal(libc::SIGTERM) {
                log::error!("could not signal the command: {e}");
            }
            self.send(ServerMessage::MemorySoftLimitReached(reached));
        }
    }

    fn kill_group(&self) {
        if let Err(e) = self.group.signal(libc::SIGKILL) {
            log::error!("could not kill the command's process group: {e}");
        }
    }

    /// Queues a frame for the worker; once the worker is gone, frames are dropped.
    fn send(&mut self, message: ServerMessage) {
        if let Some(output) = &self.output
            && output.send(message).is_err()
        {
            self.output = None;
        }
    }
}

/// Makes a pipe non-blocking, so one thread can drain both without getting stuck on either.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor owned by the caller.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until a descriptor is readable (or hung up) or `until` passes. Errors (EINTR) just return:
/// the caller re-checks everything anyway.
fn poll(fds: &mut [libc::pollfd], until: Option<Instant>) {
    let timeout_ms = match until {
        None => -1,
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            // Round up so we never wake just before the deadline and spin.
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        }
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd of the given length.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
    }
}

/// Whether the leader has exited, without reaping it (`WNOWAIT`): its pid, and so the group id,
/// stay reserved until [`ProcessGroup::reap`].
fn leader_exited(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // ECHILD cannot happen while we hold the unreaped child; treat any error as "still there"
        // and let the next wake-up retry.
        rc == 0 && info.si_pid() != 0
    }
}

/// A descriptor that becomes readable when `pid` exits (Linux 5.3+); `None` on older kernels.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; on success we own the returned descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        log::debug!(
            "pidfd_open unavailable ({}); polling for exit",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..CommandSpec::default()
        }
    }

    #[test]
    fn validation_table() {
        let mut bad_env = spec(&["true"]);
        bad_env.env = vec![("A=B".into(), "x".into())];
        let mut empty_key = spec(&["true"]);
        empty_key.env = vec![(String::new(), "x".into())];
        let mut nul_value = spec(&["true"]);
        nul_value.env = vec![("A".into(), "x\0y".into())];
        let mut bad_cwd = spec(&["true"]);
        bad_cwd.cwd = Some("/nonexistent/scalr-agent-test".into());
        let mut good = spec(&["true", "arg"]);
        good.env = vec![("A".into(), "=weird but fine=".into())];
        good.cwd = Some("/".into());
        let cases = [
            (spec(&[]), Some(ErrorCode::InvalidRequest)),
            (spec(&[""]), Some(ErrorCode::InvalidRequest)),
            (spec(&["true", "a\0b"]), Some(ErrorCode::InvalidRequest)),
            (bad_env, Some(ErrorCode::InvalidRequest)),
            (empty_key, Some(ErrorCode::InvalidRequest)),
            (nul_value, Some(ErrorCode::InvalidRequest)),
            (bad_cwd, Some(ErrorCode::SpawnFailed)),
            (good, None),
        ];
        for (spec, expected) in cases {
            assert_eq!(validate(&spec).err().map(|e| e.code), expected, "{spec:?}");
        }
    }

    #[test]
    fn validation_errors_never_echo_values() {
        let mut s = spec(&["true"]);
        s.env = vec![("TOKEN".into(), "hunter2\0".into())];
        let message = validate(&s).expect_err("NUL").message;
        assert!(
            message.contains("TOKEN") && !message.contains("hunter2"),
            "{message}"
        );
    }
}
