//! A fault-injecting [`EventStore`] wrapper, for testing how a runtime behaves when its store
//! breaks and comes back.
//!
//! [`FaultyStore`] forwards every call to the store it wraps until its [`FaultHandle`] says
//! otherwise:
//! - [`FaultHandle::fail`]: every feed call (append, reads, versions, head, subscribe) fails
//!   with [`StoreError::Backend`] whose detail is [`FAULT_DETAIL`], as a store whose disk went
//!   away; every live subscription ends with that error, including one already waiting for the
//!   next event. A subscription that failed stays failed: the caller must subscribe again.
//! - [`FaultHandle::stall`]: calls work, but live subscriptions deliver nothing more until the
//!   fault is cleared (an event already received is held back, never lost): a stuck feed.
//! - [`FaultHandle::heal`]: back to forwarding everything.
//! - [`FaultHandle::hold`]: appends that write to a given stream wait, before they reach the
//!   wrapped store, until [`FaultHandle::release`]: a store slow for one stream, to show what
//!   waits behind such an append and what does not. Independent of the fault above.
//!
//! Snapshot calls (`load_snapshot`, `save_snapshot`, `delete_snapshot`) always pass through:
//! snapshots are a cache beside the feed, and the faults model the feed going away.
//!
//! ```text
//! let store = FaultyStore::new(MemoryStore::new());
//! let faults = store.handle();
//! let fleet = Fleet::builder(store, link).start().await?;
//! faults.fail();   // the runtime sees its store fail
//! faults.heal();   // and recover
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::ids::StreamId;
use crate::store::{
    AppendBatch, Appended, EventStore, Snapshot, StoreError, StoredEvent, Subscription,
};

/// The detail of every [`StoreError::Backend`] a failing [`FaultyStore`] returns.
pub const FAULT_DETAIL: &str = "disk gone (injected fault)";

/// The fault a [`FaultyStore`] currently injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Every call is forwarded.
    #[default]
    None,
    /// Every feed call fails and live subscriptions end with an error.
    Fail,
    /// Calls work, but live subscriptions deliver nothing.
    Stall,
}

fn injected() -> StoreError {
    StoreError::Backend {
        detail: FAULT_DETAIL.into(),
    }
}

/// An [`EventStore`] that forwards to `S` and fails or stalls on demand (see the module docs).
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    handle: FaultHandle,
}

/// Switches the faults of a [`FaultyStore`] and counts its subscriptions and stream reads.
/// Cloned freely; every clone controls the same store.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    fault: watch::Sender<Fault>,
    held: watch::Sender<HashSet<StreamId>>,
    holding: Arc<AtomicU64>,
    subscribes: Arc<AtomicU64>,
    stream_reads: Arc<Mutex<HashMap<StreamId, u64>>>,
}

impl FaultHandle {
    /// Makes every feed call fail and ends every live subscription with an error.
    pub fn fail(&self) {
        self.set(Fault::Fail);
    }

    /// Makes live subscriptions deliver nothing more, while calls keep working.
    pub fn stall(&self) {
        self.set(Fault::Stall);
    }

    /// Clears the fault: every call is forwarded again.
    pub fn heal(&self) {
        self.set(Fault::None);
    }

    /// Sets the fault injected from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault injected now.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Holds every append that writes to `stream` until [`FaultHandle::release`]; appends
    /// already past the hold are not affected.
    pub fn hold(&self, stream: StreamId) {
        self.held.send_modify(|held| {
            held.insert(stream);
        });
    }

    /// Lets every held append go on.
    pub fn release(&self) {
        self.held.send_modify(HashSet::clear);
    }

    /// How many appends are waiting at a hold now.
    pub fn holding(&self) -> u64 {
        self.holding.load(Ordering::SeqCst)
    }

    /// How many times `subscribe` was called, failed calls included: shows how often a
    /// runtime retries its feed.
    pub fn subscribes(&self) -> u64 {
        self.subscribes.load(Ordering::SeqCst)
    }

    /// How many times `read_stream` was called for `stream`, failed calls included: shows
    /// which states a runtime reads back rather than holding them.
    pub fn stream_reads(&self, stream: &StreamId) -> u64 {
        let reads = self.stream_reads.lock().unwrap_or_else(|e| e.into_inner());
        reads.get(stream).copied().unwrap_or(0)
    }
}

impl<S: EventStore> FaultyStore<S> {
    /// Wraps `inner`, injecting no fault until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            handle: FaultHandle {
                fault: watch::Sender::new(Fault::None),
                held: watch::Sender::new(HashSet::new()),
                holding: Arc::new(AtomicU64::new(0)),
                subscribes: Arc::new(AtomicU64::new(0)),
                stream_reads: Arc::default(),
            },
        }
    }

    /// The handle that switches this store's faults.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    /// The wrapped store, reached without any fault.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.handle.fault() {
            Fault::Fail => Err(injected()),
            Fault::None | Fault::Stall => Ok(()),
        }
    }
}

/// One append counted in [`FaultHandle::holding`] while it waits, uncounted however the wait
/// ends (the append's future may be dropped).
struct Holding<'a>(&'a AtomicU64);

impl<'a> Holding<'a> {
    fn count(holding: &'a AtomicU64) -> Self {
        holding.fetch_add(1, Ordering::SeqCst);
        Self(holding)
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A subscription of a [`FaultyStore`].
struct FaultySubscription {
    inner: Box<dyn Subscription>,
    fault: watch::Receiver<Fault>,
    /// An event received from `inner` but not yet delivered (a stall began meanwhile). Kept
    /// here rather than in a local so that a caller dropping `next` midway loses nothing.
    held: Option<Result<StoredEvent, StoreError>>,
    failed: bool,
}

#[async_trait]
impl Subscription for FaultySubscription {
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if self.failed {
                return Err(injected());
            }
            let fault = *self.fault.borrow_and_update();
            match fault {
                Fault::Fail => {
                    self.failed = true;
                    continue;
                }
                Fault::Stall => {
                    if self.fault.changed().await.is_err() {
                        // Every handle is gone: nothing can clear the stall.
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
                Fault::None => {}
            }
            if let Some(held) = self.held.take() {
                return held;
            }
            // Only a failure interrupts a pending read: a stall lets it finish and holds the
            // event back, so nothing depends on the wrapped subscription being cancel-safe.
            let fault = &mut self.fault;
            tokio::select! {
                e = self.inner.next() => self.held = Some(e),
                closed = async { fault.wait_for(|f| *f == Fault::Fail).await.is_err() } => {
                    if closed {
                        // Every handle is gone: no fault can come any more.
                        self.held = Some(self.inner.next().await);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl<S: EventStore> EventStore for FaultyStore<S> {
    async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        self.check()?;
        let mut held = self.handle.held.subscribe();
        let free = |h: &HashSet<StreamId>| !batch.streams.iter().any(|s| h.contains(&s.stream));
        if !free(&held.borrow_and_update()) {
            let _counted = Holding::count(&self.handle.holding);
            // The sender lives in the handle, which `self` holds: the wait cannot fail.
            let _ = held.wait_for(free).await;
        }
        self.check()?;
        self.inner.append(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        {
            let mut reads = self
                .handle
                .stream_reads
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *reads.entry(stream.clone()).or_default() += 1;
        }
        self.check()?;
        self.inner.read_stream(stream, from, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<u64>, StoreError> {
        self.check()?;
        self.inner.stream_version(stream).await
    }

    async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.check()?;
        self.inner.read_all(from, limit).await
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.head_position().await
    }

    async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
        self.handle.subscribes.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        Ok(Box::new(FaultySubscription {
            inner: self.inner.subscribe(from).await?,
            fault: self.handle.fault.subscribe(),
            held: None,
            failed: false,
        }))
    }

    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(name).await
    }

    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(name, snapshot).await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        self.inner.delete_snapshot(name).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration as StdDuration;

    use tokio::sync::mpsc;
    use tokio::time::timeout;
    use uuid::Uuid;

    use super::*;
    use crate::event::Event;
    use crate::store::{ExpectedVersion, NewEvent};
    use crate::time::Timestamp;

    /// A store whose one subscription delivers what the test sends, and which keeps
    /// snapshots; the feed calls answer as an empty store.
    struct Probe {
        feed: Mutex<Option<mpsc::UnboundedReceiver<StoredEvent>>>,
        snapshots: Mutex<HashMap<String, Snapshot>>,
    }

    /// Slow to hand over an event it already took: a read dropped in that window loses the
    /// event, so the wrapper must never cancel a read that may have taken one.
    struct ProbeSubscription(mpsc::UnboundedReceiver<StoredEvent>);

    const HANDOVER: StdDuration = StdDuration::from_millis(300);

    #[async_trait]
    impl Subscription for ProbeSubscription {
        async fn next(&mut self) -> Result<StoredEvent, StoreError> {
            let e = self.0.recv().await.ok_or(StoreError::Closed);
            tokio::time::sleep(HANDOVER).await;
            e
        }
    }

    #[async_trait]
    impl EventStore for Probe {
        async fn append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
            batch.validate()?;
            Ok(Appended {
                first_position: 1,
                last_position: 1,
                versions: Vec::new(),
            })
        }
        async fn read_stream(
            &self,
            _: &StreamId,
            _: u64,
            _: usize,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn stream_version(&self, _: &StreamId) -> Result<Option<u64>, StoreError> {
            Ok(None)
        }
        async fn read_all(&self, _: u64, _: usize) -> Result<Vec<StoredEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn head_position(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        async fn subscribe(&self, _: u64) -> Result<Box<dyn Subscription>, StoreError> {
            let rx = self.feed.lock().unwrap().take().expect("one subscription");
            Ok(Box::new(ProbeSubscription(rx)))
        }
        async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
            Ok(self.snapshots.lock().unwrap().get(name).cloned())
        }
        async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
            self.snapshots
                .lock()
                .unwrap()
                .insert(name.to_owned(), snapshot);
            Ok(())
        }
        async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
            self.snapshots.lock().unwrap().remove(name);
            Ok(())
        }
    }

    fn probe() -> (FaultyStore<Probe>, mpsc::UnboundedSender<StoredEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = FaultyStore::new(Probe {
            feed: Mutex::new(Some(rx)),
            snapshots: Mutex::new(HashMap::new()),
        });
        (store, tx)
    }

    fn stored(position: u64) -> StoredEvent {
        let at = Timestamp::from_secs(1_700_000_000 + position);
        StoredEvent {
            event_id: Uuid::from_u128(u128::from(position)),
            stream: StreamId::custom("probe").unwrap(),
            stream_version: position,
            position,
            recorded_at: at,
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            event: Event::CommandTimedOut { at },
        }
    }

    const SHORT: StdDuration = StdDuration::from_millis(100);

    #[tokio::test]
    async fn failing_fails_every_feed_call_and_healing_restores_them() {
        let (store, _tx) = probe();
        let faults = store.handle();
        let stream = StreamId::custom("probe").unwrap();
        assert_eq!(store.head_position().await, Ok(0));

        faults.fail();
        assert_eq!(faults.fault(), Fault::Fail);
        let backend = Err::<(), _>(injected());
        assert_eq!(store.head_position().await.map(drop), backend);
        assert_eq!(store.read_all(1, 10).await.map(drop), backend);
        assert_eq!(store.read_stream(&stream, 1, 10).await.map(drop), backend);
        assert_eq!(store.stream_version(&stream).await.map(drop), backend);
        let e = stored(1);
        let new = NewEvent::new(e.event_id, e.event, e.recorded_at);
        let batch = AppendBatch::single(stream.clone(), ExpectedVersion::Any, vec![new]);
        assert_eq!(store.append(batch.clone()).await.map(drop), backend);
        assert_eq!(store.subscribe(1).await.map(drop).err(), Some(injected()));
        assert_eq!(faults.subscribes(), 1, "a failed subscribe counts");

        faults.heal();
        assert_eq!(store.head_position().await, Ok(0));
        assert!(store.append(batch).await.is_ok());
    }

    #[tokio::test]
    async fn a_held_stream_holds_its_appends_only_until_released() {
        let (store, _tx) = probe();
        let faults = store.handle();
        let append = |name: &str| {
            let e = stored(1);
            let new = NewEvent::new(e.event_id, e.event, e.recorded_at);
            let stream = StreamId::custom(name).unwrap();
            AppendBatch::single(stream, ExpectedVersion::Any, vec![new])
        };
        faults.hold(StreamId::custom("slow").unwrap());
        let held = store.append(append("slow"));
        tokio::pin!(held);
        assert!(timeout(SHORT, &mut held).await.is_err(), "held");
        assert_eq!(faults.holding(), 1);
        assert!(
            store.append(append("other")).await.is_ok(),
            "other streams pass"
        );
        faults.release();
        assert!(timeout(SHORT, held).await.expect("released").is_ok());
        assert_eq!(faults.holding(), 0);
    }

    #[tokio::test]
    async fn snapshots_pass_through_while_failing() {
        let (store, _tx) = probe();
        store.handle().fail();
        let snapshot = Snapshot {
            position: 0,
            event_key: 0,
            bytes: vec![1, 2, 3],
        };
        store.save_snapshot("p", snapshot.clone()).await.unwrap();
        assert_eq!(store.load_snapshot("p").await, Ok(Some(snapshot)));
        store.delete_snapshot("p").await.unwrap();
        assert_eq!(store.load_snapshot("p").await, Ok(None));
        assert!(store.inner().snapshots.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failure_ends_a_waiting_subscription_for_good() {
        let (store, tx) = probe();
        let faults = store.handle();
        let mut sub = store.subscribe(1).await.unwrap();
        tx.send(stored(1)).unwrap();
        assert_eq!(sub.next().await, Ok(stored(1)));

        // Waiting for an event that never comes: the failure ends the wait.
        let waiting = tokio::spawn(async move {
            let r = sub.next().await;
            (r, sub)
        });
        tokio::time::sleep(SHORT).await;
        faults.fail();
        let (r, mut sub) = timeout(StdDuration::from_secs(5), waiting)
            .await
            .expect("the failure wakes the waiting read")
            .unwrap();
        assert_eq!(r, Err(injected()));

        // Healing does not revive it, even with events waiting.
        faults.heal();
        tx.send(stored(2)).unwrap();
        assert_eq!(sub.next().await, Err(injected()));
        assert_eq!(faults.subscribes(), 1);
    }

    #[tokio::test]
    async fn a_stall_holds_events_back_and_loses_none() {
        let (store, tx) = probe();
        let faults = store.handle();
        let mut sub = store.subscribe(1).await.unwrap();

        // Stalled before the event: nothing is delivered.
        faults.stall();
        tx.send(stored(1)).unwrap();
        assert!(timeout(SHORT, sub.next()).await.is_err(), "stalled");
        faults.heal();
        assert_eq!(sub.next().await, Ok(stored(1)));

        // Stalled while a read is handing an event over: the read is not cancelled (the
        // event would be lost) but its event held back, then delivered.
        let waiting = tokio::spawn(async move {
            let r = sub.next().await;
            (r, sub)
        });
        tokio::time::sleep(SHORT).await;
        tx.send(stored(2)).unwrap();
        tokio::time::sleep(HANDOVER / 10).await;
        faults.stall();
        tokio::time::sleep(HANDOVER + SHORT).await;
        assert!(!waiting.is_finished(), "delivered while stalled");
        faults.heal();
        let (r, mut sub) = timeout(StdDuration::from_secs(5), waiting)
            .await
            .expect("delivered once healed")
            .unwrap();
        assert_eq!(r, Ok(stored(2)));

        // Calls keep working while stalled.
        faults.stall();
        assert_eq!(store.head_position().await, Ok(0));
        faults.heal();
        tx.send(stored(3)).unwrap();
        assert_eq!(sub.next().await, Ok(stored(3)));
    }
}
