//! Timestamps and the clock abstraction.
//!
//! Every timestamp in the system is an integer count of milliseconds since the
//! Unix epoch. Storing integers (not ISO strings as upstream does) makes time
//! comparisons in SQL and Rust exact and cheap, and rules out by construction
//! the mixed-format comparison bug upstream hit with nudge dedup (#1412).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

impl Timestamp {
    pub const fn from_ms(ms: i64) -> Self {
        Timestamp(ms)
    }
    pub const fn ms(self) -> i64 {
        self.0
    }
    pub const fn plus_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }
    pub const fn minus_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }
    /// Milliseconds elapsed from `earlier` to `self` (negative when `earlier` is in the future).
    pub const fn since(self, earlier: Timestamp) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
    /// RFC 3339 rendering with milliseconds, for humans and JSON APIs.
    pub fn to_iso(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(dt) => {
                let f = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                dt.format(&f).unwrap_or_else(|_| self.0.to_string())
            }
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_iso())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_iso())
    }
}

/// `true` when `ts` is absent or strictly more than `threshold_ms` before `now`.
/// A missing timestamp counts as stale (upstream's `staleMs`).
pub fn stale(now: Timestamp, ts: Option<Timestamp>, threshold_ms: i64) -> bool {
    match ts {
        None => true,
        Some(t) => now.since(t) > threshold_ms,
    }
}

/// The source of "now" for everything the town does.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// A clock that only moves when told to: tests and the simulator's driver use it.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock { ms: Arc::new(AtomicI64::new(start.0)) }
    }
    pub fn advance_ms(&self, ms: i64) {
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, t: Timestamp) {
        self.ms.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.ms.load(Ordering::SeqCst))
    }
}

/// Wall-clock time, for production mode only. The simulator never builds one.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned read of the OS clock
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Time from tokio's clock, anchored at a fixed epoch: under turmoil and under
/// tokio's paused test clock this is simulated time; in production it is
/// monotonic time anchored at the wall clock read once at start.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    anchor: tokio::time::Instant,
    epoch: Timestamp,
}

impl TokioClock {
    /// `epoch` is what `now()` answers at the moment of this call.
    pub fn new(epoch: Timestamp) -> Self {
        TokioClock { anchor: tokio::time::Instant::now(), epoch }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let ms = tokio::time::Instant::now().saturating_duration_since(self.anchor).as_millis();
        self.epoch.plus_ms(i64::try_from(ms).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_rendering_has_millis_and_z() {
        assert_eq!(Timestamp(0).to_iso(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp(1_780_000_000_123).to_iso(), "2026-05-28T20:26:40.123Z");
    }

    #[test]
    fn stale_is_strictly_greater_and_null_is_stale() {
        let now = Timestamp(100_000);
        assert!(stale(now, None, 90_000));
        assert!(!stale(now, Some(Timestamp(10_000)), 90_000), "exactly at the threshold is fresh");
        assert!(stale(now, Some(Timestamp(9_999)), 90_000));
        assert!(!stale(now, Some(Timestamp(99_000)), 90_000));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_tokio_time() {
        let c = TokioClock::new(Timestamp(1_000));
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert_eq!(c.now(), Timestamp(6_000));
    }
}
