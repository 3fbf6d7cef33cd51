//! `gastown-sim`: run the simulator over seeds, replay one, check determinism.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Print a line; a closed pipe (`| head`) ends the output quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

// The reconciler's queries build and drop SQLite's temporary tables every
// tick; glibc's allocator hands that memory back to the kernel and faults it
// in again each time (a fifth of a long run's CPU in `perf`). mimalloc keeps it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod hunt;
mod progress;
mod queue;

#[derive(Parser)]
#[command(name = "gastown-sim", version, about = "Deterministic simulator for the Gastown control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files over seeds. Exit 0 when every seed passed, 1 when any failed, 2 on bad input.
    Run {
        /// Scenario files (TOML).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Seeds 1..=N, or A..=B to resume a sweep (default: each scenario's `run.seeds`).
        #[arg(long, value_name = "N|A..=B")]
        seeds: Option<cli::SeedRange>,
        /// Run only this seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run the K-th of N shards of the seeds (1-based), e.g. `--shard 2/4`.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(u64, u64)>,
        /// Seeds run in parallel (each seed is its own single-threaded simulation).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        /// Print DESIGN.md §7's JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Write summary.json, summary.md, junit.xml, index.html and failing traces here.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Compare the deterministic metrics with this committed baseline; exit 1 on any difference.
        #[arg(long, conflicts_with = "write_baseline")]
        baseline: Option<PathBuf>,
        /// Write the deterministic metrics as the new baseline (an intended behaviour change).
        #[arg(long)]
        write_baseline: Option<PathBuf>,
        /// When stdout is not a terminal: a progress line on stderr at most every SECS seconds, and one
        /// at once for each failing seed (0: none).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        progress_every: u64,
    },
    /// Re-run one seed of a scenario and print its trace hash.
    Replay {
        scenario: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Run the seed twice and name the first trace record that differs.
        #[arg(long)]
        check_determinism: bool,
        /// Write the seed's trace here as JSONL (`{"at_ms", "kind", "body"}` per line), pass or fail.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Switch this catalogued defect on for the run (a `--features defects` build),
        /// to trace how a `defects` hunt caught it.
        #[arg(long)]
        defect: Option<String>,
    },
    /// Validate scenario files without running them.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Reduce a failing seed's scenario to the smallest one that still fails the same invariant.
    Shrink {
        scenario: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Where to write the reduced scenario (default: `<name>-shrunk-seed<S>.toml` beside it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Combine shard reports (summary.json files) into one.
    Merge {
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        report_dir: Option<PathBuf>,
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
    /// Harness power: switch each catalogued historical defect on in turn and run
    /// its scenario until a seed fails. Needs `--features defects`. Exit 1 if any defect escaped.
    Defects {
        /// Hunt only these defects (names from the catalogue, comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Give up on a defect after this many seeds.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
        max_seeds: u64,
        /// Seeds run in parallel.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        /// Where the scenario files are.
        #[arg(long, default_value = "scenarios")]
        scenarios_dir: PathBuf,
        /// Hunt with this scenario file instead of each defect's own (trying a new scenario out).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Print `{"defects": [...]}` instead of text.
        #[arg(long, conflicts_with = "markdown")]
        json: bool,
        /// Print a Markdown table instead of text.
        #[arg(long)]
        markdown: bool,
        /// When stdout is not a terminal: a progress line on stderr at most every SECS seconds (0: none).
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        progress_every: u64,
    },
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let bad = || format!("`{s}` is not a shard K/N with 1 <= K <= N");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (u64, u64) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if !gastown_sim::TOKIO_SEEDED {
        eprintln!("{}", gastown_sim::TOKIO_UNSEEDED_WARNING);
        if let Command::Run { write_baseline: Some(_), .. } = &command {
            eprintln!("refusing to write a baseline from this build");
            return ExitCode::from(2);
        }
    }
    match command {
        Command::Run {
            scenarios,
            seeds,
            seed,
            shard,
            jobs,
            json,
            report_dir,
            baseline,
            write_baseline,
            progress_every,
        } => {
            let outputs = cli::Outputs {
                json,
                report_dir: report_dir.as_deref(),
                baseline: baseline.as_deref(),
                write_baseline: write_baseline.as_deref(),
                progress_every,
            };
            cli::run(&scenarios, cli::SeedChoice { seeds, seed, shard }, jobs as usize, &outputs)
        }
        Command::Replay { scenario, seed, check_determinism, trace, defect } => {
            match defect.as_deref().map(hunt::switch_on).transpose() {
                Ok(_) => cli::replay(&scenario, seed, check_determinism, trace.as_deref()),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Check { scenarios } => cli::check(&scenarios),
        Command::Shrink { scenario, seed, out } => cli::shrink(&scenario, seed, out.as_deref()),
        Command::Merge { reports, json, report_dir } => cli::merge(&reports, json, report_dir.as_deref()),
        Command::Defects { only, max_seeds, jobs, scenarios_dir, scenario, json, markdown, progress_every } => {
            hunt::defects(&hunt::HuntOptions {
                only: &only,
                max_seeds,
                jobs: jobs as usize,
                scenarios_dir: &scenarios_dir,
                scenario: scenario.as_deref(),
                json,
                markdown,
                progress_every,
            })
        }
        Command::TickLatency { ticks, towns, storage, out_dir, baseline, max_regression } => {
            tick_latency(ticks, &towns, &storage, &out_dir, baseline.as_deref(), max_regression)
        }
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
