//! `/metrics` in Prometheus text format: the tick latency histogram (wall
//! time of a whole tick, network phases included), ticks and failed ticks,
//! pending town events, and agents, beads and convoys by status.

use crate::town::StatusCounts;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Debug, Default)]
struct Inner {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    failed: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn observe_tick(&self, took: Duration, ok: bool) {
        let s = took.as_secs_f64();
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, le) in BUCKETS.iter().enumerate() {
            if s <= *le {
                m.counts[i] += 1;
            }
        }
        m.count += 1;
        m.sum += s;
        if !ok {
            m.failed += 1;
        }
    }

    pub fn ticks(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// The exposition text; `counts` is read from the town at scrape time.
    pub fn render(&self, counts: Option<&StatusCounts>) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let _ =
            writeln!(out, "# HELP gastown_tick_duration_seconds Wall time of one alarm tick, network phases included.");
        let _ = writeln!(out, "# TYPE gastown_tick_duration_seconds histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "gastown_tick_duration_seconds_bucket{{le=\"{le}\"}} {}", m.counts[i]);
        }
        let _ = writeln!(out, "gastown_tick_duration_seconds_bucket{{le=\"+Inf\"}} {}", m.count);
        let _ = writeln!(out, "gastown_tick_duration_seconds_sum {}", m.sum);
        let _ = writeln!(out, "gastown_tick_duration_seconds_count {}", m.count);
        let _ = writeln!(out, "# HELP gastown_ticks_failed_total Ticks that ended in an error.");
        let _ = writeln!(out, "# TYPE gastown_ticks_failed_total counter");
        let _ = writeln!(out, "gastown_ticks_failed_total {}", m.failed);
        drop(m);
        let Some(c) = counts else { return out };
        let _ = writeln!(out, "# HELP gastown_pending_events Town events not yet applied.");
        let _ = writeln!(out, "# TYPE gastown_pending_events gauge");
        let _ = writeln!(out, "gastown_pending_events {}", c.pending_events);
        for (name, help, map, all) in [
            ("gastown_beads", "Issue beads by status.", &c.beads, &super::up::BEAD_STATUSES[..]),
            ("gastown_agents", "Agents by status.", &c.agents, &[][..]),
            ("gastown_convoys", "Convoys by status.", &c.convoys, &[][..]),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let mut rows: std::collections::BTreeMap<&str, u64> = all.iter().map(|s| (*s, 0)).collect();
            for (k, v) in map {
                rows.insert(k, *v);
            }
            for (k, v) in rows {
                let _ = writeln!(out, "{name}{{status=\"{k}\"}} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_cumulative_histogram_and_status_gauges() {
        let m = Metrics::default();
        m.observe_tick(Duration::from_millis(3), true);
        m.observe_tick(Duration::from_millis(30), false);
        let mut c = StatusCounts::default();
        c.beads.insert("closed".into(), 4);
        c.agents.insert("idle".into(), 2);
        c.pending_events = 1;
        let text = m.render(Some(&c));
        assert!(text.contains("gastown_tick_duration_seconds_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("gastown_tick_duration_seconds_bucket{le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("gastown_tick_duration_seconds_count 2\n"));
        assert!(text.contains("gastown_ticks_failed_total 1\n"));
        assert!(text.contains("gastown_beads{status=\"closed\"} 4\n"));
        assert!(text.contains("gastown_beads{status=\"open\"} 0\n"), "every bead status is listed");
        assert!(text.contains("gastown_agents{status=\"idle\"} 2\n"));
        assert!(text.contains("gastown_pending_events 1\n"));
    }
}
