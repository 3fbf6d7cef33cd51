//! Invariants over the town's own state: the checks upstream runs every tick,
//! and the oracles of DESIGN.md §5 that need nothing but the town database
//! (the simulator adds the forge- and container-side ones).

use super::actions::Action;
use super::effects::Effect;
use super::reconciler::agents::IDLE_HOOK_RELEASED;
use super::reconciler::beads::AGENT_LOST;
use super::reconciler::constants::{
    AGENT_GC_RETENTION_MS, BREAKER_FAILURE_THRESHOLD, BREAKER_WINDOW_MS, DEFAULT_MAX_DISPATCH_ATTEMPTS, GUPP_WARN_MS,
    HEARTBEAT_STALE_MS, MAX_LANDING_MR_ATTEMPTS, ORPHANED_PR_REVIEW_TIMEOUT_MS, ORPHANED_SOURCE_TIMEOUT_MS,
    PR_POLL_INTERVAL_MS, STALLED_AUTO_IDLE_MS,
};
use super::reconciler::review_queue::{REVIEW_OFF_FAST_TRACK, REVIEW_OFF_NO_PR};
use super::snapshot::TownSnapshot;
use super::state;
use super::tick::TickReport;
use crate::error::Result;
use crate::model::{AgentStatus, BeadStatus, BeadType, Label, MergeMode, RigSettings, TownConfig};
use crate::time::{stale, Timestamp};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn v(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation { invariant, detail: detail.into() }
}

/// Run a query whose rows are violations, described by its first column.
fn rows(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<String>> {
    let mut st = conn.prepare_cached(sql)?;
    let r = st.query_map(params, |r| r.get::<_, String>(0))?;
    Ok(r.collect::<rusqlite::Result<_>>()?)
}

/// Upstream's per-tick checks (#7, #5, #3, #6, #4), with #3 counting only
/// MRs without a PR (upstream also counted PRs being polled) and #4 limited
/// to issues that have had time for the safety net.
pub fn upstream_checks(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (label, sql) in [
        ("[7] working agent without hook", "SELECT bead_id FROM agent_metadata WHERE status = 'working' AND current_hook_bead_id IS NULL AND role != 'mayor'"),
        ("[5] convoy in unknown state", "SELECT bead_id FROM beads WHERE type = 'convoy' AND status NOT IN ('open', 'in_progress', 'in_review', 'closed', 'failed')"),
        ("[3] several direct reviews in progress in one rig", "SELECT b.rig_id FROM beads b JOIN review_metadata r ON r.bead_id = b.bead_id WHERE b.type = 'merge_request' AND b.status = 'in_progress' AND r.pr_url IS NULL AND b.rig_id IS NOT NULL GROUP BY b.rig_id HAVING COUNT(*) > 1"),
        ("[6] several agents hooked to one bead", "SELECT current_hook_bead_id FROM agent_metadata WHERE current_hook_bead_id IS NOT NULL GROUP BY current_hook_bead_id HAVING COUNT(*) > 1"),
    ] {
        for id in rows(conn, sql, [])? {
            out.push(format!("{label}: {id}"));
        }
    }
    Ok(out)
}

/// The stateful oracle: remembers what it saw so it can check properties over
/// time (terminal states stay final, events apply once, quiet escalations).
#[derive(Debug, Default)]
pub struct Checker {
    last_check: Option<Timestamp>,
    applied_events: BTreeSet<String>,
    terminal_escalations: BTreeMap<String, (String, u32)>,
    /// (agent, bead) pairs seen idle-hooked with a stale heartbeat: since
    /// when, and how many ticks have started since.
    idle_hooks: BTreeMap<(String, String), Sighting>,
    /// Rigs seen with an MR waiting for a refinery that is free, and since when.
    idle_queues: BTreeMap<String, Timestamp>,
    /// Refineries seen working on an MR that had already ended, and since when.
    refineries_on_ended_mrs: BTreeMap<String, Timestamp>,
    /// Each agent's `last_activity_at` at the previous check: a lower bound
    /// on its heartbeat at any later moment (the column only moves forward).
    activity: BTreeMap<String, Timestamp>,
    /// Eviction reopens already judged (a check at the same instant as the
    /// previous one sees them again, with newer heartbeats).
    judged_reopens: BTreeSet<String>,
    /// Agents whose sessions the last observed tick started and whose
    /// deletion its GC planned from the snapshot.
    started: BTreeSet<String>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed a tick's report: events must apply at most once.
    pub fn observe_tick(&mut self, report: &TickReport) -> Vec<Violation> {
        for s in self.idle_hooks.values_mut() {
            s.tick_started(report.at);
        }
        let collected: BTreeSet<&str> = report
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::DeleteAgent { agent_id, .. } => Some(agent_id.as_str()),
                _ => None,
            })
            .collect();
        self.started.extend(report.effects.iter().filter_map(|e| match e {
            Effect::StartAgent(s) if collected.contains(s.agent_id.as_str()) => Some(s.agent_id.clone()),
            _ => None,
        }));
        let mut out = Vec::new();
        for id in &report.events.applied {
            if !self.applied_events.insert(id.clone()) {
                out.push(v("events_applied_once", format!("event {id} applied twice")));
            }
        }
        out
    }

    /// Check the town database at `now`.
    pub fn check(&mut self, conn: &Connection, config: &TownConfig, now: Timestamp) -> Result<Vec<Violation>> {
        // One read transaction for the lot: every check sees the same state,
        // and SQLite begins one transaction rather than one per statement.
        if conn.is_autocommit() {
            let tx = conn.unchecked_transaction()?;
            let out = self.check_all(&tx, config, now)?;
            tx.commit()?;
            return Ok(out);
        }
        self.check_all(conn, config, now)
    }

    fn check_all(&mut self, conn: &Connection, config: &TownConfig, now: Timestamp) -> Result<Vec<Violation>> {
        let mut out = Vec::new();
        let since = self.last_check.unwrap_or(Timestamp(i64::MIN));
        self.check_hooks(conn, &mut out)?;
        self.check_started_agents(conn, &mut out)?;
        self.check_idle_hooks(conn, now, &mut out)?;
        let settings = rig_settings(conn, config)?;
        self.check_review_queue_moves(conn, &settings, now, &mut out)?;
        self.check_refineries_leave_ended_mrs(conn, now, &mut out)?;
        self.check_reviews(conn, &settings, now, &mut out)?;
        self.check_convoys(conn, &mut out)?;
        self.check_transitions(conn, since, &mut out)?;
        self.check_eviction_reopens(conn, since, &mut out)?;
        self.check_events(conn, &mut out)?;
        self.check_escalations(conn, &mut out)?;
        self.check_dispatch_bounds(conn, &settings, &mut out)?;
        self.last_check = Some(now);
        Ok(out)
    }

    fn check_hooks(&self, conn: &Connection, out: &mut Vec<Violation>) -> Result<()> {
        for id in rows(conn, "SELECT current_hook_bead_id FROM agent_metadata WHERE current_hook_bead_id IS NOT NULL GROUP BY current_hook_bead_id HAVING COUNT(*) > 1", [])? {
            out.push(v("one_agent_per_hook", format!("bead {id} has several agents hooked")));
        }
        for id in rows(conn, "SELECT bead_id FROM agent_metadata WHERE status = 'working' AND current_hook_bead_id IS NULL AND role != 'mayor'", [])? {
            out.push(v("working_agent_has_hook", format!("agent {id} is working with no hook")));
        }
        // Bug (d): an adopted outside PR is polled and merged, never reviewed.
        for id in rows(conn, "SELECT a.bead_id || ' on MR ' || r.bead_id FROM agent_metadata a JOIN review_metadata r ON r.bead_id = a.current_hook_bead_id WHERE r.babysit = 1", [])? {
            out.push(v("babysat_pr_has_no_refinery", format!("agent {id}, a babysat PR")));
        }
        Ok(())
    }

    /// A tick that starts an agent's session keeps the agent: GC, which
    /// judged the snapshot, must not delete an agent an earlier action of
    /// the same pass put to work. (Between a tick's phases a user may remove
    /// the rig and its agents; that is not GC's doing.)
    fn check_started_agents(&mut self, conn: &Connection, out: &mut Vec<Violation>) -> Result<()> {
        let mut st = conn.prepare_cached("SELECT 1 FROM agent_metadata WHERE bead_id = ?1")?;
        for id in std::mem::take(&mut self.started) {
            if !st.exists([&id])? {
                out.push(v("started_agents_kept", format!("a tick started agent {id} and deleted it")));
            }
        }
        Ok(())
    }

    /// Bug (f): an idle agent whose heartbeat is stale lets go of its live
    /// bead on the next tick (A4/A5). Counted in ticks, not time: Rule 3
    /// recovers the bead within 5 min anyway, sooner than a window that
    /// allows an idle-cadence tick, so a time window would hide the defect.
    /// Two ticks that started after the sighting must have passed (one is
    /// enough for A4/A5; the second absorbs a tick that overlapped it).
    fn check_idle_hooks(&mut self, conn: &Connection, now: Timestamp, out: &mut Vec<Violation>) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT a.bead_id, a.current_hook_bead_id FROM agent_metadata a JOIN beads b ON b.bead_id = a.current_hook_bead_id \
             WHERE a.status = 'idle' AND a.role != 'mayor' AND b.status IN ('open', 'in_progress') \
             AND COALESCE(a.last_activity_at, 0) < ?1",
        )?;
        let held: BTreeSet<(String, String)> = st
            .query_map([now.minus_ms(HEARTBEAT_STALE_MS).0], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.idle_hooks.retain(|k, _| held.contains(k));
        for k in held {
            let seen = self.idle_hooks.entry(k.clone()).or_insert(Sighting { at: now, ticks_since: 0 });
            if seen.ticks_since < 2 {
                continue;
            }
            out.push(v(
                "idle_agent_releases_live_bead",
                format!("idle agent {} with a stale heartbeat still holds live bead {}", k.0, k.1),
            ));
        }
        Ok(())
    }

    /// Rule 5 is work-conserving: while a rig that reviews code has an open MR
    /// and a free refinery (idle and unhooked, or none yet), and no URL-less
    /// review in progress, the oldest MR goes to the refinery on the next tick
    /// (bug d: PRs that are merely polled do not hold the rig's review slot).
    /// Not while draining or while the breaker is open.
    fn check_review_queue_moves(
        &mut self,
        conn: &Connection,
        settings: &Settings,
        now: Timestamp,
        out: &mut Vec<Violation>,
    ) -> Result<()> {
        let paused = state::drain_state(conn)?.draining || breaker_failures(conn, now)? >= BREAKER_FAILURE_THRESHOLD;
        let waiting: BTreeSet<String> = if paused {
            BTreeSet::new()
        } else {
            rows(
                conn,
                "SELECT DISTINCT m.rig_id FROM beads m JOIN review_metadata r ON r.bead_id = m.bead_id \
                 WHERE m.type = 'merge_request' AND m.status = 'open' AND r.babysit = 0 AND m.rig_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM beads x JOIN review_metadata xr ON xr.bead_id = x.bead_id \
                   WHERE x.rig_id = m.rig_id AND x.type = 'merge_request' AND x.status = 'in_progress' AND xr.pr_url IS NULL) \
                 AND NOT EXISTS (SELECT 1 FROM agent_metadata a WHERE a.role = 'refinery' AND a.rig_id = m.rig_id \
                   AND (a.status != 'idle' OR a.current_hook_bead_id IS NOT NULL))",
                [],
            )?
            .into_iter()
            .filter(|rig| settings.get(rig).is_some_and(|s| s.code_review))
            .collect()
        };
        for rig in outlasting(&mut self.idle_queues, waiting, now) {
            out.push(v("review_queue_moves", format!("rig {rig} has an open MR and a free refinery, but no review")));
        }
        Ok(())
    }

    /// Rule 7: a refinery still working on an MR that ended (merged outside,
    /// failed) is stopped and freed on the next tick. Without this the rig's
    /// one review slot stays taken until GUPP gives up on the refinery hours
    /// later, which a long liveness window forgives.
    fn check_refineries_leave_ended_mrs(
        &mut self,
        conn: &Connection,
        now: Timestamp,
        out: &mut Vec<Violation>,
    ) -> Result<()> {
        let held: BTreeSet<String> = rows(
            conn,
            "SELECT a.bead_id FROM agent_metadata a JOIN beads m ON m.bead_id = a.current_hook_bead_id \
             WHERE a.role = 'refinery' AND a.status IN ('working', 'stalled') AND m.status IN ('closed', 'failed')",
            [],
        )?
        .into_iter()
        .collect();
        for agent in outlasting(&mut self.refineries_on_ended_mrs, held, now) {
            out.push(v("refinery_leaves_ended_mr", format!("refinery {agent} still works on an MR that ended")));
        }
        Ok(())
    }

    fn check_reviews(
        &self,
        conn: &Connection,
        settings: &Settings,
        now: Timestamp,
        out: &mut Vec<Violation>,
    ) -> Result<()> {
        for rig in rows(conn, "SELECT b.rig_id FROM beads b JOIN review_metadata r ON r.bead_id = b.bead_id WHERE b.type = 'merge_request' AND b.status = 'in_progress' AND r.pr_url IS NULL AND b.rig_id IS NOT NULL GROUP BY b.rig_id HAVING COUNT(*) > 1", [])? {
            out.push(v("one_direct_review_per_rig", format!("rig {rig} has several URL-less MRs in progress")));
        }
        // Rule 4 repairs this within its window plus one idle-cadence tick,
        // counted from the later of the issue's last change and its last MR's
        // end: a reconciler rule that fails an MR (orphaned PR, refinery cap)
        // leaves the source to Rule 4 on a later tick, so an issue long in
        // review is legitimately MR-less until then.
        let grace = ORPHANED_SOURCE_TIMEOUT_MS + state::IDLE_ALARM_INTERVAL_MS + 2 * state::ACTIVE_ALARM_INTERVAL_MS;
        for id in rows(
            conn,
            "SELECT s.bead_id FROM beads s WHERE s.type = 'issue' AND s.status = 'in_review' AND s.updated_at < ?1 \
             AND NOT EXISTS (SELECT 1 FROM bead_dependencies d JOIN beads m ON m.bead_id = d.bead_id \
               WHERE d.depends_on_bead_id = s.bead_id AND d.dependency_type = 'tracks' AND m.type = 'merge_request' \
               AND (m.status IN ('open', 'in_progress') OR m.updated_at >= ?1))",
            [now.minus_ms(grace).0],
        )? {
            out.push(v("in_review_has_live_mr", format!("issue {id} is in review with no live MR")));
        }
        for mr in rows(
            conn,
            "SELECT m.bead_id FROM beads m JOIN bead_dependencies d ON d.bead_id = m.bead_id AND d.dependency_type = 'tracks' \
             JOIN beads s ON s.bead_id = d.depends_on_bead_id WHERE m.type = 'merge_request' AND \
             (s.labels LIKE '%\"gt:rework\"%' OR s.labels LIKE '%\"gt:pr-feedback\"%' OR s.labels LIKE '%\"gt:pr-fixup\"%' OR s.labels LIKE '%\"gt:pr-conflict\"%')",
            [],
        )? {
            out.push(v("fix_beads_never_reviewed", format!("MR {mr} reviews a fix-up bead")));
        }
        for mr in rows(
            conn,
            "SELECT d.bead_id FROM bead_dependencies d JOIN beads f ON f.bead_id = d.depends_on_bead_id \
             JOIN beads m ON m.bead_id = d.bead_id WHERE d.dependency_type = 'blocks' AND m.type = 'merge_request' \
             AND f.status IN ('open', 'in_progress', 'in_review') AND f.labels LIKE '%\"gt:pr-feedback\"%' \
             GROUP BY d.bead_id HAVING COUNT(*) > 1",
            [],
        )? {
            out.push(v("one_live_feedback_bead", format!("MR {mr} has several live feedback beads")));
        }
        // A merge closes the other live MRs of its source (§10.1 sibling MRs):
        // left open, an old one could reopen or re-merge a finished issue. Only
        // MRs that existed when the merge closed its MR are its siblings, and
        // only a merge counts: a user may close an MR bead (and its source)
        // by hand, which merges nothing.
        for mr in rows(
            conn,
            "SELECT m.bead_id FROM beads m JOIN bead_dependencies d ON d.bead_id = m.bead_id AND d.dependency_type = 'tracks' \
             JOIN beads s ON s.bead_id = d.depends_on_bead_id WHERE m.type = 'merge_request' AND m.status IN ('open', 'in_progress') \
             AND s.type = 'issue' AND s.status = 'closed' AND EXISTS (SELECT 1 FROM bead_dependencies d2 JOIN beads m2 \
               ON m2.bead_id = d2.bead_id WHERE d2.depends_on_bead_id = s.bead_id AND d2.dependency_type = 'tracks' \
               AND m2.type = 'merge_request' AND m2.status = 'closed' AND m.created_at < m2.updated_at \
               AND EXISTS (SELECT 1 FROM bead_events e WHERE e.bead_id = m2.bead_id AND e.event_type = 'status_changed' \
                 AND e.new_value = 'closed' AND json_extract(e.metadata, '$.cause') = 'merged'))",
            [],
        )? {
            out.push(v("merge_closes_sibling_mrs", format!("MR {mr} is still live although its source merged")));
        }
        let mut st = conn.prepare_cached(
            "SELECT m.bead_id, m.rig_id, m.status, r.pr_url, COALESCE(m.created_by, ''), \
             (SELECT COUNT(*) FROM agent_metadata a WHERE a.current_hook_bead_id = m.bead_id AND a.role = 'refinery'), \
             COALESCE((SELECT c.merge_mode FROM convoy_metadata c WHERE c.bead_id = r.convoy_id), '') \
             FROM beads m JOIN review_metadata r ON r.bead_id = m.bead_id \
             WHERE m.type = 'merge_request' AND m.status IN ('open', 'in_progress') AND r.babysit = 0",
        )?;
        type Row = (String, Option<String>, BeadStatus, Option<String>, String, u32, String);
        let live: Vec<Row> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (mr, rig, status, pr_url, created_by, refineries, mode) in live {
            let review_off = rig.as_deref().and_then(|r| settings.get(r)).is_some_and(|s| !s.code_review);
            let exempt = created_by == "system" || mode == "review-and-merge";
            if !review_off || exempt {
                continue;
            }
            if refineries > 0 {
                out.push(v(
                    "no_refinery_when_review_off",
                    format!("refinery hooked to MR {mr} although review is off"),
                ));
            }
            if status == BeadStatus::InProgress && pr_url.is_none() {
                out.push(v(
                    "no_refinery_when_review_off",
                    format!("MR {mr} is in progress without a PR although review is off"),
                ));
            }
        }
        Ok(())
    }

    fn check_convoys(&self, conn: &Connection, out: &mut Vec<Violation>) -> Result<()> {
        for c in rows(
            conn,
            "SELECT d.depends_on_bead_id FROM bead_dependencies d JOIN beads m ON m.bead_id = d.bead_id \
             JOIN convoy_metadata c ON c.bead_id = d.depends_on_bead_id \
             WHERE d.dependency_type = 'tracks' AND m.type = 'merge_request' AND m.status IN ('open', 'in_progress') \
             GROUP BY d.depends_on_bead_id HAVING COUNT(*) > 1",
            [],
        )? {
            out.push(v("one_live_landing_mr", format!("convoy {c} has several live landing MRs")));
        }
        for c in
            rows(conn, "SELECT bead_id FROM convoy_metadata WHERE landing_mr_attempts > ?1", [MAX_LANDING_MR_ATTEMPTS])?
        {
            out.push(v(
                "landing_attempts_bounded",
                format!("convoy {c} made more than {MAX_LANDING_MR_ATTEMPTS} landing attempts"),
            ));
        }
        Ok(())
    }

    /// Status changes since the last check: nothing leaves a terminal state;
    /// an issue closes only through a merge or an explicit close.
    fn check_transitions(&self, conn: &Connection, since: Timestamp, out: &mut Vec<Violation>) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT e.bead_id, e.old_value, e.new_value, COALESCE(json_extract(e.metadata, '$.cause'), ''), COALESCE(b.type, ''), \
             EXISTS (SELECT 1 FROM bead_dependencies d JOIN beads m ON m.bead_id = d.bead_id \
               WHERE d.depends_on_bead_id = e.bead_id AND d.dependency_type = 'tracks' AND m.type = 'merge_request' AND m.status = 'closed'), \
             EXISTS (SELECT 1 FROM bead_dependencies d JOIN beads f ON f.bead_id = d.depends_on_bead_id \
               JOIN review_metadata r ON r.bead_id = e.bead_id \
               WHERE d.bead_id = e.bead_id AND d.dependency_type = 'blocks' AND r.pr_url IS NULL \
               AND f.status IN ('open', 'in_progress', 'in_review') AND f.created_at <= e.created_at) \
             FROM bead_events e LEFT JOIN beads b ON b.bead_id = e.bead_id \
             WHERE e.event_type = 'status_changed' AND e.created_at >= ?1",
        )?;
        type Row = (String, Option<String>, Option<String>, String, String, bool, bool);
        let changes: Vec<Row> = st
            .query_map([since.0], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (bead, old, new, cause, ty, has_merged_mr, blocked_direct) in changes {
            if matches!(old.as_deref(), Some("closed" | "failed")) {
                let (o, n) = (old.as_deref().unwrap_or_default(), new.as_deref().unwrap_or_default());
                out.push(v("terminal_is_final", format!("bead {bead} left {o} for {n}")));
            }
            let explicit =
                matches!(cause.as_str(), "user" | "fixup_done" | "convoy_force_closed" | "merged" | "triage_resolved");
            if ty == "issue" && new.as_deref() == Some("closed") && !explicit && !has_merged_mr {
                out.push(v(
                    "closed_issue_has_merge",
                    format!("issue {bead} closed ({cause}) without a merge or explicit close"),
                ));
            }
            // A direct merge is the refinery's word alone: never while the
            // rework it asked for is still open.
            if ty == "merge_request" && cause == "merged" && blocked_direct {
                out.push(v("no_merge_while_blocked", format!("MR {bead} merged directly while fix-up work blocks it")));
            }
        }
        Ok(())
    }

    /// #3538: a container eviction reopens its agent's bead only when that
    /// agent's heartbeat is stale; a session still heart-beating outlived the
    /// eviction and keeps its work. The heartbeat at the reopen is bounded
    /// below by what the previous check saw, or by the agent's current value
    /// if that is older than the reopen (a redispatch in the same tick sets
    /// it to the reopen's own time, which proves nothing). An activity
    /// cleared since (NULL now) voids the remembered one.
    fn check_eviction_reopens(&mut self, conn: &Connection, since: Timestamp, out: &mut Vec<Violation>) -> Result<()> {
        let key = format!("$.{}", super::beads::EVICTION_REOPEN);
        let mut st = conn.prepare_cached(
            "SELECT e.bead_event_id, e.bead_id, e.created_at, json_extract(e.metadata, ?2), a.last_activity_at, a.bead_id IS NOT NULL \
             FROM bead_events e LEFT JOIN agent_metadata a ON a.bead_id = json_extract(e.metadata, ?2) \
             WHERE e.event_type = 'status_changed' AND e.created_at >= ?1 AND json_extract(e.metadata, ?2) IS NOT NULL",
        )?;
        type Row = (String, String, i64, String, Option<i64>, bool);
        let reopens: Vec<Row> = st
            .query_map(rusqlite::params![since.0, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (event, bead, at, agent, current, exists) in reopens {
            if !self.judged_reopens.insert(event) {
                continue;
            }
            let at = Timestamp(at);
            // A NULL now was cleared on purpose (a triage RESTART stops the
            // session and forgets its activity): what came before is void.
            let cleared = exists && current.is_none();
            let remembered = if cleared { None } else { self.activity.get(&agent).copied() };
            let known = remembered.max(current.map(Timestamp).filter(|c| *c < at));
            if known.is_some() && !stale(at, known, HEARTBEAT_STALE_MS) {
                out.push(v(
                    "heartbeating_agent_keeps_hook",
                    format!("bead {bead} reopened by a container eviction although its agent {agent} heart-beat within 90 s"),
                ));
            }
        }
        let mut st = conn.prepare_cached(
            "SELECT bead_id, last_activity_at FROM agent_metadata WHERE last_activity_at IS NOT NULL",
        )?;
        self.activity =
            st.query_map([], |r| Ok((r.get(0)?, Timestamp(r.get(1)?))))?.collect::<rusqlite::Result<_>>()?;
        Ok(())
    }

    fn check_events(&self, conn: &Connection, out: &mut Vec<Violation>) -> Result<()> {
        for id in rows(conn, "SELECT event_id FROM town_events WHERE event_type = 'container_status' AND json_extract(payload, '$.status') = 'running'", [])? {
            out.push(v("no_running_status_events", format!("event {id} records a running container")));
        }
        for agent in rows(
            conn,
            "SELECT agent_id FROM town_events WHERE event_type = 'container_status' AND processed_at IS NULL \
             GROUP BY agent_id, json_extract(payload, '$.status') HAVING COUNT(*) > 1",
            [],
        )? {
            out.push(v(
                "container_status_upserted",
                format!("agent {agent} has duplicate pending container_status events"),
            ));
        }
        Ok(())
    }

    fn check_escalations(&mut self, conn: &Connection, out: &mut Vec<Violation>) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT e.bead_id, e.severity, e.re_escalation_count FROM escalation_metadata e JOIN beads b ON b.bead_id = e.bead_id \
             WHERE b.status IN ('closed', 'failed')",
        )?;
        let now: Vec<(String, String, u32)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
        for (id, sev, count) in now {
            match self.terminal_escalations.get(&id) {
                Some((s, c)) if *s != sev || *c != count => {
                    out.push(v("terminal_escalations_quiet", format!("escalation {id} changed after it ended")));
                }
                Some(_) => {}
                None => {
                    self.terminal_escalations.insert(id, (sev, count));
                }
            }
        }
        Ok(())
    }

    fn check_dispatch_bounds(&self, conn: &Connection, settings: &Settings, out: &mut Vec<Violation>) -> Result<()> {
        // The cap is written into the SQL, not bound: a bound value decides
        // whether the partial index `beads_redispatch` applies, so SQLite
        // would prepare the statement again on every run.
        let sql = format!(
            "SELECT bead_id, rig_id, dispatch_attempts FROM beads \
             WHERE dispatch_attempts > {DEFAULT_MAX_DISPATCH_ATTEMPTS} AND type IN ('issue', 'merge_request')"
        );
        let over: Vec<(String, Option<String>, u32)> = conn
            .prepare_cached(&sql)?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (bead, rig, n) in over {
            let cap = rig
                .as_deref()
                .and_then(|r| settings.get(r))
                .map_or(DEFAULT_MAX_DISPATCH_ATTEMPTS, |s| s.max_dispatch_attempts);
            if n > cap.max(DEFAULT_MAX_DISPATCH_ATTEMPTS) {
                out.push(v("dispatch_bounded", format!("bead {bead} was dispatched {n} times (cap {cap})")));
            }
        }
        Ok(())
    }
}

/// When a condition was first seen, and how many ticks began after that.
#[derive(Debug)]
struct Sighting {
    at: Timestamp,
    ticks_since: u32,
}

impl Sighting {
    fn tick_started(&mut self, tick_at: Timestamp) {
        if tick_at > self.at {
            self.ticks_since += 1;
        }
    }
}

/// Conditions that must not outlast a tick at either cadence: `seen` maps
/// each condition to when it was first observed; those observed now are
/// kept (the others cleared) and those older than the window are returned.
fn outlasting<K: Ord + Clone>(seen: &mut BTreeMap<K, Timestamp>, now_true: BTreeSet<K>, now: Timestamp) -> Vec<K> {
    let window = state::IDLE_ALARM_INTERVAL_MS + 2 * state::ACTIVE_ALARM_INTERVAL_MS;
    seen.retain(|k, _| now_true.contains(k));
    now_true.into_iter().filter(|k| now.since(*seen.entry(k.clone()).or_insert(now)) > window).collect()
}

/// Failed dispatches in the breaker's window, as the spec defines them: beads
/// dispatched more than once, last within 30 min, that have not closed.
fn breaker_failures(conn: &Connection, now: Timestamp) -> Result<u32> {
    Ok(conn.prepare_cached(
        "SELECT COUNT(*) FROM beads WHERE dispatch_attempts > 1 AND last_dispatch_attempt_at > ?1 AND status != 'closed'",
    )?
    .query_row([now.minus_ms(BREAKER_WINDOW_MS).0], |r| r.get(0))?)
}

/// Each rig's effective settings, loaded once per check.
type Settings = BTreeMap<String, RigSettings>;

fn rig_settings(conn: &Connection, config: &TownConfig) -> Result<Settings> {
    Ok(state::list_rigs(conn)?
        .into_iter()
        .map(|r| (r.id, RigSettings::resolve(config, &r.config, DEFAULT_MAX_DISPATCH_ATTEMPTS)))
        .collect())
}

/// Oracles over one reconcile pass: what the reconciler asked for, judged
/// against the snapshot it saw.
pub fn check_actions(s: &TownSnapshot, actions: &[Action]) -> Vec<Violation> {
    let mut out = Vec::new();
    for a in actions {
        if let Action::SendNudge { agent_id, tier, .. } = a {
            if s.recent_nudges.contains(&(agent_id.clone(), *tier)) {
                out.push(v(
                    "nudge_once_per_tier_per_hour",
                    format!("{tier:?} nudge for {agent_id} again within the hour"),
                ));
            }
        }
        match a {
            Action::SendNudge { agent_id, .. }
            | Action::CreateTriageRequest { agent_id, .. }
            | Action::TransitionAgent { agent_id, to: AgentStatus::Stalled, .. } => {
                let Some(agent) = s.agents.iter().find(|x| &x.id == agent_id) else { continue };
                if agent.last_dispatched_at.is_some_and(|d| s.now.since(d) <= GUPP_WARN_MS) {
                    out.push(v(
                        "gupp_grace_after_dispatch",
                        format!("GUPP acted on {agent_id} within 15 min of its dispatch"),
                    ));
                }
                match agent.gupp_activity() {
                    Some(t) if t <= s.now => {}
                    _ => out.push(v(
                        "gupp_needs_valid_activity",
                        format!("GUPP acted on {agent_id} without a valid activity time"),
                    )),
                }
            }
            Action::TransitionBead { bead_id, to: BeadStatus::Failed, reason, .. }
                if reason == "PR review orphaned" =>
            {
                let polled = s.reviews.get(bead_id).and_then(|r| r.last_poll_at);
                if polled.is_some_and(|t| s.now.since(t) <= ORPHANED_PR_REVIEW_TIMEOUT_MS) {
                    out.push(v(
                        "polled_mr_not_orphaned",
                        format!("MR {bead_id} failed as orphaned although polled recently"),
                    ));
                }
            }
            // Bug (f), second half: a session that still heart-beats is alive
            // (its dispatch only looked failed); tearing its hook down broke
            // the tools that need one.
            Action::UnhookAgent { agent_id, reason } if reason == IDLE_HOOK_RELEASED => {
                let Some(agent) = s.agents.iter().find(|x| &x.id == agent_id) else { continue };
                if !stale(s.now, agent.last_activity_at, HEARTBEAT_STALE_MS) {
                    out.push(v(
                        "heartbeating_agent_keeps_hook",
                        format!("idle agent {agent_id} unhooked although it heart-beat within 90 s"),
                    ));
                }
            }
            // #1358: nor is its bead taken back as lost (Rule 3).
            Action::TransitionBead { bead_id, from: Some(BeadStatus::InProgress), reason, .. }
                if reason.starts_with(AGENT_LOST) =>
            {
                let heartbeating =
                    s.agents_hooked_to(bead_id).find(|a| !stale(s.now, a.last_activity_at, HEARTBEAT_STALE_MS));
                if let Some(a) = heartbeating {
                    out.push(v(
                        "heartbeating_agent_keeps_hook",
                        format!("bead {bead_id} reset as lost although its agent {} heart-beat within 90 s", a.id),
                    ));
                }
            }
            // §10.2 #4: GC deletes only workers that showed no sign of life
            // (creation, dispatch, activity) for 24 h, never one a NULL
            // activity made look ancient.
            Action::DeleteAgent { agent_id, reason } if reason.starts_with("GC") => {
                let Some(agent) = s.agents.iter().find(|x| &x.id == agent_id) else { continue };
                let signs = [Some(agent.created_at), agent.last_dispatched_at, agent.last_activity_at];
                if let Some(t) = signs.into_iter().flatten().find(|&t| s.now.since(t) <= AGENT_GC_RETENTION_MS) {
                    out.push(v(
                        "gc_only_long_idle_agents",
                        format!("GC deleted agent {agent_id}, alive {} ms ago", s.now.since(t)),
                    ));
                }
            }
            Action::PollPr { bead_id, .. } => {
                let last = s.reviews.get(bead_id).and_then(|r| r.last_poll_at);
                if last.is_some_and(|t| s.now.since(t) < PR_POLL_INTERVAL_MS) {
                    out.push(v(
                        "pr_polled_once_a_minute",
                        format!("MR {bead_id} polled again within a minute (#1632)"),
                    ));
                }
            }
            Action::TransitionAgent { agent_id, from: AgentStatus::Stalled, to: AgentStatus::Idle, .. } => {
                // A2 counts from the stall itself: heartbeats go on after a GUPP stop.
                // (Rule 7 idles a refinery whose MR ended at once: not a stall timeout.)
                let Some(agent) = s.agents.iter().find(|x| &x.id == agent_id) else { continue };
                let work_ended = agent.hook.as_deref().and_then(|h| s.bead(h)).is_some_and(|b| b.status.is_terminal());
                if !work_ended && agent.stalled_at.is_none_or(|t| s.now.since(t) <= STALLED_AUTO_IDLE_MS) {
                    out.push(v(
                        "stall_lasts_2h30",
                        format!("stalled agent {agent_id} idled before 2 h 30 min stalled"),
                    ));
                }
            }
            // §10.2 #1: review-and-merge convoy members go through the refinery
            // even where the rig does not review code.
            Action::TransitionBead { bead_id, reason, .. }
                if (reason == REVIEW_OFF_FAST_TRACK || reason == REVIEW_OFF_NO_PR)
                    && review_and_merge_member(s, bead_id) =>
            {
                out.push(v(
                    "review_and_merge_members_reviewed",
                    format!("MR {bead_id} of a review-and-merge convoy skipped the refinery"),
                ));
            }
            Action::MergePr { bead_id, .. } if s.bead(bead_id).is_some_and(|b| b.blocked) => {
                out.push(v("no_merge_while_blocked", format!("merge of MR {bead_id} while fix-up work blocks it")));
            }
            Action::DispatchAgent { bead_id, .. }
                if s.bead(bead_id).is_some_and(|b| {
                    // Holding and staging gate issues (Rules 1, 2); an MR of a staged convoy's member is reviewed.
                    b.bead_type == BeadType::Issue && (b.labels.has(Label::Held) || b.in_staged_convoy)
                }) =>
            {
                out.push(v("held_beads_wait", format!("dispatch of held or staged bead {bead_id}")));
            }
            Action::DispatchAgent { bead_id, .. } => {
                let Some(b) = s.bead(bead_id) else { continue };
                let cap = s.rig_max_attempts(b.rig_id.as_deref()).max(DEFAULT_MAX_DISPATCH_ATTEMPTS);
                if b.dispatch_attempts >= cap {
                    out.push(v(
                        "dispatch_bounded",
                        format!("dispatch of {bead_id} at {} attempts", b.dispatch_attempts),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Read from the MR's recorded convoy, not through the snapshot's helper
/// (the thing under test).
fn review_and_merge_member(s: &TownSnapshot, mr: &str) -> bool {
    let convoy = s.reviews.get(mr).and_then(|r| r.convoy_id.as_deref());
    convoy.and_then(|c| s.convoys.get(c)).is_some_and(|c| c.merge_mode == MergeMode::ReviewAndMerge)
}

/// The alarm may only move later at the end of a tick: any other call that
/// pushed it later postponed the reconciler (bug h).
pub fn alarm_postponed(before: Option<Timestamp>, after: Option<Timestamp>, now: Timestamp) -> Option<Violation> {
    match (before, after) {
        (Some(b), Some(a)) if b >= now && a > b => {
            Some(v("alarm_never_postponed", format!("alarm moved from {b} to {a} outside a tick")))
        }
        (Some(b), None) if b >= now => Some(v("alarm_never_postponed", "alarm cleared outside a tick")),
        _ => None,
    }
}
