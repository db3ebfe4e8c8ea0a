//! exec-loop's main loop: the actor that owns connections, the running command and the exit
//! decision.
//!
//! Runs on the process's main thread. Its inbox receives [`LoopEvent`]s from the acceptor, the
//! connection readers, the command thread and the signal thread; [`ExecLoop::handle`] decides, and
//! [`ExecLoop::tick`] does the timed work (the `healthy` marker, reaping orphans, the worker-gone
//! timeout). It never blocks on a socket: replies go through each connection's writer thread.
//!
//! Threads: `exec-loop-accept`, `exec-loop-signals`, `exec-loop-conn-N` (+ `-writer`) per
//! connection, `exec-loop-command` per command. All are joined before [`serve`] returns.

use std::collections::BTreeMap;
use std::fs;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::command::{self, MemoryMonitor, RunningCommand};
use super::connection::{self, Link};
use super::listener::{self, Acceptor};
use super::memory::CgroupMemory;
use super::reaper::{become_subreaper, reap_orphans};
use super::settings::ExecLoopConfig;
use super::{ExitReason, RunnerError};
use crate::ipc::{
    ClientMessage, CommandSpec, ErrorCode, ErrorReply, ServerMessage, Terminating, is_valid_signal,
};
use crate::probe::touch_marker;

/// Connection number, for logs and thread names.
pub type ConnId = u64;

/// How long teardown waits for a killed command to be reaped and its output drained (beyond the
/// command thread's own straggler deadlines).
const COMMAND_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long teardown lets each writer flush its last frames (the shutdown acknowledgement).
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// The main loop's inbox.
pub enum LoopEvent {
    /// A connection from our own user (acceptor).
    Accepted { stream: UnixStream },
    /// A connection completed the handshake (its reader thread).
    Connected { conn: ConnId, link: Link },
    /// A message from a connected worker.
    Request {
        conn: ConnId,
        message: ClientMessage,
    },
    /// A connection ended; `error` is sent to the worker first (protocol violations).
    Disconnected {
        conn: ConnId,
        error: Option<ErrorReply>,
    },
    /// The command thread reaped the command and queued `Exited`.
    CommandFinished,
    /// SIGTERM or SIGINT arrived.
    Signal(i32),
}

/// Runs exec-loop until a shutdown request or the worker-gone timeout.
pub fn serve(config: ExecLoopConfig) -> Result<ExitReason, RunnerError> {
    // First, before any thread exists (bind changes the umask), and before the markers directory
    // so that a socket directory we create is private.
    let listener = listener::bind(&config.socket)?;
    let socket_file = RemoveOnDrop(config.socket.clone());
    let started = config.markers_dir.join("started");
    let healthy = config.markers_dir.join("healthy");
    fs::create_dir_all(&config.markers_dir).map_err(|source| RunnerError::Markers {
        path: config.markers_dir.clone(),
        source,
    })?;
    for marker in [&started, &healthy] {
        let _ = fs::remove_file(marker);
    }
    become_subreaper();
    let memory = detect_memory(&config);

    let (events, inbox) = crossbeam_channel::unbounded();
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|source| RunnerError::Signals { source })?;
    let signals_handle = signals.handle();
    let signal_events = events.clone();
    let signal_thread = std::thread::Builder::new()
        .name("exec-loop-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_events.send(LoopEvent::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| RunnerError::Thread {
            name: "exec-loop-signals",
            source,
        })?;
    let acceptor = Acceptor::start(listener, events.clone())?;

    let mark = |path: &PathBuf| {
        touch_marker(path).map_err(|source| RunnerError::Markers {
            path: path.clone(),
            source,
        })
    };
    let mut exec_loop = ExecLoop::new(config.clone(), memory, events, healthy.clone());
    let result = mark(&healthy).and_then(|()| mark(&started)).map(|()| {
        log::info!(
            "exec-loop listening on {} (pid {})",
            config.socket.display(),
            std::process::id()
        );
        exec_loop.run(&inbox)
    });

    acceptor.stop();
    drop(socket_file);
    exec_loop.teardown(&inbox);
    signals_handle.close();
    if signal_thread.join().is_err() {
        log::error!("the signal thread panicked");
    }
    let _ = fs::remove_file(&healthy);
    result
}

/// Removes the socket file when exec-loop stops, on every path out of [`serve`].
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Finds the container's cgroup when the monitor is on; says why it is off otherwise.
fn detect_memory(config: &ExecLoopConfig) -> Option<MemoryMonitor> {
    if !config.memory.enabled {
        log::info!("memory monitor disabled");
        return None;
    }
    let Some(cgroup) = CgroupMemory::detect(&config.cgroup_root) else {
        log::warn!(
            "memory monitor inactive: no memory cgroup under {}",
            config.cgroup_root.display()
        );
        return None;
    };
    match cgroup.read() {
        Ok(r) => log::info!(
            "memory monitor on ({:?} at {}): usage {} bytes, limit {}, soft limit at {} %",
            cgroup.version,
            config.cgroup_root.display(),
            r.usage_bytes,
            r.limit_bytes.map_or(
                "none (monitor inactive until one is set)".into(),
                |l| format!("{l} bytes")
            ),
            config.memory.soft_limit_percent
        ),
        Err(e) => log::warn!("memory monitor: {e}"),
    }
    Some(MemoryMonitor {
        cgroup,
        settings: config.memory,
        interval: config.memory_sample_interval,
    })
}

struct Command {
    conn: ConnId,
    running: RunningCommand,
}

/// The main loop's state.
struct ExecLoop {
    config: ExecLoopConfig,
    memory: Option<MemoryMonitor>,
    events: Sender<LoopEvent>,
    healthy: PathBuf,
    next_conn: ConnId,
    /// Reader threads, with a socket clone to wake them at teardown.
    readers: BTreeMap<ConnId, (JoinHandle<()>, UnixStream)>,
    links: BTreeMap<ConnId, Link>,
    /// Writers of closed connections, flushing their last frames.
    closing: Vec<JoinHandle<()>>,
    command: Option<Command>,
    /// A run that arrived while the previous command was being wrapped up.
    deferred_run: Option<(ConnId, CommandSpec)>,
    /// When the last worker left (or start-up); `None` while one is connected.
    alone_since: Option<Instant>,
    terminating: Option<i32>,
    shutdown_requested_by: Option<ConnId>,
    exit: Option<ExitReason>,
    next_healthy: Instant,
}

impl ExecLoop {
    fn new(
        config: ExecLoopConfig,
        memory: Option<MemoryMonitor>,
        events: Sender<LoopEvent>,
        healthy: PathBuf,
    ) -> Self {
        let now = Instant::now();
        ExecLoop {
            next_healthy: now + config.healthy_interval,
            config,
            memory,
            events,
            healthy,
            next_conn: 1,
            readers: BTreeMap::new(),
            links: BTreeMap::new(),
            closing: Vec::new(),
            command: None,
            deferred_run: None,
            alone_since: Some(now),
            terminating: None,
            shutdown_requested_by: None,
            exit: None,
        }
    }

    fn run(&mut self, inbox: &Receiver<LoopEvent>) -> ExitReason {
        loop {
            self.tick(Instant::now());
            if let Some(reason) = self.exit.take() {
                return reason;
            }
            match inbox.recv_deadline(self.next_deadline()) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                // Unreachable while we hold a sender; end as if told to.
                Err(RecvTimeoutError::Disconnected) => return ExitReason::Shutdown,
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        match self.alone_since {
            Some(since) => self
                .next_healthy
                .min(since + self.config.worker_gone_timeout),
            None => self.next_healthy,
        }
    }

    /// Timed work: the healthy marker, orphan reaping, finished writers, the worker-gone timeout.
    fn tick(&mut self, now: Instant) {
        if now >= self.next_healthy {
            if let Err(e) = touch_marker(&self.healthy) {
                log::warn!("could not touch {}: {e}", self.healthy.display());
            }
            reap_orphans(self.command.as_ref().map(|c| c.running.pid));
            self.join_closed_writers(false);
            self.next_healthy = now + self.config.healthy_interval;
        }
        if let Some(since) = self.alone_since
            && self.exit.is_none()
            && now >= since + self.config.worker_gone_timeout
        {
            log::error!(
                "no worker connected for {} s; exiting so the task's Job can end",
                self.config.worker_gone_timeout.as_secs()
            );
            self.exit = Some(ExitReason::WorkerGone {
                after: self.config.worker_gone_timeout,
            });
        }
    }

    fn handle(&mut self, event: LoopEvent) {
        match event {
            LoopEvent::Accepted { stream } => self.accepted(stream),
            LoopEvent::Connected { conn, link } => {
                log::info!(conn = conn; "worker connected (scalr-agent {})", link.agent_version);
                if let Some(signal) = self.terminating {
                    let _ = link
                        .control
                        .send(ServerMessage::Terminating(Terminating { signal }));
                }
                self.links.insert(conn, link);
                self.alone_since = None;
            }
            LoopEvent::Request { conn, message } => self.request(conn, message),
            LoopEvent::Disconnected { conn, error } => self.disconnected(conn, error),
            LoopEvent::CommandFinished => {
                if let Some(command) = self.command.take()
                    && command.running.thread.join().is_err()
                {
                    log::error!("the command thread panicked");
                }
                reap_orphans(None);
                if self.shutdown_requested_by.is_some() {
                    self.finish_shutdown();
                } else if let Some((conn, spec)) = self.deferred_run.take() {
                    self.start_command(conn, spec);
                }
            }
            LoopEvent::Signal(signal) => {
                log::warn!(
                    "received signal {signal}; telling the worker and waiting for it to shut us down"
                );
                self.terminating = Some(signal);
                for link in self.links.values() {
                    let _ = link
                        .control
                        .send(ServerMessage::Terminating(Terminating { signal }));
                }
            }
        }
    }

    fn accepted(&mut self, stream: UnixStream) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let Ok(wake) = stream.try_clone() else {
            log::warn!("dropped a connection: could not clone its socket");
            return;
        };
        let events = self.events.clone();
        match std::thread::Builder::new()
            .name(format!("exec-loop-conn-{conn}"))
            .spawn(move || connection::serve(conn, stream, events))
        {
            Ok(reader) => {
                self.readers.insert(conn, (reader, wake));
            }
            Err(e) => log::error!("dropped a connection: could not start its thread: {e}"),
        }
    }

    fn request(&mut self, conn: ConnId, message: ClientMessage) {
        match message {
            ClientMessage::Run(spec) => {
                log::info!(conn = conn; "run {spec:?}");
                if self.shutdown_requested_by.is_some() {
                    self.reply_error(
                        conn,
                        ErrorCode::ShuttingDown,
                        "exec-loop is shutting down".into(),
                    );
                    return;
                }
                match &self.command {
                    None => self.start_command(conn, spec),
                    // The previous command is reaped and its thread is queueing `Exited`, which
                    // its worker may already have read: start this one as soon as it is done.
                    Some(command)
                        if command.running.group.is_reaped() && self.deferred_run.is_none() =>
                    {
                        self.deferred_run = Some((conn, spec));
                    }
                    Some(command) => {
                        let message = format!(
                            "a command is already running (pid {}); wait for its exit before \
                             starting another",
                            command.running.pid
                        );
                        self.reply_error(conn, ErrorCode::Busy, message);
                    }
                }
            }
            ClientMessage::Signal(request) => match &self.command {
                Some(command) if command.conn == conn && is_valid_signal(request.signal) => {
                    log::info!(pid = command.running.pid; "forwarding signal {} to the command's process group", request.signal);
                    if let Err(e) = command.running.group.signal(request.signal) {
                        log::warn!("could not forward signal {}: {e}", request.signal);
                    }
                }
                Some(command) if command.conn == conn => {
                    log::warn!("ignored invalid signal number {}", request.signal);
                }
                Some(_) => {
                    log::warn!(conn = conn; "ignored a signal for another connection's command")
                }
                None => log::debug!("ignored signal {}: no command is running", request.signal),
            },
            ClientMessage::Shutdown => {
                log::info!(conn = conn; "shutdown requested");
                if self.shutdown_requested_by.is_some() {
                    return;
                }
                self.shutdown_requested_by = Some(conn);
                if let Some((waiting, _)) = self.deferred_run.take() {
                    self.reply_error(
                        waiting,
                        ErrorCode::ShuttingDown,
                        "exec-loop is shutting down".into(),
                    );
                }
                match &self.command {
                    Some(command) => {
                        log::info!(pid = command.running.pid; "killing the running command before shutting down");
                        let _ = command.running.group.signal(libc::SIGKILL);
                        // finish_shutdown runs on CommandFinished.
                    }
                    None => self.finish_shutdown(),
                }
            }
            // The reader thread never forwards a hello; answer it anyway rather than trust that.
            ClientMessage::Hello(_) => self.reply_error(
                conn,
                ErrorCode::Protocol,
                "hello after the handshake".into(),
            ),
        }
    }

    fn start_command(&mut self, conn: ConnId, spec: CommandSpec) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        let events = self.events.clone();
        let finished = Box::new(move || {
            let _ = events.send(LoopEvent::CommandFinished);
        });
        match command::start(&spec, self.memory.clone(), link.output.clone(), finished) {
            Ok(running) => {
                log::info!(conn = conn, pid = running.pid; "started {}", spec.argv[0]);
                self.command = Some(Command { conn, running });
            }
            Err(e) => {
                log::warn!(conn = conn; "run refused: {e}");
                self.reply_error(conn, e.code, e.message);
            }
        }
    }

    fn finish_shutdown(&mut self) {
        if let Some(link) = self
            .shutdown_requested_by
            .and_then(|conn| self.links.get(&conn))
        {
            let _ = link.control.send(ServerMessage::ShutdownAck);
        }
        self.exit = Some(ExitReason::Shutdown);
    }

    fn reply_error(&self, conn: ConnId, code: ErrorCode, message: String) {
        if let Some(link) = self.links.get(&conn) {
            let _ = link
                .control
                .send(ServerMessage::Error(ErrorReply { code, message }));
        }
    }

    fn disconnected(&mut self, conn: ConnId, error: Option<ErrorReply>) {
        if let Some((reader, _)) = self.readers.remove(&conn)
            && reader.join().is_err()
        {
            log::error!(conn = conn; "a connection thread panicked");
        }
        let Some(link) = self.links.remove(&conn) else {
            return; // refused during the handshake
        };
        match &error {
            Some(e) => log::warn!(conn = conn; "closing the connection: {}", e.message),
            None => log::info!(conn = conn; "worker disconnected"),
        }
        if self
            .deferred_run
            .as_ref()
            .is_some_and(|(waiting, _)| *waiting == conn)
        {
            self.deferred_run = None;
        }
        if let Some(command) = self.command.as_ref().filter(|c| c.conn == conn) {
            log::warn!(pid = command.running.pid; "the worker left while its command runs; killing the command");
            let _ = command.running.group.signal(libc::SIGKILL);
        }
        self.close_link(link, error);
        if self.links.is_empty() {
            self.alone_since = Some(Instant::now());
        }
    }

    /// Closes a connection without blocking: with a last frame to deliver, only reads are shut
    /// down and the writer exits after flushing it; otherwise the socket is shut down at once.
    fn close_link(&mut self, link: Link, last: Option<ErrorReply>) {
        match last {
            Some(reply) => {
                let _ = link.stream.set_write_timeout(Some(FLUSH_TIMEOUT));
                let _ = link.control.send(ServerMessage::Error(reply));
                let _ = link.stream.shutdown(Shutdown::Read);
            }
            None => {
                let _ = link.stream.shutdown(Shutdown::Both);
            }
        }
        self.closing.push(link.writer);
    }

    fn join_closed_writers(&mut self, all: bool) {
        let (done, pending): (Vec<_>, Vec<_>) = self
            .closing
            .drain(..)
            .partition(|writer| all || writer.is_finished());
        self.closing = pending;
        for writer in done {
            if writer.join().is_err() {
                log::error!("a connection writer panicked");
            }
        }
    }

    /// Stops the command, flushes and closes every connection, joins every thread.
    fn teardown(&mut self, inbox: &Receiver<LoopEvent>) {
        if let Some(command) = self.command.take() {
            let _ = command.running.group.signal(libc::SIGKILL);
            let deadline = Instant::now() + COMMAND_STOP_TIMEOUT;
            loop {
                match inbox.recv_deadline(deadline) {
                    Ok(LoopEvent::CommandFinished) => {
                        if command.running.thread.join().is_err() {
                            log::error!("the command thread panicked");
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        log::error!("the command thread did not finish; leaving it behind");
                        break;
                    }
                }
            }
        }
        for (_, link) in std::mem::take(&mut self.links) {
            // The last frames (shutdown acknowledgement) are flushed, bounded by the timeout.
            let _ = link.stream.set_write_timeout(Some(FLUSH_TIMEOUT));
            let _ = link.stream.shutdown(Shutdown::Read);
            self.closing.push(link.writer);
        }
        self.join_closed_writers(true);
        for (conn, (reader, wake)) in std::mem::take(&mut self.readers) {
            let _ = wake.shutdown(Shutdown::Both);
            if reader.join().is_err() {
                log::error!(conn = conn; "a connection thread panicked");
            }
        }
        reap_orphans(None);
    }
}
