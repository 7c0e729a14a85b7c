//! One poisoned job does not starve its neighbours, end to end over a real mosquitto: a job
//! whose notifications cannot be encoded (its document is larger than the link's payload
//! limit) is created next to a normal one, and every device of the normal job still hears
//! of it and finishes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::device::{StartNextRequest, UpdateRequest};
use fleetops_core::{JobExecutionStatus as S, JobId, ThingName};
use fleetops_service::{Fleet, FleetConfig, JobSpec};
use fleetops_store_memory::MemoryStore;
use fleetops_transport_mqtt::codec::Limits;
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{DeviceClient, DeviceConfig, DeviceEvent, MqttLink, MqttLinkConfig};
use serde_json::json;

/// The link's payload limit here: far below the poisoned document.
const SMALL_PAYLOAD: usize = 4 * 1024;

fn things(prefix: &str, n: usize) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("{prefix}{i:03}")).unwrap())
        .collect()
}

/// A device that starts what it is told of and reports it done.
async fn device(broker: &TestBroker, thing: ThingName, done: Arc<AtomicUsize>) {
    let mut config = DeviceConfig::new(broker.device_config(), thing);
    config.request_timeout = StdDuration::from_secs(5);
    let (client, mut events) = DeviceClient::connect(config, None)
        .await
        .expect("device connects");
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let DeviceEvent::NotifyNext {
                execution: Some(_), ..
            } = event
            else {
                continue;
            };
            let Ok(Some(view)) = client.start_next(StartNextRequest::default()).await else {
                continue;
            };
            let request = UpdateRequest {
                status: Some(S::Succeeded),
                execution_number: Some(view.execution_number),
                ..UpdateRequest::default()
            };
            if client.update(view.job_id.clone(), request).await.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_job_next_to_a_poisoned_one_is_fully_delivered_over_mqtt() {
    let broker = TestBroker::start();
    let mut config = MqttLinkConfig::new(broker.service_config());
    config.limits = Limits {
        max_payload: SMALL_PAYLOAD,
        ..Limits::default()
    };
    let link = MqttLink::connect(config)
        .await
        .expect("service link connects");
    let fleet = Fleet::builder(MemoryStore::new(), link)
        .config(FleetConfig {
            // Small batches, so the poisoned and the normal notifications share them.
            outbox_batch: 16,
            ..FleetConfig::default()
        })
        .start()
        .await
        .unwrap();

    let normal_things = things("n", 20);
    let done = Arc::new(AtomicUsize::new(0));
    for t in &normal_things {
        device(&broker, t.clone(), Arc::clone(&done)).await;
    }
    let victims = things("v", 60);
    let blob = "x".repeat(3 * SMALL_PAYLOAD);
    fleet
        .create_job(
            JobSpec::new(JobId::parse("poison").unwrap(), json!({ "blob": blob }))
                .things(victims.clone()),
        )
        .await
        .unwrap();
    let normal = JobId::parse("normal").unwrap();
    fleet
        .create_job(JobSpec::new(normal.clone(), json!({"op": "on"})).things(normal_things.clone()))
        .await
        .unwrap();

    let deadline = Instant::now() + StdDuration::from_secs(30);
    loop {
        let d = fleet.describe_job(&normal).unwrap();
        if d.counters.succeeded == normal_things.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the normal job is stuck next to the poisoned one: {:?} ({} updates)",
            d.counters,
            done.load(Ordering::SeqCst)
        );
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    // Each poisoned notify-next is recorded (its delivery may finish after the normal job),
    // never retried into the others' way.
    let deadline = Instant::now() + StdDuration::from_secs(10);
    let h = loop {
        let h = fleet.health().await;
        if h.undeliverable >= victims.len() as u64 {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "{} undeliverable",
            h.undeliverable
        );
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    };
    assert_eq!(h.given_up, 0, "{h:?}");
    assert!(h.is_serving(), "{h:?}");
}
