//! Scenario files: TOML describing a run (seeds, duration, heal time), the
//! town, the workload, agent behaviour ranges, fault ranges, a scripted
//! timeline, and what to expect. Ranges are sampled per seed (swarm
//! testing). Every mistake is reported with file:line:column, the key and,
//! for unknown keys, the valid choices; nothing panics.

mod values;

pub use values::{Dur, Prob, Range, Rate};

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub run: RunSection,
    #[serde(default)]
    pub town: TownSection,
    #[serde(default)]
    pub workload: WorkloadSection,
    #[serde(default)]
    pub agents: AgentsSection,
    #[serde(default)]
    pub people: PeopleSection,
    #[serde(default)]
    pub faults: FaultsSection,
    #[serde(default)]
    pub timeline: Vec<TimelineEntry>,
    #[serde(default)]
    pub expect: ExpectSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// How many seeds CI runs.
    pub seeds: u32,
    /// Simulated time the workload and faults run for.
    pub duration: Dur,
    /// No fault fires after this (default: `duration`).
    #[serde(default)]
    pub heal_at: Option<Dur>,
    /// After healing, everything must have settled within this.
    pub converge_within: Dur,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStrategy {
    Direct,
    Pr,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConvoyMergeMode {
    ReviewThenLand,
    ReviewAndMerge,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TownSection {
    pub rigs: u32,
    pub merge_strategy: MergeStrategy,
    pub code_review: bool,
    pub auto_merge_delay_minutes: u32,
    /// PRs need an approving review before they merge.
    pub require_review: bool,
    pub convoy_merge_mode: ConvoyMergeMode,
    /// Review feedback and conflicts get fix-up beads automatically.
    pub auto_resolve: bool,
}

impl Default for TownSection {
    fn default() -> Self {
        TownSection {
            rigs: 1,
            merge_strategy: MergeStrategy::Pr,
            code_review: true,
            auto_merge_delay_minutes: 0,
            require_review: false,
            convoy_merge_mode: ConvoyMergeMode::ReviewThenLand,
            auto_resolve: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    #[serde(default)]
    pub issues: Option<Arrivals>,
    #[serde(default)]
    pub convoys: Vec<ConvoySpec>,
    #[serde(default)]
    pub mayor_messages: Option<PerHour>,
    #[serde(default)]
    pub user_actions: Option<UserActions>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub count: u32,
    pub per_hour: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PerHour {
    pub per_hour: f64,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConvoyShape {
    Chain,
    Diamond,
    FanOut,
    Independent,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConvoySpec {
    pub tasks: u32,
    pub shape: ConvoyShape,
    #[serde(default)]
    pub merge_mode: Option<ConvoyMergeMode>,
    /// Created staged, started this long after creation.
    #[serde(default)]
    pub start_after: Option<Dur>,
    /// When in the run the convoy arrives (default: a random time in the first half before the heal).
    #[serde(default)]
    pub at: Option<Dur>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserActions {
    #[serde(default)]
    pub reset_agent_per_hour: f64,
    #[serde(default)]
    pub close_bead_per_hour: f64,
    #[serde(default)]
    pub acknowledge_escalation_per_hour: f64,
    /// A user closes an open escalation without acknowledging it (as triage does).
    #[serde(default)]
    pub close_escalation_per_hour: f64,
    /// An outside contributor opens a PR and a user hands it to the town to babysit.
    #[serde(default)]
    pub adopt_pr_per_hour: f64,
    /// A user deletes a live issue, picked at random: an open one, one a
    /// polecat is working on (its session's later reports name a bead that is
    /// gone), or one in review (its live reviews fail).
    #[serde(default)]
    pub delete_bead_per_hour: f64,
    /// A user hands an issue a polecat is working on to an idle polecat of
    /// the same rig (`POST …/agents/{agent}/hook`): the first one lets go.
    #[serde(default)]
    pub reassign_bead_per_hour: f64,
    /// A user hooks an idle polecat to the oldest open, unassigned issue of
    /// its rig, a held one or a staged convoy's member too: the work is
    /// planned, and starts when the reconciler lets it.
    #[serde(default)]
    pub assign_bead_per_hour: f64,
    /// A triage agent (or a human) resolves the oldest open triage request
    /// with one of the options it offers (`POST …/triage/resolve`).
    #[serde(default)]
    pub resolve_triage_per_hour: f64,
}

impl UserActions {
    /// Each rate by its key, for validation.
    fn rates(&self) -> [(&'static str, f64); 9] {
        [
            ("reset_agent_per_hour", self.reset_agent_per_hour),
            ("close_bead_per_hour", self.close_bead_per_hour),
            ("acknowledge_escalation_per_hour", self.acknowledge_escalation_per_hour),
            ("close_escalation_per_hour", self.close_escalation_per_hour),
            ("delete_bead_per_hour", self.delete_bead_per_hour),
            ("adopt_pr_per_hour", self.adopt_pr_per_hour),
            ("reassign_bead_per_hour", self.reassign_bead_per_hour),
            ("assign_bead_per_hour", self.assign_bead_per_hour),
            ("resolve_triage_per_hour", self.resolve_triage_per_hour),
        ]
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    pub work_time: Range<Dur>,
    pub start_time: Range<Dur>,
    pub forget_pr: Prob,
    pub skip_done: Prob,
    pub done_twice: Prob,
    pub crash: Prob,
    pub hang: Prob,
    /// A session wedged before its first SDK event (first turns only).
    pub silent_hang: Prob,
    /// Per hang of either kind: a stop cannot end the wedged session.
    pub stop_hangs: Prob,
    pub start_failure: Prob,
    pub request_changes: Prob,
    /// `[agents.polecat]`, `[agents.refinery]`, `[agents.mayor]`: that
    /// role's own values, in place of the ones above.
    pub polecat: Option<RoleAgents>,
    pub refinery: Option<RoleAgents>,
    pub mayor: Option<RoleAgents>,
}

/// One role's departures from `[agents]`: the same keys, each optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleAgents {
    pub work_time: Option<Range<Dur>>,
    pub start_time: Option<Range<Dur>>,
    pub forget_pr: Option<Prob>,
    pub skip_done: Option<Prob>,
    pub done_twice: Option<Prob>,
    pub crash: Option<Prob>,
    pub hang: Option<Prob>,
    pub start_failure: Option<Prob>,
    pub request_changes: Option<Prob>,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            work_time: Range { lo: Dur(3 * 60_000), hi: Dur(20 * 60_000) },
            start_time: Range { lo: Dur(100), hi: Dur(2_000) },
            forget_pr: Prob::default(),
            skip_done: Prob::default(),
            done_twice: Prob::default(),
            crash: Prob::default(),
            hang: Prob::default(),
            silent_hang: Prob::default(),
            stop_hangs: Prob::default(),
            start_failure: Prob::default(),
            request_changes: Prob::default(),
            polecat: None,
            refinery: None,
            mayor: None,
        }
    }
}

/// Fault rates: each key is a fault kind of `world::FAULT_KINDS` (per
/// simulated hour or per opportunity, as the kind says), its value a range
/// sampled per seed; plus the lengths the kinds use.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct FaultsSection {
    /// How long an evicted container stays down before the new one boots.
    pub restart_delay: Option<Range<Dur>>,
    pub partition_length: Option<Range<Dur>>,
    /// Extra one-way message latency, milliseconds.
    pub latency_ms: Option<Range<u64>>,
    #[serde(flatten)]
    pub rates: std::collections::BTreeMap<String, Rate>,
}

/// The people around the town: CI on the forge and human reviewers.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleSection {
    pub ci_time: Option<Range<Dur>>,
    pub ci_failure: Option<Prob>,
    pub approve_time: Option<Range<Dur>>,
    pub resolve_thread_time: Option<Range<Dur>>,
}

pub const HOSTS: [&str; 3] = ["town", "container", "forge"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineEntry {
    pub at: Dur,
    /// A fault kind that a timeline may schedule (see `world::FAULT_KINDS`).
    pub fault: String,
    /// The two hosts a network fault cuts (`town`, `container`, `forge`).
    #[serde(default)]
    pub between: Option<[String; 2]>,
    /// How long the fault lasts (network faults, outages, restart delay).
    #[serde(default, rename = "for")]
    pub lasts: Option<Dur>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum InvariantSet {
    /// `"all"`.
    Keyword(String),
    List(Vec<String>),
}

impl Default for InvariantSet {
    fn default() -> Self {
        InvariantSet::Keyword("all".into())
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectSection {
    pub invariants: InvariantSet,
    pub liveness: bool,
    pub min_closed_fraction: f64,
    /// p99 of simulated event-to-applied latency must stay under this.
    pub max_event_latency_p99: Option<Dur>,
}

impl Default for ExpectSection {
    fn default() -> Self {
        ExpectSection {
            invariants: InvariantSet::default(),
            liveness: true,
            min_closed_fraction: 0.0,
            max_event_latency_p99: None,
        }
    }
}

/// A scenario file that could not be used: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Read and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Scenario::parse(&file, &text)
    }

    /// Parse and validate scenario text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|sp| line_col(text, sp.start)).unwrap_or((0, 0));
            ScenarioError { file: file.to_owned(), line, column, message: e.message().trim().to_owned() }
        })?;
        s.validate().map_err(|(key, message)| {
            let (line, column) = find_key(text, key);
            ScenarioError { file: file.to_owned(), line, column, message: format!("{key}: {message}") }
        })?;
        Ok(s)
    }

    pub fn heal_at(&self) -> Dur {
        self.run.heal_at.unwrap_or(self.run.duration)
    }

    /// Checks serde cannot express: (key, message).
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        if self.run.seeds == 0 {
            return Err(("seeds", "must be at least 1".into()));
        }
        if self.run.duration.ms() == 0 {
            return Err(("duration", "must be longer than 0s".into()));
        }
        if self.heal_at() > self.run.duration {
            return Err(("heal_at", format!("{} is after the end of the run ({})", self.heal_at(), self.run.duration)));
        }
        if self.town.rigs == 0 || self.town.rigs > 16 {
            return Err(("rigs", format!("must be between 1 and 16, got {}", self.town.rigs)));
        }
        if let Some(a) = &self.workload.issues {
            if a.count > 0 && !(a.per_hour > 0.0 && a.per_hour.is_finite()) {
                return Err(("per_hour", format!("issue arrivals need a positive rate, got {}", a.per_hour)));
            }
        }
        for (key, rate) in self.workload.user_actions.iter().flat_map(UserActions::rates) {
            if !(rate >= 0.0 && rate.is_finite()) {
                return Err(("user_actions", format!("{key} must be a rate per hour of 0 or more, got {rate}")));
            }
        }
        for c in &self.workload.convoys {
            if !(1..=50).contains(&c.tasks) {
                return Err(("tasks", format!("a convoy has 1 to 50 tasks, got {}", c.tasks)));
            }
            if c.at.is_some_and(|at| at > self.run.duration) {
                return Err(("at", "a convoy arrives after the end of the run".into()));
            }
        }
        let e = &self.expect;
        if !(0.0..=1.0).contains(&e.min_closed_fraction) {
            return Err(("min_closed_fraction", format!("must lie within [0, 1], got {}", e.min_closed_fraction)));
        }
        if let InvariantSet::Keyword(k) = &e.invariants {
            if k != "all" {
                return Err(("invariants", format!("expected \"all\" or a list of invariant names, got {k:?}")));
            }
        }
        use crate::world::FAULT_KINDS;
        for kind in self.faults.rates.keys() {
            if !FAULT_KINDS.iter().any(|f| f.name == kind) {
                let names: Vec<&str> = FAULT_KINDS.iter().map(|f| f.name).collect();
                return Err(("faults", format!("unknown fault kind `{kind}`, expected one of {}", names.join(", "))));
            }
        }
        for t in &self.timeline {
            if t.at > self.heal_at() {
                return Err(("at", format!("timeline fault at {} fires after heal_at ({})", t.at, self.heal_at())));
            }
            if !FAULT_KINDS.iter().any(|f| f.name == t.fault && f.timeline) {
                let names: Vec<&str> = FAULT_KINDS.iter().filter(|f| f.timeline).map(|f| f.name).collect();
                return Err((
                    "fault",
                    format!("`{}` cannot be scheduled; timeline faults: {}", t.fault, names.join(", ")),
                ));
            }
            let network = matches!(t.fault.as_str(), "partition" | "hold");
            match (&t.between, network) {
                (None, true) => return Err(("between", format!("{} needs `between = [host, host]`", t.fault))),
                (Some(_), false) => return Err(("between", format!("{} does not take `between`", t.fault))),
                (Some([a, b]), true) => {
                    for h in [a, b] {
                        if !HOSTS.contains(&h.as_str()) {
                            return Err(("between", format!("unknown host {h:?}; hosts are town, container, forge")));
                        }
                    }
                    if a == b {
                        return Err(("between", "a fault between a host and itself".into()));
                    }
                }
                (None, false) => {}
            }
            if network && t.lasts.is_none() {
                return Err(("for", format!("{} needs `for = \"<duration>\"`", t.fault)));
            }
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, column)
}

/// Where `key = ` first appears (for semantic errors serde could not place).
fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return (i + 1, line.len() - t.len() + 1);
            }
        }
    }
    (0, 0)
}

#[cfg(test)]
mod tests;
