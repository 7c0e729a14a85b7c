//! API keys on the fleet: created, revoked and looked up for the HTTP layer's authentication.
//!
//! Keys are streams in the same store as jobs, so every instance sharing a store authenticates
//! the same keys. A lookup reads the folded model; an id the model does not know yet (a key
//! created on another instance a moment ago) is read from the store once before it is refused.

use fleetops_core::access::{Scope, SecretHash};
use fleetops_core::api_key::{ApiKey, ApiKeyIntent};
use fleetops_core::ids::ApiKeyId;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::{Rejection, StreamId};

use crate::error::FleetError;
use crate::fleet::{not_found, page, rename, Fleet};
use crate::types::{Page, Paged};

/// The most API keys that may be active at once. Revoked keys do not count; they stay in
/// the history and in listings.
pub const MAX_ACTIVE_API_KEYS: usize = 1_000;

impl<S: EventStore, L: DeviceLink> Fleet<S, L> {
    /// Creates an API key with the digest of a secret the caller drew (and hands out once).
    /// Refused when [`MAX_ACTIVE_API_KEYS`] keys are active, or the id is taken.
    pub async fn create_api_key(
        &self,
        key_id: ApiKeyId,
        name: String,
        scope: Scope,
        secret_hash: SecretHash,
    ) -> Result<ApiKey, FleetError> {
        self.inner.ensure_serving()?;
        let active = self
            .inner
            .read()
            .api_keys
            .values()
            .filter(|k| k.is_active())
            .count();
        if active >= MAX_ACTIVE_API_KEYS {
            return Err(FleetError::Rejected(Rejection::invalid(
                "name",
                format!(
                    "{active} API keys are active, at most {MAX_ACTIVE_API_KEYS} are allowed; \
                     revoke one first"
                ),
            )));
        }
        let stream = StreamId::api_key(&key_id);
        let intent = ApiKeyIntent::Create {
            key_id: key_id.clone(),
            name,
            scope,
            secret_hash,
        };
        let done = self.inner.execute::<ApiKey>(&stream, intent).await?;
        done.state.ok_or_else(|| not_found("API key", &key_id))
    }

    /// Revokes an API key; revoking a revoked key succeeds and changes nothing.
    pub async fn revoke_api_key(&self, key_id: &ApiKeyId) -> Result<ApiKey, FleetError> {
        self.inner.ensure_serving()?;
        let stream = StreamId::api_key(key_id);
        let done = self
            .inner
            .execute::<ApiKey>(&stream, ApiKeyIntent::Revoke)
            .await
            .map_err(|e| rename(e, "API key", key_id))?;
        done.state.ok_or_else(|| not_found("API key", key_id))
    }

    /// API keys by id, revoked ones included.
    pub fn list_api_keys(&self, page_req: &Page) -> Paged<ApiKey> {
        let st = self.inner.read();
        page(
            st.api_keys.iter().map(|(id, k)| (id.clone(), k.clone())),
            page_req,
        )
    }

    /// The key with this id, from the folded model or, when the model does not know it yet,
    /// from its stream.
    pub async fn api_key(&self, key_id: &ApiKeyId) -> Result<Option<ApiKey>, FleetError> {
        if let Some(k) = self.inner.read().api_keys.get(key_id) {
            return Ok(Some(k.clone()));
        }
        let (state, _) = self
            .inner
            .load::<ApiKey>(&StreamId::api_key(key_id))
            .await?;
        Ok(state)
    }
}
