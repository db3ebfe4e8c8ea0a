//! exec-loop, install and probe, driven through the real built binary and the real IPC client.
//!
//! Each test starts its own `scalr-agent exec-loop` in a fresh temporary data directory (the chart's
//! layout: socket and markers derived from `SCALR_AGENT_DATA_DIR`), with its log captured to a file
//! that failing assertions print.

mod commands;
mod lifecycle;
mod memory;
mod tools;

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use scalr_agent::ipc::{CommandEvent, CommandSpec, IpcClient, RunOutput};

pub const BIN: &str = env!("CARGO_BIN_EXE_scalr-agent");

/// Generous: these machines are shared and slow at times. Waiting ends as soon as the condition
/// holds, so a long deadline costs nothing when things work.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How to start an exec-loop.
#[derive(Default)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as this uid/gid (the test must be root).
    pub uid: Option<u32>,
    /// Use this cgroup root instead of an empty directory (monitor inactive).
    pub cgroup_root: Option<PathBuf>,
}

/// A running exec-loop in its own temporary directory; killed on drop.
pub struct ExecLoop {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket: PathBuf,
    pub markers: PathBuf,
    log: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl ExecLoop {
    pub fn start() -> ExecLoop {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> ExecLoop {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let log = dir.path().join("exec-loop.log");
        let empty_cgroup = dir.path().join("no-cgroup");
        fs::create_dir(&empty_cgroup).expect("mkdir");
        let mut command = Command::new(BIN);
        command
            .arg("exec-loop")
            .args(&options.args)
            .env("SCALR_AGENT_DATA_DIR", &data)
            .env(
                "SCALR_AGENT_CGROUP_ROOT",
                options.cgroup_root.unwrap_or(empty_cgroup),
            )
            .env("RUST_LOG", "debug")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        if let Some(uid) = options.uid {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).expect("chown");
            command.uid(uid).gid(uid);
        }
        let child = command.spawn().expect("spawn exec-loop");
        ExecLoop {
            socket: data.join("exec-loop.sock"),
            markers: data.join("markers/runner"),
            data,
            dir,
            log,
            child,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn connect(&self) -> IpcClient {
        IpcClient::connect(&self.socket, DEADLINE)
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log()))
    }

    /// exec-loop's log so far.
    pub fn log(&self) -> String {
        format!(
            "--- exec-loop log ---\n{}",
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Waits for exec-loop to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        assert!(exited, "exec-loop did not exit\n{}", self.log());
        self.status = status;
        status.expect("exited")
    }

    /// Whether exec-loop is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `signal` to exec-loop itself.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for ExecLoop {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command spec for `sh -c script`.
pub fn sh(script: &str) -> CommandSpec {
    CommandSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..CommandSpec::default()
    }
}

/// Runs `spec` to completion on `client`.
pub fn run_to_end(client: &mut IpcClient, spec: &CommandSpec) -> RunOutput {
    client
        .run(spec)
        .expect("run")
        .wait_output()
        .expect("events")
}

/// Reads events until stdout contains `needle`; returns everything read so far.
pub fn read_until_stdout_contains(
    handle: &mut scalr_agent::ipc::RunHandle<'_>,
    needle: &str,
) -> Vec<CommandEvent> {
    let mut seen = Vec::new();
    let mut stdout = Vec::new();
    while !String::from_utf8_lossy(&stdout).contains(needle) {
        let event = handle
            .next_event()
            .expect("event")
            .unwrap_or_else(|| panic!("command ended before printing {needle:?}: {seen:?}"));
        if let CommandEvent::Stdout(bytes) = &event {
            stdout.extend_from_slice(bytes);
        }
        seen.push(event);
    }
    seen
}

/// Whether `pid` is gone: no such process, or a zombie about to be reaped.
pub fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses: "123 (sleep) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub fn stdout_text(output: &RunOutput) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}
