//! User routes: what `gastown` commands and dashboards call. User token
//! required (sling also takes a container token: the mayor slings).

use super::{authorize_container, authorize_user, ok, parse, ApiError, ApiResult, AppState};
use crate::auth::Scope;
use crate::model::{BeadStatus, BeadType};
use crate::town::babysit::{AdoptPr, Adopted};
use crate::town::triage;
use crate::town::{AddRig, Agent, Bead, ConvoyCreated, DeletedBead, Rig, SlingBead, SlingConvoy, Slung, StatusCounts};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{Map, Value};

pub fn routes() -> Router<AppState> {
    const T: &str = "/api/towns/{town}";
    Router::new()
        .route(&format!("{T}/status"), get(status))
        .route(&format!("{T}/rigs"), get(rigs).post(add_rig))
        .route(&format!("{T}/rigs/{{rig}}/sling"), post(sling))
        .route(&format!("{T}/rigs/{{rig}}/external-prs"), post(adopt_external_pr))
        .route(&format!("{T}/convoys"), post(sling_convoy))
        .route(&format!("{T}/convoys/{{convoy}}/start"), post(start_convoy))
        .route(&format!("{T}/convoys/{{convoy}}/close"), post(close_convoy))
        .route(&format!("{T}/beads"), get(beads))
        .route(&format!("{T}/beads/{{bead}}"), get(bead).delete(delete_bead))
        .route(&format!("{T}/beads/{{bead}}/close"), post(close_bead))
        .route(&format!("{T}/agents"), get(agents))
        .route(&format!("{T}/agents/{{agent}}/reset"), post(reset_agent))
        .route(&format!("{T}/agents/{{agent}}/hook"), post(hook_agent))
        .route(&format!("{T}/agents/{{agent}}/unhook"), post(unhook_agent))
        .route(&format!("{T}/mayor/message"), post(mayor_message))
        .route(&format!("{T}/escalations/{{id}}/acknowledge"), post(acknowledge_escalation))
        .route(&format!("{T}/triage/resolve"), post(resolve_triage))
}

async fn status(State(h): State<AppState>, Path(town): Path<String>, headers: HeaderMap) -> ApiResult<StatusCounts> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.status_counts())?)
}

async fn rigs(State(h): State<AppState>, Path(town): Path<String>, headers: HeaderMap) -> ApiResult<Vec<Rig>> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.rigs())?)
}

async fn add_rig(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<Rig>>), ApiError> {
    authorize_user(&h, &headers, &town)?;
    let input: AddRig = parse(&body)?;
    let rig = h.with_town(|t| t.add_rig(input))?;
    Ok((StatusCode::CREATED, ok(rig)?))
}

/// The sling body: the rig comes from the path.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlingBody {
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

async fn sling(
    State(h): State<AppState>,
    Path((town, rig)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<Slung>>), ApiError> {
    let claims = authorize_container(&h, &headers, &town).or_else(|_| authorize_user(&h, &headers, &town))?;
    debug_assert!(matches!(claims.scope, Scope::User | Scope::Container | Scope::Agent));
    let b: SlingBody = parse(&body)?;
    let input = SlingBead {
        rig_id: rig,
        title: b.title,
        body: b.body,
        priority: b.priority,
        labels: b.labels,
        metadata: b.metadata,
    };
    let (slung, effects) = h.with_town(|t| t.sling_bead(input))?;
    h.spawn_effects(effects);
    Ok((StatusCode::CREATED, ok(slung)?))
}

/// Babysit an outside PR (201 when this call adopted it, 200 when a live
/// adoption of the same PR already existed).
async fn adopt_external_pr(
    State(h): State<AppState>,
    Path((town, rig)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<Adopted>>), ApiError> {
    authorize_container(&h, &headers, &town).or_else(|_| authorize_user(&h, &headers, &town))?;
    let pr: AdoptPr = parse(&body)?;
    let adopted = h.with_town(|t| t.adopt_external_pr(&rig, &pr, "user"))?;
    let status = if adopted.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, ok(adopted)?))
}

async fn sling_convoy(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<crate::wire::Envelope<ConvoyCreated>>), ApiError> {
    authorize_user(&h, &headers, &town)?;
    let input: SlingConvoy = parse(&body)?;
    let created = h.with_town(|t| t.sling_convoy(input))?;
    Ok((StatusCode::CREATED, ok(created)?))
}

async fn start_convoy(
    State(h): State<AppState>,
    Path((town, convoy)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    h.with_town(|t| t.start_convoy(&convoy))?;
    ok(true)
}

async fn close_convoy(
    State(h): State<AppState>,
    Path((town, convoy)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    h.with_town(|t| t.close_convoy(&convoy))?;
    ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BeadFilter {
    #[serde(rename = "type")]
    ty: Option<String>,
    status: Option<String>,
}

async fn beads(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    filter: Result<Query<BeadFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Vec<Bead>> {
    authorize_user(&h, &headers, &town)?;
    let Query(f) = filter.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let ty = match f.ty.as_deref() {
        None => BeadType::Issue,
        Some(t) => BeadType::parse(t)
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("unknown bead type {t:?}")))?,
    };
    let status = match f.status.as_deref() {
        None => None,
        Some(s) => Some(
            BeadStatus::parse(s)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("unknown bead status {s:?}")))?,
        ),
    };
    ok(h.with_town(|t| t.beads_of(ty, status))?)
}

async fn bead(
    State(h): State<AppState>,
    Path((town, bead)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Bead> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.bead(&bead))?)
}

/// Delete a bead (404 when there is none; 400 for agents and convoys). The
/// answer says what the deletion settled around it.
async fn delete_bead(
    State(h): State<AppState>,
    Path((town, bead)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<DeletedBead> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.delete_bead(&bead))?)
}

async fn close_bead(
    State(h): State<AppState>,
    Path((town, bead)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Bead> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.close_bead(&bead, "user"))?)
}

async fn agents(State(h): State<AppState>, Path(town): Path<String>, headers: HeaderMap) -> ApiResult<Vec<Agent>> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| t.agents())?)
}

async fn reset_agent(
    State(h): State<AppState>,
    Path((town, agent)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    h.with_town(|t| t.reset_agent(&agent))?;
    ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookBody {
    bead_id: String,
}

/// Hand a bead to an agent (upstream `hookBead`): any other agent hooked to
/// it lets go (bug l). The agent is left idle; the reconciler dispatches it.
async fn hook_agent(
    State(h): State<AppState>,
    Path((town, agent)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Agent> {
    authorize_user(&h, &headers, &town)?;
    let b: HookBody = parse(&body)?;
    ok(h.with_town(|t| {
        t.hook_bead(&agent, &b.bead_id)?;
        t.agent(&agent)
    })?)
}

async fn unhook_agent(
    State(h): State<AppState>,
    Path((town, agent)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Agent> {
    authorize_user(&h, &headers, &town)?;
    ok(h.with_town(|t| {
        t.unhook_bead(&agent)?;
        t.agent(&agent)
    })?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MayorMessage {
    message: String,
}

async fn mayor_message(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    let b: MayorMessage = parse(&body)?;
    let effects = h.with_town(|t| t.send_mayor_message(&b.message))?;
    h.spawn_effects(effects);
    ok(true)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveTriage {
    triage_request_bead_id: String,
    action: String,
    #[serde(default)]
    resolution_notes: String,
    /// The triage agent that decided, when it was not a human.
    #[serde(default)]
    agent_id: Option<String>,
}

/// A triage agent's or a human's decision on a triage request (upstream
/// `resolveTriage`): act on the agent and bead it names, then close it.
async fn resolve_triage(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    let b: ResolveTriage = parse(&body)?;
    let resolution = triage::Resolution {
        request_id: &b.triage_request_bead_id,
        action: &b.action,
        notes: &b.resolution_notes,
        resolved_by: b.agent_id.as_deref().unwrap_or("user"),
    };
    let effects = h.with_town(|t| t.resolve_triage(&resolution))?;
    h.spawn_effects(effects);
    ok(true)
}

async fn acknowledge_escalation(
    State(h): State<AppState>,
    Path((town, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<bool> {
    authorize_user(&h, &headers, &town)?;
    h.with_town(|t| t.acknowledge_escalation(&id))?;
    ok(true)
}
