//! Runs one seed of a scenario in the world and reports a [`SeedOutcome`]:
//! the seam between the scenario layer (files, CLI, reports) and the
//! simulation (`crate::world`).

use crate::report::{BeadCounts, SeedFailure, SeedOutcome};
use crate::scenario::{ConvoyMergeMode, ConvoyShape, Dur, MergeStrategy, Prob, Range, RoleAgents, Scenario};
use crate::world::{self, RunOptions, WorldConfig};
use gastown::model::AgentRole;

fn ms(r: Range<Dur>) -> (u64, u64) {
    (r.lo.ms(), r.hi.ms())
}

fn mode(m: ConvoyMergeMode) -> world::ConvoyMergeMode {
    match m {
        ConvoyMergeMode::ReviewThenLand => world::ConvoyMergeMode::ReviewThenLand,
        ConvoyMergeMode::ReviewAndMerge => world::ConvoyMergeMode::ReviewAndMerge,
    }
}

fn role_ranges(r: &RoleAgents) -> world::RoleRanges {
    let p = |x: Option<Prob>| x.map(|x| (x.0.lo, x.0.hi));
    world::RoleRanges {
        work_ms: r.work_time.map(ms),
        start_ms: r.start_time.map(ms),
        forget_pr: p(r.forget_pr),
        skip_done: p(r.skip_done),
        done_twice: p(r.done_twice),
        crash: p(r.crash),
        hang: p(r.hang),
        start_failure: p(r.start_failure),
        request_changes: p(r.request_changes),
    }
}

/// The world a scenario describes (ranges stay ranges: the world samples them per seed).
pub fn world_config(sc: &Scenario) -> WorldConfig {
    let mut w = WorldConfig {
        duration_ms: sc.run.duration.ms(),
        heal_at_ms: sc.run.heal_at.map(Dur::ms),
        converge_within_ms: sc.run.converge_within.ms(),
        ..WorldConfig::default()
    };
    let t = &sc.town;
    w.town = world::TownSettings {
        rigs: t.rigs,
        merge_strategy: match t.merge_strategy {
            MergeStrategy::Direct => world::MergeStrategy::Direct,
            MergeStrategy::Pr => world::MergeStrategy::Pr,
        },
        code_review: t.code_review,
        auto_merge_delay_minutes: Some(t.auto_merge_delay_minutes),
        convoy_merge_mode: mode(t.convoy_merge_mode),
        auto_resolve: t.auto_resolve,
        require_review: t.require_review,
    };
    let wl = &sc.workload;
    w.workload = world::Workload {
        issues: wl.issues.as_ref().map_or(0, |a| a.count),
        issues_per_hour: wl.issues.as_ref().map_or(1.0, |a| a.per_hour),
        convoys: wl
            .convoys
            .iter()
            .map(|c| world::ConvoyPlan {
                tasks: c.tasks,
                shape: match c.shape {
                    ConvoyShape::Chain => world::ConvoyShape::Chain,
                    ConvoyShape::Diamond => world::ConvoyShape::Diamond,
                    ConvoyShape::FanOut => world::ConvoyShape::FanOut,
                    ConvoyShape::Independent => world::ConvoyShape::Independent,
                },
                merge_mode: c.merge_mode.map(mode),
                start_after_ms: c.start_after.map(Dur::ms),
                at_ms: c.at.map(Dur::ms),
            })
            .collect(),
        mayor_messages_per_hour: wl.mayor_messages.as_ref().map_or(0.0, |m| m.per_hour),
        reset_agent_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.reset_agent_per_hour),
        close_bead_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.close_bead_per_hour),
        close_escalation_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.close_escalation_per_hour),
        adopt_pr_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.adopt_pr_per_hour),
        delete_bead_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.delete_bead_per_hour),
        reassign_bead_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.reassign_bead_per_hour),
        assign_bead_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.assign_bead_per_hour),
        resolve_triage_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.resolve_triage_per_hour),
        acknowledge_escalation_per_hour: wl.user_actions.as_ref().map_or(0.0, |u| u.acknowledge_escalation_per_hour),
    };
    let a = &sc.agents;
    let p = |x: crate::scenario::Prob| (x.0.lo, x.0.hi);
    w.agents = world::AgentRanges {
        work_ms: ms(a.work_time),
        start_ms: ms(a.start_time),
        forget_pr: p(a.forget_pr),
        skip_done: p(a.skip_done),
        done_twice: p(a.done_twice),
        crash: p(a.crash),
        hang: p(a.hang),
        silent_hang: p(a.silent_hang),
        stop_hangs: p(a.stop_hangs),
        start_failure: p(a.start_failure),
        request_changes: p(a.request_changes),
        roles: [(AgentRole::Polecat, &a.polecat), (AgentRole::Refinery, &a.refinery), (AgentRole::Mayor, &a.mayor)]
            .into_iter()
            .filter_map(|(role, r)| r.as_ref().map(|r| (role, role_ranges(r))))
            .collect(),
    };
    let pe = &sc.people;
    let d = world::People::default();
    w.people = world::People {
        ci_ms: pe.ci_time.map_or(d.ci_ms, ms),
        ci_failure: pe.ci_failure.map_or(d.ci_failure, p),
        approve_ms: pe.approve_time.map_or(d.approve_ms, ms),
        resolve_thread_ms: pe.resolve_thread_time.map_or(d.resolve_thread_ms, ms),
    };
    let f = &sc.faults;
    let df = world::FaultRanges::default();
    w.faults = world::FaultRanges {
        rates: f.rates.iter().map(|(k, r)| (k.clone(), (r.0.lo, r.0.hi))).collect(),
        restart_delay_ms: f.restart_delay.map_or(df.restart_delay_ms, ms),
        partition_ms: f.partition_length.map_or(df.partition_ms, ms),
        latency_ms: f.latency_ms.map_or(df.latency_ms, |r| (r.lo, r.hi)),
    };
    w.timeline = sc
        .timeline
        .iter()
        .map(|t| world::TimelineEntry {
            at_ms: t.at.ms(),
            fault: t.fault.clone(),
            between: t.between.clone().map(|[a, b]| (a, b)),
            for_ms: t.lasts.map(Dur::ms),
        })
        .collect();
    let e = &sc.expect;
    w.expect = world::Expect {
        invariants: match &e.invariants {
            crate::scenario::InvariantSet::Keyword(_) => Vec::new(),
            crate::scenario::InvariantSet::List(l) => l.clone(),
        },
        liveness: e.liveness,
        min_closed_fraction: e.min_closed_fraction,
        max_event_latency_p99_ms: e.max_event_latency_p99.map(Dur::ms),
    };
    w
}

/// Run `seed` of `sc`. `keep_trace` keeps every trace record (for
/// determinism diffs and failing-seed traces).
pub fn run_scenario_seed(sc: &Scenario, seed: u64, keep_trace: bool) -> Result<SeedOutcome, String> {
    run_world_seed(&world_config(sc), seed, keep_trace, &sc.name)
}

pub fn run_world_seed(cfg: &WorldConfig, seed: u64, keep_trace: bool, name: &str) -> Result<SeedOutcome, String> {
    cfg.validate().map_err(|e| format!("{name}: {e}"))?;
    let opts = RunOptions { keep_trace, ..RunOptions::default() };
    let r = world::run_seed(cfg, seed, &opts);
    let tick_wall_us = r.tick_wall_hist.iter().flat_map(|&(v, c)| std::iter::repeat_n(v, c as usize)).collect();
    Ok(SeedOutcome {
        seed,
        failures: r
            .failures
            .iter()
            .map(|f| {
                // A liveness failure carries the agents' state: the diagnosis needs both sides.
                let agents: Vec<&str> =
                    r.stuck.iter().filter(|l| l.starts_with("agent ")).map(String::as_str).collect();
                let detail = if f.invariant == "liveness" && !agents.is_empty() {
                    format!("{} | {}", f.detail, agents.join("; "))
                } else {
                    f.detail.clone()
                };
                SeedFailure { invariant: f.invariant.clone(), detail, sim_time_ms: f.sim_time_ms }
            })
            .collect(),
        sim_ms: i64::try_from(r.sim_ms).unwrap_or(i64::MAX),
        wall_us: r.wall_us,
        ticks: r.ticks,
        tick_wall_us,
        beads: BeadCounts { created: r.beads.created, closed: r.beads.closed, failed: r.beads.failed },
        agents: r.agents,
        faults: r.faults,
        marks: r.marks,
        trace_hash: r.trace_hash,
        trace: r.trace,
        bead_series: r.bead_series.into_iter().map(|(t, m)| (i64::try_from(t).unwrap_or(i64::MAX), m)).collect(),
        fault_events: r.fault_events.into_iter().map(|(t, k)| (i64::try_from(t).unwrap_or(i64::MAX), k)).collect(),
    })
}
