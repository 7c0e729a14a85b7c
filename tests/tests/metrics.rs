//! `GET /metrics` of the real `fleetops serve`, parsed as Prometheus' text format by a
//! third-party parser after a job, a command and a refused device request went through
//! mosquitto: each figure must say what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::device::{CommandResponse, UpdateRequest};
use fleetops_core::{CommandStatus, JobExecutionStatus, JobId, ThingName};
use fleetops_tests::{binary, quiet_broker, succeed_whatever_is_next, Serve, ServeConfig, TOKEN};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;

/// The samples named `name` whose labels include every pair of `labels`.
fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The one value of a counter, gauge or untyped sample.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, name, labels);
    assert_eq!(
        found.len(),
        1,
        "one sample {name}{labels:?}: {found:?} in {:#?}",
        scrape.samples.iter().map(|s| &s.metric).collect::<Vec<_>>()
    );
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a plain value: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_went_through_the_service() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    let serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    let api = serve.api();

    let handler: Arc<dyn CommandHandler> = Arc::new(|_: CommandRequest| async {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: None,
            status_reason: None,
        }
    });
    let mut devices = Vec::new();
    for i in 0..2 {
        let config = DeviceConfig::new(
            broker.device_config(),
            ThingName::parse(&format!("m-{i}")).unwrap(),
        );
        let (client, events) = DeviceClient::connect(config, Some(Arc::clone(&handler)))
            .await
            .expect("the device connects");
        devices.push(succeed_whatever_is_next(client, events));
    }
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": "m-job", "targets": {"thingNames": ["m-0", "m-1"]}, "document": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_ok("/api/v1/jobs/m-job").await["status"] != "COMPLETED" {
        assert!(Instant::now() < deadline, "the job did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "m-1", "action": "ping", "params": {}, "ttl": 30}),
        )
        .await;
    assert_eq!(body["status"], "SUCCEEDED", "{status} {body}");
    // An update of a job the thing has no execution of: refused with ResourceNotFound.
    let stray = DeviceClient::connect(
        DeviceConfig::new(broker.device_config(), ThingName::parse("m-9").unwrap()),
        None,
    )
    .await
    .expect("the stray device connects")
    .0;
    let refused = stray
        .update(
            JobId::parse("m-job").unwrap(),
            UpdateRequest {
                status: Some(JobExecutionStatus::Succeeded),
                ..UpdateRequest::default()
            },
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // Without the token: refused like every API route.
    let plain = reqwest::Client::new();
    let url = format!("http://{}/metrics", serve.addr());
    assert_eq!(plain.get(&url).send().await.unwrap().status().as_u16(), 401);
    let response = plain.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("it parses");

    assert_eq!(
        value(
            &scrape,
            "fleetops_job_executions",
            &[("status", "SUCCEEDED")]
        ),
        2.0
    );
    assert_eq!(
        value(&scrape, "fleetops_job_executions", &[("status", "QUEUED")]),
        0.0
    );
    assert_eq!(
        value(&scrape, "fleetops_jobs", &[("status", "COMPLETED")]),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "fleetops_command_executions",
            &[("status", "SUCCEEDED")]
        ),
        1.0
    );
    // The devices report straight from notify-next (no start-next), one update each.
    let updates = value(
        &scrape,
        "fleetops_device_requests_total",
        &[("operation", "update"), ("result", "accepted")],
    );
    assert_eq!(updates, 2.0, "{text}");
    let refused = value(
        &scrape,
        "fleetops_device_requests_total",
        &[("operation", "update"), ("result", "rejected")],
    );
    assert_eq!(refused, 1.0, "{text}");
    assert_eq!(
        value(
            &scrape,
            "fleetops_device_refusals_total",
            &[("code", "ResourceNotFound")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&scrape, "fleetops_command_seconds_count", &[]),
        1.0,
        "{text}"
    );
    let appends = value(&scrape, "fleetops_store_append_seconds_count", &[]);
    assert!(appends >= 4.0, "job, 2 updates, command: {appends}");
    let buckets = find(&scrape, "fleetops_store_append_seconds", &[]);
    match buckets.first().map(|s| &s.value) {
        Some(Value::Histogram(b)) => {
            let inf = b.iter().find(|c| c.less_than.is_infinite()).expect("+Inf");
            assert_eq!(inf.count, appends, "the +Inf bucket holds every append");
        }
        other => panic!("the append histogram: {other:?}"),
    }
    assert_eq!(value(&scrape, "fleetops_mqtt_connected", &[]), 1.0);
    assert!(value(&scrape, "fleetops_mqtt_connects_total", &[]) >= 1.0);
    assert!(value(&scrape, "fleetops_store_groups_total", &[]) >= 1.0);
    assert!(
        value(&scrape, "fleetops_store_grouped_appends_total", &[]) >= appends,
        "{text}"
    );
    assert_eq!(value(&scrape, "fleetops_leading", &[]), 1.0);
    assert_eq!(value(&scrape, "fleetops_outbox_backlog", &[]), 0.0);
    assert_eq!(
        value(
            &scrape,
            "fleetops_mqtt_inbound_dropped_total",
            &[("reason", "malformed")]
        ),
        0.0
    );
    drop(devices);
}
