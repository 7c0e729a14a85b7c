//! The one scheduler: sleeps until the earliest deadline of the projections' deadline index
//! (command TTLs, in-progress and step timeouts, job start and end times, rollout windows), or
//! until the follower says the index changed, then hands every due deadline to the task that
//! decides it. There is never a sleeping task per execution.
//!
//! A due deadline stays in the index until the event that settles it is folded, so fired
//! deadlines are remembered for a grace period instead of being fired again on every wake;
//! one that is still due after the grace period (its intent failed) is fired again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::{StreamId, Timestamp};
use fleetops_machine::timers::{Due, DueTimers, Timer};

use crate::runtime::Inner;
use crate::runtime::Work;

/// How long a fired deadline may stay due before it is fired again.
const GRACE: StdDuration = StdDuration::from_secs(2);
/// Deadlines fired per pass; the rest wait for the next pass (immediately after).
const FIRE_BATCH: usize = 1024;
/// Due entries looked at per pass.
const SCAN_LIMIT: usize = 8192;

/// The scheduler task.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut inflight: HashMap<StreamId, (Timestamp, Instant)> = HashMap::new();
    loop {
        // Deadlines are the leader's: a runtime that shares its store waits for the lease.
        inner.until_leading().await;
        let now = inner.clock.now();
        let DueTimers {
            fire,
            seen,
            truncated,
            next,
        } = inner.read().due_timers(
            now,
            |stream, at| {
                inflight
                    .get(stream)
                    .is_some_and(|(d, until)| *d == at && Instant::now() < *until)
            },
            SCAN_LIMIT,
            FIRE_BATCH,
        );
        if !truncated {
            inflight.retain(|s, _| seen.contains(s));
        }
        for Due { stream, at, timer } in fire {
            inflight.insert(stream, (at, Instant::now() + GRACE));
            let (thing, work) = match timer {
                Timer::Command {
                    execution_id,
                    thing,
                } => (thing, Work::CommandTimer(execution_id)),
                Timer::Execution { job_id, thing } => {
                    (thing.clone(), Work::ExecutionTimer(job_id, thing))
                }
                Timer::Job(job) => {
                    inner.mark_job(job);
                    continue;
                }
            };
            let shard = inner.shard(&thing).clone();
            if shard.send(work).await.is_err() {
                return;
            }
        }
        if truncated {
            tokio::task::yield_now().await;
            continue;
        }
        let sleep_to = next.filter(|n| *n > now);
        let retry_at = inflight.values().map(|(_, until)| *until).min();
        tokio::select! {
            () = inner.scheduler_wake.notified() => {}
            () = async {
                match sleep_to {
                    Some(at) => inner.clock.sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            } => {}
            () = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => futures::future::pending().await,
                }
            } => {}
        }
    }
}
