//! One message that can never be delivered never takes others down with it: the outbox
//! handles a batch's outcome message by message, records what can never be delivered and
//! retries only what failed for a transient reason.
//!
//! The link here refuses chosen messages for good, as a transport does for one it cannot
//! encode or that the broker refuses, and delivers the rest of the same batch.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use common::*;
use fleetops_core::command::UNDELIVERABLE_PREFIX;
use fleetops_core::device::Outbound;
use fleetops_core::link::{DeviceLink, LinkError, LinkEvent, MessageFailure};
use fleetops_core::{CommandStatus, Duration, ThingName};
use fleetops_service::clock::ManualClock;
use fleetops_service::ids::SequentialIds;
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::{Fleet, FleetConfig, JobSpec};
use fleetops_store_memory::MemoryStore;
use serde_json::json;

/// Whether a message is one the transport can never deliver.
type Poisoned = Arc<dyn Fn(&Outbound) -> bool + Send + Sync>;

/// A [`ChannelLink`] that fails the poisoned messages of every batch (permanently, or
/// transiently as a lost acknowledgement would) and delivers the others; it counts the
/// attempts at poisoned messages.
struct PoisonLink {
    inner: ChannelLink,
    poisoned: Poisoned,
    permanent: bool,
    attempts: Arc<AtomicUsize>,
}

#[async_trait]
impl DeviceLink for PoisonLink {
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError> {
        let len = messages.len();
        let mut failed = Vec::new();
        for (index, m) in messages.into_iter().enumerate() {
            if (self.poisoned)(&m) {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                failed.push(MessageFailure {
                    index,
                    permanent: self.permanent,
                    detail: if self.permanent {
                        "payload of 300000 bytes exceeds the limit".into()
                    } else {
                        "no acknowledgement within 10s".into()
                    },
                });
            } else {
                self.inner.send(vec![m]).await?;
            }
        }
        LinkError::from_failures(len, failed).map_or(Ok(()), Err)
    }

    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError> {
        self.inner.recv(max).await
    }
}

async fn poisoned_fleet(
    poisoned: Poisoned,
) -> (Fleet<MemoryStore, PoisonLink>, DeviceEnd, Arc<AtomicUsize>) {
    fleet_with(poisoned, true).await
}

async fn fleet_with(
    poisoned: Poisoned,
    permanent: bool,
) -> (Fleet<MemoryStore, PoisonLink>, DeviceEnd, Arc<AtomicUsize>) {
    let (inner, devices) = ChannelLink::pair(8192);
    let attempts = Arc::new(AtomicUsize::new(0));
    let link = PoisonLink {
        inner,
        poisoned,
        permanent,
        attempts: Arc::clone(&attempts),
    };
    let fleet = Fleet::builder(MemoryStore::new(), link)
        .clock(ManualClock::new(T0))
        .ids(SequentialIds::default())
        .config(FleetConfig {
            // Small batches, so poisoned and normal messages share many of them.
            outbox_batch: 16,
            ..FleetConfig::default()
        })
        .start()
        .await
        .expect("fleet starts");
    (fleet, devices, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_job_next_to_a_poisoned_one_is_fully_delivered() {
    let poison = j("poison");
    let poisoned: Poisoned = Arc::new(
        |m| matches!(m, Outbound::NotifyNext { execution: Some(v), .. } if v.job_id.as_str() == "poison"),
    );
    let (fleet, mut devices, attempts) = poisoned_fleet(poisoned).await;
    let victims = things("v", 300);
    let normal_things = things("n", 50);
    // The poisoned job's notifications interleave with the normal job's in the outbox.
    let mut mixed: Vec<ThingName> = Vec::new();
    for (i, t) in victims.iter().enumerate() {
        mixed.push(t.clone());
        if let Some(n) = normal_things.get(i) {
            mixed.push(n.clone());
        }
    }
    fleet
        .create_job(JobSpec::new(poison.clone(), json!({"blob": "x"})).things(victims.clone()))
        .await
        .unwrap();
    fleet
        .create_job(JobSpec::new(j("normal"), json!({"op": "on"})).things(normal_things.clone()))
        .await
        .unwrap();

    // Every normal thing hears of its job.
    let mut told = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    while told.len() < normal_things.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 50 normal things were told of their job",
            told.len()
        );
        let Ok(Some(m)) = tokio::time::timeout(StdDuration::from_secs(1), devices.recv()).await
        else {
            continue;
        };
        if let Outbound::NotifyNext {
            thing,
            execution: Some(v),
            ..
        } = &m
        {
            assert_eq!(
                v.job_id.as_str(),
                "normal",
                "a poisoned message got through"
            );
            told.insert(thing.clone());
        }
    }
    assert_eq!(told, normal_things.into_iter().collect());

    // Each poisoned message was tried once, counted, and never retried.
    eventually("every poisoned message counted", || {
        attempts.load(Ordering::SeqCst) >= victims.len()
    })
    .await;
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), victims.len());
    let health = fleet.health().await;
    assert_eq!(health.undeliverable, victims.len() as u64);
    assert_eq!(health.given_up, 0);
    assert!(health.is_serving(), "{health:?}");
    // The poisoned executions stay QUEUED, as documented: the device can still ask.
    let d = fleet.describe_job(&poison).unwrap();
    assert_eq!(d.counters.queued, victims.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_request_can_never_be_delivered_ends_failed_with_the_reason() {
    let poisoned: Poisoned =
        Arc::new(|m| matches!(m, Outbound::CommandRequest { action, .. } if action == "poison"));
    let (fleet, mut devices, attempts) = poisoned_fleet(poisoned).await;
    let lamp = t("lamp-1");
    let bad = fleet
        .send_command(lamp.clone(), "poison", json!({}), Duration::from_secs(60))
        .await
        .unwrap();
    let good = fleet
        .send_command(
            lamp.clone(),
            "switch-on",
            json!({}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let outcome = tokio::time::timeout(StdDuration::from_secs(5), bad.outcome())
        .await
        .expect("the undeliverable command ends at once, not at its timeout")
        .unwrap();
    assert_eq!(outcome.status, CommandStatus::Failed);
    let reason = outcome.status_reason.unwrap();
    assert!(reason.starts_with(UNDELIVERABLE_PREFIX), "{reason}");
    assert!(reason.contains("exceeds the limit"), "{reason}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "never retried");
    // The other command's request went out, and it is still waiting for its answer.
    let m = tokio::time::timeout(StdDuration::from_secs(5), devices.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&m, Outbound::CommandRequest { action, .. } if action == "switch-on"),
        "{m:?}"
    );
    assert_eq!(
        fleet.get_command(good.execution_id()).await.unwrap().status,
        CommandStatus::Sent
    );
    assert_eq!(fleet.health().await.undeliverable, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_transiently_is_retried_a_bounded_number_of_times() {
    let poisoned: Poisoned =
        Arc::new(|m| matches!(m, Outbound::CommandRequest { action, .. } if action == "flaky"));
    let (fleet, mut devices, attempts) = fleet_with(poisoned, false).await;
    let lamp = t("lamp-2");
    let flaky = fleet
        .send_command(lamp.clone(), "flaky", json!({}), Duration::from_secs(60))
        .await
        .unwrap();
    fleet
        .send_command(
            lamp.clone(),
            "switch-on",
            json!({}),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    // Three attempts in all (100 ms and 200 ms apart), then it is left to recovery.
    eventually("the retries are given up", || {
        attempts.load(Ordering::SeqCst) >= 3
    })
    .await;
    let deadline = std::time::Instant::now() + StdDuration::from_secs(5);
    while fleet.health().await.given_up == 0 {
        assert!(std::time::Instant::now() < deadline, "never given up");
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(700)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "bounded retries");
    let h = fleet.health().await;
    assert_eq!((h.given_up, h.undeliverable), (1, 0), "{h:?}");
    // A transient failure ends nothing: the command waits for its timeout (or a resend).
    assert_eq!(
        fleet
            .get_command(flaky.execution_id())
            .await
            .unwrap()
            .status,
        CommandStatus::Sent
    );
    // The other request went out once, not again with the retries.
    let sent: Vec<Outbound> = devices.drain();
    let on = sent
        .iter()
        .filter(|m| matches!(m, Outbound::CommandRequest { action, .. } if action == "switch-on"))
        .count();
    assert_eq!(on, 1, "{sent:?}");
}
