//! The projection follower: folds the global feed into the read models, then hands what the
//! new events imply to the other tasks (job driver, outbox, scheduler, command waiters).

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fleetops_core::link::DeviceLink;
use fleetops_core::store::{EventStore, StoredEvent};
use futures::FutureExt;

use crate::error::FleetError;
use crate::runtime::Inner;
use crate::state::Effects;

/// Events folded per write-lock acquisition: large enough to amortize the lock, small enough
/// that readers never wait long.
const FOLD_BATCH: usize = 512;
/// Events read per call while catching up at start.
const CATCH_UP_PAGE: usize = 4096;

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// Folds every stored event into the read models, without acting on them: the recovery
    /// pass derives what is owed from the final state instead.
    pub(crate) async fn catch_up_at_start(&self) -> Result<(), FleetError> {
        loop {
            let from = self.read().checkpoint() + 1;
            let page = self.store.read_all(from, CATCH_UP_PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            let mut fx = Effects::default();
            let mut st = self.write();
            for e in &page {
                st.apply(e, &mut fx)?;
            }
            let cp = st.checkpoint();
            drop(st);
            self.applied.send_replace(cp);
        }
    }

    /// Folds one batch and distributes its effects; returns whether the fold stopped on an
    /// error (then the caller resubscribes from the checkpoint).
    fn fold(&self, batch: &[StoredEvent]) -> bool {
        let mut fx = Effects::default();
        let mut failed = false;
        let cp = {
            let mut st = self.write();
            for e in batch {
                if let Err(err) = st.apply(e, &mut fx) {
                    match err {
                        // A gap means events were lost between the store and us: start over
                        // from the checkpoint rather than fold past a hole.
                        FleetError::Projection(_) => {
                            tracing::warn!(position = e.position, %err, "projection fold failed");
                            failed = true;
                            break;
                        }
                        // Corrupt history of one stream: report it and go on, so one bad
                        // record does not stop the whole fleet.
                        other => {
                            tracing::error!(position = e.position, err = %other, "skipping an event that does not fold");
                        }
                    }
                }
            }
            st.checkpoint()
        };
        self.applied.send_replace(cp);
        self.distribute(fx);
        self.scheduler_wake.notify_one();
        failed
    }

    /// Starts a snapshot save in the background when enough events were folded since the last.
    fn maybe_snapshot(self: &Arc<Self>) {
        if self.snapshot_due(self.read().checkpoint()) {
            tokio::spawn(crate::snapshot::save(Arc::clone(self)));
        }
    }
}

/// The follower task: a store subscription from the checkpoint, folded in batches.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut backoff = StdDuration::from_millis(10);
    loop {
        let from = inner.read().checkpoint() + 1;
        let mut sub = match inner.store.subscribe(from).await {
            Ok(sub) => sub,
            Err(err) => {
                tracing::warn!(%err, "cannot subscribe to the event feed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(StdDuration::from_secs(2));
                continue;
            }
        };
        loop {
            let first = match sub.next().await {
                Ok(e) => e,
                Err(err) => {
                    tracing::warn!(%err, "event feed failed; resubscribing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(StdDuration::from_secs(2));
                    break;
                }
            };
            backoff = StdDuration::from_millis(10);
            let mut batch = vec![first];
            let mut broken = false;
            while batch.len() < FOLD_BATCH {
                // Take what is already there without waiting; subscriptions are cancel-safe,
                // and a lost event would show as a gap and make us resubscribe anyway.
                match sub.next().now_or_never() {
                    Some(Ok(e)) => batch.push(e),
                    Some(Err(_)) => {
                        broken = true;
                        break;
                    }
                    None => break,
                }
            }
            let failed = inner.fold(&batch);
            inner.maybe_snapshot();
            if failed || broken {
                break;
            }
        }
    }
}
