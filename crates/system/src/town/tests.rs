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

fn tick(town: &mut Town, runner: &RecordingRunner) -> TickReport {
    futures_executor(town.tick(runner)).unwrap().unwrap()
}

/// Drive a future that never waits on I/O (the recording runner answers at once).
pub(crate) fn futures_executor<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

fn sling(town: &mut Town, rig: &str, title: &str) -> String {
    town.sling_bead(SlingBead { rig_id: rig.into(), title: title.into(), ..Default::default() }).unwrap().0.bead_id
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
    town.agent_done(&agent, DoneReport { branch: "gt/toast/x".into(), pr_url: Some(pr.into()), summary: None })
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
        DoneReport { branch: "gt/toast/x".into(), pr_url: Some(pr.into()), summary: None },
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
