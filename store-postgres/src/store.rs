//! [`PostgresStore`]: the handles and their [`EventStore`] implementation, which hand each call
//! to the writer task, the read connections or a subscription.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    snapshot_mismatch, AppendBatch, Appended, EventStore, Snapshot, StoreError, StoredEvent,
    Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::codec::prepare;
use crate::config::PostgresConfig;
use crate::conn::connect;
use crate::error::PgError;
use crate::lease::PostgresLease;
use crate::listen;
use crate::migrate::migrate;
use crate::read::Reader;
use crate::subscription::PgSubscription;
use crate::writer::{self, Counters, Job, WriteConnSlot};

/// A PostgreSQL [`EventStore`]. Cloning is cheap and yields another handle to the same store;
/// the connections close when the last handle (and the last subscription) is dropped.
///
/// Several stores (in one process or many) may open the same schema: they share one feed,
/// with positions assigned in commit order, and each one's subscribers see the others' events.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: PostgresConfig,
    queue: mpsc::UnboundedSender<Job>,
    reader: Arc<Reader>,
    head: Arc<watch::Sender<u64>>,
    counters: Arc<Counters>,
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer ends by itself once the queue's sender is gone; the listener loops for
        // ever, reconnecting, so it is stopped here.
        self.listener.abort();
    }
}

/// What the group commit has done since the store opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions run (one call of the append function each).
    pub groups: u64,
    /// Appends handled, including refused ones and idempotent repeats.
    pub appends: u64,
    /// Events stored.
    pub events: u64,
    /// The most appends one transaction held.
    pub largest_group: u64,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.config.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, applies the migrations the schema lacks (creating the schema if missing),
    /// and starts the writer and the LISTEN session. Needs a tokio runtime with I/O and time.
    pub async fn connect(config: PostgresConfig) -> Result<Self, PgError> {
        config.check_schema()?;
        {
            let mut client = connect(&config, "migrate").await?;
            migrate(&mut client, &config).await?;
        }
        let write_conn = WriteConnSlot::open(&config).await?;
        let reader = Arc::new(Reader::open(config.clone()).await?);
        let start = reader.head().await.map_err(PgError::Open)?;
        let head = Arc::new(watch::channel(start).0);
        let counters = Arc::new(Counters::default());
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(
            config.clone(),
            jobs,
            counters.clone(),
            head.clone(),
            Some(write_conn),
        ));
        let listener = tokio::spawn(listen::run(config.clone(), head.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                queue,
                reader,
                head,
                counters,
                listener,
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The lease of this store's schema: one instance among those sharing the schema holds
    /// it at a time (see [`PostgresLease`]).
    pub fn lease(&self) -> PostgresLease {
        PostgresLease::new(self.inner.config.clone())
    }

    /// What the group commit has done so far.
    pub fn writer_stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        WriterStats {
            groups: c.groups.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            largest_group: c.largest_group.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    /// Queued for the writer task's next group commit; the shape is checked first, so a
    /// malformed batch never reaches the database.
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        batch.validate()?;
        let batch = prepare(batch)?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(Job { batch, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.reader.read_stream(stream, from, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.inner.reader.stream_version(stream).await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.reader.read_all(from, limit).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.reader.head().await
    }

    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        Ok(Box::new(PgSubscription::new(
            self.inner.reader.clone(),
            self.inner.head.clone(),
            from,
            self.inner.config.poll_interval,
        )))
    }

    /// A snapshot that no longer matches the feed is deleted and `None` returned.
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(snapshot) = self.inner.reader.load_snapshot(name).await? else {
            return Ok(None);
        };
        if let Some(reason) = snapshot_mismatch(self, &snapshot).await? {
            tracing::warn!(%name, %reason, "deleting a snapshot that does not match the feed");
            self.inner.reader.delete_snapshot(name).await?;
            return Ok(None);
        }
        Ok(Some(snapshot))
    }

    /// Refuses a snapshot that does not match the feed. Committed events are already durable
    /// (PostgreSQL flushes its WAL at commit), so nothing needs flushing first.
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        if let Some(reason) = snapshot_mismatch(self, &snapshot).await? {
            return Err(StoreError::InvalidBatch { reason });
        }
        self.inner.reader.save_snapshot(name, &snapshot).await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        self.inner.reader.delete_snapshot(name).await
    }
}
