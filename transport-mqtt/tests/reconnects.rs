//! Losing the broker and getting it back: restarts with persistent and clean sessions, an
//! outage while a send waits, and a deliberate shutdown.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::raw;
use common::responder::{respond, Script};
use common::{
    command, device, device_config, expect_event, handler, link_config, next_request, now, service,
    thing, WAIT,
};
use fleetops_core::device::{DeviceRequest, Outbound, PendingJobs};
use fleetops_core::ids::ExecutionId;
use fleetops_core::link::DeviceLink;
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{DeviceClient, DeviceEvent, MqttLink, Session};
use serde_json::json;
use tokio::time::timeout;

#[tokio::test]
async fn broker_restart_mid_session_loses_nothing_on_persistent_sessions() {
    let mut broker = TestBroker::start();
    let script = Arc::new(Mutex::new(Script::new()));
    let t = thing("boiler-1");
    script.lock().unwrap().queue(&t, "j-9", json!({"v": 9}));
    let link = service(&broker).await;
    let (responder, seen) = respond(Arc::clone(&link), Arc::clone(&script));
    let (dev, mut events) = device(&broker, "boiler-1", Some(handler())).await;
    expect_event(&mut events, |e| {
        matches!(e, DeviceEvent::Pending(_)).then_some(())
    })
    .await;

    // 1. Live clients ride through a restart: both reconnect, resubscribe and work again.
    broker.restart();
    let resumed = expect_event(&mut events, |e| match e {
        DeviceEvent::Connected { session_present } => Some(session_present),
        _ => None,
    })
    .await;
    assert!(resumed, "the broker kept the device's session");
    let pending = expect_event(&mut events, |e| match e {
        DeviceEvent::Pending(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(pending.queued.len(), 1, "pulled again after the reconnect");
    assert_eq!(dev.get_pending().await.unwrap().queued.len(), 1);

    // 2. Messages for clients that are away wait in their sessions across a restart.
    dev.disconnect().await;
    drop(dev);
    responder.abort();
    script
        .lock()
        .unwrap()
        .open_commands
        .push(ExecutionId::parse("c-away").unwrap());
    let jobs = script.lock().unwrap().pending(&t);
    link.send(vec![
        Outbound::Notify {
            thing: t.clone(),
            jobs,
            timestamp: now(),
        },
        command(&t, "c-away", "set", 60_000),
    ])
    .await
    .expect("queued for the absent device and acknowledged");
    link.shutdown().await;
    drop(link);
    // A device asks while the service is away.
    let mut other = raw(&broker, "other-1", false).await;
    other
        .publish(
            "fleets/things/other-1/jobs/get",
            &br#"{"clientToken":"while-away"}"#[..],
        )
        .await;
    drop(other);

    broker.restart();

    // The service's session held the request; the device's held notify and the command.
    let link = service(&broker).await;
    let first = next_request(&link).await;
    assert_eq!(first.thing, thing("other-1"));
    assert_eq!(first.client_token.as_deref(), Some("while-away"));
    let (_responder, seen2) = respond(Arc::clone(&link), Arc::clone(&script));
    let (_dev, mut events) = device(&broker, "boiler-1", Some(handler())).await;
    let jobs = expect_event(&mut events, |e| match e {
        DeviceEvent::Notify { jobs, .. } => Some(jobs),
        _ => None,
    })
    .await;
    assert_eq!(jobs.queued.len(), 1);
    let (id, outcome) = expect_event(&mut events, |e| match e {
        DeviceEvent::CommandAnswered {
            execution_id,
            outcome,
            ..
        } => Some((execution_id, outcome)),
        _ => None,
    })
    .await;
    assert_eq!(id.as_str(), "c-away");
    assert_eq!(outcome, Ok(()));
    assert!(seen2.lock().unwrap().iter().any(|i| matches!(
        &i.request,
        DeviceRequest::CommandResponse { execution_id, .. } if execution_id.as_str() == "c-away"
    )));
    drop(seen);
}

#[tokio::test]
async fn send_waits_through_a_broker_outage() {
    let mut broker = TestBroker::start();
    let link = service(&broker).await;
    let t = thing("far-1");
    broker.stop();
    let sender = {
        let link = Arc::clone(&link);
        let t = t.clone();
        tokio::spawn(async move {
            link.send(vec![Outbound::Notify {
                thing: t,
                jobs: PendingJobs::default(),
                timestamp: now(),
            }])
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sender.is_finished(), "no broker, no acknowledgement");
    broker.start_again();
    timeout(WAIT, sender)
        .await
        .expect("acknowledged after the reconnect")
        .unwrap()
        .expect("delivered");
    assert!(link.is_connected());
}

#[tokio::test]
async fn clean_sessions_resubscribe_after_a_restart() {
    let mut broker = TestBroker::start();
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.session = Session::Clean;
    let link = Arc::new(MqttLink::connect(config).await.unwrap());
    let script = Arc::new(Mutex::new(Script::new()));
    let (_responder, _) = respond(Arc::clone(&link), script);
    let mut dconfig = device_config(&broker, "clean-1");
    dconfig.session = Session::Clean;
    dconfig.request_timeout = Duration::from_millis(500);
    let (dev, mut events) = DeviceClient::connect(dconfig, None).await.unwrap();
    expect_event(&mut events, |e| {
        matches!(e, DeviceEvent::Pending(_)).then_some(())
    })
    .await;
    broker.restart();
    let resumed = expect_event(&mut events, |e| match e {
        DeviceEvent::Connected { session_present } => Some(session_present),
        _ => None,
    })
    .await;
    assert!(!resumed);
    // Both resubscribed: a round trip works. The service may still be reconnecting.
    let mut result = dev.get_pending().await;
    for _ in 0..20 {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = dev.get_pending().await;
    }
    assert_eq!(result.unwrap(), PendingJobs::default());
}

#[tokio::test]
async fn shutdown_closes_the_link_without_hanging() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    link.shutdown().await;
    assert!(!link.is_connected());
    let recv = timeout(WAIT, link.recv(1)).await.expect("recv returns");
    assert_eq!(recv, Err(fleetops_core::link::LinkError::Closed));
    let sent = timeout(
        WAIT,
        link.send(vec![Outbound::Notify {
            thing: thing("gone-1"),
            jobs: PendingJobs::default(),
            timestamp: now(),
        }]),
    )
    .await
    .expect("send returns");
    assert_eq!(sent, Err(fleetops_core::link::LinkError::Closed));
}
