//! The run's seeds on worker threads. Every (scenario, seed) of a run goes
//! on one queue, so a scenario's last seeds overlap the next scenario's
//! first ones instead of leaving a core idle between scenarios. Each seed is
//! a whole single-threaded simulation: threads never share simulated state,
//! and the CLI is the only place that uses them.

use crate::progress::Progress;
use gastown_sim::report::SeedOutcome;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Call `work` on every task from `jobs` threads that take the tasks in
/// order from one shared queue (on the calling thread when `jobs` ≤ 1).
pub fn on_threads<T: Sync>(tasks: &[T], jobs: usize, work: impl Fn(&T) + Sync) {
    let next = AtomicUsize::new(0);
    let worker = || {
        while let Some(task) = tasks.get(next.fetch_add(1, Ordering::SeqCst)) {
            work(task);
        }
    };
    if jobs <= 1 {
        worker();
    } else {
        std::thread::scope(|s| {
            for _ in 0..jobs.min(tasks.len().max(1)) {
                s.spawn(worker);
            }
        });
    }
}

/// One group of seeds on the queue (a scenario), and how to show and run it.
pub struct Group<'a> {
    pub seeds: Vec<u64>,
    /// Made when the group's first seed starts, so its clock and estimate
    /// count from then.
    pub progress: Box<dyn Fn() -> Progress + Sync + 'a>,
    pub run: Box<dyn Fn(u64) -> Result<SeedOutcome, String> + Sync + 'a>,
}

/// Run every group's seeds on `jobs` threads. `finished` gets each group's
/// outcomes, in seed order, as soon as that group and every group before it
/// are done, so what it prints comes in group order. A seed that cannot run
/// at all stops the queue: its group and every later one are not reported,
/// and the error of the earliest such group is returned with that group's
/// index (every group before it was reported).
pub fn run_groups(
    groups: &[Group<'_>],
    jobs: usize,
    finished: impl FnMut(usize, Vec<SeedOutcome>) + Send,
) -> Result<(), (usize, String)> {
    let tasks: Vec<(usize, u64)> =
        groups.iter().enumerate().flat_map(|(g, group)| group.seeds.iter().map(move |&seed| (g, seed))).collect();
    let progress: Vec<OnceLock<Progress>> = groups.iter().map(|_| OnceLock::new()).collect();
    let stopped = AtomicBool::new(false);
    let board = Mutex::new(Board { done: groups.iter().map(|_| Vec::new()).collect(), next: 0, error: None, finished });
    let lock = || board.lock().unwrap_or_else(|p| p.into_inner());
    on_threads(&tasks, jobs, |&(g, seed)| {
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        let shown = progress[g].get_or_init(|| (groups[g].progress)());
        let outcome = (groups[g].run)(seed);
        shown.seed_done(outcome.as_ref().ok());
        let mut board = lock();
        match outcome {
            Ok(o) => board.done[g].push(o),
            Err(e) => {
                stopped.store(true, Ordering::SeqCst);
                if board.error.as_ref().is_none_or(|&(bad, _)| g < bad) {
                    board.error = Some((g, e));
                }
            }
        }
        board.report_ready(groups, &progress);
    });
    let mut board = lock();
    board.report_ready(groups, &progress);
    board.error.take().map_or(Ok(()), Err)
}

struct Board<F> {
    done: Vec<Vec<SeedOutcome>>,
    /// The first group not yet handed to `finished`.
    next: usize,
    error: Option<(usize, String)>,
    finished: F,
}

impl<F: FnMut(usize, Vec<SeedOutcome>)> Board<F> {
    /// Hand over every complete group from `next` on, stopping at the first
    /// incomplete one or at the group whose seed could not run.
    fn report_ready(&mut self, groups: &[Group<'_>], progress: &[OnceLock<Progress>]) {
        while self.next < groups.len() && self.done[self.next].len() == groups[self.next].seeds.len() {
            let g = self.next;
            if self.error.as_ref().is_some_and(|&(bad, _)| bad <= g) {
                return;
            }
            self.next += 1;
            if let Some(p) = progress[g].get() {
                p.finish();
            }
            let mut outcomes = std::mem::take(&mut self.done[g]);
            outcomes.sort_by_key(|o| o.seed);
            (self.finished)(g, outcomes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group<'a>(seeds: &[u64], fail_on: Option<u64>) -> Group<'a> {
        Group {
            seeds: seeds.to_vec(),
            progress: Box::new(Progress::hidden),
            run: Box::new(move |seed| {
                if Some(seed) == fail_on {
                    return Err(format!("seed {seed} cannot run"));
                }
                Ok(SeedOutcome { seed, ..SeedOutcome::default() })
            }),
        }
    }

    fn seeds_of(outcomes: &[SeedOutcome]) -> Vec<u64> {
        outcomes.iter().map(|o| o.seed).collect()
    }

    #[test]
    fn groups_are_reported_whole_in_order_whatever_finishes_first() {
        for jobs in [1, 2, 4] {
            let groups = [group(&[3, 1, 2], None), group(&[], None), group(&[7], None), group(&[5, 4], None)];
            let mut got = Vec::new();
            run_groups(&groups, jobs, |g, o| got.push((g, seeds_of(&o)))).unwrap();
            assert_eq!(got, [(0, vec![1, 2, 3]), (1, vec![]), (2, vec![7]), (3, vec![4, 5])], "--jobs {jobs}");
        }
    }

    #[test]
    fn a_seed_that_cannot_run_stops_the_run_after_the_groups_before_it() {
        let groups = [group(&[1, 2], None), group(&[1, 2, 3], Some(2)), group(&[1], None)];
        let mut got = Vec::new();
        let err = run_groups(&groups, 1, |g, o| got.push((g, seeds_of(&o)))).unwrap_err();
        assert_eq!(err, (1, "seed 2 cannot run".to_owned()));
        assert_eq!(got, [(0, vec![1, 2])], "neither the broken group nor a later one is reported");
    }

    #[test]
    fn an_empty_run_reports_its_empty_groups() {
        let groups = [group(&[], None), group(&[], None)];
        let mut got = Vec::new();
        run_groups(&groups, 2, |g, o| got.push((g, o.len()))).unwrap();
        assert_eq!(got, [(0, 0), (1, 0)]);
    }
}
