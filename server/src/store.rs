//! The stores the binary can run on, as one type: `serve` and `bench` pick one at run time,
//! and the runtime is generic over the store, so one `Fleet` type serves both.

use async_trait::async_trait;
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, OrderedAppend, Snapshot, StoreError, StoredEvent,
    Subscription,
};
use fleetops_core::StreamId;
use fleetops_store_postgres::{PostgresLease, PostgresStore};
use fleetops_store_sled::SledStore;

use crate::http::StoreFigures;

/// sled or PostgreSQL.
#[derive(Clone)]
pub enum AnyStore {
    /// The embedded store: one process, its own locked directory.
    Sled(SledStore),
    /// The shared store: several processes, one database.
    Postgres(PostgresStore),
}

impl AnyStore {
    /// The lease a runtime on this store needs: none for sled (its directory is locked, so the
    /// process is the only writer), the database's for PostgreSQL.
    pub fn lease(&self) -> Option<PostgresLease> {
        match self {
            Self::Sled(_) => None,
            Self::Postgres(p) => Some(p.lease()),
        }
    }

    /// What the store's group commit has done, for `/metrics`.
    pub fn figures(&self) -> StoreFigures {
        match self {
            Self::Sled(s) => {
                let w = s.stats();
                StoreFigures {
                    groups: w.groups,
                    appends: w.appends,
                    events: w.events,
                    largest_group: None,
                }
            }
            Self::Postgres(p) => {
                let w = p.writer_stats();
                StoreFigures {
                    groups: w.groups,
                    appends: w.appends,
                    events: w.events,
                    largest_group: Some(w.largest_group),
                }
            }
        }
    }

    /// Makes everything appended durable and lets the store go: sled is flushed and its
    /// files released (off the async workers: dropping joins sled's threads); PostgreSQL's
    /// appends are committed when acknowledged, and dropping closes the connections.
    pub async fn close(self) -> Result<(), StoreError> {
        match self {
            Self::Sled(store) => {
                let flushed = store.flush().await;
                let _ = tokio::task::spawn_blocking(move || drop(store)).await;
                flushed
            }
            Self::Postgres(store) => {
                drop(store);
                Ok(())
            }
        }
    }
}

/// Runs the same call on whichever store it is.
macro_rules! each {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sled($s) => $call,
            AnyStore::Postgres($s) => $call,
        }
    };
}

#[async_trait]
impl EventStore for AnyStore {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        each!(self, s => s.append(batch).await)
    }

    async fn append_ordered(&self, batch: AppendBatch) -> Result<OrderedAppend, StoreError> {
        each!(self, s => s.append_ordered(batch).await)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        each!(self, s => s.read_stream(stream, from, limit).await)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.stream_version(stream).await)
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        each!(self, s => s.read_all(from, limit).await)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        each!(self, s => s.head_position().await)
    }

    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        each!(self, s => s.subscribe(from).await)
    }

    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        each!(self, s => s.load_snapshot(name).await)
    }

    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        each!(self, s => s.save_snapshot(name, snapshot).await)
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        each!(self, s => s.delete_snapshot(name).await)
    }
}
