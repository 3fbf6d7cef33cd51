//! The `gastown-sim` contract: exit codes, the JSON shape, replay, shards,
//! shrink (DESIGN.md §7; other tools rely on these).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gastown-sim")).args(args).output().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const PASSING: &str = r#"
name = "tiny"
[run]
seeds = 4
duration = "30m"
converge_within = "40m"
[workload]
issues = { count = 3, per_hour = 8 }
[agents]
work_time = ["2m", "5m"]
"#;

/// Fails its expectation on purpose: every bead must close, yet starts fail often.
const FAILING: &str = r#"
name = "doomed"
[run]
seeds = 3
duration = "40m"
converge_within = "20m"
[workload]
issues = { count = 6, per_hour = 12 }
convoys = [{ tasks = 2, shape = "chain" }]
mayor_messages = { per_hour = 3 }
[agents]
work_time = ["20m", "30m"]
[faults]
forge_5xx = [0, 0.2]
[[timeline]]
at = "10m"
fault = "hard_eviction"
[expect]
liveness = false
min_closed_fraction = 1.0
"#;

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

#[test]
fn cli_exit_codes_and_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let out = sim(&["run", good.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    let s = &v["scenarios"][0];
    assert_eq!(s["name"], "tiny");
    assert_eq!(s["seeds_run"], 4);
    for k in [
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
        assert!(s.get(k).is_some(), "{k} missing: {s}");
    }
    let bad = write(dir.path(), "doomed.toml", FAILING);
    let out = sim(&["run", bad.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let f = &json(&out)["scenarios"][0]["failures"][0];
    assert!(f["replay"].as_str().unwrap().starts_with("gastown-sim replay "), "{f}");
    let broken = write(dir.path(), "broken.toml", "name = \"x\"\n[run]\nseeds = \"many\"\n");
    let out = sim(&["run", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken.toml:3:9"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim(&["run", "/nonexistent.toml"]).status.code(), Some(2));
    assert_eq!(sim(&["run", good.to_str().unwrap(), "--shard", "3/2"]).status.code(), Some(2));
    let reversed = sim(&["run", good.to_str().unwrap(), "--seeds", "4..=1"]);
    assert_eq!(reversed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&reversed.stderr).contains("`4..=1`"));
    assert_eq!(sim(&["check", good.to_str().unwrap()]).status.code(), Some(0));
}

#[test]
fn cli_text_output_says_how_fast_the_simulator_ran() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let other = write(dir.path(), "tiny2.toml", &PASSING.replace("\"tiny\"", "\"tiny2\""));
    let report = dir.path().join("out");
    let out = sim(&[
        "run",
        good.to_str().unwrap(),
        other.to_str().unwrap(),
        "--seeds",
        "2",
        "--report-dir",
        report.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let factor = |line: &str| -> f64 {
        let head = line.split("× real time").next().unwrap();
        head.rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for line in &lines[..2] {
        assert!(factor(line) > 0.0, "{line}");
    }
    assert!(lines[2].starts_with("total: 2 scenarios  4 seeds  0 failed  sim "), "{}", lines[2]);
    assert!(factor(lines[2]) > 0.0 && lines[2].ends_with("with --jobs 1"), "{}", lines[2]);
    let md = std::fs::read_to_string(report.join("summary.md")).unwrap();
    assert!(md.contains("| wall s | × real time |"), "{md}");
}

#[test]
fn cli_replay_reproduces_the_trace_hash() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let run = json(&sim(&["run", good.to_str().unwrap(), "--seed", "3", "--json"]));
    let hash = run["scenarios"][0]["trace_hash"].as_str().unwrap().to_owned();
    let out = sim(&["replay", good.to_str().unwrap(), "--seed", "3", "--check-determinism"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&hash) && text.contains("deterministic"), "{text}");
}

#[test]
fn cli_replay_writes_the_trace_of_a_passing_seed() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let file = dir.path().join("seed3.jsonl");
    let out = sim(&["replay", good.to_str().unwrap(), "--seed", "3", "--trace", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let body = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["kind"] == "tick"), "a run's trace has ticks");
    assert!(lines.iter().all(|l| l["at_ms"].is_i64() && l["kind"].is_string()), "{body}");
    let bad = sim(&["replay", good.to_str().unwrap(), "--seed", "3", "--trace", "/nonexistent-dir/x.jsonl"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent-dir/x.jsonl"));
}

/// `replay --defect` traces a hunt's detection; a build without the switches
/// (or a name the catalogue lacks) says so instead of replaying clean.
#[test]
fn cli_replay_with_a_defect_needs_the_switches_and_a_known_name() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let out = sim(&["replay", good.to_str().unwrap(), "--seed", "1", "--defect", "no-such-defect"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "defects") {
        assert!(err.contains("unknown defect `no-such-defect`"), "{err}");
    } else {
        assert!(err.contains("--features defects"), "{err}");
    }
}

#[test]
fn cli_shards_and_seed_ranges_together_equal_the_unsharded_run() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "tiny.toml", PASSING);
    let whole = json(&sim(&["run", good.to_str().unwrap(), "--json"]));
    let splits: [[[&str; 2]; 2]; 2] =
        [[["--shard", "1/2"], ["--shard", "2/2"]], [["--seeds", "1..=1"], ["--seeds", "2..=4"]]];
    for (i, split) in splits.iter().enumerate() {
        let mut parts = Vec::new();
        for (k, [flag, value]) in split.iter().enumerate() {
            let out_dir = dir.path().join(format!("split{i}-part{k}"));
            let o = sim(&["run", good.to_str().unwrap(), flag, value, "--report-dir", out_dir.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(0), "{flag} {value}");
            for f in ["summary.json", "summary.md", "junit.xml", "index.html"] {
                assert!(out_dir.join(f).exists(), "{f}");
            }
            parts.push(out_dir.join("summary.json").to_str().unwrap().to_owned());
        }
        let mut args = vec!["merge", "--json"];
        args.extend(parts.iter().map(String::as_str));
        let merged = json(&sim(&args));
        let (w, m) = (&whole["scenarios"][0], &merged["scenarios"][0]);
        for k in [
            "seeds_run",
            "seeds_failed",
            "ticks",
            "beads",
            "faults",
            "marks",
            "trace_hash",
            "seed_hashes",
            "sim_seconds",
        ] {
            assert_eq!(w[k], m[k], "{split:?}: {k}");
        }
    }
}

#[test]
fn cli_shrink_reduces_a_failing_scenario_that_still_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "doomed.toml", FAILING);
    let small = dir.path().join("small.toml");
    let out = sim(&["shrink", bad.to_str().unwrap(), "--seed", "1", "--out", small.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let shrunk = gastown_sim::scenario::Scenario::load(&small).unwrap();
    let original = gastown_sim::scenario::Scenario::parse("doomed.toml", FAILING).unwrap();
    let parts = |s: &gastown_sim::scenario::Scenario| {
        s.timeline.len()
            + s.workload.convoys.len()
            + usize::from(s.workload.mayor_messages.is_some())
            + s.faults.rates.values().filter(|r| r.0.hi > 0.0).count()
            + s.workload.issues.as_ref().map_or(0, |a| a.count as usize)
    };
    assert!(parts(&shrunk) < parts(&original), "nothing was removed");
    assert!(shrunk.faults.rates.values().all(|r| r.0.hi == 0.0), "the forge faults were not needed");
    let again = sim(&["run", small.to_str().unwrap(), "--seed", "1", "--json"]);
    assert_eq!(again.status.code(), Some(1), "the shrunk scenario still fails");
    assert_eq!(json(&again)["scenarios"][0]["failures"][0]["invariant"], "min_closed_fraction");
}

/// Off a terminal (CI logs, `nohup` sweeps) each failing seed is named on
/// stderr as it happens, with its replay command; `--progress-every 0` is
/// silent. Stdout stays the JSON alone.
#[test]
fn cli_names_failing_seeds_on_stderr_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "doomed.toml", FAILING);
    let path = bad.to_str().unwrap();
    let out = sim(&["run", path, "--seeds", "2", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for seed in [1, 2] {
        let line = format!("[doomed] seed {seed} failed: min_closed_fraction at ");
        assert!(err.contains(&line), "{err}");
        assert!(err.contains(&format!("(replay: gastown-sim replay {path} --seed {seed})")), "{err}");
    }
    assert_eq!(json(&out)["scenarios"][0]["seeds_failed"], 2, "stdout is the JSON object alone");
    let quiet = sim(&["run", path, "--seeds", "1", "--json", "--progress-every", "0"]);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("[doomed]"));
}
