//! Limits and malformed input: oversized payloads, topics too long to answer, QoS 0 floods,
//! and a payload limit the link refuses to start with.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{body, raw};
use common::responder::{respond, Script};
use common::{details, device, job, link_config, service};
use fleetops_core::device::{Operation, UpdateRequest};
use fleetops_core::link::DeviceLink;
use fleetops_core::status::JobExecutionStatus;
use fleetops_transport_mqtt::codec::{Limits, TopicLayout};
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{Error, MqttLink};
use rumqttc::v5::mqttbytes::QoS;
use tokio::time::timeout;

#[tokio::test]
async fn oversized_and_malformed_payloads() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let script = Arc::new(Mutex::new(Script::new()));
    let (_responder, seen) = respond(Arc::clone(&link), script);
    let mut dev = raw(&broker, "noisy-1", false).await;
    dev.subscribe("fleets/things/noisy-1/jobs/#").await;
    let update = "fleets/things/noisy-1/jobs/j/update";

    // Above the codec's 128 KiB but within the service's packet limit: refused unparsed.
    let big = format!(
        "{{\"clientToken\":\"big\",\"statusDetails\":{{\"x\":\"{}\"}}}}",
        "a".repeat(200 * 1024)
    );
    dev.publish(update, big).await;
    let b = body(&dev.message(&format!("{update}/rejected")).await);
    assert_eq!(b["code"], "InvalidRequest");
    assert!(
        b.get("clientToken").is_none(),
        "an unparsed payload has no token"
    );

    // Above the service's maximum packet size: the broker never delivers it (MQTT 5), and
    // the service's connection survives.
    dev.publish(update, vec![b'{'; 300 * 1024]).await;
    for payload in [
        &b"\xff\xfe\xfd"[..],
        &"[".repeat(100_000).into_bytes(),
        b"null",
        b"{\"a\":",
    ] {
        dev.publish(update, payload).await;
        let b = body(&dev.message(&format!("{update}/rejected")).await);
        assert_eq!(b["code"], "InvalidJson");
    }
    // Valid traffic still flows.
    dev.publish(
        "fleets/things/noisy-1/jobs/get",
        &br#"{"clientToken":"ok"}"#[..],
    )
    .await;
    let b = body(&dev.message("fleets/things/noisy-1/jobs/get/accepted").await);
    assert_eq!(b["clientToken"], "ok");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(link.is_connected());
    let rest = dev.silent_for(Duration::from_millis(200)).await;
    assert!(
        rest.is_empty(),
        "nothing answered the 300 KiB packet: {}",
        rest.len()
    );

    // The SDK refuses to send what the service would refuse.
    let (sdk, _) = device(&broker, "noisy-2", None).await;
    let err = sdk
        .update(
            job("j"),
            UpdateRequest {
                status: Some(JobExecutionStatus::InProgress),
                status_details: Some(details(&[("x", &"a".repeat(200 * 1024))])),
                ..UpdateRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err:?}");
}

#[tokio::test]
async fn a_link_with_a_small_payload_limit_refuses_to_start_misconfigured() {
    let broker = TestBroker::start();
    let mut c = link_config(&broker, TopicLayout::fleets());
    c.limits = Limits {
        max_payload: 512 * 1024,
        ..Limits::default()
    };
    let err = MqttLink::connect(c).await.err().expect("refused");
    assert!(matches!(
        err,
        Error::Config {
            field: "max_packet_size",
            ..
        }
    ));
    let _ = Operation::GetPending;
}

/// Waits until `f` holds, polling.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request on a topic whose reply topic would exceed the topic bound gets no reply (a
/// reply there could become a malformed packet); it is counted, and the link serves on.
#[tokio::test]
async fn a_topic_too_long_to_answer_gets_no_reply_and_others_are_served() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let script = Arc::new(Mutex::new(Script::new()));
    let (_responder, seen) = respond(Arc::clone(&link), script);
    let mut dev = raw(&broker, "long-1", false).await;
    dev.subscribe("fleets/things/long-1/#").await;
    let base = "fleets/things/long-1/jobs/";
    // Just short enough: refused with a reply. Then too long, and far too long.
    let fits = format!(
        "{base}{}",
        "x".repeat(1024 - base.len() - "/rejected".len())
    );
    dev.publish(&fits, &b"{}"[..]).await;
    let reply = dev.message(&format!("{fits}/rejected")).await;
    assert_eq!(body(&reply)["code"], "InvalidTopic");
    for len in [1024 - base.len() - "/rejected".len() + 1, 65_000] {
        let long = format!("{base}{}", "x".repeat(len));
        dev.publish(&long, &b"{}"[..]).await;
    }
    eventually("both long topics counted", || {
        link.stats().topic_too_long == 2
    })
    .await;
    dev.publish(
        "fleets/things/long-1/jobs/get",
        &br#"{"clientToken":"ok"}"#[..],
    )
    .await;
    let b = body(&dev.message("fleets/things/long-1/jobs/get/accepted").await);
    assert_eq!(b["clientToken"], "ok");
    let rest = dev.silent_for(Duration::from_millis(300)).await;
    assert!(
        rest.is_empty(),
        "no reply to the long topics: {}",
        rest.len()
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(link.is_connected());
    assert_eq!(link.stats().refused, 1);
}

/// QoS 0 has no broker window: beyond `max_queued_qos0` waiting for `recv`, QoS 0
/// publishes are dropped and counted.
#[tokio::test]
async fn queued_qos0_publishes_are_capped_and_drops_counted() {
    let broker = TestBroker::start();
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.max_queued_qos0 = 100;
    let link = MqttLink::connect(config).await.unwrap();
    let dev = raw(&broker, "flood-0", false).await;
    let n: u64 = 5_000;
    for _ in 0..n {
        dev.client
            .publish(
                "fleets/things/flood-0/jobs/j/update",
                QoS::AtMostOnce,
                false,
                &b"[]"[..],
            )
            .await
            .unwrap();
    }
    // Nobody reads yet: all but the first 100 are dropped.
    eventually("the flood arrived", || link.stats().qos0_dropped == n - 100).await;
    // Reading now finds the 100 queued, refused by the codec.
    let _ = timeout(Duration::from_millis(500), link.recv(1000)).await;
    let stats = link.stats();
    assert_eq!(stats.refused, 100, "{stats:?}");
    assert_eq!(stats.qos0_dropped, n - 100);
}
