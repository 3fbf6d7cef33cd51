//! The in-process driver: a town on a manual clock, a scripted container that
//! answers effects, a seeded workload, and the oracles after every tick.

use crate::trace::Trace;
use gastown::model::{BeadStatus, BeadType, EventType, TownConfig};
use gastown::time::{Clock, ManualClock, Timestamp, MINUTE_MS, SECOND_MS};
use gastown::town::effects::{BoxFuture, Effect, EffectRunner, Outcome};
use gastown::town::invariants::Checker;
use gastown::town::{AddRig, ConvoyTask, DoneReport, ExitStatus, SlingBead, SlingConvoy, Town, TownOptions, Watermark};
use gastown::TownError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A fixed epoch keeps every run independent of the wall clock.
pub const EPOCH: Timestamp = Timestamp(1_780_000_000_000);
const HEARTBEAT_MS: i64 = 30 * SECOND_MS;

/// Knobs of the built-in workload.
#[derive(Clone, Debug, Serialize)]
pub struct SimParams {
    pub hours: f64,
    pub issues_per_hour: f64,
    /// Fraction of arrivals that are convoys (2–4 tasks) instead of single beads.
    pub convoy_fraction: f64,
    pub work_minutes: (i64, i64),
    /// How long a refinery takes over one review.
    pub review_minutes: (i64, i64),
    pub polls_to_merge: (u32, u32),
    pub start_failure_rate: f64,
    pub hang_rate: f64,
    /// Keep every trace record (for determinism diffs), not only the hash.
    pub keep_trace: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            hours: 2.0,
            issues_per_hour: 12.0,
            convoy_fraction: 0.2,
            work_minutes: (3, 20),
            review_minutes: (1, 5),
            polls_to_merge: (1, 4),
            start_failure_rate: 0.05,
            hang_rate: 0.03,
            keep_trace: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub invariant: String,
    pub detail: String,
    pub sim_time_ms: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub ticks: u64,
    pub sim_seconds: f64,
    pub beads_created: u64,
    pub beads_closed: u64,
    pub beads_failed: u64,
    pub beads_unfinished: u64,
    pub failures: Vec<Failure>,
    pub trace_hash: String,
    /// Unfinished issue beads and the agents around them at the end of the run.
    pub stuck: Vec<String>,
    #[serde(skip)]
    pub trace: Vec<String>,
}

/// An agent session the scripted container runs.
struct Session {
    done_at: Timestamp,
    next_heartbeat: Timestamp,
    hung: bool,
    is_refinery: bool,
    pr_url: Option<String>,
}

/// What the container learned during a tick that the town hears about after it.
enum Fact {
    Exited(String),
    PrMerged { mr: String, url: String },
}

struct ContainerState {
    rng: StdRng,
    clock: ManualClock,
    params: SimParams,
    sessions: BTreeMap<String, Session>,
    polls_left: BTreeMap<String, u32>,
    facts: Vec<Fact>,
}

/// The scripted container and forge: starts sessions, merges PRs after a few polls.
struct Container {
    state: RefCell<ContainerState>,
}

impl Container {
    fn answer(&self, effect: &Effect) -> Outcome {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let now = st.clock.now();
        match effect {
            Effect::StartAgent(s) => {
                if st.rng.random_bool(st.params.start_failure_rate) {
                    return Outcome::AgentStart {
                        agent_id: s.agent_id.clone(),
                        bead_id: s.bead_id.clone(),
                        started: false,
                        error: Some("scripted start failure".into()),
                    };
                }
                let is_refinery = s.role == gastown::model::AgentRole::Refinery;
                let (lo, hi) = if is_refinery { st.params.review_minutes } else { st.params.work_minutes };
                let work = st.rng.random_range(lo..=hi) * MINUTE_MS;
                let hung = st.rng.random_bool(st.params.hang_rate);
                let session = Session {
                    done_at: now.plus_ms(work),
                    next_heartbeat: now.plus_ms(HEARTBEAT_MS),
                    hung,
                    is_refinery,
                    pr_url: s.pr_url.clone(),
                };
                st.sessions.insert(s.agent_id.clone(), session);
                Outcome::AgentStart {
                    agent_id: s.agent_id.clone(),
                    bead_id: s.bead_id.clone(),
                    started: true,
                    error: None,
                }
            }
            Effect::StopAgent { agent_id, .. } => {
                if st.sessions.remove(agent_id).is_some() {
                    st.facts.push(Fact::Exited(agent_id.clone()));
                }
                Outcome::Done
            }
            Effect::PollPr { mr_bead_id, pr_url, .. } => {
                let (lo, hi) = st.params.polls_to_merge;
                let draw = st.rng.random_range(lo..=hi);
                let left = st.polls_left.entry(mr_bead_id.clone()).or_insert(draw);
                *left = left.saturating_sub(1);
                if *left == 0 {
                    st.polls_left.remove(mr_bead_id);
                    st.facts.push(Fact::PrMerged { mr: mr_bead_id.clone(), url: pr_url.clone() });
                }
                Outcome::Done
            }
            Effect::DeliverNudge { nudge_id, .. } => {
                Outcome::NudgeDelivery { nudge_id: nudge_id.clone(), delivered: true }
            }
            Effect::MessageMayor { about_bead, .. } => {
                Outcome::MayorMessage { about_bead: about_bead.clone(), delivered: true }
            }
            Effect::MergePr { .. } | Effect::Analytics { .. } => Outcome::Done,
        }
    }
}

impl EffectRunner for Container {
    fn run<'a>(&'a self, effect: &'a Effect) -> BoxFuture<'a, Outcome> {
        let out = self.answer(effect);
        Box::pin(async move { out })
    }
}

struct World {
    town: Town,
    clock: ManualClock,
    container: Container,
    rng: StdRng,
    trace: Trace,
    checker: Checker,
    failures: Vec<Failure>,
    ticks: u64,
    next_pr: u64,
    rt: tokio::runtime::Runtime,
}

/// Run one seed of the built-in workload and check it.
pub fn run_seed(seed: u64, params: &SimParams) -> Result<SeedResult, TownError> {
    let mut w = World::new(seed, params)?;
    let end = EPOCH.plus_ms((params.hours * 3_600_000.0) as i64);
    let intake_end = EPOCH.plus_ms((params.hours * 0.6 * 3_600_000.0) as i64);
    let mean_gap_ms = 3_600_000.0 / params.issues_per_hour.max(0.001);
    let mut next_arrival = EPOCH.plus_ms(w.exp_gap(mean_gap_ms));
    loop {
        let alarm = w.town.alarm_at()?.unwrap_or(end);
        let session_due = w.next_session_time();
        let arrival = if next_arrival < intake_end { next_arrival } else { end };
        let t = alarm.min(session_due).min(arrival).max(w.clock.now());
        if t > end {
            break;
        }
        w.clock.set(t);
        if arrival <= t && t < end {
            w.arrive(params)?;
            next_arrival = t.plus_ms(w.exp_gap(mean_gap_ms).max(SECOND_MS));
        }
        w.advance_sessions()?;
        if alarm <= t {
            w.tick()?;
        }
        w.apply_facts()?;
        if t == end {
            break;
        }
    }
    w.finish(seed, end)
}

impl World {
    fn new(seed: u64, params: &SimParams) -> Result<World, TownError> {
        let clock = ManualClock::new(EPOCH);
        let conn = gastown::store::open_in_memory()?;
        let mut town = Town::open(conn, Arc::new(clock.clone()), TownOptions { town_id: format!("sim-{seed}"), seed })?;
        town.set_config(TownConfig::new_town_defaults())?;
        town.add_rig(AddRig {
            id: Some("rig-app".into()),
            name: "app".into(),
            git_url: "https://github.com/acme/app.git".into(),
            ..Default::default()
        })?;
        let container = Container {
            state: RefCell::new(ContainerState {
                rng: StdRng::seed_from_u64(seed ^ 0xC0_47A1_4E55),
                clock: clock.clone(),
                params: params.clone(),
                sessions: BTreeMap::new(),
                polls_left: BTreeMap::new(),
                facts: Vec::new(),
            }),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| TownError::invalid("runtime", e.to_string()))?;
        Ok(World {
            town,
            clock,
            container,
            rng: StdRng::seed_from_u64(seed),
            trace: Trace::new(params.keep_trace),
            checker: Checker::new(),
            failures: Vec::new(),
            ticks: 0,
            next_pr: 1,
            rt,
        })
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn exp_gap(&mut self, mean_ms: f64) -> i64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        (-u.ln() * mean_ms) as i64
    }

    fn next_session_time(&self) -> Timestamp {
        let st = self.container.state.borrow();
        st.sessions
            .values()
            .map(|s| if s.hung { s.next_heartbeat } else { s.next_heartbeat.min(s.done_at) })
            .min()
            .unwrap_or(Timestamp(i64::MAX))
    }

    /// New work: a single bead or a small convoy.
    fn arrive(&mut self, params: &SimParams) -> Result<(), TownError> {
        let n = self.ticks;
        if self.rng.random_bool(params.convoy_fraction) {
            let size = self.rng.random_range(2..=4usize);
            let tasks = (0..size)
                .map(|i| ConvoyTask {
                    title: format!("task {i}"),
                    body: None,
                    depends_on: if i > 0 && self.rng.random_bool(0.5) { vec![i - 1] } else { vec![] },
                })
                .collect();
            let c = self.town.sling_convoy(SlingConvoy {
                rig_id: "rig-app".into(),
                title: format!("convoy {n}"),
                tasks,
                staged: Some(false),
                ..Default::default()
            })?;
            self.trace.record(self.now().0, "sling_convoy", &c);
        } else {
            let (slung, effects) = self.town.sling_bead(SlingBead {
                rig_id: "rig-app".into(),
                title: format!("issue {n}"),
                ..Default::default()
            })?;
            self.trace.record(self.now().0, "sling", &slung);
            let outcomes: Vec<Outcome> = effects.iter().map(|e| self.container.answer(e)).collect();
            self.town.apply_outcomes(&outcomes)?;
        }
        Ok(())
    }

    /// Heartbeats and finished work of the container's sessions that are due.
    fn advance_sessions(&mut self) -> Result<(), TownError> {
        let now = self.now();
        let due: Vec<(String, bool, bool, bool, Option<String>)> = {
            let st = self.container.state.borrow();
            st.sessions
                .iter()
                .filter(|(_, s)| s.next_heartbeat <= now || (!s.hung && s.done_at <= now))
                .map(|(id, s)| {
                    (id.clone(), s.next_heartbeat <= now, !s.hung && s.done_at <= now, s.is_refinery, s.pr_url.clone())
                })
                .collect()
        };
        for (agent, beat, done, refinery, pr_url) in due {
            if beat {
                let hung = self.container.state.borrow().sessions.get(&agent).is_some_and(|s| s.hung);
                let wm = if hung {
                    Watermark::default()
                } else {
                    Watermark { last_event_at: Some(now), ..Default::default() }
                };
                if let Some(s) = self.container.state.borrow_mut().sessions.get_mut(&agent) {
                    s.next_heartbeat = now.plus_ms(HEARTBEAT_MS);
                }
                match self.town.heartbeat(&agent, &wm, Some("container-1")) {
                    Ok(_) => {}
                    Err(TownError::NotFound { .. }) => self.end_session(&agent),
                    Err(e) => return Err(e),
                }
            }
            if done {
                let report = if refinery {
                    DoneReport { branch: String::new(), pr_url, summary: Some("reviewed".into()) }
                } else {
                    let url = format!("https://github.com/acme/app/pull/{}", self.next_pr);
                    self.next_pr += 1;
                    DoneReport { branch: format!("gt/{agent}"), pr_url: Some(url), summary: None }
                };
                self.trace.record(now.0, "gt_done", &json!({ "agent": agent, "report": report }));
                match self.town.agent_done(&agent, report) {
                    Ok(_) | Err(TownError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                self.end_session(&agent);
                self.container.state.borrow_mut().facts.push(Fact::Exited(agent));
            }
        }
        Ok(())
    }

    fn end_session(&mut self, agent: &str) {
        self.container.state.borrow_mut().sessions.remove(agent);
    }

    fn tick(&mut self) -> Result<(), TownError> {
        let report = self.rt.block_on(self.town.tick(&self.container))?;
        let Some(report) = report else { return Ok(()) };
        self.ticks += 1;
        let now = self.now();
        self.trace.record(now.0, "tick", &json!({ "events": report.events.applied.len(), "actions": report.actions }));
        let mut violations = self.checker.observe_tick(&report);
        violations.extend(self.checker.check(self.town.conn(), self.town.config(), now)?);
        for v in violations {
            self.trace.record(now.0, "violation", &v);
            self.failures.push(Failure {
                invariant: v.invariant.to_owned(),
                detail: v.detail,
                sim_time_ms: now.since(EPOCH),
            });
        }
        for msg in report.invariant_violations {
            self.failures.push(Failure {
                invariant: "upstream_check".into(),
                detail: msg,
                sim_time_ms: now.since(EPOCH),
            });
        }
        Ok(())
    }

    /// Tell the town what the container learned: process exits, merged PRs.
    fn apply_facts(&mut self) -> Result<(), TownError> {
        let facts = std::mem::take(&mut self.container.state.borrow_mut().facts);
        for fact in facts {
            let now = self.now().0;
            let r = match fact {
                Fact::Exited(agent) => {
                    self.trace.record(now, "exit", &agent);
                    self.town.agent_completed(&agent, ExitStatus::Completed, None).map(|_| ())
                }
                Fact::PrMerged { mr, url } => {
                    self.trace.record(now, "pr_merged", &mr);
                    let payload = json!({ "pr_url": url, "pr_state": "merged" });
                    self.town.insert_event(EventType::PrStatusChanged, None, Some(&mr), payload).map(|_| ())
                }
            };
            match r {
                Ok(()) | Err(TownError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(mut self, seed: u64, end: Timestamp) -> Result<SeedResult, TownError> {
        let issues = self.town.beads_of(BeadType::Issue, None)?;
        let count = |s: BeadStatus| issues.iter().filter(|b| b.status == s).count() as u64;
        let mut stuck: Vec<String> = issues
            .iter()
            .filter(|b| b.status.is_live())
            .map(|b| {
                format!(
                    "issue {} {} assignee={} attempts={} updated {}s ago",
                    b.bead_id,
                    b.status,
                    b.assignee_agent_bead_id.as_deref().unwrap_or("-"),
                    b.dispatch_attempts,
                    end.since(b.updated_at) / 1000
                )
            })
            .collect();
        for mr in self.town.beads_of(BeadType::MergeRequest, None)?.into_iter().filter(|b| b.status.is_live()) {
            stuck.push(format!(
                "mr {} {} assignee={} by={} updated {}s ago",
                mr.bead_id,
                mr.status,
                mr.assignee_agent_bead_id.as_deref().unwrap_or("-"),
                mr.created_by.as_deref().unwrap_or("-"),
                end.since(mr.updated_at) / 1000
            ));
        }
        for a in self.town.agents()? {
            stuck.push(format!(
                "agent {} {} {} hook={} attempts={}",
                a.agent_id,
                a.role,
                a.status,
                a.current_hook_bead_id.as_deref().unwrap_or("-"),
                a.dispatch_attempts
            ));
        }
        Ok(SeedResult {
            seed,
            ticks: self.ticks,
            sim_seconds: end.since(EPOCH) as f64 / 1000.0,
            beads_created: issues.len() as u64,
            beads_closed: count(BeadStatus::Closed),
            beads_failed: count(BeadStatus::Failed),
            beads_unfinished: issues.iter().filter(|b| b.status.is_live()).count() as u64,
            failures: self.failures,
            trace_hash: self.trace.hash(),
            stuck,
            trace: self.trace.records().to_vec(),
        })
    }
}
