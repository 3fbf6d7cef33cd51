//! `/_control/…`: what tests and the simulator do to the forge from outside
//! (the humans, CI and other pushes around a PR). Never faulted, never logged.

use super::{CheckRun, CommitStatus, Fault, Forge, ForgeError, RepoSettings, ThreadKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

type St = State<Arc<Forge>>;
type PrPath = Path<(String, String, u64)>;

pub(super) fn routes() -> Router<Arc<Forge>> {
    Router::new()
        .route("/_control/repos", post(create_repo))
        .route("/_control/repos/{owner}/{repo}/settings", post(repo_settings))
        .route("/_control/repos/{owner}/{repo}/push", post(push))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}", get(pull_state))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/checks", post(set_checks))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/threads", post(add_thread))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/threads/resolve", post(resolve_threads))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/review", post(review))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/mergeable", post(mergeable))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/merge", post(merge))
        .route("/_control/repos/{owner}/{repo}/pulls/{number}/close", post(close))
        .route("/_control/faults", post(add_fault).delete(clear_faults))
        .route("/_control/requests", get(requests).delete(clear_requests))
}

fn reply(r: Result<Value, ForgeError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn body<T>(b: Option<Json<T>>) -> Result<T, ForgeError> {
    b.map(|Json(t)| t).ok_or_else(|| ForgeError::new(400, "expected a JSON body"))
}

#[derive(Deserialize)]
struct NewRepo {
    owner: String,
    name: String,
    #[serde(flatten)]
    settings: RepoSettings,
}

async fn create_repo(State(f): St, b: Option<Json<NewRepo>>) -> Response {
    let r = body(b).and_then(|b| f.create_repo(&b.owner, &b.name, &b.settings));
    match r {
        Ok(()) => (StatusCode::CREATED, Json(json!({"ok": true}))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn repo_settings(State(f): St, Path((o, r)): Path<(String, String)>, b: Option<Json<RepoSettings>>) -> Response {
    reply(body(b).and_then(|s| f.set_repo_settings(&o, &r, &s)).map(|_| json!({"ok": true})))
}

#[derive(Deserialize)]
struct Push {
    branch: String,
    /// Open PRs based on this branch now conflict with it.
    #[serde(default)]
    conflict: bool,
}

async fn push(State(f): St, Path((o, r)): Path<(String, String)>, b: Option<Json<Push>>) -> Response {
    reply(body(b).and_then(|p| f.push(&o, &r, &p.branch, p.conflict)).map(|sha| json!({"sha": sha})))
}

async fn pull_state(State(f): St, Path((o, r, n)): PrPath) -> Response {
    reply(f.pull(&o, &r, n).and_then(|p| {
        let ms = f.mergeable_state(&p)?;
        Ok(json!({"pull": p, "mergeable_state": ms}))
    }))
}

#[derive(Deserialize)]
struct Checks {
    #[serde(default)]
    runs: Vec<CheckRun>,
    #[serde(default)]
    statuses: Vec<CommitStatus>,
}

async fn set_checks(State(f): St, Path((o, r, n)): PrPath, b: Option<Json<Checks>>) -> Response {
    reply(body(b).and_then(|c| f.set_checks(&o, &r, n, &c.runs, &c.statuses)).map(|_| json!({"ok": true})))
}

#[derive(Deserialize)]
struct NewThread {
    kind: ThreadKind,
    #[serde(default)]
    body: Option<String>,
}

async fn add_thread(State(f): St, Path((o, r, n)): PrPath, b: Option<Json<NewThread>>) -> Response {
    reply(body(b).and_then(|t| f.add_thread(&o, &r, n, t.kind, t.body.as_deref())).map(|id| json!({"id": id})))
}

async fn resolve_threads(State(f): St, Path((o, r, n)): PrPath) -> Response {
    reply(f.resolve_threads(&o, &r, n).map(|_| json!({"ok": true})))
}

#[derive(Deserialize)]
struct Decision {
    decision: Option<String>,
}

async fn review(State(f): St, Path((o, r, n)): PrPath, b: Option<Json<Decision>>) -> Response {
    reply(body(b).and_then(|d| f.set_review_decision(&o, &r, n, d.decision.as_deref())).map(|_| json!({"ok": true})))
}

#[derive(Deserialize)]
struct Mergeable {
    state: Option<String>,
}

async fn mergeable(State(f): St, Path((o, r, n)): PrPath, b: Option<Json<Mergeable>>) -> Response {
    reply(body(b).and_then(|m| f.set_mergeable_override(&o, &r, n, m.state.as_deref())).map(|_| json!({"ok": true})))
}

async fn merge(State(f): St, Path((o, r, n)): PrPath) -> Response {
    reply(f.merge_from_outside(&o, &r, n).map(|sha| json!({"sha": sha})))
}

async fn close(State(f): St, Path((o, r, n)): PrPath) -> Response {
    reply(f.close_pull(&o, &r, n).map(|_| json!({"ok": true})))
}

async fn add_fault(State(f): St, b: Option<Json<Fault>>) -> Response {
    reply(body(b).map(|fault| {
        f.add_fault(fault);
        json!({"ok": true})
    }))
}

async fn clear_faults(State(f): St) -> Response {
    f.clear_faults();
    Json(json!({"ok": true})).into_response()
}

async fn requests(State(f): St) -> Response {
    Json(json!({"requests": f.requests()})).into_response()
}

async fn clear_requests(State(f): St) -> Response {
    f.clear_requests();
    Json(json!({"ok": true})).into_response()
}
