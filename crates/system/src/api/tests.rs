//! The API over real loopback TCP: auth refusals, malformed bodies, and the
//! agent-facing and container-level routes end to end into the town.

use crate::model::{AgentStatus, BeadStatus};
use crate::net::{HttpClient, TokioConnector};
use crate::runtime::{TownHost, TownHostConfig};
use crate::time::{Clock, ManualClock, Timestamp};
use crate::town::{AddRig, Town, TownOptions};
use crate::wire::{Envelope, HeartbeatReply, RegistryEntry};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const T0: Timestamp = Timestamp(1_780_000_000_000);

struct Api {
    base: String,
    host: Arc<TownHost>,
    http: HttpClient,
    clock: ManualClock,
}

impl Api {
    async fn start() -> Api {
        let clock = ManualClock::new(T0);
        let conn = crate::store::open_in_memory().unwrap();
        let mut town =
            Town::open(conn, Arc::new(clock.clone()), TownOptions { town_id: "t1".into(), seed: 7 }).unwrap();
        town.add_rig(AddRig { id: Some("r1".into()), name: "app".into(), ..Default::default() }).unwrap();
        let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(5));
        let cfg = TownHostConfig {
            api_url: "http://127.0.0.1:1".into(),
            // Nothing listens here: effects fail fast, which these tests do not exercise.
            container_url: "http://127.0.0.1:1".into(),
            secret: b"test-secret".to_vec(),
        };
        let host = TownHost::new(town, Arc::new(clock.clone()), http.clone(), cfg);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::net::serve(listener, super::router(host.clone())));
        Api { base, host, http, clock }
    }

    fn container(&self) -> String {
        self.host.signer.container_token("t1", self.clock.now())
    }
    fn agent(&self, id: &str) -> String {
        self.host.signer.agent_token("t1", id, self.clock.now())
    }
    fn user(&self) -> String {
        self.host.user_token(self.clock.now().plus_ms(3_600_000))
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let method = hyper::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer(t);
        }
        if let Some(b) = body {
            req = req.bytes(b.as_bytes().to_vec()).header("content-type", "application/json");
        }
        let resp = req.send().await.unwrap();
        let v = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        (resp.status, v)
    }

    /// Sling a bead as the user; returns (bead, agent).
    async fn sling(&self) -> (String, String) {
        let (s, v) =
            self.call("POST", "/api/towns/t1/rigs/r1/sling", Some(&self.user()), Some(r#"{"title":"fix it"}"#)).await;
        assert_eq!(s, 201, "{v}");
        (v["data"]["bead_id"].as_str().unwrap().into(), v["data"]["agent_id"].as_str().unwrap().into())
    }
}

fn hb(agent: &str) -> String {
    format!("/api/towns/t1/rigs/r1/agents/{agent}/heartbeat")
}

#[tokio::test]
async fn auth_refuses_missing_tampered_and_expired_tokens_with_401() {
    let api = Api::start().await;
    let (_, agent) = api.sling().await;
    assert_eq!(api.call("POST", &hb(&agent), None, None).await.0, 401);
    assert_eq!(api.call("POST", &hb(&agent), Some("garbage"), None).await.0, 401);
    let mut forged = api.agent(&agent);
    forged.pop();
    forged.push(if forged.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(api.call("POST", &hb(&agent), Some(&forged), None).await.0, 401);
    let old = api.agent(&agent);
    api.clock.advance_ms(crate::auth::TOKEN_TTL_MS);
    let (s, v) = api.call("POST", &hb(&agent), Some(&old), None).await;
    assert_eq!((s, v["success"].as_bool()), (401, Some(false)), "{v}");
    assert!(v["error"].as_str().unwrap().contains("expired"), "{v}");
}

#[tokio::test]
async fn auth_refuses_other_agents_towns_and_scopes_with_403() {
    let api = Api::start().await;
    let (_, agent) = api.sling().await;
    let (s, _) = api.call("POST", &hb(&agent), Some(&api.agent("someone-else")), None).await;
    assert_eq!(s, 403);
    let foreign = api.host.signer.container_token("t2", api.clock.now());
    assert_eq!(api.call("POST", &hb(&agent), Some(&foreign), None).await.0, 403);
    // A user token is not an agent's; an agent token is not a user's.
    assert_eq!(api.call("POST", &hb(&agent), Some(&api.user()), None).await.0, 403);
    assert_eq!(api.call("GET", "/api/towns/t1/status", Some(&api.agent(&agent)), None).await.0, 403);
    assert_eq!(api.call("GET", "/api/towns/t1/status", Some(&api.user()), None).await.0, 200);
    // The container's token acts for any agent of its town.
    assert_eq!(api.call("POST", &hb(&agent), Some(&api.container()), None).await.0, 200);
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_message() {
    let api = Api::start().await;
    let (_, agent) = api.sling().await;
    let tok = api.agent(&agent);
    let done = format!("/api/towns/t1/rigs/r1/agents/{agent}/done");
    let (s, v) = api.call("POST", &done, Some(&tok), Some("{not json")).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("malformed body"), "{v}");
    let (s, v) = api.call("POST", &done, Some(&tok), Some(r#"{"branch": 7}"#)).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api.call("POST", "/api/towns/t1/rigs/r1/sling", Some(&api.user()), Some(r#"{"titel":"x"}"#)).await;
    assert_eq!(s, 400);
    let (s, v) = api.call("GET", "/api/towns/t1/beads?type=nonsense", Some(&api.user()), None).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = api.call("GET", "/api/towns/t1/no-such-thing", Some(&api.user()), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn agent_routes_reach_the_town() {
    let api = Api::start().await;
    let (bead, agent) = api.sling().await;
    let tok = api.agent(&agent);
    let body = json!({"last_event_type": "tool", "last_event_at": T0.0, "container_instance_id": "c1"}).to_string();
    let (s, v) = api.call("POST", &hb(&agent), Some(&tok), Some(&body)).await;
    assert_eq!(s, 200, "{v}");
    let reply: Envelope<HeartbeatReply> = serde_json::from_value(v).unwrap();
    assert_eq!(reply.data.unwrap().drain_nonce, None);
    let a = api.host.with_town(|t| t.agent(&agent)).unwrap();
    assert_eq!(a.status, AgentStatus::Working);

    let done = format!("/api/towns/t1/rigs/r1/agents/{agent}/done");
    assert_eq!(api.call("POST", &done, Some(&tok), Some(r#"{"branch":"gt/x"}"#)).await.0, 200);
    assert_eq!(api.host.with_town(|t| t.pending_event_count()).unwrap(), 2, "bead_created + agent_done");
    assert_eq!(api.host.with_town(|t| t.bead(&bead)).unwrap().status, BeadStatus::InProgress);
}

#[tokio::test]
async fn drain_handoff_through_eviction_heartbeat_and_ready() {
    let api = Api::start().await;
    let (_, agent) = api.sling().await;
    let c = api.container();
    let (s, v) = api.call("POST", "/api/towns/t1/container-eviction", Some(&c), None).await;
    assert_eq!(s, 200);
    let nonce = v["data"]["nonce"].as_str().unwrap().to_owned();
    let (_, v) = api.call("POST", &hb(&agent), Some(&c), Some("{}")).await;
    assert_eq!(v["data"]["drain_nonce"].as_str(), Some(nonce.as_str()));
    let (_, v) = api.call("GET", "/api/towns/t1/drain-status", Some(&c), None).await;
    assert_eq!(v["data"]["draining"], true);
    let (_, v) = api.call("POST", "/api/towns/t1/container-ready", Some(&c), Some(r#"{"nonce":"wrong"}"#)).await;
    assert_eq!(v["data"]["cleared"], false);
    let body = json!({ "nonce": nonce }).to_string();
    let (_, v) = api.call("POST", "/api/towns/t1/container-ready", Some(&c), Some(&body)).await;
    assert_eq!(v["data"]["cleared"], true);
    assert!(!api.host.with_town(|t| t.drain_state()).unwrap().draining);
}

#[tokio::test]
async fn registry_and_snapshot_routes_round_trip() {
    let api = Api::start().await;
    let (_, agent) = api.sling().await;
    let c = api.container();
    let (_, v) = api.call("GET", "/api/towns/t1/container-registry", Some(&c), None).await;
    assert_eq!(v["data"], json!([]));
    let (s, v) = api.call("POST", "/api/towns/t1/container-registry", Some(&c), Some(r#"[{"agent_id": 1}]"#)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(api.call("POST", "/api/towns/t1/container-registry", Some(&c), Some("[]")).await.0, 200);
    let entries: Vec<RegistryEntry> = api.host.with_town(|t| t.container_registry()).unwrap();
    assert!(entries.is_empty());

    let snap = format!("{}/api/towns/t1/rigs/r1/agents/{agent}/db-snapshot", api.base);
    let put = |v: &str, bytes: &[u8]| {
        api.http
            .post(snap.clone())
            .bearer(&c)
            .header(crate::wire::SNAPSHOT_VERSION_HEADER, v)
            .bytes(bytes.to_vec())
            .send()
    };
    assert_eq!(api.http.get(snap.clone()).bearer(&c).send().await.unwrap().status, 404);
    assert_eq!(put("5", b"db-v5").await.unwrap().status, 200);
    assert_eq!(put("4", b"db-v4").await.unwrap().status, 409, "an older upload is refused");
    assert_eq!(put("x", b"db").await.unwrap().status, 400);
    let got = api.http.get(snap.clone()).bearer(&c).send().await.unwrap();
    assert_eq!(&got.body[..], b"db-v5");
    assert_eq!(api.http.delete(snap.clone()).bearer(&c).send().await.unwrap().status, 200);
    assert_eq!(api.http.get(snap).bearer(&c).send().await.unwrap().status, 404);
}

#[tokio::test]
async fn an_expired_container_token_can_be_traded_for_a_fresh_one() {
    let api = Api::start().await;
    let old = api.container();
    api.clock.advance_ms(crate::auth::TOKEN_TTL_MS + 1);
    assert_eq!(api.call("GET", "/api/towns/t1/drain-status", Some(&old), None).await.0, 401);
    let (s, v) = api.call("POST", "/api/towns/t1/refresh-container-token", Some(&old), None).await;
    assert_eq!(s, 200, "{v}");
    let fresh = v["data"]["token"].as_str().unwrap();
    assert_eq!(api.call("GET", "/api/towns/t1/drain-status", Some(fresh), None).await.0, 200);
    let (s, _) = api.call("POST", "/api/towns/t1/refresh-container-token", Some(&api.agent("a")), None).await;
    assert_eq!(s, 403, "only container tokens are refreshed");
}

#[tokio::test]
async fn external_prs_are_adopted_once_and_refused_with_the_reason() {
    let api = Api::start().await;
    let rig = r#"{"id":"r2","name":"web","git_url":"https://github.com/acme/web.git"}"#;
    let (s, v) = api.call("POST", "/api/towns/t1/rigs", Some(&api.user()), Some(rig)).await;
    assert_eq!(s, 201, "{v}");
    let path = "/api/towns/t1/rigs/r2/external-prs";
    let body = r#"{"pr_url":"https://github.com/acme/web/pull/3","branch":"contrib/x","head_sha":"abc"}"#;
    let (s, v) = api.call("POST", path, Some(&api.user()), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let mr = v["data"]["mr_bead_id"].as_str().unwrap().to_owned();
    let (s, again) = api.call("POST", path, Some(&api.user()), Some(body)).await;
    assert_eq!((s, again["data"]["mr_bead_id"].as_str()), (200, Some(mr.as_str())), "{again}");
    let (s, v) = api.call("GET", &format!("/api/towns/t1/beads/{mr}"), Some(&api.user()), None).await;
    assert_eq!((s, v["data"]["labels"].to_string().contains("gt:babysit")), (200, true), "{v}");
    let foreign = r#"{"pr_url":"https://github.com/evil/web/pull/3","branch":"x"}"#;
    let (s, v) = api.call("POST", path, Some(&api.user()), Some(foreign)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("repository"), "{v}");
    let (s, _) = api.call("POST", path, Some(&api.user()), Some(r#"{"pr_url":"x","brnch":"y"}"#)).await;
    assert_eq!(s, 400, "unknown field");
    let (s, _) = api.call("POST", "/api/towns/t1/rigs/nope/external-prs", Some(&api.user()), Some(body)).await;
    assert_eq!(s, 404);
    let (s, _) = api.call("POST", path, None, Some(body)).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn delete_bead_route_deletes_refuses_and_answers_404_for_a_missing_bead() {
    let api = Api::start().await;
    let (bead, agent) = api.sling().await;
    let path = format!("/api/towns/t1/beads/{bead}");
    // Users only, as every user route.
    assert_eq!(api.call("DELETE", &path, None, None).await.0, 401);
    assert_eq!(api.call("DELETE", &path, Some(&api.agent(&agent)), None).await.0, 403);
    assert_eq!(api.call("DELETE", &path, Some(&api.container()), None).await.0, 403);

    let (s, v) = api.call("DELETE", &path, Some(&api.user()), None).await;
    assert_eq!((s, &v["success"]), (200, &json!(true)), "{v}");
    assert_eq!(v["data"]["bead_id"], bead.as_str());
    assert_eq!(v["data"]["unhooked_agents"], json!([agent]), "{v}");
    let (s, v) = api.call("GET", &path, Some(&api.user()), None).await;
    assert_eq!(s, 404, "{v}");
    let a = api.host.with_town(|t| t.agent(&agent)).unwrap();
    assert_eq!((a.status, a.current_hook_bead_id), (AgentStatus::Idle, None));

    let (s, v) = api.call("DELETE", &path, Some(&api.user()), None).await;
    assert_eq!((s, &v["success"]), (404, &json!(false)), "{v}");
    assert!(v["error"].as_str().unwrap().contains(&bead), "the error names the bead: {v}");
    let (s, v) = api.call("DELETE", &format!("/api/towns/t1/beads/{agent}"), Some(&api.user()), None).await;
    assert_eq!(s, 400, "an agent is refused: {v}");
    assert!(v["error"].as_str().unwrap().contains("agent"), "{v}");
}

#[tokio::test]
async fn hook_route_hands_a_bead_to_another_agent_and_unhook_releases_it() {
    let api = Api::start().await;
    let (bead, first) = api.sling().await;
    let (other_bead, second) = api.sling().await;
    let hook = |a: &str| format!("/api/towns/t1/agents/{a}/hook");
    let body = format!(r#"{{"bead_id":"{bead}"}}"#);
    assert_eq!(api.call("POST", &hook(&second), Some(&api.agent(&second)), Some(&body)).await.0, 403);
    let (s, v) = api.call("POST", &hook(&second), Some(&api.user()), Some(&body)).await;
    assert_eq!(s, 400, "still hooked to its own bead: {v}");
    assert!(v["error"].as_str().unwrap().contains("unhook first"), "{v}");

    let (s, v) = api.call("POST", &format!("/api/towns/t1/agents/{second}/unhook"), Some(&api.user()), None).await;
    assert_eq!((s, &v["data"]["current_hook_bead_id"]), (200, &Value::Null), "{v}");
    let (s, v) = api.call("POST", &hook(&second), Some(&api.user()), Some(&body)).await;
    assert_eq!((s, v["data"]["current_hook_bead_id"].as_str()), (200, Some(bead.as_str())), "{v}");
    // Bug (l): the bead has one agent; the first one let go.
    let a = api.host.with_town(|t| t.agent(&first)).unwrap();
    assert_eq!(a.current_hook_bead_id, None);
    assert_eq!(api.host.with_town(|t| t.bead(&bead)).unwrap().assignee_agent_bead_id.as_deref(), Some(second.as_str()));

    for (agent, body, want) in [
        (first.as_str(), r#"{"bead":"x"}"#.to_owned(), 400),
        (first.as_str(), "not json".to_owned(), 400),
        (first.as_str(), r#"{"bead_id":"no-such-bead"}"#.to_owned(), 404),
        ("no-such-agent", format!(r#"{{"bead_id":"{other_bead}"}}"#), 404),
    ] {
        let (s, v) = api.call("POST", &hook(agent), Some(&api.user()), Some(&body)).await;
        assert_eq!(s, want, "{body}: {v}");
        assert_eq!(v["success"], json!(false), "{v}");
    }
}

#[tokio::test]
async fn triage_resolve_route_acts_once_and_names_what_is_wrong() {
    let api = Api::start().await;
    let (bead, agent) = api.sling().await;
    let tr = api
        .host
        .with_town(|t| t.create_triage_request(crate::model::TriageType::StuckAgent, Some(&agent), "stuck", json!({})))
        .unwrap()
        .unwrap();
    let path = "/api/towns/t1/triage/resolve";
    let body = format!(r#"{{"triage_request_bead_id":"{tr}","action":"REASSIGN_BEAD","resolution_notes":"retry"}}"#);
    assert_eq!(api.call("POST", path, Some(&api.agent(&agent)), Some(&body)).await.0, 403);
    let (s, v) = api.call("POST", path, Some(&api.user()), Some(&body)).await;
    assert_eq!((s, &v["data"]), (200, &json!(true)), "{v}");
    let b = api.host.with_town(|t| t.bead(&bead)).unwrap();
    assert_eq!((b.status, b.assignee_agent_bead_id), (BeadStatus::Open, None));
    for (body, want, names) in [
        (body.clone(), 400, "not open"),
        (r#"{"action":"RESTART"}"#.to_owned(), 400, "triage_request_bead_id"),
        (r#"{"triage_request_bead_id":"nope","action":"RESTART"}"#.to_owned(), 404, "nope"),
        (format!(r#"{{"triage_request_bead_id":"{bead}","action":"RESTART"}}"#), 400, "not a triage request"),
    ] {
        let (s, v) = api.call("POST", path, Some(&api.user()), Some(&body)).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(names), "{body}: {v}");
    }
}
