//! The service side: [`MqttLink`] implements core's `DeviceLink` port over one MQTT 5
//! connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleetops_core::device::Outbound;
use fleetops_core::link::{Delivery, DeviceLink, LinkError, LinkEvent, MessageFailure, Receipt};
use fleetops_core::time::Timestamp;
use rumqttc::v5::mqttbytes::v5::Filter;
use rumqttc::v5::mqttbytes::QoS;

use crate::codec::{
    decode_presence, Codec, Decoded, Limits, PresenceDecoded, PresenceSource, TopicLayout,
};
use crate::config::{mqtt_options, BrokerConfig, ClientKnobs, Session};
use crate::connection::{wait_ack, Connection, Incoming, Params};
use crate::error::Error;
use crate::warn::WarnLimiter;

/// At most one warning per device per this interval about its malformed requests.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The most devices whose warnings are tracked one by one; beyond, they share one entry.
const WARN_TRACKED: usize = 10_000;

/// Settings of [`MqttLink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLinkConfig {
    /// Where the broker is and how to authenticate.
    pub broker: BrokerConfig,
    /// The MQTT client id (unique per service instance).
    pub client_id: String,
    /// The topic prefix.
    pub layout: TopicLayout,
    /// Payload bounds.
    pub limits: Limits,
    /// Clean or persistent session. Persistent (the default) keeps device requests queued
    /// on the broker while the service restarts.
    pub session: Session,
    /// Subscribe as `$share/{group}/…`, so several instances split the device traffic.
    pub shared_group: Option<String>,
    /// Also receive topics inside the protocol's trees that name no operation and answer
    /// them `InvalidTopic` (two `#` filters with MQTT 5 No Local). Not possible with shared
    /// subscriptions, where No Local is forbidden: then only the request topics are
    /// subscribed and such publishes never reach the service.
    pub invalid_topic_replies: bool,
    /// Receive Maximum: QoS 1 requests the broker may have in flight towards the service.
    /// A request is acknowledged only once the runtime settled it (its effect stored, or
    /// refused), so this bounds the requests in memory and is the backpressure on devices:
    /// beyond it, requests wait on the broker.
    pub receive_maximum: u16,
    /// The most QoS 0 publishes queued for `recv`. QoS 0 has no broker window, so a flood
    /// beyond this is dropped and counted ([`LinkStats::qos0_dropped`]).
    pub max_queued_qos0: usize,
    /// The largest MQTT packet accepted; at least the payload limit plus room for the topic.
    pub max_packet_size: u32,
    /// The service's own window of unacknowledged publishes.
    pub max_inflight: u16,
    /// Capacity of the client's request channel.
    pub channel_capacity: usize,
    /// How long `send` waits for the broker's acknowledgements.
    pub ack_timeout: Duration,
    /// Where presence comes from; its topics are subscribed like the requests (shared
    /// when `shared_group` is set: every report is stored once, as an event every
    /// instance folds).
    pub presence: PresenceSource,
}

impl MqttLinkConfig {
    /// Defaults for a service connecting to `broker` as `fleetops-service`.
    pub fn new(broker: BrokerConfig) -> Self {
        Self {
            broker,
            client_id: "fleetops-service".into(),
            layout: TopicLayout::default(),
            limits: Limits::default(),
            session: Session::Persistent {
                expiry: Duration::from_secs(3600),
            },
            shared_group: None,
            invalid_topic_replies: true,
            receive_maximum: 1024,
            max_queued_qos0: 1024,
            max_packet_size: 256 * 1024,
            max_inflight: 4096,
            channel_capacity: 1024,
            ack_timeout: Duration::from_secs(10),
            presence: PresenceSource::None,
        }
    }

    fn filters(&self) -> Result<Vec<Filter>, Error> {
        let catch_all = self.invalid_topic_replies && self.shared_group.is_none();
        let mut paths = self.layout.service_filters(catch_all);
        let presence = self.presence.filters(&self.layout);
        match &self.shared_group {
            Some(group) => {
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    return Err(Error::Config {
                        field: "shared_group",
                        reason: "must be one topic level without wildcards".into(),
                    });
                }
                paths.extend(presence);
                Ok(paths
                    .into_iter()
                    .map(|p| Filter::new(format!("$share/{group}/{p}"), QoS::AtLeastOnce))
                    .collect())
            }
            None => Ok(paths
                .into_iter()
                .map(|p| {
                    let mut f = Filter::new(p, QoS::AtLeastOnce);
                    // The catch-all filters also match the service's own replies.
                    f.nolocal = catch_all;
                    f
                })
                .chain(
                    presence
                        .into_iter()
                        .map(|p| Filter::new(p, QoS::AtLeastOnce)),
                )
                .collect()),
        }
    }
}

/// Counters of what [`MqttLink`] received but did not hand to the runtime, and of its
/// connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// QoS 0 publishes dropped because `max_queued_qos0` were already waiting.
    pub qos0_dropped: u64,
    /// Malformed requests refused by the transport itself.
    pub refused: u64,
    /// Publishes dropped unanswered because a reply to their topic would exceed the topic
    /// length bound.
    pub topic_too_long: u64,
    /// Warnings about the two above left out of the log by the per-device rate limit.
    pub warnings_suppressed: u64,
    /// Connections the broker accepted (ConnAcks), the first included: more than one means
    /// the link reconnected.
    pub connects: u64,
}

/// The `DeviceLink` over MQTT 5.
///
/// - `send` publishes every message at QoS 1 and returns once the broker acknowledged each
///   one (PUBACKs are matched by packet id), or with an error naming why not. Messages fail
///   one by one (`LinkError::Partial`): one that cannot be encoded or that the broker
///   refuses is marked permanent and never stops the rest of its batch.
/// - `recv` decodes device requests; malformed ones are answered with the codec's
///   `rejected` reply and a rate-limited `tracing` warning and never reach the runtime.
///   Presence is reported from the configured [`PresenceSource`]; malformed presence
///   messages are dropped with a rate-limited warning.
/// - Acknowledgements are manual: a request handed to the runtime gets its PUBACK only when
///   the runtime settles its receipt ([`DeviceLink::settle`]); anything the transport
///   answers or drops itself is acknowledged once handled. After a crash, the broker
///   (persistent session) delivers every unacknowledged request again.
pub struct MqttLink {
    conn: Connection,
    codec: Codec,
    presence: PresenceSource,
    ack_timeout: Duration,
    warnings: Mutex<WarnLimiter>,
    refused: AtomicU64,
    topic_too_long: AtomicU64,
    suppressed: AtomicU64,
}

/// A receipt names a QoS 1 publish by its connection and packet id (a packet id means
/// something only on the connection that delivered it); QoS 0 needs no acknowledgement.
fn receipt(incoming: &Incoming) -> Receipt {
    if incoming.publish.qos == QoS::AtMostOnce {
        return Receipt::NONE;
    }
    // Connections are counted from 1, so a QoS 1 receipt is never `NONE`.
    Receipt::new((incoming.connection << 16) | u64::from(incoming.publish.pkid))
}

/// The connection and packet id behind a receipt made by [`receipt`].
fn unpack(r: Receipt) -> Option<(u64, u16)> {
    if r == Receipt::NONE {
        return None;
    }
    let raw = r.raw();
    // The low 16 bits are the packet id.
    #[allow(clippy::cast_possible_truncation)]
    Some((raw >> 16, raw as u16))
}

/// Wall-clock time for the timestamps of refusals the transport sends itself; the runtime
/// stamps everything else.
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

impl MqttLink {
    /// Connects and subscribes; returns once the broker acknowledged the subscriptions, or
    /// fails after `broker.connect_timeout`. Reconnects (with backoff) and resubscribes on
    /// its own afterwards.
    pub async fn connect(config: MqttLinkConfig) -> Result<Self, Error> {
        // Room for the fixed header, the topic and the properties besides the payload.
        let needed = config.limits.max_payload.saturating_add(16 * 1024);
        if (config.max_packet_size as usize) < needed {
            return Err(Error::Config {
                field: "max_packet_size",
                reason: format!("must be at least {needed} (payload limit + 16 KiB)"),
            });
        }
        let filters = config.filters()?;
        let options = mqtt_options(
            &config.broker,
            &ClientKnobs {
                client_id: &config.client_id,
                session: config.session,
                receive_maximum: config.receive_maximum,
                max_packet_size: config.max_packet_size,
                max_inflight: config.max_inflight,
                manual_acks: true,
            },
        )?;
        let conn = Connection::start(Params {
            options,
            channel_capacity: config.channel_capacity.max(1),
            filters,
            backoff: config.broker.backoff,
            name: config.client_id.clone(),
            max_queued_qos0: config.max_queued_qos0,
            will: None,
        });
        conn.wait_ready(0, config.broker.connect_timeout).await?;
        Ok(Self {
            conn,
            presence: config.presence,
            codec: Codec::new(config.layout, config.limits),
            ack_timeout: config.ack_timeout,
            warnings: Mutex::new(WarnLimiter::new(WARN_EVERY, WARN_TRACKED)),
            refused: AtomicU64::new(0),
            topic_too_long: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        })
    }

    /// What was received but not handed to the runtime, counted since the link started.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            qos0_dropped: self.conn.qos0_dropped(),
            refused: self.refused.load(Ordering::Relaxed),
            topic_too_long: self.topic_too_long.load(Ordering::Relaxed),
            warnings_suppressed: self.suppressed.load(Ordering::Relaxed),
            connects: self.conn.status().borrow().connects,
        }
    }

    /// Acknowledges the requests behind `receipts` to the broker (see
    /// [`DeviceLink::settle`]). A receipt from an earlier connection is skipped: the broker
    /// delivers that request again on the current one.
    pub async fn acknowledge(&self, receipts: &[Receipt]) {
        for (connection, pkid) in receipts.iter().copied().filter_map(unpack) {
            self.conn.ack_packet(connection, pkid).await;
        }
    }

    /// Whether a warning about `key` goes to the log now; `Some(suppressed)` if it does.
    fn warn_now(&self, key: &str) -> Option<u64> {
        let mut w = self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = w.check(key, tokio::time::Instant::now());
        if out.is_none() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// The codec in use.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.conn.status().borrow().connected
    }

    /// Publishes not yet acknowledged by the broker.
    pub fn outstanding(&self) -> usize {
        self.conn.outstanding()
    }

    /// Disconnects cleanly; a persistent session stays on the broker. `recv` then fails
    /// with `Closed`.
    pub async fn shutdown(&self) {
        self.conn.disconnect().await;
    }

    /// `send` with the crate's error type: every message is published, and the first
    /// failure (in batch order) is returned; [`MqttLink::publish_each`] tells them apart.
    pub async fn publish_all(&self, messages: &[Outbound]) -> Result<(), Error> {
        self.publish_each(messages)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Publishes every message and returns each one's outcome, in batch order.
    pub async fn publish_each(&self, messages: &[Outbound]) -> Vec<Result<(), Error>> {
        self.enqueue_all(messages).await.await
    }

    /// Encodes and queues every message in order, and returns a future that resolves to each
    /// message's outcome, in batch order, once the broker acknowledged (or refused) each
    /// publish (bounded by the link's ack timeout, counted from now).
    ///
    /// Messages fail one by one: one that cannot be encoded is never published and fails
    /// alone with [`Error::Encode`], one the broker refuses fails alone with
    /// [`Error::PublishRefused`], and every other message of the batch is still published.
    pub async fn enqueue_all(
        &self,
        messages: &[Outbound],
    ) -> impl std::future::Future<Output = Vec<Result<(), Error>>> + Send + 'static {
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let queued = match self.codec.encode(m) {
                Ok(encoded) => self.conn.publish(encoded).await,
                Err(e) => Err(Error::Encode(e)),
            };
            // Only a command request needs someone listening: its command fails at once
            // when the broker says nobody subscribes. Everything else (notifications,
            // replies, events) is published for whoever listens, possibly nobody.
            let needs_subscriber = matches!(m, Outbound::CommandRequest { .. });
            acks.push((queued, needs_subscriber));
        }
        let ack_timeout = self.ack_timeout;
        let deadline = tokio::time::Instant::now() + ack_timeout;
        async move {
            let mut outcomes = Vec::with_capacity(acks.len());
            for (ack, needs_subscriber) in acks {
                let outcome = match ack {
                    Err(e) => Err(e),
                    Ok(ack) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match wait_ack(ack, left).await {
                            Err(Error::Timeout(_)) => Err(Error::Timeout(ack_timeout)),
                            Err(Error::NoSubscribers) if !needs_subscriber => Ok(()),
                            other => other,
                        }
                    }
                };
                outcomes.push(outcome);
            }
            outcomes
        }
    }

    /// `recv` with the crate's error type. Requests come with their receipts; what the
    /// transport answers or drops itself is acknowledged here.
    pub async fn next_events(&self, max: usize) -> Result<Vec<LinkEvent>, Error> {
        loop {
            let batch = self.conn.next_incoming_batch(max).await;
            if batch.is_empty() {
                return Err(Error::Closed);
            }
            let mut events = Vec::with_capacity(batch.len());
            for incoming in &batch {
                if let Some(report) = self.presence_of(&incoming.publish) {
                    // Stored by the runtime on its own schedule; acknowledged at once, as a
                    // lost report is superseded by the next one anyway.
                    self.conn.ack(incoming).await;
                    if let Some(event) = report {
                        events.push(event);
                    }
                    continue;
                }
                match self.handle(&incoming.publish).await {
                    Some(inbound) => events.push(LinkEvent::Request(inbound, receipt(incoming))),
                    // Answered or dropped here: nothing more will happen to it.
                    None => self.conn.ack(incoming).await,
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    /// `Some` when the publish is on a presence topic of the configured source: the report,
    /// or `None` if it was refused (rate-limited warning) or is no change of presence.
    fn presence_of(
        &self,
        publish: &rumqttc::v5::mqttbytes::v5::Publish,
    ) -> Option<Option<LinkEvent>> {
        let topic = std::str::from_utf8(&publish.topic).ok()?;
        let decoded = decode_presence(self.presence, self.codec.layout(), topic, &publish.payload)?;
        Some(match decoded {
            Ok(PresenceDecoded::Report(p)) => Some(LinkEvent::PresenceReport {
                subject: p.subject,
                online: p.online,
                stamp: p.stamp,
            }),
            Ok(PresenceDecoded::Ignored) => None,
            Err(err) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let key = format!("presence:{}", crate::codec::truncated(topic, 192));
                if let Some(suppressed) = self.warn_now(&key) {
                    tracing::warn!(
                        topic = %crate::codec::truncated(topic, 256),
                        %err,
                        suppressed,
                        "ignored a malformed presence message"
                    );
                }
                None
            }
        })
    }

    /// Decodes one publish: a request for the runtime, or `None` once the transport
    /// answered it itself (refusal handed to the connection) or dropped it.
    async fn handle(
        &self,
        publish: &rumqttc::v5::mqttbytes::v5::Publish,
    ) -> Option<fleetops_core::device::Inbound> {
        // The broker validates topics as UTF-8; anything else is not ours to answer.
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            tracing::debug!("ignored a publish whose topic is not UTF-8");
            return None;
        };
        if !Codec::answerable(topic) {
            self.topic_too_long.fetch_add(1, Ordering::Relaxed);
            // Keyed by the start of the topic, where the thing name sits.
            let key = crate::codec::truncated(topic, 192);
            if let Some(suppressed) = self.warn_now(&key) {
                tracing::warn!(
                    topic = %crate::codec::truncated(topic, 256),
                    len = topic.len(),
                    suppressed,
                    "dropped a publish whose topic is too long to answer"
                );
            }
            return None;
        }
        match self.codec.decode_request(topic, &publish.payload, now()) {
            Decoded::Request(inbound) => Some(inbound),
            Decoded::Refused(refusal) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let key = match &refusal.thing {
                    Some(t) => t.as_str().to_owned(),
                    None => crate::codec::truncated(topic, 192),
                };
                if let Some(suppressed) = self.warn_now(&key) {
                    tracing::warn!(
                        topic,
                        thing = refusal.thing.as_ref().map(|t| t.as_str()),
                        code = refusal.rejection.code().as_str(),
                        reason = %refusal.rejection,
                        suppressed,
                        "refused a malformed device request"
                    );
                }
                // Best effort, not awaited: the device retries on its own timeout.
                if let Err(e) = self.conn.publish(refusal.reply).await {
                    tracing::debug!(topic, error = %e, "could not publish a rejected reply");
                }
                None
            }
            Decoded::Ignored => {
                tracing::debug!(topic, "ignored a publish that is no request");
                None
            }
        }
    }
}

/// Whether retrying the message can help: not when it cannot be encoded or the broker
/// refused it, as the same message would meet the same answer.
fn permanent(e: &Error) -> bool {
    matches!(
        e,
        Error::Encode(_) | Error::PublishRefused { .. } | Error::NoSubscribers
    )
}

/// The port's view of a batch's outcomes: `Ok` when every message was delivered, the one
/// error when all failed alike and transiently (the link closed, the broker away), else the
/// failed messages by index.
fn outcome(outcomes: Vec<Result<(), Error>>) -> Result<(), LinkError> {
    let len = outcomes.len();
    let errors: Vec<(usize, Error)> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(i, o)| o.err().map(|e| (i, e)))
        .collect();
    let Some((_, first)) = errors.first() else {
        return Ok(());
    };
    if errors.len() == len && errors.iter().all(|(_, e)| e == first && !permanent(e)) {
        return Err(LinkError::from(first.clone()));
    }
    Err(LinkError::Partial {
        failed: errors
            .into_iter()
            .map(|(index, e)| MessageFailure {
                index,
                permanent: permanent(&e),
                detail: e.to_string(),
            })
            .collect(),
    })
}

#[async_trait]
impl DeviceLink for MqttLink {
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError> {
        outcome(self.publish_each(&messages).await)
    }

    async fn submit(&self, messages: Vec<Outbound>) -> Result<Delivery, LinkError> {
        let acked = self.enqueue_all(&messages).await;
        Ok(Box::pin(async move { outcome(acked.await) }))
    }

    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError> {
        self.next_events(max).await.map_err(LinkError::from)
    }

    async fn settle(&self, receipts: Vec<Receipt>) {
        self.acknowledge(&receipts).await;
    }
}
