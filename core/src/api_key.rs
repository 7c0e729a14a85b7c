//! API keys: named credentials with a scope, created and revoked over the HTTP API.
//!
//! The stream holds the key's name, scope and the hash of its secret; the secret itself is
//! shown once, to whoever created the key, and never stored. Revoking is final: a revoked id is
//! never reused, so a log line naming a key id always means one credential.

use crate::access::{Scope, SecretHash};
use crate::aggregate::{foreign, not_found, Aggregate};
use crate::event::{Event, EvolveError};
use crate::ids::ApiKeyId;
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// The longest key name, in characters.
pub const MAX_KEY_NAME_LEN: usize = 128;

/// The state of an API key; serializable for projection snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiKey {
    /// Its id, the first part of the presented key.
    pub key_id: ApiKeyId,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The digest of its secret.
    pub secret_hash: SecretHash,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<Timestamp>,
    /// Number of events applied.
    pub version: u64,
}

impl ApiKey {
    /// Whether the key still authenticates requests.
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none()
    }
}

/// What can be asked of an API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyIntent {
    /// Create a key.
    Create {
        /// Its id (drawn by the caller, like every id).
        key_id: ApiKeyId,
        /// 1 to [`MAX_KEY_NAME_LEN`] characters, no control characters.
        name: String,
        /// What it may do.
        scope: Scope,
        /// The digest of the secret the caller drew and will hand out once.
        secret_hash: SecretHash,
    },
    /// Revoke the key; it stops authenticating at once.
    Revoke,
}

impl Aggregate for ApiKey {
    type Intent = ApiKeyIntent;
    const NAME: &'static str = "API key";

    fn decide(
        state: Option<&Self>,
        intent: ApiKeyIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        match intent {
            ApiKeyIntent::Create {
                key_id,
                name,
                scope,
                secret_hash,
            } => {
                if state.is_some() {
                    return Err(Rejection::invalid(
                        "keyId",
                        format!("API key {key_id} already exists"),
                    ));
                }
                let len = name.chars().count();
                if len == 0 || len > MAX_KEY_NAME_LEN {
                    return Err(Rejection::invalid(
                        "name",
                        format!("must be 1 to {MAX_KEY_NAME_LEN} characters"),
                    ));
                }
                if name.chars().any(char::is_control) {
                    return Err(Rejection::invalid(
                        "name",
                        "must not contain control characters",
                    ));
                }
                Ok(vec![Event::ApiKeyCreated {
                    key_id,
                    name,
                    scope,
                    secret_hash,
                    created_at: now,
                }])
            }
            ApiKeyIntent::Revoke => match state {
                None => Err(not_found("API key", "unknown")),
                // Revoking twice changes nothing: a retried DELETE succeeds.
                Some(k) if !k.is_active() => Ok(vec![]),
                Some(_) => Ok(vec![Event::ApiKeyRevoked { at: now }]),
            },
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        let out_of_order = |state: &'static str| EvolveError::OutOfOrder {
            event: event.type_name(),
            state,
        };
        match (state, event) {
            (
                None,
                Event::ApiKeyCreated {
                    key_id,
                    name,
                    scope,
                    secret_hash,
                    created_at,
                },
            ) => Ok(Self {
                key_id: key_id.clone(),
                name: name.clone(),
                scope: *scope,
                secret_hash: *secret_hash,
                created_at: *created_at,
                revoked_at: None,
                version: 1,
            }),
            (Some(_), Event::ApiKeyCreated { .. }) => Err(out_of_order("created")),
            (Some(mut k), Event::ApiKeyRevoked { at }) if k.is_active() => {
                k.revoked_at = Some(*at);
                k.version += 1;
                Ok(k)
            }
            (Some(_), Event::ApiKeyRevoked { .. }) => Err(out_of_order("revoked")),
            (None, Event::ApiKeyRevoked { .. }) => Err(out_of_order("none")),
            (_, other) => Err(foreign(Self::NAME, other)),
        }
    }
}
