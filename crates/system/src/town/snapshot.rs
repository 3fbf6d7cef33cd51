//! The reconciler's input: the live part of the town, loaded with a handful
//! of bulk, indexed queries. Terminal history is read only where a live row
//! points at it (a hooked bead, a convoy member, an MR of an in-review issue),
//! so the cost of a snapshot follows live work, not the size of the history.

use super::reconciler::constants::{BREAKER_WINDOW_MS, DEFAULT_MAX_DISPATCH_ATTEMPTS, NUDGE_DEDUP_WINDOW_MS};
use super::state;
use crate::defects::{self, Defect};
use crate::error::Result;
use crate::model::{
    AgentRole, AgentStatus, BeadStatus, BeadType, LabelSet, MergeMode, NudgeTier, RigSettings, TownConfig,
};
use crate::time::Timestamp;
use rusqlite::Connection;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct SnapBead {
    pub id: String,
    pub bead_type: BeadType,
    pub status: BeadStatus,
    pub rig_id: Option<String>,
    pub assignee: Option<String>,
    pub labels: LabelSet,
    pub dispatch_attempts: u32,
    pub last_dispatch_attempt_at: Option<Timestamp>,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Has a blocker that is not terminal (derived from the edges).
    pub blocked: bool,
    /// Tracks a staged convoy (derived from the edges).
    pub in_staged_convoy: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SnapReview {
    pub pr_url: Option<String>,
    pub babysit: bool,
    pub last_poll_at: Option<Timestamp>,
    pub auto_merge_pending: bool,
    pub awaiting_approval: bool,
    pub convoy_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SnapConvoy {
    pub id: String,
    pub merge_mode: MergeMode,
    pub feature_branch: Option<String>,
    pub staged: bool,
    pub ready_to_land: bool,
    pub landing_mr_attempts: u32,
    pub last_landing_mr_attempt_at: Option<Timestamp>,
    pub closed_beads: u32,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct SnapAgent {
    pub id: String,
    pub role: AgentRole,
    pub rig_id: Option<String>,
    pub status: AgentStatus,
    pub hook: Option<String>,
    pub dispatch_attempts: u32,
    pub last_activity_at: Option<Timestamp>,
    pub last_dispatched_at: Option<Timestamp>,
    pub last_event_at: Option<Timestamp>,
    pub active_tools_empty: bool,
    pub stalled_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

impl SnapAgent {
    /// When GUPP last saw this agent do something: its SDK activity, else its
    /// dispatch, else its heartbeat; `None` (GUPP skips, A1's case) when it
    /// never heart-beat. Upstream fell back to the heartbeat right after a
    /// dispatch (which clears the SDK watermark), so a session that hung at
    /// once but kept heart-beating was never nudged or stopped; a hung refinery
    /// then blocked its rig's review queue for good (simulator seed 9).
    pub fn gupp_activity(&self) -> Option<Timestamp> {
        self.last_activity_at?;
        self.last_event_at.or(self.last_dispatched_at).or(self.last_activity_at)
    }
}

#[derive(Clone, Debug)]
pub struct SnapRig {
    pub default_branch: String,
    pub git_url: String,
    pub settings: RigSettings,
}

#[derive(Clone, Debug)]
pub struct TownSnapshot {
    pub now: Timestamp,
    pub draining: bool,
    pub config: TownConfig,
    pub rigs: BTreeMap<String, SnapRig>,
    /// Live issue / MR / convoy beads in creation order (the order rules visit
    /// them), then terminal beads a live row refers to. Rules iterate this
    /// vector; keyed lookups go through `index` (string-keyed map lookups on
    /// every visit dominated the reconciler at 5,000 live beads).
    pub beads: Vec<SnapBead>,
    pub index: BTreeMap<String, usize>,
    pub reviews: BTreeMap<String, SnapReview>,
    /// Open convoys.
    pub convoys: BTreeMap<String, SnapConvoy>,
    pub agents: Vec<SnapAgent>,
    /// Live bead → its blockers that are not terminal.
    pub unresolved_blockers: BTreeMap<String, Vec<String>>,
    /// Live bead → what it tracks (issue → convoy, MR → source).
    pub tracks: BTreeMap<String, Vec<String>>,
    /// Bead → the beads tracking it (convoy → members and landing MRs; issue → MRs).
    pub tracked_by: BTreeMap<String, Vec<String>>,
    /// (agent, tier) pairs that got a reconciler nudge inside the dedup window.
    pub recent_nudges: BTreeSet<(String, NudgeTier)>,
    /// Recent failed dispatches, for the circuit breaker.
    pub breaker_failures: u32,
}

/// The predicate of the partial index `beads_live`. SQLite uses a partial index
/// only when the query repeats its predicate, so every live-row query says it
/// literally (and narrows further with a second term).
pub const LIVE: &str = "'open', 'in_progress', 'in_review'";

const SNAP_COLS: &str = "bead_id, type, status, rig_id, assignee_agent_bead_id, labels, dispatch_attempts, \
    last_dispatch_attempt_at, created_by, created_at, updated_at";

fn prefixed(alias: &str) -> String {
    SNAP_COLS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

fn snap_bead(r: &rusqlite::Row<'_>, off: usize) -> rusqlite::Result<SnapBead> {
    let labels: String = r.get(off + 5)?;
    Ok(SnapBead {
        id: r.get(off)?,
        bead_type: r.get(off + 1)?,
        status: r.get(off + 2)?,
        rig_id: r.get(off + 3)?,
        assignee: r.get(off + 4)?,
        labels: LabelSet::from_json(&labels),
        dispatch_attempts: r.get(off + 6)?,
        last_dispatch_attempt_at: r.get::<_, Option<i64>>(off + 7)?.map(Timestamp),
        created_by: r.get(off + 8)?,
        created_at: Timestamp(r.get(off + 9)?),
        updated_at: Timestamp(r.get(off + 10)?),
        blocked: false,
        in_staged_convoy: false,
    })
}

fn push_unique(map: &mut BTreeMap<String, Vec<String>>, key: String, value: String) {
    let v = map.entry(key).or_default();
    if !v.contains(&value) {
        v.push(value);
    }
}

impl TownSnapshot {
    pub fn load(conn: &Connection, now: Timestamp, draining: bool, config: &TownConfig) -> Result<TownSnapshot> {
        let mut s = TownSnapshot::empty(now, draining, config);
        for rig in state::list_rigs(conn)? {
            let settings = RigSettings::resolve(config, &rig.config, DEFAULT_MAX_DISPATCH_ATTEMPTS);
            s.rigs.insert(rig.id, SnapRig { default_branch: rig.default_branch, git_url: rig.git_url, settings });
        }
        s.load_live_beads(conn)?;
        s.load_agents(conn)?;
        s.load_edges(conn)?;
        s.load_related(conn)?;
        s.load_reviews(conn)?;
        s.load_convoys(conn)?;
        s.load_nudges_and_breaker(conn)?;
        s.derive_flags();
        Ok(s)
    }

    fn load_live_beads(&mut self, conn: &Connection) -> Result<()> {
        let sql = format!(
            "SELECT {SNAP_COLS} FROM beads WHERE type IN ('issue', 'merge_request', 'convoy') \
             AND status IN ('open', 'in_progress', 'in_review') ORDER BY created_at, bead_id"
        );
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            self.push_bead(snap_bead(r, 0)?);
        }
        Ok(())
    }

    fn load_agents(&mut self, conn: &Connection) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT bead_id, role, rig_id, status, current_hook_bead_id, dispatch_attempts, \
             last_activity_at, last_dispatched_at, last_event_at, active_tools, stalled_at, created_at \
             FROM agent_metadata ORDER BY created_at, bead_id",
        )?;
        let ts = |v: Option<i64>| v.map(Timestamp);
        let rows = st.query_map([], |r| {
            let tools: String = r.get(9)?;
            Ok(SnapAgent {
                id: r.get(0)?,
                role: r.get(1)?,
                rig_id: r.get(2)?,
                status: r.get(3)?,
                hook: r.get(4)?,
                dispatch_attempts: r.get(5)?,
                last_activity_at: ts(r.get(6)?),
                last_dispatched_at: ts(r.get(7)?),
                last_event_at: ts(r.get(8)?),
                active_tools_empty: tools.trim() == "[]" || tools.trim().is_empty(),
                stalled_at: ts(r.get(10)?),
                created_at: Timestamp(r.get(11)?),
            })
        })?;
        self.agents = rows.collect::<rusqlite::Result<_>>()?;
        // Hooked beads that are not live (terminal ones) are needed by A4/A5 and Rule 7.
        let sql = format!(
            "SELECT {} FROM agent_metadata a JOIN beads b ON b.bead_id = a.current_hook_bead_id \
             WHERE b.status IN ('closed', 'failed') OR b.type NOT IN ('issue', 'merge_request', 'convoy')",
            prefixed("b")
        );
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            self.push_bead(snap_bead(r, 0)?);
        }
        Ok(())
    }

    fn load_edges(&mut self, conn: &Connection) -> Result<()> {
        // One pass over the live beads for both kinds of edge. Every live
        // issue, MR and convoy is already loaded, so a blocker is unresolved
        // exactly when it is one of them: no join back to `beads`.
        let mut st = conn.prepare_cached(
            "SELECT d.bead_id, d.depends_on_bead_id, d.dependency_type = 'blocks' FROM beads b \
             CROSS JOIN bead_dependencies d ON d.bead_id = b.bead_id \
             WHERE b.type IN ('issue', 'merge_request') AND b.status IN ('open', 'in_progress', 'in_review') \
             AND d.dependency_type IN ('blocks', 'tracks') ORDER BY d.bead_id, d.depends_on_bead_id",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (from, to, blocks): (String, String, bool) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if blocks {
                if self.bead(&to).is_some_and(|k| k.status.is_live()) {
                    push_unique(&mut self.unresolved_blockers, from, to);
                }
            } else {
                push_unique(&mut self.tracked_by, to.clone(), from.clone());
                push_unique(&mut self.tracks, from, to);
            }
        }
        Ok(())
    }

    /// Terminal beads tracking live ones: ended MRs of in-review issues, and
    /// ended members and landing MRs of open convoys. (The live ones are
    /// already loaded, with their edges.)
    fn load_related(&mut self, conn: &Connection) -> Result<()> {
        // CROSS JOIN pins the order: start from the few live targets, never from all edges.
        let sql = format!(
            "SELECT d.depends_on_bead_id, {cols} FROM beads s \
             CROSS JOIN bead_dependencies d ON d.depends_on_bead_id = s.bead_id AND d.dependency_type = 'tracks' \
             CROSS JOIN beads m ON m.bead_id = d.bead_id \
             WHERE s.type = 'issue' AND s.status IN ({LIVE}) AND s.status = 'in_review' AND m.type = 'merge_request' \
             AND m.status IN ('closed', 'failed') \
             UNION ALL \
             SELECT d.depends_on_bead_id, {cols} FROM beads s \
             CROSS JOIN bead_dependencies d ON d.depends_on_bead_id = s.bead_id AND d.dependency_type = 'tracks' \
             CROSS JOIN beads m ON m.bead_id = d.bead_id \
             WHERE s.type = 'convoy' AND s.status IN ({LIVE}) AND s.status = 'open' AND m.status IN ('closed', 'failed')",
            cols = prefixed("m")
        );
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let target: String = r.get(0)?;
            let b = snap_bead(r, 1)?;
            push_unique(&mut self.tracked_by, target, b.id.clone());
            self.push_bead(b);
        }
        Ok(())
    }

    fn load_reviews(&mut self, conn: &Connection) -> Result<()> {
        let mut st = conn.prepare_cached(
            &format!(
                "SELECT r.bead_id, r.pr_url, r.babysit, r.last_poll_at, r.auto_merge_pending, r.awaiting_approval, r.convoy_id \
                 FROM beads b CROSS JOIN review_metadata r ON r.bead_id = b.bead_id \
                 WHERE b.type = 'merge_request' AND b.status IN ({LIVE}) AND b.status != 'in_review' \
                 UNION ALL \
                 SELECT r.bead_id, r.pr_url, r.babysit, r.last_poll_at, r.auto_merge_pending, r.awaiting_approval, r.convoy_id \
                 FROM beads c CROSS JOIN bead_dependencies d ON d.depends_on_bead_id = c.bead_id AND d.dependency_type = 'tracks' \
                 CROSS JOIN review_metadata r ON r.bead_id = d.bead_id CROSS JOIN beads m ON m.bead_id = r.bead_id \
                 WHERE c.type = 'convoy' AND c.status IN ({LIVE}) AND c.status = 'open' AND m.status IN ('closed', 'failed')"
            ),
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            self.reviews.insert(
                r.get(0)?,
                SnapReview {
                    pr_url: r.get(1)?,
                    babysit: r.get(2)?,
                    last_poll_at: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                    auto_merge_pending: r.get(4)?,
                    awaiting_approval: r.get(5)?,
                    convoy_id: r.get(6)?,
                },
            );
        }
        Ok(())
    }

    fn load_convoys(&mut self, conn: &Connection) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT c.bead_id, m.merge_mode, m.feature_branch, m.staged, m.ready_to_land, m.landing_mr_attempts, \
             m.last_landing_mr_attempt_at, m.closed_beads, c.created_at \
             FROM beads c CROSS JOIN convoy_metadata m ON m.bead_id = c.bead_id \
             WHERE c.type = 'convoy' AND c.status IN ('open', 'in_progress', 'in_review') AND c.status = 'open'",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SnapConvoy {
                id: r.get(0)?,
                merge_mode: r.get(1)?,
                feature_branch: r.get(2)?,
                staged: r.get(3)?,
                ready_to_land: r.get(4)?,
                landing_mr_attempts: r.get(5)?,
                last_landing_mr_attempt_at: r.get::<_, Option<i64>>(6)?.map(Timestamp),
                closed_beads: r.get(7)?,
                created_at: Timestamp(r.get(8)?),
            })
        })?;
        for c in rows {
            let c = c?;
            self.convoys.insert(c.id.clone(), c);
        }
        Ok(())
    }

    fn load_nudges_and_breaker(&mut self, conn: &Connection) -> Result<()> {
        let mut st = conn.prepare_cached(
            "SELECT DISTINCT agent_bead_id, source FROM agent_nudges \
             WHERE source IN ('reconciler:warn', 'reconciler:escalate') AND created_at > ?1",
        )?;
        let mut rows = st.query([self.now.minus_ms(NUDGE_DEDUP_WINDOW_MS).0])?;
        while let Some(r) = rows.next()? {
            let source: String = r.get(1)?;
            let tier = if source == NudgeTier::Warn.source() { NudgeTier::Warn } else { NudgeTier::Escalate };
            self.recent_nudges.insert((r.get(0)?, tier));
        }
        let sql = if defects::on(Defect::BreakerCountsHealthyDispatches) {
            "SELECT COUNT(*) FROM beads WHERE dispatch_attempts > 0 AND last_dispatch_attempt_at > ?1"
        } else {
            "SELECT COUNT(*) FROM beads WHERE dispatch_attempts > 1 AND last_dispatch_attempt_at > ?1 AND status != 'closed'"
        };
        self.breaker_failures =
            conn.prepare_cached(sql)?.query_row([self.now.minus_ms(BREAKER_WINDOW_MS).0], |r| r.get(0))?;
        Ok(())
    }

    /// Add a bead (once; a second copy of the same id is ignored).
    pub fn push_bead(&mut self, b: SnapBead) {
        if !self.index.contains_key(&b.id) {
            self.index.insert(b.id.clone(), self.beads.len());
            self.beads.push(b);
        }
    }

    /// Set the per-bead flags the rules read from the edge maps.
    pub fn derive_flags(&mut self) {
        for i in 0..self.beads.len() {
            let id = &self.beads[i].id;
            let blocked = self.unresolved_blockers.get(id).is_some_and(|v| !v.is_empty());
            let staged = self.tracks_staged_convoy(id);
            let b = &mut self.beads[i];
            b.blocked = blocked;
            b.in_staged_convoy = staged;
        }
    }

    /// A snapshot with nothing loaded yet (the loader and rule tests fill it).
    pub fn empty(now: Timestamp, draining: bool, config: &TownConfig) -> TownSnapshot {
        TownSnapshot {
            now,
            draining,
            config: config.clone(),
            rigs: BTreeMap::new(),
            beads: Vec::new(),
            index: BTreeMap::new(),
            reviews: BTreeMap::new(),
            convoys: BTreeMap::new(),
            agents: Vec::new(),
            unresolved_blockers: BTreeMap::new(),
            tracks: BTreeMap::new(),
            tracked_by: BTreeMap::new(),
            recent_nudges: BTreeSet::new(),
            breaker_failures: 0,
        }
    }

    // ---- lookups used by the rules ----

    pub fn bead(&self, id: &str) -> Option<&SnapBead> {
        self.index.get(id).map(|&i| &self.beads[i])
    }

    pub fn bead_mut(&mut self, id: &str) -> Option<&mut SnapBead> {
        self.index.get(id).map(|&i| &mut self.beads[i])
    }

    /// Live issue, MR and convoy beads, oldest first.
    pub fn live(&self) -> impl Iterator<Item = &SnapBead> {
        self.beads.iter().filter(|b| {
            b.status.is_live() && matches!(b.bead_type, BeadType::Issue | BeadType::MergeRequest | BeadType::Convoy)
        })
    }

    pub fn has_unresolved_blockers(&self, id: &str) -> bool {
        self.bead(id).is_some_and(|b| b.blocked)
    }

    pub fn trackers_of(&self, id: &str) -> impl Iterator<Item = &SnapBead> {
        self.tracked_by.get(id).into_iter().flatten().filter_map(|t| self.bead(t))
    }

    pub fn tracks_staged_convoy(&self, id: &str) -> bool {
        self.tracks.get(id).into_iter().flatten().any(|c| self.convoys.get(c).is_some_and(|c| c.staged))
    }

    pub fn agents_hooked_to<'a>(&'a self, bead: &'a str) -> impl Iterator<Item = &'a SnapAgent> + 'a {
        self.agents.iter().filter(move |a| a.hook.as_deref() == Some(bead))
    }

    pub fn rig_settings(&self, rig: Option<&str>) -> Option<&RigSettings> {
        rig.and_then(|r| self.rigs.get(r)).map(|r| &r.settings)
    }

    /// Effective `code_review` of a rig (true when the rig is unknown).
    pub fn code_review(&self, rig: Option<&str>) -> bool {
        self.rig_settings(rig).is_none_or(|s| s.code_review)
    }

    /// The per-rig dispatch cap.
    pub fn rig_max_attempts(&self, rig: Option<&str>) -> u32 {
        self.rig_settings(rig).map_or(DEFAULT_MAX_DISPATCH_ATTEMPTS, |s| s.max_dispatch_attempts)
    }

    /// Is this MR part of a review-and-merge convoy (via its recorded convoy)?
    pub fn in_review_and_merge_convoy(&self, mr: &str) -> bool {
        if defects::on(Defect::ConvoyPredicateByParent) {
            return false; // upstream read parent_bead_id, always NULL for MRs
        }
        let Some(convoy) = self.reviews.get(mr).and_then(|r| r.convoy_id.as_deref()) else { return false };
        self.convoys.get(convoy).is_some_and(|c| c.merge_mode == MergeMode::ReviewAndMerge)
    }
}
