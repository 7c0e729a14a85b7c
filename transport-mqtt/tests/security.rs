//! Who may publish and read what: the broker's ACLs between devices, the service and backend
//! subscribers, and TLS for both sides.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{body, raw};
use common::responder::{respond, Script};
use common::{device, expect_event, job, link_config, next_request, now, service, thing, WAIT};
use fleetops_core::device::{Outbound, PendingJobs};
use fleetops_core::link::DeviceLink;
use fleetops_core::status::JobExecutionStatus;
use fleetops_core::time::Timestamp;
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{
    DeviceClient, DeviceConfig, DeviceEvent, Error, MqttLink, MqttLinkConfig,
};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;
use tokio::time::timeout;

#[tokio::test]
async fn the_acl_keeps_a_device_out_of_other_devices_topics() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let (_victim, mut victim_events) = device(&broker, "victim", None).await;
    // The victim's own pull on connect is the only request the service may see.
    let pull = next_request(&link).await;
    assert_eq!(pull.thing, thing("victim"));
    let mut intruder = raw(&broker, "intruder", false).await;

    // Spoofed notification and request on the victim's topics: refused by the broker.
    for topic in [
        "fleets/things/victim/jobs/notify",
        "fleets/things/victim/jobs/get",
        "fleets/commands/things/victim/executions/x/response",
    ] {
        let reason = intruder
            .publish(
                topic,
                &br#"{"jobs":{},"timestamp":1,"status":"SUCCEEDED"}"#[..],
            )
            .await;
        assert_eq!(reason, PubAckReason::NotAuthorized, "{topic}");
    }
    // mosquitto grants subscriptions and checks read access per message instead: the
    // intruder may subscribe, but must never receive the victim's messages (checked below).
    intruder.subscribe("fleets/things/victim/#").await;
    intruder.subscribe("fleets/things/+/jobs/notify").await;
    // Its own topics work.
    assert_eq!(
        intruder.subscribe("fleets/things/intruder/#").await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );

    // The other side never saw anything: no event on the victim, no request at the service.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(e) = victim_events.try_next() {
        assert!(
            matches!(e, DeviceEvent::Connected { .. }),
            "the victim saw {e:?}"
        );
    }
    assert!(
        timeout(Duration::from_millis(300), link.recv(8))
            .await
            .is_err(),
        "the service saw a spoofed request"
    );
    // A real notification reaches the victim and nobody else.
    link.send(vec![Outbound::Notify {
        thing: thing("victim"),
        jobs: PendingJobs::default(),
        timestamp: now(),
    }])
    .await
    .unwrap();
    expect_event(&mut victim_events, |e| {
        matches!(e, DeviceEvent::Notify { .. }).then_some(())
    })
    .await;
    let leaked = intruder.silent_for(Duration::from_millis(300)).await;
    assert!(leaked.is_empty(), "the intruder received {leaked:?}");

    // A service without the service account is a device like any other: it may not
    // publish to things, and `send` says so instead of pretending.
    let mut anonymous = link_config(&broker, TopicLayout::fleets());
    anonymous.broker.credentials = None;
    anonymous.client_id = "not-the-service".into();
    let impostor = MqttLink::connect(anonymous).await.unwrap();
    let err = impostor
        .publish_all(&[Outbound::Notify {
            thing: thing("victim"),
            jobs: PendingJobs::default(),
            timestamp: now(),
        }])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PublishRefused { .. }), "{err:?}");
}

#[tokio::test]
async fn tls_with_rustls_for_the_service_and_devices() {
    let broker = TestBroker::start_with(BrokerOptions {
        tls: true,
        ..BrokerOptions::default()
    });
    let mut service_broker = broker.device_config_tls();
    service_broker.credentials = broker.service_config().credentials;
    let mut c = MqttLinkConfig::new(service_broker);
    c.ack_timeout = WAIT;
    let link = Arc::new(MqttLink::connect(c).await.expect("service over TLS"));
    let t = thing("secure-1");
    let script = Arc::new(Mutex::new(Script::new()));
    script
        .lock()
        .unwrap()
        .queue(&t, "j-tls", json!({"over": "tls"}));
    let (_responder, _) = respond(Arc::clone(&link), script);
    let mut config = DeviceConfig::new(broker.device_config_tls(), t);
    config.request_timeout = WAIT;
    let (dev, _) = DeviceClient::connect(config, None)
        .await
        .expect("device over TLS");
    assert_eq!(
        dev.describe_next().await.unwrap().job_document,
        Some(json!({"over": "tls"}))
    );

    // A client that does not trust the broker's CA never gets a session.
    let mut untrusting = broker.device_config_tls();
    untrusting.connect_timeout = Duration::from_millis(500);
    let other = TestBroker::start_with(BrokerOptions {
        tls: true,
        ..BrokerOptions::default()
    });
    untrusting.tls.as_mut().unwrap().ca_pem = other.ca_pem().unwrap();
    let err = DeviceClient::connect(DeviceConfig::new(untrusting, thing("secure-2")), None)
        .await
        .err()
        .expect("refused");
    let Error::ConnectTimeout { last_error, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        last_error.contains("TLS") || last_error.contains("certificate"),
        "{last_error}"
    );
    // Garbage PEM is a configuration error, not a hang.
    let mut garbage = broker.device_config_tls();
    garbage.tls.as_mut().unwrap().ca_pem = b"not a certificate".to_vec();
    assert!(matches!(
        DeviceClient::connect(DeviceConfig::new(garbage, thing("secure-3")), None).await,
        Err(Error::Tls(_))
    ));
}

#[tokio::test]
async fn status_changes_reach_backend_subscribers_only() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let filter = TopicLayout::fleets().job_execution_events_filter();
    assert_eq!(filter, "fleets/events/jobExecution/#");
    // An operator dashboard with the service credentials, and a device (client id = thing
    // name, no credentials) trying to listen in.
    let mut dashboard = raw(&broker, "dashboard", true).await;
    assert_eq!(
        dashboard.subscribe(&filter).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let mut device = raw(&broker, "dev-1", false).await;
    device.subscribe(&filter).await;

    let at = Timestamp::from_millis(1_700_000_000_900);
    link.send(vec![Outbound::StatusChange {
        job_id: job("fw-2"),
        thing: thing("dev-1"),
        status: JobExecutionStatus::Succeeded,
        execution_number: 1,
        version_number: 3,
        timestamp: at,
    }])
    .await
    .unwrap();
    let p = dashboard
        .message("fleets/events/jobExecution/fw-2/SUCCEEDED")
        .await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain);
    assert_eq!(
        body(&p),
        json!({"jobId": "fw-2", "thingName": "dev-1", "status": "SUCCEEDED",
               "executionNumber": 1, "versionNumber": 3, "timestamp": 1_700_000_000})
    );
    // The device ACL patterns do not reach `fleets/events/…`: nothing is delivered to it, and
    // it can not forge an event either.
    let leaked = device.silent_for(Duration::from_millis(300)).await;
    assert!(leaked.is_empty(), "the device received {leaked:?}");
    assert_eq!(
        device
            .publish("fleets/events/jobExecution/fw-2/FAILED", &b"{}"[..])
            .await,
        PubAckReason::NotAuthorized
    );
}
