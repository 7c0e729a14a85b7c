//! The production broker recipe of `docs/operations.md`: devices authenticate with a client
//! certificate whose common name (CN) is their thing name, and the ACL binds each device to
//! that identity, not to the client id it chooses.
//!
//! The test takes the ACL pattern lines and the listener's identity settings from the recipe
//! in the operations guide itself, so a recipe that lets a client's own choice of client id
//! decide what it may reach (`%c` patterns with the client id as sent) fails it: a device holding lamp-1's certificate
//! that connects with client id `lamp-2` must not be able to subscribe to or publish on
//! lamp-2's topics, and the service must never see such a request, while lamp-1's own topics
//! keep working for it.

use std::sync::Arc;
use std::time::Duration;

use fleetops_tests::{binary, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::json;

/// The `pattern` lines of the device ACL in the operations guide's production recipe (the
/// block that starts with `# /etc/mosquitto/acl`).
fn documented_device_patterns() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let block = doc
        .split("# /etc/mosquitto/acl\n")
        .nth(1)
        .expect("the production ACL block in docs/operations.md")
        .split("```")
        .next()
        .unwrap_or_default();
    let lines: Vec<String> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pattern "))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "no pattern lines in:\n{block}");
    lines
}

/// The identity settings of the recipe's device listener (`use_identity_as_username`,
/// `use_username_as_clientid`, ...; the block that starts with
/// `# /etc/mosquitto/conf.d/fleetops.conf`), without `require_certificate`, which the
/// harness sets itself.
fn documented_listener_identity() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let block = doc
        .split("# /etc/mosquitto/conf.d/fleetops.conf\n")
        .nth(1)
        .expect("the production broker configuration in docs/operations.md")
        .split("```")
        .next()
        .unwrap_or_default();
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("use_"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A raw MQTT 5 connection over TLS with `identity` (certificate and key) and `client_id`.
fn connect(
    broker: &TestBroker,
    identity: (Vec<u8>, Vec<u8>),
    client_id: &str,
) -> (AsyncClient, EventLoop) {
    let config = broker.device_config_tls_with(identity);
    let tls = config
        .tls
        .as_ref()
        .expect("TLS settings")
        .client_config()
        .expect("a rustls client configuration");
    let mut options = MqttOptions::new(client_id, "127.0.0.1", config.port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    options.set_clean_start(true);
    AsyncClient::new(options, 64)
}
/// Subscribes to the replies to `thing`'s updates of `job` and returns the broker's codes.
async fn subscribe_updates(
    client: &AsyncClient,
    events: &mut EventLoop,
    thing: &str,
    job: &str,
) -> Vec<SubscribeReasonCode> {
    client
        .subscribe(
            format!("fleets/things/{thing}/jobs/{job}/update/+"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    next(events, |p| match p {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

/// Polls until `pick` returns something, failing after 10 s.
async fn next<T>(events: &mut EventLoop, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
    let wait = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = pick(&p) {
                        return t;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the broker answered within 10 s")
}

async fn execution(api: &Api, job: &str, thing: &str) -> serde_json::Value {
    api.get_ok(&format!("/api/v1/jobs/{job}/things/{thing}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_acts_only_for_its_own_thing_whatever_the_client_id() {
    let broker = TestBroker::start_with(BrokerOptions {
        tls: true,
        client_certificates: true,
        tls_listener_config: documented_listener_identity(),
        device_acl: Some(documented_device_patterns()),
        verbose_log: false,
        ..BrokerOptions::default()
    });
    let data = tempfile::tempdir().unwrap();
    // The service keeps its password account on the plain listener.
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    let api = serve.api();
    let job = "acl-job";
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": job, "targets": {"thingNames": ["lamp-1", "lamp-2"]}, "document": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let update = |status: &str, who: &str| {
        serde_json::to_vec(
            &json!({"status": status, "statusDetails": {"by": who}, "clientToken": who}),
        )
        .unwrap()
    };
    // lamp-2's real device, online with its own certificate and client id.
    let (real, mut real_events) = connect(&broker, broker.client_identity("lamp-2"), "lamp-2");
    let codes = subscribe_updates(&real, &mut real_events, "lamp-2", job).await;
    assert!(
        matches!(codes[..], [SubscribeReasonCode::Success(_)]),
        "lamp-2 reaches its own topics: {codes:?}"
    );

    // lamp-1's certificate, presented with lamp-2's client id. The broker replaces the client
    // id with the certificate's identity, so this does not take lamp-2's session over either.
    let (client, mut events) = connect(&broker, broker.client_identity("lamp-1"), "lamp-2");

    // Subscribing to lamp-2's replies: mosquitto grants the subscription but checks read
    // access per message, so nothing of lamp-2's may ever arrive (checked below and at the
    // end).
    let codes = subscribe_updates(&client, &mut events, "lamp-2", job).await;
    assert_eq!(codes.len(), 1, "{codes:?}");

    // Publishing lamp-2's update is refused by the broker.
    client
        .publish(
            format!("fleets/things/lamp-2/jobs/{job}/update"),
            QoS::AtLeastOnce,
            false,
            update("FAILED", "impostor"),
        )
        .await
        .unwrap();
    let reason = next(&mut events, |p| match p {
        Packet::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        PubAckReason::NotAuthorized,
        "the broker must refuse lamp-2's update from lamp-1's certificate"
    );

    // The same connection reaches lamp-1's own topics: subscribe, publish, get the answer.
    let codes = subscribe_updates(&client, &mut events, "lamp-1", job).await;
    assert!(
        matches!(codes[..], [SubscribeReasonCode::Success(_)]),
        "lamp-1's certificate reaches lamp-1's topics: {codes:?}"
    );
    client
        .publish(
            format!("fleets/things/lamp-1/jobs/{job}/update"),
            QoS::AtLeastOnce,
            false,
            update("SUCCEEDED", "lamp-1"),
        )
        .await
        .unwrap();
    let topic = next(&mut events, |p| match p {
        Packet::Publish(p) => Some(String::from_utf8_lossy(&p.topic).into_owned()),
        _ => None,
    })
    .await;
    assert_eq!(
        topic,
        format!("fleets/things/lamp-1/jobs/{job}/update/accepted")
    );

    // The service never saw the impostor's request: lamp-2 is untouched, and lamp-2's real
    // device, still connected (its next poll would fail had its session been taken over),
    // finishes its execution as the first and only update.
    let lamp2 = execution(&api, job, "lamp-2").await;
    assert_eq!(
        (&lamp2["status"], &lamp2["versionNumber"]),
        (&json!("QUEUED"), &json!(1)),
        "{lamp2}"
    );
    real.publish(
        format!("fleets/things/lamp-2/jobs/{job}/update"),
        QoS::AtLeastOnce,
        false,
        update("SUCCEEDED", "lamp-2"),
    )
    .await
    .unwrap();
    let topic = next(&mut real_events, |p| match p {
        Packet::Publish(p) => Some(String::from_utf8_lossy(&p.topic).into_owned()),
        Packet::Disconnect(d) => panic!("lamp-2 was disconnected: {d:?}"),
        _ => None,
    })
    .await;
    assert_eq!(
        topic,
        format!("fleets/things/lamp-2/jobs/{job}/update/accepted")
    );
    let lamp2 = execution(&api, job, "lamp-2").await;
    assert_eq!(lamp2["status"], "SUCCEEDED", "{lamp2}");
    assert_eq!(lamp2["versionNumber"], 2, "{lamp2}");
    assert_eq!(lamp2["statusDetails"], json!({"by": "lamp-2"}), "{lamp2}");
    // lamp-2's answer went out while the impostor was subscribed to lamp-2's replies: it
    // must not have reached the impostor.
    let leaked = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    break String::from_utf8_lossy(&p.topic).into_owned()
                }
                Ok(_) => {}
                Err(e) => panic!("the impostor's connection failed: {e}"),
            }
        }
    })
    .await;
    assert!(
        leaked.is_err(),
        "lamp-1's certificate received lamp-2's message on {leaked:?}"
    );
    let lamp1 = execution(&api, job, "lamp-1").await;
    assert_eq!(lamp1["status"], "SUCCEEDED", "{lamp1}");
    assert_eq!(lamp1["statusDetails"], json!({"by": "lamp-1"}), "{lamp1}");
}
