//! The API key routes (`admin` scope): create a key (its secret is shown once), list and
//! describe keys, revoke one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetops_core::access::Scope;
use fleetops_core::api_key::ApiKey;
use fleetops_core::ids::ApiKeyId;
use fleetops_core::link::DeviceLink;
use fleetops_core::{EventStore, Rejection};
use fleetops_service::FleetError;
use serde::{Deserialize, Serialize};

use super::auth::new_secret;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::handlers::{page, page_view, PageQuery};
use super::wire::{secs, PageView};
use super::ApiState;

/// `POST /api/v1/api-keys`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateKeyRequest {
    name: String,
    scope: Scope,
}

/// An API key as listed: never its secret nor its digest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    /// The id, the part of the key before the `.`.
    pub key_id: ApiKeyId,
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// `ACTIVE` or `REVOKED`.
    pub status: &'static str,
    /// When it was created, in seconds since the epoch.
    pub created_at: u64,
    /// When it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> Self {
        Self {
            status: if k.is_active() { "ACTIVE" } else { "REVOKED" },
            key_id: k.key_id,
            name: k.name,
            scope: k.scope,
            created_at: secs(k.created_at),
            revoked_at: k.revoked_at.map(secs),
        }
    }
}

/// A new key: its description and, this once, the whole key to present.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKeyView {
    /// The key as listed.
    #[serde(flatten)]
    pub view: KeyView,
    /// `{keyId}.{secret}`, to send as `Authorization: Bearer …`. Not shown again.
    pub key: String,
}

fn key_id(value: &str) -> Result<ApiKeyId, ApiError> {
    ApiKeyId::parse(value).map_err(|e| ApiError::invalid("keyId", format!("`{value}`: {e}")))
}

pub(super) async fn create_key<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiJson(body): ApiJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKeyView>), ApiError> {
    let drawn = new_secret()?;
    // UUIDv7: ids sort by creation time, so the listing is in creation order.
    let id = ApiKeyId::parse(&uuid::Uuid::now_v7().simple().to_string())
        .map_err(|e| ApiError::unavailable(format!("drawn key id refused: {e}")))?;
    let key = app
        .fleet
        .create_api_key(id.clone(), body.name, body.scope, drawn.hash)
        .await
        .map_err(|e| match e {
            // A drawn id that is taken: only a broken random source does that.
            FleetError::Rejected(Rejection::InvalidRequest { field: "keyId", .. }) => {
                ApiError::unavailable("the drawn key id is taken; try again")
            }
            e => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyView {
            view: key.into(),
            key: format!("{id}.{}", drawn.secret),
        }),
    ))
}

pub(super) async fn list_keys<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<PageView<KeyView>>, ApiError> {
    let p = page(q.limit, q.next_token)?;
    Ok(Json(page_view(app.fleet.list_api_keys(&p))))
}

pub(super) async fn get_key<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(&id)?;
    match app.fleet.api_key(&id).await? {
        Some(k) => Ok(Json(k.into())),
        None => Err(ApiError::not_found(format!("API key {id} not found"))),
    }
}

pub(super) async fn revoke_key<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<KeyView>, ApiError> {
    let id = key_id(&id)?;
    Ok(Json(app.fleet.revoke_api_key(&id).await?.into()))
}
