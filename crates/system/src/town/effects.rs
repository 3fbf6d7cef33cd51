//! Deferred side effects. Applying an action changes state synchronously and
//! may return an [`Effect`]; effects run after the tick's transaction commits,
//! through an [`EffectRunner`] (HTTP in production and the simulator, a
//! recording runner in tests), and their [`Outcome`]s come back to the town.

use crate::model::{AgentRole, NudgeTier};
use crate::scm::{MergeReport, PollReport, PollWants};
use serde::Serialize;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Start (or restart) an agent's session in the container.
    StartAgent(StartAgent),
    /// Best-effort stop of an agent's process.
    StopAgent { agent_id: String, reason: String },
    /// Check a PR's status and (as `wants` says, from the rig's settings) its feedback.
    PollPr { mr_bead_id: String, pr_url: String, wants: PollWants },
    /// Merge a PR (after a fresh feedback re-check).
    MergePr { mr_bead_id: String, pr_url: String },
    /// Deliver a stored nudge to a running agent now.
    DeliverNudge { nudge_id: String, agent_id: String, message: String, tier: Option<NudgeTier> },
    /// Send the mayor a message (escalation notices, user chat).
    MessageMayor { mayor_id: Option<String>, about_bead: Option<String>, text: String },
    /// An analytics / observability record. Needs no answer.
    Analytics { name: String, data: Value },
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct StartAgent {
    pub agent_id: String,
    pub bead_id: String,
    pub rig_id: String,
    pub role: AgentRole,
    pub name: String,
    pub identity: String,
    pub prompt: String,
    pub branch: Option<String>,
    pub target_branch: Option<String>,
    pub start_point: Option<String>,
    pub pr_url: Option<String>,
}

/// What running an effect produced. The town applies these after the effects
/// of a tick have settled (they may find state changed in between).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    AgentStart {
        agent_id: String,
        bead_id: String,
        started: bool,
        error: Option<String>,
    },
    NudgeDelivery {
        nudge_id: String,
        delivered: bool,
    },
    MayorMessage {
        about_bead: Option<String>,
        delivered: bool,
    },
    /// What a `PollPr` found (run by `crate::scm::run_poll`).
    PrPolled {
        mr_bead_id: String,
        pr_url: String,
        report: PollReport,
    },
    /// What a `MergePr` did (run by `crate::scm::run_merge`).
    PrMerge {
        mr_bead_id: String,
        pr_url: String,
        report: MergeReport,
    },
    /// Effects that report nothing back (stop, analytics) or were not run.
    Done,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Executes effects. Implementations must not touch the town database.
pub trait EffectRunner {
    fn run<'a>(&'a self, effect: &'a Effect) -> BoxFuture<'a, Outcome>;
}

/// A runner that records every effect and answers with scripted outcomes:
/// starts succeed unless told otherwise, deliveries succeed, PR polls and
/// merges answer with the scripted reports in order, else `Done` (not run).
#[derive(Default)]
pub struct RecordingRunner {
    pub log: RefCell<Vec<Effect>>,
    pub poll_reports: RefCell<VecDeque<PollReport>>,
    pub merge_reports: RefCell<VecDeque<MergeReport>>,
    pub start_results: RefCell<VecDeque<bool>>,
    pub fail_all_starts: std::cell::Cell<bool>,
    pub fail_deliveries: std::cell::Cell<bool>,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn take(&self) -> Vec<Effect> {
        std::mem::take(&mut *self.log.borrow_mut())
    }
    /// The outcome this runner gives, without recording (also used synchronously).
    pub fn outcome_for(&self, effect: &Effect) -> Outcome {
        match effect {
            Effect::StartAgent(s) => {
                let scripted = self.start_results.borrow_mut().pop_front();
                let started = scripted.unwrap_or(!self.fail_all_starts.get());
                Outcome::AgentStart {
                    agent_id: s.agent_id.clone(),
                    bead_id: s.bead_id.clone(),
                    started,
                    error: (!started).then(|| "start refused by test runner".to_owned()),
                }
            }
            Effect::DeliverNudge { nudge_id, .. } => {
                Outcome::NudgeDelivery { nudge_id: nudge_id.clone(), delivered: !self.fail_deliveries.get() }
            }
            Effect::MessageMayor { about_bead, .. } => {
                Outcome::MayorMessage { about_bead: about_bead.clone(), delivered: !self.fail_deliveries.get() }
            }
            Effect::PollPr { mr_bead_id, pr_url, .. } => match self.poll_reports.borrow_mut().pop_front() {
                Some(report) => Outcome::PrPolled { mr_bead_id: mr_bead_id.clone(), pr_url: pr_url.clone(), report },
                None => Outcome::Done,
            },
            Effect::MergePr { mr_bead_id, pr_url } => match self.merge_reports.borrow_mut().pop_front() {
                Some(report) => Outcome::PrMerge { mr_bead_id: mr_bead_id.clone(), pr_url: pr_url.clone(), report },
                None => Outcome::Done,
            },
            _ => Outcome::Done,
        }
    }
}

impl EffectRunner for RecordingRunner {
    fn run<'a>(&'a self, effect: &'a Effect) -> BoxFuture<'a, Outcome> {
        self.log.borrow_mut().push(effect.clone());
        let out = self.outcome_for(effect);
        Box::pin(async move { out })
    }
}
