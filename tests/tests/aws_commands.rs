//! AWS IoT Commands under `fleetops serve --topics aws`: a device that knows nothing of
//! fleetops (a raw MQTT 5 client, as an AWS IoT device SDK would be) receives a command on
//! `…/request/json`, has a malformed answer refused on `…/response/rejected/json`, answers in
//! AWS's shape on `…/response/json`, and the operator's waiting HTTP call gets the result; a
//! dashboard sees the status events on `$aws/events/commandExecution/{commandId}/{status}`.

use std::time::Duration;

use fleetops_tests::{binary, quiet_broker, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::TopicLayout;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const THING: &str = "pump-7";

/// Connects as `client_id` (anonymous: a device, which the broker's ACL confines to its own
/// topics; with `login`, a backend user), subscribes to `filters` and forwards every publish
/// it receives as (topic, JSON body).
async fn client(
    port: u16,
    client_id: &str,
    login: Option<(String, String)>,
    filters: Vec<String>,
) -> (AsyncClient, mpsc::UnboundedReceiver<(String, Value)>) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options.set_clean_start(true);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    if let Some(done) = subscribed_tx.take() {
                        let _ = done.send(());
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let body = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send((topic, body)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt client: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    client
        .subscribe_many(
            filters
                .into_iter()
                .map(|f| Filter::new(f, QoS::AtLeastOnce)),
        )
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("SUBACK within 10 s")
        .expect("the event loop runs");
    (client, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a message within 15 s")
        .expect("the device connection runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_style_device_answers_a_command_in_the_aws_shape() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "aws",
    ));
    let api = serve.api();

    // An operator's dashboard follows command status events with the backend account.
    let service = broker
        .service_config()
        .credentials
        .expect("service account");
    let (_ops, mut events) = client(
        broker.port(),
        "dashboard",
        Some((service.username, service.password)),
        vec!["$aws/events/commandExecution/+/#".to_owned()],
    )
    .await;

    let base = format!("$aws/commands/things/{THING}/executions");
    let (device, mut inbox) = client(
        broker.port(),
        THING,
        None,
        vec![
            format!("{base}/+/request/json"),
            format!("{base}/+/response/accepted/json"),
            format!("{base}/+/response/rejected/json"),
        ],
    )
    .await;

    let call = tokio::spawn(async move {
        api.post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": THING, "action": "prime", "params": {"litres": 2},
                    "ttl": 30, "commandId": "prime-pump"}),
        )
        .await
    });

    // The request, on AWS's topic, with what an AWS device needs in the body.
    let (topic, request) = next(&mut inbox).await;
    let execution = topic
        .strip_prefix(&format!("{base}/"))
        .and_then(|t| t.strip_suffix("/request/json"))
        .unwrap_or_else(|| panic!("not a request topic: {topic}"))
        .to_owned();
    assert_eq!(request["executionId"], execution.as_str(), "{request}");
    assert_eq!(request["commandId"], "prime-pump", "{request}");
    assert_eq!(request["action"], "prime", "{request}");
    assert_eq!(request["params"], json!({"litres": 2}), "{request}");

    // A malformed answer (an untyped result) is refused where AWS devices listen, and
    // changes nothing.
    let response = format!("{base}/{execution}/response/json");
    device
        .publish(
            response.clone(),
            QoS::AtLeastOnce,
            false,
            json!({"status": "SUCCEEDED", "result": {"litres": 2}}).to_string(),
        )
        .await
        .unwrap();
    let (topic, refusal) = next(&mut inbox).await;
    assert_eq!(
        topic,
        format!("{base}/{execution}/response/rejected/json"),
        "{refusal}"
    );
    assert_eq!(refusal["code"], "InvalidRequest", "{refusal}");
    assert!(
        refusal["message"].as_str().unwrap_or("").contains("result"),
        "{refusal}"
    );

    // IN_PROGRESS is refused too: fleetops command executions have no intermediate status.
    device
        .publish(
            response.clone(),
            QoS::AtLeastOnce,
            false,
            json!({"status": "IN_PROGRESS", "executionId": execution}).to_string(),
        )
        .await
        .unwrap();
    let (topic, refusal) = next(&mut inbox).await;
    assert!(topic.ends_with("/response/rejected/json"), "{topic}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap_or("")
            .contains("IN_PROGRESS"),
        "{refusal}"
    );

    // The answer in AWS's shape is accepted on AWS's topic…
    device
        .publish(
            response,
            QoS::AtLeastOnce,
            false,
            json!({
                "executionId": execution,
                "status": "SUCCEEDED",
                "statusReason": {"reasonCode": "PRIMED", "reasonDescription": "2 litres"},
                "result": {"primed": {"b": true}, "note": {"s": "ok"}}
            })
            .to_string(),
        )
        .await
        .unwrap();
    let (topic, accepted) = next(&mut inbox).await;
    assert_eq!(
        topic,
        format!("{base}/{execution}/response/accepted/json"),
        "{accepted}"
    );

    // …and the operator's waiting call gets it back, reason folded into text.
    let (status, body) = call.await.unwrap();
    assert!(status == 200 || status == 201, "{status}: {body}");
    assert_eq!(body["status"], "SUCCEEDED", "{body}");
    assert_eq!(
        body["result"],
        json!({"primed": {"b": true}, "note": {"s": "ok"}}),
        "{body}"
    );
    assert_eq!(body["statusReason"], "PRIMED: 2 litres", "{body}");

    // The dashboard saw the execution created and then succeed, after AWS's event topics,
    // and no event for the refused answers.
    let (topic, created) = next(&mut events).await;
    assert_eq!(
        topic, "$aws/events/commandExecution/prime-pump/CREATED",
        "{created}"
    );
    assert_eq!(created["executionId"], execution.as_str(), "{created}");
    assert_eq!(created["thingName"], THING, "{created}");
    assert_eq!(created["eventType"], "COMMAND_EXECUTION", "{created}");
    let (topic, done) = next(&mut events).await;
    assert_eq!(
        topic, "$aws/events/commandExecution/prime-pump/SUCCEEDED",
        "{done}"
    );
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(
        done["statusReason"],
        json!({"reasonCode": "PRIMED", "reasonDescription": "2 litres"}),
        "{done}"
    );
    assert!(done["timestamp"].as_u64().is_some(), "{done}");
    drop(serve);
}
