//! The one scheduler: sleeps until the earliest deadline of the projections' deadline index
//! (command TTLs, in-progress and step timeouts, job start and end times, rollout windows), or
//! until the follower says the index changed, then hands every due deadline to the task that
//! decides it. There is never a sleeping task per execution.
//!
//! A due deadline stays in the index until the event that settles it is folded, so fired
//! deadlines are remembered for a grace period instead of being fired again on every wake;
//! one that is still due after the grace period (its intent failed) is fired again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::ids::StreamKind;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::{StreamId, Timestamp};

use crate::runtime::Inner;
use crate::runtime::Work;

/// How long a fired deadline may stay due before it is fired again.
const GRACE: StdDuration = StdDuration::from_secs(2);
/// Deadlines fired per pass; the rest wait for the next pass (immediately after).
const FIRE_BATCH: usize = 1024;
/// Due entries looked at per pass.
const SCAN_LIMIT: usize = 8192;

/// Where a due deadline goes.
enum Target {
    Shard(Work),
    Job(fleetops_core::JobId),
}

/// The scheduler task.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut inflight: HashMap<StreamId, (Timestamp, Instant)> = HashMap::new();
    loop {
        let now = inner.clock.now();
        let mut fire: Vec<(StreamId, Timestamp, Target)> = Vec::new();
        let mut seen: HashSet<StreamId> = HashSet::new();
        let mut truncated = false;
        let next = {
            let st = inner.read();
            for (at, stream) in st.proj.due(now) {
                if seen.len() >= SCAN_LIMIT || fire.len() >= FIRE_BATCH {
                    truncated = true;
                    break;
                }
                seen.insert(stream.clone());
                if let Some((d, until)) = inflight.get(stream) {
                    if d == at && Instant::now() < *until {
                        continue;
                    }
                }
                let target = match stream.kind() {
                    StreamKind::Command(id) => match st.command(&id) {
                        Some(_) => Target::Shard(Work::CommandTimer(id)),
                        None => continue,
                    },
                    StreamKind::JobExecution(job, thing) => {
                        Target::Shard(Work::ExecutionTimer(job, thing))
                    }
                    StreamKind::Job(job) => Target::Job(job),
                    StreamKind::Group(_) | StreamKind::Custom(_) => continue,
                };
                fire.push((stream.clone(), *at, target));
            }
            st.proj.next_deadline()
        };
        if !truncated {
            inflight.retain(|s, _| seen.contains(s));
        }
        for (stream, at, target) in fire {
            inflight.insert(stream, (at, Instant::now() + GRACE));
            match target {
                Target::Shard(work) => {
                    let thing = match &work {
                        Work::ExecutionTimer(_, t) => Some(t.clone()),
                        Work::CommandTimer(id) => inner.read().command(id).map(|c| c.thing.clone()),
                        Work::Device(i, _) => Some(i.thing.clone()),
                    };
                    let Some(thing) = thing else { continue };
                    let shard = inner.shard(&thing).clone();
                    if shard.send(work).await.is_err() {
                        return;
                    }
                }
                Target::Job(job) => inner.mark_job(job),
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
