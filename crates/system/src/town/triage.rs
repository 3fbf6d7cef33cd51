//! Triage requests: issue beads labelled `gt:triage-request`, routed to an
//! agent but never hooked, resolved by a triage agent or a human.

use super::beads::{self, CloseCause, Failure, NewBead};
use super::ctx::Ctx;
use super::effects::Effect;
use super::{agents, nudges, pr};
use crate::error::{Result, TownError};
use crate::model::{labels, AgentStatus, BeadStatus, BeadType, NudgeMode, NudgePriority, Priority, TriageType};
use rusqlite::params;
use serde_json::{json, Map, Value};

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

/// What a triage agent or a human decided about a request. Unknown actions
/// (`DISCARD`, `PROVIDE_GUIDANCE`, …) only close the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriageAction {
    Restart,
    RestartWithBackoff,
    CloseBead,
    EscalateToMayor,
    Nudge,
    ReassignBead,
    NoServerEffect,
}

impl TriageAction {
    pub fn parse(action: &str) -> Self {
        match action.trim().to_ascii_uppercase().as_str() {
            "RESTART" => TriageAction::Restart,
            "RESTART_WITH_BACKOFF" => TriageAction::RestartWithBackoff,
            "CLOSE_BEAD" => TriageAction::CloseBead,
            "ESCALATE_TO_MAYOR" | "ESCALATE" => TriageAction::EscalateToMayor,
            "NUDGE" => TriageAction::Nudge,
            "REASSIGN_BEAD" => TriageAction::ReassignBead,
            _ => TriageAction::NoServerEffect,
        }
    }
}

/// `resolveTriage`'s input.
#[derive(Clone, Debug)]
pub struct Resolution<'a> {
    pub request_id: &'a str,
    pub action: &'a str,
    pub notes: &'a str,
    pub resolved_by: &'a str,
}

/// The agent a request is about and the bead it was on when the request was
/// made (else the agent's hook now); `on_target` when it still holds it.
struct Target {
    agent: Option<agents::Agent>,
    bead: Option<String>,
    on_target: bool,
}

/// Act on a triage request, then close it (and the escalation it carries).
/// Returns what must reach the container or the mayor.
pub fn resolve(cx: &mut Ctx<'_>, r: &Resolution<'_>) -> Result<Vec<Effect>> {
    let request = beads::get(cx, r.request_id)?;
    if !request.has_label(labels::TRIAGE_REQUEST) {
        return Err(TownError::invalid("triage", format!("bead {} is not a triage request", r.request_id)));
    }
    if request.status != BeadStatus::Open {
        return Err(TownError::invalid(
            "triage",
            format!("triage request {} is {}, not open", r.request_id, request.status),
        ));
    }
    let agent = match request.meta_str("agent_bead_id") {
        Some(a) => agents::find(cx, a)?,
        None => None,
    };
    let bead =
        request.meta_str("hooked_bead_id").map(str::to_owned).or_else(|| agent.as_ref()?.current_hook_bead_id.clone());
    let on_target = bead.is_some() && agent.as_ref().is_some_and(|a| a.current_hook_bead_id == bead);
    let target = Target { agent, bead, on_target };
    let action = TriageAction::parse(r.action);
    let mut effects = Vec::new();
    match action {
        TriageAction::Restart | TriageAction::RestartWithBackoff => restart(cx, &target, action, &mut effects)?,
        TriageAction::CloseBead => close_target(cx, &target, &mut effects)?,
        TriageAction::ReassignBead => reassign(cx, &target, &mut effects)?,
        TriageAction::EscalateToMayor => effects.push(Effect::MessageMayor {
            mayor_id: None,
            about_bead: target.bead.clone(),
            text: format!("[Triage Escalation] {}: {}", request.title, r.notes),
        }),
        TriageAction::Nudge => {
            if let Some(a) = &target.agent {
                let message = format!("[Triage] {}", r.notes);
                let (_, effect) = nudges::queue(
                    cx,
                    nudges::NewNudge {
                        agent_id: &a.agent_id,
                        message: &message,
                        mode: NudgeMode::Immediate,
                        priority: NudgePriority::Urgent,
                        source: "triage",
                        ttl_seconds: None,
                        tier: None,
                    },
                )?;
                effects.extend(effect);
            }
        }
        TriageAction::NoServerEffect => {}
    }
    close_request(cx, &request, r, target.bead.as_deref())?;
    Ok(effects)
}

fn stop(target: &Target, reason: &str, effects: &mut Vec<Effect>) {
    if let Some(a) = &target.agent {
        effects.push(Effect::StopAgent { agent_id: a.agent_id.clone(), reason: reason.into() });
    }
}

/// #1653: a bead at its rig's dispatch cap fails instead of going round again.
fn at_cap(cx: &Ctx<'_>, bead: &beads::Bead) -> Result<bool> {
    Ok(bead.dispatch_attempts >= pr::settings_for(cx, bead.rig_id.as_deref())?.max_dispatch_attempts)
}

fn fail_at_cap(cx: &mut Ctx<'_>, bead: &beads::Bead) -> Result<()> {
    let f = Failure::new("max_dispatch_attempts", "triage: dispatch attempts exhausted", "triage");
    beads::update_status(cx, &bead.bead_id, BeadStatus::Failed, "triage", Some(&f))?;
    agents::unhook_all_from(cx, &bead.bead_id, "bead failed")
}

fn live_target(cx: &Ctx<'_>, target: &Target) -> Result<Option<beads::Bead>> {
    let Some(id) = &target.bead else { return Ok(None) };
    Ok(beads::find(cx, id)?.filter(|b| !b.status.is_terminal()))
}

/// `RESTART`: stop the session if it still works the bead, then either fail
/// a bead at its cap or leave the agent idle on it for the reconciler to
/// redispatch. A plain restart forgets the agent's activity (the next check
/// treats it as never heard from); with backoff it counts from now and the
/// bead's last attempt is stamped, so the retry waits its turn.
fn restart(cx: &mut Ctx<'_>, target: &Target, action: TriageAction, effects: &mut Vec<Effect>) -> Result<()> {
    let working =
        target.agent.as_ref().is_some_and(|a| matches!(a.status, AgentStatus::Working | AgentStatus::Stalled));
    if target.on_target && working {
        stop(target, "triage restart", effects);
    }
    let Some(bead) = live_target(cx, target)? else { return Ok(()) };
    if at_cap(cx, &bead)? {
        return fail_at_cap(cx, &bead);
    }
    let (Some(a), true) = (&target.agent, target.on_target) else { return Ok(()) };
    let backoff = action == TriageAction::RestartWithBackoff;
    cx.conn
        .prepare_cached(
            "UPDATE agent_metadata SET status = 'idle', stalled_at = NULL, \
             last_activity_at = CASE WHEN ?2 THEN ?3 ELSE NULL END WHERE bead_id = ?1",
        )?
        .execute(params![a.agent_id, backoff, cx.now.0])?;
    if backoff {
        cx.conn
            .prepare_cached("UPDATE beads SET last_dispatch_attempt_at = ?2 WHERE bead_id = ?1")?
            .execute(params![bead.bead_id, cx.now.0])?;
    }
    Ok(())
}

/// `CLOSE_BEAD`: the work is given up (failed, not closed: nothing merged).
fn close_target(cx: &mut Ctx<'_>, target: &Target, effects: &mut Vec<Effect>) -> Result<()> {
    if let Some(bead) = live_target(cx, target)? {
        let f = Failure::new("triage_close", "closed by triage", "triage");
        beads::update_status(cx, &bead.bead_id, BeadStatus::Failed, "triage", Some(&f))?;
    }
    release(cx, target, "triage close", effects)
}

/// `REASSIGN_BEAD`: take the bead from its agent and put it back in the pool.
fn reassign(cx: &mut Ctx<'_>, target: &Target, effects: &mut Vec<Effect>) -> Result<()> {
    release(cx, target, "triage reassign", effects)?;
    let Some(bead) = live_target(cx, target)? else { return Ok(()) };
    if at_cap(cx, &bead)? {
        return fail_at_cap(cx, &bead);
    }
    beads::set_assignee(cx, &bead.bead_id, None)?;
    if bead.status != BeadStatus::Open {
        beads::update_status(cx, &bead.bead_id, BeadStatus::Open, "triage", None)?;
    }
    Ok(())
}

/// Stop and unhook the agent, only if it is still on the bead.
fn release(cx: &mut Ctx<'_>, target: &Target, reason: &str, effects: &mut Vec<Effect>) -> Result<()> {
    let (Some(a), true) = (&target.agent, target.on_target) else { return Ok(()) };
    stop(target, reason, effects);
    agents::unhook(cx, &a.agent_id, reason)
}

fn close_request(cx: &mut Ctx<'_>, request: &beads::Bead, r: &Resolution<'_>, target: Option<&str>) -> Result<()> {
    for (key, value) in [("resolution_action", r.action), ("resolution_notes", r.notes), ("resolved_by", r.resolved_by)]
    {
        beads::set_meta(cx, &request.bead_id, key, &json!(value))?;
    }
    beads::update_status_because(
        cx,
        &request.bead_id,
        BeadStatus::Closed,
        r.resolved_by,
        None,
        CloseCause::TriageResolved,
    )?;
    if let Some(t) = target.filter(|t| beads::find(cx, t).ok().flatten().is_some()) {
        let mut meta = Map::new();
        meta.insert("triage_request_bead_id".into(), json!(request.bead_id));
        beads::log_event(cx, t, None, "triage_resolved", None, Some(r.action), Some(&meta))?;
    }
    let escalation = request.metadata.get("context").and_then(|c| c.get("escalation_bead_id")).and_then(Value::as_str);
    if let Some(e) = escalation {
        if beads::status_of(cx, e)?.is_some_and(|s| !s.is_terminal()) {
            beads::update_status_because(cx, e, BeadStatus::Closed, r.resolved_by, None, CloseCause::TriageResolved)?;
        }
    }
    Ok(())
}
