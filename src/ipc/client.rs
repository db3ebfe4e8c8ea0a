//! The worker's blocking client for exec-loop.
//!
//! Runs on whichever worker thread drives commands. The socket is split: reads (handshake, events)
//! belong to [`IpcClient`] and the [`RunHandle`] it lends out; writes go through a shared, locked
//! writer, so a cloneable [`Signaller`] can forward signals (cancel, grace shutdown) from another
//! thread while events are being read.
//!
//! One command at a time per connection: `run` → read events until `Exited` → `run` again.

use std::collections::VecDeque;
use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::{read_frame, write_frame};
use super::message::{
    ClientMessage, CommandSpec, ExitReport, Hello, MemorySoftLimit, ServerMessage, SignalRequest,
    Welcome, check_version,
};
use super::{IpcError, is_valid_signal, own_uid, peer_uid};

/// How long `shutdown` waits for exec-loop's acknowledgement (it kills and reaps a running command
/// first, which takes at most a few seconds).
pub const SHUTDOWN_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest pause between two connection attempts while exec-loop's socket is not there yet.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// Something that happened to the running command (or to exec-loop) while it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandEvent {
    /// A chunk of the command's stdout, as written (bytes, not necessarily UTF-8 or whole lines).
    Stdout(Vec<u8>),
    /// A chunk of the command's stderr.
    Stderr(Vec<u8>),
    /// The command ended; always the last event of a run.
    Exited(ExitReport),
    /// The container crossed the memory soft limit; exec-loop sent SIGTERM once to the command's
    /// process group.
    MemorySoftLimitReached { usage_bytes: u64, limit_bytes: u64 },
    /// exec-loop received SIGTERM/SIGINT (the pod is being deleted) and keeps running; the worker
    /// decides what to do with the command.
    RunnerTerminating { signal: i32 },
}

/// Stdout, stderr and exit report of a command run to completion by [`RunHandle::wait_output`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: ExitReport,
    /// Set when the memory monitor signalled the command.
    pub memory_soft_limit: Option<MemorySoftLimit>,
}

/// A connection to exec-loop, handshake done.
pub struct IpcClient {
    reader: BufReader<UnixStream>,
    writer: Arc<Mutex<UnixStream>>,
    welcome: Welcome,
    pending: VecDeque<CommandEvent>,
    runner_terminating: Option<i32>,
    run_active: bool,
}

impl std::fmt::Debug for IpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcClient")
            .field("server", &self.welcome)
            .field("run_active", &self.run_active)
            .finish()
    }
}

impl IpcClient {
    /// Connects to exec-loop's socket at `path` and does the handshake, all within `timeout`.
    ///
    /// While the socket is missing or refuses connections (exec-loop still starting), retries with a
    /// backoff of up to 500 ms. Fails if exec-loop runs as another user, speaks another major
    /// version, or does not answer the handshake in time.
    pub fn connect(path: &Path, timeout: Duration) -> Result<IpcClient, IpcError> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() + backoff < deadline =>
                {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
                }
                Err(source) => {
                    return Err(IpcError::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        Self::handshake(stream, deadline)
    }

    /// Checks the peer and exchanges hello/welcome on an already connected stream.
    pub(crate) fn handshake(stream: UnixStream, deadline: Instant) -> Result<IpcClient, IpcError> {
        let peer = peer_uid(&stream).map_err(|source| IpcError::PeerCredentials { source })?;
        let own = own_uid();
        if peer != own {
            return Err(IpcError::PeerUid {
                peer_uid: peer,
                own_uid: own,
            });
        }
        let writer = stream
            .try_clone()
            .map_err(|source| IpcError::Send { source })?;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|source| IpcError::Receive { source })?;
        let mut client = IpcClient {
            reader: BufReader::new(stream),
            writer: Arc::new(Mutex::new(writer)),
            welcome: Welcome {
                protocol: String::new(),
                major: 0,
                minor: 0,
                agent_version: String::new(),
                pid: 0,
            },
            pending: VecDeque::new(),
            runner_terminating: None,
            run_active: false,
        };
        send(&client.writer, &ClientMessage::Hello(Hello::current()))?;
        let welcome = match client
            .read_message()
            .map_err(|e| timeout_as("welcome", timeout, e))?
        {
            ServerMessage::Welcome(welcome) => welcome,
            ServerMessage::Error(reply) => {
                return Err(IpcError::Rejected {
                    code: reply.code,
                    message: reply.message,
                });
            }
            other => {
                return Err(IpcError::UnexpectedMessage {
                    expected: "welcome",
                    got: other.name(),
                });
            }
        };
        check_version(&welcome.protocol, welcome.major, welcome.minor)?;
        client
            .reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(|source| IpcError::Receive { source })?;
        client.welcome = welcome;
        Ok(client)
    }

    /// What exec-loop said about itself in the handshake.
    pub fn server(&self) -> &Welcome {
        &self.welcome
    }

    /// The signal exec-loop reported receiving, if any event so far said it is terminating.
    pub fn runner_terminating(&self) -> Option<i32> {
        self.runner_terminating
    }

    /// A handle that sends signals to the running command from any thread.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            writer: Arc::clone(&self.writer),
        }
    }

    /// Starts a command and waits until exec-loop confirms it runs.
    ///
    /// Errors: `Rejected` with `Busy` (another command runs), `SpawnFailed` (no such program, bad
    /// cwd), `InvalidRequest` (empty argv, bad variable name); `RunInProgress` if the previous run's
    /// events were not read up to `Exited`.
    pub fn run(&mut self, spec: &CommandSpec) -> Result<RunHandle<'_>, IpcError> {
        if self.run_active {
            return Err(IpcError::RunInProgress);
        }
        send(&self.writer, &ClientMessage::Run(spec.clone()))?;
        loop {
            match self.read_message()? {
                ServerMessage::Started(started) => {
                    self.run_active = true;
                    return Ok(RunHandle {
                        pid: started.pid,
                        client: self,
                    });
                }
                ServerMessage::Error(reply) => {
                    return Err(IpcError::Rejected {
                        code: reply.code,
                        message: reply.message,
                    });
                }
                ServerMessage::Terminating(t) => {
                    self.runner_terminating = Some(t.signal);
                    self.pending
                        .push_back(CommandEvent::RunnerTerminating { signal: t.signal });
                }
                other => {
                    return Err(IpcError::UnexpectedMessage {
                        expected: "started",
                        got: other.name(),
                    });
                }
            }
        }
    }

    /// Tells exec-loop to exit: it kills a running command (SIGKILL to its group), reaps it,
    /// acknowledges and exits 0. Returns when acknowledged or when exec-loop closed the connection.
    pub fn shutdown(mut self) -> Result<(), IpcError> {
        send(&self.writer, &ClientMessage::Shutdown)?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(SHUTDOWN_ACK_TIMEOUT))
            .map_err(|source| IpcError::Receive { source })?;
        loop {
            match self.read_message() {
                Ok(ServerMessage::ShutdownAck) | Err(IpcError::Closed) => return Ok(()),
                Ok(ServerMessage::Error(reply)) => {
                    return Err(IpcError::Rejected {
                        code: reply.code,
                        message: reply.message,
                    });
                }
                // Output and the exit of a command killed by the shutdown.
                Ok(_) => {}
                Err(e) => {
                    return Err(timeout_as(
                        "shutdown acknowledgement",
                        SHUTDOWN_ACK_TIMEOUT,
                        e,
                    ));
                }
            }
        }
    }

    fn read_message(&mut self) -> Result<ServerMessage, IpcError> {
        match read_frame(&mut self.reader)? {
            Some(frame) => ServerMessage::from_frame(frame),
            None => Err(IpcError::Closed),
        }
    }
}

/// A running command; read its events with [`RunHandle::next_event`] (or iterate) up to `Exited`.
pub struct RunHandle<'a> {
    client: &'a mut IpcClient,
    pid: u32,
}

impl RunHandle<'_> {
    /// The command's pid, which is also its process group id (in the runner's PID namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle that signals this command's process group from any thread.
    pub fn signaller(&self) -> Signaller {
        self.client.signaller()
    }

    /// The next event; blocks until one arrives. `Ok(None)` after `Exited` was returned.
    ///
    /// `Err(Closed)` means exec-loop went away mid-command (the runner container died).
    pub fn next_event(&mut self) -> Result<Option<CommandEvent>, IpcError> {
        if let Some(event) = self.client.pending.pop_front() {
            return Ok(Some(event));
        }
        if !self.client.run_active {
            return Ok(None);
        }
        let event = match self.client.read_message()? {
            ServerMessage::Stdout(bytes) => CommandEvent::Stdout(bytes),
            ServerMessage::Stderr(bytes) => CommandEvent::Stderr(bytes),
            ServerMessage::Exited(report) => {
                self.client.run_active = false;
                CommandEvent::Exited(report)
            }
            ServerMessage::MemorySoftLimitReached(m) => CommandEvent::MemorySoftLimitReached {
                usage_bytes: m.usage_bytes,
                limit_bytes: m.limit_bytes,
            },
            ServerMessage::Terminating(t) => {
                self.client.runner_terminating = Some(t.signal);
                CommandEvent::RunnerTerminating { signal: t.signal }
            }
            ServerMessage::Error(reply) => {
                return Err(IpcError::Rejected {
                    code: reply.code,
                    message: reply.message,
                });
            }
            other => {
                return Err(IpcError::UnexpectedMessage {
                    expected: "a command event",
                    got: other.name(),
                });
            }
        };
        Ok(Some(event))
    }

    /// Reads every event up to `Exited`, collecting the output. For short commands (hooks, version
    /// checks); long ones should stream with `next_event`.
    pub fn wait_output(mut self) -> Result<RunOutput, IpcError> {
        let mut out = RunOutput::default();
        while let Some(event) = self.next_event()? {
            match event {
                CommandEvent::Stdout(bytes) => out.stdout.extend(bytes),
                CommandEvent::Stderr(bytes) => out.stderr.extend(bytes),
                CommandEvent::Exited(report) => out.exit = report,
                CommandEvent::MemorySoftLimitReached {
                    usage_bytes,
                    limit_bytes,
                } => {
                    out.memory_soft_limit = Some(MemorySoftLimit {
                        usage_bytes,
                        limit_bytes,
                    })
                }
                CommandEvent::RunnerTerminating { .. } => {}
            }
        }
        Ok(out)
    }
}

impl Iterator for RunHandle<'_> {
    type Item = Result<CommandEvent, IpcError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_event().transpose()
    }
}

/// Sends signals to the running command's process group; cheap to clone, usable from any thread.
///
/// A signal sent when no command runs (it just exited) is ignored by exec-loop.
#[derive(Clone)]
pub struct Signaller {
    writer: Arc<Mutex<UnixStream>>,
}

impl Signaller {
    /// Forwards `signal` (e.g. `libc::SIGTERM`) to the command's process group.
    pub fn signal(&self, signal: i32) -> Result<(), IpcError> {
        if !is_valid_signal(signal) {
            return Err(IpcError::InvalidSignal { signal });
        }
        send(
            &self.writer,
            &ClientMessage::Signal(SignalRequest { signal }),
        )
    }
}

fn send(writer: &Mutex<UnixStream>, message: &ClientMessage) -> Result<(), IpcError> {
    let frame = message.to_frame()?;
    // A poisoned lock only means another thread panicked mid-write; the frame layer writes whole
    // frames with one write_all, so the stream is still usable or already failed.
    let mut stream = writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    write_frame(&mut *stream, frame.kind, &frame.payload)
}

/// Turns a read timeout into [`IpcError::Timeout`].
fn timeout_as(waiting_for: &'static str, after: Duration, error: IpcError) -> IpcError {
    match error {
        IpcError::Receive { source }
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            IpcError::Timeout { waiting_for, after }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted peer on a socket pair: only what the real exec-loop cannot be
    //! made to do (a wrong version, silence). Everything else is tested against the real exec-loop
    //! in `tests/it/runner.rs`.
    use super::*;
    use crate::ipc::message::{ErrorCode, ErrorReply, PROTOCOL, PROTOCOL_MAJOR};
    use crate::ipc::read_frame;

    fn scripted_peer(
        reply: Option<ServerMessage>,
    ) -> (UnixStream, std::thread::JoinHandle<Option<ClientMessage>>) {
        let (client, mut server) = UnixStream::pair().expect("socketpair");
        let peer = std::thread::spawn(move || {
            let frame = read_frame(&mut server)
                .expect("read hello")
                .expect("a frame");
            let hello = ClientMessage::from_frame(&frame).expect("decode hello");
            if let Some(reply) = reply {
                let frame = reply.to_frame().expect("encode");
                write_frame(&mut server, frame.kind, &frame.payload).expect("write reply");
            } else {
                // Stay silent until the client gives up and closes.
                let _ = read_frame(&mut server);
            }
            Some(hello)
        });
        (client, peer)
    }

    fn welcome(major: u16) -> ServerMessage {
        ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL.into(),
            major,
            minor: 3,
            agent_version: "9.9.9".into(),
            pid: 7,
        })
    }

    #[test]
    fn handshake_sends_our_hello_and_accepts_any_minor() {
        let (stream, peer) = scripted_peer(Some(welcome(PROTOCOL_MAJOR)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = IpcClient::handshake(stream, deadline).expect("handshake");
        assert_eq!(client.server().pid, 7);
        assert_eq!(
            peer.join().expect("peer"),
            Some(ClientMessage::Hello(Hello::current()))
        );
    }

    #[test]
    fn handshake_rejects_another_major_version() {
        let (stream, _peer) = scripted_peer(Some(welcome(PROTOCOL_MAJOR + 1)));
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = IpcClient::handshake(stream, deadline).expect_err("must fail");
        assert!(matches!(err, IpcError::VersionMismatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains("same scalr-agent version"),
            "{err}"
        );
    }

    #[test]
    fn handshake_reports_the_servers_refusal() {
        let (stream, _peer) = scripted_peer(Some(ServerMessage::Error(ErrorReply {
            code: ErrorCode::VersionMismatch,
            message: "nope".into(),
        })));
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = IpcClient::handshake(stream, deadline).expect_err("must fail");
        assert!(
            matches!(
                err,
                IpcError::Rejected {
                    code: ErrorCode::VersionMismatch,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn handshake_times_out_on_a_silent_peer() {
        let (stream, _peer) = scripted_peer(None);
        let deadline = Instant::now() + Duration::from_millis(200);
        let err = IpcClient::handshake(stream, deadline).expect_err("must fail");
        assert!(
            matches!(
                err,
                IpcError::Timeout {
                    waiting_for: "welcome",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn connect_gives_up_at_the_deadline_when_no_socket_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = IpcClient::connect(&dir.path().join("absent.sock"), Duration::from_millis(100))
            .expect_err("no socket");
        assert!(matches!(err, IpcError::Connect { .. }), "{err:?}");
    }

    #[test]
    fn signaller_rejects_invalid_signal_numbers_locally() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let signaller = Signaller {
            writer: Arc::new(Mutex::new(a)),
        };
        assert!(matches!(
            signaller.signal(0),
            Err(IpcError::InvalidSignal { signal: 0 })
        ));
        signaller.signal(libc::SIGTERM).expect("valid signal");
    }
}
