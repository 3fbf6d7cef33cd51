//! A self-contained HTML page with SVG charts: the tick-latency histogram,
//! bead states over simulated time for one seed, and the fault timeline.

use super::{RunSummary, ScenarioSummary, SeedOutcome};
use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 200.0;
const PAD: f64 = 40.0;
const COLORS: [&str; 6] = ["#4e79a7", "#59a14f", "#e15759", "#f28e2b", "#76b7b2", "#b07aa1"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

pub fn page(run: &RunSummary, detail: &[Vec<SeedOutcome>]) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>gastown-sim report</title><style>\
         body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:900px}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         th:first-child,td:first-child{text-align:left}.fail{color:#c00}svg{background:#fafafa;border:1px solid #ddd}\
         h2{margin-top:2em}code{background:#f3f3f3;padding:1px 4px}</style></head><body><h1>gastown-sim report</h1>",
    );
    h.push_str("<table><tr><th>scenario</th><th>seeds</th><th>failed</th><th>ticks</th><th>sim h</th><th>tick p50 µs</th><th>p99 µs</th><th>closed/created</th></tr>");
    for s in &run.scenarios {
        let cls = if s.seeds_failed > 0 { " class=\"fail\"" } else { "" };
        let _ = write!(
            h,
            "<tr{cls}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}/{}</td></tr>",
            esc(&s.name),
            s.seeds_run,
            s.seeds_failed,
            s.ticks,
            s.sim_seconds / 3600.0,
            s.tick_wall_us.p50,
            s.tick_wall_us.p99,
            s.beads.closed,
            s.beads.created
        );
    }
    h.push_str("</table>");
    for (s, outcomes) in run.scenarios.iter().zip(detail) {
        let _ = write!(h, "<h2>{}</h2>", esc(&s.name));
        for f in s.failures.iter().take(10) {
            let _ = write!(
                h,
                "<p class=\"fail\">seed {} <b>{}</b> at {} ms — <code>{}</code></p>",
                f.seed,
                esc(&f.invariant),
                f.sim_time_ms,
                esc(&f.replay)
            );
        }
        h.push_str("<h3>Tick wall-clock cost (µs)</h3>");
        h.push_str(&latency_chart(s));
        if let Some(o) = outcomes.first() {
            let _ = write!(h, "<h3>Bead states over simulated time (seed {})</h3>", o.seed);
            h.push_str(&bead_chart(o));
            let _ = write!(h, "<h3>Fault timeline (seed {})</h3>", o.seed);
            h.push_str(&fault_chart(o));
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn svg_open(height: f64) -> String {
    format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\">")
}

/// Log-spaced buckets of the tick-cost histogram as bars.
fn latency_chart(s: &ScenarioSummary) -> String {
    let mut buckets = [0u64; 24];
    for &(v, c) in &s.tick_wall_hist {
        let i = (64 - v.max(1).leading_zeros() as usize).min(buckets.len()) - 1;
        buckets[i] += c;
    }
    let first = buckets.iter().position(|&c| c > 0).unwrap_or(0);
    let last = buckets.iter().rposition(|&c| c > 0).unwrap_or(0) + 1;
    let max = buckets.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bw = (W - 2.0 * PAD) / (last - first) as f64;
    let mut g = svg_open(H + 30.0);
    for (i, &c) in buckets.iter().enumerate().take(last).skip(first) {
        let bh = (H - PAD) * c as f64 / max;
        let x = PAD + (i - first) as f64 * bw;
        let _ = write!(g, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{}–{} µs: {c}</title></rect>", H - bh, bw - 2.0, COLORS[0], 1u64 << i, (1u64 << (i + 1)) - 1);
        let _ = write!(g, "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>", H + 14.0, 1u64 << i);
    }
    let _ = write!(
        g,
        "<text x=\"{PAD}\" y=\"14\" font-size=\"11\">p50 {} µs · p99 {} µs · max {} µs</text></svg>",
        s.tick_wall_us.p50, s.tick_wall_us.p99, s.tick_wall_us.max
    );
    g
}

fn bead_chart(o: &SeedOutcome) -> String {
    let mut g = svg_open(H + 40.0);
    if o.bead_series.is_empty() {
        g.push_str("<text x=\"20\" y=\"40\">no samples</text></svg>");
        return g;
    }
    let t_max = o.bead_series.last().map(|s| s.0).unwrap_or(1).max(1) as f64;
    let statuses: std::collections::BTreeSet<&String> = o.bead_series.iter().flat_map(|(_, m)| m.keys()).collect();
    let y_max = o.bead_series.iter().flat_map(|(_, m)| m.values()).copied().max().unwrap_or(1).max(1) as f64;
    for (i, st) in statuses.iter().enumerate() {
        let pts: Vec<String> = o
            .bead_series
            .iter()
            .map(|(t, m)| {
                let x = PAD + (W - 2.0 * PAD) * (*t as f64 / t_max);
                let y = H - (H - PAD) * (*m.get(*st).unwrap_or(&0) as f64 / y_max);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let c = COLORS[i % COLORS.len()];
        let _ = write!(g, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", pts.join(" "));
        let _ = write!(
            g,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{c}\">{}</text>",
            PAD + i as f64 * 110.0,
            H + 30.0,
            esc(st)
        );
    }
    let _ = write!(
        g,
        "<text x=\"{PAD}\" y=\"14\" font-size=\"11\">0 – {:.0} min simulated; max {y_max} beads</text></svg>",
        t_max / 60_000.0
    );
    g
}

fn fault_chart(o: &SeedOutcome) -> String {
    let kinds: Vec<&String> = {
        let set: std::collections::BTreeSet<&String> = o.fault_events.iter().map(|(_, k)| k).collect();
        set.into_iter().collect()
    };
    let height = 30.0 + 20.0 * kinds.len().max(1) as f64;
    let mut g = svg_open(height);
    let t_max = o.sim_ms.max(1) as f64;
    if kinds.is_empty() {
        g.push_str("<text x=\"20\" y=\"30\">no faults injected</text></svg>");
        return g;
    }
    for (row, k) in kinds.iter().enumerate() {
        let y = 20.0 + row as f64 * 20.0;
        let _ = write!(g, "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{}</text>", y + 4.0, esc(k));
        for (t, _) in o.fault_events.iter().filter(|(_, kk)| kk == *k) {
            let x = 160.0 + (W - 180.0) * (*t as f64 / t_max);
            let _ = write!(g, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{}\"/>", COLORS[2]);
        }
    }
    g.push_str("</svg>");
    g
}
