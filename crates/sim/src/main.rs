//! `gastown-sim`: run the simulator over seeds, replay one, check determinism.

use clap::{Parser, Subcommand};
use gastown_sim::trace::first_difference;
use gastown_sim::{run_seed, SeedResult, SimParams};
use serde_json::json;
use std::process::ExitCode;

/// Print a line; a closed pipe (`| head`) ends the output quietly instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[derive(Parser)]
#[command(name = "gastown-sim", version, about = "Deterministic simulator for the Gastown control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Workload {
    /// Simulated hours per seed.
    #[arg(long, default_value_t = 2.0, value_parser = positive)]
    hours: f64,
    /// Work arrivals per simulated hour.
    #[arg(long, default_value_t = 12.0, value_parser = positive)]
    issues_per_hour: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeds of the built-in workload; exit 1 if any seed violates an invariant.
    Run {
        /// How many seeds (1..=N) to run.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        /// Run only this seed.
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        workload: Workload,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure reconciler tick latency on generated towns; write bench.md and bench.json.
    TickLatency {
        /// Samples per metric per town (after a warm-up).
        #[arg(long, default_value_t = gastown_sim::bench::default_ticks())]
        ticks: u64,
        /// Town shapes to measure: S, M, M+history, L.
        #[arg(long, value_delimiter = ',', default_value = "S,M,M+history,L")]
        towns: Vec<String>,
        /// Storages: memory, wal.
        #[arg(long, value_delimiter = ',', default_value = "memory,wal")]
        storage: Vec<String>,
        /// Where bench.md and bench.json go.
        #[arg(long, default_value = "reports")]
        out_dir: std::path::PathBuf,
        /// Compare p99s with this earlier bench.json; exit 1 on a regression.
        #[arg(long)]
        baseline: Option<std::path::PathBuf>,
        /// Allowed p99 growth over the baseline (0.10 = +10%).
        #[arg(long, default_value_t = 0.10)]
        max_regression: f64,
    },
    /// Re-run one seed and print its trace hash.
    Replay {
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        workload: Workload,
        /// Run the seed twice and name the first trace record that differs.
        #[arg(long)]
        check_determinism: bool,
    },
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

fn params(w: &Workload, keep_trace: bool) -> SimParams {
    SimParams { hours: w.hours, issues_per_hour: w.issues_per_hour, keep_trace, ..SimParams::default() }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { seeds, seed, workload, json } => run(seeds, seed, &workload, json),
        Command::Replay { seed, workload, check_determinism } => replay(seed, &workload, check_determinism),
        Command::TickLatency { ticks, towns, storage, out_dir, baseline, max_regression } => {
            tick_latency(ticks, &towns, &storage, &out_dir, baseline.as_deref(), max_regression)
        }
    }
}

fn one(seed: u64, p: &SimParams) -> Result<SeedResult, ExitCode> {
    run_seed(seed, p).map_err(|e| {
        eprintln!("seed {seed}: the simulation could not run: {e}");
        ExitCode::from(2)
    })
}

fn run(seeds: u64, seed: Option<u64>, w: &Workload, as_json: bool) -> ExitCode {
    let p = params(w, false);
    let list: Vec<u64> = match seed {
        Some(s) => vec![s],
        None => (1..=seeds).collect(),
    };
    let mut results = Vec::new();
    for s in &list {
        match one(*s, &p) {
            Ok(r) => results.push(r),
            Err(code) => return code,
        }
    }
    let failed: Vec<&SeedResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    let sum = |f: fn(&SeedResult) -> u64| results.iter().map(f).sum::<u64>();
    if as_json {
        let failures: Vec<_> = failed
            .iter()
            .flat_map(|r| {
                r.failures.iter().map(move |f| {
                    json!({ "seed": r.seed, "invariant": f.invariant, "detail": f.detail, "sim_time_ms": f.sim_time_ms,
                            "replay": format!("gastown-sim replay --seed {} --hours {}", r.seed, w.hours) })
                })
            })
            .collect();
        let mut out = json!({
            "seeds_run": results.len(), "seeds_failed": failed.len(), "failures": failures,
            "sim_seconds": results.iter().map(|r| r.sim_seconds).sum::<f64>(), "ticks": sum(|r| r.ticks),
            "beads": { "created": sum(|r| r.beads_created), "closed": sum(|r| r.beads_closed), "failed": sum(|r| r.beads_failed),
                       "unfinished": sum(|r| r.beads_unfinished) },
        });
        if results.len() == 1 {
            out["trace_hash"] = json!(results[0].trace_hash);
        }
        out!("{out}");
    } else {
        for r in &results {
            let verdict = if r.failures.is_empty() { "ok" } else { "FAILED" };
            out!(
                "seed {:>4} {verdict:<6} ticks {:>5}  beads {:>3} created {:>3} closed {:>2} failed {:>2} unfinished  trace {}",
                r.seed, r.ticks, r.beads_created, r.beads_closed, r.beads_failed, r.beads_unfinished, r.trace_hash
            );
            for f in r.failures.iter().take(5) {
                out!("    {} at {} ms: {}", f.invariant, f.sim_time_ms, f.detail);
            }
            if !r.failures.is_empty() {
                out!("    replay: gastown-sim replay --seed {} --hours {}", r.seed, w.hours);
            }
        }
        out!("{} passed, {} failed", results.len() - failed.len(), failed.len());
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn replay(seed: u64, w: &Workload, check: bool) -> ExitCode {
    let p = params(w, check);
    let a = match one(seed, &p) {
        Ok(r) => r,
        Err(code) => return code,
    };
    out!("seed {seed} trace {} ({} ticks, {} failures)", a.trace_hash, a.ticks, a.failures.len());
    if check {
        let b = match one(seed, &p) {
            Ok(r) => r,
            Err(code) => return code,
        };
        if let Some((i, x, y)) = first_difference(&a.trace, &b.trace) {
            out!(
                "NOT deterministic: record {i} differs\n  first:  {}\n  second: {}",
                x.unwrap_or("<end>"),
                y.unwrap_or("<end>")
            );
            return ExitCode::from(1);
        }
        out!("deterministic: {} records identical", a.trace.len());
    }
    if a.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn tick_latency(
    ticks: u64,
    towns: &[String],
    storages: &[String],
    out_dir: &std::path::Path,
    baseline: Option<&std::path::Path>,
    max_regression: f64,
) -> ExitCode {
    use gastown::generate::TownShape;
    use gastown_sim::bench;
    let mut shapes = Vec::new();
    for t in towns {
        match TownShape::by_name(t) {
            Some(s) => shapes.push(s),
            None => {
                eprintln!("unknown town `{t}`: expected one of S, M, M+history, L");
                return ExitCode::from(2);
            }
        }
    }
    for s in storages {
        if s != "memory" && s != "wal" {
            eprintln!("unknown storage `{s}`: expected memory or wal");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = std::fs::create_dir_all(out_dir) {
        eprintln!("cannot create {}: {e}", out_dir.display());
        return ExitCode::from(2);
    }
    let old = match baseline.map(std::fs::read_to_string) {
        None => None,
        Some(Ok(text)) => match serde_json::from_str::<bench::BenchReport>(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("baseline {}: not a bench.json: {e}", baseline.unwrap_or(out_dir).display());
                return ExitCode::from(2);
            }
        },
        Some(Err(e)) => {
            eprintln!("baseline {}: {e}", baseline.unwrap_or(out_dir).display());
            return ExitCode::from(2);
        }
    };
    let mut measurements = Vec::new();
    for shape in &shapes {
        for storage in storages {
            eprintln!("measuring {} on {storage} ({ticks} ticks)...", shape.name);
            let wal_dir = (storage == "wal").then_some(out_dir);
            match bench::measure(shape, wal_dir, ticks, 1) {
                Ok(m) => {
                    eprintln!(
                        "  full tick p50 {:.1} µs p99 {:.1} µs; reconcile p99 {:.1} µs",
                        m.full_tick.p50_us, m.full_tick.p99_us, m.reconcile.p99_us
                    );
                    measurements.push(m);
                }
                Err(e) => {
                    eprintln!("measuring {} failed: {e}", shape.name);
                    return ExitCode::from(2);
                }
            }
        }
    }
    let command = format!("gastown-sim {}", std::env::args().skip(1).collect::<Vec<_>>().join(" "));
    let report =
        bench::BenchReport { command, machine: bench::machine_description(), ticks_per_town: ticks, measurements };
    let md = bench::markdown(&report);
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    for (name, body) in [("bench.md", &md), ("bench.json", &json)] {
        if let Err(e) = std::fs::write(out_dir.join(name), body) {
            eprintln!("cannot write {name}: {e}");
            return ExitCode::from(2);
        }
    }
    out!("{md}");
    if let Some(old) = old {
        let regressions = bench::regressions(&report, &old, max_regression);
        if !regressions.is_empty() {
            out!("REGRESSIONS above +{:.0}%:", max_regression * 100.0);
            for r in &regressions {
                out!("  {r}");
            }
            return ExitCode::from(1);
        }
        out!("no p99 regression above +{:.0}% against the baseline", max_regression * 100.0);
    }
    ExitCode::SUCCESS
}
