//! Flood control against a real mosquitto: while one device floods the service with
//! malformed QoS 0 messages and QoS 1 requests, a quiet device's command round trips are
//! still answered, and the link counts what it dropped.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::device::CommandResponse;
use fleetops_core::{CommandStatus, Duration, ThingName};
use fleetops_service::Fleet;
use fleetops_store_memory::MemoryStore;
use fleetops_transport_mqtt::codec::CommandRequest;
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{
    CommandHandler, DeviceClient, DeviceConfig, LinkStats, MqttLink, MqttLinkConfig,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde_json::json;

/// A bare MQTT client publishing as `noisy`, as a hostile device would.
fn noisy_client(broker: &TestBroker) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let o = MqttOptions::new("noisy", "127.0.0.1", broker.port());
    let (client, mut eventloop) = AsyncClient::new(o, 1024);
    let task = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(StdDuration::from_millis(50)).await;
            }
        }
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_device_is_answered_while_another_floods() {
    let broker = TestBroker::start();
    let mut config = MqttLinkConfig::new(broker.service_config());
    // A window well below the QoS 1 flood: every request must be acknowledged for the
    // broker to keep delivering, the quiet device's included.
    config.receive_maximum = 256;
    let link = MqttLink::connect(config)
        .await
        .expect("service link connects");
    let link = Arc::new(link);
    let fleet = Fleet::builder(MemoryStore::new(), Shared(Arc::clone(&link)))
        .start()
        .await
        .expect("fleet starts");

    let quiet = ThingName::parse("quiet").unwrap();
    let handler: Arc<dyn CommandHandler> = Arc::new(|_c: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: None,
            status_reason: None,
        }
    });
    let (_quiet_client, _events) = DeviceClient::connect(
        DeviceConfig::new(broker.device_config(), quiet.clone()),
        Some(handler),
    )
    .await
    .expect("quiet device connects");

    // A warm-up round trip before the flood.
    let warm = fleet
        .send_command(quiet.clone(), "ping", json!({}), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        warm.outcome().await.unwrap().status,
        CommandStatus::Succeeded
    );

    let (noisy, _noisy_task) = noisy_client(&broker);
    let qos0 = 20_000u64;
    let malformed_qos1 = 2_000u64;
    let valid_qos1 = 2_000u64;
    let flood = tokio::spawn(async move {
        let update = "fleets/things/noisy/jobs/j/update";
        for _ in 0..qos0 {
            noisy
                .publish(update, QoS::AtMostOnce, false, &b"not json"[..])
                .await
                .unwrap();
        }
        for i in 0..malformed_qos1 + valid_qos1 {
            let (topic, payload) = if i % 2 == 0 {
                (update, b"[1,2]".to_vec())
            } else {
                ("fleets/things/noisy/jobs/get", b"{}".to_vec())
            };
            noisy
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        noisy
    });

    // Round trips of the quiet device while the flood goes on.
    let mut round_trips = Vec::new();
    let started = Instant::now();
    while !flood.is_finished() || round_trips.len() < 5 {
        let t0 = Instant::now();
        let handle = fleet
            .send_command(quiet.clone(), "ping", json!({}), Duration::from_secs(30))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(StdDuration::from_secs(5), handle.outcome())
            .await
            .expect("the quiet device's command is answered during the flood")
            .unwrap();
        assert_eq!(outcome.status, CommandStatus::Succeeded);
        round_trips.push(t0.elapsed());
        assert!(
            started.elapsed() < StdDuration::from_secs(60),
            "the flood did not end"
        );
    }
    let _noisy = flood.await.unwrap();
    // And once the whole flood is in, the quiet device is still answered.
    let handle = fleet
        .send_command(quiet.clone(), "ping", json!({}), Duration::from_secs(30))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(StdDuration::from_secs(5), handle.outcome())
        .await
        .expect("the quiet device's command is answered after the flood")
        .unwrap();
    assert_eq!(outcome.status, CommandStatus::Succeeded);
    round_trips.sort();
    let stats: LinkStats = link.stats();
    eprintln!(
        "quiet round trips during the flood: n={} p50={:?} max={:?}; link {stats:?}",
        round_trips.len(),
        round_trips[round_trips.len() / 2],
        round_trips[round_trips.len() - 1],
    );
    // Every malformed message was refused or (QoS 0 only) dropped and counted, and the
    // warnings about them were rate-limited.
    let malformed = qos0 + malformed_qos1;
    let deadline = Instant::now() + StdDuration::from_secs(20);
    loop {
        let s = link.stats();
        if s.refused + s.qos0_dropped == malformed {
            assert!(s.warnings_suppressed >= s.refused - 10, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "not all accounted for: {s:?}");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

/// The link shared with the test, so it can read the link's counters while the fleet runs.
struct Shared(Arc<MqttLink>);

#[async_trait::async_trait]
impl fleetops_core::link::DeviceLink for Shared {
    async fn send(
        &self,
        messages: Vec<fleetops_core::device::Outbound>,
    ) -> Result<(), fleetops_core::link::LinkError> {
        self.0.send(messages).await
    }

    async fn submit(
        &self,
        messages: Vec<fleetops_core::device::Outbound>,
    ) -> Result<fleetops_core::link::Delivery, fleetops_core::link::LinkError> {
        self.0.submit(messages).await
    }

    async fn recv(
        &self,
        max: usize,
    ) -> Result<Vec<fleetops_core::link::LinkEvent>, fleetops_core::link::LinkError> {
        self.0.recv(max).await
    }

    async fn settle(&self, receipts: Vec<fleetops_core::link::Receipt>) {
        self.0.settle(receipts).await;
    }
}
