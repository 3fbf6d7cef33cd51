//! Agents: registration, naming, hooks (with mutual exclusion), status,
//! heartbeats, resets and deletion.

use super::beads::{self, NewBead};
use super::ctx::{short, Ctx};
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::{AgentRole, AgentStatus, BeadStatus, BeadType, Label};
use crate::time::Timestamp;
use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
pub struct Agent {
    pub agent_id: String,
    pub role: AgentRole,
    pub name: String,
    pub identity: String,
    pub rig_id: Option<String>,
    pub status: AgentStatus,
    pub current_hook_bead_id: Option<String>,
    pub dispatch_attempts: u32,
    pub checkpoint: Option<String>,
    pub last_activity_at: Option<Timestamp>,
    pub last_dispatched_at: Option<Timestamp>,
    pub agent_status_message: Option<String>,
    pub last_event_type: Option<String>,
    pub last_event_at: Option<Timestamp>,
    pub active_tools: Vec<String>,
    pub stalled_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// Agent queries read `agent_metadata` alone (see the schema for why).
const AGENT_SELECT: &str = "SELECT a.bead_id, a.role, a.name, a.identity, a.rig_id, a.status, \
    a.current_hook_bead_id, a.dispatch_attempts, a.checkpoint, a.last_activity_at, a.last_dispatched_at, \
    a.agent_status_message, a.last_event_type, a.last_event_at, a.active_tools, a.stalled_at, a.created_at \
    FROM agent_metadata a";

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<Agent> {
    let tools: String = r.get(14)?;
    Ok(Agent {
        agent_id: r.get(0)?,
        role: r.get(1)?,
        name: r.get(2)?,
        identity: r.get(3)?,
        rig_id: r.get(4)?,
        status: r.get(5)?,
        current_hook_bead_id: r.get(6)?,
        dispatch_attempts: r.get(7)?,
        checkpoint: r.get(8)?,
        last_activity_at: ts(r.get(9)?),
        last_dispatched_at: ts(r.get(10)?),
        agent_status_message: r.get(11)?,
        last_event_type: r.get(12)?,
        last_event_at: ts(r.get(13)?),
        active_tools: serde_json::from_str(&tools).unwrap_or_default(),
        stalled_at: ts(r.get(15)?),
        created_at: Timestamp(r.get(16)?),
    })
}

pub fn find(cx: &Ctx<'_>, id: &str) -> Result<Option<Agent>> {
    let sql = format!("{AGENT_SELECT} WHERE a.bead_id = ?1");
    Ok(cx.conn.prepare_cached(&sql)?.query_row([id], agent_from_row).optional()?)
}

pub fn get(cx: &Ctx<'_>, id: &str) -> Result<Agent> {
    find(cx, id)?.ok_or_else(|| TownError::not_found("Agent", id))
}

pub fn list(cx: &Ctx<'_>) -> Result<Vec<Agent>> {
    let sql = format!("{AGENT_SELECT} ORDER BY a.created_at, a.bead_id");
    let mut st = cx.conn.prepare_cached(&sql)?;
    let rows = st.query_map([], agent_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Agents hooked to `bead`, by id (sorted here: see `beads::sorted_ids`).
pub fn hooked_to(cx: &Ctx<'_>, bead: &str) -> Result<Vec<Agent>> {
    let sql = format!("{AGENT_SELECT} WHERE a.current_hook_bead_id = ?1");
    let mut st = cx.conn.prepare_cached(&sql)?;
    let mut agents: Vec<Agent> = st.query_map([bead], agent_from_row)?.collect::<rusqlite::Result<_>>()?;
    agents.sort_unstable_by(|x, y| x.agent_id.cmp(&y.agent_id));
    Ok(agents)
}

/// The oldest agent matching a one-parameter query of (id, created_at) rows.
fn oldest(st: &mut rusqlite::CachedStatement<'_>, param: Option<&str>) -> Result<Option<String>> {
    let rows: Vec<(String, i64)> =
        st.query_map([param], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    Ok(rows.into_iter().min_by(|x, y| (x.1, &x.0).cmp(&(y.1, &y.0))).map(|(id, _)| id))
}

pub fn mayor(cx: &Ctx<'_>) -> Result<Option<Agent>> {
    let sql = format!("{AGENT_SELECT} WHERE a.role = 'mayor' ORDER BY a.created_at, a.bead_id LIMIT 1");
    Ok(cx.conn.prepare_cached(&sql)?.query_row([], agent_from_row).optional()?)
}

pub const POLECAT_NAMES: [&str; 20] = [
    "Toast", "Maple", "Birch", "Shadow", "Clover", "Ember", "Sage", "Dusk", "Flint", "Coral", "Slate", "Reed", "Thorn",
    "Pike", "Moss", "Wren", "Blaze", "Gale", "Drift", "Lark",
];

fn next_polecat_name(cx: &Ctx<'_>) -> Result<String> {
    let mut st = cx.conn.prepare_cached("SELECT name FROM agent_metadata WHERE role = 'polecat'")?;
    let used: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if let Some(free) = POLECAT_NAMES.iter().find(|n| !used.iter().any(|u| u == *n)) {
        return Ok((*free).to_owned());
    }
    Ok(format!("Polecat-{}", used.len() + 1))
}

/// Register a new agent: an `agent` bead plus its metadata row, idle and unhooked.
pub fn register(cx: &mut Ctx<'_>, role: AgentRole, rig: Option<&str>, town_id: &str) -> Result<String> {
    let name = match role {
        AgentRole::Polecat => next_polecat_name(cx)?,
        AgentRole::Refinery => "refinery".to_owned(),
        AgentRole::Mayor => "mayor".to_owned(),
    };
    let id = beads::insert(cx, NewBead::new(BeadType::Agent, name.clone()).rig(rig).by(Some("system")))?;
    let identity = match role {
        AgentRole::Mayor => format!("mayor-{}", short(town_id)),
        _ => format!("{name}-{role}-{}@{}-{}", short(rig.unwrap_or("none")), short(town_id), short(&id)),
    };
    cx.conn
        .prepare_cached(
            "INSERT INTO agent_metadata (bead_id, role, name, rig_id, created_at, identity, status) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'idle')",
        )?
        .execute(params![id, role, name, rig, cx.now.0, identity])?;
    Ok(id)
}

/// Reuse or create the agent that should take work of `role` in `rig`:
/// the mayor singleton, the rig's refinery whatever its status, or an idle
/// unhooked polecat of the same rig (never cross-rig).
pub fn get_or_create(cx: &mut Ctx<'_>, role: AgentRole, rig: Option<&str>, town_id: &str) -> Result<String> {
    let existing: Option<String> = match role {
        AgentRole::Mayor => mayor(cx)?.map(|a| a.agent_id),
        AgentRole::Refinery => oldest(
            &mut cx.conn.prepare_cached(
                "SELECT bead_id, created_at FROM agent_metadata WHERE role = 'refinery' AND rig_id IS ?1",
            )?,
            rig,
        )?,
        AgentRole::Polecat => oldest(
            &mut cx.conn.prepare_cached(
                "SELECT bead_id, created_at FROM agent_metadata WHERE role = 'polecat' AND status = 'idle' \
                 AND current_hook_bead_id IS NULL AND rig_id IS ?1",
            )?,
            rig,
        )?,
    };
    match existing {
        Some(id) => Ok(id),
        None => register(cx, role, rig, town_id),
    }
}

/// Hook `agent` to `bead`: the GUPP hook. Refuses unworkable beads and triage
/// requests, is idempotent for the same bead, refuses an agent already holding
/// another hook, and first unhooks anyone else on the bead (mutual exclusion).
pub fn hook(cx: &mut Ctx<'_>, agent_id: &str, bead_id: &str) -> Result<()> {
    let agent = get(cx, agent_id)?;
    let bead = beads::get(cx, bead_id)?;
    if !bead.bead_type.is_workable() {
        return Err(TownError::invalid("hook", format!("bead {bead_id} is a {} and cannot be worked", bead.bead_type)));
    }
    if bead.label_set().has(Label::TriageRequest) {
        return Err(TownError::invalid("hook", format!("bead {bead_id} is a triage request; resolve it instead")));
    }
    // The mayor works through messages, never a hook: no rule dispatches a
    // mayor to a bead, so a bead hooked to it would wait for good.
    if agent.role == AgentRole::Mayor {
        return Err(TownError::invalid("hook", format!("the mayor cannot be hooked to bead {bead_id}")));
    }
    // Merge requests are the refinery's work and only theirs: another agent's
    // `gt_done` on an MR would open a review of the review and park the MR in
    // `in_review`, where nothing ever moves it again.
    if (bead.bead_type == BeadType::MergeRequest) != (agent.role == AgentRole::Refinery) {
        return Err(TownError::invalid(
            "hook",
            format!("a {} cannot work {} bead {bead_id}", agent.role, bead.bead_type),
        ));
    }
    match agent.current_hook_bead_id.as_deref() {
        Some(h) if h == bead_id => return Ok(()),
        Some(h) => {
            return Err(TownError::invalid("hook", format!("agent {agent_id} is hooked to {h}; unhook first")));
        }
        None => {}
    }
    if !defects::on(Defect::HookNotExclusive) {
        for other in hooked_to(cx, bead_id)? {
            unhook(cx, &other.agent_id, "hooked by another agent")?;
        }
    }
    cx.conn
        .prepare_cached(
            "UPDATE agent_metadata SET current_hook_bead_id = ?2, status = 'idle', stalled_at = NULL, \
             last_activity_at = ?3, agent_status_message = NULL WHERE bead_id = ?1",
        )?
        .execute(params![agent_id, bead_id, cx.now.0])?;
    beads::set_assignee(cx, bead_id, Some(agent_id))?;
    beads::log_event(cx, bead_id, Some(agent_id), "hooked", None, Some(agent_id), None)?;
    Ok(())
}

/// Release the agent's hook (no-op if none): status idle, checkpoint cleared.
/// The bead keeps its assignee.
pub fn unhook(cx: &mut Ctx<'_>, agent_id: &str, reason: &str) -> Result<()> {
    let agent = get(cx, agent_id)?;
    let Some(bead) = agent.current_hook_bead_id else { return Ok(()) };
    cx.conn
        .prepare_cached(
            "UPDATE agent_metadata SET current_hook_bead_id = NULL, status = 'idle', stalled_at = NULL, \
             checkpoint = NULL WHERE bead_id = ?1",
        )?
        .execute([agent_id])?;
    let mut meta = serde_json::Map::new();
    meta.insert("reason".into(), reason.into());
    if beads::status_of(cx, &bead)?.is_some() {
        beads::log_event(cx, &bead, Some(agent_id), "unhooked", Some(agent_id), None, Some(&meta))?;
    }
    Ok(())
}

/// Unhook every agent whose hook is `bead`.
pub fn unhook_all_from(cx: &mut Ctx<'_>, bead: &str, reason: &str) -> Result<()> {
    for a in hooked_to(cx, bead)? {
        unhook(cx, &a.agent_id, reason)?;
    }
    Ok(())
}

/// Set status, keeping `stalled_at` (first time stalled) or clearing it.
pub fn set_status(cx: &Ctx<'_>, agent_id: &str, status: AgentStatus) -> Result<()> {
    let n = cx
        .conn
        .prepare_cached(
            "UPDATE agent_metadata SET status = ?2, \
             stalled_at = CASE WHEN ?2 = 'stalled' THEN COALESCE(stalled_at, ?3) ELSE NULL END WHERE bead_id = ?1",
        )?
        .execute(params![agent_id, status, cx.now.0])?;
    if n == 0 {
        return Err(TownError::not_found("Agent", agent_id));
    }
    Ok(())
}

pub fn clear_checkpoint(cx: &Ctx<'_>, agent_id: &str) -> Result<()> {
    cx.conn.prepare_cached("UPDATE agent_metadata SET checkpoint = NULL WHERE bead_id = ?1")?.execute([agent_id])?;
    Ok(())
}

pub fn set_checkpoint(cx: &Ctx<'_>, agent_id: &str, checkpoint: &serde_json::Value) -> Result<()> {
    get(cx, agent_id)?;
    cx.conn
        .prepare_cached("UPDATE agent_metadata SET checkpoint = ?2 WHERE bead_id = ?1")?
        .execute(params![agent_id, serde_json::to_string(checkpoint)?])?;
    Ok(())
}

/// SDK activity reported with a heartbeat. Absent fields leave stored values alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    pub last_event_type: Option<String>,
    pub last_event_at: Option<Timestamp>,
    pub active_tools: Option<Vec<String>>,
}

/// A heartbeat: proves the process lives. Bumps activity, revives a hooked
/// `idle` agent to `working` (a timeout race may have idled a live session),
/// zeroes the agent's dispatch counter, records the watermark. An unhooked
/// idle agent stays idle: upstream flipped it to `working` and let A1 flip it
/// back, leaving a working agent without a hook between ticks. An SDK event
/// time older than the latest dispatch belongs to an earlier session (a late
/// or replayed heartbeat): recording it would let GUPP judge the new session
/// by the old one right after dispatch (bug g), so it is ignored.
pub fn touch(cx: &Ctx<'_>, agent_id: &str, wm: &Watermark) -> Result<()> {
    let tools = wm.active_tools.as_ref().map(serde_json::to_string).transpose()?;
    // Only a hooked idle agent comes back to life; upstream revived any.
    let revive =
        if defects::on(Defect::HeartbeatRevivesUnhooked) { "" } else { "AND current_hook_bead_id IS NOT NULL" };
    let n = cx
        .conn
        .prepare_cached(&format!(
            "UPDATE agent_metadata SET last_activity_at = ?2, \
             status = CASE WHEN status = 'idle' {revive} THEN 'working' ELSE status END, \
             dispatch_attempts = 0, \
             last_event_type = CASE WHEN ?4 < COALESCE(last_dispatched_at, ?4) THEN last_event_type \
               ELSE COALESCE(?3, last_event_type) END, \
             last_event_at = CASE WHEN ?4 >= COALESCE(last_dispatched_at, ?4) THEN ?4 ELSE last_event_at END, \
             active_tools = COALESCE(?5, active_tools) WHERE bead_id = ?1"
        ))?
        .execute(params![agent_id, cx.now.0, wm.last_event_type, wm.last_event_at.map(|t| t.0), tools])?;
    if n == 0 {
        return Err(TownError::not_found("Agent", agent_id));
    }
    Ok(())
}

/// Zero the dispatch counters of the agent and of its hooked bead (and an MR's
/// retry count) so the bead is eligible again on the next tick.
pub fn reset_dispatch_attempts(cx: &Ctx<'_>, agent_id: &str) -> Result<()> {
    let agent = get(cx, agent_id)?;
    cx.conn
        .prepare_cached("UPDATE agent_metadata SET dispatch_attempts = 0 WHERE bead_id = ?1")?
        .execute([agent_id])?;
    if let Some(h) = agent.current_hook_bead_id {
        cx.conn
            .prepare_cached(
                "UPDATE beads SET dispatch_attempts = 0, last_dispatch_attempt_at = NULL WHERE bead_id = ?1",
            )?
            .execute([&h])?;
        cx.conn.prepare_cached("UPDATE review_metadata SET retry_count = 0 WHERE bead_id = ?1")?.execute([&h])?;
    }
    Ok(())
}

/// Manual reset (the mayor's `gt_agent_reset`): a non-terminal hooked bead goes
/// back to `open` with zeroed counters and no assignee (so Rule 1 dispatches it
/// on the very next tick), the agent is unhooked, idle, counter 0.
pub fn reset(cx: &mut Ctx<'_>, agent_id: &str) -> Result<()> {
    let agent = get(cx, agent_id)?;
    if let Some(h) = &agent.current_hook_bead_id {
        if let Some(status) = beads::status_of(cx, h)? {
            if status.is_live() {
                beads::update_status(cx, h, BeadStatus::Open, "system", None)?;
                if defects::on(Defect::ResetKeepsCounters) {
                    beads::set_assignee(cx, h, None)?;
                } else {
                    cx.conn
                        .prepare_cached(
                            "UPDATE beads SET dispatch_attempts = 0, last_dispatch_attempt_at = NULL, \
                         assignee_agent_bead_id = NULL WHERE bead_id = ?1",
                        )?
                        .execute([h])?;
                }
            }
        }
    }
    unhook(cx, agent_id, "agent_reset")?;
    cx.conn
        .prepare_cached(
            "UPDATE agent_metadata SET status = 'idle', stalled_at = NULL, dispatch_attempts = 0 WHERE bead_id = ?1",
        )?
        .execute([agent_id])?;
    Ok(())
}

/// Delete an agent. Beads assigned to it lose the assignment where the agent
/// mattered: open beads are unassigned, in-progress issues and direct-strategy
/// reviews go back to `open`. `in_review` sources and PR MRs being polled keep
/// going: they do not need this agent (upstream reopened them; see DEVIATIONS.md).
pub fn delete(cx: &mut Ctx<'_>, agent_id: &str) -> Result<()> {
    get(cx, agent_id)?;
    let mut st = cx.conn.prepare_cached(
        "SELECT b.bead_id, b.type, b.status, r.pr_url FROM beads b LEFT JOIN review_metadata r ON r.bead_id = b.bead_id \
         WHERE b.assignee_agent_bead_id = ?1 AND b.status IN ('open', 'in_progress', 'in_review') ORDER BY b.bead_id",
    )?;
    let assigned: Vec<(String, BeadType, BeadStatus, Option<String>)> = st
        .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (bead, ty, status, pr_url) in assigned {
        let polled = ty == BeadType::MergeRequest && pr_url.is_some();
        if defects::on(Defect::DeleteAgentReopensReviews) && status != BeadStatus::Open {
            beads::update_status(cx, &bead, BeadStatus::Open, "system", None)?;
            beads::set_assignee(cx, &bead, None)?;
            continue;
        }
        match status {
            BeadStatus::Open => beads::set_assignee(cx, &bead, None)?,
            BeadStatus::InProgress if !polled => {
                beads::update_status(cx, &bead, BeadStatus::Open, "system", None)?;
                beads::set_assignee(cx, &bead, None)?;
            }
            _ => {}
        }
    }
    cx.conn
        .prepare_cached("UPDATE beads SET assignee_agent_bead_id = NULL WHERE assignee_agent_bead_id = ?1 AND status IN ('closed', 'failed')")?
        .execute([agent_id])?;
    beads::delete(cx, &[agent_id.to_owned()])
}
