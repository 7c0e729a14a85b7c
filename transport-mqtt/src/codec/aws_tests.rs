//! The AWS IoT Commands dialect of the `$aws` preset: topics with the `json` format level,
//! AWS's response shape, and what is refused.

use fleetops_core::device::{CommandResponse, DeviceRequest, Operation, Outbound, Reply};
use fleetops_core::ids::{ExecutionId, ThingName};
use fleetops_core::status::CommandStatus;
use fleetops_core::time::{Duration, Timestamp};
use serde_json::{json, Value};

use super::*;

const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_500);
const RESPONSE: &str = "$aws/commands/things/dev-1/executions/e-9/response/json";

fn aws() -> Codec {
    Codec::new(TopicLayout::aws(), Limits::default())
}

fn thing() -> ThingName {
    ThingName::parse("dev-1").unwrap()
}

fn e9() -> ExecutionId {
    ExecutionId::parse("e-9").unwrap()
}

fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("payload is JSON")
}

fn response(payload: Value) -> CommandResponse {
    match aws().decode_request(RESPONSE, payload.to_string().as_bytes(), NOW) {
        Decoded::Request(i) => match i.request {
            DeviceRequest::CommandResponse {
                execution_id,
                response,
            } => {
                assert_eq!(execution_id, e9());
                response
            }
            other => panic!("expected a command response, got {other:?}"),
        },
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Refused on AWS's rejected topic; returns the code and message.
fn refused(payload: &[u8]) -> (&'static str, String) {
    match aws().decode_request(RESPONSE, payload, NOW) {
        Decoded::Refused(r) => {
            assert_eq!(
                r.reply.topic,
                "$aws/commands/things/dev-1/executions/e-9/response/rejected/json"
            );
            let b = body(&r.reply.payload);
            assert_eq!(b["code"], r.rejection.code().as_str());
            (r.rejection.code().as_str(), r.rejection.to_string())
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn aws_command_topics_carry_the_json_format_level() {
    let l = TopicLayout::aws();
    assert!(l.aws_commands());
    assert!(!TopicLayout::fleets().aws_commands());
    assert!(!TopicLayout::custom("$aws").unwrap().aws_commands());
    let t = thing();
    assert_eq!(
        l.command_request_topic(&t, &e9()),
        "$aws/commands/things/dev-1/executions/e-9/request/json"
    );
    assert_eq!(l.command_response_topic(&t, &e9()), RESPONSE);
    let op = Operation::CommandResponse(e9());
    assert_eq!(l.request_topic(&t, &op), RESPONSE);
    assert_eq!(
        l.reply_topic(&t, &op, true),
        "$aws/commands/things/dev-1/executions/e-9/response/accepted/json"
    );
    assert_eq!(
        l.reply_topic(&t, &op, false),
        "$aws/commands/things/dev-1/executions/e-9/response/rejected/json"
    );
    // Jobs topics are unchanged.
    assert_eq!(
        l.reply_topic(&t, &Operation::GetPending, true),
        "$aws/things/dev-1/jobs/get/accepted"
    );
    assert_eq!(
        l.parse(RESPONSE),
        Some(TopicRef::Request {
            thing: "dev-1",
            op: RequestOp::CommandResponse("e-9")
        })
    );
    assert_eq!(
        l.parse("$aws/commands/things/dev-1/executions/e-9/response/rejected/json"),
        Some(TopicRef::Reply {
            thing: "dev-1",
            op: RequestOp::CommandResponse("e-9"),
            accepted: false
        })
    );
    assert_eq!(
        l.parse("$aws/commands/things/dev-1/executions/e-9/request/json"),
        Some(TopicRef::CommandRequest {
            thing: "dev-1",
            execution: "e-9"
        })
    );
    // fleetops' own command topics and other payload formats name no operation here.
    for topic in [
        "$aws/commands/things/dev-1/executions/e-9/response",
        "$aws/commands/things/dev-1/executions/e-9/response/cbor",
        "$aws/commands/things/dev-1/executions/e-9/request",
    ] {
        assert_eq!(
            l.parse(topic),
            Some(TopicRef::Unknown {
                thing: "dev-1",
                reply_like: false
            }),
            "{topic}"
        );
    }
    // A reply-like topic with the format level is never answered.
    assert_eq!(
        l.parse("$aws/commands/things/dev-1/executions/e-9/x/rejected/json"),
        Some(TopicRef::Unknown {
            thing: "dev-1",
            reply_like: true
        })
    );
    assert_eq!(
        l.service_filters(true)[1],
        "$aws/commands/things/+/executions/+/response/json"
    );
    assert_eq!(
        l.service_filters(false)[4],
        "$aws/commands/things/+/executions/+/response/json"
    );
    let device = l.device_filters(&t);
    assert!(device.contains(&"$aws/commands/things/dev-1/executions/+/request/json".to_owned()));
    assert!(device.contains(&"$aws/commands/things/dev-1/executions/+/response/+/json".to_owned()));
}

#[test]
fn aws_response_golden() {
    let r = response(json!({
        "executionId": "e-9",
        "status": "FAILED",
        "statusReason": {"reasonCode": "DEVICE_TOO_BUSY", "reasonDescription": "try later"},
        "result": {"log": {"s": "busy"}, "ok": {"b": false}, "dump": {"bin": "AAE="}}
    }));
    assert_eq!(
        r,
        CommandResponse {
            status: CommandStatus::Failed,
            result: Some(
                json!({"log": {"s": "busy"}, "ok": {"b": false}, "dump": {"bin": "AAE="}})
            ),
            status_reason: Some("DEVICE_TOO_BUSY: try later".into()),
        }
    );
    let r = response(json!({"status": "SUCCEEDED"}));
    assert_eq!(r.status, CommandStatus::Succeeded);
    assert_eq!((r.result, r.status_reason), (None, None));
    let r = response(json!({"status": "REJECTED", "statusReason": {"reasonCode": "NOPE"}}));
    assert_eq!(r.status_reason.as_deref(), Some("NOPE"));
}

#[test]
fn malformed_aws_responses_are_refused_naming_the_field() {
    let cases: &[(Value, &str)] = &[
        (json!({}), "status"),
        (
            json!({"status": "IN_PROGRESS"}),
            "IN_PROGRESS is not supported",
        ),
        (
            json!({"status": "TIMED_OUT"}),
            "TIMED_OUT is decided by the service",
        ),
        (json!({"status": "CREATED"}), "status"),
        (
            json!({"status": "SUCCEEDED", "executionId": "e-8"}),
            "executionId",
        ),
        (
            json!({"status": "SUCCEEDED", "executionId": 9}),
            "executionId",
        ),
        (
            json!({"status": "FAILED", "statusReason": "busy"}),
            "statusReason",
        ),
        (
            json!({"status": "FAILED", "statusReason": {}}),
            "statusReason.reasonCode",
        ),
        (
            json!({"status": "FAILED", "statusReason": {"reasonCode": "lower"}}),
            "statusReason.reasonCode",
        ),
        (
            json!({"status": "FAILED", "statusReason": {"reasonCode": "X".repeat(65)}}),
            "statusReason.reasonCode",
        ),
        (
            json!({"status": "FAILED",
                   "statusReason": {"reasonCode": "X", "reasonDescription": 1}}),
            "statusReason.reasonDescription",
        ),
        (
            json!({"status": "FAILED",
                   "statusReason": {"reasonCode": "X", "reasonDescription": "a\nb"}}),
            "statusReason.reasonDescription",
        ),
        (
            json!({"status": "FAILED",
                   "statusReason": {"reasonCode": "X", "reasonDescription": "d".repeat(1025)}}),
            "statusReason.reasonDescription",
        ),
        (json!({"status": "SUCCEEDED", "result": [1]}), "result"),
        (
            json!({"status": "SUCCEEDED", "result": {"t": 24}}),
            "result",
        ),
        (
            json!({"status": "SUCCEEDED", "result": {"t": {"n": 24}}}),
            "result",
        ),
        (
            json!({"status": "SUCCEEDED", "result": {"t": {"s": 1}}}),
            "result",
        ),
        (
            json!({"status": "SUCCEEDED", "result": {"t": {"b": "yes"}}}),
            "result",
        ),
        (
            json!({"status": "SUCCEEDED", "result": {"t": {"s": "a", "b": true}}}),
            "result",
        ),
    ];
    for (payload, needle) in cases {
        let (code, message) = refused(payload.to_string().as_bytes());
        assert_eq!(code, "InvalidRequest", "{payload}: {message}");
        assert!(message.contains(needle), "{payload}: {message}");
    }
    // Not JSON at all: refused, never a panic.
    assert_eq!(refused(b"\xff{").0, "InvalidJson");
}

#[test]
fn aws_command_request_names_the_execution_in_the_body() {
    let e = aws()
        .encode(&Outbound::CommandRequest {
            thing: thing(),
            execution_id: e9(),
            command_id: Some("set-temp".into()),
            action: "setTemperature".into(),
            params: json!({"value": 24}),
            timestamp: NOW,
            ttl: Duration::from_millis(30_000),
        })
        .unwrap();
    assert_eq!(
        e.topic,
        "$aws/commands/things/dev-1/executions/e-9/request/json"
    );
    assert_eq!(e.properties.response_topic.as_deref(), Some(RESPONSE));
    assert_eq!(
        body(&e.payload),
        json!({"executionId": "e-9", "commandId": "set-temp", "action": "setTemperature",
               "params": {"value": 24}, "timestamp": 1_700_000_000, "ttl": 30})
    );
    // The device SDK decodes it back.
    let (t, message) = aws().decode_device_message(&e.topic, &e.payload).unwrap();
    assert_eq!(t, thing());
    let DeviceMessage::Command(c) = message else {
        panic!("expected a command, got {message:?}")
    };
    assert_eq!(c.execution_id, e9());
    assert_eq!(c.action, "setTemperature");
}

#[test]
fn the_device_sdk_answers_in_the_aws_shape_and_the_service_reads_it_back() {
    for (reason, wire, back) in [
        (
            "DEVICE_TOO_BUSY: later",
            json!({"reasonCode": "DEVICE_TOO_BUSY", "reasonDescription": "later"}),
            "DEVICE_TOO_BUSY: later",
        ),
        ("NOPE", json!({"reasonCode": "NOPE"}), "NOPE"),
        (
            "disk full",
            json!({"reasonCode": "DEVICE_REASON", "reasonDescription": "disk full"}),
            "DEVICE_REASON: disk full",
        ),
    ] {
        let request = DeviceRequest::CommandResponse {
            execution_id: e9(),
            response: CommandResponse {
                status: CommandStatus::Failed,
                result: Some(json!({"log": {"s": "x"}})),
                status_reason: Some(reason.into()),
            },
        };
        let e = aws().encode_request(&thing(), None, &request).unwrap();
        assert_eq!(e.topic, RESPONSE);
        let b = body(&e.payload);
        assert_eq!(b["executionId"], "e-9");
        assert_eq!(b["status"], "FAILED");
        assert_eq!(b["statusReason"], wire);
        let r = response(b);
        assert_eq!(r.status_reason.as_deref(), Some(back));
        assert_eq!(r.result, Some(json!({"log": {"s": "x"}})));
    }
    // The service's accepted reply lands where an AWS device listens.
    let e = aws()
        .encode(&Outbound::Accepted {
            thing: thing(),
            operation: Operation::CommandResponse(e9()),
            client_token: None,
            reply: Reply::CommandResponse,
            timestamp: NOW,
        })
        .unwrap();
    assert_eq!(
        e.topic,
        "$aws/commands/things/dev-1/executions/e-9/response/accepted/json"
    );
    let (_, message) = aws().decode_device_message(&e.topic, &e.payload).unwrap();
    assert!(
        matches!(message, DeviceMessage::Accepted { .. }),
        "{message:?}"
    );
}

#[test]
fn command_status_events_follow_aws_topics_and_message() {
    let change = |status, reason: Option<&str>| Outbound::CommandStatusChange {
        execution_id: e9(),
        command_id: "set-temp".into(),
        thing: thing(),
        status,
        status_reason: reason.map(str::to_owned),
        timestamp: NOW,
    };
    let e = aws()
        .encode(&change(
            CommandStatus::Failed,
            Some("DEVICE_TOO_BUSY: later"),
        ))
        .unwrap();
    assert_eq!(e.topic, "$aws/events/commandExecution/set-temp/FAILED");
    assert_eq!(
        body(&e.payload),
        json!({"executionId": "e-9", "commandId": "set-temp", "thingName": "dev-1",
               "status": "FAILED",
               "statusReason": {"reasonCode": "DEVICE_TOO_BUSY", "reasonDescription": "later"},
               "eventType": "COMMAND_EXECUTION", "timestamp": 1_700_000_000_500_u64})
    );
    // fleetops' SENT is AWS's CREATED; a status without a reason has none.
    let e = aws().encode(&change(CommandStatus::Sent, None)).unwrap();
    assert_eq!(e.topic, "$aws/events/commandExecution/set-temp/CREATED");
    assert_eq!(body(&e.payload)["status"], "CREATED");
    assert!(body(&e.payload).get("statusReason").is_none());
    // Not device-bound: the device decoder never sees it as its own.
    assert!(!change(CommandStatus::Sent, None).is_device_bound());
    // A command id that is not one topic level is refused, not published somewhere else.
    let mut bad = change(CommandStatus::Sent, None);
    if let Outbound::CommandStatusChange { command_id, .. } = &mut bad {
        *command_id = "a/b".into();
    }
    assert!(aws().encode(&bad).is_err());
}
