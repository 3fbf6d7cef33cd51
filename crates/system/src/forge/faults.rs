//! Fault injection for the forge's API (never its control API): status
//! bursts, invalid JSON, schema mismatches and delays, matched by method and
//! path, for a number of requests and/or with a seeded probability.

use super::{lock, Forge};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer with this status (and a GitHub-style message).
    Status { status: u16 },
    /// 200 with a body that is not JSON.
    InvalidJson,
    /// 200 with JSON of the wrong shape.
    SchemaMismatch,
    /// Hold the request this long, then serve it.
    Delay { ms: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    /// `GET`, `PUT`, …; any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Substring of the path; any when absent.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// How many requests it hits; unlimited when absent.
    #[serde(default)]
    pub count: Option<u32>,
    /// Chance per matching request (seeded); always when absent.
    #[serde(default)]
    pub probability: Option<f64>,
}

impl Fault {
    pub fn new(kind: FaultKind) -> Self {
        Fault { kind, method: None, path_contains: None, count: None, probability: None }
    }
    pub fn times(mut self, n: u32) -> Self {
        self.count = Some(n);
        self
    }
    pub fn on(mut self, method: &str, path_contains: &str) -> Self {
        self.method = Some(method.to_owned());
        self.path_contains = Some(path_contains.to_owned());
        self
    }
    pub fn path(mut self, path_contains: &str) -> Self {
        self.path_contains = Some(path_contains.to_owned());
        self
    }
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }
}

pub(super) struct Faults {
    list: Mutex<Vec<Fault>>,
    rng: Mutex<SmallRng>,
    log: Mutex<Vec<String>>,
}

impl Faults {
    pub(super) fn new(seed: u64) -> Self {
        Faults {
            list: Mutex::new(Vec::new()),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            log: Mutex::new(Vec::new()),
        }
    }
    pub(super) fn add(&self, f: Fault) {
        lock(&self.list).push(f);
    }
    pub(super) fn clear(&self) {
        lock(&self.list).clear();
    }
    pub(super) fn requests(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
    pub(super) fn clear_requests(&self) {
        lock(&self.log).clear();
    }

    /// The first matching fault that fires for this request (consuming one use).
    fn pick(&self, method: &str, path: &str) -> Option<FaultKind> {
        let mut list = lock(&self.list);
        let idx = list.iter().position(|f| {
            f.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && f.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        if let Some(p) = list[idx].probability {
            if !lock(&self.rng).random_bool(p.clamp(0.0, 1.0)) {
                return None;
            }
        }
        let kind = list[idx].kind.clone();
        if let Some(n) = &mut list[idx].count {
            *n = n.saturating_sub(1);
            if *n == 0 {
                list.remove(idx);
            }
        }
        Some(kind)
    }
}

/// The middleware: log API requests, apply a fault if one fires.
pub(super) async fn layer(State(forge): State<Arc<Forge>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_control") {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_owned();
    lock(&forge.faults.log).push(format!("{method} {}", req.uri()));
    match forge.faults.pick(&method, &path) {
        None => next.run(req).await,
        Some(FaultKind::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            next.run(req).await
        }
        Some(FaultKind::Status { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, axum::Json(json!({"message": format!("injected fault: HTTP {status}")}))).into_response()
        }
        Some(FaultKind::InvalidJson) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(Body::from("<html><body>502 Bad Gateway</body></html>"))
            .unwrap_or_default(),
        Some(FaultKind::SchemaMismatch) => {
            (StatusCode::OK, axum::Json(json!({"api_version": "v99", "items": [], "note": "schema drift"})))
                .into_response()
        }
    }
}
