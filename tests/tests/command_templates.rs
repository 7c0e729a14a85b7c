//! Registered commands from outside: the real `fleetops serve` and mosquitto. An operator
//! registers a command with a payload template and parameters; sending it by id checks the
//! parameters (a refusal names the field and sends nothing) and the device gets the rendered
//! payload with the command's action and id. Ad-hoc commands stay allowed.

use std::sync::Arc;

use fleetops_core::device::CommandResponse;
use fleetops_core::{CommandStatus, ThingName};
use fleetops_tests::{binary, quiet_broker, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_command_checks_its_parameters_and_reaches_the_device_rendered() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    let api = serve.api();
    let token = fleetops_tests::TOKEN;

    // The device echoes what it got: action, command id and params.
    let handler: Arc<dyn CommandHandler> = Arc::new(|c: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(
                json!({"action": c.action, "commandId": c.command_id, "params": c.params}),
            ),
            status_reason: None,
        }
    });
    let config = DeviceConfig::new(broker.device_config(), ThingName::parse("th-1").unwrap());
    let _device = DeviceClient::connect(config, Some(handler))
        .await
        .expect("the device connects");

    let template = json!({
        "action": "setTemperature",
        "description": "thermostat set point",
        "payload": {"target": "${celsius}", "mode": "${mode}", "note": "to ${celsius} C"},
        "parameters": [
            {"name": "celsius", "type": "number", "required": true, "minimum": 5, "maximum": 30},
            {"name": "mode", "type": "string", "default": "comfort", "enum": ["comfort", "eco"]}
        ]
    });
    let (status, body) = api
        .call_as(
            token,
            Method::PUT,
            "/api/v1/command-templates/set-temp",
            Some(&template),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = api
        .call_as(
            token,
            Method::PUT,
            "/api/v1/command-templates/set-temp",
            Some(&template),
        )
        .await;
    assert_eq!(status, 409, "registered once");
    let (status, body) = api
        .call_as(
            token,
            Method::PUT,
            "/api/v1/command-templates/broken",
            Some(&json!({"action": "x", "payload": {"v": "${nope}"}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("payload"),
        "{body}"
    );

    // A bad parameter is refused, naming it, and nothing is sent.
    for (parameters, name) in [
        (json!({}), "celsius"),
        (json!({"celsius": 40}), "celsius"),
        (json!({"celsius": 20, "mode": "turbo"}), "mode"),
        (json!({"celsius": 20, "fan": 2}), "fan"),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/commands",
                &json!({"thingName": "th-1", "commandId": "set-temp", "parameters": parameters}),
            )
            .await;
        assert_eq!(status, 400, "{parameters}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{name}`")), "{message}");
    }
    let listed = api.get_ok("/api/v1/commands").await;
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");

    // A good one reaches the device rendered, with the command's action and id.
    let (status, done) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "th-1", "commandId": "set-temp", "parameters": {"celsius": 21.5}}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(
        done["result"],
        json!({
            "action": "setTemperature",
            "commandId": "set-temp",
            "params": {"target": 21.5, "mode": "comfort", "note": "to 21.5 C"}
        })
    );

    // Ad hoc stays allowed, and the list shows and filters by action.
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "th-1", "action": "blink", "params": {"times": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let by_action = api.get_ok("/api/v1/commands?action=setTemperature").await;
    let items = by_action["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{by_action}");
    assert_eq!(items[0]["action"], "setTemperature");

    // Listed, then deleted: sending it by id is refused.
    let list = api.get_ok("/api/v1/command-templates").await;
    assert_eq!(list["items"][0]["commandId"], "set-temp", "{list}");
    let (status, _) = api
        .call_as(
            token,
            Method::DELETE,
            "/api/v1/command-templates/set-temp",
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = api
        .post(
            "/api/v1/commands",
            &json!({"thingName": "th-1", "commandId": "set-temp", "parameters": {"celsius": 20}}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
}
