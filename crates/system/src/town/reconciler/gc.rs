//! Agent garbage collection: idle or dead workers with no hook and no
//! sign of life for 24 h are deleted. An agent that never reported is judged
//! from its creation or dispatch (upstream deleted it on the next tick).

use super::constants::AGENT_GC_RETENTION_MS;
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus};
use crate::time::{stale, Timestamp};
use crate::town::actions::Action;
use crate::town::snapshot::{SnapAgent, TownSnapshot};

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    for a in &s.agents {
        if matches!(a.status, AgentStatus::Idle | AgentStatus::Dead)
            && matches!(a.role, AgentRole::Polecat | AgentRole::Refinery)
            && a.hook.is_none()
            && stale(s.now, last_sign_of_life(a), AGENT_GC_RETENTION_MS)
        {
            out.push(Action::DeleteAgent { agent_id: a.id.clone(), reason: "GC: idle > 24h".into() });
        }
    }
}

/// Upstream judged the activity time alone, and a missing one as "long
/// ago". But an agent that never reported, or whose activity a triage
/// `RESTART` cleared, may have been created or dispatched minutes ago.
fn last_sign_of_life(a: &SnapAgent) -> Option<Timestamp> {
    if defects::on(Defect::GcDeletesNeverActive) {
        return a.last_activity_at;
    }
    [a.last_activity_at, a.last_dispatched_at].into_iter().flatten().chain([a.created_at]).max()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn deletes_only_long_idle_unhooked_workers() {
        let mut k = Kit::new();
        for (id, idle_for) in [("old", AGENT_GC_RETENTION_MS + 1), ("edge", AGENT_GC_RETENTION_MS)] {
            let mut a = k.agent_mut(id, AgentStatus::Idle, None, Some(NOW.minus_ms(idle_for)));
            a.created_at = NOW.minus_ms(AGENT_GC_RETENTION_MS * 3);
            k.push_agent(a);
        }
        k.agent("hooked", AgentStatus::Idle, Some("b"), Some(NOW.minus_ms(AGENT_GC_RETENTION_MS * 2)));
        k.agent("working", AgentStatus::Working, None, Some(NOW.minus_ms(AGENT_GC_RETENTION_MS * 2)));
        let mut fresh = k.agent_mut("never_young", AgentStatus::Idle, None, None);
        fresh.created_at = NOW.minus_ms(60_000);
        k.push_agent(fresh);
        let mut ancient = k.agent_mut("never_old", AgentStatus::Idle, None, None);
        ancient.created_at = NOW.minus_ms(AGENT_GC_RETENTION_MS + 1);
        k.push_agent(ancient);
        // A triage RESTART cleared the activity of an old agent it had just
        // dispatched: its dispatch is the sign of life.
        let mut restarted = k.agent_mut("restarted", AgentStatus::Idle, None, None);
        restarted.created_at = NOW.minus_ms(AGENT_GC_RETENTION_MS * 2);
        restarted.last_dispatched_at = Some(NOW.minus_ms(60_000));
        k.push_agent(restarted);
        k.mayor(AgentStatus::Idle, None);
        let out = k.run(reconcile);
        let deleted: Vec<_> = out
            .iter()
            .map(|a| match a {
                Action::DeleteAgent { agent_id, .. } => agent_id.as_str(),
                _ => "",
            })
            .collect();
        assert_eq!(deleted, vec!["old", "never_old"]);
    }
}
