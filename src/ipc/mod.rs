//! The worker ⇄ exec-loop protocol over a Unix socket on the pod's shared data volume.
//!
//! [`frame`] is the byte layer (bounded, length-prefixed frames), [`message`] the typed messages and
//! the versioned handshake, [`client`] the blocking client the worker uses. exec-loop's side lives in
//! `crate::runner`. The protocol is written down in `docs/ipc.md`.
//!
//! Both sides check the peer's uid with `SO_PEERCRED` ([`peer_uid`]): worker and runner run as the
//! same user, and nobody else may drive commands or impersonate exec-loop.

pub mod client;
pub mod frame;
pub mod message;

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{CommandEvent, IpcClient, RunHandle, RunOutput, Signaller};
pub use frame::{Frame, MAX_FRAME_LEN, MAX_OUTPUT_CHUNK, read_frame, write_frame};
pub use message::{
    ClientMessage, CommandSpec, ErrorCode, ErrorReply, ExitReport, Hello, MemorySoftLimit,
    PROTOCOL, PROTOCOL_MAJOR, PROTOCOL_MINOR, ServerMessage, SignalRequest, Started, Terminating,
    Welcome,
};

/// Everything that can go wrong speaking the protocol, on either side.
#[derive(Debug)]
pub enum IpcError {
    /// Connecting to exec-loop's socket failed until the deadline.
    Connect { path: PathBuf, source: io::Error },
    /// Reading the peer's credentials (`SO_PEERCRED`) failed.
    PeerCredentials { source: io::Error },
    /// The peer runs as another user.
    PeerUid { peer_uid: u32, own_uid: u32 },
    /// Writing a frame failed (the peer is gone).
    Send { source: io::Error },
    /// Reading a frame failed (the peer is gone, or closed inside a frame).
    Receive { source: io::Error },
    /// The peer did not answer in time.
    Timeout {
        waiting_for: &'static str,
        after: Duration,
    },
    /// The peer closed the connection.
    Closed,
    /// A frame's length exceeds [`MAX_FRAME_LEN`].
    FrameTooLarge { len: usize, max: usize },
    /// A frame's length is zero (it must hold at least the kind byte).
    EmptyFrame,
    /// A message could not be serialised (a non-UTF-8 path in a command).
    Encode {
        kind: &'static str,
        source: serde_json::Error,
    },
    /// A message's JSON payload is invalid.
    Decode {
        kind: &'static str,
        source: serde_json::Error,
    },
    /// A frame kind this version does not know.
    UnknownMessage { kind: u8 },
    /// A known message at the wrong moment.
    UnexpectedMessage {
        expected: &'static str,
        got: &'static str,
    },
    /// The peer speaks another protocol or major version.
    VersionMismatch { local: String, remote: String },
    /// exec-loop refused the request with an `Error` frame.
    Rejected { code: ErrorCode, message: String },
    /// A signal number outside 1..=64.
    InvalidSignal { signal: i32 },
    /// `run` was called before the previous command's `Exited` event was read.
    RunInProgress,
}

impl fmt::Display for IpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpcError::Connect { path, source } => write!(
                f,
                "could not connect to exec-loop at {}: {source}; is the runner container running \
                 `scalr-agent exec-loop` with the same SCALR_AGENT_DATA_DIR volume?",
                path.display()
            ),
            IpcError::PeerCredentials { source } => {
                write!(
                    f,
                    "could not read the peer's credentials (SO_PEERCRED): {source}"
                )
            }
            IpcError::PeerUid { peer_uid, own_uid } => write!(
                f,
                "the peer runs as uid {peer_uid}, we run as uid {own_uid}; worker and runner must run \
                 as the same user (securityContext.runAsUser)"
            ),
            IpcError::Send { source } => write!(f, "could not send to the peer: {source}"),
            IpcError::Receive { source } => write!(f, "could not read from the peer: {source}"),
            IpcError::Timeout { waiting_for, after } => {
                write!(f, "no {waiting_for} from the peer within {after:?}")
            }
            IpcError::Closed => write!(f, "the peer closed the connection"),
            IpcError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            IpcError::EmptyFrame => write!(f, "frame of length 0 (no kind byte)"),
            IpcError::Encode { kind, source } => write!(f, "could not encode {kind}: {source}"),
            IpcError::Decode { kind, source } => write!(f, "invalid {kind} message: {source}"),
            IpcError::UnknownMessage { kind } => write!(f, "unknown message kind 0x{kind:02x}"),
            IpcError::UnexpectedMessage { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            IpcError::VersionMismatch { local, remote } => write!(
                f,
                "protocol mismatch: we speak {local}, the peer speaks {remote}; run the same \
                 scalr-agent version in the install init container and the worker"
            ),
            IpcError::Rejected { code, message } => {
                write!(f, "exec-loop refused ({code:?}): {message}")
            }
            IpcError::InvalidSignal { signal } => {
                write!(f, "signal {signal} is not a valid signal number (1..=64)")
            }
            IpcError::RunInProgress => write!(
                f,
                "a command is still running on this connection; read its events up to Exited first"
            ),
        }
    }
}

impl std::error::Error for IpcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IpcError::Connect { source, .. }
            | IpcError::PeerCredentials { source }
            | IpcError::Send { source }
            | IpcError::Receive { source } => Some(source),
            IpcError::Encode { source, .. } | IpcError::Decode { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The uid of the process at the other end of a connected Unix socket (`SO_PEERCRED`).
pub fn peer_uid(socket: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `signal` is a Linux signal number (1..=64, real-time signals included).
pub fn is_valid_signal(signal: i32) -> bool {
    (1..=64).contains(&signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_uid_of_a_socket_pair_is_our_own() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        assert_eq!(peer_uid(&a).expect("SO_PEERCRED"), own_uid());
    }

    #[test]
    fn signal_range() {
        for (signal, ok) in [
            (0, false),
            (1, true),
            (15, true),
            (64, true),
            (65, false),
            (-9, false),
        ] {
            assert_eq!(is_valid_signal(signal), ok, "{signal}");
        }
    }
}
