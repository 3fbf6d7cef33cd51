//! The workload: a schedule of user operations drawn from the workload
//! stream (Poisson arrivals of issues, convoys of given shapes, mayor
//! messages and user actions), played by a turmoil client over the town's
//! HTTP API with a user token. Arrivals stop at `heal_at`.

use super::config::{ConvoyPlan, ConvoyShape, WorldConfig};
use super::hosts::{lock, merge_mode, repo_name, rig_id, PrRecord, Shared, EPOCH, OWNER, SECRET, TOWN_ID, TOWN_URL};
use crate::net::TurmoilConnector;
use gastown::net::HttpClient;
use gastown::town::invariants::Violation;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One user operation. `AdoptPr` is an outside contributor's PR, handed to
/// the town to babysit; `DeleteBead` deletes the live issue at `pick` modulo
/// their number, in creation order.
#[derive(Clone, Debug)]
pub enum Op {
    Sling {
        rig: String,
        title: String,
    },
    Convoy {
        index: usize,
        rig: String,
        plan: ConvoyPlan,
    },
    StartConvoy {
        index: usize,
    },
    MayorMessage {
        text: String,
    },
    ResetAgent,
    CloseBead,
    AcknowledgeEscalation,
    CloseEscalation,
    AdoptPr {
        n: usize,
        rig: String,
    },
    DeleteBead {
        pick: u64,
    },
    ReassignBead,
    AssignBead,
    /// `pick` chooses among the options the request offers.
    ResolveTriage {
        pick: u64,
    },
}

/// Exponential gap with the given mean.
fn gap(rng: &mut StdRng, mean_ms: f64) -> u64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    (-u.ln() * mean_ms) as u64
}

/// Poisson arrival times in `[0, end)` at `per_hour`.
pub fn arrivals(rng: &mut StdRng, per_hour: f64, end: u64, max: usize) -> Vec<u64> {
    let mut out = Vec::new();
    if per_hour <= 0.0 {
        return out;
    }
    let mean = 3_600_000.0 / per_hour;
    let mut t = gap(rng, mean);
    while t < end && out.len() < max {
        out.push(t);
        t += gap(rng, mean).max(1);
    }
    out
}

/// The whole schedule, sorted by time (stable for equal times).
pub fn schedule(cfg: &WorldConfig, rng: &mut StdRng) -> Vec<(u64, Op)> {
    let end = cfg.heal_at();
    let w = &cfg.workload;
    let rigs = cfg.town.rigs.max(1);
    let mut ops = Vec::new();
    for (n, at) in arrivals(rng, w.issues_per_hour, end, w.issues as usize).into_iter().enumerate() {
        let rig = rig_id(rng.random_range(0..rigs));
        ops.push((at, Op::Sling { rig, title: format!("issue {n}") }));
    }
    for (index, plan) in w.convoys.iter().enumerate() {
        let at = plan.at_ms.unwrap_or_else(|| rng.random_range(0..=end / 2)).min(end);
        let rig = rig_id(rng.random_range(0..rigs));
        ops.push((at, Op::Convoy { index, rig, plan: plan.clone() }));
        if let Some(after) = plan.start_after_ms {
            ops.push((at + after, Op::StartConvoy { index }));
        }
    }
    for (n, at) in arrivals(rng, w.mayor_messages_per_hour, end, 10_000).into_iter().enumerate() {
        ops.push((at, Op::MayorMessage { text: format!("mayor, status of things? ({n})") }));
    }
    for at in arrivals(rng, w.reset_agent_per_hour, end, 10_000) {
        ops.push((at, Op::ResetAgent));
    }
    for at in arrivals(rng, w.close_bead_per_hour, end, 10_000) {
        ops.push((at, Op::CloseBead));
    }
    for at in arrivals(rng, w.acknowledge_escalation_per_hour, end, 10_000) {
        ops.push((at, Op::AcknowledgeEscalation));
    }
    // Drawn last and only when asked for, so older scenarios keep their streams.
    if w.close_escalation_per_hour > 0.0 {
        for at in arrivals(rng, w.close_escalation_per_hour, end, 10_000) {
            ops.push((at, Op::CloseEscalation));
        }
    }
    if w.adopt_pr_per_hour > 0.0 {
        for (n, at) in arrivals(rng, w.adopt_pr_per_hour, end, 10_000).into_iter().enumerate() {
            ops.push((at, Op::AdoptPr { n, rig: rig_id(rng.random_range(0..rigs)) }));
        }
    }
    if w.delete_bead_per_hour > 0.0 {
        // Which bead is drawn here too, so the stream does not depend on the run.
        for at in arrivals(rng, w.delete_bead_per_hour, end, 10_000) {
            ops.push((at, Op::DeleteBead { pick: rng.random() }));
        }
    }
    if w.reassign_bead_per_hour > 0.0 {
        for at in arrivals(rng, w.reassign_bead_per_hour, end, 10_000) {
            ops.push((at, Op::ReassignBead));
        }
    }
    if w.assign_bead_per_hour > 0.0 {
        for at in arrivals(rng, w.assign_bead_per_hour, end, 10_000) {
            ops.push((at, Op::AssignBead));
        }
    }
    if w.resolve_triage_per_hour > 0.0 {
        // Triage is people's work, not a fault: it goes on after the heal
        // (GUPP's requests come 2 h after a dispatch) and stops half-way
        // through the convergence window, so what it restarts can settle.
        let triage_end = cfg.deadline() - cfg.converge_within_ms / 2;
        for at in arrivals(rng, w.resolve_triage_per_hour, triage_end, 10_000) {
            ops.push((at, Op::ResolveTriage { pick: rng.random() }));
        }
    }
    ops.sort_by_key(|(at, _)| *at);
    ops
}

/// The oldest issue a polecat is working on whose rig has an idle, unhooked
/// polecat, and that polecat: the user moves the work over to it.
fn pick_reassignment(sh: &Shared) -> Option<(String, String)> {
    pick_pair(
        sh,
        "FROM beads b JOIN agent_metadata w ON w.current_hook_bead_id = b.bead_id \
         WHERE b.type = 'issue' AND b.status = 'in_progress' AND w.role = 'polecat' AND w.status = 'working'",
    )
}

/// The oldest open, unassigned issue whose rig has an idle, unhooked polecat,
/// and that polecat: the user plans the work ahead (staged convoy members too).
fn pick_assignment(sh: &Shared) -> Option<(String, String)> {
    pick_pair(
        sh,
        "FROM beads b WHERE b.type = 'issue' AND b.status = 'open' AND b.assignee_agent_bead_id IS NULL \
         AND b.labels NOT LIKE '%\"gt:triage-request\"%'",
    )
}

/// The oldest bead `b` of `from_where` whose rig has an idle, unhooked
/// polecat, with that polecat (the first by id).
fn pick_pair(sh: &Shared, from_where: &str) -> Option<(String, String)> {
    let sql = format!(
        "SELECT b.bead_id, (SELECT i.bead_id FROM agent_metadata i WHERE i.role = 'polecat' \
           AND i.status = 'idle' AND i.current_hook_bead_id IS NULL AND i.rig_id = b.rig_id \
           ORDER BY i.bead_id LIMIT 1) AS idle \
         {from_where} AND idle IS NOT NULL ORDER BY b.created_at, b.bead_id LIMIT 1"
    );
    let sql = sql.as_str();
    let host = sh.town()?;
    host.with_town_quietly(|t| {
        Ok(t.conn().query_row(sql, [], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).ok())
    })
    .ok()
    .flatten()
}

/// An outside contributor pushes a branch and opens a PR against `rig`'s
/// repository, straight on the forge (not through the town); CI and reviewers
/// treat it like any other PR. Returns the adoption request for the town.
fn open_outside_pr(sh: &Shared, rig: &str, n: usize) -> Option<serde_json::Value> {
    let forge = sh.forge()?;
    let repo = repo_name(rig);
    let branch = format!("contrib/{n}");
    let sha = forge.push(OWNER, &repo, &branch, false).ok()?;
    let pull = forge.create_pull(OWNER, &repo, &format!("outside change {n}"), &branch, "main").ok()?;
    let url = forge.pr_url(OWNER, &repo, pull.number);
    lock(&sh.prs).push(PrRecord {
        bead_id: format!("outside-{n}"),
        agent_id: "outside".into(),
        repo,
        number: pull.number,
        url: url.clone(),
        opened_ms: super::hosts::host_now_ms(),
    });
    Some(json!({ "pr_url": url, "branch": branch, "head_sha": sha, "title": format!("Babysit outside change {n}") }))
}

/// `depends_on` lists of a DAG shape.
pub fn shape(shape: ConvoyShape, n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| match shape {
            ConvoyShape::Chain if i > 0 => vec![i - 1],
            ConvoyShape::FanOut if i > 0 => vec![0],
            ConvoyShape::Diamond if i > 0 && i + 1 < n => vec![0],
            ConvoyShape::Diamond if i > 0 && i + 1 == n => {
                (1..i).collect::<Vec<_>>().into_iter().chain((i == 1).then_some(0)).collect()
            }
            _ => vec![],
        })
        .collect()
}

/// A target for a user action, picked from the town's state (the user looks at the dashboard).
fn pick(sh: &Shared, sql: &str, params: impl rusqlite::Params) -> Option<String> {
    let host = sh.town()?;
    host.with_town_quietly(|t| Ok(t.conn().query_row(sql, params, |r| r.get::<_, String>(0)).ok())).ok().flatten()
}

/// The oldest open triage request and the action at `pick` modulo the
/// options it offers (`DISCARD` when it offers none).
fn pick_triage(sh: &Shared, pick: u64) -> Option<(String, String)> {
    let host = sh.town()?;
    let row = host.with_town_quietly(|t| {
        Ok(t.conn()
            .query_row(
                "SELECT bead_id, COALESCE(json_extract(metadata, '$.options'), '[]') FROM beads \
                 WHERE type = 'issue' AND status = 'open' AND labels LIKE '%\"gt:triage-request\"%' \
                 ORDER BY created_at, bead_id LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .ok())
    });
    let (id, options) = row.ok().flatten()?;
    let options: Vec<String> = serde_json::from_str(&options).unwrap_or_default();
    let n = u64::try_from(options.len()).unwrap_or(1).max(1);
    let action =
        usize::try_from(pick % n).ok().and_then(|i| options.get(i).cloned()).unwrap_or_else(|| "DISCARD".into());
    Some((id, action))
}

/// The live issue at `pick` modulo their number, in creation order: the
/// user deletes whatever is there, including one a polecat is working on.
fn pick_live_issue(sh: &Shared, pick: u64) -> Option<String> {
    let host = sh.town()?;
    let live: Vec<String> = host
        .with_town_quietly(|t| {
            let mut st = t.conn().prepare_cached(
                "SELECT bead_id FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress', 'in_review') \
                 ORDER BY created_at, bead_id",
            )?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .ok()?;
    let n = u64::try_from(live.len()).ok().filter(|&n| n > 0)?;
    live.into_iter().nth(usize::try_from(pick % n).ok()?)
}

/// What a reset leaves behind, checked after the call: the agent's bead, if
/// still open, must carry no dispatch attempt made before the reset, so Rule 1
/// dispatches it on the next tick (bug k). An attempt made after the reset
/// (a tick may run before the check) is fine.
fn reset_postcondition(sh: &Shared, bead: &str, sent_ms: i64) -> Option<Violation> {
    let host = sh.town()?;
    let row = host.with_town_quietly(|t| {
        Ok(t.conn()
            .query_row(
                "SELECT status, dispatch_attempts, last_dispatch_attempt_at FROM beads WHERE bead_id = ?1",
                [bead],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, Option<i64>>(2)?)),
            )
            .ok())
    });
    let (status, attempts, last) = row.ok().flatten()?;
    let before_reset = last.is_some_and(|t| t < EPOCH.0 + sent_ms);
    (status == "open" && attempts > 0 && before_reset).then(|| Violation {
        invariant: "reset_clears_counters",
        detail: format!("bead {bead} reopened by an agent reset still counts {attempts} dispatch attempts"),
    })
}

/// The workload client: plays the schedule against the town's API.
pub async fn play(sh: Arc<Shared>, ops: Vec<(u64, Op)>) -> turmoil::Result {
    let http = HttpClient::new(Arc::new(TurmoilConnector), Duration::from_secs(10));
    let signer = gastown::auth::Signer::new(SECRET);
    let token = signer.user_token(TOWN_ID, EPOCH.plus_ms(365 * 24 * 3_600_000));
    let base = format!("{TOWN_URL}/api/towns/{TOWN_ID}");
    let mut convoys: BTreeMap<usize, String> = BTreeMap::new();
    let mut reset_hook: Option<(String, i64)> = None;
    for (at, op) in ops {
        let now = super::hosts::host_now_ms() as u64;
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        let (url, body, what) = match &op {
            Op::Sling { rig, title } => (format!("{base}/rigs/{rig}/sling"), json!({ "title": title }), "sling"),
            Op::Convoy { index, rig, plan } => {
                let deps = shape(plan.shape, plan.tasks.max(1) as usize);
                let tasks: Vec<_> = deps
                    .iter()
                    .enumerate()
                    .map(|(i, d)| json!({ "title": format!("convoy {index} task {i}"), "depends_on": d }))
                    .collect();
                let mut body = json!({
                    "rig_id": rig,
                    "title": format!("convoy {index}"),
                    "tasks": tasks,
                    "staged": plan.start_after_ms.is_some(),
                });
                if let Some(m) = plan.merge_mode {
                    body["merge_mode"] = serde_json::to_value(merge_mode(m)).unwrap_or_default();
                }
                (format!("{base}/convoys"), body, "convoy")
            }
            Op::StartConvoy { index } => match convoys.get(index) {
                Some(id) => (format!("{base}/convoys/{id}/start"), json!({}), "start_convoy"),
                None => continue,
            },
            Op::MayorMessage { text } => (format!("{base}/mayor/message"), json!({ "message": text }), "mayor_message"),
            Op::ResetAgent => match pick(&sh, "SELECT bead_id FROM agent_metadata WHERE role = 'polecat' AND status = 'working' ORDER BY bead_id LIMIT 1", []) {
                Some(a) => {
                    let hook = pick(&sh, "SELECT current_hook_bead_id FROM agent_metadata WHERE bead_id = ?1 AND current_hook_bead_id IS NOT NULL", [&a]);
                    reset_hook = hook.map(|h| (h, super::hosts::host_now_ms()));
                    (format!("{base}/agents/{a}/reset"), json!({}), "reset_agent")
                }
                None => continue,
            },
            Op::CloseBead => match pick(&sh, "SELECT bead_id FROM beads WHERE type = 'issue' AND status = 'open' AND assignee_agent_bead_id IS NULL ORDER BY created_at, bead_id LIMIT 1", []) {
                Some(b) => (format!("{base}/beads/{b}/close"), json!({}), "close_bead"),
                None => continue,
            },
            Op::AcknowledgeEscalation => match pick(&sh, "SELECT bead_id FROM escalation_metadata WHERE acknowledged = 0 ORDER BY bead_id LIMIT 1", []) {
                Some(e) => (format!("{base}/escalations/{e}/acknowledge"), json!({}), "acknowledge_escalation"),
                None => continue,
            },
            Op::AdoptPr { n, rig } => match open_outside_pr(&sh, rig, *n) {
                Some(body) => (format!("{base}/rigs/{rig}/external-prs"), body, "adopt_pr"),
                None => continue,
            },
            Op::DeleteBead { pick } => match pick_live_issue(&sh, *pick) {
                Some(b) => (format!("{base}/beads/{b}"), json!(null), "delete_bead"),
                None => continue,
            },
            Op::ReassignBead => match pick_reassignment(&sh) {
                Some((bead, agent)) => {
                    (format!("{base}/agents/{agent}/hook"), json!({ "bead_id": bead }), "reassign_bead")
                }
                None => continue,
            },
            Op::AssignBead => match pick_assignment(&sh) {
                Some((bead, agent)) => {
                    (format!("{base}/agents/{agent}/hook"), json!({ "bead_id": bead }), "assign_bead")
                }
                None => continue,
            },
            Op::ResolveTriage { pick } => match pick_triage(&sh, *pick) {
                Some((id, action)) => (
                    format!("{base}/triage/resolve"),
                    json!({ "triage_request_bead_id": id, "action": action, "resolution_notes": "simulated triage" }),
                    "resolve_triage",
                ),
                None => continue,
            },
            Op::CloseEscalation => match pick(&sh, "SELECT e.bead_id FROM escalation_metadata e JOIN beads b ON b.bead_id = e.bead_id WHERE e.acknowledged = 0 AND b.status = 'open' ORDER BY b.created_at, e.bead_id LIMIT 1", []) {
                Some(e) => (format!("{base}/beads/{e}/close"), json!({}), "close_escalation"),
                None => continue,
            },
        };
        let what = match &op {
            Op::ResolveTriage { .. } => format!("{what} {}", body["action"].as_str().unwrap_or_default()),
            _ => what.to_owned(),
        };
        let request = match &op {
            Op::DeleteBead { .. } => http.delete(url),
            _ => http.post(url).json(&body),
        };
        let r = request.bearer(&token).send().await;
        let status = r.as_ref().map_or(0, |r| r.status);
        if let (Op::ResetAgent, Some((bead, sent)), 200) = (&op, reset_hook.take(), status) {
            if let Some(v) = reset_postcondition(&sh, &bead, sent) {
                lock(&sh.checks).push((super::hosts::host_now_ms(), v));
            }
        }
        if let (Op::Convoy { index, .. }, Ok(r)) = (&op, &r) {
            if let Ok(v) = r.json::<serde_json::Value>() {
                if let Some(id) = v["data"]["convoy_id"].as_str() {
                    convoys.insert(*index, id.to_owned());
                }
            }
        }
        lock(&sh.records).push((super::hosts::host_now_ms(), "user", format!("{what} -> {status}")));
    }
    lock(&sh.records).push((super::hosts::host_now_ms(), "user", "workload done".into()));
    *lock(&sh.workload_done) = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn plan(delete_per_hour: f64) -> Vec<String> {
        let mut cfg = WorldConfig::smoke();
        cfg.workload.close_bead_per_hour = 2.0;
        cfg.workload.delete_bead_per_hour = delete_per_hour;
        schedule(&cfg, &mut StdRng::seed_from_u64(7)).iter().map(|(at, op)| format!("{at} {op:?}")).collect()
    }

    #[test]
    fn deletions_are_drawn_last_with_their_pick_and_leave_the_rest_alone() {
        let without = plan(0.0);
        let with = plan(6.0);
        assert_eq!(with, plan(6.0), "deterministic");
        let deletes: Vec<&String> = with.iter().filter(|o| o.contains("DeleteBead")).collect();
        assert!(deletes.len() >= 2, "{with:?}");
        let picks: BTreeMap<&str, ()> = deletes.iter().map(|o| (o.split("pick: ").nth(1).unwrap(), ())).collect();
        assert!(picks.len() > 1, "picks vary: {deletes:?}");
        let rest: Vec<&String> = with.iter().filter(|o| !o.contains("DeleteBead")).collect();
        assert_eq!(rest, without.iter().collect::<Vec<_>>(), "older scenarios keep their schedule");
    }

    #[test]
    fn reassignments_and_assignments_are_drawn_last_and_leave_the_rest_alone() {
        let mut cfg = WorldConfig::smoke();
        let without: Vec<String> =
            schedule(&cfg, &mut StdRng::seed_from_u64(7)).iter().map(|(at, op)| format!("{at} {op:?}")).collect();
        cfg.workload.reassign_bead_per_hour = 6.0;
        cfg.workload.assign_bead_per_hour = 6.0;
        let with: Vec<String> =
            schedule(&cfg, &mut StdRng::seed_from_u64(7)).iter().map(|(at, op)| format!("{at} {op:?}")).collect();
        let (moves, rest): (Vec<&String>, Vec<&String>) =
            with.iter().partition(|o| o.ends_with("ReassignBead") || o.ends_with("AssignBead"));
        assert!(moves.iter().filter(|o| o.ends_with(" ReassignBead")).count() >= 2, "{with:?}");
        assert!(moves.iter().filter(|o| o.ends_with(" AssignBead")).count() >= 2, "{with:?}");
        assert_eq!(rest, without.iter().collect::<Vec<_>>(), "older scenarios keep their schedule");
    }
}
