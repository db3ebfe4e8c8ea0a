//! The simulator's clock: real time plus an offset the test can advance, so heartbeat expiry, offline
//! thresholds and offer leases are tested without sleeping. Shared by the request threads and the
//! reaper; reads and writes take a short lock.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Real time, shifted forward by whatever the test advanced.
#[derive(Debug)]
pub struct SimClock {
    offset: Mutex<Duration>,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            offset: Mutex::new(Duration::ZERO),
        }
    }
}

impl SimClock {
    /// The monotonic "now" every threshold is measured against.
    pub fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    /// The wall-clock "now" printed in documents.
    pub fn wall(&self) -> SystemTime {
        SystemTime::now() + self.offset()
    }

    /// Moves time forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }

    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// RFC 3339 UTC with second precision, as documents print times.
pub fn rfc3339(at: SystemTime) -> String {
    match jiff::Timestamp::try_from(at) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_string(),
    }
}
