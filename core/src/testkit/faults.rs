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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Switches the faults of a [`FaultyStore`] and counts its subscriptions. Cloned freely; every
/// clone controls the same store.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    fault: watch::Sender<Fault>,
    subscribes: Arc<AtomicU64>,
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

    /// How many times `subscribe` was called, failed calls included: shows how often a
    /// runtime retries its feed.
    pub fn subscribes(&self) -> u64 {
        self.subscribes.load(Ordering::SeqCst)
    }
}

impl<S: EventStore> FaultyStore<S> {
    /// Wraps `inner`, injecting no fault until told to.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            handle: FaultHandle {
                fault: watch::Sender::new(Fault::None),
                subscribes: Arc::new(AtomicU64::new(0)),
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
        self.inner.append(batch).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
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
