//! Deterministic inputs of the cases: event ids, events, timestamps, ids, streams, and the
//! results and envelopes the contract demands.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use uuid::{Builder, Uuid};

use crate::event::Event;
use crate::ids::StreamId;
use crate::store::{AppendBatch, Appended, ExpectedVersion, IdempotencyKey, NewEvent, StoredEvent};
use crate::time::{Duration, Timestamp};

/// Millisecond timestamp the suite's clock starts from (November 2023).
const EPOCH_MS: u64 = 1_700_000_000_000;

/// A source of deterministic, distinct event ids for one case (shared by its tasks).
#[derive(Debug, Default)]
pub(super) struct Ids {
    next: AtomicU64,
}

impl Ids {
    /// An event with a fresh id and no correlation.
    pub(super) fn new_event(&self, event: Event) -> NewEvent {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let recorded_at = event_time(&event);
        NewEvent::new(event_id(seq, recorded_at), event, recorded_at)
    }

    /// `n` small events of alternating kinds.
    pub(super) fn small(&self, n: u64) -> Vec<NewEvent> {
        (0..n)
            .map(|_| {
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                NewEvent::new(event_id(seq, at(seq)), small_event(seq), at(seq))
            })
            .collect()
    }
}

/// A UUIDv7 made of the event's time and a sequence number instead of random bits.
pub(super) fn event_id(seq: u64, at: Timestamp) -> Uuid {
    // The builder overwrites the top two bits of byte 2 with the variant; sequence numbers stay
    // far below 2^62, so distinct numbers give distinct ids.
    let mut bytes = [0u8; 10];
    bytes[2..].copy_from_slice(&seq.to_be_bytes());
    Builder::from_unix_timestamp_millis(at.as_millis(), &bytes).into_uuid()
}

/// An empty event list, typed for comparisons.
pub(super) fn none() -> Vec<StoredEvent> {
    Vec::new()
}

/// A small event: a command time-out or one thing joining a group.
pub(super) fn small_event(seq: u64) -> Event {
    if seq.is_multiple_of(2) {
        Event::CommandTimedOut { at: at(seq) }
    } else {
        Event::GroupMembersAdded {
            things: vec![parse_id(&format!("thing-{seq}"))],
            at: at(seq),
        }
    }
}

/// A command being sent, with JSON parameters.
pub(super) fn command_sent(seq: u64) -> Event {
    Event::CommandSent {
        execution_id: parse_id("conformance-cmd-1"),
        thing: parse_id("thing-1"),
        command_id: Some("reboot-v1".into()),
        action: "reboot".into(),
        params: json!({"delaySecs": 5, "reason": "ota", "tags": ["a", "b"], "nested": {"x": null}}),
        ttl: Duration::from_secs(30),
        sent_at: at(seq),
    }
}

/// The timestamp the suite records an event at: its own time where it has one.
pub(super) fn event_time(event: &Event) -> Timestamp {
    match event {
        Event::CommandSent { sent_at, .. } => *sent_at,
        Event::CommandResponded { at, .. }
        | Event::CommandTimedOut { at }
        | Event::GroupCreated { at, .. }
        | Event::GroupMembersAdded { at, .. }
        | Event::ExecutionStarted { at, .. }
        | Event::ExecutionFinished { at, .. } => *at,
        Event::ExecutionQueued { queued_at, .. } => *queued_at,
        _ => at(0),
    }
}

/// The suite's clock: `n` milliseconds after its epoch.
pub(super) fn at(n: u64) -> Timestamp {
    Timestamp::from_millis(EPOCH_MS + n)
}

/// Parses a fixed, valid identifier of the suite.
pub(super) fn parse_id<T>(s: &str) -> T
where
    T: TryFrom<String>,
    T::Error: Display,
{
    T::try_from(s.to_owned()).unwrap_or_else(|e| panic!("conformance id {s:?} is invalid: {e}"))
}

/// A custom stream `x/conformance/{name}`.
pub(super) fn stream(name: &str) -> StreamId {
    let name = format!("conformance/{name}");
    StreamId::custom(&name)
        .unwrap_or_else(|e| panic!("conformance stream {name:?} is invalid: {e}"))
}

/// A single-stream batch.
pub(super) fn batch(
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> AppendBatch {
    AppendBatch::single(stream.clone(), expected, events)
}

/// The `Appended` the contract demands.
pub(super) fn appended(first: u64, last: u64, versions: &[(&StreamId, u64)]) -> Appended {
    Appended {
        first_position: first,
        last_position: last,
        versions: versions.iter().map(|(s, v)| ((*s).clone(), *v)).collect(),
    }
}

/// The envelope the contract demands for `new` stored at `version` / `position`.
pub(super) fn stored(
    new: &NewEvent,
    stream: &StreamId,
    version: u64,
    position: u64,
    key: Option<&IdempotencyKey>,
) -> StoredEvent {
    StoredEvent {
        event_id: new.event_id,
        stream: stream.clone(),
        stream_version: version,
        position,
        recorded_at: new.recorded_at,
        schema_version: new.event.schema_version(),
        correlation_id: new.correlation_id,
        causation_id: new.causation_id,
        idempotency_key: key.cloned(),
        event: new.event.clone(),
    }
}
