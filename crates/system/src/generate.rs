//! Deterministic generated towns for benchmarks and load tests.
//!
//! A shape says how many rigs, agents and beads of each kind a town holds;
//! [`build`] writes them straight into the tables (seconds even for 100,000
//! history beads) in a steady state a real town passes through: polecats
//! working on hooked issues with fresh heartbeats, PR reviews being polled,
//! convoy members waiting on blockers, a few beads ready for dispatch, some
//! pending events, and closed history with its audit trail.

use crate::error::Result;
use crate::ids::IdGen;
use crate::model::TownConfig;
use crate::store;
use crate::time::{ManualClock, Timestamp, MINUTE_MS, SECOND_MS};
use crate::town::{Town, TownOptions};
use rusqlite::{params, Connection};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// The instant generated towns are built at.
pub const GEN_NOW: Timestamp = Timestamp(1_780_000_000_000);

#[derive(Clone, Debug, Serialize)]
pub struct TownShape {
    pub name: &'static str,
    pub rigs: usize,
    /// Polecats working on a hooked in-progress issue.
    pub working_polecats: usize,
    pub idle_polecats: usize,
    /// In-review issues, each with one in-progress PR MR being polled.
    pub reviews: usize,
    /// Open convoys; their members wait behind blockers.
    pub convoys: usize,
    pub convoy_members: usize,
    /// Open, unassigned, unblocked issues: dispatched by the next tick.
    pub ready: usize,
    /// Closed issues, each with its merged MR (two beads per unit).
    pub closed_pairs: usize,
    pub pending_events: usize,
    /// Extra closed beads of history with their bead events and processed town events.
    pub history: usize,
}

impl TownShape {
    /// 1 rig, 5 agents, 50 beads.
    pub fn s() -> Self {
        TownShape {
            name: "S",
            rigs: 1,
            working_polecats: 3,
            idle_polecats: 0,
            reviews: 5,
            convoys: 1,
            convoy_members: 3,
            ready: 2,
            closed_pairs: 15,
            pending_events: 5,
            history: 0,
        }
    }

    /// 4 rigs, 50 agents, 1,000 beads of which 300 live, 100 live MRs, 10 convoys, 50 pending events.
    pub fn m() -> Self {
        TownShape {
            name: "M",
            rigs: 4,
            working_polecats: 40,
            idle_polecats: 5,
            reviews: 100,
            convoys: 10,
            convoy_members: 45,
            ready: 5,
            closed_pairs: 350,
            pending_events: 50,
            history: 0,
        }
    }

    /// M plus 100,000 closed beads of history.
    pub fn m_history() -> Self {
        TownShape { name: "M+history", history: 100_000, ..Self::m() }
    }

    /// 20 rigs, 200 agents, 5,000 live beads.
    pub fn l() -> Self {
        TownShape {
            name: "L",
            rigs: 20,
            working_polecats: 175,
            idle_polecats: 4,
            reviews: 1_000,
            convoys: 100,
            convoy_members: 2_705,
            ready: 20,
            closed_pairs: 1_000,
            pending_events: 200,
            history: 0,
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "s" => Some(Self::s()),
            "m" => Some(Self::m()),
            "m+history" | "mh" | "m-history" => Some(Self::m_history()),
            "l" => Some(Self::l()),
            _ => None,
        }
    }

    /// Agents: polecats, one refinery per rig, the mayor.
    pub fn agents(&self) -> usize {
        self.working_polecats + self.idle_polecats + self.rigs + 1
    }

    /// Live issue, MR and convoy beads.
    pub fn live_beads(&self) -> usize {
        self.working_polecats + 2 * self.reviews + self.convoys + self.convoy_members + self.ready
    }
}

/// Where a generated town's database lives.
pub enum Storage<'a> {
    Memory,
    /// A WAL-mode database file (created fresh).
    WalFile(&'a Path),
}

/// Build a town of `shape` at [`GEN_NOW`]. Returns the town and its clock.
pub fn build(shape: &TownShape, storage: Storage<'_>, seed: u64) -> Result<(Town, ManualClock)> {
    let conn = match storage {
        Storage::Memory => store::open_in_memory()?,
        Storage::WalFile(p) => {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
            store::open_file(p)?
        }
    };
    let tx = conn.unchecked_transaction()?;
    Writer { conn: &tx, ids: IdGen::from_seed(seed), seq: 0, working: Vec::new() }.write(shape)?;
    tx.commit()?;
    // No ANALYZE: with the bundled SQLite's STAT4 statistics, every cached
    // statement with a bound range parameter is re-prepared when the value
    // changes, which is most of a tick's queries (time windows).
    let clock = ManualClock::new(GEN_NOW);
    let mut town = Town::open(conn, Arc::new(clock.clone()), TownOptions { town_id: format!("gen-{seed}"), seed })?;
    town.set_config(TownConfig::new_town_defaults())?;
    Ok((town, clock))
}

struct Writer<'a> {
    conn: &'a Connection,
    ids: IdGen,
    seq: i64,
    working: Vec<String>,
}

impl Writer<'_> {
    /// A creation time strictly increasing with insertion, hours before now.
    fn created(&mut self) -> i64 {
        self.seq += 1;
        GEN_NOW.0 - 6 * 3_600_000 + self.seq
    }

    fn bead(
        &mut self,
        ty: &str,
        status: &str,
        rig: Option<&str>,
        title: &str,
        labels: &str,
        updated_ago: i64,
    ) -> Result<String> {
        let id = self.ids.uuid();
        let created = self.created();
        let closed_at = (status == "closed").then_some(GEN_NOW.0 - updated_ago);
        self.conn
            .prepare_cached(
                "INSERT INTO beads (bead_id, type, status, title, rig_id, labels, created_by, created_at, updated_at, closed_at, \
                 dispatch_attempts, last_dispatch_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'user', ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                id,
                ty,
                status,
                title,
                rig,
                labels,
                created,
                GEN_NOW.0 - updated_ago,
                closed_at,
                i64::from(status != "open"),
                (status != "open").then_some(GEN_NOW.0 - 10 * MINUTE_MS)
            ])?;
        self.audit(&id, status)?;
        Ok(id)
    }

    /// The audit trail a bead of this status would have.
    fn audit(&mut self, bead: &str, status: &str) -> Result<()> {
        let steps: &[&str] = match status {
            "open" => &["created"],
            "in_progress" => &["created", "status_changed"],
            _ => &["created", "status_changed", "status_changed"],
        };
        for (i, kind) in steps.iter().enumerate() {
            let id = self.ids.uuid();
            self.conn
                .prepare_cached(
                    "INSERT INTO bead_events (bead_event_id, bead_id, event_type, new_value, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![id, bead, kind, status, GEN_NOW.0 - 3_600_000 + i as i64])?;
        }
        Ok(())
    }

    fn agent(&mut self, role: &str, rig: Option<&str>, name: &str, status: &str, hook: Option<&str>) -> Result<String> {
        let id = self.bead("agent", "open", rig, name, "[]", 3_600_000)?;
        let active = status == "working";
        self.conn
            .prepare_cached(
                "INSERT INTO agent_metadata (bead_id, role, name, rig_id, created_at, identity, status, current_hook_bead_id, \
                 last_activity_at, last_dispatched_at, last_event_at) VALUES (?1, ?2, ?9, ?10, ?11, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                id,
                role,
                format!("{name}-{role}-{id}"),
                status,
                hook,
                GEN_NOW.0 - 10 * SECOND_MS,
                active.then_some(GEN_NOW.0 - 10 * MINUTE_MS),
                active.then_some(GEN_NOW.0 - 60 * SECOND_MS),
                name,
                rig,
                GEN_NOW.0 - 6 * 3_600_000
            ])?;
        if let Some(h) = hook {
            self.conn
                .prepare_cached("UPDATE beads SET assignee_agent_bead_id = ?2 WHERE bead_id = ?1")?
                .execute([h, &id])?;
        }
        Ok(id)
    }

    fn edge(&self, from: &str, to: &str, kind: &str) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO bead_dependencies (bead_id, depends_on_bead_id, dependency_type) VALUES (?1, ?2, ?3)")?
            .execute([from, to, kind])?;
        Ok(())
    }

    fn mr(&mut self, status: &str, rig: &str, source: &str, n: usize, poll_ago: i64) -> Result<String> {
        let id = self.bead(
            "merge_request",
            status,
            Some(rig),
            &format!("Review: gt/b{n}"),
            "[\"gt:merge-request\"]",
            poll_ago,
        )?;
        self.conn
            .prepare_cached(
                "INSERT INTO review_metadata (bead_id, branch, target_branch, pr_url, last_poll_at) VALUES (?1, ?2, 'main', ?3, ?4)",
            )?
            .execute(params![id, format!("gt/b{n}"), format!("https://github.com/acme/r{rig}/pull/{n}"), GEN_NOW.0 - poll_ago])?;
        self.edge(&id, source, "tracks")?;
        Ok(id)
    }

    fn write(&mut self, shape: &TownShape) -> Result<()> {
        let rigs: Vec<String> = (0..shape.rigs).map(|i| format!("rig-{i:02}")).collect();
        for (i, r) in rigs.iter().enumerate() {
            self.conn
                .prepare_cached("INSERT INTO rigs (id, name, git_url, default_branch, config, created_at) VALUES (?1, ?2, ?3, 'main', '{}', ?4)")?
                .execute(params![r, format!("repo{i}"), format!("https://github.com/acme/r{r}.git"), GEN_NOW.0 - 86_400_000])?;
        }
        let rig = |i: usize| rigs[i % rigs.len()].clone();
        self.agent("mayor", None, "mayor", "waiting", None)?;
        for i in 0..shape.working_polecats {
            let bead = self.bead("issue", "in_progress", Some(&rig(i)), &format!("work {i}"), "[]", MINUTE_MS)?;
            let agent = self.agent("polecat", Some(&rig(i)), &format!("Polecat-{i}"), "working", Some(&bead))?;
            self.working.push(agent);
        }
        for i in 0..shape.idle_polecats {
            self.agent("polecat", Some(&rig(i)), &format!("Idle-{i}"), "idle", None)?;
        }
        let mut in_review = Vec::with_capacity(shape.reviews);
        for i in 0..shape.reviews {
            let src = self.bead("issue", "in_review", Some(&rig(i)), &format!("reviewed {i}"), "[]", 2 * MINUTE_MS)?;
            // Polls spread over the minute, so each tick polls a slice of them.
            self.mr("in_progress", &rig(i), &src, i, (i as i64 * 7 * SECOND_MS) % (70 * SECOND_MS))?;
            in_review.push(src);
        }
        for r in &rigs {
            self.agent("refinery", Some(r), "refinery", "idle", None)?;
        }
        self.write_convoys(shape, &rig, &in_review)?;
        for i in 0..shape.ready {
            self.bead("issue", "open", Some(&rig(i)), &format!("ready {i}"), "[]", 0)?;
        }
        for i in 0..shape.closed_pairs {
            let src = self.bead("issue", "closed", Some(&rig(i)), &format!("done {i}"), "[]", 3 * 3_600_000)?;
            self.mr("closed", &rig(i), &src, 100_000 + i, 3 * 3_600_000)?;
        }
        self.write_events(shape)?;
        for i in 0..shape.history {
            self.bead("issue", "closed", Some(&rig(i)), &format!("history {i}"), "[]", 5 * 86_400_000)?;
        }
        Ok(())
    }

    /// Convoys whose members form chains behind a bead still in review, so
    /// they wait (as members of a running convoy do) without dispatching.
    fn write_convoys(&mut self, shape: &TownShape, rig: &dyn Fn(usize) -> String, in_review: &[String]) -> Result<()> {
        if shape.convoys == 0 {
            return Ok(());
        }
        let per = shape.convoy_members / shape.convoys;
        let mut left = shape.convoy_members;
        for c in 0..shape.convoys {
            let convoy = self.bead("convoy", "open", None, &format!("convoy {c}"), "[\"gt:convoy\"]", MINUTE_MS)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO convoy_metadata (bead_id, total_beads, feature_branch, merge_mode) VALUES (?1, ?2, ?3, 'review-then-land')",
                )?
                .execute(params![convoy, per as i64, format!("convoy/c{c}/{}/head", &convoy[..8])])?;
            let n = if c + 1 == shape.convoys { left } else { per.min(left) };
            left -= n;
            let mut prev = in_review.get(c % in_review.len().max(1)).cloned();
            for m in 0..n {
                let member =
                    self.bead("issue", "open", Some(&rig(c)), &format!("convoy {c} task {m}"), "[]", MINUTE_MS)?;
                self.edge(&member, &convoy, "tracks")?;
                if let Some(p) = &prev {
                    self.edge(&member, p, "blocks")?;
                }
                prev = Some(member);
            }
        }
        Ok(())
    }

    /// Pending events (new beads, container reports) and, for history, processed ones.
    fn write_events(&mut self, shape: &TownShape) -> Result<()> {
        let working = std::mem::take(&mut self.working);
        let mut insert =
            |ty: &str, agent: Option<&str>, payload: &str, processed: Option<i64>, at: i64| -> Result<()> {
                let id = self.ids.uuid();
                self.conn
                    .prepare_cached(
                        "INSERT INTO town_events (event_id, event_type, agent_id, payload, created_at, processed_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![id, ty, agent, payload, at, processed])?;
                Ok(())
            };
        for i in 0..shape.pending_events {
            let at = GEN_NOW.0 - i as i64;
            match working.get(i % working.len().max(1)).filter(|_| i % 2 == 1) {
                Some(agent) => insert("container_status", Some(agent), "{\"status\":\"unknown\"}", None, at)?,
                None => insert("bead_created", None, "{\"bead_type\":\"issue\"}", None, at)?,
            }
        }
        for i in 0..shape.history {
            let at = GEN_NOW.0 - 86_400_000 + (i as i64 % 3_600_000);
            insert("bead_created", None, "{}", Some(at + 5_000), at)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BeadStatus;

    #[test]
    fn s_shape_has_the_promised_sizes_and_ticks_cleanly() {
        let shape = TownShape::s();
        let (mut town, _clock) = build(&shape, Storage::Memory, 1).unwrap();
        let total: i64 =
            town.conn().query_row("SELECT COUNT(*) FROM beads WHERE type != 'agent'", [], |r| r.get(0)).unwrap();
        let live: i64 = town
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM beads WHERE type != 'agent' AND status IN ('open','in_progress','in_review')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live as usize, shape.live_beads());
        assert_eq!(total as usize, shape.live_beads() + 2 * shape.closed_pairs);
        assert_eq!(town.agents().unwrap().len(), shape.agents());
        let before = town.status_counts().unwrap();
        let report = town.plan_tick().unwrap();
        assert_eq!(report.events.applied.len(), shape.pending_events);
        assert!(report.action_errors.is_empty(), "{:?}", report.action_errors);
        let dispatches = report.actions.iter().filter(|a| a.kind() == "dispatch_agent").count();
        assert_eq!(dispatches, shape.ready, "only the ready beads are dispatched: {:?}", report.actions_by_type);
        assert_eq!(format!("{:?}", town.status_counts().unwrap()), format!("{before:?}"), "plan_tick rolls back");
        let mut checker = crate::town::invariants::Checker::new();
        let cfg = town.config().clone();
        assert!(checker.check(town.conn(), &cfg, GEN_NOW).unwrap().is_empty());
        assert_eq!(
            town.beads_of(crate::model::BeadType::Issue, Some(BeadStatus::Open)).unwrap().len(),
            shape.ready + shape.convoy_members
        );
    }

    /// Re-prepared statements cost more than everything else in a tick once
    /// they start (see ARCHITECTURE.md): no statement may re-prepare while a
    /// town ticks.
    #[test]
    fn ticking_never_reprepares_a_statement() {
        let (mut town, _clock) = build(&TownShape::s(), Storage::Memory, 3).unwrap();
        for _ in 0..5 {
            town.plan_tick().unwrap();
            town.dry_run(|cx, cfg, _| crate::town::snapshot::TownSnapshot::load(cx.conn, cx.now, false, cfg)).unwrap();
        }
        let mut offenders = Vec::new();
        // SAFETY: the connection is open and owned by `town` for the whole loop;
        // sqlite3_next_stmt/stmt_status/sql only read statement metadata.
        unsafe {
            use rusqlite::ffi;
            let db = town.conn().handle();
            let mut st = ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
            while !st.is_null() {
                if ffi::sqlite3_stmt_status(st, ffi::SQLITE_STMTSTATUS_REPREPARE, 0) > 0 {
                    offenders.push(std::ffi::CStr::from_ptr(ffi::sqlite3_sql(st)).to_string_lossy().into_owned());
                }
                st = ffi::sqlite3_next_stmt(db, st);
            }
        }
        assert!(offenders.is_empty(), "statements re-prepared while ticking: {offenders:#?}");
    }

    #[test]
    fn m_shape_matches_the_design_targets() {
        let m = TownShape::m();
        assert_eq!(m.agents(), 50);
        assert_eq!(m.live_beads(), 300);
        assert_eq!(m.live_beads() + 2 * m.closed_pairs, 1_000);
        assert_eq!(m.reviews, 100);
        let l = TownShape::l();
        assert_eq!(l.agents(), 200);
        assert_eq!(l.live_beads(), 5_000);
    }
}
