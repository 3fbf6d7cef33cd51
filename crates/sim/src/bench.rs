//! Tick-latency measurement over generated towns: the full tick (drain
//! events, snapshot, reconcile, apply; effects excluded), the snapshot load
//! and the pure reconcile step, each as an hdrhistogram of wall-clock time.
//!
//! Wall-clock readings here never feed back into the town: each measured tick
//! is a `plan_tick`, which runs phases 0 and 1 and rolls them back, so every
//! sample sees the same state.

use gastown::generate::{self, Storage, TownShape};
use gastown::town::reconciler::reconcile;
use gastown::town::snapshot::TownSnapshot;
use gastown::TownError;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub samples: u64,
}

impl Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            samples: h.len(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub town: String,
    pub storage: String,
    pub live_beads: usize,
    pub agents: usize,
    pub history_beads: usize,
    pub actions_per_tick: usize,
    pub full_tick: Percentiles,
    pub snapshot_load: Percentiles,
    pub reconcile: Percentiles,
}

fn histogram() -> Histogram<u64> {
    // 1 ns .. 10 s at 3 significant digits.
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

/// Time one call. The only wall-clock read in the simulator crate: it measures,
/// it never decides anything.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = std::time::Instant::now();
    let out = f();
    (out, start.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, 10_000_000_000));
}

/// Measure one town shape on one storage with `ticks` samples per metric.
pub fn measure(shape: &TownShape, wal_dir: Option<&Path>, ticks: u64, seed: u64) -> Result<Measurement, TownError> {
    let path = wal_dir.map(|d| d.join(format!("bench-{}.db", shape.name.replace('+', "-"))));
    let storage = match &path {
        Some(p) => Storage::WalFile(p),
        None => Storage::Memory,
    };
    let (mut town, _clock) = generate::build(shape, storage, seed)?;
    let warmup = (ticks / 20).max(10);
    let mut full = histogram();
    let mut actions = 0;
    for i in 0..warmup + ticks {
        let (report, ns) = timed(|| town.plan_tick());
        let report = report?;
        if i >= warmup {
            record(&mut full, ns);
            actions = report.actions.len();
        }
    }
    let mut load = histogram();
    for _ in 0..ticks {
        let (snap, ns) = timed(|| town.dry_run(|cx, cfg, _| TownSnapshot::load(cx.conn, cx.now, false, cfg)));
        snap?;
        record(&mut load, ns);
    }
    let snapshot = town.dry_run(|cx, cfg, _| TownSnapshot::load(cx.conn, cx.now, false, cfg))?;
    let mut pure = histogram();
    for _ in 0..warmup + ticks {
        let (out, ns) = timed(|| reconcile(&snapshot));
        std::hint::black_box(out);
        record(&mut pure, ns);
    }
    drop(town);
    if let Some(p) = &path {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
    }
    Ok(Measurement {
        town: shape.name.to_owned(),
        storage: if wal_dir.is_some() { "wal-file" } else { "memory" }.to_owned(),
        live_beads: shape.live_beads(),
        agents: shape.agents(),
        history_beads: shape.history,
        actions_per_tick: actions,
        full_tick: Percentiles::from(&full),
        snapshot_load: Percentiles::from(&load),
        reconcile: Percentiles::from(&pure),
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub command: String,
    pub machine: String,
    pub ticks_per_town: u64,
    pub measurements: Vec<Measurement>,
}

/// A line describing the machine: CPU model, cores, compiler.
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {rustc}, release build")
}

fn find<'a>(r: &'a BenchReport, town: &str, storage: &str) -> Option<&'a Measurement> {
    r.measurements.iter().find(|m| m.town == town && m.storage == storage)
}

/// The DESIGN.md §8 targets, each with its verdict.
pub fn target_lines(r: &BenchReport) -> Vec<String> {
    let mut out = Vec::new();
    for storage in ["memory", "wal-file"] {
        let (Some(m), mh) = (find(r, "M", storage), find(r, "M+history", storage)) else { continue };
        let ok = |b: bool| if b { "met" } else { "MISSED" };
        out.push(format!(
            "- {storage}: full tick at M p99 = {:.1} µs (target ≤ 1,000 µs): {}",
            m.full_tick.p99_us,
            ok(m.full_tick.p99_us <= 1000.0)
        ));
        out.push(format!(
            "- {storage}: pure reconcile at M p99 = {:.1} µs (target ≤ 100 µs): {}",
            m.reconcile.p99_us,
            ok(m.reconcile.p99_us <= 100.0)
        ));
        if let Some(h) = mh {
            let ratio = h.full_tick.p50_us / m.full_tick.p50_us;
            let ratio99 = h.full_tick.p99_us / m.full_tick.p99_us;
            out.push(format!(
                "- {storage}: M+history / M full tick = {ratio:.2}× at p50, {ratio99:.2}× at p99 (target ≤ 1.2×): {}",
                ok(ratio <= 1.2)
            ));
        }
    }
    out
}

pub fn markdown(r: &BenchReport) -> String {
    let mut s = String::new();
    s.push_str("# Reconciler tick latency\n\n");
    s.push_str(&format!("Measured with `{}` on {}.\n\n", r.command, r.machine));
    s.push_str(&format!(
        "Each town is generated deterministically (`gastown::generate`), then measured for {} samples per metric \
         after a warm-up. A *full tick* is phases 0 and 1 (drain the pending events, load the snapshot, reconcile, \
         apply every action) inside a transaction that is rolled back, so every sample sees the same state; effects \
         are excluded. *Snapshot* is the bulk load alone, *reconcile* the pure function on a loaded snapshot. \
         Wall-clock times in microseconds from hdrhistogram (3 significant digits).\n\n",
        r.ticks_per_town
    ));
    s.push_str("| town | storage | live beads | agents | history | actions/tick | full p50 | full p99 | full p99.9 | full max | snapshot p50 | snapshot p99 | reconcile p50 | reconcile p99 | reconcile p99.9 |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.measurements {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            m.town,
            m.storage,
            m.live_beads,
            m.agents,
            m.history_beads,
            m.actions_per_tick,
            m.full_tick.p50_us,
            m.full_tick.p99_us,
            m.full_tick.p999_us,
            m.full_tick.max_us,
            m.snapshot_load.p50_us,
            m.snapshot_load.p99_us,
            m.reconcile.p50_us,
            m.reconcile.p99_us,
            m.reconcile.p999_us
        ));
    }
    s.push_str("\n## Targets (DESIGN.md §8)\n\n");
    for l in target_lines(r) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// Compare p99s against a baseline; one line per regression above `threshold` (0.10 = +10%).
pub fn regressions(current: &BenchReport, baseline: &BenchReport, threshold: f64) -> Vec<String> {
    let mut out = Vec::new();
    for b in &baseline.measurements {
        let Some(c) = find(current, &b.town, &b.storage) else {
            out.push(format!("{} / {}: in the baseline but not measured now", b.town, b.storage));
            continue;
        };
        for (metric, now, then) in [
            ("full tick p99", c.full_tick.p99_us, b.full_tick.p99_us),
            ("snapshot p99", c.snapshot_load.p99_us, b.snapshot_load.p99_us),
            ("reconcile p99", c.reconcile.p99_us, b.reconcile.p99_us),
        ] {
            if then > 0.0 && now > then * (1.0 + threshold) {
                out.push(format!(
                    "{} / {}: {metric} {now:.1} µs vs baseline {then:.1} µs (+{:.0}%)",
                    b.town,
                    b.storage,
                    (now / then - 1.0) * 100.0
                ));
            }
        }
    }
    out
}

pub fn default_ticks() -> u64 {
    10_000
}
