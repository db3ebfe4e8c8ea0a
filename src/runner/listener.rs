//! exec-loop's socket: binding it privately, and the acceptor thread.
//!
//! [`bind`] runs on the main thread before any other thread exists (it changes the umask for the
//! `bind` call). The acceptor thread (`exec-loop-accept`) checks each peer's uid with `SO_PEERCRED`,
//! refuses other users with an `Error` frame, and hands the rest to the main loop as
//! [`LoopEvent::Accepted`].

use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::RunnerError;
use super::server::LoopEvent;
use crate::ipc::{ErrorCode, ErrorReply, ServerMessage, own_uid, peer_uid, write_frame};

/// Longest socket path Linux accepts (`sun_path` is 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Creates the socket, private to our user: directory 0700 when we create it, socket 0600 from the
/// moment it exists. A stale socket left by a dead exec-loop is removed; a live one is an error.
///
/// Must run before other threads start: it sets the process umask around `bind`.
pub fn bind(path: &Path) -> Result<UnixListener, RunnerError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(RunnerError::SocketPathTooLong {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
            .map_err(|source| RunnerError::SocketDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(RunnerError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            Err(_) => {
                log::info!("removing the stale socket {}", path.display());
                fs::remove_file(path).map_err(|source| RunnerError::Bind {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        },
        Ok(_) => {
            return Err(RunnerError::SocketPathTaken {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RunnerError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    // SAFETY: umask only changes this process's file-creation mask; no other thread runs yet, and
    // the previous mask is restored right after bind.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound.map_err(|source| RunnerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        RunnerError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(listener)
}

/// The acceptor thread and how to stop it.
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    listener: Arc<UnixListener>,
    thread: std::thread::JoinHandle<()>,
}

impl Acceptor {
    /// Starts accepting on `listener`; connections go to `events`.
    pub fn start(
        listener: UnixListener,
        events: Sender<LoopEvent>,
    ) -> Result<Acceptor, RunnerError> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Arc::new(listener);
        let (thread_stop, thread_listener) = (Arc::clone(&stop), Arc::clone(&listener));
        let thread = std::thread::Builder::new()
            .name("exec-loop-accept".into())
            .spawn(move || accept_loop(&thread_listener, &thread_stop, &events))
            .map_err(|source| RunnerError::Thread {
                name: "exec-loop-accept",
                source,
            })?;
        Ok(Acceptor {
            stop,
            listener,
            thread,
        })
    }

    /// Stops accepting (wakes the blocked `accept`) and joins the thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutting down our own listening socket; on Linux this wakes a blocked accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if self.thread.join().is_err() {
            log::error!("the accept thread panicked");
        }
    }
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, events: &Sender<LoopEvent>) {
    let own = own_uid();
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                // Out of descriptors and the like: retry after a pause rather than spin.
                log::warn!("accepting a connection failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match peer_uid(&stream) {
            Ok(uid) if uid == own => {}
            Ok(uid) => {
                log::warn!(peer_uid = uid; "refused a connection from uid {uid}; only uid {own} may use exec-loop");
                refuse(
                    &stream,
                    format!(
                        "exec-loop runs as uid {own} and accepts only that user, not uid {uid}; run \
                         worker and runner as the same user (securityContext.runAsUser)"
                    ),
                );
                continue;
            }
            Err(e) => {
                log::warn!("refused a connection: SO_PEERCRED failed: {e}");
                refuse(&stream, format!("could not verify the peer's user: {e}"));
                continue;
            }
        }
        if events.send(LoopEvent::Accepted { stream }).is_err() {
            return;
        }
    }
}

fn refuse(stream: &UnixStream, message: String) {
    let Ok(frame) = ServerMessage::Error(ErrorReply {
        code: ErrorCode::PermissionDenied,
        message,
    })
    .to_frame() else {
        return;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut writer = stream;
    let _ = write_frame(&mut writer, frame.kind, &frame.payload);
}
