//! Progress of a long run. On a terminal, a bar; anywhere else (a CI log, a
//! `nohup` sweep, a pipe) a line on stderr every so often and one at once
//! for each failing seed, so an hour-long sweep shows how far it has got and
//! what it has found before it ends.

use crate::cli::{wall_now, wall_us_since};
use gastown_sim::report::SeedOutcome;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Duration;

/// Failing seeds reported one by one; after that only the counts.
const FAILURES_SHOWN: u64 = 10;

/// How a run shows its progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Hidden,
    Bar,
    /// A status line at most this often, plus one per failing seed.
    Lines(Duration),
}

impl Mode {
    /// A bar when stdout is a terminal, else lines every `every_secs`
    /// (0: none). `quiet` (machine-readable stdout) still allows lines: they
    /// go to stderr.
    pub fn choose(quiet: bool, every_secs: u64) -> Mode {
        if !quiet && std::io::stdout().is_terminal() {
            Mode::Bar
        } else if every_secs == 0 {
            Mode::Hidden
        } else {
            Mode::Lines(Duration::from_secs(every_secs))
        }
    }
}

/// The wall clock only paces the lines; nothing simulated reads it.
#[allow(clippy::disallowed_types)]
pub struct Progress {
    bar: indicatif::ProgressBar,
    lines: Option<Mutex<(Tally, std::time::Instant)>>,
}

impl Progress {
    /// `label` names the run in each line (a scenario, a defect); `replay`
    /// is the command that replays a seed, without its `--seed`.
    pub fn new(mode: Mode, label: &str, total: u64, replay: String) -> Progress {
        let bar = match mode {
            Mode::Bar => {
                let bar = indicatif::ProgressBar::new(total);
                if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} seeds ({eta})")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(label.to_owned());
                bar
            }
            _ => indicatif::ProgressBar::hidden(),
        };
        let lines = match mode {
            Mode::Lines(every) => Some(Mutex::new((Tally::new(label, total, replay, every), wall_now()))),
            _ => None,
        };
        Progress { bar, lines }
    }

    /// Draw the bar (if any) among `group`'s, for runs that show several
    /// at once; a hidden one stays hidden.
    pub fn in_group(self, group: &indicatif::MultiProgress) -> Progress {
        if !self.bar.is_hidden() {
            group.add(self.bar.clone());
        }
        self
    }

    pub fn hidden() -> Progress {
        Progress::new(Mode::Hidden, "", 0, String::new())
    }

    /// One seed finished (`None`: it could not run at all).
    pub fn seed_done(&self, outcome: Option<&SeedOutcome>) {
        self.bar.inc(1);
        if let Some(m) = &self.lines {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = Duration::from_micros(wall_us_since(g.1));
            for line in g.0.note(outcome, elapsed) {
                eprintln!("{line}");
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The counting and the wording, apart from the clock, so tests can drive it.
#[derive(Debug)]
pub struct Tally {
    label: String,
    total: u64,
    replay: String,
    every: Duration,
    done: u64,
    failed: u64,
    next_line: Duration,
}

impl Tally {
    pub fn new(label: &str, total: u64, replay: String, every: Duration) -> Tally {
        Tally { label: label.to_owned(), total, replay, every, done: 0, failed: 0, next_line: every }
    }

    /// The lines to print after a seed finished `elapsed` into the run.
    pub fn note(&mut self, outcome: Option<&SeedOutcome>, elapsed: Duration) -> Vec<String> {
        self.done += 1;
        let mut out = Vec::new();
        let failure = match outcome {
            Some(o) => o.failures.first().map(|f| (o.seed, f)),
            None => None,
        };
        if let Some((seed, f)) = failure {
            self.failed += 1;
            if self.failed <= FAILURES_SHOWN {
                out.push(format!(
                    "[{}] seed {seed} failed: {} at {} (replay: {} --seed {seed})",
                    self.label,
                    f.invariant,
                    clock(Duration::from_millis(f.sim_time_ms.max(0) as u64)),
                    self.replay
                ));
            }
        }
        if elapsed >= self.next_line && self.done < self.total {
            while self.next_line <= elapsed {
                self.next_line += self.every;
            }
            out.push(self.status(elapsed));
        }
        out
    }

    fn status(&self, elapsed: Duration) -> String {
        let left = self.total.saturating_sub(self.done);
        let eta = elapsed.mul_f64(left as f64 / self.done.max(1) as f64);
        format!(
            "[{}] {}/{} seeds, {} failed, {} elapsed, about {} left",
            self.label,
            self.done,
            self.total,
            self.failed,
            clock(elapsed),
            clock(eta)
        )
    }
}

/// `1h02m`, `4m05s`, `9s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gastown_sim::report::SeedFailure;

    fn seed(n: u64, fail: Option<&str>) -> SeedOutcome {
        let failures = fail
            .map(|inv| SeedFailure { invariant: inv.into(), detail: String::new(), sim_time_ms: 3_723_000 })
            .into_iter()
            .collect();
        SeedOutcome { seed: n, failures, ..Default::default() }
    }

    fn tally() -> Tally {
        Tally::new("smoke", 100, "gastown-sim replay s.toml".into(), Duration::from_secs(30))
    }

    #[test]
    fn a_status_line_comes_at_most_once_per_interval() {
        let mut t = tally();
        let mut printed = Vec::new();
        for i in 1..=20u64 {
            printed.extend(t.note(Some(&seed(i, None)), Duration::from_secs(i * 5)));
        }
        // Seeds end at 5 s, 10 s, … 100 s: lines at 30 s, 60 s and 90 s.
        assert_eq!(printed.len(), 3, "{printed:?}");
        assert_eq!(printed[0], "[smoke] 6/100 seeds, 0 failed, 30s elapsed, about 7m50s left");
        assert!(printed[2].starts_with("[smoke] 18/100 seeds"), "{}", printed[2]);
    }

    #[test]
    fn a_long_seed_skips_missed_intervals_instead_of_bursting() {
        let mut t = tally();
        assert_eq!(t.note(Some(&seed(1, None)), Duration::from_secs(95)).len(), 1);
        assert!(t.note(Some(&seed(2, None)), Duration::from_secs(100)).is_empty(), "the next line is due at 120 s");
        assert_eq!(t.note(Some(&seed(3, None)), Duration::from_secs(120)).len(), 1);
    }

    #[test]
    fn each_failing_seed_is_reported_at_once_with_its_replay() {
        let mut t = tally();
        let lines = t.note(Some(&seed(7, Some("liveness"))), Duration::from_secs(1));
        assert_eq!(lines, ["[smoke] seed 7 failed: liveness at 1h02m (replay: gastown-sim replay s.toml --seed 7)"]);
        let later = t.note(Some(&seed(8, None)), Duration::from_secs(31));
        assert!(later[0].contains("2/100 seeds, 1 failed"), "{later:?}");
    }

    #[test]
    fn failures_past_the_limit_are_only_counted() {
        let mut t = tally();
        let shown: usize = (1..=15).map(|i| t.note(Some(&seed(i, Some("x"))), Duration::from_secs(1)).len()).sum();
        assert_eq!(shown as u64, FAILURES_SHOWN);
        assert!(t.note(None, Duration::from_secs(40))[0].contains("16/100 seeds, 15 failed"));
    }

    #[test]
    fn no_status_line_once_every_seed_is_done() {
        let mut t = Tally::new("x", 1, String::new(), Duration::from_secs(1));
        assert!(t.note(Some(&seed(1, None)), Duration::from_secs(60)).is_empty(), "the summary follows at once");
    }

    #[test]
    fn durations_read_as_a_clock() {
        assert_eq!(clock(Duration::from_secs(9)), "9s");
        assert_eq!(clock(Duration::from_secs(245)), "4m05s");
        assert_eq!(clock(Duration::from_secs(3725)), "1h02m");
    }

    #[test]
    fn modes_follow_the_flag_off_a_terminal() {
        if std::io::stdout().is_terminal() {
            return; // a developer's terminal: the bar, whatever the flag
        }
        assert_eq!(Mode::choose(false, 0), Mode::Hidden);
        assert_eq!(Mode::choose(true, 15), Mode::Lines(Duration::from_secs(15)));
    }
}
