//! Kill and restart in the middle of a job with timers pending: a new `Fleet` on the same
//! store resumes rollout, timers, retries and owed messages; no execution is lost or stuck,
//! and none has two terminal statuses for one attempt.

mod common;

use std::sync::Arc;

use common::*;
use fleetops_core::config::{FailureType, JobConfig, RetryCriterion, Rollout};
use fleetops_core::store::EventStore;
use fleetops_core::testkit::histories::check_execution_histories;
use fleetops_core::{JobExecutionStatus as S, JobStatus, StreamId};
use fleetops_service::sim::{from_fn, simulate, Outcome, Task};
use fleetops_service::{FleetConfig, JobSpec};
use fleetops_store_memory::MemoryStore;
use serde_json::json;

fn config() -> JobConfig {
    JobConfig {
        rollout: Rollout::Fixed { per_minute: 20 },
        in_progress_timeout: Some(mins(10)),
        retry: vec![
            RetryCriterion {
                failure_type: FailureType::TimedOut,
                number_of_retries: 2,
            },
            RetryCriterion {
                failure_type: FailureType::Failed,
                number_of_retries: 1,
            },
        ],
        ..JobConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_job_loses_nothing_and_leaves_nothing_stuck() {
    let store = MemoryStore::new();
    let clock = fleetops_service::clock::ManualClock::new(T0);
    let job = j("survivor");
    let targets = things("r", 50);
    // First life: a third of the devices start and then go silent (their in-progress timers
    // are pending at the kill), some fail, the rest succeed; only 20 per minute are queued.
    {
        let (fleet, devices) = start(&store, &clock, FleetConfig::default()).await;
        let _sim = simulate(
            devices,
            from_fn(|thing, task| {
                let n: usize = thing.as_str()[1..].parse().unwrap_or(0);
                match (n % 3, task) {
                    (0, Task::Job { attempt: 1, .. }) => Outcome::Ignore,
                    (1, Task::Job { attempt: 1, .. }) => Outcome::Fail,
                    _ => Outcome::Succeed,
                }
            }),
        );
        fleet
            .create_job(
                JobSpec::new(job.clone(), json!({"v": 2}))
                    .things(targets.clone())
                    .config(config()),
            )
            .await
            .unwrap();
        settle(&fleet).await;
        clock.advance(mins(1));
        // Kill without waiting for the fleet to react to the new window.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        drop(fleet);
    }
    let before = store.len().unwrap();
    // Second life: devices behave; time moves on past windows and timeouts.
    let (fleet, devices) = start(&store, &clock, FleetConfig::default()).await;
    let _sim = simulate(devices, Outcome::Succeed);
    for _ in 0..30 {
        clock.advance(mins(1));
        settle(&fleet).await;
        if fleet.describe_job(&job).unwrap().job.status == JobStatus::Completed {
            break;
        }
    }
    let d = fleet.describe_job(&job).unwrap();
    assert!(store.len().unwrap() > before);
    assert_eq!(d.job.status, JobStatus::Completed, "{d:?}");
    assert_eq!(d.counters.total(), 50);
    assert_eq!(d.counters.succeeded, 50, "{:?}", d.counters);
    check_execution_histories(&store, &job, &targets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_at_arbitrary_moments_still_finish_the_job() {
    let store = MemoryStore::new();
    let clock = fleetops_service::clock::ManualClock::new(T0);
    let job = j("phoenix");
    let targets = things("k", 60);
    let mut created = false;
    // Odd lives save a snapshot every few events and resume from the last one; even lives
    // neither save nor load one and fold the whole feed. Either way, nothing is lost.
    let snapshots = |life: u64| FleetConfig {
        snapshot_every: if life % 2 == 1 { 5 + life } else { 0 },
        ..FleetConfig::default()
    };
    let mut resumed = 0;
    for life in 0..6u64 {
        let (fleet, devices) = start(&store, &clock, snapshots(life)).await;
        resumed += fleet.snapshot_position();
        let _sim = simulate(
            devices,
            from_fn(move |thing, task| {
                let n: usize = thing.as_str()[1..].parse().unwrap_or(0);
                match (n % 4, task) {
                    (0, Task::Job { attempt: 1, .. }) => Outcome::Ignore,
                    (1, Task::Job { attempt: 1, .. }) => Outcome::Fail,
                    _ => Outcome::Succeed,
                }
            }),
        );
        if !created {
            fleet
                .create_job(
                    JobSpec::new(job.clone(), json!({}))
                        .things(targets.clone())
                        .config(config()),
                )
                .await
                .unwrap();
            created = true;
        }
        // Let it run a little, move time, and kill it mid-flight.
        tokio::time::sleep(std::time::Duration::from_millis(3 + life * 2)).await;
        clock.advance(mins(4));
        tokio::time::sleep(std::time::Duration::from_millis(1 + life)).await;
        drop(fleet);
    }
    let (fleet, devices) = start(&store, &clock, snapshots(7)).await;
    resumed += fleet.snapshot_position();
    assert!(resumed > 0, "some lives resumed from a snapshot");
    let _sim = simulate(devices, Outcome::Succeed);
    for _ in 0..40 {
        clock.advance(mins(1));
        settle(&fleet).await;
        if fleet.describe_job(&job).unwrap().job.status == JobStatus::Completed {
            break;
        }
    }
    let d = fleet.describe_job(&job).unwrap();
    assert_eq!(d.job.status, JobStatus::Completed, "{d:?}");
    assert_eq!(d.counters.total(), 60);
    assert_eq!(d.counters.pending(), 0);
    assert_eq!(
        d.counters.succeeded + d.counters.failed + d.counters.timed_out,
        60
    );
    check_execution_histories(&store, &job, &targets).await;
    for th in &targets {
        let x = fleet.get_job_execution(&job, th).await.unwrap();
        assert!(
            x.status.is_terminal() && x.status != S::Removed,
            "{th}: {:?}",
            x.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_commands_are_sent_again_and_overdue_ones_time_out_after_a_restart() {
    use fleetops_core::device::Outbound;
    use fleetops_core::{CommandStatus, Duration};
    let store = MemoryStore::new();
    let clock = fleetops_service::clock::ManualClock::new(T0);
    let (short, long) = {
        let (fleet, mut devices) = start(&store, &clock, FleetConfig::default()).await;
        let short = fleet
            .send_command(t("a"), "blink", json!({}), Duration::from_secs(10))
            .await
            .unwrap();
        let long = fleet
            .send_command(t("b"), "blink", json!({}), Duration::from_secs(100))
            .await
            .unwrap();
        // Both requests went out once.
        for _ in 0..2 {
            assert!(matches!(
                devices.recv().await,
                Some(Outbound::CommandRequest { .. })
            ));
        }
        (short.execution_id().clone(), long.execution_id().clone())
    };
    // Down for 30 s: the short TTL passed meanwhile.
    clock.advance(Duration::from_secs(30));
    let (fleet, mut devices) = start(&store, &clock, FleetConfig::default()).await;
    settle(&fleet).await;
    assert_eq!(
        fleet.get_command(&short).await.unwrap().status,
        CommandStatus::TimedOut
    );
    let resent: Vec<_> = devices
        .drain()
        .into_iter()
        .filter_map(|m| match m {
            Outbound::CommandRequest {
                execution_id, ttl, ..
            } => Some((execution_id, ttl)),
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec![(long.clone(), Duration::from_secs(70))]);
    assert_eq!(
        fleet.get_command(&long).await.unwrap().status,
        CommandStatus::Sent
    );
}

/// A store that hands out a snapshot saved elsewhere, unchecked (as an adapter that does not
/// check keys would), and records deletions.
#[derive(Clone)]
struct Transplant {
    inner: MemoryStore,
    foreign: Option<fleetops_core::store::Snapshot>,
    deleted: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl EventStore for Transplant {
    async fn append(
        &self,
        b: fleetops_core::store::AppendBatch,
    ) -> Result<fleetops_core::store::Appended, fleetops_core::StoreError> {
        self.inner.append(b).await
    }
    async fn read_stream(
        &self,
        s: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<fleetops_core::store::StoredEvent>, fleetops_core::StoreError> {
        self.inner.read_stream(s, from, limit).await
    }
    async fn stream_version(&self, s: &StreamId) -> Result<Option<u64>, fleetops_core::StoreError> {
        self.inner.stream_version(s).await
    }
    async fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<fleetops_core::store::StoredEvent>, fleetops_core::StoreError> {
        self.inner.read_all(from, limit).await
    }
    async fn head_position(&self) -> Result<u64, fleetops_core::StoreError> {
        self.inner.head_position().await
    }
    async fn subscribe(
        &self,
        from: u64,
    ) -> Result<Box<dyn fleetops_core::store::Subscription>, fleetops_core::StoreError> {
        self.inner.subscribe(from).await
    }
    async fn load_snapshot(
        &self,
        _name: &str,
    ) -> Result<Option<fleetops_core::store::Snapshot>, fleetops_core::StoreError> {
        Ok(self.foreign.clone())
    }
    async fn delete_snapshot(&self, _name: &str) -> Result<(), fleetops_core::StoreError> {
        self.deleted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_another_history_is_deleted_and_the_start_folds_the_whole_feed() {
    // History A, with a snapshot saved at its shutdown.
    let a = MemoryStore::new();
    let clock = fleetops_service::clock::ManualClock::new(T0);
    let (fleet, _devices) = start(&a, &clock, FleetConfig::default()).await;
    fleet
        .create_job(JobSpec::new(j("job-a"), json!({"op": "a"})).things(things("a", 3)))
        .await
        .unwrap();
    settle(&fleet).await;
    fleet.shutdown().await;
    let snapshot = a.load_snapshot("fleet").await.unwrap().expect("saved");

    // History B: other events, at least as long, so the position fits its feed.
    let b = MemoryStore::new();
    let (fleet, _devices) = start(&b, &clock, FleetConfig::default()).await;
    fleet
        .create_job(JobSpec::new(j("job-b"), json!({"op": "b"})).things(things("b", 5)))
        .await
        .unwrap();
    settle(&fleet).await;
    fleet.abort().await;
    assert!(b.head_position().await.unwrap() >= snapshot.position);

    let deleted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = Transplant {
        inner: b.clone(),
        foreign: Some(snapshot),
        deleted: Arc::clone(&deleted),
    };
    let (link, _devices) = fleetops_service::link::ChannelLink::pair(64);
    let fleet = fleetops_service::Fleet::builder(store, link)
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(
        fleet.snapshot_position(),
        0,
        "the foreign snapshot was not used"
    );
    assert_eq!(
        deleted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "and it was deleted"
    );
    // The full fold of B: its own job, and nothing of A's.
    assert_eq!(
        fleet.checkpoint(),
        b.head_position().await.unwrap(),
        "folded the whole feed"
    );
    assert!(fleet.describe_job(&j("job-b")).is_ok());
    assert!(fleet.describe_job(&j("job-a")).is_err());
}
