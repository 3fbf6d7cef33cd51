//! Report files in `--report-dir`: summary.json, summary.md, junit.xml,
//! index.html and one JSONL trace per failing seed.

use super::{RunSummary, SeedOutcome};
use std::fmt::Write as _;
use std::path::Path;

/// Write every report. `detail` holds, per scenario, the seed chosen for the
/// charts and the failing seeds' outcomes (with traces).
pub fn write_reports(dir: &Path, run: &RunSummary, detail: &[Vec<SeedOutcome>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(run).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json)?;
    std::fs::write(dir.join("summary.md"), markdown(run))?;
    std::fs::write(dir.join("junit.xml"), junit(run))?;
    std::fs::write(dir.join("index.html"), super::html::page(run, detail))?;
    let traces = dir.join("traces");
    for (s, outcomes) in run.scenarios.iter().zip(detail) {
        for o in outcomes.iter().filter(|o| !o.passed() && !o.trace.is_empty()) {
            std::fs::create_dir_all(&traces)?;
            write_trace(&traces.join(format!("{}-seed{}.jsonl", slug(&s.name), o.seed)), &o.trace)?;
        }
    }
    Ok(())
}

/// Write one seed's trace as JSONL.
pub fn write_trace(file: &Path, trace: &[String]) -> std::io::Result<()> {
    let mut body = String::new();
    for line in trace {
        let _ = writeln!(body, "{}", trace_json(line));
    }
    std::fs::write(file, body)
}

/// A trace line is `<ms> <kind> <json>`; as JSONL: `{"at_ms", "kind", "body"}`.
fn trace_json(line: &str) -> String {
    let mut parts = line.splitn(3, ' ');
    let at: i64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let kind = parts.next().unwrap_or("");
    let body: serde_json::Value =
        parts.next().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(serde_json::Value::Null);
    serde_json::json!({ "at_ms": at, "kind": kind, "body": body }).to_string()
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

pub fn markdown(run: &RunSummary) -> String {
    let mut md = String::from("# gastown-sim run\n\n");
    md.push_str("| scenario | seeds | failed | ticks | sim h | wall s | × real time | tick p50 µs | p99 µs | closed / created |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in &run.scenarios {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {:.2} | {:.0} | {} | {} | {} / {} |",
            s.name,
            s.seeds_run,
            s.seeds_failed,
            s.ticks,
            s.sim_seconds / 3600.0,
            s.wall_seconds,
            s.real_time_factor(),
            s.tick_wall_us.p50,
            s.tick_wall_us.p99,
            s.beads.closed,
            s.beads.created
        );
    }
    for s in run.scenarios.iter().filter(|s| !s.failures.is_empty()) {
        let _ = writeln!(md, "\n## {} failures\n", s.name);
        for f in s.failures.iter().take(50) {
            let _ = writeln!(
                md,
                "- seed {} `{}` at {} ms: {}  \n  `{}`",
                f.seed, f.invariant, f.sim_time_ms, f.detail, f.replay
            );
        }
    }
    md
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One test case per scenario and seed; a failure carries the replay line.
pub fn junit(run: &RunSummary) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for s in &run.scenarios {
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
            xml(&s.name),
            s.seeds_run,
            s.seeds_failed,
            s.wall_seconds
        );
        for seed in s.seed_hashes.keys() {
            let fails: Vec<_> = s.failures.iter().filter(|f| f.seed == *seed).collect();
            let _ = write!(x, "    <testcase classname=\"{}\" name=\"seed {seed}\"", xml(&s.name));
            if fails.is_empty() {
                x.push_str("/>\n");
                continue;
            }
            x.push_str(">\n");
            for f in fails {
                let _ = writeln!(
                    x,
                    "      <failure message=\"{} at {} ms\">{}\nreplay: {}</failure>",
                    xml(&f.invariant),
                    f.sim_time_ms,
                    xml(&f.detail),
                    xml(&f.replay)
                );
            }
            x.push_str("    </testcase>\n");
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}
