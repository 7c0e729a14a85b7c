//! [`Fleet`]: the runtime handle and its API.

use std::collections::{BTreeSet, HashMap};
use std::hash::RandomState;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::event::EndReason;
use fleetops_core::group::{Group, GroupIntent};
use fleetops_core::ids::StreamKind;
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::lease::Lease;
use fleetops_core::link::DeviceLink;
use fleetops_core::projection::ExecutionEntry;
use fleetops_core::store::{EventStore, StoredEvent};
use fleetops_core::thing::{Connectivity, OfflineCommands, PresenceReport, Thing, ThingIntent};
use fleetops_core::{
    CommandStatus, Duration, ExecutionId, GroupName, JobExecutionStatus, JobId, JobStatus,
    Rejection, StreamId, ThingName,
};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::cache::{CommandCache, ExecCache, COMMAND_CAPACITY};
use crate::clock::{Clock, SystemClock};
use crate::error::FleetError;
use crate::health::{Health, HealthState, HealthStatus};
use crate::ids::{IdSource, UuidV7Ids};
use crate::metrics::{FleetMetrics, Recorder};
use crate::runtime::Inner;
use crate::sync::lock;
use crate::types::{
    CommandRow, ExecutionRow, FleetConfig, GroupSummary, HistoryPage, JobDescription, JobFilter,
    JobSpec, JobSummary, JobUpdate, Page, Paged, StatusChange,
};
use crate::{follower, jobs, leader, outbox, scheduler, snapshot, worker};
use fleetops_machine::outbox::Outbox;
use fleetops_machine::ReadModel;

/// Every job status, in the order metrics list them.
const JOB_STATUSES: [JobStatus; 4] = [
    JobStatus::Scheduled,
    JobStatus::InProgress,
    JobStatus::Completed,
    JobStatus::Canceled,
];

/// A stream of stored events with their envelopes, from [`Fleet::events`].
pub type EventStream = BoxStream<'static, Result<StoredEvent, FleetError>>;

/// The fleetops runtime: commands, jobs, groups, timers, rollout, projections and recovery,
/// over any [`EventStore`] and [`DeviceLink`].
///
/// It runs a fixed set of tasks, whatever the fleet size: a projection follower, an inbound
/// loop, a few worker shards, one scheduler, one job driver and one outbox. Dropping the
/// `Fleet` (or calling [`Fleet::shutdown`]) stops them; the store keeps everything, and a new
/// `Fleet` on the same store resumes where this one stopped.
///
/// ```
/// use fleetops_core::{Duration, ThingName, CommandStatus};
/// use fleetops_core::device::{CommandResponse, DeviceRequest, Outbound};
/// use fleetops_service::{Fleet, link::ChannelLink};
/// use fleetops_store_memory::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (link, mut devices) = ChannelLink::pair(64);
/// let fleet = Fleet::start(MemoryStore::new(), link).await?;
/// let lamp = ThingName::parse("lamp-1")?;
/// let handle = fleet
///     .send_command(lamp.clone(), "switch-on", serde_json::json!({}), Duration::from_secs(30))
///     .await?;
/// // The device gets the request and answers it.
/// let Some(Outbound::CommandRequest { execution_id, .. }) = devices.recv().await else { panic!() };
/// devices.request(&lamp, None, DeviceRequest::CommandResponse {
///     execution_id,
///     response: CommandResponse { status: CommandStatus::Succeeded, result: None, status_reason: None },
/// }).await?;
/// assert_eq!(handle.outcome().await?.status, CommandStatus::Succeeded);
/// # Ok(()) }
/// ```
pub struct Fleet<S: EventStore, L: DeviceLink> {
    pub(crate) inner: Arc<Inner<S, L>>,
    tasks: Vec<JoinHandle<()>>,
}

impl<S: EventStore, L: DeviceLink> std::fmt::Debug for Fleet<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("checkpoint", &self.checkpoint())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Sets up a [`Fleet`]: clock, id source and tuning; then [`FleetBuilder::start`].
pub struct FleetBuilder<S, L> {
    store: S,
    link: L,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdSource>,
    config: FleetConfig,
    lease: Option<Arc<dyn Lease>>,
}

impl<S: EventStore, L: DeviceLink> FleetBuilder<S, L> {
    /// Shares the store with other runtimes: the fleet-wide duties (firing deadlines, rolling
    /// jobs out, publishing what the folds owe devices) are done only while this runtime holds
    /// `lease`, and taken over by another runtime when it loses it. Without a lease (the
    /// default) the runtime assumes it is the store's only user and leads from the start.
    /// Every runtime answers device requests and API calls either way.
    pub fn lease(mut self, lease: impl Lease) -> Self {
        self.lease = Some(Arc::new(lease));
        self
    }

    /// Uses `clock` for `now` and for sleeping (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses `ids` for new ids (default: [`UuidV7Ids`]).
    pub fn ids(mut self, ids: impl IdSource) -> Self {
        self.ids = Arc::new(ids);
        self
    }

    /// Uses `config` for tuning.
    pub fn config(mut self, config: FleetConfig) -> Self {
        self.config = config;
        self
    }

    /// Catches up with the store, re-derives what is owed, and starts the tasks.
    ///
    /// Every stored event is folded into the in-memory projections before the fleet serves
    /// anything: from the stored snapshot when the store has one that belongs to its
    /// history, else from position 1 (an unusable snapshot is deleted first).
    pub async fn start(self) -> Result<Fleet<S, L>, FleetError> {
        let shards = self.config.shards.max(1);
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::channel(self.config.worker_queue.max(1));
            senders.push(tx);
            receivers.push(rx);
        }
        let (changes, _) = broadcast::channel(self.config.status_change_buffer.max(1));
        let cache_capacity = self.config.execution_cache;
        let owed = Outbox::new(
            self.config.status_change_buffer,
            self.config.publish_status_changes,
        )
        .with_command_changes(self.config.publish_command_status_changes);
        let inner = Arc::new(Inner {
            store: self.store,
            link: self.link,
            clock: self.clock,
            ids: self.ids,
            config: self.config,
            state: RwLock::new(ReadModel::default()),
            applied: watch::Sender::new(0),
            dirty_jobs: Mutex::new(BTreeSet::new()),
            jobs_wake: Notify::new(),
            outbox: Mutex::new(owed),
            outbox_wake: Notify::new(),
            scheduler_wake: Notify::new(),
            shards: senders,
            hasher: RandomState::new(),
            waiters: Mutex::new(HashMap::new()),
            changes,
            presence_stamp: AtomicU64::new(0),
            cache: Mutex::new(ExecCache::new(cache_capacity)),
            command_cache: Mutex::new(CommandCache::new(COMMAND_CAPACITY)),
            handed: Mutex::new(Vec::new()),
            snapshot_at: AtomicU64::new(0),
            snapshotting: AtomicBool::new(false),
            health: HealthState::default(),
            leading: watch::Sender::new(self.lease.is_none()),
            shares_store: self.lease.is_some(),
            metrics: Recorder::default(),
        });
        // Resume from the persisted checkpoint when there is a usable one, then fold the rest.
        inner.restore_snapshot().await;
        inner.catch_up_at_start().await?;
        let mut tasks = Vec::new();
        match self.lease {
            // The only runtime on its store leads at once, with the recovery pass.
            None => inner.take_duties(),
            Some(lease) => tasks.push(tokio::spawn(leader::run(Arc::clone(&inner), lease))),
        }
        tasks.push(tokio::spawn(follower::run(Arc::clone(&inner))));
        for rx in receivers {
            tasks.push(tokio::spawn(worker::run_shard(Arc::clone(&inner), rx)));
        }
        tasks.push(tokio::spawn(worker::run_inbound(Arc::clone(&inner))));
        tasks.push(tokio::spawn(scheduler::run(Arc::clone(&inner))));
        tasks.push(tokio::spawn(jobs::run(Arc::clone(&inner))));
        tasks.push(tokio::spawn(outbox::run(Arc::clone(&inner))));
        if inner.snapshot_due(inner.read().checkpoint()) {
            tokio::spawn(snapshot::save(Arc::clone(&inner)));
        }
        Ok(Fleet { inner, tasks })
    }
}

impl<S: EventStore, L: DeviceLink> Drop for Fleet<S, L> {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Outstanding command handles learn that nobody will resolve them.
        lock(&self.inner.waiters).clear();
    }
}

/// A sent command; [`CommandHandle::outcome`] resolves once it reaches a terminal status.
pub struct CommandHandle {
    execution_id: ExecutionId,
    done: oneshot::Receiver<()>,
    reader: Arc<dyn CommandReader>,
}

impl std::fmt::Debug for CommandHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandHandle")
            .field("execution_id", &self.execution_id)
            .finish_non_exhaustive()
    }
}

impl CommandHandle {
    /// The command execution's id.
    pub fn execution_id(&self) -> &ExecutionId {
        &self.execution_id
    }

    /// Waits for the terminal status (answer, TTL, cancel) and returns the final record.
    pub async fn outcome(self) -> Result<CommandExecution, FleetError> {
        // The sender is dropped, not fired, when the fleet stops.
        self.done.await.map_err(|_| FleetError::Stopped)?;
        self.reader.read(self.execution_id).await
    }
}

/// Reads a command execution; lets [`CommandHandle`] stay free of the fleet's type parameters.
trait CommandReader: Send + Sync {
    fn read(&self, id: ExecutionId) -> BoxFuture<'_, Result<CommandExecution, FleetError>>;
}

impl<S: EventStore, L: DeviceLink> CommandReader for Inner<S, L> {
    fn read(&self, id: ExecutionId) -> BoxFuture<'_, Result<CommandExecution, FleetError>> {
        Box::pin(async move {
            // Whoever recorded the terminal event left the final state in the cache (a
            // terminal command never changes again); the handle takes it.
            let stream = StreamId::command(&id);
            let finished = {
                let mut cache = lock(&self.command_cache);
                match cache.take(&stream) {
                    Some((_, c)) if c.status.is_terminal() => Some(c),
                    Some((v, c)) => {
                        cache.put(stream, v, c);
                        None
                    }
                    None => None,
                }
            };
            match finished {
                Some(c) => Ok(c),
                None => get_command(self, &id).await,
            }
        })
    }
}

async fn get_command<S: EventStore, L: DeviceLink>(
    inner: &Inner<S, L>,
    id: &ExecutionId,
) -> Result<CommandExecution, FleetError> {
    inner
        .load::<CommandExecution>(&StreamId::command(id))
        .await?
        .0
        .ok_or_else(|| not_found("command execution", id))
}

pub(crate) fn not_found(kind: &'static str, id: impl std::fmt::Display) -> FleetError {
    FleetError::Rejected(Rejection::ResourceNotFound {
        kind,
        id: id.to_string(),
    })
}

/// Keyset paging over an ordered iterator of `(key, item)`.
pub(crate) fn page<K: AsRef<str>, T>(items: impl Iterator<Item = (K, T)>, page: &Page) -> Paged<T> {
    let limit = page.cap();
    let mut out = Vec::new();
    let mut last = None;
    let mut more = false;
    for (k, item) in items {
        if page.after.as_deref().is_some_and(|a| k.as_ref() <= a) {
            continue;
        }
        if out.len() == limit {
            more = true;
            break;
        }
        last = Some(k.as_ref().to_owned());
        out.push(item);
    }
    Paged {
        items: out,
        next: if more { last } else { None },
    }
}

/// Which command executions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandFilter {
    /// Only this thing's commands.
    pub thing: Option<ThingName>,
    /// Only commands in this status.
    pub status: Option<CommandStatus>,
    /// Only commands with this action.
    pub action: Option<String>,
}

/// Which registered things to list (every condition set must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThingFilter {
    /// Only things that have an attribute of this name (with `attribute_value`: of that
    /// value).
    pub attribute_name: Option<String>,
    /// Only things with an attribute of this value (with `attribute_name`: that one).
    pub attribute_value: Option<String>,
    /// Only things of this type.
    pub thing_type: Option<String>,
    /// Only things presence says are online, offline, or never reported on.
    pub connectivity: Option<Connectivity>,
}

impl ThingFilter {
    /// Whether `thing` is listed: registered, and every condition set holds.
    pub fn matches(&self, thing: &Thing) -> bool {
        thing.registered
            && match (&self.attribute_name, &self.attribute_value) {
                (None, None) => true,
                (Some(k), None) => thing.attributes.contains_key(k),
                (Some(k), Some(v)) => thing.attributes.get(k) == Some(v),
                (None, Some(v)) => thing.attributes.values().any(|x| x == v),
            }
            && self
                .thing_type
                .as_ref()
                .is_none_or(|t| thing.thing_type.as_ref() == Some(t))
            && self.connectivity.is_none_or(|c| thing.connectivity == c)
    }
}

impl<S: EventStore, L: DeviceLink> Fleet<S, L> {
    /// A builder, to set the clock, the id source or the tuning.
    pub fn builder(store: S, link: L) -> FleetBuilder<S, L> {
        FleetBuilder {
            store,
            link,
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Ids),
            config: FleetConfig::default(),
            lease: None,
        }
    }

    /// Starts a fleet with the system clock, UUIDv7 ids and default tuning.
    pub async fn start(store: S, link: L) -> Result<Self, FleetError> {
        Self::builder(store, link).start().await
    }

    /// Stops every task and saves a snapshot of the projections (the persisted checkpoint a
    /// new fleet resumes from, see [`FleetConfig::snapshot_every`]). The store keeps
    /// everything; start a new fleet to resume. A fleet that is only dropped stops the same
    /// way but saves no snapshot, so its successor folds more of the feed at start.
    pub async fn shutdown(mut self) {
        self.stop_tasks().await;
        // A periodic save may still be running; let it finish, then save the final state.
        let waited = std::time::Instant::now();
        while self.inner.snapshotting.load(Ordering::Acquire)
            && waited.elapsed() < std::time::Duration::from_secs(30)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        snapshot::save(Arc::clone(&self.inner)).await;
    }

    /// Stops every task at once, as a crash would: no final snapshot, so the next start
    /// resumes from the last periodic one and folds the rest of the feed. Unlike a plain
    /// drop, it returns only once the tasks have stopped, so the store's and the link's
    /// handles are released (a sled directory can be reopened right away).
    pub async fn abort(mut self) {
        self.stop_tasks().await;
    }

    async fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The position of the last snapshot of the projections this fleet saved or resumed
    /// from (its persisted checkpoint); 0 when there is none yet.
    pub fn snapshot_position(&self) -> u64 {
        self.inner.snapshot_at.load(Ordering::Relaxed)
    }

    /// Whether this runtime does the fleet-wide duties now: always without a lease, only
    /// while it holds the lease with one ([`FleetBuilder::lease`]).
    pub fn is_leading(&self) -> bool {
        self.inner.leading()
    }

    /// The runtime's figures for monitoring: counted ones (device requests, refusals, append
    /// and command latencies) and ones computed from the read model now (executions, jobs
    /// and commands by status, the outbox backlog).
    pub fn metrics(&self) -> FleetMetrics {
        let inner = &self.inner;
        let mut m = FleetMetrics::default();
        {
            let st = inner.read();
            let mut executions = [0u64; JobExecutionStatus::ALL.len()];
            let mut jobs = [0u64; JOB_STATUSES.len()];
            for (id, entry) in &st.jobs {
                let c = st.proj.counters(id);
                for (n, s) in executions.iter_mut().zip(JobExecutionStatus::ALL) {
                    *n += c.get(s);
                }
                if let Some(i) = JOB_STATUSES.iter().position(|s| *s == entry.job.status) {
                    jobs[i] += 1;
                }
            }
            m.executions_by_status = JobExecutionStatus::ALL
                .into_iter()
                .zip(executions)
                .collect();
            m.jobs_by_status = JOB_STATUSES.into_iter().zip(jobs).collect();
            let mut commands = [0u64; CommandStatus::ALL.len()];
            for c in st.commands.values() {
                if let Some(i) = CommandStatus::ALL.iter().position(|s| *s == c.status) {
                    commands[i] += 1;
                }
            }
            m.commands_by_status = CommandStatus::ALL
                .iter()
                .zip(commands)
                .map(|(s, n)| (*s, n))
                .collect();
            m.checkpoint = st.checkpoint();
        }
        m.outbox_backlog = lock(&inner.outbox).backlog() as u64;
        m.undeliverable = inner.health.undeliverable.load(Ordering::Relaxed);
        m.given_up = inner.health.given_up.load(Ordering::Relaxed);
        m.leading = inner.leading();
        inner.metrics.fill(&mut m);
        m
    }

    /// The global position the projections have folded.
    pub fn checkpoint(&self) -> u64 {
        self.inner.read().checkpoint()
    }

    /// How the runtime is doing: the store is probed (a read of its head, bounded by
    /// [`FleetConfig::apply_timeout`]), the follower's and the link's last reports are read.
    /// While [`Health::is_serving`] is false, writes fail at once with
    /// [`FleetError::Unavailable`].
    pub async fn health(&self) -> Health {
        let inner = &self.inner;
        let timeout = inner.config.apply_timeout;
        let probe = tokio::time::timeout(timeout, inner.store.head_position()).await;
        let (store, head) = match probe {
            Ok(Ok(head)) => (HealthStatus::Ok, Some(head)),
            Ok(Err(e)) => (
                HealthStatus::Failed {
                    reason: e.to_string(),
                },
                None,
            ),
            Err(_) => (
                HealthStatus::Failed {
                    reason: format!("no answer within {timeout:?}"),
                },
                None,
            ),
        };
        let checkpoint = self.checkpoint();
        let status = inner.health.follower.borrow().clone();
        let stuck = inner.health.stuck_for(checkpoint, head);
        let follower = if status.failed() {
            HealthStatus::Failed {
                reason: format!(
                    "{} failures in a row, last: {}",
                    status.failures,
                    status.last_error.as_deref().unwrap_or("unknown")
                ),
            }
        } else if let Some(stuck) = stuck.filter(|s| *s > timeout) {
            HealthStatus::Failed {
                reason: format!(
                    "{} events behind and nothing folded for {stuck:?}",
                    head.unwrap_or(0).saturating_sub(checkpoint)
                ),
            }
        } else if status.failures > 0 {
            HealthStatus::Degraded {
                reason: format!(
                    "retrying after {} failure(s), last: {}",
                    status.failures,
                    status.last_error.as_deref().unwrap_or("unknown")
                ),
            }
        } else {
            HealthStatus::Ok
        };
        let link = match lock(&inner.health.link).clone() {
            None => HealthStatus::Ok,
            Some(reason) => HealthStatus::Degraded { reason },
        };
        Health {
            store,
            follower,
            link,
            checkpoint,
            head,
            undeliverable: inner.health.undeliverable.load(Ordering::Relaxed),
            given_up: inner.health.given_up.load(Ordering::Relaxed),
        }
    }

    /// Waits until the projections have folded everything stored so far, so that queries see
    /// every write made before the call.
    pub async fn caught_up(&self) -> Result<(), FleetError> {
        self.inner.catch_up().await
    }

    // ---- commands ---------------------------------------------------------------------------

    /// Sends a command to one thing. The handle resolves when the thing answers, the TTL
    /// passes, or the command is canceled.
    pub async fn send_command(
        &self,
        thing: ThingName,
        action: impl Into<String>,
        params: Value,
        ttl: Duration,
    ) -> Result<CommandHandle, FleetError> {
        self.send_command_with(thing, None, action.into(), params, ttl)
            .await
    }

    /// Like [`Fleet::send_command`], naming a command template id.
    pub async fn send_command_with(
        &self,
        thing: ThingName,
        command_id: Option<String>,
        action: String,
        params: Value,
        ttl: Duration,
    ) -> Result<CommandHandle, FleetError> {
        self.inner.ensure_serving()?;
        let policy = if self.inner.config.fail_commands_when_offline {
            OfflineCommands::Fail
        } else {
            OfflineCommands::Wait
        };
        if !policy.admits(self.inner.read().connectivity(&thing)) {
            return Err(FleetError::Offline { thing });
        }
        let execution_id = self.inner.ids.execution_id();
        // Register before appending, so the terminal event cannot slip past the handle.
        let (tx, done) = oneshot::channel();
        lock(&self.inner.waiters)
            .entry(execution_id.clone())
            .or_default()
            .push(tx);
        let intent = CommandIntent::Send {
            execution_id: execution_id.clone(),
            thing,
            command_id,
            action,
            params,
            ttl,
        };
        let stream = StreamId::command(&execution_id);
        if let Err(e) = self
            .inner
            .send_command(&stream, &execution_id, intent)
            .await
        {
            lock(&self.inner.waiters).remove(&execution_id);
            return Err(e);
        }
        Ok(CommandHandle {
            execution_id,
            done,
            reader: Arc::clone(&self.inner) as Arc<dyn CommandReader>,
        })
    }

    /// The command execution, as stored.
    pub async fn get_command(&self, id: &ExecutionId) -> Result<CommandExecution, FleetError> {
        get_command(&self.inner, id).await
    }

    /// Command executions, by id (UUIDv7 ids sort by send time), filtered by thing and status.
    pub fn list_commands(&self, filter: &CommandFilter, page_req: &Page) -> Paged<CommandRow> {
        let st = self.inner.read();
        let row = |id: &ExecutionId, c: &fleetops_machine::model::CommandEntry| CommandRow {
            execution_id: id.clone(),
            thing: c.thing.clone(),
            action: c.action.clone(),
            status: c.status,
            sent_at: c.sent_at,
            deadline: c.deadline,
        };
        let keep = |c: &fleetops_machine::model::CommandEntry| {
            filter.status.is_none_or(|s| s == c.status)
                && filter.action.as_ref().is_none_or(|a| *a == c.action)
        };
        match &filter.thing {
            Some(thing) => {
                let mut ids: Vec<&ExecutionId> = st
                    .thing_commands
                    .get(thing)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default();
                ids.sort();
                let items = ids.into_iter().filter_map(|id| {
                    st.commands
                        .get(id)
                        .filter(|c| keep(c))
                        .map(|c| (id.clone(), row(id, c)))
                });
                page(items, page_req)
            }
            None => {
                let start = match &page_req.after {
                    Some(a) => match ExecutionId::parse(a) {
                        Ok(id) => Bound::Excluded(id),
                        Err(_) => Bound::Unbounded,
                    },
                    None => Bound::Unbounded,
                };
                let items = st
                    .commands
                    .range((start, Bound::Unbounded))
                    .filter(|(_, c)| keep(c))
                    .map(|(id, c)| (id.clone(), row(id, c)));
                page(items, page_req)
            }
        }
    }

    /// Cancels a command that is still `SENT` and within its TTL; at or after the deadline it
    /// is refused with `TerminalStateReached` (`TIMED_OUT`), as the command has timed out.
    pub async fn cancel_command(
        &self,
        id: &ExecutionId,
        reason: Option<String>,
    ) -> Result<CommandExecution, FleetError> {
        self.inner.ensure_serving()?;
        let done = self
            .inner
            .execute_command(&StreamId::command(id), CommandIntent::Cancel { reason })
            .await
            .map_err(|e| rename(e, "command execution", id))?;
        done.state.ok_or_else(|| not_found("command execution", id))
    }

    // ---- jobs -------------------------------------------------------------------------------

    /// Creates a job. It starts at once unless its schedule says later; executions are then
    /// queued by the rollout driver at the configured rate.
    pub async fn create_job(&self, spec: JobSpec) -> Result<Job, FleetError> {
        self.inner.ensure_serving()?;
        let stream = StreamId::job(&spec.job_id);
        let intent = JobIntent::Create {
            job_id: spec.job_id.clone(),
            name: spec.name,
            description: spec.description,
            targets: spec.targets,
            selection: spec.selection,
            document: spec.document,
            config: spec.config,
        };
        let done = self.inner.execute::<Job>(&stream, intent).await?;
        done.state.ok_or_else(|| not_found("job", &spec.job_id))
    }

    /// The job with its per-status counters.
    pub fn describe_job(&self, id: &JobId) -> Result<JobDescription, FleetError> {
        let st = self.inner.read();
        let entry = st
            .jobs
            .get(id)
            .filter(|e| !e.job.deleted)
            .ok_or_else(|| not_found("job", id))?;
        Ok(JobDescription {
            job: Arc::clone(&entry.job),
            counters: st.proj.counters(id),
            remaining_targets: entry.to_queue.len() as u64
                + entry
                    .stages
                    .as_ref()
                    .map_or(0, |b| b.later.iter().map(|s| s.len() as u64).sum()),
            stages: st.stage_figures(id),
        })
    }

    /// Jobs by id, filtered by status and target selection.
    pub fn list_jobs(&self, filter: &JobFilter, page_req: &Page) -> Paged<JobSummary> {
        let st = self.inner.read();
        let items = st
            .jobs
            .iter()
            .filter(|(_, e)| {
                !e.job.deleted
                    && filter.status.is_none_or(|s| s == e.job.status)
                    && filter.selection.is_none_or(|s| s == e.job.selection)
            })
            .map(|(id, e)| {
                let targets = if e.job.status == JobStatus::Scheduled {
                    // Not resolved yet: who it would reach if it started now.
                    let mut things: BTreeSet<&ThingName> = e.job.targets.things.iter().collect();
                    for g in &e.job.targets.groups {
                        if let Some(group) = st.groups.get(g).filter(|g| !g.deleted) {
                            things.extend(group.members.iter());
                        }
                    }
                    things.len()
                } else {
                    st.proj.execution_count_of(id) + e.to_queue.len()
                };
                (
                    id.clone(),
                    JobSummary {
                        job_id: id.clone(),
                        name: e.job.name.clone(),
                        description: e.job.description.clone(),
                        status: e.job.status,
                        paused: e.job.paused.is_some() && !e.job.status.is_terminal(),
                        selection: e.job.selection,
                        targets: targets as u64,
                        created_at: e.job.created_at,
                        counters: st.proj.counters(id),
                    },
                )
            });
        page(items, page_req)
    }

    /// A job's executions by thing name, optionally only those in `status`.
    pub fn list_job_executions(
        &self,
        job: &JobId,
        status: Option<JobExecutionStatus>,
        page_req: &Page,
    ) -> Result<Paged<ExecutionRow>, FleetError> {
        let st = self.inner.read();
        let entry = st
            .jobs
            .get(job)
            .filter(|e| !e.job.deleted)
            .ok_or_else(|| not_found("job", job))?;
        let after = match page_req.after.as_deref().map(ThingName::parse) {
            Some(Ok(t)) => Some(t),
            _ => None,
        };
        let items = st
            .proj
            .executions_after(&entry.job.job_id, after.as_ref())
            .filter(|(_, m)| status.is_none_or(|s| s == m.status))
            .map(|(t, m)| (t.clone(), row(job, t, m)));
        Ok(page(items, page_req))
    }

    /// A thing's executions by job id, optionally only those in `status`.
    pub fn list_thing_executions(
        &self,
        thing: &ThingName,
        status: Option<JobExecutionStatus>,
        page_req: &Page,
    ) -> Paged<ExecutionRow> {
        let st = self.inner.read();
        let mut jobs: Vec<&JobId> = st
            .thing_jobs
            .get(thing)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        jobs.sort();
        // A deleted job is gone for every reader, as `describe_job` says.
        let live = |job: &JobId| st.jobs.get(job).is_some_and(|e| !e.job.deleted);
        let items = jobs.into_iter().filter(|job| live(job)).filter_map(|job| {
            st.exec(job, thing)
                .filter(|m| status.is_none_or(|s| s == m.status))
                .map(|m| (job.clone(), row(job, thing, m)))
        });
        page(items, page_req)
    }

    /// The full state of one job execution.
    pub async fn get_job_execution(
        &self,
        job: &JobId,
        thing: &ThingName,
    ) -> Result<JobExecution, FleetError> {
        self.inner
            .load::<JobExecution>(&StreamId::job_execution(job, thing))
            .await?
            .0
            .ok_or_else(|| not_found("job execution", format!("{job}/{thing}")))
    }

    /// Cancels a job: its queued executions are canceled (in-progress ones too with `force`),
    /// and no more are queued.
    pub async fn cancel_job(
        &self,
        id: &JobId,
        force: bool,
        comment: Option<String>,
    ) -> Result<Job, FleetError> {
        self.inner.ensure_serving()?;
        let done = self
            .inner
            .execute::<Job>(&StreamId::job(id), JobIntent::Cancel { force, comment })
            .await
            .map_err(|e| rename(e, "job", id))?;
        done.state.ok_or_else(|| not_found("job", id))
    }

    /// Pauses a job's rollout: no executions or retries are queued until it is resumed;
    /// executions already queued or in progress go on (their timeouts too).
    pub async fn pause_job(&self, id: &JobId, comment: Option<String>) -> Result<Job, FleetError> {
        self.job_intent(id, JobIntent::Pause { comment }).await
    }

    /// Resumes a paused job; a stage whose gate failed is overridden.
    pub async fn resume_job(&self, id: &JobId, comment: Option<String>) -> Result<Job, FleetError> {
        self.job_intent(id, JobIntent::Resume { comment }).await
    }

    /// Changes a scheduled or running job's description, timeout, rollout, abort or retry
    /// options, checked as at creation; they apply from now on.
    pub async fn update_job(&self, id: &JobId, update: JobUpdate) -> Result<Job, FleetError> {
        let intent = JobIntent::Update {
            description: update.description,
            in_progress_timeout: update.in_progress_timeout,
            rollout: update.rollout,
            abort: update.abort,
            retry: update.retry,
        };
        self.job_intent(id, intent).await
    }

    async fn job_intent(&self, id: &JobId, intent: JobIntent) -> Result<Job, FleetError> {
        self.inner.ensure_serving()?;
        let done = self
            .inner
            .execute::<Job>(&StreamId::job(id), intent)
            .await
            .map_err(|e| rename(e, "job", id))?;
        done.state.ok_or_else(|| not_found("job", id))
    }

    /// Deletes a job (a tombstone; history stays). Its pending executions are removed.
    pub async fn delete_job(&self, id: &JobId, force: bool) -> Result<(), FleetError> {
        self.inner.ensure_serving()?;
        self.inner
            .execute::<Job>(&StreamId::job(id), JobIntent::Delete { force })
            .await
            .map_err(|e| rename(e, "job", id))?;
        Ok(())
    }

    /// Cancels one execution (an in-progress one only with `force`).
    pub async fn cancel_job_execution(
        &self,
        job: &JobId,
        thing: &ThingName,
        force: bool,
    ) -> Result<JobExecution, FleetError> {
        let intent = JobExecutionIntent::Cancel {
            force,
            reason: EndReason::Operator,
        };
        self.execution_intent(job, thing, intent).await
    }

    /// Cancels one execution as an operator: an in-progress one only with `force`, only at
    /// `expected_version` when given (else `VersionMismatch`), merging `status_details` into
    /// the execution's details. The device is notified as for any cancel.
    pub async fn cancel_job_execution_with(
        &self,
        job: &JobId,
        thing: &ThingName,
        force: bool,
        expected_version: Option<u64>,
        status_details: Option<fleetops_core::status::StatusDetails>,
    ) -> Result<JobExecution, FleetError> {
        let intent = JobExecutionIntent::OperatorCancel {
            force,
            expected_version,
            status_details,
        };
        self.execution_intent(job, thing, intent).await
    }

    /// Deletes one execution record (`REMOVED`; a pending one only with `force`).
    pub async fn delete_job_execution(
        &self,
        job: &JobId,
        thing: &ThingName,
        force: bool,
    ) -> Result<JobExecution, FleetError> {
        let intent = JobExecutionIntent::Remove {
            force,
            reason: EndReason::Operator,
        };
        self.execution_intent(job, thing, intent).await
    }

    async fn execution_intent(
        &self,
        job: &JobId,
        thing: &ThingName,
        intent: JobExecutionIntent,
    ) -> Result<JobExecution, FleetError> {
        self.inner.ensure_serving()?;
        let id = format!("{job}/{thing}");
        let done = self
            .inner
            .execute_execution(&StreamId::job_execution(job, thing), intent)
            .await
            .map_err(|e| rename(e, "job execution", &id))?;
        done.state.ok_or_else(|| not_found("job execution", id))
    }

    // ---- groups -----------------------------------------------------------------------------

    /// Creates a thing group.
    pub async fn create_group(
        &self,
        name: GroupName,
        description: Option<String>,
    ) -> Result<Group, FleetError> {
        self.inner.ensure_serving()?;
        let stream = StreamId::group(&name);
        let done = self
            .inner
            .execute::<Group>(
                &stream,
                GroupIntent::Create {
                    name: name.clone(),
                    description,
                },
            )
            .await?;
        done.state.ok_or_else(|| not_found("group", &name))
    }

    /// Adds things to a group; a continuous job targeting it queues an execution for each.
    pub async fn add_group_members(
        &self,
        name: &GroupName,
        things: Vec<ThingName>,
    ) -> Result<Group, FleetError> {
        self.group_intent(name, GroupIntent::AddMembers(things))
            .await
    }

    /// Removes things from a group; a continuous job targeting it removes their still-queued
    /// executions (unless another of its targets still names them).
    pub async fn remove_group_members(
        &self,
        name: &GroupName,
        things: Vec<ThingName>,
    ) -> Result<Group, FleetError> {
        self.group_intent(name, GroupIntent::RemoveMembers(things))
            .await
    }

    /// Deletes a group.
    pub async fn delete_group(&self, name: &GroupName) -> Result<(), FleetError> {
        self.group_intent(name, GroupIntent::Delete).await?;
        Ok(())
    }

    /// Groups by name, only those whose name starts with `prefix` when given.
    pub fn list_groups(&self, prefix: Option<&str>, page_req: &Page) -> Paged<GroupSummary> {
        let st = self.inner.read();
        let start = match (&page_req.after, prefix) {
            // Names sort, so a prefix's names are one range from the prefix on.
            (None, Some(p)) => Bound::Included(p.to_owned()),
            (Some(a), _) => Bound::Excluded(a.clone()),
            (None, None) => Bound::Unbounded,
        };
        let items = st
            .groups
            .iter()
            .skip_while(move |(name, _)| match &start {
                Bound::Included(s) => name.as_str() < s.as_str(),
                Bound::Excluded(s) => name.as_str() <= s.as_str(),
                Bound::Unbounded => false,
            })
            .take_while(|(name, _)| prefix.is_none_or(|p| name.as_str().starts_with(p)))
            .filter(|(_, g)| !g.deleted)
            .map(|(name, g)| {
                (
                    name.clone(),
                    GroupSummary {
                        name: name.clone(),
                        description: g.description.clone(),
                        members: g.members.len(),
                    },
                )
            });
        page(items, page_req)
    }

    /// A group, as folded.
    pub fn group(&self, name: &GroupName) -> Option<Group> {
        self.inner
            .read()
            .groups
            .get(name)
            .filter(|g| !g.deleted)
            .cloned()
    }

    /// Group membership changes decide on the folded group (group streams grow with every
    /// membership change, so they are not replayed per request); a conflict means the fold
    /// was behind, so catch up and decide again.
    async fn group_intent(
        &self,
        name: &GroupName,
        intent: GroupIntent,
    ) -> Result<Group, FleetError> {
        self.inner.ensure_serving()?;
        let stream = StreamId::group(name);
        for _ in 0..self.inner.config.max_conflict_retries.max(1) {
            let state = self.inner.read().groups.get(name).cloned();
            let version = state.as_ref().map(|g| g.version);
            if let Some(done) = self
                .inner
                .try_execute::<Group>(&stream, state, version, intent.clone())
                .await
                .map_err(|e| rename(e, "group", name))?
            {
                return done.state.ok_or_else(|| not_found("group", name));
            }
            self.inner.catch_up().await?;
        }
        Err(FleetError::Contention { stream })
    }

    // ---- events for embedders ---------------------------------------------------------------

    /// Every stored event with its envelope, from global position `from` (1 for everything;
    /// [`Fleet::checkpoint`]` + 1` for new ones only). The stream ends after its first error.
    pub async fn events(&self, from: u64) -> Result<EventStream, FleetError> {
        let sub = self.inner.store.subscribe(from).await?;
        let stream = futures::stream::unfold(Some(sub), |sub| async move {
            let mut sub = sub?;
            match sub.next().await {
                Ok(e) => Some((Ok(e), Some(sub))),
                Err(e) => Some((Err(FleetError::from(e)), None)),
            }
        });
        Ok(stream.boxed())
    }

    /// One page of `stream`'s history: up to `limit` stored events (1 to
    /// [`Page::MAX_LIMIT`]; values outside are clamped) after stream version `after` (0 for
    /// the first page), oldest first, read from the store rather than the read model, so
    /// every fact ever stored is there (a deleted job's too). `ResourceNotFound` when the
    /// stream was never written.
    pub async fn history(
        &self,
        stream: &StreamId,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, FleetError> {
        let limit = limit.clamp(1, Page::MAX_LIMIT);
        // One more than asked tells whether another page follows without a second read.
        let from = after.saturating_add(1);
        let mut events = self
            .inner
            .store
            .read_stream(stream, from, limit + 1)
            .await?;
        if events.is_empty() {
            // Nothing read: the stream does not exist, the page is past its end, or its
            // first events were appended between the read and now (read again then).
            match self.inner.store.stream_version(stream).await? {
                None => {
                    let (kind, id) = subject(stream);
                    return Err(not_found(kind, id));
                }
                Some(version) if version > after => {
                    events = self
                        .inner
                        .store
                        .read_stream(stream, from, limit + 1)
                        .await?;
                }
                Some(_) => {}
            }
        }
        let next = if events.len() > limit {
            events.truncate(limit);
            events.last().map(|e| e.stream_version)
        } else {
            None
        };
        Ok(HistoryPage { events, next })
    }

    /// Up to `limit` events of the global feed from position `from` on (1-based), read from
    /// the store: the bounded counterpart of [`Fleet::events`], for readers that page
    /// through the feed at their own pace.
    pub async fn read_feed(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, FleetError> {
        Ok(self.inner.store.read_all(from, limit).await?)
    }

    /// The position of the last stored event (0 when the store is empty), as the store says
    /// now; it may be ahead of [`Fleet::checkpoint`], which is what the projections folded.
    pub async fn head_position(&self) -> Result<u64, FleetError> {
        Ok(self.inner.store.head_position().await?)
    }

    /// Status changes of job and command executions, as they are folded. A receiver that
    /// falls more than [`FleetConfig::status_change_buffer`] behind loses the oldest ones
    /// (`RecvError::Lagged`); [`Fleet::events`] never loses any.
    pub fn status_changes(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.changes.subscribe()
    }

    /// Whether presence last said `thing` is online (`None`: never heard of).
    pub fn presence(&self, thing: &ThingName) -> Option<bool> {
        match self.inner.read().connectivity(thing) {
            Connectivity::Online => Some(true),
            Connectivity::Offline => Some(false),
            Connectivity::Unknown => None,
        }
    }

    // ---- thing registry ---------------------------------------------------------------------

    /// A thing's registry record and presence, as folded (`None`: neither registered nor
    /// ever reported on by presence).
    pub fn thing(&self, name: &ThingName) -> Option<Thing> {
        self.inner.read().things.get(name).cloned()
    }

    /// Registers a thing, or replaces its record. A client id another registered thing
    /// already uses is refused (checked on the folded registry: two instances registering
    /// the same client id at the same moment may both succeed; presence then maps the id to
    /// the later one).
    pub async fn register_thing(
        &self,
        name: ThingName,
        attributes: std::collections::BTreeMap<String, String>,
        thing_type: Option<String>,
        client_id: Option<String>,
    ) -> Result<Thing, FleetError> {
        if let Some(id) = &client_id {
            if let Some(other) = self.inner.read().client_things.get(id) {
                if *other != name {
                    return Err(FleetError::Rejected(Rejection::invalid(
                        "clientId",
                        format!("is already the client id of thing {other}"),
                    )));
                }
            }
        }
        let intent = ThingIntent::Register {
            name: name.clone(),
            attributes,
            thing_type,
            client_id,
        };
        self.inner
            .thing_intent(&name, intent)
            .await?
            .ok_or_else(|| not_found("thing", &name))
    }

    /// Removes a thing's registry record (its presence is kept).
    pub async fn deregister_thing(&self, name: &ThingName) -> Result<(), FleetError> {
        self.inner
            .thing_intent(name, ThingIntent::Deregister)
            .await
            .map_err(|e| rename(e, "thing", name))?;
        Ok(())
    }

    /// Registered things in name order, filtered.
    pub fn list_things(&self, filter: &ThingFilter, page_req: &Page) -> Paged<Thing> {
        let st = self.inner.read();
        let items = st
            .things
            .iter()
            .filter(|(_, t)| filter.matches(t))
            .map(|(name, t)| (name.as_str(), t.clone()));
        page(items, page_req)
    }

    /// Records a presence report for `thing` as a source said it (what the MQTT link does
    /// for the configured presence source), for embedders with their own source.
    pub async fn report_presence(
        &self,
        thing: &ThingName,
        report: PresenceReport,
    ) -> Result<(), FleetError> {
        self.inner
            .thing_intent(
                thing,
                ThingIntent::ReportPresence {
                    name: thing.clone(),
                    report,
                },
            )
            .await?;
        Ok(())
    }
}

fn row(job: &JobId, thing: &ThingName, m: &ExecutionEntry) -> ExecutionRow {
    ExecutionRow {
        job_id: job.clone(),
        thing: thing.clone(),
        execution: m.clone(),
    }
}

/// What a stream holds, named as the API's other refusals name it, and its id.
fn subject(stream: &StreamId) -> (&'static str, String) {
    match stream.kind() {
        StreamKind::Command(id) => ("command execution", id.to_string()),
        StreamKind::Job(id) => ("job", id.to_string()),
        StreamKind::JobExecution(job, thing) => ("job execution", format!("{job}/{thing}")),
        StreamKind::Group(name) => ("group", name.to_string()),
        StreamKind::ApiKey(id) => ("API key", id.to_string()),
        StreamKind::CommandTemplate(id) => ("command", id.to_string()),
        StreamKind::Thing(name) => ("thing", name.to_string()),
        StreamKind::Custom(_) => ("stream", stream.to_string()),
    }
}

/// Core names an unknown aggregate "unknown"; name the one asked for.
pub(crate) fn rename(e: FleetError, kind: &'static str, id: impl std::fmt::Display) -> FleetError {
    match e {
        FleetError::Rejected(Rejection::ResourceNotFound { .. }) => not_found(kind, id),
        other => other,
    }
}
