//! Harness power: which scenario hunts each defect of the catalogue
//! (`gastown::defects`), and the hunt itself: run the scenario's seeds in
//! order with the defect switched on until one fails.
//!
//! The switch is process-wide, so a hunt owns the process while it runs: the
//! `defects` command hunts one defect after another, never two at once.

use crate::report::{SeedFailure, SeedOutcome};
use gastown::defects::Defect;
use serde::Serialize;

/// The scenario (a file under `scenarios/`) that hunts each defect: the bug's
/// regression scenario where it has one, else the scenario whose workload
/// and faults reach the code the defect lives in.
pub const HUNTS: &[(Defect, &str)] = &[
    (Defect::SnapshotWithoutCheckpoint, "bug-a-wal-checkpoint-before-snapshot.toml"),
    (Defect::ReEscalateTerminal, "bug-b-re-escalation-skips-closed.toml"),
    (Defect::FastTrackWithoutPrUrl, "bug-c-fast-track-needs-pr-url.toml"),
    (Defect::RefineryFilterIgnored, "bug-c-fast-track-needs-pr-url.toml"),
    (Defect::SerialReviewCountsPrs, "flaky-prs.toml"),
    (Defect::BabysatToRefinery, "bug-d-refinery-gating.toml"),
    (Defect::NoOrphanMrCleanup, "bug-c-fast-track-needs-pr-url.toml"),
    (Defect::IdleHookKeptOnLiveBead, "bug-f-idle-agent-hooked-to-live-bead.toml"),
    (Defect::IdleHookReleasedDespiteHeartbeat, "agent-misbehaviour.toml"),
    (Defect::PollEveryTick, "flaky-prs.toml"),
    (Defect::MergeIgnoresBlockers, "rework-race.toml"),
    (Defect::DirectMergeDespiteRework, "rework-requests.toml"),
    (Defect::Rule2IgnoresHeld, "bug-l-hook-mutual-exclusion.toml"),
    (Defect::LostAgentIgnoresHeartbeat, "agent-misbehaviour.toml"),
    (Defect::Rule5IgnoresCap, "refinery-outage.toml"),
    (Defect::RefineryRedispatchUncapped, "refinery-outage.toml"),
    (Defect::RefineryLeftOnFinishedMr, "flaky-prs.toml"),
    (Defect::NoCounterAutoReset, "bug-k-reset-zeroes-counters.toml"),
    (Defect::LandingMrWhileOneIsLive, "bug-n-landing-mr-cycling.toml"),
    (Defect::LandingAttemptsUnbounded, "refinery-outage.toml"),
    (Defect::GuppIgnoresDispatchTime, "wedged-sessions.toml"),
    (Defect::GuppNullActivity, "bug-o-gupp-null-activity.toml"),
    (Defect::NudgeDedupIgnored, "bug-g-gupp-stale-watermark.toml"),
    (Defect::DispatchKeepsEventWatermark, "bug-g-gupp-stale-watermark.toml"),
    (Defect::AlarmPostponedByRpc, "bug-h-alarm-only-shortens.toml"),
    (Defect::FixBeadsReviewed, "bug-i-feedback-beads-skip-review.toml"),
    (Defect::FeedbackWithoutRecheck, "bug-j-feedback-after-merge.toml"),
    (Defect::ResetKeepsCounters, "bug-k-reset-zeroes-counters.toml"),
    (Defect::HookNotExclusive, "bug-l-hook-mutual-exclusion.toml"),
    (Defect::ExitClosesBead, "bug-m-no-close-on-exit.toml"),
    (Defect::EvictionResetDespiteHeartbeat, "drain-under-hold.toml"),
    (Defect::RunningStatusRecorded, "bug-p-container-status-flood.toml"),
    (Defect::ContainerStatusNotUpserted, "bug-p-container-status-flood.toml"),
    (Defect::PollKeepsUpdatedAt, "bug-q-poll-refreshes-updated-at.toml"),
    (Defect::InapplicableEventsRetried, "bug-r-failed-events-retried.toml"),
    (Defect::DeleteAgentReopensReviews, "gc-during-long-review.toml"),
    (Defect::BreakerCountsHealthyDispatches, "steady-state.toml"),
    (Defect::DispatchUnhookedAgent, "bug-f-idle-agent-hooked-to-live-bead.toml"),
    (Defect::HeartbeatRevivesUnhooked, "bug-f-idle-agent-hooked-to-live-bead.toml"),
    (Defect::StalledTimeoutFromHeartbeat, "wedged-sessions.toml"),
    (Defect::SiblingMrsStayOpen, "flaky-prs.toml"),
    (Defect::ConvoyPredicateByParent, "bug-c-fast-track-needs-pr-url.toml"),
    (Defect::GcDeletesNeverActive, "triage-desk.toml"),
    (Defect::GcDeletesAgentPutToWork, "gc-after-a-quiet-day.toml"),
];

/// The scenario file that hunts `d`, relative to the scenarios directory.
pub fn scenario_for(d: Defect) -> Option<&'static str> {
    HUNTS.iter().find(|(x, _)| *x == d).map(|(_, s)| *s)
}

/// One defect's hunt, as `gastown-sim defects --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct HuntResult {
    pub name: &'static str,
    pub source: &'static str,
    pub scenario: String,
    pub detected: bool,
    /// Seeds run up to and including the first failing one; all seeds run when undetected.
    pub seeds_to_detect: u64,
    /// The earliest failure of the first failing seed.
    pub invariant: Option<String>,
    pub detail: Option<String>,
    /// Seeds that failed with the defect on but failed again with it off: the
    /// failure is not the defect's, so the hunt went on. Each is a finding.
    pub fails_without_defect: Vec<u64>,
    pub wall_seconds: f64,
}

/// Every failing seed, lowest first, with its earliest failure (in simulated time).
pub fn failing_seeds(outcomes: &[SeedOutcome]) -> Vec<(u64, &SeedFailure)> {
    let mut out: Vec<_> =
        outcomes.iter().filter_map(|o| o.failures.iter().min_by_key(|f| f.sim_time_ms).map(|f| (o.seed, f))).collect();
    out.sort_by_key(|(seed, _)| *seed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_defect_is_hunted_once_by_a_scenario_that_exists() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
        for d in Defect::ALL {
            let n = HUNTS.iter().filter(|(x, _)| x == d).count();
            assert_eq!(n, 1, "{} is hunted {n} times", d.name());
            let file = dir.join(scenario_for(*d).unwrap_or_default());
            assert!(file.is_file(), "{}: no scenario {}", d.name(), file.display());
        }
        assert_eq!(HUNTS.len(), Defect::ALL.len());
    }

    fn outcome(seed: u64, failures: &[(&str, i64)]) -> SeedOutcome {
        SeedOutcome {
            seed,
            failures: failures
                .iter()
                .map(|(i, t)| SeedFailure { invariant: (*i).into(), detail: String::new(), sim_time_ms: *t })
                .collect(),
            ..SeedOutcome::default()
        }
    }

    #[test]
    fn failing_seeds_come_lowest_first_with_their_earliest_failure() {
        let runs = [outcome(3, &[("b", 50), ("a", 10)]), outcome(1, &[]), outcome(2, &[("c", 99)])];
        let found: Vec<_> = failing_seeds(&runs).into_iter().map(|(s, f)| (s, f.invariant.as_str())).collect();
        assert_eq!(found, [(2, "c"), (3, "a")]);
        assert!(failing_seeds(&[outcome(1, &[])]).is_empty());
    }
}
