//! One bad message never takes its batch down: against a real mosquitto, a message the
//! broker refuses (an ACL) and one too large to encode fail alone, marked permanent, while
//! every other message of the same batch is published and acknowledged.

use std::time::Duration;

use fleetops_core::device::{ExecutionSummary, Outbound, PendingJobs};
use fleetops_core::ids::{ExecutionId, JobId, ThingName};
use fleetops_core::link::{DeviceLink, LinkError};
use fleetops_core::time::{Duration as Span, Timestamp};
use fleetops_transport_mqtt::codec::{Limits, TopicLayout};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{Error, MqttLink, MqttLinkConfig};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
/// Small enough that a notify listing a few dozen jobs cannot be encoded.
const SMALL_PAYLOAD: usize = 1024;

fn thing(s: &str) -> ThingName {
    ThingName::parse(s).unwrap()
}

fn now() -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000)
}

fn notify(name: &str, jobs: usize) -> Outbound {
    let summary = |i: usize| ExecutionSummary {
        job_id: JobId::parse(&format!("job-{i}")).unwrap(),
        queued_at: now(),
        started_at: None,
        last_updated_at: now(),
        version_number: 1,
        execution_number: 1,
    };
    Outbound::Notify {
        thing: thing(name),
        jobs: PendingJobs {
            in_progress: vec![],
            queued: (0..jobs).map(summary).collect(),
        },
        timestamp: now(),
    }
}

fn command(name: &str) -> Outbound {
    Outbound::CommandRequest {
        thing: thing(name),
        execution_id: ExecutionId::parse("c-1").unwrap(),
        command_id: None,
        action: "reboot".into(),
        params: json!({}),
        timestamp: now(),
        ttl: Span::from_secs(30),
    }
}

/// A plain MQTT client with the service account, reporting the topics it receives.
async fn watcher(broker: &TestBroker, filter: &str) -> mpsc::UnboundedReceiver<String> {
    let mut o = MqttOptions::new("watcher", "127.0.0.1", broker.port());
    let c = broker.service_config().credentials.unwrap();
    o.set_credentials(c.username, c.password);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.topic).into_owned());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    client
        .subscribe_many([Filter::new(filter, QoS::AtLeastOnce)])
        .await
        .unwrap();
    timeout(WAIT, ready.recv()).await.expect("subscribed");
    rx
}

async fn topics_within(rx: &mut mpsc::UnboundedReceiver<String>, d: Duration) -> Vec<String> {
    let mut got = vec![];
    let _ = timeout(d, async {
        while let Some(t) = rx.recv().await {
            got.push(t);
        }
    })
    .await;
    got.sort();
    got
}

#[tokio::test]
async fn a_refused_or_unencodable_message_fails_alone_and_the_rest_is_delivered() {
    let broker = TestBroker::start_with(BrokerOptions {
        // The service may publish jobs topics but not command requests.
        service_acl: Some(vec![
            "topic read fleets/#".into(),
            "topic write fleets/things/#".into(),
        ]),
        ..BrokerOptions::default()
    });
    let mut config = MqttLinkConfig::new(broker.service_config());
    config.layout = TopicLayout::fleets();
    config.ack_timeout = WAIT;
    config.limits = Limits {
        max_payload: SMALL_PAYLOAD,
        ..Limits::default()
    };
    let link = MqttLink::connect(config).await.expect("service connects");
    let mut seen = watcher(&broker, "fleets/things/+/jobs/notify").await;

    let batch = vec![
        notify("a-1", 0),
        command("b-1"), // refused by the broker's ACL
        notify("c-1", 1),
        notify("d-1", 100), // too large to encode
        notify("e-1", 0),
    ];
    let err = link.send(batch.clone()).await.unwrap_err();
    let LinkError::Partial { failed } = &err else {
        panic!("{err:?}")
    };
    let failed: Vec<(usize, bool)> = failed.iter().map(|f| (f.index, f.permanent)).collect();
    assert_eq!(failed, vec![(1, true), (3, true)], "{err}");
    assert_eq!(
        topics_within(&mut seen, Duration::from_millis(500)).await,
        vec![
            "fleets/things/a-1/jobs/notify",
            "fleets/things/c-1/jobs/notify",
            "fleets/things/e-1/jobs/notify",
        ]
    );

    // The crate's own view, message by message.
    let outcomes = link.publish_each(&batch).await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[4].is_ok());
    assert!(
        matches!(&outcomes[1], Err(Error::PublishRefused { reason }) if reason.contains("NotAuthorized")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[3], Err(Error::Encode(_))),
        "{:?}",
        outcomes[3]
    );

    // The pipelined path behaves the same, and later batches are unaffected.
    let delivery = link.submit(batch).await.expect("handed over");
    assert!(matches!(delivery.await, Err(LinkError::Partial { failed }) if failed.len() == 2));
    link.send(vec![notify("f-1", 0)])
        .await
        .expect("a clean batch");
    assert_eq!(link.outstanding(), 0);
}
