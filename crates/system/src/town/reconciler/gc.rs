//! Agent garbage collection: idle or dead workers with no hook and no
//! activity for 24 h are deleted. An agent that never reported is judged from
//! its creation time (upstream deleted it on the next tick).

use super::constants::AGENT_GC_RETENTION_MS;
use crate::defects::{self, Defect};
use crate::model::{AgentRole, AgentStatus};
use crate::time::stale;
use crate::town::actions::Action;
use crate::town::snapshot::TownSnapshot;

pub fn reconcile(s: &TownSnapshot, out: &mut Vec<Action>) {
    for a in &s.agents {
        if matches!(a.status, AgentStatus::Idle | AgentStatus::Dead)
            && matches!(a.role, AgentRole::Polecat | AgentRole::Refinery)
            && a.hook.is_none()
            && stale(s.now, never_active_as(a.last_activity_at, a.created_at), AGENT_GC_RETENTION_MS)
        {
            out.push(Action::DeleteAgent { agent_id: a.id.clone(), reason: "GC: idle > 24h".into() });
        }
    }
}

/// An agent that never reported counts from its creation (upstream's NULL was "long ago").
fn never_active_as(
    last: Option<crate::time::Timestamp>,
    created: crate::time::Timestamp,
) -> Option<crate::time::Timestamp> {
    if defects::on(Defect::GcDeletesNeverActive) {
        last
    } else {
        Some(last.unwrap_or(created))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn deletes_only_long_idle_unhooked_workers() {
        let mut k = Kit::new();
        k.agent("old", AgentStatus::Idle, None, Some(NOW.minus_ms(AGENT_GC_RETENTION_MS + 1)));
        k.agent("edge", AgentStatus::Idle, None, Some(NOW.minus_ms(AGENT_GC_RETENTION_MS)));
        k.agent("hooked", AgentStatus::Idle, Some("b"), Some(NOW.minus_ms(AGENT_GC_RETENTION_MS * 2)));
        k.agent("working", AgentStatus::Working, None, Some(NOW.minus_ms(AGENT_GC_RETENTION_MS * 2)));
        let mut fresh = k.agent_mut("never_young", AgentStatus::Idle, None, None);
        fresh.created_at = NOW.minus_ms(60_000);
        k.push_agent(fresh);
        let mut ancient = k.agent_mut("never_old", AgentStatus::Idle, None, None);
        ancient.created_at = NOW.minus_ms(AGENT_GC_RETENTION_MS + 1);
        k.push_agent(ancient);
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
