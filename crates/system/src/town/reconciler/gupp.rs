//! GUPP, the activity watchdog: warn after 15 min without SDK activity,
//! escalate after 1 h, force-stop after 2 h. Skipped while draining.

use super::constants::{GUPP_ESCALATE_MS, GUPP_FORCE_STOP_MS, GUPP_WARN_MS, STALLED_AUTO_IDLE_MS};
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus, NudgeTier, TriageType};
use crate::time::stale;
use crate::town::actions::Action;
use crate::town::snapshot::{SnapAgent, TownSnapshot};

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    if s.draining {
        return;
    }
    for a in &s.agents {
        if matches!(a.status, AgentStatus::Working | AgentStatus::Stalled) && a.role != AgentRole::Mayor {
            watch(s, a, out);
        }
    }
}

fn recently_nudged(s: &TownSnapshot, a: &SnapAgent, tier: NudgeTier) -> bool {
    !defects::on(Defect::NudgeDedupIgnored) && s.recent_nudges.contains(&(a.id.clone(), tier))
}

fn watch(s: &TownSnapshot, a: &SnapAgent, out: &mut Vec<Action>) {
    // SDK activity, else the dispatch, else the heartbeat; nothing at all is A1's case.
    let activity = if defects::on(Defect::GuppIgnoresDispatchTime) {
        a.last_activity_at.and(a.last_event_at.or(a.last_activity_at))
    } else if defects::on(Defect::GuppNullActivity) {
        // Upstream's elapsed time from a missing timestamp: "since 1970".
        a.gupp_activity().or(Some(crate::time::Timestamp(0)))
    } else {
        a.gupp_activity()
    };
    let Some(activity) = activity else { return };
    let elapsed = s.now.since(activity);
    if elapsed < 0 {
        return; // a timestamp from the future is not evidence of anything (bug o)
    }
    if a.status == AgentStatus::Stalled && stale(s.now, a.stalled_at.or(a.last_activity_at), STALLED_AUTO_IDLE_MS) {
        return; // A2 owns long stalls; a later →stalled would undo its →idle
    }
    if elapsed > GUPP_FORCE_STOP_MS {
        out.push(Action::transition_agent(
            &a.id,
            a.status,
            AgentStatus::Stalled,
            "GUPP force stop — no SDK activity for 2h",
        ));
        out.push(Action::StopAgent { agent_id: a.id.clone(), reason: "exceeded 2h GUPP limit".into() });
        out.push(Action::CreateTriageRequest {
            agent_id: a.id.clone(),
            triage_type: TriageType::StuckAgent,
            reason: "GUPP force stop".into(),
        });
    } else if elapsed > GUPP_ESCALATE_MS {
        if !recently_nudged(s, a, NudgeTier::Escalate) {
            out.push(Action::SendNudge {
                agent_id: a.id.clone(),
                message:
                    "You have been working for over 1 hour without completing. Wrap up, call gt_done, or ask for help."
                        .into(),
                tier: NudgeTier::Escalate,
            });
            out.push(Action::CreateTriageRequest {
                agent_id: a.id.clone(),
                triage_type: TriageType::StuckAgent,
                reason: "GUPP escalation".into(),
            });
        }
    } else if elapsed > GUPP_WARN_MS && a.active_tools_empty && !recently_nudged(s, a, NudgeTier::Warn) {
        out.push(Action::SendNudge {
            agent_id: a.id.clone(),
            message: "You have been idle for 15 minutes with no tool activity. Continue your task or call gt_done."
                .into(),
            tier: NudgeTier::Warn,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn tiers(out: &[Action]) -> Vec<NudgeTier> {
        out.iter()
            .filter_map(|a| match a {
                Action::SendNudge { tier, .. } => Some(*tier),
                _ => None,
            })
            .collect()
    }

    fn kit_with(activity_ago: Option<i64>) -> Kit {
        let mut k = Kit::new();
        let mut a = k.agent_mut("a", AgentStatus::Working, Some("b"), Some(NOW));
        a.last_event_at = activity_ago.map(|ms| NOW.minus_ms(ms));
        k.push_agent(a);
        k
    }

    #[test]
    fn ladder_boundaries_are_strict() {
        assert!(kit_with(Some(GUPP_WARN_MS)).run(reconcile).is_empty());
        assert_eq!(tiers(&kit_with(Some(GUPP_WARN_MS + 1)).run(reconcile)), vec![NudgeTier::Warn]);
        assert_eq!(tiers(&kit_with(Some(GUPP_ESCALATE_MS)).run(reconcile)), vec![NudgeTier::Warn]);
        assert_eq!(tiers(&kit_with(Some(GUPP_ESCALATE_MS + 1)).run(reconcile)), vec![NudgeTier::Escalate]);
        assert_eq!(tiers(&kit_with(Some(GUPP_FORCE_STOP_MS)).run(reconcile)), vec![NudgeTier::Escalate]);
        let out = kit_with(Some(GUPP_FORCE_STOP_MS + 1)).run(reconcile);
        assert!(matches!(out[0], Action::TransitionAgent { to: AgentStatus::Stalled, .. }));
        assert!(matches!(out[1], Action::StopAgent { .. }));
        assert!(matches!(out[2], Action::CreateTriageRequest { .. }));
    }

    #[test]
    fn only_a_long_stall_is_left_to_a2_not_a_long_silent_working_agent() {
        let mut k = Kit::new();
        let silent = NOW.minus_ms(STALLED_AUTO_IDLE_MS + 1);
        let mut a = k.agent_mut("a", AgentStatus::Working, Some("b"), Some(silent));
        a.last_event_at = Some(silent);
        k.push_agent(a);
        let out = k.run(reconcile);
        assert!(matches!(out[0], Action::TransitionAgent { to: AgentStatus::Stalled, .. }), "{out:?}");
    }

    #[test]
    fn a_session_that_hangs_after_dispatch_is_caught_despite_heartbeats() {
        let mut k = Kit::new();
        let mut a = k.agent_mut("hung", AgentStatus::Working, Some("b"), Some(NOW.minus_ms(10_000)));
        a.last_event_at = None;
        a.last_dispatched_at = Some(NOW.minus_ms(GUPP_FORCE_STOP_MS + 1));
        k.push_agent(a);
        let out = k.run(reconcile);
        assert!(matches!(out[0], Action::TransitionAgent { to: AgentStatus::Stalled, .. }), "{out:?}");
        let mut k = Kit::new();
        let mut a = k.agent_mut("fresh", AgentStatus::Working, Some("b"), Some(NOW.minus_ms(10_000)));
        a.last_event_at = None;
        a.last_dispatched_at = Some(NOW.minus_ms(GUPP_WARN_MS));
        k.push_agent(a);
        assert!(k.run(reconcile).is_empty(), "15 min of grace after a dispatch (bug g)");
    }

    #[test]
    fn heartbeat_is_the_fallback_and_null_or_future_is_skipped() {
        let mut k = Kit::new();
        k.agent("a", AgentStatus::Working, Some("b"), Some(NOW.minus_ms(GUPP_WARN_MS + 1)));
        assert_eq!(tiers(&k.run(reconcile)), vec![NudgeTier::Warn]);
        let mut k = Kit::new();
        k.agent("a", AgentStatus::Working, Some("b"), None);
        assert!(k.run(reconcile).is_empty());
        let mut k = kit_with(Some(-60_000));
        k.s.agents[0].last_activity_at = Some(NOW.minus_ms(10 * GUPP_FORCE_STOP_MS));
        assert!(k.run(reconcile).is_empty(), "future SDK activity: skip");
    }

    #[test]
    fn dedup_tools_mayor_draining_and_long_stall() {
        let mut k = kit_with(Some(GUPP_WARN_MS + 1));
        k.s.recent_nudges.insert(("a".into(), NudgeTier::Warn));
        assert!(k.run(reconcile).is_empty());
        let mut k = kit_with(Some(GUPP_WARN_MS + 1));
        k.s.agents[0].active_tools_empty = false;
        assert!(k.run(reconcile).is_empty(), "mid-tool-call agents are not warned");
        let mut k = Kit::new();
        let mut m = k.agent_mut("mayor", AgentStatus::Working, None, Some(NOW.minus_ms(GUPP_FORCE_STOP_MS * 2)));
        m.role = AgentRole::Mayor;
        k.push_agent(m);
        assert!(k.run(reconcile).is_empty());
        let mut k = kit_with(Some(GUPP_FORCE_STOP_MS + 1));
        k.draining = true;
        assert!(k.run(reconcile).is_empty());
        let mut k = kit_with(Some(GUPP_FORCE_STOP_MS * 2));
        k.s.agents[0].status = AgentStatus::Stalled;
        k.s.agents[0].stalled_at = Some(NOW.minus_ms(STALLED_AUTO_IDLE_MS + 1));
        assert!(k.run(reconcile).is_empty(), "A2 owns it");
    }
}
