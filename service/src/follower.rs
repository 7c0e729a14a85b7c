//! The projection follower: folds the global feed into the read models, then hands what the
//! new events imply to the other tasks (job driver, outbox, scheduler, command waiters).

use std::sync::Arc;

use fleetops_core::link::DeviceLink;
use fleetops_core::store::{EventStore, StoredEvent};
use futures::FutureExt;

use crate::error::FleetError;
use crate::health::Backoff;
use crate::runtime::Inner;
use fleetops_machine::Effects;

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

    /// Folds one batch and distributes its effects; returns why the fold stopped on an
    /// error, if it did (then the caller resubscribes from the checkpoint, after a backoff).
    fn fold(&self, batch: &[StoredEvent]) -> Option<String> {
        let mut fx = Effects::default();
        let (folded, cp) = {
            let mut st = self.write();
            let folded = st.fold_batch(batch, &mut fx);
            (folded, st.checkpoint())
        };
        for (position, err) in &folded.skipped {
            tracing::error!(position, %err, "skipping an event that does not fold");
        }
        self.applied.send_replace(cp);
        self.distribute(fx);
        self.scheduler_wake.notify_one();
        folded
            .stopped
            .map(|(position, err)| format!("position {position}: {err}"))
    }

    /// Starts a snapshot save in the background when enough events were folded since the last.
    fn maybe_snapshot(self: &Arc<Self>) {
        if self.snapshot_due(self.read().checkpoint()) {
            tokio::spawn(crate::snapshot::save(Arc::clone(self)));
        }
    }
}

/// The follower task: a store subscription from the checkpoint, folded in batches.
///
/// Whatever fails (subscribing, reading the feed, folding it) is reported to the runtime's
/// health and retried from the checkpoint after an exponential backoff (10 ms doubling up
/// to 5 s), reset only once a batch folds: a feed that keeps failing is retried a few
/// times a second at first and then every 5 s, never in a tight loop.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut backoff = Backoff::new();
    loop {
        let from = inner.read().checkpoint() + 1;
        let mut sub = match inner.store.subscribe(from).await {
            Ok(sub) => sub,
            Err(err) => {
                inner.health.follower_failed("subscribe", &err.to_string());
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        // Subscribed with nothing left to fold: as good as a fold (a caught-up follower may
        // wait long for the next event). Behind, only a fold proves it works again.
        if matches!(inner.store.head_position().await, Ok(head) if head < from) {
            inner.health.follower_folded();
            backoff.reset();
        }
        loop {
            let first = match sub.next().await {
                Ok(e) => e,
                Err(err) => {
                    inner
                        .health
                        .follower_failed("read the feed", &err.to_string());
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            };
            let mut batch = vec![first];
            let mut broken = false;
            while batch.len() < FOLD_BATCH {
                // Take what is already there without waiting; subscriptions are cancel-safe,
                // and a lost event would show as a gap and make us resubscribe anyway.
                match sub.next().now_or_never() {
                    Some(Ok(e)) => batch.push(e),
                    Some(Err(_)) => {
                        // Folded up to here first; the error shows again on resubscribing.
                        broken = true;
                        break;
                    }
                    None => break,
                }
            }
            let failed = inner.fold(&batch);
            inner.maybe_snapshot();
            if let Some(err) = failed {
                inner.health.follower_failed("fold", &err);
                tokio::time::sleep(backoff.next_delay()).await;
                break;
            }
            inner.health.follower_folded();
            backoff.reset();
            if broken {
                break;
            }
        }
    }
}
