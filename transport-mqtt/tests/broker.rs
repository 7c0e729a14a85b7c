//! The MQTT binding against a real mosquitto, one broker per test (see `testing` and the
//! helpers in `common`).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{body, raw};
use common::responder::{respond, Script};
use common::{
    command, details, device, device_config, expect_event, handler, job, link_config, next_request,
    next_unsettled, now, service, thing, WAIT,
};
use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, JobTarget, Operation, Outbound, PendingJobs,
    StartNextRequest, StepTimeout, UpdateRequest,
};
use fleetops_core::ids::ExecutionId;
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::link::DeviceLink;
use fleetops_core::rejection::ErrorCode;
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_core::time::Timestamp;
use fleetops_transport_mqtt::codec::{Limits, TopicLayout};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{
    DeviceClient, DeviceConfig, DeviceEvent, DeviceEvents, Error, MqttLink, MqttLinkConfig, Session,
};
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};
use tokio::time::timeout;

#[tokio::test]
async fn command_request_and_response_round_trip() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let t = thing("sensor-1");
    let (_dev, mut events) = device(&broker, "sensor-1", Some(handler())).await;
    // A service-account observer checks the MQTT 5 properties on the wire.
    let mut observer = raw(&broker, "observer", true).await;
    observer
        .subscribe("fleets/commands/things/+/executions/+/request")
        .await;

    let script = Arc::new(Mutex::new(Script::new()));
    for (id, action) in [("c-ok", "set"), ("c-fail", "fail"), ("c-no", "refuse")] {
        script
            .lock()
            .unwrap()
            .open_commands
            .push(ExecutionId::parse(id).unwrap());
        link.send(vec![command(&t, id, action, 29_500)])
            .await
            .expect("the broker acknowledged the command request");
    }
    let (_responder, seen) = respond(Arc::clone(&link), Arc::clone(&script));

    let request = observer
        .message("fleets/commands/things/sensor-1/executions/c-ok/request")
        .await;
    let props = request.properties.clone().expect("MQTT 5 properties");
    assert!(matches!(props.message_expiry_interval, Some(29 | 30)));
    assert_eq!(
        props.response_topic.as_deref(),
        Some("fleets/commands/things/sensor-1/executions/c-ok/response")
    );
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c-ok"[..]));
    assert_eq!(request.qos, QoS::AtLeastOnce);
    assert_eq!(
        body(&request),
        json!({"commandId": "tpl-1", "action": "set", "params": {"value": 24},
               "timestamp": 1_700_000_000, "ttl": 30})
    );

    let mut answered = BTreeMap::new();
    while answered.len() < 3 {
        let (id, status, outcome) = expect_event(&mut events, |e| match e {
            DeviceEvent::CommandAnswered {
                execution_id,
                status,
                outcome,
            } => Some((execution_id, status, outcome)),
            _ => None,
        })
        .await;
        assert_eq!(outcome, Ok(()), "{id}");
        answered.insert(id.to_string(), status);
    }
    assert_eq!(answered["c-ok"], CommandStatus::Succeeded);
    assert_eq!(answered["c-fail"], CommandStatus::Failed);
    assert_eq!(answered["c-no"], CommandStatus::Rejected);

    let seen = seen.lock().unwrap().clone();
    let ok = seen
        .iter()
        .find_map(|i| match &i.request {
            DeviceRequest::CommandResponse {
                execution_id,
                response,
            } if execution_id.as_str() == "c-ok" => Some(response.clone()),
            _ => None,
        })
        .expect("the service saw the response");
    assert_eq!(ok.result, Some(json!({"echo": {"value": 24}, "ttl_s": 30})));
    assert!(seen.iter().all(|i| i.thing == t));
}

#[tokio::test]
async fn late_command_response_is_rejected_to_the_device() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let script = Arc::new(Mutex::new(Script::new()));
    let (_responder, _) = respond(Arc::clone(&link), script);
    let (dev, _events) = device(&broker, "sensor-2", None).await;
    // The command is not open any more (timed out): the service refuses the answer.
    let err = dev
        .respond(
            ExecutionId::parse("gone").unwrap(),
            CommandResponse {
                status: CommandStatus::Succeeded,
                result: None,
                status_reason: None,
            },
        )
        .await
        .unwrap_err();
    let Error::Rejected(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.code, ErrorCode::TerminalStateReached);
}

#[tokio::test]
async fn start_next_and_update_round_trips_with_notifications() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let t = thing("pump-7");
    let script = Arc::new(Mutex::new(Script::new()));
    script.lock().unwrap().queue(
        &t,
        "fw-1",
        json!({"url": "https://example.invalid/fw-1.bin"}),
    );
    script
        .lock()
        .unwrap()
        .queue(&t, "cfg-2", json!({"mode": "eco"}));
    let (_responder, _) = respond(Arc::clone(&link), Arc::clone(&script));
    let (dev, mut events) = device(&broker, "pump-7", None).await;

    // Pull on connect.
    let pending = expect_event(&mut events, |e| match e {
        DeviceEvent::Pending(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(pending.queued.len(), 2);
    assert_eq!(pending.queued[0].job_id, job("fw-1"));

    let started = dev
        .start_next(StartNextRequest {
            status_details: Some(details(&[("step", "download")])),
            step_timeout: StepTimeout::Minutes(5),
        })
        .await
        .unwrap()
        .expect("something to start");
    assert_eq!(started.job_id, job("fw-1"));
    assert_eq!(started.status, JobExecutionStatus::InProgress);
    assert_eq!(started.version_number, 2);
    assert_eq!(
        started.job_document,
        Some(json!({"url": "https://example.invalid/fw-1.bin"}))
    );
    assert_eq!(started.status_details, details(&[("step", "download")]));

    let next = dev.describe_next().await.unwrap();
    assert_eq!(next.job_id, job("fw-1"));
    let cfg = dev
        .describe(DescribeRequest {
            job: JobTarget::Job(job("cfg-2")),
            execution_number: None,
            include_job_document: false,
        })
        .await
        .unwrap();
    assert_eq!(cfg.job_document, None);
    assert_eq!(cfg.status, JobExecutionStatus::Queued);

    let progress = dev
        .update(
            job("fw-1"),
            UpdateRequest {
                status: Some(JobExecutionStatus::InProgress),
                status_details: Some(details(&[("step", "flash")])),
                expected_version: Some(2),
                include_job_execution_state: true,
                ..UpdateRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        progress.execution_state,
        Some(ExecutionState {
            status: JobExecutionStatus::InProgress,
            status_details: details(&[("step", "flash")]),
            version_number: 3,
        })
    );
    assert_eq!(progress.job_document, None);

    let done = dev
        .update(
            job("fw-1"),
            UpdateRequest {
                status: Some(JobExecutionStatus::Succeeded),
                expected_version: Some(3),
                include_job_document: true,
                ..UpdateRequest::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(done.execution_state, None);
    assert_eq!(
        done.job_document,
        Some(json!({"url": "https://example.invalid/fw-1.bin"}))
    );

    // The terminal update made the service notify the new pending list and next job.
    let (jobs, _) = expect_event(&mut events, |e| match e {
        DeviceEvent::Notify { jobs, timestamp } => Some((jobs, timestamp)),
        _ => None,
    })
    .await;
    assert!(jobs.in_progress.is_empty());
    assert_eq!(jobs.queued.len(), 1);
    let next = expect_event(&mut events, |e| match e {
        DeviceEvent::NotifyNext { execution, .. } => Some(execution),
        _ => None,
    })
    .await
    .expect("cfg-2 is next");
    assert_eq!(next.job_id, job("cfg-2"));

    let second = dev
        .start_next(StartNextRequest::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.job_id, job("cfg-2"));
    dev.update(
        job("cfg-2"),
        UpdateRequest {
            status: Some(JobExecutionStatus::Failed),
            ..UpdateRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        dev.start_next(StartNextRequest::default()).await.unwrap(),
        None
    );
    assert_eq!(dev.get_pending().await.unwrap(), PendingJobs::default());
}

async fn rejected_code(
    result: Result<impl std::fmt::Debug, Error>,
) -> (ErrorCode, Option<ExecutionState>) {
    match result {
        Err(Error::Rejected(e)) => (e.code, e.execution_state),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn every_rejected_code_reaches_the_device() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let t = thing("valve-3");
    let script = Arc::new(Mutex::new(Script::new()));
    script.lock().unwrap().queue(&t, "j-1", json!({}));
    let (_responder, seen) = respond(Arc::clone(&link), Arc::clone(&script));
    let (dev, _events) = device(&broker, "valve-3", None).await;

    // Codes the codec sends itself, on request topics + `/rejected`, with the token echoed.
    // A raw client with the device's id stands in for a device with a buggy SDK, so the
    // SDK's own connection goes away first.
    dev.disconnect().await;
    let mut bad = raw(&broker, "valve-3", false).await;
    bad.subscribe("fleets/things/valve-3/jobs/#").await;
    let cases: [(&str, &[u8], ErrorCode); 4] = [
        (
            "fleets/things/valve-3/jobs/j-1/delete",
            br#"{"clientToken":"k1"}"#,
            ErrorCode::InvalidTopic,
        ),
        (
            "fleets/things/valve-3/jobs/get",
            b"{\"clientToken\":",
            ErrorCode::InvalidJson,
        ),
        (
            "fleets/things/valve-3/jobs/j-1/update",
            br#"{"status":"DONE","clientToken":"k3"}"#,
            ErrorCode::InvalidRequest,
        ),
        (
            "fleets/things/valve-3/jobs/j-1/update",
            br#"{"expectedVersion":"7","clientToken":"k4"}"#,
            ErrorCode::InvalidRequest,
        ),
    ];
    for (topic, payload, code) in cases {
        assert_eq!(bad.publish(topic, payload).await, PubAckReason::Success);
        let reply = bad.message(&format!("{topic}/rejected")).await;
        let b = body(&reply);
        assert_eq!(b["code"], code.as_str(), "{topic}");
        assert!(b["timestamp"].as_u64().unwrap() > 1_600_000_000);
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
        let token = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v["clientToken"].as_str().map(str::to_owned));
        assert_eq!(b["clientToken"].as_str().map(str::to_owned), token);
    }
    drop(bad);
    // Only the SDK's pull on connect got through; the refused requests never did.
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|i| i.request == DeviceRequest::GetPending
                && i.client_token.as_ref().is_some_and(|t| !t.starts_with('k'))),
        "refused requests never reach the runtime"
    );

    // Codes the runtime decides, through the SDK.
    let (dev, _events) = device(&broker, "valve-3", None).await;
    let upd = |status, expected| UpdateRequest {
        status,
        expected_version: expected,
        include_job_execution_state: true,
        ..UpdateRequest::default()
    };
    assert_eq!(
        rejected_code(
            dev.update(job("nope"), upd(Some(JobExecutionStatus::InProgress), None))
                .await
        )
        .await
        .0,
        ErrorCode::ResourceNotFound
    );
    let (code, state) = rejected_code(
        dev.update(
            job("j-1"),
            upd(Some(JobExecutionStatus::InProgress), Some(9)),
        )
        .await,
    )
    .await;
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert_eq!(state.expect("current state echoed").version_number, 1);
    assert_eq!(
        rejected_code(dev.update(job("j-1"), upd(None, None)).await)
            .await
            .0,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        rejected_code(
            dev.update(job("j-1"), upd(Some(JobExecutionStatus::Queued), None))
                .await
        )
        .await
        .0,
        ErrorCode::InvalidStateTransition
    );
    let describe = |j: &str| DescribeRequest {
        job: JobTarget::Job(job(j)),
        execution_number: None,
        include_job_document: true,
    };
    assert_eq!(
        rejected_code(dev.describe(describe("boom")).await).await.0,
        ErrorCode::InternalError
    );
    assert_eq!(
        rejected_code(dev.describe(describe("busy")).await).await.0,
        ErrorCode::RequestThrottled
    );
    dev.update(
        job("j-1"),
        upd(Some(JobExecutionStatus::Succeeded), Some(1)),
    )
    .await
    .unwrap();
    let (code, state) = rejected_code(
        dev.update(job("j-1"), upd(Some(JobExecutionStatus::Failed), None))
            .await,
    )
    .await;
    assert_eq!(code, ErrorCode::TerminalStateReached);
    assert_eq!(state.unwrap().status, JobExecutionStatus::Succeeded);
    assert_eq!(
        rejected_code(dev.describe_next().await).await.0,
        ErrorCode::ResourceNotFound
    );
}

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
async fn shared_subscriptions_split_the_device_traffic() {
    let broker = TestBroker::start();
    let mut links = vec![];
    for n in 0..2 {
        let mut c = link_config(&broker, TopicLayout::fleets());
        c.client_id = format!("svc-{n}");
        c.shared_group = Some("fleetops".into());
        links.push(Arc::new(MqttLink::connect(c).await.unwrap()));
    }
    let script = Arc::new(Mutex::new(Script::new()));
    let mut seen = vec![];
    let mut tasks = vec![];
    for l in &links {
        let (task, s) = respond(Arc::clone(l), Arc::clone(&script));
        tasks.push(task);
        seen.push(s);
    }
    let (dev, _) = device(&broker, "many-1", None).await;
    // The pull on connect is one request; then 40 more.
    for _ in 0..40 {
        dev.get_pending().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counts: Vec<usize> = seen.iter().map(|s| s.lock().unwrap().len()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 41, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c > 0),
        "both instances got work: {counts:?}"
    );
}

#[tokio::test]
async fn presets_work_end_to_end() {
    for layout in [
        TopicLayout::aws(),
        TopicLayout::emqx(),
        TopicLayout::custom("acme/iot").unwrap(),
    ] {
        let broker = TestBroker::start_with(BrokerOptions {
            layouts: vec![layout.clone()],
            ..BrokerOptions::default()
        });
        let link = Arc::new(
            MqttLink::connect(link_config(&broker, layout.clone()))
                .await
                .unwrap(),
        );
        let t = thing("edge-1");
        let script = Arc::new(Mutex::new(Script::new()));
        script
            .lock()
            .unwrap()
            .queue(&t, "j-1", json!({"p": layout.prefix()}));
        script
            .lock()
            .unwrap()
            .open_commands
            .push(ExecutionId::parse("c-1").unwrap());
        let (_responder, _) = respond(Arc::clone(&link), script);
        let mut config = device_config(&broker, "edge-1");
        config.layout = layout.clone();
        let (dev, mut events) = DeviceClient::connect(config, Some(handler()))
            .await
            .unwrap();
        let next = dev.describe_next().await.unwrap();
        assert_eq!(
            next.job_document,
            Some(json!({"p": layout.prefix()})),
            "{layout}"
        );
        link.send(vec![command(&t, "c-1", "set", 5_000)])
            .await
            .unwrap();
        let outcome = expect_event(&mut events, |e| match e {
            DeviceEvent::CommandAnswered { outcome, .. } => Some(outcome),
            _ => None,
        })
        .await;
        assert_eq!(outcome, Ok(()), "{layout}");
        // Invalid topics are answered under `$` prefixes too (explicit first level).
        let mut bad = raw(&broker, "edge-2", false).await;
        let topic = format!("{}/things/edge-2/jobs/what", layout.prefix());
        bad.subscribe(&format!("{topic}/rejected")).await;
        bad.publish(&topic, &b"{}"[..]).await;
        assert_eq!(
            body(&bad.message(&format!("{topic}/rejected")).await)["code"],
            "InvalidTopic"
        );
    }
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

/// Sends `notify` then `notify-next` to `name` and returns the events the device saw up to
/// the `notify-next`.
async fn notifications_seen(
    link: &MqttLink,
    name: &str,
    events: &mut DeviceEvents,
) -> Vec<DeviceEvent> {
    link.send(vec![
        Outbound::Notify {
            thing: thing(name),
            jobs: PendingJobs::default(),
            timestamp: now(),
        },
        Outbound::NotifyNext {
            thing: thing(name),
            execution: None,
            timestamp: now(),
        },
    ])
    .await
    .unwrap();
    let mut seen = Vec::new();
    expect_event(events, |e| {
        let last = matches!(e, DeviceEvent::NotifyNext { .. });
        seen.push(e);
        last.then_some(())
    })
    .await;
    seen
}

#[tokio::test]
async fn a_device_can_leave_notify_out() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let mut both = device_config(&broker, "gets-both");
    both.pull_on_connect = false;
    let (_both, mut both_events) = DeviceClient::connect(both, None).await.unwrap();
    let mut next_only = device_config(&broker, "next-only");
    next_only.pull_on_connect = false;
    next_only.subscribe_notify = false;
    let (_next, mut next_events) = DeviceClient::connect(next_only, None).await.unwrap();

    let is_notify = |e: &DeviceEvent| matches!(e, DeviceEvent::Notify { .. });
    // The broker keeps one publisher's order towards one subscriber, so `notify` (when
    // subscribed) arrives before the `notify-next` published after it.
    let seen = notifications_seen(&link, "gets-both", &mut both_events).await;
    assert!(seen.iter().any(is_notify), "default device: {seen:?}");
    for _ in 0..3 {
        let seen = notifications_seen(&link, "next-only", &mut next_events).await;
        assert!(!seen.iter().any(is_notify), "notify-next only: {seen:?}");
    }
}

/// Waits until `f` holds, polling.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
