//! How to open a [`SledStore`](crate::SledStore): where, how durable, how much cache.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetops_core::store::StoreError;

/// When an acknowledged append is on disk.
///
/// Neither mode is a full `fsync` per append on Linux: see the crate documentation,
/// section *Durability*.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each group commit is synced to the store's write-ahead log (the way sled flushes)
    /// before any append of the group is acknowledged or becomes visible to readers; sled
    /// itself is flushed at checkpoints. An acknowledged append survives a crash of the
    /// process.
    #[default]
    FlushEveryBatch,
    /// The writer applies each group and acknowledges at once; sled's background thread flushes
    /// (and `fsync`s) every [`SledConfig::flush_every`]. A process crash can lose the appends
    /// of that last interval, never part of one. Readers see an append as soon as it is
    /// acknowledged. An append that finds the writer idle is applied on the calling thread
    /// instead (see [`SledConfig::inline_appends`]).
    Buffered,
}

/// Options for [`SledStore::open`](crate::SledStore::open).
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) cache_capacity: u64,
    pub(crate) flush_every: Duration,
    pub(crate) max_group_events: usize,
    pub(crate) tail_events: usize,
    pub(crate) tail_bytes: usize,
    pub(crate) inline_appends: bool,
    /// Keeps the directory of [`SledConfig::temporary`] alive as long as a store uses it.
    pub(crate) temp: Option<Arc<tempfile::TempDir>>,
}

impl SledConfig {
    /// The default count bound of the live tail (see [`SledConfig::live_tail`]): a few
    /// seconds of a busy rollout, so a follower that falls briefly behind still reads memory.
    pub const DEFAULT_TAIL_EVENTS: usize = 8192;
    /// The default byte bound of the live tail: caps its memory when events are large (job
    /// documents), where the count alone would allow far more.
    pub const DEFAULT_TAIL_BYTES: usize = 32 * 1024 * 1024;

    /// A store in directory `path` (created if missing), with the defaults:
    /// [`Durability::FlushEveryBatch`], a 256 MiB page cache, sled's background flush every
    /// 500 ms, at most 10,000 events per group commit, and a live tail of the last
    /// [`SledConfig::DEFAULT_TAIL_EVENTS`] events within [`SledConfig::DEFAULT_TAIL_BYTES`],
    /// and inline appends on (see [`SledConfig::inline_appends`]).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            durability: Durability::FlushEveryBatch,
            cache_capacity: 256 * 1024 * 1024,
            flush_every: Duration::from_millis(500),
            max_group_events: 10_000,
            tail_events: Self::DEFAULT_TAIL_EVENTS,
            tail_bytes: Self::DEFAULT_TAIL_BYTES,
            inline_appends: true,
            temp: None,
        }
    }

    /// A store in a fresh temporary directory, removed when the last handle of the store is
    /// dropped. Meant for tests: it is flushed like any other store (sled's own `temporary`
    /// mode skips flushing, which would test a different code path).
    pub fn temporary() -> Result<Self, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("fleetops-sled-")
            .tempdir()
            .map_err(|e| StoreError::Backend {
                detail: format!("cannot create a temporary directory: {e}"),
            })?;
        let mut config = Self::new(dir.path());
        config.temp = Some(Arc::new(dir));
        Ok(config)
    }

    /// Sets the durability mode.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets sled's page cache size in bytes.
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = bytes;
        self
    }

    /// Sets the period of sled's background flush, which also `fsync`s the file (at least
    /// 1 ms). It is what makes [`Durability::Buffered`] durable, and it bounds what a power
    /// loss can take in [`Durability::FlushEveryBatch`] too.
    pub fn flush_every(mut self, period: Duration) -> Self {
        self.flush_every = period.max(Duration::from_millis(1));
        self
    }

    /// Caps how many events one group commit gathers before it is written (at least 1).
    /// A single append larger than the cap still goes through, alone in its group.
    pub fn max_group_events(mut self, events: usize) -> Self {
        self.max_group_events = events.max(1);
        self
    }

    /// Bounds the *live tail*: the last committed events, which the store keeps in memory
    /// so that subscriptions following the feed get new events without reading them back
    /// from sled. It holds at most `events` events and about `bytes` bytes (counted as each
    /// event's encoded size); the oldest are dropped first. A subscription whose next
    /// position is no longer in the tail (it fell behind, or it is catching up after an
    /// open) reads sled as before, so the bounds trade memory for how far behind a
    /// subscriber may be and still be served from memory, never correctness. `events == 0`
    /// (or `bytes == 0`) turns the tail off.
    pub fn live_tail(mut self, events: usize, bytes: usize) -> Self {
        self.tail_events = events;
        self.tail_bytes = bytes;
        self
    }

    /// Whether an append that finds the writer thread idle commits itself on the calling
    /// thread instead of handing over to the writer (on by default).
    ///
    /// The work is the same either way (checks, one sled `apply_batch`, publishing the head;
    /// about 20 µs of CPU for a small append), and so are the guarantees: the appender and
    /// the writer commit under one lock, so positions, versions and the feed are exactly as
    /// if the writer had done it. What it saves is the hand-off, two thread wake-ups that
    /// cost tens of microseconds each on a busy machine. The price: that sled work (and, on
    /// a page-cache miss, a sled read for a version or idempotency check) runs on the
    /// caller's thread, usually a tokio worker. Appends that meet a busy writer, or each
    /// other, still go through the writer and are grouped there. With `FlushEveryBatch` the
    /// caller's thread also syncs the write-ahead log (about 50–60 µs), unless the append
    /// came through `append_ordered`, which leaves the sync to the flusher thread.
    pub fn inline_appends(mut self, on: bool) -> Self {
        self.inline_appends = on;
        self
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
