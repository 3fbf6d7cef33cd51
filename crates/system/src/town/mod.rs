//! The town: one SQLite database, its operations, the reconciler and the tick.
//!
//! Every public operation runs in one transaction: it either applies whole or
//! writes nothing. Operations that start work elsewhere (an agent, a message)
//! return [`Effect`]s for the caller to run; their [`Outcome`]s come back via
//! [`Town::apply_outcomes`].

pub mod actions;
pub mod agents;
pub mod babysit;
pub mod beads;
pub mod container_state;
pub mod convoys;
pub mod ctx;
pub mod deletion;
pub mod effects;
pub mod escalations;
pub mod events;
pub mod invariants;
pub mod nudges;
pub mod pr;
pub mod reconciler;
pub mod review;
pub mod scheduling;
pub mod snapshot;
pub mod state;
pub mod tick;
pub mod triage;

#[cfg(test)]
mod tests;

use crate::error::{Result, TownError};
use crate::ids::IdGen;
use crate::model::{
    labels, AgentRole, AgentStatus, BeadStatus, BeadType, EventType, NudgeMode, NudgePriority, Priority, TownConfig,
    TriageType,
};
use crate::store::{self, get_setting, put_setting};
use crate::time::{Clock, Timestamp};
use ctx::Ctx;
use effects::{Effect, Outcome};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub use agents::{Agent, Watermark};
pub use beads::Bead;
pub use convoys::{ConvoyCreated, ConvoyTask, SlingConvoy};
pub use deletion::DeletedBead;
pub use escalations::RouteEscalation;
pub use review::{DoneReport, ExitStatus, ReviewResult};
pub use state::{AddRig, DrainState, Rig};
pub use tick::TickReport;

pub struct Town {
    conn: Connection,
    clock: Arc<dyn Clock>,
    ids: IdGen,
    town_id: String,
    config: TownConfig,
    last_report: Option<TickReport>,
}

/// How to open a town.
#[derive(Clone, Debug)]
pub struct TownOptions {
    /// The town's id, used when the database is new.
    pub town_id: String,
    /// Seed for ids, used when the database is new (then persisted).
    pub seed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlingBead {
    pub rig_id: String,
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Slung {
    pub bead_id: String,
    pub agent_id: Option<String>,
}

/// Bead counts by status, agents by status, convoys by status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    pub beads: std::collections::BTreeMap<String, u64>,
    pub agents: std::collections::BTreeMap<String, u64>,
    pub convoys: std::collections::BTreeMap<String, u64>,
    pub pending_events: u64,
}

impl Town {
    /// Open a town on a migrated connection, creating it if the database is new.
    pub fn open(conn: Connection, clock: Arc<dyn Clock>, opts: TownOptions) -> Result<Town> {
        store::migrate(&conn)?;
        let town_id = match get_setting(&conn, state::KEY_TOWN_ID)? {
            Some(id) => id,
            None => {
                if opts.town_id.trim().is_empty() {
                    return Err(TownError::invalid("town", "town id is empty"));
                }
                put_setting(&conn, state::KEY_TOWN_ID, &opts.town_id)?;
                put_setting(&conn, state::KEY_ID_SEED, &opts.seed.to_string())?;
                opts.town_id
            }
        };
        let seed: u64 = get_setting(&conn, state::KEY_ID_SEED)?.and_then(|s| s.parse().ok()).unwrap_or(opts.seed);
        let boots: u64 = get_setting(&conn, state::KEY_BOOTS)?.and_then(|s| s.parse().ok()).unwrap_or(0) + 1;
        put_setting(&conn, state::KEY_BOOTS, &boots.to_string())?;
        let config = state::load_or_seed_config(&conn)?;
        let now = clock.now();
        state::arm_if_needed(&conn, now)?;
        Ok(Town { conn, clock, ids: IdGen::for_boot(seed, boots), town_id, config, last_report: None })
    }

    pub fn id(&self) -> &str {
        &self.town_id
    }
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
    pub fn config(&self) -> &TownConfig {
        &self.config
    }
    pub fn last_report(&self) -> Option<&TickReport> {
        self.last_report.as_ref()
    }

    /// Run `f` in one transaction at the current time; roll back on error.
    fn tx<T>(&mut self, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        let now = self.clock.now();
        let tx = self.conn.unchecked_transaction()?;
        let mut cx = Ctx::new(&tx, now, &mut self.ids);
        let out = f(&mut cx)?;
        tx.commit()?;
        Ok(out)
    }

    /// A read-only view at the current time (no transaction needed).
    pub fn read<T>(&mut self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let now = self.clock.now();
        let cx = Ctx::new(&self.conn, now, &mut self.ids);
        f(&cx)
    }

    // ---------------- configuration and rigs ----------------

    pub fn set_config(&mut self, cfg: TownConfig) -> Result<()> {
        state::save_config(&self.conn, &cfg)?;
        self.config = cfg;
        Ok(())
    }

    pub fn add_rig(&mut self, input: AddRig) -> Result<Rig> {
        self.tx(|cx| {
            let rig = state::add_rig(cx, input)?;
            state::escalate_to_active(cx.conn, cx.now)?;
            Ok(rig)
        })
    }

    pub fn remove_rig(&mut self, id: &str) -> Result<()> {
        self.tx(|cx| state::remove_rig(cx, id))
    }

    pub fn rigs(&self) -> Result<Vec<Rig>> {
        state::list_rigs(&self.conn)
    }

    // ---------------- reads ----------------

    pub fn bead(&mut self, id: &str) -> Result<Bead> {
        self.read(|cx| beads::get(cx, id))
    }
    pub fn agent(&mut self, id: &str) -> Result<Agent> {
        self.read(|cx| agents::get(cx, id))
    }
    pub fn agents(&mut self) -> Result<Vec<Agent>> {
        self.read(agents::list)
    }
    pub fn alarm_at(&self) -> Result<Option<Timestamp>> {
        state::alarm(&self.conn)
    }
    /// Rows written to the town database since it was opened (SQLite's
    /// `total_changes`). A polling observer may skip rereading state while it
    /// stays the same: every write counts, including one later rolled back.
    pub fn rows_written(&self) -> u64 {
        self.conn.total_changes()
    }
    pub fn drain_state(&self) -> Result<DrainState> {
        state::drain_state(&self.conn)
    }
    pub fn pending_event_count(&self) -> Result<u64> {
        events::pending_count(&self.conn)
    }

    /// Beads of a type (optionally a status), oldest first.
    pub fn beads_of(&mut self, ty: BeadType, status: Option<BeadStatus>) -> Result<Vec<Bead>> {
        let sql = format!(
            "SELECT {} FROM beads WHERE type = ?1 AND (?2 IS NULL OR status = ?2) ORDER BY created_at, bead_id",
            beads::BEAD_COLUMNS
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(rusqlite::params![ty, status], beads::bead_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn status_counts(&self) -> Result<StatusCounts> {
        let mut c = StatusCounts::default();
        let count = |sql: &str, into: &mut std::collections::BTreeMap<String, u64>| -> Result<()> {
            let mut st = self.conn.prepare_cached(sql)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
            for row in rows {
                let (k, v) = row?;
                into.insert(k, v);
            }
            Ok(())
        };
        count("SELECT status, COUNT(*) FROM beads WHERE type = 'issue' GROUP BY status", &mut c.beads)?;
        count("SELECT status, COUNT(*) FROM agent_metadata GROUP BY status", &mut c.agents)?;
        count("SELECT status, COUNT(*) FROM beads WHERE type = 'convoy' GROUP BY status", &mut c.convoys)?;
        c.pending_events = events::pending_count(&self.conn)?;
        Ok(c)
    }

    // ---------------- work intake ----------------

    /// Create an issue bead in a rig and start a polecat on it right away
    /// (the fast path; the reconciler recovers a start that does not happen).
    pub fn sling_bead(&mut self, input: SlingBead) -> Result<(Slung, Vec<Effect>)> {
        let town_id = self.town_id.clone();
        self.tx(|cx| {
            if input.title.trim().is_empty() {
                return Err(TownError::invalid("bead", "title is empty"));
            }
            state::get_rig(cx, &input.rig_id)?;
            let priority = input.priority.as_deref().and_then(Priority::parse).unwrap_or(Priority::Medium);
            let mut b = beads::NewBead::new(BeadType::Issue, input.title.clone())
                .body(input.body.clone())
                .rig(Some(&input.rig_id))
                .priority(priority)
                .by(Some("user"));
            b.labels = input.labels.clone();
            b.metadata = input.metadata.clone();
            let held = b.labels.iter().any(|l| l == labels::HELD);
            let bead_id = beads::insert(cx, b)?;
            events::record(
                cx,
                EventType::BeadCreated,
                None,
                Some(&bead_id),
                json!({"bead_type": "issue", "rig_id": input.rig_id, "has_blockers": false}),
            )?;
            let mut effects = Vec::new();
            let mut agent_id = None;
            if !held {
                let agent = agents::get_or_create(cx, AgentRole::Polecat, Some(&input.rig_id), &town_id)?;
                agents::hook(cx, &agent, &bead_id)?;
                agents::set_status(cx, &agent, AgentStatus::Working)?;
                effects.push(scheduling::begin_dispatch(cx, &agent, &bead_id)?);
                agent_id = Some(agent);
            }
            state::escalate_to_active(cx.conn, cx.now)?;
            Ok((Slung { bead_id, agent_id }, effects))
        })
    }

    /// Remove the held label so the reconciler picks the bead up.
    pub fn start_held_bead(&mut self, bead: &str) -> Result<()> {
        self.tx(|cx| {
            beads::get(cx, bead)?;
            beads::remove_label(cx, bead, labels::HELD)?;
            state::escalate_to_active(cx.conn, cx.now)
        })
    }

    pub fn sling_convoy(&mut self, input: SlingConvoy) -> Result<ConvoyCreated> {
        let cfg = self.config.clone();
        self.tx(|cx| {
            let created = convoys::sling(cx, &cfg, input)?;
            if !created.staged {
                state::escalate_to_active(cx.conn, cx.now)?;
            }
            Ok(created)
        })
    }

    pub fn start_convoy(&mut self, convoy: &str) -> Result<()> {
        self.tx(|cx| {
            convoys::start(cx, convoy)?;
            state::escalate_to_active(cx.conn, cx.now)
        })
    }

    pub fn convoy_add_bead(&mut self, convoy: &str, bead: &str, blocked_by: &[String]) -> Result<()> {
        self.tx(|cx| convoys::add_bead(cx, convoy, bead, blocked_by))
    }

    pub fn convoy_remove_bead(&mut self, convoy: &str, bead: &str) -> Result<()> {
        self.tx(|cx| convoys::remove_bead(cx, convoy, bead))
    }

    pub fn close_convoy(&mut self, convoy: &str) -> Result<()> {
        self.tx(|cx| convoys::close(cx, convoy))
    }

    pub fn convoy_meta(&mut self, convoy: &str) -> Result<convoys::ConvoyMeta> {
        self.read(|cx| convoys::meta(cx, convoy)?.ok_or_else(|| TownError::not_found("Convoy", convoy)))
    }

    // ---------------- agent reports (recorded as events) ----------------

    /// `gt_done`: recorded now, applied at the next tick.
    pub fn agent_done(&mut self, agent: &str, done: DoneReport) -> Result<String> {
        self.tx(|cx| {
            agents::get(cx, agent)?;
            let id = events::record(cx, EventType::AgentDone, Some(agent), None, serde_json::to_value(&done)?)?;
            state::arm_if_needed(cx.conn, cx.now)?;
            Ok(id)
        })
    }

    /// The container saw the agent's process exit. An empty id means the mayor.
    pub fn agent_completed(&mut self, agent: &str, status: ExitStatus, reason: Option<&str>) -> Result<String> {
        self.tx(|cx| {
            let agent = if agent.is_empty() {
                agents::mayor(cx)?.map(|m| m.agent_id).ok_or_else(|| TownError::not_found("Agent", "mayor"))?
            } else {
                agent.to_owned()
            };
            let payload = json!({ "status": status, "reason": reason });
            let id = events::record(cx, EventType::AgentCompleted, Some(&agent), None, payload)?;
            state::arm_if_needed(cx.conn, cx.now)?;
            Ok(id)
        })
    }

    /// What the container reports about an agent that should be running.
    pub fn record_container_status(&mut self, agent: &str, status: &str, exit_reason: Option<&str>) -> Result<()> {
        self.tx(|cx| events::upsert_container_status(cx, agent, status, exit_reason))
    }

    /// Heartbeat. Returns the drain nonce while draining. A heartbeat from a new
    /// container instance ends the drain.
    pub fn heartbeat(&mut self, agent: &str, wm: &Watermark, instance_id: Option<&str>) -> Result<Option<String>> {
        self.tx(|cx| {
            agents::touch(cx, agent, wm)?;
            if let Some(inst) = instance_id {
                let previous = get_setting(cx.conn, state::KEY_INSTANCE)?;
                if previous.as_deref() != Some(inst) {
                    put_setting(cx.conn, state::KEY_INSTANCE, inst)?;
                    if previous.is_some() && state::drain_state(cx.conn)?.draining {
                        state::clear_drain(cx.conn)?;
                    }
                }
            }
            state::arm_if_needed(cx.conn, cx.now)?;
            Ok(state::drain_state(cx.conn)?.nonce)
        })
    }

    /// Upstream's `debugInsertTownEvent`: any event, for tests and fault injection.
    pub fn insert_event(
        &mut self,
        ty: EventType,
        agent: Option<&str>,
        bead: Option<&str>,
        payload: Value,
    ) -> Result<String> {
        self.tx(|cx| {
            let id = events::record(cx, ty, agent, bead, payload)?;
            state::arm_if_needed(cx.conn, cx.now)?;
            Ok(id)
        })
    }

    // ---------------- review pipeline ----------------

    pub fn submit_to_review_queue(
        &mut self,
        agent: &str,
        source: &str,
        branch: &str,
        pr_url: Option<&str>,
        summary: Option<&str>,
    ) -> Result<String> {
        self.tx(|cx| {
            let src = beads::get(cx, source)?;
            let rig_id =
                src.rig_id.clone().ok_or_else(|| TownError::invalid("review", format!("bead {source} has no rig")))?;
            let rig = state::get_rig(cx, &rig_id)?;
            let mr = review::submit(
                cx,
                review::SubmitReview {
                    agent_id: agent,
                    source_bead_id: source,
                    rig_id: &rig_id,
                    branch,
                    pr_url,
                    summary,
                    default_branch: Some(&rig.default_branch),
                },
            )?;
            state::escalate_to_active(cx.conn, cx.now)?;
            Ok(mr)
        })
    }

    /// Babysit an outside PR: see [`babysit::adopt`].
    pub fn adopt_external_pr(&mut self, rig: &str, pr: &babysit::AdoptPr, by: &str) -> Result<babysit::Adopted> {
        self.tx(|cx| {
            let adopted = babysit::adopt(cx, rig, pr, by)?;
            state::escalate_to_active(cx.conn, cx.now)?;
            Ok(adopted)
        })
    }

    pub fn complete_review(&mut self, mr: &str, result: ReviewResult, message: Option<&str>) -> Result<()> {
        self.tx(|cx| review::complete_reported(cx, mr, result, message))
    }

    pub fn request_changes(&mut self, refinery: &str, feedback: &str, files: &[String]) -> Result<String> {
        self.tx(|cx| {
            let id = review::request_changes(cx, refinery, feedback, files)?;
            state::escalate_to_active(cx.conn, cx.now)?;
            Ok(id)
        })
    }

    // ---------------- hooks and agent control ----------------

    /// A user's hook (upstream's `hookBead`). Beyond what every hook checks,
    /// a user may not put a refinery on an MR the town would never review:
    /// the review-queue rules and their oracles assume only Rule 5 decides.
    pub fn hook_bead(&mut self, agent: &str, bead: &str) -> Result<()> {
        self.tx(|cx| {
            let (a, b) = (agents::get(cx, agent)?, beads::get(cx, bead)?);
            if a.role == AgentRole::Refinery && b.bead_type == BeadType::MergeRequest {
                if let Some(why) = review::refinery_refused(cx, &b)? {
                    return Err(TownError::invalid("hook", why));
                }
            }
            agents::hook(cx, agent, bead)?;
            state::arm_if_needed(cx.conn, cx.now)
        })
    }

    pub fn unhook_bead(&mut self, agent: &str) -> Result<()> {
        self.tx(|cx| agents::unhook(cx, agent, "unhook requested"))
    }

    /// Reset an agent: its live bead back to open with zeroed counters (bug k).
    pub fn reset_agent(&mut self, agent: &str) -> Result<()> {
        self.tx(|cx| agents::reset(cx, agent))
    }

    /// Zero dispatch counters without unhooking; the agent must belong to `rig`.
    pub fn reset_agent_dispatch_attempts(&mut self, agent: &str, rig: &str) -> Result<()> {
        self.tx(|cx| {
            let a = agents::get(cx, agent)?;
            if a.rig_id.as_deref() != Some(rig) {
                return Err(TownError::invalid("reset", format!("agent {agent} does not belong to rig {rig}")));
            }
            agents::reset_dispatch_attempts(cx, agent)
        })
    }

    pub fn set_agent_checkpoint(&mut self, agent: &str, checkpoint: &Value) -> Result<()> {
        self.tx(|cx| agents::set_checkpoint(cx, agent, checkpoint))
    }

    /// Change a bead's status from outside (user, mayor). A terminal target
    /// records `bead_cancelled` first, then applies the change and releases hooks.
    pub fn update_bead_status(&mut self, bead: &str, status: BeadStatus, actor: &str) -> Result<Bead> {
        self.tx(|cx| {
            let b = beads::get(cx, bead)?;
            if b.status.is_terminal() && b.status != status {
                return Err(TownError::invalid(
                    "status",
                    format!("bead {bead} is {} and terminal states are final", b.status),
                ));
            }
            refuse_manual_status(cx, &b, status)?;
            if status.is_terminal() {
                events::record(cx, EventType::BeadCancelled, None, Some(bead), json!({ "cancel_status": status }))?;
                beads::update_status_because(cx, bead, status, actor, None, beads::CloseCause::UserClosed)?;
                agents::unhook_all_from(cx, bead, "bead closed")?;
            } else {
                beads::update_status(cx, bead, status, actor, None)?;
            }
            beads::get(cx, bead)
        })
    }

    pub fn close_bead(&mut self, bead: &str, actor: &str) -> Result<Bead> {
        self.update_bead_status(bead, BeadStatus::Closed, actor)
    }

    /// Delete a bead and settle what it meant to the beads and agents around
    /// it (see [`deletion`]). Agents and convoys are refused.
    pub fn delete_bead(&mut self, bead: &str) -> Result<DeletedBead> {
        self.tx(|cx| deletion::delete_bead(cx, bead))
    }

    // ---------------- escalations, triage, nudges ----------------

    pub fn route_escalation(&mut self, input: &RouteEscalation) -> Result<(String, Vec<Effect>)> {
        self.tx(|cx| escalations::route(cx, input))
    }

    pub fn acknowledge_escalation(&mut self, id: &str) -> Result<()> {
        self.tx(|cx| escalations::acknowledge(cx, id))
    }

    pub fn create_triage_request(
        &mut self,
        triage_type: TriageType,
        agent: Option<&str>,
        title: &str,
        context: Value,
    ) -> Result<Option<String>> {
        self.tx(|cx| {
            if let Some(a) = agent {
                agents::get(cx, a)?;
            }
            let hooked = match agent {
                Some(a) => agents::get(cx, a)?.current_hook_bead_id,
                None => None,
            };
            triage::create(
                cx,
                triage::TriageRequest {
                    triage_type,
                    agent_id: agent,
                    hooked_bead_id: hooked.as_deref(),
                    title: title.to_owned(),
                    context,
                    options: vec!["RESTART", "CLOSE_BEAD", "ESCALATE_TO_MAYOR", "REASSIGN_BEAD"],
                    rig_id: None,
                },
            )
        })
    }

    /// Act on a triage request and close it (upstream `resolveTriage`).
    pub fn resolve_triage(&mut self, r: &triage::Resolution<'_>) -> Result<Vec<Effect>> {
        self.tx(|cx| triage::resolve(cx, r))
    }

    pub fn queue_nudge(
        &mut self,
        agent: &str,
        message: &str,
        mode: NudgeMode,
        priority: NudgePriority,
        ttl_seconds: Option<u32>,
    ) -> Result<(String, Option<Effect>)> {
        self.tx(|cx| {
            nudges::queue(
                cx,
                nudges::NewNudge {
                    agent_id: agent,
                    message,
                    mode,
                    priority,
                    source: "system",
                    ttl_seconds,
                    tier: None,
                },
            )
        })
    }

    pub fn pending_nudges(&mut self, agent: &str) -> Result<Vec<nudges::Nudge>> {
        self.read(|cx| {
            agents::get(cx, agent)?;
            nudges::pending_for(cx, agent)
        })
    }

    pub fn nudge_delivered(&mut self, nudge_id: &str) -> Result<bool> {
        self.tx(|cx| nudges::mark_delivered(cx, nudge_id))
    }

    // ---------------- container lifecycle ----------------

    /// The container got SIGTERM: start draining. Returns the drain nonce.
    pub fn record_container_eviction(&mut self) -> Result<String> {
        self.tx(|cx| {
            events::record(cx, EventType::ContainerEviction, None, None, json!({}))?;
            state::start_drain(cx)
        })
    }

    /// A replacement container proves itself with the nonce. True when not draining.
    pub fn acknowledge_container_ready(&mut self, nonce: &str) -> Result<bool> {
        self.tx(|cx| {
            let d = state::drain_state(cx.conn)?;
            if !d.draining {
                return Ok(true);
            }
            if d.nonce.as_deref() == Some(nonce) {
                state::clear_drain(cx.conn)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    // ---------------- the mayor ----------------

    /// A user message for the mayor: ensures the mayor exists and delivers the
    /// message. A mayor that is not `working` or `waiting` has no session the
    /// town knows of: it becomes `working` now, and the runner starts it
    /// (with the standard ready prompt) when the container has no live
    /// session, then sends the message as a turn of its own. Starting it with
    /// the message as the initial prompt lost the message whenever the
    /// session resumed (the mayor always resumes its latest session, and a
    /// resumed session skips the initial prompt), leaving the mayor
    /// `working` for good.
    pub fn send_mayor_message(&mut self, message: &str) -> Result<Vec<Effect>> {
        let town_id = self.town_id.clone();
        self.tx(|cx| {
            if message.trim().is_empty() {
                return Err(TownError::invalid("mayor message", "message is empty"));
            }
            let mayor = agents::get_or_create(cx, AgentRole::Mayor, None, &town_id)?;
            let m = agents::get(cx, &mayor)?;
            state::arm_if_needed(cx.conn, cx.now)?;
            if !matches!(m.status, AgentStatus::Working | AgentStatus::Waiting) {
                agents::set_status(cx, &mayor, AgentStatus::Working)?;
                cx.conn
                    .prepare_cached(
                        "UPDATE agent_metadata SET last_activity_at = ?2, last_dispatched_at = ?2 WHERE bead_id = ?1",
                    )?
                    .execute(rusqlite::params![mayor, cx.now.0])?;
            }
            Ok(vec![Effect::MessageMayor { mayor_id: Some(mayor), about_bead: None, text: message.to_owned() }])
        })
    }

    /// The mayor's session went idle. Ignored if a newer message woke it since.
    pub fn mayor_waiting(&mut self, fired_at: Option<Timestamp>) -> Result<bool> {
        self.tx(|cx| {
            let Some(m) = agents::mayor(cx)? else { return Ok(false) };
            if m.status != AgentStatus::Working {
                return Ok(false);
            }
            if let (Some(f), Some(since)) = (fired_at, m.last_dispatched_at) {
                if f < since {
                    return Ok(false);
                }
            }
            agents::set_status(cx, &m.agent_id, AgentStatus::Waiting)?;
            Ok(true)
        })
    }

    // ---------------- effect outcomes ----------------

    /// Apply what effects reported. Each outcome applies on its own; one that
    /// refers to something gone is dropped.
    pub fn apply_outcomes(&mut self, outcomes: &[Outcome]) -> Result<()> {
        if outcomes.iter().all(|o| matches!(o, Outcome::Done)) {
            return Ok(());
        }
        self.tx(|cx| {
            for o in outcomes {
                let conn = cx.conn;
                let _ = store::savepoint(conn, || apply_outcome(cx, o));
            }
            Ok(())
        })
    }
}

/// Non-terminal statuses the town's own machinery owns, refused to outside
/// callers because nothing would move the bead on from them.
fn refuse_manual_status(cx: &Ctx<'_>, b: &Bead, to: BeadStatus) -> Result<()> {
    if b.status == to || to.is_terminal() {
        return Ok(());
    }
    let why = match (b.bead_type, to) {
        // Starting a review is the review queue's call (Rule 5 pops one
        // direct review per rig at a time); a forced one would run beside it.
        (BeadType::MergeRequest, BeadStatus::InProgress | BeadStatus::InReview) => {
            "a merge request starts review only from the queue"
        }
        // The convoy rules watch open convoys only: any other live status
        // would keep it from ever landing.
        (BeadType::Convoy, _) => "a convoy stays open until it lands, closes or fails",
        // Nothing moves an issue out of review but its MRs ending (Rule 4
        // skips MR-less issues), so a review-less `in_review` would be stuck.
        (_, BeadStatus::InReview) if !review::has_live_mr(cx, &b.bead_id)? => {
            "only a review submission puts a bead without a live merge request in review"
        }
        _ => return Ok(()),
    };
    Err(TownError::invalid("status", format!("bead {} cannot become {to}: {why}", b.bead_id)))
}

fn apply_outcome(cx: &mut Ctx<'_>, o: &Outcome) -> Result<()> {
    match o {
        Outcome::AgentStart { agent_id, started, .. } => scheduling::on_start_result(cx, agent_id, *started),
        Outcome::NudgeDelivery { nudge_id, delivered: true } => nudges::mark_delivered(cx, nudge_id).map(|_| ()),
        Outcome::MayorMessage { about_bead: Some(b), delivered: false } => {
            if beads::status_of(cx, b)?.is_some() {
                beads::log_event(cx, b, None, "notification_failed", None, None, None)?;
            }
            Ok(())
        }
        // An undelivered message started no turn: a `working` mayor would
        // otherwise stay so for good (the mayor has no heartbeat rules), and
        // hold the town on the active cadence. A turn already under way only
        // loses its `working` badge; the next delivered message restores it.
        Outcome::MayorMessage { about_bead: None, delivered: false } => {
            if let Some(m) = agents::mayor(cx)? {
                if m.status == AgentStatus::Working {
                    agents::set_status(cx, &m.agent_id, AgentStatus::Idle)?;
                }
            }
            Ok(())
        }
        Outcome::MayorMessage { about_bead: None, delivered: true } => {
            if let Some(m) = agents::mayor(cx)? {
                // A delivered message means a live session is taking a turn,
                // also when an earlier undelivered one set the mayor `idle`.
                if matches!(m.status, AgentStatus::Waiting | AgentStatus::Idle) {
                    agents::set_status(cx, &m.agent_id, AgentStatus::Working)?;
                    cx.conn
                        .prepare_cached("UPDATE agent_metadata SET last_dispatched_at = ?2 WHERE bead_id = ?1")?
                        .execute(rusqlite::params![m.agent_id, cx.now.0])?;
                    // Only ever earlier: an alarm due sooner stays (bug h).
                    state::escalate_to_active(cx.conn, cx.now)?;
                }
            }
            Ok(())
        }
        Outcome::PrPolled { mr_bead_id, pr_url, report } => pr::apply_poll(cx, mr_bead_id, pr_url, report),
        Outcome::PrMerge { mr_bead_id, pr_url, report } => pr::apply_merge(cx, mr_bead_id, pr_url, report),
        _ => Ok(()),
    }
}

/// Is there work that needs the 5 s cadence? (Upstream's `hasActiveWork`.)
pub fn has_active_work(conn: &Connection, now: Timestamp) -> Result<bool> {
    let cutoff = now.minus_ms(reconciler::constants::ACTIVE_STALLED_WINDOW_MS).0;
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM agent_metadata WHERE status = 'working' OR (status = 'stalled' AND last_activity_at > ?1)) \
             OR EXISTS (SELECT 1 FROM agent_metadata WHERE status = 'idle' AND current_hook_bead_id IS NOT NULL) \
             OR EXISTS (SELECT 1 FROM beads WHERE type = 'merge_request' AND status IN ('open', 'in_progress', 'in_review') \
                AND status != 'in_review') \
             OR EXISTS (SELECT 1 FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress', 'in_review') \
                AND status = 'open' AND labels LIKE '%\"gt:triage-request\"%') \
             OR EXISTS (SELECT 1 FROM beads WHERE type = 'issue' AND status IN ('open', 'in_progress', 'in_review') \
                AND status = 'open' AND rig_id IS NOT NULL AND assignee_agent_bead_id IS NULL)",
        )?
        .query_row([cutoff], |r| r.get(0))?)
}
