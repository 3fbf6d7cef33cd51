//! Town events: immutable facts recorded by RPC handlers and effects, applied
//! in order at the start of each tick. An event is marked processed only after
//! it applied; one naming a missing entity (or with a payload that can never
//! parse) is marked processed too, since retrying it cannot succeed.

use super::agents;
use super::ctx::Ctx;
use super::review::{self, DoneReport, ExitStatus};
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::{AgentRole, AgentStatus, BeadStatus, EventType, TownConfig};
use crate::store;
use crate::time::{Timestamp, DAY_MS, SECOND_MS};
use rusqlite::params;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const EVENT_RETENTION_MS: i64 = 7 * DAY_MS;
/// A container reporting `not_found` this soon after activity is still starting (#1358).
pub const NOT_FOUND_GRACE_MS: i64 = 180 * SECOND_MS;

#[derive(Clone, Debug, Serialize)]
pub struct TownEvent {
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub agent_id: Option<String>,
    pub bead_id: Option<String>,
    pub payload: Value,
    pub created_at: Timestamp,
    pub processed_at: Option<Timestamp>,
}

pub fn record(
    cx: &mut Ctx<'_>,
    ty: EventType,
    agent: Option<&str>,
    bead: Option<&str>,
    payload: Value,
) -> Result<String> {
    let id = cx.new_id();
    cx.conn
        .prepare_cached(
            "INSERT INTO town_events (event_id, event_type, agent_id, bead_id, payload, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![id, ty, agent, bead, payload.to_string(), cx.now.0])?;
    Ok(id)
}

/// Record what the container says about an agent. `running` is the steady
/// state and is never recorded; a repeat of the pending status only bumps its
/// time (bug p: the event flood).
pub fn upsert_container_status(cx: &mut Ctx<'_>, agent: &str, status: &str, exit_reason: Option<&str>) -> Result<()> {
    if status == "running" && !defects::on(Defect::RunningStatusRecorded) {
        return Ok(());
    }
    // Match the pending event of this status, not only the latest one: with
    // alternating reports (exited, not_found, exited) upstream's latest-only
    // lookup queued a second `exited`, breaking "one pending event per agent
    // and status". The bump moves it after the others, as the newest fact.
    // MAX, not ORDER BY .. LIMIT 1: see `beads::sorted_ids` on re-preparation.
    let pending: Option<i64> = cx
        .conn
        .prepare_cached(
            "SELECT MAX(seq) FROM town_events WHERE event_type = 'container_status' AND agent_id = ?1 \
             AND processed_at IS NULL AND json_extract(payload, '$.status') = ?2",
        )?
        .query_row(params![agent, status], |r| r.get(0))?;
    if let Some(seq) = pending.filter(|_| !defects::on(Defect::ContainerStatusNotUpserted)) {
        cx.conn
            .prepare_cached("UPDATE town_events SET created_at = ?2 WHERE seq = ?1")?
            .execute(params![seq, cx.now.0])?;
        return Ok(());
    }
    let mut payload = serde_json::json!({ "status": status });
    if let Some(r) = exit_reason.filter(|r| !r.is_empty()) {
        payload["exit_reason"] = Value::from(r);
    }
    record(cx, EventType::ContainerStatus, Some(agent), None, payload)?;
    Ok(())
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TownEvent> {
    let payload: String = r.get(5)?;
    Ok(TownEvent {
        seq: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        agent_id: r.get(3)?,
        bead_id: r.get(4)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        created_at: Timestamp(r.get(6)?),
        processed_at: r.get::<_, Option<i64>>(7)?.map(Timestamp),
    })
}

const EVENT_COLUMNS: &str = "seq, event_id, event_type, agent_id, bead_id, payload, created_at, processed_at";

pub fn pending(cx: &Ctx<'_>) -> Result<Vec<TownEvent>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM town_events WHERE processed_at IS NULL ORDER BY created_at, seq");
    let mut st = cx.conn.prepare_cached(&sql)?;
    let rows = st.query_map([], event_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn pending_count(conn: &rusqlite::Connection) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM town_events WHERE processed_at IS NULL")?
        .query_row([], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

/// What one drain did, event by event.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DrainReport {
    pub applied: Vec<String>,
    /// Marked processed without effect: the entity is gone or the payload is unusable.
    pub inapplicable: Vec<(String, String)>,
    /// Left pending for the next tick.
    pub retried: Vec<(String, String)>,
}

/// Apply every pending event, oldest first, each in its own savepoint; mark
/// the processed ones with a single statement at the end.
pub fn drain(cx: &mut Ctx<'_>, cfg: &TownConfig) -> Result<DrainReport> {
    let mut report = DrainReport::default();
    let mut processed = Vec::new();
    for ev in pending(cx)? {
        if changes_nothing(&ev) {
            processed.push(ev.seq);
            report.applied.push(ev.event_id);
            continue;
        }
        let conn = cx.conn;
        match store::savepoint(conn, || apply(cx, cfg, &ev)) {
            Ok(()) => {
                processed.push(ev.seq);
                report.applied.push(ev.event_id);
            }
            Err(e @ (TownError::NotFound { .. } | TownError::Invalid { .. }))
                if !defects::on(Defect::InapplicableEventsRetried) =>
            {
                processed.push(ev.seq);
                report.inapplicable.push((ev.event_id, e.to_string()));
            }
            Err(e) => report.retried.push((ev.event_id, e.to_string())),
        }
    }
    mark_processed(cx, &processed)?;
    Ok(report)
}

/// Facts that are recorded for the audit trail only, and container reports
/// that do not say a process is gone: applying them changes no state, so they
/// skip the savepoint and the lookups.
fn changes_nothing(ev: &TownEvent) -> bool {
    match EventType::parse(&ev.event_type) {
        Some(EventType::BeadCreated | EventType::ContainerEviction | EventType::NudgeTimeout) => true,
        Some(EventType::ContainerStatus) => {
            ev.agent_id.as_deref().is_some_and(|a| !a.is_empty())
                && !matches!(ev.payload.get("status").and_then(Value::as_str), Some("exited" | "not_found") | None)
        }
        _ => false,
    }
}

fn mark_processed(cx: &Ctx<'_>, seqs: &[i64]) -> Result<()> {
    if seqs.is_empty() {
        return Ok(());
    }
    let list = serde_json::to_string(seqs)?;
    cx.conn
        .prepare_cached(
            "UPDATE town_events SET processed_at = ?2 WHERE processed_at IS NULL AND seq IN (SELECT value FROM json_each(?1))",
        )?
        .execute(params![list, cx.now.0])?;
    Ok(())
}

/// Delete processed events older than the retention window. Pending ones stay.
pub fn prune(cx: &Ctx<'_>) -> Result<usize> {
    Ok(cx
        .conn
        .prepare_cached("DELETE FROM town_events WHERE processed_at IS NOT NULL AND created_at < ?1")?
        .execute([cx.now.minus_ms(EVENT_RETENTION_MS).0])?)
}

fn payload<T: DeserializeOwned>(ev: &TownEvent) -> Result<T> {
    serde_json::from_value(ev.payload.clone())
        .map_err(|e| TownError::invalid("event payload", format!("{} {}: {e}", ev.event_type, ev.event_id)))
}

fn need<'a>(v: &'a Option<String>, what: &'static str, ev: &TownEvent) -> Result<&'a str> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TownError::invalid("event", format!("{} {} has no {what}", ev.event_type, ev.event_id)))
}

#[derive(Deserialize)]
struct Completed {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PrState {
    pr_state: String,
}

#[derive(Deserialize)]
struct Cancelled {
    #[serde(default)]
    cancel_status: Option<String>,
}

#[derive(Deserialize)]
struct ConvoyStarted {
    convoy_id: String,
}

#[derive(Deserialize)]
struct ContainerStatus {
    status: String,
}

#[derive(Deserialize)]
struct AutoMerge {
    mr_bead_id: String,
}

pub fn apply(cx: &mut Ctx<'_>, cfg: &TownConfig, ev: &TownEvent) -> Result<()> {
    let Some(ty) = EventType::parse(&ev.event_type) else {
        return Err(TownError::invalid("event", format!("unknown event type `{}`", ev.event_type)));
    };
    match ty {
        EventType::AgentDone => {
            let agent = need(&ev.agent_id, "agent", ev)?;
            review::agent_done(cx, agent, &payload::<DoneReport>(ev)?)
        }
        EventType::AgentCompleted => {
            let agent = need(&ev.agent_id, "agent", ev)?;
            let p: Completed = payload(ev)?;
            let status =
                if p.status.as_deref() == Some("completed") { ExitStatus::Completed } else { ExitStatus::Failed };
            review::agent_completed(cx, agent, status, p.reason.as_deref(), ev.created_at)
        }
        EventType::PrStatusChanged => {
            let mr = need(&ev.bead_id, "bead", ev)?;
            // Only a poll of the MR's PR reports its state; an MR without one
            // is merged by its refinery, never by a PR state.
            if super::beads::status_of(cx, mr)?.is_some() && review::pr_url(cx, mr)?.is_none() {
                return Ok(());
            }
            match payload::<PrState>(ev)?.pr_state.as_str() {
                "merged" => review::complete(
                    cx,
                    mr,
                    review::ReviewResult::Merged,
                    Some("PR merged (detected by polling)"),
                    None,
                ),
                "closed" => {
                    review::complete(cx, mr, review::ReviewResult::Failed, Some("PR closed without merge"), None)
                }
                _ => Ok(()),
            }
        }
        EventType::BeadCancelled => {
            let bead = need(&ev.bead_id, "bead", ev)?;
            if super::beads::status_of(cx, bead)?.is_none() {
                return Ok(());
            }
            let to = match payload::<Cancelled>(ev)?.cancel_status.as_deref() {
                Some("closed") => BeadStatus::Closed,
                _ => BeadStatus::Failed,
            };
            super::beads::update_status_because(cx, bead, to, "system", None, super::beads::CloseCause::UserClosed)?;
            agents::unhook_all_from(cx, bead, "bead cancelled")
        }
        EventType::ConvoyStarted => {
            let p: ConvoyStarted = payload(ev)?;
            cx.conn
                .prepare_cached("UPDATE convoy_metadata SET staged = 0 WHERE bead_id = ?1")?
                .execute([&p.convoy_id])?;
            Ok(())
        }
        EventType::ContainerStatus => {
            let agent = need(&ev.agent_id, "agent", ev)?;
            apply_container_status(cx, agent, &payload::<ContainerStatus>(ev)?.status)
        }
        EventType::PrFeedbackDetected => review::feedback_detected(cx, &payload(ev)?),
        EventType::PrConflictDetected => review::conflict_detected(cx, cfg, &payload(ev)?),
        EventType::PrAutoMerge => review::auto_merge_ready(cx, &payload::<AutoMerge>(ev)?.mr_bead_id),
        EventType::BeadCreated | EventType::ContainerEviction | EventType::NudgeTimeout => Ok(()),
    }
}

/// The container says an agent's process is gone. Working or stalled agents go
/// idle; a refinery keeps its hook on a live MR so Rule 6 re-dispatches it.
fn apply_container_status(cx: &mut Ctx<'_>, agent_id: &str, status: &str) -> Result<()> {
    let agent = agents::get(cx, agent_id)?;
    if status == "not_found" && !crate::time::stale(cx.now, agent.last_activity_at, NOT_FOUND_GRACE_MS) {
        return Ok(());
    }
    let lost = matches!(status, "exited" | "not_found");
    if !lost || !matches!(agent.status, AgentStatus::Working | AgentStatus::Stalled) {
        return Ok(());
    }
    if agent.role == AgentRole::Refinery {
        if let Some(h) = &agent.current_hook_bead_id {
            let terminal = super::beads::status_of(cx, h)?.is_none_or(|s| s.is_terminal());
            if terminal {
                agents::unhook(cx, agent_id, "hooked MR is terminal")?;
                agents::clear_checkpoint(cx, agent_id)?;
            }
        }
    }
    agents::set_status(cx, agent_id, AgentStatus::Idle)
}

/// The most recent events, newest first (for status views and tests).
pub fn recent(conn: &rusqlite::Connection, limit: u32) -> Result<Vec<TownEvent>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM town_events ORDER BY created_at DESC, seq DESC LIMIT ?1");
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map([limit], event_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
