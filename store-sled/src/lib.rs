//! # fleetops-store-sled
//!
//! The durable, embedded [`EventStore`](fleetops_core::store::EventStore) of fleetops, on
//! [sled](https://docs.rs/sled/0.34.7) pinned to 0.34.7 (the 1.0 alphas are a rewrite without
//! transactions). It passes core's conformance suite and adds what a single-node deployment
//! needs: group commit, crash safety, checksummed records and projections with checkpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleetops_core::store::StoreError> {
//! use fleetops_store_sled::{Durability, SledConfig, SledStore};
//! let store = SledStore::open_async(
//!     SledConfig::new("/var/lib/fleetops").durability(Durability::FlushEveryBatch),
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Features: none. `docs/embedding.md` shows it inside a service, with the MQTT link.
//!
//! ## Threads
//!
//! Writes go through one dedicated writer thread (see *Group commit*), with one exception: in
//! [`Durability::Buffered`] mode an append that finds the writer idle commits on the calling
//! thread (see *Inline appends*). Reads (`read_stream`, `read_all`, `stream_version`,
//! subscriptions reading sled, projection reads) run on tokio's blocking pool. A subscription that keeps up
//! with the feed takes new events from memory instead (see *Live tail*). Opening recovers sled's log and blocks: use
//! [`SledStore::open_async`] inside a runtime. Dropping the last handle waits for the writer's
//! final flush.
//!
//! ## Group commit and atomicity
//!
//! Concurrent appends queue up while the writer is busy; the writer thread takes them all as
//! one group, checks each on its own (optimistic concurrency per stream, idempotency keys),
//! writes everything that passed — as **one** `sled::Batch` with `Tree::apply_batch` when an
//! append of several events or a projection update is among it, else key by key — and hands
//! the group to a flusher thread, which makes it durable **once** for all groups handed over
//! since its last sync and only then answers every waiter. A conflict in one append fails that append
//! alone. The two threads form a pipeline: the next group is checked and applied while the
//! previous one is being synced (see the `writer` module).
//!
//! ## Write-ahead log
//!
//! With [`Durability::FlushEveryBatch`] a group is made durable by the store's own
//! write-ahead log (`{dir}/fleetops-wal`), not by sled's `flush`: sled's flush hands its
//! write to one of sled's I/O threads and waits for it, two thread wake-ups around the same
//! system calls (≈ 115 µs against ≈ 50 µs here, `BENCHMARKS.md`). Whoever commits a group
//! appends its writes to the log as one CRC-checked record, before writing them to sled,
//! then syncs the log (`pwrite` + `sync_file_range`, sled's own durability) before
//! acknowledging. Past 64 MiB of log the writer *checkpoints*: it flushes sled and starts
//! the log over. Opening applies every whole record to sled again (a record holds the exact
//! keys and values of its group, so applying it over any part of its own effects gives the
//! same state), flushes sled and empties the log; a record cut short by a crash ends it (it
//! was never synced, so never acknowledged, and its sled writes had not started).
//!
//! sled recovers an applied batch atomically after a crash (it seals the batch in its log), so
//! such a group, and therefore each append (its events, its stream-index entries and its
//! idempotency key), is on disk entirely or not at all. A group of single-event appends is
//! written key by key, each event before its index entry and idempotency key, because sled
//! 0.34's `apply_batch` rolls its log buffer and starts a disk write on every batch; sled
//! recovers a prefix of its log, so a crash can cut off at most the entries after the last
//! event, and opening the store restores them from that event (`recovery::repair_last`).
//! The global position and the stream heads are not separate counters that could disagree:
//! the head is the last `E` key, a stream's version its last index entry, both written with
//! the events (in the same batch, or right after them and restored at open).
//! See `codec` for the layout.
//!
//! ## Inline appends
//!
//! Handing an append to the writer thread and the answer back costs two thread wake-ups,
//! which on a loaded machine take tens of microseconds each, several times the work of a
//! small append. So an append that finds nothing queued for the writer, nothing being handled
//! and nothing waiting for a sync does that work itself: it takes the writer's state lock
//! (without waiting: if it is taken, the append queues for the writer), checks and applies
//! the append as a group of one, publishes it and returns. The writer takes the same lock
//! for each of its groups, so positions, version checks, idempotency keys, the live tail and
//! the order in which heads are published are exactly as if the writer had done it; appends
//! that meet each other still form groups in the writer. The cost is that this sled work
//! (about 20 µs for a small append, more on a page-cache miss) runs on the caller's thread,
//! usually a tokio worker; with [`Durability::FlushEveryBatch`] so does the log's sync (about
//! 50–60 µs), still under the lock so heads are published in order. `append_ordered` leaves
//! that sync to the flusher thread instead and returns as soon as the append is ordered, so
//! the caller can overlap the sync with work whose result waits for the store anyway; given
//! to a busy writer, it returns once its group is applied, before that group's sync.
//! [`SledConfig::inline_appends`] turns inline appends off; [`WriterStats::inline_appends`]
//! counts them.
//!
//! ## Visibility
//!
//! Readers see an append once its group is committed: applied and, with
//! [`Durability::FlushEveryBatch`], synced. So no reader (and no subscriber that publishes to
//! devices) ever acts on an event that a crash could take back. The feed is read by position
//! and each read checks that no position is missing, so subscriptions have no gap and no
//! repeat, live or across a reopen.
//!
//! ## Live tail
//!
//! The store keeps the last committed events in memory, exactly as reads return them, bounded
//! by [`SledConfig::live_tail`] (8192 events and 32 MiB by default). The writer builds them
//! from the appended events (no read back, no decode) and adds a group's events only when the
//! group becomes visible, just before the head moves past them: never an unsynced event in
//! `FlushEveryBatch` mode, never a failed group. A subscription whose next position is in the
//! tail copies events from there, up to the visible head; one that is behind it (slow, or
//! catching up after an open, when the tail starts empty) reads sled as before. So the tail
//! changes where events come from, not which: [`SledStore::feed_stats`] tells the two apart.
//!
//! ## Durability
//!
//! [`Durability::FlushEveryBatch`] (default) syncs the write-ahead log once per group before
//! acknowledging, the same way sled flushes; [`Durability::Buffered`] acknowledges after
//! applying in memory and leaves flushing to sled's background thread
//! ([`SledConfig::flush_every`], 500 ms by default).
//!
//! **Neither the log's sync nor sled's flush is a full `fsync` on Linux.** The log is synced
//! with `pwrite` + `sync_file_range`, as sled flushes. In 0.34.7 `flush` writes its log buffers
//! with `pwrite` and then calls `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on the
//! written range (falling back to `fsync` only if that call is unsupported). That waits until
//! the pages are handed to the device, but it neither flushes the device's volatile write
//! cache nor commits file metadata (such as a grown file size), and on copy-on-write file
//! systems such as btrfs it gives no guarantee at all (sled issues #1351 and #1452, pull
//! request #928). sled calls a real `fsync` (`File::sync_all`) only from its background
//! flusher, every `flush_every`, and for its own metadata changes (segment truncation,
//! snapshots). In practice:
//!
//! - a **process crash** (panic, `SIGKILL`, OOM kill) loses nothing that was acknowledged in
//!   `FlushEveryBatch` mode: the crash test in `tests/crash.rs` checks exactly that;
//! - a **power loss or kernel crash** can lose roughly the last `flush_every` of
//!   acknowledged appends unless the drive has power-loss protection (whole groups only:
//!   sled recovers a prefix of its log);
//! - `Buffered` mode can lose about `flush_every` of acknowledged appends on a process crash
//!   too.
//!
//! Deployments that need power-loss durability for every acknowledged append need a store
//! that calls `fdatasync`/`fsync` per commit (the planned PostgreSQL store), or a drive with a
//! non-volatile write cache.
//!
//! ## Corruption
//!
//! Every record carries a CRC-32 over its key and value. A damaged or truncated record, a
//! missing position in the feed or an index entry that points at the wrong event gives
//! [`StoreError::Corrupt`](fleetops_core::store::StoreError::Corrupt), never a panic. sled
//! has its own checksums on its log; where sled itself panics on a damaged file (0.34 has
//! assertions in its recovery path) the panic is caught and reported as `Corrupt` too.
//! A damaged log tail that sled silently drops during recovery looks like a crash before
//! those writes: the feed stays a consistent prefix.
//!
//! ## Indexes: projections with checkpoints
//!
//! The indexes the service needs (executions by job, by thing and by status; due deadlines)
//! are not maintained in the append transaction. Instead the store offers [`Projection`]s:
//! named key-value spaces whose writes are applied **atomically with a checkpoint**, with a
//! compare-and-set on the previous checkpoint. A projector reads the feed from its checkpoint,
//! derives the index writes, and applies them with the new checkpoint; after any crash the
//! index and its checkpoint agree, so every event is applied exactly once. The `projection`
//! module documents the guarantee.
//!
//! ## On-disk layout
//!
//! One sled tree, `fleetops/v1`, with one-byte key spaces: events by big-endian position,
//! one stream-index entry per stream per append, idempotency keys, projections and their
//! checkpoints. The `codec` module has the table.
//!
//! ## Modules
//!
//! Layered, bottom up; a module names only modules of the layers below its own, so none of
//! them depends on another in a circle (the workspace's `tests/tests/modules.rs` checks it):
//!
//! 1. Leaves, which name no other module: `guard` (sled errors and caught panics as
//!    `StoreError`s, reads on the blocking pool), `codec` (the on-disk layout), `config`,
//!    `tail` (the live tail), `snapshot` (snapshot files) and `projection` (what the writer
//!    checks and applies for a projection: batch, update, errors, name rules).
//! 2. `prepare` (appends encoded on the appending task) and `shared` (what the writer,
//!    inline appenders and readers share: the committed state, the visible head, the
//!    counters, the tail).
//! 3. `writer`: the writer and flusher threads, and inline appends.
//! 4. `inner`: the parts of an open store every handle holds; starts the writer thread and
//!    closes the store.
//! 5. `read` (the read paths), then `recovery` (what opening checks and mends) and
//!    `subscription`, which use it.
//! 6. `store`: the handles, [`SledStore`] with its [`EventStore`] implementation and
//!    [`Projection`], which hand each call to the layers below.
//!
//! [`EventStore`]: fleetops_core::store::EventStore

mod codec;
mod config;
mod guard;
mod inner;
mod prepare;
mod projection;
mod read;
mod recovery;
mod shared;
mod snapshot;
mod store;
mod subscription;
mod tail;
mod wal;
mod writer;

pub use config::{Durability, SledConfig};
pub use projection::{ProjectionBatch, ProjectionEntry, ProjectionError, MAX_PROJECTION_NAME};
pub use store::{FeedStats, Projection, SledStore, WriterStats};

/// Helpers for this crate's benchmarks and tests; not part of the API.
#[doc(hidden)]
pub mod internals {
    use fleetops_core::ids::StreamId;
    use fleetops_core::store::{IdempotencyKey, NewEvent, StoreError};

    /// The sled tree the store writes to.
    pub const TREE_NAME: &str = crate::store::TREE_NAME;

    /// The exact key and value the store writes for `event` at `position`/`version`, so a
    /// benchmark can make raw sled write the same bytes.
    pub fn encode_event(
        stream: &StreamId,
        event: &NewEvent,
        idempotency_key: Option<&IdempotencyKey>,
        position: u64,
        version: u64,
    ) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let key = crate::codec::event_key(position);
        let value =
            crate::codec::PreEncoded::new(stream, event, idempotency_key)?.finish(&key, version);
        Ok((key.to_vec(), value))
    }

    /// The key of the event at `position`, for tests that damage records on purpose.
    pub fn event_key(position: u64) -> Vec<u8> {
        crate::codec::event_key(position).to_vec()
    }
}
