//! The embedding example (`examples/embed_axum.rs`) as an embedder would run it: its own
//! binary, a real mosquitto, sled on disk. It answers its own routes, drives a device over
//! MQTT, reacts to the stored events, and stops cleanly on SIGTERM with everything on disk.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetops_core::store::EventStore;
use fleetops_core::{Event, JobExecutionStatus, JobId, StreamId, ThingName};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_tests::{quiet_broker, succeed_whatever_is_next, Api};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::{DeviceClient, DeviceConfig};
use serde_json::json;

/// `cargo test` builds a package's examples before running its tests, next to the test
/// binaries' directory: `target/<profile>/examples/`.
fn example_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLEETOPS_EMBED_EXAMPLE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join("embed_axum");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test -p fleetops-tests` (it builds the examples), or \
         `cargo build -p fleetops-tests --example embed_axum` first",
        path.display()
    );
    path
}

/// Kills the example if the test fails half-way.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_example_serves_its_routes_and_stops_cleanly() {
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let service = broker
        .service_config()
        .credentials
        .expect("the harness's service account");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(example_binary())
        .args(["--broker", &format!("127.0.0.1:{}", broker.port())])
        .args(["--username", &service.username])
        .args(["--password", &service.password])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the example");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut running = Running(Some(child));
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    // The first line printed so far or within `within` that starts with `prefix` and
    // contains `part`.
    let mut wait_for = |prefix: &str, part: &str, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = seen
                .iter()
                .find(|l: &&String| l.starts_with(prefix) && l.contains(part))
            {
                return line.clone();
            }
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => seen.push(line),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "the example never printed {prefix:?} with {part:?}; it printed:\n{}",
                    seen.join("\n")
                ),
            }
        }
    };
    let addr = wait_for("listening on http://", "", Duration::from_secs(60))
        .trim_start_matches("listening on http://")
        .parse()
        .expect("a socket address");
    let api = Api::new(addr);

    // Its own route, with the fleet's health inside.
    let (status, home) = api.get("/").await;
    assert_eq!(status, 200, "{home}");
    assert_eq!(home["service"], "embed-axum-example", "{home}");
    assert_eq!(home["fleetServing"], true, "{home}");

    // Bad input is refused at its door, with fleetops' own parse errors.
    let (status, body) = api
        .post("/rollouts/v2", &json!({"things": ["no spaces allowed"]}))
        .await;
    assert_eq!(status, 400, "{body}");

    // A device online before the rollout, running whatever it is told.
    let thing = ThingName::parse("lamp-1").unwrap();
    let (device, events) = DeviceClient::connect(
        DeviceConfig::new(broker.device_config(), thing.clone()),
        None,
    )
    .await
    .expect("the device connects");
    let worker = succeed_whatever_is_next(device, events);

    let (status, body) = api
        .post("/rollouts/v2", &json!({"things": ["lamp-1", "lamp-2"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jobId"], "firmware-v2", "{body}");

    // lamp-1 succeeds over MQTT; lamp-2 never connects and stays queued.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, progress) = api.get("/rollouts/v2").await;
        assert_eq!(status, 200, "{progress}");
        if progress["counters"]["succeeded"] == 1 {
            assert_eq!(progress["counters"]["queued"], 1, "{progress}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lamp-1 never succeeded: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = api.get("/rollouts/unknown").await;
    assert_eq!(status, 404, "{body}");

    // The reaction task saw the stored events as they came, lamp-1's success among them.
    let finished = wait_for("event ", "ExecutionFinished", Duration::from_secs(10));
    assert!(finished.contains("lamp-1"), "{finished}");
    let (_, home) = api.get("/").await;
    assert!(
        home["eventsSeen"].as_u64().unwrap_or(0) >= 4,
        "created, two queued, started or finished: {home}"
    );
    worker.abort();

    // SIGTERM: a graceful stop in the documented order, exit code 0.
    let mut child = running.0.take().expect("still running");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "a clean stop on SIGTERM");
    wait_for("fleet stopped cleanly", "", Duration::from_secs(5));

    // Everything it acknowledged is on disk: reopen the sled directory.
    let store = SledStore::open_async(SledConfig::new(data.path()))
        .await
        .expect("the data directory reopens");
    let job = JobId::parse("firmware-v2").unwrap();
    let stream = store
        .read_stream(&StreamId::job_execution(&job, &thing), 1, 100)
        .await
        .expect("read lamp-1's execution");
    assert!(
        stream.iter().any(|e| matches!(
            e.event,
            Event::ExecutionFinished {
                status: JobExecutionStatus::Succeeded,
                ..
            }
        )),
        "lamp-1's success is stored: {stream:?}"
    );
    tokio::task::spawn_blocking(move || drop(store))
        .await
        .unwrap();
}
