//! Subscriptions: pages of `read_all` from the subscriber's position, and between pages a wait
//! for the head to move (this store's writer or the LISTEN session raise it) or for the poll
//! interval to pass. Positions are read in order from the feed, which has no holes in commit
//! order (see the crate README), so nothing is skipped or repeated.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleetops_core::store::{StoreError, StoredEvent, Subscription};
use tokio::sync::watch;

use crate::read::Reader;

/// Events read per page.
const PAGE: usize = 512;

/// A live feed from a position on.
pub(crate) struct PgSubscription {
    reader: Arc<Reader>,
    /// Keeps the head's sender alive, so `changed` never fails while this exists.
    _head: Arc<watch::Sender<u64>>,
    wake: watch::Receiver<u64>,
    next: u64,
    buffer: VecDeque<StoredEvent>,
    poll: Duration,
}

impl PgSubscription {
    pub(crate) fn new(
        reader: Arc<Reader>,
        head: Arc<watch::Sender<u64>>,
        from: u64,
        poll: Duration,
    ) -> Self {
        Self {
            reader,
            wake: head.subscribe(),
            _head: head,
            next: from.max(1),
            buffer: VecDeque::new(),
            poll,
        }
    }
}

#[async_trait]
impl Subscription for PgSubscription {
    /// Cancel-safe: the position moves only when an event is handed out.
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.next = e.position + 1;
                return Ok(e);
            }
            // Marked seen before reading: a head published during the read wakes the wait.
            self.wake.borrow_and_update();
            let page = match self.reader.read_all(self.next, PAGE).await {
                // Hand out the good events before a damaged one: read one at a time, so the
                // error comes exactly at the damaged position.
                Err(StoreError::Corrupt { .. }) => self.reader.read_all(self.next, 1).await?,
                other => other?,
            };
            if page.is_empty() {
                let _ = tokio::time::timeout(self.poll, self.wake.changed()).await;
            } else {
                self.buffer.extend(page);
            }
        }
    }
}
