//! What an acknowledgement means in both directions: a send completes on the broker's PUBACK
//! (even across a restart), and a device request is acknowledged to the broker only once it
//! is settled, or refused by the transport itself.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::raw::raw;
use common::{command, link_config, next_unsettled, now, service, thing, WAIT};
use fleetops_core::device::{Outbound, PendingJobs};
use fleetops_core::link::DeviceLink;
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{Error, MqttLink, Session};
use rumqttc::v5::mqttbytes::QoS;
use tokio::time::timeout;

#[tokio::test]
async fn send_returns_only_what_the_broker_accepted() {
    let broker = TestBroker::start_with(BrokerOptions {
        // The service may publish jobs topics but not command requests.
        service_acl: Some(vec![
            "topic read fleets/#".into(),
            "topic write fleets/things/#".into(),
        ]),
        ..BrokerOptions::default()
    });
    let link = service(&broker).await;
    let t = thing("meter-1");
    let notify = Outbound::Notify {
        thing: t.clone(),
        jobs: PendingJobs::default(),
        timestamp: now(),
    };
    link.send(vec![notify.clone()]).await.expect("allowed");
    let err = link
        .publish_all(&[notify, command(&t, "c-1", "x", 1000)])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::PublishRefused { reason } if reason.contains("NotAuthorized")),
        "{err:?}"
    );
    assert_eq!(link.outstanding(), 0);
}

fn notifies(prefix: &str, n: usize) -> Vec<Outbound> {
    (0..n)
        .map(|i| Outbound::Notify {
            thing: thing(&format!("{prefix}-{i}")),
            jobs: PendingJobs::default(),
            timestamp: now(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_each_acknowledged_even_across_a_restart() {
    let mut broker = TestBroker::start();
    let link = service(&broker).await;
    // Concurrent batches: the acknowledgement tracker pairs packet ids in channel order.
    let mut tasks = vec![];
    for t in 0..4 {
        let link = Arc::clone(&link);
        tasks.push(tokio::spawn(async move {
            for b in 0..10 {
                link.send(notifies(&format!("s{t}b{b}"), 50)).await?;
            }
            Ok::<_, fleetops_core::link::LinkError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every publish acknowledged");
    }
    assert_eq!(link.outstanding(), 0);

    // Sends in flight while the broker restarts: the persistent session is resumed, rumqttc
    // retransmits, and every send still completes with the broker's acknowledgement.
    let mut tasks = vec![];
    for t in 0..4 {
        let link = Arc::clone(&link);
        tasks.push(tokio::spawn(async move {
            for b in 0..20 {
                link.send(notifies(&format!("r{t}b{b}"), 20)).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, fleetops_core::link::LinkError>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    broker.restart();
    for t in tasks {
        t.await
            .unwrap()
            .expect("acknowledged after the resumed session");
    }
    assert_eq!(link.outstanding(), 0);
    assert!(
        broker.log().matches("as fleetops-service").count() >= 2,
        "the service reconnected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_sends_across_a_restart_fail_cleanly_and_stay_aligned() {
    let mut broker = TestBroker::start();
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.session = Session::Clean;
    let link = Arc::new(MqttLink::connect(config).await.unwrap());
    let mut tasks = vec![];
    for t in 0..4 {
        let link = Arc::clone(&link);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = vec![];
            for b in 0..20 {
                outcomes.push(link.send(notifies(&format!("c{t}b{b}"), 20)).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outcomes
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    broker.restart();
    let mut lost = 0;
    for t in tasks {
        let outcomes = timeout(WAIT * 2, t).await.expect("no send hangs").unwrap();
        for o in outcomes {
            match o {
                Ok(()) => {}
                // The new session does not know the old publishes: reported, never hidden.
                Err(fleetops_core::link::LinkError::Transport { detail }) => {
                    assert!(detail.contains("lost"), "{detail}");
                    lost += 1;
                }
                // Part of a batch acknowledged before the restart, the rest lost: only the
                // lost ones are listed, each as transient.
                Err(fleetops_core::link::LinkError::Partial { failed }) => {
                    assert!(
                        failed
                            .iter()
                            .all(|f| !f.permanent && f.detail.contains("lost")),
                        "{failed:?}"
                    );
                    lost += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    eprintln!("{lost} batches lost to the clean restart");
    // Later sends are still paired with the right acknowledgements.
    for b in 0..5 {
        link.send(notifies(&format!("after{b}"), 50))
            .await
            .expect("aligned after the restart");
    }
    assert_eq!(link.outstanding(), 0);
    assert!(
        broker.log().matches("as fleetops-service").count() >= 2,
        "the service reconnected"
    );
}

/// A request is acknowledged to the broker only once settled: after a crash (no DISCONNECT,
/// persistent session) the broker delivers the unsettled one again, and only that one.
#[tokio::test]
async fn only_settled_requests_are_acknowledged_so_a_crash_loses_none() {
    let broker = TestBroker::start();
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.client_id = "svc-crash".into();
    let link = MqttLink::connect(config.clone()).await.unwrap();
    let mut dev = raw(&broker, "dev-1", false).await;
    for token in ["settled", "unsettled"] {
        dev.publish(
            "fleets/things/dev-1/jobs/get",
            format!(r#"{{"clientToken":"{token}"}}"#),
        )
        .await;
    }
    let (first, r1) = next_unsettled(&link).await;
    let (second, _r2) = next_unsettled(&link).await;
    assert_eq!(first.client_token.as_deref(), Some("settled"));
    assert_eq!(second.client_token.as_deref(), Some("unsettled"));
    link.settle(vec![r1]).await;
    // Let the PUBACK reach the broker, then crash: the connection drops without DISCONNECT.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(link);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let link = MqttLink::connect(config).await.unwrap();
    let (again, r) = next_unsettled(&link).await;
    assert_eq!(again.client_token.as_deref(), Some("unsettled"));
    link.settle(vec![r]).await;
    let more = timeout(Duration::from_millis(500), link.recv(8)).await;
    assert!(
        more.is_err(),
        "the settled request is not delivered again: {more:?}"
    );
}

/// Refusals the transport sends itself are acknowledged by the transport: with a window of
/// 8, hundreds of malformed QoS 1 requests nobody settles do not stop a valid one.
#[tokio::test]
async fn malformed_requests_are_acknowledged_and_their_warnings_rate_limited() {
    let broker = TestBroker::start();
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.receive_maximum = 8;
    let link = MqttLink::connect(config).await.unwrap();
    let mut dev = raw(&broker, "noisy-3", false).await;
    let n = 300;
    for _ in 0..n {
        dev.client
            .publish(
                "fleets/things/noisy-3/jobs/j/update",
                QoS::AtLeastOnce,
                false,
                &b"not json"[..],
            )
            .await
            .unwrap();
    }
    dev.publish(
        "fleets/things/noisy-3/jobs/get",
        &br#"{"clientToken":"ok"}"#[..],
    )
    .await;
    let (valid, r) = next_unsettled(&link).await;
    assert_eq!(valid.client_token.as_deref(), Some("ok"));
    link.settle(vec![r]).await;
    let stats = link.stats();
    assert_eq!(stats.refused, n);
    // One warning line for the device, the rest counted.
    assert_eq!(stats.warnings_suppressed, n - 1);
}
