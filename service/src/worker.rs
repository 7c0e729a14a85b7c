//! The inbound loop and the worker shards: device requests and per-execution timers, serialized
//! per thing so that one thing's job requests are decided in the order they arrived and
//! optimistic conflicts stay rare (each command execution, its own stream, is serialized on
//! its own).
//!
//! A shard runs its work in batches, at most `FleetConfig::worker_batch_per_thing` items of
//! any one chain per batch, the rest held in order for the next batches: one noisy thing
//! cannot hold its shard. A few batches run at once, never two with the same chain, so a
//! batch waiting for the store holds only its own chains. Once a batch is decided and
//! stored, its device requests are settled with
//! the link (`DeviceLink::settle`), which is when MQTT acknowledges them to the broker. Each
//! shard remembers the answers to state-changing requests that carried a `clientToken`, so
//! a retry gets the answer it missed (`fleetops_machine::replies`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use fleetops_core::command::CommandIntent;
use fleetops_core::device::{DeviceRequest, Inbound, Outbound, Reply};
use fleetops_core::job_execution::JobExecutionIntent;
use fleetops_core::link::{DeviceLink, LinkError, LinkEvent, PresenceSubject, Receipt};
use fleetops_core::store::EventStore;
use fleetops_core::thing::{PresenceReport, ThingIntent};
use fleetops_core::{ExecutionId, JobId, Rejection, StreamId, ThingName};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::delivery::{Finished, InFlight};
use crate::error::FleetError;
use crate::runtime::{Inner, Work};
use crate::sync::lock;
use fleetops_machine::replies::{Recall, ReplyCache};
use fleetops_machine::requests::{self, Answer, Route};

/// What a shard serializes on within a batch: one thing's job traffic stays in arrival order,
/// while each command execution is its own stream and needs no order with the thing's other
/// commands — so a burst of responses from one thing goes to the store as one group commit
/// instead of one durable append after the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ChainKey {
    Thing(ThingName),
    Command(ExecutionId),
}

impl Work {
    fn chain(&self) -> ChainKey {
        match self {
            Self::Device(
                Inbound {
                    request: DeviceRequest::CommandResponse { execution_id, .. },
                    ..
                },
                _,
            )
            | Self::CommandTimer(execution_id) => ChainKey::Command(execution_id.clone()),
            Self::Device(i, _) => ChainKey::Thing(i.thing.clone()),
            Self::ExecutionTimer(_, t) | Self::Presence(t, _) => ChainKey::Thing(t.clone()),
        }
    }
}

/// How many times start-next looks again when the projection was behind a concurrent change.
const START_NEXT_ATTEMPTS: usize = 3;

/// The work a shard took from its queue and has not run yet, per chain, with the chains in
/// turn order: each batch takes a few items of every chain in turn, so one chain with many
/// items cannot hold the shard while others wait.
struct Held {
    chains: HashMap<ChainKey, VecDeque<Work>>,
    turns: VecDeque<ChainKey>,
    len: usize,
}

impl Held {
    fn new() -> Self {
        Self {
            chains: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
        }
    }

    fn push(&mut self, w: Work) {
        let key = w.chain();
        let q = self.chains.entry(key.clone()).or_default();
        if q.is_empty() {
            self.turns.push_back(key);
        }
        q.push_back(w);
        self.len += 1;
    }

    /// At most `per_chain` items of each chain in turn, `max` in all, leaving out the chains
    /// in `busy` (a batch still runs them); a chain with items left goes to the back of the
    /// turns.
    fn take_batch(
        &mut self,
        max: usize,
        per_chain: usize,
        busy: &HashSet<ChainKey>,
    ) -> Vec<(ChainKey, Vec<Work>)> {
        let mut out = Vec::new();
        let mut taken = 0;
        for _ in 0..self.turns.len() {
            if taken >= max {
                break;
            }
            let Some(key) = self.turns.pop_front() else {
                break;
            };
            if busy.contains(&key) {
                self.turns.push_back(key);
                continue;
            }
            let Some(q) = self.chains.get_mut(&key) else {
                continue;
            };
            let n = per_chain.min(max - taken).min(q.len());
            out.push((key.clone(), q.drain(..n).collect()));
            taken += n;
            if q.is_empty() {
                self.chains.remove(&key);
            } else {
                self.turns.push_back(key);
            }
        }
        self.len -= taken;
        out
    }
}

/// Batches a shard runs at once. A batch waits for its appends to be durable and folded
/// (hundreds of microseconds under load); meanwhile the next batches, of other chains, are
/// decided and their appends join the store's next group commits instead of queueing
/// behind the first.
const RUNNING_BATCHES: usize = 4;

/// What a finished batch leaves to settle: its chains (free to run again), replies and
/// receipts.
struct Ran {
    chains: Vec<ChainKey>,
    replies: Vec<Outbound>,
    receipts: Vec<Receipt>,
}

/// Runs one batch: each chain's items in order, the chains side by side.
async fn run_batch<S: EventStore, L: DeviceLink>(
    inner: &Inner<S, L>,
    cache: &Mutex<ReplyCache>,
    chains: Vec<(ChainKey, Vec<Work>)>,
) -> Ran {
    let mut keys = Vec::with_capacity(chains.len());
    let work = chains.into_iter().map(|(key, chain)| {
        keys.push(key);
        async move {
            let mut out = Vec::new();
            let mut receipts = Vec::new();
            for w in chain {
                if let Work::Device(_, receipt) = &w {
                    if *receipt != Receipt::NONE {
                        receipts.push(*receipt);
                    }
                }
                if let Some(reply) = inner.handle(w, cache).await {
                    out.push(reply);
                }
            }
            (out, receipts)
        }
    });
    let results = futures::future::join_all(work).await;
    let mut replies = Vec::new();
    let mut receipts = Vec::new();
    for (out, r) in results {
        replies.extend(out);
        receipts.extend(r);
    }
    Ran {
        chains: keys,
        replies,
        receipts,
    }
}

/// A worker shard: takes what its queue holds and runs it in batches (each chain's items in
/// order, chains in parallel, a bounded number per chain). Up to [`RUNNING_BATCHES`] batches
/// run at once, never two with the same chain, so a chain's items are still decided one
/// after the other, each on the state the previous one stored and folded. Once a batch is
/// done its device requests are settled with the link, then its replies go in one link
/// batch.
pub(crate) async fn run_shard<S: EventStore, L: DeviceLink>(
    inner: Arc<Inner<S, L>>,
    mut rx: mpsc::Receiver<Work>,
) {
    let batch = inner.config.worker_batch.max(1);
    let per_chain = inner.config.worker_batch_per_thing.max(1);
    let hold_max = inner.config.worker_queue.max(batch);
    let shards = inner.config.shards.max(1);
    let replies_cache = Mutex::new(ReplyCache::new(
        inner.config.retry_window.into(),
        inner.config.retry_replies_per_thing,
        inner.config.retry_replies.div_ceil(shards),
    ));
    let mut buf = Vec::with_capacity(batch);
    let mut held = Held::new();
    let mut in_flight = InFlight::default();
    let mut running = FuturesUnordered::new();
    let mut busy: HashSet<ChainKey> = HashSet::new();
    let mut open = true;
    loop {
        // Look past the head of the queue, so every thing waiting gets its turn.
        while open && held.len < hold_max {
            match rx.try_recv() {
                Ok(w) => held.push(w),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if running.len() < RUNNING_BATCHES {
            let chains = held.take_batch(batch, per_chain, &busy);
            if !chains.is_empty() {
                if inner.shares_store {
                    // Another runtime may have stored what the device reacts to (a
                    // notification the leader published): fold everything stored so far
                    // before answering, so a device never hears of an execution from one
                    // instance and is told there is none by another. One read of the head
                    // per batch.
                    if let Err(err) = inner.catch_up().await {
                        tracing::warn!(%err, "cannot catch up before answering devices; answering from the read model as it is");
                    }
                }
                busy.extend(chains.iter().map(|(key, _)| key.clone()));
                running.push(run_batch(&inner, &replies_cache, chains));
                continue;
            }
        }
        if !open && held.len == 0 && running.is_empty() {
            return;
        }
        // Nothing more to start: wait for a batch to finish, new work, or a delivery.
        let can_take = open && held.len < hold_max;
        tokio::select! {
            Some(ran) = running.next(), if !running.is_empty() => {
                for key in &ran.chains {
                    busy.remove(key);
                }
                settle(&inner, &mut in_flight, ran).await;
            }
            // `recv_many` is cancel-safe: another branch finishing first loses no work.
            n = rx.recv_many(&mut buf, batch), if can_take => {
                if n == 0 {
                    open = false;
                }
                for w in buf.drain(..) {
                    held.push(w);
                }
            }
            f = in_flight.next() => undelivered(f),
        }
    }
}

/// Settles a finished batch's device requests with the link, then sends its replies.
async fn settle<S: EventStore, L: DeviceLink>(
    inner: &Inner<S, L>,
    in_flight: &mut InFlight,
    ran: Ran,
) {
    if !ran.replies.is_empty() {
        // On the wire now; the broker's acknowledgement is awaited beside the next batch.
        for f in in_flight.submit(&inner.link, ran.replies, false).await {
            undelivered(f);
        }
    }
    if !ran.receipts.is_empty() {
        // Every request of the batch is decided and what it changed is stored (or it was
        // refused): the link may now let the broker forget it. The replies need not be
        // delivered first: a device that misses one asks again.
        inner.link.settle(ran.receipts).await;
    }
    for f in in_flight.reap() {
        undelivered(f);
    }
}

/// Logs a batch of replies the link could not deliver: the device times out and asks
/// again, and the store already holds every outcome.
fn undelivered(f: Finished) {
    if let Err(err) = f.result {
        tracing::warn!(%err, "could not deliver replies");
    }
}

/// The inbound loop: reads link events in batches and routes them to the shards.
pub(crate) async fn run_inbound<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut backoff = StdDuration::from_millis(10);
    loop {
        let events = match inner.link.recv(inner.config.worker_batch).await {
            Ok(events) => events,
            Err(LinkError::Closed) => {
                tracing::info!("device link closed; inbound loop stops");
                return;
            }
            Err(err) => {
                tracing::warn!(%err, "device link failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(StdDuration::from_secs(2));
                continue;
            }
        };
        backoff = StdDuration::from_millis(10);
        for event in events {
            match event {
                LinkEvent::Request(inbound, receipt) => {
                    let shard = inner.shard(&inbound.thing).clone();
                    // A full shard queue waits here, and the link then stops reading: with
                    // acknowledgements held until a request is settled, that is the
                    // backpressure that ends at the broker's window.
                    if shard.send(Work::Device(inbound, receipt)).await.is_err() {
                        // Shutting down: the request stays unsettled, so the broker delivers
                        // it again.
                        return;
                    }
                }
                LinkEvent::Presence { thing, online } => {
                    // No stamp from the source: order by arrival, strictly increasing even
                    // when the clock stands still or steps back.
                    let now = inner.clock.now().as_millis();
                    let stamp = match inner.presence_stamp.fetch_update(
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                        |last| Some(now.max(last + 1)),
                    ) {
                        Ok(last) | Err(last) => now.max(last + 1),
                    };
                    let report = PresenceReport { online, stamp };
                    let shard = inner.shard(&thing).clone();
                    if shard.send(Work::Presence(thing, report)).await.is_err() {
                        return;
                    }
                }
                LinkEvent::PresenceReport {
                    subject,
                    online,
                    stamp,
                } => {
                    let thing = match subject {
                        PresenceSubject::Thing(t) => Some(t),
                        PresenceSubject::Client(id) => inner.read().thing_of_client(&id),
                    };
                    let Some(thing) = thing else {
                        tracing::debug!("presence of a client id that names no thing; ignored");
                        continue;
                    };
                    let report = PresenceReport { online, stamp };
                    let shard = inner.shard(&thing).clone();
                    if shard.send(Work::Presence(thing, report)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    async fn handle(&self, work: Work, replies: &Mutex<ReplyCache>) -> Option<Outbound> {
        match work {
            Work::Device(inbound, _) => {
                let reply = self.answer(inbound, replies).await;
                self.metrics.answered(&reply);
                Some(reply)
            }
            Work::CommandTimer(id) => {
                let stream = StreamId::command(&id);
                if let Err(err) = self
                    .execute_command(&stream, CommandIntent::CheckTimeout)
                    .await
                {
                    tracing::warn!(%stream, %err, "command timer failed");
                }
                None
            }
            Work::Presence(thing, report) => {
                let intent = ThingIntent::ReportPresence {
                    name: thing.clone(),
                    report,
                };
                if let Err(err) = self.thing_intent(&thing, intent).await {
                    tracing::warn!(%thing, %err, "presence report not recorded");
                }
                None
            }
            Work::ExecutionTimer(job, thing) => {
                let stream = StreamId::job_execution(&job, &thing);
                if let Err(err) = self
                    .execute_execution(&stream, JobExecutionIntent::CheckTimeout)
                    .await
                {
                    tracing::warn!(%stream, %err, "execution timer failed");
                }
                None
            }
        }
    }

    /// Answers one device request; a retry (same thing, `clientToken` and operation) of a
    /// state-changing request gets the answer remembered from the first time.
    async fn answer(&self, inbound: Inbound, replies: &Mutex<ReplyCache>) -> Outbound {
        let recall = lock(replies).recall(&inbound, self.clock.now());
        let key = match recall {
            Recall::Answered(reply) => {
                tracing::debug!(thing = %inbound.thing, "answered a retried request as the first time");
                return reply;
            }
            Recall::Decide(key) => key,
        };
        let reply = self.device_request(inbound).await;
        if let Some(key) = key {
            lock(replies).record(key, &reply, self.clock.now());
        }
        reply
    }

    /// Answers one device request: the rules decide, the store records, then the reply goes.
    pub(crate) async fn device_request(&self, inbound: Inbound) -> Outbound {
        let Inbound {
            thing,
            client_token,
            request,
        } = inbound;
        let operation = request.operation();
        let result = self.decide_request(&thing, request).await;
        let timestamp = self.clock.now();
        match result {
            Ok(reply) => Outbound::Accepted {
                thing,
                operation,
                client_token,
                reply,
                timestamp,
            },
            Err(err) => {
                let rejection = err.to_rejection();
                if err.rejection().is_none() {
                    tracing::warn!(%thing, %err, "device request failed inside the service");
                } else {
                    tracing::debug!(%thing, %err, "device request refused");
                }
                Outbound::Rejected {
                    thing,
                    operation,
                    client_token,
                    rejection,
                    timestamp,
                }
            }
        }
    }

    /// Decides one device request where the machine routes it: the rules decide, the store
    /// records, then the machine builds the reply from the stored state.
    async fn decide_request(
        &self,
        thing: &ThingName,
        request: DeviceRequest,
    ) -> Result<Reply, FleetError> {
        // Only start-next is routed again (after a catch-up), so only it keeps a copy.
        let mut again = matches!(request, DeviceRequest::StartNext(_)).then(|| request.clone());
        let mut route = self.read().route(thing, request, usize::MAX);
        for _ in 0..START_NEXT_ATTEMPTS {
            match route {
                Route::Answered(answer) => return answer.map_err(FleetError::Rejected),
                Route::Execution {
                    job_id,
                    stream,
                    intent,
                    answer,
                } => match self.execute_execution(&stream, intent).await {
                    Ok(done) => {
                        let state = done.state.ok_or_else(|| not_found(&job_id, thing))?;
                        return Ok(self.read().answer(answer, &state));
                    }
                    // The read model had not yet seen a change another writer made (a cancel,
                    // a timeout) to the execution it offered: catch up and look again.
                    Err(FleetError::Rejected(Rejection::TerminalStateReached { .. }))
                        if answer == Answer::StartNext =>
                    {
                        self.catch_up().await?;
                    }
                    Err(e) => return Err(name_unknown(e, &job_id, thing)),
                },
                Route::Describe(d) => {
                    let history = self.read_stream(&d.stream).await?;
                    return self
                        .read()
                        .describe(thing, &d, history.iter().map(|e| &e.event))
                        .map_err(|source| FleetError::Corrupt {
                            stream: d.stream,
                            source,
                        })?
                        .map_err(FleetError::Rejected);
                }
                Route::Command {
                    execution_id,
                    stream,
                    intent,
                } => {
                    let late = match &intent {
                        CommandIntent::Respond(r) => Some(r.clone()),
                        _ => None,
                    };
                    return match self.execute_command(&stream, intent).await {
                        Ok(_) => Ok(Reply::CommandResponse),
                        Err(FleetError::Rejected(
                            refusal @ Rejection::TerminalStateReached { .. },
                        )) => {
                            // A late or repeated answer: the device still hears that the
                            // command has ended, and the answer is kept for the audit trail.
                            if let Some(response) = late {
                                if let Err(err) = self
                                    .execute_command(&stream, CommandIntent::RecordLate(response))
                                    .await
                                {
                                    tracing::warn!(%stream, %err, "late answer not recorded");
                                }
                            }
                            Err(FleetError::Rejected(refusal))
                        }
                        Err(FleetError::Rejected(Rejection::ResourceNotFound { .. })) => Err(
                            FleetError::Rejected(requests::command_not_found(&execution_id)),
                        ),
                        Err(e) => Err(e),
                    };
                }
            }
            let Some(request) = again.take() else { break };
            again = Some(request.clone());
            route = self.read().route(thing, request, usize::MAX);
        }
        Err(FleetError::Rejected(Rejection::RequestThrottled))
    }
}

fn not_found(job: &JobId, thing: &ThingName) -> FleetError {
    FleetError::Rejected(requests::execution_not_found(job, thing))
}

/// Core names an unknown execution "unknown"; tell the device which one it asked for.
fn name_unknown(e: FleetError, job: &JobId, thing: &ThingName) -> FleetError {
    match e {
        FleetError::Rejected(Rejection::ResourceNotFound {
            kind: "job execution",
            ..
        }) => not_found(job, thing),
        other => other,
    }
}
