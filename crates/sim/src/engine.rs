//! Runs one seed of a scenario and reports a [`SeedOutcome`]. The seam
//! between the scenario layer (files, CLI, reports) and the simulation that
//! executes it.

use crate::report::{BeadCounts, SeedFailure, SeedOutcome};
use crate::scenario::{Dur, Range, Scenario};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// Per-seed sampling of a scenario's ranges: one RNG per seed, drawn in a
/// fixed order, so a seed always gets the same mix.
pub struct Sampler {
    rng: StdRng,
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        // A distinct stream from the simulation's own use of the seed.
        Sampler { rng: StdRng::seed_from_u64(seed ^ 0x5ca1_ab1e_0000_0000) }
    }
    pub fn f64(&mut self, r: Range<f64>) -> f64 {
        if r.hi > r.lo {
            self.rng.random_range(r.lo..=r.hi)
        } else {
            r.lo
        }
    }
    pub fn dur(&mut self, r: Range<Dur>) -> Dur {
        if r.hi > r.lo {
            Dur(self.rng.random_range(r.lo.ms()..=r.hi.ms()))
        } else {
            r.lo
        }
    }
}

/// Run `seed` of `sc`. `keep_trace` keeps every trace record (for
/// determinism diffs and failing-seed traces).
pub fn run_scenario_seed(sc: &Scenario, seed: u64, keep_trace: bool) -> Result<SeedOutcome, String> {
    let mut s = Sampler::new(seed);
    let work = s.dur(sc.agents.work_time);
    let work_hi = s.dur(Range { lo: work, hi: sc.agents.work_time.hi });
    let params = crate::driver::SimParams {
        hours: sc.run.duration.ms() as f64 / 3_600_000.0,
        issues_per_hour: sc.workload.issues.as_ref().map_or(6.0, |a| a.per_hour),
        convoy_fraction: if sc.workload.convoys.is_empty() { 0.0 } else { 0.2 },
        work_minutes: ((work.ms() / 60_000).max(1) as i64, (work_hi.ms() / 60_000).max(1) as i64),
        start_failure_rate: s.f64(sc.agents.start_failure.0),
        hang_rate: s.f64(sc.agents.hang.0),
        keep_trace,
        ..crate::driver::SimParams::default()
    };
    let r = crate::driver::run_seed(seed, &params).map_err(|e| format!("seed {seed}: {e}"))?;
    let mut failures: Vec<SeedFailure> = r
        .failures
        .iter()
        .map(|f| SeedFailure { invariant: f.invariant.clone(), detail: f.detail.clone(), sim_time_ms: f.sim_time_ms })
        .collect();
    let expect = &sc.expect;
    let finished = r.beads_closed + r.beads_failed;
    if expect.min_closed_fraction > 0.0 && r.beads_created > 0 {
        let frac = r.beads_closed as f64 / r.beads_created as f64;
        if frac < expect.min_closed_fraction {
            failures.push(SeedFailure {
                invariant: "min_closed_fraction".into(),
                detail: format!(
                    "{} of {} beads closed ({frac:.2} < {})",
                    r.beads_closed, r.beads_created, expect.min_closed_fraction
                ),
                sim_time_ms: (r.sim_seconds * 1000.0) as i64,
            });
        }
    }
    if !expect.liveness {
        failures.retain(|f| f.invariant != "liveness");
    }
    let _ = finished;
    Ok(SeedOutcome {
        seed,
        failures,
        sim_ms: (r.sim_seconds * 1000.0) as i64,
        wall_us: 0,
        ticks: r.ticks,
        tick_wall_us: Vec::new(),
        beads: BeadCounts { created: r.beads_created, closed: r.beads_closed, failed: r.beads_failed },
        faults: BTreeMap::new(),
        marks: BTreeMap::new(),
        trace_hash: r.trace_hash,
        trace: r.trace,
        bead_series: Vec::new(),
        fault_events: Vec::new(),
    })
}
