//! Requests and replies between the device SDK and a scripted service: jobs and commands
//! round trips, every rejection code, notifications, shared subscriptions and the topic
//! layout presets.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::raw::{body, raw};
use common::responder::{respond, Script};
use common::{
    command, details, device, device_config, expect_event, handler, job, link_config, next_request,
    now, service, thing,
};
use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, JobTarget, Outbound, PendingJobs,
    StartNextRequest, StepTimeout, UpdateRequest,
};
use fleetops_core::ids::ExecutionId;
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::link::DeviceLink;
use fleetops_core::rejection::ErrorCode;
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{DeviceClient, DeviceEvent, DeviceEvents, Error, MqttLink};
use rumqttc::v5::mqttbytes::v5::PubAckReason;
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

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
        link.send(vec![command(&t, "c-1", "typed", 5_000)])
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

/// The last handle going closes the connection even while the client's own tasks still
/// wait (here for the reply to a command answer that the service never sends): otherwise
/// the connection would linger for the whole request timeout, and a new client with the
/// same id would be taken over by the old one reconnecting, again and again.
#[tokio::test]
async fn dropping_the_client_closes_its_connection_while_an_answer_awaits_its_reply() {
    let broker = TestBroker::start();
    let link = service(&broker).await;
    let presence = "fleets/things/sensor-9/presence";
    let mut observer = raw(&broker, "observer", true).await;
    observer.subscribe(presence).await;
    let mut config = device_config(&broker, "sensor-9");
    config.presence = true;
    config.pull_on_connect = false;
    // Far longer than the test waits below.
    config.request_timeout = Duration::from_secs(120);
    let (dev, events) = DeviceClient::connect(config, Some(handler()))
        .await
        .expect("device connects");
    assert_eq!(body(&observer.message(presence).await)["state"], "online");

    link.send(vec![command(&thing("sensor-9"), "c-1", "set", 30_000)])
        .await
        .expect("the broker acknowledged the command request");
    // The service takes the answer and, unlike a real one, never replies to it.
    let answer = next_request(&link).await;
    assert!(matches!(
        answer.request,
        DeviceRequest::CommandResponse { ref execution_id, .. } if execution_id.as_str() == "c-1"
    ));

    drop((dev, events));
    // The broker publishes the last will once the connection is gone.
    let gone = tokio::time::timeout(Duration::from_secs(5), observer.message(presence))
        .await
        .expect("the connection closed within 5 s of dropping the client");
    assert_eq!(body(&gone)["state"], "offline");
}
