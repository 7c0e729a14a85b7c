//! The raw-MQTT baselines: rumqttc MQTT 5 clients and the broker, no fleetops logic.
//!
//! They use the fleetops topics and the same connection layout as the fleetops side (one
//! service connection, one connection per device or the same number of multiplexed device
//! connections, the same windows), and payloads of the sizes fleetops' own messages have, so
//! that the ratio isolates what fleetops adds: the store, the runtime and the JSON codec.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_transport_mqtt::BrokerConfig;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Filter, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::mux::{self, MuxConnection, MuxConnections, MuxError};
use super::stats::Latency;
use super::Progress;

/// Why a raw baseline failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The client could not connect or subscribe.
    #[error("raw client `{client}` could not connect: {reason}")]
    Connect {
        /// The client id.
        client: String,
        /// Why.
        reason: String,
    },
    /// A connection broke during the measurement.
    #[error("raw client `{client}` lost its connection: {reason}")]
    Lost {
        /// The client id.
        client: String,
        /// Why.
        reason: String,
    },
    /// Not finished in time.
    #[error("raw baseline timed out after {0:?} ({1})")]
    Timeout(Duration, String),
    /// A connection of multiplexed devices failed (`--device-connections`).
    #[error("raw baseline: {0}")]
    Devices(#[from] MuxError),
}

/// The sizes of the messages the raw baselines send, taken from fleetops' own encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sizes {
    /// Command request (the echo has the same size).
    pub command: usize,
    /// `notify-next` with the job document.
    pub notify: usize,
    /// `start-next` request.
    pub start_next: usize,
    /// `start-next/accepted` with the job document.
    pub accepted: usize,
    /// `update` request.
    pub update: usize,
    /// `update/accepted` (no execution state or document asked for).
    pub update_accepted: usize,
    /// A command response's `response/accepted`.
    pub response_accepted: usize,
}

/// Per-connection knobs, mirroring the transport's service and device settings.
#[derive(Clone, Copy)]
pub struct Knobs {
    /// Our window of unacknowledged publishes.
    pub inflight: u16,
    /// Receive Maximum asked from the broker.
    pub receive_maximum: u16,
    /// Capacity of rumqttc's request channel.
    pub channel: usize,
}

/// The service connection's knobs (as `MqttLinkConfig::new`).
pub const SERVICE: Knobs = Knobs {
    inflight: 4096,
    receive_maximum: 1024,
    channel: 4096,
};

/// A device connection's knobs (as `DeviceConfig::new`, with the bench's window of 8).
pub const DEVICE: Knobs = Knobs {
    inflight: 8,
    receive_maximum: 64,
    channel: 64,
};

/// A multiplexed device connection's knobs, for `things` devices (`--device-connections`).
/// A device has at most one request out at a time: a window of one publish per device (twice
/// that, so packet ids rarely wrap onto one still unacknowledged, which stalls rumqttc until
/// its PUBACK comes), as many as the broker will send us, and a request channel with room
/// for every device's next publish and a duplicate each, so that the poll task's
/// `try_publish` never finds it full.
pub fn multiplexed(things: usize) -> Knobs {
    Knobs {
        inflight: u16::try_from(2 * things + 64).unwrap_or(u16::MAX),
        receive_maximum: u16::MAX,
        channel: 2 * things + 1024,
    }
}

/// Connects a connection that carries `devices` devices, with the knobs of
/// [`multiplexed`]; its poll task hands every incoming publish to `on_publish`.
pub async fn connect_devices(
    broker: &BrokerConfig,
    id: String,
    devices: usize,
    on_publish: mux::OnPublish,
) -> Result<MuxConnection, MuxError> {
    let knobs = multiplexed(devices);
    let options = options(broker, &id, knobs).map_err(|e| MuxError::Connect {
        client: id.clone(),
        reason: e.to_string(),
    })?;
    MuxConnection::connect(options, knobs.channel, broker.connect_timeout, on_publish).await
}

/// What a client's poll task does with each incoming publish.
type OnPublish = Box<dyn FnMut(Publish, &AsyncClient) + Send>;

/// A connected raw client; the connection closes when it is dropped.
pub struct RawClient {
    /// For publishing.
    pub client: AsyncClient,
    /// Receives the reason if the connection breaks.
    lost: oneshot::Receiver<String>,
    id: String,
    task: JoinHandle<()>,
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawClient {
    /// Fails if the connection broke.
    fn check(&mut self) -> Result<(), RawError> {
        match self.lost.try_recv() {
            Ok(reason) => Err(RawError::Lost {
                client: self.id.clone(),
                reason,
            }),
            Err(_) => Ok(()),
        }
    }
}

/// The options of every raw client, and of the multiplexed device connections of both sides.
pub(crate) fn options(
    broker: &BrokerConfig,
    id: &str,
    knobs: Knobs,
) -> Result<MqttOptions, RawError> {
    let mut o = MqttOptions::new(id, broker.host.clone(), broker.port);
    o.set_keep_alive(broker.keep_alive.max(Duration::from_secs(5)));
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(broker.connect_timeout.as_secs().max(1));
    o.set_network_options(net);
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(knobs.receive_maximum);
    props.max_packet_size = Some(256 * 1024);
    o.set_connect_properties(props);
    o.set_clean_start(true);
    o.set_outgoing_inflight_upper_limit(knobs.inflight);
    if let Some(c) = &broker.credentials {
        o.set_credentials(c.username.clone(), c.password.clone());
    }
    if let Some(tls) = &broker.tls {
        let config = tls.client_config().map_err(|e| RawError::Connect {
            client: id.to_owned(),
            reason: e.to_string(),
        })?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(o)
}

/// Connects, subscribes to `filters` at QoS 1 and returns once the broker acknowledged the
/// subscription. Incoming publishes go to `on_publish`, inside the poll task: it must never
/// wait (rumqttc deadlocks if its poll task awaits a publish), so it uses `try_publish` or
/// forwards to a channel.
pub async fn connect(
    broker: &BrokerConfig,
    id: &str,
    knobs: Knobs,
    filters: Vec<String>,
    mut on_publish: OnPublish,
) -> Result<RawClient, RawError> {
    let (client, mut eventloop) = AsyncClient::new(options(broker, id, knobs)?, knobs.channel);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let (lost_tx, lost_rx) = oneshot::channel();
    let task_client = client.clone();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(p, &task_client),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(_) => {}
                // No reconnect: a baseline whose connection breaks is not a measurement.
                Err(e) => {
                    match ready.take() {
                        Some(tx) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                        None => {
                            let _ = lost_tx.send(e.to_string());
                        }
                    }
                    return;
                }
            }
        }
    });
    let raw = RawClient {
        client,
        lost: lost_rx,
        id: id.to_owned(),
        task,
    };
    let fail = |reason: String| RawError::Connect {
        client: id.to_owned(),
        reason,
    };
    raw.client
        .subscribe_many(
            filters
                .into_iter()
                .map(|f| Filter::new(f, QoS::AtLeastOnce)),
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    match tokio::time::timeout(broker.connect_timeout, ready_rx).await {
        Ok(Ok(Ok(()))) => Ok(raw),
        Ok(Ok(Err(reason))) => Err(fail(reason)),
        Ok(Err(_)) => Err(fail("the poll task ended".into())),
        Err(_) => Err(fail(format!(
            "no SUBACK within {:?}",
            broker.connect_timeout
        ))),
    }
}

/// A forwarding handler and the receiving end.
fn forward() -> (OnPublish, mpsc::UnboundedReceiver<Publish>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Box::new(move |p, _| {
            let _ = tx.send(p);
        }),
        rx,
    )
}

fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(8)];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seq_of(p: &Publish) -> Option<u64> {
    let b: [u8; 8] = p.payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The raw request/response pair: a requester on the service's filter and a responder that
/// echoes each request on the response topic of the same execution, as a device would;
/// with a reply, the requester also answers each response on its `response/accepted` topic,
/// which the responder subscribes to, as fleetops' command protocol does.
pub struct RequestResponse {
    requester: RawClient,
    incoming: mpsc::UnboundedReceiver<Publish>,
    _responder: RawClient,
    /// `response/accepted` replies the responder received.
    replies: Arc<AtomicUsize>,
    prefix: String,
    thing: String,
    size: usize,
    next: u64,
}

impl RequestResponse {
    /// Connects both clients; topics are under `prefix` for thing `thing`. `reply`: the
    /// size of the `response/accepted` the requester sends for each response, or `None` for
    /// none. `window`: the most requests [`RequestResponse::run`] will keep in flight.
    pub async fn connect(
        broker: &BrokerConfig,
        prefix: &str,
        thing: &str,
        size: usize,
        reply: Option<usize>,
        tag: &str,
        window: usize,
    ) -> Result<Self, RawError> {
        let mut filters = vec![format!(
            "{prefix}/commands/things/{thing}/executions/+/request"
        )];
        if reply.is_some() {
            // Delivered and acknowledged like fleetops' reply; the callback ignores it.
            filters.push(format!(
                "{prefix}/commands/things/{thing}/executions/+/response/accepted"
            ));
        }
        let replies = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&replies);
        // The responder acknowledges each request as it arrives, so the broker's window does
        // not bound what it holds: the requester's does. Each request in flight may have its
        // response waiting in the channel (the responder's own window of unacknowledged
        // publishes is small), so the channel holds the whole window: try_publish cannot
        // find it full, and no response is dropped.
        let responder_knobs = Knobs {
            channel: DEVICE.channel.max(window + 64),
            ..DEVICE
        };
        let responder = connect(
            broker,
            thing,
            responder_knobs,
            filters,
            Box::new(move |p, client| {
                if p.topic.ends_with(b"/response/accepted") {
                    counted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let topic = String::from_utf8_lossy(&p.topic);
                if let Some(base) = topic.strip_suffix("/request") {
                    let _ = client.try_publish(
                        format!("{base}/response"),
                        QoS::AtLeastOnce,
                        false,
                        p.payload,
                    );
                }
            }),
        )
        .await?;
        let (mut forward_it, incoming) = forward();
        let on_publish: OnPublish = Box::new(move |p, client| {
            if let Some(len) = reply {
                // One reply per response, beside at most a window of requests: the channel
                // holds both, so try_publish cannot find it full.
                let topic = format!("{}/accepted", String::from_utf8_lossy(&p.topic));
                let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload(0, len));
            }
            forward_it(p, client);
        });
        let requester_knobs = Knobs {
            channel: SERVICE.channel.max(2 * window + 64),
            ..SERVICE
        };
        let requester = connect(
            broker,
            &format!("fleetops-bench-raw-requester-{tag}"),
            requester_knobs,
            vec![format!("{prefix}/commands/things/+/executions/+/response")],
            on_publish,
        )
        .await?;
        Ok(Self {
            requester,
            incoming,
            _responder: responder,
            replies,
            prefix: prefix.to_owned(),
            thing: thing.to_owned(),
            size,
            next: 0,
        })
    }

    async fn send(&mut self) -> Result<u64, RawError> {
        let seq = self.next;
        self.next += 1;
        let topic = format!(
            "{}/commands/things/{}/executions/r{seq}/request",
            self.prefix, self.thing
        );
        self.requester
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload(seq, self.size))
            .await
            .map_err(|e| RawError::Lost {
                client: self.requester.id.clone(),
                reason: e.to_string(),
            })?;
        Ok(seq)
    }

    async fn receive(&mut self, limit: Duration) -> Result<Publish, RawError> {
        match tokio::time::timeout(limit, self.incoming.recv()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) | Err(_) => {
                self.requester.check()?;
                Err(RawError::Timeout(limit, "waiting for a response".into()))
            }
        }
    }

    /// Waits until the responder has received `n` replies in all; fails after `limit`.
    pub async fn await_replies(&self, n: usize, limit: Duration) -> Result<(), RawError> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.replies.load(Ordering::Relaxed);
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RawError::Timeout(
                    limit,
                    format!("the responder received {got} of {n} replies"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// `n` round trips one after the other, with `window` requests kept in flight.
    pub async fn run(
        &mut self,
        n: usize,
        window: usize,
        limit: Duration,
        progress: &Progress,
    ) -> Result<Latency, RawError> {
        let window = window.max(1);
        let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(window * 2);
        let mut samples = Vec::with_capacity(n);
        let mut issued = 0;
        let started = Instant::now();
        while samples.len() < n {
            while issued < n && sent.len() < window {
                let t0 = Instant::now();
                let seq = self.send().await?;
                sent.insert(seq, t0);
                issued += 1;
            }
            let p = self.receive(limit).await?;
            if let Some(t0) = seq_of(&p).and_then(|s| sent.remove(&s)) {
                samples.push(t0.elapsed());
                progress.inc(1);
            }
        }
        Ok(Latency::from_samples(samples, started.elapsed()))
    }
}

/// Topics of the raw fan-out for one thing.
fn fanout_topics(prefix: &str, thing: &str) -> [String; 3] {
    [
        format!("{prefix}/things/{thing}/jobs/notify-next"),
        format!("{prefix}/things/{thing}/jobs/start-next/accepted"),
        format!("{prefix}/things/{thing}/jobs/bench/update/accepted"),
    ]
}

/// The raw job-like fan-out, the messages of the jobs protocol for one execution: per device,
/// the service publishes `notify-next`, the device publishes `start-next`, the service
/// answers `start-next/accepted`, the device publishes `update`, the service answers
/// `update/accepted`; done when every device has its `update/accepted`. Five routed messages
/// per device (a four-message yardstick leaves out the update's reply, which
/// a device of this protocol waits for).
pub struct Fanout {
    service: RawClient,
    incoming: mpsc::UnboundedReceiver<Publish>,
    devices: FanoutDevices,
    things: Vec<String>,
    prefix: String,
    sizes: Sizes,
    /// Devices that got their `update/accepted` in the current run.
    done: Arc<AtomicUsize>,
}

/// The devices of a [`Fanout`].
enum FanoutDevices {
    /// A connection each.
    Clients(Vec<RawClient>),
    /// Many over each connection (`--device-connections`).
    Multiplexed(MuxConnections),
}

/// The service connection of a fan-out: receives the devices' requests.
async fn fanout_service(
    broker: &BrokerConfig,
    prefix: &str,
    tag: &str,
) -> Result<(RawClient, mpsc::UnboundedReceiver<Publish>), RawError> {
    let (on_publish, incoming) = forward();
    let service = connect(
        broker,
        &format!("fleetops-bench-raw-service-{tag}"),
        SERVICE,
        vec![
            format!("{prefix}/things/+/jobs/start-next"),
            format!("{prefix}/things/+/jobs/+/update"),
        ],
        on_publish,
    )
    .await?;
    Ok((service, incoming))
}

/// The raw devices on a multiplexed connection: what each per-device client of
/// [`Fanout::connect`] does (`notify-next` → `start-next`, `start-next/accepted` → `update`,
/// `update/accepted` → done), the thing's topic taken from the message since many things
/// share the connection.
fn multiplexed_devices(sizes: Sizes, done: Arc<AtomicUsize>) -> mux::OnPublish {
    Box::new(move |p, client| {
        let topic = std::str::from_utf8(&p.topic)
            .map_err(|_| "a publish on a topic that is not UTF-8".to_owned())?;
        let (reply, size) = if let Some(jobs) = topic.strip_suffix("/notify-next") {
            (format!("{jobs}/start-next"), sizes.start_next)
        } else if let Some(jobs) = topic.strip_suffix("/start-next/accepted") {
            (format!("{jobs}/bench/update"), sizes.update)
        } else {
            done.fetch_add(1, Ordering::Release);
            return Ok(());
        };
        // Sized by `multiplexed`: the channel has room for every device's next publish.
        client
            .try_publish(reply, QoS::AtLeastOnce, false, payload(0, size))
            .map_err(|e| format!("a device's publish could not be queued: {e}"))
    })
}

impl Fanout {
    /// Connects the service and `n` devices (in waves of `wave` concurrent connects).
    pub async fn connect(
        broker: &BrokerConfig,
        prefix: &str,
        n: usize,
        wave: usize,
        sizes: Sizes,
        tag: &str,
        progress: &Progress,
    ) -> Result<Self, RawError> {
        let (service, incoming) = fanout_service(broker, prefix, tag).await?;
        let things: Vec<String> = (0..n).map(|i| format!("bench-raw-{i:05}")).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let mut devices = Vec::with_capacity(n);
        for chunk in things.chunks(wave.max(1)) {
            let conns = chunk.iter().map(|thing| {
                let start_next = format!("{prefix}/things/{thing}/jobs/start-next");
                let update = format!("{prefix}/things/{thing}/jobs/bench/update");
                let (start_size, update_size) = (sizes.start_next, sizes.update);
                let done = Arc::clone(&done);
                let on_publish: OnPublish = Box::new(move |p, client| {
                    // One message in flight per device at a time: the channel is never full.
                    let (topic, size) = if p.topic.ends_with(b"/notify-next") {
                        (&start_next, start_size)
                    } else if p.topic.ends_with(b"/start-next/accepted") {
                        (&update, update_size)
                    } else {
                        done.fetch_add(1, Ordering::Release);
                        return;
                    };
                    let _ = client.try_publish(
                        topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        payload(0, size),
                    );
                });
                connect(
                    broker,
                    thing,
                    DEVICE,
                    fanout_topics(prefix, thing).to_vec(),
                    on_publish,
                )
            });
            for d in futures::future::join_all(conns).await {
                devices.push(d?);
                progress.inc(1);
            }
        }
        Ok(Self {
            service,
            incoming,
            devices: FanoutDevices::Clients(devices),
            things,
            prefix: prefix.to_owned(),
            sizes,
            done,
        })
    }

    /// Connects the service and `n` devices over `connections` connections, each subscribed
    /// per device to that device's topics (`wave` connections set up at a time, each within
    /// `limit`). `progress` counts the devices subscribed.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect_multiplexed(
        broker: &BrokerConfig,
        prefix: &str,
        n: usize,
        connections: usize,
        wave: usize,
        sizes: Sizes,
        tag: &str,
        limit: Duration,
        progress: &Progress,
    ) -> Result<Self, RawError> {
        let (service, incoming) = fanout_service(broker, prefix, tag).await?;
        let things: Vec<String> = (0..n).map(|i| format!("bench-raw-{i:05}")).collect();
        let done = Arc::new(AtomicUsize::new(0));
        let slices = mux::split(n, connections);
        let devices = MuxConnections::start(slices.len(), wave, |i| {
            let mine = &things[slices[i].clone()];
            let done = Arc::clone(&done);
            async move {
                let id = format!("fleetops-bench-raw-devices-{tag}-{i}");
                let mut conn =
                    connect_devices(broker, id, mine.len(), multiplexed_devices(sizes, done))
                        .await?;
                let filters = mine.iter().map(|t| fanout_topics(prefix, t).to_vec());
                conn.subscribe(filters, limit, progress).await?;
                Ok(conn)
            }
        })
        .await?;
        Ok(Self {
            service,
            incoming,
            devices: FanoutDevices::Multiplexed(devices),
            things,
            prefix: prefix.to_owned(),
            sizes,
            done,
        })
    }

    /// Fails if a device's connection broke.
    fn check_devices(&mut self) -> Result<(), RawError> {
        match &mut self.devices {
            FanoutDevices::Clients(clients) => {
                for d in clients {
                    d.check()?;
                }
            }
            FanoutDevices::Multiplexed(conns) => conns.check()?,
        }
        Ok(())
    }

    /// Disconnects the devices (multiplexed ones cleanly) and the service.
    pub async fn close(self) {
        if let FanoutDevices::Multiplexed(conns) = self.devices {
            conns.close().await;
        }
    }

    /// Runs the fan-out once; returns the time from the first `notify-next` to the last
    /// `update/accepted` received by a device.
    pub async fn run(
        &mut self,
        limit: Duration,
        progress: &Progress,
    ) -> Result<Duration, RawError> {
        let n = self.things.len();
        self.done.store(0, Ordering::Release);
        let started = Instant::now();
        let deadline = started + limit;
        // Notifications go out from their own task, as the fleetops outbox publishes while
        // its workers answer requests.
        let sender = {
            let client = self.service.client.clone();
            let topics: Vec<String> = self
                .things
                .iter()
                .map(|t| fanout_topics(&self.prefix, t)[0].clone())
                .collect();
            let size = self.sizes.notify;
            tokio::spawn(async move {
                for t in topics {
                    if client
                        .publish(t, QoS::AtLeastOnce, false, payload(0, size))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        while self.done.load(Ordering::Acquire) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            // Replies are sent as requests come; the devices count their last reply.
            let wait = left.min(Duration::from_millis(5));
            let p = match tokio::time::timeout(wait, self.incoming.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) if left.is_zero() => {
                    sender.abort();
                    self.service.check()?;
                    return Err(RawError::Timeout(
                        limit,
                        format!(
                            "{} of {n} devices finished",
                            self.done.load(Ordering::Acquire)
                        ),
                    ));
                }
                Ok(None) => {
                    sender.abort();
                    self.service.check()?;
                    return Err(RawError::Lost {
                        client: self.service.id.clone(),
                        reason: "the poll task ended".into(),
                    });
                }
                Err(_) => {
                    // A few connections carry every device: one that broke would otherwise
                    // show only as the time running out.
                    if let FanoutDevices::Multiplexed(conns) = &self.devices {
                        if let Err(e) = conns.check() {
                            sender.abort();
                            return Err(e.into());
                        }
                    }
                    continue;
                }
            };
            let size = if p.topic.ends_with(b"/start-next") {
                self.sizes.accepted
            } else {
                progress.inc(1);
                self.sizes.update_accepted
            };
            let topic = format!("{}/accepted", String::from_utf8_lossy(&p.topic));
            self.service
                .client
                .publish(topic, QoS::AtLeastOnce, false, payload(0, size))
                .await
                .map_err(|e| RawError::Lost {
                    client: self.service.id.clone(),
                    reason: e.to_string(),
                })?;
        }
        let elapsed = started.elapsed();
        let _ = sender.await;
        self.check_devices()?;
        Ok(elapsed)
    }
}
