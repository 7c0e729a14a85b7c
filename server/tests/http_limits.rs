//! Limits at the door and the transport's protection, over real HTTP against `fleetops serve`
//! in-process (and once as the real binary) on a private mosquitto and sled on disk:
//!
//! - every documented limit, from both sides: just under is accepted, just over is refused
//!   with the documented status and code, and a refusal changes nothing;
//! - `server/openapi.json` agrees with the server: every string constraint it states for a
//!   path, query or body value is probed with values generated from the document itself;
//! - the header-read timeout, the connection cap, the bearer scheme in any case;
//! - plain logs when stderr is not a terminal.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{broker, listening_line, options, silent_devices, Running, TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Asserts a refusal with `status` and `code` whose message names `field`.
#[track_caller]
fn refused(answer: &(StatusCode, Value), status: StatusCode, code: &str, field: &str) {
    let (s, body) = answer;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(field),
        "message does not name {field}: {body}"
    );
}

#[track_caller]
fn accepted(answer: &(StatusCode, Value), status: StatusCode) {
    assert_eq!(answer.0, status, "{}", answer.1);
}

/// A JSON object of exactly `bytes` bytes of compact JSON.
fn object_of(bytes: usize) -> Value {
    let v = json!({ "x": "a".repeat(bytes - 8) });
    assert_eq!(v.to_string().len(), bytes);
    v
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Far enough ahead that a job created with it stays SCHEDULED: no executions are queued.
fn later() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400
}

fn scheduled_job(targets: Value, document: Value) -> Value {
    json!({
        "targets": targets,
        "document": document,
        "schedulingConfig": {"startTime": later()},
    })
}

/// The limits of stages, maintenance windows and pause comments, from both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_control_limits_hold_from_both_sides() {
    use fleetops_core::config::{MAX_STAGES, MAX_STAGE_NAMES, MAX_WINDOWS};
    use fleetops_core::cron::MAX_WINDOW_MINUTES;
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (ok, bad) = (StatusCode::CREATED, StatusCode::BAD_REQUEST);
    let post_job = |body: Value| {
        let server = &server;
        async move { server.call(Method::POST, "/api/v1/jobs", Some(&body)).await }
    };
    let staged = |stages: Value| {
        let mut body = scheduled_job(json!({"thingNames": ["t1"]}), json!({}));
        body["stagedRolloutConfig"] = json!({"stages": stages});
        body
    };
    let windowed = |windows: Value| {
        let mut body = scheduled_job(json!({"thingNames": ["t1"]}), json!({}));
        body["schedulingConfig"]["maintenanceWindows"] = windows;
        body
    };
    let pct = |p: u32| json!({"percentage": p, "successThresholdPercentage": 90});

    // Stages: how many, names per stage, percentages in all.
    let ten: Vec<Value> = (0..MAX_STAGES).map(|_| pct(10)).collect();
    accepted(&post_job(staged(json!(ten))).await, ok);
    let eleven: Vec<Value> = (0..=MAX_STAGES).map(|_| pct(1)).collect();
    refused(
        &post_job(staged(json!(eleven))).await,
        bad,
        "InvalidRequest",
        "stages",
    );
    let named = |n: usize| json!([{"thingNames": names("t", n), "successThresholdPercentage": 90}]);
    accepted(&post_job(staged(named(MAX_STAGE_NAMES))).await, ok);
    refused(
        &post_job(staged(named(MAX_STAGE_NAMES + 1))).await,
        bad,
        "InvalidRequest",
        "thingNames",
    );
    accepted(&post_job(staged(json!([pct(60), pct(40)]))).await, ok);
    refused(
        &post_job(staged(json!([pct(60), pct(41)]))).await,
        bad,
        "InvalidRequest",
        "percentage",
    );
    refused(
        &post_job(staged(json!([{"percentage": 5, "thingNames": ["t1"],
                                  "successThresholdPercentage": 90}])))
        .await,
        bad,
        "InvalidRequest",
        "stages[0]",
    );
    refused(
        &post_job(staged(json!([]))).await,
        bad,
        "InvalidRequest",
        "stages",
    );
    let mut continuous = staged(json!([pct(10)]));
    continuous["targetSelection"] = json!("CONTINUOUS");
    refused(&post_job(continuous).await, bad, "InvalidRequest", "stages");

    // Windows: how many, how long, a valid expression and zone.
    let window = |expr: &str, minutes: u32, tz: &str| json!({"startTime": expr, "durationInMinutes": minutes, "timeZone": tz});
    let w = |n: usize| {
        json!((0..n)
            .map(|_| window("0 2 * * *", 60, "UTC"))
            .collect::<Vec<_>>())
    };
    accepted(&post_job(windowed(w(MAX_WINDOWS))).await, ok);
    refused(
        &post_job(windowed(w(MAX_WINDOWS + 1))).await,
        bad,
        "InvalidRequest",
        "maintenanceWindows",
    );
    let long = |m| json!([window("0 2 * * *", m, "-08:00")]);
    accepted(&post_job(windowed(long(MAX_WINDOW_MINUTES))).await, ok);
    refused(
        &post_job(windowed(long(MAX_WINDOW_MINUTES + 1))).await,
        bad,
        "InvalidRequest",
        "durationInMinutes",
    );
    for (expr, tz, field) in [
        ("0 2 * *", "UTC", "maintenanceWindows[0].startTime"),
        ("61 2 * * *", "UTC", "maintenanceWindows[0].startTime"),
        ("0 0 30 2 *", "UTC", "maintenanceWindows[0].startTime"),
        (
            "0 2 * * *",
            "Europe/Paris",
            "maintenanceWindows[0].timeZone",
        ),
        ("0 2 * * *", "+14:01", "maintenanceWindows[0].timeZone"),
    ] {
        refused(
            &post_job(windowed(json!([window(expr, 60, tz)]))).await,
            bad,
            "InvalidRequest",
            field,
        );
    }

    // Pause comments, on a running job; a refused pause changes nothing.
    let (s, job) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(&json!({"jobId": "running", "targets": {"thingNames": ["t1"]}, "document": {}})),
        )
        .await;
    assert_eq!(s, ok, "{job}");
    let pause = |comment: String| {
        let server = &server;
        async move {
            server
                .call(
                    Method::POST,
                    "/api/v1/jobs/running/pause",
                    Some(&json!({"comment": comment})),
                )
                .await
        }
    };
    refused(
        &pause("c".repeat(2049)).await,
        bad,
        "InvalidRequest",
        "comment",
    );
    let (_, job) = server.get("/api/v1/jobs/running").await;
    assert!(job["paused"].is_null(), "{job}");
    accepted(&pause("c".repeat(2048)).await, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_limit_holds_from_both_sides() {
    use fleetops_core::limits::*;
    let broker = broker();
    let _devices = silent_devices(&broker, &["t1"]).await;
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let (ok, bad) = (StatusCode::CREATED, StatusCode::BAD_REQUEST);
    let post_job = |body: Value| {
        let server = &server;
        async move { server.call(Method::POST, "/api/v1/jobs", Some(&body)).await }
    };
    let one = json!({"thingNames": ["t1"]});
    let mut created = 0;

    // Job document, in bytes of compact JSON.
    accepted(
        &post_job(scheduled_job(
            one.clone(),
            object_of(MAX_JOB_DOCUMENT_BYTES),
        ))
        .await,
        ok,
    );
    created += 1;
    refused(
        &post_job(scheduled_job(
            one.clone(),
            object_of(MAX_JOB_DOCUMENT_BYTES + 1),
        ))
        .await,
        bad,
        "InvalidRequest",
        "document",
    );

    // Targets: things and groups together.
    let at = json!({"thingNames": names("t", MAX_JOB_TARGETS - 1), "thingGroupNames": ["g"]});
    accepted(&post_job(scheduled_job(at, json!({}))).await, ok);
    created += 1;
    let over = json!({"thingNames": names("t", MAX_JOB_TARGETS), "thingGroupNames": ["g"]});
    refused(
        &post_job(scheduled_job(over, json!({}))).await,
        bad,
        "InvalidRequest",
        "targets",
    );
    let over = json!({"thingNames": names("t", MAX_JOB_TARGETS + 1)});
    refused(
        &post_job(scheduled_job(over, json!({}))).await,
        bad,
        "InvalidRequest",
        "targets",
    );

    // Job id and description (characters: two bytes each here).
    let mut body = scheduled_job(one.clone(), json!({}));
    body["jobId"] = json!("j".repeat(64));
    body["description"] = json!("é".repeat(2048));
    accepted(&post_job(body.clone()).await, ok);
    created += 1;
    body["jobId"] = json!("j".repeat(65));
    refused(&post_job(body.clone()).await, bad, "InvalidJson", "jobId");
    body["jobId"] = json!("k");
    body["description"] = json!("é".repeat(2049));
    refused(&post_job(body).await, bad, "InvalidRequest", "description");

    // Cancel comment.
    let cancel = |comment: String| {
        let server = &server;
        async move {
            let path = format!("/api/v1/jobs/{}/cancel", "j".repeat(64));
            let body = json!({ "comment": comment });
            server.call(Method::POST, &path, Some(&body)).await
        }
    };
    refused(
        &cancel("é".repeat(2049)).await,
        bad,
        "InvalidRequest",
        "comment",
    );
    accepted(&cancel("é".repeat(2048)).await, StatusCode::OK);

    // Refusals changed nothing: exactly the accepted jobs exist.
    let (_, jobs) = server.call(Method::GET, "/api/v1/jobs", None).await;
    assert_eq!(jobs["items"].as_array().unwrap().len(), created, "{jobs}");

    // Commands: params (bytes of JSON), action (bytes), commandId, cancel reason.
    let send = |params: Value, action: String, command_id: Option<String>| {
        let server = &server;
        async move {
            let mut body =
                json!({"thingName": "t1", "action": action, "params": params, "ttl": 86400});
            if let Some(id) = command_id {
                body["commandId"] = json!(id);
            }
            server
                .call(Method::POST, "/api/v1/commands", Some(&body))
                .await
        }
    };
    let a = || "a".to_string();
    accepted(
        &send(object_of(MAX_COMMAND_PARAMS_BYTES), a(), None).await,
        ok,
    );
    refused(
        &send(object_of(MAX_COMMAND_PARAMS_BYTES + 1), a(), None).await,
        bad,
        "InvalidRequest",
        "params",
    );
    accepted(
        &send(json!({}), "é".repeat(MAX_COMMAND_ACTION_LEN), None).await,
        ok,
    );
    refused(
        &send(json!({}), "a".repeat(MAX_COMMAND_ACTION_LEN + 1), None).await,
        bad,
        "InvalidRequest",
        "action",
    );
    refused(
        &send(json!({}), String::new(), None).await,
        bad,
        "InvalidRequest",
        "action",
    );
    let sent = send(json!({}), a(), Some("c".repeat(MAX_COMMAND_ID_LEN))).await;
    accepted(&sent, ok);
    for bad_id in [
        "c".repeat(MAX_COMMAND_ID_LEN + 1),
        String::new(),
        "a.b".into(),
    ] {
        refused(
            &send(json!({}), a(), Some(bad_id)).await,
            bad,
            "InvalidRequest",
            "commandId",
        );
    }
    let (_, commands) = server.call(Method::GET, "/api/v1/commands", None).await;
    assert_eq!(commands["items"].as_array().unwrap().len(), 3, "{commands}");
    let cancel_path = format!(
        "/api/v1/commands/{}/cancel",
        sent.1["executionId"].as_str().unwrap()
    );
    refused(
        &server
            .call(
                Method::POST,
                &cancel_path,
                Some(&json!({"reason": "é".repeat(1025)})),
            )
            .await,
        bad,
        "InvalidRequest",
        "reason",
    );
    accepted(
        &server
            .call(
                Method::POST,
                &cancel_path,
                Some(&json!({"reason": "é".repeat(1024)})),
            )
            .await,
        StatusCode::OK,
    );

    // Groups: description, members per request, members in all.
    let put = |name: &str, body: Value| {
        let server = &server;
        let path = format!("/api/v1/thing-groups/{name}");
        async move { server.call(Method::PUT, &path, Some(&body)).await }
    };
    refused(
        &put("g1", json!({"description": "é".repeat(2049)})).await,
        bad,
        "InvalidRequest",
        "description",
    );
    refused(
        &put("g1", json!({"thingNames": names("m", 10_001)})).await,
        bad,
        "InvalidRequest",
        "thingNames",
    );
    // Neither refusal created the group.
    let (status, _) = server
        .call(Method::GET, "/api/v1/thing-groups/g1", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    accepted(
        &put(
            "g1",
            json!({"description": "é".repeat(2048), "thingNames": names("m", 10_000)}),
        )
        .await,
        ok,
    );
    let members = |things: Vec<String>| {
        let server = &server;
        async move {
            let body = json!({ "thingNames": things });
            server
                .call(Method::PUT, "/api/v1/thing-groups/g1/members", Some(&body))
                .await
        }
    };
    refused(
        &members(names("over", 10_001)).await,
        bad,
        "InvalidRequest",
        "thingNames",
    );
    for chunk in 1..MAX_GROUP_MEMBERS / 10_000 {
        let things: Vec<String> = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| format!("m{i}"))
            .collect();
        accepted(&members(things).await, StatusCode::OK);
    }
    // Full: one more is refused, one already there is not a change.
    refused(
        &members(vec!["one-more".into()]).await,
        bad,
        "InvalidRequest",
        "thingNames",
    );
    let (_, group) = server
        .call(Method::GET, "/api/v1/thing-groups/g1", None)
        .await;
    assert_eq!(group["numberOfThings"], MAX_GROUP_MEMBERS, "{group}");
    accepted(&members(vec!["m0".into()]).await, StatusCode::OK);

    // Listings: limit and nextToken.
    for (query, status) in [
        ("limit=1000", StatusCode::OK),
        ("limit=1001", bad),
        ("limit=0", bad),
        (&*format!("nextToken={}", "t".repeat(128)), StatusCode::OK),
        (&*format!("nextToken={}", "t".repeat(129)), bad),
        ("nextToken=", bad),
    ] {
        let (s, body) = server
            .call(Method::GET, &format!("/api/v1/jobs?{query}"), None)
            .await;
        assert_eq!(s, status, "{query}: {body}");
    }

    // The body limit (1 MiB by default): whitespace pads a valid body to exactly the limit.
    let limit = fleetops_server::config::DEFAULT_MAX_BODY_BYTES;
    let body = json!({"thingName": "t1", "action": "pad"}).to_string();
    let padded = |len: usize| format!("{body}{}", " ".repeat(len - body.len()));
    let raw = |text: String| {
        server
            .client
            .post(format!("{}/api/v1/commands", server.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(text)
            .send()
    };
    assert_eq!(raw(padded(limit)).await.unwrap().status(), ok);
    let over = raw(padded(limit + 1)).await.unwrap();
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let over: Value = over.json().await.unwrap();
    assert_eq!(over["code"], "PayloadTooLarge");

    // The latest start and end times the document allows are accepted, and the runtime
    // keeps working with a deadline that far ahead.
    let max_secs = u64::MAX / 1000;
    for scheduling in [
        json!({"startTime": max_secs}),
        json!({"endTime": max_secs}),
        json!({"startTime": max_secs - 1, "endTime": max_secs}),
    ] {
        let body = json!({"targets": one, "document": {}, "schedulingConfig": scheduling});
        accepted(&post_job(body).await, ok);
    }
    let body =
        json!({"targets": one, "document": {}, "schedulingConfig": {"startTime": max_secs + 1}});
    refused(&post_job(body).await, bad, "InvalidJson", "startTime");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, health) = server.call(Method::GET, "/healthz", None).await;
    assert_eq!(s, StatusCode::OK, "{health}");
    accepted(&send(json!({}), a(), None).await, ok);

    // null is not a value of any optional field, and description is a string.
    for description in [json!(null), json!(5), json!(["x"])] {
        let mut job = scheduled_job(one.clone(), json!({}));
        job["description"] = description.clone();
        refused(&post_job(job).await, bad, "InvalidJson", "description");
        refused(
            &put("g2", json!({ "description": description })).await,
            bad,
            "InvalidJson",
            "description",
        );
    }
    server.shutdown().await;
}

// ---- the OpenAPI document against the server ---------------------------------------------------

/// The document with `$ref`s followed and `allOf`s merged, one schema at a time.
struct Doc(Value);

impl Doc {
    fn load() -> Self {
        Self(serde_json::from_str(fleetops_server::http::OPENAPI_JSON).expect("valid JSON"))
    }

    fn resolve(&self, schema: &Value) -> Value {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/components/schemas/").expect("local ref");
            return self.resolve(&self.0["components"]["schemas"][name]);
        }
        let mut out = schema.clone();
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            let obj = out.as_object_mut().unwrap();
            obj.remove("allOf");
            for part in all {
                for (k, v) in self.resolve(part).as_object().unwrap() {
                    obj.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        out
    }
}

/// What the document says about one string value.
#[derive(Debug, Clone)]
struct StringRule {
    min: usize,
    max: Option<usize>,
    /// The allowed characters when a pattern `^[…]+$` restricts them.
    alphabet: Option<Vec<char>>,
}

impl StringRule {
    fn of(schema: &Value) -> Option<Self> {
        if schema.get("type") != Some(&json!("string")) {
            return None;
        }
        let min = schema.get("minLength").and_then(Value::as_u64);
        let max = schema.get("maxLength").and_then(Value::as_u64);
        let pattern = schema.get("pattern").and_then(Value::as_str);
        if min.is_none() && max.is_none() && pattern.is_none() {
            return None;
        }
        let alphabet = pattern.map(|p| {
            let class = p
                .strip_prefix("^[")
                .and_then(|p| p.strip_suffix("]+$"))
                .unwrap_or_else(|| panic!("this test reads only `^[...]+$` patterns: {p}"));
            char_class(class)
        });
        Some(Self {
            min: min.unwrap_or(0) as usize,
            max: max.map(|m| m as usize),
            alphabet,
        })
    }

    fn good_char(&self) -> char {
        self.alphabet.as_ref().map_or('a', |a| a[0])
    }

    /// Values the document allows: the shortest and the longest.
    fn valid(&self) -> Vec<String> {
        let c = self.good_char().to_string();
        let mut out = vec![c.repeat(self.min.max(1))];
        if let Some(max) = self.max {
            out.push(c.repeat(max));
        }
        out
    }

    /// Values the document forbids, each with what it breaks.
    fn invalid(&self) -> Vec<(String, &'static str)> {
        let c = self.good_char().to_string();
        let mut out = Vec::new();
        if self.min > 0 {
            out.push((c.repeat(self.min - 1), "minLength"));
        }
        if let Some(max) = self.max {
            out.push((c.repeat(max + 1), "maxLength"));
        }
        if let Some(alphabet) = &self.alphabet {
            let outside = [' ', '/', '.', '+', '#', '%', '?', 'é', '$', '*']
                .into_iter()
                .find(|c| !alphabet.contains(c))
                .expect("a character outside the alphabet");
            out.push((format!("{c}{outside}{c}"), "pattern"));
        }
        out
    }
}

/// The characters of a regex character class body such as `a-zA-Z0-9:_-`.
fn char_class(class: &str) -> Vec<char> {
    let chars: Vec<char> = class.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        assert_ne!(chars[i], '\\', "escapes are not read by this test: {class}");
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            out.extend(chars[i]..=chars[i + 2]);
            i += 3;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters, for paths and query values.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One step into a request body: a property, or the (single) item of an array.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Item,
}

/// Visits every value of `schema` with where it sits: its properties, and the (single) item
/// of its arrays when `into_items`.
fn walk(
    doc: &Doc,
    schema: &Value,
    at: Vec<Step>,
    into_items: bool,
    visit: &mut dyn FnMut(&[Step], &Value),
) {
    let schema = doc.resolve(schema);
    visit(&at, &schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let mut next = at.clone();
            next.push(Step::Key(k.clone()));
            walk(doc, v, next, into_items, visit);
        }
    }
    if let Some(items) = schema.get("items").filter(|_| into_items) {
        let mut next = at;
        next.push(Step::Item);
        walk(doc, items, next, into_items, visit);
    }
}

/// Every string value in `schema` with a rule, by where it sits.
fn body_strings(doc: &Doc, schema: &Value) -> Vec<(Vec<Step>, StringRule)> {
    let mut out = Vec::new();
    walk(doc, schema, Vec::new(), true, &mut |at, s| {
        if let Some(rule) = StringRule::of(s) {
            out.push((at.to_vec(), rule));
        }
    });
    out
}

/// Every `type: string` property of `schema` (not array items), for the type checks.
fn string_typed(doc: &Doc, schema: &Value) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    walk(doc, schema, Vec::new(), false, &mut |at, s| {
        if s.get("type") == Some(&json!("string")) && !at.is_empty() {
            out.push(at.to_vec());
        }
    });
    out
}

/// A numeric bound the document states for one body value.
#[derive(Debug, Clone)]
struct NumberRule {
    integer: bool,
    min: Option<f64>,
    max: Option<f64>,
}

impl NumberRule {
    fn of(schema: &Value) -> Option<Self> {
        let integer = match schema.get("type").and_then(Value::as_str) {
            Some("integer") => true,
            Some("number") => false,
            _ => return None,
        };
        let min = schema.get("minimum").and_then(Value::as_f64);
        let max = schema.get("maximum").and_then(Value::as_f64);
        (min.is_some() || max.is_some()).then_some(Self { integer, min, max })
    }

    fn value(&self, x: f64) -> Value {
        if self.integer {
            json!(x as u64)
        } else {
            json!(x)
        }
    }

    fn valid(&self) -> Vec<Value> {
        [self.min, self.max]
            .into_iter()
            .flatten()
            .map(|x| self.value(x))
            .collect()
    }

    fn invalid(&self) -> Vec<(Value, &'static str)> {
        let step = if self.integer { 1.0 } else { 0.1 };
        let mut out = Vec::new();
        // Below a minimum of 0 an integer is negative: refused as the wrong type, which is
        // still a refusal.
        if let Some(min) = self.min {
            out.push((json!(min - step), "minimum"));
        }
        if let Some(max) = self.max {
            let over = if self.integer {
                json!(max as u64 + 1)
            } else {
                json!(max + step)
            };
            out.push((over, "maximum"));
        }
        out
    }
}

/// Every number with a bound in `schema`, by where it sits (values under `oneOf`, such as
/// the start and end times, are left to the limits test).
fn body_numbers(doc: &Doc, schema: &Value) -> Vec<(Vec<Step>, NumberRule)> {
    let mut out = Vec::new();
    walk(doc, schema, Vec::new(), true, &mut |at, s| {
        if let Some(rule) = NumberRule::of(s) {
            out.push((at.to_vec(), rule));
        }
    });
    out
}

/// The smallest value the document allows for `schema`: required properties only, each at
/// its minimum or first enum value (or the document's `example`). `toward` is where a probe will be set inside it: where an
/// object says "exactly one of" (`oneOf` of `required`), the branch naming the probed
/// property is taken, so the probe does not collide with another branch.
fn example(doc: &Doc, schema: &Value, toward: &[Step]) -> Value {
    let schema = doc.resolve(schema);
    // A value whose syntax no length or pattern states (a cron expression) has an example.
    if let Some(example) = schema.get("example") {
        return example.clone();
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.get(0)) {
        return first.clone();
    }
    if let Some(rule) = StringRule::of(&schema) {
        return json!(rule.valid()[0]);
    }
    let next_key = match toward.first() {
        Some(Step::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let names = |r: Option<&Value>| -> Vec<String> {
                r.and_then(Value::as_array)
                    .map(|r| r.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default()
            };
            let mut required = names(schema.get("required"));
            if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
                let branch = branches
                    .iter()
                    .find(|b| {
                        next_key.is_some_and(|w| names(b.get("required")).iter().any(|n| n == w))
                    })
                    .unwrap_or(&branches[0]);
                required.extend(names(branch.get("required")));
            }
            let mut out = serde_json::Map::new();
            for k in required {
                let further = if next_key == Some(k.as_str()) {
                    &toward[1..]
                } else {
                    &[][..]
                };
                out.insert(k.clone(), example(doc, &schema["properties"][&k], further));
            }
            Value::Object(out)
        }
        Some("integer") => json!(schema.get("minimum").and_then(Value::as_u64).unwrap_or(1)),
        Some("number") => json!(schema.get("minimum").and_then(Value::as_f64).unwrap_or(1.0)),
        Some("boolean") => json!(false),
        Some("array") if schema.get("minItems").and_then(Value::as_u64) >= Some(1) => {
            json!([example(doc, &schema["items"], &[])])
        }
        Some("array") => json!([]),
        _ => json!({}),
    }
}

/// Sets `value` at `at` in `body`, first filling each object on the way that the body does
/// not have yet with the smallest value the document allows for it.
fn set_in(doc: &Doc, schema: &Value, body: &mut Value, at: &[Step], value: Value) {
    let schema = doc.resolve(schema);
    match at.split_first() {
        None => *body = value,
        Some((Step::Key(k), rest)) => {
            if !body.is_object() {
                *body = example(doc, &schema, at);
            }
            let slot = body
                .as_object_mut()
                .unwrap()
                .entry(k.clone())
                .or_insert(Value::Null);
            if slot.is_null() && !rest.is_empty() {
                *slot = example(doc, &schema["properties"][k], rest);
            }
            set_in(doc, &schema["properties"][k], slot, rest, value);
        }
        Some((Step::Item, rest)) => {
            let mut item = example(doc, &schema["items"], rest);
            set_in(doc, &schema["items"], &mut item, rest, value);
            *body = json!([item]);
        }
    }
}

fn set(body: &mut Value, at: &[Step], value: Value) {
    match at.split_first() {
        None => *body = value,
        Some((Step::Key(k), rest)) => {
            if !body.is_object() {
                *body = json!({});
            }
            let slot = body
                .as_object_mut()
                .unwrap()
                .entry(k.clone())
                .or_insert(Value::Null);
            set(slot, rest, value);
        }
        Some((Step::Item, rest)) => {
            let mut item = Value::Null;
            set(&mut item, rest, value);
            *body = json!([item]);
        }
    }
}

fn show(at: &[Step]) -> String {
    at.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Item => "[]".into(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Fixtures the probes address when they vary something else.
struct Fixtures {
    job: String,
    command: String,
    key: String,
}

impl Fixtures {
    fn path_value(&self, name: &str) -> String {
        match name {
            "jobId" => self.job.clone(),
            "thingName" => "t1".into(),
            "executionId" => self.command.clone(),
            "name" => "fixture-group".into(),
            "keyId" => self.key.clone(),
            "commandId" => "fixture-cmd".into(),
            other => panic!("no fixture for path parameter {other}"),
        }
    }

    /// A body the operation accepts, fresh each time where a create would collide.
    fn body(&self, operation: &str, n: usize) -> Option<Value> {
        Some(match operation {
            "createJob" => scheduled_job(json!({"thingNames": ["t1"]}), json!({"a": 1})),
            "cancelJob" => json!({"comment": "c"}),
            "updateJob" => json!({}),
            "sendCommand" => json!({"thingName": "t1", "action": "a", "ttl": 86400}),
            "cancelCommand" => json!({"reason": "r"}),
            "createThingGroup" => json!({"description": format!("d{n}")}),
            "addThingGroupMembers" | "removeThingGroupMembers" => json!({"thingNames": ["t1"]}),
            "createApiKey" => json!({"name": format!("k{n}"), "scope": "read"}),
            "registerCommand" => json!({"action": "a", "description": format!("d{n}")}),
            "putThing" => json!({"attributes": {"n": format!("{n}")}}),
            _ => return None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_states_exactly_what_the_server_accepts() {
    let broker = broker();
    let _devices = silent_devices(&broker, &["t1"]).await;
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    let doc = Doc::load();

    // Fixtures: a scheduled job, a group and a pending command.
    let (s, job) = server
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(&scheduled_job(json!({"thingNames": ["t1"]}), json!({}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    let (s, g) = server
        .call(
            Method::PUT,
            "/api/v1/thing-groups/fixture-group",
            Some(&json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    let (s, c) = server
        .call(
            Method::POST,
            "/api/v1/commands",
            Some(&json!({"thingName": "t1", "action": "a", "ttl": 86400})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let (s, k) = server
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&json!({"name": "fixture", "scope": "read"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let fx = Fixtures {
        job: job["jobId"].as_str().unwrap().to_owned(),
        command: c["executionId"].as_str().unwrap().to_owned(),
        key: k["keyId"].as_str().unwrap().to_owned(),
    };

    let mut probes = 0;
    let mut counter = 0;
    let paths = doc.0["paths"].as_object().unwrap().clone();
    for (template, ops) in &paths {
        for (method, op) in ops.as_object().unwrap() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let operation = op["operationId"].as_str().unwrap().to_owned();
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let body_schema = op
                .pointer("/requestBody/content/application~1json/schema")
                .cloned();
            let body_required = op
                .pointer("/requestBody/required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let path_with = |name: &str, value: &str| {
                let mut path = template.clone();
                for p in &params {
                    if p["in"] != "path" {
                        continue;
                    }
                    let n = p["name"].as_str().unwrap();
                    let v = if n == name {
                        value.to_owned()
                    } else {
                        fx.path_value(n)
                    };
                    path = path.replace(&format!("{{{n}}}"), &encode(&v));
                }
                path
            };
            let base_body = |n: usize| {
                if body_required {
                    fx.body(&operation, n)
                        .unwrap_or_else(|| panic!("no base body for {operation}"))
                } else {
                    fx.body(&operation, n).unwrap_or(Value::Null)
                }
            };
            let send = |path: String, body: Value| {
                let server = &server;
                let method = method.clone();
                async move {
                    let body = (!body.is_null()).then_some(body);
                    server.call(method, &path, body.as_ref()).await
                }
            };
            // A header parameter goes in its header, the path as it is otherwise.
            let send_header = |path: String, header: (String, String), body: Value| {
                let server = &server;
                let method = method.clone();
                async move {
                    let body = (!body.is_null()).then_some(body);
                    server
                        .call_with_header(method, &path, (&header.0, &header.1), body.as_ref())
                        .await
                }
            };

            // Path and query parameters.
            for p in &params {
                let name = p["name"].as_str().unwrap();
                let schema = doc.resolve(&p["schema"]);
                let probe_path = |v: &str| match p["in"].as_str().unwrap() {
                    "path" => path_with(name, v),
                    "query" => format!("{}?{name}={}", path_with("", ""), encode(v)),
                    "header" => path_with("", ""),
                    other => panic!("unexpected parameter place {other}"),
                };
                let probe = |v: String, body: Value| {
                    let path = probe_path(&v);
                    let header = (p["in"] == "header").then(|| (name.to_owned(), v));
                    async {
                        match header {
                            Some(h) => send_header(path, h, body).await,
                            None => send(path, body).await,
                        }
                    }
                };
                let mut valid = Vec::new();
                let mut invalid = Vec::new();
                // Every path parameter is an id: the document must say which ones.
                assert!(
                    p["in"] != "path" || StringRule::of(&schema).is_some(),
                    "{method} {template}: path parameter {name} states no length or pattern"
                );
                if let Some(rule) = StringRule::of(&schema) {
                    valid = rule.valid();
                    invalid = rule.invalid();
                } else if schema["type"] == "integer" {
                    if let Some(min) = schema["minimum"].as_i64() {
                        valid.push(min.to_string());
                        invalid.push(((min - 1).to_string(), "minimum"));
                    }
                    if let Some(max) = schema["maximum"].as_i64() {
                        valid.push(max.to_string());
                        invalid.push(((max + 1).to_string(), "maximum"));
                    }
                }
                for v in valid {
                    counter += 1;
                    let answer = probe(v.clone(), base_body(counter)).await;
                    probes += 1;
                    assert!(
                        answer.0 != StatusCode::BAD_REQUEST
                            && !answer.1["message"]
                                .as_str()
                                .is_some_and(|m| m.starts_with("no route")),
                        "{method} {template}: {name}={v:?} is allowed by the document but \
                         refused: {answer:?}"
                    );
                }
                for (v, broken) in invalid {
                    counter += 1;
                    let answer = probe(v.clone(), base_body(counter)).await;
                    probes += 1;
                    // An empty path segment matches no route: 404 is the refusal there.
                    let empty_segment = v.is_empty() && p["in"] == "path";
                    assert!(
                        answer.0 == StatusCode::BAD_REQUEST
                            || (empty_segment && answer.0 == StatusCode::NOT_FOUND),
                        "{method} {template}: {name}={v:?} breaks {broken} but got {answer:?}"
                    );
                }
            }

            // Body values. A group create needs a new name each time, or it is refused as a
            // conflict before its body is looked at.
            let Some(schema) = body_schema else { continue };
            let fresh = match operation.as_str() {
                "createThingGroup" => Some("name"),
                "registerCommand" => Some("commandId"),
                _ => None,
            };
            let body_path = |n: usize| {
                if let Some(param) = fresh {
                    path_with(param, &format!("fresh-{n}"))
                } else {
                    path_with("", "")
                }
            };
            for (at, rule) in body_strings(&doc, &schema) {
                for v in rule.valid() {
                    counter += 1;
                    let mut body = base_body(counter);
                    // Objects on the way get their required fields (a stage needs its gate).
                    set_in(&doc, &schema, &mut body, &at, json!(v));
                    let answer = send(body_path(counter), body).await;
                    probes += 1;
                    assert_ne!(
                        answer.0,
                        StatusCode::BAD_REQUEST,
                        "{method} {template}: {} = {v:?} is allowed by the document but \
                         refused: {}",
                        show(&at),
                        answer.1
                    );
                }
                for (v, broken) in rule.invalid() {
                    counter += 1;
                    let mut body = base_body(counter);
                    set_in(&doc, &schema, &mut body, &at, json!(v));
                    let answer = send(body_path(counter), body).await;
                    probes += 1;
                    assert_eq!(
                        answer.0,
                        StatusCode::BAD_REQUEST,
                        "{method} {template}: {} = {v:?} breaks {broken} but got {}",
                        show(&at),
                        answer.1
                    );
                }
            }
            // Numbers with a bound, from both sides.
            for (at, rule) in body_numbers(&doc, &schema) {
                for v in rule.valid() {
                    counter += 1;
                    let mut body = base_body(counter);
                    set_in(&doc, &schema, &mut body, &at, v.clone());
                    let answer = send(body_path(counter), body.clone()).await;
                    probes += 1;
                    assert_ne!(
                        answer.0,
                        StatusCode::BAD_REQUEST,
                        "{method} {template}: {} = {v} is allowed by the document but \
                         refused: {} (body {body})",
                        show(&at),
                        answer.1
                    );
                }
                for (v, broken) in rule.invalid() {
                    counter += 1;
                    let mut body = base_body(counter);
                    set_in(&doc, &schema, &mut body, &at, v.clone());
                    let answer = send(body_path(counter), body.clone()).await;
                    probes += 1;
                    assert_eq!(
                        answer.0,
                        StatusCode::BAD_REQUEST,
                        "{method} {template}: {} = {v} breaks {broken} but got {} (body {body})",
                        show(&at),
                        answer.1
                    );
                }
            }
            // A string property is a string: not null, not a number.
            for at in string_typed(&doc, &schema) {
                for wrong in [json!(null), json!(5)] {
                    counter += 1;
                    let mut body = base_body(counter);
                    set(&mut body, &at, wrong.clone());
                    let answer = send(body_path(counter), body).await;
                    probes += 1;
                    assert_eq!(
                        answer.0,
                        StatusCode::BAD_REQUEST,
                        "{method} {template}: {} = {wrong} is not a string but got {}",
                        show(&at),
                        answer.1
                    );
                }
            }
        }
    }
    eprintln!("{probes} probes of the document's constraints");
    // Guard against a walk that silently found nothing to probe.
    assert!(probes > 200, "only {probes} probes");
    server.shutdown().await;
}

// ---- transport protection ----------------------------------------------------------------------

/// Reads until the peer closes or `limit` passes; `Some(elapsed)` if it closed.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Sends a whole request and waits up to `limit` for the status line.
fn answered_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(b"HTTP/1.1 ") {
                    return true;
                }
            }
            Err(_) => {}
        }
    }
    false
}

const OPENAPI_REQUEST: &[u8] = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_half_a_header_is_disconnected_after_the_timeout() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&broker, data.path());
    opts.header_timeout_secs = Some(1);
    let server = Running::start(opts).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        let closed = wait_closed(&mut slow, Duration::from_secs(5))
            .expect("the server closes a connection that never finishes its header");
        assert!(
            closed >= Duration::from_millis(900),
            "closed after {closed:?}, before the timeout"
        );
        // A client that sends its header in time is served.
        let mut quick = TcpStream::connect(addr).unwrap();
        quick.write_all(OPENAPI_REQUEST).unwrap();
        assert!(answered_within(&mut quick, Duration::from_secs(2)));
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let mut opts = options(&broker, data.path());
    opts.max_connections = Some(2);
    let server = Running::start(opts).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let first = TcpStream::connect(addr).unwrap();
        let mut second = TcpStream::connect(addr).unwrap();
        second.write_all(OPENAPI_REQUEST).unwrap();
        assert!(answered_within(&mut second, Duration::from_secs(2)));
        // The third connects (the kernel's backlog holds it) but is not served...
        let mut third = TcpStream::connect(addr).unwrap();
        third.write_all(OPENAPI_REQUEST).unwrap();
        assert!(
            !answered_within(&mut third, Duration::from_millis(1500)),
            "a third connection was served while two were open"
        );
        // ...until one of the two closes.
        drop(first);
        assert!(
            answered_within(&mut third, Duration::from_secs(3)),
            "the waiting connection was not served after a slot freed"
        );
    })
    .await
    .unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let server = Running::start(options(&broker, data.path())).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = server
            .client
            .get(format!("{}/api/v1/jobs", server.base))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
    }
    for value in [
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        "bearer wrong".into(),
    ] {
        let resp = server
            .client
            .get(format!("{}/api/v1/jobs", server.base))
            .header("authorization", value.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{value}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_no_auth_on_a_remote_address_without_the_flag() {
    use std::process::Command;
    let data = tempfile::tempdir().unwrap();
    // A closed broker port: were the check missing, the start would still fail, but with
    // another message (and never reach a broker on this machine).
    let out = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(["serve", "--no-auth", "--listen", "0.0.0.0:0"])
        .args(["--broker", "mqtt://127.0.0.1:1", "--data-dir"])
        .arg(data.path())
        .env_remove("FLEETOPS_API_TOKEN")
        .output()
        .expect("run fleetops");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--allow-unauthenticated-remote"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    use std::process::{Command, Stdio};

    let broker = broker();
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let service = broker.service_config().credentials.unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path().join("db"))
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", broker.port())])
        .env("FLEETOPS_BROKER_USERNAME", &service.username)
        .env("FLEETOPS_BROKER_PASSWORD", &service.password)
        .env("FLEETOPS_API_TOKEN", TOKEN)
        .env("FLEETOPS_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn fleetops");
    let line = listening_line(&mut child).await;
    assert!(line.starts_with("listening on "), "{line:?}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read(&log_path).unwrap();
    let shown = String::from_utf8_lossy(&text);
    assert!(shown.contains("fleetops serve started"), "{shown}");
    assert!(
        !text.contains(&0x1b),
        "colour codes in a log file:\n{shown}"
    );
}
