//! The review queue: MR beads, what `gt_done` and process exits mean, review
//! results, rework requests, and the PR feedback / conflict / auto-merge facts.

use super::agents;
use super::beads::{self, CloseCause, DepKind, Failure, NewBead};
use super::convoys;
use super::ctx::Ctx;
use super::escalations;
use super::events;
use super::state;
use super::triage::{self, TriageRequest};
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::pr_url::PrUrl;
use crate::model::{
    labels, AgentRole, AgentStatus, BeadStatus, BeadType, EventType, Label, MergeMode, RigSettings, Severity,
    TownConfig, TriageType,
};
use crate::time::{stale, Timestamp};
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map};

/// Heartbeats older than this mean the agent is gone (3 missed 30 s beats).
pub const HEARTBEAT_STALE_MS: i64 = 90_000;

pub struct SubmitReview<'a> {
    pub agent_id: &'a str,
    pub source_bead_id: &'a str,
    pub rig_id: &'a str,
    pub branch: &'a str,
    pub pr_url: Option<&'a str>,
    pub summary: Option<&'a str>,
    pub default_branch: Option<&'a str>,
}

/// Create an MR bead that tracks its source. Its target is the convoy feature
/// branch for review-then-land members, else the rig's default branch.
pub fn submit(cx: &mut Ctx<'_>, s: SubmitReview<'_>) -> Result<String> {
    if s.branch.trim().is_empty() {
        return Err(TownError::invalid("review", "branch is empty"));
    }
    // Fix-up work pushes to the PR it fixes; a review of its own would be a
    // second PR for the same change (bug i). `gt_done` closes such beads, and
    // a direct submission must not bypass that.
    if never_reviewed(beads::get(cx, s.source_bead_id)?.label_set()) {
        return Err(TownError::invalid(
            "review",
            format!("bead {} is fix-up work and is never reviewed", s.source_bead_id),
        ));
    }
    let pr_url = match s.pr_url {
        Some(u) => Some(PrUrl::parse(u).map(|_| u.to_owned())?),
        None => None,
    };
    let mut meta = Map::new();
    meta.insert("source_bead_id".into(), json!(s.source_bead_id));
    meta.insert("source_agent_id".into(), json!(s.agent_id));
    if let Some(u) = &pr_url {
        meta.insert("pr_url".into(), json!(u));
    }
    let mut target = s.default_branch.unwrap_or("main").to_owned();
    let convoy_id = convoys::convoy_of(cx, s.source_bead_id)?;
    if let Some(convoy) = &convoy_id {
        let m = convoys::meta(cx, convoy)?;
        if let Some(m) = m {
            if let (MergeMode::ReviewThenLand, Some(fb)) = (m.merge_mode, &m.feature_branch) {
                target = fb.clone();
            }
            meta.insert("convoy_id".into(), json!(convoy));
            meta.insert("convoy_feature_branch".into(), json!(m.feature_branch));
        }
    }
    let mut b = NewBead::new(BeadType::MergeRequest, format!("Review: {}", s.branch))
        .body(s.summary.map(str::to_owned))
        .rig(Some(s.rig_id))
        .label(labels::MERGE_REQUEST)
        .by(Some(s.agent_id));
    b.metadata = meta;
    let mr = beads::insert(cx, b)?;
    cx.conn
        .prepare_cached(
            "INSERT INTO review_metadata (bead_id, branch, target_branch, pr_url, convoy_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![mr, s.branch, target, pr_url, convoy_id])?;
    beads::add_dependency(cx, &mr, s.source_bead_id, DepKind::Tracks)?;
    let mut m = Map::new();
    m.insert("branch".into(), json!(s.branch));
    m.insert("target_branch".into(), json!(target));
    beads::log_event(cx, s.source_bead_id, Some(s.agent_id), "review_submitted", None, Some(s.branch), Some(&m))?;
    Ok(mr)
}

/// Record a PR URL on an MR. Returns false (and writes nothing) when invalid.
pub fn set_pr_url(cx: &Ctx<'_>, mr: &str, url: &str) -> Result<bool> {
    if PrUrl::parse(url).is_err() {
        return Ok(false);
    }
    let n = cx.conn.prepare_cached("UPDATE review_metadata SET pr_url = ?2 WHERE bead_id = ?1")?.execute([mr, url])?;
    if n == 0 {
        return Err(TownError::not_found("Bead", mr));
    }
    beads::set_meta(cx, mr, "pr_url", &json!(url))?;
    Ok(true)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DoneReport {
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub pr_url: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    /// The bead the reporting session was dispatched for, when the caller says.
    #[serde(default)]
    pub bead_id: Option<String>,
}

impl DoneReport {
    fn named_bead(&self) -> Option<&str> {
        self.bead_id.as_deref().filter(|b| !b.is_empty())
    }
}

/// Apply an agent's `gt_done`. A report naming a bead that no longer exists
/// (deleted while the session worked on it) can never apply: it fails as
/// not found, which the drain marks inapplicable.
pub fn agent_done(cx: &mut Ctx<'_>, agent_id: &str, done: &DoneReport) -> Result<()> {
    let agent = agents::get(cx, agent_id)?;
    if let Some(named) = done.named_bead() {
        if beads::status_of(cx, named)?.is_none() {
            return Err(TownError::not_found("Bead", named));
        }
    }
    // A report about another bead than the hook comes from a session the town
    // replaced by a re-dispatch that never reached the container (a partition,
    // a failed start): that session kept working on its old bead. Upstream
    // files it under the current hook, so the old bead's PR became the new
    // bead's review (a second live PR for the old work, the new work never
    // done), and a refinery's late result rewrote its new MR's PR URL.
    if let (Some(named), Some(hook)) = (done.named_bead(), agent.current_hook_bead_id.as_deref()) {
        if named != hook {
            beads::log_event(
                cx,
                named,
                Some(agent_id),
                "stale_done_ignored",
                Some(hook),
                done.pr_url.as_deref(),
                None,
            )?;
            return Ok(());
        }
    }
    let Some(hook) = agent.current_hook_bead_id.clone() else {
        if agent.role == AgentRole::Refinery {
            return refinery_done_without_hook(cx, &agent, done);
        }
        return Ok(());
    };
    let bead = beads::get(cx, &hook)?;
    let labels = bead.label_set();
    if never_reviewed(labels) {
        // Fix-up work pushes to an existing branch/PR: close it, never open a new review (bug i).
        beads::update_status_because(cx, &hook, BeadStatus::Closed, agent_id, None, CloseCause::FixupDone)?;
        return agents::unhook(cx, agent_id, "gt_done");
    }
    if agent.role == AgentRole::Refinery {
        // The MR's fate was decided while the review ran (merged or closed by
        // polling, failed): a late result must neither rewrite the PR URL it
        // was merged under nor close a source that may be re-worked by now.
        if bead.status.is_terminal() {
            agents::unhook(cx, agent_id, "review done")?;
            return agents::set_status(cx, agent_id, AgentStatus::Idle);
        }
        match done.pr_url.as_deref() {
            Some(url) => {
                if set_pr_url(cx, &hook, url)? {
                    beads::update_status(cx, &hook, BeadStatus::InProgress, agent_id, None)?;
                    beads::log_event(cx, &hook, Some(agent_id), "pr_created", None, Some(url), None)?;
                } else {
                    beads::log_event(cx, &hook, Some(agent_id), "pr_creation_failed", None, Some(url), None)?;
                    complete(
                        cx,
                        &hook,
                        ReviewResult::Failed,
                        Some(&format!("Refinery provided invalid pr_url: {url}")),
                        None,
                    )?;
                }
            }
            // The refinery asked for changes and then finished its turn, as
            // its tools tell it to: without a PR that is no merge. The MR
            // waits in progress (Rules 2/3 skip it while rework blocks it)
            // and goes back to a refinery once the rework is done.
            None if super::pr::has_live_blocker(cx, &hook)? && !defects::on(Defect::DirectMergeDespiteRework) => {
                beads::log_event(cx, &hook, Some(agent_id), "merge_deferred_for_rework", None, None, None)?;
            }
            None => {
                let msg = done.summary.clone().unwrap_or_else(|| "Merged by refinery agent".into());
                complete(cx, &hook, ReviewResult::Merged, Some(&msg), None)?;
            }
        }
        agents::unhook(cx, agent_id, "review done")?;
        return agents::set_status(cx, agent_id, AgentStatus::Idle);
    }
    let rig_id = bead
        .rig_id
        .clone()
        .or(agent.rig_id.clone())
        .ok_or_else(|| TownError::invalid("gt_done", format!("bead {hook} has no rig to review in")))?;
    let rig = state::get_rig(cx, &rig_id)?;
    let valid_url = done.pr_url.as_deref().filter(|u| PrUrl::parse(u).is_ok());
    if let (Some(u), None) = (done.pr_url.as_deref(), valid_url) {
        beads::log_event(cx, &hook, Some(agent_id), "pr_creation_failed", None, Some(u), None)?;
    }
    let branch = if done.branch.trim().is_empty() { format!("gt/{}", &hook) } else { done.branch.clone() };
    submit(
        cx,
        SubmitReview {
            agent_id,
            source_bead_id: &hook,
            rig_id: &rig_id,
            branch: &branch,
            pr_url: valid_url,
            summary: done.summary.as_deref(),
            default_branch: Some(&rig.default_branch),
        },
    )?;
    agents::unhook(cx, agent_id, "gt_done")?;
    beads::update_status(cx, &hook, BeadStatus::InReview, agent_id, None)?;
    Ok(())
}

/// A refinery whose hook was taken by a recovery rule reports `gt_done`. A PR
/// URL is recorded; without one the merge cannot be proven, so the review
/// fails and a human hears about it (never an optimistic merge).
fn refinery_done_without_hook(cx: &mut Ctx<'_>, agent: &agents::Agent, done: &DoneReport) -> Result<()> {
    let mr: Option<String> = cx
        .conn
        .prepare_cached(
            "SELECT bead_id FROM beads WHERE type = 'merge_request' AND assignee_agent_bead_id = ?1 \
             AND status IN ('open', 'in_progress', 'in_review') AND status != 'in_review' \
             AND (?2 IS NULL OR bead_id = ?2) ORDER BY updated_at DESC, bead_id LIMIT 1",
        )?
        // A report naming its MR is about that MR only; upstream's guess
        // (the latest one assigned) is for reports that do not say.
        .query_row(params![agent.agent_id, done.named_bead()], |r| r.get(0))
        .optional()?;
    let Some(mr) = mr else { return Ok(()) };
    match done.pr_url.as_deref() {
        Some(url) if set_pr_url(cx, &mr, url)? => {
            beads::update_status(cx, &mr, BeadStatus::InProgress, &agent.agent_id, None)?;
        }
        Some(url) => {
            complete(cx, &mr, ReviewResult::Failed, Some(&format!("Refinery provided invalid pr_url: {url}")), None)?;
        }
        None => {
            let msg =
                done.summary.clone().unwrap_or_else(|| "refinery finished without a PR after losing its hook".into());
            complete(cx, &mr, ReviewResult::Failed, Some(&msg), None)?;
            let mut meta = Map::new();
            meta.insert("kind".into(), json!("refinery_unhooked_done"));
            meta.insert("mr_bead_id".into(), json!(mr));
            escalations::insert(
                cx,
                escalations::NewEscalation {
                    title: "Refinery gt_done without pr_url after hook loss".into(),
                    body: &msg,
                    rig: agent.rig_id.as_deref(),
                    severity: Severity::High,
                    category: Some("refinery_unhooked_done"),
                    metadata: meta,
                    created_by: Some(&agent.agent_id),
                },
            )?;
        }
    }
    Ok(())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    Completed,
    Failed,
}

pub const EVICTION_REASON: &str = "container eviction";

/// Apply a process exit. Never closes work (bug m): a refinery's MR is left
/// alone; a polecat's in-progress bead stays for Rule 3, except after an
/// eviction: with a stale heartbeat it reopens at once, with a fresh one the
/// exit is ignored.
pub fn agent_completed(
    cx: &mut Ctx<'_>,
    agent_id: &str,
    status: ExitStatus,
    reason: Option<&str>,
    reported_at: Timestamp,
) -> Result<()> {
    let Some(agent) = agents::find(cx, agent_id)? else { return Ok(()) };
    // An exit recorded before the agent's latest dispatch belongs to an older
    // session: it must not touch the bead the agent now works on.
    let stale_report = agent.last_dispatched_at.is_some_and(|d| d > reported_at);
    if let (Some(hook), false) = (agent.current_hook_bead_id.clone(), stale_report) {
        if agent.role != AgentRole::Refinery {
            let bead_status = beads::status_of(cx, &hook)?;
            match (status, bead_status) {
                (ExitStatus::Failed, Some(_)) => {
                    let f = Failure::new("agent_failed", reason.unwrap_or("agent process failed"), "container");
                    beads::update_status(cx, &hook, BeadStatus::Failed, agent_id, Some(&f))?;
                }
                (ExitStatus::Completed, Some(BeadStatus::InProgress)) if defects::on(Defect::ExitClosesBead) => {
                    beads::update_status(cx, &hook, BeadStatus::Closed, agent_id, None)?;
                }
                (ExitStatus::Completed, Some(BeadStatus::InProgress))
                    if reason == Some(EVICTION_REASON)
                        && (stale(cx.now, agent.last_activity_at, HEARTBEAT_STALE_MS)
                            || defects::on(Defect::EvictionResetDespiteHeartbeat)) =>
                {
                    beads::reopen_after_eviction(cx, &hook, agent_id)?;
                    beads::set_assignee(cx, &hook, None)?;
                }
                // A fresh heartbeat: the session outlives the eviction (#3538).
                // Unhooking would let Rule 3 reset the bead under a live agent;
                // if it did die, the heartbeat rules (A1, A4/A5) recover it.
                (ExitStatus::Completed, Some(BeadStatus::InProgress)) if reason == Some(EVICTION_REASON) => {
                    return Ok(());
                }
                _ => {}
            }
            agents::unhook(cx, agent_id, "agent exited")?;
        }
    }
    if stale_report {
        return Ok(());
    }
    cx.conn
        .prepare_cached(
            "UPDATE agent_metadata SET status = 'idle', stalled_at = NULL, \
             dispatch_attempts = CASE WHEN role = 'refinery' THEN dispatch_attempts ELSE 0 END \
             WHERE bead_id = ?1 AND NOT (status = 'working' AND current_hook_bead_id IS NOT NULL)",
        )?
        .execute([agent_id])?;
    Ok(())
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewResult {
    Merged,
    Failed,
    Conflict,
}

/// Finish a review. Merged closes the MR, its source (a convoy for landing
/// MRs) and live sibling MRs; failed or conflict fail the MR and reopen a
/// live source for another attempt (conflict also raises an escalation).
pub fn complete(
    cx: &mut Ctx<'_>,
    mr: &str,
    result: ReviewResult,
    message: Option<&str>,
    commit_sha: Option<&str>,
) -> Result<()> {
    let bead = beads::get(cx, mr)?;
    if bead.bead_type != BeadType::MergeRequest {
        return Err(TownError::invalid("review result", format!("bead {mr} is not a merge request")));
    }
    match result {
        ReviewResult::Merged => {
            beads::update_status_because(cx, mr, BeadStatus::Closed, "system", None, CloseCause::Merged)?;
        }
        ReviewResult::Failed | ReviewResult::Conflict => {
            let code = if result == ReviewResult::Conflict { "merge_conflict" } else { "review_failed" };
            let f = Failure::new(code, message.unwrap_or("review failed"), "review");
            beads::update_status(cx, mr, BeadStatus::Failed, "system", Some(&f))?;
        }
    }
    let branch: Option<String> = cx
        .conn
        .prepare_cached("SELECT branch FROM review_metadata WHERE bead_id = ?1")?
        .query_row([mr], |r| r.get(0))
        .optional()?;
    let source = bead.meta_str("source_bead_id").unwrap_or(mr).to_owned();
    let source_agent = bead.meta_str("source_agent_id").map(str::to_owned).or(bead.created_by.clone());
    let mut m = Map::new();
    m.insert("message".into(), json!(message));
    m.insert("commit_sha".into(), json!(commit_sha));
    let result_text = match result {
        ReviewResult::Merged => "merged",
        ReviewResult::Failed => "failed",
        ReviewResult::Conflict => "conflict",
    };
    if beads::status_of(cx, &source)?.is_some() {
        beads::log_event(cx, &source, source_agent.as_deref(), "review_completed", None, Some(result_text), Some(&m))?;
    }
    match result {
        ReviewResult::Merged => {
            if source != mr && beads::status_of(cx, &source)?.is_some() {
                beads::update_status_because(cx, &source, BeadStatus::Closed, "system", None, CloseCause::Merged)?;
                // Defence in depth: no path here gives a source a second live
                // MR (only the gt_done of the agent hooked to it submits one,
                // unhooking it and putting the source in review; an in-review
                // source reopens only once its MRs have ended). Upstream got
                // them from its review-queue route, rework MRs (bug i) and
                // deleteAgent reopening reviews (§10.2 #4).
                let siblings = if defects::on(Defect::SiblingMrsStayOpen) {
                    Vec::new()
                } else {
                    beads::dependents_of(cx, &source, DepKind::Tracks)?
                };
                for sibling in siblings {
                    let Some(s) = beads::find(cx, &sibling)? else { continue };
                    if s.bead_type == BeadType::MergeRequest && s.status.is_live() && sibling != mr {
                        beads::update_status_because(
                            cx,
                            &sibling,
                            BeadStatus::Closed,
                            "system",
                            None,
                            CloseCause::Other,
                        )?;
                    }
                }
                convoys::on_bead_terminal(cx, &source)?;
                if convoys::meta(cx, &source)?.is_some() {
                    cx.conn
                        .prepare_cached(
                            "UPDATE convoy_metadata SET landed_at = COALESCE(landed_at, ?2) WHERE bead_id = ?1",
                        )?
                        .execute(params![source, cx.now.0])?;
                }
            }
        }
        ReviewResult::Conflict => {
            let mut meta = Map::new();
            meta.insert("source_bead_id".into(), json!(source));
            meta.insert("source_agent_id".into(), json!(source_agent));
            meta.insert("branch".into(), json!(branch));
            meta.insert("mr_bead_id".into(), json!(mr));
            meta.insert("conflict".into(), json!(true));
            let what = message.map(str::to_owned).or(branch.clone()).unwrap_or_default();
            escalations::insert(
                cx,
                escalations::NewEscalation {
                    title: format!("Merge conflict: {what}"),
                    body: &what,
                    rig: bead.rig_id.as_deref(),
                    severity: Severity::High,
                    category: Some("merge_conflict"),
                    metadata: meta,
                    created_by: Some("system"),
                },
            )?;
            reopen_source(cx, &source, mr)?;
        }
        ReviewResult::Failed => reopen_source(cx, &source, mr)?,
    }
    Ok(())
}

/// A review result reported by a caller. A merge without a PR to prove it is
/// the caller's word alone: it is refused while fix-up work blocks the MR.
pub fn complete_reported(cx: &mut Ctx<'_>, mr: &str, result: ReviewResult, message: Option<&str>) -> Result<()> {
    if result == ReviewResult::Merged && pr_url(cx, mr)?.is_none() && super::pr::has_live_blocker(cx, mr)? {
        return Err(TownError::invalid("review result", format!("merge request {mr} is blocked by open fix-up work")));
    }
    complete(cx, mr, result, message, None)
}

fn reopen_source(cx: &mut Ctx<'_>, source: &str, mr: &str) -> Result<()> {
    if source == mr {
        return Ok(());
    }
    if beads::status_of(cx, source)?.is_some_and(|s| s.is_live()) {
        beads::update_status(cx, source, BeadStatus::Open, "system", None)?;
        beads::set_assignee(cx, source, None)?;
    }
    Ok(())
}

/// The refinery asks for changes: a rework bead that blocks the MR.
pub fn request_changes(cx: &mut Ctx<'_>, refinery_id: &str, feedback: &str, files: &[String]) -> Result<String> {
    let agent = agents::get(cx, refinery_id)?;
    if agent.role != AgentRole::Refinery {
        return Err(TownError::invalid(
            "request changes",
            format!("agent {refinery_id} is a {}, not a refinery", agent.role),
        ));
    }
    let mr_id = agent
        .current_hook_bead_id
        .ok_or_else(|| TownError::invalid("request changes", format!("refinery {refinery_id} is not hooked")))?;
    let mr = beads::get(cx, &mr_id)?;
    if mr.bead_type != BeadType::MergeRequest {
        return Err(TownError::invalid("request changes", format!("hooked bead {mr_id} is not a merge request")));
    }
    // A merged or failed MR has nothing left to rework: the rework bead would
    // send a polecat to a branch that is gone or landed.
    if mr.status.is_terminal() {
        return Err(TownError::invalid("request changes", format!("merge request {mr_id} is already {}", mr.status)));
    }
    if feedback.trim().is_empty() {
        return Err(TownError::invalid("request changes", "feedback is empty"));
    }
    let source_id = mr.meta_str("source_bead_id").unwrap_or(&mr_id).to_owned();
    let source = beads::find(cx, &source_id)?;
    let (branch, target): (String, String) = cx
        .conn
        .prepare_cached("SELECT branch, target_branch FROM review_metadata WHERE bead_id = ?1")?
        .query_row([&mr_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let title = format!("Rework: {}", source.as_ref().map_or(mr.title.as_str(), |s| s.title.as_str()));
    let b = NewBead::new(BeadType::Issue, title)
        .body(Some(feedback.to_owned()))
        .rig(mr.rig_id.as_deref())
        .priority(source.as_ref().map_or(mr.priority, |s| s.priority))
        .parent(Some(&mr_id))
        .label(labels::REWORK)
        .by(Some(refinery_id))
        .meta("rework_for", json!(source_id))
        .meta("mr_bead_id", json!(mr_id))
        .meta("branch", json!(branch))
        .meta("target_branch", json!(target))
        .meta("files", json!(files));
    let rework = beads::insert(cx, b)?;
    beads::add_dependency(cx, &mr_id, &rework, DepKind::Blocks)?;
    let short_feedback: String = feedback.chars().take(500).collect();
    beads::log_event(cx, &mr_id, Some(refinery_id), "rework_requested", None, Some(&short_feedback), None)?;
    events::record(
        cx,
        EventType::BeadCreated,
        None,
        Some(&rework),
        json!({"bead_type": "issue", "rig_id": mr.rig_id}),
    )?;
    Ok(rework)
}

/// Does an open or in-progress MR track `source`?
pub fn has_live_mr(cx: &Ctx<'_>, source: &str) -> Result<bool> {
    Ok(cx
        .conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM bead_dependencies d JOIN beads m ON m.bead_id = d.bead_id \
             WHERE d.depends_on_bead_id = ?1 AND d.dependency_type = 'tracks' AND m.type = 'merge_request' \
             AND m.status IN ('open', 'in_progress'))",
        )?
        .query_row([source], |r| r.get(0))?)
}

/// The PR URL the MR carries, if any.
pub fn pr_url(cx: &Ctx<'_>, mr: &str) -> Result<Option<String>> {
    Ok(cx
        .conn
        .prepare_cached("SELECT pr_url FROM review_metadata WHERE bead_id = ?1")?
        .query_row([mr], |r| r.get(0))
        .optional()?
        .flatten())
}

/// A live MR, or `None` when it is gone or terminal (the fact no longer applies).
fn live_mr(cx: &Ctx<'_>, mr: &str) -> Result<Option<beads::Bead>> {
    Ok(beads::find(cx, mr)?.filter(|b| b.bead_type == BeadType::MergeRequest && b.status.is_live()))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FeedbackDetected {
    pub mr_bead_id: String,
    #[serde(default)]
    pub pr_url: Option<String>,
    #[serde(default)]
    pub pr_number: Option<u64>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub has_unresolved_comments: bool,
    #[serde(default)]
    pub has_failing_checks: bool,
    #[serde(default)]
    pub has_unchecked_runs: bool,
}

/// Review comments or CI failures on a PR become one feedback bead blocking
/// the MR; a live conflict bead absorbs the feedback instead.
pub fn feedback_detected(cx: &mut Ctx<'_>, f: &FeedbackDetected) -> Result<()> {
    let Some(mr) = live_mr(cx, &f.mr_bead_id)? else { return Ok(()) };
    if beads::live_blocker_with_label(cx, &mr.bead_id, labels::PR_FEEDBACK)?.is_some() {
        return Ok(());
    }
    if let Some(conflict) = beads::live_blocker_with_label(cx, &mr.bead_id, labels::PR_CONFLICT)? {
        return beads::set_meta(cx, &conflict, "has_feedback", &json!(1));
    }
    let mut what = Vec::new();
    if f.has_unresolved_comments {
        what.push("review comments");
    }
    if f.has_failing_checks {
        what.push("failing CI");
    } else if f.has_unchecked_runs {
        what.push("unchecked CI runs");
    }
    let what = if what.is_empty() { "feedback".to_owned() } else { what.join(" and ") };
    let repo_short = f.repo.as_deref().and_then(|r| r.rsplit('/').next()).unwrap_or("repo");
    let number = f.pr_number.map_or_else(String::new, |n| n.to_string());
    let b = NewBead::new(BeadType::Issue, format!("Address {what} on PR #{number} ({repo_short})"))
        .body(Some(
            "Address the unresolved review comments first, then fix CI. Resolve each thread you address, \
             push to the existing PR branch, then call gt_done."
                .into(),
        ))
        .rig(mr.rig_id.as_deref())
        .parent(Some(&mr.bead_id))
        .label(labels::PR_FEEDBACK)
        .by(Some("system"))
        .meta("pr_feedback_for", json!(mr.bead_id))
        .meta("pr_url", json!(f.pr_url))
        .meta("branch", json!(f.branch));
    let id = beads::insert(cx, b)?;
    beads::add_dependency(cx, &mr.bead_id, &id, DepKind::Blocks)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConflictDetected {
    pub mr_bead_id: String,
    #[serde(default)]
    pub source_bead_id: Option<String>,
    #[serde(default)]
    pub pr_url: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
}

/// A PR turned dirty: one conflict bead blocking the MR (or folded into a live
/// feedback bead), or an escalation when the rig does not auto-resolve.
pub fn conflict_detected(cx: &mut Ctx<'_>, cfg: &TownConfig, c: &ConflictDetected) -> Result<()> {
    let Some(mr) = live_mr(cx, &c.mr_bead_id)? else { return Ok(()) };
    if beads::live_blocker_with_label(cx, &mr.bead_id, labels::PR_CONFLICT)?.is_some() {
        return Ok(());
    }
    let target: String = cx
        .conn
        .prepare_cached("SELECT target_branch FROM review_metadata WHERE bead_id = ?1")?
        .query_row([&mr.bead_id], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| "main".into());
    let rig = match &mr.rig_id {
        Some(r) => state::find_rig(cx.conn, r)?,
        None => None,
    };
    let settings = RigSettings::resolve(cfg, &rig.map(|r| r.config).unwrap_or_default(), 5);
    let branch = c.branch.clone().unwrap_or_default();
    if settings.auto_resolve_merge_conflicts {
        if let Some(fb) = beads::live_blocker_with_label(cx, &mr.bead_id, labels::PR_FEEDBACK)? {
            beads::set_meta(cx, &fb, "has_conflicts", &json!(1))?;
            return beads::set_meta(cx, &fb, "conflict_target_branch", &json!(target));
        }
        let b = NewBead::new(BeadType::Issue, format!("Resolve merge conflicts on PR: {branch}"))
            .body(Some(format!(
                "Fetch, rebase {branch} onto origin/{target}, resolve the conflicts, push with --force-with-lease, \
                 then call gt_done with the PR URL and branch."
            )))
            .rig(mr.rig_id.as_deref())
            .parent(Some(&mr.bead_id))
            .label(labels::PR_CONFLICT)
            .by(Some("system"))
            .meta("pr_url", json!(c.pr_url))
            .meta("branch", json!(branch))
            .meta("target_branch", json!(target))
            .meta("mr_bead_id", json!(mr.bead_id))
            .meta("source_bead_id", json!(c.source_bead_id));
        let id = beads::insert(cx, b)?;
        return beads::add_dependency(cx, &mr.bead_id, &id, DepKind::Blocks);
    }
    let mut meta = Map::new();
    for (k, v) in [
        ("pr_url", json!(c.pr_url)),
        ("branch", json!(branch)),
        ("target_branch", json!(target)),
        ("mr_bead_id", json!(mr.bead_id)),
        ("source_bead_id", json!(c.source_bead_id)),
        ("conflict", json!(true)),
    ] {
        meta.insert(k.into(), v);
    }
    let body = format!("PR {} has merge conflicts with {target}", c.pr_url.as_deref().unwrap_or("?"));
    let esc = escalations::insert(
        cx,
        escalations::NewEscalation {
            title: format!("Merge conflict detected: {branch}"),
            body: &body,
            rig: mr.rig_id.as_deref(),
            severity: Severity::High,
            category: Some("merge_conflict"),
            metadata: meta,
            created_by: Some("system"),
        },
    )?;
    triage::create(
        cx,
        TriageRequest {
            triage_type: TriageType::Escalation,
            agent_id: None,
            hooked_bead_id: None,
            title: format!("Triage: merge conflict on {branch}"),
            context: json!({"escalation_bead_id": esc, "mr_bead_id": mr.bead_id}),
            options: vec!["ESCALATE_TO_MAYOR", "RESTART", "CLOSE_BEAD", "REASSIGN_BEAD"],
            rig_id: mr.rig_id.as_deref(),
        },
    )?;
    Ok(())
}

/// The grace period of an all-green PR elapsed: flag the MR for merging.
pub fn auto_merge_ready(cx: &mut Ctx<'_>, mr_id: &str) -> Result<()> {
    let Some(mr) = live_mr(cx, mr_id)? else { return Ok(()) };
    cx.conn
        .prepare_cached("UPDATE review_metadata SET auto_merge_pending = 1 WHERE bead_id = ?1")?
        .execute([&mr.bead_id])?;
    beads::touch(cx, &mr.bead_id)
}

/// Why no refinery may work this MR, if none may: a babysat PR is only
/// polled (bug d), and a rig that does not review code sends its MRs past the
/// refinery (bug c), except the town's own landing MRs and review-and-merge
/// convoy members (§10.2 #1). The same cases as Rule 5's filter.
pub fn refinery_refused(cx: &Ctx<'_>, mr: &beads::Bead) -> Result<Option<String>> {
    let (babysit, mode): (bool, Option<String>) = cx
        .conn
        .prepare_cached(
            "SELECT r.babysit, c.merge_mode FROM review_metadata r \
             LEFT JOIN convoy_metadata c ON c.bead_id = r.convoy_id WHERE r.bead_id = ?1",
        )?
        .query_row([&mr.bead_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default();
    if babysit {
        return Ok(Some(format!("MR {} is a babysat PR: it is polled, never reviewed", mr.bead_id)));
    }
    let exempt = mr.created_by.as_deref() == Some("system") || mode.as_deref() == Some("review-and-merge");
    if !exempt && !super::pr::settings_for(cx, mr.rig_id.as_deref())?.code_review {
        let rig = mr.rig_id.as_deref().unwrap_or("");
        return Ok(Some(format!("MR {} belongs to rig {rig}, which does not review code", mr.bead_id)));
    }
    Ok(None)
}

/// Whether any label in `set` marks the bead as never needing review: fix-up
/// work and triage batches. The one place this is decided (`gt_done` closes
/// such beads, `submit` refuses them), so bug (i) has one switch.
pub fn never_reviewed(set: crate::model::LabelSet) -> bool {
    (set.is_fixup_work() && !defects::on(Defect::FixBeadsReviewed)) || set.has(Label::Triage)
}
