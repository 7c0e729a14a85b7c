//! `DeviceClient`: the Rust device SDK.
//!
//! A device connects with its thing name as client id and, by default, a persistent session,
//! subscribes to its own topics only, and pulls its pending jobs after every (re)connect: the
//! service's store is the truth, `notify` and the broker's session only make it faster.
//! Requests are matched with their replies by `clientToken`, so a device needs no standing
//! knowledge of which reply topic answers what.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, ExecutionView, JobTarget, PendingJobs, Reply,
    StartNextRequest, UpdateRequest,
};
use fleetops_core::ids::{ExecutionId, JobId, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::status::CommandStatus;
use fleetops_core::time::Timestamp;
use rumqttc::v5::mqttbytes::v5::{Filter, LastWill};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::codec::{
    birth_payload, presence_topic, Codec, CommandRequest, DeviceMessage, Encoded, Limits, Qos,
    TopicLayout,
};
use crate::config::{mqtt_options, BrokerConfig, ClientKnobs, Session};
use crate::connection::{wait_ack, Connection, Params, WillFn};
use crate::error::Error;

/// Settings of a [`DeviceClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Where the broker is.
    pub broker: BrokerConfig,
    /// The thing; also the MQTT client id unless `client_id` is set.
    pub thing: ThingName,
    /// An MQTT client id other than the thing name (register it with the thing, and map it
    /// in the broker's ACL: `docs/operations.md`).
    pub client_id: Option<String>,
    /// Publish presence on `{prefix}/things/{thing}/presence`: a last will set at every
    /// connect, a birth after every ConnAck and an offline message before a clean
    /// disconnect (`docs/protocol.md`).
    pub presence: bool,
    /// The topic prefix.
    pub layout: TopicLayout,
    /// Payload bounds.
    pub limits: Limits,
    /// Persistent by default, so commands and notifications sent while the device is away
    /// wait on the broker.
    pub session: Session,
    /// How long a request waits for its reply.
    pub request_timeout: Duration,
    /// The device's window of unacknowledged publishes (rumqttc allocates a slot per unit).
    pub max_inflight: u16,
    /// The largest MQTT packet accepted.
    pub max_packet_size: u32,
    /// Pull the pending jobs after every (re)connect and report them as
    /// [`DeviceEvent::Pending`].
    pub pull_on_connect: bool,
    /// Subscribe to `jobs/notify`, the whole pending list on every change. A device that takes
    /// its jobs one at a time from `notify-next` can turn it off and spare the broker one
    /// routed message per change.
    pub subscribe_notify: bool,
}

impl DeviceConfig {
    /// Defaults for `thing` on `broker`.
    pub fn new(broker: BrokerConfig, thing: ThingName) -> Self {
        Self {
            broker,
            thing,
            client_id: None,
            presence: true,
            layout: TopicLayout::default(),
            limits: Limits::default(),
            session: Session::Persistent {
                expiry: Duration::from_secs(24 * 3600),
            },
            request_timeout: Duration::from_secs(10),
            max_inflight: 100,
            max_packet_size: 256 * 1024,
            pull_on_connect: true,
            subscribe_notify: true,
        }
    }
}

/// Answers command requests. Implemented for async closures
/// `Fn(CommandRequest) -> impl Future<Output = CommandResponse>`.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// Executes the command and says how it went (`SUCCEEDED`, `FAILED` or `REJECTED`).
    async fn handle(&self, command: CommandRequest) -> CommandResponse;
}

#[async_trait]
impl<F, Fut> CommandHandler for F
where
    F: Fn(CommandRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CommandResponse> + Send + 'static,
{
    async fn handle(&self, command: CommandRequest) -> CommandResponse {
        (self)(command).await
    }
}

/// Something the device should know about, in order of arrival.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    /// A connection is up and its subscriptions are in place.
    Connected {
        /// Whether the broker resumed the previous session.
        session_present: bool,
    },
    /// The connection dropped; the client reconnects by itself.
    Disconnected {
        /// Why, as far as the client can tell.
        reason: String,
    },
    /// The pending jobs, pulled after a (re)connect.
    Pending(PendingJobs),
    /// `jobs/notify`.
    Notify {
        /// The pending jobs.
        jobs: PendingJobs,
        /// When the service sent it.
        timestamp: Timestamp,
    },
    /// `jobs/notify-next`.
    NotifyNext {
        /// The next pending execution; `None` when none is left.
        execution: Option<ExecutionView>,
        /// When the service sent it.
        timestamp: Timestamp,
    },
    /// The command handler answered and the service accepted or refused the answer.
    CommandAnswered {
        /// The command execution.
        execution_id: ExecutionId,
        /// The status the handler answered.
        status: CommandStatus,
        /// `Err(Error::Rejected(..))` when the service refused it (e.g. too late).
        outcome: Result<(), Error>,
    },
}

/// The events of a [`DeviceClient`]. Dropping it is fine: the client then drops its
/// events quietly. Held but not read, it fills up (1,024 events), and later events are
/// dropped with a warning.
pub struct DeviceEvents {
    rx: mpsc::Receiver<DeviceEvent>,
}

impl DeviceEvents {
    /// The next event; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<DeviceEvent> {
        self.rx.recv().await
    }

    /// An event if one is ready.
    pub fn try_next(&mut self) -> Option<DeviceEvent> {
        self.rx.try_recv().ok()
    }
}

/// The accepted answer to an update.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateAccepted {
    /// With `includeJobExecutionState`.
    pub execution_state: Option<ExecutionState>,
    /// With `includeJobDocument`.
    pub job_document: Option<Value>,
}

/// Commands seen lately, so a redelivered request (QoS 1 is at least once) is not executed
/// twice; a repeated one is answered again with the first answer.
#[derive(Default)]
struct RecentCommands {
    order: VecDeque<ExecutionId>,
    answers: HashMap<ExecutionId, Option<CommandResponse>>,
}

impl RecentCommands {
    const CAPACITY: usize = 256;

    /// `None` if new (now marked as running), else the earlier answer if there is one yet.
    fn seen(&mut self, id: &ExecutionId) -> Option<Option<CommandResponse>> {
        if let Some(answer) = self.answers.get(id) {
            return Some(answer.clone());
        }
        if self.order.len() == Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.answers.insert(id.clone(), None);
        None
    }

    fn answered(&mut self, id: &ExecutionId, response: &CommandResponse) {
        if let Some(slot) = self.answers.get_mut(id) {
            *slot = Some(response.clone());
        }
    }
}

struct Inner {
    conn: Connection,
    codec: Codec,
    thing: ThingName,
    request_timeout: Duration,
    pull_on_connect: bool,
    waiting: Mutex<HashMap<String, oneshot::Sender<DeviceMessage>>>,
    next_token: AtomicU64,
    token_prefix: String,
    events: mpsc::Sender<DeviceEvent>,
    handler: Option<Arc<dyn CommandHandler>>,
    recent: Mutex<RecentCommands>,
    /// The presence topic, when presence is on.
    presence: Option<String>,
    /// The stamp of the current connection's birth and will.
    stamp: Arc<AtomicU64>,
    /// Changes (its sender is dropped) when the last `DeviceClient` handle goes: the tasks
    /// the client spawns hold `Inner`, and so the connection, and must end then rather than
    /// keep the connection up, say while waiting out a reply that will never come.
    closed: watch::Receiver<()>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Aborts the client's background tasks when the last handle goes away, and ends the tasks
/// it spawned on the way (see [`Inner::spawn`]) by dropping the sender of `Inner::closed`.
struct Tasks {
    handles: Vec<JoinHandle<()>>,
    _closing: watch::Sender<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.handles {
            t.abort();
        }
    }
}

/// Removes a request's reply slot however the request ends (reply, timeout, cancellation).
struct Slot<'a> {
    inner: &'a Inner,
    token: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        guard(&self.inner.waiting).remove(&self.token);
    }
}

/// A connected device. Cheap to clone; the connection ends when the last clone is dropped.
#[derive(Clone)]
pub struct DeviceClient {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("thing", &self.inner.thing)
            .finish_non_exhaustive()
    }
}

impl DeviceClient {
    /// Connects as `config.thing`; returns once the first connection has its subscriptions
    /// in place. Commands are answered by `handler`; without one they are answered
    /// `REJECTED`.
    pub async fn connect(
        config: DeviceConfig,
        handler: Option<Arc<dyn CommandHandler>>,
    ) -> Result<(Self, DeviceEvents), Error> {
        let codec = Codec::new(config.layout.clone(), config.limits);
        let filters = config
            .layout
            .device_filters(&config.thing)
            .into_iter()
            .filter(|f| config.subscribe_notify || !f.ends_with("/notify"))
            .map(|f| Filter::new(f, QoS::AtLeastOnce))
            .collect();
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| config.thing.to_string());
        let stamp = Arc::new(AtomicU64::new(0));
        let will: Option<WillFn> = config.presence.then(|| {
            let topic = presence_topic(&config.layout, &config.thing);
            let stamp = Arc::clone(&stamp);
            Arc::new(move || {
                // A new connection gets a stamp greater than every earlier one, even if the
                // clock stepped back: its birth then supersedes the earlier will.
                let now = wall_millis();
                let prev = stamp.load(Ordering::SeqCst);
                let next = now.max(prev + 1);
                stamp.store(next, Ordering::SeqCst);
                LastWill::new(
                    topic.clone(),
                    birth_payload(false, next),
                    QoS::AtLeastOnce,
                    false,
                    None,
                )
            }) as WillFn
        });
        let options = mqtt_options(
            &config.broker,
            &ClientKnobs {
                client_id: &client_id,
                session: config.session,
                receive_maximum: 64,
                max_packet_size: config.max_packet_size,
                max_inflight: config.max_inflight,
                manual_acks: false,
            },
        )?;
        let conn = Connection::start(Params {
            options,
            channel_capacity: 64,
            filters,
            backoff: config.broker.backoff,
            name: config.thing.to_string(),
            // The service publishes to a device at QoS 1 only.
            max_queued_qos0: 1024,
            will,
        });
        let (events_tx, events_rx) = mpsc::channel(1024);
        let (closing, closed) = watch::channel(());
        let inner = Arc::new(Inner {
            conn,
            codec,
            thing: config.thing.clone(),
            request_timeout: config.request_timeout,
            pull_on_connect: config.pull_on_connect,
            waiting: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            token_prefix: token_prefix(),
            events: events_tx,
            handler,
            recent: Mutex::new(RecentCommands::default()),
            presence: config
                .presence
                .then(|| presence_topic(&config.layout, &config.thing)),
            stamp,
            closed,
        });
        let tasks = Tasks {
            handles: vec![
                tokio::spawn(dispatch(Arc::clone(&inner))),
                tokio::spawn(watch_sessions(Arc::clone(&inner))),
            ],
            _closing: closing,
        };
        inner
            .conn
            .wait_ready(0, config.broker.connect_timeout)
            .await?;
        Ok((
            Self {
                inner,
                _tasks: Arc::new(tasks),
            },
            DeviceEvents { rx: events_rx },
        ))
    }

    /// The thing this client is.
    pub fn thing(&self) -> &ThingName {
        &self.inner.thing
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.inner.conn.status().borrow().connected
    }

    /// `jobs/get`: the pending executions.
    pub async fn get_pending(&self) -> Result<PendingJobs, Error> {
        match self.inner.call(DeviceRequest::GetPending).await? {
            Reply::Pending(jobs) => Ok(jobs),
            other => Err(unexpected(&other)),
        }
    }

    /// `jobs/start-next`: starts (or returns, if already in progress) the next pending
    /// execution; `None` when nothing is pending.
    pub async fn start_next(
        &self,
        request: StartNextRequest,
    ) -> Result<Option<ExecutionView>, Error> {
        match self.inner.call(DeviceRequest::StartNext(request)).await? {
            Reply::StartNext(execution) => Ok(execution),
            other => Err(unexpected(&other)),
        }
    }

    /// `jobs/{jobId}/get`, `$next` included.
    pub async fn describe(&self, request: DescribeRequest) -> Result<ExecutionView, Error> {
        match self.inner.call(DeviceRequest::Describe(request)).await? {
            Reply::Describe(execution) => Ok(execution),
            other => Err(unexpected(&other)),
        }
    }

    /// `jobs/$next/get` with the job document.
    pub async fn describe_next(&self) -> Result<ExecutionView, Error> {
        self.describe(DescribeRequest {
            job: JobTarget::Next,
            execution_number: None,
            include_job_document: true,
        })
        .await
    }

    /// `jobs/{jobId}/update`; set `expected_version` for optimistic concurrency.
    ///
    /// Set `execution_number` to the attempt you were given: MQTT delivers at least once, and
    /// an update without it that the broker re-delivers after a retry was queued would apply
    /// to the new attempt. With it, such a stale update is refused with `ResourceNotFound`.
    pub async fn update(
        &self,
        job_id: JobId,
        request: UpdateRequest,
    ) -> Result<UpdateAccepted, Error> {
        match self
            .inner
            .call(DeviceRequest::Update { job_id, request })
            .await?
        {
            Reply::Update {
                execution_state,
                job_document,
            } => Ok(UpdateAccepted {
                execution_state,
                job_document,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Answers a command by hand (the handler does it automatically).
    pub async fn respond(
        &self,
        execution_id: ExecutionId,
        response: CommandResponse,
    ) -> Result<(), Error> {
        match self
            .inner
            .call(DeviceRequest::CommandResponse {
                execution_id,
                response,
            })
            .await?
        {
            Reply::CommandResponse => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Disconnects cleanly; the persistent session (if any) stays on the broker. With
    /// presence on, an offline message goes first (a clean disconnect sends no will).
    pub async fn disconnect(&self) {
        if self.inner.conn.status().borrow().connected {
            self.inner.publish_presence(false).await;
        }
        self.inner.conn.disconnect().await;
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::UnexpectedReply(format!("{reply:?}"))
}

/// A per-process token prefix, so replies meant for an earlier run of the same device (a
/// persistent session delivers them late) never match a request of this one.
fn token_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{:08x}{:04x}", nanos, std::process::id() & 0xffff)
}

/// Milliseconds since the Unix epoch.
fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Inner {
    /// Publishes presence with the current connection's stamp and waits (briefly) for the
    /// broker's acknowledgement; failures are logged, the next connect sends a birth again.
    async fn publish_presence(&self, online: bool) {
        let Some(topic) = &self.presence else {
            return;
        };
        let encoded = Encoded {
            topic: topic.clone(),
            payload: birth_payload(online, self.stamp.load(Ordering::SeqCst)),
            qos: Qos::AtLeastOnce,
            properties: Default::default(),
        };
        let outcome = match self.conn.publish(encoded).await {
            Ok(ack) => wait_ack(ack, self.request_timeout).await,
            Err(e) => Err(e),
        };
        match outcome {
            // Nobody subscribes to presence: the service does not use this source.
            Ok(()) | Err(Error::NoSubscribers) => {}
            Err(e) => {
                tracing::warn!(thing = %self.thing, error = %e, online, "presence not published")
            }
        }
    }

    fn emit(&self, event: DeviceEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            // The application dropped its `DeviceEvents`: it does not want them, and a
            // warning per event would only flood its log.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(e @ mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(thing = %self.thing, "device event dropped: {e}")
            }
        }
    }

    async fn call(&self, request: DeviceRequest) -> Result<Reply, Error> {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{n}", self.token_prefix);
        let encoded = self
            .codec
            .encode_request(&self.thing, Some(&token), &request)?;
        let (tx, rx) = oneshot::channel();
        guard(&self.waiting).insert(token.clone(), tx);
        let _slot = Slot { inner: self, token };
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let ack = self.conn.publish(encoded).await?;
        // A refused publish (ACL) fails fast instead of waiting for a reply that can't come.
        match wait_ack(ack, left()).await {
            // The service subscribes to requests through the broker; a broker that says
            // nobody does may be racing a (re)subscription: the reply timeout decides.
            Ok(()) | Err(Error::NoSubscribers) => {}
            Err(Error::Timeout(_)) => return Err(Error::Timeout(self.request_timeout)),
            Err(other) => return Err(other),
        }
        let message = match tokio::time::timeout(left(), rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => return Err(Error::Timeout(self.request_timeout)),
        };
        match message {
            DeviceMessage::Accepted {
                operation, reply, ..
            } => {
                if operation != request.operation() {
                    return Err(Error::UnexpectedReply(format!(
                        "{operation:?} answers {:?}",
                        request.operation()
                    )));
                }
                Ok(reply)
            }
            DeviceMessage::Rejected { error, .. } => Err(Error::Rejected(error)),
            other => Err(Error::UnexpectedReply(format!("{other:?}"))),
        }
    }

    /// Spawns `work`, ending it early when the last `DeviceClient` handle goes (it holds
    /// this `Inner`, and with it the connection).
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut closed = self.closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = work => {}
                // Only an error can come: nothing is ever sent.
                _ = closed.changed() => {}
            }
        });
    }

    fn on_message(self: &Arc<Self>, message: DeviceMessage) {
        match message {
            DeviceMessage::Accepted {
                ref client_token, ..
            }
            | DeviceMessage::Rejected {
                ref client_token, ..
            } => {
                let slot = client_token
                    .as_ref()
                    .and_then(|t| guard(&self.waiting).remove(t));
                match slot {
                    Some(tx) => {
                        let _ = tx.send(message);
                    }
                    // Late (timed out) or another run's reply on a persistent session.
                    None => tracing::debug!(thing = %self.thing, "reply without a waiting request"),
                }
            }
            DeviceMessage::Notify { jobs, timestamp } => {
                self.emit(DeviceEvent::Notify { jobs, timestamp })
            }
            DeviceMessage::NotifyNext {
                execution,
                timestamp,
            } => self.emit(DeviceEvent::NotifyNext {
                execution,
                timestamp,
            }),
            DeviceMessage::Command(command) => {
                let id = command.execution_id.clone();
                let seen = guard(&self.recent).seen(&id);
                match seen {
                    None => {
                        self.spawn(run_command(Arc::clone(self), command));
                    }
                    Some(Some(answer)) => {
                        // The first answer may be what got lost: send it again.
                        self.spawn(answer_command(Arc::clone(self), id, answer));
                    }
                    Some(None) => {
                        tracing::debug!(thing = %self.thing, %id, "duplicate of a running command")
                    }
                }
            }
        }
    }
}

async fn run_command(inner: Arc<Inner>, command: CommandRequest) {
    let id = command.execution_id.clone();
    let response = match &inner.handler {
        Some(h) => h.handle(command).await,
        None => CommandResponse {
            status: CommandStatus::Rejected,
            result: None,
            status_reason: Some("this device has no command handler".into()),
        },
    };
    guard(&inner.recent).answered(&id, &response);
    answer_command(inner, id, response).await;
}

async fn answer_command(inner: Arc<Inner>, execution_id: ExecutionId, response: CommandResponse) {
    let status = response.status;
    let outcome = inner
        .call(DeviceRequest::CommandResponse {
            execution_id: execution_id.clone(),
            response,
        })
        .await
        .map(|_| ());
    if let Err(e) = &outcome {
        tracing::warn!(thing = %inner.thing, %execution_id, error = %e, "command answer not accepted");
    }
    inner.emit(DeviceEvent::CommandAnswered {
        execution_id,
        status,
        outcome,
    });
}

/// Routes everything the broker delivers to this device.
async fn dispatch(inner: Arc<Inner>) {
    loop {
        let batch = inner.conn.next_incoming_batch(64).await;
        if batch.is_empty() {
            return;
        }
        for incoming in batch {
            let publish = incoming.publish;
            let Ok(topic) = std::str::from_utf8(&publish.topic) else {
                continue;
            };
            match inner.codec.decode_device_message(topic, &publish.payload) {
                Ok((thing, message)) if thing == inner.thing => inner.on_message(message),
                Ok((thing, _)) => {
                    tracing::warn!(thing = %inner.thing, other = %thing, topic, "message for another thing")
                }
                Err(e) => {
                    tracing::warn!(thing = %inner.thing, topic, error = %e, "undecodable message")
                }
            }
        }
    }
}

/// Reports connection changes and pulls the pending jobs after each (re)connect.
async fn watch_sessions(inner: Arc<Inner>) {
    let mut status = inner.conn.status();
    let mut ready = 0;
    let mut connected = false;
    loop {
        let s = status.borrow_and_update().clone();
        if connected && !s.connected {
            inner.emit(DeviceEvent::Disconnected {
                reason: s.last_error.clone().unwrap_or_default(),
            });
        }
        connected = s.connected;
        if s.ready > ready {
            ready = s.ready;
            if inner.presence.is_some() {
                let birth = Arc::clone(&inner);
                inner.spawn(async move { birth.publish_presence(true).await });
            }
            inner.emit(DeviceEvent::Connected {
                session_present: s.session_present,
            });
            if inner.pull_on_connect {
                // Its own task: the pull waits for a reply, and this loop must keep watching.
                let puller = Arc::clone(&inner);
                inner.spawn(async move {
                    let inner = puller;
                    match inner.call(DeviceRequest::GetPending).await {
                        Ok(Reply::Pending(jobs)) => inner.emit(DeviceEvent::Pending(jobs)),
                        Ok(other) => tracing::warn!(thing = %inner.thing, ?other, "odd get reply"),
                        Err(e) => {
                            tracing::warn!(thing = %inner.thing, error = %e, "pull on connect failed")
                        }
                    }
                });
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
