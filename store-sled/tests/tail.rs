//! The live tail: subscriptions that keep up are served from memory, everything else from
//! sled, and either way they get exactly the feed `read_all` returns, with no gap.

mod common;

use common::{event, open, read_feed, stream, temporary};
use fleetops_core::event::Event;
use fleetops_core::store::{
    AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, NewEvent, StoreError, StoredEvent,
    Subscription,
};
use fleetops_core::time::Timestamp;
use fleetops_core::CommandStatus;
use fleetops_store_sled::{Durability, FeedStats, SledConfig, SledStore};
use uuid::Uuid;

/// An answer whose result JSON does not read back as written (`Some(Null)` becomes `None`),
/// and one with floats, so the tail is held to what a read decodes, not to what was appended.
fn responded(n: u128, result: Option<serde_json::Value>) -> NewEvent {
    NewEvent::new(
        Uuid::from_u128(0x0190_0000_0000_7000_9000_0000_0000_0000 | n),
        Event::CommandResponded {
            status: CommandStatus::Succeeded,
            result,
            status_reason: None,
            at: Timestamp::from_millis(1_700_000_000_000),
        },
        Timestamp::from_millis(1_700_000_000_000),
    )
}

/// Appender `task`'s `i`-th append: one to three events over one or two streams, some with an
/// idempotency key (retried once, so the retry stores nothing), some refused by a version
/// check (staging nothing): the writer's paths that add no event must add nothing to the tail.
async fn append_some(store: &SledStore, task: u128, i: u128) {
    let n = task * 1_000_000 + i * 10;
    let own = stream(&format!("t{task}"));
    let shared = stream(&format!("shared{}", i % 3));
    let mut batch = AppendBatch::single(own.clone(), ExpectedVersion::Any, vec![event(n, "a")]);
    match i % 4 {
        0 => {}
        1 => {
            batch = batch.with(
                shared,
                ExpectedVersion::Any,
                vec![
                    event(n + 1, "b"),
                    responded(n + 2, Some(serde_json::Value::Null)),
                ],
            );
        }
        2 => {
            batch = batch
                .with(
                    shared,
                    ExpectedVersion::Any,
                    vec![responded(
                        n + 1,
                        Some(serde_json::json!({"load": 0.1, "tiny": 5e-324, "n": null})),
                    )],
                )
                .idempotent(IdempotencyKey(format!("k-{task}-{i}")));
            store.append(batch.clone()).await.expect("append");
        }
        _ => {
            let refused = AppendBatch::single(
                own.clone(),
                ExpectedVersion::NoStream,
                vec![event(n + 5, "refused")],
            );
            if i > 0 {
                assert!(matches!(
                    store.append(refused).await,
                    Err(StoreError::Conflict { .. })
                ));
            }
        }
    }
    store.append(batch).await.expect("append");
}

/// Runs `tasks` appenders of `appends` appends each at once.
async fn append_concurrently(store: &SledStore, tasks: u128, appends: u128) {
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..appends {
                    append_some(&store, task, i).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("appender");
    }
}

/// Takes `count` events from `sub`, checking each is visible (never past the published head).
async fn take(
    store: &SledStore,
    sub: &mut Box<dyn Subscription>,
    count: usize,
) -> Vec<StoredEvent> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let e = sub.next().await.expect("next");
        let head = store.head_position().await.expect("head");
        assert!(
            e.position <= head,
            "event {} delivered past the head {head}",
            e.position
        );
        out.push(e);
    }
    out
}

/// Follows the whole feed in its own task, as the service's projection follower does, and
/// hands every event over as soon as it has it; checks each is visible when delivered.
fn follow(
    store: &SledStore,
    mut sub: Box<dyn Subscription>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<StoredEvent>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let store = store.clone();
    let task = tokio::spawn(async move {
        while let Ok(e) = sub.next().await {
            let head = store.head_position().await.expect("head");
            assert!(
                e.position <= head,
                "event {} past the head {head}",
                e.position
            );
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    (task, rx)
}

async fn received(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<StoredEvent>,
    n: usize,
) -> Vec<StoredEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(rx.recv().await.expect("the follower stopped"));
    }
    out
}

async fn keeps_up(durability: Durability) {
    let store = open(temporary(durability)).await;
    let (follower, mut rx) = follow(&store, store.subscribe(1).await.expect("subscribe"));
    append_concurrently(&store, 16, 40).await;
    let feed = read_feed(&store).await;
    assert!(feed.len() > 1000, "{} events", feed.len());
    let got = received(&mut rx, feed.len()).await;
    follower.abort();
    // Whole envelopes: position, stream, version, ids, timestamps, idempotency key, event.
    assert_eq!(got, feed);
    // Fewer events than the tail holds, and the subscription started with the store: every
    // one of them came from memory.
    assert_eq!(
        store.feed_stats(),
        FeedStats {
            from_tail: feed.len() as u64,
            from_sled: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_keeps_up_gets_the_feed_from_the_tail_flush_every_batch() {
    keeps_up(Durability::FlushEveryBatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_keeps_up_gets_the_feed_from_the_tail_buffered() {
    keeps_up(Durability::Buffered).await;
}

/// A subscriber far behind a small tail reads sled, catches up while appenders keep
/// writing, and then follows from memory: one unbroken feed, equal to `read_all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_far_behind_the_tail_reads_sled_without_a_gap() {
    let store = open(temporary(Durability::FlushEveryBatch).live_tail(64, 1 << 20)).await;
    let mut sub = store.subscribe(1).await.expect("subscribe");
    append_concurrently(&store, 8, 40).await;
    let behind = read_feed(&store).await.len();
    assert!(behind > 64 * 4, "{behind} events");

    // Half of it, all long gone from the tail: sled only.
    let mut got = take(&store, &mut sub, behind / 2).await;
    assert_eq!(store.feed_stats().from_tail, 0);

    // The rest while more is appended: the subscriber crosses from sled into the tail
    // somewhere, wherever the appenders are.
    let appenders = tokio::spawn({
        let store = store.clone();
        async move { append_concurrently(&store, 4, 40).await }
    });
    got.extend(take(&store, &mut sub, behind - behind / 2).await);
    appenders.await.expect("appenders");
    let total = read_feed(&store).await.len();
    got.extend(take(&store, &mut sub, total - behind).await);

    // Keep up with one append at a time: from memory.
    let from_tail = store.feed_stats().from_tail;
    for i in 0..20 {
        append_some(&store, 99, i).await;
        let head = store.head_position().await.expect("head") as usize;
        got.extend(take(&store, &mut sub, head - got.len()).await);
    }

    assert_eq!(got, read_feed(&store).await);
    let stats = store.feed_stats();
    assert!(stats.from_sled >= behind as u64 / 2, "{stats:?}");
    assert!(stats.from_tail >= from_tail + 20, "{stats:?}");
    assert_eq!(stats.from_tail + stats.from_sled, got.len() as u64);
}

/// The tail starts empty at every open: a subscriber catching up after a reopen reads what
/// the last run stored from sled, then follows new appends from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reopen_the_stored_feed_comes_from_sled_and_new_events_from_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(SledConfig::new(dir.path())).await;
        for i in 0..30 {
            append_some(&store, 1, i).await;
        }
    }
    let store = open(SledConfig::new(dir.path())).await;
    let stored = store.head_position().await.expect("head") as usize;
    let mut sub = store.subscribe(1).await.expect("subscribe");
    let mut got = take(&store, &mut sub, stored).await;
    assert_eq!(
        store.feed_stats(),
        FeedStats {
            from_tail: 0,
            from_sled: stored as u64
        }
    );
    for i in 30..60 {
        append_some(&store, 1, i).await;
        let head = store.head_position().await.expect("head") as usize;
        got.extend(take(&store, &mut sub, head - got.len()).await);
    }
    assert_eq!(got, read_feed(&store).await);
    assert_eq!(
        store.feed_stats(),
        FeedStats {
            from_tail: (got.len() - stored) as u64,
            from_sled: stored as u64
        }
    );
}

/// With the tail turned off every event is read from sled, as before it existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_tail_serves_nothing() {
    let store = open(temporary(Durability::FlushEveryBatch).live_tail(0, 0)).await;
    let (follower, mut rx) = follow(&store, store.subscribe(1).await.expect("subscribe"));
    append_concurrently(&store, 4, 10).await;
    let feed = read_feed(&store).await;
    let got = received(&mut rx, feed.len()).await;
    follower.abort();
    assert_eq!(got, feed);
    assert_eq!(
        store.feed_stats(),
        FeedStats {
            from_tail: 0,
            from_sled: feed.len() as u64
        }
    );
}
