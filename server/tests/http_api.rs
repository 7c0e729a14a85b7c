//! The HTTP API end to end: `fleetops serve` in-process (and once as the real binary) on a
//! private mosquitto, a sled directory on disk and `DeviceClient` devices, driven with reqwest.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{broker, listening_line, options, Running, TOKEN};
use fleetops_core::device::{CommandResponse, ExecutionView, StartNextRequest, UpdateRequest};
use fleetops_core::{CommandStatus, JobExecutionStatus, ThingName};
use fleetops_server::config::{DurabilityArg, FileConfig, Settings};
use fleetops_server::serve;
use fleetops_transport_mqtt::codec::CommandRequest;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{
    BrokerConfig, CommandHandler, DeviceClient, DeviceConfig, DeviceEvent,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

fn things(prefix: &str, n: usize) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("{prefix}-{i}")).unwrap())
        .collect()
}

/// A device that answers commands `SUCCEEDED` with `{"echo": action}` and finishes every job
/// execution with `outcome`.
async fn device(
    broker: &TestBroker,
    thing: ThingName,
    outcome: JobExecutionStatus,
) -> (DeviceClient, JoinHandle<()>) {
    device_on(broker.device_config(), thing, outcome).await
}

/// [`device`] with its own connection settings (TLS, say).
async fn device_on(
    broker: BrokerConfig,
    thing: ThingName,
    outcome: JobExecutionStatus,
) -> (DeviceClient, JoinHandle<()>) {
    let handler: Arc<dyn CommandHandler> = Arc::new(|cmd: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(json!({"echo": cmd.action})),
            status_reason: None,
        }
    });
    let mut config = DeviceConfig::new(broker, thing);
    config.request_timeout = Duration::from_secs(2);
    let (client, mut events) = DeviceClient::connect(config, Some(handler))
        .await
        .expect("device connects");
    let worker = client.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let view: Option<ExecutionView> = match event {
                DeviceEvent::NotifyNext {
                    execution: Some(v), ..
                } => Some(v),
                DeviceEvent::Pending(p) if !(p.in_progress.is_empty() && p.queued.is_empty()) => {
                    worker.describe_next().await.ok()
                }
                _ => None,
            };
            let Some(view) = view else { continue };
            let view = if view.status == JobExecutionStatus::Queued {
                match worker.start_next(StartNextRequest::default()).await {
                    Ok(Some(v)) => v,
                    _ => continue,
                }
            } else {
                view
            };
            let request = UpdateRequest {
                status: Some(outcome),
                execution_number: Some(view.execution_number),
                ..UpdateRequest::default()
            };
            let _ = worker.update(view.job_id.clone(), request).await;
        }
    });
    (client, task)
}

async fn poll_until(
    server: &Running,
    path: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out; last answer {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_created_over_http_completes_with_the_right_counters() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let names = things("job-dev", 5);
    let mut devices = Vec::new();
    for (i, t) in names.iter().enumerate() {
        let outcome = if i < 3 {
            JobExecutionStatus::Succeeded
        } else {
            JobExecutionStatus::Failed
        };
        devices.push(device(&broker, t.clone(), outcome).await);
    }

    let (status, created) = server
        .post(
            "/api/v1/jobs",
            json!({
                "jobId": "fw-1",
                "description": "firmware 1.2",
                "targets": {"thingNames": names},
                "document": {"url": "https://example.invalid/fw.bin"},
                "timeoutConfig": {"inProgressTimeoutInMinutes": 10},
                "jobExecutionsRolloutConfig": {"maximumPerMinute": 1000},
                "abortConfig": {"criteriaList": [{"failureType": "FAILED", "action": "CANCEL",
                    "thresholdPercentage": 90, "minNumberOfExecutedThings": 5}]}
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created, json!({"jobId": "fw-1", "status": "IN_PROGRESS"}));

    let job = poll_until(&server, "/api/v1/jobs/fw-1", Duration::from_secs(30), |j| {
        j["status"] == "COMPLETED"
    })
    .await;
    let counts = &job["jobProcessDetails"];
    assert_eq!(counts["numberOfSucceededThings"], 3, "{job}");
    assert_eq!(counts["numberOfFailedThings"], 2, "{job}");
    for k in [
        "Queued",
        "InProgress",
        "Canceled",
        "TimedOut",
        "Rejected",
        "Removed",
    ] {
        assert_eq!(counts[format!("numberOf{k}Things")], 0, "{job}");
    }
    assert_eq!(job["description"], "firmware 1.2");
    assert_eq!(job["timeoutConfig"]["inProgressTimeoutInMinutes"], 10);
    assert_eq!(job["jobExecutionsRolloutConfig"]["maximumPerMinute"], 1000);
    assert_eq!(job["remainingTargets"], 0);

    let (_, failed) = server
        .get("/api/v1/jobs/fw-1/executions?status=FAILED")
        .await;
    let failed: Vec<&str> = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["thingName"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["job-dev-3", "job-dev-4"]);
    // Paging: two pages of 3 and 2.
    let (_, first) = server.get("/api/v1/jobs/fw-1/executions?limit=3").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let token = first["nextToken"].as_str().expect("a next page");
    let (_, second) = server
        .get(&format!(
            "/api/v1/jobs/fw-1/executions?limit=3&nextToken={token}"
        ))
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 2);
    assert!(second.get("nextToken").is_none());

    let (_, mine) = server.get("/api/v1/things/job-dev-0/jobs").await;
    assert_eq!(mine["items"][0]["jobId"], "fw-1");
    assert_eq!(mine["items"][0]["status"], "SUCCEEDED");
    let (status, exec) = server.get("/api/v1/jobs/fw-1/things/job-dev-4").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exec["status"], "FAILED");

    let (_, list) = server.get("/api/v1/jobs?status=COMPLETED").await;
    assert_eq!(list["items"][0]["jobId"], "fw-1");
    // A second job with the same id is a conflict and changes nothing.
    let (status, err) = server
        .post(
            "/api/v1/jobs",
            json!({"jobId": "fw-1", "targets": {"thingNames": ["x"]}, "document": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "ResourceAlreadyExists");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_wait_answers_with_the_terminal_execution() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (_lamp, _task) = device(
        &broker,
        ThingName::parse("lamp-1").unwrap(),
        JobExecutionStatus::Succeeded,
    )
    .await;

    let (status, done) = server
        .post(
            "/api/v1/commands?wait=true",
            json!({"thingName": "lamp-1", "action": "switch-on", "params": {"level": 3}, "ttl": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "SUCCEEDED");
    assert_eq!(done["result"], json!({"echo": "switch-on"}));
    assert_eq!(done["params"], json!({"level": 3}));
    let id = done["executionId"].as_str().unwrap();
    let (status, again) = server.get(&format!("/api/v1/commands/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, done);

    // Without wait: 201 and the id at once.
    let (status, sent) = server
        .post(
            "/api/v1/commands",
            json!({"thingName": "lamp-1", "action": "blink"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert!(sent["executionId"].is_string());

    // `ghost` is connected but never answers: the TTL decides, and wait reports TIMED_OUT.
    let _ghost = common::silent_devices(&broker, &["ghost"]).await;
    let (status, timed_out) = server
        .post(
            "/api/v1/commands?wait=true",
            json!({"thingName": "ghost", "action": "ping", "ttl": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{timed_out}");
    assert_eq!(timed_out["status"], "TIMED_OUT");
    // Canceling a terminal command is a conflict.
    let (status, err) = server
        .post(
            &format!(
                "/api/v1/commands/{}/cancel",
                timed_out["executionId"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "TerminalStateReached");

    let (_, list) = server.get("/api/v1/commands?thingName=lamp-1").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_right_token_are_refused_and_change_nothing() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let job = json!({"jobId": "j1", "targets": {"thingNames": ["t1"]}, "document": {}}).to_string();
    let json_type = ("content-type", "application/json");
    for headers in [
        vec![json_type],
        vec![json_type, ("authorization", "Bearer wrong-token")],
        vec![json_type, ("authorization", "Basic dGVzdDp0ZXN0")],
        vec![json_type, ("authorization", "Bearer test-token-12")],
    ] {
        let (status, h, body) = server
            .raw(Method::POST, "/api/v1/jobs", &headers, job.clone())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {body}");
        assert_eq!(body["code"], "Unauthorized");
        assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    }
    let (status, _, _) = server.raw(Method::GET, "/api/v1/jobs", &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Nothing was created.
    let (status, list) = server.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"], json!([]));
    let (status, _) = server.get("/api/v1/jobs/j1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Health and the API description need no token.
    let (status, _, health) = server.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["status"], "ok");
    let (status, _, _) = server
        .raw(Method::GET, "/api/v1/openapi.json", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
    server.shutdown().await;
}

/// Polls `/healthz` until it answers `want`, and returns the body.
async fn health_until(server: &Running, want: StatusCode, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, _, body) = server.raw(Method::GET, "/healthz", &[], "").await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {status} after {limit:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_broker_is_down_and_200_once_it_is_back() {
    let mut broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    health_until(&server, StatusCode::OK, Duration::from_secs(10)).await;
    broker.stop();
    let down = health_until(
        &server,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(down["code"], "ServiceUnavailable", "{down}");
    assert!(
        down["message"].as_str().unwrap_or("").contains("broker"),
        "{down}"
    );
    // The API itself still answers from the store while the broker is away.
    let (status, _) = server.get("/api/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    broker.start_again();
    // Reconnect backoff tops out at 5 s.
    let up = health_until(&server, StatusCode::OK, Duration::from_secs(30)).await;
    assert_eq!(up["status"], "ok", "{up}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reaches_a_tls_broker_with_its_ca() {
    let broker = TestBroker::start_with(BrokerOptions {
        verbose_log: false,
        extra_config: "log_type information\n".into(),
        tls: true,
        ..BrokerOptions::default()
    });
    let tls_port = broker.tls_port().expect("TLS listener");
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&broker, data.path());
    opts.broker = Some(format!("mqtts://127.0.0.1:{tls_port}"));
    opts.broker_ca = Some(broker.dir().join("ca.pem"));
    // The other tests run the default (flush); this one the buffered store.
    opts.durability = Some(DurabilityArg::Buffered);
    let server = Running::start(opts).await;
    let (_device, _task) = device_on(
        broker.device_config_tls(),
        ThingName::parse("tls-lamp").unwrap(),
        JobExecutionStatus::Succeeded,
    )
    .await;
    let (status, done) = server
        .post(
            "/api/v1/commands?wait=true",
            json!({"thingName": "tls-lamp", "action": "switch-on", "ttl": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    server.shutdown().await;

    // An `mqtts://` broker without a CA is a configuration error, said before connecting …
    let mut no_ca = options(&broker, data.path());
    no_ca.broker = Some(format!("mqtts://127.0.0.1:{tls_port}"));
    let err = Settings::resolve(no_ca, FileConfig::default(), None)
        .expect_err("mqtts without a CA is refused");
    assert!(err.to_string().to_lowercase().contains("ca"), "{err}");
    // … and a CA that did not sign the broker's certificate gets no connection.
    let other = TestBroker::start_with(BrokerOptions {
        verbose_log: false,
        extra_config: "log_type information\n".into(),
        tls: true,
        ..BrokerOptions::default()
    });
    let mut wrong_ca = options(&broker, data.path());
    wrong_ca.broker = Some(format!("mqtts://127.0.0.1:{tls_port}"));
    wrong_ca.broker_ca = Some(other.dir().join("ca.pem"));
    let settings = Settings::resolve(wrong_ca, FileConfig::default(), None).unwrap();
    let Err(err) = serve::start(settings, std::future::pending::<()>()).await else {
        panic!("an untrusted broker is refused");
    };
    assert!(err.to_string().contains("broker"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_413_415_with_a_clear_message() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&broker, data.path());
    opts.max_body_bytes = Some(64 * 1024);
    let server = Running::start(opts).await;
    let auth = ("authorization", "Bearer test-token-123");
    let json_type = ("content-type", "application/json");

    let cases: Vec<(&str, String, StatusCode, &str, &str)> = vec![
        (
            "syntax",
            "{\"jobId\": ".into(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "line 1",
        ),
        (
            "unknown field",
            json!({"jobid": "x", "targets": {}, "document": {}}).to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "unknown field `jobid`",
        ),
        (
            "bad thing name",
            json!({"targets": {"thingNames": ["ok", "a/b"]}, "document": {}}).to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "targets.thingNames[1]",
        ),
        (
            "missing document",
            json!({"targets": {"thingNames": ["t"]}}).to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "missing field `document`",
        ),
        (
            "document not an object",
            json!({"targets": {"thingNames": ["t"]}, "document": [1]}).to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "document",
        ),
        (
            "no targets",
            json!({"targets": {}, "document": {}}).to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "targets",
        ),
        (
            "timeout out of range",
            json!({"targets": {"thingNames": ["t"]}, "document": {},
                   "timeoutConfig": {"inProgressTimeoutInMinutes": 0}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "inProgressTimeoutInMinutes",
        ),
        (
            "two increase criteria",
            json!({"targets": {"thingNames": ["t"]}, "document": {},
                   "jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 10,
                   "incrementFactor": 2.0, "rateIncreaseCriteria": {"numberOfNotifiedThings": 5,
                   "numberOfSucceededThings": 5}}}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "rateIncreaseCriteria",
        ),
        (
            "bad failure type",
            json!({"targets": {"thingNames": ["t"]}, "document": {},
                   "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "OOPS",
                   "numberOfRetries": 2}]}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "failureType",
        ),
        (
            "bad start time",
            json!({"targets": {"thingNames": ["t"]}, "document": {},
                   "schedulingConfig": {"startTime": "tomorrow"}})
            .to_string(),
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            "RFC 3339",
        ),
    ];
    for (what, body, status, code, needle) in cases {
        let (got, _, err) = server
            .raw(Method::POST, "/api/v1/jobs", &[auth, json_type], body)
            .await;
        assert_eq!(got, status, "{what}: {err}");
        assert_eq!(err["code"], code, "{what}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{what}: {message:?} lacks {needle:?}"
        );
    }

    // Not JSON at all: 415.
    let (got, _, err) = server
        .raw(Method::POST, "/api/v1/jobs", &[auth], "jobId=x")
        .await;
    assert_eq!(got, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    assert_eq!(err["code"], "UnsupportedMediaType");
    // Over the limit: 413.
    let big = json!({"targets": {"thingNames": ["t"]}, "document": {"blob": "x".repeat(100_000)}});
    let (got, _, err) = server
        .raw(
            Method::POST,
            "/api/v1/jobs",
            &[auth, json_type],
            big.to_string(),
        )
        .await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["code"], "PayloadTooLarge");
    // Commands: a TTL out of range names the field.
    let (got, err) = server
        .post(
            "/api/v1/commands",
            json!({"thingName": "t", "action": "a", "ttl": 0}),
        )
        .await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["message"].as_str().unwrap().contains("ttl"), "{err}");
    // Query strings.
    for (path, needle) in [
        ("/api/v1/jobs?limit=0", "limit"),
        ("/api/v1/jobs?limit=abc", "limit"),
        ("/api/v1/jobs?status=DONE", "status"),
        ("/api/v1/jobs?colour=blue", "colour"),
        ("/api/v1/commands?wait=maybe", "wait"),
    ] {
        let (got, err) = server.get(path).await;
        assert_eq!(got, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{path}: {err}"
        );
    }
    // Bad ids in the path.
    let (got, err) = server.get("/api/v1/jobs/bad$id").await;
    assert_eq!(got, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["message"].as_str().unwrap().contains("jobId"), "{err}");
    // Nothing of the above created anything.
    let (_, list) = server.get("/api/v1/jobs").await;
    assert_eq!(list["items"], json!([]));
    let (_, list) = server.get("/api/v1/commands").await;
    assert_eq!(list["items"], json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resources_and_routes_get_json_404_and_405() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    for path in [
        "/api/v1/jobs/nope",
        "/api/v1/jobs/nope/executions",
        "/api/v1/jobs/nope/things/t1",
        "/api/v1/commands/0190a0a0-0000-7000-8000-000000000000",
        "/api/v1/thing-groups/none",
        "/api/v1/thing-groups/none/members",
        "/api/v1/nothing-here",
    ] {
        let (status, err) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {err}");
        assert!(
            err["code"].is_string() && err["message"].is_string(),
            "{err}"
        );
    }
    let (status, err) = server
        .post("/api/v1/jobs/nope/cancel", json!({"force": true}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["code"], "ResourceNotFound");
    let (status, err) = server.call(Method::PATCH, "/api/v1/jobs", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{err}");
    assert_eq!(err["code"], "MethodNotAllowed");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thing_groups_and_a_job_to_a_group() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (status, g) = server
        .call(
            Method::PUT,
            "/api/v1/thing-groups/lamps",
            Some(&json!({"description": "all lamps", "thingNames": ["l1", "l2"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{g}");
    assert_eq!(
        g,
        json!({"thingGroupName": "lamps", "description": "all lamps", "numberOfThings": 2})
    );
    let (status, err) = server
        .call(Method::PUT, "/api/v1/thing-groups/lamps", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "ResourceAlreadyExists");
    let (status, g) = server
        .call(
            Method::PUT,
            "/api/v1/thing-groups/lamps/members",
            Some(&json!({"thingNames": ["l3"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{g}");
    assert_eq!(g["numberOfThings"], 3);
    let (_, g) = server
        .call(
            Method::DELETE,
            "/api/v1/thing-groups/lamps/members",
            Some(&json!({"thingNames": ["l1"]})),
        )
        .await;
    assert_eq!(g["numberOfThings"], 2);
    let (_, members) = server
        .get("/api/v1/thing-groups/lamps/members?limit=1")
        .await;
    assert_eq!(members["items"], json!(["l2"]));
    assert_eq!(members["nextToken"], "l2");
    let (_, members) = server
        .get("/api/v1/thing-groups/lamps/members?limit=1&nextToken=l2")
        .await;
    assert_eq!(members["items"], json!(["l3"]));

    let (status, created) = server
        .post(
            "/api/v1/jobs",
            json!({"targets": {"thingGroupNames": ["lamps"]}, "document": {"op": "dim"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    // No id given: a generated one.
    let id = created["jobId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    let path = format!("/api/v1/jobs/{id}/executions?status=QUEUED");
    let queued = poll_until(&server, &path, Duration::from_secs(10), |p| {
        p["items"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert_eq!(queued["items"][0]["thingName"], "l2");
    assert_eq!(queued["items"][1]["thingName"], "l3");
    // Delete one queued execution (needs force), then cancel the job.
    let (status, err) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}/things/l2"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let (status, removed) = server
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}/things/l2?force=true"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    assert_eq!(removed["status"], "REMOVED");
    let (status, job) = server
        .call(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "CANCELED");

    let (status, _) = server
        .call(Method::DELETE, "/api/v1/thing-groups/lamps", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get("/api/v1/thing-groups/lamps").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_every_route_in_it_is_served() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (status, doc) = server.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let on_disk: Value =
        serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json parses");
    assert_eq!(
        doc, on_disk,
        "the served document is the one in the repository"
    );
    let table = fleetops_server::http::route_table();
    assert!(table.len() >= 20);
    for (method, path) in &table {
        assert!(
            doc["paths"][*path][method.as_str().to_lowercase()].is_object(),
            "{method} {path} is not documented"
        );
        // Each documented route answers something other than "no route" / "method not
        // allowed" on the running server.
        let concrete = path
            .replace("{jobId}", "j")
            .replace("{thingName}", "t")
            .replace("{executionId}", "e")
            .replace("{name}", "g");
        let m = Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let (status, body) = server.call(m, &concrete, None).await;
        let no_route = status == StatusCode::NOT_FOUND
            && body["message"]
                .as_str()
                .is_some_and(|s| s.starts_with("no route"));
        assert!(
            !no_route && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}: {status} {body}"
        );
    }
    server.shutdown().await;
}

async fn reopen_and_check_job(broker: &TestBroker, data: &Path, id: &str) {
    let server = Running::start(options(broker, data)).await;
    let (status, job) = server.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["jobId"], id);
    let counts = &job["jobProcessDetails"];
    assert_eq!(counts["numberOfQueuedThings"], 2, "{job}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_keeps_everything_and_the_data_dir_reopens() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (status, _) = server
        .post(
            "/api/v1/jobs",
            json!({"jobId": "kept", "targets": {"thingNames": ["off-1", "off-2"]}, "document": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    poll_until(&server, "/api/v1/jobs/kept", Duration::from_secs(10), |j| {
        j["jobProcessDetails"]["numberOfQueuedThings"] == 2
    })
    .await;
    // A wait=true request in flight when the shutdown starts answers at once (202, SENT)
    // instead of holding the shutdown up for its whole TTL.
    let _off = common::silent_devices(&broker, &["off-1"]).await;
    let client = reqwest::Client::new();
    let pending = tokio::spawn(
        client
            .post(server.url("/api/v1/commands?wait=true"))
            .bearer_auth(TOKEN)
            .json(&json!({"thingName": "off-1", "action": "ping", "ttl": 600}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let resp = pending
        .await
        .unwrap()
        .expect("answered before the server stopped");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "SENT");

    reopen_and_check_job(&broker, data.path(), "kept").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_stops_on_sigterm() {
    use std::process::{Command, Stdio};

    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let service = broker.service_config().credentials.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", broker.port())])
        .env("FLEETOPS_BROKER_USERNAME", &service.username)
        .env("FLEETOPS_BROKER_PASSWORD", &service.password)
        .env("FLEETOPS_API_TOKEN", TOKEN)
        .env("FLEETOPS_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fleetops");
    let line = listening_line(&mut child).await;
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/api/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&json!({"jobId": "from-bin", "targets": {"thingNames": ["off-1", "off-2"]}, "document": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Let the rollout queue both executions before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fleetops did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    reopen_and_check_job(&broker, data.path(), "from-bin").await;
}
