//! The production clock: wall time, optionally sped up.

use crate::time::{Clock, SystemClock, Timestamp};

/// `now = anchor_town + (wall - anchor_wall) × scale`. With scale 1 and the
/// anchors equal this is the wall clock. A scale above 1 runs the town's
/// timers (alarm cadence, PR polls, staleness windows) that many times
/// faster; it exists for the end-to-end test and quick demos (`--time-scale`).
/// The town never sees time go backwards across restarts: the data directory
/// remembers the last time handed out and the next start begins after it.
#[derive(Clone, Copy, Debug)]
pub struct ScaledClock {
    anchor_wall: Timestamp,
    anchor_town: Timestamp,
    scale: u32,
}

impl ScaledClock {
    /// A clock that answers `max(wall now, not_before)` now and runs `scale`× from there.
    pub fn new(scale: u32, not_before: Option<Timestamp>) -> Self {
        let wall = SystemClock.now();
        let anchor_town = match not_before {
            Some(t) if t > wall => t,
            _ => wall,
        };
        ScaledClock { anchor_wall: wall, anchor_town, scale: scale.max(1) }
    }

    pub fn scale(&self) -> u32 {
        self.scale
    }

    /// A real duration expressed in this clock's time.
    pub fn town_ms(&self, real: std::time::Duration) -> i64 {
        i64::try_from(real.as_millis()).unwrap_or(i64::MAX).saturating_mul(i64::from(self.scale))
    }

    /// A duration of this clock's time expressed in real time.
    pub fn real(&self, town_ms: i64) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(town_ms.max(0)).unwrap_or(0) / u64::from(self.scale))
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let elapsed = SystemClock.now().since(self.anchor_wall).max(0);
        self.anchor_town.plus_ms(elapsed.saturating_mul(i64::from(self.scale)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_starts_before_the_remembered_time() {
        let future = SystemClock.now().plus_ms(3_600_000);
        let c = ScaledClock::new(1, Some(future));
        assert!(c.now() >= future);
        let past = Timestamp(1);
        assert!(ScaledClock::new(1, Some(past)).now() > Timestamp(1_600_000_000_000));
    }

    #[test]
    fn converts_durations_both_ways() {
        let c = ScaledClock::new(10, None);
        assert_eq!(c.town_ms(std::time::Duration::from_millis(500)), 5_000);
        assert_eq!(c.real(5_000), std::time::Duration::from_millis(500));
        assert_eq!(ScaledClock::new(0, None).scale(), 1, "a zero scale means real time");
    }
}
