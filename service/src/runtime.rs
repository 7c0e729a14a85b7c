//! The shared heart of the runtime: the ports, the read models, and the small pieces every
//! task uses (load, decide, append, wait for the projection).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::device::{Inbound, Outbound};
use fleetops_core::ids::StreamKind;
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::link::{Delivery, DeviceLink, Receipt};
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, NewEvent, OrderedAppend, StoreError,
    StoredEvent,
};
use fleetops_core::thing::{PresenceReport, Thing, ThingIntent};
use fleetops_core::{Aggregate, Event, ExecutionId, JobId, StreamId, ThingName, Timestamp};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::cache::{Cache, CommandCache, ExecCache};
use crate::clock::Clock;
use crate::error::FleetError;
use crate::health::HealthState;
use crate::ids::IdSource;
use crate::metrics::Recorder;
use crate::sync::lock;
use crate::types::{FleetConfig, StatusChange};
use fleetops_machine::outbox::{command_request, Outbox};
use fleetops_machine::{Effects, ReadModel};

/// How many events a stream read fetches per call while loading an aggregate.
const LOAD_PAGE: usize = 1024;

/// A decision that went through: the new state, the stored events, and where they landed.
#[derive(Debug)]
pub(crate) struct Executed<A> {
    pub state: Option<A>,
    /// The stored events; empty when the intent changed nothing.
    pub events: Vec<Event>,
}

/// Everything the runtime's tasks share.
pub(crate) struct Inner<S, L> {
    pub store: S,
    pub link: L,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdSource>,
    pub config: FleetConfig,
    pub state: RwLock<ReadModel>,
    /// The checkpoint of `state`, for read-your-writes waits.
    pub applied: watch::Sender<u64>,
    pub dirty_jobs: Mutex<BTreeSet<JobId>>,
    pub jobs_wake: Notify,
    /// What the outbox task still has to send, and the new commands whose sender publishes
    /// the request itself (the machine decides what is owed; the tasks only move data).
    pub outbox: Mutex<Outbox>,
    pub outbox_wake: Notify,
    pub scheduler_wake: Notify,
    pub shards: Vec<mpsc::Sender<Work>>,
    pub hasher: RandomState,
    pub waiters: Mutex<HashMap<ExecutionId, Vec<oneshot::Sender<()>>>>,
    pub changes: broadcast::Sender<StatusChange>,
    /// The stamp of the last presence report that came without one (arrival order).
    pub presence_stamp: AtomicU64,
    pub cache: Mutex<ExecCache>,
    /// Command states, so a round trip reads no command stream back from the store.
    pub command_cache: Mutex<CommandCache>,
    /// Requests the senders handed to the link, whose acknowledgement the outbox awaits (and
    /// retries on failure), so a sender never waits for the broker.
    pub handed: Mutex<Vec<(Delivery, Vec<Outbound>)>>,
    /// The position of the last saved snapshot (or the one resumed from).
    pub snapshot_at: AtomicU64,
    /// A snapshot save is under way.
    pub snapshotting: AtomicBool,
    /// What the tasks report about their health.
    pub health: HealthState,
    /// Whether this runtime does the fleet-wide duties (timers, rollouts, outbox): always
    /// without a lease, while it holds the lease with one (see `leader`).
    pub leading: watch::Sender<bool>,
    /// Other runtimes append to the same store (the fleet was given a lease): what they
    /// stored must be folded before a device is answered.
    pub shares_store: bool,
    /// What the tasks count for monitoring.
    pub metrics: Recorder,
}

/// A unit of work for a shard.
#[derive(Debug)]
pub(crate) enum Work {
    /// A device request, answered on the link, with the receipt the link gets back once the
    /// request is decided (and its effect stored).
    Device(Inbound, Receipt),
    /// A command's TTL may have passed.
    CommandTimer(ExecutionId),
    /// A job execution's in-progress or step timer may have expired.
    ExecutionTimer(JobId, ThingName),
    /// A presence source reported on a thing.
    Presence(ThingName, PresenceReport),
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    pub fn read(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, ReadModel> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The worker shard that serializes everything about `thing`.
    pub fn shard(&self, thing: &ThingName) -> &mpsc::Sender<Work> {
        let n = self.shards.len().max(1);
        // The remainder is below the shard count, so it fits a usize.
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.hasher.hash_one(thing) % n as u64) as usize;
        &self.shards[i.min(self.shards.len() - 1)]
    }

    /// Waits until the projections have folded position `pos`: `Unavailable` at once while
    /// the follower is failing (or as soon as it fails), and after
    /// [`FleetConfig::apply_timeout`] otherwise, so a write never hangs on a fold that is
    /// not coming.
    pub async fn wait_applied(&self, pos: u64) -> Result<(), FleetError> {
        let mut rx = self.applied.subscribe();
        if *rx.borrow_and_update() >= pos {
            return Ok(());
        }
        self.health.ensure_serving()?;
        let mut follower = self.health.follower.subscribe();
        let timeout = self.config.apply_timeout;
        tokio::select! {
            biased;
            // The sender lives in `self`, so the wait cannot fail while we hold `self`.
            _ = rx.wait_for(|c| *c >= pos) => Ok(()),
            _ = follower.wait_for(crate::health::FollowerStatus::failed) => {
                self.health.ensure_serving()
            }
            () = tokio::time::sleep(timeout) => Err(FleetError::Unavailable {
                reason: format!(
                    "the projections did not fold position {pos} within {timeout:?} \
                     (the write is stored)"
                ),
            }),
        }
    }

    /// `Unavailable` while the runtime cannot serve writes (its follower is failing), so
    /// a write fails before it stores anything rather than waiting for a fold that will
    /// not come.
    pub fn ensure_serving(&self) -> Result<(), FleetError> {
        self.health.ensure_serving()
    }

    /// Waits until the projections have folded everything stored so far.
    pub async fn catch_up(&self) -> Result<(), FleetError> {
        let head = self.store.head_position().await?;
        self.wait_applied(head).await
    }

    /// Appends through the store, recording how long it took (and a failure other than a
    /// version conflict) for the metrics.
    pub async fn timed_append(&self, batch: AppendBatch) -> Result<Appended, StoreError> {
        let started = std::time::Instant::now();
        let result = self.store.append(batch).await;
        let failed = matches!(&result, Err(e) if !matches!(e, StoreError::Conflict { .. }));
        self.metrics.appended(started.elapsed(), failed);
        result
    }

    /// [`Inner::timed_append`] through [`EventStore::append_ordered`]: returns once the batch
    /// is ordered, possibly before it is durable (the time recorded is until then).
    async fn timed_append_ordered(&self, batch: AppendBatch) -> Result<OrderedAppend, StoreError> {
        let started = std::time::Instant::now();
        let result = self.store.append_ordered(batch).await;
        let failed = matches!(&result, Err(e) if !matches!(e, StoreError::Conflict { .. }));
        self.metrics.appended(started.elapsed(), failed);
        result
    }

    /// Envelopes for `events` decided at `now`.
    pub fn envelopes(&self, events: &[Event], now: Timestamp) -> Vec<NewEvent> {
        events
            .iter()
            .map(|e| NewEvent::new(self.ids.event_id(), e.clone(), now))
            .collect()
    }

    /// Reads a whole stream.
    pub async fn read_stream(&self, stream: &StreamId) -> Result<Vec<StoredEvent>, FleetError> {
        let mut out = Vec::new();
        loop {
            let from = out.len() as u64 + 1;
            let page = self.store.read_stream(stream, from, LOAD_PAGE).await?;
            let n = page.len();
            out.extend(page);
            if n < LOAD_PAGE {
                return Ok(out);
            }
        }
    }

    /// Loads an aggregate by replaying its stream; also returns the stream version.
    pub async fn load<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<(Option<A>, Option<u64>), FleetError> {
        let history = self.read_stream(stream).await?;
        let version = history.last().map(|e| e.stream_version);
        let state =
            A::replay(history.iter().map(|e| &e.event)).map_err(|source| FleetError::Corrupt {
                stream: stream.clone(),
                source,
            })?;
        Ok((state, version))
    }

    /// Appends and waits until the projections have folded the batch.
    pub async fn append(&self, batch: AppendBatch) -> Result<Appended, FleetError> {
        self.ensure_serving()?;
        let appended = self.timed_append(batch).await?;
        self.wait_applied(appended.last_position).await?;
        Ok(appended)
    }

    /// Load, decide at `now`, append with the loaded version; on a conflict, reload and try
    /// again a few times.
    pub async fn execute<A: Aggregate>(
        &self,
        stream: &StreamId,
        intent: A::Intent,
    ) -> Result<Executed<A>, FleetError> {
        for _ in 0..self.config.max_conflict_retries.max(1) {
            let (state, version) = self.load::<A>(stream).await?;
            match self
                .try_execute(stream, state, version, intent.clone())
                .await?
            {
                Some(done) => return Ok(done),
                None => continue,
            }
        }
        Err(FleetError::Contention {
            stream: stream.clone(),
        })
    }

    /// One attempt of [`Inner::execute`] on an already loaded state; `None` on a conflict.
    pub async fn try_execute<A: Aggregate>(
        &self,
        stream: &StreamId,
        state: Option<A>,
        version: Option<u64>,
        intent: A::Intent,
    ) -> Result<Option<Executed<A>>, FleetError> {
        self.try_execute_then(stream, state, version, intent, |_| {})
            .await
    }

    /// [`Inner::try_execute`], calling `stored` with the result as soon as the store holds
    /// it, before the projections have folded it (so whatever the fold wakes already sees
    /// what `stored` recorded).
    async fn try_execute_then<A: Aggregate>(
        &self,
        stream: &StreamId,
        state: Option<A>,
        version: Option<u64>,
        intent: A::Intent,
        stored: impl FnOnce(&Executed<A>),
    ) -> Result<Option<Executed<A>>, FleetError> {
        let now = self.clock.now();
        let (state, events) = A::execute(state, intent, now)?;
        let done = Executed { state, events };
        if done.events.is_empty() {
            return Ok(Some(done));
        }
        let batch = AppendBatch::single(
            stream.clone(),
            ExpectedVersion::from_current(version),
            self.envelopes(&done.events, now),
        );
        match self.timed_append(batch).await {
            Ok(appended) => {
                stored(&done);
                self.wait_applied(appended.last_position).await?;
                Ok(Some(done))
            }
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Load (from `cache` when `cached` finds an entry, else the stream), decide, append with
    /// that version and record the new state in `cache`; a conflict or a refusal of a cached
    /// state drops the entry and tries again from the store. A stale entry shows up as a
    /// conflict (its version is checked by the append) or, rarely, as a refusal.
    async fn execute_cached<A: Aggregate + Clone>(
        &self,
        stream: &StreamId,
        intent: A::Intent,
        cache: &Mutex<Cache<A>>,
        cached: impl Fn() -> Option<(u64, A)>,
        stored: impl Fn(&A),
    ) -> Result<Executed<A>, FleetError> {
        let mut fresh = false;
        for _ in 0..self.config.max_conflict_retries.max(1) {
            let hit = if fresh { None } else { cached() };
            let from_cache = hit.is_some();
            let (state, version) = match hit {
                Some((v, s)) => (Some(s), Some(v)),
                None => self.load::<A>(stream).await?,
            };
            fresh = true;
            let base = version.unwrap_or(0);
            let record = |done: &Executed<A>| {
                if let Some(s) = &done.state {
                    let v = base + done.events.len() as u64;
                    lock(cache).put(stream.clone(), v, s.clone());
                    stored(s);
                }
            };
            match self
                .try_execute_then(stream, state, version, intent.clone(), record)
                .await
            {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {
                    lock(cache).remove(stream);
                }
                Err(FleetError::Rejected(_)) if from_cache => {
                    lock(cache).remove(stream);
                }
                Err(e) => return Err(e),
            }
        }
        Err(FleetError::Contention {
            stream: stream.clone(),
        })
    }

    /// [`Inner::execute`] for a command execution, from the command cache when it holds
    /// the stream.
    pub async fn execute_command(
        &self,
        stream: &StreamId,
        intent: CommandIntent,
    ) -> Result<Executed<CommandExecution>, FleetError> {
        // A terminal state wakes the command's waiters as soon as it is stored, not only
        // once the fold gets there: the handle reads the state from the cache.
        let wake = |c: &CommandExecution| {
            if c.status.is_terminal() {
                self.wake_waiters(&c.execution_id);
            }
        };
        self.execute_cached(
            stream,
            intent,
            &self.command_cache,
            || lock(&self.command_cache).get(stream),
            wake,
        )
        .await
    }

    /// Sends a new command: the stream cannot exist yet (its id was just drawn), so nothing
    /// is read first. Once the store has ordered the command, the sender publishes the
    /// request itself rather than waiting for the fold to wake the outbox; the fold leaves
    /// the command out of the outbox. If this future is dropped in between, or the link
    /// refuses the request, the outbox takes over.
    ///
    /// The request goes out while the store makes the command durable
    /// ([`EventStore::append_ordered`]), so the device's trip overlaps the sync: the one
    /// place where a publish does not wait for durability. It is safe because the answer
    /// can only be stored after the command (it is ordered after it in the same log, and a
    /// store that loses the command fails as a whole), and nothing is acknowledged first:
    /// the handle is returned, and the device's answer acknowledged, only once durable. A
    /// crash inside the window can leave a device that acted on a command the store never
    /// kept; its answer is then refused as unknown, and the sender never got an id.
    pub async fn send_command(
        &self,
        stream: &StreamId,
        execution_id: &ExecutionId,
        intent: CommandIntent,
    ) -> Result<Executed<CommandExecution>, FleetError> {
        let now = self.clock.now();
        let (state, events) = CommandExecution::execute(None, intent.clone(), now)?;
        let batch = AppendBatch::single(
            stream.clone(),
            ExpectedVersion::from_current(None),
            self.envelopes(&events, now),
        );
        let mut guard = OwedRequest::arm(self, execution_id);
        let ordered = match self.timed_append_ordered(batch).await {
            Ok(ordered) => ordered,
            Err(StoreError::Conflict { .. }) => {
                guard.release();
                // The id is taken after all: decide on what is stored (it refuses a resend).
                return self.execute_command(stream, intent).await;
            }
            Err(e) => {
                guard.release();
                return Err(e.into());
            }
        };
        let Some(command) = state else {
            guard.release();
            ordered.durable().await?;
            return Ok(Executed { state, events });
        };
        lock(&self.command_cache).put(stream.clone(), events.len() as u64, command.clone());
        // Just sent, so live (a TTL is never zero); were it not, nothing would be owed and
        // the fold would clear the mark.
        if let Some(request) = command_request(&command, now) {
            let delivery = self.link.submit(vec![request.clone()]).await;
            guard.disarm();
            match delivery {
                // The outbox awaits the acknowledgement: a sender never waits for the broker
                // (which may be away), and a failed delivery is retried there.
                Ok(d) => {
                    lock(&self.handed).push((d, vec![request]));
                    self.outbox_wake.notify_one();
                }
                Err(err) => {
                    tracing::warn!(%err, execution_id = %command.execution_id, "command request not handed to the link; the outbox retries");
                    self.owe_request(command.execution_id.clone());
                }
            }
        } else {
            guard.disarm();
        }
        let appended = ordered.durable().await?;
        self.wait_applied(appended.last_position).await?;
        Ok(Executed {
            state: Some(command),
            events,
        })
    }

    /// Decides a thing intent on the folded thing (thing streams grow with every presence
    /// change, so they are not replayed per report); a conflict means the fold was behind,
    /// so catch up and decide again.
    pub async fn thing_intent(
        &self,
        name: &ThingName,
        intent: ThingIntent,
    ) -> Result<Option<Thing>, FleetError> {
        self.ensure_serving()?;
        let stream = StreamId::thing(name);
        for _ in 0..self.config.max_conflict_retries.max(1) {
            let state = self.read().things.get(name).cloned();
            let version = state.as_ref().map(|t| t.version);
            if let Some(done) = self
                .try_execute::<Thing>(&stream, state, version, intent.clone())
                .await?
            {
                return Ok(done.state);
            }
            self.catch_up().await?;
        }
        Err(FleetError::Contention { stream })
    }

    /// Hands a command request to the outbox.
    fn owe_request(&self, id: ExecutionId) {
        lock(&self.outbox).owe_request(id);
        self.outbox_wake.notify_one();
    }

    /// [`Inner::execute`] for a job execution, starting from the cached state when there is
    /// one.
    pub async fn execute_execution(
        &self,
        stream: &StreamId,
        intent: JobExecutionIntent,
    ) -> Result<Executed<JobExecution>, FleetError> {
        self.execute_cached(stream, intent, &self.cache, || self.cached(stream), |_| {})
            .await
    }

    /// The cached state of an execution stream, unless the projections already folded a
    /// newer version (then the entry is stale and dropped); failing that, the folded record
    /// when it is the whole state (no status details), so an execution the cache evicted
    /// is not read back from the store. Either may be behind the store (another writer, a
    /// fold not yet caught up): a decision on it then conflicts and is taken again on the
    /// stream.
    pub fn cached(&self, stream: &StreamId) -> Option<(u64, JobExecution)> {
        // Bound first: a guard in an `if let` scrutinee would live through the body, which
        // takes the lock again.
        let hit = lock(&self.cache).get(stream);
        if let Some((v, s)) = hit {
            let folded = self
                .read()
                .exec(&s.job_id, &s.thing)
                .map_or(0, |m| m.version);
            if folded <= v {
                return Some((v, s));
            }
            lock(&self.cache).remove(stream);
        }
        let StreamKind::JobExecution(job, thing) = stream.kind() else {
            return None;
        };
        let st = self.read();
        let entry = st.exec(&job, &thing)?;
        Some((entry.version, entry.full_state(&job, &thing)?))
    }

    /// The current state of an execution for a read-only use: the cached state (or the
    /// folded record of an execution without status details, see [`Inner::cached`]) if it is
    /// the folded version, else the stream replayed.
    pub async fn load_execution(
        &self,
        stream: &StreamId,
    ) -> Result<Option<JobExecution>, FleetError> {
        if let Some((v, s)) = self.cached(stream) {
            let folded = self
                .read()
                .exec(&s.job_id, &s.thing)
                .map_or(0, |m| m.version);
            if folded == v {
                return Ok(Some(s));
            }
        }
        let (state, version) = self.load::<JobExecution>(stream).await?;
        if let (Some(s), Some(v)) = (&state, version) {
            lock(&self.cache).put(stream.clone(), v, s.clone());
        }
        Ok(state)
    }

    /// Hands the effects of a fold to the tasks that act on them.
    pub fn distribute(&self, mut fx: Effects) {
        if !fx.dirty_jobs.is_empty() {
            lock(&self.dirty_jobs).extend(std::mem::take(&mut fx.dirty_jobs));
            self.jobs_wake.notify_one();
        }
        // The outbox takes the things and new commands it owes; the changes stay for the
        // broadcast below.
        let owing = lock(&self.outbox).owe(&mut fx);
        if owing.dropped > 0 {
            tracing::warn!(
                dropped = owing.dropped,
                "the link is behind; dropped the oldest unpublished status changes"
            );
        }
        if owing.owed {
            self.outbox_wake.notify_one();
        }
        if !fx.commands_done.is_empty() {
            let now = self.clock.now();
            {
                let st = self.read();
                for id in &fx.commands_done {
                    if let Some(c) = st.commands.get(id) {
                        let took = now.saturating_since(c.sent_at);
                        self.metrics
                            .command_done(std::time::Duration::from_millis(took.as_millis()));
                    }
                }
            }
            for id in &fx.commands_done {
                self.wake_waiters(id);
            }
        }
        if !fx.came_online.is_empty() {
            // A thing that comes back gets its pending list at once, in case the
            // notifications sent while it was away were dropped.
            let st = self.read();
            let mut outbox = lock(&self.outbox);
            let mut owed = false;
            for thing in &fx.came_online {
                owed |= outbox.reconnected(&st, thing);
            }
            drop(outbox);
            drop(st);
            if owed {
                self.outbox_wake.notify_one();
            }
        }
        for change in fx.changes {
            // No receiver is fine: nobody is listening.
            let _ = self.changes.send(change);
        }
    }

    /// Wakes whoever waits for command `id` to end (the waiters are taken, so each is woken
    /// once, by whichever of the storing task and the fold comes first).
    pub fn wake_waiters(&self, id: &ExecutionId) {
        let woken = lock(&self.waiters).remove(id);
        for w in woken.unwrap_or_default() {
            let _ = w.send(());
        }
    }

    /// Marks a job for the job driver.
    pub fn mark_job(&self, job: JobId) {
        lock(&self.dirty_jobs).insert(job);
        self.jobs_wake.notify_one();
    }
}

/// A new command's request, owed by its sender until handed to the link: marked in the
/// outbox before the append (so the fold, which can only come after, leaves it to the
/// sender), and handed to the outbox if the sender goes away before publishing.
struct OwedRequest<'a, S: EventStore, L: DeviceLink> {
    inner: &'a Inner<S, L>,
    id: Option<ExecutionId>,
}

impl<'a, S: EventStore, L: DeviceLink> OwedRequest<'a, S, L> {
    fn arm(inner: &'a Inner<S, L>, id: &ExecutionId) -> Self {
        lock(&inner.outbox).sender_owes(id.clone());
        Self {
            inner,
            id: Some(id.clone()),
        }
    }

    /// The request was handed to the link (the fold removes the mark).
    fn disarm(&mut self) {
        self.id = None;
    }

    /// Nothing was stored: no request is owed.
    fn release(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner.outbox).sender_stored_nothing(&id);
        }
    }
}

impl<S: EventStore, L: DeviceLink> Drop for OwedRequest<'_, S, L> {
    fn drop(&mut self) {
        // Dropped between the append and the publish (or during the append, when it is
        // unknown whether the command was stored): the outbox publishes it if the store
        // holds it and it is still live, and skips it otherwise.
        if let Some(id) = self.id.take() {
            lock(&self.inner.outbox).sender_gave_up(id);
            self.inner.outbox_wake.notify_one();
        }
    }
}
