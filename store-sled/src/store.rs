//! The handles on an open store: [`SledStore`] (opening, its counters and the [`EventStore`]
//! implementation) and [`Projection`]. Both hand each call to the module that does the work.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    snapshot_mismatch, AppendBatch, Appended, EventStore, OrderedAppend, Snapshot, StoreError,
    StoredEvent, Subscription,
};
use tokio::sync::oneshot;

use crate::codec;
use crate::config::{Durability, SledConfig};
use crate::guard::{blocking, guarded, sled_error};
use crate::inner::Inner;
use crate::prepare::{prepare, PreparedBatch};
use crate::projection::{
    validate_name, ProjectionBatch, ProjectionEntry, ProjectionError, ProjectionUpdate,
};
use crate::read::{read_all_blocking, read_stream_blocking, stream_version_blocking};
use crate::recovery::{check_format, recover_head, remove_unfinished_sled_snapshots, repair_last};
use crate::subscription::SledSubscription;
use crate::wal::Wal;
use crate::writer::{append_inline, Inline, Request};

/// The name of the sled tree that holds the store.
pub(crate) const TREE_NAME: &str = "fleetops/v1";

/// Counters of the writer, to see group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Append requests handled (including refused and idempotent ones).
    pub appends: u64,
    /// Events stored.
    pub events: u64,
    /// Groups written with one `apply_batch` each.
    pub groups: u64,
    /// Flushes performed.
    pub flushes: u64,
    /// Of `appends`, those committed on the appending thread because the writer was idle
    /// (only with [`Durability::Buffered`]; see
    /// [`SledConfig::inline_appends`](crate::SledConfig::inline_appends)). Each that wrote
    /// counts as a group of its own.
    pub inline_appends: u64,
}

/// Where subscriptions got their events from, to see the live tail at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Events subscriptions took from the live tail in memory (see
    /// [`SledConfig::live_tail`](crate::SledConfig::live_tail)).
    pub from_tail: u64,
    /// Events subscriptions read from sled: catching up, or too far behind for the tail.
    pub from_sled: u64,
}

/// The durable [`EventStore`] on sled 0.34.7.
///
/// Cloning is cheap and shares the store. The database closes (after a final flush, on the
/// writer thread) when the last clone, [`Projection`] and subscription are dropped; that last
/// drop waits for the writer to finish.
#[derive(Clone)]
pub struct SledStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .field("durability", &self.inner.durability)
            .field("head", &self.inner.shared.head())
            .finish()
    }
}

impl SledStore {
    /// Opens (or creates) the store. This blocks while sled recovers its log: call it before
    /// starting the runtime, from a blocking thread, or use [`SledStore::open_async`].
    ///
    /// A damaged database gives [`StoreError::Corrupt`] (or `Backend` for I/O errors and an
    /// unknown format), never a panic.
    pub fn open(config: SledConfig) -> Result<Self, StoreError> {
        let path = config.path.clone();
        let (db, tree, head, wal) = guarded(&format!("opening {}", path.display()), || {
            remove_unfinished_sled_snapshots(&path)?;
            let db = sled::Config::new()
                .path(&path)
                .cache_capacity(config.cache_capacity)
                .flush_every_ms(Some(
                    u64::try_from(config.flush_every.as_millis()).unwrap_or(u64::MAX),
                ))
                .mode(sled::Mode::HighThroughput)
                .open()
                .map_err(sled_error)?;
            let tree = db.open_tree(TREE_NAME).map_err(sled_error)?;
            // Groups acknowledged since the last checkpoint are in the log, maybe not in sled.
            let (wal, replayed) = Wal::open_and_replay(&path, &tree)
                .map_err(|detail| StoreError::Backend { detail })?;
            if replayed > 0 {
                tracing::info!(replayed, "applied the write-ahead log's groups to sled");
            }
            check_format(&tree)?;
            let head = recover_head(&tree)?;
            repair_last(&tree, head)?;
            Ok((db, tree, head, wal))
        })?;

        Ok(Self {
            inner: Arc::new(Inner::start(db, tree, head, wal, config)?),
        })
    }

    /// [`SledStore::open`] on tokio's blocking pool.
    pub async fn open_async(config: SledConfig) -> Result<Self, StoreError> {
        tokio::task::spawn_blocking(move || Self::open(config))
            .await
            .map_err(|e| StoreError::Backend {
                detail: format!("opening the store failed: {e}"),
            })?
    }

    /// A store in a fresh temporary directory, removed when the store is dropped (for tests).
    pub fn open_temporary() -> Result<Self, StoreError> {
        Self::open(SledConfig::temporary()?)
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The durability mode it was opened with.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// The writer's counters since opening.
    pub fn stats(&self) -> WriterStats {
        let s = &self.inner.shared.stats;
        WriterStats {
            appends: s.appends.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            groups: s.groups.load(Ordering::Relaxed),
            flushes: s.flushes.load(Ordering::Relaxed),
            inline_appends: s.inline_appends.load(Ordering::Relaxed),
        }
    }

    /// Where subscriptions got their events from since opening.
    pub fn feed_stats(&self) -> FeedStats {
        let s = &self.inner.shared.stats;
        FeedStats {
            from_tail: s.from_tail.load(Ordering::Relaxed),
            from_sled: s.from_sled.load(Ordering::Relaxed),
        }
    }

    /// Flushes sled now (through the writer thread), whatever the durability mode: in
    /// [`Durability::Buffered`] everything acknowledged before the call is then on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner.submit(Request::Flush { reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands a prepared append to the writer thread and waits for its answer.
    async fn append_through_writer(&self, batch: PreparedBatch) -> Result<Appended, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .submit(Request::Append {
                batch,
                reply,
                ordered: None,
            })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Hands the append to the writer and returns once the writer has ordered it (applied, in
    /// the log), with its durability still to come; or, where the writer has nothing to say
    /// before the end (`Buffered` mode, a refusal, a failed group), once it is answered.
    async fn append_ordered_through_writer(
        &self,
        batch: PreparedBatch,
    ) -> Result<OrderedAppend, StoreError> {
        let (reply, rx) = oneshot::channel();
        let (tell, ordered) = oneshot::channel();
        self.inner
            .submit(Request::Append {
                batch,
                reply,
                ordered: Some(tell),
            })
            .await?;
        match ordered.await {
            Ok(appended) => Ok(OrderedAppend::pending(appended, async move {
                rx.await.map_err(|_| StoreError::Closed)?.map(drop)
            })),
            Err(_) => rx
                .await
                .map_err(|_| StoreError::Closed)?
                .map(OrderedAppend::stored),
        }
    }

    /// A handle on the projection `name` (1–64 characters of `[a-zA-Z0-9_.-]`); see
    /// [`Projection`]. Projections need no creation: one never written is empty at
    /// checkpoint 0.
    pub fn projection(&self, name: &str) -> Result<Projection, ProjectionError> {
        Projection::new(Arc::clone(&self.inner), name)
    }
}

#[async_trait]
impl EventStore for SledStore {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let mut batch = prepare(batch, self.inner.shared.tail.enabled())?;
        if self.inner.inline {
            // An idle writer: commit here, without the two thread hand-offs (see
            // `writer::append_inline`; never across an `.await`).
            batch = match append_inline(self.inner.tree()?, &self.inner.shared, batch, None) {
                Ok(Inline::Done(result)) => return result,
                Ok(Inline::Ordered(_, rx)) => return rx.await.map_err(|_| StoreError::Closed)?,
                Err(batch) => batch,
            };
        }
        self.append_through_writer(batch).await
    }

    /// An idle writer commits the append on this thread and leaves its sync to the flusher
    /// thread, so the caller gets it back ordered while the write-ahead log is synced; a busy
    /// one takes it into its next group and says so once the group is applied, before its
    /// sync. In `Buffered` mode this is a plain [`EventStore::append`].
    async fn append_ordered(&self, batch: AppendBatch) -> Result<OrderedAppend, StoreError> {
        let mut batch = prepare(batch, self.inner.shared.tail.enabled())?;
        if self.inner.inline {
            let handoff = self.inner.flusher.as_ref();
            batch = match append_inline(self.inner.tree()?, &self.inner.shared, batch, handoff) {
                Ok(Inline::Done(result)) => return result.map(OrderedAppend::stored),
                Ok(Inline::Ordered(appended, rx)) => {
                    return Ok(OrderedAppend::pending(appended, async move {
                        rx.await.map_err(|_| StoreError::Closed)?.map(drop)
                    }))
                }
                Err(batch) => batch,
            };
        }
        self.append_ordered_through_writer(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let stream = stream.clone();
        blocking(&self.inner, "read_stream", move |inner| {
            read_stream_blocking(inner, &stream, from, limit)
        })
        .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        let stream = stream.clone();
        blocking(&self.inner, "stream_version", move |inner| {
            stream_version_blocking(inner, &stream)
        })
        .await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        blocking(&self.inner, "read_all", move |inner| {
            read_all_blocking(inner, from, limit)
        })
        .await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        Ok(self.inner.shared.head())
    }

    /// Read from its file and checked against the feed: a snapshot that does not belong
    /// to this history (past the head, or keyed to another event than the one stored at
    /// its position), a damaged one and one of an older layout are deleted with a warning
    /// and `None` is returned, so none of them can be taken up later.
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let path = crate::snapshot::file(&self.inner.path, name);
        let read_path = path.clone();
        let read = blocking(&self.inner, "load_snapshot", move |_| {
            crate::snapshot::read(&read_path)
        })
        .await;
        let reason = match read {
            Ok(None) => return Ok(None),
            Ok(Some(snapshot)) => match snapshot_mismatch(self, &snapshot).await? {
                None => return Ok(Some(snapshot)),
                Some(reason) => reason,
            },
            Err(StoreError::Corrupt { detail, .. }) => detail,
            Err(e) => return Err(e),
        };
        tracing::warn!(
            snapshot = name,
            path = %path.display(),
            %reason,
            "deleting a snapshot that cannot be used"
        );
        blocking(&self.inner, "delete_snapshot", move |_| {
            crate::snapshot::delete(&path)
        })
        .await?;
        Ok(None)
    }

    /// Kept as a file beside the database (`crate::snapshot`), written on the blocking pool
    /// so the writer thread never carries the large blob. Refused unless it belongs to this
    /// history. Before the file is written, sled is flushed and its files `fsync`ed
    /// (`crate::snapshot::sync_database`): sled's own flush is only `sync_file_range`, and
    /// the snapshot must never be newer than the durable events.
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        if let Some(reason) = snapshot_mismatch(self, &snapshot).await? {
            return Err(StoreError::InvalidBatch { reason });
        }
        self.flush().await?;
        let path = crate::snapshot::file(&self.inner.path, name);
        blocking(&self.inner, "save_snapshot", move |inner| {
            crate::snapshot::sync_database(&inner.path)?;
            crate::snapshot::write(&path, &snapshot)
        })
        .await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        let path = crate::snapshot::file(&self.inner.path, name);
        blocking(&self.inner, "delete_snapshot", move |_| {
            crate::snapshot::delete(&path)
        })
        .await
    }

    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        Ok(Box::new(SledSubscription::new(
            Arc::clone(&self.inner),
            from,
        )))
    }
}

/// A named key-value space with a checkpoint, kept in the store's database.
///
/// Get one with [`SledStore::projection`]. Cheap to clone; it keeps the store open while it
/// lives.
#[derive(Clone)]
pub struct Projection {
    inner: Arc<Inner>,
    name: Arc<str>,
    prefix: Arc<[u8]>,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.name)
            .finish()
    }
}

/// Decodes the entries of a scan, stripping the projection prefix from the keys.
fn collect(
    iter: sled::Iter,
    strip: usize,
    limit: usize,
) -> Result<Vec<ProjectionEntry>, StoreError> {
    let mut out = Vec::new();
    for item in iter.take(limit) {
        let (k, v) = item.map_err(sled_error)?;
        let value = codec::decode_proj_value(&k, &v)?;
        out.push((k[strip..].to_vec(), value));
    }
    Ok(out)
}

impl Projection {
    pub(crate) fn new(inner: Arc<Inner>, name: &str) -> Result<Self, ProjectionError> {
        validate_name(name)?;
        Ok(Self {
            inner,
            name: name.into(),
            prefix: codec::proj_prefix(name).into(),
        })
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The position of the last event applied; 0 when nothing was applied yet.
    pub async fn checkpoint(&self) -> Result<u64, ProjectionError> {
        let key = codec::checkpoint_key(&self.name);
        Ok(blocking(
            &self.inner,
            "projection checkpoint",
            move |inner| match inner.tree()?.get(&key).map_err(sled_error)? {
                Some(v) => codec::decode_checkpoint(&key, &v),
                None => Ok(0),
            },
        )
        .await?)
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// The value of `key`, if set.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        let key = self.full_key(key);
        Ok(blocking(&self.inner, "projection get", move |inner| {
            match inner.tree()?.get(&key).map_err(sled_error)? {
                Some(v) => codec::decode_proj_value(&key, &v).map(Some),
                None => Ok(None),
            }
        })
        .await?)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub async fn scan_prefix(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<ProjectionEntry>, ProjectionError> {
        let full = self.full_key(prefix);
        let strip = self.prefix.len();
        Ok(blocking(&self.inner, "projection scan", move |inner| {
            collect(inner.tree()?.scan_prefix(&full), strip, limit)
        })
        .await?)
    }

    /// Up to `limit` entries with `start <= key < end`, in key order.
    pub async fn scan_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<ProjectionEntry>, ProjectionError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let (lo, hi) = (self.full_key(start), self.full_key(end));
        let strip = self.prefix.len();
        Ok(blocking(&self.inner, "projection scan", move |inner| {
            collect(inner.tree()?.range(lo..hi), strip, limit)
        })
        .await?)
    }

    /// Applies `batch` and moves the checkpoint from `from` to `to`, atomically, if the stored
    /// checkpoint is `from` and `from <= to <= head`. Returns once the update is as durable as
    /// the store's [`Durability`] makes appends.
    pub async fn apply(
        &self,
        from: u64,
        to: u64,
        batch: ProjectionBatch,
    ) -> Result<(), ProjectionError> {
        let (reply, rx) = oneshot::channel();
        let update = ProjectionUpdate::new(&self.name, from, to, batch);
        self.inner
            .submit(Request::Project { update, reply })
            .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
