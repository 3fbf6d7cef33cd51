//! Beads: creation, the status contract, the audit log, dependency edges and
//! deletion. Every status change goes through [`update_status`], so every change
//! is logged and nothing ever leaves a terminal state.

use super::ctx::Ctx;
use crate::error::{Result, TownError};
use crate::model::{BeadStatus, BeadType, LabelSet, Priority};
use crate::time::Timestamp;
use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{Map, Value};

/// A full bead row, as operations and the API see it.
#[derive(Clone, Debug, Serialize)]
pub struct Bead {
    pub bead_id: String,
    #[serde(rename = "type")]
    pub bead_type: BeadType,
    pub status: BeadStatus,
    pub title: String,
    pub body: Option<String>,
    pub rig_id: Option<String>,
    pub parent_bead_id: Option<String>,
    pub assignee_agent_bead_id: Option<String>,
    pub priority: Priority,
    pub labels: Vec<String>,
    pub metadata: Map<String, Value>,
    pub dispatch_attempts: u32,
    pub last_dispatch_attempt_at: Option<Timestamp>,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub closed_at: Option<Timestamp>,
}

impl Bead {
    pub fn label_set(&self) -> LabelSet {
        LabelSet::from_labels(self.labels.iter().map(String::as_str))
    }
    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l == label)
    }
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }
}

pub const BEAD_COLUMNS: &str = "bead_id, type, status, title, body, rig_id, parent_bead_id, \
    assignee_agent_bead_id, priority, labels, metadata, dispatch_attempts, last_dispatch_attempt_at, \
    created_by, created_at, updated_at, closed_at";

pub fn bead_from_row(r: &Row<'_>) -> rusqlite::Result<Bead> {
    let labels: String = r.get(9)?;
    let metadata: String = r.get(10)?;
    Ok(Bead {
        bead_id: r.get(0)?,
        bead_type: r.get(1)?,
        status: r.get(2)?,
        title: r.get(3)?,
        body: r.get(4)?,
        rig_id: r.get(5)?,
        parent_bead_id: r.get(6)?,
        assignee_agent_bead_id: r.get(7)?,
        priority: r.get(8)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        metadata: serde_json::from_str(&metadata).unwrap_or_default(),
        dispatch_attempts: r.get(11)?,
        last_dispatch_attempt_at: r.get::<_, Option<i64>>(12)?.map(Timestamp),
        created_by: r.get(13)?,
        created_at: Timestamp(r.get(14)?),
        updated_at: Timestamp(r.get(15)?),
        closed_at: r.get::<_, Option<i64>>(16)?.map(Timestamp),
    })
}

/// What a new bead is made of; unset fields take the table defaults.
#[derive(Clone, Debug)]
pub struct NewBead {
    pub bead_type: BeadType,
    pub title: String,
    pub body: Option<String>,
    pub status: BeadStatus,
    pub rig_id: Option<String>,
    pub parent_bead_id: Option<String>,
    pub assignee: Option<String>,
    pub priority: Priority,
    pub labels: Vec<String>,
    pub metadata: Map<String, Value>,
    pub created_by: Option<String>,
}

impl NewBead {
    pub fn new(bead_type: BeadType, title: impl Into<String>) -> Self {
        NewBead {
            bead_type,
            title: title.into(),
            body: None,
            status: BeadStatus::Open,
            rig_id: None,
            parent_bead_id: None,
            assignee: None,
            priority: Priority::Medium,
            labels: Vec::new(),
            metadata: Map::new(),
            created_by: None,
        }
    }
    pub fn rig(mut self, rig: Option<&str>) -> Self {
        self.rig_id = rig.map(str::to_owned);
        self
    }
    pub fn body(mut self, body: Option<String>) -> Self {
        self.body = body;
        self
    }
    pub fn label(mut self, l: &str) -> Self {
        self.labels.push(l.to_owned());
        self
    }
    pub fn meta(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.metadata.insert(key.to_owned(), v.into());
        self
    }
    pub fn by(mut self, who: Option<&str>) -> Self {
        self.created_by = who.map(str::to_owned);
        self
    }
    pub fn parent(mut self, p: Option<&str>) -> Self {
        self.parent_bead_id = p.map(str::to_owned);
        self
    }
    pub fn priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }
}

/// Insert a bead with a `created` audit event; returns its id.
pub fn insert(cx: &mut Ctx<'_>, b: NewBead) -> Result<String> {
    let id = cx.new_id();
    cx.conn
        .prepare_cached(
            "INSERT INTO beads (bead_id, type, status, title, body, rig_id, parent_bead_id, \
             assignee_agent_bead_id, priority, labels, metadata, created_by, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13)",
        )?
        .execute(params![
            id,
            b.bead_type,
            b.status,
            b.title,
            b.body,
            b.rig_id,
            b.parent_bead_id,
            b.assignee,
            b.priority,
            serde_json::to_string(&b.labels)?,
            serde_json::to_string(&b.metadata)?,
            b.created_by,
            cx.now.0,
        ])?;
    log_event(cx, &id, b.created_by.as_deref(), "created", None, Some(b.status.as_str()), None)?;
    Ok(id)
}

pub fn find(cx: &Ctx<'_>, id: &str) -> Result<Option<Bead>> {
    let sql = format!("SELECT {BEAD_COLUMNS} FROM beads WHERE bead_id = ?1");
    Ok(cx.conn.prepare_cached(&sql)?.query_row([id], bead_from_row).optional()?)
}

pub fn get(cx: &Ctx<'_>, id: &str) -> Result<Bead> {
    find(cx, id)?.ok_or_else(|| TownError::not_found("Bead", id))
}

pub fn status_of(cx: &Ctx<'_>, id: &str) -> Result<Option<BeadStatus>> {
    Ok(cx
        .conn
        .prepare_cached("SELECT status FROM beads WHERE bead_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// Why a bead failed, carried on its `status_changed` event.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub source: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>, source: &str) -> Self {
        Failure { code: code.to_owned(), message: message.into(), source: source.to_owned() }
    }
}

/// Why a bead reached `closed`, recorded on the closing event so the
/// `closed_issue_has_merge` oracle can tell merges from other closes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CloseCause {
    Merged,
    UserClosed,
    FixupDone,
    ConvoyForceClosed,
    Reconciler,
    /// A triage request (or the escalation it carried) was resolved.
    TriageResolved,
    Other,
}

impl CloseCause {
    pub const fn as_str(self) -> &'static str {
        match self {
            CloseCause::Merged => "merged",
            CloseCause::UserClosed => "user",
            CloseCause::FixupDone => "fixup_done",
            CloseCause::ConvoyForceClosed => "convoy_force_closed",
            CloseCause::Reconciler => "reconciler",
            CloseCause::TriageResolved => "triage_resolved",
            CloseCause::Other => "other",
        }
    }
}

/// The status contract: missing bead is an error; same status and terminal
/// states are no-ops; otherwise set status, stamp times, log the change and,
/// on a terminal target, refresh convoy progress. Returns whether it changed.
pub fn update_status(
    cx: &mut Ctx<'_>,
    id: &str,
    to: BeadStatus,
    actor: &str,
    failure: Option<&Failure>,
) -> Result<bool> {
    update_status_because(cx, id, to, actor, failure, CloseCause::Other)
}

pub fn update_status_because(
    cx: &mut Ctx<'_>,
    id: &str,
    to: BeadStatus,
    actor: &str,
    failure: Option<&Failure>,
    cause: CloseCause,
) -> Result<bool> {
    let mut meta = Map::new();
    if let Some(f) = failure {
        meta.insert("failure_reason".into(), serde_json::to_value(f)?);
    }
    if to == BeadStatus::Closed {
        meta.insert("cause".into(), cause.as_str().into());
    }
    change_status(cx, id, to, actor, &meta)
}

/// The metadata key that marks a `status_changed` event as a container
/// eviction's reopen; its value is the agent whose session the eviction ended.
pub const EVICTION_REOPEN: &str = "eviction_reopen_of";

/// An eviction ended the session working on `id`: reopen it at once. The
/// event names the agent, so the heartbeat oracle can judge whether that
/// agent was still alive (#3538).
pub fn reopen_after_eviction(cx: &mut Ctx<'_>, id: &str, agent_id: &str) -> Result<bool> {
    let mut meta = Map::new();
    meta.insert(EVICTION_REOPEN.into(), agent_id.into());
    change_status(cx, id, BeadStatus::Open, "system", &meta)
}

fn change_status(cx: &mut Ctx<'_>, id: &str, to: BeadStatus, actor: &str, meta: &Map<String, Value>) -> Result<bool> {
    let from = status_of(cx, id)?.ok_or_else(|| TownError::not_found("Bead", id))?;
    if from == to || from.is_terminal() {
        return Ok(false);
    }
    cx.conn
        .prepare_cached(
            "UPDATE beads SET status = ?2, updated_at = ?3, \
             closed_at = CASE WHEN ?2 = 'closed' THEN ?3 ELSE closed_at END WHERE bead_id = ?1",
        )?
        .execute(params![id, to, cx.now.0])?;
    log_event(cx, id, Some(actor), "status_changed", Some(from.as_str()), Some(to.as_str()), Some(meta))?;
    if to.is_terminal() {
        super::convoys::on_bead_terminal(cx, id)?;
    }
    Ok(true)
}

pub fn touch(cx: &Ctx<'_>, id: &str) -> Result<()> {
    cx.conn.prepare_cached("UPDATE beads SET updated_at = ?2 WHERE bead_id = ?1")?.execute(params![id, cx.now.0])?;
    Ok(())
}

pub fn set_assignee(cx: &Ctx<'_>, id: &str, assignee: Option<&str>) -> Result<()> {
    cx.conn
        .prepare_cached("UPDATE beads SET assignee_agent_bead_id = ?2, updated_at = ?3 WHERE bead_id = ?1")?
        .execute(params![id, assignee, cx.now.0])?;
    Ok(())
}

/// Set one key of the bead's JSON metadata (and bump `updated_at`).
pub fn set_meta(cx: &Ctx<'_>, id: &str, key: &str, value: &Value) -> Result<()> {
    cx.conn
        .prepare_cached(
            "UPDATE beads SET metadata = json_set(metadata, '$.' || ?2, json(?3)), updated_at = ?4 WHERE bead_id = ?1",
        )?
        .execute(params![id, key, serde_json::to_string(value)?, cx.now.0])?;
    Ok(())
}

pub fn remove_label(cx: &Ctx<'_>, id: &str, label: &str) -> Result<()> {
    let b = find(cx, id)?.ok_or_else(|| TownError::not_found("Bead", id))?;
    let labels: Vec<&String> = b.labels.iter().filter(|l| l.as_str() != label).collect();
    cx.conn.prepare_cached("UPDATE beads SET labels = ?2, updated_at = ?3 WHERE bead_id = ?1")?.execute(params![
        id,
        serde_json::to_string(&labels)?,
        cx.now.0
    ])?;
    Ok(())
}

/// Append one row to the bead audit log.
pub fn log_event(
    cx: &mut Ctx<'_>,
    bead_id: &str,
    agent_id: Option<&str>,
    event_type: &str,
    old_value: Option<&str>,
    new_value: Option<&str>,
    metadata: Option<&Map<String, Value>>,
) -> Result<()> {
    let id = cx.new_id();
    let meta = match metadata {
        Some(m) if !m.is_empty() => serde_json::to_string(m)?,
        _ => "{}".to_owned(),
    };
    cx.conn
        .prepare_cached(
            "INSERT INTO bead_events (bead_event_id, bead_id, agent_id, event_type, old_value, new_value, metadata, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![id, bead_id, agent_id, event_type, old_value, new_value, meta, cx.now.0])?;
    Ok(())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DepKind {
    /// `from` cannot be dispatched while `to` is live.
    Blocks,
    /// `from` is tracked by `to` (issue→convoy, MR→source).
    Tracks,
}

impl DepKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DepKind::Blocks => "blocks",
            DepKind::Tracks => "tracks",
        }
    }
}

pub fn add_dependency(cx: &Ctx<'_>, from: &str, to: &str, kind: DepKind) -> Result<()> {
    cx.conn
        .prepare_cached(
            "INSERT OR IGNORE INTO bead_dependencies (bead_id, depends_on_bead_id, dependency_type) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![from, to, kind.as_str()])?;
    Ok(())
}

/// Rows of a one-column query, sorted. Hot-path statements with a bound
/// parameter never say ORDER BY: with it, SQLite re-prepares the statement
/// every time the parameter is re-bound (measured: it dominated tick cost).
pub fn sorted_ids(st: &mut rusqlite::CachedStatement<'_>, param: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> = st.query_map([param], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    ids.sort_unstable();
    Ok(ids)
}

/// The beads `id` depends on with the given kind.
pub fn dependencies_of(cx: &Ctx<'_>, id: &str, kind: DepKind) -> Result<Vec<String>> {
    // The kind is a literal, not a parameter: one cached statement per kind.
    let sql = format!(
        "SELECT depends_on_bead_id FROM bead_dependencies WHERE bead_id = ?1 AND dependency_type = '{}'",
        kind.as_str()
    );
    sorted_ids(&mut cx.conn.prepare_cached(&sql)?, id)
}

/// The beads that depend on `id` with the given kind.
pub fn dependents_of(cx: &Ctx<'_>, id: &str, kind: DepKind) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT bead_id FROM bead_dependencies WHERE depends_on_bead_id = ?1 AND dependency_type = '{}'",
        kind.as_str()
    );
    sorted_ids(&mut cx.conn.prepare_cached(&sql)?, id)
}

/// A live bead labelled `label` that blocks `mr`, if any (feedback/conflict consolidation).
pub fn live_blocker_with_label(cx: &Ctx<'_>, mr: &str, label: &str) -> Result<Option<String>> {
    for blocker in dependencies_of(cx, mr, DepKind::Blocks)? {
        if let Some(b) = find(cx, &blocker)? {
            if b.status.is_live() && b.has_label(label) {
                return Ok(Some(b.bead_id));
            }
        }
    }
    Ok(None)
}

/// Delete beads with everything hanging off them, including pending town
/// events that name them, so orphan events cannot poison the drain.
pub fn delete(cx: &Ctx<'_>, ids: &[String]) -> Result<()> {
    const STATEMENTS: &[&str] = &[
        "DELETE FROM bead_events WHERE bead_id = ?1",
        "DELETE FROM bead_dependencies WHERE bead_id = ?1 OR depends_on_bead_id = ?1",
        "DELETE FROM review_metadata WHERE bead_id = ?1",
        "DELETE FROM convoy_metadata WHERE bead_id = ?1",
        "DELETE FROM escalation_metadata WHERE bead_id = ?1",
        "DELETE FROM agent_metadata WHERE bead_id = ?1",
        "DELETE FROM agent_nudges WHERE agent_bead_id = ?1",
        "DELETE FROM town_events WHERE bead_id = ?1 OR agent_id = ?1",
        "DELETE FROM beads WHERE bead_id = ?1",
    ];
    for id in ids {
        for sql in STATEMENTS {
            cx.conn.prepare_cached(sql)?.execute([id])?;
        }
    }
    Ok(())
}
