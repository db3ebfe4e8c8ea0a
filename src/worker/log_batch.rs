//! The log shipper's decisions, pure: turning output chunks into masked lines ([`Assembler`]) and
//! keeping the bytes not yet acknowledged by the platform with their offset ([`Outbox`]). The
//! `log-shipper` thread (`log_shipper.rs`) owns one of each and does the I/O around them.
//!
//! **Lines.** stdout and stderr each have a partial-line buffer; complete lines are masked and
//! queued in arrival order. A partial line older than the batch delay is sent without its end, minus
//! the bytes that could be the start of a secret (see [`super::mask`]). Lines the worker writes
//! itself (step headers, warnings) go through the same masking.
//!
//! **Offsets.** The platform's log is a byte string; an append names the offset it starts at. The
//! outbox's `offset` is what the platform acknowledged; its pending bytes follow it. An answer's
//! length drops what it covers; a `log-gap`/`log-mismatch` answer's expected offset moves the
//! outbox to where the platform is, so a retry never duplicates or drops a line.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::mask::Masker;

/// Which pipe output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Default)]
struct Partial {
    bytes: Vec<u8>,
    since: Option<Instant>,
}

/// Turns chunks into masked lines, queued into an [`Outbox`].
#[derive(Debug)]
pub struct Assembler {
    masker: Masker,
    stdout: Partial,
    stderr: Partial,
}

impl Assembler {
    pub fn new(masker: Masker) -> Self {
        Assembler {
            masker,
            stdout: Partial::default(),
            stderr: Partial::default(),
        }
    }

    fn partial(&mut self, stream: Stream) -> &mut Partial {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// Adds a chunk of `stream` received at `at`; complete lines go to `out`.
    pub fn push(&mut self, stream: Stream, chunk: &[u8], at: Instant, out: &mut Outbox) {
        let masker = self.masker.clone();
        let partial = self.partial(stream);
        let Some(last_newline) = chunk.iter().rposition(|&b| b == b'\n') else {
            partial.since.get_or_insert(at);
            partial.bytes.extend_from_slice(chunk);
            return;
        };
        let since = partial.since.take().unwrap_or(at);
        let mut lines = std::mem::take(&mut partial.bytes);
        lines.extend_from_slice(&chunk[..=last_newline]);
        let rest = &chunk[last_newline + 1..];
        if !rest.is_empty() {
            partial.bytes.extend_from_slice(rest);
            partial.since = Some(at);
        }
        out.push(masker.mask(&lines), since);
    }

    /// A line the worker writes (a newline is added).
    pub fn line(&mut self, text: &str, at: Instant, out: &mut Outbox) {
        let mut bytes = self.masker.mask(text.as_bytes());
        bytes.push(b'\n');
        out.push(bytes, at);
    }

    /// Sends the safe part of partial lines waiting since before `now - max_delay`.
    pub fn flush_stale(&mut self, now: Instant, max_delay: Duration, out: &mut Outbox) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let masker = self.masker.clone();
            let partial = self.partial(stream);
            let Some(since) = partial.since else { continue };
            if now.saturating_duration_since(since) < max_delay {
                continue;
            }
            let keep = masker.unsafe_suffix(&partial.bytes);
            let safe_len = partial.bytes.len() - keep;
            if safe_len == 0 {
                continue;
            }
            let safe: Vec<u8> = partial.bytes.drain(..safe_len).collect();
            partial.since = (!partial.bytes.is_empty()).then_some(now);
            out.push(masker.mask(&safe), since);
        }
    }

    /// When the oldest partial line becomes stale, if any.
    pub fn stale_at(&self, max_delay: Duration) -> Option<Instant> {
        [self.stdout.since, self.stderr.since]
            .into_iter()
            .flatten()
            .min()
            .map(|since| since + max_delay)
    }

    /// Sends every partial line as it is (a command ended: nothing more can complete them).
    pub fn finish(&mut self, out: &mut Outbox) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let masker = self.masker.clone();
            let partial = self.partial(stream);
            if let Some(since) = partial.since.take() {
                let bytes = std::mem::take(&mut partial.bytes);
                out.push(masker.mask(&bytes), since);
            }
        }
    }
}

/// Bytes not yet acknowledged, from the platform's acknowledged offset on.
#[derive(Debug, Default)]
pub struct Outbox {
    offset: u64,
    pending: VecDeque<u8>,
    /// Logical end (bytes ever queued) of each queued piece and when it arrived.
    pieces: VecDeque<(u64, Instant)>,
    queued_total: u64,
    dropped_total: u64,
    lags: Vec<Duration>,
}

/// Lag samples kept at most; later ones replace earlier ones round-robin.
const MAX_LAG_SAMPLES: usize = 100_000;

impl Outbox {
    /// Queues masked bytes that arrived at `at`.
    pub fn push(&mut self, bytes: Vec<u8>, at: Instant) {
        if bytes.is_empty() {
            return;
        }
        self.queued_total += bytes.len() as u64;
        self.pending.extend(&bytes);
        self.pieces.push_back((self.queued_total, at));
    }

    /// The offset the next append starts at (what the platform acknowledged).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the oldest waiting byte arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.pieces.front().map(|(_, at)| *at)
    }

    /// The next append: the offset and up to `max` bytes.
    pub fn batch(&self, max: usize) -> (u64, Vec<u8>) {
        let n = max.min(self.pending.len());
        let (front, back) = self.pending.as_slices();
        let mut bytes = Vec::with_capacity(n);
        bytes.extend_from_slice(&front[..n.min(front.len())]);
        bytes.extend_from_slice(&back[..n - n.min(front.len())]);
        (self.offset, bytes)
    }

    /// The platform answered that the log now has `length` bytes.
    pub fn acknowledged(&mut self, length: u64, now: Instant) {
        if length >= self.offset {
            let covered = (length - self.offset).min(self.pending.len() as u64);
            self.drop_front(covered as usize, now, true);
        }
        self.offset = length;
    }

    /// The platform refused an append and said the log has `expected` bytes: continue from there.
    /// What it already holds of the pending bytes is dropped; bytes it lost are not resent (the
    /// worker no longer has them).
    pub fn resync(&mut self, expected: u64, now: Instant) {
        self.acknowledged(expected, now);
    }

    /// Drops everything (the platform no longer accepts appends).
    pub fn discard(&mut self, now: Instant) {
        let n = self.pending.len();
        self.drop_front(n, now, false);
    }

    fn drop_front(&mut self, n: usize, now: Instant, delivered: bool) {
        self.pending.drain(..n);
        self.dropped_total += n as u64;
        while let Some(&(end, at)) = self.pieces.front() {
            if end > self.dropped_total {
                break;
            }
            self.pieces.pop_front();
            if delivered {
                let lag = now.saturating_duration_since(at);
                if self.lags.len() < MAX_LAG_SAMPLES {
                    self.lags.push(lag);
                } else {
                    let slot = (self.dropped_total as usize) % MAX_LAG_SAMPLES;
                    self.lags[slot] = lag;
                }
            }
        }
    }

    /// The lag of every delivered piece: arrival at the worker to the platform's acknowledgement.
    pub fn lags(&self) -> &[Duration] {
        &self.lags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(out: &mut Outbox, now: Instant) -> String {
        let (_, bytes) = out.batch(usize::MAX);
        let end = out.offset() + bytes.len() as u64;
        out.acknowledged(end, now);
        String::from_utf8(bytes).expect("utf8")
    }

    #[test]
    fn lines_are_assembled_per_stream_and_masked_across_chunk_boundaries() {
        let secret = Secret::new("sup3r-s3cret-log-value");
        let mut asm = Assembler::new(Masker::new([&secret]));
        let mut out = Outbox::default();
        let t = Instant::now();
        asm.push(Stream::Stdout, b"one\ntwo sup3r-s3", t, &mut out);
        asm.push(Stream::Stderr, b"err line\n", t, &mut out);
        asm.push(Stream::Stdout, b"cret-log-value end\nthr", t, &mut out);
        assert_eq!(drain(&mut out, t), "one\nerr line\ntwo *** end\n");
        asm.line("==> terraform plan", t, &mut out);
        assert_eq!(drain(&mut out, t), "==> terraform plan\n");
        asm.finish(&mut out);
        assert_eq!(drain(&mut out, t), "thr");
        assert_eq!(asm.stale_at(ms(500)), None);
    }

    #[test]
    fn a_stale_partial_line_is_sent_without_a_possible_secret_start() {
        let secret = Secret::new("sup3r-s3cret-log-value");
        let mut asm = Assembler::new(Masker::new([&secret]));
        let mut out = Outbox::default();
        let t = Instant::now();
        asm.push(Stream::Stdout, b"Enter a value: sup3r", t, &mut out);
        assert_eq!(asm.stale_at(ms(500)), Some(t + ms(500)));
        asm.flush_stale(t + ms(100), ms(500), &mut out);
        assert!(out.is_empty(), "not stale yet");
        asm.flush_stale(t + ms(600), ms(500), &mut out);
        assert_eq!(drain(&mut out, t), "Enter a value: ");
        asm.push(
            Stream::Stdout,
            b"-s3cret-log-value\n",
            t + ms(700),
            &mut out,
        );
        assert_eq!(drain(&mut out, t), "***\n");
    }

    #[test]
    fn acknowledgements_and_resyncs_move_the_offset_without_duplicates() {
        let t = Instant::now();
        let mut out = Outbox::default();
        out.push(b"aaaa".to_vec(), t);
        out.push(b"bbbb".to_vec(), t + ms(1));
        assert_eq!(out.batch(6), (0, b"aaaabb".to_vec()));
        // The append of 6 bytes was applied.
        out.acknowledged(6, t + ms(10));
        assert_eq!(out.batch(100), (6, b"bb".to_vec()));
        assert_eq!(out.lags(), [ms(10)]);
        // A lost response: the platform already has 7 bytes; it says so with a gap/mismatch.
        out.resync(7, t + ms(20));
        assert_eq!(out.batch(100), (7, b"b".to_vec()));
        out.acknowledged(8, t + ms(30));
        assert!(out.is_empty());
        assert_eq!(out.lags(), [ms(10), ms(29)]);
        // The platform is behind us (it lost bytes): continue from where it is.
        out.push(b"cc".to_vec(), t);
        out.resync(5, t);
        assert_eq!(out.batch(100), (5, b"cc".to_vec()));
    }

    #[test]
    fn discard_drops_without_lag_samples() {
        let t = Instant::now();
        let mut out = Outbox::default();
        out.push(b"x".to_vec(), t);
        out.discard(t);
        assert!(out.is_empty() && out.lags().is_empty());
        assert_eq!(out.oldest(), None);
    }
}
