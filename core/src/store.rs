//! The `EventStore` port: what every storage backend provides.
//!
//! The contract, which the conformance suite in `testkit` checks for every backend:
//! - **Streams** are numbered from version 1; a stream that was never written has no version.
//! - **Append** takes a batch spanning one or more streams, each with its own
//!   [`ExpectedVersion`]. The batch is atomic: every event is stored or none is. A version
//!   mismatch on any stream fails the whole batch with [`StoreError::Conflict`].
//! - **Global feed**: every stored event gets the next global position, from 1, with no gaps;
//!   the events of one batch get consecutive positions in batch order.
//! - **Idempotency**: a batch with an [`IdempotencyKey`] already used returns the first batch's
//!   [`Appended`] and stores nothing.
//! - **Subscriptions** deliver every event from a position on, first the stored ones, then the
//!   new ones as they are appended, in order, none skipped or repeated.
//! - **Corrupt records** are reported as [`StoreError::Corrupt`], never a panic.
//!
//! Finer points the suite also pins down:
//! - reads take `from` 0 as 1, and `limit` 0 returns nothing;
//! - an idempotency key is looked up before any version expectation, so a retried
//!   `NoStream` batch gets its first result rather than a conflict;
//! - a batch that fails (conflict or invalid shape) stores nothing, consumes no position and
//!   does not use up its key;
//! - readers never see part of a batch, nor a position before every lower one is visible;
//! - keys are remembered for the store's life (a store may document a retention limit).

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;
use crate::ids::StreamId;
use crate::time::Timestamp;

/// What a stream's version must be for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` (`None`: no stream) passes.
    pub const fn admits(self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (Self::Any, _) => true,
            (Self::NoStream, None) => true,
            (Self::Exact(n), Some(v)) => n == v,
            _ => false,
        }
    }

    /// The expectation that matches a stream currently at `version` (`None`: no stream).
    pub const fn from_current(version: Option<u64>) -> Self {
        match version {
            None => Self::NoStream,
            Some(v) => Self::Exact(v),
        }
    }
}

/// A key that makes an append happen at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(pub String);

/// An event to append, with the metadata its envelope will carry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// A UUIDv7 chosen by the caller (the core never makes ids).
    pub event_id: Uuid,
    /// The fact.
    pub event: Event,
    /// The `now` of the decision that produced the event.
    pub recorded_at: Timestamp,
    /// The request or flow this event belongs to.
    pub correlation_id: Option<Uuid>,
    /// The event or message that caused this one.
    pub causation_id: Option<Uuid>,
}

impl NewEvent {
    /// An event without correlation or causation.
    pub fn new(event_id: Uuid, event: Event, recorded_at: Timestamp) -> Self {
        Self {
            event_id,
            event,
            recorded_at,
            correlation_id: None,
            causation_id: None,
        }
    }
}

/// The events for one stream within a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version check.
    pub expected: ExpectedVersion,
    /// At least one event.
    pub events: Vec<NewEvent>,
}

/// An atomic append over one or more distinct streams.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AppendBatch {
    /// The streams, each named once.
    pub streams: Vec<StreamAppend>,
    /// Makes a retried append a no-op.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl AppendBatch {
    /// A batch for a single stream.
    pub fn single(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            streams: vec![StreamAppend {
                stream,
                expected,
                events,
            }],
            idempotency_key: None,
        }
    }

    /// Adds the events of another stream.
    pub fn with(
        mut self,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.streams.push(StreamAppend {
            stream,
            expected,
            events,
        });
        self
    }

    /// Sets the idempotency key.
    pub fn idempotent(mut self, key: IdempotencyKey) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Total number of events.
    pub fn len(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the shape every store refuses: no stream, an empty stream entry, a stream twice.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.streams.is_empty() {
            return Err(StoreError::InvalidBatch {
                reason: "no streams".into(),
            });
        }
        for (i, s) in self.streams.iter().enumerate() {
            if s.events.is_empty() {
                return Err(StoreError::InvalidBatch {
                    reason: format!("stream {} has no events", s.stream),
                });
            }
            if self.streams[..i].iter().any(|o| o.stream == s.stream) {
                return Err(StoreError::InvalidBatch {
                    reason: format!("stream {} appears twice", s.stream),
                });
            }
        }
        Ok(())
    }
}

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Global position of the batch's first event.
    pub first_position: u64,
    /// Global position of the batch's last event.
    pub last_position: u64,
    /// Each stream's version after the append, in batch order.
    pub versions: Vec<(StreamId, u64)>,
}

/// An append whose place in the feed is decided (checked and ordered after everything
/// appended before it) and which is durable or on its way to being durable: what
/// [`EventStore::append_ordered`] returns.
///
/// Its events cannot be refused any more and nothing appended later is ordered before them,
/// but until [`OrderedAppend::durable`] returns they may still be lost to a crash: nothing
/// may be acknowledged on their account before that (readers and subscriptions do not see
/// them either). What it allows is starting work whose outcome waits for the store anyway,
/// such as publishing a request whose answer is appended after it.
pub struct OrderedAppend {
    appended: Appended,
    durable: Option<Durable>,
}

/// What [`OrderedAppend`] awaits before the append is durable.
type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

impl std::fmt::Debug for OrderedAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderedAppend")
            .field("appended", &self.appended)
            .field("sync_pending", &self.durable.is_some())
            .finish()
    }
}

impl OrderedAppend {
    /// An append that is already durable.
    pub fn stored(appended: Appended) -> Self {
        Self {
            appended,
            durable: None,
        }
    }

    /// An append that is durable once `durable` resolves `Ok`.
    pub fn pending(
        appended: Appended,
        durable: impl Future<Output = Result<(), StoreError>> + Send + 'static,
    ) -> Self {
        Self {
            appended,
            durable: Some(Box::pin(durable)),
        }
    }

    /// Where the events landed.
    pub fn appended(&self) -> &Appended {
        &self.appended
    }

    /// Waits until the append is durable; an error means it may or may not be stored (the
    /// store has failed).
    pub async fn durable(self) -> Result<Appended, StoreError> {
        if let Some(durable) = self.durable {
            durable.await?;
        }
        Ok(self.appended)
    }
}

/// A stored event with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// UUIDv7 given by the appender.
    pub event_id: Uuid,
    /// The stream.
    pub stream: StreamId,
    /// 1-based version within the stream.
    pub stream_version: u64,
    /// 1-based position in the global feed.
    pub position: u64,
    /// The `now` of the decision.
    pub recorded_at: Timestamp,
    /// The schema version the event was written with.
    pub schema_version: u16,
    /// Correlation id.
    pub correlation_id: Option<Uuid>,
    /// Causation id.
    pub causation_id: Option<Uuid>,
    /// The batch's idempotency key, if it had one.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The fact.
    pub event: Event,
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A stream's version did not match; nothing of the batch was stored.
    #[error("conflict on stream {stream}: expected {expected:?}, actual {actual:?}")]
    Conflict {
        /// The stream that failed its check.
        stream: StreamId,
        /// What the batch expected.
        expected: ExpectedVersion,
        /// The stream's current version (`None`: no stream).
        actual: Option<u64>,
    },
    /// The batch is malformed (empty, or a stream named twice).
    #[error("invalid batch: {reason}")]
    InvalidBatch {
        /// What is wrong.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record at {location}: {detail}")]
    Corrupt {
        /// Where (key, position or stream).
        location: String,
        /// What the decoder said.
        detail: String,
    },
    /// The backend failed (I/O, closed database).
    #[error("store backend failed: {detail}")]
    Backend {
        /// What failed.
        detail: String,
    },
    /// The store was closed or its worker stopped.
    #[error("store closed")]
    Closed,
}

/// Folded state saved by a runtime beside the feed: an opaque encoding, the global position
/// it reflects (its persisted checkpoint), and the key of the event stored at that position,
/// so a snapshot is only ever used with the history it was folded from. See
/// [`EventStore::save_snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The position of the last event folded into `bytes`.
    pub position: u64,
    /// [`StoredEvent::fingerprint`] of the event at `position` (0 at position 0): a
    /// snapshot whose key does not match the stored event there belongs to another history.
    pub event_key: u64,
    /// The runtime's encoding of its state; the store does not look inside.
    pub bytes: Vec<u8>,
}

impl StoredEvent {
    /// A 64-bit hash of the whole stored envelope (FNV-1a over its JSON encoding): id,
    /// stream, version, position, time, metadata and the fact. Two histories that differ
    /// at a position differ in it there; it keys a [`Snapshot`] to its history.
    pub fn fingerprint(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        // Serializing plain data into a Vec cannot fail (every map key is a string).
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        bytes
            .iter()
            .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
    }
}

/// Why a snapshot does not belong to the history a store holds, or `None` when it does:
/// its position must be within the feed and its [`Snapshot::event_key`] the fingerprint of
/// the event stored there. Stores check it when saving and loading; runtimes may check again.
pub async fn snapshot_mismatch<S: EventStore + ?Sized>(
    store: &S,
    snapshot: &Snapshot,
) -> Result<Option<String>, StoreError> {
    let head = store.head_position().await?;
    if snapshot.position > head {
        return Ok(Some(format!(
            "snapshot position {} is past the feed head {head}",
            snapshot.position
        )));
    }
    let key = if snapshot.position == 0 {
        0
    } else {
        match store.read_all(snapshot.position, 1).await?.first() {
            Some(e) if e.position == snapshot.position => e.fingerprint(),
            _ => {
                return Ok(Some(format!(
                    "no event at snapshot position {}",
                    snapshot.position
                )))
            }
        }
    };
    Ok((key != snapshot.event_key).then(|| {
        format!(
            "snapshot at position {} was taken from another history (event key {:016x}, \
             stored event {key:016x})",
            snapshot.position, snapshot.event_key
        )
    }))
}

/// A live, ordered feed of events from a position on.
#[async_trait]
pub trait Subscription: Send {
    /// The next event: stored ones first, then new ones as they are appended.
    async fn next(&mut self) -> Result<StoredEvent, StoreError>;
}

/// The storage port. Implementations must pass `testkit::conformance::run`.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends a batch atomically.
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError>;

    /// Appends a batch atomically, returning as soon as it is checked and ordered in the
    /// feed, possibly before it is durable (see [`OrderedAppend`]). A refusal (a conflict, a
    /// bad batch) is returned here, as from [`EventStore::append`]. The default waits for
    /// the whole append.
    async fn append_ordered(&self, batch: AppendBatch) -> Result<OrderedAppend, StoreError> {
        self.append(batch).await.map(OrderedAppend::stored)
    }

    /// Up to `limit` events of `stream` from version `from` (1-based) on.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The stream's current version; `None` if it was never written.
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` events of the global feed from position `from` (1-based) on.
    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError>;

    /// The position of the last stored event; 0 when the store is empty.
    async fn head_position(&self) -> Result<u64, StoreError>;

    /// A subscription delivering every event from position `from` on.
    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError>;

    /// The snapshot last saved under `name`, if this store keeps snapshots and has one.
    ///
    /// Snapshots persist a runtime's projection checkpoints: folded state plus the position
    /// it reflects, so a restart folds only the events after it. They are a cache of the
    /// feed, never a source of truth: a runtime that finds none, or cannot decode one, folds
    /// from position 1. A store returns only a snapshot that belongs to its history (see
    /// [`snapshot_mismatch`]): one past [`head_position`](Self::head_position) or keyed to
    /// another event than the one stored at its position is deleted, with a warning where
    /// the store logs, and `None` returned. The default keeps none (every start folds the
    /// whole feed).
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let _ = name;
        Ok(None)
    }

    /// Replaces the snapshot saved under `name`. A store that keeps snapshots refuses one
    /// that does not belong to its history ([`snapshot_mismatch`]), leaving the saved one in
    /// place, and makes the events up to `snapshot.position` durable before the snapshot:
    /// a snapshot is never newer than the durable events. The default keeps none and drops
    /// it.
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        let _ = (name, snapshot);
        Ok(())
    }

    /// Deletes the snapshot saved under `name`, if any: a runtime that cannot use it (it
    /// cannot decode it, or it does not match) removes it so it is never taken up later.
    /// The default keeps none, so there is nothing to delete.
    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        let _ = name;
        Ok(())
    }
}
