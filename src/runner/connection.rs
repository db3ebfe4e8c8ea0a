//! One worker connection to exec-loop: handshake, a reader thread and a writer thread.
//!
//! The reader thread (`exec-loop-conn-N`) does the handshake, starts the writer, then turns every
//! frame into a [`LoopEvent::Request`] for the main loop and reports the end of the connection as
//! [`LoopEvent::Disconnected`]. The writer thread (`exec-loop-conn-N-writer`) owns all writes after
//! the handshake: control replies from the main loop (unbounded queue, served first) and frames of
//! the running command (bounded queue: a worker that reads slowly slows the command down instead of
//! filling exec-loop's memory). The main loop itself never blocks on a socket.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::server::{ConnId, LoopEvent};
use crate::ipc::{
    ClientMessage, ErrorCode, ErrorReply, IpcError, PROTOCOL, PROTOCOL_MAJOR, PROTOCOL_MINOR,
    ServerMessage, Welcome, read_frame, write_frame,
};

/// How long a new connection may take to send its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames of the running command queued for the writer (each at most 64 KiB of output).
pub const OUTPUT_QUEUE_FRAMES: usize = 16;

/// The main loop's handle on a connection that completed the handshake.
pub struct Link {
    /// Control replies (errors, terminating, shutdown acknowledgement); never blocks.
    pub control: Sender<ServerMessage>,
    /// Handed to the command thread for `Started`, output and `Exited`.
    pub output: Sender<ServerMessage>,
    /// A clone of the socket, to shut it down.
    pub stream: UnixStream,
    pub writer: JoinHandle<()>,
    /// The worker's scalr-agent version, for logs.
    pub agent_version: String,
}

/// Body of the reader thread of connection `conn`.
pub fn serve(conn: ConnId, stream: UnixStream, events: Sender<LoopEvent>) {
    // One buffered reader for the whole connection: a client may send its first request right
    // behind the hello.
    let mut reader = BufReader::new(&stream);
    match handshake(conn, &stream, &mut reader) {
        Ok(link) => {
            if events.send(LoopEvent::Connected { conn, link }).is_err() {
                return;
            }
        }
        Err(error) => {
            log::warn!(conn = conn; "worker connection refused: {}", error.message);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = send_now(&stream, &ServerMessage::Error(error));
            let _ = events.send(LoopEvent::Disconnected { conn, error: None });
            return;
        }
    }
    let error = loop {
        match read_frame(&mut reader) {
            Ok(None) => break None,
            Ok(Some(frame)) => match ClientMessage::from_frame(&frame) {
                Ok(ClientMessage::Hello(_)) => {
                    break Some(protocol_error("hello after the handshake".into()));
                }
                Ok(message) => {
                    if events.send(LoopEvent::Request { conn, message }).is_err() {
                        return;
                    }
                }
                Err(e) => break Some(protocol_error(e.to_string())),
            },
            Err(e @ (IpcError::FrameTooLarge { .. } | IpcError::EmptyFrame)) => {
                break Some(protocol_error(e.to_string()));
            }
            Err(e) => {
                log::debug!(conn = conn; "connection read ended: {e}");
                break None;
            }
        }
    };
    let _ = events.send(LoopEvent::Disconnected { conn, error });
}

fn protocol_error(message: String) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::Protocol,
        message,
    }
}

/// Reads the hello, checks the version, answers welcome and starts the writer thread.
fn handshake(
    conn: ConnId,
    stream: &UnixStream,
    reader: &mut BufReader<&UnixStream>,
) -> Result<Link, ErrorReply> {
    let io_failed = |what: &str, e: &dyn std::fmt::Display| protocol_error(format!("{what}: {e}"));
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| io_failed("socket setup", &e))?;
    let frame = read_frame(reader)
        .map_err(|e| io_failed("no hello", &e))?
        .ok_or_else(|| protocol_error("closed before hello".into()))?;
    let hello = match ClientMessage::from_frame(&frame) {
        Ok(ClientMessage::Hello(hello)) => hello,
        Ok(other) => {
            return Err(protocol_error(format!(
                "the first message must be hello, got {}",
                other.name()
            )));
        }
        Err(e) => {
            return Err(protocol_error(format!(
                "the first message must be hello: {e}"
            )));
        }
    };
    if hello.protocol != PROTOCOL || hello.major != PROTOCOL_MAJOR {
        return Err(ErrorReply {
            code: ErrorCode::VersionMismatch,
            message: format!(
                "exec-loop (scalr-agent {}) speaks {PROTOCOL} {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}, the \
                 worker (scalr-agent {}) speaks {} {}.{}; run the same scalr-agent version in the \
                 install init container and the worker",
                env!("CARGO_PKG_VERSION"),
                hello.agent_version,
                hello.protocol,
                hello.major,
                hello.minor
            ),
        });
    }
    let welcome = ServerMessage::Welcome(Welcome {
        protocol: PROTOCOL.into(),
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
    });
    send_now(stream, &welcome).map_err(|e| io_failed("sending welcome", &e))?;
    stream
        .set_read_timeout(None)
        .map_err(|e| io_failed("socket setup", &e))?;
    let clone = |s: &UnixStream| s.try_clone().map_err(|e| io_failed("socket setup", &e));
    let writer_stream = clone(stream)?;
    let link_stream = clone(stream)?;
    let (control, control_rx) = crossbeam_channel::unbounded();
    let (output, output_rx) = crossbeam_channel::bounded(OUTPUT_QUEUE_FRAMES);
    let writer = std::thread::Builder::new()
        .name(format!("exec-loop-conn-{conn}-writer"))
        .spawn(move || write_loop(conn, writer_stream, control_rx, output_rx))
        .map_err(|e| io_failed("starting the writer thread", &e))?;
    Ok(Link {
        control,
        output,
        stream: link_stream,
        writer,
        agent_version: hello.agent_version,
    })
}

/// Writes one message directly (before the writer thread exists).
fn send_now(mut stream: &UnixStream, message: &ServerMessage) -> Result<(), IpcError> {
    let frame = message.to_frame()?;
    write_frame(&mut stream, frame.kind, &frame.payload)?;
    stream.flush().map_err(|source| IpcError::Send { source })
}

/// Body of the writer thread: control first, then output, until both queues are closed or the
/// socket fails.
fn write_loop(
    conn: ConnId,
    mut stream: UnixStream,
    control: Receiver<ServerMessage>,
    output: Receiver<ServerMessage>,
) {
    let mut control = Some(control);
    let mut output = Some(output);
    while let Some(message) = next_message(&mut control, &mut output) {
        let result = message
            .to_frame()
            .and_then(|frame| write_frame(&mut stream, frame.kind, &frame.payload));
        if let Err(e) = result {
            log::debug!(conn = conn; "connection write ended: {e}");
            return;
        }
    }
}

/// The next message to write, control first; `None` when both queues are closed.
fn next_message(
    control: &mut Option<Receiver<ServerMessage>>,
    output: &mut Option<Receiver<ServerMessage>>,
) -> Option<ServerMessage> {
    loop {
        match (control.as_ref(), output.as_ref()) {
            (None, None) => return None,
            (Some(c), None) => match c.recv() {
                Ok(m) => return Some(m),
                Err(_) => *control = None,
            },
            (None, Some(o)) => match o.recv() {
                Ok(m) => return Some(m),
                Err(_) => *output = None,
            },
            (Some(c), Some(o)) => {
                if let Ok(m) = c.try_recv() {
                    return Some(m);
                }
                crossbeam_channel::select! {
                    recv(c) -> m => match m {
                        Ok(m) => return Some(m),
                        Err(_) => *control = None,
                    },
                    recv(o) -> m => match m {
                        Ok(m) => return Some(m),
                        Err(_) => *output = None,
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_queue_prefers_control_and_ends_when_both_close() {
        let (ctx, crx) = crossbeam_channel::unbounded();
        let (otx, orx) = crossbeam_channel::bounded(4);
        otx.send(ServerMessage::Stdout(b"a".to_vec()))
            .expect("send");
        ctx.send(ServerMessage::ShutdownAck).expect("send");
        let (mut c, mut o) = (Some(crx), Some(orx));
        assert_eq!(
            next_message(&mut c, &mut o),
            Some(ServerMessage::ShutdownAck)
        );
        assert_eq!(
            next_message(&mut c, &mut o),
            Some(ServerMessage::Stdout(b"a".to_vec()))
        );
        drop(ctx);
        otx.send(ServerMessage::Stdout(b"b".to_vec()))
            .expect("send");
        assert_eq!(
            next_message(&mut c, &mut o),
            Some(ServerMessage::Stdout(b"b".to_vec()))
        );
        drop(otx);
        assert_eq!(next_message(&mut c, &mut o), None);
    }
}
