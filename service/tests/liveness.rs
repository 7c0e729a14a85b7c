//! A runtime whose store fails, or whose projection follower cannot fold, says so and fails
//! writes fast instead of hanging; its follower retries with a capped backoff rather than in
//! a tight loop, and recovers once the store does.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use async_trait::async_trait;
use common::*;
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, Snapshot, StoreError, StoredEvent, Subscription,
};
use fleetops_core::StreamId;
use fleetops_service::clock::ManualClock;
use fleetops_service::ids::SequentialIds;
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::{Fleet, FleetConfig, FleetError, HealthStatus, JobSpec};
use fleetops_store_memory::MemoryStore;
use serde_json::json;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Healthy,
    /// Every call fails, as a store whose disk went away.
    Failing,
    /// Appends work, but the feed delivers nothing more: the follower is stuck.
    Stalled,
}

/// A `MemoryStore` that can be told to fail.
#[derive(Clone)]
struct Flaky {
    inner: MemoryStore,
    mode: watch::Sender<Mode>,
    subscribes: Arc<AtomicU64>,
}

impl Flaky {
    fn new() -> Self {
        Self {
            inner: MemoryStore::new(),
            mode: watch::Sender::new(Mode::Healthy),
            subscribes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn check(&self) -> Result<(), StoreError> {
        if *self.mode.borrow() == Mode::Failing {
            return Err(StoreError::Backend {
                detail: "disk gone".into(),
            });
        }
        Ok(())
    }
}

struct FlakySub {
    inner: Box<dyn Subscription>,
    mode: watch::Receiver<Mode>,
}

#[async_trait]
impl Subscription for FlakySub {
    async fn next(&mut self) -> Result<StoredEvent, StoreError> {
        let failing = StoreError::Backend {
            detail: "disk gone".into(),
        };
        loop {
            let mode = *self.mode.borrow_and_update();
            match mode {
                Mode::Failing => return Err(failing),
                Mode::Stalled => {
                    let _ = self.mode.changed().await;
                    continue;
                }
                Mode::Healthy => {}
            }
            tokio::select! {
                e = self.inner.next() => return e,
                _ = self.mode.changed() => {}
            }
        }
    }
}

#[async_trait]
impl EventStore for Flaky {
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
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        Ok(Box::new(FlakySub {
            inner: self.inner.subscribe(from).await?,
            mode: self.mode.subscribe(),
        }))
    }
    async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(name).await
    }
    async fn save_snapshot(&self, name: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(name, snapshot).await
    }
}

async fn fleet(store: &Flaky) -> (Fleet<Flaky, ChannelLink>, DeviceEnd) {
    let (link, devices) = ChannelLink::pair(1024);
    let fleet = Fleet::builder(store.clone(), link)
        .clock(ManualClock::new(T0))
        .ids(SequentialIds::default())
        .config(FleetConfig {
            apply_timeout: StdDuration::from_millis(500),
            ..FleetConfig::default()
        })
        .start()
        .await
        .expect("fleet starts");
    (fleet, devices)
}

async fn create(fleet: &Fleet<Flaky, ChannelLink>, id: &str) -> Result<(), FleetError> {
    fleet
        .create_job(JobSpec::new(j(id), json!({"op": "x"})).things(things("d", 3)))
        .await
        .map(|_| ())
}

/// Polls the fleet's health until `pred` holds, for at most ten seconds.
async fn health_until(
    fleet: &Fleet<Flaky, ChannelLink>,
    what: &str,
    pred: impl Fn(&fleetops_service::Health) -> bool,
) -> fleetops_service::Health {
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        let h = fleet.health().await;
        if pred(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "{what}: still {h:?}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_turns_health_to_failed_and_writes_fail_fast_until_it_recovers() {
    let store = Flaky::new();
    let (fleet, _devices) = fleet(&store).await;
    create(&fleet, "before").await.unwrap();
    let h = fleet.health().await;
    assert!(h.is_serving(), "{h:?}");
    assert_eq!(
        (h.store.clone(), h.follower.clone()),
        (HealthStatus::Ok, HealthStatus::Ok)
    );

    store.set(Mode::Failing);
    let h = health_until(&fleet, "the follower fails", |h| h.follower.is_failed()).await;
    assert!(h.store.is_failed(), "{h:?}");
    assert!(!h.is_serving());
    assert!(h.problem().unwrap().contains("disk gone"), "{h:?}");

    // Writes fail at once, with Unavailable, instead of waiting for a fold.
    let started = Instant::now();
    let err = create(&fleet, "during").await.unwrap_err();
    assert!(matches!(err, FleetError::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < StdDuration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    // The follower backs off instead of resubscribing in a tight loop.
    let before = store.subscribes.load(Ordering::SeqCst);
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    let during = store.subscribes.load(Ordering::SeqCst) - before;
    assert!(
        during <= 4,
        "{during} subscriptions in one second of failure"
    );

    // Once the store is back, the follower resubscribes (within its 5 s cap) and writes work.
    store.set(Mode::Healthy);
    let h = health_until(&fleet, "the follower recovers", |h| h.is_serving()).await;
    assert_eq!(h.follower, HealthStatus::Ok);
    create(&fleet, "after").await.unwrap();
    assert!(fleet.describe_job(&j("after")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_fold_never_comes_fails_after_the_apply_timeout() {
    let store = Flaky::new();
    let (fleet, _devices) = fleet(&store).await;
    create(&fleet, "before").await.unwrap();
    store.set(Mode::Stalled);

    let started = Instant::now();
    let err = tokio::time::timeout(StdDuration::from_secs(5), create(&fleet, "stuck"))
        .await
        .expect("the write does not hang")
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, FleetError::Unavailable { reason } if reason.contains("stored")),
        "{err:?}"
    );
    assert!(took >= StdDuration::from_millis(450), "{took:?}");

    // Behind the head with nothing folded for longer than the timeout: failed.
    let h = health_until(&fleet, "a stuck follower is reported", |h| {
        h.follower.is_failed()
    })
    .await;
    assert!(h.behind().unwrap() > 0, "{h:?}");
    assert_eq!(h.store, HealthStatus::Ok);

    // The write was stored; it shows once the feed flows again.
    store.set(Mode::Healthy);
    fleet.caught_up().await.unwrap();
    assert!(fleet.describe_job(&j("stuck")).is_ok());
    let h = fleet.health().await;
    assert!(h.is_serving(), "{h:?}");
}
