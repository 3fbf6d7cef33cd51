//! `gastown-world`: run the networked world directly (the library API
//! `gastown_sim::world::run_seed`), without a scenario file. For the world's
//! own development, replay lines and speed measurements; scenario files go
//! through `gastown-sim`.
//!
//! ```text
//! gastown-world [--config FILE.json] [--seed S | --seeds N] [--hours H] [--check-determinism] [--json]
//! ```

// The allocator the simulator and the tick benchmark run on, so the figures
// they report are this binary's (ARCHITECTURE.md, "What a seed costs").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use gastown_sim::world::{run_seed, RunOptions, WorldConfig};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    if !gastown_sim::TOKIO_SEEDED {
        eprintln!("{}", gastown_sim::TOKIO_UNSEEDED_WARNING);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = WorldConfig::smoke();
    let (mut first, mut count, mut check, mut json) = (1u64, 1u64, false, false);
    let mut config_arg = String::new();
    let mut i = 0;
    while i < args.len() {
        let val = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--config" => {
                config_arg = val.clone();
                match std::fs::read_to_string(&val)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
                {
                    Ok(c) => cfg = c,
                    Err(e) => {
                        eprintln!("--config {val}: {e}");
                        return ExitCode::from(2);
                    }
                }
                i += 1;
            }
            "--seed" => {
                first = val.parse().unwrap_or(1);
                count = 1;
                i += 1;
            }
            "--seeds" => {
                count = val.parse().unwrap_or(1);
                i += 1;
            }
            "--hours" => {
                let h: f64 = val.parse().unwrap_or(1.0);
                cfg.duration_ms = (h * 3_600_000.0) as u64;
                i += 1;
            }
            "--check-determinism" => check = true,
            "--json" => json = true,
            "--print-config" => {
                println!("{}", serde_json::to_string_pretty(&cfg).unwrap_or_default());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}");
                return ExitCode::from(2);
            }
        }
        i += 1;
    }
    let hint = if config_arg.is_empty() {
        "cargo run --release -p gastown-sim --bin gastown-world -- --seed {seed}".to_owned()
    } else {
        format!("cargo run --release -p gastown-sim --bin gastown-world -- --config {config_arg} --seed {{seed}}")
    };
    let opts = RunOptions { keep_trace: check, replay_hint: Some(hint), ..RunOptions::default() };
    let mut failed = false;
    let mut out = std::io::stdout();
    for seed in first..first + count {
        let r = run_seed(&cfg, seed, &opts);
        if check {
            let again = run_seed(&cfg, seed, &opts);
            if let Some((i, a, b)) = gastown_sim::trace::first_difference(&r.trace, &again.trace) {
                let _ = writeln!(out, "seed {seed}: NONDETERMINISTIC at record {i}:\n  {a:?}\n  {b:?}");
                failed = true;
            } else {
                let _ = writeln!(out, "seed {seed}: deterministic ({} records, hash {})", r.trace.len(), r.trace_hash);
            }
        }
        if json {
            let mut r = r.clone();
            r.trace.clear();
            let _ = writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
        } else {
            let _ = writeln!(
                out,
                "seed {seed}: {} sim {:.1} h in {:.2} s ({:.0}x), {} ticks, {} steps, issues {}/{} closed ({} failed), {} agents, tick p50/p99 {}/{} µs, faults {:?}",
                if r.passed { "PASS" } else { "FAIL" },
                r.sim_ms as f64 / 3_600_000.0,
                r.wall_us as f64 / 1e6,
                r.speedup(),
                r.ticks,
                r.steps,
                r.beads.closed,
                r.beads.created,
                r.beads.failed,
                r.agents,
                r.tick_wall_us.p50,
                r.tick_wall_us.p99,
                r.faults
            );
            for f in &r.failures {
                let _ = writeln!(out, "  {} at {} ms: {}", f.invariant, f.sim_time_ms, f.detail);
            }
            if !r.passed {
                let _ = writeln!(out, "  replay: {}", r.replay);
            }
        }
        failed |= !r.passed;
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
