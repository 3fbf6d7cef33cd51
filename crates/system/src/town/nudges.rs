//! Nudges: short messages queued for an agent, delivered when it is idle or
//! immediately, with optional expiry.

use super::ctx::Ctx;
use super::effects::Effect;
use crate::error::Result;
use crate::model::{NudgeMode, NudgePriority, NudgeTier};
use crate::time::Timestamp;
use rusqlite::params;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Nudge {
    pub nudge_id: String,
    pub agent_bead_id: String,
    pub message: String,
    pub mode: NudgeMode,
    pub priority: NudgePriority,
    pub source: String,
    pub created_at: Timestamp,
}

pub struct NewNudge<'a> {
    pub agent_id: &'a str,
    pub message: &'a str,
    pub mode: NudgeMode,
    pub priority: NudgePriority,
    pub source: &'a str,
    /// Only `queue` mode nudges expire.
    pub ttl_seconds: Option<u32>,
    pub tier: Option<NudgeTier>,
}

/// Store a nudge; an `immediate` one also yields a delivery effect.
pub fn queue(cx: &mut Ctx<'_>, n: NewNudge<'_>) -> Result<(String, Option<Effect>)> {
    super::agents::get(cx, n.agent_id)?;
    let id = cx.new_id();
    let expires = match (n.mode, n.ttl_seconds) {
        (NudgeMode::Queue, Some(ttl)) => Some(cx.now.plus_ms(i64::from(ttl) * 1000).0),
        _ => None,
    };
    cx.conn
        .prepare_cached(
            "INSERT INTO agent_nudges (nudge_id, agent_bead_id, message, mode, priority, source, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![id, n.agent_id, n.message, n.mode, n.priority, n.source, cx.now.0, expires])?;
    let effect = (n.mode == NudgeMode::Immediate).then(|| Effect::DeliverNudge {
        nudge_id: id.clone(),
        agent_id: n.agent_id.to_owned(),
        message: n.message.to_owned(),
        tier: n.tier,
    });
    Ok((id, effect))
}

/// Undelivered, unexpired nudges for an agent: urgent first, then oldest first.
pub fn pending_for(cx: &Ctx<'_>, agent: &str) -> Result<Vec<Nudge>> {
    let mut st = cx.conn.prepare_cached(
        "SELECT nudge_id, agent_bead_id, message, mode, priority, source, created_at FROM agent_nudges \
         WHERE agent_bead_id = ?1 AND delivered_at IS NULL AND (expires_at IS NULL OR expires_at >= ?2) \
         ORDER BY CASE priority WHEN 'urgent' THEN 0 ELSE 1 END, created_at, nudge_id",
    )?;
    let rows = st.query_map(params![agent, cx.now.0], |r| {
        Ok(Nudge {
            nudge_id: r.get(0)?,
            agent_bead_id: r.get(1)?,
            message: r.get(2)?,
            mode: r.get(3)?,
            priority: r.get(4)?,
            source: r.get(5)?,
            created_at: Timestamp(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn mark_delivered(cx: &Ctx<'_>, nudge_id: &str) -> Result<bool> {
    Ok(cx
        .conn
        .prepare_cached("UPDATE agent_nudges SET delivered_at = ?2 WHERE nudge_id = ?1 AND delivered_at IS NULL")?
        .execute(params![nudge_id, cx.now.0])?
        > 0)
}

/// Mark expired nudges delivered so they are never handed out.
pub fn expire(cx: &Ctx<'_>) -> Result<usize> {
    Ok(cx
        .conn
        .prepare_cached(
            "UPDATE agent_nudges SET delivered_at = ?1 WHERE delivered_at IS NULL AND expires_at IS NOT NULL AND expires_at < ?1",
        )?
        .execute([cx.now.0])?)
}
