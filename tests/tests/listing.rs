//! Jobs and thing groups as EMQX Fleets users list them, from outside: the real
//! `fleetops serve` and mosquitto. A job has a name; the job list shows name, description,
//! type, status, number of targets and created time and filters by status and type; a group
//! may carry an EMQX default-group name (dots, spaces, parentheses) through a percent-encoded
//! URL, and a job aimed at it completes on devices over MQTT.

use std::time::{Duration, Instant};

use fleetops_core::ThingName;
use fleetops_tests::{
    binary, quiet_broker, succeed_whatever_is_next, Api, Serve, ServeConfig, TOKEN,
};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::{DeviceClient, DeviceConfig};
use reqwest::Method;
use serde_json::{json, Value};

/// EMQX Fleets' default group of a thing type.
const DEFAULT_GROUP: &str = "com.example.thermostat (default)";
/// The same name in a URL path.
const DEFAULT_GROUP_IN_PATH: &str = "com.example.thermostat%20%28default%29";

async fn call(api: &Api, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    api.call_as(TOKEN, method, path, body.as_ref()).await
}

async fn wait_for_status(api: &Api, job: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = api.get_ok(&format!("/api/v1/jobs/{job}")).await;
        if j["status"] == status {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "{job} never reached {status}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_jobs_list_with_their_columns_and_default_group_names_work_end_to_end() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    let api = serve.api();

    // A default group, created and filled through its percent-encoded name.
    let (status, g) = call(
        &api,
        Method::PUT,
        &format!("/api/v1/thing-groups/{DEFAULT_GROUP_IN_PATH}"),
        Some(json!({"description": "every thermostat", "thingNames": ["th-0", "th-1"]})),
    )
    .await;
    assert_eq!(status, 201, "{g}");
    assert_eq!(g["thingGroupName"], DEFAULT_GROUP);
    let (status, _) = call(
        &api,
        Method::PUT,
        "/api/v1/thing-groups/lamps",
        Some(json!({"thingNames": ["lamp-0"]})),
    )
    .await;
    assert_eq!(status, 201);
    // Group names still refuse what a path or topic could misread.
    let (status, body) = call(&api, Method::PUT, "/api/v1/thing-groups/a%2Fb", None).await;
    assert_eq!(status, 400, "{body}");

    // Listing groups, all and by prefix.
    let all = api.get_ok("/api/v1/thing-groups").await;
    let names: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["thingGroupName"].as_str().unwrap())
        .collect();
    assert_eq!(names, [DEFAULT_GROUP, "lamps"]);
    let by_prefix = api
        .get_ok("/api/v1/thing-groups?namePrefix=com.example.")
        .await;
    assert_eq!(
        by_prefix["items"].as_array().unwrap().len(),
        1,
        "{by_prefix}"
    );
    assert_eq!(by_prefix["items"][0]["numberOfThings"], 2);
    let paged = api.get_ok("/api/v1/thing-groups?limit=1").await;
    let next = paged["nextToken"].as_str().expect("a second page");
    let second = api
        .get_ok(&format!(
            "/api/v1/thing-groups?limit=1&nextToken={}",
            next.replace(' ', "%20")
                .replace('(', "%28")
                .replace(')', "%29")
        ))
        .await;
    assert_eq!(second["items"][0]["thingGroupName"], "lamps", "{second}");

    // Devices of the default group run a named snapshot job aimed at it.
    let mut devices = Vec::new();
    for name in ["th-0", "th-1"] {
        let config = DeviceConfig::new(broker.device_config(), ThingName::parse(name).unwrap());
        let (client, events) = DeviceClient::connect(config, None)
            .await
            .expect("the device connects");
        devices.push(succeed_whatever_is_next(client, events));
    }
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({
            "jobId": "fw-eu", "name": "Thermostat firmware 2.1 (EU)",
            "description": "wave 1", "document": {"v": "2.1"},
            "targets": {"thingGroupNames": [DEFAULT_GROUP]}
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let job = wait_for_status(&api, "fw-eu", "COMPLETED").await;
    assert_eq!(job["name"], "Thermostat firmware 2.1 (EU)");
    assert_eq!(
        job["jobProcessDetails"]["numberOfSucceededThings"], 2,
        "{job}"
    );

    // A continuous job and a scheduled one, so the filters have something to tell apart.
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({
            "jobId": "lamps-follow", "targetSelection": "CONTINUOUS", "document": {},
            "targets": {"thingGroupNames": ["lamps"]}
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({
            "jobId": "later", "name": "later", "document": {},
            "targets": {"thingNames": ["th-0", "x-1"], "thingGroupNames": [DEFAULT_GROUP]},
            "schedulingConfig": {"startTime": "2099-01-01T00:00:00Z"}
        })),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let list = api.get_ok("/api/v1/jobs").await;
    let rows: Vec<&Value> = list["items"].as_array().unwrap().iter().collect();
    let row = |id: &str| *rows.iter().find(|r| r["jobId"] == id).unwrap();
    let fw = row("fw-eu");
    assert_eq!(fw["name"], "Thermostat firmware 2.1 (EU)");
    assert_eq!(fw["description"], "wave 1");
    assert_eq!(fw["targetSelection"], "SNAPSHOT");
    assert_eq!(fw["status"], "COMPLETED");
    assert_eq!(fw["numberOfTargets"], 2);
    assert!(fw["createdAt"].as_u64().unwrap() > 1_700_000_000);
    // Not started: the named things and the group's members, th-0 counted once.
    assert_eq!(row("later")["numberOfTargets"], 3, "{list}");
    assert!(row("lamps-follow").get("name").is_none());

    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["jobId"].as_str().unwrap().to_owned())
            .collect()
    };
    let continuous = api.get_ok("/api/v1/jobs?targetSelection=CONTINUOUS").await;
    assert_eq!(ids(&continuous), ["lamps-follow"]);
    let scheduled_snapshots = api
        .get_ok("/api/v1/jobs?targetSelection=SNAPSHOT&status=SCHEDULED")
        .await;
    assert_eq!(ids(&scheduled_snapshots), ["later"]);
    let (status, body) = api.get("/api/v1/jobs?targetSelection=SOMETIMES").await;
    assert_eq!(status, 400, "{body}");
    // A name is short printable text.
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({"name": "a\u{7}b", "document": {}, "targets": {"thingNames": ["t"]}})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("name"), "{body}");
    // A paused job that is canceled is no longer shown as paused: nothing is left to resume.
    let (status, body) = call(
        &api,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({"jobId": "held", "document": {}, "targets": {"thingNames": ["nobody"]}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(&api, Method::POST, "/api/v1/jobs/held/pause", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(api
        .get_ok("/api/v1/jobs/held")
        .await
        .get("paused")
        .is_some());
    let held_row = |list: Value| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["jobId"] == "held")
            .cloned()
            .unwrap()
    };
    assert_eq!(held_row(api.get_ok("/api/v1/jobs").await)["paused"], true);
    assert_eq!(fw["paused"], false);
    let (status, body) = call(&api, Method::POST, "/api/v1/jobs/held/cancel", None).await;
    assert_eq!(status, 200, "{body}");
    let held = api.get_ok("/api/v1/jobs/held").await;
    assert_eq!(held["status"], "CANCELED", "{held}");
    assert!(held.get("paused").is_none(), "{held}");
    assert_eq!(held_row(api.get_ok("/api/v1/jobs").await)["paused"], false);
    for d in devices {
        d.abort();
    }
}
