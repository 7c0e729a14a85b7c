//! Golden examples of every message kind, both directions, plus the refusal rules.

use std::collections::BTreeMap;

use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, ExecutionSummary, ExecutionView, Inbound,
    JobTarget, Operation, Outbound, PendingJobs, Reply, StartNextRequest, StepTimeout,
    UpdateRequest,
};
use fleetops_core::ids::{ExecutionId, JobId, StatusDetailKey, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::rejection::{ErrorCode, Rejection};
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_core::time::{Duration, Timestamp};
use serde_json::{json, Value};

use super::*;

const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_500);

fn codec() -> Codec {
    Codec::default()
}

fn thing() -> ThingName {
    ThingName::parse("dev-1").unwrap()
}

fn job() -> JobId {
    JobId::parse("fw-2").unwrap()
}

fn details(pairs: &[(&str, &str)]) -> BTreeMap<StatusDetailKey, String> {
    pairs
        .iter()
        .map(|(k, v)| (StatusDetailKey::parse(k).unwrap(), (*v).to_owned()))
        .collect()
}

fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("payload is JSON")
}

fn request(topic: &str, payload: Value) -> Decoded {
    codec().decode_request(topic, payload.to_string().as_bytes(), NOW)
}

fn inbound(topic: &str, payload: Value) -> Inbound {
    match request(topic, payload) {
        Decoded::Request(i) => i,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn refused(topic: &str, payload: &[u8]) -> Refusal {
    match codec().decode_request(topic, payload, NOW) {
        Decoded::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn summary(job: &str, started: bool) -> ExecutionSummary {
    ExecutionSummary {
        job_id: JobId::parse(job).unwrap(),
        queued_at: Timestamp::from_millis(1_699_999_000_999),
        started_at: started.then(|| Timestamp::from_secs(1_699_999_500)),
        last_updated_at: Timestamp::from_secs(1_699_999_600),
        version_number: 2,
        execution_number: 1,
    }
}

fn view(document: Option<Value>) -> ExecutionView {
    ExecutionView {
        job_id: job(),
        thing_name: thing(),
        status: JobExecutionStatus::InProgress,
        status_details: details(&[("step", "download")]),
        queued_at: Timestamp::from_secs(1_699_999_000),
        started_at: Some(Timestamp::from_secs(1_699_999_500)),
        last_updated_at: Timestamp::from_secs(1_699_999_600),
        version_number: 3,
        execution_number: 1,
        job_document: document,
    }
}

fn view_json(with_document: bool) -> Value {
    let mut v = json!({
        "jobId": "fw-2", "thingName": "dev-1", "status": "IN_PROGRESS",
        "statusDetails": {"step": "download"},
        "queuedAt": 1_699_999_000, "startedAt": 1_699_999_500, "lastUpdatedAt": 1_699_999_600,
        "versionNumber": 3, "executionNumber": 1
    });
    if with_document {
        v["jobDocument"] = json!({"url": "https://example.invalid/fw.bin"});
    }
    v
}

fn state() -> ExecutionState {
    ExecutionState {
        status: JobExecutionStatus::InProgress,
        status_details: details(&[("step", "flash")]),
        version_number: 4,
    }
}

// ---------------------------------------------------------------- device → service (decode)

#[test]
fn get_pending_with_and_without_body() {
    let i = inbound("fleets/things/dev-1/jobs/get", json!({"clientToken": "c1"}));
    assert_eq!(
        i,
        Inbound {
            thing: thing(),
            client_token: Some("c1".into()),
            request: DeviceRequest::GetPending
        }
    );
    for empty in [&b""[..], b"  \n"] {
        match codec().decode_request("fleets/things/dev-1/jobs/get", empty, NOW) {
            Decoded::Request(i) => assert_eq!(i.client_token, None),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn start_next_golden() {
    let i = inbound(
        "fleets/things/dev-1/jobs/start-next",
        json!({"statusDetails": {"a": "1"}, "stepTimeoutInMinutes": 30, "clientToken": "c2"}),
    );
    assert_eq!(
        i.request,
        DeviceRequest::StartNext(StartNextRequest {
            status_details: Some(details(&[("a", "1")])),
            step_timeout: StepTimeout::Minutes(30),
        })
    );
    let i = inbound(
        "fleets/things/dev-1/jobs/start-next",
        json!({"stepTimeoutInMinutes": -1, "statusDetails": null}),
    );
    assert_eq!(
        i.request,
        DeviceRequest::StartNext(StartNextRequest {
            status_details: None,
            step_timeout: StepTimeout::Clear,
        })
    );
}

#[test]
fn describe_golden_including_next() {
    let i = inbound("fleets/things/dev-1/jobs/$next/get", json!({}));
    assert_eq!(
        i.request,
        DeviceRequest::Describe(DescribeRequest {
            job: JobTarget::Next,
            execution_number: None,
            include_job_document: true,
        })
    );
    let i = inbound(
        "fleets/things/dev-1/jobs/fw-2/get",
        json!({"executionNumber": 2, "includeJobDocument": false, "clientToken": "c3"}),
    );
    assert_eq!(
        i.request,
        DeviceRequest::Describe(DescribeRequest {
            job: JobTarget::Job(job()),
            execution_number: Some(2),
            include_job_document: false,
        })
    );
    assert_eq!(
        i.request.operation(),
        Operation::Describe(JobTarget::Job(job()))
    );
}

#[test]
fn update_golden() {
    let aws = Codec::new(TopicLayout::aws(), Limits::default());
    let payload = json!({
        "status": "IN_PROGRESS", "statusDetails": {"progress": "40%"},
        "expectedVersion": 3, "executionNumber": 1, "stepTimeoutInMinutes": 10,
        "includeJobExecutionState": true, "includeJobDocument": true, "clientToken": "c4",
        "unknownField": [1, 2]
    });
    let Decoded::Request(i) = aws.decode_request(
        "$aws/things/dev-1/jobs/fw-2/update",
        payload.to_string().as_bytes(),
        NOW,
    ) else {
        panic!("update not decoded")
    };
    assert_eq!(i.client_token.as_deref(), Some("c4"));
    assert_eq!(
        i.request,
        DeviceRequest::Update {
            job_id: job(),
            request: UpdateRequest {
                status: Some(JobExecutionStatus::InProgress),
                status_details: Some(details(&[("progress", "40%")])),
                expected_version: Some(3),
                execution_number: Some(1),
                step_timeout: StepTimeout::Minutes(10),
                include_job_execution_state: true,
                include_job_document: true,
            }
        }
    );
}

#[test]
fn update_with_a_foreign_prefix_is_ignored() {
    assert_eq!(
        request("$aws/things/dev-1/jobs/fw-2/update", json!({})),
        Decoded::Ignored
    );
}

#[test]
fn update_without_status_is_left_to_core() {
    // Whether `status` may be omitted is core's rule; the codec only maps.
    let i = inbound("fleets/things/dev-1/jobs/fw-2/update", json!({}));
    assert_eq!(
        i.request,
        DeviceRequest::Update {
            job_id: job(),
            request: UpdateRequest::default()
        }
    );
}

#[test]
fn command_response_golden() {
    let i = inbound(
        "fleets/commands/things/dev-1/executions/e-9/response",
        json!({"status": "SUCCEEDED", "result": {"temp": 24}, "statusReason": "ok"}),
    );
    assert_eq!(
        i.request,
        DeviceRequest::CommandResponse {
            execution_id: ExecutionId::parse("e-9").unwrap(),
            response: CommandResponse {
                status: CommandStatus::Succeeded,
                result: Some(json!({"temp": 24})),
                status_reason: Some("ok".into()),
            }
        }
    );
    // A present `null` result is a value, not an absence.
    let i = inbound(
        "fleets/commands/things/dev-1/executions/e-9/response",
        json!({"status": "FAILED", "result": null}),
    );
    let DeviceRequest::CommandResponse { response, .. } = i.request else {
        panic!()
    };
    assert_eq!(response.result, Some(Value::Null));
}

// ---------------------------------------------------------------- refusals

fn assert_refusal(r: &Refusal, code: ErrorCode, reply_topic: &str, token: Option<&str>) {
    assert_eq!(r.rejection.code(), code, "{:?}", r.rejection);
    assert_eq!(r.reply.topic, reply_topic);
    assert_eq!(r.reply.qos, Qos::AtLeastOnce);
    let b = body(&r.reply.payload);
    assert_eq!(b["code"], code.as_str());
    assert_eq!(b["message"], r.rejection.to_string());
    assert_eq!(b["timestamp"], 1_700_000_000);
    assert_eq!(b.get("clientToken").and_then(Value::as_str), token);
    assert_eq!(r.client_token.as_deref(), token);
}

#[test]
fn invalid_topic_is_answered_on_topic_slash_rejected() {
    let r = refused(
        "fleets/things/dev-1/jobs/fw-2/delete",
        br#"{"clientToken":"x"}"#,
    );
    assert_refusal(
        &r,
        ErrorCode::InvalidTopic,
        "fleets/things/dev-1/jobs/fw-2/delete/rejected",
        Some("x"),
    );
    assert_eq!(r.thing, Some(thing()));
    let r = refused("fleets/commands/things/dev-1/executions/e/cancel", b"{}");
    assert_refusal(
        &r,
        ErrorCode::InvalidTopic,
        "fleets/commands/things/dev-1/executions/e/cancel/rejected",
        None,
    );
    // A thing name outside the alphabet still gets its reply.
    let r = refused("fleets/things/bad.name/jobs/get", b"{}");
    assert_refusal(
        &r,
        ErrorCode::InvalidTopic,
        "fleets/things/bad.name/jobs/get/rejected",
        None,
    );
    assert_eq!(r.thing, None);
    // Invalid JSON on an unknown topic: the topic is judged first.
    let r = refused("fleets/things/dev-1/jobs", b"{");
    assert_eq!(r.rejection.code(), ErrorCode::InvalidTopic);
}

#[test]
fn invalid_json_cases() {
    for payload in [&b"{"[..], b"[1,2]", b"\"s\"", b"\xff\xfe", b"{\"a\":1}}"] {
        let r = refused("fleets/things/dev-1/jobs/get", payload);
        assert_refusal(
            &r,
            ErrorCode::InvalidJson,
            "fleets/things/dev-1/jobs/get/rejected",
            None,
        );
    }
    let deep = "[".repeat(10_000);
    let r = refused("fleets/things/dev-1/jobs/get", deep.as_bytes());
    assert_eq!(r.rejection.code(), ErrorCode::InvalidJson);
}

#[test]
fn invalid_request_cases_name_the_field_and_echo_the_token() {
    let cases: &[(&str, Value, &str)] = &[
        ("jobs/fw-2/update", json!({"status": "DONE"}), "status"),
        ("jobs/fw-2/update", json!({"status": 1}), "status"),
        (
            "jobs/fw-2/update",
            json!({"expectedVersion": -1}),
            "expectedVersion",
        ),
        (
            "jobs/fw-2/update",
            json!({"expectedVersion": 1.5}),
            "expectedVersion",
        ),
        (
            "jobs/fw-2/update",
            json!({"executionNumber": 5_000_000_000u64}),
            "executionNumber",
        ),
        (
            "jobs/fw-2/update",
            json!({"stepTimeoutInMinutes": -2}),
            "stepTimeoutInMinutes",
        ),
        (
            "jobs/fw-2/update",
            json!({"stepTimeoutInMinutes": "5"}),
            "stepTimeoutInMinutes",
        ),
        (
            "jobs/fw-2/update",
            json!({"includeJobDocument": "yes"}),
            "includeJobDocument",
        ),
        (
            "jobs/fw-2/update",
            json!({"statusDetails": {"a": 1}}),
            "statusDetails",
        ),
        (
            "jobs/fw-2/update",
            json!({"statusDetails": {"a b": "1"}}),
            "statusDetails",
        ),
        (
            "jobs/fw-2/update",
            json!({"statusDetails": "x"}),
            "statusDetails",
        ),
        ("jobs/$next/update", json!({"status": "SUCCEEDED"}), "jobId"),
        ("jobs/bad.id/get", json!({}), "jobId"),
        (
            "jobs/start-next",
            json!({"statusDetails": [1]}),
            "statusDetails",
        ),
    ];
    for (suffix, payload, field) in cases {
        let mut payload = payload.clone();
        payload["clientToken"] = json!("tok");
        let topic = format!("fleets/things/dev-1/{suffix}");
        let r = refused(&topic, payload.to_string().as_bytes());
        assert_refusal(
            &r,
            ErrorCode::InvalidRequest,
            &format!("{topic}/rejected"),
            Some("tok"),
        );
        assert!(
            matches!(&r.rejection, Rejection::InvalidRequest { field: f, .. } if f == field),
            "{suffix} {payload}: {:?}",
            r.rejection
        );
    }
    let commands: &[(&str, Value)] = &[
        ("e-1/response", json!({"status": "SENT"})),
        ("e-1/response", json!({})),
        (
            "e-1/response",
            json!({"status": "SUCCEEDED", "statusReason": 3}),
        ),
        ("bad.id/response", json!({"status": "SUCCEEDED"})),
    ];
    for (suffix, payload) in commands {
        let topic = format!("fleets/commands/things/dev-1/executions/{suffix}");
        let r = refused(&topic, payload.to_string().as_bytes());
        assert_refusal(
            &r,
            ErrorCode::InvalidRequest,
            &format!("{topic}/rejected"),
            None,
        );
    }
}

#[test]
fn oversized_payloads_and_tokens() {
    let small = Codec::new(
        TopicLayout::fleets(),
        Limits {
            max_payload: 64,
            max_client_token: 8,
        },
    );
    let big = format!("{{\"clientToken\":\"t\",\"x\":\"{}\"}}", "a".repeat(100));
    let Decoded::Refused(r) =
        small.decode_request("fleets/things/dev-1/jobs/get", big.as_bytes(), NOW)
    else {
        panic!()
    };
    // Not parsed at all, so no token to echo.
    assert_refusal(
        &r,
        ErrorCode::InvalidRequest,
        "fleets/things/dev-1/jobs/get/rejected",
        None,
    );
    let Decoded::Refused(r) = small.decode_request(
        "fleets/things/dev-1/jobs/get",
        br#"{"clientToken":"123456789"}"#,
        NOW,
    ) else {
        panic!()
    };
    assert!(matches!(
        r.rejection,
        Rejection::InvalidRequest {
            field: "clientToken",
            ..
        }
    ));
    assert_eq!(r.client_token, None);
    let r = refused("fleets/things/dev-1/jobs/get", br#"{"clientToken":7}"#);
    assert_eq!(r.rejection.code(), ErrorCode::InvalidRequest);
}

#[test]
fn service_bound_topics_only() {
    for topic in [
        "elsewhere/x",
        "fleets/things/dev-1/jobs/get/accepted",
        "fleets/things/dev-1/jobs/fw-2/update/rejected",
        "fleets/things/dev-1/jobs/notify",
        "fleets/things/dev-1/jobs/notify-next",
        "fleets/things/dev-1/jobs/weird/accepted",
        "fleets/things/dev-1/jobs/rejected",
        "fleets/commands/things/dev-1/executions/e/request",
        "fleets/commands/things/dev-1/executions/e/response/accepted",
        "fleets/commands/things/dev-1/executions/e/x/rejected",
    ] {
        assert_eq!(
            codec().decode_request(topic, b"{}", NOW),
            Decoded::Ignored,
            "{topic}"
        );
    }
}

// ---------------------------------------------------------------- service → device (encode)

fn encoded(message: &Outbound) -> (String, Value, PublishProps) {
    let e = codec().encode(message).expect("encodes");
    assert_eq!(e.qos, Qos::AtLeastOnce);
    (e.topic, body(&e.payload), e.properties)
}

fn accepted(operation: Operation, token: Option<&str>, reply: Reply) -> Outbound {
    Outbound::Accepted {
        thing: thing(),
        operation,
        client_token: token.map(str::to_owned),
        reply,
        timestamp: NOW,
    }
}

#[test]
fn get_accepted_golden() {
    let (topic, b, props) = encoded(&accepted(
        Operation::GetPending,
        Some("c1"),
        Reply::Pending(PendingJobs {
            in_progress: vec![summary("a", true)],
            queued: vec![summary("b", false)],
        }),
    ));
    assert_eq!(topic, "fleets/things/dev-1/jobs/get/accepted");
    assert!(props.is_empty());
    assert_eq!(
        b,
        json!({
            "inProgressJobs": [{"jobId": "a", "queuedAt": 1_699_999_000, "startedAt": 1_699_999_500,
                "lastUpdatedAt": 1_699_999_600, "versionNumber": 2, "executionNumber": 1}],
            "queuedJobs": [{"jobId": "b", "queuedAt": 1_699_999_000,
                "lastUpdatedAt": 1_699_999_600, "versionNumber": 2, "executionNumber": 1}],
            "timestamp": 1_700_000_000,
            "clientToken": "c1"
        })
    );
}

#[test]
fn start_next_accepted_golden() {
    let (topic, b, _) = encoded(&accepted(
        Operation::StartNext,
        Some("c2"),
        Reply::StartNext(Some(view(Some(
            json!({"url": "https://example.invalid/fw.bin"}),
        )))),
    ));
    assert_eq!(topic, "fleets/things/dev-1/jobs/start-next/accepted");
    assert_eq!(
        b,
        json!({"execution": view_json(true), "timestamp": 1_700_000_000, "clientToken": "c2"})
    );
    // Nothing pending: no `execution` at all.
    let (_, b, _) = encoded(&accepted(
        Operation::StartNext,
        None,
        Reply::StartNext(None),
    ));
    assert_eq!(b, json!({"timestamp": 1_700_000_000}));
}

#[test]
fn describe_accepted_golden() {
    let (topic, b, _) = encoded(&accepted(
        Operation::Describe(JobTarget::Next),
        Some("c3"),
        Reply::Describe(view(None)),
    ));
    assert_eq!(topic, "fleets/things/dev-1/jobs/$next/get/accepted");
    assert_eq!(
        b,
        json!({"execution": view_json(false), "timestamp": 1_700_000_000, "clientToken": "c3"})
    );
}

#[test]
fn update_accepted_golden() {
    let (topic, b, _) = encoded(&accepted(
        Operation::Update(job()),
        Some("c4"),
        Reply::Update {
            execution_state: Some(state()),
            job_document: Some(json!({"v": 2})),
        },
    ));
    assert_eq!(topic, "fleets/things/dev-1/jobs/fw-2/update/accepted");
    assert_eq!(
        b,
        json!({
            "executionState": {"status": "IN_PROGRESS", "statusDetails": {"step": "flash"}, "versionNumber": 4},
            "jobDocument": {"v": 2},
            "timestamp": 1_700_000_000,
            "clientToken": "c4"
        })
    );
    let (_, b, _) = encoded(&accepted(
        Operation::Update(job()),
        Some("c5"),
        Reply::Update {
            execution_state: None,
            job_document: None,
        },
    ));
    assert_eq!(b, json!({"timestamp": 1_700_000_000, "clientToken": "c5"}));
}

#[test]
fn command_response_accepted_golden() {
    let id = ExecutionId::parse("e-9").unwrap();
    let (topic, b, _) = encoded(&accepted(
        Operation::CommandResponse(id),
        None,
        Reply::CommandResponse,
    ));
    assert_eq!(
        topic,
        "fleets/commands/things/dev-1/executions/e-9/response/accepted"
    );
    assert_eq!(b, json!({"timestamp": 1_700_000_000}));
}

#[test]
fn rejected_golden_with_execution_state() {
    let (topic, b, _) = encoded(&Outbound::Rejected {
        thing: thing(),
        operation: Operation::Update(job()),
        client_token: Some("c6".into()),
        rejection: Rejection::VersionMismatch {
            expected: 2,
            actual: 4,
            execution_state: Some(Box::new(state())),
        },
        timestamp: NOW,
    });
    assert_eq!(topic, "fleets/things/dev-1/jobs/fw-2/update/rejected");
    assert_eq!(
        b,
        json!({
            "code": "VersionMismatch",
            "message": "expected version 2, current version is 4",
            "clientToken": "c6",
            "timestamp": 1_700_000_000,
            "executionState": {"status": "IN_PROGRESS", "statusDetails": {"step": "flash"}, "versionNumber": 4}
        })
    );
}

#[test]
fn every_error_code_encodes_with_its_wire_name() {
    let rejections = [
        Rejection::InvalidTopic { topic: "t".into() },
        Rejection::InvalidJson { detail: "d".into() },
        Rejection::invalid("status", "bad"),
        Rejection::InvalidStateTransition {
            from: "SUCCEEDED",
            to: "IN_PROGRESS",
            execution_state: None,
        },
        Rejection::ResourceNotFound {
            kind: "job",
            id: "x".into(),
        },
        Rejection::VersionMismatch {
            expected: 1,
            actual: 2,
            execution_state: None,
        },
        Rejection::InternalError { detail: "d".into() },
        Rejection::RequestThrottled,
        Rejection::TerminalStateReached {
            status: "SUCCEEDED",
            execution_state: None,
        },
    ];
    let codes: Vec<ErrorCode> = rejections.iter().map(Rejection::code).collect();
    assert_eq!(codes, ErrorCode::ALL);
    for rejection in rejections {
        let (_, b, _) = encoded(&Outbound::Rejected {
            thing: thing(),
            operation: Operation::GetPending,
            client_token: None,
            rejection: rejection.clone(),
            timestamp: NOW,
        });
        assert_eq!(b["code"], rejection.code().as_str());
        assert!(b.get("executionState").is_none());
    }
}

#[test]
fn notify_golden() {
    let (topic, b, _) = encoded(&Outbound::Notify {
        thing: thing(),
        jobs: PendingJobs {
            in_progress: vec![],
            queued: vec![summary("b", false)],
        },
        timestamp: NOW,
    });
    assert_eq!(topic, "fleets/things/dev-1/jobs/notify");
    assert_eq!(
        b,
        json!({
            "jobs": {"QUEUED": [{"jobId": "b", "queuedAt": 1_699_999_000,
                "lastUpdatedAt": 1_699_999_600, "versionNumber": 2, "executionNumber": 1}]},
            "timestamp": 1_700_000_000
        })
    );
    let (_, b, _) = encoded(&Outbound::Notify {
        thing: thing(),
        jobs: PendingJobs::default(),
        timestamp: NOW,
    });
    assert_eq!(b, json!({"jobs": {}, "timestamp": 1_700_000_000}));
}

#[test]
fn status_change_golden() {
    let message = Outbound::StatusChange {
        job_id: job(),
        thing: thing(),
        status: JobExecutionStatus::Succeeded,
        execution_number: 2,
        version_number: 5,
        timestamp: NOW,
    };
    let (topic, b, props) = encoded(&message);
    assert_eq!(topic, "fleets/events/jobExecution/fw-2/SUCCEEDED");
    assert_eq!(
        b,
        json!({"jobId": "fw-2", "thingName": "dev-1", "status": "SUCCEEDED",
               "executionNumber": 2, "versionNumber": 5, "timestamp": 1_700_000_000})
    );
    assert!(props.is_empty());
    let e = Codec::new(TopicLayout::aws(), Limits::default())
        .encode(&Outbound::StatusChange {
            job_id: job(),
            thing: thing(),
            status: JobExecutionStatus::InProgress,
            execution_number: 1,
            version_number: 2,
            timestamp: NOW,
        })
        .unwrap();
    assert_eq!(e.topic, "$aws/events/jobExecution/fw-2/IN_PROGRESS");
    // Not for devices: the device decoder refuses it, and nothing predicts a device message.
    assert!(matches!(
        codec().decode_device_message(&topic, b.to_string().as_bytes()),
        Err(DecodeError::NotDeviceBound { .. })
    ));
    assert_eq!(DeviceMessage::from_outbound(&message), None);
    // Nor is it a request the service would answer.
    assert_eq!(
        codec().decode_request(&topic, b.to_string().as_bytes(), NOW),
        Decoded::Ignored
    );
}

#[test]
fn notify_next_golden() {
    let (topic, b, _) = encoded(&Outbound::NotifyNext {
        thing: thing(),
        execution: Some(view(Some(json!({"url": "https://example.invalid/fw.bin"})))),
        timestamp: NOW,
    });
    assert_eq!(topic, "fleets/things/dev-1/jobs/notify-next");
    assert_eq!(
        b,
        json!({"execution": view_json(true), "timestamp": 1_700_000_000})
    );
    let (_, b, _) = encoded(&Outbound::NotifyNext {
        thing: thing(),
        execution: None,
        timestamp: NOW,
    });
    assert_eq!(b, json!({"timestamp": 1_700_000_000}));
}

#[test]
fn command_request_golden_with_mqtt5_properties() {
    let (topic, b, props) = encoded(&Outbound::CommandRequest {
        thing: thing(),
        execution_id: ExecutionId::parse("e-9").unwrap(),
        command_id: Some("set-temp".into()),
        action: "setTemperature".into(),
        params: json!({"value": 24}),
        timestamp: NOW,
        ttl: Duration::from_millis(29_001),
    });
    assert_eq!(topic, "fleets/commands/things/dev-1/executions/e-9/request");
    assert_eq!(
        b,
        json!({"commandId": "set-temp", "action": "setTemperature", "params": {"value": 24},
               "timestamp": 1_700_000_000, "ttl": 30})
    );
    assert_eq!(
        props,
        PublishProps {
            message_expiry_secs: Some(30),
            response_topic: Some("fleets/commands/things/dev-1/executions/e-9/response".into()),
            correlation_data: Some(b"e-9".to_vec()),
        }
    );
    // A spent TTL still gets a positive expiry: 0 would mean "no expiry" to some brokers.
    let e = codec()
        .encode(&Outbound::CommandRequest {
            thing: thing(),
            execution_id: ExecutionId::parse("e").unwrap(),
            command_id: None,
            action: "a".into(),
            params: Value::Null,
            timestamp: NOW,
            ttl: Duration::ZERO,
        })
        .unwrap();
    assert_eq!(e.properties.message_expiry_secs, Some(1));
    assert_eq!(
        body(&e.payload),
        json!({"action": "a", "params": null, "timestamp": 1_700_000_000, "ttl": 0})
    );
}

#[test]
fn encode_refuses_mismatched_replies_and_oversized_payloads() {
    assert!(matches!(
        codec().encode(&accepted(
            Operation::GetPending,
            None,
            Reply::CommandResponse
        )),
        Err(EncodeError::ReplyMismatch { .. })
    ));
    let small = Codec::new(
        TopicLayout::fleets(),
        Limits {
            max_payload: 100,
            ..Limits::default()
        },
    );
    let big = accepted(
        Operation::Update(job()),
        None,
        Reply::Update {
            execution_state: None,
            job_document: Some(json!("x".repeat(200))),
        },
    );
    assert!(matches!(
        small.encode(&big),
        Err(EncodeError::TooLarge { max: 100, .. })
    ));
}

// ---------------------------------------------------------------- device SDK side

#[test]
fn device_request_goldens() {
    let c = codec();
    let t = thing();
    let enc = |token: Option<&str>, r: &DeviceRequest| {
        let e = c.encode_request(&t, token, r).unwrap();
        (e.topic, body(&e.payload))
    };
    assert_eq!(
        enc(Some("c1"), &DeviceRequest::GetPending),
        (
            "fleets/things/dev-1/jobs/get".into(),
            json!({"clientToken": "c1"})
        )
    );
    assert_eq!(
        enc(
            None,
            &DeviceRequest::StartNext(StartNextRequest {
                status_details: Some(details(&[("a", "b")])),
                step_timeout: StepTimeout::Clear,
            })
        ),
        (
            "fleets/things/dev-1/jobs/start-next".into(),
            json!({"statusDetails": {"a": "b"}, "stepTimeoutInMinutes": -1})
        )
    );
    assert_eq!(
        enc(
            Some("c3"),
            &DeviceRequest::Describe(DescribeRequest {
                job: JobTarget::Next,
                execution_number: None,
                include_job_document: true,
            })
        ),
        (
            "fleets/things/dev-1/jobs/$next/get".into(),
            json!({"includeJobDocument": true, "clientToken": "c3"})
        )
    );
    assert_eq!(
        enc(
            Some("c4"),
            &DeviceRequest::Update {
                job_id: job(),
                request: UpdateRequest {
                    status: Some(JobExecutionStatus::Succeeded),
                    expected_version: Some(3),
                    include_job_execution_state: true,
                    ..UpdateRequest::default()
                },
            }
        ),
        (
            "fleets/things/dev-1/jobs/fw-2/update".into(),
            json!({"status": "SUCCEEDED", "expectedVersion": 3,
                   "includeJobExecutionState": true, "clientToken": "c4"})
        )
    );
    assert_eq!(
        enc(
            None,
            &DeviceRequest::CommandResponse {
                execution_id: ExecutionId::parse("e-9").unwrap(),
                response: CommandResponse {
                    status: CommandStatus::Rejected,
                    result: None,
                    status_reason: Some("busy".into()),
                },
            }
        ),
        (
            "fleets/commands/things/dev-1/executions/e-9/response".into(),
            json!({"status": "REJECTED", "statusReason": "busy"})
        )
    );
    assert!(matches!(
        c.encode_request(
            &t,
            None,
            &DeviceRequest::CommandResponse {
                execution_id: ExecutionId::parse("e").unwrap(),
                response: CommandResponse {
                    status: CommandStatus::TimedOut,
                    result: None,
                    status_reason: None
                },
            }
        ),
        Err(EncodeError::InvalidField {
            field: "status",
            ..
        })
    ));
    assert!(c
        .encode_request(&t, Some(&"t".repeat(65)), &DeviceRequest::GetPending)
        .is_err());
}

/// Every outbound kind decodes on the device side to what `from_outbound` predicts.
fn outbound_samples() -> Vec<Outbound> {
    let id = ExecutionId::parse("e-9").unwrap();
    vec![
        accepted(
            Operation::GetPending,
            Some("c1"),
            Reply::Pending(PendingJobs {
                in_progress: vec![summary("a", true)],
                queued: vec![summary("b", false), summary("c", false)],
            }),
        ),
        accepted(Operation::StartNext, Some("c2"), Reply::StartNext(None)),
        accepted(
            Operation::StartNext,
            None,
            Reply::StartNext(Some(view(Some(Value::Null)))),
        ),
        accepted(
            Operation::Describe(JobTarget::Next),
            Some("c3"),
            Reply::Describe(view(Some(json!([1, 2])))),
        ),
        accepted(
            Operation::Describe(JobTarget::Job(job())),
            Some("c3"),
            Reply::Describe(view(None)),
        ),
        accepted(
            Operation::Update(job()),
            Some("c4"),
            Reply::Update {
                execution_state: Some(state()),
                job_document: Some(Value::Null),
            },
        ),
        accepted(
            Operation::CommandResponse(id.clone()),
            Some("c5"),
            Reply::CommandResponse,
        ),
        Outbound::Rejected {
            thing: thing(),
            operation: Operation::Update(job()),
            client_token: Some("c6".into()),
            rejection: Rejection::TerminalStateReached {
                status: "SUCCEEDED",
                execution_state: Some(Box::new(state())),
            },
            timestamp: NOW,
        },
        Outbound::Rejected {
            thing: thing(),
            operation: Operation::CommandResponse(id.clone()),
            client_token: None,
            rejection: Rejection::RequestThrottled,
            timestamp: NOW,
        },
        Outbound::Notify {
            thing: thing(),
            jobs: PendingJobs {
                in_progress: vec![summary("a", true)],
                queued: vec![],
            },
            timestamp: NOW,
        },
        Outbound::NotifyNext {
            thing: thing(),
            execution: None,
            timestamp: NOW,
        },
        Outbound::NotifyNext {
            thing: thing(),
            execution: Some(view(None)),
            timestamp: NOW,
        },
        Outbound::CommandRequest {
            thing: thing(),
            execution_id: id,
            command_id: None,
            action: "reboot".into(),
            params: json!({"delay": 5}),
            timestamp: NOW,
            ttl: Duration::from_millis(1),
        },
    ]
}

#[test]
fn outbound_round_trips_through_the_device_decoder() {
    for layout in [
        TopicLayout::fleets(),
        TopicLayout::emqx(),
        TopicLayout::aws(),
        TopicLayout::custom("acme/iot").unwrap(),
    ] {
        let c = Codec::new(layout, Limits::default());
        for message in outbound_samples() {
            let e = c.encode(&message).unwrap();
            let decoded = c.decode_device_message(&e.topic, &e.payload).unwrap();
            assert_eq!(
                Some(decoded),
                DeviceMessage::from_outbound(&message),
                "{message:?}"
            );
        }
    }
}

#[test]
fn device_requests_round_trip_through_the_service_decoder() {
    let c = codec();
    let requests = vec![
        DeviceRequest::GetPending,
        DeviceRequest::StartNext(StartNextRequest::default()),
        DeviceRequest::StartNext(StartNextRequest {
            status_details: Some(BTreeMap::new()),
            step_timeout: StepTimeout::Minutes(u64::MAX),
        }),
        DeviceRequest::Describe(DescribeRequest {
            job: JobTarget::Job(job()),
            execution_number: Some(u32::MAX),
            include_job_document: false,
        }),
        DeviceRequest::Update {
            job_id: job(),
            request: UpdateRequest {
                status: Some(JobExecutionStatus::Failed),
                status_details: Some(details(&[("k", "v\"\n\u{1F600}")])),
                expected_version: Some(u64::MAX),
                execution_number: Some(0),
                step_timeout: StepTimeout::Clear,
                include_job_execution_state: false,
                include_job_document: true,
            },
        },
        DeviceRequest::CommandResponse {
            execution_id: ExecutionId::parse("e").unwrap(),
            response: CommandResponse {
                status: CommandStatus::Failed,
                result: Some(Value::Null),
                status_reason: Some(String::new()),
            },
        },
    ];
    for (n, request) in requests.into_iter().enumerate() {
        let token = (n % 2 == 0).then(|| format!("tok-{n}"));
        let e = c
            .encode_request(&thing(), token.as_deref(), &request)
            .unwrap();
        assert_eq!(
            c.decode_request(&e.topic, &e.payload, NOW),
            Decoded::Request(Inbound {
                thing: thing(),
                client_token: token,
                request
            })
        );
    }
}

#[test]
fn device_decoder_refuses_garbage_without_panicking() {
    let c = codec();
    assert!(matches!(
        c.decode_device_message("fleets/things/dev-1/jobs/get", b"{}"),
        Err(DecodeError::NotDeviceBound { .. })
    ));
    assert!(matches!(
        c.decode_device_message("fleets/things/dev-1/jobs/notify", b"{"),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        c.decode_device_message("fleets/things/a.b/jobs/notify", b"{}"),
        Err(DecodeError::Id(_))
    ));
    assert!(matches!(
        c.decode_device_message(
            "fleets/things/dev-1/jobs/$next/get/accepted",
            br#"{"timestamp":1}"#
        ),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        c.decode_device_message(
            "fleets/things/dev-1/jobs/get/rejected",
            br#"{"code":"NoSuchCode","timestamp":1}"#
        ),
        Err(DecodeError::Json(_))
    ));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any topic and payload bytes: no panic, and a refusal always answers its own topic.
        #[test]
        fn decode_request_is_total(
            levels in proptest::collection::vec("[a-z$+#/.-]{0,12}|get|update|jobs|things|start-next|\\$next|response", 0..8),
            payload in proptest::collection::vec(any::<u8>(), 0..256),
            json_like in "\\{(\"[a-zA-Z]{1,12}\":(null|true|-?[0-9]{1,20}|\"[a-z]{0,5}\"|\\{\\}),?){0,5}\\}",
        ) {
            let topic = format!("fleets/{}", levels.join("/"));
            for payload in [&payload[..], json_like.as_bytes()] {
                if let Decoded::Refused(r) = codec().decode_request(&topic, payload, NOW) {
                    prop_assert_eq!(r.reply.topic, format!("{topic}/rejected"));
                    prop_assert!(serde_json::from_slice::<Value>(&r.reply.payload).is_ok());
                }
                let _ = codec().decode_device_message(&topic, payload);
            }
        }
    }
}

#[test]
fn a_request_on_a_topic_too_long_to_answer_is_ignored() {
    use fleetops_core::limits::MAX_TOPIC_BYTES;
    let base = "fleets/things/dev-1/jobs/";
    let longest = MAX_TOPIC_BYTES - "/rejected".len();
    let fits = format!("{base}{}", "x".repeat(longest - base.len()));
    assert!(Codec::answerable(&fits));
    let r = refused(&fits, b"{}");
    assert_eq!(r.reply.topic.len(), MAX_TOPIC_BYTES);
    assert_eq!(r.rejection.code(), ErrorCode::InvalidTopic);
    for extra in [1, 64 * 1024] {
        let long = format!("{fits}{}", "x".repeat(extra));
        assert!(!Codec::answerable(&long));
        assert_eq!(codec().decode_request(&long, b"{}", NOW), Decoded::Ignored);
        // Even a valid-looking request: the thing level itself is too long.
        let valid_shape = format!("fleets/things/{}/jobs/get", "a".repeat(extra + 1024));
        assert_eq!(
            codec().decode_request(&valid_shape, b"{}", NOW),
            Decoded::Ignored
        );
    }
}

#[test]
fn encoded_topics_are_bounded_by_construction() {
    use fleetops_core::limits::MAX_TOPIC_BYTES;
    // The longest ids under the longest prefix still fit the bound.
    let layout = TopicLayout::custom(&"p".repeat(TopicLayout::MAX_PREFIX_LEN)).unwrap();
    let codec = Codec::new(layout, Limits::default());
    let thing = ThingName::parse(&"t".repeat(ThingName::MAX_LEN)).unwrap();
    let id = ExecutionId::parse(&"e".repeat(ExecutionId::MAX_LEN)).unwrap();
    let m = Outbound::CommandRequest {
        thing,
        execution_id: id,
        command_id: None,
        action: "a".into(),
        params: json!({}),
        timestamp: NOW,
        ttl: Duration::from_secs(5),
    };
    let e = codec.encode(&m).unwrap();
    assert!(e.topic.len() <= MAX_TOPIC_BYTES);
    assert!(Codec::check_topic(&"x".repeat(MAX_TOPIC_BYTES)).is_ok());
    assert!(matches!(
        Codec::check_topic(&"x".repeat(MAX_TOPIC_BYTES + 1)),
        Err(EncodeError::InvalidField { field: "topic", .. })
    ));
}

#[test]
fn a_pending_list_capped_per_kind_fits_the_payload_limit() {
    use fleetops_core::limits::MAX_PENDING_LISTED;
    // The longest job ids and the largest numbers: the worst case of a capped list.
    let worst = |i: usize| ExecutionSummary {
        job_id: JobId::parse(&format!("{i:0>64}")).unwrap(),
        queued_at: Timestamp::from_millis(u64::MAX / 2),
        started_at: Some(Timestamp::from_millis(u64::MAX / 2)),
        last_updated_at: Timestamp::from_millis(u64::MAX / 2),
        version_number: u64::MAX,
        execution_number: u32::MAX,
    };
    let jobs = PendingJobs {
        in_progress: (0..MAX_PENDING_LISTED).map(worst).collect(),
        queued: (MAX_PENDING_LISTED..2 * MAX_PENDING_LISTED)
            .map(worst)
            .collect(),
    };
    let reply = Outbound::Accepted {
        thing: ThingName::parse(&"t".repeat(ThingName::MAX_LEN)).unwrap(),
        operation: Operation::GetPending,
        client_token: Some("c".repeat(Limits::DEFAULT_MAX_CLIENT_TOKEN)),
        reply: Reply::Pending(jobs.clone()),
        timestamp: NOW,
    };
    let e = codec().encode(&reply).unwrap();
    assert!(
        e.payload.len() < Limits::DEFAULT_MAX_PAYLOAD / 2,
        "{} bytes",
        e.payload.len()
    );
    let notify = Outbound::Notify {
        thing: thing(),
        jobs,
        timestamp: NOW,
    };
    assert!(codec().encode(&notify).unwrap().payload.len() < Limits::DEFAULT_MAX_PAYLOAD / 2);
}
