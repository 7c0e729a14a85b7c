//! Raw-MQTT baseline: what mosquitto and rumqttc cost on this machine with no fleetops logic,
//! the yardstick every later fleetops figure is divided by.
//!
//! `cargo bench -p fleetops-transport-mqtt --bench raw_mqtt` starts its own mosquitto through
//! the test harness (quiet log, `set_tcp_nodelay`, no in-flight cap), connects a requester and
//! a responder with rumqttc's MQTT 5 client, and measures with 100-byte payloads:
//! - sequential request/response round trips (QoS 1 and QoS 0): p50 and p99;
//! - request/response throughput with 16 and 256 requests in flight: requests per second
//!   and the p50 / p99 round trip under that load.
//!
//! Each case runs three times; the medians are printed. The broker, the two clients and the
//! timing share the machine's cores, as they will when fleetops is measured.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::NetworkOptions;
use tokio::sync::mpsc;

const PAYLOAD: usize = 100;
const SEQUENTIAL: usize = 5_000;
const WINDOWED: usize = 40_000;
const RUNS: usize = 3;

/// One client: its poll task forwards publishes and never awaits anything but the network.
struct Client {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<Publish>,
}

async fn connect(broker: &TestBroker, id: &str, subscribe: &str) -> Client {
    let creds = broker
        .service_config()
        .credentials
        .expect("service account");
    let mut o = MqttOptions::new(id, "127.0.0.1", broker.port());
    o.set_credentials(creds.username, creds.password);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(4096);
    props.max_packet_size = Some(256 * 1024);
    o.set_connect_properties(props);
    o.set_outgoing_inflight_upper_limit(4096);
    let (client, mut eventloop) = AsyncClient::new(o, 4096);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                // The broker goes away when the bench ends; before that, an error is fatal.
                Err(e) => {
                    eprintln!("bench connection ended: {e}");
                    return;
                }
            }
        }
    });
    client
        .subscribe_many([Filter::new(subscribe, QoS::AtLeastOnce)])
        .await
        .expect("subscribe");
    ready_rx.recv().await.expect("suback");
    Client {
        client,
        incoming: rx,
    }
}

/// Echoes every request back on `bench/resp` with the request's QoS.
async fn responder(broker: &TestBroker) -> tokio::task::JoinHandle<()> {
    let mut c = connect(broker, "bench-responder", "bench/req").await;
    tokio::spawn(async move {
        while let Some(p) = c.incoming.recv().await {
            c.client
                .publish("bench/resp", p.qos, false, p.payload)
                .await
                .expect("respond");
        }
    })
}

fn payload(seq: u64) -> Vec<u8> {
    let mut p = vec![b'x'; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(p: &Publish) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p.payload[..8]);
    u64::from_be_bytes(b)
}

fn percentile(sorted: &[Duration], pct: usize) -> Duration {
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

async fn sequential(req: &mut Client, qos: QoS, n: usize) -> Figures {
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n as u64 {
        let t0 = Instant::now();
        req.client
            .publish("bench/req", qos, false, payload(i))
            .await
            .unwrap();
        loop {
            let p = req.incoming.recv().await.expect("response");
            if seq_of(&p) == i {
                break;
            }
        }
        samples.push(t0.elapsed());
    }
    let total = started.elapsed();
    samples.sort();
    Figures {
        p50: percentile(&samples, 50),
        p99: percentile(&samples, 99),
        per_sec: n as f64 / total.as_secs_f64(),
    }
}

async fn windowed(req: &mut Client, window: usize, n: usize, base: u64) -> Figures {
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(window * 2);
    let mut samples = Vec::with_capacity(n);
    let mut next = base;
    let end = base + n as u64;
    let started = Instant::now();
    while next < base + window as u64 {
        sent.insert(next, Instant::now());
        req.client
            .publish("bench/req", QoS::AtLeastOnce, false, payload(next))
            .await
            .unwrap();
        next += 1;
    }
    while samples.len() < n {
        let p = req.incoming.recv().await.expect("response");
        if let Some(t0) = sent.remove(&seq_of(&p)) {
            samples.push(t0.elapsed());
            if next < end {
                sent.insert(next, Instant::now());
                req.client
                    .publish("bench/req", QoS::AtLeastOnce, false, payload(next))
                    .await
                    .unwrap();
                next += 1;
            }
        }
    }
    let total = started.elapsed();
    samples.sort();
    Figures {
        p50: percentile(&samples, 50),
        p99: percentile(&samples, 99),
        per_sec: n as f64 / total.as_secs_f64(),
    }
}

fn median(mut runs: Vec<Figures>) -> Figures {
    let mid = runs.len() / 2;
    let pick = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[mid]
    };
    let mut p50: Vec<f64> = runs.iter().map(|f| f.p50.as_secs_f64()).collect();
    let mut p99: Vec<f64> = runs.iter().map(|f| f.p99.as_secs_f64()).collect();
    let mut rate: Vec<f64> = runs.iter().map(|f| f.per_sec).collect();
    let f = Figures {
        p50: Duration::from_secs_f64(pick(&mut p50)),
        p99: Duration::from_secs_f64(pick(&mut p99)),
        per_sec: pick(&mut rate),
    };
    runs.clear();
    f
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let broker = TestBroker::start_with(BrokerOptions {
            layouts: vec![TopicLayout::custom("bench").expect("valid prefix")],
            verbose_log: false,
            ..BrokerOptions::default()
        });
        let _responder = responder(&broker).await;
        let mut req = connect(&broker, "bench-requester", "bench/resp").await;
        // Warm up connections, allocators and the broker's topic tree.
        sequential(&mut req, QoS::AtLeastOnce, 500).await;

        println!("raw MQTT baseline: mosquitto + rumqttc v5, {PAYLOAD}-byte payloads, median of {RUNS} runs");
        println!("| case | p50 | p99 | throughput |");
        println!("|---|---|---|---|");
        for (name, qos) in [("sequential round trip, QoS 1", QoS::AtLeastOnce), ("sequential round trip, QoS 0", QoS::AtMostOnce)] {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push(sequential(&mut req, qos, SEQUENTIAL).await);
            }
            let f = median(runs);
            println!("| {name} | {} | {} | {:.0} req/s |", micros(f.p50), micros(f.p99), f.per_sec);
        }
        let mut base = 1_000_000u64;
        for window in [16usize, 256] {
            let mut runs = Vec::new();
            for _ in 0..RUNS {
                runs.push(windowed(&mut req, window, WINDOWED, base).await);
                base += 1_000_000;
            }
            let f = median(runs);
            println!(
                "| request/response, {window} in flight, QoS 1 | {} | {} | {:.0} req/s |",
                micros(f.p50),
                micros(f.p99),
                f.per_sec
            );
        }
    });
}
