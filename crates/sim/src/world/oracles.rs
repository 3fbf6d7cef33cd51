//! The oracles of DESIGN.md §5 that the world runs: the town-state checker
//! from the town core (after every tick), the forge side (no duplicate PRs,
//! no foreign merge), the session side (history survives a drain, no
//! duplicate initial prompt, registry cleared after a drain), and liveness
//! after heal with a diagnosis.

use super::hosts::{PrRecord, EPOCH, OWNER};
use gastown::container::session::{self, SessionDb};
use gastown::container::Container;
use gastown::forge::Forge;
use gastown::model::{labels, BeadStatus, BeadType};
use gastown::runtime::TownHost;
use gastown::time::Timestamp;
use gastown::town::invariants::Violation;
use gastown::wire::ProcessStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every invariant name a failure can carry (besides [`LIVENESS`]).
pub const INVARIANTS: &[&str] = &[
    // town state (gastown::town::invariants::Checker)
    "one_agent_per_hook",
    "working_agent_has_hook",
    "babysat_pr_has_no_refinery",
    "idle_agent_releases_live_bead",
    "review_queue_moves",
    "refinery_leaves_ended_mr",
    "terminal_is_final",
    "one_direct_review_per_rig",
    "in_review_has_live_mr",
    "closed_issue_has_merge",
    "one_live_landing_mr",
    "landing_attempts_bounded",
    "one_live_feedback_bead",
    "merge_closes_sibling_mrs",
    "fix_beads_never_reviewed",
    "no_refinery_when_review_off",
    "gupp_grace_after_dispatch",
    "gupp_needs_valid_activity",
    "terminal_escalations_quiet",
    "events_applied_once",
    "no_running_status_events",
    "container_status_upserted",
    "review_and_merge_members_reviewed",
    "dispatch_bounded",
    "polled_mr_not_orphaned",
    "pr_polled_once_a_minute",
    "no_merge_while_blocked",
    "nudge_once_per_tier_per_hour",
    "held_beads_wait",
    "stall_lasts_2h30",
    "heartbeating_agent_keeps_hook",
    "gc_only_long_idle_agents",
    "started_agents_kept",
    // the workload's postconditions on its own calls
    "reset_clears_counters",
    // the alarm, checked by the world between steps
    "alarm_never_postponed",
    // upstream's own per-tick checks (TickReport::invariant_violations)
    "upstream_check",
    // forge side (here)
    "one_open_pr_per_source",
    "no_foreign_merge",
    "feedback_only_for_open_prs",
    // session side (here)
    "session_history_survives_drain",
    "no_duplicate_initial_prompt",
    "registry_cleared_after_drain",
    // expectations
    "min_closed_fraction",
    "event_latency",
];
pub const LIVENESS: &str = "liveness";

fn v(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation { invariant, detail: detail.into() }
}

/// Bug (j): the town records PR feedback only for a PR that is still open,
/// so none for a PR merged while its feedback was being read (the forge
/// merged it at `merged[url]`, sim ms, before the poll's recheck). Each PR
/// is judged once, at the first tick after the merge that finds an event.
pub fn no_feedback_after_merge(town: &TownHost, merged: &mut BTreeMap<String, u64>) -> Vec<Violation> {
    if merged.is_empty() {
        return Vec::new();
    }
    let found: Vec<(String, u64)> = town
        .with_town_quietly(|t| {
            let mut st = t.conn().prepare_cached(
                "SELECT COUNT(*) FROM town_events WHERE event_type = 'pr_feedback_detected' \
                 AND json_extract(payload, '$.pr_url') = ?1 AND created_at > ?2",
            )?;
            let mut out = Vec::new();
            for (url, at) in merged.iter() {
                let n: i64 = st.query_row(rusqlite::params![url, EPOCH.plus_ms(*at as i64).0], |r| r.get(0))?;
                if n > 0 {
                    out.push((url.clone(), *at));
                }
            }
            Ok(out)
        })
        .unwrap_or_default();
    found
        .into_iter()
        .map(|(url, at)| {
            merged.remove(&url);
            v("feedback_only_for_open_prs", format!("PR {url} merged at {at} ms, and its feedback was recorded after"))
        })
        .collect()
}

/// Forge side: a source bead never has two open PRs that live MRs of the
/// town are polling; every PR the forge merged through its API belongs to an
/// MR the town knows (merges from outside are the world's own and excluded).
pub fn forge_side(town: &TownHost, forge: &Forge, prs: &[PrRecord], external: &BTreeSet<String>) -> Vec<Violation> {
    let mut out = Vec::new();
    let live: BTreeMap<String, String> = town
        .with_town_quietly(|t| {
            let mut st = t.conn().prepare_cached(
                "SELECT r.pr_url, b.bead_id FROM review_metadata r JOIN beads b ON b.bead_id = r.bead_id \
                 WHERE r.pr_url IS NOT NULL AND b.status IN ('open', 'in_progress', 'in_review')",
            )?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .unwrap_or_default();
    let known: BTreeSet<String> = town
        .with_town_quietly(|t| {
            let mut st = t.conn().prepare_cached("SELECT pr_url FROM review_metadata WHERE pr_url IS NOT NULL")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .unwrap_or_default();
    let mut open_by_source: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for pr in prs {
        let Ok(p) = forge.pull(OWNER, &pr.repo, pr.number) else { continue };
        if p.state == "open" && live.contains_key(&pr.url) {
            open_by_source.entry(pr.bead_id.as_str()).or_default().push(pr.number);
        }
        if p.merged && !external.contains(&pr.url) && !known.contains(&pr.url) {
            out.push(v("no_foreign_merge", format!("PR {} was merged but no MR of the town carries it", pr.url)));
        }
    }
    for (bead, numbers) in open_by_source {
        if numbers.len() > 1 {
            out.push(v("one_open_pr_per_source", format!("bead {bead} has open PRs {numbers:?} under live MRs")));
        }
    }
    out
}

/// Session side, any time: a session's initial prompt appears once.
///
/// Checked every simulated minute for every agent, most of them idle for
/// hours, so an agent whose session has not changed since its last check
/// is not read again (opening each database was a tenth of a seed's cost).
#[derive(Debug, Default)]
pub struct InitialPromptOnce {
    checked: BTreeMap<String, (Option<String>, session::Fingerprint)>,
}

impl InitialPromptOnce {
    pub fn check(&mut self, c: &Container) -> Vec<Violation> {
        let mut out = Vec::new();
        for s in c.statuses() {
            let key = c.session_key(&s.agent_id);
            if self.checked.get(&s.agent_id) == Some(&key) {
                continue;
            }
            self.checked.insert(s.agent_id.clone(), key);
            out.extend(duplicate_initial_prompt(&s.agent_id, &c.session_turns(&s.agent_id)));
        }
        out
    }
}

fn duplicate_initial_prompt(agent_id: &str, turns: &[session::Turn]) -> Option<Violation> {
    let first = turns.first().filter(|t| t.role == session::TurnRole::User)?;
    let n = turns.iter().filter(|t| t.role == session::TurnRole::User && t.text == first.text).count();
    (n > 1).then(|| {
        v(
            "no_duplicate_initial_prompt",
            format!("agent {agent_id} session {} holds its initial prompt {n} times", first.session_id),
        )
    })
}

fn snapshot_turns(bytes: &[u8], scratch: &Path, session_id: &str) -> Option<usize> {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).ok()?;
    let path = scratch.join("snap.db");
    session::install_snapshot(&path, bytes).ok()?;
    let db = SessionDb::open(&path).ok()?;
    db.turns(session_id).ok().map(|t| t.len())
}

/// What the world knows about a drain when it ended: which snapshot
/// uploads a fault touched, which ones the town stored, when the town and the
/// container could not reach each other, and whether the final registry sync
/// got through.
#[derive(Clone, Copy, Debug)]
pub struct DrainHistory<'a> {
    /// Agents whose upload a fault lost or held, or whose WAL a reader pinned.
    pub tampered: &'a BTreeSet<String>,
    /// Per agent, when the newest snapshot the town accepted from the
    /// draining container was read off its disk.
    pub stored_at: &'a BTreeMap<String, Timestamp>,
    /// Partitions and holds between town and container: (from, until; `None`
    /// while it lasts).
    pub link_cuts: &'a [(Timestamp, Option<Timestamp>)],
    /// When the container got its SIGTERM.
    pub began: Timestamp,
    /// The drain's last registry sync was answered 2xx.
    pub registry_synced: bool,
}

impl DrainHistory<'_> {
    fn cut_since(&self, t: Timestamp) -> bool {
        self.link_cuts.iter().any(|&(_, until)| until.is_none_or(|u| u >= t))
    }

    /// Could the snapshot that should follow a session's last turn (written
    /// at `last_turn`) have been kept from the town by the network? Only if no
    /// snapshot taken after that turn was stored and the link was cut at some
    /// point after it. Upstream never retries a failed upload (spec
    /// container §2.10 step 3), so the turns are lost by design. "After" is
    /// strict: a snapshot and the next session's first turn can share a
    /// millisecond, and then the snapshot is the older (evict-hold seed 2).
    fn cut_off(&self, agent_id: &str, last_turn: Timestamp) -> bool {
        let stored_since = self.stored_at.get(agent_id).is_some_and(|&taken| taken > last_turn);
        !stored_since && self.cut_since(last_turn)
    }

    /// Could the network have kept the drain's final registry sync from the
    /// town? Only if that sync failed and the link was cut during the drain;
    /// the container does not retry it (it exits next), as upstream.
    fn registry_cut_off(&self) -> bool {
        !self.registry_synced && self.cut_since(self.began)
    }
}

/// Session side, after a graceful drain finished: every session's history is
/// in the town's stored snapshot, and the registry is empty. A session is
/// exempt when nothing was ever owed to the town for it: it failed (see
/// below), or `history` shows a fault kept its last snapshot away; the
/// registry when `history` shows the network kept the last sync away.
pub fn after_drain(town: &TownHost, c: &Container, scratch: &Path, history: &DrainHistory<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    for s in c.statuses() {
        if history.tampered.contains(&s.agent_id) {
            continue;
        }
        // A session ended by a stream error (or a start that failed) is never
        // snapshotted, as upstream (spec container §2.4 "no DB snapshot on
        // this path", §11.2): its turns since the last snapshot stay on the
        // container's disk and go with it. Holding them against the stored
        // snapshot (an earlier session's) was the oracle's error, not the
        // container's (smoke seeds 56 and 188: "holds 0 of the session's 1 turns").
        if s.status == ProcessStatus::Failed {
            continue;
        }
        let turns = c.session_turns(&s.agent_id);
        let (Some(first), Some(last)) = (turns.first(), turns.last()) else { continue };
        let sid = first.session_id.clone();
        // The exit snapshot went out while a partition cut the town off
        // (smoke seed 90): the town never saw it and the container does not
        // retry, as upstream.
        if history.cut_off(&s.agent_id, last.at) {
            continue;
        }
        let stored = town.with_town_quietly(|t| t.session_snapshot(&s.agent_id)).ok().flatten();
        let Some((meta, bytes)) = stored else {
            out.push(v(
                "session_history_survives_drain",
                format!("agent {}: {} turns on disk, no snapshot stored after the drain", s.agent_id, turns.len()),
            ));
            continue;
        };
        let got = snapshot_turns(&bytes, scratch, &sid).unwrap_or(0);
        if got < turns.len() {
            out.push(v(
                "session_history_survives_drain",
                format!(
                    "agent {}: snapshot v{} holds {got} of the session's {} turns (last turn at {} ms)",
                    s.agent_id,
                    meta.version,
                    turns.len(),
                    last.at.ms()
                ),
            ));
        }
    }
    let registry = town.with_town_quietly(|t| t.container_registry()).unwrap_or_default();
    if !registry.is_empty() && !history.registry_cut_off() {
        let ids: Vec<&str> = registry.iter().map(|e| e.agent_id.as_str()).collect();
        out.push(v("registry_cleared_after_drain", format!("registry still lists {ids:?} after the drain")));
    }
    out
}

/// Liveness: `None` when settled, else what is stuck and which rule should move it.
pub fn unsettled(town: &TownHost, now: Timestamp) -> Option<Vec<String>> {
    let mut stuck = Vec::new();
    let _ = town.with_town_quietly(|t| {
        // Triage requests wait for a human or a triage agent (which the
        // world does not run): like an approval the scenario asked for,
        // they are not work the town must finish by itself.
        let waits_for_a_human = |b: &gastown::town::Bead| b.labels.iter().any(|l| l == labels::TRIAGE_REQUEST);
        for ty in [BeadType::Issue, BeadType::MergeRequest, BeadType::Convoy] {
            for b in t.beads_of(ty, None)?.into_iter().filter(|b| b.status.is_live() && !waits_for_a_human(b)) {
                let why = match (ty, b.status) {
                    (BeadType::Issue, BeadStatus::Open) if b.assignee_agent_bead_id.is_none() => {
                        "open and unassigned: Rule 1 should dispatch it (blocked? staged convoy? breaker open?)"
                    }
                    (BeadType::Issue, BeadStatus::Open) => {
                        "open with an assignee: Rule 1b should clear a stale assignee or Rule 2 dispatch"
                    }
                    (BeadType::Issue, BeadStatus::InProgress) => {
                        "in progress: its agent should finish, or A4/A5 / Rule 3 should reset it"
                    }
                    (BeadType::Issue, _) => {
                        "in review: its MR should land, or Rule 4 should recover a source without a live MR"
                    }
                    (BeadType::MergeRequest, BeadStatus::Open) => "MR open: review Rule 5 should pop it to a refinery",
                    (BeadType::MergeRequest, _) => {
                        "MR in progress: review Rule 1 should poll/merge its PR, or the refinery finish"
                    }
                    _ => "convoy open: progress/landing should close it once its members are terminal",
                };
                stuck.push(format!(
                    "{ty} {} {} assignee={} attempts={} idle {}s: {why}",
                    b.bead_id,
                    b.status,
                    b.assignee_agent_bead_id.as_deref().unwrap_or("-"),
                    b.dispatch_attempts,
                    now.since(b.updated_at) / 1000
                ));
            }
        }
        let pending = t.pending_event_count()?;
        if pending > 0 {
            stuck.push(format!("{pending} events pending: Phase 0 should drain them"));
        }
        for a in t.agents()? {
            if a.status == gastown::model::AgentStatus::Working
                && a.current_hook_bead_id.is_none()
                && a.role != gastown::model::AgentRole::Mayor
            {
                stuck.push(format!("agent {} working without a hook: A1 should idle it", a.agent_id));
            }
        }
        // Open triage requests count as active work (upstream dispatches a
        // triage agent for them; the world has none), so the alarm may stay
        // on the active cadence while one waits for a human.
        let triage_waiting = !t
            .beads_of(BeadType::Issue, Some(BeadStatus::Open))?
            .iter()
            .filter(|b| waits_for_a_human(b))
            .collect::<Vec<_>>()
            .is_empty();
        if let Some(r) = t.last_report() {
            if r.active_work && !triage_waiting {
                stuck.push("alarm still on the active cadence".into());
            }
        }
        Ok(())
    });
    (!stuck.is_empty()).then_some(stuck)
}

/// Agents and their hooks, for a failed liveness check's report.
pub fn agents_summary(town: &TownHost) -> Vec<String> {
    town.with_town_quietly(|t| {
        Ok(t.agents()?
            .into_iter()
            .map(|a| {
                format!(
                    "agent {} {} {} hook={} attempts={}",
                    a.agent_id,
                    a.role,
                    a.status,
                    a.current_hook_bead_id.as_deref().unwrap_or("-"),
                    a.dispatch_attempts
                )
            })
            .collect())
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! Each world-side oracle fires on a hand-built violating state (an
    //! oracle that cannot fail is a defect) and stays quiet on a clean one.
    use super::*;
    use gastown::container::fake_town::FakeTown;
    use gastown::container::{ContainerConfig, ScriptConfig, ScriptedRuntime};
    use gastown::forge::{ForgeConfig, RepoSettings};
    use gastown::net::{HttpClient, TokioConnector};
    use gastown::runtime::TownHostConfig;
    use gastown::time::ManualClock;
    use gastown::town::{Town, TownOptions};
    use gastown::wire::{RegistryEntry, StartAgentRequest};
    use std::sync::Arc;

    const T0: Timestamp = Timestamp(1_780_000_000_000);

    fn host() -> Arc<TownHost> {
        let clock = Arc::new(ManualClock::new(T0));
        let conn = gastown::store::open_in_memory().unwrap();
        let town = Town::open(conn, clock.clone(), TownOptions { town_id: "t".into(), seed: 1 }).unwrap();
        let http = HttpClient::new(Arc::new(TokioConnector), std::time::Duration::from_secs(1));
        let cfg =
            TownHostConfig { api_url: "http://t".into(), container_url: "http://c".into(), secret: b"s".to_vec() };
        TownHost::new(town, clock, http, cfg)
    }

    fn forge() -> Arc<Forge> {
        let f = Forge::in_memory(Arc::new(ManualClock::new(T0)), ForgeConfig::default());
        f.create_repo(OWNER, "app", &RepoSettings::default()).unwrap();
        f.push(OWNER, "app", "b1", false).unwrap();
        f.push(OWNER, "app", "b2", false).unwrap();
        f
    }

    fn record(f: &Forge, branch: &str, bead: &str) -> PrRecord {
        let p = f.create_pull(OWNER, "app", "t", branch, "main").unwrap();
        PrRecord {
            bead_id: bead.into(),
            agent_id: "a".into(),
            repo: "app".into(),
            number: p.number,
            url: f.pr_url(OWNER, "app", p.number),
            opened_ms: 0,
        }
    }

    /// A live MR row carrying `url`, written straight into the town.
    fn live_mr(h: &TownHost, id: &str, url: &str) {
        h.with_town_quietly(|t| {
            t.conn().execute(
                "INSERT INTO beads (bead_id, type, status, title, created_at, updated_at) \
                 VALUES (?1, 'merge_request', 'in_progress', 'mr', 0, 0)",
                [id],
            )?;
            t.conn()
                .execute("INSERT INTO review_metadata (bead_id, branch, pr_url) VALUES (?1, 'b', ?2)", [id, url])?;
            Ok(())
        })
        .unwrap();
    }

    fn names(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn one_open_pr_per_source_fires_on_two_live_prs_of_one_bead() {
        let (h, f) = (host(), forge());
        let prs = vec![record(&f, "b1", "src"), record(&f, "b2", "src")];
        live_mr(&h, "mr1", &prs[0].url);
        assert!(forge_side(&h, &f, &prs, &BTreeSet::new()).is_empty(), "one live PR is fine");
        live_mr(&h, "mr2", &prs[1].url);
        assert_eq!(names(&forge_side(&h, &f, &prs, &BTreeSet::new())), ["one_open_pr_per_source"]);
    }

    #[test]
    fn no_foreign_merge_fires_on_a_merge_no_mr_carries() {
        let (h, f) = (host(), forge());
        let prs = vec![record(&f, "b1", "src")];
        f.merge_from_outside(OWNER, "app", prs[0].number).unwrap();
        assert_eq!(names(&forge_side(&h, &f, &prs, &BTreeSet::new())), ["no_foreign_merge"]);
        let external: BTreeSet<String> = [prs[0].url.clone()].into();
        assert!(forge_side(&h, &f, &prs, &external).is_empty(), "the world's own outside merges are exempt");
    }

    #[test]
    fn feedback_recorded_after_a_mid_read_merge_is_named_once() {
        let h = host();
        let url = "https://github.com/o/app/pull/7";
        let feedback_at = |ms: i64| {
            h.with_town_quietly(|t| {
                t.conn().execute(
                    "INSERT INTO town_events (event_id, event_type, payload, created_at) \
                     VALUES (?1, 'pr_feedback_detected', json_object('pr_url', ?2), ?3)",
                    rusqlite::params![format!("e{ms}"), url, EPOCH.plus_ms(ms).0],
                )?;
                Ok(())
            })
            .unwrap();
        };
        let mut merged: BTreeMap<String, u64> = [(url.to_owned(), 60_000)].into();
        feedback_at(59_000);
        assert!(no_feedback_after_merge(&h, &mut merged).is_empty(), "feedback from before the merge is fine");
        feedback_at(61_000);
        assert_eq!(names(&no_feedback_after_merge(&h, &mut merged)), ["feedback_only_for_open_prs"]);
        assert!(no_feedback_after_merge(&h, &mut merged).is_empty(), "named once");
    }

    #[test]
    fn liveness_reports_what_is_stuck_and_is_quiet_when_settled() {
        let h = host();
        assert!(unsettled(&h, T0).is_none(), "an empty town is settled");
        live_mr(&h, "mr1", "https://github.com/acme/app/pull/1");
        let stuck = unsettled(&h, T0.plus_ms(60_000)).unwrap();
        assert!(stuck[0].contains("mr1") && stuck[0].contains("review Rule 1"), "{stuck:?}");
    }

    #[tokio::test]
    async fn registry_cleared_after_drain_fires_on_a_leftover_entry() {
        let h = host();
        let dir = tempfile::tempdir().unwrap();
        let c = Container::new(
            ContainerConfig::new(dir.path().join("disk"), "c1"),
            Arc::new(ManualClock::new(T0)),
            FakeTown::new(),
            Arc::new(ScriptedRuntime::new(ScriptConfig::default())),
        );
        assert!(after_drain(&h, &c, &dir.path().join("scratch"), &no_faults()).is_empty());
        let request = polecat("p1");
        h.with_town_quietly(|t| {
            t.set_container_registry(&[RegistryEntry { agent_id: "p1".into(), request, workdir: "/w".into() }])
        })
        .unwrap();
        let scratch = dir.path().join("scratch");
        assert_eq!(names(&after_drain(&h, &c, &scratch, &no_faults())), ["registry_cleared_after_drain"]);
        // The last sync failed, but the link was up all along: still a bug.
        let unsynced = DrainHistory { registry_synced: false, ..no_faults() };
        assert_eq!(names(&after_drain(&h, &c, &scratch, &unsynced)), ["registry_cleared_after_drain"]);
        // A cut that healed before the drain began explains nothing.
        let healed = [(T0.minus_ms(60_000), Some(T0.minus_ms(1)))];
        let before = DrainHistory { link_cuts: &healed, ..unsynced };
        assert_eq!(names(&after_drain(&h, &c, &scratch, &before)), ["registry_cleared_after_drain"]);
        // Evict-hold seed 2: a hold began during the drain and its last sync
        // timed out in it; the container exits without retrying, as upstream.
        let held = [(T0.plus_ms(137_000), None)];
        let cut = DrainHistory { link_cuts: &held, ..unsynced };
        assert!(after_drain(&h, &c, &scratch, &cut).is_empty());
        // The same hold with a sync that got through: the town dropped it.
        let synced = DrainHistory { registry_synced: true, ..cut };
        assert_eq!(names(&after_drain(&h, &c, &scratch, &synced)), ["registry_cleared_after_drain"]);
    }

    static NO_TAMPERING: BTreeSet<String> = BTreeSet::new();
    static NOTHING_STORED: BTreeMap<String, Timestamp> = BTreeMap::new();

    fn no_faults() -> DrainHistory<'static> {
        DrainHistory {
            tampered: &NO_TAMPERING,
            stored_at: &NOTHING_STORED,
            link_cuts: &[],
            began: T0,
            registry_synced: true,
        }
    }

    fn polecat(id: &str) -> StartAgentRequest {
        serde_json::from_value(serde_json::json!({
            "agent_id": id, "bead_id": "b", "rig_id": "r", "role": "polecat", "name": "n", "identity": "i",
            "prompt": "p", "branch": null, "target_branch": null, "start_point": null, "pr_url": null,
            "town_id": "t", "api_url": "http://t", "agent_token": "x", "container_token": "y"
        }))
        .unwrap()
    }

    /// A container (its own fake town, so no upload reaches `h`) whose
    /// polecat `p1` ran one session to its end: a crash in its first turn,
    /// or 30 s of work and the 120 s idle exit.
    async fn ended_session(dir: &Path, crash: bool) -> Container {
        let script = ScriptConfig {
            start_ms: (0, 0),
            work_ms: (30_000, 30_000),
            p_crash: if crash { 1.0 } else { 0.0 },
            ..ScriptConfig::default()
        };
        let c = Container::new(
            ContainerConfig::new(dir.join("disk"), "c1"),
            Arc::new(ManualClock::new(T0)),
            FakeTown::new(),
            Arc::new(ScriptedRuntime::new(script)),
        );
        c.start(polecat("p1")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(200)).await;
        c
    }

    /// The town holds a snapshot from before the session: a session
    /// database without a single turn.
    fn store_an_older_snapshot(h: &TownHost, dir: &Path) {
        let path = dir.join("older").join("session.db");
        SessionDb::open(&path).unwrap();
        let session::SnapshotRead::Bytes(bytes) = session::read_for_snapshot(&path).unwrap() else { panic!() };
        h.with_town_quietly(|t| t.put_session_snapshot("p1", 1, &bytes)).unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_duplicate_initial_prompt_is_found_once_when_the_session_changes() {
        let dir = tempfile::tempdir().unwrap();
        let c = ended_session(dir.path(), false).await;
        let mut oracle = InitialPromptOnce::default();
        assert!(oracle.check(&c).is_empty());
        let first = c.session_turns("p1")[0].clone();
        assert_eq!(first.role, session::TurnRole::User);
        let db = SessionDb::open(&session::db_path(&dir.path().join("disk"), "p1")).unwrap();
        db.append(&first.session_id, session::TurnRole::User, &first.text, first.at.plus_ms(1)).unwrap();
        let v = oracle.check(&c);
        assert_eq!(names(&v), ["no_duplicate_initial_prompt"], "{v:?}");
        assert!(v[0].detail.contains("2 times"), "{v:?}");
        // The same state is not reported again; a further change is read afresh.
        assert!(oracle.check(&c).is_empty());
        db.append(&first.session_id, session::TurnRole::User, &first.text, first.at.plus_ms(2)).unwrap();
        assert!(oracle.check(&c)[0].detail.contains("3 times"));
    }

    #[tokio::test(start_paused = true)]
    async fn session_history_ignores_a_session_ended_by_a_stream_error() {
        // Smoke seeds 56 and 188: the session crashed in its first turn, so
        // (as upstream) nothing snapshotted it; the stored copy is older.
        let (h, dir) = (host(), tempfile::tempdir().unwrap());
        let c = ended_session(dir.path(), true).await;
        assert_eq!(c.status("p1").unwrap().status, ProcessStatus::Failed);
        assert_eq!(c.session_turns("p1").len(), 1, "the initial prompt only");
        store_an_older_snapshot(&h, dir.path());
        assert!(after_drain(&h, &c, &dir.path().join("scratch"), &no_faults()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn session_history_exempts_an_exit_snapshot_a_partition_kept_from_the_town() {
        let (h, dir) = (host(), tempfile::tempdir().unwrap());
        let c = ended_session(dir.path(), false).await;
        let st = c.status("p1").unwrap();
        assert_eq!((st.status, st.exit_reason.as_deref()), (ProcessStatus::Exited, Some("completed")));
        store_an_older_snapshot(&h, dir.path());
        let scratch = dir.path().join("scratch");
        let last_turn = c.session_turns("p1").last().unwrap().at;
        // Nothing explains the missing turns: the oracle fires.
        let v = after_drain(&h, &c, &scratch, &no_faults());
        assert_eq!(names(&v), ["session_history_survives_drain"], "{v:?}");
        // A cut that ended before the last turn explains nothing either.
        let before = [(last_turn.minus_ms(60_000), Some(last_turn.minus_ms(1)))];
        let uploads = DrainHistory { link_cuts: &before, ..no_faults() };
        assert_eq!(names(&after_drain(&h, &c, &scratch, &uploads)), ["session_history_survives_drain"]);
        // Smoke seed 90: the link was cut after the last turn and nothing
        // arrived since: the exit snapshot never reached the town.
        let cut = [(last_turn.plus_ms(1_000), Some(last_turn.plus_ms(200_000)))];
        let uploads = DrainHistory { link_cuts: &cut, ..no_faults() };
        assert!(after_drain(&h, &c, &scratch, &uploads).is_empty());
        // But an upload the town stored after the last turn must hold it all
        // (an upload of the main file alone, bug (a), is still caught).
        let stored: BTreeMap<String, Timestamp> = [("p1".to_owned(), last_turn.plus_ms(500))].into();
        let uploads = DrainHistory { stored_at: &stored, link_cuts: &cut, ..no_faults() };
        assert_eq!(names(&after_drain(&h, &c, &scratch, &uploads)), ["session_history_survives_drain"]);
        // Evict-hold seed 2: the stored snapshot was read in the same
        // millisecond as the turn, before it; it need not hold it.
        let same_ms: BTreeMap<String, Timestamp> = [("p1".to_owned(), last_turn)].into();
        let uploads = DrainHistory { stored_at: &same_ms, link_cuts: &cut, ..no_faults() };
        assert!(after_drain(&h, &c, &scratch, &uploads).is_empty());
    }
}
