//! Every timing constant and cap of the reconciler, in one place.

use crate::time::{HOUR_MS, MINUTE_MS, SECOND_MS};

/// Three missed 30 s heartbeats.
pub const HEARTBEAT_STALE_MS: i64 = 90 * SECOND_MS;
/// Beads Rule 3. Must exceed the container's polecat idle timeout (2 min) plus a tick.
pub const STALE_IN_PROGRESS_TIMEOUT_MS: i64 = 5 * MINUTE_MS;
/// Beads Rule 4.
pub const ORPHANED_SOURCE_TIMEOUT_MS: i64 = 5 * MINUTE_MS;
/// Review Rule 3.
pub const ABANDONED_MR_TIMEOUT_MS: i64 = 2 * MINUTE_MS;
/// Review Rule 2.
pub const STUCK_REVIEW_TIMEOUT_MS: i64 = 30 * MINUTE_MS;
/// Review Rule 4.
pub const ORPHANED_PR_REVIEW_TIMEOUT_MS: i64 = 30 * MINUTE_MS;
/// A2: a stalled agent goes idle this long after it stalled.
pub const STALLED_AUTO_IDLE_MS: i64 = 150 * MINUTE_MS;
pub const GUPP_WARN_MS: i64 = 15 * MINUTE_MS;
pub const GUPP_ESCALATE_MS: i64 = HOUR_MS;
pub const GUPP_FORCE_STOP_MS: i64 = 2 * HOUR_MS;
/// At most one nudge per tier per agent in this window.
pub const NUDGE_DEDUP_WINDOW_MS: i64 = 60 * MINUTE_MS;
pub const AGENT_GC_RETENTION_MS: i64 = 24 * HOUR_MS;
pub const MAX_DISPATCH_ATTEMPTS: u32 = 5;
/// The per-rig cap when the rig sets none.
pub const DEFAULT_MAX_DISPATCH_ATTEMPTS: u32 = MAX_DISPATCH_ATTEMPTS;
/// A3: agents with this many attempts and no activity for the window get reset.
pub const DISPATCH_RESET_IDLE_MS: i64 = 30 * MINUTE_MS;
pub const BREAKER_FAILURE_THRESHOLD: u32 = 20;
pub const BREAKER_WINDOW_MS: i64 = 30 * MINUTE_MS;
pub const MAX_LANDING_MR_ATTEMPTS: u32 = 5;
pub const LANDING_MR_COOLDOWN_BASE_MS: i64 = 30 * SECOND_MS;
pub const LANDING_MR_COOLDOWN_MAX_MS: i64 = 30 * MINUTE_MS;
pub const PR_POLL_INTERVAL_MS: i64 = 60 * SECOND_MS;
/// While draining, the drain flag clears itself this long after it was set.
pub const DRAIN_TIMEOUT_MS: i64 = 7 * MINUTE_MS;
/// Stalled agents whose heartbeat is this recent still count as active work.
pub const ACTIVE_STALLED_WINDOW_MS: i64 = 30 * MINUTE_MS;

/// Dispatch back-off by the bead's attempt count.
pub const fn dispatch_cooldown_ms(attempts: u32) -> i64 {
    match attempts {
        0 | 1 => 30 * SECOND_MS,
        2 => 60 * SECOND_MS,
        3 => 2 * MINUTE_MS,
        4 => 5 * MINUTE_MS,
        _ => 10 * MINUTE_MS,
    }
}

/// Landing MR back-off: 2^attempts × 30 s, capped at 30 min.
pub fn landing_cooldown_ms(attempts: u32) -> i64 {
    let factor = 1i64.checked_shl(attempts.min(30)).unwrap_or(i64::MAX);
    LANDING_MR_COOLDOWN_BASE_MS.saturating_mul(factor).min(LANDING_MR_COOLDOWN_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_table() {
        let t: Vec<i64> = (0..7).map(dispatch_cooldown_ms).collect();
        assert_eq!(t, vec![30_000, 30_000, 60_000, 120_000, 300_000, 600_000, 600_000]);
        let l: Vec<i64> = (1..7).map(landing_cooldown_ms).collect();
        assert_eq!(l, vec![60_000, 120_000, 240_000, 480_000, 960_000, 1_800_000]);
        assert_eq!(landing_cooldown_ms(99), LANDING_MR_COOLDOWN_MAX_MS);
    }

    /// The spec's numbers are the contract: rule tests use these constants
    /// symbolically, so only this pins their values (mutation testing found
    /// `5 * MINUTE_MS` → `5 + MINUTE_MS` surviving everywhere else).
    #[test]
    fn constants_match_the_spec() {
        let ms = [
            (HEARTBEAT_STALE_MS, 90_000),
            (STALE_IN_PROGRESS_TIMEOUT_MS, 300_000),
            (ORPHANED_SOURCE_TIMEOUT_MS, 300_000),
            (ABANDONED_MR_TIMEOUT_MS, 120_000),
            (STUCK_REVIEW_TIMEOUT_MS, 1_800_000),
            (ORPHANED_PR_REVIEW_TIMEOUT_MS, 1_800_000),
            (STALLED_AUTO_IDLE_MS, 9_000_000),
            (GUPP_WARN_MS, 900_000),
            (GUPP_ESCALATE_MS, 3_600_000),
            (GUPP_FORCE_STOP_MS, 7_200_000),
            (NUDGE_DEDUP_WINDOW_MS, 3_600_000),
            (AGENT_GC_RETENTION_MS, 86_400_000),
            (DISPATCH_RESET_IDLE_MS, 1_800_000),
            (BREAKER_WINDOW_MS, 1_800_000),
            (LANDING_MR_COOLDOWN_BASE_MS, 30_000),
            (LANDING_MR_COOLDOWN_MAX_MS, 1_800_000),
            (PR_POLL_INTERVAL_MS, 60_000),
            (DRAIN_TIMEOUT_MS, 420_000),
            (ACTIVE_STALLED_WINDOW_MS, 1_800_000),
        ];
        for (i, (got, want)) in ms.iter().enumerate() {
            assert_eq!(got, want, "constant #{i}");
        }
        assert_eq!((MAX_DISPATCH_ATTEMPTS, DEFAULT_MAX_DISPATCH_ATTEMPTS), (5, 5));
        assert_eq!((BREAKER_FAILURE_THRESHOLD, MAX_LANDING_MR_ATTEMPTS), (20, 5));
    }
}
