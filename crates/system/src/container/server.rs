//! The container's control server (spec §2.2): what the town calls.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | [`Health`]; with `x-drain-nonce` + `x-town-id` headers, answers `/container-ready` once |
//! | `POST /agents/start` | 201 [`AgentProcessStatus`]; 400 malformed; 503 draining; 500 start failed |
//! | `POST /agents/{id}/stop` | `{"stopped": bool}`; 404 unknown; 504 the session never answered the abort |
//! | `POST /agents/{id}/message` | `{"sent": true}`; 400 malformed; 404 unknown; 409 not running |
//! | `GET /agents/{id}/status` | [`AgentProcessStatus`]; 404 unknown |
//! | `POST /refresh-token` | `{"refreshed": true}`; 400 malformed or empty token |
//!
//! Errors are JSON `{"error": "…"}`. No authentication (as upstream: only the
//! town can reach the container).

use super::lifecycle::{MessageError, StartError, StopError};
use super::town_link::TownAddr;
use super::Container;
use crate::wire::{MessageBody, RefreshTokenBody, StartAgentRequest};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed body: {e}"))
}

impl Container {
    /// The control server's routes, bound to this container.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/agents/start", post(start))
            .route("/agents/{id}/stop", post(stop))
            .route("/agents/{id}/message", post(message))
            .route("/agents/{id}/status", get(status))
            .route("/refresh-token", post(refresh_token))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
            .with_state(self.clone())
    }

    /// Serve the control server on `listener` until the future is dropped.
    pub async fn serve<L>(&self, listener: L) -> std::io::Result<()>
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        crate::net::serve(listener, self.router()).await
    }
}

async fn health(State(c): State<Container>, headers: HeaderMap) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let (Some(nonce), Some(town_id)) = (header("x-drain-nonce"), header("x-town-id")) {
        let api_url = c.st().town.as_ref().map(|t| t.api_url.clone());
        if let Some(api_url) = api_url {
            let c2 = c.clone();
            c.spawn(async move { c2.acknowledge_ready(TownAddr { api_url, town_id }, nonce).await });
        }
    }
    Json(c.health()).into_response()
}

async fn start(State(c): State<Container>, body: Bytes) -> Response {
    if c.is_draining() {
        return error(StatusCode::SERVICE_UNAVAILABLE, StartError::Draining);
    }
    let req: StartAgentRequest = match parse(&body) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match c.start(req).await {
        Ok(s) => (StatusCode::CREATED, Json(s)).into_response(),
        Err(e @ StartError::Draining) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e @ StartError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn stop(State(c): State<Container>, Path(id): Path<String>) -> Response {
    match c.stop(&id) {
        Ok(stopped) => Json(json!({ "stopped": stopped })).into_response(),
        Err(e @ StopError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ StopError::AbortHung(_)) => error(StatusCode::GATEWAY_TIMEOUT, e),
    }
}

async fn message(State(c): State<Container>, Path(id): Path<String>, body: Bytes) -> Response {
    let msg: MessageBody = match parse(&body) {
        Ok(m) => m,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match c.send_message(&id, &msg.prompt) {
        Ok(()) => Json(json!({ "sent": true })).into_response(),
        Err(e @ MessageError::NotFound(_)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ MessageError::NotRunning(_)) => error(StatusCode::CONFLICT, e),
    }
}

async fn status(State(c): State<Container>, Path(id): Path<String>) -> Response {
    match c.status(&id) {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("agent {id} not found")),
    }
}

async fn refresh_token(State(c): State<Container>, body: Bytes) -> Response {
    let b: RefreshTokenBody = match parse(&body) {
        Ok(b) => b,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    if b.token.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "token is empty");
    }
    c.refresh_token(b.token, b.town_id).await;
    Json(json!({ "refreshed": true })).into_response()
}

#[cfg(test)]
mod tests {
    use super::super::fake_town::FakeTown;
    use super::super::tests::*;
    use super::super::{ContainerConfig, ScriptConfig, ScriptedRuntime};
    use super::*;
    use crate::model::AgentRole;
    use crate::net::{HttpClient, TokioConnector};
    use crate::time::{Timestamp, TokioClock};
    use crate::wire::{AgentProcessStatus, Health, ProcessStatus};
    use std::sync::Arc;
    use std::time::Duration;

    /// A container with `script`'s agents, its control server on loopback TCP.
    struct Served {
        c: Container,
        town: Arc<FakeTown>,
        base: String,
        http: HttpClient,
        server: tokio::task::JoinHandle<std::io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    async fn serve(script: ScriptConfig) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let town = FakeTown::new();
        let c = Container::new(
            ContainerConfig::new(dir.path(), "inst-http"),
            Arc::new(TokioClock::new(Timestamp(T0))),
            town.clone(),
            Arc::new(ScriptedRuntime::new(script)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn({
            let c = c.clone();
            async move { c.serve(listener).await }
        });
        let http = HttpClient::new(Arc::new(TokioConnector), Duration::from_secs(10));
        Served { c, town, base, http, server, _dir: dir }
    }

    /// The control server over real loopback TCP (normal runtime, real time).
    #[tokio::test]
    async fn server_answers_201_404_400_409_503_over_loopback_tcp() {
        let s = serve(ScriptConfig { work_ms: (3_600_000, 3_600_000), ..quick_script() }).await;
        let (c, town, base, http, server) = (&s.c, &s.town, &s.base, &s.http, &s.server);

        let h: Health = http.get(format!("{base}/health")).send_json().await.unwrap().unwrap();
        assert_eq!((h.agents, h.draining, h.instance_id.as_str()), (0, false, "inst-http"));

        let resp =
            http.post(format!("{base}/agents/start")).json(&request("p1", AgentRole::Polecat)).send().await.unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
        let s: AgentProcessStatus = resp.json().unwrap();
        assert_eq!(s.status, ProcessStatus::Running);

        let resp = http.get(format!("{base}/agents/p1/status")).send().await.unwrap();
        assert_eq!(resp.status, 200);
        let resp = http.get(format!("{base}/agents/nobody/status")).send().await.unwrap();
        assert_eq!(resp.status, 404);
        assert!(resp.text().contains("\"error\""));

        let resp = http.post(format!("{base}/agents/start")).bytes(b"{not json".to_vec()).send().await.unwrap();
        assert_eq!(resp.status, 400);
        assert!(resp.text().contains("malformed body"), "{}", resp.text());
        let resp = http.post(format!("{base}/agents/start")).json(&json!({"agent_id": 5})).send().await.unwrap();
        assert_eq!(resp.status, 400);

        let resp = http.post(format!("{base}/agents/p1/message")).json(&json!({"prompt": "hi"})).send().await.unwrap();
        assert_eq!(resp.status, 200);
        let resp = http.post(format!("{base}/agents/p1/message")).json(&json!({"text": "hi"})).send().await.unwrap();
        assert_eq!(resp.status, 400);
        let resp =
            http.post(format!("{base}/agents/ghost/message")).json(&json!({"prompt": "hi"})).send().await.unwrap();
        assert_eq!(resp.status, 404);

        let resp = http.post(format!("{base}/agents/p1/stop")).send().await.unwrap();
        assert_eq!((resp.status, resp.text().contains("true")), (200, true));
        let resp = http.post(format!("{base}/agents/p1/message")).json(&json!({"prompt": "hi"})).send().await.unwrap();
        assert_eq!(resp.status, 409, "not running");
        let resp = http.post(format!("{base}/agents/ghost/stop")).send().await.unwrap();
        assert_eq!(resp.status, 404);

        let resp = http.post(format!("{base}/refresh-token")).json(&json!({"token": ""})).send().await.unwrap();
        assert_eq!(resp.status, 400);
        let resp = http.post(format!("{base}/refresh-token")).json(&json!({"token": "tok-9"})).send().await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(c.container_token().as_deref(), Some("tok-9"));

        let resp = http.get(format!("{base}/nowhere")).send().await.unwrap();
        assert_eq!(resp.status, 404);

        // A drain nonce in /health headers is answered with /container-ready, once.
        for _ in 0..2 {
            let resp = http
                .get(format!("{base}/health"))
                .header("x-drain-nonce", "n-9")
                .header("x-town-id", "town1")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(town.count("container-ready"), 1);

        // Draining: new starts get 503.
        c.drain().await;
        let resp =
            http.post(format!("{base}/agents/start")).json(&request("p2", AgentRole::Polecat)).send().await.unwrap();
        assert_eq!(resp.status, 503);
        let h: Health = http.get(format!("{base}/health")).send_json().await.unwrap().unwrap();
        assert!(h.draining);
        server.abort();
    }

    /// A stop the wedged session never lets finish answers 504; the session
    /// stays `stopping`, and a second stop is a no-op.
    #[tokio::test]
    async fn server_answers_504_when_the_abort_never_answers() {
        let s = serve(ScriptConfig { p_hang: 1.0, p_stop_hangs: 1.0, ..quick_script() }).await;
        let (base, http) = (&s.base, &s.http);
        let resp =
            http.post(format!("{base}/agents/start")).json(&request("p1", AgentRole::Polecat)).send().await.unwrap();
        assert_eq!(resp.status, 201, "{}", resp.text());
        tokio::time::sleep(Duration::from_millis(50)).await; // the first turn hangs at once
        let resp = http.post(format!("{base}/agents/p1/stop")).send().await.unwrap();
        assert_eq!(resp.status, 504, "{}", resp.text());
        assert!(resp.text().contains("did not answer the abort"), "{}", resp.text());
        let st: AgentProcessStatus = http.get(format!("{base}/agents/p1/status")).send_json().await.unwrap().unwrap();
        assert_eq!(st.status, ProcessStatus::Stopping);
        let resp = http.post(format!("{base}/agents/p1/stop")).send().await.unwrap();
        assert_eq!((resp.status, resp.text().contains("false")), (200, true));
        s.server.abort();
    }
}
