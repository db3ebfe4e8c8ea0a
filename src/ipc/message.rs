//! Messages of the worker ⇄ exec-loop protocol and their encoding into frames.
//!
//! Pure values and conversions, no I/O. Control messages carry a JSON object; stdout/stderr carry raw
//! bytes. Every message, its kind byte and its fields are described in `docs/ipc.md`; keep both in
//! step.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::IpcError;
use super::frame::Frame;

/// The protocol name both sides put in their handshake.
pub const PROTOCOL: &str = "scalr-agent-exec";
/// Major version: bumped on any change an older peer cannot understand.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor version: bumped on additions an older peer may ignore (new optional fields).
pub const PROTOCOL_MINOR: u16 = 0;

/// Kind bytes. Client → exec-loop below 0x80, exec-loop → client from 0x80.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const RUN: u8 = 0x02;
    pub const SIGNAL: u8 = 0x03;
    pub const SHUTDOWN: u8 = 0x04;

    pub const WELCOME: u8 = 0x81;
    pub const STARTED: u8 = 0x82;
    pub const STDOUT: u8 = 0x83;
    pub const STDERR: u8 = 0x84;
    pub const EXITED: u8 = 0x85;
    pub const MEMORY_SOFT_LIMIT_REACHED: u8 = 0x86;
    pub const TERMINATING: u8 = 0x87;
    pub const SHUTDOWN_ACK: u8 = 0x88;
    pub const ERROR: u8 = 0xff;
}

/// The client's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`PROTOCOL`].
    pub protocol: String,
    pub major: u16,
    pub minor: u16,
    /// The client's scalr-agent version, for logs.
    pub agent_version: String,
}

impl Hello {
    /// The hello this build sends.
    pub fn current() -> Self {
        Hello {
            protocol: PROTOCOL.to_string(),
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// exec-loop's answer to an acceptable [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: String,
    pub major: u16,
    pub minor: u16,
    /// exec-loop's scalr-agent version, for logs.
    pub agent_version: String,
    /// exec-loop's process id (in the runner container's PID namespace).
    pub pid: u32,
}

/// What to run: the body of a `Run` request.
///
/// Strings are UTF-8 on the wire. `Debug` shows the program and counts only: arguments and
/// environment values may hold secrets (the run token) and must never reach a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Variables added to exec-loop's own environment (later entries win).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory; exec-loop's own when `None`.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Start from an empty environment instead of exec-loop's.
    #[serde(default)]
    pub clear_env: bool,
}

impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CommandSpec")
            .field("program", &self.argv.first())
            .field("args", &self.argv.len().saturating_sub(1))
            .field("env_keys", &keys)
            .field("cwd", &self.cwd)
            .field("clear_env", &self.clear_env)
            .finish()
    }
}

/// Body of a `Signal` request: a signal number for the running command's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub signal: i32,
}

/// Body of `Started`: the command runs, as the leader of process group `pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
}

/// Body of `Exited`: how the command ended, and what memory the runner container used meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReport {
    /// Exit code, when the command exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal killed the command.
    pub signal: Option<i32>,
    /// Highest container memory usage sampled while the command ran; `None` when the monitor is off
    /// or found no cgroup.
    pub peak_memory_bytes: Option<u64>,
    /// The container's memory limit at the last sample; `None` when there is none (or no monitor).
    pub memory_limit_bytes: Option<u64>,
}

/// Body of `MemorySoftLimitReached`: the monitor sent SIGTERM to the command's process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySoftLimit {
    pub usage_bytes: u64,
    pub limit_bytes: u64,
}

/// Body of `Terminating`: exec-loop received `signal` (SIGTERM, SIGINT) and did not die.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminating {
    pub signal: i32,
}

/// Why exec-loop refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Handshake: different major version or protocol name. The connection is closed.
    VersionMismatch,
    /// The peer runs as another user. The connection is closed.
    PermissionDenied,
    /// Malformed, oversized, unknown or out-of-order frame. The connection is closed.
    Protocol,
    /// A command is already running. The connection stays open.
    Busy,
    /// The run request is invalid (empty argv, bad env name). The connection stays open.
    InvalidRequest,
    /// The command could not be started (no such program, bad cwd). The connection stays open.
    SpawnFailed,
    /// exec-loop is shutting down and starts nothing new.
    ShuttingDown,
    /// A code from a newer exec-loop.
    #[serde(other)]
    Unknown,
}

/// Body of `Error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// Client → exec-loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Hello(Hello),
    Run(CommandSpec),
    Signal(SignalRequest),
    Shutdown,
}

/// exec-loop → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    Welcome(Welcome),
    Started(Started),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited(ExitReport),
    MemorySoftLimitReached(MemorySoftLimit),
    Terminating(Terminating),
    ShutdownAck,
    Error(ErrorReply),
}

fn to_json<T: Serialize>(kind: &'static str, value: &T) -> Result<Vec<u8>, IpcError> {
    serde_json::to_vec(value).map_err(|source| IpcError::Encode { kind, source })
}

fn from_json<'a, T: Deserialize<'a>>(kind: &'static str, payload: &'a [u8]) -> Result<T, IpcError> {
    serde_json::from_slice(payload).map_err(|source| IpcError::Decode { kind, source })
}

impl ClientMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Run(_) => "run",
            ClientMessage::Signal(_) => "signal",
            ClientMessage::Shutdown => "shutdown",
        }
    }

    /// Encodes into a frame.
    pub fn to_frame(&self) -> Result<Frame, IpcError> {
        let name = self.name();
        let (kind, payload) = match self {
            ClientMessage::Hello(body) => (kind::HELLO, to_json(name, body)?),
            ClientMessage::Run(body) => (kind::RUN, to_json(name, body)?),
            ClientMessage::Signal(body) => (kind::SIGNAL, to_json(name, body)?),
            ClientMessage::Shutdown => (kind::SHUTDOWN, b"{}".to_vec()),
        };
        Ok(Frame { kind, payload })
    }

    /// Decodes a frame; unknown kinds and bad JSON are errors.
    pub fn from_frame(frame: &Frame) -> Result<Self, IpcError> {
        let p = &frame.payload;
        Ok(match frame.kind {
            kind::HELLO => ClientMessage::Hello(from_json("hello", p)?),
            kind::RUN => ClientMessage::Run(from_json("run", p)?),
            kind::SIGNAL => ClientMessage::Signal(from_json("signal", p)?),
            kind::SHUTDOWN => ClientMessage::Shutdown,
            other => return Err(IpcError::UnknownMessage { kind: other }),
        })
    }
}

impl ServerMessage {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Started(_) => "started",
            ServerMessage::Stdout(_) => "stdout",
            ServerMessage::Stderr(_) => "stderr",
            ServerMessage::Exited(_) => "exited",
            ServerMessage::MemorySoftLimitReached(_) => "memory_soft_limit_reached",
            ServerMessage::Terminating(_) => "terminating",
            ServerMessage::ShutdownAck => "shutdown_ack",
            ServerMessage::Error(_) => "error",
        }
    }

    /// Encodes into a frame.
    pub fn to_frame(&self) -> Result<Frame, IpcError> {
        let name = self.name();
        let (kind, payload) = match self {
            ServerMessage::Welcome(body) => (kind::WELCOME, to_json(name, body)?),
            ServerMessage::Started(body) => (kind::STARTED, to_json(name, body)?),
            ServerMessage::Stdout(bytes) => (kind::STDOUT, bytes.clone()),
            ServerMessage::Stderr(bytes) => (kind::STDERR, bytes.clone()),
            ServerMessage::Exited(body) => (kind::EXITED, to_json(name, body)?),
            ServerMessage::MemorySoftLimitReached(body) => {
                (kind::MEMORY_SOFT_LIMIT_REACHED, to_json(name, body)?)
            }
            ServerMessage::Terminating(body) => (kind::TERMINATING, to_json(name, body)?),
            ServerMessage::ShutdownAck => (kind::SHUTDOWN_ACK, b"{}".to_vec()),
            ServerMessage::Error(body) => (kind::ERROR, to_json(name, body)?),
        };
        Ok(Frame { kind, payload })
    }

    /// Decodes a frame; unknown kinds and bad JSON are errors.
    pub fn from_frame(frame: Frame) -> Result<Self, IpcError> {
        let p = &frame.payload;
        Ok(match frame.kind {
            kind::WELCOME => ServerMessage::Welcome(from_json("welcome", p)?),
            kind::STARTED => ServerMessage::Started(from_json("started", p)?),
            kind::STDOUT => ServerMessage::Stdout(frame.payload),
            kind::STDERR => ServerMessage::Stderr(frame.payload),
            kind::EXITED => ServerMessage::Exited(from_json("exited", p)?),
            kind::MEMORY_SOFT_LIMIT_REACHED => {
                ServerMessage::MemorySoftLimitReached(from_json("memory_soft_limit_reached", p)?)
            }
            kind::TERMINATING => ServerMessage::Terminating(from_json("terminating", p)?),
            kind::SHUTDOWN_ACK => ServerMessage::ShutdownAck,
            kind::ERROR => ServerMessage::Error(from_json("error", p)?),
            other => return Err(IpcError::UnknownMessage { kind: other }),
        })
    }
}

/// Checks a peer's handshake values against ours: same protocol name, same major version. Minor
/// versions may differ (each side uses only what the lower minor knows).
pub fn check_version(protocol: &str, major: u16, minor: u16) -> Result<(), IpcError> {
    if protocol != PROTOCOL || major != PROTOCOL_MAJOR {
        return Err(IpcError::VersionMismatch {
            local: format!("{PROTOCOL} {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"),
            remote: format!("{protocol} {major}.{minor}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_round_trip(message: ClientMessage) {
        let frame = message.to_frame().expect("encode");
        assert!(frame.kind < 0x80, "client kinds are below 0x80");
        assert_eq!(ClientMessage::from_frame(&frame).expect("decode"), message);
    }

    fn server_round_trip(message: ServerMessage) {
        let frame = message.to_frame().expect("encode");
        assert!(frame.kind >= 0x80, "server kinds are 0x80 and above");
        assert_eq!(ServerMessage::from_frame(frame).expect("decode"), message);
    }

    #[test]
    fn every_client_message_round_trips() {
        client_round_trip(ClientMessage::Hello(Hello::current()));
        client_round_trip(ClientMessage::Run(CommandSpec {
            argv: vec!["terraform".into(), "plan".into()],
            env: vec![("TF_IN_AUTOMATION".into(), "1".into())],
            cwd: Some("/var/lib/scalr-agent/data/run".into()),
            clear_env: true,
        }));
        client_round_trip(ClientMessage::Signal(SignalRequest { signal: 15 }));
        client_round_trip(ClientMessage::Shutdown);
    }

    #[test]
    fn every_server_message_round_trips() {
        server_round_trip(ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL.into(),
            major: 1,
            minor: 0,
            agent_version: "0.1.0".into(),
            pid: 1,
        }));
        server_round_trip(ServerMessage::Started(Started { pid: 42 }));
        server_round_trip(ServerMessage::Stdout(vec![0, 0xff, b'\n']));
        server_round_trip(ServerMessage::Stderr(Vec::new()));
        server_round_trip(ServerMessage::Exited(ExitReport {
            code: None,
            signal: Some(9),
            peak_memory_bytes: Some(1 << 30),
            memory_limit_bytes: None,
        }));
        server_round_trip(ServerMessage::MemorySoftLimitReached(MemorySoftLimit {
            usage_bytes: 900,
            limit_bytes: 1000,
        }));
        server_round_trip(ServerMessage::Terminating(Terminating { signal: 15 }));
        server_round_trip(ServerMessage::ShutdownAck);
        server_round_trip(ServerMessage::Error(ErrorReply {
            code: ErrorCode::Busy,
            message: "busy".into(),
        }));
    }

    #[test]
    fn run_request_defaults_optional_fields() {
        let frame = Frame {
            kind: kind::RUN,
            payload: br#"{"argv":["true"]}"#.to_vec(),
        };
        let ClientMessage::Run(spec) = ClientMessage::from_frame(&frame).expect("decode") else {
            panic!("not a run");
        };
        assert_eq!(spec.argv, ["true"]);
        assert!(spec.env.is_empty() && spec.cwd.is_none() && !spec.clear_env);
    }

    #[test]
    fn unknown_error_codes_from_newer_peers_decode() {
        let frame = Frame {
            kind: kind::ERROR,
            payload: br#"{"code":"quota_exceeded","message":"m"}"#.to_vec(),
        };
        let ServerMessage::Error(reply) = ServerMessage::from_frame(frame).expect("decode") else {
            panic!("not an error");
        };
        assert_eq!(reply.code, ErrorCode::Unknown);
    }

    #[test]
    fn rejects_unknown_kinds_and_bad_json() {
        let unknown = Frame {
            kind: 0x7e,
            payload: vec![],
        };
        assert!(matches!(
            ClientMessage::from_frame(&unknown),
            Err(IpcError::UnknownMessage { kind: 0x7e })
        ));
        let bad = Frame {
            kind: kind::RUN,
            payload: b"{not json".to_vec(),
        };
        assert!(matches!(
            ClientMessage::from_frame(&bad),
            Err(IpcError::Decode { kind: "run", .. })
        ));
    }

    #[test]
    fn version_check_accepts_any_minor_and_rejects_other_majors_or_protocols() {
        let cases = [
            (PROTOCOL, PROTOCOL_MAJOR, PROTOCOL_MINOR, true),
            (PROTOCOL, PROTOCOL_MAJOR, PROTOCOL_MINOR + 7, true),
            (PROTOCOL, PROTOCOL_MAJOR + 1, 0, false),
            (PROTOCOL, 0, 0, false),
            ("something-else", PROTOCOL_MAJOR, PROTOCOL_MINOR, false),
        ];
        for (protocol, major, minor, ok) in cases {
            let result = check_version(protocol, major, minor);
            assert_eq!(result.is_ok(), ok, "{protocol} {major}.{minor}: {result:?}");
        }
    }

    #[test]
    fn debug_of_a_command_spec_hides_arguments_and_env_values() {
        let spec = CommandSpec {
            argv: vec!["terraform".into(), "-var=token=hunter2".into()],
            env: vec![("SCALR_TOKEN".into(), "s3cr3t-value".into())],
            cwd: None,
            clear_env: false,
        };
        let shown = format!("{spec:?}");
        assert!(
            shown.contains("terraform") && shown.contains("SCALR_TOKEN"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
