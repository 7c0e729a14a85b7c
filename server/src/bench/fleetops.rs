//! The fleetops side of the bench: `Fleet` on `SledStore` (on disk, in a temporary directory)
//! or on PostgreSQL (one or more instances), and `MqttLink`, with simulated devices on
//! `DeviceClient`s (or, with `--device-connections`, many over each of a few connections,
//! speaking the same wire format through the transport's codec), all through the broker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use fleetops_core::device::Operation;
use fleetops_core::device::{
    CommandResponse, DeviceRequest, ExecutionView, Outbound, Reply, StartNextRequest, UpdateRequest,
};
use fleetops_core::group::MAX_MEMBERS_PER_CHANGE;
use fleetops_core::limits;
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent};
use fleetops_core::{
    CommandStatus, Event, ExecutionId, GroupName, JobExecutionStatus, JobId, StreamId, ThingName,
    Timestamp,
};
use fleetops_service::{Fleet, FleetConfig, JobSpec};
use fleetops_store_postgres::{PostgresConfig, PostgresStore};
use fleetops_store_sled::{Durability, SledConfig, SledStore};
use fleetops_transport_mqtt::codec::{
    birth_payload, presence_topic, Codec, CommandRequest, DeviceMessage, Encoded, Limits, Qos,
    TopicLayout,
};
use fleetops_transport_mqtt::{
    BrokerConfig, CommandHandler, DeviceClient, DeviceConfig, DeviceEvent, MqttLink,
    MqttLinkConfig, Session,
};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::mux::{self, MuxConnections, MuxError};
use super::raw::{self, Sizes};
use super::stats::Latency;
use super::Progress;
use crate::config::StoreSetting;
use crate::store::AnyStore;

/// The action and parameters of every bench command.
const ACTION: &str = "bench";

fn params() -> Value {
    json!({ "payload": "x".repeat(64) })
}

/// The job document of every bench job (150 bytes of JSON, as in the service's scale run).
fn document() -> Value {
    json!({ "operation": "bench", "url": format!("https://updates.invalid/{}", "f".repeat(100)) })
}

/// How long a command may wait for its device.
const COMMAND_TTL: fleetops_core::Duration = fleetops_core::Duration::from_secs(60);

/// The sizes of fleetops' own messages for the bench's command and job, from the codec:
/// the raw baselines send payloads of these sizes.
pub fn message_sizes() -> anyhow::Result<Sizes> {
    let codec = Codec::new(TopicLayout::default(), Limits::default());
    let thing = ThingName::parse("bench-dev-00000")?;
    let job = JobId::parse("bench-0")?;
    // A UUIDv7 has the length of the ids the service draws.
    let execution_id = ExecutionId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")?;
    let now = Timestamp::from_secs(1_800_000_000);
    let view = |status, started_at| ExecutionView {
        job_id: job.clone(),
        thing_name: thing.clone(),
        status,
        status_details: Default::default(),
        queued_at: now,
        started_at,
        last_updated_at: now,
        version_number: 1,
        execution_number: 1,
        job_document: Some(document()),
    };
    let len = |o: Outbound| -> anyhow::Result<usize> { Ok(codec.encode(&o)?.payload.len()) };
    // DeviceClient's tokens are a prefix and a counter, about this long.
    let token = Some("3f9c2a71d0b84e55-17");
    let request_len = |r: DeviceRequest| -> anyhow::Result<usize> {
        Ok(codec.encode_request(&thing, token, &r)?.payload.len())
    };
    Ok(Sizes {
        command: len(Outbound::CommandRequest {
            thing: thing.clone(),
            execution_id: execution_id.clone(),
            command_id: None,
            action: ACTION.into(),
            params: params(),
            timestamp: now,
            ttl: COMMAND_TTL,
        })?,
        notify: len(Outbound::NotifyNext {
            thing: thing.clone(),
            execution: Some(view(JobExecutionStatus::Queued, None)),
            timestamp: now,
        })?,
        start_next: request_len(DeviceRequest::StartNext(StartNextRequest::default()))?,
        accepted: len(Outbound::Accepted {
            thing: thing.clone(),
            operation: Operation::StartNext,
            client_token: token.map(str::to_owned),
            reply: Reply::StartNext(Some(view(JobExecutionStatus::InProgress, Some(now)))),
            timestamp: now,
        })?,
        update: request_len(DeviceRequest::Update {
            job_id: job.clone(),
            request: UpdateRequest {
                status: Some(JobExecutionStatus::Succeeded),
                execution_number: Some(1),
                ..UpdateRequest::default()
            },
        })?,
        update_accepted: len(Outbound::Accepted {
            thing: thing.clone(),
            operation: Operation::Update(job.clone()),
            client_token: token.map(str::to_owned),
            reply: Reply::Update {
                execution_state: None,
                job_document: None,
            },
            timestamp: now,
        })?,
        response_accepted: len(Outbound::Accepted {
            thing: thing.clone(),
            operation: Operation::CommandResponse(execution_id),
            client_token: token.map(str::to_owned),
            reply: Reply::CommandResponse,
            timestamp: now,
        })?,
    })
}

/// The latency of a lone durable append of one small event, `count` times one after the
/// other, to a fresh sled store in a temporary directory with the run's durability: the
/// cost of the one flush a command round trip cannot avoid. `None` on PostgreSQL.
pub async fn store_append_latency(setup: &Setup, count: usize) -> anyhow::Result<Option<Latency>> {
    if !matches!(setup.store, StoreSetting::Sled) {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("fleetops-bench-flush-")
        .tempdir()
        .context("create the store's temporary directory")?;
    let store = SledStore::open_async(SledConfig::new(dir.path()).durability(setup.durability))
        .await
        .context("open the sled store")?;
    let stream = StreamId::command(&ExecutionId::parse("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b")?);
    let now = Timestamp::from_secs(1_800_000_000);
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count as u64 {
        let event = NewEvent::new(
            uuid::Uuid::from_u64_pair(0x0190_0000_0000_7000, i),
            Event::CommandTimedOut { at: now },
            now,
        );
        let expected = ExpectedVersion::from_current((i > 0).then_some(i));
        let t = Instant::now();
        store
            .append(AppendBatch::single(stream.clone(), expected, vec![event]))
            .await
            .context("append to the flush-measuring store")?;
        samples.push(t.elapsed());
    }
    Ok(Some(Latency::from_samples(samples, started.elapsed())))
}

/// Settings shared by both scenarios.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The broker, for the service and the devices.
    pub broker: BrokerConfig,
    /// sled's durability.
    pub durability: Durability,
    /// Distinguishes this run's client ids from other runs and other bench processes.
    pub tag: String,
    /// `FleetConfig::publish_status_changes`: three extra publishes per execution (queued,
    /// in progress, succeeded) that no device reads.
    pub status_changes: bool,
    /// sled, or the PostgreSQL database (each run in a schema of its own).
    pub store: StoreSetting,
    /// Runtimes sharing the store and the device traffic.
    pub instances: usize,
    /// The spawned broker's process id, for its CPU per operation.
    pub broker_pid: Option<u32>,
}

/// The running service: one `Fleet`, or several sharing a PostgreSQL schema and the device
/// traffic; shut down (and a sled directory removed) on [`Service::stop`].
pub struct Service {
    /// The fleet commands and jobs go through (the first instance).
    pub fleet: Arc<Fleet<AnyStore, MqttLink>>,
    /// The other instances.
    others: Vec<Arc<Fleet<AnyStore, MqttLink>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Service {
    /// Opens a fresh store (a sled directory, or a new PostgreSQL schema) and starts the
    /// fleets on it; returns once one of them leads.
    pub async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let (store, dir) = match &setup.store {
            StoreSetting::Sled => {
                let dir = tempfile::Builder::new()
                    .prefix("fleetops-bench-sled-")
                    .tempdir()
                    .context("create the store's temporary directory")?;
                let store =
                    SledStore::open_async(SledConfig::new(dir.path()).durability(setup.durability))
                        .await
                        .context("open the sled store")?;
                (Some(AnyStore::Sled(store)), Some(dir))
            }
            StoreSetting::Postgres { .. } => (None, None),
        };
        let mut fleets = Vec::with_capacity(setup.instances);
        for i in 0..setup.instances.max(1) {
            let store = match (&store, &setup.store) {
                (Some(s), _) => s.clone(),
                (None, StoreSetting::Postgres { url }) => {
                    let schema = format!("bench_{}", setup.tag.replace('-', "_"));
                    AnyStore::Postgres(
                        PostgresStore::connect(PostgresConfig::new(url.clone()).schema(schema))
                            .await
                            .context("open the PostgreSQL store")?,
                    )
                }
                (None, StoreSetting::Sled) => unreachable!("sled is opened above"),
            };
            let mut link = MqttLinkConfig::new(setup.broker.clone());
            link.client_id = format!("fleetops-bench-service-{}-{i}", setup.tag);
            // A persistent session would keep collecting device traffic after the run.
            link.session = Session::Clean;
            if setup.instances > 1 {
                link.shared_group = Some(format!("fleetops-bench-{}", setup.tag));
            }
            let link = MqttLink::connect(link)
                .await
                .context("connect the service to the broker")?;
            let config = FleetConfig {
                publish_status_changes: setup.status_changes,
                ..FleetConfig::default()
            };
            let mut builder = Fleet::builder(store.clone(), link).config(config);
            if let Some(lease) = store.lease() {
                builder = builder.lease(lease);
            }
            fleets.push(Arc::new(builder.start().await.context("start the fleet")?));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fleets.iter().any(|f| f.is_leading()) {
            if Instant::now() > deadline {
                bail!("no instance took the lease within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fleet = fleets.remove(0);
        Ok(Self {
            fleet,
            others: fleets,
            _dir: dir,
        })
    }

    /// Stops the fleets; a sled directory goes with `self`.
    pub async fn stop(self) {
        for fleet in std::iter::once(self.fleet).chain(self.others) {
            if let Ok(fleet) = Arc::try_unwrap(fleet) {
                fleet.shutdown().await;
            }
        }
    }
}

fn device_config(setup: &Setup, thing: ThingName) -> DeviceConfig {
    let mut c = DeviceConfig::new(setup.broker.clone(), thing);
    // Clean sessions: nothing of a run stays on the broker for the next one.
    c.session = Session::Clean;
    // A device has one request out at a time; rumqttc allocates a slot per unit.
    c.max_inflight = 8;
    // The bench's devices take their work from `notify-next` alone, as the raw baseline's.
    c.subscribe_notify = false;
    c.request_timeout = Duration::from_secs(60);
    c
}

/// The command scenario's device handler: answers every command `SUCCEEDED` at once.
fn succeed() -> Arc<dyn CommandHandler> {
    Arc::new(|_command: CommandRequest| async {
        CommandResponse {
            status: CommandStatus::Succeeded,
            result: None,
            status_reason: None,
        }
    })
}

/// The error for a bench command that did not succeed, with the reason stored with it.
fn unexpected_end(outcome: &fleetops_core::command::CommandExecution) -> anyhow::Error {
    anyhow::anyhow!(
        "command {} ended {:?}, not SUCCEEDED: {}",
        outcome.execution_id,
        outcome.status,
        outcome
            .status_reason
            .as_deref()
            .unwrap_or("no reason stored")
    )
}

/// A fleet and one device that answers commands.
pub struct Commands {
    service: Service,
    _device: DeviceClient,
    thing: ThingName,
}

impl Commands {
    /// Starts the fleet and connects the device.
    pub async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let service = Service::start(setup).await?;
        let thing = ThingName::parse("bench-cmd")?;
        let (device, _events) =
            DeviceClient::connect(device_config(setup, thing.clone()), Some(succeed()))
                .await
                .context("connect the command device")?;
        Ok(Self {
            service,
            _device: device,
            thing,
        })
    }

    /// `n` command round trips (`send_command` until the outcome is resolved) with
    /// `concurrency` in flight.
    pub async fn run(
        &self,
        n: usize,
        concurrency: usize,
        limit: Duration,
        progress: &Progress,
    ) -> anyhow::Result<Latency> {
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers = (0..concurrency.max(1)).map(|_| {
            let fleet = Arc::clone(&self.service.fleet);
            let thing = self.thing.clone();
            let next = Arc::clone(&next);
            let progress = progress.clone();
            async move {
                let mut samples = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let t0 = Instant::now();
                    let handle = fleet
                        .send_command(thing.clone(), ACTION, params(), COMMAND_TTL)
                        .await
                        .context("send a command")?;
                    let outcome = handle.outcome().await.context("wait for the outcome")?;
                    if outcome.status != CommandStatus::Succeeded {
                        return Err(unexpected_end(&outcome));
                    }
                    samples.push(t0.elapsed());
                    progress.inc(1);
                }
                anyhow::Ok(samples)
            }
        });
        let all = tokio::time::timeout(limit, futures::future::try_join_all(workers))
            .await
            .with_context(|| format!("{n} command round trips did not finish in {limit:?}"))??;
        let total = started.elapsed();
        Ok(Latency::from_samples(all.concat(), total))
    }

    /// Sequential command round trips until `stop` is set: each one's start and duration.
    /// Fails if a command does not succeed or the time runs out.
    pub async fn run_until(
        &self,
        stop: Arc<std::sync::atomic::AtomicBool>,
        limit: Duration,
    ) -> anyhow::Result<Vec<(Instant, Duration)>> {
        let started = Instant::now();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if started.elapsed() > limit {
                bail!("the flood did not end within {limit:?}");
            }
            let t0 = Instant::now();
            let handle = self
                .service
                .fleet
                .send_command(self.thing.clone(), ACTION, params(), COMMAND_TTL)
                .await
                .context("send a command")?;
            let outcome = handle.outcome().await.context("wait for the outcome")?;
            if outcome.status != CommandStatus::Succeeded {
                return Err(unexpected_end(&outcome));
            }
            samples.push((t0, t0.elapsed()));
        }
        Ok(samples)
    }

    /// Shuts the fleet down.
    pub async fn stop(self) {
        self.service.stop().await;
    }
}

/// A fleet and `n` simulated devices that run every job they are given to `SUCCEEDED`.
pub struct Job {
    service: Service,
    devices: JobDevices,
    things: Vec<ThingName>,
    jobs: u32,
}

/// The job's devices.
enum JobDevices {
    /// A `DeviceClient` each.
    Clients(Devices),
    /// Many over each connection (`--device-connections`).
    Multiplexed {
        /// The connections.
        conns: MuxConnections,
        /// What their devices were answered.
        replies: Arc<MuxReplies>,
    },
}

impl JobDevices {
    /// Fails if a multiplexed connection broke or one of its devices could not answer.
    /// (A `DeviceClient` reconnects by itself, and counts its failed requests.)
    fn check(&self) -> Result<(), MuxError> {
        match self {
            Self::Clients(_) => Ok(()),
            Self::Multiplexed { conns, .. } => conns.check(),
        }
    }

    /// What the devices saw, for an error: the updates the service accepted, as far as the
    /// multiplexed devices count them.
    fn seen(&self) -> String {
        match self {
            Self::Clients(_) => String::new(),
            Self::Multiplexed { replies, .. } => format!(
                "; the devices got {} accepted updates",
                replies.done.load(Ordering::Relaxed)
            ),
        }
    }
}

/// The device tasks. Each owns its device's only client: aborting it closes the connection.
struct Devices(Vec<JoinHandle<()>>);

impl Drop for Devices {
    fn drop(&mut self) {
        for d in &self.0 {
            d.abort();
        }
    }
}

/// A device: on `notify-next` with a queued execution, `start-next`, then `update SUCCEEDED`.
fn device_task(
    client: DeviceClient,
    mut events: fleetops_transport_mqtt::DeviceEvents,
    pulled: Arc<AtomicUsize>,
    errors: Arc<AtomicU64>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                DeviceEvent::Pending(_) => {
                    pulled.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::NotifyNext {
                    execution: Some(view),
                    ..
                } if view.status == JobExecutionStatus::Queued => {
                    let started = match client.start_next(StartNextRequest::default()).await {
                        Ok(Some(v)) => v,
                        Ok(None) => continue,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let request = UpdateRequest {
                        status: Some(JobExecutionStatus::Succeeded),
                        execution_number: Some(started.execution_number),
                        ..UpdateRequest::default()
                    };
                    if client.update(started.job_id, request).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    })
}

/// Starts the fleet; names the job's `n` things.
async fn start_for(setup: &Setup, n: usize) -> anyhow::Result<(Service, Vec<ThingName>)> {
    let service = Service::start(setup).await?;
    let things = (0..n)
        .map(|i| ThingName::parse(&format!("bench-dev-{i:05}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((service, things))
}

impl Job {
    /// Starts the fleet and connects `n` devices, `wave` at a time; returns once every device
    /// has pulled its (empty) pending list through the service, so the job starts on a quiet
    /// fleet.
    pub async fn start(
        setup: &Setup,
        n: usize,
        wave: usize,
        limit: Duration,
        progress: &Progress,
    ) -> anyhow::Result<(Self, Arc<AtomicU64>)> {
        let (service, things) = start_for(setup, n).await?;
        let pulled = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let mut devices = Devices(Vec::with_capacity(n));
        for chunk in things.chunks(wave.max(1)) {
            let conns = chunk
                .iter()
                .map(|t| DeviceClient::connect(device_config(setup, t.clone()), None));
            for (t, c) in chunk.iter().zip(futures::future::join_all(conns).await) {
                let (client, events) = c.with_context(|| format!("connect device {t}"))?;
                devices.0.push(device_task(
                    client,
                    events,
                    Arc::clone(&pulled),
                    Arc::clone(&errors),
                ));
                progress.inc(1);
            }
        }
        let job = Self {
            service,
            devices: JobDevices::Clients(devices),
            things,
            jobs: 0,
        };
        let deadline = Instant::now() + limit;
        while pulled.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} devices got their pending list within {limit:?}",
                    pulled.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((job, errors))
    }

    /// Starts the fleet and `n` devices over `connections` MQTT connections (`wave` of them
    /// set up at a time): each connection subscribes, per device, to that device's topics,
    /// then publishes each device's birth and pulls its pending list, as a `DeviceClient`
    /// does after connecting. Returns once every pull was answered, so the job starts on a
    /// quiet fleet. `progress` counts each device twice: subscribed, then pulled.
    pub async fn start_multiplexed(
        setup: &Setup,
        n: usize,
        connections: usize,
        wave: usize,
        limit: Duration,
        progress: &Progress,
    ) -> anyhow::Result<(Self, Arc<AtomicU64>)> {
        let (service, things) = start_for(setup, n).await?;
        let replies = Arc::new(MuxReplies::default());
        let errors = Arc::new(AtomicU64::new(0));
        let codec = Codec::new(TopicLayout::default(), Limits::default());
        let slices = mux::split(n, connections);
        let tokens: Vec<Arc<Tokens>> = (0..slices.len()).map(Tokens::new).map(Arc::new).collect();
        let conns = MuxConnections::start(slices.len(), wave, |i| {
            let mine = &things[slices[i].clone()];
            let on_publish = multiplexed_devices(
                codec.clone(),
                Arc::clone(&tokens[i]),
                Arc::clone(&replies),
                Arc::clone(&errors),
            );
            let layout = codec.layout();
            async move {
                let id = format!("fleetops-bench-devices-{}-{i}", setup.tag);
                let mut conn =
                    raw::connect_devices(&setup.broker, id, mine.len(), on_publish).await?;
                // What `DeviceClient` subscribes to with `subscribe_notify` off (`device_config`).
                let filters = mine.iter().map(|t| {
                    layout
                        .device_filters(t)
                        .into_iter()
                        .filter(|f| !f.ends_with("/notify"))
                        .collect()
                });
                conn.subscribe(filters, limit, progress).await?;
                Ok(conn)
            }
        })
        .await?;
        // After its subscriptions, a `DeviceClient` publishes its birth and pulls its
        // pending list (`get`); the service answers each pull.
        let greetings = conns
            .iter()
            .zip(&slices)
            .zip(&tokens)
            .map(|((conn, slice), tokens)| {
                let mine = &things[slice.clone()];
                let codec = &codec;
                async move {
                    let stamp = wall_millis();
                    for thing in mine {
                        conn.publish(Encoded {
                            topic: presence_topic(codec.layout(), thing),
                            payload: birth_payload(true, stamp),
                            qos: Qos::AtLeastOnce,
                            properties: Default::default(),
                        })
                        .await?;
                        let token = tokens.next();
                        let get = codec
                            .encode_request(thing, Some(&token), &DeviceRequest::GetPending)
                            .map_err(|e| MuxError::Failed {
                                client: conn.id().to_owned(),
                                reason: format!("encode a pull: {e}"),
                            })?;
                        conn.publish(get).await?;
                    }
                    Ok::<_, MuxError>(())
                }
            });
        let deadline = Instant::now() + limit;
        tokio::time::timeout(limit, futures::future::try_join_all(greetings))
            .await
            .with_context(|| {
                format!("the devices' births and pulls not sent within {limit:?}")
            })??;
        let mut shown = 0;
        loop {
            let pulled = replies.pulled.load(Ordering::Relaxed);
            progress.inc(pulled.saturating_sub(shown) as u64);
            shown = shown.max(pulled);
            if pulled >= n {
                break;
            }
            conns.check()?;
            if Instant::now() > deadline {
                bail!("only {pulled} of {n} devices got their pending list within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let job = Self {
            service,
            devices: JobDevices::Multiplexed { conns, replies },
            things,
            jobs: 0,
        };
        Ok((job, errors))
    }

    /// Creates a job for every device and returns the time until all executions are
    /// `SUCCEEDED`. Fails if one ends otherwise or the time runs out.
    pub async fn run(&mut self, limit: Duration, progress: &Progress) -> anyhow::Result<Duration> {
        let n = self.things.len() as u64;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let id = JobId::parse(&format!("bench-{millis}-{}", self.jobs))?;
        self.jobs += 1;
        let fleet = &self.service.fleet;
        let spec = JobSpec::new(id.clone(), document());
        // A job names at most `MAX_JOB_TARGETS` targets: a larger fleet goes into a group
        // first (untimed), as an operator would do it.
        let spec = if self.things.len() <= limits::MAX_JOB_TARGETS {
            spec.things(self.things.iter().cloned())
        } else {
            let group = GroupName::parse(&format!("bench-{millis}-{}", self.jobs))?;
            fleet
                .create_group(group.clone(), None)
                .await
                .context("create the bench group")?;
            // Seconds for 100,000 members: worth a bar of its own.
            let filling = Progress::new(n, "fleetops: filling the job's group (untimed)");
            for chunk in self.things.chunks(MAX_MEMBERS_PER_CHANGE) {
                fleet
                    .add_group_members(&group, chunk.to_vec())
                    .await
                    .context("fill the bench group")?;
                filling.inc(chunk.len() as u64);
            }
            spec.groups([group])
        };
        let started = Instant::now();
        fleet.create_job(spec).await.context("create the job")?;
        let mut shown = 0;
        loop {
            let d = fleet.describe_job(&id).context("describe the job")?;
            let c = d.counters;
            progress.inc(c.succeeded.saturating_sub(shown));
            shown = shown.max(c.succeeded);
            if c.succeeded == n {
                return Ok(started.elapsed());
            }
            self.devices.check()?;
            let other = c.failed + c.rejected + c.timed_out + c.canceled + c.removed;
            if other > 0 {
                bail!("job {id}: {other} executions ended other than SUCCEEDED ({c:?})");
            }
            if started.elapsed() > limit {
                bail!(
                    "job {id} not done after {limit:?}: {c:?}{}",
                    self.devices.seen()
                );
            }
            // Fine enough for runs of seconds, and cheap for the fleet.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Disconnects the devices and shuts the fleet down.
    pub async fn stop(self) {
        let Self {
            service, devices, ..
        } = self;
        match devices {
            JobDevices::Clients(devices) => drop(devices),
            JobDevices::Multiplexed { conns, .. } => conns.close().await,
        }
        service.stop().await;
    }
}

/// Milliseconds since the Unix epoch: the stamp of a birth message.
fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The client tokens of one multiplexed connection's requests: a prefix and a counter, as
/// `DeviceClient` draws them (the same length, so the same message sizes).
struct Tokens {
    prefix: String,
    next: AtomicU64,
}

impl Tokens {
    fn new(connection: usize) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            prefix: format!("{nanos:08x}{:04x}", connection & 0xffff),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// What the multiplexed devices were answered.
#[derive(Default)]
struct MuxReplies {
    /// Pulls (`get`) answered.
    pulled: AtomicUsize,
    /// Updates to `SUCCEEDED` accepted.
    done: AtomicUsize,
}

/// The devices of one multiplexed connection: for whichever thing a message is addressed to,
/// what `device_task` does with that thing's `DeviceClient`. On `notify-next` with a queued
/// execution, `start-next`; on its `accepted`, `update` to `SUCCEEDED` with the execution
/// number; the update's `accepted` ends the device's work. Messages are decoded and requests
/// encoded by the transport's codec, as `DeviceClient` does, so the service gets exactly the
/// bytes it gets from one. A refused request counts as a device error, as there.
fn multiplexed_devices(
    codec: Codec,
    tokens: Arc<Tokens>,
    replies: Arc<MuxReplies>,
    errors: Arc<AtomicU64>,
) -> mux::OnPublish {
    Box::new(move |publish, client| {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            errors.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let (thing, message) = match codec.decode_device_message(topic, &publish.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(topic, error = %e, "undecodable message to a simulated device");
                errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        };
        let request = match message {
            DeviceMessage::NotifyNext {
                execution: Some(view),
                ..
            } if view.status == JobExecutionStatus::Queued => {
                DeviceRequest::StartNext(StartNextRequest::default())
            }
            DeviceMessage::Accepted {
                reply: Reply::StartNext(Some(view)),
                ..
            } => DeviceRequest::Update {
                job_id: view.job_id,
                request: UpdateRequest {
                    status: Some(JobExecutionStatus::Succeeded),
                    execution_number: Some(view.execution_number),
                    ..UpdateRequest::default()
                },
            },
            DeviceMessage::Accepted {
                reply: Reply::Update { .. },
                ..
            } => {
                replies.done.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            DeviceMessage::Accepted {
                reply: Reply::Pending(_),
                ..
            } => {
                replies.pulled.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            DeviceMessage::Rejected { error, .. } => {
                tracing::warn!(%thing, %error, "a simulated device's request was refused");
                errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // Nothing to start (`start-next` found none, `notify-next` without a queued
            // execution), or a command, which the job's devices never get.
            _ => return Ok(()),
        };
        let encoded = codec
            .encode_request(&thing, Some(&tokens.next()), &request)
            .map_err(|e| format!("encode a request of {thing}: {e}"))?;
        mux::try_publish(client, encoded)
    })
}
