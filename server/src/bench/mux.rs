//! Many simulated devices over a few MQTT connections (`fleetops bench
//! --device-connections`).
//!
//! A connection per device stops short of 100,000 devices on one machine: each costs a file
//! descriptor on both ends, and every connection to one loopback address and port needs an
//! ephemeral port of its own. A multiplexed connection carries a slice of the things instead:
//! it subscribes, thing by thing, to the topics that thing's device subscribes to, and its
//! poll task answers each message the way that device would. The broker then routes exactly
//! the messages it routes to one connection per device; what the devices share is a socket, a
//! client id, a window of unacknowledged publishes and a single last will.
//!
//! This module knows neither side of the bench: it connects, subscribes in packets any broker
//! takes, lets the caller's callback publish without waiting from inside the poll task, and
//! reports a connection that broke or a device that could not answer. What a device answers
//! is the caller's: the fleetops side speaks the real wire format through the transport's
//! codec, the raw side sends payloads of the same sizes.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fleetops_transport_mqtt::codec::{Encoded, Qos};
use futures::{StreamExt as _, TryStreamExt as _};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Progress;

/// The largest SUBSCRIBE packet sent, in bytes, unless the broker allows less: far below the
/// limits brokers configure (EMQX 1 MB by default, mosquitto none), and still dozens of
/// things per packet.
pub const MAX_SUBSCRIBE_BYTES: usize = 16 * 1024;

/// SUBSCRIBE packets a connection has out before it waits for a SUBACK: enough to keep the
/// broker busy, few enough that packet ids never wrap onto one still waiting.
const SUBSCRIBE_WINDOW: usize = 4;

/// Why a multiplexed connection failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The connection could not be set up (connect, subscribe).
    #[error("device connection `{client}` could not connect: {reason}")]
    Connect {
        /// The client id.
        client: String,
        /// Why.
        reason: String,
    },
    /// The connection broke, or one of its devices could not answer.
    #[error("device connection `{client}` failed: {reason}")]
    Failed {
        /// The client id.
        client: String,
        /// Why.
        reason: String,
    },
    /// Not done in time.
    #[error("device connection `{client}`: {what} not done within {limit:?}")]
    Timeout {
        /// The client id.
        client: String,
        /// What was waited for.
        what: &'static str,
        /// How long.
        limit: Duration,
    },
}

/// What a connection's poll task does with each incoming publish, for whichever of its
/// things it is addressed to. It runs inside the poll task and so must never wait (rumqttc
/// stalls if its poll task awaits a publish): it publishes with [`try_publish`]. An `Err`
/// marks the connection failed (see [`MuxConnection::check`]).
pub type OnPublish = Box<dyn FnMut(Publish, &AsyncClient) -> Result<(), String> + Send>;

/// The things each of `connections` connections carries: `0..n` split as evenly as can be,
/// none empty when `connections <= n`.
pub fn split(n: usize, connections: usize) -> Vec<Range<usize>> {
    let c = connections.max(1);
    (0..c).map(|i| i * n / c..(i + 1) * n / c).collect()
}

/// The SUBSCRIBE packet `filters` make, in bytes: fixed header (at most 5), packet id,
/// an empty property list, and per filter its length, its bytes and its options.
fn subscribe_size<'a>(filters: impl IntoIterator<Item = &'a String>) -> usize {
    5 + 2 + 1 + filters.into_iter().map(|f| 2 + f.len() + 1).sum::<usize>()
}

/// `message`'s QoS and MQTT 5 properties as rumqttc takes them: those the transport's
/// connection would set.
fn qos_and_properties(message: &mut Encoded) -> (QoS, Option<PublishProperties>) {
    let qos = match message.qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    };
    let props = std::mem::take(&mut message.properties);
    let properties = (!props.is_empty()).then(|| PublishProperties {
        message_expiry_interval: props.message_expiry_secs,
        response_topic: props.response_topic,
        correlation_data: props.correlation_data.map(Into::into),
        ..PublishProperties::default()
    });
    (qos, properties)
}

/// Queues `message` on `client` without waiting: for the poll callback. Fails if rumqttc's
/// request channel is full or closed, which callers size never to happen.
pub fn try_publish(client: &AsyncClient, mut message: Encoded) -> Result<(), String> {
    let (qos, properties) = qos_and_properties(&mut message);
    let (topic, payload) = (message.topic, message.payload);
    match properties {
        None => client.try_publish(topic, qos, false, payload),
        Some(p) => client.try_publish_with_properties(topic, qos, false, payload, p),
    }
    .map_err(|e| format!("a device's publish could not be queued: {e}"))
}

/// The first reason a connection failed, kept for [`MuxConnection::check`].
#[derive(Default)]
struct Failure(Mutex<Option<String>>);

impl Failure {
    fn set(&self, reason: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One connection carrying many things; dropping it closes the connection at once
/// ([`MuxConnection::close`] says goodbye first).
pub struct MuxConnection {
    client: AsyncClient,
    id: String,
    /// The largest SUBSCRIBE packet to send.
    max_subscribe: usize,
    /// SUBACKs received so far; closed when the poll task ends.
    subacks: watch::Receiver<usize>,
    /// SUBSCRIBE packets sent so far.
    subscribes: usize,
    failure: Arc<Failure>,
    task: JoinHandle<()>,
}

impl Drop for MuxConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MuxConnection {
    /// Connects with `options` and a request channel of `channel` publishes, and returns once
    /// the broker accepted the connection (within `timeout`). Every incoming publish goes to
    /// `on_publish`, in the poll task. No reconnect: a device whose connection breaks in the
    /// middle of a measurement makes the measurement worthless.
    pub async fn connect(
        options: MqttOptions,
        channel: usize,
        timeout: Duration,
        mut on_publish: OnPublish,
    ) -> Result<Self, MuxError> {
        let id = options.client_id();
        let (client, mut eventloop) = AsyncClient::new(options, channel);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Option<u32>, String>>();
        let (subacks_tx, subacks) = watch::channel(0usize);
        let failure = Arc::new(Failure::default());
        let task = {
            let client = client.clone();
            let failure = Arc::clone(&failure);
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Err(reason) = on_publish(p, &client) {
                                failure.set(reason);
                            }
                        }
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            if let Some(tx) = ready.take() {
                                let max = ack.properties.and_then(|p| p.max_packet_size);
                                let _ = tx.send(Ok(max));
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(ack))) => {
                            if let Some(refused) = ack
                                .return_codes
                                .iter()
                                .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            {
                                failure
                                    .set(format!("the broker refused a subscription: {refused:?}"));
                            }
                            subacks_tx.send_modify(|n| *n += 1);
                        }
                        // Written and flushed: nothing more to do on this connection.
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(e) => {
                            match ready.take() {
                                Some(tx) => {
                                    let _ = tx.send(Err(e.to_string()));
                                }
                                None => failure.set(format!("connection lost: {e}")),
                            }
                            return;
                        }
                    }
                }
            })
        };
        let mut conn = Self {
            client,
            id,
            max_subscribe: MAX_SUBSCRIBE_BYTES,
            subacks,
            subscribes: 0,
            failure,
            task,
        };
        let fail = |reason: String| MuxError::Connect {
            client: conn.id.clone(),
            reason,
        };
        match tokio::time::timeout(timeout, ready_rx).await {
            Ok(Ok(Ok(max))) => {
                if let Some(max) = max {
                    conn.max_subscribe = conn.max_subscribe.min(max as usize);
                }
                Ok(conn)
            }
            Ok(Ok(Err(reason))) => Err(fail(reason)),
            Ok(Err(_)) => Err(fail("the poll task ended".into())),
            Err(_) => Err(fail(format!("no CONNACK within {timeout:?}"))),
        }
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Subscribes at QoS 1 to each thing's filters (one item of `per_thing` per thing), in
    /// packets of at most [`MAX_SUBSCRIBE_BYTES`] (less if the broker says so) that never
    /// split a thing, a few packets in flight at a time; returns once the broker acknowledged
    /// them all. `progress` counts the things whose subscriptions were acknowledged.
    pub async fn subscribe(
        &mut self,
        per_thing: impl IntoIterator<Item = Vec<String>>,
        limit: Duration,
        progress: &Progress,
    ) -> Result<(), MuxError> {
        let deadline = Instant::now() + limit;
        // Things per packet sent and not yet acknowledged, oldest first.
        let mut unacked: VecDeque<usize> = VecDeque::new();
        let mut batch: Vec<String> = Vec::new();
        let mut things = 0;
        for filters in per_thing {
            if subscribe_size(batch.iter().chain(&filters)) > self.max_subscribe && things > 0 {
                self.send_subscribe(std::mem::take(&mut batch), things, &mut unacked)
                    .await?;
                self.await_subacks(
                    SUBSCRIBE_WINDOW - 1,
                    &mut unacked,
                    deadline,
                    limit,
                    progress,
                )
                .await?;
                things = 0;
            }
            batch.extend(filters);
            things += 1;
        }
        if things > 0 {
            self.send_subscribe(batch, things, &mut unacked).await?;
        }
        self.await_subacks(0, &mut unacked, deadline, limit, progress)
            .await?;
        self.check()
    }

    async fn send_subscribe(
        &mut self,
        filters: Vec<String>,
        things: usize,
        unacked: &mut VecDeque<usize>,
    ) -> Result<(), MuxError> {
        self.client
            .subscribe_many(
                filters
                    .into_iter()
                    .map(|f| Filter::new(f, QoS::AtLeastOnce)),
            )
            .await
            .map_err(|e| MuxError::Connect {
                client: self.id.clone(),
                reason: format!("subscribe: {e}"),
            })?;
        self.subscribes += 1;
        unacked.push_back(things);
        Ok(())
    }

    /// Waits until at most `outstanding` SUBSCRIBE packets are unacknowledged.
    async fn await_subacks(
        &mut self,
        outstanding: usize,
        unacked: &mut VecDeque<usize>,
        deadline: Instant,
        limit: Duration,
        progress: &Progress,
    ) -> Result<(), MuxError> {
        let sent = self.subscribes;
        let acked = tokio::time::timeout_at(
            deadline,
            self.subacks
                .wait_for(|n| sent - (*n).min(sent) <= outstanding),
        )
        .await
        .map_err(|_| MuxError::Timeout {
            client: self.id.clone(),
            what: "subscribing",
            limit,
        })?
        .map(|n| *n);
        let acked = match acked {
            Ok(n) => n,
            Err(_) => {
                self.check()?;
                return Err(MuxError::Failed {
                    client: self.id.clone(),
                    reason: "the poll task ended".into(),
                });
            }
        };
        // SUBACKs come in the order of their SUBSCRIBEs.
        while sent - unacked.len() < acked {
            let Some(things) = unacked.pop_front() else {
                break;
            };
            progress.inc(things as u64);
        }
        Ok(())
    }

    /// Queues `message`, waiting for room in the request channel: for setting up, outside
    /// the poll task.
    pub async fn publish(&self, mut message: Encoded) -> Result<(), MuxError> {
        let (qos, properties) = qos_and_properties(&mut message);
        let (topic, payload) = (message.topic, message.payload);
        match properties {
            None => self.client.publish(topic, qos, false, payload).await,
            Some(p) => {
                self.client
                    .publish_with_properties(topic, qos, false, payload, p)
                    .await
            }
        }
        .map_err(|e| MuxError::Failed {
            client: self.id.clone(),
            reason: format!("publish: {e}"),
        })
    }

    /// Fails if the connection broke or one of its devices could not answer.
    pub fn check(&self) -> Result<(), MuxError> {
        let reason = self.failure.get().or_else(|| {
            self.task
                .is_finished()
                .then(|| "the poll task ended".to_owned())
        });
        match reason {
            Some(reason) => Err(MuxError::Failed {
                client: self.id.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Disconnects cleanly (the broker then drops the session and its subscriptions without
    /// waiting out a keep-alive), waiting at most a second; then the task is gone.
    pub async fn close(mut self) {
        if !self.task.is_finished() && self.client.disconnect().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
        }
    }
}

/// A set of multiplexed connections, closed together.
pub struct MuxConnections(Vec<MuxConnection>);

impl MuxConnections {
    /// Starts `count` connections with `start(i)` (connect and subscribe), at most `wave`
    /// at a time. On an error the ones already up are dropped, and so closed.
    pub async fn start<F, Fut>(count: usize, wave: usize, start: F) -> Result<Self, MuxError>
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Result<MuxConnection, MuxError>>,
    {
        let conns = futures::stream::iter(0..count)
            .map(start)
            .buffered(wave.max(1))
            .try_collect()
            .await?;
        Ok(Self(conns))
    }

    /// The connections, in the order they were started.
    pub fn iter(&self) -> impl Iterator<Item = &MuxConnection> {
        self.0.iter()
    }

    /// Fails if any connection broke or one of its devices could not answer.
    pub fn check(&self) -> Result<(), MuxError> {
        self.0.iter().try_for_each(MuxConnection::check)
    }

    /// Disconnects every connection cleanly, all at once.
    pub async fn close(self) {
        futures::future::join_all(self.0.into_iter().map(MuxConnection::close)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_thing_once_and_leaves_no_connection_empty() {
        for (n, c) in [
            (300, 3),
            (100_000, 20),
            (100_000, 50),
            (7, 7),
            (10, 4),
            (5, 1),
        ] {
            let ranges = split(n, c);
            assert_eq!(ranges.len(), c);
            assert!(ranges.iter().all(|r| !r.is_empty()), "{n} over {c}");
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(n));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            let (min, max) = (
                ranges.iter().map(ExactSizeIterator::len).min(),
                ranges.iter().map(ExactSizeIterator::len).max(),
            );
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{ranges:?}");
        }
    }

    #[test]
    fn subscribe_size_counts_the_packet_bytes() {
        let filters = vec!["a/b".to_owned(), "c".to_owned()];
        // Header 5 + packet id 2 + properties 1, then 2 + 3 + 1 and 2 + 1 + 1.
        assert_eq!(subscribe_size(&filters), 8 + 6 + 4);
    }
}
