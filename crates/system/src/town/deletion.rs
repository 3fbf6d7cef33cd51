//! Deleting a bead on request (upstream's `deleteBead`). The bead goes with
//! its own rows (audit log, edges, metadata, the town events that name it:
//! `beads::delete`); what it meant to the beads and agents around it is
//! settled here, in the same transaction:
//!
//! * agents hooked to it are released (as when a bead closes), so no agent
//!   stays hooked to nothing; a session still running reports on a bead that
//!   is gone, and the drain marks that report inapplicable;
//! * an issue's live reviews fail ("source deleted"): nothing is left to
//!   merge their PRs for;
//! * a review's source that waited on it alone goes back to `open`, as after
//!   a failed review;
//! * a convoy loses the member (as `convoy_remove_bead`), and one left with
//!   no member fails: it has nothing left to land.
//!
//! Agents and convoys are not deleted this way: agent GC removes agents (and
//! re-queues their work), and a convoy is closed instead.

use super::agents;
use super::beads::{self, DepKind, Failure};
use super::convoys;
use super::ctx::Ctx;
use super::review;
use super::state;
use crate::error::{Result, TownError};
use crate::model::{BeadStatus, BeadType};
use serde::Serialize;

/// What a deletion did besides removing the bead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeletedBead {
    pub bead_id: String,
    /// Agents that were hooked to the bead (or to a review it failed), released.
    pub unhooked_agents: Vec<String>,
    /// Live reviews of a deleted issue, now failed.
    pub failed_reviews: Vec<String>,
    /// The source of a deleted review, back to `open` because nothing else reviews it.
    pub reopened: Vec<String>,
    /// Convoys the bead was a member of.
    pub convoys: Vec<String>,
    /// Of those, convoys left without members, now failed.
    pub failed_convoys: Vec<String>,
}

pub fn delete_bead(cx: &mut Ctx<'_>, id: &str) -> Result<DeletedBead> {
    let bead = beads::get(cx, id)?;
    let refuse = |why: &str| Err(TownError::invalid("delete", format!("bead {id} is {why}")));
    match bead.bead_type {
        BeadType::Agent => return refuse("an agent: agent GC removes agents and re-queues their work"),
        BeadType::Convoy => return refuse("a convoy: close it instead (its members stay)"),
        _ => {}
    }
    let mut out = DeletedBead { bead_id: id.to_owned(), ..DeletedBead::default() };
    release(cx, id, "hooked bead deleted", &mut out)?;
    if bead.bead_type == BeadType::Issue {
        fail_reviews_of(cx, id, &mut out)?;
    }
    out.convoys = convoys_of(cx, id)?;
    let source = match bead.bead_type {
        BeadType::MergeRequest => review_source(cx, &bead)?,
        _ => None,
    };
    beads::delete(cx, &[id.to_owned()])?;
    if let Some(s) = source {
        reopen_if_unreviewed(cx, &s, &mut out)?;
    }
    for c in out.convoys.clone() {
        leave_convoy(cx, &c, &mut out)?;
    }
    if !out.reopened.is_empty() || !out.convoys.is_empty() {
        // Work for the reconciler: a source to dispatch, a convoy to land.
        state::escalate_to_active(cx.conn, cx.now)?;
    }
    Ok(out)
}

/// Release every agent hooked to `bead`.
fn release(cx: &mut Ctx<'_>, bead: &str, reason: &str, out: &mut DeletedBead) -> Result<()> {
    for a in agents::hooked_to(cx, bead)? {
        agents::unhook(cx, &a.agent_id, reason)?;
        out.unhooked_agents.push(a.agent_id);
    }
    Ok(())
}

/// Fail the live reviews of an issue that is being deleted.
fn fail_reviews_of(cx: &mut Ctx<'_>, issue: &str, out: &mut DeletedBead) -> Result<()> {
    let failure = Failure::new("source_deleted", format!("source bead {issue} was deleted"), "user");
    for mr in beads::dependents_of(cx, issue, DepKind::Tracks)? {
        let Some(m) = beads::find(cx, &mr)? else { continue };
        if m.bead_type != BeadType::MergeRequest || !m.status.is_live() {
            continue;
        }
        release(cx, &mr, "review's source deleted", out)?;
        beads::update_status(cx, &mr, BeadStatus::Failed, "user", Some(&failure))?;
        out.failed_reviews.push(mr);
    }
    Ok(())
}

/// The convoys `bead` is a member of.
fn convoys_of(cx: &Ctx<'_>, bead: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for t in beads::dependencies_of(cx, bead, DepKind::Tracks)? {
        if convoys::meta(cx, &t)?.is_some() {
            out.push(t);
        }
    }
    Ok(out)
}

/// The issue a review reviews (a landing MR's convoy is not one).
fn review_source(cx: &Ctx<'_>, mr: &beads::Bead) -> Result<Option<String>> {
    let named = mr.meta_str("source_bead_id").map(str::to_owned);
    let tracked = beads::dependencies_of(cx, &mr.bead_id, DepKind::Tracks)?;
    let Some(source) = named.or_else(|| tracked.into_iter().next()) else { return Ok(None) };
    Ok(beads::find(cx, &source)?.filter(|b| b.bead_type == BeadType::Issue).map(|b| b.bead_id))
}

/// A source in review with no live review left goes back to the queue, as
/// after a failed review; left `in_review`, only Rule 4 would notice, 30 min
/// later.
fn reopen_if_unreviewed(cx: &mut Ctx<'_>, source: &str, out: &mut DeletedBead) -> Result<()> {
    if beads::status_of(cx, source)? != Some(BeadStatus::InReview) || review::has_live_mr(cx, source)? {
        return Ok(());
    }
    beads::update_status(cx, source, BeadStatus::Open, "user", None)?;
    beads::set_assignee(cx, source, None)?;
    out.reopened.push(source.to_owned());
    Ok(())
}

/// The convoy lost a member: one fewer to count, progress recounted. With no
/// member left it would wait forever for members to finish: it fails. A
/// convoy that already ended only counts one fewer.
fn leave_convoy(cx: &mut Ctx<'_>, convoy: &str, out: &mut DeletedBead) -> Result<()> {
    cx.conn
        .prepare_cached("UPDATE convoy_metadata SET total_beads = MAX(total_beads - 1, 0) WHERE bead_id = ?1")?
        .execute([convoy])?;
    if !beads::status_of(cx, convoy)?.is_some_and(|s| s.is_live()) {
        return Ok(());
    }
    let members = beads::dependents_of(cx, convoy, DepKind::Tracks)?;
    let mut issues = 0;
    for m in &members {
        if beads::find(cx, m)?.is_some_and(|b| b.bead_type == BeadType::Issue) {
            issues += 1;
        }
    }
    if issues > 0 {
        return convoys::recount(cx, convoy);
    }
    let failure = Failure::new("members_deleted", "every member bead of the convoy was deleted", "user");
    if beads::update_status(cx, convoy, BeadStatus::Failed, "user", Some(&failure))? {
        out.failed_convoys.push(convoy.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::effects::RecordingRunner;
    use super::super::tests::{convoy, done, sling, tick, town};
    use super::super::Town;
    use super::*;
    use crate::model::{AgentRole, AgentStatus, EventType};
    use crate::town::reconciler::constants::dispatch_cooldown_ms;
    use serde_json::json;

    fn count(town: &Town, sql: &str, id: &str) -> i64 {
        town.conn().query_row(sql, [id], |r| r.get(0)).unwrap()
    }

    /// Rows anywhere that still name `id`.
    fn traces_of(town: &Town, id: &str) -> i64 {
        [
            "SELECT COUNT(*) FROM beads WHERE bead_id = ?1",
            "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1",
            "SELECT COUNT(*) FROM bead_dependencies WHERE bead_id = ?1 OR depends_on_bead_id = ?1",
            "SELECT COUNT(*) FROM review_metadata WHERE bead_id = ?1",
            "SELECT COUNT(*) FROM town_events WHERE bead_id = ?1 OR agent_id = ?1",
            "SELECT COUNT(*) FROM agent_metadata WHERE current_hook_bead_id = ?1",
        ]
        .iter()
        .map(|sql| count(town, sql, id))
        .sum()
    }

    fn refinery(town: &mut Town) -> crate::town::Agent {
        town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Refinery).unwrap()
    }

    /// fix-1/fix-2: the bead's own events go with it, and the report its
    /// session files afterwards is recognised as inapplicable, never retried.
    #[test]
    fn deleting_a_worked_issue_releases_its_polecat_and_its_late_report_is_inapplicable() {
        let (mut town, clock, rig) = town();
        let runner = RecordingRunner::new();
        let a = sling(&mut town, &rig, "a");
        let b = sling(&mut town, &rig, "b");
        let x = town.bead(&a).unwrap().assignee_agent_bead_id.unwrap();
        let y = town.bead(&b).unwrap().assignee_agent_bead_id.unwrap();
        let pending = town.insert_event(EventType::BeadCancelled, None, Some(&a), json!({})).unwrap();
        let b_rows = count(&town, "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1", &b);

        let d = town.delete_bead(&a).unwrap();
        assert_eq!(d, DeletedBead { bead_id: a.clone(), unhooked_agents: vec![x.clone()], ..DeletedBead::default() });
        assert!(town.bead(&a).unwrap_err().is_not_found());
        assert_eq!(traces_of(&town, &a), 0, "its rows and its pending event {pending} are gone");
        let agent = town.agent(&x).unwrap();
        assert_eq!((agent.status, agent.current_hook_bead_id), (AgentStatus::Idle, None));
        // Nothing else is touched.
        assert_eq!(town.bead(&b).unwrap().status, BeadStatus::InProgress);
        assert_eq!(town.agent(&y).unwrap().current_hook_bead_id.as_deref(), Some(b.as_str()));
        assert_eq!(count(&town, "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1", &b), b_rows);

        // The session kept working and reports the bead it was given.
        let late = town.agent_done(&x, done("gt/toast/a", None, Some(&a))).unwrap();
        clock.advance_ms(5_000);
        let r = tick(&mut town, &runner);
        let inapplicable: Vec<&str> = r.events.inapplicable.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(inapplicable, [late.as_str()], "{:?}", r.events);
        assert!(r.events.inapplicable[0].1.contains(&a), "{:?}", r.events.inapplicable);
        assert!(r.events.retried.is_empty());
        assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
        assert_eq!(town.pending_event_count().unwrap(), 0);
        assert!(town.beads_of(BeadType::MergeRequest, None).unwrap().is_empty(), "no review of deleted work");
        clock.advance_ms(5_000);
        let r = tick(&mut town, &runner);
        assert!(r.events.inapplicable.is_empty() && r.events.retried.is_empty(), "{:?}", r.events);
    }

    #[test]
    fn deleting_an_issue_in_review_fails_its_live_review_and_frees_the_refinery() {
        let (mut town, clock, rig) = town();
        let runner = RecordingRunner::new();
        let a = sling(&mut town, &rig, "a");
        let x = town.bead(&a).unwrap().assignee_agent_bead_id.unwrap();
        let pr = "https://github.com/acme/app/pull/3";
        town.agent_done(&x, done("gt/toast/a", Some(pr), Some(&a))).unwrap();
        clock.advance_ms(5_000);
        tick(&mut town, &runner);
        let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0);
        let r = refinery(&mut town);
        assert_eq!(r.current_hook_bead_id.as_deref(), Some(mr.bead_id.as_str()));

        let d = town.delete_bead(&a).unwrap();
        assert_eq!(d.failed_reviews, [mr.bead_id.as_str()]);
        assert_eq!(d.unhooked_agents, [r.agent_id.as_str()]);
        let failed = town.bead(&mr.bead_id).unwrap();
        assert_eq!(failed.status, BeadStatus::Failed);
        let reason: String = town
            .conn()
            .query_row(
                "SELECT json_extract(metadata, '$.failure_reason.code') FROM bead_events \
                 WHERE bead_id = ?1 AND event_type = 'status_changed' AND new_value = 'failed'",
                [&mr.bead_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(reason, "source_deleted");
        let kept: Option<String> = town
            .conn()
            .query_row("SELECT pr_url FROM review_metadata WHERE bead_id = ?1", [&mr.bead_id], |r| r.get(0))
            .unwrap();
        assert_eq!(kept.as_deref(), Some(pr), "the failed review keeps its PR");
        assert_eq!(refinery(&mut town).current_hook_bead_id, None);
        clock.advance_ms(5_000);
        let r = tick(&mut town, &runner);
        assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
        assert!(!r.actions.iter().any(|a| matches!(a, crate::town::actions::Action::PollPr { .. })));
    }

    #[test]
    fn deleting_a_review_sends_its_source_back_to_the_queue() {
        let (mut town, clock, rig) = town();
        let runner = RecordingRunner::new();
        let a = sling(&mut town, &rig, "a");
        let x = town.bead(&a).unwrap().assignee_agent_bead_id.unwrap();
        town.agent_done(&x, done("gt/toast/a", None, Some(&a))).unwrap();
        clock.advance_ms(5_000);
        tick(&mut town, &runner);
        assert_eq!(town.bead(&a).unwrap().status, BeadStatus::InReview);
        let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0).bead_id;
        let r = refinery(&mut town).agent_id;

        let d = town.delete_bead(&mr).unwrap();
        assert_eq!((d.reopened, d.unhooked_agents), (vec![a.clone()], vec![r]));
        assert_eq!(traces_of(&town, &mr), 0);
        let source = town.bead(&a).unwrap();
        assert_eq!((source.status, source.assignee_agent_bead_id), (BeadStatus::Open, None));
        clock.advance_ms(dispatch_cooldown_ms(source.dispatch_attempts));
        let r = tick(&mut town, &runner);
        assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
        assert_eq!(town.bead(&a).unwrap().status, BeadStatus::InProgress, "dispatched again after the cooldown");
    }

    #[test]
    fn a_convoy_loses_deleted_members_and_fails_without_any() {
        let (mut town, _clock, rig) = town();
        // One member closed, the other deleted: the rest is done, ready to land.
        let c = convoy(&mut town, &rig, 2);
        town.close_bead(&c.bead_ids[0], "user").unwrap();
        let d = town.delete_bead(&c.bead_ids[1]).unwrap();
        assert_eq!((d.convoys, d.failed_convoys), (vec![c.convoy_id.clone()], vec![]));
        let m = town.convoy_meta(&c.convoy_id).unwrap();
        assert_eq!((m.total_beads, m.closed_beads, m.ready_to_land), (1, 1, true));
        // Every member deleted: nothing is left to land.
        let c = convoy(&mut town, &rig, 2);
        town.delete_bead(&c.bead_ids[0]).unwrap();
        assert_eq!(town.bead(&c.convoy_id).unwrap().status, BeadStatus::Open);
        let d = town.delete_bead(&c.bead_ids[1]).unwrap();
        assert_eq!(d.failed_convoys, [c.convoy_id.as_str()]);
        assert_eq!(town.bead(&c.convoy_id).unwrap().status, BeadStatus::Failed);
        assert_eq!(town.convoy_meta(&c.convoy_id).unwrap().total_beads, 0);
    }

    #[test]
    fn agents_convoys_and_missing_beads_are_refused() {
        let (mut town, _clock, rig) = town();
        let a = sling(&mut town, &rig, "a");
        let agent = town.bead(&a).unwrap().assignee_agent_bead_id.unwrap();
        let e = town.delete_bead(&agent).unwrap_err();
        assert!(matches!(e, TownError::Invalid { .. }) && e.to_string().contains("agent GC"), "{e}");
        let c = convoy(&mut town, &rig, 1);
        let e = town.delete_bead(&c.convoy_id).unwrap_err();
        assert!(matches!(e, TownError::Invalid { .. }) && e.to_string().contains("close it instead"), "{e}");
        assert!(town.agent(&agent).is_ok() && town.bead(&c.convoy_id).is_ok(), "refusals change nothing");
        town.delete_bead(&a).unwrap();
        let e = town.delete_bead(&a).unwrap_err();
        assert!(e.is_not_found() && e.to_string().contains(&a), "{e}");
    }
}
