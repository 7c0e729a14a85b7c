//! A runtime whose store fails, or whose projection follower cannot fold, says so and fails
//! writes fast instead of hanging; its follower retries with a capped backoff rather than in
//! a tight loop, and recovers once the store does.

mod common;

use std::time::{Duration as StdDuration, Instant};

use common::*;
use fleetops_core::testkit::{FaultHandle, FaultyStore};
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::{Fleet, FleetConfig, FleetError, HealthStatus, JobSpec};
use fleetops_store_memory::MemoryStore;
use serde_json::json;

/// A `MemoryStore` that can be told to fail (every call, as a store whose disk went away) or
/// to stall (appends work, but the feed delivers nothing more: the follower is stuck).
type Flaky = FaultyStore<MemoryStore>;

/// A fleet on a fresh `Flaky` store, with the handle that switches the store's faults.
async fn fleet() -> (Fleet<Flaky, ChannelLink>, FaultHandle, DeviceEnd) {
    faulty_fleet(FleetConfig {
        apply_timeout: StdDuration::from_millis(500),
        ..FleetConfig::default()
    })
    .await
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
    let (fleet, faults, _devices) = fleet().await;
    create(&fleet, "before").await.unwrap();
    let h = fleet.health().await;
    assert!(h.is_serving(), "{h:?}");
    assert_eq!(
        (h.store.clone(), h.follower.clone()),
        (HealthStatus::Ok, HealthStatus::Ok)
    );

    faults.fail();
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
    let before = faults.subscribes();
    tokio::time::sleep(StdDuration::from_secs(1)).await;
    let during = faults.subscribes() - before;
    assert!(
        during <= 4,
        "{during} subscriptions in one second of failure"
    );

    // Once the store is back, the follower resubscribes (within its 5 s cap) and writes work.
    faults.heal();
    let h = health_until(&fleet, "the follower recovers", |h| h.is_serving()).await;
    assert_eq!(h.follower, HealthStatus::Ok);
    create(&fleet, "after").await.unwrap();
    assert!(fleet.describe_job(&j("after")).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_fold_never_comes_fails_after_the_apply_timeout() {
    let (fleet, faults, _devices) = fleet().await;
    create(&fleet, "before").await.unwrap();
    faults.stall();

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
    faults.heal();
    fleet.caught_up().await.unwrap();
    assert!(fleet.describe_job(&j("stuck")).is_ok());
    let h = fleet.health().await;
    assert!(h.is_serving(), "{h:?}");
}
