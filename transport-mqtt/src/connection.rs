//! One MQTT 5 connection driven by its own task: the plumbing shared by [`crate::MqttLink`]
//! and [`crate::DeviceClient`].
//!
//! The rules that keep rumqttc from stalling:
//! - the event loop is polled in its own task, which never awaits a publish: incoming messages
//!   leave through a channel the task never waits on (QoS 1 is bounded by the broker's window,
//!   our Receive Maximum, since each is acknowledged only when the consumer says so; QoS 0
//!   has no such window, so the task drops QoS 0 publishes beyond a cap and counts them),
//!   subscriptions are sent from short-lived tasks;
//! - every connection error is followed by a growing delay, or `poll()` spins;
//! - subscriptions are sent again on every ConnAck (a clean session forgets them);
//! - a publish counts as done when the broker's PUBACK for its packet id arrived.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, Packet, PubAckReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::acks::AckTracker;
use crate::codec::{Encoded, Qos};
use crate::config::Backoff;
use crate::error::Error;

/// What the connection task reports about the link to the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// Whether a connection is up.
    pub connected: bool,
    /// ConnAcks seen so far.
    pub connects: u64,
    /// The last connect whose subscriptions the broker acknowledged.
    pub ready: u64,
    /// Whether the last ConnAck resumed a session.
    pub session_present: bool,
    /// The last connection error, for diagnostics.
    pub last_error: Option<String>,
    /// Filters the broker refused in the last SubAck.
    pub refused: Vec<String>,
}

/// Parameters of [`Connection::start`].
pub(crate) struct Params {
    pub options: MqttOptions,
    /// Capacity of rumqttc's request channel.
    pub channel_capacity: usize,
    /// Subscribed on every ConnAck.
    pub filters: Vec<Filter>,
    pub backoff: Backoff,
    /// For log lines.
    pub name: String,
    /// The most QoS 0 publishes queued for the consumer; more are dropped and counted.
    pub max_queued_qos0: usize,
    /// Called before every connect attempt; its last will goes into that CONNECT (a device's
    /// will carries the stamp of the connection it belongs to).
    pub will: Option<WillFn>,
}

/// Makes the last will of the next connection.
pub(crate) type WillFn = Arc<dyn Fn() -> LastWill + Send + Sync>;

/// An incoming publish with the connection that delivered it.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub publish: Publish,
    /// The `Status::connects` count of the connection it came on: a packet id means
    /// something only on that connection.
    pub connection: u64,
}

/// Counters the connection task keeps about incoming publishes.
#[derive(Debug, Default)]
pub(crate) struct Inflow {
    /// QoS 0 publishes waiting for the consumer.
    qos0_queued: AtomicUsize,
    /// QoS 0 publishes dropped because the queue was full.
    pub qos0_dropped: AtomicU64,
}

/// A running connection. Dropping it stops the task (no DISCONNECT is sent).
pub(crate) struct Connection {
    client: AsyncClient,
    tracker: Arc<Mutex<AckTracker>>,
    /// Keeps "append the waiter, then enter the request channel" atomic across submitters, so
    /// the tracker's order is the channel's order.
    submit: tokio::sync::Mutex<()>,
    incoming: tokio::sync::Mutex<mpsc::UnboundedReceiver<Incoming>>,
    inflow: Arc<Inflow>,
    status: watch::Receiver<Status>,
    /// Set by `disconnect`, so the task does not reconnect after the DISCONNECT it sent.
    closing: Arc<AtomicBool>,
    task: JoinHandle<()>,
    name: String,
    broker: String,
}

fn lock(t: &Mutex<AckTracker>) -> MutexGuard<'_, AckTracker> {
    // Every tracker method leaves it consistent before it could panic; keep using it.
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    /// Starts the connection task; it connects, subscribes and reconnects on its own.
    pub fn start(params: Params) -> Self {
        let (host, port) = params.options.broker_address();
        let (client, eventloop) = AsyncClient::new(params.options, params.channel_capacity);
        let tracker = Arc::new(Mutex::new(AckTracker::default()));
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Status::default());
        let closing = Arc::new(AtomicBool::new(false));
        let inflow = Arc::new(Inflow::default());
        let task = tokio::spawn(drive(
            eventloop,
            Driver {
                client: client.clone(),
                tracker: Arc::clone(&tracker),
                incoming: incoming_tx,
                inflow: Arc::clone(&inflow),
                max_queued_qos0: params.max_queued_qos0.max(1),
                status: status_tx,
                filters: params.filters,
                backoff: params.backoff,
                name: params.name.clone(),
                closing: Arc::clone(&closing),
                will: params.will,
            },
        ));
        Self {
            client,
            tracker,
            submit: tokio::sync::Mutex::new(()),
            incoming: tokio::sync::Mutex::new(incoming_rx),
            inflow,
            status: status_rx,
            closing,
            task,
            name: params.name,
            broker: format!("{host}:{port}"),
        }
    }

    /// A receiver of status changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Waits until a connection newer than `after` has its subscriptions acknowledged.
    pub async fn wait_ready(&self, after: u64, timeout: Duration) -> Result<Status, Error> {
        let mut rx = self.status.clone();
        let outcome = tokio::time::timeout(timeout, rx.wait_for(|s| s.ready > after)).await;
        match outcome {
            Ok(Ok(s)) if !s.refused.is_empty() => {
                Err(Error::SubscriptionRefused(s.refused.join(", ")))
            }
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::ConnectTimeout {
                broker: self.broker.clone(),
                timeout,
                last_error: self
                    .status
                    .borrow()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "none".into()),
            }),
        }
    }

    /// Queues a publish; the receiver completes when the broker acknowledged it.
    pub async fn publish(
        &self,
        message: Encoded,
    ) -> Result<oneshot::Receiver<Result<(), Error>>, Error> {
        let (tx, rx) = oneshot::channel();
        let qos = match message.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let payload = Bytes::from(message.payload);
        let props = message.properties;
        let properties = (!props.is_empty()).then(|| PublishProperties {
            message_expiry_interval: props.message_expiry_secs,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data.map(Bytes::from),
            ..PublishProperties::default()
        });
        let _order = self.submit.lock().await;
        lock(&self.tracker).submit(tx);
        let sent = match properties {
            None => {
                self.client
                    .publish(message.topic, qos, false, payload)
                    .await
            }
            Some(properties) => {
                self.client
                    .publish_with_properties(message.topic, qos, false, payload, properties)
                    .await
            }
        };
        if sent.is_err() {
            lock(&self.tracker).withdraw_last();
            return Err(Error::Closed);
        }
        Ok(rx)
    }

    /// Up to `max` incoming publishes: waits for the first, then takes what is already there.
    /// Empty once the connection task ended.
    pub async fn next_incoming_batch(&self, max: usize) -> Vec<Incoming> {
        let mut rx = self.incoming.lock().await;
        let mut out = Vec::new();
        if let Some(first) = rx.recv().await {
            out.push(first);
            while out.len() < max.max(1) {
                match rx.try_recv() {
                    Ok(p) => out.push(p),
                    Err(_) => break,
                }
            }
        }
        let qos0 = out
            .iter()
            .filter(|i| i.publish.qos == QoS::AtMostOnce)
            .count();
        if qos0 > 0 {
            self.inflow.qos0_queued.fetch_sub(qos0, Ordering::Relaxed);
        }
        out
    }

    /// QoS 0 publishes dropped so far because the consumer was too far behind.
    pub fn qos0_dropped(&self) -> u64 {
        self.inflow.qos0_dropped.load(Ordering::Relaxed)
    }

    /// Acknowledges an incoming publish (manual acks only); nothing for QoS 0.
    pub async fn ack(&self, incoming: &Incoming) {
        if incoming.publish.qos == QoS::AtMostOnce {
            return;
        }
        self.ack_packet(incoming.connection, incoming.publish.pkid)
            .await;
    }

    /// Acknowledges packet `pkid` received on connection `connection` (manual acks only).
    ///
    /// Skipped when that connection is gone: a packet id names a message only on the
    /// connection that delivered it, and the broker delivers an unacknowledged message again
    /// on the next one (a persistent session), with a packet id that may name another
    /// message on the new connection. Acknowledgements may go out in any order: the broker
    /// matches each by packet id.
    pub async fn ack_packet(&self, connection: u64, pkid: u16) {
        let current = {
            let s = self.status.borrow();
            s.connected.then_some(s.connects)
        };
        if current != Some(connection) {
            tracing::debug!(name = %self.name, connection, pkid, "not acknowledged: delivered on an earlier connection");
            return;
        }
        let mut publish = Publish::new("", QoS::AtLeastOnce, Bytes::new(), None);
        publish.pkid = pkid;
        if self.client.ack(&publish).await.is_err() {
            tracing::debug!(name = %self.name, "ack after the connection task ended");
        }
    }

    /// Sends DISCONNECT (a persistent session stays on the broker) and stops the task.
    pub async fn disconnect(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect().await;
        // Give the task a moment to write the packet before it is stopped.
        let mut rx = self.status.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|s| !s.connected)).await;
        self.task.abort();
    }

    /// Publishes not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        lock(&self.tracker).outstanding()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.tracker).close();
    }
}

/// Waits for a publish's acknowledgement.
pub(crate) async fn wait_ack(
    rx: oneshot::Receiver<Result<(), Error>>,
    timeout: Duration,
) -> Result<(), Error> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) => Err(Error::Closed),
        Err(_) => Err(Error::Timeout(timeout)),
    }
}

/// At most one log line per this interval about dropped QoS 0 publishes.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// How many never-written publishes rumqttc holds in its pending queue (see [`AckTracker`]).
fn fresh_pending(eventloop: &EventLoop) -> usize {
    eventloop
        .pending
        .iter()
        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
        .count()
}

struct Driver {
    client: AsyncClient,
    tracker: Arc<Mutex<AckTracker>>,
    incoming: mpsc::UnboundedSender<Incoming>,
    inflow: Arc<Inflow>,
    max_queued_qos0: usize,
    status: watch::Sender<Status>,
    filters: Vec<Filter>,
    backoff: Backoff,
    name: String,
    closing: Arc<AtomicBool>,
    will: Option<WillFn>,
}

/// The connection task. It runs until aborted: the event loop holds a sender of its own
/// request channel, so it never observes "all clients gone".
async fn drive(mut eventloop: EventLoop, d: Driver) {
    let Driver {
        client,
        tracker,
        incoming,
        inflow,
        max_queued_qos0,
        status,
        filters,
        backoff,
        name,
        closing,
        will,
    } = d;
    if let Some(w) = &will {
        eventloop.options.set_last_will(w());
    }
    let mut delay = backoff.initial;
    let mut connection = 0u64;
    // When the last QoS 0 drop was logged, and how many drops since.
    let mut drop_logged: Option<tokio::time::Instant> = None;
    let mut drops_unlogged = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                delay = backoff.initial;
                lock(&tracker).on_connack(ack.session_present);
                status.send_modify(|s| {
                    s.connected = true;
                    s.connects += 1;
                    s.session_present = ack.session_present;
                    connection = s.connects;
                });
                tracing::info!(%name, session_present = ack.session_present, "connected");
                if filters.is_empty() {
                    status.send_modify(|s| s.ready = s.connects);
                } else {
                    // Subscribing awaits rumqttc's request channel, which only this task
                    // drains: never here, always from a task of its own.
                    let client = client.clone();
                    let filters = filters.clone();
                    tokio::spawn(async move {
                        let _ = client.subscribe_many(filters).await;
                    });
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused: Vec<String> = ack
                    .return_codes
                    .iter()
                    .zip(&filters)
                    .filter(|(code, _)| !matches!(code, SubscribeReasonCode::Success(_)))
                    .map(|(code, f)| format!("{} ({code:?})", f.path))
                    .collect();
                if !refused.is_empty() {
                    tracing::error!(%name, ?refused, "the broker refused subscriptions");
                }
                status.send_modify(|s| {
                    s.ready = s.connects;
                    s.refused = refused;
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // This task never waits on the consumer. With manual acks the broker's window
                // (our Receive Maximum) bounds the QoS 1 publishes that can pile up here;
                // QoS 0 has no window, so beyond the cap they are dropped and counted.
                if p.qos == QoS::AtMostOnce {
                    if inflow.qos0_queued.load(Ordering::Relaxed) >= max_queued_qos0 {
                        inflow.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                        drops_unlogged += 1;
                        let now = tokio::time::Instant::now();
                        if drop_logged.is_none_or(|t| now.duration_since(t) >= DROP_LOG_EVERY) {
                            tracing::warn!(
                                %name,
                                dropped = drops_unlogged,
                                total = inflow.qos0_dropped.load(Ordering::Relaxed),
                                cap = max_queued_qos0,
                                "dropped QoS 0 publishes: the consumer is behind"
                            );
                            drop_logged = Some(now);
                            drops_unlogged = 0;
                        }
                        continue;
                    }
                    inflow.qos0_queued.fetch_add(1, Ordering::Relaxed);
                }
                if incoming
                    .send(Incoming {
                        publish: p,
                        connection,
                    })
                    .is_err()
                {
                    tracing::debug!(%name, "incoming publish after the consumer left");
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                // MQTT 5 brokers answer 0x10 when no one subscribes to the topic: the
                // publish was accepted, but reached no one. Whether that matters is the
                // publisher's call (a command request then fails; most messages do not care).
                let outcome = match ack.reason {
                    PubAckReason::Success => Ok(()),
                    PubAckReason::NoMatchingSubscribers => Err(Error::NoSubscribers),
                    other => Err(Error::PublishRefused {
                        reason: format!("{other:?}"),
                    }),
                };
                lock(&tracker).on_puback_outcome(ack.pkid, outcome);
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(%name, reason = ?d.reason_code, "the broker sent DISCONNECT");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => lock(&tracker).on_written(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => lock(&tracker).on_collision(pkid),
            Ok(_) => {}
            Err(e) => {
                if closing.load(Ordering::SeqCst) {
                    lock(&tracker).close();
                    status.send_modify(|s| s.connected = false);
                    tracing::info!(%name, "disconnected");
                    return;
                }
                let fresh = fresh_pending(&eventloop);
                lock(&tracker).on_connection_error(fresh);
                let was_connected = status.borrow().connected;
                status.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                });
                if was_connected {
                    tracing::warn!(%name, error = %e, "connection lost; reconnecting");
                } else {
                    tracing::debug!(%name, error = %e, ?delay, "connect failed; retrying");
                }
                // The next poll connects again: with the will of that new connection.
                if let Some(w) = &will {
                    eventloop.options.set_last_will(w());
                }
                // rumqttc retries at once on the next poll; without a delay it spins.
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
}
