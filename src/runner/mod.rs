//! `scalr-agent exec-loop`: the runner container's entrypoint.
//!
//! Listens on a Unix socket on the pod's shared data volume and runs the commands the worker sends
//! (protocol: `crate::ipc`, `docs/ipc.md`): each in its own process group, output streamed back as
//! frames, signals forwarded, the command killed if its worker leaves. Writes `started` and a
//! periodically touched `healthy` marker for Kubernetes probes. Survives SIGTERM/SIGINT (it tells
//! the worker, which decides) and exits when the worker says `shutdown` or has been gone longer
//! than `--worker-gone-timeout-secs`. A memory monitor samples the container's cgroup while a
//! command runs and sends SIGTERM once above the soft limit.
//!
//! Layout: [`settings`] (flags, environment), `server` (the main loop), `listener` (socket,
//! acceptor), `connection` (per-connection reader/writer threads), [`command`] (spawning and
//! supervising one command), [`memory`] (cgroup reading and the soft-limit decision), `reaper`
//! (orphaned processes).

pub mod command;
mod connection;
mod listener;
pub mod memory;
mod reaper;
mod server;
pub mod settings;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use settings::{ExecLoopArgs, ExecLoopConfig, MemoryMonitorSettings};

/// Exit status when the worker has been gone longer than the timeout.
pub const EXIT_WORKER_GONE: u8 = 3;

/// Why exec-loop stopped (when it did not fail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The worker sent `shutdown`.
    Shutdown,
    /// No worker was connected for `after`.
    WorkerGone { after: Duration },
}

impl ExitReason {
    /// The process exit status: 0 after a shutdown, [`EXIT_WORKER_GONE`] when the worker vanished
    /// (so a worker that died without saying so does not look like success).
    pub fn exit_code(&self) -> u8 {
        match self {
            ExitReason::Shutdown => 0,
            ExitReason::WorkerGone { .. } => EXIT_WORKER_GONE,
        }
    }
}

/// Why exec-loop could not start or run.
#[derive(Debug)]
pub enum RunnerError {
    /// An environment variable has an invalid value.
    Setting {
        variable: &'static str,
        value: String,
        problem: &'static str,
    },
    /// A command-line flag has an invalid value.
    Flag {
        flag: &'static str,
        problem: &'static str,
    },
    /// The socket's directory could not be created.
    SocketDir { path: PathBuf, source: io::Error },
    /// The socket path exceeds what Linux accepts.
    SocketPathTooLong { path: PathBuf },
    /// Another exec-loop is listening on the socket.
    SocketInUse { path: PathBuf },
    /// Something that is not a socket sits at the socket path.
    SocketPathTaken { path: PathBuf },
    /// Binding or securing the socket failed.
    Bind { path: PathBuf, source: io::Error },
    /// A marker file or its directory could not be written.
    Markers { path: PathBuf, source: io::Error },
    /// Signal handlers could not be installed.
    Signals { source: io::Error },
    /// A thread could not be started.
    Thread {
        name: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for RunnerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunnerError::Setting {
                variable,
                value,
                problem,
            } => write!(f, "{variable}={value:?} is invalid: {problem}"),
            RunnerError::Flag { flag, problem } => write!(f, "{flag} {problem}"),
            RunnerError::SocketDir { path, source } => write!(
                f,
                "could not create the socket directory {}: {source}; is the data volume mounted \
                 writable at SCALR_AGENT_DATA_DIR?",
                path.display()
            ),
            RunnerError::SocketPathTooLong { path } => write!(
                f,
                "socket path {} is longer than {} bytes; use a shorter SCALR_AGENT_DATA_DIR or --socket",
                path.display(),
                listener::MAX_SOCKET_PATH
            ),
            RunnerError::SocketInUse { path } => write!(
                f,
                "another exec-loop is already listening on {}; only one may run per data volume",
                path.display()
            ),
            RunnerError::SocketPathTaken { path } => write!(
                f,
                "{} exists and is not a socket; remove it or choose another --socket",
                path.display()
            ),
            RunnerError::Bind { path, source } => {
                write!(f, "could not listen on {}: {source}", path.display())
            }
            RunnerError::Markers { path, source } => write!(
                f,
                "could not write the marker {}: {source}; is the data volume writable?",
                path.display()
            ),
            RunnerError::Signals { source } => {
                write!(f, "could not install signal handlers: {source}")
            }
            RunnerError::Thread { name, source } => {
                write!(f, "could not start thread {name}: {source}")
            }
        }
    }
}

impl std::error::Error for RunnerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RunnerError::SocketDir { source, .. }
            | RunnerError::Bind { source, .. }
            | RunnerError::Markers { source, .. }
            | RunnerError::Signals { source }
            | RunnerError::Thread { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs the `exec-loop` subcommand with settings from `args` and the process environment.
pub fn run(
    args: &ExecLoopArgs,
    settings: &crate::config::Settings,
) -> Result<ExitReason, RunnerError> {
    let config = ExecLoopConfig::from_args(args, (&settings.memory).into(), |name| {
        std::env::var(name).ok()
    })?;
    server::serve(config)
}
