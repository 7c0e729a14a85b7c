//! [`PostgresLease`]: leadership among the instances sharing a schema, as a session-level
//! advisory lock held by a dedicated connection.
//!
//! - **Acquire** polls `pg_try_advisory_lock(key)` every `lease_retry` until granted; the key
//!   is derived from the schema.
//! - **Keep**: the session runs with `idle_session_timeout` = `lease_ttl` (PostgreSQL 14 or
//!   newer), so the server ends the session of a holder that stops talking for longer than
//!   the TTL (a paused or hung process) and the lock is freed. The hold pings (`SELECT 1`)
//!   every quarter of the TTL.
//! - **Lost**: [`LeaseHold::lost`] resolves when the connection closes (the server terminated
//!   the session, the network failed), a ping fails, or a ping gets no answer within the TTL.
//! - **Release**: dropping the hold drops the client, which closes the session and frees the
//!   lock; a killed holder's lock is freed when the server sees its socket close.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleetops_core::lease::{Lease, LeaseHold};
use fleetops_core::store::StoreError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::config::PostgresConfig;
use crate::conn::connect_raw;
use crate::error::{backend, chain};

/// The lease of the instances sharing one schema. Get one with
/// [`PostgresStore::lease`](crate::PostgresStore::lease) or [`PostgresLease::new`].
#[derive(Debug, Clone)]
pub struct PostgresLease {
    config: PostgresConfig,
}

impl PostgresLease {
    /// The lease of `config`'s schema, with its `lease_ttl` and `lease_retry`.
    pub fn new(config: PostgresConfig) -> Self {
        Self { config }
    }

    /// The advisory-lock key (for operators looking at `pg_locks`: `objid` holds its low 32
    /// bits and `classid` its high 32 bits).
    pub fn key(&self) -> i64 {
        self.config.lease_key()
    }
}

#[async_trait]
impl Lease for PostgresLease {
    async fn acquire(&self) -> Result<Box<dyn LeaseHold>, StoreError> {
        self.config.check_schema()?;
        let ttl = self.config.lease_ttl;
        let (client, connection) = connect_raw(
            &self.config,
            "lease",
            &[("idle_session_timeout", ttl.as_millis().to_string())],
        )
        .await?;
        let (closed_tx, closed) = watch::channel(None);
        let closed_tx = Arc::new(closed_tx);
        let on_close = closed_tx.clone();
        // Dropping the client (a dropped hold, or a cancelled acquire) ends this task's
        // connection, closing the session and freeing the lock.
        tokio::spawn(async move {
            let why = match connection.await {
                Ok(()) => "the lease connection closed".to_owned(),
                Err(e) => format!("the lease connection failed: {}", chain(&e)),
            };
            on_close.send_if_modified(|w| w.replace(why).is_none());
        });
        let key = self.config.lease_key();
        loop {
            let granted: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| backend("lease: pg_try_advisory_lock", &e))?
                .get(0);
            if granted {
                tracing::info!(key, schema = %self.config.schema, "lease acquired");
                // The pings run whether or not anyone awaits `lost`: an idle session would be
                // ended by `idle_session_timeout`.
                let pinger = tokio::spawn(ping(client, ttl, closed_tx));
                return Ok(Box::new(PostgresLeaseHold { closed, pinger }));
            }
            tokio::time::sleep(self.config.lease_retry).await;
        }
    }
}

/// Pings every quarter of `ttl` until a ping fails or goes unanswered for `ttl`, then
/// reports why and drops the client (closing the session, if it is not closed already).
async fn ping(client: Client, ttl: Duration, lost: Arc<watch::Sender<Option<String>>>) {
    let why = loop {
        tokio::time::sleep(ttl / 4).await;
        match tokio::time::timeout(ttl, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break format!("ping failed: {}", chain(&e)),
            Err(_) => break format!("ping unanswered for {ttl:?}"),
        }
    };
    lost.send_if_modified(|w| w.replace(why).is_none());
}

/// A held [`PostgresLease`]; dropping it gives the lease up.
struct PostgresLeaseHold {
    closed: watch::Receiver<Option<String>>,
    pinger: JoinHandle<()>,
}

impl Drop for PostgresLeaseHold {
    fn drop(&mut self) {
        // The pinger owns the client: aborting it drops the client, which closes the session.
        self.pinger.abort();
    }
}

#[async_trait]
impl LeaseHold for PostgresLeaseHold {
    async fn lost(&mut self) -> StoreError {
        // The sender lives in the pinger and connection tasks; if both are gone without a
        // reason (cannot happen short of a panic), the lease is as good as lost.
        let why = match self.closed.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the lease tasks ended".to_owned(),
        };
        tracing::warn!(%why, "lease lost");
        StoreError::Backend {
            detail: format!("lease lost: {why}"),
        }
    }
}
