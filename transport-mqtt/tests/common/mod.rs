//! Helpers shared by the MQTT binding's test files, each of which runs against a real
//! mosquitto, one broker per test (see `testing`).
//!
//! There is no Fleet runtime in this crate: a scripted responder (`responder`) plays the
//! service, and raw MQTT clients (`raw`) stand in for devices and observers that do what the
//! SDK never would.

pub mod raw;
pub mod responder;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetops_core::device::{CommandResponse, Inbound, Outbound};
use fleetops_core::ids::{ExecutionId, JobId, StatusDetailKey, ThingName};
use fleetops_core::link::{DeviceLink, LinkEvent, Receipt};
use fleetops_core::status::CommandStatus;
use fleetops_core::time::{Duration as Span, Timestamp};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{
    CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents, MqttLink, MqttLinkConfig,
};
use serde_json::json;
use tokio::time::timeout;

/// How long a test waits for anything it expects before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn thing(s: &str) -> ThingName {
    ThingName::parse(s).unwrap()
}

pub fn job(s: &str) -> JobId {
    JobId::parse(s).unwrap()
}

pub fn now() -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000)
}

pub fn details(pairs: &[(&str, &str)]) -> BTreeMap<StatusDetailKey, String> {
    pairs
        .iter()
        .map(|(k, v)| (StatusDetailKey::parse(k).unwrap(), (*v).to_owned()))
        .collect()
}

pub fn link_config(broker: &TestBroker, layout: TopicLayout) -> MqttLinkConfig {
    let mut c = MqttLinkConfig::new(broker.service_config());
    c.layout = layout;
    c.ack_timeout = WAIT;
    c
}

pub async fn service(broker: &TestBroker) -> Arc<MqttLink> {
    Arc::new(
        MqttLink::connect(link_config(broker, TopicLayout::fleets()))
            .await
            .expect("service connects"),
    )
}

pub fn device_config(broker: &TestBroker, name: &str) -> DeviceConfig {
    let mut c = DeviceConfig::new(broker.device_config(), thing(name));
    c.request_timeout = WAIT;
    c
}

pub async fn device(
    broker: &TestBroker,
    name: &str,
    handler: Option<Arc<dyn CommandHandler>>,
) -> (DeviceClient, DeviceEvents) {
    DeviceClient::connect(device_config(broker, name), handler)
        .await
        .expect("device connects")
}

/// Waits for the first event matching `pick`, skipping others.
pub async fn expect_event<T>(
    events: &mut DeviceEvents,
    mut pick: impl FnMut(DeviceEvent) -> Option<T>,
) -> T {
    timeout(WAIT, async {
        loop {
            let e = events.next().await.expect("events end");
            if let Some(t) = pick(e) {
                return t;
            }
        }
    })
    .await
    .expect("expected event did not come")
}

/// Next request seen by the service, settled at once.
pub async fn next_request(link: &MqttLink) -> Inbound {
    let (i, r) = next_unsettled(link).await;
    link.settle(vec![r]).await;
    i
}

/// Next request seen by the service, not settled.
pub async fn next_unsettled(link: &MqttLink) -> (Inbound, Receipt) {
    let events = timeout(WAIT, link.recv(1))
        .await
        .expect("a request reaches the service")
        .expect("link open");
    match events.into_iter().next() {
        Some(LinkEvent::Request(i, r)) => (i, r),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn command(thing: &ThingName, id: &str, action: &str, ttl_ms: u64) -> Outbound {
    Outbound::CommandRequest {
        thing: thing.clone(),
        execution_id: ExecutionId::parse(id).unwrap(),
        command_id: Some("tpl-1".into()),
        action: action.into(),
        params: json!({"value": 24}),
        timestamp: now(),
        ttl: Span::from_millis(ttl_ms),
    }
}

pub fn handler() -> Arc<dyn CommandHandler> {
    Arc::new(|c: CommandRequest| async move {
        match c.action.as_str() {
            "fail" => CommandResponse {
                status: CommandStatus::Failed,
                result: None,
                status_reason: Some("sensor offline".into()),
            },
            "refuse" => CommandResponse {
                status: CommandStatus::Rejected,
                result: None,
                status_reason: Some("unsupported".into()),
            },
            // AWS IoT Commands results are maps of typed values; any layout accepts them.
            "typed" => CommandResponse {
                status: CommandStatus::Succeeded,
                result: Some(json!({"done": {"b": true}, "action": {"s": c.action}})),
                status_reason: None,
            },
            _ => CommandResponse {
                status: CommandStatus::Succeeded,
                result: Some(json!({"echo": c.params, "ttl_s": c.ttl.as_secs()})),
                status_reason: None,
            },
        }
    })
}
