//! Retry policy: exponential backoff with full jitter, bounded in attempts and elapsed time, with
//! `Retry-After` honoured. Callers apply it explicitly with [`retry`], and the error type says once,
//! through [`Retryable`], whether a failure is worth another attempt.

use std::time::{Duration, Instant, SystemTime};

use crate::shutdown::Shutdown;

/// What an error means for the caller's loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, no sooner than `after` when the server said so (`Retry-After`).
    Retry { after: Option<Duration> },
    /// Retrying cannot help (bad request, not found, conflict).
    Permanent,
    /// The credential is gone (401): stop the process in order.
    Fatal,
}

/// Errors that know whether they are worth retrying.
pub trait Retryable {
    /// The verdict for this error.
    fn verdict(&self) -> Verdict;
}

/// Bounds and pacing of retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 6.
    pub max_attempts: u32,
    /// Ceiling of the first backoff window. Default 0.5 s.
    pub initial: Duration,
    /// Largest backoff window. Default 30 s.
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first. Default 2 min.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// A policy for tests and tight loops: many attempts, tiny delays.
    pub fn fast(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            initial: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

/// Backoff state for one operation: pure given its random source, so it can be tested exactly.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
    rng: Jitter,
}

impl Backoff {
    /// A fresh backoff seeded from the clock and thread.
    pub fn new(policy: RetryPolicy) -> Self {
        Backoff {
            policy,
            attempt: 0,
            rng: Jitter::from_entropy(),
        }
    }

    /// A backoff with a fixed seed (tests).
    pub fn with_seed(policy: RetryPolicy, seed: u64) -> Self {
        Backoff {
            policy,
            attempt: 0,
            rng: Jitter(seed | 1),
        }
    }

    /// The delay before the next attempt after a failure, or `None` when attempts or time are spent.
    /// Full jitter: uniform in `[0, min(max_delay, initial * 2^n)]`; a server's `Retry-After` is a floor
    /// (not capped: when it reaches past `max_elapsed` the operation gives up instead).
    pub fn next_delay(
        &mut self,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        self.attempt += 1;
        if self.attempt >= self.policy.max_attempts || elapsed >= self.policy.max_elapsed {
            return None;
        }
        let exp = self.attempt.saturating_sub(1).min(30);
        let window = self
            .policy
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.policy.max_delay);
        let jittered = window.mul_f64(self.rng.next_unit());
        let delay = match retry_after {
            Some(after) => jittered.max(after),
            None => jittered,
        };
        if elapsed + delay > self.policy.max_elapsed {
            return None;
        }
        Some(delay)
    }

    /// Attempts made so far (failures counted by `next_delay`).
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success, for long-running loops.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// SplitMix64: jitter needs spread, not secrecy.
#[derive(Debug)]
struct Jitter(u64);

impl Jitter {
    fn from_entropy() -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        Jitter(nanos ^ addr.rotate_left(32) ^ u64::from(std::process::id()))
    }

    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `op` until it succeeds, fails with a non-retryable error, or the policy is spent. Sleeps
/// between attempts wake early when `shutdown` triggers (the last error is then returned).
pub fn retry<T, E: Retryable + std::fmt::Display>(
    policy: RetryPolicy,
    shutdown: Option<&Shutdown>,
    what: &str,
    mut op: impl FnMut(u32) -> Result<T, E>,
) -> Result<T, E> {
    let started = Instant::now();
    let mut backoff = Backoff::new(policy);
    let mut attempt = 1;
    loop {
        let error = match op(attempt) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Verdict::Retry { after } = error.verdict() else {
            return Err(error);
        };
        let Some(delay) = backoff.next_delay(started.elapsed(), after) else {
            log::warn!("{what}: giving up after {attempt} attempts: {error}");
            return Err(error);
        };
        log::debug!("{what}: attempt {attempt} failed ({error}); retrying in {delay:?}");
        match shutdown {
            Some(s) if s.wait_timeout(delay) => return Err(error),
            Some(_) => {}
            None => std::thread::sleep(delay),
        }
        attempt += 1;
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::try_from(now).ok()?;
    let secs = when.as_second() - now.as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_window_and_grows() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(3600),
        };
        for seed in 0..50 {
            let mut b = Backoff::with_seed(policy, seed);
            for n in 0..9u32 {
                let d = b.next_delay(Duration::ZERO, None).expect("within attempts");
                let window = Duration::from_millis(100 * (1u64 << n)).min(Duration::from_secs(1));
                assert!(d <= window, "attempt {n}: {d:?} > {window:?}");
            }
            assert_eq!(
                b.next_delay(Duration::ZERO, None),
                None,
                "10th attempt is the last"
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_elapsed_is_bounded() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial: Duration::from_millis(1),
            max_delay: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(10),
        };
        let mut b = Backoff::with_seed(policy, 7);
        assert_eq!(
            b.next_delay(Duration::ZERO, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            b.next_delay(Duration::from_secs(8), Some(Duration::from_secs(3))),
            None
        );
        assert_eq!(b.next_delay(Duration::from_secs(10), None), None);
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06 08:49:37
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[derive(Debug)]
    struct E(Verdict);
    impl Retryable for E {
        fn verdict(&self) -> Verdict {
            self.0
        }
    }
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }

    #[test]
    fn retry_stops_on_permanent_and_fatal_and_gives_up_when_spent() {
        let mut calls = 0;
        let r: Result<(), E> = retry(RetryPolicy::fast(5), None, "t", |_| {
            calls += 1;
            Err(E(Verdict::Permanent))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
        calls = 0;
        let r: Result<(), E> = retry(RetryPolicy::fast(5), None, "t", |_| {
            calls += 1;
            Err(E(Verdict::Fatal))
        });
        assert!(matches!(r, Err(E(Verdict::Fatal))));
        assert_eq!(calls, 1);
        calls = 0;
        let r: Result<(), E> = retry(RetryPolicy::fast(4), None, "t", |_| {
            calls += 1;
            Err(E(Verdict::Retry { after: None }))
        });
        assert!(r.is_err());
        assert_eq!(calls, 4);
        let r = retry(RetryPolicy::fast(4), None, "t", |n| {
            if n < 3 {
                Err(E(Verdict::Retry { after: None }))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r.ok(), Some(3));
    }
}
