//! Dispatch: the synchronous half of starting an agent on a bead (status,
//! counters, activity reset) and the start request handed to the container.

use super::agents;
use super::beads;
use super::convoys;
use super::ctx::{short, Ctx};
use super::effects::{Effect, StartAgent};
use super::state;
use crate::defects::{self, Defect};
use crate::error::Result;
use crate::model::{AgentRole, BeadStatus, BeadType, MergeMode};
use rusqlite::{params, OptionalExtension};

/// Mark the dispatch in state and build the start request. Counters go up on
/// the agent and the bead; the agent's activity watermark is reset so GUPP
/// never judges a new session by the last one's activity (bug g).
pub fn begin_dispatch(cx: &mut Ctx<'_>, agent_id: &str, bead_id: &str) -> Result<Effect> {
    let bead = beads::get(cx, bead_id)?;
    let agent = agents::get(cx, agent_id)?;
    if bead.status == BeadStatus::Open || bead.status == BeadStatus::InReview {
        beads::update_status(cx, bead_id, BeadStatus::InProgress, agent_id, None)?;
    }
    let sql = if defects::on(Defect::DispatchKeepsEventWatermark) {
        "UPDATE agent_metadata SET status = 'working', stalled_at = NULL, dispatch_attempts = dispatch_attempts + 1, \
         last_activity_at = ?2, last_dispatched_at = ?2, active_tools = '[]' WHERE bead_id = ?1"
    } else {
        "UPDATE agent_metadata SET status = 'working', stalled_at = NULL, dispatch_attempts = dispatch_attempts + 1, \
         last_activity_at = ?2, last_dispatched_at = ?2, last_event_at = NULL, last_event_type = NULL, \
         active_tools = '[]' WHERE bead_id = ?1"
    };
    cx.conn.prepare_cached(sql)?.execute(params![agent_id, cx.now.0])?;
    cx.conn
        .prepare_cached(
            "UPDATE beads SET dispatch_attempts = dispatch_attempts + 1, last_dispatch_attempt_at = ?2 WHERE bead_id = ?1",
        )?
        .execute(params![bead_id, cx.now.0])?;
    let rig_id = bead.rig_id.clone().or(agent.rig_id.clone()).unwrap_or_default();
    let default_branch = state::default_branch(cx.conn, &rig_id)?;
    let mut prompt = bead.title.clone();
    if let Some(body) = &bead.body {
        prompt.push_str("\n\n");
        prompt.push_str(body);
    }
    if let Some(cp) = &agent.checkpoint {
        prompt.push_str("\n\nResume from checkpoint: ");
        prompt.push_str(cp);
    }
    let mut start = StartAgent {
        agent_id: agent_id.to_owned(),
        bead_id: bead_id.to_owned(),
        rig_id,
        role: agent.role,
        name: agent.name.clone(),
        identity: agent.identity.clone(),
        prompt,
        branch: None,
        target_branch: Some(default_branch),
        start_point: None,
        pr_url: None,
    };
    if bead.bead_type == BeadType::MergeRequest {
        let row: Option<(String, String, Option<String>)> = cx
            .conn
            .prepare_cached("SELECT branch, target_branch, pr_url FROM review_metadata WHERE bead_id = ?1")?
            .query_row([bead_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((branch, target, pr_url)) = row {
            start.branch = Some(branch);
            start.target_branch = Some(target);
            start.pr_url = pr_url;
        }
    } else if let Some(existing) = bead.meta_str("branch") {
        // Fix-up work (rework, feedback, conflicts) goes onto the existing branch.
        start.branch = Some(existing.to_owned());
        start.target_branch = bead.meta_str("target_branch").map(str::to_owned).or(start.target_branch);
    } else {
        let slug = agent.name.to_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), "-");
        let convoy = convoys::convoy_of(cx, bead_id)?;
        let convoy_meta = match &convoy {
            Some(c) => convoys::meta(cx, c)?,
            None => None,
        };
        match convoy_meta.and_then(|m| m.feature_branch.map(|fb| (fb, m.merge_mode))) {
            Some((fb, mode)) => {
                let base = fb.trim_end_matches("/head");
                start.branch = Some(format!("{base}/gt/{slug}/{}", short(bead_id)));
                start.start_point = Some(format!("origin/{fb}"));
                if mode == MergeMode::ReviewThenLand {
                    start.target_branch = Some(fb);
                }
            }
            None => start.branch = Some(format!("gt/{slug}/{}", short(bead_id))),
        }
    }
    Ok(Effect::StartAgent(start))
}

/// The container answered a start. A started non-refinery agent's counter is
/// reset (refineries keep theirs, #1342). A failed start leaves the agent
/// `working`: a timeout can hide a real start, and the heartbeat rules sort it out.
pub fn on_start_result(cx: &Ctx<'_>, agent_id: &str, started: bool) -> Result<()> {
    if !started {
        return Ok(());
    }
    if let Some(a) = agents::find(cx, agent_id)? {
        if a.role != AgentRole::Refinery {
            cx.conn
                .prepare_cached("UPDATE agent_metadata SET dispatch_attempts = 0 WHERE bead_id = ?1")?
                .execute([agent_id])?;
        }
    }
    Ok(())
}
