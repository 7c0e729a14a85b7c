//! Registered commands, given/when/then: a template is checked once when registered, and a
//! request's parameters are checked against it, each refusal naming the parameter.

mod common;

use common::*;
use fleetops_core::command_template::{CommandTemplate, CommandTemplateIntent};
use fleetops_core::ids::CommandId;
use fleetops_core::template::{ParameterSpec, ParameterType};
use fleetops_core::testkit::gwt::given;
use fleetops_core::{Aggregate, ErrorCode, Event, Rejection};
use serde_json::{json, Map, Value};

fn id() -> CommandId {
    CommandId::parse("set-temp").expect("valid")
}

fn param(name: &str, kind: ParameterType) -> ParameterSpec {
    ParameterSpec {
        name: name.into(),
        kind,
        required: false,
        default: None,
        minimum: None,
        maximum: None,
        max_length: None,
        allowed: vec![],
    }
}

fn celsius() -> ParameterSpec {
    ParameterSpec {
        required: true,
        minimum: Some(5.0),
        maximum: Some(30.0),
        ..param("celsius", ParameterType::Number)
    }
}

fn mode() -> ParameterSpec {
    ParameterSpec {
        default: Some(json!("comfort")),
        allowed: vec![json!("comfort"), json!("eco")],
        ..param("mode", ParameterType::String)
    }
}

fn register(payload: Value, parameters: Vec<ParameterSpec>) -> CommandTemplateIntent {
    CommandTemplateIntent::Register {
        command_id: id(),
        action: "setTemperature".into(),
        description: None,
        payload,
        parameters,
    }
}

fn registered() -> CommandTemplate {
    let intent = register(
        json!({"target": "${celsius}", "mode": "${mode}", "text": "set ${celsius} C (${mode})"}),
        vec![celsius(), mode()],
    );
    let (state, events) = CommandTemplate::execute(None, intent, t(1)).expect("registered");
    assert_eq!(events.len(), 1);
    state.expect("a template")
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn refusal(r: Result<Value, Rejection>) -> String {
    match r {
        Err(Rejection::InvalidRequest {
            field: "parameters",
            reason,
        }) => reason,
        other => panic!("expected a parameters refusal, got {other:?}"),
    }
}

#[test]
fn parameters_fill_whole_values_with_their_type_and_text_with_their_text() {
    let t = registered();
    let out = t
        .render(&params(json!({"celsius": 21.5})))
        .expect("renders");
    assert_eq!(
        out,
        json!({"target": 21.5, "mode": "comfort", "text": "set 21.5 C (comfort)"})
    );
    let out = t
        .render(&params(json!({"celsius": 6, "mode": "eco"})))
        .expect("renders");
    assert_eq!(out["mode"], "eco");
}

#[test]
fn each_refusal_names_the_parameter() {
    let t = registered();
    for (given, name, why) in [
        (json!({}), "celsius", "is required"),
        (json!({"celsius": "hot"}), "celsius", "type number"),
        (json!({"celsius": 31}), "celsius", "at most 30"),
        (json!({"celsius": 4.9}), "celsius", "at least 5"),
        (json!({"celsius": 20, "mode": "turbo"}), "mode", "one of"),
        (json!({"celsius": 20, "fan": 1}), "fan", "not a parameter"),
    ] {
        let reason = refusal(t.render(&params(given.clone())));
        assert!(
            reason.contains(&format!("`{name}`")) && reason.contains(why),
            "{given}: {reason}"
        );
    }
}

#[test]
fn a_template_is_checked_when_registered() {
    let cases = [
        (
            register(json!({"x": "${nope}"}), vec![celsius()]),
            "payload",
        ),
        (
            register(json!({"x": "${celsius"}), vec![celsius()]),
            "payload",
        ),
        (
            register(json!({}), vec![celsius(), celsius()]),
            "parameters",
        ),
        (
            register(
                json!({}),
                vec![ParameterSpec {
                    default: Some(json!(99)),
                    ..celsius()
                }],
            ),
            "parameters",
        ),
        (
            register(
                json!({}),
                vec![ParameterSpec {
                    minimum: Some(9.0),
                    maximum: Some(1.0),
                    ..celsius()
                }],
            ),
            "parameters",
        ),
        (
            register(json!({}), vec![param("bad name", ParameterType::String)]),
            "parameters",
        ),
        (
            CommandTemplateIntent::Register {
                command_id: id(),
                action: String::new(),
                description: None,
                payload: json!({}),
                parameters: vec![],
            },
            "action",
        ),
    ];
    for (intent, field) in cases {
        let r = given::<CommandTemplate>([])
            .when(intent.clone(), t(1))
            .then_reject(ErrorCode::InvalidRequest);
        assert!(
            matches!(&r, Rejection::InvalidRequest { field: f, .. } if *f == field),
            "{intent:?}: {r:?}"
        );
    }
}

#[test]
fn an_id_is_registered_once_and_again_only_after_a_delete() {
    let first = Event::CommandTemplateRegistered {
        command_id: id(),
        action: "a".into(),
        description: None,
        payload: json!({}),
        parameters: vec![],
        at: t(1),
    };
    given::<CommandTemplate>([first.clone()])
        .when(register(json!({}), vec![]), t(2))
        .then_reject(ErrorCode::InvalidRequest);
    let deleted = given::<CommandTemplate>([first.clone()])
        .when(CommandTemplateIntent::Delete, t(2))
        .then_expect([Event::CommandTemplateDeleted { at: t(2) }])
        .expect("a template");
    assert!(deleted.deleted);
    let history = [first, Event::CommandTemplateDeleted { at: t(2) }];
    let old = CommandTemplate::replay(history.iter()).expect("replays");
    let (again, _) =
        CommandTemplate::execute(old, register(json!({"v": 2}), vec![]), t(3)).expect("again");
    let again = again.expect("a template");
    assert!(!again.deleted);
    assert_eq!(again.version, 3);
    given::<CommandTemplate>([])
        .when(CommandTemplateIntent::Delete, t(1))
        .then_reject(ErrorCode::ResourceNotFound);
}
