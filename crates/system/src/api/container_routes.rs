//! Container-level routes: eviction and drain hand-off, the registry, token
//! refresh. A container token (or an agent token of the town) is required.

use super::{authorize_container, ok, parse, ApiError, ApiResult, AppState};
use crate::auth::{AuthError, Scope};
use crate::wire::{
    ContainerReadyBody, ContainerReadyReply, DrainStatusReply, EvictionReply, RegistryEntry, TokenReply,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;

pub fn routes() -> Router<AppState> {
    const T: &str = "/api/towns/{town}";
    Router::new()
        .route(&format!("{T}/container-eviction"), post(eviction))
        .route(&format!("{T}/container-ready"), post(ready))
        .route(&format!("{T}/drain-status"), get(drain_status))
        .route(&format!("{T}/container-registry"), get(get_registry).post(put_registry))
        .route(&format!("{T}/refresh-container-token"), post(refresh_token))
}

async fn eviction(State(h): State<AppState>, Path(town): Path<String>, headers: HeaderMap) -> ApiResult<EvictionReply> {
    authorize_container(&h, &headers, &town)?;
    let nonce = h.with_town(|t| t.record_container_eviction())?;
    ok(EvictionReply { nonce })
}

async fn ready(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<ContainerReadyReply> {
    authorize_container(&h, &headers, &town)?;
    let b: ContainerReadyBody = parse(&body)?;
    if b.nonce.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "nonce is empty"));
    }
    let cleared = h.with_town(|t| t.acknowledge_container_ready(&b.nonce))?;
    ok(ContainerReadyReply { cleared })
}

async fn drain_status(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
) -> ApiResult<DrainStatusReply> {
    authorize_container(&h, &headers, &town)?;
    let d = h.with_town(|t| t.drain_state())?;
    ok(DrainStatusReply { draining: d.draining, drain_nonce: d.nonce })
}

async fn get_registry(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Vec<RegistryEntry>> {
    authorize_container(&h, &headers, &town)?;
    ok(h.with_town(|t| t.container_registry())?)
}

async fn put_registry(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<usize> {
    authorize_container(&h, &headers, &town)?;
    let entries: Vec<RegistryEntry> = parse(&body)?;
    h.with_town(|t| t.set_container_registry(&entries))?;
    ok(entries.len())
}

/// A container whose token expired may trade it for a fresh one, provided
/// the signature is ours and the token is a container token of this town.
async fn refresh_token(
    State(h): State<AppState>,
    Path(town): Path<String>,
    headers: HeaderMap,
) -> ApiResult<TokenReply> {
    let token = super::bearer(&headers)?;
    let claims = h.signer.decode(token)?;
    if claims.scope != Scope::Container {
        return Err(AuthError::Forbidden("container token required".into()).into());
    }
    claims.allow_container(&town)?;
    super::this_town(&h, &town)?;
    ok(TokenReply { token: h.signer.container_token(&town, h.now()) })
}
