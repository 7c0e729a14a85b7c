//! Shared helpers of the HTTP tests: a private mosquitto, the `serve` options pointing at it,
//! and a `fleetops serve` running in this process with request helpers that carry the token.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use fleetops_server::config::{FileConfig, ServeOptions, Settings};
use fleetops_server::serve::{self, Server};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

/// The API token every test server is started with.
pub const TOKEN: &str = "test-token-123";

/// Devices that are connected, so their command requests have a subscriber (a broker says
/// "no matching subscribers" otherwise and the command fails at once), but never answer.
pub async fn silent_devices(
    broker: &TestBroker,
    things: &[&str],
) -> Vec<fleetops_transport_mqtt::DeviceClient> {
    use fleetops_core::device::CommandResponse;
    use fleetops_transport_mqtt::codec::CommandRequest;
    use fleetops_transport_mqtt::{CommandHandler, DeviceClient, DeviceConfig};
    let mut out = Vec::new();
    for thing in things {
        let handler: std::sync::Arc<dyn CommandHandler> =
            std::sync::Arc::new(|_c: CommandRequest| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                CommandResponse {
                    status: fleetops_core::CommandStatus::Failed,
                    result: None,
                    status_reason: None,
                }
            });
        let mut config = DeviceConfig::new(
            broker.device_config(),
            fleetops_core::ThingName::parse(thing).expect("a thing name"),
        );
        // The tests read the feed: no birth or will on it.
        config.presence = false;
        config.pull_on_connect = false;
        let (client, _events) = DeviceClient::connect(config, Some(handler))
            .await
            .expect("device connects");
        out.push(client);
    }
    out
}

/// A private mosquitto for one test.
pub fn broker() -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        verbose_log: false,
        // The harness waits for an information-level "running" line.
        extra_config: "log_type information\n".into(),
        ..BrokerOptions::default()
    })
}

/// `serve` options for `broker` and `data_dir`, on a free loopback port, with [`TOKEN`].
pub fn options(broker: &TestBroker, data_dir: &Path) -> ServeOptions {
    let service = broker
        .service_config()
        .credentials
        .expect("service account");
    ServeOptions {
        broker: Some(format!("mqtt://127.0.0.1:{}", broker.port())),
        broker_username: Some(service.username),
        broker_password: Some(service.password),
        data_dir: Some(data_dir.to_owned()),
        listen: Some("127.0.0.1:0".into()),
        api_token: Some(TOKEN.into()),
        ..ServeOptions::default()
    }
}

/// The first line the `fleetops` binary, spawned with its stdout piped, prints: the one that
/// says where it listens.
pub async fn listening_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .expect("read the listening line")
}

/// A server in this process, stopped by sending on `stop`.
pub struct Running {
    /// `http://` and the address it listens on.
    pub base: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<Server>,
    /// A client for requests the helpers below do not cover.
    pub client: reqwest::Client,
}

impl Running {
    pub async fn start(options: ServeOptions) -> Self {
        let settings =
            Settings::resolve(options, FileConfig::default(), None).expect("valid settings");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = serve::start(settings, async move {
            let _ = stopped.await;
        })
        .await
        .expect("server starts");
        Self {
            base: format!("http://{}", server.local_addr()),
            addr: server.local_addr(),
            stop: Some(stop),
            server: Some(server),
            client: reqwest::Client::new(),
        }
    }

    /// Signals shutdown and waits for the whole sequence (drain, runtime, flush, disconnect).
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().expect("running").send(());
        let server = self.server.take().expect("running");
        tokio::time::timeout(Duration::from_secs(20), server.wait())
            .await
            .expect("shutdown finishes in time")
            .expect("clean shutdown");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the token and a JSON body if given; `path` may carry a query string and
    /// is sent as is. The answer must be JSON or empty (`Null`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request sent");
        answer(resp).await
    }

    /// [`Running::call`] with one more header.
    pub async fn call_with_header(
        &self,
        method: Method,
        path: &str,
        header: (&str, &str),
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
            .header(header.0, header.1);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        answer(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&body)).await
    }

    /// Raw request with any headers and body, no token unless given; a body that is not JSON
    /// comes back as a string.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.request(method, self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(body).send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }
}

/// Whether `resp` is a Server-Sent Events stream.
pub fn is_event_stream(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The status and body of an answer: JSON parsed (it must parse), other text as a string,
/// `Null` when empty or for an event stream, which does not end by itself.
async fn answer(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    if is_event_stream(&resp) {
        return (status, Value::Null);
    }
    let json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    let text = resp.text().await.expect("body read");
    // Every JSON answer must parse; `/metrics` answers text, handed back as a string.
    let value = if text.is_empty() {
        Value::Null
    } else if json {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    } else {
        Value::String(text)
    };
    (status, value)
}
