//! Escalations: beads raised by agents or the system, routed to the mayor,
//! re-escalated every 4 h while unacknowledged (never once terminal).

use super::beads::{self, CloseCause, NewBead};
use super::ctx::Ctx;
use super::effects::Effect;
use super::triage::{self, TriageRequest};
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::{labels, BeadStatus, BeadType, Severity, TriageType};
use crate::time::{Timestamp, HOUR_MS};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const RE_ESCALATION_STEP_MS: i64 = 4 * HOUR_MS;
/// (Written as a literal in the sweep's SQL, which must stay parameter-free.)
pub const MAX_RE_ESCALATIONS: u32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEscalation {
    pub source_rig_id: Option<String>,
    #[serde(default)]
    pub source_agent_id: Option<String>,
    pub severity: Severity,
    #[serde(default)]
    pub category: Option<String>,
    pub message: String,
}

/// An escalation to create.
pub struct NewEscalation<'a> {
    pub title: String,
    pub body: &'a str,
    pub rig: Option<&'a str>,
    pub severity: Severity,
    pub category: Option<&'a str>,
    pub metadata: Map<String, Value>,
    pub created_by: Option<&'a str>,
}

/// Create an escalation bead with its metadata row. Shared by routed
/// escalations and the ones the town raises itself (merge conflicts).
pub fn insert(cx: &mut Ctx<'_>, e: NewEscalation<'_>) -> Result<String> {
    let mut b = NewBead::new(BeadType::Escalation, e.title)
        .body(Some(e.body.to_owned()))
        .rig(e.rig)
        .priority(e.severity.priority())
        .label(labels::ESCALATION)
        .label(&format!("severity:{}", e.severity))
        .by(e.created_by);
    b.metadata = e.metadata;
    let id = beads::insert(cx, b)?;
    cx.conn
        .prepare_cached(
            "INSERT INTO escalation_metadata (bead_id, severity, category, acknowledged, re_escalation_count) VALUES (?1, ?2, ?3, 0, 0)",
        )?
        .execute(params![id, e.severity, e.category])?;
    Ok(id)
}

/// Route an escalation: bead, triage request, and a mayor notice unless low.
pub fn route(cx: &mut Ctx<'_>, input: &RouteEscalation) -> Result<(String, Vec<Effect>)> {
    if input.message.trim().is_empty() {
        return Err(TownError::invalid("escalation", "message is empty"));
    }
    let mut meta = Map::new();
    if let Some(agent) = &input.source_agent_id {
        let a = super::agents::get(cx, agent)?;
        if let Some(h) = a.current_hook_bead_id {
            meta.insert("source_bead_id".into(), json!(h));
            if let Some(c) = super::convoys::convoy_of(cx, &h)? {
                meta.insert("convoy_id".into(), json!(c));
            }
        }
    }
    let title = format!("Escalation: {}", input.message.chars().take(100).collect::<String>());
    let id = insert(
        cx,
        NewEscalation {
            title,
            body: &input.message,
            rig: input.source_rig_id.as_deref(),
            severity: input.severity,
            category: input.category.as_deref(),
            metadata: meta,
            created_by: input.source_agent_id.as_deref(),
        },
    )?;
    let options: Vec<&'static str> = if input.severity == Severity::Low {
        vec!["NUDGE", "CLOSE_BEAD", "PROVIDE_GUIDANCE"]
    } else {
        vec!["ESCALATE_TO_MAYOR", "RESTART", "CLOSE_BEAD", "REASSIGN_BEAD"]
    };
    triage::create(
        cx,
        TriageRequest {
            triage_type: TriageType::Escalation,
            agent_id: input.source_agent_id.as_deref(),
            hooked_bead_id: None,
            title: format!("Triage: escalation {}", input.severity),
            context: json!({"escalation_bead_id": id, "message": input.message}),
            options,
            rig_id: input.source_rig_id.as_deref(),
        },
    )?;
    let mut effects = Vec::new();
    if input.severity != Severity::Low {
        effects.push(Effect::MessageMayor {
            mayor_id: None,
            about_bead: Some(id.clone()),
            text: format!(
                "[Escalation:{}] rig={} {}",
                input.severity,
                input.source_rig_id.as_deref().unwrap_or("-"),
                input.message
            ),
        });
    }
    Ok((id, effects))
}

/// Acknowledge (once) and close the escalation bead.
pub fn acknowledge(cx: &mut Ctx<'_>, id: &str) -> Result<()> {
    let exists: Option<i64> = cx
        .conn
        .prepare_cached("SELECT acknowledged FROM escalation_metadata WHERE bead_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if exists.is_none() {
        return Err(TownError::not_found("Escalation", id));
    }
    cx.conn
        .prepare_cached(
            "UPDATE escalation_metadata SET acknowledged = 1, acknowledged_at = ?2 WHERE bead_id = ?1 AND acknowledged = 0",
        )?
        .execute(params![id, cx.now.0])?;
    beads::update_status_because(cx, id, BeadStatus::Closed, "user", None, CloseCause::UserClosed)?;
    Ok(())
}

/// Bump stale, unacknowledged, non-terminal escalations one severity step
/// every 4 h (at most 3 times) and tell the mayor.
pub fn re_escalate_stale(cx: &mut Ctx<'_>) -> Result<Vec<Effect>> {
    let live_only =
        if defects::on(Defect::ReEscalateTerminal) { "" } else { "AND b.status NOT IN ('closed', 'failed')" };
    let mut st = cx.conn.prepare_cached(&format!(
        "SELECT b.bead_id, b.rig_id, b.body, b.created_at, e.severity, e.re_escalation_count \
         FROM escalation_metadata e JOIN beads b ON b.bead_id = e.bead_id \
         WHERE e.acknowledged = 0 AND e.re_escalation_count < 3 {live_only} \
         ORDER BY b.created_at, b.bead_id"
    ))?;
    type Row = (String, Option<String>, Option<String>, i64, Severity, u32);
    let rows: Vec<Row> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut effects = Vec::new();
    for (id, rig, body, created, severity, count) in rows {
        let required = i64::from(count + 1) * RE_ESCALATION_STEP_MS;
        if cx.now.since(Timestamp(created)) < required || severity == Severity::Critical {
            continue;
        }
        let next = severity.bumped();
        cx.conn
            .prepare_cached(
                "UPDATE escalation_metadata SET severity = ?2, re_escalation_count = re_escalation_count + 1 WHERE bead_id = ?1",
            )?
            .execute(params![id, next])?;
        effects.push(Effect::MessageMayor {
            mayor_id: None,
            about_bead: Some(id.clone()),
            text: format!("[Re-Escalation:{next}] rig={} {}", rig.as_deref().unwrap_or("-"), body.unwrap_or_default()),
        });
    }
    Ok(effects)
}

#[derive(Clone, Debug, Serialize)]
pub struct EscalationState {
    pub severity: Severity,
    pub acknowledged: bool,
    pub re_escalation_count: u32,
}

pub fn state(cx: &Ctx<'_>, id: &str) -> Result<Option<EscalationState>> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT severity, acknowledged, re_escalation_count FROM escalation_metadata WHERE bead_id = ?1",
        )?
        .query_row([id], |r| {
            Ok(EscalationState { severity: r.get(0)?, acknowledged: r.get(1)?, re_escalation_count: r.get(2)? })
        })
        .optional()?)
}
