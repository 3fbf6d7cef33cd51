//! Bead rules: lazy assignment (Rule 1), stale assignees (1b), dispatch of
//! idle hooked agents (2), lost agents (3), in-review issues whose reviews all
//! ended (4), and the dispatch circuit breaker.

use super::constants::{
    HEARTBEAT_STALE_MS, MAX_DISPATCH_ATTEMPTS, ORPHANED_SOURCE_TIMEOUT_MS, STALE_IN_PROGRESS_TIMEOUT_MS,
};
use super::{breaker_open, in_cooldown};
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus, BeadStatus, BeadType, Label};
use crate::time::stale;
use crate::town::actions::Action;
use crate::town::snapshot::{SnapBead, TownSnapshot};

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    let breaker = breaker_open(s);
    let issues = || s.live().filter(|b| b.bead_type == BeadType::Issue);
    // Rule order matters: apply-time agent reuse sees earlier rules' effects.
    for b in issues().filter(|b| b.status == BeadStatus::Open && b.assignee.is_none()) {
        assign(s, b, breaker, out);
    }
    for b in issues().filter(|b| b.status == BeadStatus::Open && b.assignee.is_some()) {
        stale_assignee(s, b, out);
    }
    idle_hooked_dispatch(s, breaker, out);
    for b in issues().filter(|b| b.status == BeadStatus::InProgress) {
        lost_agent(s, b, out);
    }
    for b in issues().filter(|b| b.status == BeadStatus::InReview) {
        reviews_ended(s, b, out);
    }
    if breaker {
        out.push(Action::NotifyMayor {
            message: format!(
                "Dispatch circuit breaker is OPEN: {} failed dispatches in the last 30 minutes; dispatch is paused",
                s.breaker_failures
            ),
        });
    }
}

/// Rule 1: an open, unassigned, unblocked issue in a rig gets a polecat
/// (chosen at apply time). Held beads, triage requests and members of staged
/// convoys wait; beads past the rig's attempt cap fail.
fn assign(s: &TownSnapshot, b: &SnapBead, breaker: bool, out: &mut Vec<Action>) {
    let Some(rig) = b.rig_id.as_deref() else { return };
    if b.labels.has(Label::TriageRequest) || b.labels.has(Label::Held) || b.blocked || b.in_staged_convoy || s.draining
    {
        return;
    }
    let cap = s.rig_max_attempts(Some(rig));
    if b.dispatch_attempts >= cap {
        let reason = format!("max dispatch attempts exceeded ({})", b.dispatch_attempts);
        out.push(Action::transition_bead(&b.id, Some(BeadStatus::Open), BeadStatus::Failed, reason));
        return;
    }
    if in_cooldown(s, b.dispatch_attempts, b.last_dispatch_attempt_at) || breaker {
        return;
    }
    out.push(Action::dispatch(None, &b.id, rig));
}

/// Rule 1b: an open issue assigned to an agent that is not hooked to it loses
/// the assignment, so Rule 1 can pick it up. Runs while draining.
fn stale_assignee(s: &TownSnapshot, b: &SnapBead, out: &mut Vec<Action>) {
    let Some(assignee) = b.assignee.as_deref() else { return };
    if b.rig_id.is_none() || assignee == "system" || b.labels.has(Label::TriageRequest) {
        return;
    }
    let held = s.agents.iter().any(|a| a.id == assignee && a.hook.as_deref() == Some(b.id.as_str()));
    if !held {
        out.push(Action::clear_assignee(&b.id));
    }
}

/// Rule 2: an idle non-refinery agent hooked to an open bead is dispatched,
/// subject to the fixed cap of 5, cooldown, blockers, drain and breaker. Held
/// beads and staged-convoy members wait here too (upstream let them through).
fn idle_hooked_dispatch(s: &TownSnapshot, breaker: bool, out: &mut Vec<Action>) {
    for a in s.agents.iter().filter(|a| a.status == AgentStatus::Idle && a.role != AgentRole::Refinery) {
        let Some(b) = a.hook.as_deref().and_then(|h| s.bead(h)) else { continue };
        if b.status != BeadStatus::Open {
            continue;
        }
        if b.dispatch_attempts >= MAX_DISPATCH_ATTEMPTS {
            let reason = format!("max dispatch attempts exceeded ({})", b.dispatch_attempts);
            out.push(Action::transition_bead(&b.id, None, BeadStatus::Failed, reason));
            out.push(Action::unhook(&a.id, "max dispatch attempts"));
            continue;
        }
        let waits = (b.labels.has(Label::Held) || b.in_staged_convoy) && !defects::on(Defect::Rule2IgnoresHeld);
        if in_cooldown(s, b.dispatch_attempts, b.last_dispatch_attempt_at)
            || b.blocked
            || waits
            || s.draining
            || breaker
        {
            continue;
        }
        let rig = b.rig_id.as_deref().or(a.rig_id.as_deref()).unwrap_or("");
        out.push(Action::dispatch(Some(&a.id), &b.id, rig));
    }
}

/// Why Rule 3 takes an issue back (the oracles key on it).
pub const AGENT_LOST: &str = "agent lost";

/// Rule 3: an in-progress issue untouched for 5 min whose hooked agent is
/// neither working/stalled nor heart-beating goes back to open (or fails at
/// the cap). Runs while draining.
fn lost_agent(s: &TownSnapshot, b: &SnapBead, out: &mut Vec<Action>) {
    if !stale(s.now, Some(b.updated_at), STALE_IN_PROGRESS_TIMEOUT_MS) {
        return;
    }
    let alive = s.agents_hooked_to(&b.id).any(|a| {
        matches!(a.status, AgentStatus::Working | AgentStatus::Stalled)
            || (!stale(s.now, a.last_activity_at, HEARTBEAT_STALE_MS)
                && !defects::on(Defect::LostAgentIgnoresHeartbeat))
    });
    if alive {
        return;
    }
    if b.dispatch_attempts >= MAX_DISPATCH_ATTEMPTS {
        let reason = format!("{AGENT_LOST}, max dispatch attempts exhausted ({})", b.dispatch_attempts);
        out.push(Action::transition_bead(&b.id, Some(BeadStatus::InProgress), BeadStatus::Failed, reason));
    } else {
        out.push(Action::transition_bead(&b.id, Some(BeadStatus::InProgress), BeadStatus::Open, AGENT_LOST));
    }
    out.push(Action::clear_assignee(&b.id));
}

/// Rule 4: an in-review issue whose MRs have all ended: closed if one merged,
/// reopened if all failed.
fn reviews_ended(s: &TownSnapshot, b: &SnapBead, out: &mut Vec<Action>) {
    if !stale(s.now, Some(b.updated_at), ORPHANED_SOURCE_TIMEOUT_MS) {
        return;
    }
    let mut any = false;
    let mut merged = false;
    for mr in s.trackers_of(&b.id).filter(|m| m.bead_type == BeadType::MergeRequest) {
        if mr.status.is_live() {
            return;
        }
        any = true;
        merged |= mr.status == BeadStatus::Closed;
    }
    if !any {
        return;
    }
    if merged {
        out.push(Action::transition_bead(
            &b.id,
            Some(BeadStatus::InReview),
            BeadStatus::Closed,
            "MR merged (reconciler safety net)",
        ));
    } else {
        out.push(Action::transition_bead(&b.id, Some(BeadStatus::InReview), BeadStatus::Open, "all reviews failed"));
        out.push(Action::clear_assignee(&b.id));
    }
}

#[cfg(test)]
mod tests {
    use super::super::constants::*;
    use super::super::testkit::*;
    use super::*;
    use crate::model::RigOverrides;

    #[test]
    fn rule1_dispatches_only_eligible_beads() {
        let mut k = Kit::new();
        k.issue("ok", BeadStatus::Open);
        k.issue("held", BeadStatus::Open);
        k.label("held", &[Label::Held]);
        k.issue("triage", BeadStatus::Open);
        k.label("triage", &[Label::TriageRequest]);
        k.issue("blocked", BeadStatus::Open);
        k.block("blocked", "ok");
        k.issue("norig", BeadStatus::Open);
        k.s.bead_mut("norig").unwrap().rig_id = None;
        k.convoy("c", crate::model::MergeMode::ReviewThenLand, None).staged = true;
        k.issue("staged", BeadStatus::Open);
        k.track("staged", "c");
        let out = k.run(reconcile);
        assert_eq!(dispatched(&out), vec![(None, "ok")]);
        k.draining = true;
        assert!(dispatched(&k.run(reconcile)).is_empty());
    }

    #[test]
    fn rule1_cooldown_boundary_and_cap() {
        let mut k = Kit::new();
        let at = k.ago(dispatch_cooldown_ms(2));
        let past = k.ago(dispatch_cooldown_ms(2) + 1);
        let b = k.bead("cooling", BeadType::Issue, BeadStatus::Open);
        b.dispatch_attempts = 2;
        b.last_dispatch_attempt_at = Some(at);
        let b = k.bead("cooled", BeadType::Issue, BeadStatus::Open);
        b.dispatch_attempts = 2;
        b.last_dispatch_attempt_at = Some(past);
        let b = k.bead("capped", BeadType::Issue, BeadStatus::Open);
        b.dispatch_attempts = 5;
        let out = k.run(reconcile);
        assert_eq!(dispatched(&out), vec![(None, "cooled")]);
        assert_eq!(transitions(&out), vec![("capped", BeadStatus::Failed)]);
    }

    #[test]
    fn rule1_uses_the_per_rig_cap() {
        let mut k = Kit::new();
        k.rig_overrides(RigOverrides { max_dispatch_attempts: Some(2), ..Default::default() });
        k.bead("b", BeadType::Issue, BeadStatus::Open).dispatch_attempts = 2;
        assert_eq!(transitions(&k.run(reconcile)), vec![("b", BeadStatus::Failed)]);
    }

    #[test]
    fn breaker_open_suppresses_dispatch_and_notifies() {
        let mut k = Kit::new();
        k.issue("b", BeadStatus::Open);
        k.s.breaker_failures = BREAKER_FAILURE_THRESHOLD - 1;
        assert_eq!(dispatched(&k.run(reconcile)).len(), 1);
        k.s.breaker_failures = BREAKER_FAILURE_THRESHOLD;
        let out = k.run(reconcile);
        assert!(dispatched(&out).is_empty());
        assert!(matches!(out.last(), Some(Action::NotifyMayor { .. })));
    }

    #[test]
    fn rule1b_clears_assignee_without_matching_hook() {
        let mut k = Kit::new();
        k.issue("held_ok", BeadStatus::Open);
        k.s.bead_mut("held_ok").unwrap().assignee = Some("a".into());
        k.agent("a", AgentStatus::Idle, Some("held_ok"), Some(k.ago(1)));
        k.issue("stale", BeadStatus::Open);
        k.s.bead_mut("stale").unwrap().assignee = Some("ghost".into());
        k.issue("sys", BeadStatus::Open);
        k.s.bead_mut("sys").unwrap().assignee = Some("system".into());
        k.issue("tr", BeadStatus::Open);
        k.label("tr", &[Label::TriageRequest]);
        k.s.bead_mut("tr").unwrap().assignee = Some("ghost".into());
        // Only open beads are candidates: a polecat that called gt_done has
        // unhooked from its in-review bead, which keeps its assignee.
        k.issue("reviewed", BeadStatus::InReview);
        k.s.bead_mut("reviewed").unwrap().assignee = Some("done".into());
        k.draining = true;
        let out = k.run(reconcile);
        let cleared: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::ClearBeadAssignee { bead_id } => Some(bead_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(cleared, vec!["stale"]);
    }

    #[test]
    fn rule2_dispatches_idle_hooked_agents_with_fixed_cap() {
        let mut k = Kit::new();
        k.rig_overrides(RigOverrides { max_dispatch_attempts: Some(50), ..Default::default() });
        k.issue("b", BeadStatus::Open);
        k.s.bead_mut("b").unwrap().assignee = Some("a".into());
        k.agent("a", AgentStatus::Idle, Some("b"), Some(k.ago(1)));
        k.issue("capped", BeadStatus::Open);
        k.s.bead_mut("capped").unwrap().dispatch_attempts = 5;
        k.s.bead_mut("capped").unwrap().assignee = Some("c".into());
        k.agent("c", AgentStatus::Idle, Some("capped"), Some(k.ago(1)));
        k.issue("held", BeadStatus::Open);
        k.label("held", &[Label::Held]);
        k.s.bead_mut("held").unwrap().assignee = Some("h".into());
        k.agent("h", AgentStatus::Idle, Some("held"), Some(k.ago(1)));
        let out = k.run(reconcile);
        assert_eq!(dispatched(&out), vec![(Some("a"), "b")]);
        assert!(transitions(&out).contains(&("capped", BeadStatus::Failed)));
        assert_eq!(unhooked(&out), vec!["c"]);
    }

    /// Each reason for Rule 2 to wait holds on its own, and Rule 2 is for idle
    /// agents other than refineries (Rule 6 dispatches those).
    #[test]
    fn rule2_each_reason_to_wait_holds_alone() {
        let hooked = || {
            let mut k = Kit::new();
            k.issue("b", BeadStatus::Open);
            k.s.bead_mut("b").unwrap().assignee = Some("a".into());
            k.agent("a", AgentStatus::Idle, Some("b"), Some(k.ago(1)));
            k
        };
        assert_eq!(dispatched(&hooked().run(reconcile)), vec![(Some("a"), "b")]);
        type Wait = (&'static str, fn(&mut Kit));
        let waits: [Wait; 6] = [
            ("cooling down", |k| {
                let last = k.ago(1_000);
                let b = k.s.bead_mut("b").unwrap();
                (b.dispatch_attempts, b.last_dispatch_attempt_at) = (1, Some(last));
            }),
            ("blocked", |k| {
                k.issue("blocker", BeadStatus::InProgress);
                k.block("b", "blocker");
            }),
            ("draining", |k| k.draining = true),
            ("breaker open", |k| k.s.breaker_failures = BREAKER_FAILURE_THRESHOLD),
            ("a refinery", |k| k.s.agents[0].role = AgentRole::Refinery),
            ("a working agent", |k| k.s.agents[0].status = AgentStatus::Working),
        ];
        for (why, set) in waits {
            let mut k = hooked();
            set(&mut k);
            assert!(dispatched(&k.run(reconcile)).is_empty(), "{why}: dispatched");
        }
    }

    #[test]
    fn rule3_stale_in_progress_boundary_and_liveness() {
        let mut k = Kit::new();
        for id in ["at", "past", "working", "fresh", "capped", "silent"] {
            k.issue(id, BeadStatus::InProgress);
        }
        k.s.bead_mut("at").unwrap().updated_at = k.ago(STALE_IN_PROGRESS_TIMEOUT_MS);
        for id in ["past", "working", "fresh", "capped", "silent"] {
            k.s.bead_mut(id).unwrap().updated_at = k.ago(STALE_IN_PROGRESS_TIMEOUT_MS + 1);
        }
        k.s.bead_mut("capped").unwrap().dispatch_attempts = 5;
        k.agent("w", AgentStatus::Working, Some("working"), Some(k.ago(10 * 60_000)));
        k.agent("f", AgentStatus::Idle, Some("fresh"), Some(k.ago(HEARTBEAT_STALE_MS)));
        // Hooked but idle and silent: lost, as much as no agent at all.
        k.agent("s", AgentStatus::Idle, Some("silent"), Some(k.ago(HEARTBEAT_STALE_MS + 1)));
        k.draining = true;
        let out = k.run(reconcile);
        let lost = [("past", BeadStatus::Open), ("capped", BeadStatus::Failed), ("silent", BeadStatus::Open)];
        assert_eq!(transitions(&out), lost);
        // The oracle agrees, and names a reset under an agent that still heart-beats (#1358).
        assert!(crate::town::invariants::check_actions(&k.s, &out).is_empty());
        let reset = Action::transition_bead("fresh", Some(BeadStatus::InProgress), BeadStatus::Open, AGENT_LOST);
        let v = crate::town::invariants::check_actions(&k.s, &[reset]);
        assert_eq!(v.iter().map(|v| v.invariant).collect::<Vec<_>>(), ["heartbeating_agent_keeps_hook"]);
    }

    #[test]
    fn rule4_in_review_sources() {
        let mut k = Kit::new();
        for id in ["merged", "failed", "live", "none", "young"] {
            k.issue(id, BeadStatus::InReview);
            k.s.bead_mut(id).unwrap().updated_at = k.ago(ORPHANED_SOURCE_TIMEOUT_MS + 1);
        }
        k.s.bead_mut("young").unwrap().updated_at = k.ago(ORPHANED_SOURCE_TIMEOUT_MS);
        k.mr("m1", BeadStatus::Failed, Some("merged"), None);
        k.mr("m2", BeadStatus::Closed, Some("merged"), None);
        k.mr("m3", BeadStatus::Failed, Some("failed"), None);
        k.mr("m4", BeadStatus::Failed, Some("live"), None);
        k.mr("m5", BeadStatus::InProgress, Some("live"), Some("https://github.com/a/b/pull/1"));
        k.mr("m6", BeadStatus::Failed, Some("young"), None);
        let out = k.run(reconcile);
        let t: Vec<_> = transitions(&out).into_iter().filter(|(b, _)| !k.s.reviews.contains_key(*b)).collect();
        assert_eq!(t, vec![("merged", BeadStatus::Closed), ("failed", BeadStatus::Open)]);
    }
}
