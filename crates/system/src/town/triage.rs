//! Triage requests: issue beads labelled `gt:triage-request`, routed to an
//! agent but never hooked, resolved by a triage agent or a human.

use super::beads::{self, NewBead};
use super::ctx::Ctx;
use crate::error::Result;
use crate::model::{labels, BeadType, Priority, TriageType};
use rusqlite::params;
use serde_json::{json, Value};

/// At most this many open non-escalation triage requests exist at once.
pub const MAX_OPEN_TRIAGE_REQUESTS: u32 = 5;

pub struct TriageRequest<'a> {
    pub triage_type: TriageType,
    pub agent_id: Option<&'a str>,
    pub hooked_bead_id: Option<&'a str>,
    pub title: String,
    pub context: Value,
    pub options: Vec<&'static str>,
    pub rig_id: Option<&'a str>,
}

/// Create a triage request unless the same agent already has an open one of
/// the same type, or (for non-escalations) the global cap is reached.
/// Returns the new bead's id, or `None` when deduplicated or capped.
pub fn create(cx: &mut Ctx<'_>, req: TriageRequest<'_>) -> Result<Option<String>> {
    let pattern = format!("%\"{}\"%", labels::TRIAGE_REQUEST);
    if let Some(agent) = req.agent_id {
        let dup: u32 = cx
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress', 'in_review') AND status = 'open' AND labels LIKE ?1 \
                 AND assignee_agent_bead_id = ?2 AND json_extract(metadata, '$.triage_type') = ?3",
            )?
            .query_row(params![pattern, agent, req.triage_type], |r| r.get(0))?;
        if dup > 0 {
            return Ok(None);
        }
    }
    if req.triage_type != TriageType::Escalation {
        let open: u32 = cx
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress', 'in_review') AND status = 'open' AND labels LIKE ?1 \
                 AND COALESCE(json_extract(metadata, '$.triage_type'), '') != 'escalation'",
            )?
            .query_row([pattern], |r| r.get(0))?;
        if open >= MAX_OPEN_TRIAGE_REQUESTS {
            return Ok(None);
        }
    }
    let mut b = NewBead::new(BeadType::Issue, req.title)
        .body(Some(req.context.to_string()))
        .rig(req.rig_id)
        .label(labels::TRIAGE_REQUEST)
        .priority(Priority::Medium)
        .by(Some("patrol"))
        .meta("triage_type", req.triage_type.as_str())
        .meta("agent_bead_id", json!(req.agent_id))
        .meta("hooked_bead_id", json!(req.hooked_bead_id))
        .meta("context", req.context)
        .meta("options", json!(req.options));
    b.assignee = req.agent_id.map(str::to_owned);
    Ok(Some(beads::insert(cx, b)?))
}
