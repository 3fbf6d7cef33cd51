//! Every file of the scenario library parses and validates, and the library
//! covers what issue 6 asks: smoke, each fault family, each historical bug
//! (a)–(r), a fault-free steady state and a soak.

use gastown_sim::scenario::Scenario;
use std::path::Path;

fn library() -> Vec<(String, Scenario)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let mut out = load(&dir);
    out.extend(load(&dir.join("findings")));
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The gated library (`scenarios/*.toml`), without the findings.
fn gated() -> Vec<(String, Scenario)> {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios"))
}

fn load(dir: &Path) -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
            out.push((path.file_stem().unwrap().to_string_lossy().into_owned(), s));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn the_scenario_library_parses_and_covers_every_bug_and_family() {
    assert!(gated().len() >= 20, "{} gated files", gated().len());
    let lib = library();
    let names: Vec<&str> = lib.iter().map(|(n, _)| n.as_str()).collect();
    for letter in 'a'..='r' {
        assert!(names.iter().any(|n| n.starts_with(&format!("bug-{letter}-"))), "no scenario for bug ({letter})");
    }
    for required in [
        "smoke",
        "steady-state",
        "soak",
        "eviction-storm",
        "wal-loss",
        "duplicate-ticks",
        "flaky-prs",
        "network",
        "agent-misbehaviour",
    ] {
        assert!(names.contains(&required), "missing {required}");
    }
    for (file, s) in &lib {
        assert_eq!(&s.name, file, "a scenario's name is its file name");
    }
}
