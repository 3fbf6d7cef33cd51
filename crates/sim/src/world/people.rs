//! CI and human reviewers on the forge, driven from the people stream
//! between steps (direct `Forge` calls: they are not the system under test).

use super::hosts::{lock, OWNER};
use super::run::World;
use gastown::forge::{CheckRun, ThreadKind};
use rand::Rng;

/// What people still have to do for one PR.
#[derive(Clone, Debug, Default)]
pub struct PrCare {
    pub ci_at: u64,
    pub ci_fails_first: bool,
    pub approve_at: Option<u64>,
    pub resolve_at: Option<u64>,
}

impl World {
    /// New PRs get CI (pending now, a result later), maybe a blocking
    /// review thread and, with branch protection, a human approval.
    pub(crate) fn people_step(&mut self, now: u64) {
        let Some(forge) = self.sh.forge() else { return };
        let prs = lock(&self.sh.prs).clone();
        for pr in prs.iter().skip(self.prs_seen) {
            let opened = format!("{} #{} for {} by {}", pr.repo, pr.number, pr.bead_id, pr.agent_id);
            self.trace.record(pr.opened_ms, "pr_opened", &opened);
            let (lo, hi) = self.sampled.ci_ms;
            let ci = now + self.people_rng.random_range(lo..=hi.max(lo));
            let fails = self.people_rng.random_bool(self.sampled.ci_failure.clamp(0.0, 1.0));
            let approve = self.cfg.town.require_review.then(|| {
                let (lo, hi) = self.cfg.people.approve_ms;
                now + self.people_rng.random_range(lo..=hi.max(lo))
            });
            let mut care = PrCare { ci_at: ci, ci_fails_first: fails, approve_at: approve, resolve_at: None };
            let _ = forge.set_checks(OWNER, &pr.repo, pr.number, &[CheckRun::pending("ci")], &[]);
            if now < self.heal_at && self.roll("blocking_review") {
                self.fired(now, "blocking_review");
                let _ = forge.add_thread(OWNER, &pr.repo, pr.number, ThreadKind::Blocking, None);
                let (lo, hi) = self.cfg.people.resolve_thread_ms;
                care.resolve_at = Some(now + self.people_rng.random_range(lo..=hi.max(lo)));
            }
            self.care.insert((pr.repo.clone(), pr.number), care);
        }
        self.prs_seen = prs.len();
        let keys: Vec<(String, u64)> = self.care.keys().cloned().collect();
        for key in keys {
            let (repo, n) = (&key.0, key.1);
            let Some(care) = self.care.get_mut(&key) else { continue };
            if care.ci_at <= now && care.ci_at > 0 {
                if care.ci_fails_first {
                    care.ci_fails_first = false;
                    care.ci_at = now + 3 * 60_000;
                    let _ = forge.set_checks(OWNER, repo, n, &[CheckRun::completed("ci", "failure")], &[]);
                } else {
                    care.ci_at = 0;
                    let _ = forge.set_checks(OWNER, repo, n, &[CheckRun::completed("ci", "success")], &[]);
                }
            }
            if care.approve_at.is_some_and(|t| t <= now) {
                care.approve_at = None;
                let _ = forge.set_review_decision(OWNER, repo, n, Some("APPROVED"));
            }
            if care.resolve_at.is_some_and(|t| t <= now) {
                care.resolve_at = None;
                let _ = forge.resolve_threads(OWNER, repo, n);
            }
        }
        self.care.retain(|_, c| c.ci_at > 0 || c.approve_at.is_some() || c.resolve_at.is_some());
    }
}
