//! # fleetops-store-memory
//!
//! [`MemoryStore`], the reference [`EventStore`]: every rule of the storage contract
//! (`fleetops_core::store`) implemented as plainly as possible, so that it serves as the model
//! the durable stores are compared with and as the store of unit tests and demos.
//!
//! What it really does, with no shortcut a durable store could not take:
//! - **optimistic concurrency**: every stream's [`ExpectedVersion`] is checked against the
//!   current version, and the check and the write happen under one lock, so of two racing
//!   appends with the same expectation exactly one wins;
//! - **atomic multi-stream batches**: all checks pass before anything is written, and readers
//!   take the same lock, so nobody sees part of a batch;
//! - **a gap-free global feed**: positions are the indexes of one append-only log;
//! - **idempotency keys**: remembered with the first batch's [`Appended`] under the same lock
//!   as the append, so concurrent duplicates store once;
//! - **live subscriptions**: a `tokio::sync::watch` channel carries the head position; a
//!   subscription reads from the log in pages and waits on the channel when it has caught up.
//!
//! The state sits behind a `std::sync::RwLock` that is never held across an `.await`: every
//! method does its work in one short critical section, then returns. Events are stored as
//! `Arc<StoredEvent>`, so a read holds the lock only long enough to copy pointers and clones
//! the events after releasing it.
//!
//! Nothing survives the process: the store lives as long as its last handle.
//!
//! ```
//! use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent};
//! # use fleetops_core::{Event, JobId, StreamId, ThingName, Timestamp};
//! use fleetops_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! # let (job, thing) = (JobId::parse("job-1")?, ThingName::parse("lamp-1")?);
//! # let queued = Event::ExecutionQueued { job_id: job.clone(), thing: thing.clone(),
//! #     execution_number: 1, queued_at: Timestamp::from_secs(1), in_progress_timeout: None };
//! let stream = StreamId::job_execution(&job, &thing);
//! let event = NewEvent::new(uuid::Uuid::now_v7(), queued, Timestamp::from_secs(1));
//! store.append(AppendBatch::single(stream.clone(), ExpectedVersion::NoStream, vec![event])).await?;
//! assert_eq!(store.stream_version(&stream).await?, Some(1));
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! None.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use async_trait::async_trait;
use fleetops_core::store::{
    snapshot_mismatch, AppendBatch, Appended, EventStore, ExpectedVersion, IdempotencyKey,
    Snapshot, StoreError, StoredEvent, Subscription,
};
use fleetops_core::StreamId;
use tokio::sync::watch;

/// How many events a subscription copies out of the log per lock acquisition while catching
/// up: large enough to make the lock cost negligible, small enough not to delay writers.
const SUBSCRIPTION_PAGE: usize = 512;

/// The reference in-memory [`EventStore`].
///
/// Cloning is cheap and yields another handle to the same store. The store and its contents
/// are dropped with the last handle; subscriptions do not keep it alive, and report
/// [`StoreError::Closed`] once it is gone.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

/// What every handle shares.
#[derive(Debug)]
struct Shared {
    state: RwLock<State>,
    /// The head position, for waking subscribers. Sent while the write lock is still held, so
    /// the value never runs behind the log as seen by a reader that took the lock later.
    head: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: RwLock::new(State::default()),
            head: watch::Sender::new(0),
        }
    }
}

/// The store's contents.
#[derive(Debug, Default)]
struct State {
    /// The global feed: the event at position `p` is `log[p - 1]`.
    log: Vec<Arc<StoredEvent>>,
    /// For each stream, the log index of each of its events: version `v` is `streams[s][v - 1]`.
    streams: HashMap<StreamId, Vec<usize>>,
    /// The result of every stored batch that carried a key.
    idempotency: HashMap<IdempotencyKey, Appended>,
    /// Saved snapshots by name.
    snapshots: HashMap<String, Snapshot>,
}

impl State {
    fn version(&self, stream: &StreamId) -> Option<u64> {
        self.streams.get(stream).map(|events| events.len() as u64)
    }

    /// Up to `limit` events of the log from position `from` (0 reads as 1).
    fn read_all(&self, from: u64, limit: usize) -> Vec<Arc<StoredEvent>> {
        let start = index_of(from);
        self.log
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take(limit)
            .cloned()
            .collect()
    }
}

/// The 0-based index of the 1-based `n` (0 reads as 1); saturates where `usize` is narrower,
/// which only makes a read past the end return nothing.
fn index_of(n: u64) -> usize {
    usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX)
}

/// The guard of a poisoned lock would expose state a panicking writer left half-updated;
/// report it as a failed backend instead of serving it.
fn poisoned<T>(_: PoisonError<T>) -> StoreError {
    StoreError::Backend {
        detail: "memory store state lock poisoned by a panicking thread".into(),
    }
}

impl Shared {
    fn read(&self) -> Result<RwLockReadGuard<'_, State>, StoreError> {
        self.state.read().map_err(poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, State>, StoreError> {
        self.state.write().map_err(poisoned)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of stored events (the head position).
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.shared.read()?.log.len() as u64)
    }

    /// Whether no event was stored yet.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// The synchronous core of [`EventStore::append`]. The write lock is held only for the
    /// checks and a few pointer pushes per event; the envelopes are built before it is taken.
    fn append_sync(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        batch.validate()?;
        let AppendBatch {
            streams,
            idempotency_key,
        } = batch;

        // Build every envelope outside the lock; stream versions and positions are the only
        // fields that depend on the state and are filled in under it.
        let mut prepared: Vec<(StreamId, ExpectedVersion, Vec<StoredEvent>)> =
            Vec::with_capacity(streams.len());
        for part in streams {
            let events = part
                .events
                .into_iter()
                .map(|new| StoredEvent {
                    event_id: new.event_id,
                    stream: part.stream.clone(),
                    stream_version: 0,
                    position: 0,
                    recorded_at: new.recorded_at,
                    schema_version: new.event.schema_version(),
                    correlation_id: new.correlation_id,
                    causation_id: new.causation_id,
                    idempotency_key: idempotency_key.clone(),
                    event: new.event,
                })
                .collect();
            prepared.push((part.stream, part.expected, events));
        }

        let mut state = self.shared.write()?;
        // The key answers before the expectations: a retried `NoStream` append must get its
        // first result, not a conflict caused by its own first success.
        if let Some(first) = idempotency_key
            .as_ref()
            .and_then(|key| state.idempotency.get(key))
        {
            return Ok(first.clone());
        }
        for (stream, expected, _) in &prepared {
            let actual = state.version(stream);
            if !expected.admits(actual) {
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected: *expected,
                    actual,
                });
            }
        }

        // Every check passed; nothing below can fail, so the batch is stored whole.
        let first_position = state.log.len() as u64 + 1;
        let mut versions = Vec::with_capacity(prepared.len());
        for (stream, _, events) in prepared {
            let start = state.log.len();
            let count = events.len();
            let base = state.version(&stream).unwrap_or(0);
            for (i, mut event) in events.into_iter().enumerate() {
                event.stream_version = base + i as u64 + 1;
                event.position = (start + i) as u64 + 1;
                state.log.push(Arc::new(event));
            }
            let indexes = start..start + count;
            // Look up before inserting so an existing stream's id is not cloned again.
            match state.streams.get_mut(&stream) {
                Some(index) => index.extend(indexes),
                None => {
                    state.streams.insert(stream.clone(), indexes.collect());
                }
            }
            versions.push((stream, base + count as u64));
        }
        let last_position = state.log.len() as u64;
        let appended = Appended {
            first_position,
            last_position,
            versions,
        };
        if let Some(key) = idempotency_key {
            state.idempotency.insert(key, appended.clone());
        }
        // Still under the lock: a subscriber that sees this value finds the events in the log.
        self.shared.head.send_replace(last_position);
        Ok(appended)
    }

    /// The synchronous core of [`EventStore::read_stream`].
    fn read_stream_sync(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let shared: Vec<Arc<StoredEvent>> = {
            let state = self.shared.read()?;
            let Some(indexes) = state.streams.get(stream) else {
                return Ok(Vec::new());
            };
            let wanted = indexes.get(index_of(from)..).unwrap_or_default();
            let mut events = Vec::with_capacity(wanted.len().min(limit));
            for &i in wanted.iter().take(limit) {
                // Unreachable while `append_sync` is the only writer; reported, not panicked.
                let event = state.log.get(i).ok_or_else(|| StoreError::Corrupt {
                    location: format!("stream {stream}"),
                    detail: format!("index points at log entry {i} past the end"),
                })?;
                events.push(Arc::clone(event));
            }
            events
        };
        Ok(shared.iter().map(|e| StoredEvent::clone(e)).collect())
    }

    /// The synchronous core of [`EventStore::read_all`].
    fn read_all_sync(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let shared = self.shared.read()?.read_all(from, limit);
        Ok(shared.iter().map(|e| StoredEvent::clone(e)).collect())
    }

    /// The synchronous core of [`EventStore::stream_version`].
    fn stream_version_sync(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        Ok(self.shared.read()?.version(stream))
    }

    /// A live subscription from position `from` (0 reads as 1).
    pub fn subscribe_from(&self, from: u64) -> MemorySubscription {
        MemorySubscription {
            shared: Arc::downgrade(&self.shared),
            head: self.shared.head.subscribe(),
            next: from.max(1),
            buffer: VecDeque::new(),
        }
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        self.append_sync(batch)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_stream_sync(stream, from, limit)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.stream_version_sync(stream)
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_all_sync(from, limit)
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.len()
    }

    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        Ok(Box::new(self.subscribe_from(from)))
    }

    /// A snapshot that no longer matches the history is deleted and not returned (this
    /// cannot happen to one saved here, as saves are checked and the history only grows;
    /// the check keeps the port's contract all the same).
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(snapshot) = self.shared.read()?.snapshots.get(name).cloned() else {
            return Ok(None);
        };
        if snapshot_mismatch(self, &snapshot).await?.is_some() {
            self.shared.write()?.snapshots.remove(name);
            return Ok(None);
        }
        Ok(Some(snapshot))
    }

    /// Kept for the store's life, like its events; refused past the head or keyed to
    /// another event than the one at its position, as the port asks. Memory has no
    /// durability to order.
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        if let Some(reason) = snapshot_mismatch(self, &snapshot).await? {
            return Err(StoreError::InvalidBatch { reason });
        }
        self.shared
            .write()?
            .snapshots
            .insert(name.to_owned(), snapshot);
        Ok(())
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        self.shared.write()?.snapshots.remove(name);
        Ok(())
    }
}

/// A live feed of a [`MemoryStore`] from a position on: stored events first, then new ones as
/// they are appended.
///
/// It holds no lock between calls and only a weak reference to the store: once every
/// [`MemoryStore`] handle is dropped, [`Subscription::next`] returns [`StoreError::Closed`]
/// (after the events it had already copied out).
///
/// `next` is cancel-safe: dropping its future (in a `select!` or on a timeout) loses no event.
#[derive(Debug)]
pub struct MemorySubscription {
    shared: Weak<Shared>,
    /// Wakes the subscription when the head moves.
    head: watch::Receiver<u64>,
    /// The position of the next event to fetch from the log.
    next: u64,
    /// Events fetched but not yet delivered, in order.
    buffer: VecDeque<Arc<StoredEvent>>,
}

impl MemorySubscription {
    /// The position of the next event this subscription will deliver.
    pub fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |e| e.position)
    }

    /// Copies the next page of events into the buffer; `false` when there is none yet.
    fn fetch(&mut self) -> Result<bool, StoreError> {
        let shared = self.shared.upgrade().ok_or(StoreError::Closed)?;
        let page = shared.read()?.read_all(self.next, SUBSCRIPTION_PAGE);
        // Drop the strong reference at once so the subscription never keeps the store alive.
        drop(shared);
        let Some(last) = page.last() else {
            return Ok(false);
        };
        self.next = last.position + 1;
        self.buffer.extend(page);
        Ok(true)
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(StoredEvent::clone(&event));
            }
            // Mark the current head as seen before looking at the log: an append that lands
            // after this line changes the value again, so `changed` below cannot miss it.
            self.head.borrow_and_update();
            if self.fetch()? {
                continue;
            }
            // The sender lives in the store; an error means the last handle is gone.
            self.head.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration as StdDuration;

    use fleetops_core::store::NewEvent;
    use fleetops_core::{Event, Timestamp};
    use uuid::Uuid;

    use super::*;

    fn event(n: u128) -> NewEvent {
        NewEvent::new(
            Uuid::from_u128(n),
            Event::CommandTimedOut {
                at: Timestamp::from_millis(n as u64),
            },
            Timestamp::from_millis(n as u64),
        )
    }

    fn stream(name: &str) -> StreamId {
        StreamId::custom(name).expect("valid test stream")
    }

    #[test]
    fn clones_share_one_store() {
        let a = MemoryStore::new();
        let b = a.clone();
        a.append_sync(AppendBatch::single(
            stream("s"),
            ExpectedVersion::NoStream,
            vec![event(1)],
        ))
        .expect("append");
        assert_eq!(b.len(), Ok(1));
        assert_eq!(b.is_empty(), Ok(false));
        assert_eq!(b.stream_version_sync(&stream("s")), Ok(Some(1)));
    }

    #[tokio::test]
    async fn subscription_reports_closed_once_the_store_is_gone() {
        let store = MemoryStore::new();
        store
            .append_sync(AppendBatch::single(
                stream("s"),
                ExpectedVersion::Any,
                vec![event(1)],
            ))
            .expect("append");
        let mut sub = store.subscribe_from(1);
        assert_eq!(sub.next().await.map(|e| e.position), Ok(1));
        assert_eq!(sub.position(), 2);
        drop(store);
        assert_eq!(sub.next().await, Err(StoreError::Closed));
    }

    #[tokio::test]
    async fn waiting_subscription_wakes_with_closed_when_the_store_is_dropped() {
        let store = MemoryStore::new();
        let mut sub = store.subscribe_from(1);
        let waiting = tokio::spawn(async move { sub.next().await });
        tokio::time::sleep(StdDuration::from_millis(20)).await;
        drop(store);
        let got = tokio::time::timeout(StdDuration::from_secs(5), waiting)
            .await
            .expect("the subscription must wake up")
            .expect("task");
        assert_eq!(got, Err(StoreError::Closed));
    }

    #[tokio::test]
    async fn cancelled_next_loses_nothing() {
        let store = MemoryStore::new();
        let mut sub = store.subscribe_from(0);
        // Time out a wait on an empty store, then append: the event must still arrive.
        let idle = tokio::time::timeout(StdDuration::from_millis(10), sub.next()).await;
        assert!(idle.is_err(), "nothing to deliver yet");
        store
            .append_sync(AppendBatch::single(
                stream("s"),
                ExpectedVersion::Any,
                vec![event(7)],
            ))
            .expect("append");
        let got = tokio::time::timeout(StdDuration::from_secs(5), sub.next())
            .await
            .expect("woken")
            .expect("event");
        assert_eq!((got.position, got.event_id), (1, Uuid::from_u128(7)));
    }
}
