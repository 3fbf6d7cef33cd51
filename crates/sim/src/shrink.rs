//! Shrinking a failing scenario: greedy delta debugging over the parts a
//! scenario is made of (timeline entries, convoys, arrivals, fault rates,
//! duration). A reduction is kept when the scenario still fails the same
//! way; passes repeat until none applies.

use crate::scenario::{Dur, Rate, Scenario};

type Reduction = fn(&Scenario, usize) -> Option<Scenario>;

/// The smallest scenario `still_fails` accepts, and how many reductions it took.
pub fn shrink(start: &Scenario, mut still_fails: impl FnMut(&Scenario) -> bool) -> (Scenario, usize) {
    let reductions: [Reduction; 6] = [drop_timeline, drop_convoy, fewer_issues, zero_fault, shorter, drop_people];
    let mut best = start.clone();
    let mut steps = 0;
    loop {
        let mut progressed = false;
        for reduce in reductions {
            let mut i = 0;
            while let Some(candidate) = reduce(&best, i) {
                if candidate.validate().is_ok() && still_fails(&candidate) {
                    best = candidate;
                    steps += 1;
                    progressed = true;
                } else {
                    i += 1;
                }
            }
        }
        if !progressed {
            return (best, steps);
        }
    }
}

fn drop_timeline(s: &Scenario, i: usize) -> Option<Scenario> {
    (i < s.timeline.len()).then(|| {
        let mut c = s.clone();
        c.timeline.remove(i);
        c
    })
}

fn drop_convoy(s: &Scenario, i: usize) -> Option<Scenario> {
    (i < s.workload.convoys.len()).then(|| {
        let mut c = s.clone();
        c.workload.convoys.remove(i);
        c
    })
}

/// i = 0: halve the issue count; i = 1: no issues at all.
fn fewer_issues(s: &Scenario, i: usize) -> Option<Scenario> {
    let a = s.workload.issues.as_ref()?;
    let mut c = s.clone();
    match i {
        0 if a.count > 1 => c.workload.issues.as_mut()?.count = a.count / 2,
        0 | 1 => c.workload.issues = None,
        _ => return None,
    }
    Some(c)
}

/// Zero the i-th non-zero fault rate.
fn zero_fault(s: &Scenario, i: usize) -> Option<Scenario> {
    let key = s.faults.rates.iter().filter(|(_, r)| r.0.hi > 0.0).map(|(k, _)| k.clone()).nth(i)?;
    let mut c = s.clone();
    c.faults.rates.insert(key, Rate::default());
    Some(c)
}

/// Halve the run (heal time and timeline scale with it).
fn shorter(s: &Scenario, i: usize) -> Option<Scenario> {
    if i > 0 || s.run.duration.ms() < 20 * 60_000 {
        return None;
    }
    let mut c = s.clone();
    c.run.duration = Dur(s.run.duration.ms() / 2);
    c.run.heal_at = s.run.heal_at.map(|h| Dur(h.ms() / 2));
    for t in &mut c.timeline {
        t.at = Dur(t.at.ms() / 2);
    }
    for cv in &mut c.workload.convoys {
        cv.at = cv.at.map(|a| Dur(a.ms() / 2));
    }
    Some(c)
}

fn drop_people(s: &Scenario, i: usize) -> Option<Scenario> {
    let mut c = s.clone();
    match i {
        0 if s.workload.mayor_messages.is_some() => c.workload.mayor_messages = None,
        0 | 1 if s.workload.user_actions.is_some() => c.workload.user_actions = None,
        _ => return None,
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
name = "s"
[run]
seeds = 1
duration = "4h"
converge_within = "1h"
[workload]
issues = { count = 40, per_hour = 10 }
convoys = [{ tasks = 3, shape = "chain" }, { tasks = 5, shape = "diamond" }]
mayor_messages = { per_hour = 2 }
[faults]
hard_eviction = [0, 2]
forge_5xx = 0.1
wal_busy_snapshot = [0, 0.5]
[[timeline]]
at = "1h"
fault = "hard_eviction"
[[timeline]]
at = "2h"
fault = "partition"
between = ["town", "forge"]
for = "5m"
"#;

    #[test]
    fn shrink_keeps_only_what_the_failure_needs() {
        let s = Scenario::parse("s.toml", FILE).unwrap();
        // A stand-in "failure" that needs WAL loss and at least one diamond convoy.
        let fails = |s: &Scenario| {
            s.faults.rates.get("wal_busy_snapshot").is_some_and(|r| r.0.hi > 0.0)
                && s.workload.convoys.iter().any(|c| c.shape == crate::scenario::ConvoyShape::Diamond)
        };
        let (small, steps) = shrink(&s, fails);
        assert!(fails(&small));
        assert!(steps >= 6, "{steps}");
        assert!(small.timeline.is_empty());
        assert_eq!(small.workload.convoys.len(), 1);
        assert!(small.workload.issues.is_none() && small.workload.mayor_messages.is_none());
        assert_eq!(small.faults.rates["forge_5xx"].0.hi, 0.0);
        assert_eq!(small.faults.rates["hard_eviction"].0.hi, 0.0);
        assert!(small.run.duration < s.run.duration);
        // The result is a valid scenario file again.
        let text = toml::to_string_pretty(&small).unwrap();
        Scenario::parse("shrunk.toml", &text).unwrap();
    }
}
