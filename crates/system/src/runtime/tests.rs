//! The town's container-facing side against a stand-in container over
//! loopback: start answers, status observation, mayor message fallback.

use super::{TownHost, TownHostConfig};
use crate::model::AgentRole;
use crate::net::{HttpClient, TokioConnector};
use crate::time::{ManualClock, Timestamp};
use crate::town::effects::{Effect, Outcome, StartAgent};
use crate::town::{AddRig, SlingBead, Town, TownOptions};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: Timestamp = Timestamp(1_780_000_000_000);

type Log = Arc<Mutex<Vec<String>>>;

/// A container whose answers the test scripts: `start` decides `/agents/start`,
/// `status` what `/agents/{id}/status` answers; every request is logged.
/// Messages are refused with 404 (the container does not know the agent).
async fn host_with(start: (StatusCode, &'static str), status: StatusCode) -> (Arc<TownHost>, Log, ManualClock) {
    host_refusing_messages(start, status, StatusCode::NOT_FOUND).await
}

async fn host_refusing_messages(
    start: (StatusCode, &'static str),
    status: StatusCode,
    message: StatusCode,
) -> (Arc<TownHost>, Log, ManualClock) {
    let log: Log = Arc::default();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let container = Router::new()
        .route(
            "/agents/start",
            post(move || async move {
                l1.lock().unwrap().push("start".into());
                start
            }),
        )
        .route(
            "/agents/{id}/status",
            get(move || async move {
                l2.lock().unwrap().push("status".into());
                (status, r#"{"error":"unknown agent"}"#)
            }),
        )
        .route(
            "/agents/{id}/message",
            post(move || async move {
                l3.lock().unwrap().push("message".into());
                (message, "no live session")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(crate::net::serve(listener, container));
    let clock = ManualClock::new(T0);
    let conn = crate::store::open_in_memory().unwrap();
    let mut town = Town::open(conn, Arc::new(clock.clone()), TownOptions { town_id: "t1".into(), seed: 1 }).unwrap();
    town.add_rig(AddRig { id: Some("r1".into()), name: "app".into(), ..Default::default() }).unwrap();
    let cfg = TownHostConfig { api_url: "http://town".into(), container_url: url, secret: b"s".to_vec() };
    let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(5));
    (TownHost::new(town, Arc::new(clock.clone()), http, cfg), log, clock)
}

fn start_effect(agent: &str) -> Effect {
    Effect::StartAgent(StartAgent {
        agent_id: agent.into(),
        bead_id: "b1".into(),
        rig_id: "r1".into(),
        role: AgentRole::Polecat,
        name: "Toast".into(),
        identity: "toast".into(),
        prompt: "work".into(),
        branch: None,
        target_branch: None,
        start_point: None,
        pr_url: None,
    })
}

#[tokio::test]
async fn dispatch_counts_already_running_as_started_and_other_errors_as_not() {
    let (host, _, _) = host_with((StatusCode::INTERNAL_SERVER_ERROR, "agent already running"), StatusCode::OK).await;
    let out = host.run_effects(&[start_effect("a1")]).await;
    assert!(matches!(&out[0], Outcome::AgentStart { started: true, error: None, .. }), "{out:?}");
    let (host, _, _) = host_with((StatusCode::INTERNAL_SERVER_ERROR, "boom"), StatusCode::OK).await;
    let out = host.run_effects(&[start_effect("a1")]).await;
    match &out[0] {
        Outcome::AgentStart { started: false, error: Some(e), .. } => assert!(e.contains("500") && e.contains("boom")),
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn an_unknown_agent_in_the_container_becomes_a_not_found_status_event() {
    let (host, log, _) = host_with((StatusCode::CREATED, "{}"), StatusCode::NOT_FOUND).await;
    let slung = host
        .with_town(|t| t.sling_bead(SlingBead { rig_id: "r1".into(), title: "x".into(), ..Default::default() }))
        .unwrap()
        .0;
    let before = host.with_town(|t| t.pending_event_count()).unwrap();
    host.observe_agents().await.unwrap();
    assert!(log.lock().unwrap().contains(&"status".to_owned()));
    let after = host.with_town(|t| t.pending_event_count()).unwrap();
    assert_eq!(after, before + 1, "one container_status event for {:?}", slung.agent_id);
    // Reported again, it stays one pending event (upserted, not duplicated).
    host.observe_agents().await.unwrap();
    assert_eq!(host.with_town(|t| t.pending_event_count()).unwrap(), after);
}

#[tokio::test]
async fn a_message_for_a_mayor_the_container_lost_starts_it_first() {
    let (host, log, _) = host_with((StatusCode::CREATED, "{}"), StatusCode::OK).await;
    let e = Effect::MessageMayor { mayor_id: Some("m1".into()), about_bead: None, text: "hi".into() };
    let out = host.run_effects(&[e]).await;
    // The stand-in never learns the mayor, so the retried message fails too.
    assert_eq!(out, vec![Outcome::MayorMessage { about_bead: None, delivered: false }]);
    assert_eq!(*log.lock().unwrap(), vec!["message", "start", "message"]);
}

#[tokio::test]
async fn a_message_for_a_mayor_whose_session_ended_starts_it_again() {
    // 409: the container knows the mayor but its session failed or crashed.
    let (host, log, _) =
        host_refusing_messages((StatusCode::CREATED, "{}"), StatusCode::OK, StatusCode::CONFLICT).await;
    let e = Effect::MessageMayor { mayor_id: Some("m1".into()), about_bead: None, text: "hi".into() };
    host.run_effects(&[e]).await;
    assert_eq!(*log.lock().unwrap(), vec!["message", "start", "message"]);
    // Any other refusal is an answer: no start.
    let (host, log, _) =
        host_refusing_messages((StatusCode::CREATED, "{}"), StatusCode::OK, StatusCode::INTERNAL_SERVER_ERROR).await;
    let e = Effect::MessageMayor { mayor_id: Some("m1".into()), about_bead: None, text: "hi".into() };
    assert_eq!(host.run_effects(&[e]).await, vec![Outcome::MayorMessage { about_bead: None, delivered: false }]);
    assert_eq!(*log.lock().unwrap(), vec!["message"]);
}

#[tokio::test]
async fn a_mayor_started_fresh_takes_the_message_as_its_prompt_and_a_resumed_one_as_a_turn() {
    const FRESH: &str = r#"{"agent_id":"m1","status":"running","session_id":"s1","started_at":1,"last_activity_at":null,"message_count":1,"exit_reason":null,"resumed":false}"#;
    const RESUMED: &str = r#"{"agent_id":"m1","status":"running","session_id":"s1","started_at":1,"last_activity_at":null,"message_count":0,"exit_reason":null,"resumed":true}"#;
    let e = || Effect::MessageMayor { mayor_id: Some("m1".into()), about_bead: None, text: "hi".into() };
    let (host, log, _) =
        host_refusing_messages((StatusCode::CREATED, FRESH), StatusCode::OK, StatusCode::NOT_FOUND).await;
    assert_eq!(host.run_effects(&[e()]).await, vec![Outcome::MayorMessage { about_bead: None, delivered: true }]);
    assert_eq!(*log.lock().unwrap(), vec!["message", "start"], "the start's prompt was the message");
    let (host, log, _) =
        host_refusing_messages((StatusCode::CREATED, RESUMED), StatusCode::OK, StatusCode::NOT_FOUND).await;
    host.run_effects(&[e()]).await;
    assert_eq!(*log.lock().unwrap(), vec!["message", "start", "message"], "a resumed session skipped it");
    let (host, log, _) =
        host_refusing_messages((StatusCode::INTERNAL_SERVER_ERROR, "boom"), StatusCode::OK, StatusCode::NOT_FOUND)
            .await;
    assert_eq!(host.run_effects(&[e()]).await, vec![Outcome::MayorMessage { about_bead: None, delivered: false }]);
    assert_eq!(*log.lock().unwrap(), vec!["message", "start"], "no message after a failed start");
}
