//! The step loop: build the world for a seed, step turmoil, and between
//! steps inject faults, play people, run the oracles and keep the trace.

use super::config::WorldConfig;
use super::faults::{Plan, Timer};
use super::hosts::{self, lock, Dice, Shared, EPOCH};
use super::measure::{self, Stopwatch};
use super::people::PrCare;
use super::seeds::Seeds;
use super::{oracles, scratch, BeadCounts, Failure, RunOptions, SeedReport, FAULT_KINDS};
use crate::trace::Trace;
use gastown::container::{RoleScript, ScriptConfig};
use gastown::runtime::TownHost;
use gastown::time::Timestamp;
use gastown::town::invariants::{alarm_postponed, Checker, Violation};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Connections a host's listener queues before turmoil gives up: room for
/// every attempt an hours-long hold of the busiest link piles up.
const TCP_BACKLOG: usize = 1 << 16;

/// Per-seed draws from the config's ranges.
#[derive(Clone, Debug)]
pub struct Sampled {
    pub rates: BTreeMap<String, f64>,
    pub ci_ms: (u64, u64),
    pub ci_failure: f64,
    pub restart_delay_ms: (u64, u64),
    pub partition_ms: (u64, u64),
    pub latency_ms: u64,
}

fn draw(rng: &mut StdRng, (lo, hi): (f64, f64)) -> f64 {
    if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    }
}
fn draw_ms(rng: &mut StdRng, (lo, hi): (u64, u64)) -> u64 {
    if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    }
}

/// One role's behaviour for this seed: its probabilities are drawn per seed
/// like the base ones, in role order. A file without role tables draws
/// nothing more, so its seeds run as they did before roles existed.
fn role_script(swarm: &mut StdRng, r: &super::RoleRanges) -> RoleScript {
    let mut p = |range: Option<(f64, f64)>| range.map(|x| draw(swarm, x));
    RoleScript {
        start_ms: r.start_ms,
        p_start_failure: p(r.start_failure),
        work_ms: r.work_ms,
        p_done: p(r.skip_done).map(|skip| 1.0 - skip),
        p_open_pr: p(r.forget_pr).map(|forget| 1.0 - forget),
        p_done_twice: p(r.done_twice),
        p_crash: p(r.crash),
        p_hang: p(r.hang),
        p_request_changes: p(r.request_changes),
    }
}

/// Container as the world sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Box_ {
    Up,
    Draining { since: u64, crash_at: Option<u64> },
    Down,
}

pub struct World {
    pub(crate) cfg: WorldConfig,
    pub(crate) sh: Arc<Shared>,
    pub(crate) sampled: Sampled,
    pub(crate) fault_rng: StdRng,
    pub(crate) people_rng: StdRng,
    pub(crate) heal_at: u64,
    pub(crate) healed: bool,
    pub(crate) plan: Plan,
    pub(crate) timers: Vec<(u64, Timer)>,
    pub(crate) container: Box_,
    pub(crate) evict_on_start_until: u64,
    pub(crate) pinned: Option<(rusqlite::Connection, u64)>,
    pub(crate) external: BTreeSet<String>,
    /// PRs merged as the town read their feedback, and when (sim ms): no
    /// feedback may be recorded for them afterwards (bug j).
    pub(crate) merged_mid_read: BTreeMap<String, u64>,
    /// Partitions and holds between town and container, for the drain-history
    /// oracle: (from, until; `None` while it lasts), in simulated ms.
    pub(crate) link_cuts: Vec<(u64, Option<u64>)>,
    pub(crate) care: BTreeMap<(String, u64), PrCare>,
    pub(crate) prs_seen: usize,
    pub(crate) faults: BTreeMap<String, u64>,
    pub(crate) fault_events: Vec<(u64, String)>,
    pub(crate) marks: BTreeMap<String, u64>,
    pub(crate) trace: Trace,
    pub(crate) failures: Vec<Failure>,
    checker: Checker,
    ticks: u64,
    tick_hist: Histogram<u64>,
    latency_hist: Histogram<u64>,
    series: Vec<(u64, BTreeMap<String, u64>)>,
    /// The most agents the town held at any series sample (GC may leave
    /// none at the end, so the end count would understate the town).
    agents_peak: u64,
    initial_prompt_once: oracles::InitialPromptOnce,
    pub(crate) now: u64,
    stop_early: bool,
}

impl World {
    pub(crate) fn roll(&mut self, kind: &str) -> bool {
        let p = self.sampled.rates.get(kind).copied().unwrap_or(0.0);
        self.now < self.heal_at && p > 0.0 && self.fault_rng.random_bool(p.min(1.0))
    }

    pub(crate) fn fired(&mut self, at: u64, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
        self.fault_events.push((at, kind.to_owned()));
        self.trace.record(at as i64, "fault", &kind);
    }

    pub(crate) fn mark(&mut self, name: &str) {
        *self.marks.entry(name.to_owned()).or_default() += 1;
    }

    pub(crate) fn violation(&mut self, at: u64, v: Violation) {
        self.trace.record(at as i64, "violation", &v);
        let wanted =
            self.cfg.expect.invariants.is_empty() || self.cfg.expect.invariants.iter().any(|i| i == v.invariant);
        if wanted {
            self.failures.push(Failure { invariant: v.invariant.to_owned(), detail: v.detail, sim_time_ms: at as i64 });
        }
    }

    fn drain_host_records(&mut self) {
        let records = std::mem::take(&mut *lock(&self.sh.records));
        for (at, kind, body) in records {
            // Recovery paths visible on the wire.
            if kind == "rpc" && body.contains("/db-snapshot -> 409") {
                self.mark("snapshot_refused");
            }
            if kind == "forge" && body.contains("/merge -> 405") {
                self.mark("merge_fallback");
            }
            self.trace.record(at, kind, &body);
        }
        let checks = std::mem::take(&mut *lock(&self.sh.checks));
        for (at, v) in checks {
            self.violation(at.max(0) as u64, v);
        }
        let faults = std::mem::take(&mut *lock(&self.sh.faults));
        for (at, kind) in faults {
            self.fired(at.max(0) as u64, &kind);
        }
        for (at, url) in std::mem::take(&mut *lock(&self.sh.mid_read_merges)) {
            self.external.insert(url.clone());
            self.merged_mid_read.insert(url, at.max(0) as u64);
        }
    }

    /// The town `Checker` over the database now; a checker that cannot read
    /// the database is a failure too.
    fn check_town_state(&mut self, town: &gastown::runtime::TownHost) -> Vec<Violation> {
        let now = Timestamp(EPOCH.0 + self.now as i64);
        town.with_town_quietly(|t| self.checker.check(t.conn(), t.config(), now))
            .unwrap_or_else(|e| vec![Violation { invariant: "upstream_check", detail: format!("checker failed: {e}") }])
    }

    fn process_ticks(&mut self) {
        let reports = std::mem::take(&mut *lock(&self.sh.ticks));
        let failed = std::mem::take(&mut *lock(&self.sh.failed_ticks));
        let Some(town) = self.sh.town() else { return };
        // A failed tick keeps what it recorded before failing (the status
        // observation): the state the town is in is checked all the same.
        for (at, error) in failed {
            self.trace.record(at, "tick_failed", &error);
            for v in self.check_town_state(&town) {
                self.violation(self.now, v);
            }
        }
        for (report, cost) in reports {
            self.ticks += 1;
            measure::record(&mut self.tick_hist, cost);
            let at = report.at.since(EPOCH).max(0) as u64;
            self.trace.record(
                at as i64,
                "tick",
                &serde_json::json!({
                    "applied": report.events.applied.len(),
                    "retried": report.events.retried.len(),
                    "actions": report.actions_by_type,
                    "effects": report.effects.len(),
                    "failed": report.side_effects_failed,
                }),
            );
            for (k, n) in &report.actions_by_type {
                *self.marks.entry(format!("action.{k}")).or_default() += u64::from(*n);
            }
            for a in &report.actions {
                if let gastown::town::actions::Action::TransitionBead { to: gastown::model::BeadStatus::Open, .. } = a {
                    self.mark("rule3_reset");
                }
            }
            let applied: Vec<(i64, String)> = town
                .with_town_quietly(|t| {
                    let mut st = t
                        .conn()
                        .prepare_cached("SELECT created_at, event_type FROM town_events WHERE event_id = ?1")?;
                    let mut out = Vec::new();
                    for id in &report.events.applied {
                        if let Ok(c) = st.query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))) {
                            out.push(c);
                        }
                    }
                    Ok(out)
                })
                .unwrap_or_default();
            for (_, ty) in &applied {
                match ty.as_str() {
                    "pr_feedback_detected" => self.mark("feedback_bead"),
                    "pr_conflict_detected" => self.mark("conflict_bead"),
                    _ => {}
                }
            }
            for c in applied.into_iter().map(|(c, _)| c) {
                let lat = report.at.0.saturating_sub(c).max(0) as u64;
                measure::record(&mut self.latency_hist, lat.max(1));
                if lat > 10_000 {
                    self.mark("event_applied_late");
                }
            }
            let mut vs = self.checker.observe_tick(&report);
            vs.extend(report.action_violations.iter().cloned());
            vs.extend(self.check_town_state(&town));
            for msg in &report.invariant_violations {
                vs.push(Violation { invariant: "upstream_check", detail: msg.clone() });
            }
            if let Some(forge) = self.sh.forge() {
                let prs = lock(&self.sh.prs).clone();
                vs.extend(oracles::forge_side(&town, &forge, &prs, &self.external));
            }
            vs.extend(oracles::no_feedback_after_merge(&town, &mut self.merged_mid_read));
            for v in vs {
                self.violation(self.now, v);
            }
            // Per-tick fault chances (the host counts them when they run).
            if self.roll("duplicate_tick") {
                lock(&self.sh.town_ctl).jobs.push_back("duplicate_tick");
                self.sh.town_wake.notify_one();
            }
            if self.roll("overlapping_tick") {
                lock(&self.sh.town_ctl).overlap_next = true;
            }
        }
    }

    fn sample_series(&mut self) {
        let Some(town) = self.sh.town() else { return };
        let counts: BTreeMap<String, u64> = town
            .with_town_quietly(|t| {
                let mut st = t.conn().prepare_cached(
                    "SELECT type || ':' || status, COUNT(*) FROM beads WHERE type IN ('issue', 'merge_request', 'convoy') GROUP BY 1",
                )?;
                let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .unwrap_or_default();
        self.series.push((self.now, counts));
        self.agents_peak = self.agents_peak.max(self.agent_count());
    }

    fn bead_counts(&self) -> BeadCounts {
        let Some(town) = self.sh.town() else { return BeadCounts::default() };
        town.with_town_quietly(|t| {
            let q = |sql: &str| t.conn().query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64);
            Ok(BeadCounts {
                created: q("SELECT COUNT(*) FROM beads WHERE type = 'issue'")?,
                closed: q("SELECT COUNT(*) FROM beads WHERE type = 'issue' AND status = 'closed'")?,
                failed: q("SELECT COUNT(*) FROM beads WHERE type = 'issue' AND status = 'failed'")?,
            })
        })
        .unwrap_or_default()
    }

    fn agent_count(&self) -> u64 {
        let Some(town) = self.sh.town() else { return 0 };
        town.with_town_quietly(|t| {
            Ok(t.conn().query_row("SELECT COUNT(*) FROM agent_metadata", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .unwrap_or_default()
    }
}

/// Run one seed of `cfg`. Deterministic: the same config and seed give the
/// same trace hash. Never panics on a failing system; an unusable config is
/// reported as a failure named `config`, and a panic inside the simulation
/// (the system's or turmoil's) as one named `simulator_panic`, so one bad
/// seed ends only itself, not a thousand-seed run.
pub fn run_seed(cfg: &WorldConfig, seed: u64, opts: &RunOptions) -> SeedReport {
    guarded(seed, opts, || run_seed_unguarded(cfg, seed, opts))
}

fn guarded(seed: u64, opts: &RunOptions, run: impl FnOnce() -> SeedReport) -> SeedReport {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let mut report = empty_report(seed, opts);
        report.failures.push(Failure {
            invariant: SIMULATOR_PANIC.into(),
            detail: format!("the simulation panicked: {what}"),
            sim_time_ms: 0,
        });
        report
    })
}

/// The failure name of a seed whose simulation panicked.
pub const SIMULATOR_PANIC: &str = "simulator_panic";

fn empty_report(seed: u64, opts: &RunOptions) -> SeedReport {
    let replay = opts
        .replay_hint
        .clone()
        .unwrap_or_else(|| "gastown-world --seed {seed}".into())
        .replace("{seed}", &seed.to_string());
    SeedReport {
        seed,
        passed: false,
        failures: Vec::new(),
        sim_ms: 0,
        wall_us: 0,
        ticks: 0,
        steps: 0,
        tick_wall_us: Default::default(),
        tick_wall_hist: Vec::new(),
        event_latency_ms: Default::default(),
        beads: BeadCounts::default(),
        agents: 0,
        faults: BTreeMap::new(),
        marks: BTreeMap::new(),
        trace_hash: String::new(),
        trace: Vec::new(),
        bead_series: Vec::new(),
        fault_events: Vec::new(),
        stuck: Vec::new(),
        replay,
    }
}

fn run_seed_unguarded(cfg: &WorldConfig, seed: u64, opts: &RunOptions) -> SeedReport {
    let wall = Stopwatch::start();
    let mut report = empty_report(seed, opts);
    if let Err(e) = cfg.validate() {
        report.failures.push(Failure { invariant: "config".into(), detail: e, sim_time_ms: 0 });
        return report;
    }
    let dir = match scratch::seed_dir() {
        Ok(d) => d,
        Err(detail) => {
            report.failures.push(Failure { invariant: "config".into(), detail, sim_time_ms: 0 });
            return report;
        }
    };
    let seeds = Seeds::new(seed);
    let mut swarm = Seeds::rng(seeds.swarm);
    let a = &cfg.agents;
    let script = ScriptConfig {
        seed: seeds.agents,
        start_ms: a.start_ms,
        p_start_failure: draw(&mut swarm, a.start_failure),
        work_ms: a.work_ms,
        activity_every_ms: 20_000,
        reply_ms: (1_000, 10_000),
        p_done: 1.0 - draw(&mut swarm, a.skip_done),
        p_open_pr: 1.0 - draw(&mut swarm, a.forget_pr),
        p_done_twice: draw(&mut swarm, a.done_twice),
        p_crash: draw(&mut swarm, a.crash),
        p_hang: draw(&mut swarm, a.hang),
        p_request_changes: draw(&mut swarm, a.request_changes),
        // Drawn last: a scenario without them samples everything else as before.
        p_silent_hang: draw(&mut swarm, a.silent_hang),
        p_stop_hangs: draw(&mut swarm, a.stop_hangs),
        roles: a.roles.iter().map(|(role, r)| (*role, role_script(&mut swarm, r))).collect(),
    };
    let rates: BTreeMap<String, f64> = FAULT_KINDS
        .iter()
        .map(|k| (k.name.to_owned(), cfg.faults.rates.get(k.name).map_or(0.0, |r| draw(&mut swarm, *r))))
        .collect();
    let sampled = Sampled {
        ci_ms: cfg.people.ci_ms,
        ci_failure: draw(&mut swarm, cfg.people.ci_failure),
        restart_delay_ms: cfg.faults.restart_delay_ms,
        partition_ms: cfg.faults.partition_ms,
        latency_ms: draw_ms(&mut swarm, cfg.faults.latency_ms),
        rates,
    };
    let mut fault_rng = Seeds::rng(seeds.faults);
    let squash_disabled =
        sampled.rates["merge_method_405"] > 0.0 && fault_rng.random_bool(sampled.rates["merge_method_405"].min(1.0));
    let dice = Dice {
        rng: Seeds::rng(seeds.faults ^ 0xd1ce),
        active: true,
        p: FAULT_KINDS.iter().map(|k| (k.name, sampled.rates[k.name])).collect(),
        tampered_uploads: BTreeSet::new(),
    };
    let sh = Shared::new(cfg.clone(), dir.path().to_path_buf(), script, dice, squash_disabled);
    let heal_at = cfg.heal_at();
    let deadline = cfg.deadline();
    let mut sim = turmoil::Builder::new()
        .rng_seed(seeds.network)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(EPOCH.0 as u64))
        .simulation_duration(Duration::from_millis(deadline + 3_600_000))
        .tick_duration(Duration::from_millis(cfg.step_ms))
        .max_message_latency(Duration::from_millis(cfg.step_ms.clamp(1, 50)))
        .enable_random_order()
        // A held link delivers every connection attempt it queued at once on
        // release; turmoil panics when they overflow a listener's backlog
        // (64 by default), which a hold of a minute or two already did.
        .tcp_capacity(TCP_BACKLOG)
        .build();
    hosts::forge_host(&mut sim, sh.clone(), seeds.forge);
    hosts::town_host(&mut sim, sh.clone());
    hosts::container_host(&mut sim, sh.clone());
    let ops = super::workload::schedule(cfg, &mut Seeds::rng(seeds.workload));
    sim.client("workload", super::workload::play(sh.clone(), ops));
    let plan = Plan::new(cfg, &sampled, &mut fault_rng);
    let mut w = World {
        cfg: cfg.clone(),
        sh: sh.clone(),
        sampled,
        fault_rng,
        people_rng: Seeds::rng(seeds.people),
        heal_at,
        healed: false,
        plan,
        timers: Vec::new(),
        container: Box_::Up,
        evict_on_start_until: 0,
        pinned: None,
        external: BTreeSet::new(),
        merged_mid_read: BTreeMap::new(),
        link_cuts: Vec::new(),
        care: BTreeMap::new(),
        prs_seen: 0,
        faults: BTreeMap::new(),
        fault_events: Vec::new(),
        marks: BTreeMap::new(),
        trace: Trace::new(opts.keep_trace),
        failures: Vec::new(),
        checker: Checker::new(),
        ticks: 0,
        tick_hist: measure::new_hist(),
        latency_hist: measure::new_hist(),
        series: Vec::new(),
        agents_peak: 0,
        initial_prompt_once: oracles::InitialPromptOnce::default(),
        now: 0,
        stop_early: opts.stop_at_first_failure,
    };
    if squash_disabled {
        w.fired(0, "merge_method_405");
    }
    if w.sampled.latency_ms > 0 {
        for (x, y) in [("town", "container"), ("town", "forge"), ("container", "forge")] {
            sim.set_link_latency(x, y, Duration::from_millis(w.sampled.latency_ms));
        }
        w.fired(0, "latency");
    }
    let series_every = if opts.series_every_ms == 0 { 300_000 } else { opts.series_every_ms };
    let end_intake = cfg.duration_ms.max(heal_at);
    let (mut next_people, mut next_series, mut next_live, mut next_prompt) = (0u64, 0u64, end_intake, 60_000u64);
    let mut workload_done = false;
    let mut steps = 0u64;
    let mut alarm_before: Option<Timestamp> = None;
    let mut alarm_memo = AlarmMemo::default();
    let mut settled = false;
    loop {
        let starts_before = *lock(&sh.tick_starts);
        if let Err(e) = sim.step() {
            w.failures.push(Failure {
                invariant: "host_error".into(),
                detail: e.to_string(),
                sim_time_ms: w.now as i64,
            });
            break;
        }
        steps += 1;
        w.now = sim.elapsed().as_millis() as u64;
        let now = w.now;
        // The alarm may only move later inside a tick.
        if let Some(town) = sh.town() {
            let after = alarm_memo.read(&town);
            let ticked = *lock(&sh.tick_starts) != starts_before;
            if !ticked {
                if let Some(v) = alarm_postponed(alarm_before, after, Timestamp(EPOCH.0 + now as i64)) {
                    w.violation(now, v);
                }
            }
            alarm_before = after;
        }
        w.drain_host_records();
        w.process_ticks();
        if !workload_done && w.trace_saw_workload_done() {
            workload_done = true;
        }
        w.fault_step(&mut sim);
        if now >= next_people {
            w.people_step(now);
            next_people = now + 5_000;
        }
        if now >= next_prompt {
            next_prompt = now + 60_000;
            let c = lock(&sh.container).container.clone();
            if let (Some(c), Box_::Up) = (c, w.container) {
                for v in w.initial_prompt_once.check(&c) {
                    w.violation(now, v);
                }
            }
        }
        if now >= next_series {
            w.sample_series();
            next_series = now + series_every;
        }
        if !w.healed && now >= heal_at {
            w.heal(&mut sim);
        }
        if w.stop_early && !w.failures.is_empty() {
            break;
        }
        if now >= next_live && w.healed && workload_done && w.container == Box_::Up {
            next_live = now + 30_000;
            if let Some(town) = sh.town() {
                if oracles::unsettled(&town, Timestamp(EPOCH.0 + now as i64)).is_none() {
                    settled = true;
                    break;
                }
            }
        }
        if now >= deadline {
            break;
        }
    }
    w.drain_host_records();
    w.process_ticks();
    w.sample_series();
    if !settled && w.cfg.expect.liveness && (!w.stop_early || w.failures.is_empty()) {
        let stuck = sh
            .town()
            .and_then(|t| oracles::unsettled(&t, Timestamp(EPOCH.0 + w.now as i64)))
            .unwrap_or_else(|| vec![format!("container {:?} or workload unfinished", w.container)]);
        let detail =
            format!("not settled {} s after heal: {}", (w.now.saturating_sub(end_intake)) / 1000, stuck.join("; "));
        w.trace.record(w.now as i64, "violation", &detail);
        w.failures.push(Failure { invariant: oracles::LIVENESS.into(), detail, sim_time_ms: w.now as i64 });
        report.stuck = stuck;
        if let Some(t) = sh.town() {
            report.stuck.extend(oracles::agents_summary(&t));
        }
    }
    let beads = w.bead_counts();
    report.agents = w.agents_peak;
    if cfg.expect.min_closed_fraction > 0.0 && beads.created > 0 {
        let frac = beads.closed as f64 / beads.created as f64;
        if frac < cfg.expect.min_closed_fraction {
            w.failures.push(Failure {
                invariant: "min_closed_fraction".into(),
                detail: format!(
                    "{} of {} issues closed ({frac:.2} < {})",
                    beads.closed, beads.created, cfg.expect.min_closed_fraction
                ),
                sim_time_ms: w.now as i64,
            });
        }
    }
    let latency = measure::percentiles(&w.latency_hist);
    if let Some(max) = cfg.expect.max_event_latency_p99_ms {
        if latency.p99 > max {
            w.failures.push(Failure {
                invariant: "event_latency".into(),
                detail: format!("event-to-applied p99 {} ms > {max} ms", latency.p99),
                sim_time_ms: w.now as i64,
            });
        }
    }
    // Let go of the world before its directory.
    drop(sim);
    w.pinned = None;
    report.passed = w.failures.is_empty();
    report.failures = w.failures;
    report.sim_ms = w.now;
    report.ticks = w.ticks;
    report.steps = steps;
    report.tick_wall_us = measure::percentiles(&w.tick_hist);
    report.tick_wall_hist = measure::raw(&w.tick_hist);
    report.event_latency_ms = latency;
    report.beads = beads;
    report.faults = w.faults;
    report.marks = w.marks;
    report.trace_hash = w.trace.hash();
    report.trace = w.trace.records().to_vec();
    report.bead_series = w.series;
    report.fault_events = w.fault_events;
    report.wall_us = wall.micros();
    drop(dir);
    report
}

impl World {
    fn trace_saw_workload_done(&self) -> bool {
        *lock(&self.sh.workload_done)
    }
}

/// The town's alarm as of the last step, reread only when the town wrote a
/// row since: the world checks it after every 100 ms step, and most steps
/// write nothing (a long scenario has a million steps).
#[derive(Default)]
struct AlarmMemo {
    /// Held, so that a new host can never take the old one's address.
    last: Option<(Arc<TownHost>, u64, Option<Timestamp>)>,
}

impl AlarmMemo {
    fn read(&mut self, town: &Arc<TownHost>) -> Option<Timestamp> {
        let written = town.with_town_quietly(|t| Ok(t.rows_written())).ok();
        if let (Some((host, n, at)), Some(written)) = (&self.last, written) {
            if Arc::ptr_eq(host, town) && *n == written {
                return *at;
            }
        }
        self.last = None;
        // A failed read is not remembered: the next step tries again.
        let at = town.with_town_quietly(|t| t.alarm_at()).ok()?;
        self.last = written.map(|n| (town.clone(), n, at));
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_role_draws_only_its_own_values_and_skips_become_chances_to_act() {
        let r = super::super::RoleRanges {
            work_ms: Some((1_000, 2_000)),
            skip_done: Some((0.25, 0.25)),
            forget_pr: Some((1.0, 1.0)),
            crash: Some((0.5, 0.75)),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        let s = role_script(&mut rng, &r);
        assert_eq!((s.work_ms, s.p_done, s.p_open_pr), (Some((1_000, 2_000)), Some(0.75), Some(0.0)));
        assert!(s.p_crash.is_some_and(|p| (0.5..=0.75).contains(&p)), "{:?}", s.p_crash);
        assert_eq!((s.start_ms, s.p_hang, s.p_done_twice, s.p_request_changes), (None, None, None, None));
        let mut untouched = StdRng::seed_from_u64(3);
        let _ = role_script(&mut untouched, &super::super::RoleRanges::default());
        assert_eq!(untouched.random::<u64>(), StdRng::seed_from_u64(3).random::<u64>(), "no table, no draw");
    }

    #[test]
    fn a_panicking_seed_is_reported_as_its_own_failure() {
        let opts = RunOptions { replay_hint: Some("replay --seed {seed}".into()), ..RunOptions::default() };
        let r = guarded(7, &opts, || panic!("server socket buffer full"));
        assert!(!r.passed);
        assert_eq!(r.replay, "replay --seed 7");
        assert_eq!(r.failures.len(), 1);
        assert_eq!(r.failures[0].invariant, SIMULATOR_PANIC);
        assert!(r.failures[0].detail.contains("server socket buffer full"), "{}", r.failures[0].detail);
        let fine = guarded(8, &opts, || empty_report(8, &opts));
        assert!(fine.failures.is_empty());
    }
}
