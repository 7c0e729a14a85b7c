//! Black-box end-to-end tests of fleetops.
//!
//! The tests in `tests/tests/` start the real `fleetops serve` process against their own
//! mosquitto (the `test-broker` harness of fleetops-transport-mqtt) with a temporary data
//! directory and a free HTTP port, and talk to it only as an operator and devices would:
//! HTTP for the API, MQTT for devices. This library holds what they share: [`Serve`] (the
//! process), [`Api`] (a small HTTP client) and [`quiet_broker`].
//!
//! The binary is `fleetops-under-test`, this package's build of the `fleetops` entry point,
//! so plain `cargo test` builds it first. `FLEETOPS_BIN` points the tests at another build
//! instead (a release binary, say).
//!
//! Library-level tests that need the concrete adapters together (`Fleet` on `SledStore` with
//! `MqttLink`) live here too, so the runtime crate depends on no adapter.

use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fleetops_core::device::UpdateRequest;
use fleetops_core::JobExecutionStatus;
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{DeviceClient, DeviceEvent, DeviceEvents};
use serde_json::Value;

/// The bearer token every [`Serve`] is started with.
pub const TOKEN: &str = "e2e-token";

/// The binary to run: `$FLEETOPS_BIN` if set, else `compiled` (a test passes
/// `env!("CARGO_BIN_EXE_fleetops-under-test")`).
pub fn binary(compiled: &str) -> PathBuf {
    std::env::var_os("FLEETOPS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(compiled))
}

/// A mosquitto for `layouts` that logs only what the harness needs (the per-message debug
/// lines of the default would cost more than the tests' own work under load).
pub fn quiet_broker(layouts: Vec<TopicLayout>) -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        layouts,
        verbose_log: false,
        ..BrokerOptions::default()
    })
}

/// A well-behaved device: whenever it is told of its next execution, it reports it
/// SUCCEEDED. The task owns the client (and so its connection) until its events end.
pub fn succeed_whatever_is_next(
    client: DeviceClient,
    mut events: DeviceEvents,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
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
                // A refused report is the service's business; the test checks the outcome.
                let _ = client.update(v.job_id, request).await;
            }
        }
    })
}

/// How to start `fleetops serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The binary (see [`binary`]).
    pub binary: PathBuf,
    /// The sled data directory; reuse it to restart on the same data.
    pub data_dir: PathBuf,
    /// The broker's plain listener on 127.0.0.1.
    pub broker_port: u16,
    /// The service account's username and password.
    pub credentials: (String, String),
    /// `--topics`.
    pub topics: String,
    /// `--client-id`; keep it across restarts to resume the broker session.
    pub client_id: String,
    /// More arguments after `serve`.
    pub extra_args: Vec<String>,
    /// `--log`.
    pub log: String,
}

impl ServeConfig {
    /// Defaults for `broker` with the service account of the harness.
    pub fn new(binary: PathBuf, data_dir: &Path, broker: &TestBroker, topics: &str) -> Self {
        let service = broker
            .service_config()
            .credentials
            .expect("the harness's service account");
        Self {
            binary,
            data_dir: data_dir.to_owned(),
            broker_port: broker.port(),
            credentials: (service.username, service.password),
            topics: topics.to_owned(),
            client_id: "fleetops-e2e".into(),
            extra_args: Vec::new(),
            log: "info".into(),
        }
    }
}

/// A running `fleetops serve` process, killed (SIGKILL) when dropped.
pub struct Serve {
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Serve {
    /// Starts `fleetops serve` and waits until it prints the address it listens on.
    ///
    /// # Panics
    /// When the process exits or says nothing within 60 s (with its log).
    pub fn start(config: &ServeConfig) -> Self {
        let log_dir = tempfile::Builder::new()
            .prefix("fleetops-serve-log-")
            .tempdir()
            .expect("create a log directory");
        let log_path = log_dir.path().join("serve.log");
        let log_file = std::fs::File::create(&log_path).expect("create the log file");
        let mut child = Command::new(&config.binary)
            .arg("serve")
            .arg("--broker")
            .arg(format!(
                "mqtt://{}@127.0.0.1:{}",
                config.credentials.0, config.broker_port
            ))
            .arg("--topics")
            .arg(&config.topics)
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--client-id")
            .arg(&config.client_id)
            .arg("--log")
            .arg(&config.log)
            .args(&config.extra_args)
            // Secrets through the environment, as the operations guide recommends.
            .env("FLEETOPS_API_TOKEN", TOKEN)
            .env("FLEETOPS_BROKER_PASSWORD", &config.credentials.1)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", config.binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end, so the process never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(a) => break a.parse().expect("a socket address"),
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    panic!("fleetops serve did not start in 60 s:\n{}", read(&log_path));
                }
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("fleetops serve exited with {status}:\n{}", read(&log_path));
                    }
                }
            }
        };
        Self {
            child: Some(child),
            addr,
            log_path,
            _log_dir: log_dir,
        }
    }

    /// The HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An HTTP client for this server.
    pub fn api(&self) -> Api {
        Api::new(self.addr)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process logged (stderr) so far.
    pub fn log(&self) -> String {
        read(&self.log_path)
    }

    /// SIGKILL: no shutdown, no final flush or snapshot.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to 30 s for the graceful shutdown; returns the exit status.
    ///
    /// # Panics
    /// When it does not exit in time (it is killed then).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the process runs");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fleetops serve did not stop within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// A small JSON client of the HTTP API with the bearer token of [`Serve`].
#[derive(Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the HTTP request completes");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("the body");
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        (status, value)
    }

    /// `method path` with an optional JSON body and `bearer` as the credential instead of
    /// the server's token: status code and JSON body (`Null` when empty).
    pub async fn call_as(
        &self,
        bearer: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request
            .bearer_auth(bearer)
            .send()
            .await
            .expect("the HTTP request completes");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("the body");
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, value)
    }

    /// `GET path` with `authorization` as the whole `Authorization` header.
    pub async fn get_authorized_as(&self, path: &str, authorization: &str) -> u16 {
        self.client
            .get(format!("{}{path}", self.base))
            .header("authorization", authorization)
            .send()
            .await
            .expect("the HTTP request completes")
            .status()
            .as_u16()
    }

    /// `GET path` (with query): status code and JSON body (`Null` when empty).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `PATCH path` with a JSON body.
    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.patch(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base)))
            .await
    }

    /// `GET path`, which must answer 200.
    ///
    /// # Panics
    /// On any other status.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }
}
