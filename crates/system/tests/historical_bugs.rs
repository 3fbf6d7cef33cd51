//! Regression tests for the historical bugs of `spec/town.md` §10 (b)–(r) and
//! the town-side fixes listed in §10.1.
//!
//! Each test is named after its bug, drives a town through the public API
//! (operations, recorded events and ticks on a manual clock) into the situation
//! the bug describes, and asserts the invariant the spec states for it, so the
//! test fails if the bug comes back. Raw SQL is used only to read, and to set
//! up what no operation produces (flags the forge would set, injected faults).
//!
//! Bug (a), the WAL checkpoint before a session snapshot is uploaded, lives on
//! the container side: its test belongs with the container runtime (issue 3).

use gastown::model::{
    labels, AgentRole, AgentStatus, BeadStatus, BeadType, EventType, MergeMode, NudgeTier, RigOverrides, Severity,
    TriageType,
};
use gastown::store::open_in_memory;
use gastown::time::{ManualClock, Timestamp, HOUR_MS, MINUTE_MS, SECOND_MS};
use gastown::town::actions::Action;
use gastown::town::effects::{Effect, RecordingRunner};
use gastown::town::escalations::{self, EscalationState};
use gastown::town::invariants::{self, Checker};
use gastown::town::snapshot::TownSnapshot;
use gastown::town::tick::run_effects;
use gastown::town::{
    AddRig, Agent, Bead, ConvoyTask, DoneReport, ExitStatus, ReviewResult, RouteEscalation, SlingBead, SlingConvoy,
    TickReport, Town, TownOptions, Watermark,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

// ---------------------------------------------------------------- the world

const T0: Timestamp = Timestamp(1_780_000_000_000);
/// The active alarm cadence.
const TICK_MS: i64 = 5 * SECOND_MS;
/// Heartbeats older than this mean the agent is gone.
const STALE_MS: i64 = 90 * SECOND_MS;

fn pr(n: u32) -> String {
    format!("https://github.com/acme/app/pull/{n}")
}

/// A town with one rig, a manual clock and a recording effect runner.
struct World {
    town: Town,
    clock: ManualClock,
    rig: String,
    runner: RecordingRunner,
    checker: Checker,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        World::with_rig(RigOverrides::default())
    }

    fn review_off() -> World {
        World::with_rig(RigOverrides { code_review: Some(false), ..Default::default() })
    }

    fn with_rig(config: RigOverrides) -> World {
        let clock = ManualClock::new(T0);
        let opts = TownOptions { town_id: "town-1".into(), seed: 42 };
        let mut town = Town::open(open_in_memory().unwrap(), Arc::new(clock.clone()), opts).unwrap();
        let rig = town
            .add_rig(AddRig {
                id: Some("rig-1".into()),
                name: "app".into(),
                git_url: "https://github.com/acme/app.git".into(),
                default_branch: None,
                config,
            })
            .unwrap()
            .id;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        World { town, clock, rig, runner: RecordingRunner::new(), checker: Checker::new(), rt }
    }

    fn now(&self) -> Timestamp {
        self.town.now()
    }
    fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms);
    }
    fn set_time(&self, t: Timestamp) {
        self.clock.set(t);
    }
    fn alarm(&self) -> Timestamp {
        self.town.alarm_at().unwrap().expect("the alarm is armed")
    }

    fn tick(&mut self) -> TickReport {
        self.rt.block_on(self.town.tick(&self.runner)).unwrap().expect("the town exists")
    }

    /// A tick, then every oracle the town can check on its own database.
    fn tick_checked(&mut self) -> TickReport {
        let r = self.tick();
        self.check(&r);
        r
    }

    fn check(&mut self, r: &TickReport) {
        let now = self.now();
        let mut v = self.checker.observe_tick(r);
        v.extend(self.checker.check(self.town.conn(), self.town.config(), now).unwrap());
        assert!(v.is_empty(), "oracle violations at {now}: {v:?}");
        assert!(r.invariant_violations.is_empty(), "upstream invariants at {now}: {:?}", r.invariant_violations);
    }

    /// The invariants the town-state checker names now, without a tick.
    fn violated(&mut self) -> Vec<&'static str> {
        let now = self.now();
        let v = self.checker.check(self.town.conn(), self.town.config(), now).unwrap();
        v.into_iter().map(|v| v.invariant).collect()
    }

    /// The snapshot the next tick's reconcile pass will see (no events pending).
    fn snapshot(&self) -> TownSnapshot {
        TownSnapshot::load(self.town.conn(), self.now(), false, self.town.config()).unwrap()
    }

    /// Run effects the way the API server does, then apply their outcomes.
    fn run(&mut self, effects: &[Effect]) {
        let outcomes = self.rt.block_on(run_effects(&self.runner, effects));
        self.town.apply_outcomes(&outcomes).unwrap();
    }

    fn sling(&mut self, title: &str) -> (String, String) {
        let input = SlingBead { rig_id: self.rig.clone(), title: title.into(), ..Default::default() };
        self.sling_with(input)
    }

    /// Sling a bead and run its start; returns (bead, polecat).
    fn sling_with(&mut self, input: SlingBead) -> (String, String) {
        let (slung, effects) = self.town.sling_bead(input).unwrap();
        self.run(&effects);
        (slung.bead_id, slung.agent_id.expect("a polecat starts at once"))
    }

    fn convoy(&mut self, title: &str) -> (String, Vec<String>) {
        let c = self
            .town
            .sling_convoy(SlingConvoy {
                rig_id: self.rig.clone(),
                title: title.into(),
                tasks: vec![ConvoyTask { title: format!("{title}: task"), ..Default::default() }],
                merge_mode: Some(MergeMode::ReviewThenLand),
                staged: Some(false),
                metadata: Map::new(),
            })
            .unwrap();
        (c.convoy_id, c.bead_ids)
    }

    fn beat(&mut self, agent: &str) {
        self.town.heartbeat(agent, &Watermark::default(), None).unwrap();
    }

    /// Every working agent's container is healthy and heart-beats.
    fn beat_working(&mut self) {
        for a in self.town.agents().unwrap() {
            if a.status == AgentStatus::Working && a.role != AgentRole::Mayor {
                self.beat(&a.agent_id);
            }
        }
    }

    fn done(&mut self, agent: &str, pr_url: Option<&str>) -> String {
        let report = DoneReport {
            branch: format!("gt/{}", &agent[..8]),
            pr_url: pr_url.map(str::to_owned),
            summary: None,
            bead_id: None,
        };
        self.town.agent_done(agent, report).unwrap()
    }

    fn bead(&mut self, id: &str) -> Bead {
        self.town.bead(id).unwrap()
    }
    fn status(&mut self, id: &str) -> BeadStatus {
        self.bead(id).status
    }
    fn agent(&mut self, id: &str) -> Agent {
        self.town.agent(id).unwrap()
    }
    fn hook(&mut self, agent: &str) -> Option<String> {
        self.agent(agent).current_hook_bead_id
    }
    fn mrs(&mut self) -> Vec<Bead> {
        self.town.beads_of(BeadType::MergeRequest, None).unwrap()
    }
    fn refineries(&mut self) -> Vec<Agent> {
        self.town.agents().unwrap().into_iter().filter(|a| a.role == AgentRole::Refinery).collect()
    }
    fn refinery(&mut self) -> Agent {
        let mut r = self.refineries();
        assert_eq!(r.len(), 1, "one refinery per rig");
        r.remove(0)
    }

    /// MR beads tracking `source` (an issue, or a convoy for landing MRs), oldest first.
    fn mrs_for(&mut self, source: &str) -> Vec<Bead> {
        let ids = self.ids(
            "SELECT d.bead_id FROM bead_dependencies d JOIN beads m ON m.bead_id = d.bead_id \
             WHERE d.depends_on_bead_id = ?1 AND d.dependency_type = 'tracks' AND m.type = 'merge_request' \
             ORDER BY m.created_at, m.bead_id",
            [source],
        );
        ids.iter().map(|id| self.bead(id)).collect()
    }

    /// Issue beads carrying `label`, oldest first.
    fn labelled(&mut self, label: &str) -> Vec<Bead> {
        let all = self.town.beads_of(BeadType::Issue, None).unwrap();
        all.into_iter().filter(|b| b.has_label(label)).collect()
    }

    fn pr_url(&self, mr: &str) -> Option<String> {
        self.town.conn().query_row("SELECT pr_url FROM review_metadata WHERE bead_id = ?1", [mr], |r| r.get(0)).unwrap()
    }

    fn escalation(&mut self, id: &str) -> EscalationState {
        self.town.read(|cx| escalations::state(cx, id)).unwrap().expect("escalation exists")
    }

    fn sql(&self, sql: &str, params: impl rusqlite::Params) {
        self.town.conn().execute(sql, params).unwrap();
    }

    fn count(&self, sql: &str, params: impl rusqlite::Params) -> i64 {
        self.town.conn().query_row(sql, params, |r| r.get(0)).unwrap()
    }

    fn ids(&self, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        let mut st = self.town.conn().prepare(sql).unwrap();
        let rows = st.query_map(params, |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// How often `bead` went from in progress back to open.
    fn reopened(&self, bead: &str) -> i64 {
        self.count(
            "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1 AND event_type = 'status_changed' \
             AND old_value = 'in_progress' AND new_value = 'open'",
            [bead],
        )
    }

    /// Reconciler nudges sent to `agent`: (tier source, time), oldest first.
    fn nudges(&self, agent: &str) -> Vec<(String, Timestamp)> {
        let mut st = self
            .town
            .conn()
            .prepare("SELECT source, created_at FROM agent_nudges WHERE agent_bead_id = ?1 ORDER BY created_at")
            .unwrap();
        let rows = st.query_map([agent], |r| Ok((r.get(0)?, Timestamp(r.get(1)?)))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }
}

/// Did the reconciler act on `agent` as the GUPP watchdog does?
fn gupp_acted_on(r: &TickReport, agent: &str) -> bool {
    r.actions.iter().any(|a| match a {
        Action::SendNudge { agent_id, .. }
        | Action::StopAgent { agent_id, .. }
        | Action::CreateTriageRequest { agent_id, .. }
        | Action::TransitionAgent { agent_id, to: AgentStatus::Stalled, .. } => agent_id == agent,
        _ => false,
    })
}

fn dispatched_beads(r: &TickReport) -> Vec<String> {
    r.actions
        .iter()
        .filter_map(|a| match a {
            Action::DispatchAgent { bead_id, .. } => Some(bead_id.clone()),
            _ => None,
        })
        .collect()
}

fn polls_of(r: &TickReport, mr: &str) -> usize {
    r.actions.iter().filter(|a| matches!(a, Action::PollPr { bead_id, .. } if bead_id == mr)).count()
}

/// Agents idle and hooked to a live bead with a stale heartbeat (bug f's state).
fn idle_hooked_stale(w: &mut World) -> BTreeSet<String> {
    let now = w.now();
    let mut out = BTreeSet::new();
    for a in w.town.agents().unwrap() {
        let Some(h) = &a.current_hook_bead_id else { continue };
        let live = matches!(w.status(h), BeadStatus::Open | BeadStatus::InProgress);
        let stale = a.last_activity_at.is_none_or(|t| now.since(t) > STALE_MS);
        if a.status == AgentStatus::Idle && live && stale {
            out.insert(a.agent_id);
        }
    }
    out
}

/// Keep `agent` alive: a heartbeat every 30 s reporting the SDK watermark
/// `sdk(now)`, a tick every minute, for `minutes` or until `on_tick` says stop.
fn live_for(
    w: &mut World,
    agent: &str,
    minutes: i64,
    sdk: impl Fn(Timestamp) -> Option<Timestamp>,
    mut on_tick: impl FnMut(&mut World, &TickReport) -> bool,
) {
    for half_minute in 1..=minutes * 2 {
        w.advance(30 * SECOND_MS);
        let wm = Watermark { last_event_at: sdk(w.now()), ..Default::default() };
        w.town.heartbeat(agent, &wm, None).unwrap();
        if half_minute % 2 == 0 {
            let r = w.tick();
            if !on_tick(w, &r) {
                return;
            }
        }
    }
}

/// A polecat whose SDK went quiet 30 s after dispatch while its heartbeat goes
/// on, until GUPP force-stops it. Returns (bead, agent, stalled_at).
fn stall_by_gupp(w: &mut World) -> (String, String, Timestamp) {
    let (bead, agent) = w.sling("goes quiet");
    let last_sdk = w.now().plus_ms(30 * SECOND_MS);
    let id = agent.clone();
    live_for(w, &agent, 180, |_| Some(last_sdk), |w, _| w.agent(&id).status != AgentStatus::Stalled);
    let a = w.agent(&agent);
    assert_eq!(a.status, AgentStatus::Stalled, "GUPP force-stops after 2 h without SDK activity");
    (bead, agent, a.stalled_at.expect("stalled_at is set"))
}

/// A source whose PR MR is in progress and polled, its refinery done and idle.
/// Returns (source, polecat, mr, refinery).
fn pr_mr_in_progress(w: &mut World, title: &str, n: u32) -> (String, String, String, String) {
    let (src, polecat) = w.sling(title);
    w.advance(20 * SECOND_MS);
    w.beat(&polecat);
    w.done(&polecat, Some(&pr(n)));
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).pop().expect("gt_done opened an MR").bead_id;
    let refinery = w.refinery().agent_id;
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr.as_str()), "Rule 5 popped the MR for review");
    w.done(&refinery, Some(&pr(n)));
    w.advance(TICK_MS);
    let r = w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    assert_eq!(w.pr_url(&mr), Some(pr(n)));
    assert_eq!(w.hook(&refinery), None, "the refinery let go after gt_done");
    assert_eq!(polls_of(&r, &mr), 1, "a PR MR in progress is polled");
    (src, polecat, mr, refinery)
}

fn feedback_event(w: &mut World, mr: &str, n: u32) {
    let payload = json!({
        "mr_bead_id": mr, "pr_url": pr(n), "pr_number": n, "repo": "acme/app",
        "branch": "gt/feature", "has_unresolved_comments": true,
    });
    w.town.insert_event(EventType::PrFeedbackDetected, None, Some(mr), payload).unwrap();
}

fn pr_state_event(w: &mut World, mr: &str, n: u32, state: &str) {
    let payload = json!({ "pr_url": pr(n), "pr_state": state });
    w.town.insert_event(EventType::PrStatusChanged, None, Some(mr), payload).unwrap();
}

/// Live beads labelled `label` that block `mr`.
fn live_blockers(w: &mut World, mr: &str, label: &str) -> usize {
    let pattern = format!("%\"{label}\"%");
    w.count(
        "SELECT COUNT(*) FROM bead_dependencies d JOIN beads f ON f.bead_id = d.depends_on_bead_id \
         WHERE d.bead_id = ?1 AND d.dependency_type = 'blocks' AND f.status IN ('open', 'in_progress', 'in_review') \
         AND f.labels LIKE ?2",
        rusqlite::params![mr, pattern],
    ) as usize
}

// ---------------------------------------------------------------- §10 (b)–(r)

fn escalate(w: &mut World, message: &str) -> String {
    let input = RouteEscalation {
        source_rig_id: Some(w.rig.clone()),
        source_agent_id: None,
        severity: Severity::Medium,
        category: None,
        message: message.into(),
    };
    let (id, effects) = w.town.route_escalation(&input).unwrap();
    w.run(&effects);
    id
}

#[test]
fn bug_b_re_escalation_skips_closed_and_failed_escalations() {
    let mut w = World::new();
    let closed = escalate(&mut w, "closed by triage");
    let failed = escalate(&mut w, "failed by triage");
    let acked = escalate(&mut w, "acknowledged by the mayor");
    let open = escalate(&mut w, "nobody answered");
    w.town.close_bead(&closed, "triage").unwrap();
    w.town.update_bead_status(&failed, BeadStatus::Failed, "triage").unwrap();
    w.town.acknowledge_escalation(&acked).unwrap();
    assert_eq!(w.status(&acked), BeadStatus::Closed, "acknowledging closes the escalation bead (#1107)");
    w.runner.take();

    // Re-escalation is due every 4 h of age (at exactly 4 h, not a millisecond before),
    // one step at a time, and stops at critical.
    let step = 4 * HOUR_MS;
    let timeline = [
        (step - 1, 0, Severity::Medium),
        (step, 1, Severity::High),
        (2 * step - 1, 1, Severity::High),
        (2 * step, 2, Severity::Critical),
        (3 * step, 2, Severity::Critical),
        (5 * step, 2, Severity::Critical),
    ];
    for (age, count, severity) in timeline {
        w.set_time(T0.plus_ms(age));
        w.tick_checked();
        let s = w.escalation(&open);
        assert_eq!((s.re_escalation_count, s.severity), (count, severity), "open escalation at age {age} ms");
        for ended in [&closed, &failed, &acked] {
            let s = w.escalation(ended);
            assert_eq!((s.re_escalation_count, s.severity), (0, Severity::Medium), "terminal {ended} changed");
        }
    }
    let notices: Vec<Option<String>> = w
        .runner
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Effect::MessageMayor { about_bead, text, .. } if text.starts_with("[Re-Escalation") => Some(about_bead),
            _ => None,
        })
        .collect();
    assert_eq!(notices, vec![Some(open.clone()), Some(open)], "the mayor hears only about the open escalation");
}

/// In a code_review=false rig: every non-landing MR in progress has a PR, and
/// refineries are hooked only to system landing MRs.
fn assert_review_off_invariant(w: &mut World) {
    for mr in w.mrs() {
        let landing = mr.created_by.as_deref() == Some("system");
        if !landing && mr.status == BeadStatus::InProgress {
            assert!(w.pr_url(&mr.bead_id).is_some(), "MR {} in progress without a PR", mr.bead_id);
        }
    }
    for r in w.refineries() {
        if let Some(h) = r.current_hook_bead_id {
            let mr = w.bead(&h);
            assert_eq!(mr.created_by.as_deref(), Some("system"), "refinery hooked to non-landing MR {h}");
        }
    }
}

#[test]
fn bug_c_review_off_fast_tracks_only_mrs_with_pr() {
    let mut w = World::review_off();
    let (with_pr, a) = w.sling("opens its PR");
    let (without, b) = w.sling("pushes but opens no PR");
    let (convoy, tasks) = w.convoy("land me");
    w.town.close_bead(&tasks[0], "user").unwrap();
    w.advance(20 * SECOND_MS);
    w.beat_working();
    w.done(&a, Some(&pr(1)));
    w.done(&b, None);

    let mut polls = 0;
    let mut landing_reviewed = false;
    for i in 0..(40 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.beat_working();
        let r = w.tick_checked();
        if i == 0 {
            let mr = w.mrs_for(&with_pr).remove(0);
            assert_eq!(mr.status, BeadStatus::InProgress, "the PR MR skips the refinery in the first tick");
        }
        for bead in dispatched_beads(&r) {
            let b = w.bead(&bead);
            let ok = b.bead_type == BeadType::Issue || b.created_by.as_deref() == Some("system");
            assert!(ok, "dispatch on non-landing MR {bead} although review is off");
        }
        let with_mr = w.mrs_for(&with_pr).remove(0).bead_id;
        polls += polls_of(&r, &with_mr);
        assert_review_off_invariant(&mut w);
        let landing = w.mrs_for(&convoy);
        landing_reviewed |=
            landing.iter().any(|m| w.refineries().iter().any(|r| r.current_hook_bead_id.as_ref() == Some(&m.bead_id)));
    }
    let with_mr = w.mrs_for(&with_pr).remove(0);
    assert_eq!(with_mr.status, BeadStatus::InProgress, "a polled PR MR is never failed when review is off");
    assert!((39..=41).contains(&polls), "polled once a minute for 40 min: {polls}");
    let without_mrs = w.mrs_for(&without);
    assert_eq!(without_mrs.len(), 1);
    assert_eq!(without_mrs[0].status, BeadStatus::Failed, "the URL-less MR is handled by the orphan cleanup");
    assert!(landing_reviewed, "a system landing MR still goes to the refinery");
}

#[test]
fn bug_d_refinery_reviews_one_direct_mr_at_a_time_and_never_a_babysat_one() {
    let mut w = World::new();
    let step = |w: &mut World| -> TickReport {
        w.advance(TICK_MS);
        w.beat_working();
        let r = w.tick_checked();
        let url_less_in_progress = w
            .mrs()
            .into_iter()
            .filter(|m| m.status == BeadStatus::InProgress && w.pr_url(&m.bead_id).is_none())
            .count();
        assert!(url_less_in_progress <= 1, "{url_less_in_progress} direct reviews in progress in one rig");
        r
    };

    // A babysat PR is fast-tracked to polling; no refinery is created for it.
    let (s0, p0) = w.sling("babysat");
    let babysat = w.town.submit_to_review_queue(&p0, &s0, "gt/babysat", Some(&pr(10)), None).unwrap();
    w.sql("UPDATE review_metadata SET babysit = 1 WHERE bead_id = ?1", [&babysat]);
    let r = step(&mut w);
    assert_eq!(w.status(&babysat), BeadStatus::InProgress);
    assert!(w.refineries().is_empty(), "no refinery for a babysat PR");
    assert!(!dispatched_beads(&r).contains(&babysat));

    let (s1, p1) = w.sling("PR strategy");
    let (s2, p2) = w.sling("direct one");
    let (s3, p3) = w.sling("direct two");
    w.done(&p1, Some(&pr(1)));
    step(&mut w);
    let mr1 = w.mrs_for(&s1).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr1.as_str()));

    w.done(&p2, None);
    step(&mut w);
    let mr2 = w.mrs_for(&s2).remove(0).bead_id;
    assert_eq!(w.status(&mr2), BeadStatus::Open, "the refinery is busy");

    // The refinery opens the PR: MR 1 is merely polled now and does not hold the queue.
    w.done(&refinery, Some(&pr(1)));
    step(&mut w);
    assert_eq!(w.status(&mr1), BeadStatus::InProgress);
    assert_eq!(w.pr_url(&mr1), Some(pr(1)));
    assert_eq!(w.status(&mr2), BeadStatus::InProgress, "popped while a PR MR is being polled");
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr2.as_str()));

    // A URL-less review in progress holds the rig's queue.
    w.done(&p3, None);
    step(&mut w);
    let mr3 = w.mrs_for(&s3).remove(0).bead_id;
    for _ in 0..12 {
        step(&mut w);
        assert_eq!(w.status(&mr3), BeadStatus::Open, "waits behind the direct review in progress");
    }
    w.done(&refinery, None);
    step(&mut w);
    assert_eq!(w.status(&mr2), BeadStatus::Closed, "merged directly");
    assert_eq!(w.status(&mr3), BeadStatus::InProgress, "next in line");
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr3.as_str()));

    // A refinery that loses its hook leaves its review in progress: the queue
    // still waits until Rule 3 reopens that review, which goes first again.
    let (s4, p4) = w.sling("direct three");
    w.done(&p4, None);
    step(&mut w);
    let mr4 = w.mrs_for(&s4).remove(0).bead_id;
    w.town.unhook_bead(&refinery).unwrap();
    for _ in 0..(3 * MINUTE_MS / TICK_MS) {
        step(&mut w);
        assert_eq!(w.status(&mr4), BeadStatus::Open, "popped while a direct review is in progress");
    }
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr3.as_str()));
    for r in w.refineries() {
        assert_ne!(r.current_hook_bead_id.as_deref(), Some(babysat.as_str()));
    }
}

#[test]
fn bug_d_oracle_names_a_review_queue_that_stands_still() {
    let mut w = World::new();
    let (src, p) = w.sling("waits for a refinery");
    let mr = w.town.submit_to_review_queue(&p, &src, "gt/waits", Some(&pr(1)), None).unwrap();
    assert!(w.violated().is_empty(), "an MR may wait a tick");
    // No tick runs, so Rule 5 never pops the MR: the queue stands still past
    // the longest gap between two ticks.
    w.advance(6 * MINUTE_MS);
    assert_eq!(w.violated(), ["review_queue_moves"]);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::InProgress, "the next tick pops it");
    assert!(w.violated().is_empty());
}

#[test]
fn rule7_oracle_names_a_refinery_left_on_an_ended_mr() {
    let mut w = World::new();
    let (src, p) = w.sling("merged behind the refinery's back");
    let mr = w.town.submit_to_review_queue(&p, &src, "gt/behind", Some(&pr(1)), None).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    let refinery = w.refineries().remove(0).agent_id;
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr.as_str()), "the refinery took the MR");
    // The MR ends under the working refinery (say, merged on the forge).
    w.sql("UPDATE beads SET status = 'closed' WHERE bead_id = ?1", [&mr]);
    assert!(w.violated().is_empty(), "Rule 7 may take a tick");
    // No tick runs, so Rule 7 never frees it: past the longest gap between two ticks.
    w.advance(6 * MINUTE_MS);
    assert_eq!(w.violated(), ["refinery_leaves_ended_mr"]);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.hook(&refinery), None, "the next tick frees the refinery");
    assert!(w.violated().is_empty());
}

#[test]
fn bug_e_url_less_mr_fails_within_one_tick_and_source_retries() {
    let mut w = World::review_off();
    let (src, p) = w.sling("forgets to open a PR");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let mrs = w.mrs_for(&src);
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].status, BeadStatus::Failed, "failed in the tick it appeared");
    assert_eq!(w.status(&src), BeadStatus::Open, "the source goes back for another attempt");

    let mut redispatched = false;
    for _ in 0..4 {
        w.advance(TICK_MS);
        w.tick_checked();
        let s = w.status(&src);
        if s == BeadStatus::InReview {
            assert!(w.mrs_for(&src).iter().any(|m| m.status.is_live()), "in review without a live MR");
        }
        if s == BeadStatus::InProgress {
            redispatched = true;
            break;
        }
    }
    assert!(redispatched, "the source is re-dispatched after its dispatch cooldown");
    assert_eq!(w.bead(&src).dispatch_attempts, 2);
}

#[test]
fn bug_f_idle_agent_with_stale_heartbeat_is_unhooked_within_one_tick() {
    let mut w = World::new();
    w.runner.fail_all_starts.set(true);
    let (bead, p) = w.sling("start looks failed");
    let a = w.agent(&p);
    assert_eq!(a.status, AgentStatus::Working, "a failed start leaves the agent working (#2025 follow-up)");
    assert_eq!(a.current_hook_bead_id.as_deref(), Some(bead.as_str()));

    let mut previous = BTreeSet::new();
    let mut released_at = None;
    for _ in 0..(20 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.tick_checked();
        let now = idle_hooked_stale(&mut w);
        let stuck: Vec<_> = now.intersection(&previous).collect();
        assert!(stuck.is_empty(), "idle-hooked with a stale heartbeat for two ticks: {stuck:?}");
        previous = now;
        if released_at.is_none() && w.hook(&p).is_none() {
            released_at = Some(w.now());
            assert_eq!(w.status(&bead), BeadStatus::Open, "the bead is reset for re-dispatch");
        }
    }
    // A1 idles at the first tick past 90 s (T0 + 95 s), the rule lets go one tick later.
    assert_eq!(released_at, Some(T0.plus_ms(100 * SECOND_MS)));
}

#[test]
fn bug_f_idle_agent_with_fresh_heartbeat_keeps_its_hook() {
    let mut w = World::new();
    let (bead, p) = w.sling("container reports an exit too early");
    w.advance(60 * SECOND_MS);
    w.beat(&p);
    let beat = w.now();
    w.town.record_container_status(&p, "exited", None).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    let a = w.agent(&p);
    assert_eq!((a.status, a.current_hook_bead_id.as_deref()), (AgentStatus::Idle, Some(bead.as_str())));
    while w.now().plus_ms(TICK_MS) < beat.plus_ms(STALE_MS) {
        w.advance(TICK_MS);
        w.tick_checked();
        assert_eq!(w.hook(&p).as_deref(), Some(bead.as_str()), "unhooked with a fresh heartbeat");
    }
    w.set_time(beat.plus_ms(STALE_MS));
    w.tick_checked();
    assert_eq!(w.hook(&p).as_deref(), Some(bead.as_str()), "a heartbeat exactly 90 s old is still fresh");
    assert_eq!(w.status(&bead), BeadStatus::InProgress);
    w.set_time(beat.plus_ms(STALE_MS + 1));
    w.tick_checked();
    assert_eq!(w.hook(&p), None, "stale: released");
    assert_eq!(w.status(&bead), BeadStatus::Open);
}

#[test]
fn bug_f_unhooked_refinery_done_without_pr_fails_review_and_escalates() {
    let mut w = World::new();
    let (src, p) = w.sling("reviewed by a refinery that loses its hook");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr.as_str()));
    // The refinery never heart-beats: the recovery rules take its hook.
    for _ in 0..40 {
        w.advance(TICK_MS);
        w.tick_checked();
        if w.hook(&refinery).is_none() {
            break;
        }
    }
    assert_eq!(w.hook(&refinery), None);
    // Its session was alive after all and reports a direct-strategy gt_done.
    w.done(&refinery, None);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::Failed, "never merged without a hook");
    assert_ne!(w.status(&src), BeadStatus::Closed);
    let esc = w.count("SELECT COUNT(*) FROM escalation_metadata WHERE category = 'refinery_unhooked_done'", []);
    assert_eq!(esc, 1, "a human hears about it");
}

#[test]
fn bug_g_gupp_never_acts_within_15_min_of_a_dispatch() {
    let mut w = World::new();
    let (first, p) = w.sling("first session");
    w.advance(30 * SECOND_MS);
    let wm = Watermark { last_event_at: Some(w.now()), ..Default::default() };
    w.town.heartbeat(&p, &wm, None).unwrap();
    assert!(w.agent(&p).last_event_at.is_some());
    w.town.reset_agent(&p).unwrap();
    w.town.close_bead(&first, "user").unwrap();
    // Three hours later the same polecat takes new work: its old watermark is stale.
    w.advance(3 * HOUR_MS);
    let (second, again) = w.sling("second session");
    assert_eq!(again, p, "the idle polecat is reused");
    let a = w.agent(&p);
    assert_eq!((a.last_event_at, a.last_event_type.as_deref()), (None, None), "dispatch clears the watermark");
    let dispatched = a.last_dispatched_at.unwrap();
    let id = p.clone();
    live_for(
        &mut w,
        &p,
        15,
        |_| None,
        |w, r| {
            assert!(!gupp_acted_on(r, &id), "GUPP acted {} ms after dispatch", w.now().since(dispatched));
            true
        },
    );
    // The oracle agrees on a snapshot taken right before a tick.
    let snap = w.snapshot();
    let r = w.tick();
    assert!(invariants::check_actions(&snap, &r.actions).is_empty());
    assert_eq!(w.hook(&p).as_deref(), Some(second.as_str()));
    assert_eq!(w.agent(&p).status, AgentStatus::Working);
}

#[test]
fn bug_h_calls_never_postpone_the_alarm() {
    let mut w = World::new();
    // An idle town sleeps on the 5 min cadence; heartbeats and events leave a future alarm alone.
    w.set_time(w.alarm());
    let r = w.tick();
    assert!(!r.active_work);
    assert_eq!(w.alarm(), w.now().plus_ms(300 * SECOND_MS));
    // Work arriving pulls the next tick in to 5 s.
    let (_, first) = w.sling("first");
    assert_eq!(w.alarm(), w.now().plus_ms(TICK_MS));

    let mut slung = vec![(w.agent(&first).current_hook_bead_id.unwrap(), first)];
    let mut ticks = vec![w.now()];
    for second in 1..=180 {
        w.advance(SECOND_MS);
        if w.alarm() <= w.now() {
            w.tick();
            ticks.push(w.now());
        }
        let before = w.alarm();
        let now = w.now();
        let (bead, agent) = slung.last().unwrap().clone();
        match second % 6 {
            0 => slung.push(w.sling(&format!("bead {second}"))),
            1 => w.beat(&agent),
            2 => {
                w.town.insert_event(EventType::NudgeTimeout, None, None, json!({})).unwrap();
            }
            3 => {
                w.town.submit_to_review_queue(&agent, &bead, &format!("gt/extra-{second}"), None, None).unwrap();
            }
            4 => {
                w.town.agent_completed(&agent, ExitStatus::Completed, None).unwrap();
            }
            _ => {
                let input = SlingBead {
                    rig_id: w.rig.clone(),
                    title: format!("held {second}"),
                    labels: vec![labels::HELD.into()],
                    ..Default::default()
                };
                let held = w.town.sling_bead(input).unwrap().0.bead_id;
                w.town.start_held_bead(&held).unwrap();
            }
        }
        let after = w.alarm();
        assert!(invariants::alarm_postponed(Some(before), Some(after), now).is_none(), "call {second}");
        assert!(after <= before, "call {second} moved the alarm from {before} to {after}");
    }
    let gaps: Vec<i64> = ticks.windows(2).map(|p| p[1].since(p[0])).collect();
    assert!(gaps.iter().all(|&g| g <= TICK_MS), "ticks starved under continuous traffic: {gaps:?}");
    assert!(ticks.len() >= 36);
}

#[test]
fn bug_i_pr_feedback_and_conflict_beads_skip_the_review_queue() {
    let mut w = World::new();
    let (_, polecat, mr, _) = pr_mr_in_progress(&mut w, "feature", 7);
    feedback_event(&mut w, &mr, 7);
    w.advance(TICK_MS);
    w.tick_checked();
    let feedback = w.labelled(labels::PR_FEEDBACK);
    assert_eq!(feedback.len(), 1);
    let fb = feedback[0].bead_id.clone();
    assert_eq!(w.hook(&polecat).as_deref(), Some(fb.as_str()), "a polecat picks the feedback up");
    assert_eq!(live_blockers(&mut w, &mr, labels::PR_FEEDBACK), 1, "it blocks the MR");
    w.beat(&polecat);
    w.done(&polecat, Some(&pr(7)));
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&fb), BeadStatus::Closed, "closed directly by gt_done");
    assert_eq!(w.hook(&polecat), None);
    assert_eq!(w.mrs().len(), 1, "no second review for feedback work");
    assert_eq!(live_blockers(&mut w, &mr, labels::PR_FEEDBACK), 0, "closing unblocks the MR");

    let payload = json!({"mr_bead_id": mr, "pr_url": pr(7), "branch": "gt/feature"});
    w.town.insert_event(EventType::PrConflictDetected, None, Some(&mr), payload).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    let conflict = w.labelled(labels::PR_CONFLICT).remove(0).bead_id;
    assert_eq!(w.hook(&polecat).as_deref(), Some(conflict.as_str()));
    w.beat(&polecat);
    w.done(&polecat, Some(&pr(7)));
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&conflict), BeadStatus::Closed);
    assert_eq!(w.mrs().len(), 1);
    for fix in [&fb, &conflict] {
        assert!(w.mrs_for(fix).is_empty(), "an MR tracks fix-up bead {fix}");
    }
}

#[test]
fn bug_i_rework_and_fixup_beads_skip_the_review_queue() {
    let mut w = World::new();
    let (src, p) = w.sling("needs rework");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    let rework = w.town.request_changes(&refinery, "rename the helper", &[]).unwrap();
    w.advance(TICK_MS);
    w.beat_working();
    w.tick_checked();
    assert_eq!(w.hook(&p).as_deref(), Some(rework.as_str()), "the rework goes to a polecat");
    w.done(&p, None);
    w.advance(TICK_MS);
    w.beat_working();
    w.tick_checked();
    assert_eq!(w.status(&rework), BeadStatus::Closed);
    assert!(w.mrs_for(&rework).is_empty());
    assert_eq!(live_blockers(&mut w, &mr, labels::REWORK), 0);

    let mut meta = Map::new();
    meta.insert("branch".into(), Value::from("gt/feature"));
    let input = SlingBead {
        rig_id: w.rig.clone(),
        title: "fix the PR description".into(),
        labels: vec![labels::PR_FIXUP.into()],
        metadata: meta,
        ..Default::default()
    };
    let (fixup, f) = w.sling_with(input);
    w.advance(TICK_MS);
    w.beat_working();
    w.done(&f, Some(&pr(3)));
    w.advance(TICK_MS);
    w.beat_working();
    w.tick_checked();
    assert_eq!(w.status(&fixup), BeadStatus::Closed);
    assert!(w.mrs_for(&fixup).is_empty());
    assert_eq!(w.mrs().len(), 1, "only the original review exists");
}

#[test]
fn bug_j_no_feedback_bead_for_merged_or_closed_prs_and_at_most_one_live() {
    let mut w = World::new();
    // The merge is applied before the feedback fact of the same drain: no feedback bead.
    let (src1, _, mr1, _) = pr_mr_in_progress(&mut w, "merged meanwhile", 1);
    pr_state_event(&mut w, &mr1, 1, "merged");
    feedback_event(&mut w, &mr1, 1);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr1), BeadStatus::Closed);
    assert_eq!(w.status(&src1), BeadStatus::Closed);
    feedback_event(&mut w, &mr1, 1);
    w.advance(TICK_MS);
    w.tick_checked();
    assert!(w.labelled(labels::PR_FEEDBACK).is_empty(), "feedback for a merged PR");

    // Closed without merge: same.
    let (s2, p2) = w.sling("closed meanwhile");
    let mr2 = w.town.submit_to_review_queue(&p2, &s2, "gt/two", Some(&pr(2)), None).unwrap();
    pr_state_event(&mut w, &mr2, 2, "closed");
    feedback_event(&mut w, &mr2, 2);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr2), BeadStatus::Failed);
    assert!(w.labelled(labels::PR_FEEDBACK).is_empty(), "feedback for a closed PR");

    // Repeated facts for a live PR: one feedback bead, and a conflict folds into it.
    let (s3, p3) = w.sling("busy PR");
    let mr3 = w.town.submit_to_review_queue(&p3, &s3, "gt/three", Some(&pr(3)), None).unwrap();
    feedback_event(&mut w, &mr3, 3);
    feedback_event(&mut w, &mr3, 3);
    for _ in 0..3 {
        w.advance(TICK_MS);
        w.beat_working();
        w.tick_checked();
        feedback_event(&mut w, &mr3, 3);
    }
    let payload = json!({"mr_bead_id": mr3, "pr_url": pr(3), "branch": "gt/three"});
    w.town.insert_event(EventType::PrConflictDetected, None, Some(&mr3), payload).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(live_blockers(&mut w, &mr3, labels::PR_FEEDBACK), 1);
    assert_eq!(w.labelled(labels::PR_FEEDBACK).len(), 1);
    assert!(w.labelled(labels::PR_CONFLICT).is_empty(), "the live feedback bead absorbs the conflict");
}

#[test]
fn bug_k_reset_agent_makes_the_bead_dispatchable_at_once() {
    let mut w = World::new();
    w.runner.fail_all_starts.set(true);
    let (bead, _) = w.sling("keeps losing its agent");
    // Failed starts and lost heartbeats push the bead's counter to the cap.
    let mut reached = false;
    for _ in 0..(30 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.tick_checked();
        let b = w.bead(&bead);
        assert_ne!(b.status, BeadStatus::Failed, "failed before the fifth dispatch");
        if b.dispatch_attempts == 5 && b.status == BeadStatus::InProgress {
            reached = true;
            break;
        }
    }
    assert!(reached);
    let agent = w.bead(&bead).assignee_agent_bead_id.unwrap();
    assert_eq!(w.hook(&agent).as_deref(), Some(bead.as_str()));
    w.town.reset_agent(&agent).unwrap();
    let b = w.bead(&bead);
    assert_eq!((b.status, b.dispatch_attempts, b.last_dispatch_attempt_at), (BeadStatus::Open, 0, None));
    let a = w.agent(&agent);
    assert_eq!((a.status, a.current_hook_bead_id, a.dispatch_attempts), (AgentStatus::Idle, None, 0));

    w.runner.fail_all_starts.set(false);
    w.advance(TICK_MS);
    w.tick_checked();
    let b = w.bead(&bead);
    assert_eq!((b.status, b.dispatch_attempts), (BeadStatus::InProgress, 1), "dispatched on the next tick");
}

#[test]
fn bug_l_hook_is_mutually_exclusive() {
    let mut w = World::new();
    let (a_bead, x) = w.sling("a");
    let (b_bead, y) = w.sling("b");
    assert!(w.town.hook_bead(&x, &b_bead).is_err(), "an agent holding a hook cannot take another");
    assert!(w.town.hook_bead(&y, &a_bead).is_err());

    // X's container dies: X is idle with a stale-to-be hook on A; Y is freed and takes A.
    w.town.record_container_status(&x, "exited", None).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!((w.agent(&x).status, w.hook(&x).as_deref()), (AgentStatus::Idle, Some(a_bead.as_str())));
    w.town.unhook_bead(&y).unwrap();
    w.town.hook_bead(&y, &a_bead).unwrap();
    assert_eq!(w.hook(&x), None, "the other agent was unhooked first");
    assert_eq!(w.hook(&y).as_deref(), Some(a_bead.as_str()));
    assert_eq!(w.bead(&a_bead).assignee_agent_bead_id.as_deref(), Some(y.as_str()));

    // Unworkable beads cannot be hooked at all.
    let triage = w.town.create_triage_request(TriageType::HelpRequest, None, "help", json!({})).unwrap().unwrap();
    let (convoy, _) = w.convoy("a convoy");
    let escalation = escalate(&mut w, "an escalation");
    for bead in [&triage, &convoy, &escalation] {
        assert!(w.town.hook_bead(&x, bead).is_err(), "hooked {bead}");
    }
    // From here on the reconciler keeps one agent per bead (checked every tick).
    for _ in 0..(10 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.beat_working();
        w.tick_checked();
    }
}

#[test]
fn bug_m_process_exit_never_closes_work() {
    let mut w = World::new();
    let (quit, p1) = w.sling("exits before gt_done");
    let (crashed, p2) = w.sling("crashes");
    let (evicted, p3) = w.sling("evicted long after its last heartbeat");
    let (src, p4) = w.sling("under review");
    w.advance(20 * SECOND_MS);
    w.beat_working();
    w.done(&p4, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).remove(0);
    let refinery = w.refinery().agent_id;
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr.bead_id.as_str()));

    // 100 s pass; everyone but p3 heart-beats, then the exits arrive together.
    w.advance(100 * SECOND_MS);
    for a in [&p1, &p2, &refinery] {
        w.beat(a);
    }
    w.town.agent_completed(&p1, ExitStatus::Completed, None).unwrap();
    w.town.agent_completed(&p2, ExitStatus::Failed, Some("OOM")).unwrap();
    w.town.agent_completed(&p3, ExitStatus::Completed, Some("container eviction")).unwrap();
    w.town.agent_completed(&refinery, ExitStatus::Completed, None).unwrap();
    w.town.agent_completed(&refinery, ExitStatus::Failed, Some("killed")).unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&quit), BeadStatus::InProgress, "an exit without gt_done closes nothing");
    assert_eq!(w.hook(&p1), None);
    assert_eq!(w.status(&crashed), BeadStatus::Failed);
    assert_eq!(w.reopened(&evicted), 1, "a stale eviction reopens at once");
    assert_eq!(w.bead(&evicted).dispatch_attempts, 2, "and Rule 1 sends it out again in the same tick");
    let after = w.bead(&mr.bead_id);
    assert_eq!((after.status, &after.assignee_agent_bead_id), (mr.status, &mr.assignee_agent_bead_id));
    assert_eq!(w.hook(&refinery).as_deref(), Some(mr.bead_id.as_str()), "the refinery keeps its MR");

    // Rule 3 brings the abandoned bead back after 5 min; nothing ever closes it.
    for _ in 0..(8 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.beat(&refinery);
        w.tick_checked();
        assert_ne!(w.status(&quit), BeadStatus::Closed);
        if w.now().since(T0) <= 5 * MINUTE_MS {
            assert_eq!(w.reopened(&quit), 0, "Rule 3 waits 5 min");
        }
    }
    assert!(w.reopened(&quit) >= 1, "Rule 3 recovered the bead");
    assert_ne!(w.status(&src), BeadStatus::Closed);
}

#[test]
fn bug_n_landing_mr_retries_are_single_spaced_and_bounded() {
    let mut w = World::new();
    let (convoy, tasks) = w.convoy("land with retries");
    w.town.close_bead(&tasks[0], "user").unwrap();
    assert!(w.town.convoy_meta(&convoy).unwrap().ready_to_land);

    let mut created: Vec<(Timestamp, String)> = Vec::new();
    let mut failed_at = None;
    for _ in 0..(30 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.tick_checked();
        let now = w.now();
        if w.status(&convoy) == BeadStatus::Failed {
            failed_at = Some(now);
            break;
        }
        let landing = w.mrs_for(&convoy);
        assert!(landing.iter().filter(|m| m.status.is_live()).count() <= 1, "two live landing MRs");
        for m in &landing {
            if !created.iter().any(|(_, id)| *id == m.bead_id) {
                created.push((m.created_at, m.bead_id.clone()));
            }
        }
        let attempts = w.town.convoy_meta(&convoy).unwrap().landing_mr_attempts;
        assert_eq!(attempts as usize, created.len());
        assert!(attempts <= 5);
        // Each landing MR fails its review 20 s after it was created.
        for m in landing.iter().filter(|m| m.status.is_live() && now.since(m.created_at) >= 20 * SECOND_MS) {
            w.town.complete_review(&m.bead_id, ReviewResult::Failed, Some("gates failed")).unwrap();
        }
    }
    assert_eq!(created.len(), 5, "five attempts, no more");
    // Spacing: 2^n × 30 s after attempt n, reached on the first tick that allows it.
    let cooldowns = [60, 120, 240, 480].map(|s| s * SECOND_MS);
    for (n, pair) in created.windows(2).enumerate() {
        let gap = pair[1].0.since(pair[0].0);
        assert!(gap >= cooldowns[n] && gap <= cooldowns[n] + TICK_MS, "gap after attempt {}: {gap} ms", n + 1);
    }
    let fifth_failed = created[4].0.plus_ms(20 * SECOND_MS);
    assert_eq!(failed_at, Some(fifth_failed.plus_ms(TICK_MS)), "fail_convoy right after the fifth failure");
    let c = w.bead(&convoy);
    assert_eq!(c.meta_str("failureReason"), Some("landing_mr_exhausted"));
}

#[test]
fn bug_n_failed_landing_mr_awaiting_approval_is_not_respawned() {
    let mut w = World::new();
    let (convoy, tasks) = w.convoy("waits for a human");
    w.town.close_bead(&tasks[0], "user").unwrap();
    w.advance(TICK_MS);
    w.tick_checked();
    let landing = w.mrs_for(&convoy).remove(0).bead_id;
    w.sql("UPDATE review_metadata SET awaiting_approval = 1 WHERE bead_id = ?1", [&landing]);
    w.town.complete_review(&landing, ReviewResult::Failed, Some("approval required")).unwrap();
    let mut suppressed = 0;
    for _ in 0..60 {
        w.advance(MINUTE_MS);
        let r = w.tick_checked();
        suppressed += r
            .actions
            .iter()
            .filter(|a| matches!(a, Action::EmitEvent { event_name: "reconciler.respawn_suppressed", .. }))
            .count();
    }
    assert_eq!(w.mrs_for(&convoy).len(), 1, "no respawn while a human must approve");
    assert_eq!(w.town.convoy_meta(&convoy).unwrap().landing_mr_attempts, 1);
    assert_eq!(w.status(&convoy), BeadStatus::Open);
    assert!(suppressed > 0);
}

#[test]
fn bug_o_gupp_acts_only_on_valid_past_activity() {
    let mut w = World::new();
    let (_, never) = w.sling("never reported");
    let (_, skewed) = w.sling("clock skew");
    let (_, silent) = w.sling("silent for two hours");
    let start = w.now();
    w.advance(30 * SECOND_MS);
    let wm = Watermark { last_event_at: Some(w.now()), ..Default::default() };
    w.town.heartbeat(&silent, &wm, None).unwrap();
    w.advance(2 * HOUR_MS + MINUTE_MS);
    w.beat(&silent);
    let future = Watermark { last_event_at: Some(w.now().plus_ms(HOUR_MS)), ..Default::default() };
    w.town.heartbeat(&skewed, &future, None).unwrap();
    w.sql("UPDATE agent_metadata SET last_activity_at = NULL, last_event_at = NULL WHERE bead_id = ?1", [&never]);

    let snap = w.snapshot();
    let r = w.tick_checked();
    assert!(invariants::check_actions(&snap, &r.actions).is_empty(), "{:?}", r.actions);
    assert!(gupp_acted_on(&r, &silent), "control: a valid, 2 h old activity is acted on");
    assert!(!gupp_acted_on(&r, &never), "no activity at all is A1's case, not GUPP's");
    assert!(!gupp_acted_on(&r, &skewed), "a future timestamp is not evidence");
    assert_eq!(w.agent(&never).status, AgentStatus::Idle, "A1: no heartbeat since dispatch");
    for _ in 0..30 {
        w.advance(MINUTE_MS);
        w.town.heartbeat(&skewed, &future, None).unwrap();
        let snap = w.snapshot();
        let r = w.tick_checked();
        assert!(invariants::check_actions(&snap, &r.actions).is_empty());
        assert!(!gupp_acted_on(&r, &skewed));
    }
    assert!(w.now().since(start) > 2 * HOUR_MS);
}

#[test]
fn bug_p_container_status_is_upserted_and_running_never_recorded() {
    let mut w = World::new();
    let (_, a) = w.sling("a");
    let (_, b) = w.sling("b");
    let rows = |w: &World| w.count("SELECT COUNT(*) FROM town_events WHERE event_type = 'container_status'", []);
    // An hour of the steady state, reported every 5 s.
    for _ in 0..720 {
        w.advance(TICK_MS);
        w.town.record_container_status(&a, "running", None).unwrap();
    }
    assert_eq!(rows(&w), 0, "running is never recorded");

    let statuses = ["exited", "exited", "not_found", "exited", "unknown", "not_found", "exited"];
    for s in statuses {
        w.advance(SECOND_MS);
        w.town.record_container_status(&a, s, Some("oom")).unwrap();
        w.town.record_container_status(&b, "unknown", None).unwrap();
        let dups = w.count(
            "SELECT COUNT(*) FROM (SELECT 1 FROM town_events WHERE event_type = 'container_status' \
             AND processed_at IS NULL GROUP BY agent_id, json_extract(payload, '$.status') HAVING COUNT(*) > 1)",
            [],
        );
        assert_eq!(dups, 0, "two pending container_status events for one (agent, status)");
    }
    assert_eq!(rows(&w), 4, "a: exited, not_found, unknown; b: unknown");
    let latest: i64 = w.count(
        "SELECT created_at FROM town_events WHERE event_type = 'container_status' AND agent_id = ?1 \
         AND json_extract(payload, '$.status') = 'exited'",
        [&a],
    );
    assert_eq!(Timestamp(latest), w.now(), "a repeat bumps the pending event's time");
    // The oracle names a status queued twice (the old behaviour).
    let dup = "INSERT INTO town_events (event_id, event_type, agent_id, bead_id, payload, created_at) \
               SELECT event_id || '-again', event_type, agent_id, bead_id, payload, created_at FROM town_events \
               WHERE event_type = 'container_status' AND processed_at IS NULL AND agent_id = ?1 LIMIT 1";
    w.sql(dup, [&b]);
    assert_eq!(w.violated(), ["container_status_upserted"]);
    w.sql("DELETE FROM town_events WHERE event_id LIKE '%-again'", []);
    let r = w.tick();
    w.check(&r);
    assert_eq!(w.town.pending_event_count().unwrap(), 0);
    w.town.record_container_status(&a, "exited", None).unwrap();
    assert_eq!(w.town.pending_event_count().unwrap(), 1, "after the drain a new observation is a new event");
}

#[test]
fn bug_q_polled_pr_mr_is_never_orphaned() {
    let mut w = World::new();
    let (src, _, mr, _) = pr_mr_in_progress(&mut w, "long PR review", 4);
    let mut last_poll = w.now();
    for _ in 0..(40 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        let snap = w.snapshot();
        let r = w.tick_checked();
        assert!(invariants::check_actions(&snap, &r.actions).is_empty());
        assert_eq!(w.status(&mr), BeadStatus::InProgress, "a polled PR MR was failed");
        if polls_of(&r, &mr) == 1 {
            let gap = w.now().since(last_poll);
            assert!((60 * SECOND_MS..=65 * SECOND_MS).contains(&gap), "poll gap {gap} ms");
            last_poll = w.now();
        }
    }
    // The town sleeps. An MR waiting for a human is never orphaned.
    w.sql("UPDATE review_metadata SET awaiting_approval = 1 WHERE bead_id = ?1", [&mr]);
    w.advance(31 * MINUTE_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    // 30 min since the last poll is not yet orphaned; a millisecond more is.
    w.sql("UPDATE review_metadata SET awaiting_approval = 0 WHERE bead_id = ?1", [&mr]);
    w.advance(30 * MINUTE_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::InProgress);
    w.advance(30 * MINUTE_MS + 1);
    w.tick();
    assert_eq!(w.status(&mr), BeadStatus::Failed, "polling stopped for 30 min: orphaned");
    // The source, in review for an hour and a half, is reopened on the next tick.
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&src), BeadStatus::Open);
}

#[test]
fn bug_r_failed_events_retry_next_tick() {
    let mut w = World::new();
    let (a_bead, a) = w.sling("a");
    let (b_bead, b) = w.sling("b");
    w.advance(20 * SECOND_MS);
    w.beat_working();
    w.tick_checked();
    // A storage fault hits the application of A's gt_done, and only that.
    w.sql(
        &format!(
            "CREATE TRIGGER injected_fault BEFORE UPDATE OF status ON beads \
             WHEN OLD.bead_id = '{a_bead}' AND NEW.status = 'in_review' \
             BEGIN SELECT RAISE(ABORT, 'injected storage fault'); END"
        ),
        [],
    );
    let ev_a = w.done(&a, Some(&pr(1)));
    w.advance(1);
    let ev_b = w.done(&b, Some(&pr(2)));
    for i in 0..3 {
        w.advance(TICK_MS);
        w.beat_working();
        let r = w.tick_checked();
        let retried: Vec<&String> = r.events.retried.iter().map(|(id, _)| id).collect();
        assert_eq!(retried, vec![&ev_a], "left pending for the next tick");
        assert_eq!(r.events.applied.contains(&ev_b), i == 0, "later events still run, once");
        assert_eq!(w.status(&a_bead), BeadStatus::InProgress);
        assert!(w.mrs_for(&a_bead).is_empty(), "a failed application leaves nothing behind");
        assert_eq!(w.town.pending_event_count().unwrap(), 1);
    }
    assert_eq!(w.status(&b_bead), BeadStatus::InReview);
    w.sql("DROP TRIGGER injected_fault", []);
    w.advance(TICK_MS);
    w.beat_working();
    let r = w.tick_checked();
    assert!(r.events.applied.contains(&ev_a));
    assert_eq!(w.status(&a_bead), BeadStatus::InReview);
    assert_eq!(w.mrs_for(&a_bead).len(), 1, "applied exactly once");
    assert_eq!(w.town.pending_event_count().unwrap(), 0);

    // Facts about entities that do not exist can never apply: processed, not retried.
    let ghost_done = w.town.insert_event(EventType::AgentDone, Some("ghost-agent"), None, json!({})).unwrap();
    let ghost_pr =
        w.town.insert_event(EventType::PrStatusChanged, None, Some("ghost-mr"), json!({"pr_state": "merged"})).unwrap();
    let ghost_cancel = w
        .town
        .insert_event(EventType::BeadCancelled, None, Some("ghost-bead"), json!({"cancel_status": "closed"}))
        .unwrap();
    w.advance(TICK_MS);
    let r = w.tick_checked();
    let inapplicable: Vec<&String> = r.events.inapplicable.iter().map(|(id, _)| id).collect();
    assert_eq!(inapplicable, vec![&ghost_done, &ghost_pr]);
    assert!(r.events.applied.contains(&ghost_cancel), "bead_cancelled tolerates a missing bead");
    assert!(r.events.retried.is_empty());
    assert_eq!(w.town.pending_event_count().unwrap(), 0);
    for _ in 0..5 {
        w.advance(TICK_MS);
        w.beat_working();
        let r = w.tick_checked();
        assert!(r.events.retried.is_empty() && r.events.inapplicable.is_empty());
        assert_eq!(r.pending_events, 0);
    }
}

// ---------------------------------------------------------------- §10.1

#[test]
fn fix_1358_heartbeat_restores_idle_hooked_agent_and_its_bead_is_never_reset() {
    let mut w = World::new();
    w.runner.fail_all_starts.set(true);
    let (bead, p) = w.sling("slow cold start");
    w.runner.fail_all_starts.set(false);
    assert_eq!(w.agent(&p).status, AgentStatus::Working, "a start that looked failed leaves the agent working");

    // The session did start: it heart-beats every 30 s for 40 min, while the
    // container now and then reports it gone.
    for half_minute in 1..=80 {
        w.advance(30 * SECOND_MS);
        w.beat(&p);
        assert_eq!(w.agent(&p).status, AgentStatus::Working, "a heartbeat revives an idle hooked agent");
        let report = match half_minute % 10 {
            3 => Some("exited"),
            7 => Some("not_found"),
            _ => None,
        };
        if let Some(s) = report {
            w.town.record_container_status(&p, s, None).unwrap();
        }
        if half_minute % 2 == 1 {
            w.advance(SECOND_MS);
            w.tick_checked();
            let a = w.agent(&p);
            assert_eq!(a.current_hook_bead_id.as_deref(), Some(bead.as_str()), "hook kept");
            assert_eq!(w.status(&bead), BeadStatus::InProgress, "a heart-beating agent's bead was reset");
            let expected = if report == Some("exited") { AgentStatus::Idle } else { AgentStatus::Working };
            assert_eq!(a.status, expected, "not_found within 180 s of activity is ignored (report {report:?})");
        }
    }
    assert_eq!(w.bead(&bead).dispatch_attempts, 1, "never re-dispatched");
}

#[test]
fn fix_1358_not_found_is_ignored_for_180_s_after_activity() {
    let mut w = World::new();
    let (_, p, _) = stall_by_gupp(&mut w);
    // GUPP stopped the process: heartbeats end.
    let last = w.agent(&p).last_activity_at.unwrap();
    w.town.record_container_status(&p, "not_found", None).unwrap();
    w.set_time(last.plus_ms(180 * SECOND_MS));
    w.tick_checked();
    assert_eq!(w.agent(&p).status, AgentStatus::Stalled, "not_found exactly 180 s after activity is ignored");
    w.town.record_container_status(&p, "not_found", None).unwrap();
    w.set_time(last.plus_ms(180 * SECOND_MS + 1));
    w.tick_checked();
    assert_eq!(w.agent(&p).status, AgentStatus::Idle, "past the grace the container's word counts");
}

#[test]
fn fix_1342_refinery_redispatch_is_bounded_by_the_mr_counter() {
    let mut w = World::with_rig(RigOverrides { max_dispatch_attempts: Some(3), ..Default::default() });
    let (src, p) = w.sling("refinery keeps dying");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    let mut dispatches = 1;
    assert_eq!(w.agent(&refinery).dispatch_attempts, 1);
    for _ in 0..(20 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        // The refinery's process exits right after each start.
        if w.agent(&refinery).status == AgentStatus::Working {
            w.town.agent_completed(&refinery, ExitStatus::Completed, None).unwrap();
            w.town.record_container_status(&refinery, "exited", None).unwrap();
        }
        let r = w.tick_checked();
        dispatches += dispatched_beads(&r).iter().filter(|b| **b == mr).count();
        let m = w.bead(&mr);
        assert!(m.dispatch_attempts <= 3, "MR dispatched {} times, cap 3", m.dispatch_attempts);
        assert_eq!(w.agent(&refinery).dispatch_attempts as usize, dispatches, "the refinery counter is never reset");
        if m.status == BeadStatus::Failed {
            break;
        }
    }
    assert_eq!(w.status(&mr), BeadStatus::Failed, "failed at the cap, not re-dispatched");
    assert_eq!(dispatches, 3);
    assert_eq!(w.reopened(&mr), 0, "Rule 6 failed it right after the third exit, before any other recovery");
    assert_eq!(w.hook(&refinery), None);
}

#[test]
fn fix_1932_exhausted_agent_counter_resets_after_30_min() {
    let mut w = World::new();
    w.runner.fail_all_starts.set(true);
    let (bead, p) = w.sling("never starts");
    for _ in 0..(40 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        w.tick_checked();
        if w.status(&bead) == BeadStatus::Failed {
            break;
        }
    }
    assert_eq!(w.status(&bead), BeadStatus::Failed, "the bead fails at the cap");
    let a = w.agent(&p);
    assert_eq!((a.dispatch_attempts, a.current_hook_bead_id), (5, None));
    let last = a.last_activity_at.unwrap();
    w.set_time(last.plus_ms(30 * MINUTE_MS));
    w.tick_checked();
    assert_eq!(w.agent(&p).dispatch_attempts, 5, "exactly 30 min idle: not yet");
    w.set_time(last.plus_ms(30 * MINUTE_MS + 1));
    w.tick_checked();
    assert_eq!(w.agent(&p).dispatch_attempts, 0, "A3 resets it without anyone's help");

    // Starts work again: new work flows through the same polecat.
    w.runner.fail_all_starts.set(false);
    let (next, again) = w.sling("new work");
    assert_eq!(again, p);
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&next), BeadStatus::InProgress);
    assert_eq!(w.agent(&p).status, AgentStatus::Working);
    assert_eq!(w.agent(&p).dispatch_attempts, 0, "a start and a heartbeat zero the counter");
}

fn assert_one_per_hour(nudges: &[(String, Timestamp)]) {
    for (i, (tier, at)) in nudges.iter().enumerate() {
        for (other, later) in &nudges[i + 1..] {
            if other == tier {
                assert!(later.since(*at) >= HOUR_MS, "two {tier} nudges {} ms apart", later.since(*at));
            }
        }
    }
}

#[test]
fn fix_1412_gupp_nudges_once_per_tier_and_never_the_mayor() {
    let mut w = World::new();
    let effects = w.town.send_mayor_message("plan the week").unwrap();
    w.run(&effects);
    let mayor = w.town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Mayor).unwrap().agent_id;
    let (_, p) = w.sling("goes quiet");
    let start = w.now();
    let last_sdk = start.plus_ms(30 * SECOND_MS);
    let m = mayor.clone();
    live_for(
        &mut w,
        &p,
        180,
        |_| Some(last_sdk),
        |w, r| {
            assert!(!gupp_acted_on(r, &m), "GUPP acted on the mayor");
            assert_ne!(w.agent(&m).status, AgentStatus::Stalled);
            true
        },
    );
    let nudges = w.nudges(&p);
    let expected = vec![
        (NudgeTier::Warn.source().to_owned(), start.plus_ms(16 * MINUTE_MS)),
        (NudgeTier::Escalate.source().to_owned(), start.plus_ms(61 * MINUTE_MS)),
    ];
    assert_eq!(nudges, expected, "one nudge per tier, not one per tick");
    assert_one_per_hour(&nudges);
    assert_eq!(w.agent(&p).status, AgentStatus::Stalled, "force-stopped after 2 h");
    assert!(w.nudges(&mayor).is_empty(), "the mayor is never GUPP-nudged");
}

#[test]
fn fix_1412_nudge_dedup_window_is_60_minutes() {
    let mut w = World::new();
    let (_, p) = w.sling("works in bursts");
    let start = w.now();
    // SDK events at +0, +30 and +60 min; quiet in between.
    let sdk = move |now: Timestamp| {
        let minutes = now.since(start) / MINUTE_MS;
        Some(start.plus_ms((minutes / 30).min(2) * 30 * MINUTE_MS))
    };
    live_for(&mut w, &p, 100, sdk, |_, _| true);
    let at: Vec<Timestamp> = w.nudges(&p).into_iter().map(|(_, t)| t).collect();
    // 15 min quiet at +16: warned. Quiet again from +45: within the hour, skipped.
    // Quiet again from +75: the first warning is exactly 60 min old at +76.
    assert_eq!(at, vec![start.plus_ms(16 * MINUTE_MS), start.plus_ms(76 * MINUTE_MS)]);
}

#[test]
fn fix_3538_eviction_with_fresh_heartbeat_never_resets_the_bead() {
    let mut w = World::new();
    let (bead, p) = w.sling("survives an eviction");
    w.town.heartbeat(&p, &Watermark::default(), Some("inst-1")).unwrap();
    live_for(&mut w, &p, 10, |_| None, |_, _| true);
    w.town.record_container_eviction().unwrap();
    w.town.agent_completed(&p, ExitStatus::Completed, Some("container eviction")).unwrap();
    // The session lives on in the replacement container and keeps heart-beating.
    for half_minute in 1..=40 {
        w.advance(30 * SECOND_MS);
        w.town.heartbeat(&p, &Watermark::default(), Some("inst-2")).unwrap();
        if half_minute % 2 == 0 {
            w.tick_checked();
            let b = w.bead(&bead);
            assert_eq!(b.status, BeadStatus::InProgress, "reset while the heartbeat is fresh");
            assert_eq!(b.assignee_agent_bead_id.as_deref(), Some(p.as_str()));
            assert_eq!(w.hook(&p).as_deref(), Some(bead.as_str()));
        }
    }
    assert!(!w.town.drain_state().unwrap().draining, "the new instance ended the drain");
    assert_eq!(w.bead(&bead).dispatch_attempts, 1);
    // When heartbeats really stop, the heartbeat rules recover the bead.
    let last = w.now();
    while w.status(&bead) == BeadStatus::InProgress && w.bead(&bead).dispatch_attempts == 1 {
        w.advance(TICK_MS);
        w.tick_checked();
        assert!(w.now().since(last) <= STALE_MS + 2 * TICK_MS, "not recovered after the heartbeat went stale");
    }
}

#[test]
fn fix_3538_eviction_reset_is_gated_on_a_stale_heartbeat() {
    let mut w = World::new();
    let (fresh, p1) = w.sling("fresh");
    let (stale, p2) = w.sling("stale");
    w.advance(20 * SECOND_MS);
    w.beat(&p1);
    w.beat(&p2);
    let beat = w.now();
    // No tick in between: both exits are judged at the same instant, 90 s and 90 s + 1 ms on.
    w.set_time(beat.plus_ms(STALE_MS));
    w.town.agent_completed(&p1, ExitStatus::Completed, Some("container eviction")).unwrap();
    w.tick_checked();
    assert_eq!(w.status(&fresh), BeadStatus::InProgress, "90 s is still fresh");
    w.set_time(beat.plus_ms(STALE_MS + 1));
    w.town.agent_completed(&p2, ExitStatus::Completed, Some("container eviction")).unwrap();
    w.tick_checked();
    assert_eq!(w.reopened(&fresh), 0);
    assert_eq!(w.reopened(&stale), 1, "stale: reopened at once");
    assert_eq!(w.bead(&stale).dispatch_attempts, 2, "and re-dispatched in the same tick");
}

#[test]
fn fix_stalled_agents_idle_exactly_150_min_after_stalling() {
    let mut w = World::new();
    let (_, p, stalled_at) = stall_by_gupp(&mut w);
    let last_sdk = w.agent(&p).last_event_at;
    // Heartbeats go on after the GUPP stop; the window runs from stalled_at.
    let mut idled_at = None;
    let id = p.clone();
    live_for(
        &mut w,
        &p,
        160,
        |_| last_sdk,
        |w, _| {
            let a = w.agent(&id);
            if w.now().since(stalled_at) <= 150 * MINUTE_MS {
                assert_eq!((a.status, a.stalled_at), (AgentStatus::Stalled, Some(stalled_at)), "at {}", w.now());
                true
            } else {
                idled_at = Some(w.now());
                false
            }
        },
    );
    assert_eq!(idled_at, Some(stalled_at.plus_ms(151 * MINUTE_MS)));
    let a = w.agent(&p);
    assert_eq!((a.status, a.current_hook_bead_id), (AgentStatus::Idle, None), "A2 wins over GUPP's re-stall");
}

#[test]
fn fix_orphan_events_are_purged_on_delete_and_dropped_when_missing() {
    let mut w = World::new();
    w.tick_checked();
    let doomed =
        w.town.add_rig(AddRig { id: Some("rig-2".into()), name: "doomed".into(), ..Default::default() }).unwrap().id;
    let (bead, agent) =
        w.sling_with(SlingBead { rig_id: doomed.clone(), title: "deleted with its rig".into(), ..Default::default() });
    w.town.record_container_status(&agent, "exited", None).unwrap();
    pr_state_event(&mut w, &bead, 1, "merged");
    w.done(&agent, None);
    assert_eq!(w.town.pending_event_count().unwrap(), 4);
    // fix-1: deleting beads and agents purges every event that names them.
    w.town.remove_rig(&doomed).unwrap();
    assert_eq!(w.town.pending_event_count().unwrap(), 0);
    w.advance(TICK_MS);
    let r = w.tick_checked();
    assert!(r.events.applied.is_empty() && r.events.inapplicable.is_empty() && r.events.retried.is_empty());

    // fix-2: events naming entities that are gone are marked processed, once.
    let missing = [
        w.town.insert_event(EventType::AgentDone, Some(&agent), None, json!({"branch": "x"})).unwrap(),
        w.town.insert_event(EventType::ContainerStatus, Some(&agent), None, json!({"status": "exited"})).unwrap(),
        w.town.insert_event(EventType::AgentCompleted, Some(&agent), None, json!({"status": "failed"})).unwrap(),
    ];
    w.advance(TICK_MS);
    let r = w.tick_checked();
    assert!(r.events.retried.is_empty(), "{:?}", r.events.retried);
    let handled: BTreeSet<&String> =
        r.events.inapplicable.iter().map(|(id, _)| id).chain(r.events.applied.iter()).collect();
    assert_eq!(handled, missing.iter().collect());
    assert_eq!(w.town.pending_event_count().unwrap(), 0);
    w.advance(TICK_MS);
    let r = w.tick_checked();
    assert!(r.events.applied.is_empty() && r.events.inapplicable.is_empty());
}

#[test]
fn fix_sibling_mrs_close_when_one_merges() {
    let mut w = World::new();
    let (src, p) = w.sling("reworked twice");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, None);
    w.advance(TICK_MS);
    w.tick_checked();
    let merged = w.mrs_for(&src).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    // A stale MR for the same source from an earlier cycle is still queued.
    let stale = w.town.submit_to_review_queue(&p, &src, "gt/earlier-attempt", None, None).unwrap();
    w.advance(TICK_MS);
    w.beat_working();
    w.tick_checked();
    assert_eq!(w.status(&stale), BeadStatus::Open);
    w.done(&refinery, None);
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&merged), BeadStatus::Closed);
    assert_eq!(w.status(&src), BeadStatus::Closed);
    assert_eq!(w.status(&stale), BeadStatus::Closed, "the sibling closes with the merge");
    // Whatever the old MR's refinery reports later, the merged source stays closed.
    w.town.complete_review(&stale, ReviewResult::Failed, Some("late verdict")).unwrap();
    for _ in 0..(10 * MINUTE_MS / TICK_MS) {
        w.advance(TICK_MS);
        let r = w.tick_checked();
        assert!(!dispatched_beads(&r).contains(&stale));
        assert_eq!(w.status(&src), BeadStatus::Closed, "a merged source was reopened");
    }
    assert_eq!(w.status(&stale), BeadStatus::Closed);
    // The oracle: had the sibling stayed live, the checker names it.
    w.sql("UPDATE beads SET status = 'open' WHERE bead_id = ?1", [&stale]);
    assert_eq!(w.violated(), ["merge_closes_sibling_mrs"]);
}

#[test]
fn fix_rule7_refinery_on_a_terminal_mr_is_stopped_in_the_same_tick() {
    let mut w = World::new();
    let (src, p) = w.sling("auto-merged mid-review");
    w.advance(20 * SECOND_MS);
    w.beat(&p);
    w.done(&p, Some(&pr(5)));
    w.advance(TICK_MS);
    w.tick_checked();
    let mr = w.mrs_for(&src).remove(0).bead_id;
    let refinery = w.refinery().agent_id;
    assert_eq!(w.agent(&refinery).status, AgentStatus::Working);
    w.beat(&refinery);
    pr_state_event(&mut w, &mr, 5, "merged");
    w.runner.take();
    w.advance(TICK_MS);
    w.tick_checked();
    assert_eq!(w.status(&mr), BeadStatus::Closed);
    assert_eq!(w.status(&src), BeadStatus::Closed);
    let a = w.agent(&refinery);
    assert_eq!((a.status, a.current_hook_bead_id), (AgentStatus::Idle, None));
    let stopped =
        w.runner.take().iter().any(|e| matches!(e, Effect::StopAgent { agent_id, .. } if *agent_id == refinery));
    assert!(stopped, "the refinery's session is stopped");
    for _ in 0..20 {
        w.advance(TICK_MS);
        w.beat(&refinery);
        w.tick_checked();
        for r in w.refineries() {
            if let (AgentStatus::Working | AgentStatus::Stalled, Some(h)) = (r.status, &r.current_hook_bead_id) {
                assert!(w.status(h).is_live(), "working refinery on terminal MR {h}");
            }
        }
    }
}
