//! The deterministic world: town, container and forge as turmoil hosts, a
//! workload client, scripted agents and people, a fault injector, oracles
//! after every tick, a trace with a rolling hash, and measurement.
//!
//! The entry point for scenario layers is [`run_seed`]: a plain-data
//! [`WorldConfig`] and a seed in, a [`SeedReport`] out.
//!
//! Modules: `config` (what a scenario sets), `seeds` (root seed → named
//! streams), `hosts` (the three turmoil hosts and the state that outlives a
//! restart), `workload` (arrivals and the user client), `people` (CI and
//! reviewers on the forge), `faults` (the plan and its injection),
//! `oracles` (invariants, liveness with diagnosis), `measure` (histograms),
//! `scratch` (where a seed's files live), `run` (the step loop).

mod config;
mod faults;
mod hosts;
pub(crate) mod measure;
mod oracles;
mod people;
mod run;
mod scratch;
mod seeds;
mod workload;

pub use config::{
    AgentRanges, ConvoyMergeMode, ConvoyPlan, ConvoyShape, Expect, FaultRanges, MergeStrategy, People, RangeF, RangeMs,
    RoleRanges, TimelineEntry, TownSettings, Workload, WorldConfig,
};
pub use measure::Percentiles;
pub use oracles::{INVARIANTS, LIVENESS};
pub use run::run_seed;
pub use scratch::SCRATCH_ENV;
pub use seeds::Seeds;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How often, and per what, a fault kind fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Poisson arrivals, per simulated hour.
    PerHour,
    /// A probability per opportunity (named in `about`).
    PerChance,
}

/// One fault kind: its name (the key in [`FaultRanges::rates`], in
/// `SeedReport::faults` and in timeline entries), its DESIGN.md §4 family,
/// its unit, whether a timeline may schedule it, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct FaultKind {
    pub name: &'static str,
    pub family: &'static str,
    pub unit: Unit,
    pub timeline: bool,
    pub about: &'static str,
}

const fn fk(name: &'static str, family: &'static str, unit: Unit, timeline: bool, about: &'static str) -> FaultKind {
    FaultKind { name, family, unit, timeline, about }
}

/// Every fault kind the world injects (DESIGN.md §4).
pub const FAULT_KINDS: &[FaultKind] = &[
    fk(
        "graceful_eviction",
        "container",
        Unit::PerHour,
        true,
        "SIGTERM: drain phases 1-3, then the process exits; a new instance boots after the restart delay",
    ),
    fk(
        "hard_eviction",
        "container",
        Unit::PerHour,
        true,
        "crash: memory and disk lost, registry as last synced; new instance after the restart delay",
    ),
    fk("eviction_during_start", "container", Unit::PerHour, true, "a hard eviction timed while an agent is starting"),
    fk(
        "eviction_during_drain",
        "container",
        Unit::PerChance,
        true,
        "per graceful eviction: the draining container is killed mid-drain",
    ),
    fk(
        "double_eviction",
        "container",
        Unit::PerChance,
        false,
        "per eviction: the replacement is hard-evicted again soon after it boots",
    ),
    fk(
        "wal_busy_snapshot",
        "wal",
        Unit::PerHour,
        true,
        "a reader pins one session database's WAL for 30-120 s, so snapshots taken meanwhile cannot checkpoint",
    ),
    fk(
        "wal_lost_at_crash",
        "wal",
        Unit::PerHour,
        true,
        "the container process crashes and restarts on the same disk, but the `-wal` files are gone",
    ),
    fk("snapshot_upload_lost", "wal", Unit::PerChance, false, "per snapshot upload: the town never receives it (503)"),
    fk(
        "snapshot_upload_reordered",
        "wal",
        Unit::PerChance,
        false,
        "per snapshot upload: held 2-20 s, so a later upload may land first",
    ),
    fk(
        "stale_snapshot",
        "wal",
        Unit::PerChance,
        false,
        "per hard eviction: a stored snapshot is replaced by an undecodable newer one before the replacement hydrates",
    ),
    fk("duplicate_tick", "ticks", Unit::PerChance, true, "per tick: the alarm fires again right after the tick"),
    fk(
        "overlapping_tick",
        "ticks",
        Unit::PerChance,
        true,
        "per tick: a second tick starts while this tick's effects are in flight",
    ),
    fk(
        "failed_tick",
        "ticks",
        Unit::PerChance,
        false,
        "per tick: the alarm handler fails with a storage error after the container status observation, before the \
         events drain; the alarm runs again 5 s later",
    ),
    fk(
        "duplicate_request",
        "ticks",
        Unit::PerChance,
        false,
        "per container-to-town POST (heartbeat, done, completed, registry): delivered twice",
    ),
    fk("forge_5xx", "forge", Unit::PerChance, false, "per forge API call: 502"),
    fk("forge_429", "forge", Unit::PerChance, false, "per forge API call: 429 rate limit"),
    fk("forge_invalid_json", "forge", Unit::PerChance, false, "per forge API GET: 200 with a body that is not JSON"),
    fk("forge_404", "forge", Unit::PerChance, false, "per PR status read: 404"),
    fk("forge_outage", "forge", Unit::PerHour, true, "every forge API call answers 503 for the outage's length"),
    fk(
        "mergeable_flap",
        "forge",
        Unit::PerHour,
        true,
        "an open PR answers mergeable_state unknown or dirty for 1-3 min",
    ),
    fk("checks_flap", "forge", Unit::PerHour, true, "an open PR's checks fail, then pass again 1-5 min later"),
    fk(
        "merge_method_405",
        "forge",
        Unit::PerChance,
        false,
        "per seed: the repository disallows squash merges (the merge falls back)",
    ),
    fk("external_merge", "forge", Unit::PerHour, true, "someone merges an open PR on the forge"),
    fk("external_close", "forge", Unit::PerHour, true, "someone closes an open PR on the forge"),
    fk(
        "merge_mid_feedback_read",
        "forge",
        Unit::PerChance,
        false,
        "per PR feedback read: someone merges the PR on the forge just as the read is answered (bug j's race)",
    ),
    fk(
        "blocking_review",
        "forge",
        Unit::PerChance,
        false,
        "per PR: a human leaves a blocking review thread (resolved later)",
    ),
    fk(
        "partition_town_container",
        "network",
        Unit::PerHour,
        true,
        "town and container cannot reach each other for the partition length",
    ),
    fk(
        "partition_town_forge",
        "network",
        Unit::PerHour,
        true,
        "town and forge cannot reach each other for the partition length",
    ),
    fk(
        "hold_town_container",
        "network",
        Unit::PerHour,
        true,
        "messages between town and container are held, then delivered at once",
    ),
    fk("partition", "network", Unit::PerHour, true, "timeline only: partition `between` two hosts `for` a while"),
    fk("hold", "network", Unit::PerHour, true, "timeline only: hold messages `between` two hosts `for` a while"),
    fk(
        "latency",
        "network",
        Unit::PerChance,
        false,
        "counted once when the seed's sampled link latency (`latency_ms`) is above zero",
    ),
];

/// "Sometimes" marks a run can reach besides the fault kinds: recovery
/// paths. Actions the reconciler emitted are also counted as `action.<kind>`.
pub const MARKS: &[(&str, &str)] = &[
    ("drain_completed", "a graceful drain ran to its end (phases 1-3)"),
    ("drain_froze_agents", "drain phase 3 froze agents still working after the wait"),
    ("boot_hydration", "a new container instance booted with a non-empty registry"),
    ("snapshot_skipped", "a snapshot was skipped because its WAL checkpoint could not complete"),
    ("snapshot_refused", "the town refused an upload older than the one it holds"),
    ("rule3_reset", "a live bead went back to open for re-dispatch (Rule 3 / A4-A5 / Rule 4 recovery)"),
    ("merge_fallback", "a merge was retried with another method after a 405"),
    ("feedback_bead", "PR feedback was detected (a feedback bead or its re-check)"),
    ("conflict_bead", "a merge conflict was detected (a conflict bead or escalation)"),
    ("landing_retry", "a convoy's landing MR was attempted more than once"),
    ("pr_merged_externally", "the town saw a PR merged outside it"),
    ("event_applied_late", "an event waited more than one tick before applying"),
];

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunOptions {
    /// Keep every trace record (determinism diffs, failing traces).
    pub keep_trace: bool,
    /// Stop stepping as soon as the first violation is seen.
    pub stop_at_first_failure: bool,
    /// Sample the bead-status series every this many simulated ms (0: every 5 min).
    pub series_every_ms: u64,
    /// The replay command to print with failures (`{seed}` is substituted).
    pub replay_hint: Option<String>,
}

/// One oracle failure.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    /// An invariant name from [`INVARIANTS`], or `liveness`, `min_closed_fraction`, `event_latency`.
    pub invariant: String,
    pub detail: String,
    pub sim_time_ms: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BeadCounts {
    /// Issue beads (workload issues and convoy tasks, also fix-up beads the town creates).
    pub created: u64,
    pub closed: u64,
    pub failed: u64,
}

/// Everything one seed produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedReport {
    pub seed: u64,
    pub passed: bool,
    pub failures: Vec<Failure>,
    /// Simulated ms the run covered.
    pub sim_ms: u64,
    pub wall_us: u64,
    /// Town ticks (alarm ticks plus injected duplicate/overlapping ones).
    pub ticks: u64,
    /// turmoil steps taken.
    pub steps: u64,
    /// Wall-clock cost of a tick's synchronous phases (begin + finish), µs.
    pub tick_wall_us: Percentiles,
    /// The raw histogram as (value µs, count) pairs, for exact merging.
    pub tick_wall_hist: Vec<(u64, u64)>,
    /// Simulated ms from an event's creation to its application in a tick.
    pub event_latency_ms: Percentiles,
    pub beads: BeadCounts,
    /// The most agents the town held at once (mayor, refineries and
    /// polecats; the size DESIGN.md §8's speed target is stated for),
    /// sampled with the bead series and at the end.
    #[serde(default)]
    pub agents: u64,
    pub faults: BTreeMap<String, u64>,
    pub marks: BTreeMap<String, u64>,
    pub trace_hash: String,
    /// Every record, when `keep_trace` was set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
    /// (sim ms, "type:status" → count) samples for charts.
    pub bead_series: Vec<(u64, BTreeMap<String, u64>)>,
    /// (sim ms, fault kind) in firing order, for a fault timeline chart.
    pub fault_events: Vec<(u64, String)>,
    /// What was still live at the end (the liveness diagnosis when it failed).
    pub stuck: Vec<String>,
    /// `gastown-sim world --seed S …`: one line that reruns this seed.
    pub replay: String,
}

impl SeedReport {
    /// How many times faster than real time the seed ran.
    pub fn speedup(&self) -> f64 {
        crate::report::real_time_factor(self.sim_ms as f64 / 1e3, self.wall_us as f64 / 1e6)
    }
}
