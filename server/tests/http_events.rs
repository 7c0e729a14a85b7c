//! Histories and the live event stream over real HTTP against `fleetops serve` in-process
//! on a private mosquitto and sled on disk: pages, tokens and refusals of the history routes;
//! the Server-Sent Events stream's format, filters, resume, cap and shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{broker, options, silent_devices, Running, TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// One Server-Sent Events message.
#[derive(Debug, Clone)]
struct Message {
    id: u64,
    event: String,
    data: Value,
}

/// A connected event stream, parsed as it arrives.
struct EventStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// Opens `path` with `headers`; panics unless it answers 200 with an event stream.
    async fn open(server: &Running, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = server.client.get(server.url(path)).bearer_auth(TOKEN);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("request sent");
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        assert!(common::is_event_stream(&response), "GET {path}: not SSE");
        Self {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next message within `limit`; `None` when none came or the stream ended.
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

    /// Whether the server ends the stream within `limit` (whatever it still sends first).
    async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next message, which must come within 10 s.
    async fn expect(&mut self) -> Message {
        self.next(Duration::from_secs(10))
            .await
            .expect("a message within 10 s")
    }
}

/// A message block; `None` for comments (keep-alives).
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
    let id = id?;
    Some(Message {
        id,
        event: event.expect("every message names its event"),
        data: serde_json::from_str(&data).expect("data is JSON"),
    })
}

async fn send_command(server: &Running, thing: &str) -> String {
    let (s, body) = server
        .post(
            "/api/v1/commands",
            json!({"thingName": thing, "action": "reboot", "ttl": 600}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body["executionId"].as_str().unwrap().to_owned()
}

async fn cancel_command(server: &Running, id: &str) {
    let (s, body) = server
        .post(&format!("/api/v1/commands/{id}/cancel"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[track_caller]
fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["code"], code, "{}", answer.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_page_through_a_stream_and_refuse_what_they_cannot_serve() {
    let broker = broker();
    let _devices = silent_devices(&broker, &["t0", "t1", "t2", "t3"]).await;
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;

    // A command nobody answers, then canceled: two events on its stream.
    let id = send_command(&server, "t1").await;
    cancel_command(&server, &id).await;
    let path = format!("/api/v1/commands/{id}/history");
    let (s, page) = server.get(&path).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(page.get("nextToken"), None, "one page: {page}");
    let types: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["CommandSent", "CommandCanceled"], "{page}");
    let sent = &items[0];
    assert_eq!(sent["streamVersion"], 1);
    assert_eq!(items[1]["streamVersion"], 2);
    assert!(sent["position"].as_u64().unwrap() < items[1]["position"].as_u64().unwrap());
    assert_eq!(sent["details"]["action"], "reboot", "{sent}");
    assert_eq!(sent["details"]["executionId"], id.as_str(), "{sent}");
    assert_eq!(
        sent["details"].get("type"),
        None,
        "the tag is `type`, not a detail"
    );
    assert!(
        uuid_like(sent["eventId"].as_str().unwrap()),
        "eventId is a UUID: {sent}"
    );
    // Epoch seconds, as every time of the API: now, give or take, not milliseconds.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = sent["recordedAt"].as_u64().unwrap();
    assert!(at.abs_diff(now) < 600, "recordedAt {at} is epoch seconds");

    // Pages of one walk the same items, with a token until the last.
    let mut walked = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let url = match &token {
            Some(t) => format!("{path}?limit=1&nextToken={t}"),
            None => format!("{path}?limit=1"),
        };
        let (s, page) = server.get(&url).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        walked.push(page["items"][0].clone());
        match page.get("nextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
        assert!(walked.len() < 10, "the token does not advance");
    }
    assert_eq!(&walked, items);

    // A job's own stream and its execution's.
    let (s, job) = server
        .post(
            "/api/v1/jobs",
            json!({"jobId": "fw", "targets": {"thingNames": ["t1"]}, "document": {"v": 2}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exec = loop {
        let (s, page) = server.get("/api/v1/jobs/fw/things/t1/history").await;
        if s == StatusCode::OK {
            break page;
        }
        assert_eq!(s, StatusCode::NOT_FOUND, "{page}");
        assert!(Instant::now() < deadline, "the execution was never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exec["items"][0]["type"], "ExecutionQueued", "{exec}");
    assert_eq!(exec["items"][0]["details"]["thing"], "t1", "{exec}");
    let job = server.get("/api/v1/jobs/fw/history").await.1;
    assert_eq!(job["items"][0]["type"], "JobCreated", "{job}");
    assert_eq!(
        job["items"][0]["details"]["document"],
        json!({"v": 2}),
        "{job}"
    );

    // Streams never written are 404, whatever their kind.
    for missing in [
        "/api/v1/commands/nope/history",
        "/api/v1/jobs/nope/history",
        "/api/v1/jobs/fw/things/nobody/history",
    ] {
        refused(
            &server.get(missing).await,
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
        );
    }
    // Bad paging is 400 and names the parameter.
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "nextToken=",
        "nextToken=abc",
        "nextToken=-1",
        "nextToken=12345678901234567890",
        "other=1",
    ] {
        let answer = server.get(&format!("{path}?{bad}")).await;
        refused(&answer, StatusCode::BAD_REQUEST, "InvalidRequest");
    }
    // A bad id is 400, before the store is asked.
    refused(
        &server.get("/api/v1/jobs/fw/things/a.b/history").await,
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
    );
    // And every route needs the token.
    let (s, _, _) = server
        .raw(Method::GET, &path, &[], reqwest::Body::from(""))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    server.shutdown().await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_stored_events_live_filtered_and_resumes_after_an_id() {
    let broker = broker();
    let _devices = silent_devices(&broker, &["t0", "t1", "t2", "t3"]).await;
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    // Something stored before anyone listens: not sent to streams that start at the head.
    let before = send_command(&server, "t0").await;

    let mut commands = EventStream::open(&server, "/api/v1/events?kind=command", &[]).await;
    let mut job = EventStream::open(&server, "/api/v1/events?job=fw", &[]).await;
    let health = server.get("/healthz").await.1;
    assert_eq!(health["eventClients"], 2, "{health}");
    let metrics = server.get("/metrics").await.1;
    let metrics = metrics.as_str().expect("text");
    assert!(
        metrics.lines().any(|l| l == "fleetops_event_clients 2"),
        "{metrics}"
    );

    let id = send_command(&server, "t1").await;
    let sent = commands.expect().await;
    assert_eq!(sent.event, "CommandSent");
    assert_eq!(sent.data["type"], "CommandSent");
    assert_eq!(sent.data["position"], sent.id, "the id is the position");
    assert_eq!(sent.data["stream"], format!("cmd/{id}"));
    assert_eq!(sent.data["executionId"], id.as_str());
    assert_eq!(sent.data["streamVersion"], 1);
    assert_eq!(sent.data["details"]["thing"], "t1");
    assert_ne!(sent.data["executionId"], before.as_str());
    cancel_command(&server, &id).await;
    let canceled = commands.expect().await;
    assert_eq!(canceled.event, "CommandCanceled");
    assert!(canceled.id > sent.id);

    // A job: the job stream's client gets its events; the commands client gets none.
    let (s, body) = server
        .post(
            "/api/v1/jobs",
            json!({"jobId": "fw", "targets": {"thingNames": ["t1"]}, "document": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let created = job.expect().await;
    assert_eq!(created.event, "JobCreated");
    assert_eq!(created.data["jobId"], "fw");
    assert_eq!(created.data["stream"], "job/fw");
    assert_eq!(created.data.get("thingName"), None);
    let mut saw_queued = false;
    while let Some(m) = job.next(Duration::from_secs(5)).await {
        assert_eq!(m.data["jobId"], "fw", "{m:?}");
        if m.event == "ExecutionQueued" {
            assert_eq!(m.data["stream"], "exec/fw/t1");
            assert_eq!(m.data["thingName"], "t1");
            saw_queued = true;
            break;
        }
    }
    assert!(saw_queued, "the execution's events reach the job's stream");
    let second = send_command(&server, "t2").await;
    let next = commands.expect().await;
    assert_eq!(next.event, "CommandSent", "job events were filtered out");
    assert_eq!(next.data["executionId"], second.as_str());

    // Reconnecting after the first message gets exactly what followed, in order.
    let first = sent.id.to_string();
    let mut resumed = EventStream::open(
        &server,
        "/api/v1/events?kind=command&from=0",
        &[("Last-Event-ID", &first)],
    )
    .await;
    let a = resumed.expect().await;
    let b = resumed.expect().await;
    assert_eq!((a.id, a.event.as_str()), (canceled.id, "CommandCanceled"));
    assert_eq!((b.id, b.event.as_str()), (next.id, "CommandSent"));
    assert!(
        resumed.next(Duration::from_millis(500)).await.is_none(),
        "nothing more, nothing repeated"
    );
    // `from` alone starts after that position: from 0 replays the first command too.
    let mut replay = EventStream::open(&server, "/api/v1/events?kind=command&from=0", &[]).await;
    let oldest = replay.expect().await;
    assert_eq!(oldest.data["executionId"], before.as_str());
    // And the resumed stream stays live.
    let third = send_command(&server, "t3").await;
    assert_eq!(resumed.expect().await.data["executionId"], third.as_str());

    // Bad values are refused before anything streams.
    for bad in [
        "kind=nope",
        "job=a.b",
        "thing=",
        "thing=a%20b",
        "from=-1",
        "from=x",
        "other=1",
    ] {
        let answer = server.get(&format!("/api/v1/events?{bad}")).await;
        refused(&answer, StatusCode::BAD_REQUEST, "InvalidRequest");
    }
    for bad in ["abc", "-1", "1 2", "12345678901234567890"] {
        let answer = server
            .call_with_header(Method::GET, "/api/v1/events", ("Last-Event-ID", bad), None)
            .await;
        refused(&answer, StatusCode::BAD_REQUEST, "InvalidRequest");
    }
    let (s, _, _) = server
        .raw(Method::GET, "/api/v1/events", &[], reqwest::Body::from(""))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Open streams end when the server stops, so the shutdown is not held up.
    server.shutdown().await;
    assert!(commands.ends_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_64_event_streams_are_served_at_once() {
    let broker = broker();
    let _devices = silent_devices(&broker, &["t0", "t1", "t2", "t3"]).await;
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let mut open = Vec::new();
    for _ in 0..fleetops_server::http::MAX_EVENT_CLIENTS {
        open.push(EventStream::open(&server, "/api/v1/events", &[]).await);
    }
    let over = server.get("/api/v1/events").await;
    refused(&over, StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
    assert!(
        over.1["message"].as_str().unwrap().contains("64"),
        "{}",
        over.1
    );

    // One client goes; the server notices at its next write (an event here) and frees the
    // place.
    drop(open.pop());
    send_command(&server, "t1").await;
    for s in &mut open {
        assert_eq!(s.expect().await.event, "CommandSent");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = server.get("/healthz").await;
        if s == StatusCode::OK && body["eventClients"] == 63 {
            break;
        }
        assert!(Instant::now() < deadline, "the place was not freed: {body}");
        // A write into a closed connection may pass once before one fails: write more.
        send_command(&server, "t1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open.push(EventStream::open(&server, "/api/v1/events", &[]).await);
    server.shutdown().await;
}
