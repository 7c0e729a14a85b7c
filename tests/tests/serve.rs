//! The happy paths of `fleetops serve` from outside: an operator on HTTP, devices on MQTT with
//! the AWS topic layout, the binary and mosquitto as real processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::device::CommandResponse;
use fleetops_core::{CommandStatus, ThingName};
use fleetops_tests::{binary, quiet_broker, succeed_whatever_is_next, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig};
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
            // The `$aws` layout speaks AWS IoT Commands: results are maps of typed values.
            result: Some(json!({"echo": {"s": c.action}})),
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
        let (client, events) = DeviceClient::connect(config, Some(Arc::clone(&handler)))
            .await
            .expect("the device connects");
        devices.push(succeed_whatever_is_next(client, events));
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
    assert_eq!(body["result"], json!({"echo": {"s": "reboot"}}), "{body}");

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let data = tempfile::tempdir().unwrap();
    // `Serve` sends stderr to a file, as a service manager or `2> serve.log` would.
    let mut serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "fleets",
    ));
    assert_eq!(serve.api().get("/api/v1/jobs/missing").await.0, 404);
    assert_eq!(serve.terminate().code(), Some(0));
    let log = serve.log();
    assert!(log.contains("fleetops serve started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{}",
        log.escape_debug()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_case_insensitively() {
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
    // The scheme is case-insensitive in HTTP; the token itself is not.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let status = api
            .get_authorized_as("/api/v1/jobs", &format!("{scheme} {token}"))
            .await;
        assert_eq!(status, 200, "`{scheme} <token>`");
    }
    let status = api
        .get_authorized_as("/api/v1/jobs", &format!("Bearer {}", token.to_uppercase()))
        .await;
    assert_eq!(status, 401, "a token differing in case is another token");
}

/// Runs `fleetops serve` with `args` after `serve` and no API token: whether it came up
/// (printed its address; it is stopped then) before exiting by itself, with its stderr.
fn serve_without_token(broker: &TestBroker, args: &[&str]) -> (bool, String) {
    use std::io::{BufRead as _, BufReader, Read as _};
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary(env!("CARGO_BIN_EXE_fleetops-under-test")))
        .arg("serve")
        .arg("--broker")
        .arg(format!("mqtt://127.0.0.1:{}", broker.port()))
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .env_remove("FLEETOPS_API_TOKEN")
        .env_remove("FLEETOPS_NO_AUTH")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn fleetops serve");
    // The first stdout line is the address once it listens; end of file means it exited.
    let mut first = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first);
    let came_up = first.starts_with("listening on");
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (came_up, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_on_a_non_loopback_address_is_refused_without_an_extra_flag() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    // On loopback, --no-auth alone is enough.
    let (up, stderr) = serve_without_token(&broker, &["--no-auth", "--listen", "127.0.0.1:0"]);
    assert!(up, "--no-auth on loopback starts:\n{stderr}");
    // On every interface, it is refused with a message, whatever the extra flag is called.
    let (up, stderr) = serve_without_token(&broker, &["--no-auth", "--listen", "0.0.0.0:0"]);
    assert!(!up, "--no-auth on 0.0.0.0 started without an extra flag");
    assert!(stderr.contains("error"), "a reason on stderr: {stderr}");
}
