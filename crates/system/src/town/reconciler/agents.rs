//! Agent rules A1–A5: heartbeat loss, long stalls, counter auto-reset, and
//! idle agents still holding a hook.

use super::constants::{DISPATCH_RESET_IDLE_MS, HEARTBEAT_STALE_MS, MAX_DISPATCH_ATTEMPTS, STALLED_AUTO_IDLE_MS};
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus, BeadStatus};
use crate::time::stale;
use crate::town::actions::Action;
use crate::town::snapshot::{SnapAgent, TownSnapshot};

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    for a in &s.agents {
        match a.status {
            AgentStatus::Working if !s.draining => working_agent(s, a, out),
            AgentStatus::Stalled if !s.draining => stalled_agent(s, a, out),
            AgentStatus::Idle => idle_hooked_agent(s, a, out),
            _ => {}
        }
        counter_reset(s, a, out);
    }
}

/// A1: a working agent whose heartbeat stopped, or that has nothing hooked, is idle.
/// Skipped while draining (heartbeats stop during a drain).
fn working_agent(s: &TownSnapshot, a: &SnapAgent, out: &mut Vec<Action>) {
    if a.role == AgentRole::Mayor {
        return;
    }
    let reason = match a.last_activity_at {
        None => "no heartbeat received since dispatch",
        Some(_) if stale(s.now, a.last_activity_at, HEARTBEAT_STALE_MS) => "heartbeat lost (3 missed cycles)",
        Some(_) if a.hook.is_none() => "working agent has no hook (gt_done already completed)",
        Some(_) => return,
    };
    out.push(Action::transition_agent(&a.id, AgentStatus::Working, AgentStatus::Idle, reason));
}

/// A2: an agent stalled for 2 h 30 min (from when it stalled, not from its
/// heartbeats, which go on after a GUPP stop) goes idle and loses its hook.
fn stalled_agent(s: &TownSnapshot, a: &SnapAgent, out: &mut Vec<Action>) {
    let at = if defects::on(Defect::StalledTimeoutFromHeartbeat) { a.last_activity_at } else { a.stalled_at };
    let Some(at) = at else { return };
    if s.now.since(at) > STALLED_AUTO_IDLE_MS {
        out.push(Action::transition_agent(
            &a.id,
            AgentStatus::Stalled,
            AgentStatus::Idle,
            "stalled_timeout: idle after 2h30m stalled",
        ));
        if a.hook.is_some() {
            out.push(Action::unhook(&a.id, "stalled timeout"));
        }
    }
}

/// A3: an agent with exhausted attempts and no activity for 30 min starts over
/// (NULL activity never matches). Runs while draining.
fn counter_reset(s: &TownSnapshot, a: &SnapAgent, out: &mut Vec<Action>) {
    if defects::on(Defect::NoCounterAutoReset) {
        return;
    }
    if a.dispatch_attempts >= MAX_DISPATCH_ATTEMPTS
        && a.last_activity_at.is_some_and(|t| s.now.since(t) > DISPATCH_RESET_IDLE_MS)
    {
        out.push(Action::ResetAgentDispatchAttempts { agent_id: a.id.clone() });
    }
}

/// A4/A5: an idle agent hooked to a missing or terminal bead lets go; hooked
/// to a live bead with a stale heartbeat, it lets go and the bead reopens
/// (bug f). A fresh heartbeat means the dispatch may only look failed: leave it.
/// Why A4/A5 unhooks an idle agent from a live bead (the oracles key on it).
pub const IDLE_HOOK_RELEASED: &str = "idle agent hooked to live bead (dispatch failed)";

fn idle_hooked_agent(s: &TownSnapshot, a: &SnapAgent, out: &mut Vec<Action>) {
    let Some(hook) = &a.hook else { return };
    let release = |out: &mut Vec<Action>, reason: &'static str| {
        out.push(Action::unhook(&a.id, reason));
        out.push(Action::ClearAgentCheckpoint { agent_id: a.id.clone() });
    };
    match s.bead(hook).map(|b| b.status) {
        None => release(out, "hooked bead does not exist"),
        Some(st) if st.is_terminal() => release(out, "hooked bead is terminal"),
        Some(st @ (BeadStatus::Open | BeadStatus::InProgress)) => {
            let stale_heartbeat = stale(s.now, a.last_activity_at, HEARTBEAT_STALE_MS);
            let release = if defects::on(Defect::IdleHookKeptOnLiveBead) {
                false
            } else {
                stale_heartbeat || defects::on(Defect::IdleHookReleasedDespiteHeartbeat)
            };
            if release {
                out.push(Action::unhook(&a.id, IDLE_HOOK_RELEASED));
                out.push(Action::transition_bead(
                    hook,
                    Some(st),
                    BeadStatus::Open,
                    "agent went idle without completing work — reset for re-dispatch",
                ));
            }
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::town::invariants::check_actions;

    #[test]
    fn a1_null_stale_and_unhooked_working_agents_go_idle() {
        let mut k = Kit::new();
        let b = k.issue("b", BeadStatus::InProgress);
        let never = k.agent("never", AgentStatus::Working, Some(&b), None);
        let fresh = k.agent("fresh", AgentStatus::Working, Some(&b), Some(k.ago(HEARTBEAT_STALE_MS)));
        let lost = k.agent("lost", AgentStatus::Working, Some(&b), Some(k.ago(HEARTBEAT_STALE_MS + 1)));
        let nohook = k.agent("nohook", AgentStatus::Working, None, Some(k.ago(1_000)));
        let out = k.run(reconcile);
        assert_eq!(idled(&out), vec![never, lost, nohook], "exactly 90 s is still fresh: {fresh}");
    }

    #[test]
    fn a1_a2_skip_while_draining_and_mayor_is_exempt() {
        let mut k = Kit::new();
        k.agent("w", AgentStatus::Working, None, None);
        k.mayor(AgentStatus::Working, None);
        let mut st = k.agent_mut("st", AgentStatus::Stalled, None, None);
        st.stalled_at = Some(k.ago(STALLED_AUTO_IDLE_MS + 1));
        k.push_agent(st);
        k.draining = true;
        assert!(k.run(reconcile).is_empty());
        k.draining = false;
        let out = k.run(reconcile);
        assert_eq!(idled(&out).len(), 2, "{out:?}");
    }

    #[test]
    fn a2_measured_from_stalled_at_strictly() {
        let mut k = Kit::new();
        let b = k.issue("b", BeadStatus::InProgress);
        let mut at = k.agent_mut("at", AgentStatus::Stalled, Some(&b), Some(k.ago(1)));
        at.stalled_at = Some(k.ago(STALLED_AUTO_IDLE_MS));
        let mut past = k.agent_mut("past", AgentStatus::Stalled, Some(&b), Some(k.ago(1)));
        past.stalled_at = Some(k.ago(STALLED_AUTO_IDLE_MS + 1));
        let none = k.agent_mut("none", AgentStatus::Stalled, Some(&b), Some(k.ago(1)));
        k.push_agent(at);
        k.push_agent(past);
        k.push_agent(none);
        let out = k.run(reconcile);
        assert_eq!(idled(&out), vec!["past".to_owned()]);
        assert!(out.iter().any(|a| matches!(a, Action::UnhookAgent { agent_id, .. } if agent_id == "past")));
        // The oracle agrees, and names an idle measured from anything but the stall.
        assert!(check_actions(&k.s, &out).is_empty());
        let early = Action::transition_agent("at", AgentStatus::Stalled, AgentStatus::Idle, "from the heartbeat");
        let unknown = Action::transition_agent("none", AgentStatus::Stalled, AgentStatus::Idle, "no stall time");
        let v = check_actions(&k.s, &[early, unknown]);
        assert_eq!(v.iter().map(|v| v.invariant).collect::<Vec<_>>(), ["stall_lasts_2h30"; 2]);
    }

    #[test]
    fn a3_resets_exhausted_idle_agents_even_while_draining() {
        let mut k = Kit::new();
        let mut old = k.agent_mut("old", AgentStatus::Idle, None, Some(k.ago(DISPATCH_RESET_IDLE_MS + 1)));
        old.dispatch_attempts = 5;
        let mut recent = k.agent_mut("recent", AgentStatus::Idle, None, Some(k.ago(DISPATCH_RESET_IDLE_MS)));
        recent.dispatch_attempts = 9;
        let mut never = k.agent_mut("never", AgentStatus::Idle, None, None);
        never.dispatch_attempts = 9;
        let mut few = k.agent_mut("few", AgentStatus::Idle, None, Some(k.ago(DISPATCH_RESET_IDLE_MS * 2)));
        few.dispatch_attempts = 4;
        for a in [old, recent, never, few] {
            k.push_agent(a);
        }
        k.draining = true;
        let out = k.run(reconcile);
        let reset: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::ResetAgentDispatchAttempts { agent_id } => Some(agent_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reset, vec!["old"]);
    }

    #[test]
    fn a4_a5_idle_hooked_agents() {
        let mut k = Kit::new();
        let closed = k.issue("closed", BeadStatus::Closed);
        let live = k.issue("live", BeadStatus::InProgress);
        let live2 = k.issue("live2", BeadStatus::Open);
        let review = k.issue("review", BeadStatus::InReview);
        k.agent("gone", AgentStatus::Idle, Some("missing"), Some(k.ago(1)));
        k.agent("term", AgentStatus::Idle, Some(&closed), Some(k.ago(1)));
        k.agent("fresh", AgentStatus::Idle, Some(&live), Some(k.ago(HEARTBEAT_STALE_MS)));
        k.agent("stale", AgentStatus::Idle, Some(&live2), Some(k.ago(HEARTBEAT_STALE_MS + 1)));
        k.agent("rev", AgentStatus::Idle, Some(&review), None);
        let out = k.run(reconcile);
        let unhooked = unhooked(&out);
        assert_eq!(unhooked, vec!["gone", "term", "stale"]);
        assert!(out.contains(&Action::transition_bead(
            "live2",
            Some(BeadStatus::Open),
            BeadStatus::Open,
            "agent went idle without completing work — reset for re-dispatch"
        )));
        let checkpoints = out.iter().filter(|a| matches!(a, Action::ClearAgentCheckpoint { .. })).count();
        assert_eq!(checkpoints, 2);
        // The oracle agrees, and names the release of a session that still heart-beats.
        assert!(check_actions(&k.s, &out).is_empty());
        let v = check_actions(&k.s, &[Action::unhook("fresh", IDLE_HOOK_RELEASED)]);
        assert_eq!(v.iter().map(|v| v.invariant).collect::<Vec<_>>(), ["heartbeating_agent_keeps_hook"]);
    }
}
