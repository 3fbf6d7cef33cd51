//! The alarm tick: drain events, time out a stale drain flag, reconcile,
//! apply (one transaction), run effects, apply their outcomes, check the
//! upstream invariants, housekeeping, re-arm.

use super::actions::{self, Action};
use super::ctx::Ctx;
use super::effects::{Effect, EffectRunner, Outcome};
use super::events::{self, DrainReport};
use super::reconciler::{self, constants::DRAIN_TIMEOUT_MS};
use super::snapshot::TownSnapshot;
use super::{escalations, nudges, state, Town};
use crate::error::Result;
use crate::model::TownConfig;
use crate::store;
use crate::time::Timestamp;
use serde::Serialize;
use std::collections::BTreeMap;

/// What one tick did. Wall-clock cost is measured by the caller, never here:
/// the town only sees simulated (clock) time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TickReport {
    pub at: Timestamp,
    pub events: DrainReport,
    pub drain_timed_out: bool,
    pub actions: Vec<Action>,
    pub actions_by_type: BTreeMap<&'static str, u32>,
    /// Actions that failed and were rolled back alone: (kind, error).
    pub action_errors: Vec<(&'static str, String)>,
    pub effects: Vec<Effect>,
    pub side_effects_attempted: u32,
    pub side_effects_succeeded: u32,
    pub side_effects_failed: u32,
    pub invariant_violations: Vec<String>,
    /// What the reconcile pass asked for, judged against the snapshot it saw
    /// ([`super::invariants::check_actions`]).
    pub action_violations: Vec<super::invariants::Violation>,
    pub pending_events: u64,
    pub active_work: bool,
    pub next_alarm: Option<Timestamp>,
}

/// Phase 1 output: effects to run, plus the report so far.
pub struct TickPlan {
    pub report: TickReport,
}

impl Town {
    /// Phases 0 and 1 in one transaction. `None` when the town was destroyed
    /// (its alarm is cleared and never re-armed).
    pub fn begin_tick(&mut self) -> Result<Option<TickPlan>> {
        let now = self.clock.now();
        if !state::town_exists(&self.conn)? {
            state::set_alarm(&self.conn, None)?;
            return Ok(None);
        }
        let tx = self.conn.unchecked_transaction()?;
        let report = phases_0_and_1(&mut Ctx::new(&tx, now, &mut self.ids), &self.config, &self.town_id)?;
        tx.commit()?;
        Ok(Some(TickPlan { report }))
    }

    /// What the next tick would do: phases 0 and 1 run in a transaction that is
    /// then rolled back, so nothing changes. Benchmarks measure ticks with it.
    pub fn plan_tick(&mut self) -> Result<TickReport> {
        let now = self.clock.now();
        let tx = self.conn.unchecked_transaction()?;
        let report = phases_0_and_1(&mut Ctx::new(&tx, now, &mut self.ids), &self.config, &self.town_id)?;
        tx.rollback()?;
        Ok(report)
    }

    /// Run `f` in a transaction that is rolled back afterwards.
    pub fn dry_run<T>(&mut self, f: impl FnOnce(&mut Ctx<'_>, &TownConfig, &str) -> Result<T>) -> Result<T> {
        let now = self.clock.now();
        let tx = self.conn.unchecked_transaction()?;
        let out = f(&mut Ctx::new(&tx, now, &mut self.ids), &self.config, &self.town_id);
        tx.rollback()?;
        out
    }

    /// After the effects ran: apply outcomes, check invariants, housekeeping,
    /// re-arm. Returns the housekeeping effects (mayor notices) to run next.
    pub fn finish_tick(&mut self, plan: TickPlan, outcomes: Vec<Outcome>) -> Result<(TickReport, Vec<Effect>)> {
        let mut report = plan.report;
        report.side_effects_attempted = outcomes.len() as u32;
        report.side_effects_succeeded = outcomes.iter().filter(|o| outcome_ok(o)).count() as u32;
        report.side_effects_failed = report.side_effects_attempted - report.side_effects_succeeded;
        self.apply_outcomes(&outcomes)?;
        let now = self.clock.now();
        let tx = self.conn.unchecked_transaction()?;
        let mut cx = Ctx::new(&tx, now, &mut self.ids);
        report.invariant_violations = super::invariants::upstream_checks(cx.conn)?;
        report.active_work = super::has_active_work(cx.conn, now)?;
        nudges::expire(&cx)?;
        let housekeeping = escalations::re_escalate_stale(&mut cx)?;
        events::prune(&cx)?;
        report.pending_events = events::pending_count(cx.conn)?;
        let interval = if report.active_work { state::ACTIVE_ALARM_INTERVAL_MS } else { state::IDLE_ALARM_INTERVAL_MS };
        let next = now.plus_ms(interval);
        state::set_alarm(cx.conn, Some(next))?;
        report.next_alarm = Some(next);
        tx.commit()?;
        self.last_report = Some(report.clone());
        Ok((report, housekeeping))
    }

    /// A whole tick, with effects run (concurrently) through `runner`.
    pub async fn tick(&mut self, runner: &dyn EffectRunner) -> Result<Option<TickReport>> {
        let Some(plan) = self.begin_tick()? else { return Ok(None) };
        let outcomes = run_effects(runner, &plan.report.effects).await;
        let (report, housekeeping) = self.finish_tick(plan, outcomes)?;
        let later = run_effects(runner, &housekeeping).await;
        self.apply_outcomes(&later)?;
        Ok(Some(report))
    }
}

/// Phase 0 (drain events), the drain-flag timeout, and Phase 1 (snapshot,
/// reconcile, apply each action in its own savepoint).
fn phases_0_and_1(cx: &mut Ctx<'_>, cfg: &TownConfig, town_id: &str) -> Result<TickReport> {
    let now = cx.now;
    let mut report = TickReport { at: now, ..Default::default() };
    report.events = events::drain(cx, cfg)?;
    let mut drain = state::drain_state(cx.conn)?;
    if drain.draining && drain.started_at.is_none_or(|t| now.since(t) > DRAIN_TIMEOUT_MS) {
        state::clear_drain(cx.conn)?;
        drain = state::DrainState::default();
        report.drain_timed_out = true;
    }
    let snapshot = TownSnapshot::load(cx.conn, now, drain.draining, cfg)?;
    let planned = reconciler::reconcile(&snapshot);
    report.action_violations = super::invariants::check_actions(&snapshot, &planned);
    for action in &planned {
        *report.actions_by_type.entry(action.kind()).or_default() += 1;
        let conn = cx.conn;
        match store::savepoint(conn, || actions::apply(cx, town_id, action)) {
            Ok(Some(effect)) => report.effects.push(effect),
            Ok(None) => {}
            Err(e) => report.action_errors.push((action.kind(), e.to_string())),
        }
    }
    report.actions = planned;
    Ok(report)
}

fn outcome_ok(o: &Outcome) -> bool {
    match o {
        Outcome::AgentStart { started, .. } => *started,
        Outcome::NudgeDelivery { delivered, .. } | Outcome::MayorMessage { delivered, .. } => *delivered,
        Outcome::PrPolled { report, .. } => !matches!(report, crate::scm::PollReport::Failed { .. }),
        Outcome::PrMerge { report, .. } => matches!(report, crate::scm::MergeReport::Merged { .. }),
        Outcome::Done => true,
    }
}

/// Run effects concurrently and collect their outcomes in effect order.
pub async fn run_effects(runner: &dyn EffectRunner, effects: &[Effect]) -> Vec<Outcome> {
    futures_util::future::join_all(effects.iter().map(|e| runner.run(e))).await
}
