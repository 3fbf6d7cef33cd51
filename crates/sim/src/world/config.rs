//! What a scenario can set for one world: plain data, serialisable, with
//! ranges that are sampled per seed (swarm testing).

use gastown::model::AgentRole;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An inclusive range sampled once per seed.
pub type RangeF = (f64, f64);
pub type RangeMs = (u64, u64);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorldConfig {
    /// Simulated time during which work arrives (and faults may fire).
    pub duration_ms: u64,
    /// No fault fires at or after this (default: `duration_ms`). Work stops arriving here too.
    pub heal_at_ms: Option<u64>,
    /// After `max(duration, heal_at)`, the town must settle within this (liveness).
    pub converge_within_ms: u64,
    /// turmoil's step (virtual time per `Sim::step`). See ARCHITECTURE.md.
    pub step_ms: u64,
    pub town: TownSettings,
    pub workload: Workload,
    pub agents: AgentRanges,
    pub people: People,
    pub faults: FaultRanges,
    pub timeline: Vec<TimelineEntry>,
    pub expect: Expect,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            duration_ms: 2 * HOUR,
            heal_at_ms: None,
            converge_within_ms: 45 * MIN,
            step_ms: 100,
            town: TownSettings::default(),
            workload: Workload::default(),
            agents: AgentRanges::default(),
            people: People::default(),
            faults: FaultRanges::default(),
            timeline: Vec::new(),
            expect: Expect::default(),
        }
    }
}

pub(crate) const MIN: u64 = 60_000;
pub(crate) const HOUR: u64 = 3_600_000;

impl WorldConfig {
    /// A small world: one rig, a handful of issues and one convoy in 40
    /// simulated minutes, no faults. Runs in well under a second.
    pub fn smoke() -> Self {
        WorldConfig {
            duration_ms: 40 * MIN,
            converge_within_ms: 40 * MIN,
            workload: Workload {
                issues: 6,
                issues_per_hour: 12.0,
                convoys: vec![ConvoyPlan { tasks: 3, shape: ConvoyShape::Chain, ..ConvoyPlan::default() }],
                mayor_messages_per_hour: 2.0,
                ..Workload::default()
            },
            ..WorldConfig::default()
        }
    }

    pub fn heal_at(&self) -> u64 {
        self.heal_at_ms.unwrap_or(self.duration_ms).min(self.duration_ms)
    }

    /// The liveness deadline: everything must be settled by then.
    pub fn deadline(&self) -> u64 {
        self.duration_ms.max(self.heal_at()) + self.converge_within_ms
    }

    /// Check names and ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for k in self.faults.rates.keys() {
            if !super::FAULT_KINDS.iter().any(|f| f.name == *k) {
                let names: Vec<&str> = super::FAULT_KINDS.iter().map(|f| f.name).collect();
                return Err(format!("faults.rates: unknown fault kind {k:?}; known: {}", names.join(", ")));
            }
        }
        for t in &self.timeline {
            if !super::FAULT_KINDS.iter().any(|f| f.name == t.fault && f.timeline) {
                return Err(format!("timeline: {:?} cannot be scheduled", t.fault));
            }
        }
        if self.step_ms == 0 || self.step_ms > 1_000 {
            return Err("step_ms must lie in 1..=1000".into());
        }
        if self.town.rigs == 0 {
            return Err("town.rigs must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStrategy {
    Direct,
    Pr,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConvoyMergeMode {
    ReviewThenLand,
    ReviewAndMerge,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TownSettings {
    pub rigs: u32,
    pub merge_strategy: MergeStrategy,
    pub code_review: bool,
    /// `None`: the town default.
    pub auto_merge_delay_minutes: Option<u32>,
    pub convoy_merge_mode: ConvoyMergeMode,
    /// Review feedback and conflicts get fix-up beads automatically.
    pub auto_resolve: bool,
    /// Branch protection on the forge: a human approval is needed to merge.
    pub require_review: bool,
}

impl Default for TownSettings {
    fn default() -> Self {
        TownSettings {
            rigs: 1,
            merge_strategy: MergeStrategy::Pr,
            code_review: true,
            auto_merge_delay_minutes: Some(0),
            convoy_merge_mode: ConvoyMergeMode::ReviewThenLand,
            auto_resolve: true,
            require_review: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConvoyShape {
    #[default]
    Chain,
    Diamond,
    FanOut,
    Independent,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct ConvoyPlan {
    pub tasks: u32,
    pub shape: ConvoyShape,
    /// `None`: the town's mode.
    pub merge_mode: Option<ConvoyMergeMode>,
    /// Created staged and started this long after creation (`None`: started at once).
    pub start_after_ms: Option<u64>,
    /// When it arrives (`None`: a random time in the first half of the intake window).
    pub at_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Workload {
    /// Single issues slung, Poisson arrivals at `issues_per_hour` until the count or heal.
    pub issues: u32,
    pub issues_per_hour: f64,
    pub convoys: Vec<ConvoyPlan>,
    pub mayor_messages_per_hour: f64,
    pub reset_agent_per_hour: f64,
    pub close_bead_per_hour: f64,
    pub acknowledge_escalation_per_hour: f64,
    pub close_escalation_per_hour: f64,
    pub adopt_pr_per_hour: f64,
    /// A user deletes a live issue (picked at random; also one a polecat is working on).
    pub delete_bead_per_hour: f64,
    /// A user hands a worked issue to an idle polecat of its rig.
    pub reassign_bead_per_hour: f64,
    /// A user hooks an idle polecat to an open, unassigned issue of its rig (staged or held ones too).
    pub assign_bead_per_hour: f64,
    /// A triage agent resolves the oldest open triage request with one of its options.
    pub resolve_triage_per_hour: f64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            issues: 10,
            issues_per_hour: 10.0,
            convoys: Vec::new(),
            mayor_messages_per_hour: 0.0,
            reset_agent_per_hour: 0.0,
            close_bead_per_hour: 0.0,
            acknowledge_escalation_per_hour: 0.0,
            close_escalation_per_hour: 0.0,
            adopt_pr_per_hour: 0.0,
            delete_bead_per_hour: 0.0,
            reassign_bead_per_hour: 0.0,
            assign_bead_per_hour: 0.0,
            resolve_triage_per_hour: 0.0,
        }
    }
}

/// The scripted agents' behaviour, as ranges sampled per seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AgentRanges {
    pub work_ms: RangeMs,
    pub start_ms: RangeMs,
    pub forget_pr: RangeF,
    pub skip_done: RangeF,
    pub done_twice: RangeF,
    pub crash: RangeF,
    pub hang: RangeF,
    /// Per first turn: wedged before the first SDK event (see `ScriptConfig::p_silent_hang`).
    pub silent_hang: RangeF,
    /// Per hang of either kind: the stop's abort never answers (see `ScriptConfig::p_stop_hangs`).
    pub stop_hangs: RangeF,
    pub start_failure: RangeF,
    pub request_changes: RangeF,
    /// Where a role's sessions behave otherwise (`None` keeps the value above).
    pub roles: BTreeMap<AgentRole, RoleRanges>,
}

/// One role's departures from [`AgentRanges`], sampled per seed like them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RoleRanges {
    pub work_ms: Option<RangeMs>,
    pub start_ms: Option<RangeMs>,
    pub forget_pr: Option<RangeF>,
    pub skip_done: Option<RangeF>,
    pub done_twice: Option<RangeF>,
    pub crash: Option<RangeF>,
    pub hang: Option<RangeF>,
    pub start_failure: Option<RangeF>,
    pub request_changes: Option<RangeF>,
}

impl Default for AgentRanges {
    fn default() -> Self {
        AgentRanges {
            work_ms: (3 * MIN, 15 * MIN),
            start_ms: (100, 2_000),
            forget_pr: (0.0, 0.0),
            skip_done: (0.0, 0.0),
            done_twice: (0.0, 0.0),
            crash: (0.0, 0.0),
            hang: (0.0, 0.0),
            silent_hang: (0.0, 0.0),
            stop_hangs: (0.0, 0.0),
            start_failure: (0.0, 0.0),
            request_changes: (0.0, 0.0),
            roles: BTreeMap::new(),
        }
    }
}

/// CI and human reviewers on the forge.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct People {
    /// CI reports its check this long after a PR opens.
    pub ci_ms: RangeMs,
    /// Chance a CI run fails (the author's next push is modelled as a re-run that passes).
    pub ci_failure: RangeF,
    /// With `require_review`, a human approves this long after the PR opens.
    pub approve_ms: RangeMs,
    /// A blocking review thread is resolved by its author this long after it appears.
    pub resolve_thread_ms: RangeMs,
}

impl Default for People {
    fn default() -> Self {
        People {
            ci_ms: (30_000, 5 * MIN),
            ci_failure: (0.0, 0.0),
            approve_ms: (2 * MIN, 20 * MIN),
            resolve_thread_ms: (5 * MIN, 20 * MIN),
        }
    }
}

/// Fault rates per kind (see [`super::FAULT_KINDS`] for each kind's unit),
/// each a range sampled per seed; and the shapes of faults.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct FaultRanges {
    pub rates: BTreeMap<String, RangeF>,
    /// How long an evicted container stays down before its replacement boots.
    pub restart_delay_ms: RangeMs,
    /// How long a partition or hold lasts.
    pub partition_ms: RangeMs,
    /// Extra fixed one-way latency on every link, sampled per seed (0: turmoil's default).
    pub latency_ms: RangeMs,
}

impl Default for FaultRanges {
    fn default() -> Self {
        FaultRanges {
            rates: BTreeMap::new(),
            restart_delay_ms: (1_000, 60_000),
            partition_ms: (10_000, 3 * MIN),
            latency_ms: (0, 0),
        }
    }
}

impl FaultRanges {
    /// Convenience for tests and scenario builders.
    pub fn with(mut self, kind: &str, lo: f64, hi: f64) -> Self {
        self.rates.insert(kind.to_owned(), (lo, hi));
        self
    }
}

/// One scripted fault.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TimelineEntry {
    pub at_ms: u64,
    /// A fault kind name from [`super::FAULT_KINDS`] whose `timeline` flag is set.
    pub fault: String,
    /// The two hosts of a network fault (`town`, `container`, `forge`).
    #[serde(default)]
    pub between: Option<(String, String)>,
    /// How long it lasts (network faults, forge outages, restart delay of an eviction).
    #[serde(default)]
    pub for_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Expect {
    /// Empty: all. Otherwise only these invariants fail the seed (others are still traced).
    pub invariants: Vec<String>,
    pub liveness: bool,
    pub min_closed_fraction: f64,
    /// p99 of simulated event-to-applied latency must stay under this.
    pub max_event_latency_p99_ms: Option<u64>,
}

impl Default for Expect {
    fn default() -> Self {
        Expect { invariants: Vec::new(), liveness: true, min_closed_fraction: 0.0, max_event_latency_p99_ms: None }
    }
}
