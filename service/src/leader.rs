//! Leadership among the runtimes sharing one store.
//!
//! Every runtime folds the whole feed and answers device requests and operator calls. The
//! fleet-wide duties are the leader's alone: the scheduler fires deadlines, the job driver
//! rolls jobs out, the outbox publishes what the folds owe devices. A runtime built without a
//! lease is its own leader from the start; one built with a [`Lease`] runs this task, which
//! waits for the lease, catches up with the feed, takes the duties over (with the same recovery
//! pass as a start: every job gets a tick, every owed message is owed again, overdue deadlines
//! fire) and gives them up when the lease is lost.
//!
//! Two runtimes may briefly both act as leader (a paused one that has not yet noticed it lost
//! the lease). That is safe because every decision is appended with an exact version
//! expectation: the second append of the same transition conflicts, and its runtime reloads
//! and finds nothing left to do. Messages both publish reach devices twice, which the protocol
//! already tells devices to expect.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fleetops_core::lease::Lease;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::JobId;

use crate::runtime::Inner;
use crate::sync::lock;

/// The wait before asking again after the lease backend failed.
const RETRY: StdDuration = StdDuration::from_secs(1);

/// The leadership task: acquire, catch up, lead until the lease is lost, again.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(
    inner: Arc<Inner<S, L>>,
    lease: Arc<dyn Lease>,
) {
    loop {
        let mut hold = match lease.acquire().await {
            Ok(hold) => hold,
            Err(err) => {
                tracing::warn!(%err, "cannot ask for the lease; asking again shortly");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // The previous leader's last writes must be folded before anything is decided from
        // the read model, or the first decisions would all conflict.
        let caught_up = tokio::select! {
            done = inner.catch_up() => done,
            err = hold.lost() => {
                tracing::warn!(%err, "lost the lease while catching up");
                continue;
            }
        };
        if let Err(err) = caught_up {
            tracing::warn!(%err, "cannot catch up with the feed; giving the lease up for now");
            drop(hold);
            tokio::time::sleep(RETRY).await;
            continue;
        }
        inner.leading.send_replace(true);
        tracing::info!(
            checkpoint = inner.read().checkpoint(),
            "leading: timers, rollouts and the outbox are ours"
        );
        inner.take_duties();
        let err = hold.lost().await;
        inner.leading.send_replace(false);
        tracing::warn!(%err, "lost the lease: another instance takes timers, rollouts and the outbox over");
    }
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// Whether this runtime does the fleet-wide duties now.
    pub(crate) fn leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until this runtime leads (at once when it does).
    pub(crate) async fn until_leading(&self) {
        let mut rx = self.leading.subscribe();
        // The sender lives in `self`, so the wait cannot fail while we hold `self`.
        let _ = rx.wait_for(|leading| *leading).await;
    }

    /// The recovery pass of a new leader, as at a start: every job gets a tick (owed retries,
    /// removals, cleanup, rollout and review are all derived from the folded state), every
    /// thing with pending executions and every live command is owed its messages again, and
    /// the scheduler looks at every deadline.
    pub(crate) fn take_duties(&self) {
        let jobs: Vec<JobId> = self.read().jobs.keys().cloned().collect();
        lock(&self.dirty_jobs).extend(jobs);
        self.jobs_wake.notify_one();
        self.queue_recovery();
        self.scheduler_wake.notify_one();
    }
}
