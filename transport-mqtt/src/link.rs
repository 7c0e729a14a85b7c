//! The service side: [`MqttLink`] implements core's `DeviceLink` port over one MQTT 5
//! connection.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleetops_core::device::Outbound;
use fleetops_core::link::{Delivery, DeviceLink, LinkError, LinkEvent, MessageFailure};
use fleetops_core::time::Timestamp;
use rumqttc::v5::mqttbytes::v5::Filter;
use rumqttc::v5::mqttbytes::QoS;

use crate::codec::{Codec, Decoded, Limits, TopicLayout};
use crate::config::{mqtt_options, BrokerConfig, ClientKnobs, Session};
use crate::connection::{wait_ack, Connection, Params};
use crate::error::Error;

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
    /// Requests are acknowledged once `recv` hands them over, so this bounds the memory
    /// unread requests can take.
    pub receive_maximum: u16,
    /// The largest MQTT packet accepted; at least the payload limit plus room for the topic.
    pub max_packet_size: u32,
    /// The service's own window of unacknowledged publishes.
    pub max_inflight: u16,
    /// Capacity of the client's request channel.
    pub channel_capacity: usize,
    /// How long `send` waits for the broker's acknowledgements.
    pub ack_timeout: Duration,
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
            max_packet_size: 256 * 1024,
            max_inflight: 4096,
            channel_capacity: 1024,
            ack_timeout: Duration::from_secs(10),
        }
    }

    fn filters(&self) -> Result<Vec<Filter>, Error> {
        let catch_all = self.invalid_topic_replies && self.shared_group.is_none();
        let paths = self.layout.service_filters(catch_all);
        match &self.shared_group {
            Some(group) => {
                if group.is_empty() || group.contains(['/', '+', '#']) {
                    return Err(Error::Config {
                        field: "shared_group",
                        reason: "must be one topic level without wildcards".into(),
                    });
                }
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
                .collect()),
        }
    }
}

/// The `DeviceLink` over MQTT 5.
///
/// - `send` publishes every message at QoS 1 and returns once the broker acknowledged each
///   one (PUBACKs are matched by packet id), or with an error naming why not. Messages fail
///   one by one (`LinkError::Partial`): one that cannot be encoded or that the broker
///   refuses is marked permanent and never stops the rest of its batch.
/// - `recv` decodes device requests; malformed ones are answered with the codec's
///   `rejected` reply and a `tracing` warning and never reach the runtime. Presence is not
///   reported (mosquitto does not tell).
pub struct MqttLink {
    conn: Connection,
    codec: Codec,
    ack_timeout: Duration,
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
        });
        conn.wait_ready(0, config.broker.connect_timeout).await?;
        Ok(Self {
            conn,
            codec: Codec::new(config.layout, config.limits),
            ack_timeout: config.ack_timeout,
        })
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
            acks.push(queued);
        }
        let ack_timeout = self.ack_timeout;
        let deadline = tokio::time::Instant::now() + ack_timeout;
        async move {
            let mut outcomes = Vec::with_capacity(acks.len());
            for ack in acks {
                let outcome = match ack {
                    Err(e) => Err(e),
                    Ok(ack) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        wait_ack(ack, left).await.map_err(|e| match e {
                            Error::Timeout(_) => Error::Timeout(ack_timeout),
                            other => other,
                        })
                    }
                };
                outcomes.push(outcome);
            }
            outcomes
        }
    }

    /// `recv` with the crate's error type.
    pub async fn next_events(&self, max: usize) -> Result<Vec<LinkEvent>, Error> {
        loop {
            let batch = self.conn.next_incoming_batch(max).await;
            if batch.is_empty() {
                return Err(Error::Closed);
            }
            let mut events = Vec::with_capacity(batch.len());
            for publish in &batch {
                self.handle(publish, &mut events).await;
                // Acknowledge only now, so unread requests stay the broker's (bounded by our
                // Receive Maximum) rather than piling up in memory.
                self.conn.ack(publish).await;
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    async fn handle(
        &self,
        publish: &rumqttc::v5::mqttbytes::v5::Publish,
        events: &mut Vec<LinkEvent>,
    ) {
        // The broker validates topics as UTF-8; anything else is not ours to answer.
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            tracing::warn!("ignored a publish whose topic is not UTF-8");
            return;
        };
        match self.codec.decode_request(topic, &publish.payload, now()) {
            Decoded::Request(inbound) => events.push(LinkEvent::Request(inbound)),
            Decoded::Refused(refusal) => {
                tracing::warn!(
                    topic,
                    thing = refusal.thing.as_ref().map(|t| t.as_str()),
                    code = refusal.rejection.code().as_str(),
                    reason = %refusal.rejection,
                    "refused a malformed device request"
                );
                // Best effort, not awaited: the device retries on its own timeout.
                if let Err(e) = self.conn.publish(refusal.reply).await {
                    tracing::warn!(topic, error = %e, "could not publish a rejected reply");
                }
            }
            Decoded::Ignored => tracing::debug!(topic, "ignored a publish that is no request"),
        }
    }
}

/// Whether retrying the message can help: not when it cannot be encoded or the broker
/// refused it, as the same message would meet the same answer.
fn permanent(e: &Error) -> bool {
    matches!(e, Error::Encode(_) | Error::PublishRefused { .. })
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
}
