//! Time as giftx sees it: milliseconds since the Unix epoch, from a clock
//! that tests can hold still and move by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant, in whole milliseconds since 1970-01-01T00:00:00Z.
///
/// Milliseconds are the ledger's unit: deadlines compare at this grain.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// From seconds and nanoseconds (protobuf's representation), truncated
    /// to the millisecond.
    pub fn from_seconds_nanos(seconds: i64, nanos: i32) -> Self {
        Timestamp(
            seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(nanos) / 1_000_000),
        )
    }

    /// Seconds and nanoseconds (protobuf's representation).
    pub fn to_seconds_nanos(self) -> (i64, i32) {
        let s = self.0.div_euclid(1000);
        // rem_euclid(1000) < 1000, so the product fits in i32.
        let n = (self.0.rem_euclid(1000) * 1_000_000) as i32;
        (s, n)
    }

    /// This instant plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// This instant minus a duration (saturating).
    pub fn minus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }
}

/// Where giftx reads the time. Every state change takes its time from here
/// and hands it to the ledger; no script reads a clock of its own.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            now: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// Sets the time.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }

    /// Moves the time forward (or back, for a negative step).
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_nanos_round_trip_including_negative_instants() {
        for ms in [-1_500, -1, 0, 1, 999, 1_000, 1_417_000_000_123] {
            let (s, n) = Timestamp(ms).to_seconds_nanos();
            assert!((0..1_000_000_000).contains(&n));
            assert_eq!(Timestamp::from_seconds_nanos(s, n), Timestamp(ms));
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_time() {
        let c = ManualClock::new(Timestamp(10));
        let d = c.clone();
        assert_eq!(c.now(), Timestamp(10));
        d.advance(Duration::from_millis(5));
        assert_eq!(c.now(), Timestamp(15));
        c.set(Timestamp(1));
        assert_eq!(d.now(), Timestamp(1));
    }
}
