//! HMAC-signed bearer tokens with an expiry.
//!
//! A token is `base64url(claims JSON) . base64url(HMAC-SHA256(secret, claims))`.
//! Three scopes: a container token (one town), an agent token (one agent of one
//! town) and a user token (the user routes of one town). Verification tells
//! apart a token that is not ours or was altered (401), one that expired (401)
//! and one used outside its scope (403), so callers can answer precisely.

use crate::time::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Container and agent tokens live 8 hours (upstream's JWT lifetime).
pub const TOKEN_TTL_MS: i64 = 8 * 60 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Container,
    Agent,
    User,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub scope: Scope,
    pub town_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Expiry, ms since the epoch.
    pub exp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is for {0}")]
    Forbidden(String),
}

impl AuthError {
    /// 401 for "who are you?", 403 for "not you".
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }
}

/// Mints and checks tokens with one secret.
#[derive(Clone)]
pub struct Signer {
    secret: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Signer { secret: secret.into() }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("hmac takes any key length");
        mac.update(payload);
        mac
    }

    pub fn mint(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let sig = self.mac(&payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(sig))
    }

    pub fn container_token(&self, town_id: &str, now: Timestamp) -> String {
        self.mint(&Claims {
            scope: Scope::Container,
            town_id: town_id.into(),
            agent_id: None,
            exp: now.0 + TOKEN_TTL_MS,
        })
    }
    pub fn agent_token(&self, town_id: &str, agent_id: &str, now: Timestamp) -> String {
        let claims = Claims {
            scope: Scope::Agent,
            town_id: town_id.into(),
            agent_id: Some(agent_id.into()),
            exp: now.0 + TOKEN_TTL_MS,
        };
        self.mint(&claims)
    }
    pub fn user_token(&self, town_id: &str, exp: Timestamp) -> String {
        self.mint(&Claims { scope: Scope::User, town_id: town_id.into(), agent_id: None, exp: exp.0 })
    }

    /// Signature and shape only; expiry is the caller's business (the
    /// container-token refresh route accepts expired tokens, as upstream's does).
    pub fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let (payload, sig) = token.split_once('.').ok_or(AuthError::Malformed)?;
        let payload = B64.decode(payload).map_err(|_| AuthError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| AuthError::Malformed)?;
        self.mac(&payload).verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;
        serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)
    }

    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, AuthError> {
        let claims = self.decode(token)?;
        if now.0 >= claims.exp {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

impl Claims {
    /// May this token act for `agent_id` of `town_id`? Container tokens may act
    /// for any agent of their town (the container hosts them all); agent
    /// tokens only for their own agent.
    pub fn allow_agent(&self, town_id: &str, agent_id: &str) -> Result<(), AuthError> {
        self.allow_town(town_id)?;
        match self.scope {
            Scope::Container => Ok(()),
            Scope::Agent if self.agent_id.as_deref() == Some(agent_id) => Ok(()),
            Scope::Agent => Err(AuthError::Forbidden(format!("agent {}", self.agent_id.as_deref().unwrap_or("?")))),
            Scope::User => Err(AuthError::Forbidden("user routes".into())),
        }
    }

    /// Container-level routes (registry, eviction, drain status).
    pub fn allow_container(&self, town_id: &str) -> Result<(), AuthError> {
        self.allow_town(town_id)?;
        match self.scope {
            Scope::Container | Scope::Agent => Ok(()),
            Scope::User => Err(AuthError::Forbidden("user routes".into())),
        }
    }

    pub fn allow_user(&self, town_id: &str) -> Result<(), AuthError> {
        self.allow_town(town_id)?;
        match self.scope {
            Scope::User => Ok(()),
            _ => Err(AuthError::Forbidden("container or agent routes".into())),
        }
    }

    fn allow_town(&self, town_id: &str) -> Result<(), AuthError> {
        if self.town_id == town_id {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!("town {}", self.town_id)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    #[test]
    fn auth_tokens_round_trip_and_scope() {
        let s = Signer::new("k");
        let t = s.agent_token("town", "a1", NOW);
        let c = s.verify(&t, NOW).unwrap();
        assert!(c.allow_agent("town", "a1").is_ok());
        assert_eq!(c.allow_agent("town", "a2").unwrap_err().status(), 403);
        assert_eq!(c.allow_agent("other", "a1").unwrap_err().status(), 403);
        assert_eq!(c.allow_user("town").unwrap_err().status(), 403);
        let c = s.verify(&s.container_token("town", NOW), NOW).unwrap();
        assert!(c.allow_agent("town", "anyone").is_ok());
        assert_eq!(c.allow_container("elsewhere").unwrap_err().status(), 403);
    }

    #[test]
    fn auth_refuses_tampered_foreign_and_expired_tokens() {
        let s = Signer::new("k");
        let t = s.container_token("town", NOW);
        assert_eq!(s.verify(&t, Timestamp(NOW.0 + TOKEN_TTL_MS)), Err(AuthError::Expired));
        assert!(s.decode(&t).is_ok(), "decode ignores expiry (token refresh)");
        assert_eq!(Signer::new("other").verify(&t, NOW), Err(AuthError::BadSignature));
        let (payload, sig) = t.split_once('.').unwrap();
        let forged = B64.encode(String::from_utf8(B64.decode(payload).unwrap()).unwrap().replace("town", "twn2"));
        assert_eq!(s.verify(&format!("{forged}.{sig}"), NOW), Err(AuthError::BadSignature));
        assert_eq!(s.verify("nodot", NOW), Err(AuthError::Malformed));
        assert_eq!(s.verify("a.b", NOW).unwrap_err().status(), 401);
    }
}
