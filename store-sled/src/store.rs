//! [`SledStore`]: opening, the read paths and the [`EventStore`] implementation.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    snapshot_mismatch, AppendBatch, Appended, EventStore, Snapshot, StoreError, StoredEvent,
    Subscription,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec;
use crate::config::{Durability, SledConfig};
use crate::guard::{blocking, guarded, panic_message, sled_error};
use crate::prepare::prepare;
use crate::projection::{Projection, ProjectionError};
use crate::shared::Shared;
use crate::tail::Tail;
use crate::writer::{append_inline, Request, Writer};

/// The name of the sled tree that holds the store.
pub(crate) const TREE_NAME: &str = "fleetops/v1";
/// Requests that may wait for the writer before appenders are held back.
const QUEUE_CAPACITY: usize = 8192;
/// Events a subscription reads ahead per trip to sled (large enough to decode in parallel
/// while catching up; when following live it reads whatever is new).
const SUBSCRIPTION_CHUNK: usize = 4096;
/// Reads of at least this many events are split over several threads.
const PARALLEL_DECODE_MIN: u64 = 2048;
/// Most threads one read is split over.
const MAX_DECODE_THREADS: usize = 4;
/// Most events one read allocates room for up front, whatever `limit` says.
const MAX_PREALLOCATED: usize = 16 * 1024;

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

/// The parts of an open store; dropped when the last [`SledStore`] clone, [`Projection`] or
/// subscription is gone.
pub(crate) struct Inner {
    /// `None` only while dropping.
    tree: Option<sled::Tree>,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    pub(crate) shared: Arc<Shared>,
    path: PathBuf,
    durability: Durability,
    /// Whether appends may commit on the caller's thread (`Buffered` and
    /// `SledConfig::inline_appends`).
    inline: bool,
    /// Declared last so a temporary directory is removed after sled has closed.
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Inner {
    pub(crate) fn tree(&self) -> Result<&sled::Tree, StoreError> {
        self.tree.as_ref().ok_or(StoreError::Closed)
    }

    /// Hands a request to the writer thread.
    pub(crate) async fn submit(&self, req: Request) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        // Counted before it is sent (the writer may handle it at once and uncount it), and
        // uncounted here if it never is: refused, or the caller dropped this future while
        // the queue was full. Once sent, the writer uncounts it when it is handled.
        let counted = Pending::count(&self.shared.pending);
        tx.send(req).await.map_err(|_| StoreError::Closed)?;
        counted.handed_over();
        Ok(())
    }
}

/// One request counted in `Shared::pending` until it reaches the writer thread.
struct Pending<'a>(Option<&'a AtomicUsize>);

impl<'a> Pending<'a> {
    fn count(pending: &'a AtomicUsize) -> Self {
        pending.fetch_add(1, Ordering::AcqRel);
        Self(Some(pending))
    }

    /// The writer has the request: it uncounts it.
    fn handed_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.0 {
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers are gone (they hold an `Arc<Inner>`). Drop our tree handle, then close the
        // channel: the writer drains it, flushes, and drops the last sled handle on its own
        // thread, so sled closes there rather than on whatever thread drops the store.
        self.tree = None;
        self.tx = None;
        let handle = self.writer.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the sled writer thread panicked");
            }
        }
        wait_for_release(&self.path);
    }
}

/// Waits (at most a second) until no one holds sled's lock on the database file.
///
/// sled 0.34 hands log writes and file truncations to its own I/O thread pool, whose tasks
/// keep the file open for a moment after the last `Db` handle is dropped. Without this wait a
/// store reopened right after being dropped (a restart in the same process, a test) can find
/// the file still locked.
fn wait_for_release(path: &Path) {
    use fs2::FileExt;
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                return;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => {
                tracing::warn!(error = %e, "sled still holds the database file after closing");
                return;
            }
        }
    }
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
        let (db, tree, head) = guarded(&format!("opening {}", path.display()), || {
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
            check_format(&tree)?;
            let head = recover_head(&tree)?;
            repair_last(&tree, head)?;
            Ok((db, tree, head))
        })?;

        let shared = Arc::new(Shared::new(
            head,
            Tail::new(config.tail_events, config.tail_bytes),
        ));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer::new(db, tree.clone(), Arc::clone(&shared), &config);
        let handle = std::thread::Builder::new()
            .name("fleetops-sled-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend {
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                tree: Some(tree),
                tx: Some(tx),
                writer: Mutex::new(Some(handle)),
                shared,
                path,
                durability: config.durability,
                inline: config.inline_appends && config.durability == Durability::Buffered,
                _temp: config.temp,
            }),
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

    /// A handle on the projection `name` (1–64 characters of `[a-zA-Z0-9_.-]`); see
    /// [`Projection`]. Projections need no creation: one never written is empty at
    /// checkpoint 0.
    pub fn projection(&self, name: &str) -> Result<Projection, ProjectionError> {
        Projection::new(Arc::clone(&self.inner), name)
    }
}

/// Refuses a database written by an unknown layout; stamps a new one.
fn check_format(tree: &sled::Tree) -> Result<(), StoreError> {
    match tree.get(codec::FORMAT_KEY).map_err(sled_error)? {
        Some(v) if v.as_ref() == codec::FORMAT_MARKER => Ok(()),
        Some(v) => Err(StoreError::Backend {
            detail: format!(
                "unsupported store format {:?}, this build reads {:?}",
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(codec::FORMAT_MARKER)
            ),
        }),
        None => {
            if let Some(first) = tree.first().map_err(sled_error)? {
                return Err(StoreError::Corrupt {
                    location: "store metadata".into(),
                    detail: format!(
                        "format marker missing from a non-empty store (first key {})",
                        codec::show_key(&first.0)
                    ),
                });
            }
            tree.insert(codec::FORMAT_KEY, codec::FORMAT_MARKER)
                .map_err(sled_error)?;
            tree.flush().map_err(sled_error)?;
            Ok(())
        }
    }
}

/// The last stored position, from the last `E` key; checks the feed starts at 1.
fn recover_head(tree: &sled::Tree) -> Result<u64, StoreError> {
    let events = || tree.range(codec::event_key(0)..=codec::event_key(u64::MAX));
    let Some(last) = events().next_back() else {
        return Ok(0);
    };
    let head = codec::event_key_position(&last.map_err(sled_error)?.0)?;
    let first = match events().next() {
        Some(item) => codec::event_key_position(&item.map_err(sled_error)?.0)?,
        None => head,
    };
    if first != 1 {
        return Err(StoreError::Corrupt {
            location: "event at position 1".into(),
            detail: format!("the feed starts at position {first}"),
        });
    }
    Ok(head)
}

/// Restores what a crash may have cut off after the last event: single-event appends are
/// written key by key — the event, then its run, then its idempotency entry (see
/// `Committer::apply` in the writer) — and sled recovers a prefix of its log, so only the
/// last event can lack the entries written after it. Both are derived from the event record
/// itself. Anything else that does not fit is reported as corrupt, never guessed at.
pub(crate) fn repair_last(tree: &sled::Tree, head: u64) -> Result<bool, StoreError> {
    if head == 0 {
        return Ok(false);
    }
    let key = codec::event_key(head);
    let value = tree
        .get(key)
        .map_err(sled_error)?
        .ok_or_else(|| missing(head))?;
    let event = codec::decode_event(head, &key, &value)?;
    let prefix = codec::run_prefix(&event.stream);
    let last_version = match tree.scan_prefix(&prefix).next_back() {
        None => 0,
        Some(item) => {
            let (k, v) = item.map_err(sled_error)?;
            codec::decode_run(&prefix, &k, &v)?.last_version()
        }
    };
    let mut repaired = false;
    if last_version < event.stream_version {
        if last_version + 1 != event.stream_version {
            return Err(StoreError::Corrupt {
                location: format!("event at position {head}"),
                detail: format!(
                    "version {} of stream {} follows version {last_version}",
                    event.stream_version, event.stream
                ),
            });
        }
        let run_key = codec::run_key(&prefix, event.stream_version);
        let run = codec::encode_run(&run_key, head, 1);
        tree.insert(run_key, run).map_err(sled_error)?;
        repaired = true;
    }
    if let Some(idem) = &event.idempotency_key {
        let k = codec::idem_key(idem);
        if tree.get(&k).map_err(sled_error)?.is_none() {
            let appended = fleetops_core::store::Appended {
                first_position: head,
                last_position: head,
                versions: vec![(event.stream.clone(), event.stream_version)],
            };
            let v = codec::encode_appended(&k, &appended);
            tree.insert(k, v).map_err(sled_error)?;
            repaired = true;
        }
    }
    if repaired {
        tracing::warn!(
            position = head,
            stream = %event.stream,
            "restored the index entries of the last event, cut off by a crash"
        );
        tree.flush().map_err(sled_error)?;
    }
    Ok(repaired)
}

fn missing(position: u64) -> StoreError {
    StoreError::Corrupt {
        location: format!("event at position {position}"),
        detail: "missing from the feed".into(),
    }
}

/// Events `from..=to` of the feed, checked to be all there.
///
/// Decoding (JSON, mostly) costs more than reading the records from sled, so a large range is
/// split into a few consecutive sub-ranges, each scanned and decoded by its own scoped thread
/// (sled serves concurrent readers without locking). Errors name the first bad position in
/// feed order either way.
fn read_positions(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    static THREADS: OnceLock<u64> = OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODE_THREADS) as u64)
    });
    let count = to - from + 1;
    if threads <= 1 || count < PARALLEL_DECODE_MIN {
        return read_range(tree, from, to, out);
    }
    let per_thread = count.div_ceil(threads);
    let ranges: Vec<(u64, u64)> = (0..threads)
        .map(|i| {
            (
                from + i * per_thread,
                to.min(from + (i + 1) * per_thread - 1),
            )
        })
        .filter(|(lo, hi)| lo <= hi)
        .collect();
    let results: Vec<Result<Vec<StoredEvent>, StoreError>> = std::thread::scope(|s| {
        let helpers: Vec<_> = ranges[1..]
            .iter()
            .map(|&(lo, hi)| {
                s.spawn(move || {
                    let mut v = Vec::new();
                    read_range(tree, lo, hi, &mut v).map(|()| v)
                })
            })
            .collect();
        let (lo, hi) = ranges[0];
        let mut first = Vec::new();
        let mut results = vec![read_range(tree, lo, hi, &mut first).map(|()| first)];
        for h in helpers {
            results.push(h.join().unwrap_or_else(|panic| {
                Err(StoreError::Corrupt {
                    location: format!("feed from position {from}"),
                    detail: format!("reader panicked: {}", panic_message(&*panic)),
                })
            }));
        }
        results
    });
    out.reserve(
        usize::try_from(count)
            .unwrap_or(0)
            .min(MAX_PREALLOCATED * 8),
    );
    for r in results {
        out.extend(r?);
    }
    Ok(())
}

/// Events `from..=to`, scanned and decoded on this thread.
fn read_range(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    let mut expect = from;
    let mut last_stream = None;
    out.reserve(
        usize::try_from(to - from + 1).map_or(MAX_PREALLOCATED, |n| n.min(MAX_PREALLOCATED)),
    );
    for item in tree.range(codec::event_key(from)..=codec::event_key(to)) {
        let (k, v) = item.map_err(sled_error)?;
        let pos = codec::event_key_position(&k)?;
        if pos != expect {
            return Err(missing(expect));
        }
        out.push(codec::decode_event_cached(pos, &k, &v, &mut last_stream)?);
        expect += 1;
    }
    if expect <= to {
        return Err(missing(expect));
    }
    Ok(())
}

pub(crate) fn read_all_blocking(
    inner: &Inner,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let head = inner.shared.head();
    let from = from.max(1);
    if limit == 0 || from > head {
        return Ok(Vec::new());
    }
    let to = head.min(from.saturating_add(limit as u64 - 1));
    let mut out = Vec::with_capacity(((to - from + 1) as usize).min(MAX_PREALLOCATED));
    read_positions(inner.tree()?, from, to, &mut out)?;
    Ok(out)
}

fn read_stream_blocking(
    inner: &Inner,
    stream: &StreamId,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let tree = inner.tree()?;
    let head = inner.shared.head();
    let from = from.max(1);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let prefix = codec::run_prefix(stream);
    // Start at the last run that begins at or before `from`, or at the stream's first run.
    let start = match tree
        .range(prefix.clone()..=codec::run_key(&prefix, from))
        .next_back()
    {
        Some(item) => item.map_err(sled_error)?.0.to_vec(),
        None => prefix.clone(),
    };
    let mut next_version = if start == prefix { Some(1) } else { None };
    for item in tree.range(start..) {
        let (k, v) = item.map_err(sled_error)?;
        if !k.starts_with(&prefix) {
            break;
        }
        let run = codec::decode_run(&prefix, &k, &v)?;
        if run.first_position > head {
            break; // staged by a group that is not visible yet
        }
        let location = || format!("stream {stream} at version {}", run.first_version);
        if run.last_position() > head {
            return Err(StoreError::Corrupt {
                location: location(),
                detail: "a run straddles the feed head".into(),
            });
        }
        if let Some(expected) = next_version {
            if run.first_version != expected {
                return Err(StoreError::Corrupt {
                    location: location(),
                    detail: format!("versions jump from {expected} to {}", run.first_version),
                });
            }
        }
        next_version = Some(run.last_version() + 1);
        if run.last_version() < from {
            continue;
        }
        let first_v = from.max(run.first_version);
        let lo = run.first_position + (first_v - run.first_version);
        let room = (limit - out.len()) as u64;
        let hi = run.last_position().min(lo.saturating_add(room - 1));
        let before = out.len();
        read_positions(tree, lo, hi, &mut out)?;
        for (i, e) in out[before..].iter().enumerate() {
            if &e.stream != stream || e.stream_version != first_v + i as u64 {
                return Err(StoreError::Corrupt {
                    location: format!("event at position {}", e.position),
                    detail: format!(
                        "the index of stream {stream} expects version {} here, the record is \
                         {} version {}",
                        first_v + i as u64,
                        e.stream,
                        e.stream_version
                    ),
                });
            }
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

fn stream_version_blocking(inner: &Inner, stream: &StreamId) -> Result<Option<u64>, StoreError> {
    let tree = inner.tree()?;
    let head = inner.shared.head();
    let prefix = codec::run_prefix(stream);
    for item in tree.scan_prefix(&prefix).rev() {
        let (k, v) = item.map_err(sled_error)?;
        let run = codec::decode_run(&prefix, &k, &v)?;
        if run.first_position <= head {
            return Ok(Some(run.last_version()));
        }
    }
    Ok(None)
}

#[async_trait]
impl EventStore for SledStore {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let mut batch = prepare(batch, self.inner.shared.tail.enabled())?;
        if self.inner.inline {
            // An idle writer: commit here, without the two thread hand-offs (see
            // `writer::append_inline`; never across an `.await`).
            batch = match append_inline(self.inner.tree()?, &self.inner.shared, batch) {
                Ok(result) => return result,
                Err(batch) => batch,
            };
        }
        let (reply, rx) = oneshot::channel();
        self.inner.submit(Request::Append { batch, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        let mut head_rx = self.inner.shared.watch_head();
        head_rx.mark_changed();
        Ok(Box::new(SledSubscription {
            inner: Arc::clone(&self.inner),
            next: from.max(1),
            buffer: VecDeque::new(),
            head_rx,
            careful: false,
        }))
    }
}

/// A subscription: takes the feed by position, from the live tail when it holds the next
/// position and from sled in chunks otherwise, then waits for the head to move.
///
/// Events are pulled by position, never pushed through a channel, so a slow subscriber
/// cannot lag out or skip: it simply reads further behind (from sled once the tail has moved
/// on), and catching up after a restart is the same code path as following live.
struct SledSubscription {
    inner: Arc<Inner>,
    next: u64,
    /// Shared with the tail when they came from it; unwrapped (or cloned) when delivered.
    buffer: VecDeque<Arc<StoredEvent>>,
    head_rx: watch::Receiver<u64>,
    /// Set after a chunk failed to read: from then on events are read one by one.
    careful: bool,
}

#[async_trait]
impl Subscription for SledSubscription {
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(Arc::unwrap_or_clone(e));
            }
            // Mark the current value seen before reading, so a head published during the
            // read still wakes `changed` below.
            let _ = self.head_rx.borrow_and_update();
            let head = self.inner.shared.head();
            if self.next <= head {
                let from = self.next;
                // Memory first: the tail holds everything up to `head` from its first
                // position on (it is filled before the head moves), and is never read past
                // `head`. It does not hold `from` when we are behind it: then read sled.
                let to = head.min(from.saturating_add(SUBSCRIPTION_CHUNK as u64 - 1));
                let taken = self.inner.shared.tail.read(from, to, &mut self.buffer);
                if taken > 0 {
                    self.next = from + taken as u64;
                    let stats = &self.inner.shared.stats;
                    stats.from_tail.fetch_add(taken as u64, Ordering::Relaxed);
                    continue;
                }
                let chunk = if self.careful { 1 } else { SUBSCRIPTION_CHUNK };
                let read = blocking(&self.inner, "subscription", move |inner| {
                    read_all_blocking(inner, from, chunk)
                })
                .await;
                let events = match read {
                    Ok(events) => events,
                    // Deliver every good event before the damaged one: read one at a time
                    // from here, so the error surfaces exactly at the damaged position.
                    Err(_) if chunk > 1 => {
                        self.careful = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match events.last() {
                    Some(last) => self.next = last.position + 1,
                    None => return Err(missing(from)),
                }
                let stats = &self.inner.shared.stats;
                stats
                    .from_sled
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                self.buffer.extend(events.into_iter().map(Arc::new));
                continue;
            }
            if let Some(reason) = self.inner.shared.failure() {
                return Err(StoreError::Backend {
                    detail: format!("the store failed and must be reopened: {reason}"),
                });
            }
            if self.head_rx.changed().await.is_err() {
                return Err(StoreError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod repair_tests {
    use fleetops_core::event::Event;
    use fleetops_core::store::{
        AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, NewEvent,
    };
    use fleetops_core::time::Timestamp;
    use fleetops_core::StreamId;

    use super::*;

    fn event(n: u64) -> NewEvent {
        NewEvent::new(
            uuid::Uuid::from_u128(u128::from(n) + 1),
            Event::CommandCanceled {
                at: Timestamp::from_millis(n),
                reason: Some(format!("e{n}")),
            },
            Timestamp::from_millis(n),
        )
    }

    async fn open(dir: &Path, durability: Durability) -> SledStore {
        SledStore::open_async(SledConfig::new(dir).durability(durability))
            .await
            .expect("open")
    }

    /// A crash between the last event and the entries written after it (simulated by
    /// removing them from sled): reopening restores them, so versions, reads and the
    /// idempotent retry are as if the append had been whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_crash_cut_off_after_the_last_event_is_restored_at_open() {
        for durability in [Durability::FlushEveryBatch, Durability::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let a = StreamId::custom("a").unwrap();
            let key = IdempotencyKey("the-last-append".into());
            let last = {
                let store = open(dir.path(), durability).await;
                let single = |v, n| AppendBatch::single(a.clone(), v, vec![event(n)]);
                store
                    .append(single(ExpectedVersion::NoStream, 1))
                    .await
                    .unwrap();
                let last = store
                    .append(single(ExpectedVersion::Exact(1), 2).idempotent(key.clone()))
                    .await
                    .unwrap();
                store.flush().await.unwrap();
                last
            };
            {
                let db = sled::Config::new().path(dir.path()).open().unwrap();
                let tree = db.open_tree(TREE_NAME).unwrap();
                let prefix = codec::run_prefix(&a);
                assert!(tree.remove(codec::run_key(&prefix, 2)).unwrap().is_some());
                assert!(tree.remove(codec::idem_key(&key)).unwrap().is_some());
                db.flush().unwrap();
            }

            let store = open(dir.path(), durability).await;
            assert_eq!(store.stream_version(&a).await.unwrap(), Some(2));
            let read: Vec<(u64, u64)> = store
                .read_stream(&a, 1, 10)
                .await
                .unwrap()
                .iter()
                .map(|e| (e.stream_version, e.position))
                .collect();
            assert_eq!(read, vec![(1, 1), (2, 2)]);
            // The retry answers with the first result and stores nothing.
            let again = store
                .append(
                    AppendBatch::single(a.clone(), ExpectedVersion::Exact(1), vec![event(3)])
                        .idempotent(key.clone()),
                )
                .await
                .unwrap();
            assert_eq!(again, last);
            assert_eq!(store.head_position().await.unwrap(), 2);
            // The stream goes on at version 3.
            let next = store
                .append(AppendBatch::single(
                    a.clone(),
                    ExpectedVersion::Exact(2),
                    vec![event(4)],
                ))
                .await
                .unwrap();
            assert_eq!((next.first_position, next.versions[0].1), (3, 3));
        }
    }
}
