//! The scenario commands: run, replay, check, shrink, merge.

use crate::progress::{Mode, Progress};
use crate::queue::{on_threads, run_groups, Group};
use gastown_sim::engine::run_scenario_seed;
use gastown_sim::report::{real_time_factor, write_reports, RunSummary, ScenarioSummary, SeedOutcome};
use gastown_sim::scenario::Scenario;
use gastown_sim::trace::first_difference;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

/// The seeds `--seeds` names, both ends included: `N` is `1..=N`, and
/// `A..=B` lets a long sweep resume where it stopped (reports of disjoint
/// ranges merge like shards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

impl std::str::FromStr for SeedRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number =
            |t: &str| t.trim().parse::<u64>().map_err(|_| format!("`{s}` is not a seed count N or a range A..=B"));
        let (first, last) = match s.split_once("..") {
            None => (1, number(s)?),
            Some((a, b)) => match b.strip_prefix('=') {
                Some(b) => (number(a)?, number(b)?),
                // `A..B` reads as exclusive to a Rust user and inclusive to
                // others; refuse it rather than guess.
                None => return Err(format!("`{s}`: write the range with both ends included, as A..=B")),
            },
        };
        if first == 0 || first > last {
            return Err(format!("`{s}`: seeds start at 1 and the range must not be empty"));
        }
        Ok(SeedRange { first, last })
    }
}

pub struct SeedChoice {
    pub seeds: Option<SeedRange>,
    pub seed: Option<u64>,
    pub shard: Option<(u64, u64)>,
}

impl SeedChoice {
    fn list(&self, sc: &Scenario) -> Vec<u64> {
        let all: Vec<u64> = match (self.seed, self.seeds) {
            (Some(s), _) => vec![s],
            (None, Some(r)) => (r.first..=r.last).collect(),
            (None, None) => (1..=u64::from(sc.run.seeds)).collect(),
        };
        match self.shard {
            Some((k, n)) => all.into_iter().filter(|s| (s - 1) % n == k - 1).collect(),
            None => all,
        }
    }
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<Scenario>, ExitCode> {
    let mut out = Vec::new();
    let mut bad = false;
    for p in paths {
        match Scenario::load(p) {
            Ok(s) => out.push(s),
            Err(e) => {
                eprintln!("{e}");
                bad = true;
            }
        }
    }
    if bad {
        Err(ExitCode::from(2))
    } else {
        Ok(out)
    }
}

/// Wall-clock microseconds since `start`: the CLI measures how long seeds
/// take; nothing simulated reads this clock.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub(crate) fn wall_us_since(start: std::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub(crate) fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn run_one(sc: &Scenario, seed: u64, keep_trace: bool) -> Result<SeedOutcome, String> {
    let start = wall_now();
    let mut o = run_scenario_seed(sc, seed, keep_trace)?;
    o.wall_us = wall_us_since(start);
    Ok(o)
}

/// Run `seeds` of `sc` on `jobs` worker threads; outcomes in seed order.
pub(crate) fn run_seeds(
    sc: &Scenario,
    seeds: &[u64],
    jobs: usize,
    progress: &Progress,
) -> Result<Vec<SeedOutcome>, String> {
    let results: Mutex<Vec<Result<SeedOutcome, String>>> = Mutex::new(Vec::new());
    on_threads(seeds, jobs, |&seed| {
        let r = run_one(sc, seed, false);
        progress.seed_done(r.as_ref().ok());
        results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    });
    let mut out = Vec::new();
    for r in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        out.push(r?);
    }
    out.sort_by_key(|o| o.seed);
    Ok(out)
}

pub struct Outputs<'a> {
    pub json: bool,
    pub report_dir: Option<&'a Path>,
    pub baseline: Option<&'a Path>,
    pub write_baseline: Option<&'a Path>,
    /// Off a terminal, a progress line at most this often (0: none).
    pub progress_every: u64,
}

/// Every scenario's seeds on one queue of `jobs` threads; each scenario's
/// line printed (unless `json`) as soon as it and the ones before it are
/// done. Returns the summaries and, when `detail`, each scenario's outcomes
/// for the report directory.
fn run_all(
    scenarios: &[Scenario],
    files: &[String],
    choice: &SeedChoice,
    jobs: usize,
    mode: Mode,
    json: bool,
    detail: bool,
) -> Result<(Vec<ScenarioSummary>, Vec<Vec<SeedOutcome>>), ExitCode> {
    let bars = &indicatif::MultiProgress::new();
    let groups: Vec<Group<'_>> = scenarios
        .iter()
        .zip(files)
        .map(|(sc, file)| {
            let seeds = choice.list(sc);
            let total = seeds.len() as u64;
            Group {
                seeds,
                progress: Box::new(move || {
                    Progress::new(mode, &sc.name, total, format!("gastown-sim replay {file}")).in_group(bars)
                }),
                run: Box::new(move |seed| run_one(sc, seed, false)),
            }
        })
        .collect();
    let mut summaries = Vec::new();
    let mut outcomes_kept = Vec::new();
    let ran = run_groups(&groups, jobs, |g, outcomes| {
        let summary = ScenarioSummary::from_outcomes(&scenarios[g].name, &files[g], &outcomes);
        if !json {
            bars.suspend(|| print_summary(&summary));
        }
        if detail {
            outcomes_kept.push(report_detail(&scenarios[g], &outcomes));
        }
        summaries.push(summary);
    });
    match ran {
        Ok(()) => Ok((summaries, outcomes_kept)),
        Err((g, e)) => {
            eprintln!("{}: the simulation could not run: {e}", files[g]);
            Err(ExitCode::from(2))
        }
    }
}

pub fn run(paths: &[PathBuf], choice: SeedChoice, jobs: usize, outputs: &Outputs<'_>) -> ExitCode {
    let (json, report_dir) = (outputs.json, outputs.report_dir);
    let scenarios = match load_all(paths) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let started = wall_now();
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mode = Mode::choose(json, outputs.progress_every);
    let (summaries, detail) = match run_all(&scenarios, &files, &choice, jobs, mode, json, report_dir.is_some()) {
        Ok(done) => done,
        Err(code) => return code,
    };
    let run = RunSummary { scenarios: summaries };
    if json {
        out!("{}", serde_json::to_string(&run).unwrap_or_default());
    } else if run.scenarios.len() > 1 {
        print_total(&run, wall_us_since(started), jobs);
    }
    if let Some(dir) = report_dir {
        if let Err(e) = write_reports(dir, &run, &detail) {
            eprintln!("cannot write reports to {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = outputs.write_baseline {
        let text = serde_json::to_string_pretty(&baseline_of(&run)).unwrap_or_default() + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        eprintln!("baseline written to {}", path.display());
    }
    let mut failed = run.failed();
    if let Some(path) = outputs.baseline {
        match compare_baseline(path, &run) {
            Ok(diffs) if diffs.is_empty() => eprintln!("baseline {}: deterministic metrics match", path.display()),
            Ok(diffs) => {
                eprintln!("baseline {}: {} difference(s) in deterministic metrics:", path.display(), diffs.len());
                for d in diffs.iter().take(40) {
                    eprintln!("  {d}");
                }
                eprintln!("if the change is intended: gastown-sim run <same args> --write-baseline {}", path.display());
                failed = true;
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Scenario name → its deterministic metrics (no wall-clock figures).
fn baseline_of(run: &RunSummary) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> =
        run.scenarios.iter().map(|s| (s.name.clone(), s.deterministic_view())).collect();
    serde_json::Value::Object(map)
}

/// Every difference between the committed baseline and this run, as lines.
fn compare_baseline(path: &Path, run: &RunSummary) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("baseline {}: cannot read: {e}", path.display()))?;
    let old: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("baseline {}: not JSON: {e}", path.display()))?;
    let new = baseline_of(run);
    let mut diffs = Vec::new();
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Err(format!("baseline {}: expected an object of scenarios", path.display()));
    };
    for (name, now) in new {
        match old.get(name) {
            None => diffs.push(format!("{name}: not in the baseline")),
            Some(before) => diff_values(name, before, now, &mut diffs),
        }
    }
    Ok(diffs)
}

fn diff_values(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = serde_json::Value::Null;
                diff_values(&format!("{at}.{k}"), x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(format!("{at}: baseline {a}, now {b}")),
        _ => {}
    }
}

/// For the report: the first seed (for charts) and every failing seed, rerun
/// with their traces kept (runs are deterministic, so the rerun is the run).
fn report_detail(sc: &Scenario, outcomes: &[SeedOutcome]) -> Vec<SeedOutcome> {
    let mut picked: Vec<u64> = outcomes.iter().filter(|o| !o.passed()).map(|o| o.seed).collect();
    if let Some(first) = outcomes.first() {
        if !picked.contains(&first.seed) {
            picked.insert(0, first.seed);
        }
    }
    picked.iter().filter_map(|&s| run_one(sc, s, true).ok()).collect()
}

fn print_summary(s: &ScenarioSummary) {
    let verdict = if s.seeds_failed == 0 { "ok" } else { "FAILED" };
    out!(
        "{:<28} {verdict:<6} {:>4} seeds {:>3} failed  ticks {:>7}  sim {:>6.1} h  beads {} created {} closed {} failed  agents {}  tick p99 {} µs  {:.0}× real time",
        s.name,
        s.seeds_run,
        s.seeds_failed,
        s.ticks,
        s.sim_seconds / 3600.0,
        s.beads.created,
        s.beads.closed,
        s.beads.failed,
        s.agents_max,
        s.tick_wall_us.p99,
        s.real_time_factor()
    );
    for f in s.failures.iter().take(10) {
        out!("    seed {} {} at {} ms: {}", f.seed, f.invariant, f.sim_time_ms, f.detail);
        out!("      replay: {}", f.replay);
    }
}

/// The whole run in one line, so a CI log shows what the library costs
/// (DESIGN.md §8: the library at its CI seed counts in ≤ 10 min on 2 cores).
fn print_total(run: &RunSummary, wall_us: u64, jobs: usize) {
    let seeds: u64 = run.scenarios.iter().map(|s| s.seeds_run).sum();
    let failed: u64 = run.scenarios.iter().map(|s| s.seeds_failed).sum();
    let sim: f64 = run.scenarios.iter().map(|s| s.sim_seconds).sum();
    let seed_wall: f64 = run.scenarios.iter().map(|s| s.wall_seconds).sum();
    let factor = real_time_factor(sim, seed_wall);
    out!(
        "total: {} scenarios  {seeds} seeds  {failed} failed  sim {:.1} h  seed time {seed_wall:.1} s ({factor:.0}× real time)  wall {:.1} s with --jobs {jobs}",
        run.scenarios.len(),
        sim / 3600.0,
        wall_us as f64 / 1e6
    );
}

pub fn replay(path: &Path, seed: u64, check: bool, trace: Option<&Path>) -> ExitCode {
    let sc = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let a = match run_one(&sc, seed, check || trace.is_some()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    out!("{} seed {seed} trace {} ({} ticks, {} failures)", sc.name, a.trace_hash, a.ticks, a.failures.len());
    if let Some(file) = trace {
        if let Err(e) = gastown_sim::report::write_trace(file, &a.trace) {
            eprintln!("cannot write the trace to {}: {e}", file.display());
            return ExitCode::from(2);
        }
    }
    for f in &a.failures {
        out!("    {} at {} ms: {}", f.invariant, f.sim_time_ms, f.detail);
    }
    if check {
        let b = match run_one(&sc, seed, true) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
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
    if a.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub fn check(paths: &[PathBuf]) -> ExitCode {
    match load_all(paths) {
        Ok(list) => {
            for (s, p) in list.iter().zip(paths) {
                out!("{}: ok ({}, {} seeds, {})", p.display(), s.name, s.run.seeds, s.run.duration);
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn shrink(path: &Path, seed: u64, out_path: Option<&Path>) -> ExitCode {
    let sc = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let fails = |s: &Scenario| {
        run_scenario_seed(s, seed, false).ok().and_then(|o| o.failures.first().map(|f| f.invariant.clone()))
    };
    let Some(target) = fails(&sc) else {
        eprintln!("{}: seed {seed} passes; nothing to shrink", path.display());
        return ExitCode::from(2);
    };
    let (small, steps) = gastown_sim::shrink::shrink(&sc, |s| fails(s).as_deref() == Some(target.as_str()));
    let dest = out_path.map(Path::to_path_buf).unwrap_or_else(|| {
        path.with_file_name(format!(
            "{}-shrunk-seed{seed}.toml",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("scenario")
        ))
    });
    let text = match toml::to_string_pretty(&small) {
        Ok(t) => format!("# shrunk from {} (seed {seed}, invariant {target}) in {steps} steps\n{t}", path.display()),
        Err(e) => {
            eprintln!("cannot render the shrunk scenario: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::write(&dest, text) {
        eprintln!("cannot write {}: {e}", dest.display());
        return ExitCode::from(2);
    }
    out!("{}: still fails {target} on seed {seed} after {steps} reductions", dest.display());
    ExitCode::SUCCESS
}

pub fn merge(paths: &[PathBuf], json: bool, report_dir: Option<&Path>) -> ExitCode {
    let mut by_name: std::collections::BTreeMap<String, Vec<ScenarioSummary>> = Default::default();
    for p in paths {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", p.display());
                return ExitCode::from(2);
            }
        };
        let run: RunSummary = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: not a gastown-sim summary.json: {e}", p.display());
                return ExitCode::from(2);
            }
        };
        for s in run.scenarios {
            by_name.entry(s.name.clone()).or_default().push(s);
        }
    }
    let mut scenarios = Vec::new();
    for (name, parts) in by_name {
        match ScenarioSummary::merge(&parts) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let run = RunSummary { scenarios };
    if json {
        out!("{}", serde_json::to_string(&run).unwrap_or_default());
    } else {
        run.scenarios.iter().for_each(print_summary);
    }
    if let Some(dir) = report_dir {
        let detail = vec![Vec::new(); run.scenarios.len()];
        if let Err(e) = write_reports(dir, &run, &detail) {
            eprintln!("cannot write reports to {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    if run.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::SeedRange;

    #[test]
    fn seeds_take_a_count_or_an_inclusive_range() {
        assert_eq!("1000".parse(), Ok(SeedRange { first: 1, last: 1000 }));
        assert_eq!("301..=1000".parse(), Ok(SeedRange { first: 301, last: 1000 }));
        assert_eq!("7..=7".parse(), Ok(SeedRange { first: 7, last: 7 }));
    }

    #[test]
    fn seeds_refuse_what_they_would_have_to_guess() {
        for (bad, says) in [
            ("301..1000", "A..=B"),
            ("0", "start at 1"),
            ("0..=5", "start at 1"),
            ("9..=3", "must not be empty"),
            ("ten", "not a seed count"),
            ("..=4", "not a seed count"),
            ("-3", "not a seed count"),
        ] {
            let e = bad.parse::<SeedRange>().unwrap_err();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }
}
