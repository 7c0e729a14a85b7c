//! API keys with scopes, from outside: the real `fleetops serve` and mosquitto. The server's
//! own token makes keys; a `read` key reads and changes nothing, an `operator` key runs a job
//! that devices on MQTT complete, only `admin` manages keys, a revoked key is refused at once,
//! and all of it survives a restart because keys are stored events.

use std::time::{Duration, Instant};

use fleetops_core::ThingName;
use fleetops_tests::{binary, quiet_broker, succeed_whatever_is_next, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::{DeviceClient, DeviceConfig};
use reqwest::Method;
use serde_json::{json, Value};

async fn create_key(api: &Api, as_: &str, name: &str, scope: &str) -> (String, Value) {
    let (status, body) = api
        .call_as(
            as_,
            Method::POST,
            "/api/v1/api-keys",
            Some(&json!({"name": name, "scope": scope})),
        )
        .await;
    assert_eq!(status, 201, "create {scope} key: {body}");
    let key = body["key"].as_str().expect("the key, once").to_owned();
    (key, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_carry_scopes_are_refused_once_revoked_and_survive_a_restart() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    let config = ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    );
    let mut serve = Serve::start(&config);
    let api = serve.api();
    let root = fleetops_tests::TOKEN;

    let (read, read_view) = create_key(&api, root, "dashboard", "read").await;
    let (operator, _) = create_key(&api, root, "ci pipeline", "operator").await;
    let (admin, _) = create_key(&api, root, "security team", "admin").await;
    let read_id = read_view["keyId"].as_str().unwrap().to_owned();
    assert_eq!(read_view["status"], "ACTIVE");
    assert_eq!(read_view["scope"], "read");
    assert!(read.starts_with(&format!("{read_id}.")), "{read}");

    // read: every GET, no change.
    for path in ["/api/v1/jobs", "/api/v1/commands", "/metrics"] {
        let (status, body) = api.call_as(&read, Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path} with a read key: {body}");
    }
    let job = json!({"jobId": "by-read", "targets": {"thingNames": ["lamp-0"]}, "document": {}});
    let (status, body) = api
        .call_as(&read, Method::POST, "/api/v1/jobs", Some(&job))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "Forbidden");
    assert!(
        body["message"].as_str().unwrap().contains("needs operator"),
        "{body}"
    );
    let (status, _) = api.get("/api/v1/jobs/by-read").await;
    assert_eq!(status, 404, "a refused create leaves nothing behind");

    // operator: runs a job that a device on MQTT completes; cannot manage keys.
    let thing = ThingName::parse("lamp-0").unwrap();
    let (client, events) =
        DeviceClient::connect(DeviceConfig::new(broker.device_config(), thing), None)
            .await
            .expect("the device connects");
    let device = succeed_whatever_is_next(client, events);
    let job = json!({"jobId": "by-operator", "targets": {"thingNames": ["lamp-0"]}, "document": {"v": 2}});
    let (status, body) = api
        .call_as(&operator, Method::POST, "/api/v1/jobs", Some(&job))
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, j) = api
            .call_as(&operator, Method::GET, "/api/v1/jobs/by-operator", None)
            .await;
        if j["status"] == "COMPLETED" {
            assert_eq!(j["jobProcessDetails"]["numberOfSucceededThings"], 1, "{j}");
            break;
        }
        assert!(Instant::now() < deadline, "the job never completed: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (method, path) in [
        (Method::GET, "/api/v1/api-keys".to_owned()),
        (Method::DELETE, format!("/api/v1/api-keys/{read_id}")),
    ] {
        let (status, body) = api.call_as(&operator, method.clone(), &path, None).await;
        assert_eq!(status, 403, "{method} {path} with an operator key: {body}");
    }
    let (status, _) = api
        .call_as(
            &operator,
            Method::POST,
            "/api/v1/api-keys",
            Some(&json!({"name": "escalate", "scope": "admin"})),
        )
        .await;
    assert_eq!(status, 403, "an operator key cannot make keys");

    // admin: lists keys (never a secret or digest) and revokes the read key.
    let (status, list) = api
        .call_as(&admin, Method::GET, "/api/v1/api-keys", None)
        .await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{list}");
    let text = list.to_string();
    assert!(!text.contains(read.split('.').nth(1).unwrap()), "{text}");
    assert!(items
        .iter()
        .all(|k| k.get("key").is_none() && k.get("secretHash").is_none()));
    // A wrong secret for a real id is refused like an unknown key.
    let forged = format!("{read_id}.{}", "0".repeat(64));
    assert_eq!(
        api.call_as(&forged, Method::GET, "/api/v1/jobs", None)
            .await
            .0,
        401
    );
    let (status, revoked) = api
        .call_as(
            &admin,
            Method::DELETE,
            &format!("/api/v1/api-keys/{read_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["status"], "REVOKED");
    let (status, body) = api.call_as(&read, Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(status, 401, "a revoked key is refused at once: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // Keys are stored events: after a restart the same keys hold, with the same scopes.
    device.abort();
    assert!(serve.terminate().success(), "{}", serve.log());
    let serve = Serve::start(&config);
    let api = serve.api();
    assert_eq!(
        api.call_as(&read, Method::GET, "/api/v1/jobs", None)
            .await
            .0,
        401
    );
    assert_eq!(
        api.call_as(&operator, Method::GET, "/api/v1/jobs", None)
            .await
            .0,
        200
    );
    let (status, _) = api
        .call_as(
            &operator,
            Method::POST,
            "/api/v1/jobs",
            Some(&json!({"jobId": "after", "targets": {"thingNames": ["lamp-1"]}, "document": {}})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, list) = api
        .call_as(&admin, Method::GET, "/api/v1/api-keys?limit=2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(list["nextToken"].is_string(), "{list}");
}
