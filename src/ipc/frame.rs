//! Frame layer of the worker ⇄ exec-loop protocol: length-prefixed, typed, bounded.
//!
//! Pure byte handling over any `Read`/`Write`; used by the worker's client thread and by exec-loop's
//! connection reader and writer threads. Layout (see `docs/ipc.md`):
//!
//! ```text
//! +----------------------+-----------+-----------------------+
//! | length: u32 big-end. | kind: u8  | payload: length-1 B   |
//! +----------------------+-----------+-----------------------+
//! ```
//!
//! `length` counts the kind byte and the payload, so it is at least 1 and at most [`MAX_FRAME_LEN`].

use std::io::{self, Read, Write};

use super::IpcError;

/// Largest accepted `length` (kind byte + payload): 4 MiB.
///
/// Big enough for a run request carrying the largest environment Linux accepts for one `execve`
/// (about 2 MiB with the default stack limit); output frames are much smaller
/// ([`MAX_OUTPUT_CHUNK`]). A peer announcing more is broken or hostile: the frame is rejected before
/// anything is allocated.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Largest payload exec-loop puts in one stdout/stderr frame: 64 KiB (one pipe buffer).
pub const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// One frame as read from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The message kind byte (see `message::kind`).
    pub kind: u8,
    /// The payload: JSON for control messages, raw bytes for output.
    pub payload: Vec<u8>,
}

/// Writes one frame with a single `write_all`, so frames from different threads sharing a socket
/// behind a mutex never interleave.
pub fn write_frame(writer: &mut impl Write, kind: u8, payload: &[u8]) -> Result<(), IpcError> {
    let len = payload.len() + 1;
    if len > MAX_FRAME_LEN {
        return Err(IpcError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut buf = Vec::with_capacity(5 + payload.len());
    // `len` fits in u32: it is at most MAX_FRAME_LEN.
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
    writer
        .write_all(&buf)
        .and_then(|()| writer.flush())
        .map_err(|source| IpcError::Send { source })
}

/// Reads one frame. `Ok(None)` means the peer closed the connection cleanly between frames; a
/// connection closed inside a frame is an error.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Frame>, IpcError> {
    let mut header = [0u8; 4];
    match read_exact_or_eof(reader, &mut header)? {
        Filled::Eof => return Ok(None),
        Filled::Full => {}
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(IpcError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(IpcError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .map_err(|source| IpcError::Receive { source })?;
    let payload = body.split_off(1);
    Ok(Some(Frame {
        kind: body[0],
        payload,
    }))
}

enum Filled {
    Full,
    Eof,
}

/// Like `read_exact`, but a clean EOF before the first byte is reported as `Eof`.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> Result<Filled, IpcError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(Filled::Eof),
            Ok(0) => {
                return Err(IpcError::Receive {
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a frame header",
                    ),
                });
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(IpcError::Receive { source }),
        }
    }
    Ok(Filled::Full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, kind, payload).expect("write to a Vec");
        out
    }

    #[test]
    fn round_trips_frames_back_to_back_then_clean_eof() {
        let mut wire = encode(0x83, b"\x00\xffbinary\n");
        wire.extend(encode(0x04, b""));
        let mut reader = &wire[..];
        let first = read_frame(&mut reader).expect("first").expect("a frame");
        assert_eq!(first.kind, 0x83);
        assert_eq!(first.payload, b"\x00\xffbinary\n");
        let second = read_frame(&mut reader).expect("second").expect("a frame");
        assert_eq!((second.kind, second.payload.len()), (0x04, 0));
        assert!(read_frame(&mut reader).expect("eof").is_none());
    }

    #[test]
    fn header_layout_is_big_endian_length_then_kind() {
        assert_eq!(encode(0x02, b"ab"), vec![0, 0, 0, 3, 0x02, b'a', b'b']);
    }

    #[test]
    fn rejects_malformed_input() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("zero length", vec![0, 0, 0, 0]),
            (
                "oversized",
                ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(),
            ),
            ("huge", vec![0xff, 0xff, 0xff, 0xff]),
            ("truncated header", vec![0, 0]),
            ("truncated body", vec![0, 0, 0, 5, 0x83, b'x']),
        ];
        for (name, wire) in cases {
            let result = read_frame(&mut &wire[..]);
            match (name, result) {
                (&"zero length", Err(IpcError::EmptyFrame)) => {}
                (&"oversized" | &"huge", Err(IpcError::FrameTooLarge { max, .. })) => {
                    assert_eq!(max, MAX_FRAME_LEN)
                }
                (&"truncated header" | &"truncated body", Err(IpcError::Receive { source })) => {
                    assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof)
                }
                (name, other) => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_to_write_oversized_frames() {
        let payload = vec![0u8; MAX_FRAME_LEN];
        let mut out = Vec::new();
        assert!(matches!(
            write_frame(&mut out, 0x02, &payload),
            Err(IpcError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty(), "nothing written for a refused frame");
        // The largest legal frame passes.
        write_frame(&mut out, 0x02, &payload[1..]).expect("largest frame");
    }
}
