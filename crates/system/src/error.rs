//! Errors returned by town operations.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TownError {
    /// A referenced entity does not exist. Events failing this way can never
    /// succeed, so the drain marks them processed instead of retrying forever.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The caller asked for something the town refuses (bad value, wrong state).
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("corrupt {what} in storage: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

impl TownError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        TownError::NotFound { kind, id: id.into() }
    }
    pub fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        TownError::Invalid { what, detail: detail.into() }
    }
    pub fn is_not_found(&self) -> bool {
        matches!(self, TownError::NotFound { .. })
    }
}

impl From<serde_json::Error> for TownError {
    fn from(e: serde_json::Error) -> Self {
        TownError::Corrupt { what: "json", detail: e.to_string() }
    }
}

pub type Result<T, E = TownError> = std::result::Result<T, E>;
