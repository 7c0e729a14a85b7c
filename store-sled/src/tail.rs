//! The live tail: the last committed events, kept in memory for subscriptions.
//!
//! A subscription that keeps up with the feed would otherwise read every new event back from
//! sled on the blocking pool (a thread hand-off, a range scan, a checksum and a JSON decode)
//! right after the writer wrote it. The writer already holds those events, so it hands them
//! to the [`Tail`] when it publishes the head that makes them visible, and a subscription
//! whose next position is in the tail copies them from memory instead.
//!
//! The tail is a cache of the feed, never its source of truth, and it never widens what
//! readers see:
//!
//! - events enter only from `Shared::publish`, after the group's flush succeeded (or, with
//!   `Durability::Buffered`, when the group is applied), immediately before the head moves
//!   past them; a failed group is dropped with its events, so it never enters;
//! - readers take nothing beyond the visible head they loaded;
//! - the tail holds one run of consecutive positions: a push that does not continue it
//!   starts it over, and a position the tail does not hold is read from sled, so nothing can
//!   be skipped;
//! - it starts empty at every open, so subscribers catching up after a restart read sled.
//!
//! Its size is bounded by a count of events and a byte budget (the encoded size of each
//! event, an estimate of its size in memory): see `SledConfig::live_tail`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use fleetops_core::store::StoredEvent;

/// One committed event on its way into the tail.
pub(crate) struct TailEvent {
    /// Exactly what a read of the feed returns for its position.
    pub(crate) event: Arc<StoredEvent>,
    /// What it counts against the byte budget.
    pub(crate) bytes: usize,
}

/// The bounded run of the last committed events, in position order.
pub(crate) struct Tail {
    max_events: usize,
    max_bytes: usize,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<TailEvent>,
    bytes: usize,
}

impl Ring {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.event.position)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|e| e.event.position)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl Tail {
    /// A tail of at most `max_events` events and `max_bytes` bytes; `max_events == 0`
    /// disables it.
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> Self {
        Self {
            max_events,
            max_bytes,
            ring: Mutex::new(Ring::default()),
        }
    }

    /// Whether appenders should build tail entries at all.
    pub(crate) fn enabled(&self) -> bool {
        self.max_events > 0 && self.max_bytes > 0
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        // Nothing in here panics while the lock is held short of running out of memory; if
        // it ever did, an empty tail is always correct (readers fall back to sled).
        self.ring.lock().unwrap_or_else(|poisoned| {
            let mut ring = poisoned.into_inner();
            ring.clear();
            ring
        })
    }

    /// Adds newly committed events, in position order, evicting the oldest beyond the
    /// bounds. Called only by `Shared::publish`, before the head moves past them.
    pub(crate) fn push(&self, events: Vec<TailEvent>) {
        if events.is_empty() || !self.enabled() {
            return;
        }
        let mut ring = self.lock();
        for entry in events {
            // Keep one run of consecutive positions: anything else would let a reader take
            // an event from here while the one before it is missing.
            if ring
                .last()
                .is_some_and(|last| last.checked_add(1) != Some(entry.event.position))
            {
                ring.clear();
            }
            ring.bytes = ring.bytes.saturating_add(entry.bytes);
            ring.entries.push_back(entry);
        }
        while ring.entries.len() > self.max_events || ring.bytes > self.max_bytes {
            match ring.entries.pop_front() {
                Some(old) => ring.bytes = ring.bytes.saturating_sub(old.bytes),
                None => {
                    ring.bytes = 0;
                    break;
                }
            }
        }
    }

    /// Appends the events `from..=to` that the tail holds to `out`, starting at `from`; how
    /// many it appended (0 when the tail does not hold `from`: the caller reads sled).
    /// `to` must not be past the visible head.
    pub(crate) fn read(&self, from: u64, to: u64, out: &mut VecDeque<Arc<StoredEvent>>) -> usize {
        if from > to {
            return 0;
        }
        let ring = self.lock();
        let (Some(first), Some(last)) = (ring.first(), ring.last()) else {
            return 0;
        };
        if from < first || from > last {
            return 0;
        }
        let (Ok(skip), Ok(take)) = (
            usize::try_from(from - first),
            usize::try_from(to.min(last) - from + 1),
        ) else {
            return 0;
        };
        let before = out.len();
        out.extend(
            ring.entries
                .iter()
                .skip(skip)
                .take(take)
                .map(|e| Arc::clone(&e.event)),
        );
        take.min(out.len() - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetops_core::event::Event;
    use fleetops_core::ids::StreamId;
    use fleetops_core::time::Timestamp;
    use uuid::Uuid;

    fn entry(position: u64, bytes: usize) -> TailEvent {
        TailEvent {
            event: Arc::new(StoredEvent {
                event_id: Uuid::from_u128(u128::from(position)),
                stream: StreamId::custom("t").unwrap(),
                stream_version: position,
                position,
                recorded_at: Timestamp::from_millis(position),
                schema_version: 1,
                correlation_id: None,
                causation_id: None,
                idempotency_key: None,
                event: Event::CommandTimedOut {
                    at: Timestamp::from_millis(position),
                },
            }),
            bytes,
        }
    }

    fn positions(tail: &Tail, from: u64, to: u64) -> Vec<u64> {
        let mut out = VecDeque::new();
        let n = tail.read(from, to, &mut out);
        assert_eq!(n, out.len());
        out.iter().map(|e| e.position).collect()
    }

    #[test]
    fn serves_only_the_run_it_holds() {
        let tail = Tail::new(4, usize::MAX);
        assert_eq!(positions(&tail, 1, 10), Vec::<u64>::new());
        tail.push((1..=6).map(|p| entry(p, 1)).collect());
        // Evicted: 1 and 2. Held: 3..=6.
        assert_eq!(positions(&tail, 2, 10), Vec::<u64>::new());
        assert_eq!(positions(&tail, 3, 10), vec![3, 4, 5, 6]);
        assert_eq!(positions(&tail, 4, 5), vec![4, 5]);
        assert_eq!(positions(&tail, 7, 10), Vec::<u64>::new());
        assert_eq!(positions(&tail, 5, 4), Vec::<u64>::new());
    }

    #[test]
    fn a_gap_starts_the_run_over() {
        let tail = Tail::new(100, usize::MAX);
        tail.push((1..=3).map(|p| entry(p, 1)).collect());
        tail.push(vec![entry(5, 1), entry(6, 1)]);
        assert_eq!(positions(&tail, 3, 10), Vec::<u64>::new());
        assert_eq!(positions(&tail, 5, 10), vec![5, 6]);
    }

    #[test]
    fn the_byte_budget_evicts_too() {
        let tail = Tail::new(100, 10);
        tail.push(vec![entry(1, 4), entry(2, 4), entry(3, 4)]);
        assert_eq!(positions(&tail, 1, 3), Vec::<u64>::new());
        assert_eq!(positions(&tail, 2, 3), vec![2, 3]);
        // One event over the budget on its own leaves the tail empty, never wrong.
        tail.push(vec![entry(4, 11)]);
        assert_eq!(positions(&tail, 4, 4), Vec::<u64>::new());
        tail.push(vec![entry(5, 1)]);
        assert_eq!(positions(&tail, 5, 5), vec![5]);
    }

    #[test]
    fn disabled_holds_nothing() {
        let tail = Tail::new(0, 1 << 20);
        assert!(!tail.enabled());
        tail.push(vec![entry(1, 1)]);
        assert_eq!(positions(&tail, 1, 1), Vec::<u64>::new());
    }
}
