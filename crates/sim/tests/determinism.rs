//! The same seed must replay byte for byte; different seeds must differ; and
//! the built-in workload must run clean.

use gastown_sim::{run_seed, SimParams};

fn params() -> SimParams {
    SimParams { hours: 1.5, keep_trace: true, ..SimParams::default() }
}

#[test]
fn same_seed_same_trace() {
    let a = run_seed(7, &params()).unwrap();
    let b = run_seed(7, &params()).unwrap();
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert!(a.ticks > 100, "the run ticks: {}", a.ticks);
}

#[test]
fn different_seeds_differ() {
    let a = run_seed(1, &params()).unwrap();
    let b = run_seed(2, &params()).unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn built_in_workload_has_no_violations_and_makes_progress() {
    for seed in 1..=4 {
        let r = run_seed(seed, &SimParams { hours: 3.0, ..SimParams::default() }).unwrap();
        assert!(r.failures.is_empty(), "seed {seed}: {:?}", &r.failures[..r.failures.len().min(5)]);
        assert!(r.beads_closed > 0, "seed {seed} closed nothing: {r:?}");
    }
}
