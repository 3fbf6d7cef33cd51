//! The defect catalogue: bugs upstream Gastown had and fixed (spec §10, §10.1),
//! and upstream defects we fixed ourselves (spec §10.2, DEVIATIONS.md), each
//! behind a switch that restores the old behaviour at exactly one place.
//!
//! The simulator's `defects` command switches one on at a time and runs the
//! scenario meant to catch it: a harness is worth the bugs it finds.
//!
//! Without the `defects` cargo feature [`on`] is the constant `false`, so the
//! compiler drops every old-behaviour branch: the default build contains none
//! of them. With the feature, one defect at a time is active for the whole
//! process (set before any simulation starts, never during one), so a run
//! stays deterministic.

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $source:literal; )*) => {
        /// One switchable historical defect.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Defect {
            $( $(#[$doc])* $variant, )*
        }

        impl Defect {
            /// Every defect, in catalogue order.
            pub const ALL: &'static [Defect] = &[$(Defect::$variant),*];

            /// The kebab-case name the CLI and reports use.
            pub const fn name(self) -> &'static str {
                match self { $( Defect::$variant => $name, )* }
            }

            /// Where the defect is described: a spec section, an upstream issue, a DEVIATIONS row.
            pub const fn source(self) -> &'static str {
                match self { $( Defect::$variant => $source, )* }
            }
        }
    };
}

catalogue! {
    /// A snapshot uploads the session database without checkpointing its WAL first.
    SnapshotWithoutCheckpoint => "snapshot-without-checkpoint", "§10 (a)";
    /// The re-escalation sweep also bumps closed and failed escalations.
    ReEscalateTerminal => "re-escalate-terminal", "§10 (b)";
    /// code_review=false fast-tracks URL-less MRs to polling too, where nothing ever polls them.
    FastTrackWithoutPrUrl => "fast-track-without-pr-url", "§10 (c)";
    /// Rule 5 pops MRs for the refinery whatever the rig's review setting.
    RefineryFilterIgnored => "refinery-filter-ignored", "§10 (d)";
    /// Rule 5's one-review-at-a-time check also counts PR MRs that are merely polled.
    SerialReviewCountsPrs => "serial-review-counts-prs", "§10 (d)";
    /// Rule 5 hands babysat PRs to the refinery.
    BabysatToRefinery => "babysat-to-refinery", "§10 (d)";
    /// code_review=false leaves MRs a polecat never opened a PR for open for good.
    NoOrphanMrCleanup => "no-orphan-mr-cleanup", "§10 (e)";
    /// An idle agent hooked to a live bead keeps its hook however old its heartbeat.
    IdleHookKeptOnLiveBead => "idle-hook-kept-on-live-bead", "§10 (f), #1574";
    /// The first fix for (f): an idle agent is unhooked from its live bead even while it heart-beats.
    IdleHookReleasedDespiteHeartbeat => "idle-hook-released-despite-heartbeat", "§10 (f), #2025";
    /// Review Rule 1 polls a PR on every tick.
    PollEveryTick => "poll-every-tick", "§10.1 #1632";
    /// Review Rule 1 merges a PR while fix-up work still blocks its MR.
    MergeIgnoresBlockers => "merge-ignores-blockers", "§10.2 #10";
    /// A refinery's URL-less `gt_done` merges its MR although the rework it just requested is open.
    DirectMergeDespiteRework => "direct-merge-despite-rework", "DEVIATIONS (rework, then gt_done)";
    /// Rule 2 dispatches held beads and members of staged convoys.
    Rule2IgnoresHeld => "rule2-ignores-held", "§10.2 #11";
    /// Rule 3 reopens a bead whose idle agent still heart-beats.
    LostAgentIgnoresHeartbeat => "lost-agent-ignores-heartbeat", "§10.1 #1358";
    /// Rule 5 pops an MR at the rig's dispatch cap again.
    Rule5IgnoresCap => "rule5-ignores-cap", "DEVIATIONS (Rule 5 cap)";
    /// Rule 6 re-dispatches a refinery to its MR past the rig's cap.
    RefineryRedispatchUncapped => "refinery-redispatch-uncapped", "§10.1 #1342";
    /// Rule 7 is missing: a refinery keeps working on an MR that already ended.
    RefineryLeftOnFinishedMr => "refinery-left-on-finished-mr", "§10.1 Rule 7";
    /// A3 is missing: an agent whose dispatch counter ran out never gets it back.
    NoCounterAutoReset => "no-counter-auto-reset", "§10.1 #1932";
    /// A convoy gets another landing MR while one is still live.
    LandingMrWhileOneIsLive => "landing-mr-while-one-is-live", "§10 (n), #2260";
    /// A convoy retries its landing without limit.
    LandingAttemptsUnbounded => "landing-attempts-unbounded", "§10 (n)";
    /// GUPP measures an agent's silence from its heartbeat when it has no SDK activity.
    GuppIgnoresDispatchTime => "gupp-ignores-dispatch-time", "DEVIATIONS (GUPP silence)";
    /// GUPP treats a missing activity time as the epoch.
    GuppNullActivity => "gupp-null-activity", "§10 (o)";
    /// GUPP nudges again without looking at the nudges already sent.
    NudgeDedupIgnored => "nudge-dedup-ignored", "§10.1 #1412";
    /// A dispatch keeps the previous session's SDK activity watermark.
    DispatchKeepsEventWatermark => "dispatch-keeps-event-watermark", "§10 (g)";
    /// Every call that asks for the active cadence sets the alarm to now + 5 s, later or not.
    AlarmPostponedByRpc => "alarm-postponed-by-rpc", "§10 (h)";
    /// `gt_done` on fix-up work (rework, feedback, conflicts) opens a review like an issue.
    FixBeadsReviewed => "fix-beads-reviewed", "§10 (i)";
    /// PR feedback is recorded without re-checking that the PR is still open.
    FeedbackWithoutRecheck => "feedback-without-recheck", "§10 (j)";
    /// Resetting an agent reopens its bead but leaves the bead's dispatch counters.
    ResetKeepsCounters => "reset-keeps-counters", "§10 (k)";
    /// Hooking a bead leaves any other agent hooked to it.
    HookNotExclusive => "hook-not-exclusive", "§10 (l)";
    /// A completed process exit closes the hooked issue, `gt_done` or not.
    ExitClosesBead => "exit-closes-bead", "§10 (m)";
    /// An eviction exit reopens the bead although the agent still heart-beats.
    EvictionResetDespiteHeartbeat => "eviction-reset-despite-heartbeat", "§10.1 #3538";
    /// `running` container statuses are recorded as events on every tick.
    RunningStatusRecorded => "running-status-recorded", "§10 (p)";
    /// A repeated container status queues another event instead of bumping the pending one.
    ContainerStatusNotUpserted => "container-status-not-upserted", "§10 (p)";
    /// A poll leaves the MR's `updated_at` alone, so Rule 4 fails actively polled PRs.
    PollKeepsUpdatedAt => "poll-keeps-updated-at", "§10 (q)";
    /// Events about deleted beads or agents are retried on every tick forever.
    InapplicableEventsRetried => "inapplicable-events-retried", "§10 (r), fix-1/fix-2";
    /// Deleting an agent reopens every live bead assigned to it, reviews and polled PRs too.
    DeleteAgentReopensReviews => "delete-agent-reopens-reviews", "§10.2 #4";
    /// The circuit breaker counts every recent dispatch, healthy ones too.
    BreakerCountsHealthyDispatches => "breaker-counts-healthy-dispatches", "§10.2 #6";
    /// A dispatch goes ahead for an agent an earlier action of the same pass unhooked.
    DispatchUnhookedAgent => "dispatch-unhooked-agent", "DEVIATIONS (dispatch of an unhooked agent)";
    /// A2 measures a stall from the heartbeat, which goes on after a GUPP stop.
    StalledTimeoutFromHeartbeat => "stalled-timeout-from-heartbeat", "§10.1 stalled_at";
    /// A merge leaves the other live MRs of the same source open.
    SiblingMrsStayOpen => "sibling-mrs-stay-open", "§10.1 sibling MRs";
    /// "Belongs to a review-and-merge convoy" never matches an MR.
    ConvoyPredicateByParent => "convoy-predicate-by-parent", "§10.2 #1";
    /// GC deletes an agent that never reported on the next tick.
    GcDeletesNeverActive => "gc-deletes-never-active", "§10.2 #4";
    /// GC deletes an agent that an earlier action of the same pass put to work.
    GcDeletesAgentPutToWork => "gc-deletes-agent-put-to-work", "DEVIATIONS (GC of an agent put to work)";
    /// A heartbeat revives an idle agent that has no hook.
    HeartbeatRevivesUnhooked => "heartbeat-revives-unhooked", "DEVIATIONS (heartbeat revival)";
}

impl Defect {
    /// Look a defect up by its [`name`](Defect::name).
    pub fn by_name(name: &str) -> Option<Defect> {
        Defect::ALL.iter().copied().find(|d| d.name() == name)
    }
}

#[cfg(feature = "defects")]
mod switch {
    use super::Defect;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// 0: none; otherwise the index in [`Defect::ALL`] plus one.
    static ACTIVE: AtomicUsize = AtomicUsize::new(0);

    fn index(d: Defect) -> usize {
        Defect::ALL.iter().position(|x| *x == d).map_or(0, |i| i + 1)
    }

    pub fn activate(d: Option<Defect>) {
        ACTIVE.store(d.map_or(0, index), Ordering::SeqCst);
    }

    pub fn active() -> Option<Defect> {
        ACTIVE.load(Ordering::Relaxed).checked_sub(1).and_then(|i| Defect::ALL.get(i).copied())
    }

    #[inline]
    pub fn on(d: Defect) -> bool {
        ACTIVE.load(Ordering::Relaxed) == index(d)
    }
}

/// Is `d` built in and switched on? Always `false` without the `defects` feature.
#[inline(always)]
pub fn on(d: Defect) -> bool {
    #[cfg(feature = "defects")]
    {
        switch::on(d)
    }
    #[cfg(not(feature = "defects"))]
    {
        let _ = d;
        false
    }
}

/// Were the defect switches compiled in?
pub const BUILT_IN: bool = cfg!(feature = "defects");

/// Switch one defect on (or none) for the whole process. Without the
/// `defects` feature there is nothing to switch: check [`BUILT_IN`].
pub fn activate(d: Option<Defect>) {
    #[cfg(feature = "defects")]
    switch::activate(d);
    #[cfg(not(feature = "defects"))]
    let _ = d;
}

/// The defect switched on, if any.
pub fn active() -> Option<Defect> {
    #[cfg(feature = "defects")]
    {
        switch::active()
    }
    #[cfg(not(feature = "defects"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Defect::ALL.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Defect::ALL.len());
        for d in Defect::ALL {
            assert_eq!(Defect::by_name(d.name()), Some(*d));
        }
        assert_eq!(Defect::by_name("no-such-defect"), None);
    }

    #[cfg(not(feature = "defects"))]
    #[test]
    fn the_default_build_switches_nothing_on() {
        assert!(Defect::ALL.iter().all(|d| !on(*d)));
    }
}
