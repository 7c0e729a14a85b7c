//! Who is calling, and whether they may: bearer credentials and their scopes.
//!
//! Two kinds of credential are accepted in `Authorization: Bearer …`:
//! - the server's own token (`--api-token`), which has the `admin` scope: it is how the first
//!   API keys get made, and the way in when every key is lost;
//! - an API key, `{keyId}.{secret}`, with the scope it was created with. Only the SHA-256
//!   digest of the secret is stored; a revoked key is refused.
//!
//! Each route needs a scope: reads need `read`, changes `operator`, and the key routes
//! `admin`. A missing or unknown credential is 401, a known one without the scope 403;
//! both are decided before the body is read, so a refused request never changes anything.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fleetops_core::access::{Scope, SecretHash};
use fleetops_core::ids::ApiKeyId;
use fleetops_core::link::DeviceLink;
use fleetops_core::EventStore;
use fleetops_service::Fleet;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::Auth;

/// The hexadecimal digits of a key's secret (256 random bits).
pub const SECRET_HEX_LEN: usize = 64;

/// The authentication layer's state: the configured mode, the fleet whose keys it checks,
/// and the scope each `(method, route)` needs.
pub struct Guard<S: EventStore, L: DeviceLink> {
    pub(super) auth: Auth,
    pub(super) fleet: Arc<Fleet<S, L>>,
    pub(super) needs: HashMap<(Method, &'static str), Scope>,
}

/// A freshly drawn key: what the caller is shown once, and the digest that is stored.
pub struct NewSecret {
    /// 64 lowercase hexadecimal digits.
    pub secret: String,
    /// Its SHA-256 digest.
    pub hash: SecretHash,
}

/// Draws a secret from the operating system's random source.
pub fn new_secret() -> Result<NewSecret, ApiError> {
    let mut bytes = [0u8; SECRET_HEX_LEN / 2];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::unavailable(format!("no random source to draw a key from: {e}")))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = digest(secret.as_bytes());
    Ok(NewSecret { secret, hash })
}

fn digest(secret: &[u8]) -> SecretHash {
    SecretHash::from_bytes(Sha256::digest(secret).into())
}

/// Compares in time independent of where the strings differ, so a secret cannot be guessed
/// byte by byte from response times.
pub(super) fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, b) in expected.iter().enumerate() {
        diff |= usize::from(b ^ given.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The token of an `Authorization: Bearer <token>` value. The scheme name is matched
/// case-insensitively and may be followed by several spaces, as HTTP's authentication
/// syntax allows; `None` for any other scheme or an empty token.
pub(super) fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

/// An API key as presented: `{keyId}.{secret}`, or `None` when the token has another shape
/// (then it can only be the server's own token).
fn split_key(token: &[u8]) -> Option<(ApiKeyId, &[u8])> {
    let text = std::str::from_utf8(token).ok()?;
    let (id, secret) = text.rsplit_once('.')?;
    if secret.len() != SECRET_HEX_LEN {
        return None;
    }
    Some((ApiKeyId::parse(id).ok()?, secret.as_bytes()))
}

impl<S: EventStore, L: DeviceLink> Guard<S, L> {
    /// The scope `token` carries, or why it carries none.
    async fn scope_of(&self, token: &[u8], root: &str) -> Result<Scope, ApiError> {
        if same_secret(token, root.as_bytes()) {
            return Ok(Scope::Admin);
        }
        let invalid = || ApiError::unauthorized("invalid bearer token");
        let Some((id, secret)) = split_key(token) else {
            return Err(invalid());
        };
        let key = self.fleet.api_key(&id).await.map_err(|e| {
            ApiError::unavailable(format!("cannot read API key {id} to check it: {e}"))
        })?;
        match key {
            Some(k) if same_secret(digest(secret).as_bytes(), k.secret_hash.as_bytes()) => {
                if k.is_active() {
                    Ok(k.scope)
                } else {
                    Err(ApiError::unauthorized(format!("API key {id} was revoked")))
                }
            }
            _ => Err(invalid()),
        }
    }
}

/// The middleware: refuses a request whose credential is missing, unknown, revoked or short
/// of the route's scope.
pub(super) async fn authorize<S: EventStore, L: DeviceLink>(
    State(guard): State<Arc<Guard<S, L>>>,
    req: Request,
    next: Next,
) -> Response {
    let Auth::Bearer(root) = &guard.auth else {
        return next.run(req).await;
    };
    // HEAD is answered by the GET route and needs what GET needs.
    let method = if req.method() == Method::HEAD {
        Method::GET
    } else {
        req.method().clone()
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // A route missing from the table (none is) needs the most, not the least.
    let needed = guard
        .needs
        .get(&(method, route.as_str()))
        .copied()
        .unwrap_or(Scope::Admin);
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
    else {
        return ApiError::unauthorized(
            "missing bearer token: send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    match guard.scope_of(token, root).await {
        Ok(scope) if scope.allows(needed) => next.run(req).await,
        Ok(scope) => ApiError::forbidden(format!(
            "this credential has scope {scope}; {} {route} needs {needed}",
            req.method()
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(bearer_token(v.as_bytes()), Some(&b"t0k"[..]), "{v}");
        }
        for v in [
            "Bearert0k",
            "Basic t0k",
            "Bearer",
            "Bearer ",
            "Bear t0k",
            "",
        ] {
            assert_eq!(bearer_token(v.as_bytes()), None, "{v}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn keys_split_at_the_last_dot_into_an_id_and_a_full_length_secret() {
        let secret = "a".repeat(SECRET_HEX_LEN);
        let presented = format!("k-1.{secret}");
        let (id, s) = split_key(presented.as_bytes()).expect("a key");
        assert_eq!(id.as_str(), "k-1");
        assert_eq!(s, secret.as_bytes());
        for bad in [
            "no-dot".to_owned(),
            format!("k-1.{}", "a".repeat(SECRET_HEX_LEN - 1)),
            format!("bad id.{secret}"),
            format!(".{secret}"),
        ] {
            assert!(split_key(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn drawn_secrets_are_distinct_hex_with_their_digest() {
        let a = new_secret().expect("random");
        let b = new_secret().expect("random");
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), SECRET_HEX_LEN);
        assert!(a.secret.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.hash, digest(a.secret.as_bytes()));
    }
}
