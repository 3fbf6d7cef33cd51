//! What a run produces: per-seed outcomes, the per-scenario summary whose
//! JSON shape is a contract (DESIGN.md §7: other tools parse it), and the
//! report files (summary.json, summary.md, JUnit XML, HTML, failing traces).

mod files;
mod html;

pub use files::{write_reports, write_trace};

use crate::world::measure;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One oracle failure of one seed, and the bead counts of a seed: the
/// world's own types, so the report never drifts from what a run produces.
pub use crate::world::{BeadCounts, Failure as SeedFailure};

/// Everything the CLI and reports need from one seed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedOutcome {
    pub seed: u64,
    pub failures: Vec<SeedFailure>,
    pub sim_ms: i64,
    pub wall_us: u64,
    pub ticks: u64,
    /// Wall-clock cost of each tick, µs.
    #[serde(skip)]
    pub tick_wall_us: Vec<u64>,
    pub beads: BeadCounts,
    /// The most agents the town held at once.
    #[serde(default)]
    pub agents: u64,
    pub faults: BTreeMap<String, u64>,
    pub marks: BTreeMap<String, u64>,
    pub trace_hash: String,
    /// Kept when asked (determinism checks, failing seeds' JSONL traces).
    #[serde(skip)]
    pub trace: Vec<String>,
    /// (sim ms, status → count) samples for the bead-states chart.
    #[serde(skip)]
    pub bead_series: Vec<(i64, BTreeMap<String, u64>)>,
    /// (sim ms, fault kind) for the fault timeline chart.
    #[serde(skip)]
    pub fault_events: Vec<(i64, String)>,
}

impl SeedOutcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailureLine {
    pub seed: u64,
    pub invariant: String,
    pub sim_time_ms: i64,
    pub replay: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One scenario's results: DESIGN.md §7's object, plus the raw histogram
/// (`tick_wall_hist`, value → count) so shard reports merge exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioSummary {
    pub name: String,
    pub seeds_run: u64,
    pub seeds_failed: u64,
    pub failures: Vec<FailureLine>,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub ticks: u64,
    pub tick_wall_us: Percentiles,
    pub beads: BeadCounts,
    /// The most agents any seed's town held at once.
    #[serde(default)]
    pub agents_max: u64,
    pub faults: BTreeMap<String, u64>,
    pub marks: BTreeMap<String, u64>,
    /// The seed's trace hash when one seed ran; else a hash over the seeds' hashes in seed order.
    pub trace_hash: String,
    /// Seed → trace hash (what the deterministic baseline compares).
    pub seed_hashes: BTreeMap<u64, String>,
    #[serde(default)]
    pub tick_wall_hist: Vec<(u64, u64)>,
    /// The scenario file, for replay lines.
    #[serde(default)]
    pub file: String,
}

/// The whole `--json` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub scenarios: Vec<ScenarioSummary>,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.scenarios.iter().any(|s| s.seeds_failed > 0)
    }
}

pub fn replay_line(file: &str, seed: u64) -> String {
    format!("gastown-sim replay {file} --seed {seed}")
}

/// The report's percentiles (DESIGN.md §7's shape, without the count) of
/// a histogram the world's `measure` module made.
fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let p = measure::percentiles(h);
    Percentiles { p50: p.p50, p99: p.p99, p999: p.p999, max: p.max }
}

fn combined_hash(hashes: &BTreeMap<u64, String>) -> String {
    if hashes.len() == 1 {
        return hashes.values().next().cloned().unwrap_or_default();
    }
    let mut h = crate::trace::Trace::new(false);
    for (seed, hash) in hashes {
        h.record(0, "seed", &(seed, hash));
    }
    h.hash()
}

impl ScenarioSummary {
    pub fn from_outcomes(name: &str, file: &str, outcomes: &[SeedOutcome]) -> ScenarioSummary {
        let mut hist = measure::new_hist();
        for o in outcomes {
            for &us in &o.tick_wall_us {
                measure::record(&mut hist, us);
            }
        }
        let mut faults = BTreeMap::new();
        let mut marks = BTreeMap::new();
        for o in outcomes {
            for (k, v) in &o.faults {
                *faults.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &o.marks {
                *marks.entry(k.clone()).or_insert(0) += v;
            }
        }
        let failures = outcomes
            .iter()
            .flat_map(|o| {
                o.failures.iter().map(move |f| FailureLine {
                    seed: o.seed,
                    invariant: f.invariant.clone(),
                    sim_time_ms: f.sim_time_ms,
                    replay: replay_line(file, o.seed),
                    detail: f.detail.clone(),
                })
            })
            .collect();
        let seed_hashes: BTreeMap<u64, String> = outcomes.iter().map(|o| (o.seed, o.trace_hash.clone())).collect();
        ScenarioSummary {
            name: name.to_owned(),
            seeds_run: outcomes.len() as u64,
            seeds_failed: outcomes.iter().filter(|o| !o.passed()).count() as u64,
            failures,
            sim_seconds: outcomes.iter().map(|o| o.sim_ms as f64 / 1000.0).sum(),
            wall_seconds: outcomes.iter().map(|o| o.wall_us as f64 / 1e6).sum(),
            ticks: outcomes.iter().map(|o| o.ticks).sum(),
            tick_wall_us: percentiles(&hist),
            beads: BeadCounts {
                created: outcomes.iter().map(|o| o.beads.created).sum(),
                closed: outcomes.iter().map(|o| o.beads.closed).sum(),
                failed: outcomes.iter().map(|o| o.beads.failed).sum(),
            },
            agents_max: outcomes.iter().map(|o| o.agents).max().unwrap_or(0),
            faults,
            marks,
            trace_hash: combined_hash(&seed_hashes),
            seed_hashes,
            tick_wall_hist: measure::raw(&hist),
            file: file.to_owned(),
        }
    }

    /// Combine shard summaries of the same scenario (`gastown-sim merge`).
    pub fn merge(parts: &[ScenarioSummary]) -> Result<ScenarioSummary, String> {
        let first = parts.first().ok_or("nothing to merge")?;
        let mut out = first.clone();
        let mut hist = measure::new_hist();
        for p in parts {
            if p.name != first.name {
                return Err(format!("cannot merge scenario {} with {}", p.name, first.name));
            }
            for &(v, c) in &p.tick_wall_hist {
                let _ = hist.record_n(v.clamp(1, measure::HIST_MAX), c);
            }
        }
        for p in &parts[1..] {
            for seed in p.seed_hashes.keys() {
                if out.seed_hashes.contains_key(seed) {
                    return Err(format!("scenario {}: seed {seed} appears in two shards", p.name));
                }
            }
            out.seeds_run += p.seeds_run;
            out.seeds_failed += p.seeds_failed;
            out.failures.extend(p.failures.iter().cloned());
            out.sim_seconds += p.sim_seconds;
            out.wall_seconds += p.wall_seconds;
            out.ticks += p.ticks;
            out.beads.created += p.beads.created;
            out.beads.closed += p.beads.closed;
            out.beads.failed += p.beads.failed;
            out.agents_max = out.agents_max.max(p.agents_max);
            for (k, v) in &p.faults {
                *out.faults.entry(k.clone()).or_insert(0) += v;
            }
            for (k, v) in &p.marks {
                *out.marks.entry(k.clone()).or_insert(0) += v;
            }
            out.seed_hashes.extend(p.seed_hashes.iter().map(|(k, v)| (*k, v.clone())));
        }
        out.failures.sort_by_key(|f| (f.seed, f.sim_time_ms));
        out.tick_wall_us = percentiles(&hist);
        out.tick_wall_hist = measure::raw(&hist);
        out.trace_hash = combined_hash(&out.seed_hashes);
        Ok(out)
    }

    /// Simulated time over the seeds' own wall time: how many times faster
    /// than real time the simulator ran on one core (DESIGN.md §8 asks for
    /// 1,000×). Zero when nothing was timed.
    pub fn real_time_factor(&self) -> f64 {
        real_time_factor(self.sim_seconds, self.wall_seconds)
    }

    /// The fields that must not change unless behaviour changes: the CI
    /// baseline compares these exactly (no wall-clock figures).
    pub fn deterministic_view(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "seeds_run": self.seeds_run,
            "seeds_failed": self.seeds_failed,
            "ticks": self.ticks,
            "sim_seconds": self.sim_seconds,
            "beads": self.beads,
            "faults": self.faults,
            "marks": self.marks,
            "trace_hash": self.trace_hash,
        })
    }
}

/// Simulated seconds per wall second; zero when no wall time was measured,
/// so an untimed run reads as "not measured" rather than infinitely fast.
pub fn real_time_factor(sim_seconds: f64, wall_seconds: f64) -> f64 {
    if wall_seconds > 0.0 {
        sim_seconds / wall_seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seed: u64, fail: bool, costs: &[u64]) -> SeedOutcome {
        SeedOutcome {
            seed,
            failures: if fail {
                vec![SeedFailure { invariant: "terminal_is_final".into(), detail: "x".into(), sim_time_ms: 5 }]
            } else {
                vec![]
            },
            sim_ms: 1000,
            wall_us: 10,
            ticks: costs.len() as u64,
            tick_wall_us: costs.to_vec(),
            beads: BeadCounts { created: 2, closed: 1, failed: 0 },
            faults: BTreeMap::from([("hard_eviction".to_owned(), 1)]),
            trace_hash: format!("h{seed}"),
            ..SeedOutcome::default()
        }
    }

    #[test]
    fn real_time_factor_is_zero_when_nothing_was_timed() {
        assert_eq!(real_time_factor(7_200.0, 2.0), 3_600.0);
        assert_eq!(real_time_factor(7_200.0, 0.0), 0.0);
        let whole = ScenarioSummary::from_outcomes("x", "x.toml", &[outcome(1, false, &[5])]);
        assert_eq!(whole.real_time_factor(), real_time_factor(whole.sim_seconds, whole.wall_seconds));
    }

    #[test]
    fn shards_together_equal_the_unsharded_run() {
        let all: Vec<_> = (1..=6).map(|s| outcome(s, s == 4, &[s * 10, s * 20])).collect();
        let whole = ScenarioSummary::from_outcomes("x", "x.toml", &all);
        let odd: Vec<_> = all.iter().filter(|o| o.seed % 2 == 1).cloned().collect();
        let even: Vec<_> = all.iter().filter(|o| o.seed % 2 == 0).cloned().collect();
        let merged = ScenarioSummary::merge(&[
            ScenarioSummary::from_outcomes("x", "x.toml", &even),
            ScenarioSummary::from_outcomes("x", "x.toml", &odd),
        ])
        .unwrap();
        assert_eq!(merged.deterministic_view(), whole.deterministic_view());
        assert_eq!(merged.tick_wall_us, whole.tick_wall_us);
        assert_eq!(merged.failures, whole.failures);
        assert_eq!(whole.failures[0].replay, "gastown-sim replay x.toml --seed 4");
        let dup = ScenarioSummary::merge(&[whole.clone(), whole]).unwrap_err();
        assert!(dup.contains("appears in two shards"), "{dup}");
    }

    #[test]
    fn the_json_object_has_the_contract_fields() {
        let s = ScenarioSummary::from_outcomes("x", "x.toml", &[outcome(1, false, &[5])]);
        let v = serde_json::to_value(RunSummary { scenarios: vec![s] }).unwrap();
        let sc = &v["scenarios"][0];
        for k in [
            "name",
            "seeds_run",
            "seeds_failed",
            "failures",
            "sim_seconds",
            "wall_seconds",
            "ticks",
            "tick_wall_us",
            "beads",
            "faults",
            "marks",
            "trace_hash",
        ] {
            assert!(sc.get(k).is_some(), "missing {k}: {sc}");
        }
        for k in ["p50", "p99", "p999", "max"] {
            assert!(sc["tick_wall_us"].get(k).is_some());
        }
        assert_eq!(sc["trace_hash"], "h1", "one seed: its own hash");
    }
}
