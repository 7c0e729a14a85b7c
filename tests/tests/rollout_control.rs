//! Rollout control from outside: the real `fleetops serve`, mosquitto, devices on MQTT and an
//! operator on HTTP.
//!
//! - a three-stage rollout of 300 devices whose second stage fails its gate: the job pauses,
//!   the third stage is not queued, an operator resumes it over HTTP and it completes;
//! - a job with a maintenance window that opens at the next minute: nothing is queued and no
//!   device hears of it before, and it runs once the window is open.
//!
//! The devices are a few MQTT connections of the service account, each answering for many
//! things on their own topics (as in the `kill` test): 300 connections would measure the CI
//! cores rather than the service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetops_tests::{binary, quiet_broker, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::TestBroker;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use serde_json::{json, Value};

/// What the simulated devices saw: per thing, the job ids notify-next told them of.
type Heard = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

/// Devices answering for `things` over `connections` MQTT connections: whenever one is told
/// of its next execution, it reports `FAILED` if `fails` names it, else `SUCCEEDED` (or, when
/// they `hold`, nothing: the test reports for them).
struct Devices {
    heard: Heard,
    /// Things told they have no next execution any more.
    cleared: Arc<Mutex<BTreeSet<String>>>,
    /// A connection to publish on (the service account reaches every thing's topics).
    client: Option<AsyncClient>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Devices {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Devices {
    async fn start(
        broker: &TestBroker,
        name: &str,
        things: &[String],
        connections: usize,
        fails: BTreeSet<String>,
        hold: bool,
    ) -> Self {
        let heard: Heard = Arc::default();
        let cleared: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let mut first_client = None;
        let fails = Arc::new(fails);
        let mut tasks = Vec::new();
        let per = things.len().div_ceil(connections);
        for (conn, chunk) in things.chunks(per).enumerate() {
            let service = broker
                .service_config()
                .credentials
                .expect("service account");
            let mut options =
                MqttOptions::new(format!("{name}-sim-{conn}"), "127.0.0.1", broker.port());
            options.set_credentials(service.username, service.password);
            options.set_clean_start(true);
            options.set_keep_alive(Duration::from_secs(30));
            let (client, mut eventloop) = AsyncClient::new(options, 1024);
            let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
            let mut subscribed_tx = Some(subscribed_tx);
            let heard = Arc::clone(&heard);
            let cleared = Arc::clone(&cleared);
            let fails = Arc::clone(&fails);
            let publisher = client.clone();
            first_client.get_or_insert_with(|| client.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            let Some(thing) = topic
                                .strip_prefix("$aws/things/")
                                .and_then(|t| t.strip_suffix("/jobs/notify-next"))
                            else {
                                continue;
                            };
                            let body: Value =
                                serde_json::from_slice(&p.payload).unwrap_or_default();
                            let execution = &body["execution"];
                            let (Some(job), Some(n)) = (
                                execution["jobId"].as_str(),
                                execution["executionNumber"].as_u64(),
                            ) else {
                                cleared.lock().unwrap().insert(thing.to_owned());
                                continue;
                            };
                            heard
                                .lock()
                                .unwrap()
                                .entry(thing.to_owned())
                                .or_default()
                                .insert(job.to_owned());
                            if hold {
                                continue;
                            }
                            let status = if fails.contains(thing) {
                                "FAILED"
                            } else {
                                "SUCCEEDED"
                            };
                            let update = json!({"status": status, "executionNumber": n});
                            let topic = format!("$aws/things/{thing}/jobs/{job}/update");
                            let publisher = publisher.clone();
                            // Publishing from the poll loop itself could block it on a full
                            // request channel.
                            tokio::spawn(async move {
                                let _ = publisher
                                    .publish(topic, QoS::AtLeastOnce, false, update.to_string())
                                    .await;
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("device connection {conn}: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }));
            let filters = chunk.iter().map(|t| {
                Filter::new(
                    format!("$aws/things/{t}/jobs/notify-next"),
                    QoS::AtLeastOnce,
                )
            });
            client.subscribe_many(filters).await.expect("subscribe");
            tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
                .await
                .expect("SUBACK within 10 s")
                .expect("the event loop runs");
        }
        Self {
            heard,
            cleared,
            client: first_client,
            tasks,
        }
    }

    /// Publishes `thing`'s update of `job` to `status`, as the device would.
    async fn report(&self, thing: &str, job: &str, status: &str) {
        let client = self.client.as_ref().expect("a connection");
        client
            .publish(
                format!("$aws/things/{thing}/jobs/{job}/update"),
                QoS::AtLeastOnce,
                false,
                json!({"status": status}).to_string(),
            )
            .await
            .expect("publish");
    }

    fn was_cleared(&self, thing: &str) -> bool {
        self.cleared.lock().unwrap().contains(thing)
    }

    fn heard_of(&self, job: &str) -> usize {
        self.heard
            .lock()
            .unwrap()
            .values()
            .filter(|jobs| jobs.contains(job))
            .count()
    }
}

async fn wait_for(api: &Api, path: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = api.get_ok(path).await;
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting on {path}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counts(queued: u64, in_progress: u64, succeeded: u64, failed: u64) -> Value {
    json!({
        "numberOfQueuedThings": queued,
        "numberOfInProgressThings": in_progress,
        "numberOfSucceededThings": succeeded,
        "numberOfFailedThings": failed,
        "numberOfRejectedThings": 0,
        "numberOfTimedOutThings": 0,
        "numberOfCanceledThings": 0,
        "numberOfRemovedThings": 0,
    })
}

fn start(broker: &TestBroker, data: &std::path::Path) -> Serve {
    Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data,
        broker,
        "aws",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stage_gate_pauses_the_job_until_an_operator_resumes_it() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let mut serve = start(&broker, data.path());
    let api = serve.api();

    // 300 devices; ten of the second stage's things fail.
    let things: Vec<String> = (0..300).map(|i| format!("stg-{i:03}")).collect();
    let fails: BTreeSet<String> = things[30..40].iter().cloned().collect();
    let devices = Devices::start(&broker, "stages", &things, 6, fails, false).await;

    // Stage 1: the canary group (30 things), all must succeed. Stage 2: 90 named things,
    // 95 % must succeed (86). Stage 3: 60 % of all targets, i.e. the other 180, 90 % gate.
    let (status, body) = api
        .put(
            "/api/v1/thing-groups/canary",
            &json!({"thingNames": things[..30]}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({
                "jobId": "staged-fw",
                "targets": {"thingNames": things},
                "document": {"operation": "flash"},
                "stagedRolloutConfig": {"stages": [
                    {"thingGroupNames": ["canary"], "successThresholdPercentage": 100},
                    {"thingNames": things[30..120], "successThresholdPercentage": 95},
                    {"percentage": 60, "successThresholdPercentage": 90},
                ]},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Stage 2 cannot reach 86 successes once 5 of its things failed: the job pauses.
    let job = wait_for(
        &api,
        "/api/v1/jobs/staged-fw",
        Duration::from_secs(60),
        |j| !j["paused"].is_null(),
    )
    .await;
    assert_eq!(job["status"], "IN_PROGRESS", "{job}");
    let reason = &job["paused"]["reason"];
    assert_eq!(reason["by"], "stageGate", "{job}");
    assert_eq!(reason["stage"], 1, "{job}");
    assert_eq!(reason["required"], 86, "{job}");
    assert_eq!(reason["size"], 90, "{job}");
    let progress = &job["stageProgress"];
    assert_eq!(progress["currentStage"], 1, "{job}");
    assert_eq!(progress["stages"][0]["state"], "PASSED", "{job}");
    assert_eq!(progress["stages"][1]["state"], "GATE_FAILED", "{job}");
    assert_eq!(progress["stages"][2]["state"], "WAITING", "{job}");
    assert_eq!(progress["stages"][2]["numberOfThings"], 180, "{job}");

    // Devices already working finish; the third stage is never queued while paused.
    let job = wait_for(
        &api,
        "/api/v1/jobs/staged-fw",
        Duration::from_secs(30),
        |j| {
            j["jobProcessDetails"]["numberOfSucceededThings"] == 110
                && j["jobProcessDetails"]["numberOfFailedThings"] == 10
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let job_after = api.get_ok("/api/v1/jobs/staged-fw").await;
    assert_eq!(
        job_after["jobProcessDetails"],
        counts(0, 0, 110, 10),
        "{job}"
    );
    assert_eq!(job_after["remainingTargets"], 180, "{job_after}");
    assert_eq!(
        job_after["stageProgress"]["stages"][1]["jobProcessDetails"],
        counts(0, 0, 80, 10),
        "{job_after}"
    );
    assert_eq!(
        job_after["stageProgress"]["stages"][2]["jobProcessDetails"],
        counts(0, 0, 0, 0),
        "{job_after}"
    );
    assert_eq!(devices.heard_of("staged-fw"), 120);
    let third: Vec<&String> = things[120..].iter().collect();
    for t in third.iter().step_by(37) {
        let (status, _) = api.get(&format!("/api/v1/jobs/staged-fw/things/{t}")).await;
        assert_eq!(
            status, 404,
            "{t} of the third stage has an execution while paused"
        );
    }

    // The operator resumes over HTTP: the failed gate is overridden, stage 3 rolls out.
    let (status, body) = api
        .post(
            "/api/v1/jobs/staged-fw/resume",
            &json!({"comment": "the ten failures are a known bad batch"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["paused"].is_null(), "{body}");
    assert_eq!(
        body["stageProgress"]["stages"][1]["state"], "OVERRIDDEN",
        "{body}"
    );
    let job = wait_for(
        &api,
        "/api/v1/jobs/staged-fw",
        Duration::from_secs(60),
        |j| j["status"] == "COMPLETED",
    )
    .await;
    assert_eq!(job["jobProcessDetails"], counts(0, 0, 290, 10), "{job}");
    assert_eq!(job["remainingTargets"], 0, "{job}");
    let stages = &job["stageProgress"]["stages"];
    assert_eq!(job["stageProgress"]["currentStage"], 3, "{job}");
    assert_eq!(stages[0]["jobProcessDetails"], counts(0, 0, 30, 0), "{job}");
    assert_eq!(
        stages[1]["jobProcessDetails"],
        counts(0, 0, 80, 10),
        "{job}"
    );
    assert_eq!(
        stages[2]["jobProcessDetails"],
        counts(0, 0, 180, 0),
        "{job}"
    );
    assert_eq!(stages[2]["state"], "PASSED", "{job}");
    assert_eq!(devices.heard_of("staged-fw"), 300);

    // The pause and the resume are stored facts of the job.
    let history = api.get_ok("/api/v1/jobs/staged-fw/history?limit=100").await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for t in [
        "JobPaused",
        "JobResumed",
        "JobStageAdvanced",
        "JobCompleted",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }

    assert_eq!(serve.terminate().code(), Some(0), "{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_queued_outside_a_maintenance_window() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let mut serve = start(&broker, data.path());
    let api = serve.api();
    let things: Vec<String> = (0..5).map(|i| format!("win-{i}")).collect();
    let devices = Devices::start(&broker, "window", &things, 1, BTreeSet::new(), false).await;

    // A one-minute window opening at the next minute (the one after if this one ends within
    // 20 seconds, so there is time to look while it is closed), given at +01:30 to exercise
    // the offset.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let skip = if now % 60 >= 40 { 2 } else { 1 };
    let opens = (now / 60 + skip) * 60;
    let local = opens + 90 * 60;
    let (minute, hour) = ((local / 60) % 60, (local / 3600) % 24);
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({
                "jobId": "night-fw",
                "targets": {"thingNames": things},
                "document": {"operation": "flash"},
                "schedulingConfig": {"maintenanceWindows": [
                    {"startTime": format!("{minute} {hour} * * *"), "durationInMinutes": 1,
                     "timeZone": "+01:30"},
                ]},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "IN_PROGRESS", "{body}");

    // Outside the window: no execution, no notification, whatever the rollout could do.
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2
        < opens
    {
        let job = api.get_ok("/api/v1/jobs/night-fw").await;
        assert_eq!(job["jobProcessDetails"], counts(0, 0, 0, 0), "{job}");
        assert_eq!(job["remainingTargets"], 5, "{job}");
        assert_eq!(
            job["schedulingConfig"]["maintenanceWindows"][0]["timeZone"], "+01:30",
            "{job}"
        );
        let (status, _) = api.get("/api/v1/jobs/night-fw/things/win-0").await;
        assert_eq!(status, 404, "an execution was queued outside the window");
        assert_eq!(devices.heard_of("night-fw"), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Once the window opens, the scheduler wakes the job and it runs.
    let job = wait_for(
        &api,
        "/api/v1/jobs/night-fw",
        Duration::from_secs(40),
        |j| j["status"] == "COMPLETED",
    )
    .await;
    assert_eq!(job["jobProcessDetails"], counts(0, 0, 5, 0), "{job}");
    assert_eq!(devices.heard_of("night-fw"), 5);
    let e = api.get_ok("/api/v1/jobs/night-fw/things/win-3").await;
    let queued = e["queuedAt"].as_u64().expect("queuedAt");
    assert!(
        queued >= opens,
        "queued at {queued}, before the window opened at {opens}"
    );

    assert_eq!(serve.terminate().code(), Some(0), "{}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_updates_and_cancels_one_execution_over_http() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let mut serve = start(&broker, data.path());
    let api = serve.api();
    let things: Vec<String> = (0..4).map(|i| format!("op-{i}")).collect();
    // Devices that hear of their executions and leave the reporting to the test.
    let devices = Devices::start(&broker, "operator", &things, 1, BTreeSet::new(), true).await;
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({
                "jobId": "op-fw",
                "targets": {"thingNames": things},
                "document": {"operation": "flash"},
                "stagedRolloutConfig": {"stages": [
                    {"thingNames": ["op-0"], "successThresholdPercentage": 100},
                ]},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let path = "/api/v1/jobs/op-fw";
    wait_for(&api, path, Duration::from_secs(20), |j| {
        j["jobProcessDetails"]["numberOfQueuedThings"] == 1
    })
    .await;

    // The operator pauses it; the pause is shown with its reason.
    let (status, job) = api
        .post("/api/v1/jobs/op-fw/pause", &json!({"comment": "hold on"}))
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["paused"]["reason"]["by"], "operator", "{job}");
    assert_eq!(job["paused"]["reason"]["comment"], "hold on", "{job}");
    let (status, body) = api.post("/api/v1/jobs/op-fw/pause", &json!({})).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("InvalidStateTransition"))
    );

    // It is updated while paused: checked as at creation, stored, shown.
    let (status, body) = api
        .patch(
            path,
            &json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 0}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("maximumPerMinute"));
    let (status, job) = api
        .patch(
            path,
            &json!({"description": "firmware 4", "timeoutConfig": {"inProgressTimeoutInMinutes": 5},
                    "jobExecutionsRolloutConfig": {"maximumPerMinute": 100}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["description"], "firmware 4", "{job}");
    assert_eq!(
        job["timeoutConfig"]["inProgressTimeoutInMinutes"], 5,
        "{job}"
    );
    assert_eq!(
        job["jobExecutionsRolloutConfig"]["maximumPerMinute"], 100,
        "{job}"
    );

    // op-0's queued execution is canceled: a stale version is refused, the right one works,
    // the status details are merged, and the device is told it has nothing next.
    let e = api.get_ok("/api/v1/jobs/op-fw/things/op-0").await;
    let version = e["versionNumber"].as_u64().unwrap();
    let cancel = "/api/v1/jobs/op-fw/things/op-0/cancel";
    let (status, body) = api
        .put(cancel, &json!({"expectedVersion": version + 1}))
        .await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("VersionMismatch")),
        "{body}"
    );
    let (status, e) = api
        .put(
            cancel,
            &json!({"expectedVersion": version, "statusDetails": {"why": "recalled"}}),
        )
        .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["status"], "CANCELED", "{e}");
    assert_eq!(e["statusDetails"], json!({"why": "recalled"}), "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !devices.was_cleared("op-0") {
        assert!(Instant::now() < deadline, "op-0 was not told of the cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Resumed, the first stage's gate can no longer pass (its one thing was canceled): the
    // job pauses on the gate; resumed again, the operator overrides it.
    let (status, job) = api.post("/api/v1/jobs/op-fw/resume", &json!({})).await;
    assert_eq!(status, 200, "{job}");
    let job = wait_for(&api, path, Duration::from_secs(10), |j| {
        j["paused"]["reason"]["by"] == "stageGate"
    })
    .await;
    assert_eq!(
        job["stageProgress"]["stages"][0]["state"], "GATE_FAILED",
        "{job}"
    );
    let (status, _) = api.post("/api/v1/jobs/op-fw/resume", &json!({})).await;
    assert_eq!(status, 200);
    wait_for(&api, path, Duration::from_secs(20), |j| {
        j["jobProcessDetails"]["numberOfQueuedThings"] == 3
    })
    .await;

    // op-1 starts; cancelling it needs force.
    devices.report("op-1", "op-fw", "IN_PROGRESS").await;
    wait_for(
        &api,
        "/api/v1/jobs/op-fw/things/op-1",
        Duration::from_secs(10),
        |e| e["status"] == "IN_PROGRESS",
    )
    .await;
    let cancel = "/api/v1/jobs/op-fw/things/op-1/cancel";
    let (status, body) = api.put(cancel, &json!({})).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("InvalidStateTransition")),
        "{body}"
    );
    let (status, e) = api.put(cancel, &json!({"force": true})).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["status"], "CANCELED", "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !devices.was_cleared("op-1") {
        assert!(Instant::now() < deadline, "op-1 was not told of the cancel");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = api.get_ok(path).await;
    assert_eq!(
        job["jobProcessDetails"],
        counts(2, 0, 0, 0)
            .as_object()
            .map(|c| {
                let mut c = c.clone();
                c.insert("numberOfCanceledThings".into(), json!(2));
                Value::Object(c)
            })
            .unwrap(),
        "{job}"
    );
    let history = api.get_ok("/api/v1/jobs/op-fw/history?limit=100").await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "JobCreated",
            "JobStarted",
            "JobPaused",
            "JobUpdated",
            "JobResumed",
            "JobPaused",
            "JobResumed",
            "JobStageAdvanced",
        ],
        "{history}"
    );
    assert_eq!(serve.terminate().code(), Some(0), "{}", serve.log());
}
