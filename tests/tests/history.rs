//! Execution histories and the live event stream of `fleetops serve` from outside: the real
//! binary and mosquitto, devices on MQTT, an operator reading `…/history` pages and
//! `GET /api/v1/events` (Server-Sent Events) over HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::device::{CommandResponse, StartNextRequest, UpdateRequest};
use fleetops_core::{CommandStatus, JobExecutionStatus, ThingName};
use fleetops_tests::{binary, quiet_broker, Api, Serve, ServeConfig, TOKEN};
use fleetops_transport_mqtt::codec::{CommandRequest, TopicLayout};
use fleetops_transport_mqtt::testing::TestBroker;
use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig, DeviceEvent};
use serde_json::{json, Value};

/// One Server-Sent Events message.
#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: u64,
    event: String,
    data: Value,
}

/// An open `GET /api/v1/events`, parsed as it arrives.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    /// Opens the stream with `query` and, when given, `Last-Event-ID`.
    async fn open(serve: &Serve, query: &str, last_event_id: Option<u64>) -> Self {
        // No overall timeout: the response never ends by itself.
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("http://{}/api/v1/events?{query}", serve.addr()))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("the request completes");
        assert_eq!(
            response.status().as_u16(),
            200,
            "GET /api/v1/events?{query}"
        );
        let kind = response.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message within `limit`, or `None`.
    async fn next(&mut self, limit: Duration) -> Option<Message> {
        let deadline = Instant::now() + limit;
        loop {
            while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(m) = parse(&String::from_utf8(block).expect("UTF-8")) {
                    return Some(m);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// Messages until `last` says stop (that one included), each within 30 s.
    async fn until(&mut self, last: impl Fn(&Message) -> bool) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let m = self
                .next(Duration::from_secs(30))
                .await
                .unwrap_or_else(|| panic!("no message within 30 s; got {got:#?}"));
            let done = last(&m);
            got.push(m);
            if done {
                return got;
            }
        }
    }
}

/// One message block; `None` for a comment (a keep-alive).
fn parse(block: &str) -> Option<Message> {
    let (mut id, mut event, mut data) = (None, None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse().expect("a numeric id"));
        } else if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some(Message {
        id: id?,
        event: event.expect("every message names its event"),
        data: serde_json::from_str(&data).expect("data is JSON"),
    })
}

/// A device that starts every job it is told of (`IN_PROGRESS`), then reports it
/// `SUCCEEDED`, and answers commands `SUCCEEDED`.
async fn device(broker: &TestBroker, thing: &str) -> tokio::task::JoinHandle<()> {
    let handler: Arc<dyn CommandHandler> = Arc::new(|c: CommandRequest| async move {
        CommandResponse {
            status: CommandStatus::Succeeded,
            // `$aws` speaks AWS IoT Commands: results are maps of typed values.
            result: Some(json!({"echo": {"s": c.action}})),
            status_reason: None,
        }
    });
    let mut config = DeviceConfig::new(broker.device_config(), ThingName::parse(thing).unwrap());
    config.layout = TopicLayout::aws();
    let (client, mut events) = DeviceClient::connect(config, Some(handler))
        .await
        .expect("the device connects");
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let DeviceEvent::NotifyNext {
                execution: Some(v), ..
            } = event
            else {
                continue;
            };
            if v.status != JobExecutionStatus::Queued {
                continue;
            }
            let Ok(Some(started)) = client.start_next(StartNextRequest::default()).await else {
                continue;
            };
            let request = UpdateRequest {
                status: Some(JobExecutionStatus::Succeeded),
                execution_number: Some(started.execution_number),
                ..UpdateRequest::default()
            };
            let _ = client.update(started.job_id, request).await;
        }
    })
}

/// Every item of a history, page by page with `limit`.
async fn walk(api: &Api, path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(t) => format!("{path}?limit={limit}&nextToken={t}"),
            None => format!("{path}?limit={limit}"),
        };
        let page = api.get_ok(&url).await;
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit && !got.is_empty(), "{page}");
        items.extend(got.iter().cloned());
        match page.get("nextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => return items,
        }
        assert!(items.len() < 1000, "the token never ends");
    }
}

fn types(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["type"].as_str().unwrap()).collect()
}

fn positions(items: &[Value]) -> Vec<u64> {
    items
        .iter()
        .map(|i| i["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_and_live_events_follow_a_job_and_a_command() {
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(&ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "aws",
    ));
    let api = serve.api();

    // Listening before anything happens: one stream per job, one per thing.
    let mut by_job = Events::open(&serve, "job=ota", None).await;
    let mut by_thing = Events::open(&serve, "thing=lamp-1", None).await;
    let devices = vec![
        device(&broker, "lamp-1").await,
        device(&broker, "lamp-2").await,
    ];

    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": "ota", "targets": {"thingNames": ["lamp-1", "lamp-2"]},
                    "document": {"firmware": "2.1"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let job = api.get_ok("/api/v1/jobs/ota").await;
        if job["status"] == "COMPLETED" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not complete: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The execution's history: queued, started, succeeded, in order.
    let exec_path = "/api/v1/jobs/ota/things/lamp-1/history";
    let page = api.get_ok(exec_path).await;
    let exec = page["items"].as_array().unwrap().clone();
    assert_eq!(
        types(&exec),
        ["ExecutionQueued", "ExecutionStarted", "ExecutionFinished"],
        "{page}"
    );
    assert_eq!(page.get("nextToken"), None, "{page}");
    assert_eq!(exec[2]["details"]["status"], "SUCCEEDED", "{page}");
    assert_eq!(exec[0]["details"]["thing"], "lamp-1", "{page}");
    let exec_positions = positions(&exec);
    assert!(
        exec_positions.windows(2).all(|w| w[0] < w[1]),
        "{exec_positions:?}"
    );
    let versions: Vec<u64> = exec
        .iter()
        .map(|i| i["streamVersion"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    // Pages of one walk the same items.
    assert_eq!(walk(&api, exec_path, 1).await, exec);
    assert_eq!(walk(&api, exec_path, 2).await, exec);

    // The job's own history.
    let job_history = walk(&api, "/api/v1/jobs/ota/history", 100).await;
    assert_eq!(
        types(&job_history),
        ["JobCreated", "JobStarted", "JobCompleted"],
        "{job_history:#?}"
    );

    // A command, answered by the device.
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": "lamp-1", "action": "reboot", "ttl": 30}),
        )
        .await;
    assert!(status == 200 || status == 201, "{status}: {body}");
    assert_eq!(body["status"], "SUCCEEDED", "{body}");
    let command = body["executionId"].as_str().unwrap();
    let cmd_history = walk(&api, &format!("/api/v1/commands/{command}/history"), 1).await;
    assert_eq!(
        types(&cmd_history),
        ["CommandSent", "CommandResponded"],
        "{cmd_history:#?}"
    );
    assert_eq!(cmd_history[0]["details"]["action"], "reboot");
    assert_eq!(
        cmd_history[1]["details"]["result"],
        json!({"echo": {"s": "reboot"}})
    );

    // Streams that were never written are 404.
    for path in [
        "/api/v1/jobs/ota/things/lamp-9/history",
        "/api/v1/jobs/nope/history",
        "/api/v1/commands/nope/history",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["code"], "ResourceNotFound", "{body}");
    }

    // Live, filtered by job: every event of the job and its executions, in feed order.
    let live = by_job.until(|m| m.event == "JobCompleted").await;
    assert_eq!(live[0].event, "JobCreated", "{live:#?}");
    assert!(live.windows(2).all(|w| w[0].id < w[1].id), "{live:#?}");
    for m in &live {
        assert_eq!(m.data["jobId"], "ota", "{m:?}");
        assert_eq!(m.data["position"], m.id, "{m:?}");
        assert_eq!(m.data["type"], m.event.as_str(), "{m:?}");
    }
    let live_lamp1: Vec<u64> = live
        .iter()
        .filter(|m| m.data["thingName"] == "lamp-1")
        .map(|m| m.id)
        .collect();
    assert_eq!(live_lamp1, exec_positions, "the same events as the history");
    let live_job: Vec<u64> = live
        .iter()
        .filter(|m| m.data["stream"] == "job/ota")
        .map(|m| m.id)
        .collect();
    assert_eq!(live_job, positions(&job_history));
    assert_eq!(
        live.iter()
            .filter(|m| m.data["thingName"] == "lamp-2")
            .count(),
        3,
        "lamp-2's execution too: {live:#?}"
    );
    // Filtered by thing: exactly lamp-1's execution, nothing of lamp-2 or the job's stream.
    let mine = by_thing.until(|m| m.event == "ExecutionFinished").await;
    let ids: Vec<u64> = mine.iter().map(|m| m.id).collect();
    assert_eq!(ids, exec_positions, "{mine:#?}");
    assert!(mine.iter().all(|m| m.data["stream"] == "exec/ota/lamp-1"));

    // Reconnecting with Last-Event-ID gets exactly the events after that id, then nothing.
    let resume_after = live[0].id;
    let mut resumed = Events::open(&serve, "job=ota", Some(resume_after)).await;
    let mut again = Vec::new();
    while let Some(m) = resumed.next(Duration::from_secs(2)).await {
        again.push(m);
    }
    assert_eq!(again, live[1..].to_vec(), "no event skipped or repeated");

    // A bad filter is refused before the stream starts.
    let (status, body) = api.get("/api/v1/events?kind=bogus").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "InvalidRequest", "{body}");
    let (status, body) = api.get("/api/v1/events?thing=no%20spaces").await;
    assert_eq!(status, 400, "{body}");

    assert_eq!(
        serve.terminate().code(),
        Some(0),
        "a clean stop with event streams open:\n{}",
        serve.log()
    );
    for d in devices {
        d.abort();
    }
}
