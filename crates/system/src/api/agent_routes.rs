//! Routes agents and their container call, under
//! `/api/towns/{town}/rigs/{rig}/agents/{agent}/…` (the rig segment is
//! informational: the agent id decides; the mayor uses `_`).

use super::{authorize_agent, authorize_container, ok, parse, ApiError, ApiResult, AppState};
use crate::model::Severity;
use crate::time::Timestamp;
use crate::town::{DoneReport, RouteEscalation, Watermark};
use crate::wire::{
    CheckpointBody, CompletedBody, DoneBody, EscalationBody, EvictionContextBody, HeartbeatBody, HeartbeatReply,
    IdReply, NudgeDeliveredBody, PendingNudge, RequestChangesBody, RequestChangesReply, WaitingBody, AGENT_ID_HEADER,
    SNAPSHOT_VERSION_HEADER,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

type AgentPath = Path<(String, String, String)>;

pub fn routes() -> Router<AppState> {
    const A: &str = "/api/towns/{town}/rigs/{rig}/agents/{agent}";
    Router::new()
        .route(&format!("{A}/heartbeat"), post(heartbeat))
        .route(&format!("{A}/done"), post(done))
        .route(&format!("{A}/completed"), post(completed))
        .route(&format!("{A}/waiting"), post(waiting))
        .route(&format!("{A}/request-changes"), post(request_changes))
        .route(&format!("{A}/checkpoint"), post(checkpoint))
        .route(&format!("{A}/pending-nudges"), get(pending_nudges))
        .route(&format!("{A}/nudge-delivered"), post(nudge_delivered))
        .route(&format!("{A}/eviction-context"), post(eviction_context))
        .route(&format!("{A}/db-snapshot"), get(get_snapshot).post(put_snapshot).delete(delete_snapshot))
        .route("/api/towns/{town}/rigs/{rig}/escalations", post(escalation))
}

async fn heartbeat(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<HeartbeatReply> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: HeartbeatBody = parse(&body)?;
    let wm = Watermark {
        last_event_type: b.last_event_type,
        last_event_at: b.last_event_at.map(Timestamp),
        active_tools: b.active_tools,
    };
    let nonce = h.with_town(|t| t.heartbeat(&agent, &wm, b.container_instance_id.as_deref()))?;
    ok(HeartbeatReply { drain_nonce: nonce })
}

async fn done(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<IdReply> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: DoneBody = parse(&body)?;
    let report = DoneReport { branch: b.branch, pr_url: b.pr_url, summary: b.summary, bead_id: b.bead_id };
    let id = h.with_town(|t| t.agent_done(&agent, report))?;
    ok(IdReply { id })
}

async fn completed(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<IdReply> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: CompletedBody = parse(&body)?;
    let id = h.with_town(|t| t.agent_completed(&agent, b.status, b.reason.as_deref()))?;
    ok(IdReply { id })
}

async fn waiting(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: WaitingBody = parse(&body)?;
    ok(h.with_town(|t| t.mayor_waiting(b.fired_at.map(Timestamp)))?)
}

async fn request_changes(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<RequestChangesReply>>), ApiError> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: RequestChangesBody = parse(&body)?;
    let id = h.with_town(|t| t.request_changes(&agent, &b.feedback, &b.files))?;
    Ok((StatusCode::CREATED, ok(RequestChangesReply { rework_bead_id: id })?))
}

async fn checkpoint(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: CheckpointBody = parse(&body)?;
    h.with_town(|t| t.set_agent_checkpoint(&agent, &b.data))?;
    ok(true)
}

async fn pending_nudges(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
) -> ApiResult<Vec<PendingNudge>> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let nudges = h.with_town(|t| t.pending_nudges(&agent))?;
    ok(nudges.into_iter().map(|n| PendingNudge { nudge_id: n.nudge_id, message: n.message }).collect())
}

async fn nudge_delivered(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: NudgeDeliveredBody = parse(&body)?;
    ok(h.with_town(|t| t.nudge_delivered(&b.nudge_id))?)
}

async fn eviction_context(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Option<String>> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let b: EvictionContextBody = parse(&body)?;
    ok(h.with_town(|t| t.write_eviction_context(&agent, &b))?)
}

async fn get_snapshot(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize_agent(&h, &headers, &town, &agent)?;
    match h.with_town(|t| t.session_snapshot(&agent))? {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "snapshot not found")),
        Some((meta, bytes)) => Ok((
            [
                (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (axum::http::HeaderName::from_static(SNAPSHOT_VERSION_HEADER), meta.version.to_string()),
            ],
            bytes,
        )
            .into_response()),
    }
}

async fn put_snapshot(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_agent(&h, &headers, &town, &agent)?;
    let version = headers
        .get(SNAPSHOT_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("missing or non-numeric {SNAPSHOT_VERSION_HEADER} header"))
        })?;
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty snapshot"));
    }
    match h.with_town(|t| t.put_session_snapshot(&agent, version, &body))? {
        Ok(()) => ok(true),
        Err(crate::town::container_state::SnapshotRefused::NotNewer { stored }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("snapshot version {version} is not newer than the stored version {stored}"),
        )),
    }
}

async fn delete_snapshot(
    State(h): State<AppState>,
    Path((town, _rig, agent)): AgentPath,
    headers: HeaderMap,
) -> ApiResult<bool> {
    authorize_agent(&h, &headers, &town, &agent)?;
    ok(h.with_town(|t| t.delete_session_snapshot(&agent))?)
}

/// `gt_escalate`: any agent of the town (container token + agent header, or
/// an agent token) may raise one.
async fn escalation(
    State(h): State<AppState>,
    Path((town, rig)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<IdReply>>), ApiError> {
    let claims = authorize_container(&h, &headers, &town)?;
    let b: EscalationBody = parse(&body)?;
    let severity = match b.priority.as_deref() {
        None => Severity::Medium,
        Some(p) => Severity::parse(p).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("priority {p:?} is not one of low, medium, high, critical"))
        })?,
    };
    let agent = claims
        .agent_id
        .clone()
        .or_else(|| headers.get(AGENT_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned));
    let message = match b.body.filter(|s| !s.trim().is_empty()) {
        Some(body) => format!("{}\n\n{body}", b.title),
        None => b.title,
    };
    let input = RouteEscalation {
        source_rig_id: (rig != "_").then_some(rig),
        source_agent_id: agent,
        severity,
        category: b.metadata.as_ref().and_then(|m| m.get("category")).and_then(|c| c.as_str()).map(str::to_owned),
        message,
    };
    let (id, effects) = h.with_town(|t| t.route_escalation(&input))?;
    h.spawn_effects(effects);
    Ok((StatusCode::CREATED, ok(IdReply { id })?))
}
