//! `gastown-sim`: run the simulator over seeds, replay one, check determinism.

use clap::{Parser, Subcommand};
use gastown_sim::trace::first_difference;
use gastown_sim::{run_seed, SeedResult, SimParams};
use serde_json::json;
use std::process::ExitCode;

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
        println!("{out}");
    } else {
        for r in &results {
            let verdict = if r.failures.is_empty() { "ok" } else { "FAILED" };
            println!(
                "seed {:>4} {verdict:<6} ticks {:>5}  beads {:>3} created {:>3} closed {:>2} failed {:>2} unfinished  trace {}",
                r.seed, r.ticks, r.beads_created, r.beads_closed, r.beads_failed, r.beads_unfinished, r.trace_hash
            );
            for f in r.failures.iter().take(5) {
                println!("    {} at {} ms: {}", f.invariant, f.sim_time_ms, f.detail);
            }
            if !r.failures.is_empty() {
                println!("    replay: gastown-sim replay --seed {} --hours {}", r.seed, w.hours);
            }
        }
        println!("{} passed, {} failed", results.len() - failed.len(), failed.len());
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
    println!("seed {seed} trace {} ({} ticks, {} failures)", a.trace_hash, a.ticks, a.failures.len());
    if check {
        let b = match one(seed, &p) {
            Ok(r) => r,
            Err(code) => return code,
        };
        if let Some((i, x, y)) = first_difference(&a.trace, &b.trace) {
            println!(
                "NOT deterministic: record {i} differs\n  first:  {}\n  second: {}",
                x.unwrap_or("<end>"),
                y.unwrap_or("<end>")
            );
            return ExitCode::from(1);
        }
        println!("deterministic: {} records identical", a.trace.len());
    }
    if a.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
