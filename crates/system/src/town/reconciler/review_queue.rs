//! Review-queue rules: PR polling and merging (Rule 1), stuck and abandoned
//! direct reviews (2, 3), orphaned PR reviews (4), the code_review=false
//! fast-track and orphan cleanup, babysat PRs, refinery dispatch (5, 6) and
//! refineries left on finished MRs (7).

use super::constants::{
    ABANDONED_MR_TIMEOUT_MS, ORPHANED_PR_REVIEW_TIMEOUT_MS, PR_POLL_INTERVAL_MS, STUCK_REVIEW_TIMEOUT_MS,
};
use super::{breaker_open, in_cooldown};
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus, BeadStatus, BeadType};
use crate::time::stale;
use crate::town::actions::Action;
use crate::town::snapshot::{SnapBead, SnapReview, TownSnapshot};
use std::collections::BTreeSet;

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    let breaker = breaker_open(s);
    let empty = SnapReview::default();
    let mrs: Vec<(&SnapBead, &SnapReview)> = s
        .live()
        .filter(|b| {
            b.bead_type == BeadType::MergeRequest && matches!(b.status, BeadStatus::Open | BeadStatus::InProgress)
        })
        .map(|b| (b, s.reviews.get(&b.id).unwrap_or(&empty)))
        .collect();
    for &(mr, r) in &mrs {
        per_mr(s, mr, r, out);
    }
    let open_rigs: BTreeSet<&str> =
        mrs.iter().filter(|(b, _)| b.status == BeadStatus::Open).filter_map(|(b, _)| b.rig_id.as_deref()).collect();
    for &rig in &open_rigs {
        if !s.code_review(Some(rig)) {
            review_off(s, rig, &mrs, out);
        }
    }
    for &(mr, r) in &mrs {
        if mr.status == BeadStatus::Open && r.pr_url.is_some() && r.babysit {
            out.push(Action::transition_bead(
                &mr.id,
                Some(BeadStatus::Open),
                BeadStatus::InProgress,
                "babysat PR — skip refinery, fast-track to poll_pr",
            ));
        }
    }
    for &rig in &open_rigs {
        pop_for_refinery(s, rig, &mrs, breaker, out);
    }
    redispatch_refineries(s, breaker, out);
    refineries_on_finished_mrs(s, out);
}

/// No agent hooked to the MR is working or stalled.
fn no_live_agent(s: &TownSnapshot, mr: &str) -> bool {
    !s.agents_hooked_to(mr).any(|a| matches!(a.status, AgentStatus::Working | AgentStatus::Stalled))
}

/// Rules 1–4, each MR on its own.
fn per_mr(s: &TownSnapshot, mr: &SnapBead, r: &SnapReview, out: &mut Vec<Action>) {
    if mr.status != BeadStatus::InProgress {
        return;
    }
    let blocked = mr.blocked;
    match &r.pr_url {
        Some(url) => {
            // Rule 1: poll at most once a minute; merge every tick while flagged,
            // but never while fix-up work (rework, feedback) still blocks the MR.
            if r.last_poll_at.is_none_or(|t| s.now.since(t) >= PR_POLL_INTERVAL_MS)
                || defects::on(Defect::PollEveryTick)
            {
                out.push(Action::PollPr { bead_id: mr.id.clone(), pr_url: url.clone() });
            }
            if r.auto_merge_pending && (!blocked || defects::on(Defect::MergeIgnoresBlockers)) {
                out.push(Action::MergePr { bead_id: mr.id.clone(), pr_url: url.clone() });
            }
            // Rule 4: a PR review nobody polls or works on for 30 min has been orphaned.
            if mr.rig_id.is_some()
                && s.code_review(mr.rig_id.as_deref())
                && stale(s.now, Some(mr.updated_at), ORPHANED_PR_REVIEW_TIMEOUT_MS)
                && !r.awaiting_approval
                && no_live_agent(s, &mr.id)
            {
                out.push(Action::transition_bead(
                    &mr.id,
                    Some(BeadStatus::InProgress),
                    BeadStatus::Failed,
                    "PR review orphaned",
                ));
            }
        }
        None => {
            if blocked {
                return;
            }
            // Rule 2: a direct review stuck for 30 min without a working refinery.
            if stale(s.now, Some(mr.updated_at), STUCK_REVIEW_TIMEOUT_MS) && no_live_agent(s, &mr.id) {
                out.push(Action::transition_bead(
                    &mr.id,
                    Some(BeadStatus::InProgress),
                    BeadStatus::Open,
                    "stuck review, no working agent",
                ));
                for a in s.agents_hooked_to(&mr.id).filter(|a| a.status == AgentStatus::Idle) {
                    out.push(Action::unhook(&a.id, "stuck review cleanup"));
                }
            }
            // Rule 3: a direct review nobody is hooked to, for 2 min.
            if stale(s.now, Some(mr.updated_at), ABANDONED_MR_TIMEOUT_MS) && s.agents_hooked_to(&mr.id).next().is_none()
            {
                out.push(Action::transition_bead(
                    &mr.id,
                    Some(BeadStatus::InProgress),
                    BeadStatus::Open,
                    "abandoned, no agent hooked",
                ));
            }
        }
    }
}

/// Does an MR still need the refinery in a rig that does not review code?
/// Only review-and-merge convoy members and system landing MRs do.
fn refinery_needed(s: &TownSnapshot, mr: &SnapBead) -> bool {
    defects::on(Defect::RefineryFilterIgnored)
        || s.code_review(mr.rig_id.as_deref())
        || s.in_review_and_merge_convoy(&mr.id)
        || mr.created_by.as_deref() == Some("system")
}

/// Why `review_off` moves an MR past the refinery (the oracles know them).
pub const REVIEW_OFF_FAST_TRACK: &str = "refinery code review disabled — skip to poll_pr";
pub const REVIEW_OFF_NO_PR: &str = "MR bead has no pr_url and code review is disabled — polecat failed to create PR";

/// code_review = false: MRs with a PR skip the refinery and go to polling
/// (bug c); MRs without one were left by a polecat that never opened its PR,
/// so they fail and their source reopens (bug e).
fn review_off(s: &TownSnapshot, rig: &str, mrs: &[(&SnapBead, &SnapReview)], out: &mut Vec<Action>) {
    for &(mr, r) in mrs {
        if mr.status != BeadStatus::Open || mr.rig_id.as_deref() != Some(rig) || s.in_review_and_merge_convoy(&mr.id) {
            continue;
        }
        if r.pr_url.is_some() || defects::on(Defect::FastTrackWithoutPrUrl) {
            out.push(Action::transition_bead(
                &mr.id,
                Some(BeadStatus::Open),
                BeadStatus::InProgress,
                REVIEW_OFF_FAST_TRACK,
            ));
        } else if mr.created_by.as_deref().is_some_and(|c| c != "system") && !defects::on(Defect::NoOrphanMrCleanup) {
            out.push(Action::transition_bead(&mr.id, Some(BeadStatus::Open), BeadStatus::Failed, REVIEW_OFF_NO_PR));
            let source = s
                .tracks
                .get(&mr.id)
                .and_then(|t| t.iter().find(|id| s.bead(id).is_some_and(|b| b.bead_type != BeadType::Convoy)));
            if let Some(src) = source {
                out.push(Action::transition_bead(
                    src,
                    Some(BeadStatus::InReview),
                    BeadStatus::Open,
                    "MR failed (no PR created) — reopening for retry",
                ));
            }
        }
    }
}

/// Rule 5: the oldest open MR of a rig goes to the rig's idle refinery (or
/// creates one). Direct-strategy MRs are reviewed one at a time per rig.
fn pop_for_refinery(
    s: &TownSnapshot,
    rig: &str,
    mrs: &[(&SnapBead, &SnapReview)],
    breaker: bool,
    out: &mut Vec<Action>,
) {
    let in_rig = || mrs.iter().filter(|(b, _)| b.rig_id.as_deref() == Some(rig));
    let serial = |r: &SnapReview| r.pr_url.is_none() || defects::on(Defect::SerialReviewCountsPrs);
    if in_rig().any(|(b, r)| b.status == BeadStatus::InProgress && serial(r)) {
        return;
    }
    let Some((oldest, _)) = in_rig().find(|(b, r)| {
        b.status == BeadStatus::Open && (!r.babysit || defects::on(Defect::BabysatToRefinery)) && refinery_needed(s, b)
    }) else {
        return;
    };
    if s.draining || breaker {
        return;
    }
    // Upstream popped MRs without looking at their counters, so an MR that kept
    // losing its refinery was re-dispatched forever; fail it at the cap instead.
    if oldest.dispatch_attempts >= s.rig_max_attempts(Some(rig)) && !defects::on(Defect::Rule5IgnoresCap) {
        let reason = format!("refinery max dispatch attempts exceeded ({})", oldest.dispatch_attempts);
        out.push(Action::transition_bead(&oldest.id, Some(BeadStatus::Open), BeadStatus::Failed, reason));
        return;
    }
    let refinery = s.agents.iter().find(|a| a.role == AgentRole::Refinery && a.rig_id.as_deref() == Some(rig));
    match refinery {
        None => {
            out.push(Action::transition_bead(
                &oldest.id,
                Some(BeadStatus::Open),
                BeadStatus::InProgress,
                "popped for review (creating refinery)",
            ));
            out.push(Action::dispatch(None, &oldest.id, rig));
        }
        Some(r) if r.status != AgentStatus::Idle || r.hook.is_some() => {}
        Some(r) => {
            out.push(Action::transition_bead(
                &oldest.id,
                Some(BeadStatus::Open),
                BeadStatus::InProgress,
                "popped for review",
            ));
            out.push(Action::HookAgent { agent_id: r.id.clone(), bead_id: oldest.id.clone() });
            out.push(Action::dispatch(Some(&r.id), &oldest.id, rig));
        }
    }
}

/// Rule 6: an idle refinery still hooked to an in-progress MR is sent back to
/// it, unless the MR waits for a human; the MR fails at the rig's cap first.
/// One hooked to a live MR that needs no refinery is unhooked.
fn redispatch_refineries(s: &TownSnapshot, breaker: bool, out: &mut Vec<Action>) {
    for a in s.agents.iter().filter(|a| a.role == AgentRole::Refinery && a.status == AgentStatus::Idle) {
        let Some(mr) = a.hook.as_deref().and_then(|h| s.bead(h)) else { continue };
        if mr.bead_type != BeadType::MergeRequest || !matches!(mr.status, BeadStatus::Open | BeadStatus::InProgress) {
            continue;
        }
        // A refinery hooked by hand to an MR its rig does not review (bug c)
        // lets go instead of being sent to it.
        if !refinery_needed(s, mr) {
            out.push(Action::unhook(&a.id, "code review is off for this MR"));
            continue;
        }
        if mr.status != BeadStatus::InProgress
            || s.reviews.get(&mr.id).is_some_and(|r| r.awaiting_approval)
            || s.draining
        {
            continue;
        }
        let rig = mr.rig_id.as_deref().or(a.rig_id.as_deref()).unwrap_or("");
        if mr.dispatch_attempts >= s.rig_max_attempts(Some(rig)) && !defects::on(Defect::RefineryRedispatchUncapped) {
            let reason = format!("refinery max dispatch attempts exceeded ({})", mr.dispatch_attempts);
            out.push(Action::transition_bead(&mr.id, None, BeadStatus::Failed, reason));
            out.push(Action::unhook(&a.id, "max dispatch attempts"));
            continue;
        }
        if in_cooldown(s, mr.dispatch_attempts, mr.last_dispatch_attempt_at) || breaker {
            continue;
        }
        out.push(Action::dispatch(Some(&a.id), &mr.id, rig));
    }
}

/// Rule 7: a working refinery whose MR already ended (say, auto-merged
/// mid-review) is stopped, unhooked and idled in the same pass.
fn refineries_on_finished_mrs(s: &TownSnapshot, out: &mut Vec<Action>) {
    if defects::on(Defect::RefineryLeftOnFinishedMr) {
        return;
    }
    for a in s.agents.iter().filter(|a| a.role == AgentRole::Refinery) {
        if !matches!(a.status, AgentStatus::Working | AgentStatus::Stalled) {
            continue;
        }
        let Some(mr) = a.hook.as_deref().and_then(|h| s.bead(h)) else { continue };
        if mr.status.is_terminal() {
            let reason = format!("MR bead {} — cleanup", mr.status);
            out.push(Action::StopAgent { agent_id: a.id.clone(), reason: reason.clone().into() });
            out.push(Action::unhook(&a.id, reason));
            out.push(Action::transition_agent(&a.id, a.status, AgentStatus::Idle, "hooked MR is terminal"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::constants::*;
    use super::super::testkit::*;
    use super::*;
    use crate::model::{MergeMode, RigOverrides};
    use crate::town::invariants::check_actions;

    const PR: &str = "https://github.com/acme/app/pull/1";

    fn polls(out: &[Action]) -> Vec<&str> {
        out.iter()
            .filter_map(|a| match a {
                Action::PollPr { bead_id, .. } => Some(bead_id.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rule1_polls_at_most_once_a_minute_and_merges_when_flagged() {
        let mut k = Kit::new();
        k.mr("never", BeadStatus::InProgress, None, Some(PR));
        k.mr("at", BeadStatus::InProgress, None, Some(PR));
        k.review("at").last_poll_at = Some(k.ago(PR_POLL_INTERVAL_MS));
        k.mr("recent", BeadStatus::InProgress, None, Some(PR));
        k.review("recent").last_poll_at = Some(k.ago(PR_POLL_INTERVAL_MS - 1));
        k.review("recent").auto_merge_pending = true;
        k.mr("blocked", BeadStatus::InProgress, None, Some(PR));
        k.review("blocked").auto_merge_pending = true;
        k.block("blocked", "rework");
        let out = k.run(reconcile);
        assert_eq!(polls(&out), vec!["never", "at", "blocked"]);
        let merges: Vec<_> = out.iter().filter(|a| matches!(a, Action::MergePr { .. })).collect();
        assert_eq!(merges.len(), 1, "a rework blocker prevents auto-merge: {merges:?}");
    }

    #[test]
    fn rule4_spares_polled_awaiting_and_review_off() {
        let mut k = Kit::new();
        for id in ["orphan", "fresh", "waiting"] {
            k.mr(id, BeadStatus::InProgress, None, Some(PR));
            k.review(id).last_poll_at = Some(k.ago(1000));
            k.s.bead_mut(id).unwrap().updated_at = k.ago(ORPHANED_PR_REVIEW_TIMEOUT_MS + 1);
        }
        k.s.bead_mut("fresh").unwrap().updated_at = k.ago(ORPHANED_PR_REVIEW_TIMEOUT_MS);
        k.review("waiting").awaiting_approval = true;
        k.mr("reviewed", BeadStatus::InProgress, None, Some(PR));
        k.s.bead_mut("reviewed").unwrap().updated_at = k.ago(ORPHANED_PR_REVIEW_TIMEOUT_MS + 1);
        k.refinery("r", AgentStatus::Working, Some("reviewed"), Some(k.ago(1)));
        let out = k.run(reconcile);
        assert_eq!(transitions(&out), vec![("orphan", BeadStatus::Failed)]);
        k.rig_overrides(RigOverrides { code_review: Some(false), ..Default::default() });
        assert!(transitions(&k.run(reconcile)).is_empty());
    }

    #[test]
    fn rules_2_and_3_direct_reviews() {
        let mut k = Kit::new();
        k.mr("stuck", BeadStatus::InProgress, None, None);
        k.s.bead_mut("stuck").unwrap().updated_at = k.ago(STUCK_REVIEW_TIMEOUT_MS + 1);
        k.refinery("r", AgentStatus::Idle, Some("stuck"), Some(k.ago(1)));
        k.mr("abandoned", BeadStatus::InProgress, None, None);
        k.s.bead_mut("abandoned").unwrap().updated_at = k.ago(ABANDONED_MR_TIMEOUT_MS + 1);
        k.mr("rework", BeadStatus::InProgress, None, None);
        k.s.bead_mut("rework").unwrap().updated_at = k.ago(STUCK_REVIEW_TIMEOUT_MS + 1);
        k.block("rework", "x");
        k.mr("just_left", BeadStatus::InProgress, None, None);
        k.s.bead_mut("just_left").unwrap().updated_at = k.ago(ABANDONED_MR_TIMEOUT_MS);
        let out = k.run(reconcile);
        let t = transitions(&out);
        assert!(t.contains(&("stuck", BeadStatus::Open)));
        assert!(t.contains(&("abandoned", BeadStatus::Open)));
        assert!(!t.iter().any(|(b, _)| *b == "just_left"), "2 min of grace without an agent");
        let reasons: Vec<&str> = out
            .iter()
            .filter_map(|a| match a {
                Action::TransitionBead { bead_id, reason, .. } if bead_id == "stuck" => Some(reason.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, ["stuck review, no working agent"], "Rule 3 leaves a hooked MR to Rule 2");
        assert!(!t.iter().any(|(b, _)| *b == "rework"));
        assert_eq!(unhooked(&out), vec!["r"]);
    }

    #[test]
    fn review_off_fast_tracks_prs_and_fails_url_less_mrs() {
        let mut k = Kit::new();
        k.rig_overrides(RigOverrides { code_review: Some(false), ..Default::default() });
        k.issue("src", BeadStatus::InReview);
        k.mr("with_pr", BeadStatus::Open, None, Some(PR));
        k.mr("no_pr", BeadStatus::Open, Some("src"), None);
        k.mr("landing", BeadStatus::Open, None, None);
        k.s.bead_mut("landing").unwrap().created_by = Some("system".into());
        k.mr("polled", BeadStatus::InProgress, None, Some(PR));
        k.review("polled").last_poll_at = Some(k.ago(1000));
        let out = k.run(reconcile);
        let t = transitions(&out);
        assert!(!t.contains(&("landing", BeadStatus::Failed)), "a system landing MR keeps its refinery");
        assert!(!t.iter().any(|(b, _)| *b == "polled"), "only open MRs are fast-tracked");
        assert!(t.contains(&("with_pr", BeadStatus::InProgress)));
        assert!(t.contains(&("no_pr", BeadStatus::Failed)));
        assert!(t.contains(&("src", BeadStatus::Open)));
        // Only the system landing MR goes to a (new) refinery: bug d.
        assert_eq!(dispatched(&out), vec![(None, "landing")]);
    }

    #[test]
    fn review_and_merge_convoy_mrs_keep_the_refinery_when_review_is_off() {
        let mut k = Kit::new();
        k.rig_overrides(RigOverrides { code_review: Some(false), ..Default::default() });
        k.convoy("c", MergeMode::ReviewAndMerge, None);
        k.mr("m", BeadStatus::Open, None, Some(PR));
        k.review("m").convoy_id = Some("c".into());
        let out = k.run(reconcile);
        assert!(transitions(&out).iter().all(|(b, s)| !(*b == "m" && *s == BeadStatus::Failed)));
        assert_eq!(dispatched(&out), vec![(None, "m")]);
        // The oracle (§10.2 #1) is quiet here and names the old fast-track.
        assert!(check_actions(&k.s, &out).is_empty());
        let skipped =
            Action::transition_bead("m", Some(BeadStatus::Open), BeadStatus::InProgress, REVIEW_OFF_FAST_TRACK);
        let v = check_actions(&k.s, &[skipped]);
        assert_eq!(v.iter().map(|v| v.invariant).collect::<Vec<_>>(), ["review_and_merge_members_reviewed"]);
    }

    #[test]
    fn only_babysat_prs_skip_the_refinery() {
        let mut k = Kit::new();
        k.mr("plain", BeadStatus::Open, None, Some(PR));
        k.mr("baby", BeadStatus::Open, None, None);
        k.review("baby").babysit = true;
        let out = k.run(reconcile);
        let skipped: Vec<&str> = out
            .iter()
            .filter_map(|a| match a {
                Action::TransitionBead { bead_id, reason, .. } if reason.contains("babysat") => Some(bead_id.as_str()),
                _ => None,
            })
            .collect();
        assert!(skipped.is_empty(), "a plain PR and a babysat MR without a PR go to review: {skipped:?}");
        assert_eq!(dispatched(&out), vec![(None, "plain")]);
    }

    #[test]
    fn rule5_serialises_direct_reviews_and_skips_babysat() {
        let mut k = Kit::new();
        k.refinery("r", AgentStatus::Idle, None, Some(k.ago(1)));
        k.mr("baby", BeadStatus::Open, None, Some(PR));
        k.review("baby").babysit = true;
        k.mr("first", BeadStatus::Open, None, None);
        k.mr("second", BeadStatus::Open, None, None);
        let out = k.run(reconcile);
        assert_eq!(dispatched(&out), vec![(Some("r"), "first")]);
        assert!(out.contains(&Action::HookAgent { agent_id: "r".into(), bead_id: "first".into() }));
        assert!(transitions(&out).contains(&("baby", BeadStatus::InProgress)));

        let mut k2 = Kit::new();
        k2.refinery("r", AgentStatus::Idle, None, Some(k2.ago(1)));
        k2.mr("busy", BeadStatus::InProgress, None, None);
        k2.mr("waiting", BeadStatus::Open, None, None);
        assert!(dispatched(&k2.run(reconcile)).is_empty(), "a URL-less review in progress holds the queue");
        let mut k3 = Kit::new();
        k3.refinery("r", AgentStatus::Idle, None, Some(k3.ago(1)));
        k3.mr("polled", BeadStatus::InProgress, None, Some(PR));
        k3.review("polled").last_poll_at = Some(k3.ago(1));
        k3.mr("waiting", BeadStatus::Open, None, None);
        assert_eq!(dispatched(&k3.run(reconcile)), vec![(Some("r"), "waiting")], "PR reviews do not hold it");
        k3.draining = true;
        assert!(dispatched(&k3.run(reconcile)).is_empty());
    }

    #[test]
    fn rule5_fails_an_mr_at_the_cap_and_waits_for_a_free_refinery() {
        let mut k = Kit::new();
        k.refinery("r", AgentStatus::Idle, None, Some(k.ago(1)));
        k.mr("spent", BeadStatus::Open, None, None);
        k.s.bead_mut("spent").unwrap().dispatch_attempts = 5;
        let out = k.run(reconcile);
        assert!(dispatched(&out).is_empty(), "no refinery for an MR at the rig's cap");
        assert_eq!(transitions(&out), vec![("spent", BeadStatus::Failed)]);

        for (status, hook) in [(AgentStatus::Working, None), (AgentStatus::Idle, Some("elsewhere"))] {
            let mut k = Kit::new();
            k.refinery("r", status, hook, Some(k.ago(1)));
            k.mr("waiting", BeadStatus::Open, None, None);
            let out = k.run(reconcile);
            assert!(dispatched(&out).is_empty(), "a busy refinery ({status:?}, hook {hook:?}) is not popped to");
        }
    }

    #[test]
    fn rule6_redispatch_cap_before_cooldown_and_approval_exemption() {
        let mut k = Kit::new();
        k.mr("m", BeadStatus::InProgress, None, Some(PR));
        k.review("m").last_poll_at = Some(k.ago(1));
        k.refinery("r", AgentStatus::Idle, Some("m"), Some(k.ago(1)));
        assert_eq!(dispatched(&k.run(reconcile)), vec![(Some("r"), "m")]);
        k.s.agents[0].status = AgentStatus::Working;
        assert!(dispatched(&k.run(reconcile)).is_empty(), "a working refinery is not sent again");
        k.s.agents[0].status = AgentStatus::Idle;
        k.s.breaker_failures = BREAKER_FAILURE_THRESHOLD;
        assert!(dispatched(&k.run(reconcile)).is_empty(), "the open breaker pauses Rule 6 too");
        k.s.breaker_failures = 0;
        k.review("m").awaiting_approval = true;
        assert!(dispatched(&k.run(reconcile)).is_empty());
        k.review("m").awaiting_approval = false;
        let b = k.s.bead_mut("m").unwrap();
        b.dispatch_attempts = 5;
        b.last_dispatch_attempt_at = Some(NOW);
        let out = k.run(reconcile);
        assert!(transitions(&out).contains(&("m", BeadStatus::Failed)));
        assert_eq!(unhooked(&out), vec!["r"]);
    }

    #[test]
    fn rule7_stops_refinery_on_terminal_mr() {
        let mut k = Kit::new();
        k.mr("m", BeadStatus::Closed, None, Some(PR));
        k.refinery("r", AgentStatus::Working, Some("m"), Some(k.ago(1)));
        let out = k.run(reconcile);
        assert!(matches!(out[0], Action::StopAgent { .. }));
        assert_eq!(unhooked(&out), vec!["r"]);
        assert_eq!(idled(&out), vec!["r".to_owned()]);
    }
}
