//! Running one command of a stage through exec-loop, on the worker's main thread: start it under
//! the [`StopControl`]'s guard, stream its stdout and stderr to the log shipper as they arrive
//! (or capture stdout, for `show -json`), keep the tail of its output for messages, note the
//! memory monitor's events, and return how it ended.

use super::cancel::{StopCause, Trigger};
use super::control::StopControl;
use super::log_batch::Stream;
use super::log_shipper::LogSender;
use super::mask::Masker;
use super::results::strip_ansi;
use crate::ipc::{CommandEvent, CommandSpec, ExitReport, IpcClient, IpcError, MemorySoftLimit};

/// Largest captured stdout (`show -json` of a plan): the artefact limit, 64 MiB.
pub const MAX_CAPTURE_BYTES: usize = 64 << 20;
/// Lines of output kept for messages and summary lines.
pub const TAIL_LINES: usize = 200;

/// How a command ended.
#[derive(Debug)]
pub struct CommandResult {
    pub exit: ExitReport,
    /// The memory monitor sent SIGTERM at the soft limit.
    pub soft_limit: Option<MemorySoftLimit>,
    /// Captured stdout, when asked for.
    pub captured: Option<Vec<u8>>,
    /// The last lines of its output, masked, without ANSI sequences.
    pub tail: Vec<String>,
}

/// Why a command could not run to its end.
#[derive(Debug)]
pub enum ExecError {
    /// The run is stopping: the command was not started.
    Stopped(StopCause),
    /// exec-loop refused or went away.
    Ipc(IpcError),
    /// The captured output exceeded [`MAX_CAPTURE_BYTES`].
    CaptureTooLarge,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Stopped(cause) => write!(f, "not started: the run is stopping ({cause:?})"),
            ExecError::Ipc(e) => write!(f, "the runner failed: {e}"),
            ExecError::CaptureTooLarge => write!(
                f,
                "the output to capture exceeds {} MiB",
                MAX_CAPTURE_BYTES >> 20
            ),
        }
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecError::Ipc(e) => Some(e),
            _ => None,
        }
    }
}

/// Raw output kept for the tail: enough for [`TAIL_LINES`] lines of terraform output.
const TAIL_BYTES: usize = 256 * 1024;

/// The last lines of a command's output. Keeps raw bytes while the command runs and turns only
/// the last lines into text at the end, so a large log costs no per-line work here.
#[derive(Debug)]
struct LineTail {
    masker: Masker,
    bytes: Vec<u8>,
    truncated: bool,
}

impl LineTail {
    fn new(masker: Masker) -> Self {
        LineTail {
            masker,
            bytes: Vec::new(),
            truncated: false,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * TAIL_BYTES {
            let cut = self.bytes.len() - TAIL_BYTES;
            self.bytes.drain(..cut);
            self.truncated = true;
        }
    }

    fn finish(self) -> Vec<String> {
        let mut text = self.bytes.as_slice();
        if self.truncated {
            // Start at a whole line: a secret cut in two by the truncation must not show.
            let start = text
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |i| i + 1);
            text = &text[start..];
        }
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        if text.is_empty() {
            return Vec::new();
        }
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        lines[from..]
            .iter()
            .map(|line| strip_ansi(&self.masker.mask(line)).trim_end().to_string())
            .collect()
    }
}

/// Runs `spec` to its end, streaming output to `log` (stdout captured instead when `capture`).
pub fn run_command(
    client: &mut IpcClient,
    control: &StopControl,
    spec: &CommandSpec,
    log: &LogSender,
    masker: &Masker,
    capture: bool,
) -> Result<CommandResult, ExecError> {
    let guard = control.begin().map_err(ExecError::Stopped)?;
    let mut handle = client.run(spec).map_err(ExecError::Ipc)?;
    drop(guard);
    let mut tail = LineTail::new(masker.clone());
    let mut captured = capture.then(Vec::new);
    let mut soft_limit = None;
    let mut too_large = false;
    let result = loop {
        let event = match handle.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break Err(ExecError::Ipc(IpcError::Closed)),
            Err(e) => break Err(ExecError::Ipc(e)),
        };
        match event {
            CommandEvent::Stdout(bytes) => match captured.as_mut() {
                Some(out) => {
                    // Past the limit the rest is read and dropped, so the command can end.
                    too_large |= out.len() + bytes.len() > MAX_CAPTURE_BYTES;
                    if !too_large {
                        out.extend_from_slice(&bytes);
                    }
                }
                None => {
                    tail.push(&bytes);
                    log.output(Stream::Stdout, bytes);
                }
            },
            CommandEvent::Stderr(bytes) => {
                tail.push(&bytes);
                log.output(Stream::Stderr, bytes);
            }
            CommandEvent::MemorySoftLimitReached {
                usage_bytes,
                limit_bytes,
            } => {
                soft_limit = Some(MemorySoftLimit {
                    usage_bytes,
                    limit_bytes,
                });
                log.end_of_command();
                log.line(soft_limit_line(usage_bytes, limit_bytes));
            }
            CommandEvent::RunnerTerminating { signal } => {
                log::warn!("exec-loop received signal {signal}: the pod is being deleted");
                control.trigger(Trigger::Terminate);
            }
            CommandEvent::Exited(_) if too_large => break Err(ExecError::CaptureTooLarge),
            CommandEvent::Exited(exit) => {
                break Ok(CommandResult {
                    exit,
                    soft_limit,
                    captured: None,
                    tail: Vec::new(),
                });
            }
        }
    };
    log.end_of_command();
    result.map(|mut r| {
        r.captured = captured;
        r.tail = tail.finish();
        r
    })
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// The run-log line when the memory monitor stopped the command.
pub fn soft_limit_line(usage: u64, limit: u64) -> String {
    format!(
        "Error: the runner reached its memory soft limit ({} MiB used of a {} MiB limit): the \
         command was sent SIGTERM so terraform can save its state before an out-of-memory kill. \
         Give the runner container more memory (task.runner.resources.limits.memory).",
        mib(usage),
        mib(limit)
    )
}

/// The run-log warning when a command's peak memory came close to the soft limit.
pub fn memory_warning_line(peak: u64, limit: u64) -> String {
    let percent = (peak * 100).checked_div(limit).unwrap_or(0);
    format!(
        "Warning: the runner's memory use peaked at {} MiB of its {} MiB limit ({percent}%), close \
         to the soft limit at which terraform is stopped. Give the runner container more memory \
         (task.runner.resources.limits.memory).",
        mib(peak),
        mib(limit)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn tail_keeps_the_last_lines_masked_and_plain() {
        let secret = Secret::new("tail-secret-value");
        let mut tail = LineTail::new(Masker::new([&secret]));
        tail.push(b"\x1b[31mError:\x1b[0m tail-secret-");
        tail.push(b"value leaked\nsecond\nthi");
        tail.push(b"rd");
        assert_eq!(
            tail.finish(),
            ["Error: *** leaked", "second", "third"].map(String::from)
        );
        let mut long = LineTail::new(Masker::default());
        for i in 0..TAIL_LINES + 5 {
            long.push(format!("line {i}\n").as_bytes());
        }
        let lines = long.finish();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "line 5");
        // Far more output than is kept: the kept part starts at a whole line.
        let secret = Secret::new("tail-cut-secret-value");
        let mut big = LineTail::new(Masker::new([&secret]));
        for _ in 0..3 * TAIL_BYTES / 32 {
            big.push(b"0123456789 tail-cut-secret-value\n");
        }
        big.push(b"last\n");
        let lines = big.finish();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last().map(String::as_str), Some("last"));
        assert!(
            lines[..TAIL_LINES - 1]
                .iter()
                .all(|l| l == "0123456789 ***"),
            "{lines:?}"
        );
        assert!(LineTail::new(Masker::default()).finish().is_empty());
    }

    #[test]
    fn memory_lines_name_the_figures() {
        let line = soft_limit_line(820 << 20, 1024 << 20);
        assert!(line.contains("820 MiB used of a 1024 MiB limit"), "{line}");
        let warn = memory_warning_line(750 << 20, 1000 << 20);
        assert!(
            warn.contains("750 MiB of its 1000 MiB limit (75%)"),
            "{warn}"
        );
    }
}
