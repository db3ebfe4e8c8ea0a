//! `scalr-agent worker` end to end: the real binary as `exec-loop` and as `worker`, two processes
//! sharing a temporary data directory like the two containers of a task pod, against the platform
//! simulator on 127.0.0.1, running real terraform (1.15.5, `scripts/install-tools.sh`) served by
//! the simulator as the tool binary (harness: `tests/support/task_pod.rs`).

mod cancel;
mod end;
mod flags;
mod logs;
mod memory;
mod providers;
mod runs;

use std::fs;
use std::path::Path;

pub use crate::support::platform_sim::{RunSpec, RunStatus, Stage, tar_gz};
pub use crate::support::task_pod::{DEADLINE, Pod, PodOptions, World};

pub const BIN: &str = env!("CARGO_BIN_EXE_scalr-agent");

/// A world whose pods run the binary under test.
pub fn world() -> World {
    World::new(BIN)
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: signalling a child process of the test.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid} {signal}");
}

/// The text between the header line `header` and the next `==> ` header of a run log.
pub fn section<'a>(log: &'a str, header: &str) -> &'a str {
    let start = log
        .find(header)
        .unwrap_or_else(|| panic!("no {header:?} in the log:\n{log}"));
    let body = &log[start + header.len()..];
    let body = body.strip_prefix('\n').unwrap_or(body);
    match body.find("\n==> ") {
        Some(end) => &body[..=end],
        None => body,
    }
}

/// The position of `needle` in `log`, panicking with the log when absent.
pub fn position(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the log:\n{log}"))
}

/// A path inside the repository-independent temp dir of a pod.
pub fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
