//! The API key rules, given/when/then: creation checks its name, revoking is final and
//! idempotent, and a revoked id is never reused.

mod common;

use common::*;
use fleetops_core::access::{Scope, SecretHash};
use fleetops_core::api_key::{ApiKey, ApiKeyIntent, MAX_KEY_NAME_LEN};
use fleetops_core::ids::ApiKeyId;
use fleetops_core::testkit::gwt::given;
use fleetops_core::{Aggregate, ErrorCode, Event, Rejection};

fn id() -> ApiKeyId {
    ApiKeyId::parse("k-1").expect("valid")
}

fn create(name: &str, scope: Scope) -> ApiKeyIntent {
    ApiKeyIntent::Create {
        key_id: id(),
        name: name.into(),
        scope,
        secret_hash: SecretHash::from_bytes([7; 32]),
    }
}

fn created() -> Event {
    Event::ApiKeyCreated {
        key_id: id(),
        name: "dashboard".into(),
        scope: Scope::Read,
        secret_hash: SecretHash::from_bytes([7; 32]),
        created_at: t(1),
    }
}

#[test]
fn a_key_is_created_with_its_name_scope_and_digest_only() {
    let key = given::<ApiKey>([])
        .when(create("dashboard", Scope::Read), t(1))
        .then_expect([created()])
        .expect("a key");
    assert!(key.is_active());
    assert_eq!(key.scope, Scope::Read);
    assert_eq!(key.secret_hash, SecretHash::from_bytes([7; 32]));
}

#[test]
fn a_name_must_be_short_printable_text() {
    for bad in ["", "tab\there", "new\nline"] {
        let r = given::<ApiKey>([])
            .when(create(bad, Scope::Admin), t(1))
            .then_reject(ErrorCode::InvalidRequest);
        assert!(
            matches!(r, Rejection::InvalidRequest { field: "name", .. }),
            "{bad:?}: {r:?}"
        );
    }
    let long = "x".repeat(MAX_KEY_NAME_LEN + 1);
    given::<ApiKey>([])
        .when(create(&long, Scope::Admin), t(1))
        .then_reject(ErrorCode::InvalidRequest);
    let longest = "é".repeat(MAX_KEY_NAME_LEN);
    assert!(ApiKey::decide(None, create(&longest, Scope::Admin), t(1)).is_ok());
}

#[test]
fn an_id_is_never_reused_even_after_revoking() {
    given::<ApiKey>([created()])
        .when(create("again", Scope::Admin), t(2))
        .then_reject(ErrorCode::InvalidRequest);
    given::<ApiKey>([created(), Event::ApiKeyRevoked { at: t(2) }])
        .when(create("again", Scope::Admin), t(3))
        .then_reject(ErrorCode::InvalidRequest);
}

#[test]
fn revoking_is_final_and_a_repeated_revoke_changes_nothing() {
    let key = given::<ApiKey>([created()])
        .when(ApiKeyIntent::Revoke, t(2))
        .then_expect([Event::ApiKeyRevoked { at: t(2) }])
        .expect("a key");
    assert!(!key.is_active());
    assert_eq!(key.revoked_at, Some(t(2)));
    given::<ApiKey>([created(), Event::ApiKeyRevoked { at: t(2) }])
        .when(ApiKeyIntent::Revoke, t(3))
        .then_nothing();
    given::<ApiKey>([])
        .when(ApiKeyIntent::Revoke, t(3))
        .then_reject(ErrorCode::ResourceNotFound);
}

#[test]
fn a_history_that_revokes_twice_is_corrupt() {
    let history = [
        created(),
        Event::ApiKeyRevoked { at: t(2) },
        Event::ApiKeyRevoked { at: t(3) },
    ];
    assert!(ApiKey::replay(history.iter()).is_err());
    assert!(ApiKey::replay([Event::ApiKeyRevoked { at: t(1) }].iter()).is_err());
}
