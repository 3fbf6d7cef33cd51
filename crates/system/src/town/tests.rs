//! Operation-level tests against a real (in-memory) database.

use super::*;
use crate::model::{MergeMode, RigOverrides};
use crate::time::ManualClock;
use effects::RecordingRunner;

pub(crate) const T0: Timestamp = Timestamp(1_780_000_000_000);

pub(crate) fn town_with(cfg: TownConfig) -> (Town, ManualClock, String) {
    let clock = ManualClock::new(T0);
    let conn = crate::store::open_in_memory().unwrap();
    let mut town =
        Town::open(conn, Arc::new(clock.clone()), TownOptions { town_id: "town-1".into(), seed: 42 }).unwrap();
    town.set_config(cfg).unwrap();
    let rig = town
        .add_rig(AddRig {
            id: Some("rig-1".into()),
            name: "app".into(),
            git_url: "https://github.com/acme/app.git".into(),
            default_branch: None,
            config: RigOverrides::default(),
        })
        .unwrap();
    (town, clock, rig.id)
}

pub(crate) fn town() -> (Town, ManualClock, String) {
    town_with(TownConfig::new_town_defaults())
}

pub(crate) fn tick(town: &mut Town, runner: &RecordingRunner) -> TickReport {
    futures_executor(town.tick(runner)).unwrap().unwrap()
}

/// Drive a future that never waits on I/O (the recording runner answers at once).
pub(crate) fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

pub(crate) fn sling(town: &mut Town, rig: &str, title: &str) -> String {
    town.sling_bead(SlingBead { rig_id: rig.into(), title: title.into(), ..Default::default() }).unwrap().0.bead_id
}

/// An active convoy of `tasks` independent tasks.
pub(crate) fn convoy(town: &mut Town, rig: &str, tasks: usize) -> ConvoyCreated {
    let tasks = (0..tasks).map(|i| ConvoyTask { title: format!("t{i}"), ..Default::default() }).collect();
    town.sling_convoy(SlingConvoy {
        rig_id: rig.into(),
        title: "c".into(),
        tasks,
        staged: Some(false),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn sling_dispatches_then_done_creates_review_then_merge_closes() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let (slung, effects) =
        town.sling_bead(SlingBead { rig_id: rig.clone(), title: "Fix login".into(), ..Default::default() }).unwrap();
    assert!(matches!(effects.as_slice(), [Effect::StartAgent(_)]));
    let agent = slung.agent_id.unwrap();
    let bead = town.bead(&slung.bead_id).unwrap();
    assert_eq!(bead.status, BeadStatus::InProgress);
    assert_eq!(bead.dispatch_attempts, 1);
    let a = town.agent(&agent).unwrap();
    assert_eq!((a.status, a.current_hook_bead_id.as_deref()), (AgentStatus::Working, Some(slung.bead_id.as_str())));

    clock.advance_ms(30_000);
    town.heartbeat(&agent, &Watermark::default(), Some("inst-1")).unwrap();
    let pr = "https://github.com/acme/app/pull/7";
    town.agent_done(
        &agent,
        DoneReport { branch: "gt/toast/x".into(), pr_url: Some(pr.into()), summary: None, bead_id: None },
    )
    .unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert_eq!(r.events.applied.len(), 2, "bead_created and agent_done: {:?}", r.events);
    assert_eq!(town.bead(&slung.bead_id).unwrap().status, BeadStatus::InReview);
    let mrs = town.beads_of(BeadType::MergeRequest, None).unwrap();
    assert_eq!(mrs.len(), 1);
    // Rule 5 popped it for a new refinery in the same tick.
    assert_eq!(mrs[0].status, BeadStatus::InProgress);
    let refinery = town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Refinery).unwrap();
    assert_eq!(refinery.current_hook_bead_id.as_deref(), Some(mrs[0].bead_id.as_str()));

    town.agent_done(
        &refinery.agent_id,
        DoneReport { branch: "gt/toast/x".into(), pr_url: Some(pr.into()), summary: None, bead_id: None },
    )
    .unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(r.actions.iter().any(|a| matches!(a, actions::Action::PollPr { .. })), "{:?}", r.actions);
    town.insert_event(
        EventType::PrStatusChanged,
        None,
        Some(&mrs[0].bead_id),
        json!({"pr_url": pr, "pr_state": "merged"}),
    )
    .unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    assert_eq!(town.bead(&slung.bead_id).unwrap().status, BeadStatus::Closed);
    assert_eq!(town.bead(&mrs[0].bead_id).unwrap().status, BeadStatus::Closed);
}

pub(crate) fn done(branch: &str, pr: Option<&str>, bead: Option<&str>) -> DoneReport {
    DoneReport { branch: branch.into(), pr_url: pr.map(str::to_owned), summary: None, bead_id: bead.map(str::to_owned) }
}

fn pr_url_of(town: &Town, mr: &str) -> Option<String> {
    town.conn().query_row("SELECT pr_url FROM review_metadata WHERE bead_id = ?1", [mr], |r| r.get(0)).unwrap()
}

fn bead_event_types(town: &Town, bead: &str) -> Vec<String> {
    let mut st = town.conn().prepare("SELECT event_type FROM bead_events WHERE bead_id = ?1 ORDER BY seq").unwrap();
    st.query_map([bead], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

/// Smoke seeds 81, 89, 147: during a partition the town gave up on agent X's
/// session on bead A and hooked X to B; the re-dispatch never reached the
/// container, so the old session finished A and called gt_done. Filed under
/// the hook, A's PR became B's review: two live PRs for A, B never worked.
#[test]
fn a_done_from_a_replaced_session_is_not_filed_under_the_agents_new_hook() {
    let (mut town, _clock, rig) = town();
    let runner = RecordingRunner::new();
    let a = sling(&mut town, &rig, "a");
    let x = town.bead(&a).unwrap().assignee_agent_bead_id.unwrap();
    let b = sling(&mut town, &rig, "b");
    town.unhook_bead(&x).unwrap();
    town.hook_bead(&x, &b).unwrap();

    town.agent_done(&x, done("gt/toast/a", Some("https://github.com/acme/app/pull/9"), Some(&a))).unwrap();
    tick(&mut town, &runner);
    assert!(town.beads_of(BeadType::MergeRequest, None).unwrap().is_empty(), "no review for A's work under B");
    assert_eq!(town.bead(&b).unwrap().status, BeadStatus::InProgress);
    assert_eq!(town.agent(&x).unwrap().current_hook_bead_id.as_deref(), Some(b.as_str()));
    assert!(bead_event_types(&town, &a).iter().any(|t| t == "stale_done_ignored"));

    // The session the town did dispatch reports B: that one is applied.
    town.agent_done(&x, done("gt/toast/b", Some("https://github.com/acme/app/pull/10"), Some(&b))).unwrap();
    tick(&mut town, &runner);
    let mrs = town.beads_of(BeadType::MergeRequest, None).unwrap();
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].meta_str("source_bead_id"), Some(b.as_str()));
    assert_eq!(town.bead(&b).unwrap().status, BeadStatus::InReview);
}

/// Smoke seed 109: the refinery's session for an earlier MR (PR #9) reported
/// after the refinery had been hooked to the next MR (PR #10), and in the same
/// drain as #10's merge: the MR ended up carrying #9, so nothing in the town
/// carried the merged #10.
#[test]
fn a_refinery_result_never_rewrites_another_mr_or_a_decided_one() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let (slung, _) = town.sling_bead(SlingBead { rig_id: rig, title: "x".into(), ..Default::default() }).unwrap();
    let polecat = slung.agent_id.unwrap();
    let pr = "https://github.com/acme/app/pull/10";
    town.agent_done(&polecat, done("gt/toast/x", Some(pr), Some(&slung.bead_id))).unwrap();
    clock.advance_ms(5_000);
    tick(&mut town, &runner);
    let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0).bead_id;
    let refinery = town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Refinery).unwrap().agent_id;
    assert_eq!(town.agent(&refinery).unwrap().current_hook_bead_id.as_deref(), Some(mr.as_str()));

    let old_pr = "https://github.com/acme/app/pull/9";
    town.agent_done(&refinery, done("gt/toast/old", Some(old_pr), Some("an-earlier-mr"))).unwrap();
    clock.advance_ms(5_000);
    tick(&mut town, &runner);
    assert_eq!(pr_url_of(&town, &mr).as_deref(), Some(pr), "a report about another MR");
    assert_eq!(town.agent(&refinery).unwrap().current_hook_bead_id.as_deref(), Some(mr.as_str()));

    // The merge and a late result for the same MR drain in one tick, merge first.
    town.insert_event(EventType::PrStatusChanged, None, Some(&mr), json!({"pr_url": pr, "pr_state": "merged"}))
        .unwrap();
    town.agent_done(&refinery, done("gt/toast/x", Some(old_pr), Some(&mr))).unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    assert_eq!(town.bead(&mr).unwrap().status, BeadStatus::Closed);
    assert_eq!(pr_url_of(&town, &mr).as_deref(), Some(pr), "the merged MR keeps the PR it was merged under");
    assert_eq!(town.agent(&refinery).unwrap().current_hook_bead_id, None);
}

fn refinery_of(town: &mut Town) -> String {
    town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Refinery).unwrap().agent_id
}

fn tick_clean(town: &mut Town, clock: &ManualClock, runner: &RecordingRunner, ms: i64) -> TickReport {
    clock.advance_ms(ms);
    let r = tick(town, runner);
    assert!(r.invariant_violations.is_empty(), "{:?}", r.invariant_violations);
    r
}

/// Helper-11's finding: the refinery's tools say "request changes, then call
/// gt_done", and a URL-less gt_done used to read as "merged", so a direct MR
/// landed with the rework it had just asked for still open.
#[test]
fn a_direct_mr_sent_back_for_rework_waits_for_it_and_is_reviewed_again() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let (slung, _) = town.sling_bead(SlingBead { rig_id: rig, title: "x".into(), ..Default::default() }).unwrap();
    let (src, polecat) = (slung.bead_id, slung.agent_id.unwrap());
    town.agent_done(&polecat, done("gt/toast/x", None, Some(&src))).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0).bead_id;
    let refinery = refinery_of(&mut town);
    assert_eq!(town.agent(&refinery).unwrap().current_hook_bead_id.as_deref(), Some(mr.as_str()));

    let rework = town.request_changes(&refinery, "rename the helper", &[]).unwrap();
    town.agent_done(&refinery, done("gt/toast/x", None, None)).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    assert_eq!(town.bead(&mr).unwrap().status, BeadStatus::InProgress, "no merge while the rework is open");
    assert_eq!(town.bead(&src).unwrap().status, BeadStatus::InReview);
    assert!(bead_event_types(&town, &mr).iter().any(|t| t == "merge_deferred_for_rework"));
    let r = town.agent(&refinery).unwrap();
    assert_eq!((r.status, r.current_hook_bead_id), (AgentStatus::Idle, None));

    // Rules 2 and 3 leave the blocked MR alone, however long the rework takes.
    tick_clean(&mut town, &clock, &runner, 40 * 60_000);
    assert_eq!(town.bead(&mr).unwrap().status, BeadStatus::InProgress);
    let fixer = town.bead(&rework).unwrap().assignee_agent_bead_id.expect("the rework is dispatched");
    town.agent_done(&fixer, done("gt/toast/x", None, Some(&rework))).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    assert_eq!(town.bead(&rework).unwrap().status, BeadStatus::Closed);

    // Unblocked and unattended: Rule 3 reopens it, Rule 5 sends it back to the refinery.
    tick_clean(&mut town, &clock, &runner, 5_000);
    tick_clean(&mut town, &clock, &runner, 5_000);
    assert_eq!(town.agent(&refinery).unwrap().current_hook_bead_id.as_deref(), Some(mr.as_str()));
    town.agent_done(&refinery, done("gt/toast/x", None, None)).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    assert_eq!(town.bead(&mr).unwrap().status, BeadStatus::Closed);
    assert_eq!(town.bead(&src).unwrap().status, BeadStatus::Closed);

    // A decided MR has nothing left to rework.
    // (A refinery still hooked to it when it merged, say on the forge.)
    town.conn()
        .execute("UPDATE agent_metadata SET current_hook_bead_id = ?2 WHERE bead_id = ?1", [&refinery, &mr])
        .unwrap();
    let e = town.request_changes(&refinery, "too late", &[]).unwrap_err();
    assert!(e.to_string().contains("already closed"), "{e}");
}

#[test]
fn the_oracle_names_a_direct_merge_over_open_rework() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let mut checker = invariants::Checker::new();
    let (slung, _) = town.sling_bead(SlingBead { rig_id: rig, title: "x".into(), ..Default::default() }).unwrap();
    town.agent_done(&slung.agent_id.unwrap(), done("gt/toast/x", None, Some(&slung.bead_id))).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0).bead_id;
    let refinery = refinery_of(&mut town);
    town.request_changes(&refinery, "rename the helper", &[]).unwrap();
    let mut names = |town: &Town| {
        let v = checker.check(town.conn(), town.config(), clock.now()).unwrap();
        v.into_iter().map(|v| v.invariant).collect::<Vec<_>>()
    };
    assert!(names(&town).is_empty());
    let e = town.complete_review(&mr, ReviewResult::Merged, None).unwrap_err();
    assert!(e.to_string().contains("blocked by open fix-up work"), "{e}");
    assert!(names(&town).is_empty(), "a refused merge writes nothing");
    town.tx(|cx| review::complete(cx, &mr, ReviewResult::Merged, None, None)).unwrap();
    assert_eq!(names(&town), ["no_merge_while_blocked"]);
}

/// Bug (f)'s oracle counts ticks, not time: Rule 3 would recover the bead
/// within 5 min, before any time window that allows an idle-cadence tick.
#[test]
fn the_oracle_names_an_idle_agent_that_keeps_a_live_bead_through_two_ticks() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let (slung, _) = town.sling_bead(SlingBead { rig_id: rig, title: "x".into(), ..Default::default() }).unwrap();
    let agent = slung.agent_id.unwrap();
    let go_idle_and_silent = |town: &Town| {
        let silent_since = clock.now().minus_ms(reconciler::constants::HEARTBEAT_STALE_MS + 1).0;
        town.conn()
            .execute(
                "UPDATE agent_metadata SET status = 'idle', last_activity_at = ?2 WHERE bead_id = ?1",
                rusqlite::params![agent, silent_since],
            )
            .unwrap();
    };
    let mut checker = invariants::Checker::new();
    let mut names = |town: &Town, tick_at: Option<Timestamp>| {
        if let Some(at) = tick_at {
            checker.observe_tick(&TickReport { at, ..Default::default() });
        }
        let v = checker.check(town.conn(), town.config(), clock.now()).unwrap();
        v.into_iter().map(|v| v.invariant).collect::<Vec<_>>()
    };

    // The reconciler lets go on the next tick: no violation.
    go_idle_and_silent(&town);
    assert!(names(&town, None).is_empty(), "first sighting");
    let r = tick_clean(&mut town, &clock, &runner, 5_000);
    assert!(names(&town, Some(r.at)).is_empty());
    assert_eq!(town.agent(&agent).unwrap().current_hook_bead_id, None);

    // Ticks that change nothing: one that began before the sighting does
    // not count, the second that began after it fires.
    town.hook_bead(&agent, &slung.bead_id).unwrap();
    go_idle_and_silent(&town);
    let before = clock.now().minus_ms(1);
    assert!(names(&town, None).is_empty());
    assert!(names(&town, Some(before)).is_empty(), "a tick from before the sighting");
    clock.advance_ms(5_000);
    assert!(names(&town, Some(clock.now())).is_empty(), "one tick may not have seen it yet");
    clock.advance_ms(5_000);
    assert_eq!(names(&town, Some(clock.now())), ["idle_agent_releases_live_bead"]);
}

/// #3538's oracle judges an eviction's reopen by the heartbeat the agent had
/// at that moment, as far as the checks saw it: a stale one lets the bead go,
/// a fresh one (seen at the previous check) names the reopen.
#[test]
fn the_oracle_names_an_eviction_reopen_under_a_heartbeating_agent() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let mut checker = invariants::Checker::new();
    let mut names = |town: &Town| {
        let v = checker.check(town.conn(), town.config(), clock.now()).unwrap();
        v.into_iter().map(|v| v.invariant).collect::<Vec<_>>()
    };
    let (slung, _) =
        town.sling_bead(SlingBead { rig_id: rig.clone(), title: "x".into(), ..Default::default() }).unwrap();
    let agent = slung.agent_id.unwrap();
    town.heartbeat(&agent, &Watermark::default(), None).unwrap();
    assert!(names(&town).is_empty());

    // Stale: the real rule reopens, tagged with the agent, and nothing fires,
    // even though the agent heart-beats again before the next check.
    clock.advance_ms(reconciler::constants::HEARTBEAT_STALE_MS + 1);
    town.agent_completed(&agent, ExitStatus::Completed, Some(review::EVICTION_REASON)).unwrap();
    tick_clean(&mut town, &clock, &runner, 0);
    let reopened: i64 = town
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM bead_events WHERE bead_id = ?1 AND json_extract(metadata, '$.eviction_reopen_of') = ?2",
            rusqlite::params![slung.bead_id, agent],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reopened, 1, "the eviction reopened the bead and named its agent");
    town.heartbeat(&agent, &Watermark::default(), None).unwrap();
    assert!(names(&town).is_empty(), "a heartbeat after the reopen says nothing about the moment of it");

    // Fresh: what the defect did. The previous check saw a heartbeat 30 s old.
    let (other, _) = town.sling_bead(SlingBead { rig_id: rig, title: "y".into(), ..Default::default() }).unwrap();
    let busy = other.agent_id.unwrap();
    town.heartbeat(&busy, &Watermark::default(), None).unwrap();
    let n = names(&town);
    assert!(n.is_empty(), "{n:?}");
    clock.advance_ms(30_000);
    town.tx(|cx| beads::reopen_after_eviction(cx, &other.bead_id, &busy)).unwrap();
    assert_eq!(names(&town), ["heartbeating_agent_keeps_hook"]);
}

#[test]
fn convoy_lazy_assignment_lands_through_one_landing_mr() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let created = town
        .sling_convoy(SlingConvoy {
            rig_id: rig.clone(),
            title: "Auth rework".into(),
            tasks: vec![
                ConvoyTask { title: "a".into(), ..Default::default() },
                ConvoyTask { title: "b".into(), depends_on: vec![0], ..Default::default() },
            ],
            merge_mode: Some(MergeMode::ReviewThenLand),
            staged: Some(false),
            metadata: Map::new(),
        })
        .unwrap();
    assert!(town.agents().unwrap().is_empty(), "lazy: no agents at creation");
    let r = tick(&mut town, &runner);
    let dispatched: Vec<_> = r.actions.iter().filter(|a| matches!(a, actions::Action::DispatchAgent { .. })).collect();
    assert_eq!(dispatched.len(), 1, "only the unblocked task starts");
    // Close both tasks as if merged, then the convoy becomes ready, then lands.
    town.close_bead(&created.bead_ids[0], "user").unwrap();
    clock.advance_ms(5_000);
    tick(&mut town, &runner);
    town.close_bead(&created.bead_ids[1], "user").unwrap();
    assert!(town.convoy_meta(&created.convoy_id).unwrap().ready_to_land);
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(r.actions.iter().any(|a| matches!(a, actions::Action::CreateLandingMr { .. })), "{:?}", r.actions);
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(!r.actions.iter().any(|a| matches!(a, actions::Action::CreateLandingMr { .. })), "never a second one");
    let landing: Vec<_> = town
        .beads_of(BeadType::MergeRequest, None)
        .unwrap()
        .into_iter()
        .filter(|b| b.created_by.as_deref() == Some("system"))
        .collect();
    assert_eq!(landing.len(), 1);
    town.complete_review(&landing[0].bead_id, ReviewResult::Merged, None).unwrap();
    assert_eq!(town.bead(&created.convoy_id).unwrap().status, BeadStatus::Closed);
    assert!(town.convoy_meta(&created.convoy_id).unwrap().landed_at.is_some());
}

#[test]
fn failed_operations_write_nothing() {
    let (mut town, _clock, rig) = town();
    let before = town.status_counts().unwrap();
    let e = town
        .sling_convoy(SlingConvoy {
            rig_id: rig.clone(),
            title: "cyclic".into(),
            tasks: vec![
                ConvoyTask { title: "a".into(), depends_on: vec![1], ..Default::default() },
                ConvoyTask { title: "b".into(), depends_on: vec![0], ..Default::default() },
            ],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert!(town.sling_bead(SlingBead { rig_id: "nope".into(), title: "x".into(), ..Default::default() }).is_err());
    assert!(town.sling_bead(SlingBead { rig_id: rig.clone(), title: "  ".into(), ..Default::default() }).is_err());
    let after = town.status_counts().unwrap();
    assert_eq!(format!("{before:?}"), format!("{after:?}"));
    let b = sling(&mut town, &rig, "x");
    let e = town.submit_to_review_queue("ghost", &b, "br", Some("ftp://nope"), None).unwrap_err();
    assert!(e.to_string().contains("PR URL"), "{e}");
    assert!(town.beads_of(BeadType::MergeRequest, None).unwrap().is_empty());
    assert!(matches!(town.bead("missing"), Err(TownError::NotFound { .. })));
    assert!(matches!(town.reset_agent("missing"), Err(TownError::NotFound { .. })));
}

#[test]
fn hook_refuses_unworkable_beads_triage_requests_and_double_hooks() {
    let (mut town, _clock, rig) = town();
    let b1 = sling(&mut town, &rig, "one");
    let agent = town.bead(&b1).unwrap().assignee_agent_bead_id.unwrap();
    let b2 = sling(&mut town, &rig, "two");
    let e = town.hook_bead(&agent, &b2).unwrap_err();
    assert!(e.to_string().contains("unhook first"), "{e}");
    let convoy = convoy(&mut town, &rig, 1);
    town.unhook_bead(&agent).unwrap();
    let e = town.hook_bead(&agent, &convoy.convoy_id).unwrap_err();
    assert!(e.to_string().contains("cannot be worked"), "{e}");
    let tr = town.create_triage_request(TriageType::StuckAgent, Some(&agent), "stuck", json!({})).unwrap().unwrap();
    let e = town.hook_bead(&agent, &tr).unwrap_err();
    assert!(e.to_string().contains("triage request"), "{e}");
    town.send_mayor_message("plan the week").unwrap();
    let m = mayor(&mut town).agent_id;
    let e = town.hook_bead(&m, &b2).unwrap_err();
    assert!(e.to_string().contains("mayor cannot be hooked"), "{e}");
    // Mutual exclusion: hooking a second agent takes the bead away from the first.
    town.hook_bead(&agent, &b2).unwrap();
    let other = town.bead(&b2).unwrap().assignee_agent_bead_id.unwrap();
    assert_eq!(other, agent);
}

/// A user's hook may not put a refinery where Rule 5 never would: on a
/// babysat PR, or on an MR of a rig that does not review code (the property
/// test found the latter through the hook route).
#[test]
fn a_user_cannot_put_a_refinery_on_an_mr_the_town_never_reviews() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let (slung, _) =
        town.sling_bead(SlingBead { rig_id: rig.clone(), title: "x".into(), ..Default::default() }).unwrap();
    town.agent_done(&slung.agent_id.unwrap(), done("gt/toast/x", None, Some(&slung.bead_id))).unwrap();
    tick_clean(&mut town, &clock, &runner, 5_000);
    let mr = town.beads_of(BeadType::MergeRequest, None).unwrap().remove(0).bead_id;
    let refinery = refinery_of(&mut town);
    town.unhook_bead(&refinery).unwrap();
    town.hook_bead(&refinery, &mr).unwrap();
    town.unhook_bead(&refinery).unwrap();

    let url = "https://github.com/acme/app/pull/77";
    let adopt = babysit::AdoptPr { pr_url: url.into(), branch: "contrib/fix".into(), ..Default::default() };
    let babysat = town.adopt_external_pr(&rig, &adopt, "user").unwrap().mr_bead_id;
    let e = town.hook_bead(&refinery, &babysat).unwrap_err();
    assert!(e.to_string().contains("babysat PR"), "{e}");

    let mut cfg = town.config().clone();
    cfg.refinery.as_mut().unwrap().code_review = false;
    town.set_config(cfg).unwrap();
    let e = town.hook_bead(&refinery, &mr).unwrap_err();
    assert!(e.to_string().contains("does not review code"), "{e}");
}

#[test]
fn triage_requests_dedup_per_agent_and_cap_at_five() {
    let (mut town, _clock, rig) = town();
    let mut agents_seen = Vec::new();
    for i in 0..7 {
        let b = sling(&mut town, &rig, &format!("b{i}"));
        agents_seen.push(town.bead(&b).unwrap().assignee_agent_bead_id.unwrap());
    }
    let first = town.create_triage_request(TriageType::StuckAgent, Some(&agents_seen[0]), "x", json!({})).unwrap();
    assert!(first.is_some());
    let dup = town.create_triage_request(TriageType::StuckAgent, Some(&agents_seen[0]), "x", json!({})).unwrap();
    assert!(dup.is_none(), "same agent, same type: deduplicated");
    let other_type = town.create_triage_request(TriageType::CrashLoop, Some(&agents_seen[0]), "x", json!({})).unwrap();
    assert!(other_type.is_some());
    let made: Vec<_> = (1..7)
        .map(|i| town.create_triage_request(TriageType::StuckAgent, Some(&agents_seen[i]), "x", json!({})).unwrap())
        .collect();
    assert_eq!(made.iter().filter(|m| m.is_some()).count(), 3, "capped at 5 open non-escalation requests");
    let esc = town.create_triage_request(TriageType::Escalation, Some(&agents_seen[6]), "x", json!({})).unwrap();
    assert!(esc.is_some(), "escalation requests are not capped");
}

#[test]
fn processed_events_pruned_after_seven_days_pending_never() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    sling(&mut town, &rig, "x");
    tick(&mut town, &runner);
    clock.advance_ms(1_000);
    let pending = town.insert_event(EventType::NudgeTimeout, None, None, json!({})).unwrap();
    town.conn().execute("UPDATE town_events SET processed_at = NULL WHERE event_id = ?1", [&pending]).unwrap();
    let count = |t: &Town| -> i64 { t.conn().query_row("SELECT COUNT(*) FROM town_events", [], |r| r.get(0)).unwrap() };
    assert_eq!(count(&town), 2);
    clock.advance_ms(events::EVENT_RETENTION_MS - 1_000);
    // Exactly 7 days old is kept; the pending one is drained (and processed) in this tick.
    tick(&mut town, &runner);
    assert_eq!(count(&town), 2);
    clock.advance_ms(1);
    tick(&mut town, &runner);
    assert_eq!(count(&town), 1, "the first processed event is pruned, the later one kept");
}

#[test]
fn queued_nudges_expire_and_pending_order_is_urgent_first() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    let b = sling(&mut town, &rig, "x");
    let agent = town.bead(&b).unwrap().assignee_agent_bead_id.unwrap();
    town.queue_nudge(&agent, "later", NudgeMode::Queue, NudgePriority::Normal, Some(60)).unwrap();
    let (urgent, effect) = town.queue_nudge(&agent, "now", NudgeMode::WaitIdle, NudgePriority::Urgent, None).unwrap();
    assert!(effect.is_none(), "only immediate nudges are delivered at once");
    let p = town.pending_nudges(&agent).unwrap();
    assert_eq!(p.iter().map(|n| n.message.as_str()).collect::<Vec<_>>(), vec!["now", "later"]);
    clock.advance_ms(61_000);
    tick(&mut town, &runner);
    let p = town.pending_nudges(&agent).unwrap();
    assert_eq!(p.len(), 1, "the queued one expired");
    assert!(town.nudge_delivered(&urgent).unwrap());
    assert!(!town.nudge_delivered(&urgent).unwrap(), "delivery is recorded once");
    assert!(town.pending_nudges(&agent).unwrap().is_empty());
}

#[test]
fn drain_flag_times_out_after_seven_minutes_and_nonce_clears_it() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    sling(&mut town, &rig, "x");
    let nonce = town.record_container_eviction().unwrap();
    assert!(town.drain_state().unwrap().draining);
    assert!(!town.acknowledge_container_ready("wrong").unwrap());
    clock.advance_ms(reconciler::constants::DRAIN_TIMEOUT_MS);
    assert!(!tick(&mut town, &runner).drain_timed_out, "exactly 7 min: still draining");
    clock.advance_ms(1);
    assert!(tick(&mut town, &runner).drain_timed_out);
    assert!(!town.drain_state().unwrap().draining);
    assert!(town.acknowledge_container_ready(&nonce).unwrap(), "not draining: true");
    let nonce = town.record_container_eviction().unwrap();
    assert!(town.acknowledge_container_ready(&nonce).unwrap());
    assert!(!town.drain_state().unwrap().draining);
}

#[test]
fn draining_suspends_dispatch_but_not_recovery() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    town.record_container_eviction().unwrap();
    let created = town
        .sling_convoy(SlingConvoy {
            rig_id: rig.clone(),
            title: "c".into(),
            tasks: vec![ConvoyTask { title: "t".into(), ..Default::default() }],
            staged: Some(false),
            ..Default::default()
        })
        .unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(!r.actions.iter().any(|a| matches!(a, actions::Action::DispatchAgent { .. })));
    assert_eq!(town.bead(&created.bead_ids[0]).unwrap().status, BeadStatus::Open);
    town.acknowledge_container_ready(&town.drain_state().unwrap().nonce.unwrap()).unwrap();
    clock.advance_ms(5_000);
    let r = tick(&mut town, &runner);
    assert!(r.actions.iter().any(|a| matches!(a, actions::Action::DispatchAgent { .. })));
}

#[test]
fn unknown_and_malformed_events_are_inapplicable_not_retried() {
    let (mut town, _clock, _rig) = town();
    let runner = RecordingRunner::new();
    town.conn()
        .execute(
            "INSERT INTO town_events (event_id, event_type, payload, created_at) VALUES ('e1', 'poll_pr_null', '{}', 0)",
            [],
        )
        .unwrap();
    town.insert_event(EventType::PrStatusChanged, None, None, json!({})).unwrap();
    town.insert_event(EventType::ConvoyStarted, None, None, json!({"wrong": 1})).unwrap();
    let r = tick(&mut town, &runner);
    assert_eq!(r.events.inapplicable.len(), 3, "{:?}", r.events);
    assert!(r.events.retried.is_empty());
    assert_eq!(town.pending_event_count().unwrap(), 0);
}

#[test]
fn alarm_escalation_only_brings_the_alarm_earlier() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    tick(&mut town, &runner);
    let idle_alarm = town.alarm_at().unwrap().unwrap();
    assert_eq!(idle_alarm, clock.now().plus_ms(state::IDLE_ALARM_INTERVAL_MS), "no work: 5 min cadence");
    clock.advance_ms(1_000);
    sling(&mut town, &rig, "x");
    let first = town.alarm_at().unwrap().unwrap();
    assert_eq!(first, clock.now().plus_ms(state::ACTIVE_ALARM_INTERVAL_MS));
    for _ in 0..10 {
        clock.advance_ms(1_000);
        sling(&mut town, &rig, "y");
        assert_eq!(town.alarm_at().unwrap().unwrap(), first, "a burst never pushes the tick back");
    }
}

#[test]
fn reset_agent_makes_the_bead_dispatchable_next_tick() {
    let (mut town, clock, rig) = town();
    let runner = RecordingRunner::new();
    runner.fail_all_starts.set(true);
    let b = sling(&mut town, &rig, "x");
    let agent = town.bead(&b).unwrap().assignee_agent_bead_id.unwrap();
    town.conn()
        .execute(
            "UPDATE beads SET dispatch_attempts = 4, last_dispatch_attempt_at = ?2 WHERE bead_id = ?1",
            rusqlite::params![b, clock.now().0],
        )
        .unwrap();
    town.reset_agent(&agent).unwrap();
    let bead = town.bead(&b).unwrap();
    assert_eq!((bead.status, bead.dispatch_attempts, bead.last_dispatch_attempt_at), (BeadStatus::Open, 0, None));
    let r = tick(&mut town, &runner);
    assert!(r.actions.iter().any(|a| matches!(a, actions::Action::DispatchAgent { bead_id, .. } if *bead_id == b)));
}

fn mayor(town: &mut Town) -> agents::Agent {
    town.agents().unwrap().into_iter().find(|a| a.role == AgentRole::Mayor).unwrap()
}

fn mayor_status(town: &mut Town) -> AgentStatus {
    mayor(town).status
}

/// Run a user call's effects through the runner and apply what they report.
fn run_effects(town: &mut Town, runner: &RecordingRunner, effects: &[Effect]) {
    let outcomes: Vec<Outcome> = effects.iter().map(|e| runner.outcome_for(e)).collect();
    town.apply_outcomes(&outcomes).unwrap();
}

#[test]
fn a_message_the_mayor_never_got_leaves_it_idle_and_the_next_one_is_sent_again() {
    let (mut town, _clock, _rig) = town();
    let runner = RecordingRunner::new();
    runner.fail_deliveries.set(true);
    let effects = town.send_mayor_message("plan the week").unwrap();
    // Never a start carrying the message as its prompt: a resumed session skips it.
    assert!(
        matches!(effects.as_slice(), [Effect::MessageMayor { mayor_id: Some(_), about_bead: None, text }] if text == "plan the week"),
        "{effects:?}"
    );
    assert_eq!(mayor_status(&mut town), AgentStatus::Working, "working while the message is on its way");
    run_effects(&mut town, &runner, &effects);
    assert_eq!(mayor_status(&mut town), AgentStatus::Idle, "no session took the message");
    assert!(!has_active_work(town.conn(), town.now()).unwrap(), "nothing holds the active cadence");

    runner.fail_deliveries.set(false);
    let effects = town.send_mayor_message("and now?").unwrap();
    assert!(matches!(effects.as_slice(), [Effect::MessageMayor { .. }]), "{effects:?}");
    run_effects(&mut town, &runner, &effects);
    assert_eq!(mayor_status(&mut town), AgentStatus::Working);
}

#[test]
fn a_delivered_message_wakes_an_idle_or_waiting_mayor_but_a_failed_one_does_not() {
    let (mut town, _clock, _rig) = town();
    let runner = RecordingRunner::new();
    let effects = town.send_mayor_message("hello").unwrap();
    run_effects(&mut town, &runner, &effects);
    let mayor = mayor(&mut town).agent_id;
    for from in [AgentStatus::Waiting, AgentStatus::Idle] {
        town.conn()
            .execute("UPDATE agent_metadata SET status = ?2 WHERE bead_id = ?1", rusqlite::params![mayor, from])
            .unwrap();
        runner.fail_deliveries.set(true);
        town.apply_outcomes(&[Outcome::MayorMessage { about_bead: None, delivered: false }]).unwrap();
        assert_eq!(mayor_status(&mut town), from, "an undelivered message changes nothing");
        town.apply_outcomes(&[Outcome::MayorMessage { about_bead: None, delivered: true }]).unwrap();
        assert_eq!(mayor_status(&mut town), AgentStatus::Working, "a delivered message is a turn (from {from})");
    }
}

fn resolve(town: &mut Town, request: &str, action: &str) -> Result<Vec<Effect>> {
    town.resolve_triage(&triage::Resolution { request_id: request, action, notes: "looked at it", resolved_by: "user" })
}

/// A working polecat on a fresh bead, and a stuck-agent request about it.
fn stuck(town: &mut Town, rig: &str) -> (String, String, String) {
    let b = sling(town, rig, "wedged");
    let agent = town.bead(&b).unwrap().assignee_agent_bead_id.unwrap();
    let tr = town.create_triage_request(TriageType::StuckAgent, Some(&agent), "stuck", json!({})).unwrap().unwrap();
    (b, agent, tr)
}

/// The metadata of the bead's latest status change (a failure's reason).
fn last_change(town: &Town, bead: &str) -> String {
    town.conn()
        .query_row(
            "SELECT metadata FROM bead_events WHERE bead_id = ?1 AND event_type = 'status_changed' \
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [bead],
            |r| r.get(0),
        )
        .unwrap()
}

fn stops(effects: &[Effect], agent: &str) -> bool {
    effects.iter().any(|e| matches!(e, Effect::StopAgent { agent_id, .. } if agent_id == agent))
}

#[test]
fn triage_restart_stops_the_session_and_leaves_the_agent_idle_on_its_bead_without_activity() {
    let (mut town, clock, rig) = town();
    let (b, agent, tr) = stuck(&mut town, &rig);
    let effects = resolve(&mut town, &tr, "restart").unwrap();
    assert!(stops(&effects, &agent), "{effects:?}");
    let a = town.agent(&agent).unwrap();
    assert_eq!(
        (a.status, a.current_hook_bead_id.as_deref(), a.last_activity_at),
        (AgentStatus::Idle, Some(b.as_str()), None)
    );
    let request = town.bead(&tr).unwrap();
    assert_eq!(request.status, BeadStatus::Closed);
    assert_eq!(
        (request.meta_str("resolution_action"), request.meta_str("resolved_by")),
        (Some("restart"), Some("user"))
    );
    assert!(bead_event_types(&town, &b).contains(&"triage_resolved".to_owned()));
    // Resolved once: a second decision is refused and changes nothing.
    let e = resolve(&mut town, &tr, "CLOSE_BEAD").unwrap_err();
    assert!(e.to_string().contains("not open"), "{e}");
    assert_eq!(town.bead(&b).unwrap().status, BeadStatus::InProgress);
    // With backoff the activity counts from now and the retry waits its turn.
    let tr2 = town.create_triage_request(TriageType::StuckAgent, Some(&agent), "again", json!({})).unwrap().unwrap();
    clock.advance_ms(1_000);
    resolve(&mut town, &tr2, "RESTART_WITH_BACKOFF").unwrap();
    assert_eq!(town.agent(&agent).unwrap().last_activity_at, Some(clock.now()));
    assert_eq!(town.bead(&b).unwrap().last_dispatch_attempt_at, Some(clock.now()));
}

#[test]
fn triage_restart_and_reassign_fail_a_bead_at_its_dispatch_cap() {
    // #1653: they used to send such beads round again, past the cap.
    let (mut town, _clock, rig) = town();
    for action in ["RESTART", "REASSIGN_BEAD"] {
        let (b, agent, tr) = stuck(&mut town, &rig);
        town.conn().execute("UPDATE beads SET dispatch_attempts = 5 WHERE bead_id = ?1", [&b]).unwrap();
        resolve(&mut town, &tr, action).unwrap();
        let bead = town.bead(&b).unwrap();
        assert_eq!(bead.status, BeadStatus::Failed, "{action}");
        assert!(last_change(&town, &b).contains("max_dispatch_attempts"), "{action}");
        assert_eq!(town.agent(&agent).unwrap().current_hook_bead_id, None, "{action}");
    }
}

#[test]
fn triage_reassign_returns_the_bead_to_the_pool_and_close_bead_fails_it() {
    let (mut town, _clock, rig) = town();
    let (b, agent, tr) = stuck(&mut town, &rig);
    let effects = resolve(&mut town, &tr, "REASSIGN_BEAD").unwrap();
    assert!(stops(&effects, &agent));
    let bead = town.bead(&b).unwrap();
    assert_eq!((bead.status, bead.assignee_agent_bead_id), (BeadStatus::Open, None));
    assert_eq!(town.agent(&agent).unwrap().current_hook_bead_id, None);

    let (b, agent, tr) = stuck(&mut town, &rig);
    let effects = resolve(&mut town, &tr, "CLOSE_BEAD").unwrap();
    assert!(stops(&effects, &agent));
    let bead = town.bead(&b).unwrap();
    assert_eq!(bead.status, BeadStatus::Failed);
    assert!(last_change(&town, &b).contains("triage_close"));

    // Upstream's GUPP offers CLOSE, which is no action it knows: only the request closes.
    let (b, agent, tr) = stuck(&mut town, &rig);
    assert!(resolve(&mut town, &tr, "CLOSE").unwrap().is_empty());
    assert_eq!(town.bead(&b).unwrap().status, BeadStatus::InProgress);
    assert_eq!(town.agent(&agent).unwrap().current_hook_bead_id.as_deref(), Some(b.as_str()));
    assert_eq!(town.bead(&tr).unwrap().status, BeadStatus::Closed);
}

#[test]
fn triage_escalates_to_the_mayor_and_closes_the_escalation_it_carried() {
    let (mut town, _clock, rig) = town();
    let b = sling(&mut town, &rig, "x");
    let agent = town.bead(&b).unwrap().assignee_agent_bead_id.unwrap();
    let input = RouteEscalation {
        source_agent_id: Some(agent.clone()),
        source_rig_id: Some(rig.clone()),
        severity: crate::model::Severity::High,
        category: None,
        message: "tests keep failing".into(),
    };
    let (escalation, _) = town.route_escalation(&input).unwrap();
    let tr = town
        .beads_of(BeadType::Issue, None)
        .unwrap()
        .into_iter()
        .find(|x| x.has_label(crate::model::labels::TRIAGE_REQUEST))
        .unwrap()
        .bead_id;
    let effects = resolve(&mut town, &tr, "escalate").unwrap();
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::MessageMayor { text, .. } if text.contains("[Triage Escalation]"))));
    assert_eq!(town.bead(&escalation).unwrap().status, BeadStatus::Closed);
    // Only triage requests can be resolved; unknown ids are named.
    let e = resolve(&mut town, &b, "RESTART").unwrap_err();
    assert!(e.to_string().contains("not a triage request"), "{e}");
    assert!(resolve(&mut town, "nope", "RESTART").unwrap_err().to_string().contains("nope"));
}
