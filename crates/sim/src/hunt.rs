//! `gastown-sim defects`: switch each catalogued defect on in turn, run its
//! scenario's seeds in order until one fails, and report how soon the
//! harness caught it.

use crate::cli::{run_seeds, wall_now, wall_us_since};
use crate::progress::{Mode, Progress};
use gastown::defects::Defect;
use gastown_sim::defects::{failing_seeds, scenario_for, HuntResult};
use gastown_sim::scenario::Scenario;
use std::path::Path;
use std::process::ExitCode;

pub struct HuntOptions<'a> {
    pub only: &'a [String],
    pub max_seeds: u64,
    pub jobs: usize,
    pub scenarios_dir: &'a Path,
    /// Overrides every defect's own scenario.
    pub scenario: Option<&'a Path>,
    pub json: bool,
    pub markdown: bool,
    /// Off a terminal, a progress line at most this often (0: none).
    pub progress_every: u64,
}

const NOT_BUILT_IN: &str = "this gastown-sim was built without the defect switches; run\n  \
     cargo run --release -p gastown-sim --features defects -- defects";

/// Switch one named defect on for the rest of the process (`replay --defect`).
pub fn switch_on(name: &str) -> Result<Defect, String> {
    if !gastown::defects::BUILT_IN {
        return Err(NOT_BUILT_IN.to_owned());
    }
    let d = choose(&[name.to_owned()])?[0];
    gastown::defects::activate(Some(d));
    Ok(d)
}

pub fn defects(opts: &HuntOptions<'_>) -> ExitCode {
    if !gastown::defects::BUILT_IN {
        eprintln!("{NOT_BUILT_IN}");
        return ExitCode::from(2);
    }
    let chosen = match choose(opts.only) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut hunts = Vec::new();
    for d in chosen {
        let path = match (opts.scenario, scenario_for(d)) {
            (Some(p), _) => p.to_path_buf(),
            (None, Some(file)) => opts.scenarios_dir.join(file),
            (None, None) => {
                eprintln!("{}: no scenario hunts this defect", d.name());
                return ExitCode::from(2);
            }
        };
        let file = path.strip_prefix(opts.scenarios_dir).unwrap_or(&path).display().to_string();
        match Scenario::load(&path) {
            Ok(sc) => hunts.push((d, file, path, sc)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    let mut results = Vec::new();
    for (d, file, path, sc) in &hunts {
        let r = match hunt(*d, (file, path), sc, opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: the simulation could not run: {e}", d.name());
                return ExitCode::from(2);
            }
        };
        // Hunts take minutes: report each as it ends (on stderr when stdout is a document).
        if opts.json || opts.markdown {
            eprintln!("{}", text_line(&r));
        } else {
            out!("{}", text_line(&r));
        }
        results.push(r);
    }
    if opts.json {
        let body = serde_json::json!({ "defects": results });
        out!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
    } else if opts.markdown {
        out!("{}", markdown(&results));
    } else {
        out!("{}", summary(&results, opts.max_seeds));
    }
    if results.iter().all(|r| r.detected) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn choose(only: &[String]) -> Result<Vec<Defect>, String> {
    if only.is_empty() {
        return Ok(Defect::ALL.to_vec());
    }
    only.iter()
        .map(|n| {
            Defect::by_name(n).ok_or_else(|| {
                let names: Vec<_> = Defect::ALL.iter().map(|d| d.name()).collect();
                format!("unknown defect `{n}`; the catalogue has: {}", names.join(", "))
            })
        })
        .collect()
}

/// Run the scenario's seeds 1, 2, … in batches of `jobs` with `d` switched on,
/// stopping at the first failing seed that passes with the defect off (the
/// control run): a seed that fails either way found something else.
/// `file` names the scenario in the results; `path` is where it is, for the
/// replay command a failing seed prints.
fn hunt(d: Defect, (file, path): (&str, &Path), sc: &Scenario, opts: &HuntOptions<'_>) -> Result<HuntResult, String> {
    let start = wall_now();
    let mode = Mode::choose(opts.json || opts.markdown, opts.progress_every);
    let replay = format!("gastown-sim replay {} --defect {}", path.display(), d.name());
    let progress = Progress::new(mode, d.name(), opts.max_seeds, replay);
    let batch = opts.jobs.max(1) as u64;
    let mut next = 1;
    let mut found = None;
    let mut fails_without_defect = Vec::new();
    while next <= opts.max_seeds && found.is_none() {
        let seeds: Vec<u64> = (next..=(next + batch - 1).min(opts.max_seeds)).collect();
        next += seeds.len() as u64;
        gastown::defects::activate(Some(d));
        let outcomes = run_seeds(sc, &seeds, opts.jobs, &progress);
        gastown::defects::activate(None);
        let outcomes = outcomes?;
        for (seed, f) in failing_seeds(&outcomes) {
            let control = run_seeds(sc, &[seed], 1, &Progress::hidden())?;
            if control.iter().all(|o| o.failures.is_empty()) {
                found = Some((seed, f.invariant.clone(), f.detail.clone()));
                break;
            }
            fails_without_defect.push(seed);
        }
    }
    progress.finish();
    let wall_seconds = wall_us_since(start) as f64 / 1e6;
    Ok(HuntResult {
        name: d.name(),
        source: d.source(),
        scenario: file.to_owned(),
        detected: found.is_some(),
        seeds_to_detect: found.as_ref().map_or(opts.max_seeds, |(s, _, _)| *s),
        invariant: found.as_ref().map(|(_, i, _)| i.clone()),
        detail: found.map(|(_, _, d)| d),
        fails_without_defect,
        wall_seconds: (wall_seconds * 10.0).round() / 10.0,
    })
}

fn text_line(r: &HuntResult) -> String {
    let verdict = if r.detected {
        format!("caught at seed {:>3} by {}", r.seeds_to_detect, r.invariant.as_deref().unwrap_or("?"))
    } else {
        format!("MISSED in {} seeds", r.seeds_to_detect)
    };
    let also = if r.fails_without_defect.is_empty() {
        String::new()
    } else {
        format!("; seeds {:?} fail without the defect too", r.fails_without_defect)
    };
    format!("{:<38} {:<44} {verdict} ({:.1} s){also}", r.name, r.scenario, r.wall_seconds)
}

fn median(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    }
}

fn summary(results: &[HuntResult], max_seeds: u64) -> String {
    let caught: Vec<u64> = results.iter().filter(|r| r.detected).map(|r| r.seeds_to_detect).collect();
    let wall: f64 = results.iter().map(|r| r.wall_seconds).sum();
    format!(
        "\n{} of {} defects caught within {max_seeds} seeds; median seeds to first detection {}, worst {}; {:.0} s",
        caught.len(),
        results.len(),
        median(caught.clone()),
        caught.iter().max().copied().unwrap_or(0),
        wall
    )
}

fn detected_cell(r: &HuntResult) -> String {
    let verdict = if r.detected { "yes" } else { "**no**" };
    if r.fails_without_defect.is_empty() {
        verdict.to_owned()
    } else {
        format!("{verdict} (seeds {:?} fail without it)", r.fails_without_defect)
    }
}

fn markdown(results: &[HuntResult]) -> String {
    let mut s = String::from(
        "| defect | source | scenario | detected | seeds to detect | invariant | wall s |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        s.push_str(&format!(
            "| `{}` | {} | `{}` | {} | {} | {} | {:.1} |\n",
            r.name,
            r.source,
            r.scenario,
            detected_cell(r),
            r.seeds_to_detect,
            r.invariant.as_deref().map_or("—".to_owned(), |i| format!("`{i}`")),
            r.wall_seconds
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![5, 1, 3]), 3.0);
        assert_eq!(median(vec![4, 1, 3, 2]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn unknown_names_are_refused_with_the_catalogue() {
        let e = choose(&["no-such".to_owned()]).unwrap_err();
        assert!(e.contains("unknown defect `no-such`") && e.contains("hook-not-exclusive"), "{e}");
        assert_eq!(choose(&[]).unwrap().len(), Defect::ALL.len());
    }
}
