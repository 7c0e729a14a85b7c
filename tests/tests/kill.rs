//! SIGKILL of the real `fleetops serve` while 1,000 devices send terminal updates (QoS 1) for
//! one job, then a restart on the same data directory and the same broker session.
//!
//! Checked afterwards, through HTTP and (after a clean stop) the data directory itself:
//! - every update a device saw `accepted` for is stored;
//! - none is applied twice: each execution went QUEUED → SUCCEEDED once (version 2, and one
//!   terminal event in its stream);
//! - every update the broker acknowledged (PUBACK) to its device is eventually stored or
//!   refused, although no device ever retries. This holds only if the service itself
//!   acknowledges a request to the broker once its effect is stored or refused; a service
//!   that acknowledges on receipt loses what it held in memory at the kill.
//!
//! The devices are ten rumqttc connections, each publishing for 100 things: a thousand MQTT
//! connections (and their TLS-less handshakes, keep-alives and broker sessions) would measure
//! the two CI cores rather than the service. Publishing on another thing's topics is what the
//! device ACL forbids, so these connections log in with the service account, whose ACL
//! reaches every thing; to the service each update is still an ordinary device request on
//! its thing's topic. Only the service process is killed; the broker keeps running.
//!
//! `FLEETOPS_KILL_RUNS=20` repeats the whole scenario (fresh broker and data each time) with
//! a different kill point per run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetops_core::store::EventStore;
use fleetops_core::{Event, JobId, StreamId, ThingName};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_tests::{binary, quiet_broker, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::TestBroker;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PubAckReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use rumqttc::Outgoing;
use serde_json::{json, Value};

const DEVICES: usize = 1000;
const CONNECTIONS: usize = 10;
/// Time between two updates of one connection: 10,000 offered per second, more than the
/// service stores in a debug build, so requests are queued inside it when it is killed.
const PACE: Duration = Duration::from_millis(1);

/// What a device knows about its one update.
#[derive(Debug, Default, Clone)]
struct Seen {
    published: bool,
    /// The broker's PUBACK, with its reason.
    puback: Option<PubAckReason>,
    /// `accepted` or `rejected` (with its code) on the reply topics.
    reply: Option<Result<(), String>>,
}

type Ledger = Arc<Mutex<Vec<Seen>>>;

fn thing(i: usize) -> String {
    format!("kill-{i:04}")
}

/// One connection publishing the updates of things `first..first + count`.
struct Publisher {
    client: AsyncClient,
    /// Request indices in the order they were handed to rumqttc: its event loop writes them
    /// in that order, so the n-th `Outgoing::Publish` is the n-th index here.
    order: Arc<Mutex<VecDeque<usize>>>,
    /// The poll task; the connection ends with it.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(
    broker: &TestBroker,
    conn: usize,
    first: usize,
    count: usize,
    job: &str,
    ledger: Ledger,
) -> Publisher {
    let service = broker
        .service_config()
        .credentials
        .expect("service account");
    let mut options = MqttOptions::new(format!("kill-sim-{conn}"), "127.0.0.1", broker.port());
    options.set_credentials(service.username, service.password);
    options.set_clean_start(true);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_request_channel_capacity(1024);
    let (client, mut eventloop) = AsyncClient::new(options, 1024);
    let order: Arc<Mutex<VecDeque<usize>>> = Arc::default();
    let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let task = {
        let order = Arc::clone(&order);
        tokio::spawn(async move {
            let mut inflight: HashMap<u16, usize> = HashMap::new();
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(i) = order.lock().unwrap().pop_front() {
                            inflight.insert(pkid, i);
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        if let Some(i) = inflight.remove(&ack.pkid) {
                            ledger.lock().unwrap()[i].puback = Some(ack.reason);
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                        assert!(
                            ack.return_codes.iter().all(|c| matches!(
                                c,
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                            )),
                            "subscriptions refused: {ack:?}"
                        );
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        let body: Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        let Some(i) = body["clientToken"]
                            .as_str()
                            .and_then(|t| t.strip_prefix('u'))
                            .and_then(|t| t.parse::<usize>().ok())
                            .filter(|i| *i < DEVICES)
                        else {
                            continue;
                        };
                        let reply = if topic.ends_with("/update/accepted") {
                            Ok(())
                        } else {
                            Err(body["code"].as_str().unwrap_or("?").to_owned())
                        };
                        ledger.lock().unwrap()[i].reply.get_or_insert(reply);
                    }
                    Ok(_) => {}
                    // The broker never goes away in this test; a broken connection would
                    // leave updates unaccounted for, which the checks report.
                    Err(e) => {
                        eprintln!("simulator connection {conn}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    let filters = (first..first + count).map(|i| {
        Filter::new(
            format!("$aws/things/{}/jobs/{job}/update/+", thing(i)),
            QoS::AtLeastOnce,
        )
    });
    client.subscribe_many(filters).await.expect("subscribe");
    tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
        .await
        .expect("SUBACK within 10 s")
        .expect("the event loop runs");
    Publisher {
        client,
        order,
        task,
    }
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job_counts(api: &Api, job: &str) -> Value {
    api.get_ok(&format!("/api/v1/jobs/{job}")).await["jobProcessDetails"].clone()
}

/// Every execution of `job` through HTTP, by thing index, 16 requests at a time.
async fn executions(api: &Api, job: &str) -> Vec<Value> {
    let mut out = Vec::with_capacity(DEVICES);
    for first in (0..DEVICES).step_by(16) {
        let calls = (first..(first + 16).min(DEVICES)).map(|i| {
            let path = format!("/api/v1/jobs/{job}/things/{}", thing(i));
            async move { api.get_ok(&path).await }
        });
        out.extend(futures::future::join_all(calls).await);
    }
    out
}

fn stored(execution: &Value, marker: &str) -> bool {
    execution["status"] == "SUCCEEDED" && execution["statusDetails"]["run"] == marker
}

async fn kill_once(run: usize) {
    let started = Instant::now();
    let broker = quiet_broker(vec![TopicLayout::aws()]);
    let data = tempfile::tempdir().expect("data directory");
    let config = ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        &broker,
        "aws",
    );
    let mut serve = Serve::start(&config);
    let api = serve.api();
    let job = format!("kill-{run}");
    let marker = format!("r{run}");
    let targets: Vec<String> = (0..DEVICES).map(thing).collect();
    let (status, body) = api
        .post(
            "/api/v1/jobs",
            &json!({"jobId": job, "targets": {"thingNames": targets}, "document": {"v": run}}),
        )
        .await;
    assert_eq!(status, 201, "create the job: {body}");
    wait_for(
        "1,000 queued executions",
        Duration::from_secs(60),
        async || job_counts(&api, &job).await["numberOfQueuedThings"] == DEVICES,
    )
    .await;

    let ledger: Ledger = Arc::new(Mutex::new(vec![Seen::default(); DEVICES]));
    let per = DEVICES / CONNECTIONS;
    let mut publishers = Vec::new();
    for c in 0..CONNECTIONS {
        publishers.push(connect(&broker, c, c * per, per, &job, Arc::clone(&ledger)).await);
    }
    // Every connection publishes its things' updates, interleaved with the others.
    let sending = publishers.into_iter().enumerate().map(|(c, p)| {
        let ledger = Arc::clone(&ledger);
        let (job, marker) = (job.clone(), marker.clone());
        tokio::spawn(async move {
            for i in c * per..(c + 1) * per {
                let payload = json!({
                    "status": "SUCCEEDED",
                    "statusDetails": {"run": marker},
                    "clientToken": format!("u{i}"),
                });
                p.order.lock().unwrap().push_back(i);
                p.client
                    .publish(
                        format!("$aws/things/{}/jobs/{job}/update", thing(i)),
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&payload).expect("JSON"),
                    )
                    .await
                    .expect("queue the publish");
                ledger.lock().unwrap()[i].published = true;
                tokio::time::sleep(PACE).await;
            }
            p
        })
    });
    let sending = tokio::spawn(futures::future::join_all(sending));

    // Kill somewhere between 10 % and 70 % of the answers, a different point every run.
    let kill_at = 100 + (run * 211) % 600;
    let accepted = |l: &Ledger| {
        l.lock()
            .unwrap()
            .iter()
            .filter(|s| matches!(s.reply, Some(Ok(()))))
            .count()
    };
    // Polled often: the service answers hundreds of updates in the usual 50 ms.
    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&ledger) < kill_at {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the kill point"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    serve.kill();
    let at_kill = accepted(&ledger);
    let published_at_kill = ledger
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.published)
        .count();
    // Down for a moment while the devices keep publishing: the broker keeps those for the
    // service's persistent session.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut serve = Serve::start(&config);
    let api = serve.api();
    let publishers = sending.await.expect("the publishers finish");

    // Wait until every update is accounted for: answered, or visibly stored (a device whose
    // answer died with the process is told nothing, but its update must be there).
    let resolved = async || {
        let list = executions(&api, &job).await;
        let l = ledger.lock().unwrap();
        l.iter()
            .zip(&list)
            .all(|(s, x)| s.reply.is_some() || stored(x, &marker))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !resolved().await && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let list = executions(&api, &job).await;
    let seen = ledger.lock().unwrap().clone();
    let mut problems = Vec::new();
    for (i, (s, x)) in seen.iter().zip(&list).enumerate() {
        let is_stored = stored(x, &marker);
        if !s.published {
            problems.push(format!("{}: never published", thing(i)));
        }
        if s.puback != Some(PubAckReason::Success) {
            problems.push(format!("{}: PUBACK {:?}", thing(i), s.puback));
        }
        match &s.reply {
            Some(Ok(())) if !is_stored => {
                problems.push(format!("{}: accepted but not stored: {x}", thing(i)))
            }
            // The only fair refusal is that the update is already there (a redelivery).
            Some(Err(code)) if !(is_stored && code == "TerminalStateReached") => {
                problems.push(format!("{}: refused {code}: {x}", thing(i)))
            }
            None if !is_stored => problems.push(format!(
                "{}: acknowledged by the broker, then neither stored nor refused: {x}",
                thing(i)
            )),
            _ => {}
        }
        // QUEUED is version 1; one device update makes it 2. More would mean it was applied
        // twice.
        if is_stored && x["versionNumber"] != 2 {
            problems.push(format!(
                "{}: version {} (applied twice?)",
                thing(i),
                x["versionNumber"]
            ));
        }
    }
    let counts = job_counts(&api, &job).await;
    let log = serve.log();
    assert_eq!(serve.terminate().code(), Some(0), "clean stop:\n{log}");
    drop(publishers);

    // The stored history itself: one QUEUED and exactly one terminal event per execution.
    let store = SledStore::open_async(SledConfig::new(data.path()))
        .await
        .expect("reopen the data directory");
    let job_id = JobId::parse(&job).unwrap();
    for (i, x) in list.iter().enumerate() {
        let t = ThingName::parse(&thing(i)).unwrap();
        let events = store
            .read_stream(&StreamId::job_execution(&job_id, &t), 1, 100)
            .await
            .expect("read the stream");
        let terminal = events
            .iter()
            .filter(|e| e.event.execution_status().is_some_and(|s| s.is_terminal()))
            .count();
        let queued = events
            .iter()
            .filter(|e| matches!(e.event, Event::ExecutionQueued { .. }))
            .count();
        // An update lost before it was stored is reported above already.
        if queued != 1 || terminal != usize::from(stored(x, &marker)) {
            problems.push(format!(
                "{}: {queued} queued and {terminal} terminal events stored",
                thing(i)
            ));
        }
    }
    eprintln!(
        "kill run {run}: killed at {at_kill} accepted / {published_at_kill} published; \
         after the restart {counts}; {} problem(s); {:.1?}",
        problems.len(),
        started.elapsed()
    );
    assert!(
        at_kill < DEVICES,
        "run {run}: the kill came after every update was answered"
    );
    assert!(
        problems.is_empty(),
        "run {run}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_thousand_terminal_updates_loses_and_repeats_nothing() {
    let runs: usize = std::env::var("FLEETOPS_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        kill_once(run).await;
    }
    eprintln!("{runs} kill run(s) passed");
}
