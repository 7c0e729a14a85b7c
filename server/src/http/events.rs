//! `GET /api/v1/events`: stored events as Server-Sent Events, live, filtered, resumable.
//!
//! **One feed, bounded buffers.** The [`EventHub`] runs one feed task per server: it follows
//! the store (its own subscription, not the runtime's) and offers each event to every
//! connected client whose filter it matches with a `try_send` into that client's bounded
//! buffer. It never waits for a client, so the runtime's follower, which has a subscription
//! of its own, can never be held up by one, and a slow client costs only its buffer. A
//! client whose buffer is full is disconnected (logged and counted in `/healthz`) and
//! resumes with `Last-Event-ID`, as every EventSource does on its own. The feed task runs
//! only while there are clients and stops with the server.
//!
//! **No event skipped or repeated.** A client starts after a position (`Last-Event-ID`,
//! `from`, or the head when it connects). It first reads the store page by page, at the pace
//! its connection takes them (the backlog); once that read finds nothing new it joins the
//! hub, which says from which position on it will hand it every matching event; the client
//! reads the store once more up to the position before that (the bridge), then takes the
//! hub's events. Every step starts after the last position handled, so nothing is missed
//! and anything seen twice is dropped.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::response::sse::Event as SseEvent;
use fleetops_core::ids::StreamKind;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::StoredEvent;
use fleetops_core::{EventStore, JobId, StreamId, ThingName};
use fleetops_service::Fleet;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Notify};

use super::wire::FeedItem;

/// The most event-stream clients served at once; one more is refused with 503. Each holds
/// an HTTP connection (of `--max-connections`) and a buffer of [`EVENT_BUFFER`] events.
pub const MAX_EVENT_CLIENTS: usize = 64;

/// Matching events buffered per client; a client that falls this far behind the feed is
/// disconnected.
pub const EVENT_BUFFER: usize = 1024;

/// How often an idle event stream gets a keep-alive comment, so proxies keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Events read from the store at once while a client catches up.
const CATCH_UP_PAGE: usize = 256;

/// The kind of stream an event belongs to, as `GET /api/v1/events?kind=` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamKindFilter {
    /// `job/{jobId}`.
    Job,
    /// `exec/{jobId}/{thingName}`.
    JobExecution,
    /// `cmd/{executionId}`.
    Command,
    /// `group/{name}`.
    Group,
}

/// Which events a client gets: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only the streams of this job: the job's own and its executions'.
    pub job: Option<JobId>,
    /// Only the streams naming this thing: its job executions' and its own (registry and
    /// presence).
    pub thing: Option<ThingName>,
    /// Only streams of this kind.
    pub kind: Option<StreamKindFilter>,
}

/// What a stream's name says, parsed once per event for every client's filter.
struct Keys {
    /// API key streams never go out: a `read` credential must not watch keys being made.
    hidden: bool,
    kind: Option<StreamKindFilter>,
    job: Option<JobId>,
    thing: Option<ThingName>,
}

impl Keys {
    fn of(stream: &StreamId) -> Self {
        let (kind, job, thing) = match stream.kind() {
            StreamKind::Job(job) => (Some(StreamKindFilter::Job), Some(job), None),
            StreamKind::JobExecution(job, thing) => {
                (Some(StreamKindFilter::JobExecution), Some(job), Some(thing))
            }
            StreamKind::Command(_) => (Some(StreamKindFilter::Command), None, None),
            StreamKind::Group(_) => (Some(StreamKindFilter::Group), None, None),
            StreamKind::Thing(thing) => (None, None, Some(thing)),
            StreamKind::ApiKey(_) | StreamKind::CommandTemplate(_) | StreamKind::Custom(_) => {
                (None, None, None)
            }
        };
        let hidden = matches!(stream.kind(), StreamKind::ApiKey(_));
        Self {
            hidden,
            kind,
            job,
            thing,
        }
    }
}

impl EventFilter {
    /// Whether events of `stream` pass.
    pub fn matches(&self, stream: &StreamId) -> bool {
        self.matches_keys(&Keys::of(stream))
    }

    fn matches_keys(&self, keys: &Keys) -> bool {
        !keys.hidden
            && self.kind.is_none_or(|k| keys.kind == Some(k))
            && self
                .job
                .as_ref()
                .is_none_or(|j| keys.job.as_ref() == Some(j))
            && self
                .thing
                .as_ref()
                .is_none_or(|t| keys.thing.as_ref() == Some(t))
    }
}

/// The live side of the event streams: the feed task, the connected clients and their
/// buffers, the cap and the counters.
#[derive(Debug)]
pub struct EventHub {
    max_clients: usize,
    buffer: usize,
    connected: AtomicUsize,
    slow_disconnects: AtomicU64,
    state: Mutex<HubState>,
    /// Woken when a client leaves, so an idle feed task stops.
    idle: Notify,
}

#[derive(Debug, Default)]
struct HubState {
    /// Whether a feed task is running (or starting).
    running: bool,
    /// The position the feed task hands out next: members get every matching event from
    /// here on.
    next: u64,
    next_id: u64,
    members: HashMap<u64, Member>,
}

#[derive(Debug)]
struct Member {
    filter: EventFilter,
    tx: mpsc::Sender<Arc<StoredEvent>>,
    lagged: Arc<AtomicBool>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(MAX_EVENT_CLIENTS, EVENT_BUFFER)
    }
}

impl EventHub {
    /// A hub serving at most `max_clients` at once, each with a buffer of `buffer` events
    /// (at least 1).
    pub fn new(max_clients: usize, buffer: usize) -> Self {
        Self {
            max_clients,
            buffer: buffer.max(1),
            connected: AtomicUsize::new(0),
            slow_disconnects: AtomicU64::new(0),
            state: Mutex::new(HubState::default()),
            idle: Notify::new(),
        }
    }

    /// The cap on clients.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Clients connected now (catching up or live).
    pub fn clients(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Clients disconnected since the start because they fell behind by a whole buffer.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // The state stays consistent at every point a panic could leave it (plain inserts and
        // removals), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more client, or `None` at the cap.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_clients).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            hub: Arc::clone(self),
        })
    }

    /// Adds a member that gets every event matching `filter` from [`Membership::from`] on.
    /// When no feed task runs, one must be started at the returned position (`head + 1`).
    fn join(self: &Arc<Self>, filter: EventFilter, head: u64) -> (Membership, Option<u64>) {
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut st = self.lock();
        let start = if st.running {
            None
        } else {
            st.running = true;
            st.next = head.saturating_add(1);
            Some(st.next)
        };
        let id = st.next_id;
        st.next_id += 1;
        st.members.insert(
            id,
            Member {
                filter,
                tx,
                lagged: Arc::clone(&lagged),
            },
        );
        let membership = Membership {
            hub: Arc::clone(self),
            id,
            rx,
            lagged,
            from: st.next,
        };
        (membership, start)
    }

    /// Offers `event` to every member whose filter it matches, without ever waiting: a member
    /// whose buffer is full is dropped. Returns `false` once no member is left (the feed
    /// task then stops).
    fn deliver(&self, event: Arc<StoredEvent>) -> bool {
        let keys = Keys::of(&event.stream);
        let mut st = self.lock();
        st.next = event.position.saturating_add(1);
        st.members.retain(|id, m| {
            if !m.filter.matches_keys(&keys) {
                return true;
            }
            match m.tx.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    m.lagged.store(true, Ordering::Release);
                    self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        client = id,
                        position = event.position,
                        buffer = self.buffer,
                        "an event stream client fell a whole buffer behind; disconnecting it \
                         (it resumes with Last-Event-ID)"
                    );
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
        if st.members.is_empty() {
            st.running = false;
            return false;
        }
        true
    }

    /// Stops the feed when no member is left; whether it did.
    fn stop_if_idle(&self) -> bool {
        let mut st = self.lock();
        if st.members.is_empty() {
            st.running = false;
        }
        !st.running
    }

    /// Ends every member's stream (the feed failed or the server stops).
    fn close_all(&self) {
        let mut st = self.lock();
        st.members.clear();
        st.running = false;
    }
}

/// A client's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    hub: Arc<EventHub>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.connected.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client's membership of the hub: its buffer, and whether it was dropped for lagging.
struct Membership {
    hub: Arc<EventHub>,
    id: u64,
    rx: mpsc::Receiver<Arc<StoredEvent>>,
    lagged: Arc<AtomicBool>,
    /// The hub hands this member every matching event from this position on.
    from: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let empty = {
            let mut st = self.hub.lock();
            st.members.remove(&self.id);
            st.members.is_empty()
        };
        if empty {
            self.hub.idle.notify_one();
        }
    }
}

/// Starts the feed task at position `from`.
fn start_feed<S: EventStore, L: DeviceLink>(
    hub: Arc<EventHub>,
    fleet: Arc<Fleet<S, L>>,
    from: u64,
    mut stopping: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let events = fleet.events(from).await;
        // The subscription is all the feed needs; holding the runtime would delay shutdown.
        drop(fleet);
        let mut events = match events {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the store for event streams");
                hub.close_all();
                return;
            }
        };
        let stop = async move {
            // The guard `wait_for` returns must not live across an await; a dropped sender
            // means the server is gone, so that stops the feed too.
            let _ = stopping.wait_for(|s| *s).await.is_ok();
        };
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => {
                    hub.close_all();
                    return;
                }
                () = hub.idle.notified() => {
                    if hub.stop_if_idle() {
                        return;
                    }
                }
                next = events.next() => match next {
                    Some(Ok(e)) => {
                        if !hub.deliver(Arc::new(e)) {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the event stream feed failed; clients resume");
                        hub.close_all();
                        return;
                    }
                    None => {
                        hub.close_all();
                        return;
                    }
                },
            }
        }
    });
}

/// Where a client is.
enum Phase {
    /// Reading the store page by page, not yet a member.
    Backlog,
    /// A member, reading the store up to `until` (the position before the hub's first).
    Bridge { member: Membership, until: u64 },
    /// Taking the hub's events.
    Live(Membership),
    /// Ended.
    Done,
}

/// One client's stream of events after position `last`.
struct Client<S: EventStore, L: DeviceLink> {
    fleet: Arc<Fleet<S, L>>,
    hub: Arc<EventHub>,
    filter: EventFilter,
    /// Every position up to this one was sent or skipped.
    last: u64,
    phase: Phase,
    pending: VecDeque<Arc<StoredEvent>>,
    stopping: watch::Receiver<bool>,
    _slot: Slot,
}

impl<S: EventStore, L: DeviceLink> Client<S, L> {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(e) = self.pending.pop_front() {
                if e.position <= self.last {
                    continue;
                }
                self.last = e.position;
                if self.filter.matches(&e.stream) {
                    if let Some(message) = message(&e) {
                        return Some(message);
                    }
                }
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Backlog => {
                    let page = self.read(self.last, CATCH_UP_PAGE).await?;
                    if page.is_empty() {
                        let head = match self.fleet.head_position().await {
                            Ok(head) => head,
                            Err(e) => {
                                tracing::warn!(error = %e, "an event stream ends: store failed");
                                return None;
                            }
                        };
                        let (member, start) = self.hub.join(self.filter.clone(), head);
                        if let Some(from) = start {
                            start_feed(
                                Arc::clone(&self.hub),
                                Arc::clone(&self.fleet),
                                from,
                                self.stopping.clone(),
                            );
                        }
                        let until = member.from.saturating_sub(1);
                        self.phase = Phase::Bridge { member, until };
                    } else {
                        self.pending.extend(page);
                        self.phase = Phase::Backlog;
                    }
                }
                Phase::Bridge { member, until } => {
                    if self.last >= until {
                        self.phase = Phase::Live(member);
                        continue;
                    }
                    let missing = usize::try_from(until - self.last).unwrap_or(usize::MAX);
                    let page = self.read(self.last, missing.min(CATCH_UP_PAGE)).await?;
                    if page.is_empty() {
                        // The hub handed out `until`, so the store holds it: give up rather
                        // than spin; the client resumes from what it got.
                        tracing::warn!(until, last = self.last, "an event stream ends: gap");
                        return None;
                    }
                    self.pending
                        .extend(page.into_iter().filter(|e| e.position <= until));
                    self.phase = Phase::Bridge { member, until };
                }
                Phase::Live(mut member) => {
                    let next = member.rx.recv().await;
                    if member.lagged.load(Ordering::Acquire) {
                        // Dropped by the hub: end now instead of draining a stale buffer.
                        tracing::info!(
                            last = self.last,
                            "event stream client disconnected: too slow"
                        );
                        return None;
                    }
                    self.pending.push_back(next?);
                    self.phase = Phase::Live(member);
                }
                Phase::Done => return None,
            }
        }
    }

    /// Up to `limit` events of the feed after `after`; `None` (the stream ends) on a store
    /// failure.
    async fn read(&self, after: u64, limit: usize) -> Option<Vec<Arc<StoredEvent>>> {
        match self.fleet.read_feed(after.saturating_add(1), limit).await {
            Ok(page) => Some(page.into_iter().map(Arc::new).collect()),
            Err(e) => {
                tracing::warn!(error = %e, "an event stream ends: the store failed");
                None
            }
        }
    }
}

/// The SSE message of one event: `id` its position, `event` its type, `data` a [`FeedItem`].
fn message(e: &StoredEvent) -> Option<SseEvent> {
    let item = FeedItem::from(e);
    match SseEvent::default()
        .id(e.position.to_string())
        .event(e.event.type_name())
        .json_data(&item)
    {
        Ok(m) => Some(m),
        Err(err) => {
            // Plain data with string keys always serializes; skip rather than end the stream.
            tracing::error!(error = %err, position = e.position, "cannot encode an event");
            None
        }
    }
}

/// The event stream of one client: every event matching `filter` after position `after`,
/// until the client goes, falls a buffer behind, or the server stops.
pub(super) fn stream<S: EventStore, L: DeviceLink>(
    fleet: Arc<Fleet<S, L>>,
    hub: Arc<EventHub>,
    slot: Slot,
    filter: EventFilter,
    after: u64,
    stopping: watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let client = Client {
        fleet,
        hub,
        filter,
        last: after,
        phase: Phase::Backlog,
        pending: VecDeque::new(),
        stopping,
        _slot: slot,
    };
    futures::stream::unfold(client, |mut c| async move {
        let mut stopping = c.stopping.clone();
        let stop = async move {
            // A dropped sender means the server is going away too; never end early otherwise.
            if stopping.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let next = tokio::select! {
            biased;
            () = stop => None,
            next = c.next() => next,
        };
        next.map(|m| (Ok(m), c))
    })
}

#[cfg(test)]
mod tests {
    use fleetops_core::event::Event;
    use fleetops_core::{ExecutionId, Timestamp};

    use super::*;

    fn stored(position: u64, stream: StreamId) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            event_id: uuid::Uuid::nil(),
            stream,
            stream_version: 1,
            position,
            recorded_at: Timestamp::from_secs(1),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            event: Event::JobStarted {
                at: Timestamp::from_secs(1),
            },
        })
    }

    fn job(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    fn thing(s: &str) -> ThingName {
        ThingName::parse(s).unwrap()
    }

    #[test]
    fn filters_combine_with_and() {
        let exec = StreamId::job_execution(&job("j1"), &thing("t1"));
        let other_exec = StreamId::job_execution(&job("j2"), &thing("t1"));
        let job_stream = StreamId::job(&job("j1"));
        let cmd = StreamId::command(&ExecutionId::parse("c1").unwrap());
        let by_job = EventFilter {
            job: Some(job("j1")),
            ..EventFilter::default()
        };
        assert!(by_job.matches(&exec) && by_job.matches(&job_stream));
        assert!(!by_job.matches(&other_exec) && !by_job.matches(&cmd));
        let by_thing = EventFilter {
            thing: Some(thing("t1")),
            ..EventFilter::default()
        };
        assert!(by_thing.matches(&exec) && by_thing.matches(&other_exec));
        assert!(!by_thing.matches(&job_stream) && !by_thing.matches(&cmd));
        let both = EventFilter {
            job: Some(job("j1")),
            thing: Some(thing("t1")),
            kind: Some(StreamKindFilter::JobExecution),
        };
        assert!(both.matches(&exec));
        assert!(!both.matches(&other_exec) && !both.matches(&job_stream));
        let commands = EventFilter {
            kind: Some(StreamKindFilter::Command),
            ..EventFilter::default()
        };
        assert!(commands.matches(&cmd) && !commands.matches(&exec));
        assert!(EventFilter::default().matches(&cmd));
    }

    #[test]
    fn the_cap_admits_at_most_max_clients_and_frees_on_drop() {
        let hub = Arc::new(EventHub::new(2, 4));
        let a = hub.admit().expect("first");
        let _b = hub.admit().expect("second");
        assert!(hub.admit().is_none(), "a third is over the cap");
        assert_eq!(hub.clients(), 2);
        drop(a);
        assert!(hub.admit().is_some(), "a freed slot is taken again");
    }

    #[test]
    fn a_member_that_falls_a_buffer_behind_is_dropped_without_waiting() {
        let hub = Arc::new(EventHub::new(4, 2));
        let (mut slow, start) = hub.join(EventFilter::default(), 10);
        assert_eq!(
            start,
            Some(11),
            "the first member starts the feed after the head"
        );
        assert_eq!(slow.from, 11);
        let (mut fast, start) = hub.join(EventFilter::default(), 10);
        assert_eq!(start, None, "the feed runs already");
        let stream = StreamId::job(&job("j1"));
        // `deliver` is synchronous: it cannot wait for anyone.
        assert!(hub.deliver(stored(11, stream.clone())));
        assert!(hub.deliver(stored(12, stream.clone())));
        assert_eq!(fast.rx.try_recv().unwrap().position, 11);
        assert_eq!(fast.rx.try_recv().unwrap().position, 12);
        // `slow` read nothing: its buffer of 2 is full, the third event drops it.
        assert!(hub.deliver(stored(13, stream.clone())));
        assert!(slow.lagged.load(Ordering::Acquire));
        assert_eq!(hub.slow_disconnects(), 1);
        assert_eq!(fast.rx.try_recv().unwrap().position, 13);
        assert!(!fast.lagged.load(Ordering::Acquire));
        // A new member joins where the feed is.
        let (late, _) = hub.join(EventFilter::default(), 0);
        assert_eq!(late.from, 14);
        drop(late);
        drop(fast);
        // Only the dropped member's buffered events remain; then its stream ends.
        assert_eq!(slow.rx.try_recv().unwrap().position, 11);
        assert_eq!(slow.rx.try_recv().unwrap().position, 12);
        assert!(slow.rx.try_recv().is_err());
        assert!(
            !hub.deliver(stored(14, stream)),
            "no member left: the feed stops"
        );
        assert!(hub.stop_if_idle());
    }

    #[test]
    fn members_get_only_what_their_filter_matches() {
        let hub = Arc::new(EventHub::new(4, 1));
        let filter = EventFilter {
            job: Some(job("j1")),
            ..EventFilter::default()
        };
        let (mut member, _) = hub.join(filter, 0);
        // Other jobs' events do not fill the buffer of one.
        for p in 1..=5 {
            assert!(hub.deliver(stored(p, StreamId::job(&job("j2")))));
        }
        assert!(hub.deliver(stored(6, StreamId::job(&job("j1")))));
        assert_eq!(member.rx.try_recv().unwrap().position, 6);
        assert!(!member.lagged.load(Ordering::Acquire));
    }
}
