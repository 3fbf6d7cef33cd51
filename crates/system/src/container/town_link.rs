//! The container's calls to the town, behind one small trait.
//!
//! Every call is a [`TownCall`] value: the HTTP implementation turns it into a
//! request on the town's routes; tests use [`super::fake_town::FakeTown`],
//! which records the values. Calls are values (not methods) so the container
//! can retry one with a refreshed token without knowing what it is.

use crate::net::{HttpClient, HttpError, SendFuture};
use crate::wire::{
    CheckpointBody, CompletedBody, ContainerReadyBody, ContainerReadyReply, DoneBody, DrainStatusReply, Envelope,
    EscalationBody, EvictionContextBody, EvictionReply, HeartbeatBody, HeartbeatReply, IdReply, NudgeDeliveredBody,
    PendingNudge, RegistryEntry, RequestChangesBody, RequestChangesReply, TokenReply, WaitingBody, AGENT_ID_HEADER,
    SNAPSHOT_VERSION_HEADER,
};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Where a town lives and which town it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TownAddr {
    pub api_url: String,
    pub town_id: String,
}

/// An agent's routes: `/api/towns/{town}/rigs/{rig}/agents/{agent}/…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAddr {
    pub town: TownAddr,
    /// The agent's rig, `_` for the mayor.
    pub rig: String,
    pub agent_id: String,
}

/// A session snapshot as the town stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The version the town reported, when the transport exposes it.
    pub version: Option<i64>,
    pub bytes: Vec<u8>,
}

/// Whom a call is about: an agent (of a town), or a town as a whole.
enum Addressee<'a> {
    Agent(&'a AgentAddr),
    Town(&'a TownAddr),
}

/// One request to the town.
#[derive(Clone, Debug, PartialEq)]
pub enum TownCall {
    Heartbeat(AgentAddr, HeartbeatBody),
    Done(AgentAddr, DoneBody),
    Completed(AgentAddr, CompletedBody),
    Waiting(AgentAddr, WaitingBody),
    RequestChanges(AgentAddr, RequestChangesBody),
    Checkpoint(AgentAddr, CheckpointBody),
    PendingNudges(AgentAddr),
    NudgeDelivered(AgentAddr, NudgeDeliveredBody),
    EvictionContext(AgentAddr, EvictionContextBody),
    GetSnapshot(AgentAddr),
    PutSnapshot {
        agent: AgentAddr,
        version: i64,
        bytes: Vec<u8>,
    },
    DeleteSnapshot(AgentAddr),
    /// `POST /api/towns/{town}/rigs/{rig}/escalations`, on behalf of the agent.
    Escalate(AgentAddr, EscalationBody),
    ContainerEviction(TownAddr),
    ContainerReady(TownAddr, ContainerReadyBody),
    DrainStatus(TownAddr),
    GetRegistry(TownAddr),
    PutRegistry(TownAddr, Vec<RegistryEntry>),
    RefreshContainerToken(TownAddr),
}

impl TownCall {
    /// A short name for logs and test assertions.
    pub fn name(&self) -> &'static str {
        match self {
            TownCall::Heartbeat(..) => "heartbeat",
            TownCall::Done(..) => "done",
            TownCall::Completed(..) => "completed",
            TownCall::Waiting(..) => "waiting",
            TownCall::RequestChanges(..) => "request-changes",
            TownCall::Checkpoint(..) => "checkpoint",
            TownCall::PendingNudges(..) => "pending-nudges",
            TownCall::NudgeDelivered(..) => "nudge-delivered",
            TownCall::EvictionContext(..) => "eviction-context",
            TownCall::GetSnapshot(..) => "get-snapshot",
            TownCall::PutSnapshot { .. } => "put-snapshot",
            TownCall::DeleteSnapshot(..) => "delete-snapshot",
            TownCall::Escalate(..) => "escalate",
            TownCall::ContainerEviction(..) => "container-eviction",
            TownCall::ContainerReady(..) => "container-ready",
            TownCall::DrainStatus(..) => "drain-status",
            TownCall::GetRegistry(..) => "get-registry",
            TownCall::PutRegistry(..) => "put-registry",
            TownCall::RefreshContainerToken(..) => "refresh-container-token",
        }
    }

    /// The town this call goes to.
    pub fn town(&self) -> &TownAddr {
        match self.addressee() {
            Addressee::Agent(a) => &a.town,
            Addressee::Town(t) => t,
        }
    }

    /// The agent this call is about, if any.
    pub fn agent_id(&self) -> Option<&str> {
        match self.addressee() {
            Addressee::Agent(a) => Some(&a.agent_id),
            Addressee::Town(_) => None,
        }
    }

    /// The agent the call is about, or else the town it goes to. One
    /// exhaustive match, so a new call must say which it is.
    fn addressee(&self) -> Addressee<'_> {
        match self {
            TownCall::Heartbeat(a, _)
            | TownCall::Done(a, _)
            | TownCall::Completed(a, _)
            | TownCall::Waiting(a, _)
            | TownCall::RequestChanges(a, _)
            | TownCall::Checkpoint(a, _)
            | TownCall::PendingNudges(a)
            | TownCall::NudgeDelivered(a, _)
            | TownCall::EvictionContext(a, _)
            | TownCall::GetSnapshot(a)
            | TownCall::PutSnapshot { agent: a, .. }
            | TownCall::DeleteSnapshot(a)
            | TownCall::Escalate(a, _) => Addressee::Agent(a),
            TownCall::ContainerEviction(t)
            | TownCall::ContainerReady(t, _)
            | TownCall::DrainStatus(t)
            | TownCall::GetRegistry(t)
            | TownCall::PutRegistry(t, _)
            | TownCall::RefreshContainerToken(t) => Addressee::Town(t),
        }
    }
}

/// What the town answered.
#[derive(Clone, Debug, PartialEq)]
pub enum TownReply {
    /// A call whose answer carries nothing the container uses.
    Ack,
    Heartbeat(HeartbeatReply),
    RequestChanges(RequestChangesReply),
    Nudges(Vec<PendingNudge>),
    /// `None`: the town holds no snapshot (404).
    Snapshot(Option<StoredSnapshot>),
    Id(IdReply),
    Eviction(EvictionReply),
    Ready(ContainerReadyReply),
    DrainStatus(DrainStatusReply),
    Registry(Vec<RegistryEntry>),
    Token(TokenReply),
}

/// Why a call produced no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// 401: the token is expired or not signed by the town.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409 (e.g. a snapshot not newer than the stored one).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other refusal.
    #[error("status {status}: {message}")]
    Refused { status: u16, message: String },
    /// No answer (connect failure, timeout, broken connection).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer we could not read, or not the answer this call expects.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl LinkError {
    /// A failure that another try may get past: no answer, or a server error.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Unreachable(_) => true,
            LinkError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// The container's view of the town.
pub trait TownLink: Send + Sync {
    /// Perform `call` with `token` as the bearer.
    fn call<'a>(&'a self, token: &'a str, call: &'a TownCall) -> SendFuture<'a, Result<TownReply, LinkError>>;
}

/// Timeouts upstream uses for these calls (others use the client's default, 10 s upstream).
const EVICTION_CONTEXT_TIMEOUT: Duration = Duration::from_secs(5);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// [`TownLink`] over HTTP (tokio TCP in production, turmoil in the simulator,
/// whatever the [`HttpClient`]'s connector dials). The client's default
/// timeout applies to calls without their own (upstream uses 10 s).
#[derive(Clone, Debug)]
pub struct HttpTownLink {
    http: HttpClient,
}

impl HttpTownLink {
    pub fn new(http: HttpClient) -> Self {
        HttpTownLink { http }
    }
}

/// `POST url` with the bearer token and the agent header.
macro_rules! post {
    ($h:expr, $url:expr, $token:expr, $a:expr) => {
        $h.post($url).bearer($token).header(AGENT_ID_HEADER, &$a.agent_id)
    };
}

fn town_url(t: &TownAddr, tail: &str) -> String {
    format!("{}/api/towns/{}/{}", t.api_url.trim_end_matches('/'), t.town_id, tail)
}

fn agent_url(a: &AgentAddr, tail: &str) -> String {
    town_url(&a.town, &format!("rigs/{}/agents/{}/{}", a.rig, a.agent_id, tail))
}

fn unreachable(e: HttpError) -> LinkError {
    LinkError::Unreachable(e.to_string())
}

fn refusal(status: u16, body: &str) -> LinkError {
    // The town's error bodies are envelopes; fall back to the raw text.
    let message = serde_json::from_str::<Envelope<serde_json::Value>>(body)
        .ok()
        .and_then(|e| e.error)
        .unwrap_or_else(|| body.chars().take(300).collect());
    match status {
        401 => LinkError::Unauthorized(message),
        404 => LinkError::NotFound(message),
        409 => LinkError::Conflict(message),
        _ => LinkError::Refused { status, message },
    }
}

fn envelope<T: DeserializeOwned>(resp: &crate::net::HttpResponse) -> Result<T, LinkError> {
    if !resp.ok() {
        return Err(refusal(resp.status, &resp.text()));
    }
    // `Option<T>` inside: the envelope's derive wants a `Default` payload.
    let env: Envelope<Option<T>> = resp.json().map_err(LinkError::BadAnswer)?;
    match (env.success, env.data.flatten()) {
        (true, Some(d)) => Ok(d),
        (true, None) => Err(LinkError::BadAnswer("success without data".into())),
        (false, _) => {
            Err(LinkError::Refused { status: resp.status, message: env.error.unwrap_or_else(|| "unsuccessful".into()) })
        }
    }
}

fn ack(resp: &crate::net::HttpResponse) -> Result<TownReply, LinkError> {
    if !resp.ok() {
        return Err(refusal(resp.status, &resp.text()));
    }
    // Tolerate any success body: the container needs nothing from it.
    match serde_json::from_slice::<Envelope<serde_json::Value>>(&resp.body) {
        Ok(env) if !env.success => {
            Err(LinkError::Refused { status: resp.status, message: env.error.unwrap_or_else(|| "unsuccessful".into()) })
        }
        _ => Ok(TownReply::Ack),
    }
}

impl TownLink for HttpTownLink {
    fn call<'a>(&'a self, token: &'a str, call: &'a TownCall) -> SendFuture<'a, Result<TownReply, LinkError>> {
        Box::pin(async move {
            let h = &self.http;
            match call {
                TownCall::Heartbeat(a, body) => {
                    let r = post!(h, agent_url(a, "heartbeat"), token, a).json(body).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Heartbeat)
                }
                TownCall::Done(a, body) => {
                    ack(&post!(h, agent_url(a, "done"), token, a).json(body).send().await.map_err(unreachable)?)
                }
                TownCall::Completed(a, body) => {
                    ack(&post!(h, agent_url(a, "completed"), token, a).json(body).send().await.map_err(unreachable)?)
                }
                TownCall::Waiting(a, body) => {
                    ack(&post!(h, agent_url(a, "waiting"), token, a).json(body).send().await.map_err(unreachable)?)
                }
                TownCall::RequestChanges(a, body) => {
                    let r = post!(h, agent_url(a, "request-changes"), token, a).json(body).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::RequestChanges)
                }
                TownCall::Checkpoint(a, body) => {
                    ack(&post!(h, agent_url(a, "checkpoint"), token, a).json(body).send().await.map_err(unreachable)?)
                }
                TownCall::PendingNudges(a) => {
                    let r = h
                        .get(agent_url(a, "pending-nudges"))
                        .bearer(token)
                        .header(AGENT_ID_HEADER, &a.agent_id)
                        .send()
                        .await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Nudges)
                }
                TownCall::NudgeDelivered(a, body) => ack(&post!(h, agent_url(a, "nudge-delivered"), token, a)
                    .json(body)
                    .send()
                    .await
                    .map_err(unreachable)?),
                TownCall::EvictionContext(a, body) => ack(&post!(h, agent_url(a, "eviction-context"), token, a)
                    .json(body)
                    .timeout(EVICTION_CONTEXT_TIMEOUT)
                    .send()
                    .await
                    .map_err(unreachable)?),
                TownCall::GetSnapshot(a) => {
                    let resp = h
                        .get(agent_url(a, "db-snapshot"))
                        .bearer(token)
                        .header(AGENT_ID_HEADER, &a.agent_id)
                        .timeout(SNAPSHOT_TIMEOUT)
                        .send()
                        .await
                        .map_err(unreachable)?;
                    match resp.status {
                        404 => Ok(TownReply::Snapshot(None)),
                        // The client does not expose response headers, so the
                        // stored version is unknown here (see the module docs).
                        s if (200..300).contains(&s) => {
                            Ok(TownReply::Snapshot(Some(StoredSnapshot { version: None, bytes: resp.body.to_vec() })))
                        }
                        s => Err(refusal(s, &resp.text())),
                    }
                }
                TownCall::PutSnapshot { agent, version, bytes } => {
                    ack(&post!(h, agent_url(agent, "db-snapshot"), token, agent)
                        .header(SNAPSHOT_VERSION_HEADER, &version.to_string())
                        .bytes(bytes.clone())
                        .timeout(SNAPSHOT_TIMEOUT)
                        .send()
                        .await
                        .map_err(unreachable)?)
                }
                TownCall::DeleteSnapshot(a) => ack(&h
                    .delete(agent_url(a, "db-snapshot"))
                    .bearer(token)
                    .header(AGENT_ID_HEADER, &a.agent_id)
                    .send()
                    .await
                    .map_err(unreachable)?),
                TownCall::Escalate(a, body) => {
                    let url = town_url(&a.town, &format!("rigs/{}/escalations", a.rig));
                    let r = post!(h, url, token, a).json(body).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Id)
                }
                TownCall::ContainerEviction(t) => {
                    let r = h
                        .post(town_url(t, "container-eviction"))
                        .bearer(token)
                        .json(&serde_json::json!({}))
                        .send()
                        .await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Eviction)
                }
                TownCall::ContainerReady(t, body) => {
                    let r = h.post(town_url(t, "container-ready")).bearer(token).json(body).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Ready)
                }
                TownCall::DrainStatus(t) => {
                    let r = h.get(town_url(t, "drain-status")).bearer(token).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::DrainStatus)
                }
                TownCall::GetRegistry(t) => {
                    let r = h.get(town_url(t, "container-registry")).bearer(token).send().await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Registry)
                }
                TownCall::PutRegistry(t, entries) => ack(&h
                    .post(town_url(t, "container-registry"))
                    .bearer(token)
                    .json(entries)
                    .send()
                    .await
                    .map_err(unreachable)?),
                TownCall::RefreshContainerToken(t) => {
                    let r = h
                        .post(town_url(t, "refresh-container-token"))
                        .bearer(token)
                        .json(&serde_json::json!({}))
                        .send()
                        .await;
                    envelope(&r.map_err(unreachable)?).map(TownReply::Token)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_town_routes() {
        let t = TownAddr { api_url: "http://town:8787/".into(), town_id: "t1".into() };
        let a = AgentAddr { town: t.clone(), rig: "_".into(), agent_id: "m1".into() };
        assert_eq!(agent_url(&a, "heartbeat"), "http://town:8787/api/towns/t1/rigs/_/agents/m1/heartbeat");
        assert_eq!(town_url(&t, "container-registry"), "http://town:8787/api/towns/t1/container-registry");
    }

    #[test]
    fn refusals_map_status_and_envelope_message() {
        assert_eq!(refusal(401, r#"{"success":false,"error":"expired"}"#), LinkError::Unauthorized("expired".into()));
        assert_eq!(refusal(409, "older"), LinkError::Conflict("older".into()));
        assert_eq!(refusal(404, ""), LinkError::NotFound(String::new()));
        assert!(matches!(refusal(500, "boom"), LinkError::Refused { status: 500, .. }));
    }

    /// The HTTP link against a stand-in town over loopback TCP: envelopes,
    /// status mapping, raw snapshot bytes and the version header.
    #[tokio::test]
    async fn http_link_speaks_the_town_routes_over_loopback() {
        use crate::net::TokioConnector;
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};
        use std::sync::{Arc, Mutex};

        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&seen);
        let router = axum::Router::new()
            .route(
                "/api/towns/t1/rigs/r1/agents/a1/heartbeat",
                post(|headers: HeaderMap| async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer old") {
                        return (StatusCode::UNAUTHORIZED, r#"{"success":false,"error":"token expired"}"#);
                    }
                    (StatusCode::OK, r#"{"success":true,"data":{"drain_nonce":"n-1"}}"#)
                }),
            )
            .route(
                "/api/towns/t1/rigs/r1/agents/a1/db-snapshot",
                get(|| async { (StatusCode::OK, vec![1u8, 2, 3]) }).post(
                    move |headers: HeaderMap, body: axum::body::Bytes| {
                        let log = Arc::clone(&log);
                        async move {
                            let v = headers
                                .get(SNAPSHOT_VERSION_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            let agent =
                                headers.get(AGENT_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                            log.lock().unwrap().push(format!("{v}:{agent}:{}", body.len()));
                            if v == "1" {
                                (StatusCode::CONFLICT, r#"{"success":false,"error":"older"}"#)
                            } else {
                                (StatusCode::OK, r#"{"success":true,"data":{}}"#)
                            }
                        }
                    },
                ),
            )
            .route("/api/towns/t1/rigs/_/agents/m1/db-snapshot", get(|| async { StatusCode::NOT_FOUND }))
            .route("/api/towns/t1/container-registry", get(|| async { r#"{"success":true,"data":[]}"# }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(crate::net::serve(listener, router));
        let link = HttpTownLink::new(HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(5)));
        let town = TownAddr { api_url, town_id: "t1".into() };
        let a1 = AgentAddr { town: town.clone(), rig: "r1".into(), agent_id: "a1".into() };
        let m1 = AgentAddr { town: town.clone(), rig: "_".into(), agent_id: "m1".into() };

        let hb = TownCall::Heartbeat(a1.clone(), HeartbeatBody::default());
        assert_eq!(
            link.call("new", &hb).await,
            Ok(TownReply::Heartbeat(HeartbeatReply { drain_nonce: Some("n-1".into()) }))
        );
        assert_eq!(link.call("old", &hb).await, Err(LinkError::Unauthorized("token expired".into())));
        let got = link.call("t", &TownCall::GetSnapshot(a1.clone())).await.unwrap();
        assert_eq!(got, TownReply::Snapshot(Some(StoredSnapshot { version: None, bytes: vec![1, 2, 3] })));
        assert_eq!(link.call("t", &TownCall::GetSnapshot(m1)).await, Ok(TownReply::Snapshot(None)));
        let put = |version| TownCall::PutSnapshot { agent: a1.clone(), version, bytes: vec![9; 10] };
        assert_eq!(link.call("t", &put(7)).await, Ok(TownReply::Ack));
        assert_eq!(link.call("t", &put(1)).await, Err(LinkError::Conflict("older".into())));
        assert_eq!(*seen.lock().unwrap(), ["7:a1:10", "1:a1:10"]);
        assert_eq!(link.call("t", &TownCall::GetRegistry(town.clone())).await, Ok(TownReply::Registry(vec![])));
        let missing = link.call("t", &TownCall::DrainStatus(town)).await;
        assert!(matches!(missing, Err(LinkError::NotFound(_))), "{missing:?}");
        server.abort();
    }
}
