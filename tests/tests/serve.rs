//! The happy paths of `fleetops serve` from outside: an operator on HTTP, devices on MQTT with
//! the AWS topic layout, the binary and mosquitto as real processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::device::{CommandResponse, UpdateRequest};
use fleetops_core::{CommandStatus, JobExecutionStatus, ThingName};
use fleetops_tests::{binary, quiet_broker, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig, DeviceEvent};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_a_command_over_http_reach_devices_and_come_back() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "aws",
    ));
    let api = serve.api();
    assert_eq!(api.get("/healthz").await.0, 200);

    // Three devices that run every job they are told about, and answer commands.
    let handler: Arc<dyn CommandHandler> = Arc::new(|c: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(json!({"echo": c.action})),
            status_reason: None,
        }
    });
    let mut devices = Vec::new();
    for i in 0..3 {
        let mut config = DeviceConfig::new(
            broker.device_config(),
            ThingName::parse(&format!("lamp-{i}")).unwrap(),
        );
        config.layout = TopicLayout::aws();
        let (client, mut events) = DeviceClient::connect(config, Some(Arc::clone(&handler)))
            .await
            .expect("the device connects");
        let client = Arc::new(client);
        let c = Arc::clone(&client);
        devices.push(tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let DeviceEvent::NotifyNext {
                    execution: Some(v), ..
                } = event
                {
                    let request = UpdateRequest {
                        status: Some(JobExecutionStatus::Succeeded),
                        execution_number: Some(v.execution_number),
                        ..UpdateRequest::default()
                    };
                    let _ = c.update(v.job_id, request).await;
                }
            }
        }));
        devices.push(tokio::spawn(async move {
            // Keeps the client (and its connection) alive with the task.
            let _keep = client;
            std::future::pending::<()>().await;
        }));
    }

    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": "blink-all", "targets": {"thingNames": ["lamp-0", "lamp-1", "lamp-2"]},
                    "document": {"operation": "blink"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = api.get_ok("/api/v1/jobs/blink-all").await;
        if job["status"] == "COMPLETED" {
            assert_eq!(
                job["jobProcessDetails"]["numberOfSucceededThings"], 3,
                "{job}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "lamp-1", "action": "reboot", "params": {}, "ttl": 30}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    assert_eq!(body["status"], "SUCCEEDED", "{body}");
    assert_eq!(body["result"], json!({"echo": "reboot"}), "{body}");

    assert_eq!(
        serve.terminate().code(),
        Some(0),
        "a clean stop on SIGTERM:\n{}",
        serve.log()
    );
    for d in devices {
        d.abort();
    }
}
