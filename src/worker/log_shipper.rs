//! The `log-shipper` thread: streams the run's output to the platform while it runs.
//!
//! Receives [`LogSender`] messages over a bounded channel (command output chunks, the worker's own
//! lines, end-of-command, flush requests) and appends them to the task's log with
//! `TaskClient::append_log`: masked ([`super::mask`]), in batches of at most
//! [`ShipperSettings::max_batch`] bytes, a batch going out once its oldest byte waited
//! [`ShipperSettings::max_delay`] (so the platform is about a second behind at most) or once it is
//! full. Offsets come from the platform's answers ([`super::log_batch::Outbox`]): a retried append
//! never duplicates or drops a line. While the platform is unreachable the shipper keeps reading
//! up to [`ShipperSettings::max_pending`] bytes, then stops reading: the command's pipe fills and
//! it waits (backpressure, bounded memory). A 401 or a final task stops shipping for good; the
//! shipper then discards what it receives so the run is never blocked by it.
//!
//! At the end the worker calls [`LogSender::flush`] with a deadline: everything received is sent,
//! retrying until the deadline, and a [`ShipReport`] says what was delivered and how late.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::log_batch::{Assembler, Outbox, Stream};
use super::mask::Masker;
use crate::http::{Backoff, RetryPolicy, Retryable, Verdict};
use crate::platform::{MAX_LOG_CHUNK, PlatformError, TaskClient};
use crate::threads::{ThreadError, Threads};

/// Batching and buffering limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShipperSettings {
    /// Longest a byte waits before it is sent. Default 500 ms.
    pub max_delay: Duration,
    /// Largest append. Default 1 MiB (the protocol's limit).
    pub max_batch: usize,
    /// Bytes kept while the platform is unreachable before the shipper stops reading. Default
    /// 32 MiB.
    pub max_pending: usize,
    /// Pacing of retries after failed appends (attempts and elapsed time are not limited: the
    /// shipper retries until the final flush's deadline).
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for ShipperSettings {
    fn default() -> Self {
        ShipperSettings {
            max_delay: Duration::from_millis(500),
            max_batch: MAX_LOG_CHUNK,
            max_pending: 32 << 20,
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// The retry policy of the shipper's client: one quick second try, then the shipper's own loop
/// takes over (it keeps reading output meanwhile, and it owns the flush deadline).
pub fn client_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        initial: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(1),
    }
}

/// Channel capacity in messages (output chunks are at most 64 KiB).
const INBOX: usize = 256;
/// Consecutive offset conflicts after which the shipper gives up (the platform keeps moving).
const MAX_CONFLICTS: u32 = 10;

enum Message {
    Output(Stream, Vec<u8>, Instant),
    Line(String, Instant),
    EndOfCommand,
    Flush {
        deadline: Instant,
        reply: Sender<ShipReport>,
    },
}

/// What the shipper delivered, for the final report and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// The log's length as the platform acknowledged it.
    pub acknowledged_bytes: u64,
    pub appends: u64,
    /// Failed appends that were tried again.
    pub retries: u64,
    /// Bytes not delivered (the deadline passed, or shipping stopped).
    pub unsent_bytes: usize,
    /// Why shipping stopped for good, if it did.
    pub error: Option<String>,
    /// Lag from the worker receiving output to the platform acknowledging it.
    pub lag_p50: Duration,
    pub lag_p99: Duration,
    pub lag_max: Duration,
}

impl ShipReport {
    /// Everything received was delivered.
    pub fn complete(&self) -> bool {
        self.unsent_bytes == 0 && self.error.is_none()
    }
}

/// Sends output to the `log-shipper` thread; cheap to clone. Sends after the thread ended are
/// dropped silently.
#[derive(Clone)]
pub struct LogSender {
    tx: Sender<Message>,
}

impl LogSender {
    /// A chunk of a command's output (blocks while the shipper's inbox is full: backpressure).
    pub fn output(&self, stream: Stream, bytes: Vec<u8>) {
        let _ = self.tx.send(Message::Output(stream, bytes, Instant::now()));
    }

    /// A line the worker writes into the run log (a step header, a warning).
    pub fn line(&self, text: impl Into<String>) {
        let _ = self.tx.send(Message::Line(text.into(), Instant::now()));
    }

    /// The running command ended: its partial lines are complete.
    pub fn end_of_command(&self) {
        let _ = self.tx.send(Message::EndOfCommand);
    }

    /// Sends everything received so far, retrying until `deadline`, and waits for the answer until
    /// `wait_until` (an append in flight at the deadline may take longer); `None` if the shipper is
    /// gone or did not answer in time.
    pub fn flush(&self, deadline: Instant, wait_until: Instant) -> Option<ShipReport> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.tx.send(Message::Flush { deadline, reply }).ok()?;
        answer.recv_deadline(wait_until.max(deadline)).ok()
    }
}

/// Starts the `log-shipper` thread appending to `task`'s log (give it a client with
/// [`client_retry`]); it ends when every [`LogSender`] is dropped.
pub fn spawn(
    threads: &mut Threads,
    task: TaskClient,
    masker: Masker,
    settings: ShipperSettings,
) -> Result<LogSender, ThreadError> {
    let (tx, rx) = crossbeam_channel::bounded(INBOX);
    let shipper = Shipper::new(task, masker, settings);
    threads.spawn("log-shipper", move || {
        shipper.run(rx);
        Ok(())
    })?;
    Ok(LogSender { tx })
}

struct Shipper {
    task: TaskClient,
    settings: ShipperSettings,
    assembler: Assembler,
    outbox: Outbox,
    backoff: Backoff,
    retry_at: Option<Instant>,
    conflicts: u32,
    appends: u64,
    retries: u64,
    failed: Option<String>,
    flushing: Option<(Instant, Sender<ShipReport>)>,
}

impl Shipper {
    fn new(task: TaskClient, masker: Masker, settings: ShipperSettings) -> Self {
        let policy = RetryPolicy {
            max_attempts: u32::MAX,
            initial: settings.retry_initial,
            max_delay: settings.retry_max,
            max_elapsed: Duration::from_secs(365 * 24 * 3600),
        };
        Shipper {
            task,
            settings,
            assembler: Assembler::new(masker),
            outbox: Outbox::default(),
            backoff: Backoff::new(policy),
            retry_at: None,
            conflicts: 0,
            appends: 0,
            retries: 0,
            failed: None,
            flushing: None,
        }
    }

    fn run(mut self, inbox: Receiver<Message>) {
        loop {
            let now = Instant::now();
            self.assembler
                .flush_stale(now, self.settings.max_delay, &mut self.outbox);
            if self.send_due(now) {
                self.send_one();
                continue;
            }
            if let Some((deadline, _)) = &self.flushing
                && (self.outbox.is_empty() || self.failed.is_some() || now >= *deadline)
            {
                self.answer_flush();
                continue;
            }
            let full = self.outbox.len() >= self.settings.max_pending && self.failed.is_none();
            let wake = self.next_wake();
            if full {
                // Backpressure: leave the inbox alone until the next attempt.
                std::thread::sleep(wake.saturating_duration_since(now));
                continue;
            }
            match inbox.recv_deadline(wake) {
                Ok(message) => self.handle(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Output(stream, bytes, at) => {
                self.assembler.push(stream, &bytes, at, &mut self.outbox);
            }
            Message::Line(text, at) => self.assembler.line(&text, at, &mut self.outbox),
            Message::EndOfCommand => self.assembler.finish(&mut self.outbox),
            Message::Flush { deadline, reply } => {
                self.assembler.finish(&mut self.outbox);
                self.flushing = Some((deadline, reply));
            }
        }
        if self.failed.is_some() {
            self.outbox.discard(Instant::now());
        }
    }

    fn send_due(&self, now: Instant) -> bool {
        if self.failed.is_some() || self.outbox.is_empty() {
            return false;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        self.flushing.is_some()
            || self.outbox.len() >= self.settings.max_batch
            || self
                .outbox
                .oldest()
                .is_some_and(|at| now >= at + self.settings.max_delay)
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                wake = wake.min(at);
            }
        };
        consider(self.assembler.stale_at(self.settings.max_delay));
        if self.failed.is_none() && !self.outbox.is_empty() {
            let due = match self.retry_at {
                Some(at) => Some(at),
                None => self.outbox.oldest().map(|at| at + self.settings.max_delay),
            };
            consider(due);
        }
        consider(self.flushing.as_ref().map(|(deadline, _)| *deadline));
        wake.max(now)
    }

    fn send_one(&mut self) {
        let (offset, bytes) = self.outbox.batch(self.settings.max_batch);
        let result = self.task.append_log(offset, &bytes);
        let now = Instant::now();
        match result {
            Ok(length) => {
                self.appends += 1;
                self.conflicts = 0;
                self.retry_at = None;
                self.backoff.reset();
                self.outbox.acknowledged(length, now);
            }
            Err(e) => self.failed_append(e, now),
        }
    }

    fn failed_append(&mut self, error: PlatformError, now: Instant) {
        let conflict = matches!(error.code(), Some("log-gap" | "log-mismatch"));
        match (conflict, error.expected_offset(), error.verdict()) {
            (true, Some(expected), _) if self.conflicts < MAX_CONFLICTS => {
                self.conflicts += 1;
                log::warn!(
                    "the platform's log has {expected} bytes, we were at {}: continuing from {expected}",
                    self.outbox.offset()
                );
                self.outbox.resync(expected, now);
            }
            (_, _, Verdict::Retry { after }) => {
                self.retries += 1;
                let delay = self
                    .backoff
                    .next_delay(Duration::ZERO, after)
                    .unwrap_or(self.settings.retry_max);
                if self.backoff.attempts() == 1 {
                    log::warn!(
                        "could not ship {} bytes of the run log: {error}; retrying",
                        self.outbox.len()
                    );
                } else {
                    log::debug!("log append failed again: {error}; retrying in {delay:?}");
                }
                self.retry_at = Some(now + delay);
            }
            _ => {
                log::error!("the run log can no longer be shipped: {error}");
                self.failed = Some(error.to_string());
                self.outbox.discard(now);
            }
        }
    }

    fn answer_flush(&mut self) {
        let Some((_, reply)) = self.flushing.take() else {
            return;
        };
        let mut lags = self.outbox.lags().to_vec();
        lags.sort();
        let at = |q: f64| {
            lags.get(((lags.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        let report = ShipReport {
            acknowledged_bytes: self.outbox.offset(),
            appends: self.appends,
            retries: self.retries,
            unsent_bytes: self.outbox.len(),
            error: self.failed.clone(),
            lag_p50: at(0.50),
            lag_p99: at(0.99),
            lag_max: lags.last().copied().unwrap_or_default(),
        };
        let _ = reply.send(report);
    }
}
