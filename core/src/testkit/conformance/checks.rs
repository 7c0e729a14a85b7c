//! Checks of what a reader can observe: nothing changed after a refusal, positions without
//! gaps, a stream that agrees with the feed.

use crate::ids::StreamId;
use crate::store::{AppendBatch, EventStore, ExpectedVersion, StoreError, StoredEvent};

use super::calls::{append_err, head, read_all_paged, read_stream_paged, version};

/// What a reader can see: the head, the whole feed and the versions of some streams.
#[derive(Debug, PartialEq)]
pub(super) struct Snapshot {
    head: u64,
    feed: Vec<StoredEvent>,
    versions: Vec<(StreamId, Option<u64>)>,
}

pub(super) async fn snapshot<S: EventStore + ?Sized>(store: &S, streams: &[StreamId]) -> Snapshot {
    let mut versions = Vec::new();
    for s in streams {
        versions.push((s.clone(), version(store, s).await));
    }
    Snapshot {
        head: head(store).await,
        feed: read_all_paged(store).await,
        versions,
    }
}

pub(super) fn assert_unchanged(before: &Snapshot, after: &Snapshot, step: &str) {
    assert_eq!(
        after.head, before.head,
        "{step}: a refused batch moved head_position"
    );
    assert_eq!(
        after.versions, before.versions,
        "{step}: a refused batch changed stream versions"
    );
    assert!(
        after.feed == before.feed,
        "{step}: a refused batch changed the feed ({} events before, {} after)",
        before.feed.len(),
        after.feed.len()
    );
}

/// Appends a batch that must fail with exactly `Conflict { stream, expected, actual }` and
/// checks that nothing observable changed.
pub(super) async fn expect_conflict<S: EventStore + ?Sized>(
    store: &S,
    batch: AppendBatch,
    (stream, expected, actual): (&StreamId, ExpectedVersion, Option<u64>),
    watched: &[StreamId],
    step: &str,
) {
    let before = snapshot(store, watched).await;
    let err = append_err(store, batch, step).await;
    assert_eq!(
        err,
        StoreError::Conflict {
            stream: stream.clone(),
            expected,
            actual,
        },
        "{step}: wrong error"
    );
    let after = snapshot(store, watched).await;
    assert_unchanged(&before, &after, step);
}

/// Positions run 1, 2, 3… with no gap or repeat.
pub(super) fn assert_positions_from_one(feed: &[StoredEvent], what: &str) {
    for (i, e) in feed.iter().enumerate() {
        assert_eq!(
            e.position,
            i as u64 + 1,
            "{what}: the event at index {i} has position {} (gap or repeat)",
            e.position
        );
    }
}

/// `stream` is at `version`, its events have versions 1..=version in increasing position
/// order, and they are exactly the stream's events of the global feed.
pub(super) async fn assert_stream_consistent<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    feed: &[StoredEvent],
    version_now: u64,
) {
    assert_eq!(
        version(store, stream).await,
        (version_now > 0).then_some(version_now),
        "stream_version({stream})"
    );
    let events = read_stream_paged(store, stream).await;
    let from_feed: Vec<&StoredEvent> = feed.iter().filter(|e| &e.stream == stream).collect();
    assert_eq!(
        events.len() as u64,
        version_now,
        "read_stream({stream}) length"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.stream_version,
            i as u64 + 1,
            "{stream}: versions must run 1, 2, 3… in read_stream"
        );
        assert_eq!(
            &e.stream, stream,
            "read_stream({stream}) returned a foreign event"
        );
    }
    assert!(
        events.iter().eq(from_feed.iter().copied()),
        "read_stream({stream}) disagrees with that stream's events in read_all"
    );
}
