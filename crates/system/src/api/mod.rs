//! The town's HTTP API: agent-facing routes (what the container and its
//! agents call), container-level routes (registry, drain, snapshots), and
//! user routes (sling, convoys, beads, agents, rigs, status).
//!
//! Every answer is upstream's envelope, `{"success": true, "data": …}` or
//! `{"success": false, "error": "…"}`, except snapshot bytes. Auth is an
//! HMAC bearer token (`crate::auth`): 401 when missing, malformed, tampered
//! or expired; 403 when valid but for another town, agent or scope.

mod agent_routes;
mod container_routes;
mod user_routes;

use crate::auth::{AuthError, Claims};
use crate::error::TownError;
use crate::runtime::TownHost;
use crate::wire::Envelope;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

pub type AppState = Arc<TownHost>;

/// The whole town API.
pub fn router(host: Arc<TownHost>) -> Router {
    Router::new()
        .merge(agent_routes::routes())
        .merge(container_routes::routes())
        .merge(user_routes::routes())
        .route("/health", axum::routing::get(|| async { Json(Envelope::ok("ok")) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .with_state(host)
}

/// An error answer: a status and a message, as the envelope.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(Envelope::<()>::err(self.message))).into_response()
    }
}

impl From<TownError> for ApiError {
    fn from(e: TownError) -> Self {
        let status = match &e {
            TownError::NotFound { .. } => StatusCode::NOT_FOUND,
            TownError::Invalid { .. } => StatusCode::BAD_REQUEST,
            TownError::Storage(_) | TownError::Corrupt { .. } => {
                tracing::error!(error = %e, "town storage error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = if e.status() == 403 { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<Json<Envelope<T>>, ApiError>;

pub fn ok<T: Serialize>(data: T) -> ApiResult<T> {
    Ok(Json(Envelope::ok(data)))
}

/// Decode a JSON body with an error that says what is wrong and where.
/// An empty body decodes as `null` (so all-optional bodies may be omitted).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"null" } else { body };
    serde_json::from_slice(body)
        .or_else(|e| {
            // `null` stands for "no body": retry as an empty object so structs with defaults accept it.
            if body == b"null" {
                serde_json::from_slice(b"{}").map_err(|_| e)
            } else {
                Err(e)
            }
        })
        .map_err(|e| ApiError::bad_request(format!("malformed body: {e}")))
}

/// The bearer token's verified claims.
pub fn claims(host: &TownHost, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let token = bearer(headers)?;
    Ok(host.signer.verify(token, host.now())?)
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(axum::http::header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or(AuthError::Missing)
}

/// A path naming another town is "not here" (the token check comes after).
fn this_town(host: &TownHost, town: &str) -> Result<(), ApiError> {
    if town == host.town_id() {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("town {town} not found")))
    }
}

/// Verify the caller may act for `agent` in `town`.
pub fn authorize_agent(host: &TownHost, headers: &HeaderMap, town: &str, agent: &str) -> Result<Claims, ApiError> {
    let c = claims(host, headers)?;
    c.allow_agent(town, agent)?;
    this_town(host, town)?;
    Ok(c)
}

pub fn authorize_container(host: &TownHost, headers: &HeaderMap, town: &str) -> Result<Claims, ApiError> {
    let c = claims(host, headers)?;
    c.allow_container(town)?;
    this_town(host, town)?;
    Ok(c)
}

pub fn authorize_user(host: &TownHost, headers: &HeaderMap, town: &str) -> Result<Claims, ApiError> {
    let c = claims(host, headers)?;
    c.allow_user(town)?;
    this_town(host, town)?;
    Ok(c)
}

#[cfg(test)]
mod tests;
