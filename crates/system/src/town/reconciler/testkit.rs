//! A tiny in-memory snapshot builder for rule unit tests.

use crate::model::{
    AgentRole, AgentStatus, BeadStatus, BeadType, Label, LabelSet, MergeMode, RigOverrides, RigSettings, TownConfig,
};
use crate::time::Timestamp;
use crate::town::actions::Action;
use crate::town::snapshot::{SnapAgent, SnapBead, SnapConvoy, SnapReview, SnapRig, TownSnapshot};
use std::collections::BTreeMap;

pub const NOW: Timestamp = Timestamp(1_780_000_000_000);
pub const RIG: &str = "rig-1";

pub struct Kit {
    pub s: TownSnapshot,
    pub draining: bool,
    seq: i64,
}

impl Kit {
    pub fn new() -> Self {
        let config = TownConfig::new_town_defaults();
        let mut rigs = BTreeMap::new();
        rigs.insert(
            RIG.to_owned(),
            SnapRig {
                default_branch: "main".into(),
                git_url: "https://github.com/acme/app.git".into(),
                settings: RigSettings::resolve(&config, &RigOverrides::default(), 5),
            },
        );
        let mut s = TownSnapshot::empty(NOW, false, &config);
        s.rigs = rigs;
        Kit { s, draining: false, seq: 0 }
    }

    pub fn ago(&self, ms: i64) -> Timestamp {
        NOW.minus_ms(ms)
    }

    pub fn rig_overrides(&mut self, o: RigOverrides) {
        let cfg = self.s.config.clone();
        self.s.rigs.get_mut(RIG).unwrap().settings = RigSettings::resolve(&cfg, &o, 5);
    }

    pub fn bead(&mut self, id: &str, ty: BeadType, status: BeadStatus) -> &mut SnapBead {
        self.seq += 1;
        let b = SnapBead {
            id: id.to_owned(),
            bead_type: ty,
            status,
            rig_id: Some(RIG.to_owned()),
            assignee: None,
            labels: LabelSet::default(),
            dispatch_attempts: 0,
            last_dispatch_attempt_at: None,
            created_by: Some("user".into()),
            created_at: NOW.minus_ms(3_600_000 - self.seq),
            updated_at: NOW,
            blocked: false,
            in_staged_convoy: false,
        };
        self.s.push_bead(b);
        self.s.bead_mut(id).unwrap()
    }

    pub fn issue(&mut self, id: &str, status: BeadStatus) -> String {
        self.bead(id, BeadType::Issue, status);
        id.to_owned()
    }

    pub fn label(&mut self, id: &str, labels: &[Label]) {
        let names: Vec<&str> = labels
            .iter()
            .map(|l| match l {
                Label::Rework => "gt:rework",
                Label::PrFeedback => "gt:pr-feedback",
                Label::PrConflict => "gt:pr-conflict",
                Label::PrFixup => "gt:pr-fixup",
                Label::TriageRequest => "gt:triage-request",
                Label::Triage => "gt:triage",
                Label::Held => "gt:held",
                Label::Babysit => "gt:babysit",
            })
            .collect();
        self.s.bead_mut(id).unwrap().labels = LabelSet::from_labels(names);
    }

    /// An MR tracking `source`, with an optional PR.
    pub fn mr(&mut self, id: &str, status: BeadStatus, source: Option<&str>, pr_url: Option<&str>) -> String {
        self.bead(id, BeadType::MergeRequest, status);
        self.s.reviews.insert(id.to_owned(), SnapReview { pr_url: pr_url.map(str::to_owned), ..Default::default() });
        if let Some(src) = source {
            self.track(id, src);
        }
        id.to_owned()
    }

    pub fn review(&mut self, id: &str) -> &mut SnapReview {
        self.s.reviews.get_mut(id).unwrap()
    }

    pub fn track(&mut self, from: &str, to: &str) {
        self.s.tracks.entry(from.to_owned()).or_default().push(to.to_owned());
        self.s.tracked_by.entry(to.to_owned()).or_default().push(from.to_owned());
    }

    pub fn block(&mut self, bead: &str, blocker: &str) {
        self.s.unresolved_blockers.entry(bead.to_owned()).or_default().push(blocker.to_owned());
    }

    pub fn convoy(&mut self, id: &str, mode: MergeMode, feature_branch: Option<&str>) -> &mut SnapConvoy {
        self.bead(id, BeadType::Convoy, BeadStatus::Open).rig_id = None;
        self.s.convoys.insert(
            id.to_owned(),
            SnapConvoy {
                id: id.to_owned(),
                merge_mode: mode,
                feature_branch: feature_branch.map(str::to_owned),
                staged: false,
                ready_to_land: false,
                landing_mr_attempts: 0,
                last_landing_mr_attempt_at: None,
                closed_beads: 0,
                created_at: NOW,
            },
        );
        self.s.convoys.get_mut(id).unwrap()
    }

    pub fn agent_mut(
        &self,
        id: &str,
        status: AgentStatus,
        hook: Option<&str>,
        activity: Option<Timestamp>,
    ) -> SnapAgent {
        SnapAgent {
            id: id.to_owned(),
            role: AgentRole::Polecat,
            rig_id: Some(RIG.to_owned()),
            status,
            hook: hook.map(str::to_owned),
            dispatch_attempts: 0,
            last_activity_at: activity,
            last_dispatched_at: activity,
            last_event_at: None,
            active_tools_empty: true,
            stalled_at: None,
            created_at: NOW.minus_ms(10 * 3_600_000),
        }
    }

    pub fn push_agent(&mut self, a: SnapAgent) {
        self.s.agents.push(a);
    }

    pub fn agent(&mut self, id: &str, status: AgentStatus, hook: Option<&str>, activity: Option<Timestamp>) -> String {
        let a = self.agent_mut(id, status, hook, activity);
        self.push_agent(a);
        id.to_owned()
    }

    pub fn refinery(
        &mut self,
        id: &str,
        status: AgentStatus,
        hook: Option<&str>,
        activity: Option<Timestamp>,
    ) -> String {
        let mut a = self.agent_mut(id, status, hook, activity);
        a.role = AgentRole::Refinery;
        self.push_agent(a);
        id.to_owned()
    }

    pub fn mayor(&mut self, status: AgentStatus, activity: Option<Timestamp>) -> String {
        let mut a = self.agent_mut("mayor", status, None, activity);
        a.role = AgentRole::Mayor;
        a.rig_id = None;
        self.push_agent(a);
        "mayor".into()
    }

    pub fn run(&mut self, f: fn(&TownSnapshot, &mut Vec<Action>)) -> Vec<Action> {
        self.s.draining = self.draining;
        self.s.derive_flags();
        let mut out = Vec::new();
        f(&self.s, &mut out);
        out
    }
}

pub fn idled(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::TransitionAgent { agent_id, to: AgentStatus::Idle, .. } => Some(agent_id.clone()),
            _ => None,
        })
        .collect()
}

pub fn unhooked(out: &[Action]) -> Vec<&str> {
    out.iter()
        .filter_map(|a| match a {
            Action::UnhookAgent { agent_id, .. } => Some(agent_id.as_str()),
            _ => None,
        })
        .collect()
}

pub fn dispatched(out: &[Action]) -> Vec<(Option<&str>, &str)> {
    out.iter()
        .filter_map(|a| match a {
            Action::DispatchAgent { agent_id, bead_id, .. } => Some((agent_id.as_deref(), bead_id.as_str())),
            _ => None,
        })
        .collect()
}

/// (bead, target status) of every bead transition.
pub fn transitions(out: &[Action]) -> Vec<(&str, BeadStatus)> {
    out.iter()
        .filter_map(|a| match a {
            Action::TransitionBead { bead_id, to, .. } => Some((bead_id.as_str(), *to)),
            _ => None,
        })
        .collect()
}
