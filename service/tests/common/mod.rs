//! Shared helpers of the runtime tests: a fleet on a `MemoryStore`, the in-process link and a
//! manual clock; polling with a deadline; quiescence.

#![allow(dead_code)]

use std::time::Duration as StdDuration;

use fleetops_core::device::{DeviceRequest, Outbound, Reply, StartNextRequest, UpdateRequest};
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::testkit::{FaultHandle, FaultyStore};
use fleetops_core::{Duration, JobExecutionStatus, JobId, ThingName, Timestamp};
use fleetops_service::clock::ManualClock;
use fleetops_service::ids::SequentialIds;
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::{Fleet, FleetConfig};
use fleetops_store_memory::MemoryStore;

pub type TestFleet = Fleet<MemoryStore, ChannelLink>;

pub const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

pub struct Env {
    pub fleet: TestFleet,
    pub clock: ManualClock,
    pub devices: DeviceEnd,
    pub store: MemoryStore,
}

pub async fn env() -> Env {
    env_with(FleetConfig::default()).await
}

pub async fn env_with(config: FleetConfig) -> Env {
    let store = MemoryStore::new();
    let clock = ManualClock::new(T0);
    let (fleet, devices) = start(&store, &clock, config).await;
    Env {
        fleet,
        clock,
        devices,
        store,
    }
}

pub async fn start(
    store: &MemoryStore,
    clock: &ManualClock,
    config: FleetConfig,
) -> (TestFleet, DeviceEnd) {
    let (link, devices) = ChannelLink::pair(4096);
    let fleet = Fleet::builder(store.clone(), link)
        .clock(clock.clone())
        .ids(SequentialIds::default())
        .config(config)
        .start()
        .await
        .expect("fleet starts");
    (fleet, devices)
}

/// A fleet on a store that can be told to hold appends to a stream.
pub type HeldFleet = Fleet<FaultyStore<MemoryStore>, ChannelLink>;

/// A fleet on a fresh `FaultyStore` over a `MemoryStore`, with the handle that switches the
/// store's faults and holds its appends.
pub async fn faulty_fleet(config: FleetConfig) -> (HeldFleet, FaultHandle, DeviceEnd) {
    let store = FaultyStore::new(MemoryStore::new());
    let faults = store.handle();
    let (link, devices) = ChannelLink::pair(1024);
    let fleet = Fleet::builder(store, link)
        .clock(ManualClock::new(T0))
        .ids(SequentialIds::default())
        .config(config)
        .start()
        .await
        .expect("fleet starts");
    (fleet, faults, devices)
}

/// [`faulty_fleet`] with one worker shard for every thing.
pub async fn one_shard_held() -> (HeldFleet, FaultHandle, DeviceEnd) {
    faulty_fleet(FleetConfig {
        shards: 1,
        ..FleetConfig::default()
    })
    .await
}

pub fn t(name: &str) -> ThingName {
    ThingName::parse(name).expect("thing name")
}

pub fn j(name: &str) -> JobId {
    JobId::parse(name).expect("job id")
}

pub fn things(prefix: &str, n: usize) -> Vec<ThingName> {
    (0..n).map(|i| t(&format!("{prefix}{i:04}"))).collect()
}

pub fn mins(m: u64) -> Duration {
    Duration::from_minutes(m)
}

/// Polls `f` until it holds, for at most five seconds of real time.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(StdDuration::from_millis(2)).await;
    }
}

/// Waits until the fleet stops writing: the projections have folded the head and the head has
/// not moved for a few rounds.
pub async fn settle<S: EventStore, L: DeviceLink>(fleet: &Fleet<S, L>) {
    let mut stable = 0;
    let mut last = u64::MAX;
    while stable < 5 {
        fleet.caught_up().await.expect("catch up");
        tokio::time::sleep(StdDuration::from_millis(3)).await;
        let cp = fleet.checkpoint();
        if cp == last {
            stable += 1;
        } else {
            stable = 0;
            last = cp;
        }
    }
}

/// Advances the clock and lets the fleet react.
pub async fn advance(env: &Env, d: Duration) {
    env.clock.advance(d);
    settle(&env.fleet).await;
}

pub async fn start_next(devices: &mut DeviceEnd, thing: &ThingName) -> Outbound {
    devices
        .call(thing, DeviceRequest::StartNext(StartNextRequest::default()))
        .await
        .expect("reply")
}

pub async fn update(
    devices: &mut DeviceEnd,
    thing: &ThingName,
    job: &JobId,
    request: UpdateRequest,
) -> Outbound {
    devices
        .call(
            thing,
            DeviceRequest::Update {
                job_id: job.clone(),
                request,
            },
        )
        .await
        .expect("reply")
}

pub fn set_status(status: JobExecutionStatus) -> UpdateRequest {
    UpdateRequest {
        status: Some(status),
        ..UpdateRequest::default()
    }
}

pub fn accepted(m: &Outbound) -> &Reply {
    match m {
        Outbound::Accepted { reply, .. } => reply,
        other => panic!("expected an accepted reply, got {other:?}"),
    }
}

pub fn rejected(m: &Outbound) -> &fleetops_core::Rejection {
    match m {
        Outbound::Rejected { rejection, .. } => rejection,
        other => panic!("expected a rejected reply, got {other:?}"),
    }
}

pub fn status_of<S: EventStore, L: DeviceLink>(
    fleet: &Fleet<S, L>,
    job: &JobId,
    thing: &ThingName,
) -> Option<JobExecutionStatus> {
    fleet
        .list_thing_executions(thing, None, &fleetops_service::Page::first(100))
        .items
        .into_iter()
        .find(|r| &r.job_id == job)
        .map(|r| r.execution.status)
}
