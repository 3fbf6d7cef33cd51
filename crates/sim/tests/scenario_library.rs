//! Every file of the scenario library parses and validates, and the library
//! covers what issue 6 asks: smoke, each fault family, each historical bug
//! (a)–(r), a fault-free steady state and a soak.

use gastown::town::reconciler::constants::{GUPP_FORCE_STOP_MS, STALLED_AUTO_IDLE_MS};
use gastown_sim::scenario::{AgentsSection, Scenario};
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

/// Whether any role's sessions may wedge (`hang` or `silent_hang` above zero).
fn agents_may_hang(a: &AgentsSection) -> bool {
    let roles = [&a.polecat, &a.refinery, &a.mayor];
    let role_hangs = roles.iter().filter_map(|r| r.as_ref()?.hang.as_ref());
    [&a.hang, &a.silent_hang].into_iter().chain(role_hangs).any(|p| p.0.hi > 0.0)
}

/// A session that wedges just before the heal recovers on upstream's clock:
/// GUPP stops it 2 h after its dispatch, and A2 may take 2 h 30 min more to
/// idle the stalled agent. A gated scenario whose agents hang must give
/// liveness that long, or a hang in its last hour before the heal fails a
/// clean build: `bug-g` (window 1 h) failed 11 of its first 109 seeds so.
#[test]
fn scenarios_whose_agents_hang_wait_for_upstreams_hang_recovery() {
    let recovery_ms = (GUPP_FORCE_STOP_MS + STALLED_AUTO_IDLE_MS) as u64;
    for (file, s) in gated() {
        if s.expect.liveness && agents_may_hang(&s.agents) {
            let window = s.run.converge_within.ms();
            assert!(window >= recovery_ms, "{file}: agents hang but converge_within is {window} ms < {recovery_ms} ms");
        }
    }
}

/// Nothing recovers a wedged mayor (GUPP and A1 skip mayors, as upstream), so
/// a mayor turn that hangs keeps the alarm on the active cadence for good and
/// fails liveness whatever the window (findings README, F5). A gated scenario
/// that messages the mayor must keep its mayor from hanging.
#[test]
fn scenarios_that_message_the_mayor_keep_it_from_hanging() {
    for (file, s) in gated() {
        let messages = s.workload.mayor_messages.as_ref().is_some_and(|m| m.per_hour > 0.0);
        let mayor_hang = s.agents.mayor.as_ref().and_then(|m| m.hang.as_ref()).unwrap_or(&s.agents.hang);
        if s.expect.liveness && messages {
            assert_eq!(mayor_hang.0.hi, 0.0, "{file}: the mayor gets messages and may hang");
        }
    }
}
