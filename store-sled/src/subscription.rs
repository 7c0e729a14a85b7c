//! Subscriptions to the feed: from the live tail when they keep up, from sled when behind.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use fleetops_core::store::{StoreError, StoredEvent, Subscription};
use tokio::sync::watch;

use crate::guard::blocking;
use crate::inner::Inner;
use crate::read::{missing, read_all_blocking};

/// Events a subscription reads ahead per trip to sled (large enough to decode in parallel
/// while catching up; when following live it reads whatever is new).
const SUBSCRIPTION_CHUNK: usize = 4096;

/// A subscription: takes the feed by position, from the live tail when it holds the next
/// position and from sled in chunks otherwise, then waits for the head to move.
///
/// Events are pulled by position, never pushed through a channel, so a slow subscriber
/// cannot lag out or skip: it simply reads further behind (from sled once the tail has moved
/// on), and catching up after a restart is the same code path as following live.
pub(crate) struct SledSubscription {
    inner: Arc<Inner>,
    next: u64,
    /// Shared with the tail when they came from it; unwrapped (or cloned) when delivered.
    buffer: VecDeque<Arc<StoredEvent>>,
    head_rx: watch::Receiver<u64>,
    /// Set after a chunk failed to read: from then on events are read one by one.
    careful: bool,
}

impl SledSubscription {
    /// A subscription from position `from` (at least 1).
    pub(crate) fn new(inner: Arc<Inner>, from: u64) -> Self {
        let mut head_rx = inner.shared.watch_head();
        head_rx.mark_changed();
        Self {
            inner,
            next: from.max(1),
            buffer: VecDeque::new(),
            head_rx,
            careful: false,
        }
    }
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
