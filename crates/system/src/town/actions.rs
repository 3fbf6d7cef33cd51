//! Actions: what the reconciler asks for. Applying one performs its state
//! change inside the tick's transaction and may return a deferred [`Effect`].

use super::agents;
use super::beads::{self, CloseCause, Failure};
use super::ctx::Ctx;
use super::effects::Effect;
use super::nudges::{self, NewNudge};
use super::review::{self, SubmitReview};
use super::scheduling;
use super::state;
use super::triage::{self, TriageRequest};
use crate::defects::{self, Defect};
use crate::error::{Result, TownError};
use crate::model::pr_url::{repo_of_git_url, PrUrl};
use crate::model::{AgentRole, AgentStatus, BeadStatus, BeadType, NudgeMode, NudgePriority, NudgeTier, TriageType};
use rusqlite::params;
use serde::Serialize;
use serde_json::{json, Value};
use std::borrow::Cow;

pub type Reason = Cow<'static, str>;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    TransitionBead {
        bead_id: String,
        from: Option<BeadStatus>,
        to: BeadStatus,
        reason: Reason,
    },
    ClearBeadAssignee {
        bead_id: String,
    },
    CreateLandingMr {
        convoy_id: String,
        rig_id: String,
        feature_branch: String,
        target_branch: String,
    },
    TransitionAgent {
        agent_id: String,
        from: AgentStatus,
        to: AgentStatus,
        reason: Reason,
    },
    ResetAgentDispatchAttempts {
        agent_id: String,
    },
    HookAgent {
        agent_id: String,
        bead_id: String,
    },
    UnhookAgent {
        agent_id: String,
        reason: Reason,
    },
    ClearAgentCheckpoint {
        agent_id: String,
    },
    DeleteAgent {
        agent_id: String,
        reason: Reason,
    },
    UpdateConvoyProgress {
        convoy_id: String,
        closed_beads: u32,
    },
    SetConvoyReadyToLand {
        convoy_id: String,
    },
    CloseConvoy {
        convoy_id: String,
    },
    FailConvoy {
        convoy_id: String,
        reason: Reason,
    },
    /// `agent_id: None` resolves the agent at apply time (reuse or create, then hook).
    DispatchAgent {
        agent_id: Option<String>,
        bead_id: String,
        rig_id: String,
    },
    StopAgent {
        agent_id: String,
        reason: Reason,
    },
    PollPr {
        bead_id: String,
        pr_url: String,
    },
    MergePr {
        bead_id: String,
        pr_url: String,
    },
    SendNudge {
        agent_id: String,
        message: Reason,
        tier: NudgeTier,
    },
    CreateTriageRequest {
        agent_id: String,
        triage_type: TriageType,
        reason: Reason,
    },
    NotifyMayor {
        message: String,
    },
    EmitEvent {
        event_name: &'static str,
        data: Value,
    },
}

impl Action {
    pub const fn kind(&self) -> &'static str {
        match self {
            Action::TransitionBead { .. } => "transition_bead",
            Action::ClearBeadAssignee { .. } => "clear_bead_assignee",
            Action::CreateLandingMr { .. } => "create_landing_mr",
            Action::TransitionAgent { .. } => "transition_agent",
            Action::ResetAgentDispatchAttempts { .. } => "reset_agent_dispatch_attempts",
            Action::HookAgent { .. } => "hook_agent",
            Action::UnhookAgent { .. } => "unhook_agent",
            Action::ClearAgentCheckpoint { .. } => "clear_agent_checkpoint",
            Action::DeleteAgent { .. } => "delete_agent",
            Action::UpdateConvoyProgress { .. } => "update_convoy_progress",
            Action::SetConvoyReadyToLand { .. } => "set_convoy_ready_to_land",
            Action::CloseConvoy { .. } => "close_convoy",
            Action::FailConvoy { .. } => "fail_convoy",
            Action::DispatchAgent { .. } => "dispatch_agent",
            Action::StopAgent { .. } => "stop_agent",
            Action::PollPr { .. } => "poll_pr",
            Action::MergePr { .. } => "merge_pr",
            Action::SendNudge { .. } => "send_nudge",
            Action::CreateTriageRequest { .. } => "create_triage_request",
            Action::NotifyMayor { .. } => "notify_mayor",
            Action::EmitEvent { .. } => "emit_event",
        }
    }

    // Constructors keep the rule code short.
    pub fn transition_bead(bead: &str, from: Option<BeadStatus>, to: BeadStatus, reason: impl Into<Reason>) -> Self {
        Action::TransitionBead { bead_id: bead.to_owned(), from, to, reason: reason.into() }
    }
    pub fn transition_agent(agent: &str, from: AgentStatus, to: AgentStatus, reason: impl Into<Reason>) -> Self {
        Action::TransitionAgent { agent_id: agent.to_owned(), from, to, reason: reason.into() }
    }
    pub fn unhook(agent: &str, reason: impl Into<Reason>) -> Self {
        Action::UnhookAgent { agent_id: agent.to_owned(), reason: reason.into() }
    }
    pub fn dispatch(agent: Option<&str>, bead: &str, rig: &str) -> Self {
        Action::DispatchAgent { agent_id: agent.map(str::to_owned), bead_id: bead.to_owned(), rig_id: rig.to_owned() }
    }
    pub fn clear_assignee(bead: &str) -> Self {
        Action::ClearBeadAssignee { bead_id: bead.to_owned() }
    }
}

/// Apply one action. Errors are reported to the caller, which rolls back this
/// action alone and carries on with the rest.
pub fn apply(cx: &mut Ctx<'_>, town_id: &str, action: &Action) -> Result<Option<Effect>> {
    match action {
        Action::TransitionBead { bead_id, to, reason, .. } => {
            let failure = (*to == BeadStatus::Failed).then(|| Failure::new("reconciler", reason.as_ref(), "scheduler"));
            beads::update_status_because(cx, bead_id, *to, "system", failure.as_ref(), CloseCause::Reconciler)?;
            Ok(None)
        }
        Action::ClearBeadAssignee { bead_id } => {
            beads::set_assignee(cx, bead_id, None)?;
            agents::unhook_all_from(cx, bead_id, "bead assignee cleared")?;
            Ok(None)
        }
        Action::CreateLandingMr { convoy_id, rig_id, feature_branch, target_branch } => {
            cx.conn
                .prepare_cached(
                    "UPDATE convoy_metadata SET landing_mr_attempts = landing_mr_attempts + 1, \
                     last_landing_mr_attempt_at = ?2 WHERE bead_id = ?1",
                )?
                .execute(params![convoy_id, cx.now.0])?;
            beads::touch(cx, convoy_id)?;
            review::submit(
                cx,
                SubmitReview {
                    agent_id: "system",
                    source_bead_id: convoy_id,
                    rig_id,
                    branch: feature_branch,
                    pr_url: None,
                    summary: Some("Land the convoy's feature branch"),
                    default_branch: Some(target_branch),
                },
            )?;
            Ok(None)
        }
        Action::TransitionAgent { agent_id, to, .. } => {
            agents::set_status(cx, agent_id, *to)?;
            Ok(None)
        }
        Action::ResetAgentDispatchAttempts { agent_id } => {
            agents::reset_dispatch_attempts(cx, agent_id)?;
            Ok(None)
        }
        Action::HookAgent { agent_id, bead_id } => {
            agents::hook(cx, agent_id, bead_id)?;
            Ok(None)
        }
        Action::UnhookAgent { agent_id, reason } => {
            agents::unhook(cx, agent_id, reason)?;
            Ok(None)
        }
        Action::ClearAgentCheckpoint { agent_id } => {
            agents::clear_checkpoint(cx, agent_id)?;
            Ok(None)
        }
        Action::DeleteAgent { agent_id, .. } => {
            // GC judged the snapshot; an earlier action of this pass may have
            // hooked the agent since (a dispatch resolves its agent only now).
            let agent = agents::get(cx, agent_id)?;
            let put_to_work =
                agent.current_hook_bead_id.is_some() || !matches!(agent.status, AgentStatus::Idle | AgentStatus::Dead);
            if put_to_work && !defects::on(Defect::GcDeletesAgentPutToWork) {
                return Ok(None);
            }
            agents::delete(cx, agent_id)?;
            Ok(None)
        }
        Action::UpdateConvoyProgress { convoy_id, closed_beads } => {
            cx.conn
                .prepare_cached("UPDATE convoy_metadata SET closed_beads = ?2 WHERE bead_id = ?1")?
                .execute(params![convoy_id, closed_beads])?;
            Ok(None)
        }
        Action::SetConvoyReadyToLand { convoy_id } => {
            cx.conn
                .prepare_cached("UPDATE convoy_metadata SET ready_to_land = 1 WHERE bead_id = ?1")?
                .execute([convoy_id])?;
            beads::touch(cx, convoy_id)?;
            Ok(None)
        }
        Action::CloseConvoy { convoy_id } => {
            beads::update_status_because(cx, convoy_id, BeadStatus::Closed, "system", None, CloseCause::Reconciler)?;
            cx.conn
                .prepare_cached("UPDATE convoy_metadata SET landed_at = COALESCE(landed_at, ?2) WHERE bead_id = ?1")?
                .execute(params![convoy_id, cx.now.0])?;
            Ok(None)
        }
        Action::FailConvoy { convoy_id, reason } => {
            let f = Failure::new("landing_mr_exhausted", reason.as_ref(), "scheduler");
            beads::update_status(cx, convoy_id, BeadStatus::Failed, "system", Some(&f))?;
            beads::set_meta(cx, convoy_id, "failureReason", &json!("landing_mr_exhausted"))?;
            beads::set_meta(cx, convoy_id, "failureMessage", &json!(reason))?;
            Ok(None)
        }
        Action::DispatchAgent { agent_id, bead_id, rig_id } => {
            apply_dispatch(cx, town_id, agent_id.as_deref(), bead_id, rig_id)
        }
        Action::StopAgent { agent_id, reason } => {
            Ok(Some(Effect::StopAgent { agent_id: agent_id.clone(), reason: reason.to_string() }))
        }
        Action::PollPr { bead_id, pr_url } => {
            if !defects::on(Defect::PollKeepsUpdatedAt) {
                beads::touch(cx, bead_id)?;
            }
            cx.conn
                .prepare_cached("UPDATE review_metadata SET last_poll_at = ?2 WHERE bead_id = ?1")?
                .execute(params![bead_id, cx.now.0])?;
            let rig = beads::get(cx, bead_id)?.rig_id;
            let wants = super::pr::poll_wants(&super::pr::settings_for(cx, rig.as_deref())?);
            Ok(Some(Effect::PollPr { mr_bead_id: bead_id.clone(), pr_url: pr_url.clone(), wants }))
        }
        Action::MergePr { bead_id, pr_url } => apply_merge(cx, bead_id, pr_url),
        Action::SendNudge { agent_id, message, tier } => {
            let (_, effect) = nudges::queue(
                cx,
                NewNudge {
                    agent_id,
                    message,
                    mode: NudgeMode::Immediate,
                    priority: NudgePriority::Urgent,
                    source: tier.source(),
                    ttl_seconds: None,
                    tier: Some(*tier),
                },
            )?;
            Ok(effect)
        }
        Action::CreateTriageRequest { agent_id, triage_type, reason } => {
            triage::create(
                cx,
                TriageRequest {
                    triage_type: *triage_type,
                    agent_id: Some(agent_id),
                    hooked_bead_id: None,
                    title: format!("Triage: {reason}"),
                    context: json!({ "reason": reason }),
                    options: vec!["RESTART", "CLOSE", "ESCALATE"],
                    rig_id: None,
                },
            )?;
            Ok(None)
        }
        Action::NotifyMayor { message } => {
            Ok(Some(Effect::Analytics { name: "reconciler.notify_mayor".into(), data: json!({ "message": message }) }))
        }
        Action::EmitEvent { event_name, data } => {
            let mut data = data.clone();
            if let Value::Object(m) = &mut data {
                m.insert("townId".into(), json!(town_id));
            }
            Ok(Some(Effect::Analytics { name: (*event_name).to_owned(), data }))
        }
    }
}

/// Dispatch: with no agent, reuse or create one of the right role and hook it
/// (babysat PRs never get a refinery). With a named agent, dispatch only if it
/// is still hooked to this bead: an earlier action of the same pass may have
/// unhooked it, and dispatching it anyway would leave a working agent without
/// a hook.
fn apply_dispatch(
    cx: &mut Ctx<'_>,
    town_id: &str,
    agent: Option<&str>,
    bead_id: &str,
    rig_id: &str,
) -> Result<Option<Effect>> {
    let bead = beads::get(cx, bead_id)?;
    let agent_id = match agent {
        Some(a) => {
            let current = agents::get(cx, a)?;
            if current.current_hook_bead_id.as_deref() != Some(bead_id) && !defects::on(Defect::DispatchUnhookedAgent) {
                return Err(TownError::invalid("dispatch", format!("agent {a} is no longer hooked to {bead_id}")));
            }
            a.to_owned()
        }
        None => {
            if bead.bead_type == BeadType::MergeRequest {
                let babysit: bool = cx
                    .conn
                    .prepare_cached("SELECT babysit FROM review_metadata WHERE bead_id = ?1")?
                    .query_row([bead_id], |r| r.get(0))
                    .unwrap_or(false);
                if babysit {
                    return Ok(None);
                }
            }
            let role = if bead.bead_type == BeadType::MergeRequest { AgentRole::Refinery } else { AgentRole::Polecat };
            let rig = bead.rig_id.as_deref().or(Some(rig_id)).filter(|r| !r.is_empty());
            let a = agents::get_or_create(cx, role, rig, town_id)?;
            agents::hook(cx, &a, bead_id)?;
            a
        }
    };
    Ok(Some(scheduling::begin_dispatch(cx, &agent_id, bead_id)?))
}

/// Merge guard: never merge a PR of a repository other than the rig's.
fn apply_merge(cx: &mut Ctx<'_>, mr: &str, pr_url: &str) -> Result<Option<Effect>> {
    let bead = beads::get(cx, mr)?;
    let rig = match &bead.rig_id {
        Some(r) => state::find_rig(cx.conn, r)?,
        None => None,
    };
    let pr = PrUrl::parse(pr_url).ok();
    if let (Some(rig), Some(pr)) = (&rig, &pr) {
        if pr.in_repo_of(&rig.git_url) == Some(false) {
            let (pr_repo, rig_repo) = (&pr.repo, repo_of_git_url(&rig.git_url));
            cx.conn
                .prepare_cached("UPDATE review_metadata SET auto_merge_pending = 0 WHERE bead_id = ?1")?
                .execute([mr])?;
            beads::touch(cx, mr)?;
            return Ok(Some(Effect::Analytics {
                name: "merge.foreign_repo_refused".into(),
                data: json!({ "mr": mr, "pr_repo": pr_repo, "rig_repo": rig_repo }),
            }));
        }
    }
    Ok(Some(Effect::MergePr { mr_bead_id: mr.to_owned(), pr_url: pr_url.to_owned() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::town::tests::town;
    use crate::town::{SlingBead, Town};

    fn apply_one(town: &mut Town, action: &Action) -> Result<Option<Effect>> {
        town.tx(|cx| apply(cx, "town-1", action))
    }

    /// A slung issue with its polecat, and an MR for it carrying `pr_url`.
    fn issue_and_mr(town: &mut Town, rig: &str, pr_url: &str) -> (String, String) {
        let slung =
            town.sling_bead(SlingBead { rig_id: rig.into(), title: "x".into(), ..Default::default() }).unwrap().0;
        let agent = slung.agent_id.unwrap();
        let mr = town.submit_to_review_queue(&agent, &slung.bead_id, "gt/x", Some(pr_url), None).unwrap();
        (slung.bead_id, mr)
    }

    fn auto_merge_pending(town: &Town, mr: &str) -> bool {
        town.conn()
            .query_row("SELECT auto_merge_pending FROM review_metadata WHERE bead_id = ?1", [mr], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn merge_of_the_rigs_own_pr_becomes_a_merge_effect_whatever_the_case() {
        let (mut town, _clock, rig) = town();
        for url in ["https://github.com/acme/app/pull/7", "https://github.com/ACME/App/pull/8"] {
            let (_, mr) = issue_and_mr(&mut town, &rig, url);
            let out = apply_one(&mut town, &Action::MergePr { bead_id: mr.clone(), pr_url: url.into() }).unwrap();
            assert_eq!(out, Some(Effect::MergePr { mr_bead_id: mr, pr_url: url.into() }));
        }
    }

    #[test]
    fn merge_of_a_foreign_repos_pr_is_refused_and_stops_auto_merge() {
        let (mut town, _clock, rig) = town();
        let url = "https://github.com/evil/app/pull/1";
        let (_, mr) = issue_and_mr(&mut town, &rig, url);
        town.conn().execute("UPDATE review_metadata SET auto_merge_pending = 1 WHERE bead_id = ?1", [&mr]).unwrap();
        let out = apply_one(&mut town, &Action::MergePr { bead_id: mr.clone(), pr_url: url.into() }).unwrap();
        assert!(
            matches!(&out, Some(Effect::Analytics { name, .. }) if name == "merge.foreign_repo_refused"),
            "{out:?}"
        );
        assert!(!auto_merge_pending(&town, &mr), "no merge stays pending for a foreign PR");
    }

    #[test]
    fn a_bead_failed_by_the_reconciler_records_why_and_a_closed_one_does_not() {
        let (mut town, _clock, rig) = town();
        for to in [BeadStatus::Failed, BeadStatus::Closed] {
            let b = town.sling_bead(SlingBead { rig_id: rig.clone(), title: "x".into(), ..Default::default() });
            let b = b.unwrap().0.bead_id;
            let a = Action::TransitionBead { bead_id: b.clone(), from: None, to, reason: "no agent".into() };
            assert_eq!(apply_one(&mut town, &a).unwrap(), None);
            assert_eq!(town.bead(&b).unwrap().status, to);
            let meta: String = town
                .conn()
                .query_row(
                    "SELECT metadata FROM bead_events WHERE bead_id = ?1 AND event_type = 'status_changed' \
                     AND new_value = ?2",
                    rusqlite::params![b, to],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(meta.contains("failure_reason"), to == BeadStatus::Failed, "{to}: {meta}");
        }
    }

    /// GC plans from the snapshot; a dispatch earlier in the same pass may
    /// have reused the agent since (an unnamed dispatch picks the oldest idle
    /// polecat only when it applies). Only a still-idle, unhooked agent goes.
    #[test]
    fn gc_deletes_an_agent_only_if_it_is_still_idle_and_unhooked() {
        let (mut town, _clock, rig) = town();
        let slung = town.sling_bead(SlingBead { rig_id: rig.clone(), title: "x".into(), ..Default::default() });
        let (bead, agent) = slung.map(|(s, _)| (s.bead_id, s.agent_id.unwrap())).unwrap();
        town.unhook_bead(&agent).unwrap();
        let gc = Action::DeleteAgent { agent_id: agent.clone(), reason: "GC: idle > 24h".into() };
        let any = Action::dispatch(None, &bead, &rig);
        let Some(Effect::StartAgent(s)) = apply_one(&mut town, &any).unwrap() else { panic!("no start") };
        assert_eq!(s.agent_id, agent, "the dispatch reused the idle polecat");
        assert_eq!(apply_one(&mut town, &gc).unwrap(), None);
        let kept = town.agent(&agent).unwrap();
        assert_eq!(kept.current_hook_bead_id.as_deref(), Some(bead.as_str()), "the agent put to work stays");

        // Either sign of work is enough: a hook on an idle agent, or a working
        // status without a hook.
        let set_status = |town: &mut Town, status: &str| {
            town.conn()
                .execute("UPDATE agent_metadata SET status = ?2 WHERE bead_id = ?1", [agent.as_str(), status])
                .unwrap()
        };
        set_status(&mut town, "idle");
        apply_one(&mut town, &gc).unwrap();
        assert!(town.agent(&agent).is_ok(), "an idle agent with a hook stays");
        town.unhook_bead(&agent).unwrap();
        set_status(&mut town, "working");
        apply_one(&mut town, &gc).unwrap();
        assert!(town.agent(&agent).is_ok(), "a working agent without a hook stays");

        set_status(&mut town, "idle");
        apply_one(&mut town, &gc).unwrap();
        assert!(town.agent(&agent).is_err(), "an idle, unhooked agent is deleted");
    }

    #[test]
    fn dispatch_needs_the_named_agent_still_hooked_and_otherwise_hooks_one() {
        let (mut town, _clock, rig) = town();
        let slung = town.sling_bead(SlingBead { rig_id: rig.clone(), title: "x".into(), ..Default::default() });
        let (bead, agent) = slung.map(|(s, _)| (s.bead_id, s.agent_id.unwrap())).unwrap();
        let named = Action::dispatch(Some(&agent), &bead, &rig);
        assert!(matches!(apply_one(&mut town, &named).unwrap(), Some(Effect::StartAgent(s)) if s.agent_id == agent));
        town.conn()
            .execute("UPDATE agent_metadata SET current_hook_bead_id = NULL WHERE bead_id = ?1", [&agent])
            .unwrap();
        assert!(apply_one(&mut town, &named).is_err(), "an unhooked agent is not dispatched");
        let any = Action::dispatch(None, &bead, &rig);
        let Some(Effect::StartAgent(s)) = apply_one(&mut town, &any).unwrap() else { panic!("no start") };
        let hooked = town.agents().unwrap().into_iter().find(|a| a.agent_id == s.agent_id).unwrap();
        assert_eq!((hooked.role, hooked.current_hook_bead_id.as_deref()), (AgentRole::Polecat, Some(bead.as_str())));
    }

    #[test]
    fn a_babysat_mr_gets_no_refinery_and_another_mr_does() {
        let (mut town, _clock, rig) = town();
        for babysit in [true, false] {
            let (_, mr) = issue_and_mr(&mut town, &rig, "https://github.com/acme/app/pull/3");
            town.conn()
                .execute("UPDATE review_metadata SET babysit = ?2 WHERE bead_id = ?1", rusqlite::params![mr, babysit])
                .unwrap();
            let out = apply_one(&mut town, &Action::dispatch(None, &mr, &rig)).unwrap();
            match out {
                None => assert!(babysit, "an MR that is not babysat was not dispatched"),
                Some(Effect::StartAgent(s)) => {
                    assert!(!babysit, "a babysat MR got an agent");
                    assert_eq!(s.role, AgentRole::Refinery);
                }
                Some(e) => panic!("{e:?}"),
            }
        }
    }
}
