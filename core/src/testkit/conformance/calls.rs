//! Calls to the store, each bounded in time so a stuck store fails the case instead of
//! hanging it, and each unwrapped with the step named.

use std::future::Future;
use std::time::Duration as StdDuration;

use futures::future::join_all;
use tokio::task::JoinHandle;

use crate::ids::StreamId;
use crate::store::{AppendBatch, Appended, EventStore, StoreError, StoredEvent, Subscription};

/// How long one call to the store may take before the suite declares the store stuck.
const PATIENCE: StdDuration = StdDuration::from_secs(30);
/// How long the suite listens to make sure a subscription delivers nothing more.
const QUIET: StdDuration = StdDuration::from_millis(200);
/// Page size for reading whole feeds back; deliberately not a round number so pages end in
/// the middle of batches.
pub(super) const PAGE: usize = 97;

/// Awaits one store call, failing the case if it takes longer than [`PATIENCE`].
pub(super) async fn call<T>(step: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{step}: the store did not answer within {PATIENCE:?}"),
    }
}

/// Unwraps a result the contract says must be a success.
#[track_caller]
pub(super) fn must<T>(result: Result<T, StoreError>, step: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{step}: the store failed: {e} ({e:?})"),
    }
}

pub(super) async fn append_ok<S: EventStore + ?Sized>(
    store: &S,
    batch: AppendBatch,
    step: &str,
) -> Appended {
    must(call(step, store.append(batch)).await, step)
}

pub(super) async fn append_err<S: EventStore + ?Sized>(
    store: &S,
    batch: AppendBatch,
    step: &str,
) -> StoreError {
    match call(step, store.append(batch)).await {
        Ok(got) => panic!("{step}: the store accepted a batch it must refuse: {got:?}"),
        Err(e) => e,
    }
}

pub(super) async fn version<S: EventStore + ?Sized>(store: &S, stream: &StreamId) -> Option<u64> {
    let step = format!("stream_version({stream})");
    must(call(&step, store.stream_version(stream)).await, &step)
}

pub(super) async fn head<S: EventStore + ?Sized>(store: &S) -> u64 {
    must(
        call("head_position", store.head_position()).await,
        "head_position",
    )
}

pub(super) async fn read_all<S: EventStore + ?Sized>(
    store: &S,
    from: u64,
    limit: usize,
) -> Vec<StoredEvent> {
    let step = format!("read_all({from}, {limit})");
    let page = must(call(&step, store.read_all(from, limit)).await, &step);
    assert!(page.len() <= limit, "{step} returned {} events", page.len());
    page
}

pub(super) async fn read_stream<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    from: u64,
    limit: usize,
) -> Vec<StoredEvent> {
    let step = format!("read_stream({stream}, {from}, {limit})");
    let page = must(
        call(&step, store.read_stream(stream, from, limit)).await,
        &step,
    );
    assert!(page.len() <= limit, "{step} returned {} events", page.len());
    page
}

/// The whole feed, read in pages of [`PAGE`]. Each page must continue exactly where the last
/// one ended: besides being the contract, that guarantees the loop ends.
pub(super) async fn read_all_paged<S: EventStore + ?Sized>(store: &S) -> Vec<StoredEvent> {
    let mut feed: Vec<StoredEvent> = Vec::new();
    loop {
        let from = feed.len() as u64 + 1;
        let page = read_all(store, from, PAGE).await;
        if page.is_empty() {
            return feed;
        }
        for e in page {
            assert_eq!(
                e.position,
                feed.len() as u64 + 1,
                "read_all({from}, {PAGE}) returned positions out of sequence (gap, repeat or \
                 disorder in the global feed)"
            );
            feed.push(e);
        }
    }
}

/// A whole stream, read in pages of [`PAGE`].
pub(super) async fn read_stream_paged<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
) -> Vec<StoredEvent> {
    let mut events: Vec<StoredEvent> = Vec::new();
    loop {
        let from = events.len() as u64 + 1;
        let page = read_stream(store, stream, from, PAGE).await;
        if page.is_empty() {
            return events;
        }
        for e in page {
            assert_eq!(
                (&e.stream, e.stream_version),
                (stream, events.len() as u64 + 1),
                "read_stream({stream}, {from}, {PAGE}) returned a foreign event or versions \
                 out of sequence"
            );
            events.push(e);
        }
    }
}

pub(super) async fn subscribe<S: EventStore + ?Sized>(
    store: &S,
    from: u64,
) -> Box<dyn Subscription> {
    let step = format!("subscribe({from})");
    must(call(&step, store.subscribe(from)).await, &step)
}

pub(super) async fn next_event(sub: &mut dyn Subscription, step: &str) -> StoredEvent {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => panic!("{step}: the subscription failed: {e} ({e:?})"),
        Err(_) => panic!("{step}: no event within {PATIENCE:?}"),
    }
}

/// Reads a subscription from `from` until position `until`, checking each step.
pub(super) async fn collect(
    mut sub: Box<dyn Subscription>,
    from: u64,
    until: u64,
    who: &'static str,
) -> (u64, Vec<StoredEvent>, Box<dyn Subscription>) {
    let mut got = Vec::new();
    for position in from..=until {
        let step = format!("{who} from {from}, waiting for position {position}");
        let e = next_event(&mut *sub, &step).await;
        assert_eq!(
            e.position, position,
            "{who} from {from}: expected position {position} next, got {} (skipped or repeated)",
            e.position
        );
        got.push(e);
    }
    (from, got, sub)
}

/// Fails if the subscription delivers anything within [`QUIET`].
pub(super) async fn expect_quiet(sub: &mut dyn Subscription, who: &str) {
    if let Ok(got) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{who}: delivered an event past the head: {got:?}");
    }
}

/// Awaits spawned tasks in order, re-raising a task's panic with its own message.
pub(super) async fn join<T>(handles: Vec<JoinHandle<T>>, what: &str) -> Vec<T> {
    join_all(handles)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(v) => v,
            Err(e) => match e.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(e) => panic!("{what}: task did not finish: {e}"),
            },
        })
        .collect()
}
