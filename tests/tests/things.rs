//! Things end to end on the real binary and mosquitto: presence from birth and last-will
//! messages, commands to offline things (fail fast or wait), a command nobody subscribes for
//! (PUBACK 0x10), a device whose client id differs from its thing name through the documented
//! ACL recipe, the registry over HTTP, and a late command answer in the command's history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::device::CommandResponse;
use fleetops_core::{CommandStatus, ThingName};
use fleetops_tests::{binary, succeed_whatever_is_next, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::CommandRequest;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{CommandHandler, Credentials, DeviceClient, DeviceConfig};
use serde_json::{json, Value};

fn serve(broker: &TestBroker, data: &std::path::Path, extra: &[&str]) -> Serve {
    let mut config = ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data,
        broker,
        "fleets",
    );
    config.extra_args = extra.iter().map(|s| (*s).to_owned()).collect();
    Serve::start(&config)
}

fn thing(name: &str) -> ThingName {
    ThingName::parse(name).unwrap()
}

fn answering(delay: Duration) -> Arc<dyn CommandHandler> {
    Arc::new(move |c: CommandRequest| async move {
        tokio::time::sleep(delay).await;
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(json!({"echo": c.action})),
            status_reason: None,
        }
    })
}

/// Polls `GET path` until `check` holds, failing after 20 s with the last body.
async fn until(api: &Api, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = api.get(path).await;
        if status == 200 && check(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last GET {path}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connectivity(api: &Api, name: &str, want: &str) -> Value {
    until(api, &format!("/api/v1/things/{name}"), want, |b| {
        b["connectivity"] == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_to_a_thing_whose_last_will_fired_fails_at_once_when_configured() {
    let broker = TestBroker::start();
    let data = tempfile::tempdir().unwrap();
    let serve = serve(
        &broker,
        data.path(),
        &["--presence", "birth", "--offline-commands", "fail"],
    );
    let api = serve.api();
    let config = DeviceConfig::new(broker.device_config(), thing("lamp-1"));
    let (device, _events) = DeviceClient::connect(config, Some(answering(Duration::ZERO)))
        .await
        .unwrap();
    let online = connectivity(&api, "lamp-1", "online").await;
    assert!(online["connectivitySince"].as_u64().is_some(), "{online}");
    // Online: the command goes through.
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "lamp-1", "action": "on", "ttl": 10}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("SUCCEEDED")),
        "{body}"
    );
    // Dropping the client closes its socket without DISCONNECT: the broker sends its will.
    drop(device);
    connectivity(&api, "lamp-1", "offline").await;
    let asked = Instant::now();
    let (status, body) = api
        .post(
            "/api/v1/commands",
            &json!({"thingName": "lamp-1", "action": "on", "ttl": 30}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "ThingOffline", "{body}");
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_command_to_an_offline_thing_waits_for_it() {
    let broker = TestBroker::start();
    let data = tempfile::tempdir().unwrap();
    let serve = serve(&broker, data.path(), &["--presence", "birth"]);
    let api = serve.api();
    let config = DeviceConfig::new(broker.device_config(), thing("lamp-2"));
    let (device, _events) = DeviceClient::connect(config.clone(), None).await.unwrap();
    connectivity(&api, "lamp-2", "online").await;
    drop(device);
    connectivity(&api, "lamp-2", "offline").await;
    let (status, body) = api
        .post(
            "/api/v1/commands",
            &json!({"thingName": "lamp-2", "action": "on", "ttl": 60}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["executionId"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = api.get_ok(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(waiting["status"], "SENT", "{waiting}");
    // Back (its persistent session kept the request): it answers, and presence says online.
    let (_device, _events) = DeviceClient::connect(config, Some(answering(Duration::ZERO)))
        .await
        .unwrap();
    until(&api, &format!("/api/v1/commands/{id}"), "answered", |b| {
        b["status"] == "SUCCEEDED"
    })
    .await;
    connectivity(&api, "lamp-2", "online").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_nobody_subscribes_for_fails_at_once_with_the_reason() {
    let broker = TestBroker::start();
    let data = tempfile::tempdir().unwrap();
    let serve = serve(&broker, data.path(), &[]);
    let api = serve.api();
    let asked = Instant::now();
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "ghost-1", "action": "on", "ttl": 60}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "FAILED", "{body}");
    let reason = body["statusReason"].as_str().unwrap_or_default();
    assert!(reason.contains("no matching subscribers"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

/// The lines of the operations guide's block that starts with `marker`, trimmed, that start
/// with `prefix`.
fn documented(marker: &str, prefix: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("read docs/operations.md");
    let block = doc
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("{marker} in docs/operations.md"))
        .split("```")
        .next()
        .unwrap_or_default();
    let lines: Vec<String> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "no {prefix} lines in:\n{block}");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_whose_client_id_differs_from_its_name_completes_a_job_through_the_acl_recipe() {
    let patterns = documented("# /etc/mosquitto/acl (registry client ids)\n", "pattern ");
    let settings = documented("# /etc/mosquitto/conf.d/registry.conf\n", "allow_anonymous");
    assert_eq!(
        settings,
        ["allow_anonymous false"],
        "the recipe authenticates"
    );
    let broker = TestBroker::start_with(BrokerOptions {
        device_acl: Some(patterns),
        device_accounts: vec![Credentials {
            username: "lamp-7".into(),
            password: "lamp-7-secret".into(),
        }],
        allow_anonymous: false,
        verbose_log: false,
        ..BrokerOptions::default()
    });
    let data = tempfile::tempdir().unwrap();
    let serve = serve(&broker, data.path(), &["--presence", "birth"]);
    let api = serve.api();
    let (status, body) = api
        .put(
            "/api/v1/things/lamp-7",
            &json!({"clientId": "hw-00ab-17", "attributes": {"site": "north"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut config = DeviceConfig::new(broker.device_config(), thing("lamp-7"));
    config.client_id = Some("hw-00ab-17".into());
    config.broker.credentials = Some(Credentials {
        username: "lamp-7".into(),
        password: "lamp-7-secret".into(),
    });
    let (client, events) = DeviceClient::connect(config, None).await.unwrap();
    let _runner = succeed_whatever_is_next(client, events);
    connectivity(&api, "lamp-7", "online").await;
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": "fw-7", "targets": {"thingNames": ["lamp-7"]}, "document": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    until(&api, "/api/v1/jobs/fw-7/things/lamp-7", "job done", |b| {
        b["status"] == "SUCCEEDED"
    })
    .await;
    // Without an account, the recipe lets nobody in.
    let mut stranger = DeviceConfig::new(broker.device_config(), thing("lamp-8"));
    stranger.broker.connect_timeout = Duration::from_secs(2);
    assert!(DeviceClient::connect(stranger, None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_over_http_and_a_late_answer_in_the_command_history() {
    let broker = TestBroker::start();
    let data = tempfile::tempdir().unwrap();
    let serve = serve(&broker, data.path(), &["--presence", "birth"]);
    let api = serve.api();
    for (name, site, kind) in [
        ("pump-1", "north", "pump"),
        ("pump-2", "south", "pump"),
        ("valve-1", "north", "valve"),
    ] {
        let (status, body) = api
            .put(
                &format!("/api/v1/things/{name}"),
                &json!({"attributes": {"site": site}, "thingTypeName": kind}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["connectivity"], "unknown", "{body}");
    }
    // Replacing a record answers 200.
    let (status, body) = api
        .put(
            "/api/v1/things/valve-1",
            &json!({"attributes": {"site": "north", "floor": "2"}, "thingTypeName": "valve"}),
        )
        .await;
    assert_eq!(
        (status, &body["attributes"]["floor"]),
        (200, &json!("2")),
        "{body}"
    );
    // Bad input is refused, naming the field, and changes nothing.
    let (status, body) = api
        .put(
            "/api/v1/things/pump-1",
            &json!({"attributes": {"bad name": "x"}}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("InvalidRequest")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("attributes"));
    let too_many: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("a{i}"), json!("v"))).collect();
    let (status, _) = api
        .put("/api/v1/things/pump-1", &json!({"attributes": too_many}))
        .await;
    assert_eq!(status, 400);
    let names = |b: &Value| -> Vec<String> {
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["thingName"].as_str().unwrap().to_owned())
            .collect()
    };
    let north = api
        .get_ok("/api/v1/things?attributeName=site&attributeValue=north")
        .await;
    assert_eq!(names(&north), ["pump-1", "valve-1"]);
    let pumps = api
        .get_ok("/api/v1/things?thingTypeName=pump&limit=1")
        .await;
    assert_eq!(names(&pumps), ["pump-1"]);
    let token = pumps["nextToken"].as_str().unwrap().to_owned();
    let rest = api
        .get_ok(&format!(
            "/api/v1/things?thingTypeName=pump&limit=1&nextToken={token}"
        ))
        .await;
    assert_eq!(names(&rest), ["pump-2"]);
    assert!(rest["nextToken"].is_null(), "{rest}");
    let floors = api.get_ok("/api/v1/things?attributeName=floor").await;
    assert_eq!(names(&floors), ["valve-1"]);
    let twos = api.get_ok("/api/v1/things?attributeValue=2").await;
    assert_eq!(names(&twos), ["valve-1"]);
    assert_eq!(api.get("/api/v1/things?connectivity=maybe").await.0, 400);

    // pump-1 comes online, answering its commands only after 2 s.
    let config = DeviceConfig::new(broker.device_config(), thing("pump-1"));
    let (_device, _events) = DeviceClient::connect(config, Some(answering(Duration::from_secs(2))))
        .await
        .unwrap();
    connectivity(&api, "pump-1", "online").await;
    let online = api.get_ok("/api/v1/things?connectivity=online").await;
    assert_eq!(names(&online), ["pump-1"]);

    // A 1 s command times out; the answer that comes after is kept, changing nothing.
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "pump-1", "action": "prime", "ttl": 1}),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("TIMED_OUT")),
        "{body}"
    );
    let id = body["executionId"].as_str().unwrap().to_owned();
    let history = until(
        &api,
        &format!("/api/v1/commands/{id}/history"),
        "the late answer in the history",
        |b| {
            b["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|e| e["type"] == "CommandResponseIgnored"))
        },
    )
    .await;
    let late = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "CommandResponseIgnored")
        .unwrap();
    assert_eq!(late["details"]["status"], "SUCCEEDED", "{late}");
    let command = api.get_ok(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(command["status"], "TIMED_OUT", "{command}");

    // Deleting a record; a second delete and unknown things are 404.
    let (status, _) = api.delete("/api/v1/things/pump-2").await;
    assert_eq!(status, 204);
    let (status, _) = api.delete("/api/v1/things/pump-2").await;
    assert_eq!(status, 404);
    assert_eq!(api.get("/api/v1/things/nobody-9").await.0, 404);
    let all = api.get_ok("/api/v1/things").await;
    assert_eq!(names(&all), ["pump-1", "valve-1"]);
}

/// Publishes `payload` on `topic` as the service account (standing in for the broker's own
/// lifecycle events) and waits for the broker's PUBACK.
async fn publish_as_service(broker: &TestBroker, topic: &str, payload: Value) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let service = broker.service_config().credentials.unwrap();
    let mut options = MqttOptions::new("lifecycle-feed", "127.0.0.1", broker.port());
    options.set_credentials(service.username, service.password);
    let (client, mut events) = AsyncClient::new(options, 8);
    client
        .publish(
            topic,
            QoS::AtLeastOnce,
            false,
            payload.to_string().into_bytes(),
        )
        .await
        .unwrap();
    let acked = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("lifecycle feed: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), acked)
        .await
        .expect("the broker acknowledged the event");
    let _ = client.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_lifecycle_events_name_client_ids_that_the_registry_maps_to_things() {
    use fleetops_transport_mqtt::codec::TopicLayout;
    let broker = TestBroker::start_with(BrokerOptions {
        layouts: vec![TopicLayout::fleets(), TopicLayout::aws()],
        verbose_log: false,
        ..BrokerOptions::default()
    });
    let data = tempfile::tempdir().unwrap();
    let serve = serve(&broker, data.path(), &["--presence", "aws"]);
    let api = serve.api();
    let (status, body) = api
        .put("/api/v1/things/meter-3", &json!({"clientId": "hw-9f"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let event = |kind: &str, ts: u64, reason: Option<&str>| {
        let mut e = json!({"clientId": "hw-9f", "timestamp": ts, "eventType": kind,
                           "sessionIdentifier": "s", "principalIdentifier": "p",
                           "versionNumber": 0});
        if let Some(r) = reason {
            e["disconnectReason"] = json!(r);
        }
        e
    };
    publish_as_service(
        &broker,
        "$aws/events/presence/connected/hw-9f",
        event("connected", 1_000, None),
    )
    .await;
    connectivity(&api, "meter-3", "online").await;
    // A takeover of the client id is no offline; a stale disconnect is ignored.
    publish_as_service(
        &broker,
        "$aws/events/presence/disconnected/hw-9f",
        event("disconnected", 1_500, Some("DUPLICATE_CLIENTID")),
    )
    .await;
    publish_as_service(
        &broker,
        "$aws/events/presence/disconnected/hw-9f",
        event("disconnected", 900, None),
    )
    .await;
    // A malformed event is dropped; the service keeps going.
    publish_as_service(
        &broker,
        "$aws/events/presence/disconnected/hw-9f",
        json!({"nope": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let thing = api.get_ok("/api/v1/things/meter-3").await;
    assert_eq!(thing["connectivity"], "online", "{thing}");
    publish_as_service(
        &broker,
        "$aws/events/presence/disconnected/hw-9f",
        event("disconnected", 2_000, None),
    )
    .await;
    connectivity(&api, "meter-3", "offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgresql_show_the_same_presence_whichever_received_it() {
    use fleetops_store_postgres::testing::TestPostgres;
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let broker = TestBroker::start();
    let mut instances = Vec::new();
    for i in 0..2 {
        let data = tempfile::tempdir().unwrap();
        let mut config = ServeConfig::new(
            binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
            data.path(),
            &broker,
            "fleets",
        );
        config.client_id = format!("fleetops-presence-{i}");
        config.extra_args = [
            "--store",
            url.as_str(),
            "--shared-group",
            "fleetops",
            "--presence",
            "birth",
            "--offline-commands",
            "fail",
        ]
        .map(str::to_owned)
        .to_vec();
        instances.push((Serve::start(&config), data));
    }
    let apis: Vec<Api> = instances.iter().map(|(s, _)| s.api()).collect();
    let mut devices = Vec::new();
    for i in 0..4 {
        let config = DeviceConfig::new(broker.device_config(), thing(&format!("pr-{i}")));
        devices.push(DeviceClient::connect(config, None).await.unwrap().0);
    }
    // Each birth reached one instance (the subscription is shared); both show every one.
    for api in &apis {
        for i in 0..4 {
            connectivity(api, &format!("pr-{i}"), "online").await;
        }
    }
    devices.truncate(2);
    for api in &apis {
        for i in 2..4 {
            connectivity(api, &format!("pr-{i}"), "offline").await;
        }
        let (status, body) = api
            .post(
                "/api/v1/commands",
                &json!({"thingName": "pr-3", "action": "on", "ttl": 30}),
            )
            .await;
        assert_eq!(
            (status, &body["code"]),
            (409, &json!("ThingOffline")),
            "{body}"
        );
    }
}
