//! The writer thread: the only code that writes to sled, with pipelined group commit.
//!
//! Appends and projection updates arrive on a bounded channel. The writer thread takes the
//! first request, then every request already queued (up to [`SledConfig::max_group_events`]
//! events), and handles them as one *group*:
//!
//! 1. each request is checked on its own, in arrival order, against the stored state plus what
//!    the earlier requests of the group staged (versions, idempotency keys, checkpoints); a
//!    request that fails its check gets its own error and stages nothing;
//! 2. with [`Durability::FlushEveryBatch`] everything staged is appended to the write-ahead
//!    log as one record (`crate::wal`), then written to sled (see `Committer::apply`);
//! 3. with [`Durability::FlushEveryBatch`] the group is handed to the *flusher thread*, which
//!    syncs the log once for every group handed over since its last sync, then moves the
//!    visible head past them, wakes subscribers and answers every waiter. (When nothing is in
//!    flight and nothing is queued, as with a lone appender, the writer syncs and answers
//!    itself, which saves two thread hand-offs of latency.) Past the log's checkpoint size
//!    the writer flushes sled and starts the log over.
//!
//! The two threads form a pipeline: while one group is being synced, the writer already
//! checks and applies the next, and the one after that gathers in the channel. The next
//! group's checks see the applied-but-unsynced groups, which is right, because they are
//! synced first or the store fails as a whole. Readers never see them early: reads stop at
//! the visible head. Every answer, including refusals, is sent by the flusher after the sync
//! of the groups before it, so no caller learns of state that a crash could still take back.
//! At most [`MAX_IN_FLIGHT`] groups wait for the flusher; then the writer waits too.
//!
//! Each append also carries its events as a read would return them (built by the appender
//! from the events themselves). The writer stamps their positions and versions while staging
//! and hands them, with the group, to `Shared::publish`, which puts them into the live tail
//! (`crate::tail`) just before it moves the head: subscriptions following the feed get them
//! from memory. A group that fails is dropped with its events; a refused append stages none.
//!
//! ## Inline appends
//!
//! A hand-off to the writer costs two thread wake-ups (the writer's, then the appender's),
//! tens of microseconds each on a busy machine, several times the work of a lone append. So
//! with [`SledConfig::inline_appends`] on (the default) an append that finds the writer idle
//! (nothing queued or being handled, no group waiting for the flusher) commits itself on the
//! calling thread as a group of one: the same staging, checks, log record, sled writes, sync
//! (in `FlushEveryBatch` mode), tail and head publication, then it returns
//! ([`append_inline`]). An ordered append (`EventStore::append_ordered`) leaves the sync and
//! the publication to the flusher thread instead; one that goes to the writer is told its
//! place as soon as its group is applied, so under load too its caller works beside the
//! sync. Appends that meet a busy writer, or another appender committing inline, queue up
//! for the writer as before and are grouped there.
//!
//! Both kinds of committer share the [`State`] (the next position and the cached stream
//! heads) under one lock, held while a group is staged, applied and, inline or in `Buffered`
//! mode, published: so positions are handed out without gaps, heads are published in position
//! order, and every check sees every committed append. The writer blocks on the lock; an
//! inline appender only tries it.
//!
//! A failed or panicking sled write, log write, sync or flush leaves the store *failed*: the outcome of the
//! groups in flight is unknown (they may or may not be on disk), so they and every later
//! request are refused with [`StoreError::Backend`] until the store is reopened, which
//! recovers the truth from disk. Retrying writes after a failed flush is how data gets
//! silently lost.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use fleetops_core::ids::StreamId;
use fleetops_core::store::{Appended, ExpectedVersion, IdempotencyKey, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::config::{Durability, SledConfig};
use crate::guard::{panic_message, sled_error};
use crate::prepare::PreparedBatch;
use crate::projection::{ProjectionError, ProjectionUpdate};
use crate::shared::{Shared, State};
use crate::tail::TailEvent;
use crate::wal::{Mark, Wal};

/// The most writes a group of single-event appends makes key by key; a larger group is
/// written as one batch (see `Committer::apply`).
const KEY_BY_KEY_MAX_WRITES: usize = 32;
/// The writer forgets cached stream heads past this many streams (it re-reads them from sled).
const HEAD_CACHE_LIMIT: usize = 256 * 1024;
/// Most requests in one group, whatever their size.
const MAX_GROUP_REQUESTS: usize = 4096;
/// Groups applied but not yet flushed before the writer waits for the flusher.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// What the writer thread is asked to do.
pub(crate) enum Request {
    /// Append a batch.
    Append {
        batch: PreparedBatch,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
        /// For `EventStore::append_ordered`: told where the events landed once the group is
        /// applied (its sync still to come), so the caller can start its work beside the sync.
        /// Dropped unanswered when the append is refused or the group fails, and in
        /// `Buffered` mode, where `reply` comes as soon.
        ordered: Option<oneshot::Sender<Appended>>,
    },
    /// Apply a projection update with its checkpoint.
    Project {
        update: ProjectionUpdate,
        reply: oneshot::Sender<Result<(), ProjectionError>>,
    },
    /// Flush sled now, whatever the durability mode.
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Request {
    fn events(&self) -> usize {
        match self {
            Self::Append { batch, .. } => batch.events,
            Self::Project { update, .. } => update.writes.len(),
            Self::Flush { .. } => 0,
        }
    }

    fn fail(self, err: StoreError) {
        // A waiter that gave up (dropped its future) is not an error.
        match self {
            Self::Append { reply, .. } => drop(reply.send(Err(err))),
            Self::Project { reply, .. } => drop(reply.send(Err(err.into()))),
            Self::Flush { reply } => drop(reply.send(Err(err))),
        }
    }
}

/// The answer to one request, sent after the group is committed.
enum Outcome {
    Append(
        oneshot::Sender<Result<Appended, StoreError>>,
        Result<Appended, StoreError>,
    ),
    Project(
        oneshot::Sender<Result<(), ProjectionError>>,
        Result<(), ProjectionError>,
    ),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

impl Outcome {
    fn send(self, commit: &Result<(), StoreError>) {
        match (self, commit) {
            (Self::Append(tx, r), Ok(())) => drop(tx.send(r)),
            (Self::Project(tx, r), Ok(())) => drop(tx.send(r)),
            (Self::Flush(tx), Ok(())) => drop(tx.send(Ok(()))),
            (Self::Append(tx, _), Err(e)) => drop(tx.send(Err(e.clone()))),
            (Self::Project(tx, _), Err(e)) => drop(tx.send(Err(e.clone().into()))),
            (Self::Flush(tx), Err(e)) => drop(tx.send(Err(e.clone()))),
        }
    }
}

fn answer_all(outcomes: Vec<Outcome>, commit: &Result<(), StoreError>) {
    for outcome in outcomes {
        outcome.send(commit);
    }
}

/// Groups handed from the writer to the flusher.
struct FlushJob {
    /// Whether sled must be flushed for this group (an explicit `Request::Flush`).
    flush: bool,
    /// How far the write-ahead log must be synced for this group (a group that wrote; a
    /// group with nothing to write only waits its turn).
    sync: Option<Mark>,
    /// The head to publish once flushed, if the group wrote events.
    head: Option<u64>,
    /// The group's events for the live tail, published with `head`.
    events: Vec<TailEvent>,
    outcomes: Vec<Outcome>,
}

/// The flusher thread: flushes once for all groups handed over meanwhile, then publishes and
/// answers them in order.
fn flusher(tree: sled::Tree, shared: Arc<Shared>, jobs: std::sync::mpsc::Receiver<FlushJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while let Ok(job) = jobs.try_recv() {
            batch.push(job);
        }
        let n = batch.len();
        complete(&tree, &shared, batch);
        // Only now may the writer flush inline again: everything before is answered.
        shared.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Flushes once if any job needs it, then publishes the highest head and answers every job,
/// in order.
fn complete(tree: &sled::Tree, shared: &Shared, jobs: Vec<FlushJob>) {
    // The last mark covers every record before it (marks of one generation grow; a later
    // generation's follows a checkpoint that made the earlier ones durable).
    let sync = jobs.iter().rev().find_map(|j| j.sync);
    let result = if let Some(reason) = shared.failure() {
        Err(failed_error(&reason))
    } else if jobs.iter().any(|j| j.flush) {
        // sled's flush covers every applied group, so the log needs no sync.
        match catch_unwind(AssertUnwindSafe(|| tree.flush())) {
            Ok(Ok(_)) => {
                shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("sled flush failed: {e}")),
            Err(panic) => Err(format!(
                "sled panicked while flushing: {}",
                panic_message(&*panic)
            )),
        }
        .map_err(|reason| fail_store(shared, reason))
    } else if let Some(mark) = sync {
        sync_wal(shared, mark)
    } else {
        Ok(())
    };
    let mut outcomes = Vec::with_capacity(jobs.len());
    if result.is_ok() {
        let head = jobs.iter().filter_map(|j| j.head).max();
        let mut events = Vec::new();
        for job in jobs {
            // Jobs arrive in the order the writer applied them, so their events are in
            // position order.
            events.extend(job.events);
            outcomes.push(job.outcomes);
        }
        if let Some(head) = head {
            // Readers may now see these groups: applied and flushed.
            shared.publish(head, events);
        }
    } else {
        // A failed flush: the groups' events never enter the tail.
        outcomes.extend(jobs.into_iter().map(|job| job.outcomes));
    }
    for job_outcomes in outcomes {
        answer_all(job_outcomes, &result);
    }
}

/// Syncs the write-ahead log up to `mark`; a failure fails the store.
fn sync_wal(shared: &Shared, mark: Mark) -> Result<(), StoreError> {
    let Some(wal) = &shared.wal else {
        return Ok(());
    };
    match wal.sync(mark) {
        Ok(()) => {
            shared.stats.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(fail_store(
            shared,
            format!("write-ahead log sync failed: {e}"),
        )),
    }
}

/// Fails the store for `reason`: the error to answer with.
fn fail_store(shared: &Shared, reason: String) -> StoreError {
    tracing::error!(%reason, "sled store failed; it refuses writes until reopened");
    let err = failed_error(&reason);
    shared.fail(reason);
    err
}

/// What the earlier requests of the current group staged.
#[derive(Default)]
struct Staged {
    /// The group's writes, in the order they are made when written key by key.
    writes_in_order: Vec<(sled::IVec, Option<sled::IVec>)>,
    /// Whether the group must be one atomic sled batch: it holds an append of more than one
    /// event or a projection update (see [`Committer::apply`]).
    atomic: bool,
    heads: HashMap<StreamId, u64>,
    idem: HashMap<IdempotencyKey, Appended>,
    checkpoints: HashMap<String, u64>,
    next_position: u64,
    writes: usize,
    events: u64,
    /// The staged events for the live tail, positions and versions filled in.
    read_back: Vec<TailEvent>,
}

/// Locks the committed state. A panic while it was held (none is expected: sled calls are
/// caught) may have left it half updated, so a poisoned lock fails the store.
fn lock_state(shared: &Shared) -> Result<MutexGuard<'_, State>, StoreError> {
    shared.state.lock().map_err(|_| {
        let reason = "a thread panicked while committing".to_owned();
        shared.fail(reason.clone());
        failed_error(&reason)
    })
}

/// The state owned by the writer thread.
pub(crate) struct Writer {
    /// The database handle; the writer holds it last so sled closes on this thread.
    _db: sled::Db,
    tree: sled::Tree,
    shared: Arc<Shared>,
    durability: Durability,
    max_group_events: usize,
    /// Hands applied groups to the flusher thread (`None` once `run` ends).
    flush_tx: Option<std::sync::mpsc::SyncSender<FlushJob>>,
    /// The flusher thread's queue, until `run` starts the thread.
    flush_rx: Option<std::sync::mpsc::Receiver<FlushJob>>,
}

impl Writer {
    pub(crate) fn new(
        db: sled::Db,
        tree: sled::Tree,
        shared: Arc<Shared>,
        config: &SledConfig,
    ) -> Self {
        let (flush_tx, flush_rx) = std::sync::mpsc::sync_channel(MAX_IN_FLIGHT);
        Self {
            _db: db,
            tree,
            shared,
            durability: config.durability,
            max_group_events: config.max_group_events,
            flush_tx: Some(flush_tx),
            flush_rx: Some(flush_rx),
        }
    }

    /// A handle on the flusher's queue for inline appenders; it must be dropped before the
    /// writer can finish (the flusher runs until every handle is gone).
    pub(crate) fn flush_handle(&self) -> Option<FlushHandle> {
        self.flush_tx.clone().map(FlushHandle)
    }

    /// Runs until every sender is gone, then flushes and returns (dropping sled here).
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let flusher = self.flush_rx.take().map(|flush_rx| {
            let (tree, shared) = (self.tree.clone(), Arc::clone(&self.shared));
            std::thread::Builder::new()
                .name("fleetops-sled-flusher".into())
                .spawn(move || flusher(tree, shared, flush_rx))
        });
        let flusher = match flusher {
            Some(Ok(handle)) => Some(handle),
            Some(Err(e)) => {
                self.flush_tx = None;
                self.shared
                    .fail(format!("cannot start the flusher thread: {e}"));
                None
            }
            None => None,
        };
        let mut group = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut events = first.events();
            group.push(first);
            while events < self.max_group_events && group.len() < MAX_GROUP_REQUESTS {
                match rx.try_recv() {
                    Ok(req) => {
                        events += req.events();
                        group.push(req);
                    }
                    Err(_) => break,
                }
            }
            let more_waiting = !rx.is_empty();
            let requests = group.len();
            self.handle_group(&mut group, more_waiting);
            // Only now may appenders commit inline again (see `append_inline`): the group is
            // answered, or handed to the flusher with `in_flight` raised before this.
            self.shared.pending.fetch_sub(requests, Ordering::AcqRel);
        }
        // Let the flusher answer what it holds, then flush whatever a buffered store has left
        // (inline appends included: they all returned before the last handle was dropped).
        self.flush_tx = None;
        if let Some(handle) = flusher {
            if handle.join().is_err() {
                tracing::error!("the sled flusher thread panicked");
            }
        }
        if self.shared.failure().is_none() {
            // A checkpoint flushes sled and empties the log, so the next open replays nothing.
            let closed = match &self.shared.wal {
                Some(wal) => wal.checkpoint(&self.tree),
                None => self.tree.flush().map(drop).map_err(|e| e.to_string()),
            };
            if let Err(e) = closed {
                tracing::error!(error = %e, "final flush of the sled store failed");
            }
        }
    }

    /// Checks, applies and hands on one group. `more_waiting`: requests are already queued
    /// behind this group.
    fn handle_group(&mut self, group: &mut Vec<Request>, more_waiting: bool) {
        let locked = match self.shared.failure() {
            Some(reason) => Err(failed_error(&reason)),
            None => lock_state(&self.shared),
        };
        let mut state = match locked {
            Ok(state) => state,
            Err(err) => {
                for req in group.drain(..) {
                    req.fail(err.clone());
                }
                return;
            }
        };
        let mut committer = Committer {
            tree: &self.tree,
            shared: &self.shared,
            state: &mut state,
        };
        let mut staged = Staged {
            next_position: committer.state.next_position,
            ..Staged::default()
        };
        let mut outcomes = Vec::with_capacity(group.len());
        let mut ordered = Vec::new();
        let mut flush_requested = false;
        for req in group.drain(..) {
            let outcome = match req {
                Request::Append {
                    batch,
                    reply,
                    ordered: tell,
                } => {
                    let r = committer.stage_append(batch, &mut staged);
                    if let (Some(tell), Ok(appended)) = (tell, &r) {
                        ordered.push((tell, appended.clone()));
                    }
                    Outcome::Append(reply, r)
                }
                Request::Project { update, reply } => {
                    let r = committer.stage_projection(update, &mut staged);
                    Outcome::Project(reply, r)
                }
                Request::Flush { reply } => {
                    flush_requested = true;
                    Outcome::Flush(reply)
                }
            };
            outcomes.push(outcome);
        }
        let wrote = staged.writes > 0;
        let events = std::mem::take(&mut staged.read_back);
        let mark = match committer.apply(staged) {
            Ok(mark) => mark,
            Err(e) => {
                answer_all(outcomes, &Err(e));
                return;
            }
        };
        let head = committer.state.next_position - 1;
        if let Some(wal) = &self.shared.wal {
            if wal.checkpoint_due() {
                // Under the state lock: no group is applied while sled is flushed and the
                // log starts over.
                if let Err(reason) = wal.checkpoint(&self.tree) {
                    let err = fail_store(&self.shared, reason);
                    answer_all(outcomes, &Err(err));
                    return;
                }
            }
        }
        let job = match self.durability {
            Durability::FlushEveryBatch => {
                // Applied and in the log, so ordered: nothing later can come before these
                // events, and a refusal can no longer happen. Their callers may start what
                // waits for the store anyway; the answers that mean "stored" still wait for
                // the sync below.
                for (tell, appended) in ordered {
                    drop(tell.send(appended));
                }
                FlushJob {
                    flush: flush_requested,
                    sync: mark,
                    head: wrote.then_some(head),
                    events,
                    outcomes,
                }
            }
            Durability::Buffered => {
                // Under the lock, so that this head and an inline appender's are published in
                // position order.
                if wrote {
                    self.shared.publish(head, events);
                }
                if !flush_requested {
                    drop(state);
                    answer_all(outcomes, &Ok(()));
                    return;
                }
                FlushJob {
                    flush: true,
                    sync: None,
                    head: None,
                    events: Vec::new(),
                    outcomes,
                }
            }
        };
        // Nothing in flight and nobody waiting (a lone appender): flushing here saves two
        // thread hand-offs, and nothing can overtake, since every earlier group is answered.
        // (Inline appenders cannot commit meanwhile: this group still counts in `pending`.)
        if !more_waiting && self.shared.in_flight.load(Ordering::Acquire) == 0 {
            drop(state);
            complete(&self.tree, &self.shared, vec![job]);
            return;
        }
        // Raised while the state is still locked, so an inline appender that takes the lock
        // next sees the group in flight and leaves its append to the writer.
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        drop(state);
        let sent = match &self.flush_tx {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        };
        if let Err(job) = sent {
            let reason = "the flusher thread stopped".to_owned();
            self.shared.fail(reason.clone());
            answer_all(job.outcomes, &Err(failed_error(&reason)));
        }
    }
}

/// What an inline append came to (see [`append_inline`]).
pub(crate) enum Inline {
    /// Committed, and durable as far as the mode asks: the append's answer.
    Done(Result<Appended, StoreError>),
    /// Checked, ordered and applied; the flusher answers on the receiver once it is durable.
    Ordered(Appended, oneshot::Receiver<Result<Appended, StoreError>>),
}

/// The way into the flusher thread's queue for inline appenders that leave the sync to it
/// (`EventStore::append_ordered`).
#[derive(Clone)]
pub(crate) struct FlushHandle(std::sync::mpsc::SyncSender<FlushJob>);

/// Commits one append as a group of its own on the calling thread, if the writer is idle:
/// `Err(batch)` hands the batch back for the writer thread.
///
/// The work is the same staging, checks and `apply_batch` the writer does for a group of one
/// (about 20 µs of CPU), and doing it here saves the two thread wake-ups of the hand-off,
/// which on a busy machine cost far more than the work. With [`Durability::FlushEveryBatch`]
/// the group is then made durable by a sync of the write-ahead log on this thread (about
/// 50–60 µs; `crate::wal`), still under the state lock so heads are published in position
/// order, or, given `handoff`, by the flusher thread: then the append returns as soon as it
/// is ordered ([`Inline::Ordered`]) and the caller overlaps its own work with the sync.
///
/// It runs only when the writer is idle: no request queued or being handled
/// (`Shared::pending`), no group waiting for the flusher (`Shared::in_flight`, so a requested
/// flush is answered before later appends), no checkpoint due, the store not failed, and the
/// state lock free. When another appender holds the lock this one is contended and goes to
/// the writer, where concurrent appends still form groups (and share one sync). A failed sled
/// write fails the store exactly as in the writer (`Committer::apply`).
pub(crate) fn append_inline(
    tree: &sled::Tree,
    shared: &Shared,
    batch: PreparedBatch,
    handoff: Option<&FlushHandle>,
) -> Result<Inline, PreparedBatch> {
    // `pending` first: the writer raises `in_flight` before it lowers `pending`.
    let idle = |shared: &Shared| {
        shared.pending.load(Ordering::Acquire) == 0 && shared.in_flight.load(Ordering::Acquire) == 0
    };
    // A checkpoint (a sled flush) is the writer's to make.
    let checkpoint_due = |shared: &Shared| shared.wal.as_ref().is_some_and(Wal::checkpoint_due);
    if !idle(shared) || shared.failure().is_some() || checkpoint_due(shared) {
        return Err(batch);
    }
    // A poisoned lock is left to the writer, which fails the store over it.
    let Ok(mut state) = shared.state.try_lock() else {
        return Err(batch);
    };
    // Again under the lock: the writer may have taken a request (or handed a group to the
    // flusher) since the check above, and the store may have failed.
    if !idle(shared) || shared.failure().is_some() {
        return Err(batch);
    }
    // sled may panic on a damaged file, in a read for a check as well as in the write; the
    // caller gets an error, never the panic. The state may then be half updated, so the store
    // fails (the guard is not dropped while unwinding, so the lock is not poisoned).
    let committed = catch_unwind(AssertUnwindSafe(|| -> Result<Inline, StoreError> {
        let mut committer = Committer {
            tree,
            shared,
            state: &mut state,
        };
        let mut staged = Staged {
            next_position: committer.state.next_position,
            ..Staged::default()
        };
        let result = committer.stage_append(batch, &mut staged);
        let wrote = staged.writes > 0;
        let events = std::mem::take(&mut staged.read_back);
        let mark = committer.apply(staged)?;
        let head = committer.state.next_position - 1;
        shared.stats.inline_appends.fetch_add(1, Ordering::Relaxed);
        if let (Some(mark), Some(handoff), Ok(appended)) = (mark, handoff, &result) {
            let (reply, rx) = oneshot::channel();
            let job = FlushJob {
                flush: false,
                sync: Some(mark),
                head: Some(head),
                events,
                outcomes: vec![Outcome::Append(reply, Ok(appended.clone()))],
            };
            // Raised under the lock, as the writer does: later appends go to the writer and
            // the flusher answers them after this one.
            shared.in_flight.fetch_add(1, Ordering::AcqRel);
            match handoff.0.try_send(job) {
                Ok(()) => return Ok(Inline::Ordered(appended.clone(), rx)),
                // The flusher is gone or (it cannot be, with nothing in flight) busy: sync
                // here after all.
                Err(
                    std::sync::mpsc::TrySendError::Full(job)
                    | std::sync::mpsc::TrySendError::Disconnected(job),
                ) => {
                    shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    sync_wal(shared, mark)?;
                    shared.publish(head, job.events);
                    return Ok(Inline::Done(result));
                }
            }
        }
        if let Some(mark) = mark {
            // Still under the lock, so heads are published in position order; appends that
            // come meanwhile queue for the writer and share its next sync.
            sync_wal(shared, mark)?;
        }
        if wrote {
            shared.publish(head, events);
        }
        Ok(Inline::Done(result))
    }));
    drop(state);
    Ok(match committed {
        Ok(Ok(inline)) => inline,
        Ok(Err(e)) => Inline::Done(Err(e)),
        Err(panic) => {
            let reason = format!("sled panicked while committing: {}", panic_message(&*panic));
            Inline::Done(Err(fail_store(shared, reason)))
        }
    })
}

/// Stages and applies groups against the locked [`State`]: what the writer thread and an
/// inline appender share.
struct Committer<'a> {
    tree: &'a sled::Tree,
    shared: &'a Shared,
    state: &'a mut State,
}

impl Committer<'_> {
    /// Writes the group; `Err` (and the store failed) if sled fails.
    ///
    /// A group of single-event appends is written key by key, in order (each event, then its
    /// run, then its idempotency entry), not as one `sled::Batch`: sled 0.34's `apply_batch`
    /// rolls its log buffer and hands a write to its I/O threads on every batch, which made
    /// a lone append several times dearer (measured in `BENCHMARKS.md`). sled recovers a
    /// prefix of its log, so a crash can cut off at most the run and idempotency entry of
    /// the last event, and `recovery::repair_last` restores them from that event at open.
    /// Anything that must change together (an append of several events, a projection's
    /// entries and checkpoint) is one batch, and so is a group of more than
    /// `KEY_BY_KEY_MAX_WRITES` writes, where one log write for the group is cheaper.
    ///
    /// With a write-ahead log (`FlushEveryBatch`) the group's writes go to the log first, as
    /// one record, and the returned mark is what [`Wal::sync`] must cover before the group
    /// is acknowledged.
    fn apply(&mut self, staged: Staged) -> Result<Option<Mark>, StoreError> {
        let Staged {
            writes_in_order,
            atomic,
            heads,
            next_position,
            writes,
            events,
            ..
        } = staged;
        if writes == 0 {
            return Ok(None);
        }
        let mark = match &self.shared.wal {
            Some(wal) => match wal.append(writes_in_order.iter()) {
                Ok(mark) => Some(mark),
                Err(e) => return Err(self.fail(format!("write-ahead log write failed: {e}"))),
            },
            None => None,
        };
        let tree = self.tree;
        // A large group is one batch all the same: there one log write for the group costs
        // less than hundreds of single inserts (paired figures in `BENCHMARKS.md`).
        let batched = atomic || writes_in_order.len() > KEY_BY_KEY_MAX_WRITES;
        let write = || -> sled::Result<()> {
            if batched {
                let mut batch = sled::Batch::default();
                for (k, v) in writes_in_order {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                tree.apply_batch(batch)
            } else {
                for (k, v) in writes_in_order {
                    match v {
                        Some(v) => tree.insert(k, v)?,
                        None => tree.remove(k)?,
                    };
                }
                Ok(())
            }
        };
        let failure = match catch_unwind(AssertUnwindSafe(write)) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("sled write failed: {e}")),
            Err(panic) => Some(format!(
                "sled panicked while writing: {}",
                panic_message(&*panic)
            )),
        };
        if let Some(reason) = failure {
            return Err(self.fail(reason));
        }
        let cache = &mut self.state.heads;
        if cache.len() + heads.len() > HEAD_CACHE_LIMIT {
            cache.clear();
        }
        cache.extend(heads);
        self.state.next_position = next_position;
        let stats = &self.shared.stats;
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats.events.fetch_add(events, Ordering::Relaxed);
        Ok(mark)
    }

    /// Fails the store for `reason`: the error to answer with.
    fn fail(&self, reason: String) -> StoreError {
        fail_store(self.shared, reason)
    }

    /// The current version of `stream`, counting what this group staged. `expected` only
    /// picks the cheaper lookup.
    fn current_version(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        staged: &Staged,
    ) -> Result<Option<u64>, StoreError> {
        if let Some(v) = staged.heads.get(stream) {
            return Ok(Some(*v));
        }
        if let Some(v) = self.state.heads.get(stream) {
            return Ok(Some(*v));
        }
        let prefix = codec::run_prefix(stream);
        // Appends that create a stream (every command, every queued execution) are the
        // common uncached case. A stream exists exactly when its first run (version 1) does,
        // and a point lookup of that key costs a fraction of the reverse range scan below.
        if expected == ExpectedVersion::NoStream
            && !self
                .tree
                .contains_key(codec::run_key(&prefix, 1))
                .map_err(sled_error)?
        {
            return Ok(None);
        }
        match self.tree.scan_prefix(&prefix).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(sled_error)?;
                let run = codec::decode_run(&prefix, &k, &v)?;
                let version = run.last_version();
                self.state.heads.insert(stream.clone(), version);
                Ok(Some(version))
            }
        }
    }

    fn stage_append(
        &mut self,
        batch: PreparedBatch,
        staged: &mut Staged,
    ) -> Result<Appended, StoreError> {
        self.shared.stats.appends.fetch_add(1, Ordering::Relaxed);
        let idem = match &batch.idempotency_key {
            Some(key) => {
                if let Some(first) = staged.idem.get(key) {
                    return Ok(first.clone());
                }
                let k = codec::idem_key(key);
                if let Some(v) = self.tree.get(&k).map_err(sled_error)? {
                    return codec::decode_appended(&k, &v);
                }
                Some((key.clone(), k))
            }
            None => None,
        };

        // Check every stream before staging anything, so a conflict leaves no trace.
        let mut currents = Vec::with_capacity(batch.streams.len());
        for s in &batch.streams {
            let actual = self.current_version(&s.stream, s.expected, staged)?;
            if !s.expected.admits(actual) {
                return Err(StoreError::Conflict {
                    stream: s.stream.clone(),
                    expected: s.expected,
                    actual,
                });
            }
            let count = u32::try_from(s.events.len()).map_err(|_| StoreError::InvalidBatch {
                reason: format!("more than {} events for stream {}", u32::MAX, s.stream),
            })?;
            currents.push((actual.unwrap_or(0), count));
        }

        let first_position = staged.next_position;
        let mut position = first_position;
        let mut versions = Vec::with_capacity(batch.streams.len());
        for (s, (current, count)) in batch.streams.into_iter().zip(currents) {
            let prefix = codec::run_prefix(&s.stream);
            let first_version = current + 1;
            let run_key = codec::run_key(&prefix, first_version);
            let run_value = codec::encode_run(&run_key, position, count);
            let mut version = first_version;
            let mut read_back = s.read_back.into_iter();
            for event in s.events {
                let key = codec::event_key(position);
                let value = event.finish(&key, version);
                staged
                    .writes_in_order
                    .push((sled::IVec::from(&key[..]), Some(sled::IVec::from(value))));
                if let Some(mut entry) = read_back.next() {
                    // Unique until published, so this writes in place without a copy.
                    let e = Arc::make_mut(&mut entry.event);
                    (e.position, e.stream_version) = (position, version);
                    staged.read_back.push(entry);
                }
                position += 1;
                version += 1;
            }
            // The run after its events: cut off by a crash, it is restored from the last
            // event at open (`recovery::repair_last`); the other way round it could not be.
            staged
                .writes_in_order
                .push((sled::IVec::from(run_key), Some(sled::IVec::from(run_value))));
            staged.writes += 1 + count as usize;
            staged.events += u64::from(count);
            let last_version = version - 1;
            staged.heads.insert(s.stream.clone(), last_version);
            versions.push((s.stream, last_version));
        }
        staged.next_position = position;
        let appended = Appended {
            first_position,
            last_position: position - 1,
            versions,
        };
        if appended.last_position > appended.first_position {
            staged.atomic = true;
        }
        if let Some((key, k)) = idem {
            let value = codec::encode_appended(&k, &appended);
            staged
                .writes_in_order
                .push((sled::IVec::from(k), Some(sled::IVec::from(value))));
            staged.writes += 1;
            staged.idem.insert(key, appended.clone());
        }
        Ok(appended)
    }

    fn stage_projection(
        &mut self,
        update: ProjectionUpdate,
        staged: &mut Staged,
    ) -> Result<(), ProjectionError> {
        let ProjectionUpdate {
            name,
            from,
            to,
            writes,
        } = update;
        let ck = codec::checkpoint_key(&name);
        let actual = match staged.checkpoints.get(&name) {
            Some(c) => *c,
            None => match self.tree.get(&ck).map_err(sled_error)? {
                Some(v) => codec::decode_checkpoint(&ck, &v)?,
                None => 0,
            },
        };
        if actual != from {
            return Err(ProjectionError::CheckpointMismatch {
                name,
                expected: from,
                actual,
            });
        }
        // Only events that are already committed can have been projected.
        let head = self.state.next_position - 1;
        if to > head {
            return Err(ProjectionError::BeyondHead {
                checkpoint: to,
                head,
            });
        }
        if to < from {
            return Err(ProjectionError::Backwards { from, to });
        }
        let prefix = codec::proj_prefix(&name);
        for (key, value) in writes {
            let mut k = Vec::with_capacity(prefix.len() + key.len());
            k.extend_from_slice(&prefix);
            k.extend_from_slice(&key);
            match value {
                Some(v) => {
                    let v = codec::encode_proj_value(&k, &v);
                    staged
                        .writes_in_order
                        .push((sled::IVec::from(k), Some(sled::IVec::from(v))));
                }
                None => staged.writes_in_order.push((sled::IVec::from(k), None)),
            }
            staged.writes += 1;
        }
        // Entries and checkpoint change together or not at all.
        staged.atomic = true;
        let value = codec::encode_checkpoint(&ck, to);
        staged
            .writes_in_order
            .push((sled::IVec::from(ck.clone()), Some(sled::IVec::from(value))));
        staged.writes += 1;
        staged.checkpoints.insert(name, to);
        Ok(())
    }
}

/// The error every request gets once the writer has failed.
fn failed_error(reason: &str) -> StoreError {
    StoreError::Backend {
        detail: format!("the store failed earlier and must be reopened: {reason}"),
    }
}
