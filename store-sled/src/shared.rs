//! What the writer thread, inline appenders and readers share: the committed [`State`] that
//! every group is checked against, the visible head with its watchers, the failure flag, the
//! counters and the live tail.
//!
//! It sits below the writer and the read paths, which meet only here: the writer publishes
//! through it and readers load the head from it, so neither needs the other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use fleetops_core::ids::StreamId;
use tokio::sync::watch;

use crate::tail::{Tail, TailEvent};
use crate::wal::Wal;

/// The counters behind `WriterStats` and `FeedStats`, atomics so that no thread takes a lock
/// to count.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) appends: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) groups: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) inline_appends: AtomicU64,
    pub(crate) from_tail: AtomicU64,
    pub(crate) from_sled: AtomicU64,
}

/// State shared by the writer thread, inline appenders and the readers.
pub(crate) struct Shared {
    /// What every group is checked against; locked by whoever commits a group (the writer
    /// thread, or an inline appender in `Buffered` mode: see `crate::writer`).
    pub(crate) state: Mutex<State>,
    /// Requests handed to the writer thread (queued, or waiting for room in the queue) and
    /// not yet handled: while there are any, appends do not commit inline.
    pub(crate) pending: AtomicUsize,
    /// The last position readers may see: applied, and durable when the mode asks for it.
    visible_head: AtomicU64,
    /// Wakes subscribers when the visible head moves (or the writer fails).
    head_tx: watch::Sender<u64>,
    /// Why the writer stopped accepting writes, once it has.
    failure: OnceLock<String>,
    /// Groups handed to the flusher and not yet answered.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) stats: Stats,
    /// The last committed events, for subscriptions that keep up.
    pub(crate) tail: Tail,
    /// The write-ahead log that makes groups durable (`FlushEveryBatch`; `None` in
    /// `Buffered` mode, which leaves durability to sled's background flush).
    pub(crate) wal: Option<Wal>,
}

impl Shared {
    /// The shared state of a store whose last event is at `head`, nothing pending yet.
    pub(crate) fn new(head: u64, tail: Tail, wal: Option<Wal>) -> Self {
        let (head_tx, _) = watch::channel(head);
        Self {
            state: Mutex::new(State::new(head)),
            pending: AtomicUsize::new(0),
            visible_head: AtomicU64::new(head),
            head_tx,
            failure: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            stats: Stats::default(),
            tail,
            wal,
        }
    }

    /// Makes a committed group visible: puts its events (`..=head`, in position order) into
    /// the live tail, then moves the visible head forward and wakes subscribers.
    ///
    /// The writer calls this only once the events may be seen (durable, or applied in
    /// `Buffered` mode). The tail is filled first so that a reader that sees the new head
    /// finds every event up to it in the tail; readers never take from the tail beyond the
    /// head they loaded, so filling it early shows nothing early.
    pub(crate) fn publish(&self, head: u64, events: Vec<TailEvent>) {
        self.tail.push(events);
        self.visible_head.store(head, Ordering::Release);
        self.head_tx.send_replace(head);
    }

    /// Records the writer's failure and wakes subscribers so they can report it.
    pub(crate) fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
        self.head_tx.send_modify(|_| {});
    }

    /// Why the store failed, if it has.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    /// The last position readers may see.
    pub(crate) fn head(&self) -> u64 {
        self.visible_head.load(Ordering::Acquire)
    }

    /// A receiver woken whenever the visible head moves or the store fails.
    pub(crate) fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }
}

/// The committed state every group is checked against: the next position and a cache of
/// stream heads.
///
/// It lives in `Shared::state`, behind a lock, because two kinds of thread commit groups:
/// the writer thread, which takes the lock for each group it stages and applies, and an
/// appender that finds the writer idle and commits its own append on its own thread (see
/// `writer::append_inline`). Whoever holds the lock stages, logs, applies and (inline, or in
/// `Buffered` mode) publishes, so positions are handed out without gaps,
/// heads are published in position order and every version check sees every committed
/// append. The lock is never held across an `.await`, and only for CPU work, sled calls and
/// the write-ahead log.
/// Its fields are the writer's alone: nothing else reads them.
pub(crate) struct State {
    /// The position the next stored event gets.
    pub(crate) next_position: u64,
    /// Committed stream versions, so most version checks need no sled read.
    pub(crate) heads: HashMap<StreamId, u64>,
}

impl State {
    /// The state of a store whose last event is at `head`.
    pub(crate) fn new(head: u64) -> Self {
        Self {
            next_position: head + 1,
            heads: HashMap::new(),
        }
    }
}
