//! Inline appends: an append that finds the writer idle commits on the caller's thread (and,
//! with `Durability::FlushEveryBatch`, syncs the write-ahead log there, or leaves the sync
//! to the flusher thread for `append_ordered`); contended appends still go through the
//! writer. Either way the feed, the versions, idempotency and subscriptions are exactly as
//! if the writer had done everything.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::{event, open, read_feed, stream, temporary};
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, IdempotencyKey, StoreError, StoredEvent,
};
use fleetops_store_sled::{Durability, SledConfig, SledStore};
use uuid::Uuid;

/// Appends `count` single events to `x/{name}` one after the other, each expecting the
/// version the previous one left.
async fn append_in_sequence(store: &SledStore, name: &str, count: u64) {
    let s = stream(name);
    for i in 0..count {
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let n = u128::from(i) | (u128::from(name.len() as u64) << 64);
        let appended = store
            .append(AppendBatch::single(
                s.clone(),
                expected,
                vec![event(n, name)],
            ))
            .await
            .expect("append");
        assert_eq!(appended.versions, vec![(s.clone(), i + 1)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_buffered_appender_commits_on_its_own_thread() {
    lone_appender(Durability::Buffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_durable_appender_commits_and_syncs_on_its_own_thread() {
    lone_appender(Durability::FlushEveryBatch).await;
}

async fn lone_appender(durability: Durability) {
    let store = open(temporary(durability)).await;
    append_in_sequence(&store, "lone", 50).await;
    let stats = store.stats();
    assert_eq!(stats.appends, 50);
    assert_eq!(
        stats.inline_appends, 50,
        "no other request was ever queued, so every append must commit inline: {stats:?}"
    );
    assert_eq!((stats.groups, stats.events), (50, 50));

    // A conflict and an idempotent retry are answered inline too, and store nothing.
    let s = stream("lone");
    let refused = store
        .append(AppendBatch::single(
            s.clone(),
            ExpectedVersion::Exact(7),
            vec![event(900, "refused")],
        ))
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::Conflict {
            actual: Some(50),
            ..
        })
    ));
    let keyed = AppendBatch::single(s.clone(), ExpectedVersion::Any, vec![event(901, "keyed")])
        .idempotent(IdempotencyKey("once".into()));
    let first = store.append(keyed.clone()).await.expect("append");
    assert_eq!(store.append(keyed).await.expect("retry"), first);
    let stats = store.stats();
    assert_eq!((stats.appends, stats.inline_appends), (53, 53));
    assert_eq!(stats.events, 51);
    assert_eq!(store.stream_version(&s).await.expect("version"), Some(51));

    // A flush still goes through the writer and covers what was committed inline.
    store.flush().await.expect("flush");
    assert!(store.stats().flushes >= 1);
    let feed = read_feed(&store).await;
    assert_eq!(feed.len(), 51);
    assert!(feed
        .iter()
        .zip(1..)
        .all(|(e, p)| e.position == p && e.stream_version == p));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_knob_off_no_append_commits_inline() {
    for config in [
        temporary(Durability::FlushEveryBatch).inline_appends(false),
        temporary(Durability::Buffered).inline_appends(false),
    ] {
        let store = open(config).await;
        append_in_sequence(&store, "writer", 20).await;
        let stats = store.stats();
        assert_eq!((stats.appends, stats.inline_appends), (20, 0), "{stats:?}");
    }
}

/// What one appender task did, for the checks after the run.
#[derive(Default)]
struct Log {
    /// Every acknowledged append that stored events, with the ids of its events in order.
    appended: Vec<(Appended, Vec<Uuid>)>,
    /// Successful increments of the shared counter streams, by stream.
    counted: HashMap<StreamId, u64>,
}

/// Appender `task`, `appends` times: its own stream with exact expected versions (one to
/// three events, sometimes with a second stream), keyed appends retried once, refused
/// appends, and compare-and-set increments of a few counter streams every task races on.
async fn appender(store: SledStore, task: u128, appends: u64) -> Log {
    let mut log = Log::default();
    let own = stream(&format!("own{task}"));
    let mut own_version = 0u64;
    let mut n = task << 32;
    let mut next = || {
        n += 1;
        n
    };
    for i in 0..appends {
        let expected = match own_version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let events: Vec<_> = (0..1 + i % 3).map(|_| event(next(), "own")).collect();
        let mut batch = AppendBatch::single(own.clone(), expected, events);
        if i % 5 == 1 {
            batch = batch.with(
                stream(&format!("side{}", i % 4)),
                ExpectedVersion::Any,
                vec![event(next(), "side")],
            );
        }
        if i % 4 == 2 {
            batch = batch.idempotent(IdempotencyKey(format!("k-{task}-{i}")));
        }
        let ids: Vec<Uuid> = batch
            .streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.event_id))
            .collect();
        let appended = store.append(batch.clone()).await.expect("own append");
        own_version += 1 + i % 3;
        assert_eq!(appended.versions[0], (own.clone(), own_version));
        if batch.idempotency_key.is_some() {
            // The retry finds the first outcome and stores nothing.
            assert_eq!(store.append(batch).await.expect("retry"), appended);
        }
        log.appended.push((appended, ids));

        if i % 3 == 0 {
            // A stale expected version is refused, whoever commits it.
            let stale = store
                .append(AppendBatch::single(
                    own.clone(),
                    ExpectedVersion::Exact(own_version - 1),
                    vec![event(next(), "stale")],
                ))
                .await;
            assert!(
                matches!(stale, Err(StoreError::Conflict { actual: Some(v), .. }) if v == own_version),
                "{stale:?}"
            );
        }

        // Read the counter's version, then append expecting it: of racing tasks exactly one
        // may win each version, so the final version counts the wins.
        let counter = stream(&format!("counter{}", i % 3));
        loop {
            let v = store.stream_version(&counter).await.expect("version");
            let expected = v.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let e = event(next(), "counter");
            let id = e.event_id;
            match store
                .append(AppendBatch::single(counter.clone(), expected, vec![e]))
                .await
            {
                Ok(appended) => {
                    assert_eq!(
                        appended.versions,
                        vec![(counter.clone(), v.unwrap_or(0) + 1)]
                    );
                    *log.counted.entry(counter.clone()).or_default() += 1;
                    log.appended.push((appended, vec![id]));
                    break;
                }
                Err(StoreError::Conflict { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("counter append failed: {e}"),
            }
        }
    }
    log
}

/// Runs `tasks` appenders at once while a subscriber follows the feed; checks everything and
/// returns how many appends were committed inline and through the writer in this round.
async fn round(store: &SledStore, tasks: u128, appends: u64) -> (u64, u64) {
    let before = store.stats();
    let head = store.head_position().await.expect("head");
    let mut sub = store.subscribe(head + 1).await.expect("subscribe");
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            tokio::spawn(appender(
                store.clone(),
                task + 1000 * u128::from(head),
                appends,
            ))
        })
        .collect();
    let mut logs = Vec::new();
    for h in handles {
        logs.push(h.await.expect("appender"));
    }
    let after = store.stats();

    let feed = read_feed(store).await;
    // Gap-free positions from 1.
    for (e, p) in feed.iter().zip(1..) {
        assert_eq!(e.position, p, "feed positions");
    }
    // Every event exactly once.
    let ids: HashSet<Uuid> = feed.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), feed.len(), "an event is in the feed twice");
    // Every acknowledged append is in the feed at the positions it was told, whole.
    let mut stored = 0;
    for log in &logs {
        for (appended, ids) in &log.appended {
            let at: Vec<Uuid> = (appended.first_position..=appended.last_position)
                .map(|p| feed[(p - 1) as usize].event_id)
                .collect();
            assert_eq!(&at, ids, "append at {}", appended.first_position);
            stored += ids.len();
        }
    }
    assert_eq!(
        feed.len() - head as usize,
        stored,
        "events nobody was told of"
    );
    // Stream versions run 1, 2, 3, … in feed order, and `stream_version` agrees.
    let mut versions: BTreeMap<StreamId, u64> = BTreeMap::new();
    for e in &feed {
        let v = versions.entry(e.stream.clone()).or_default();
        *v += 1;
        assert_eq!(e.stream_version, *v, "{} at {}", e.stream, e.position);
    }
    for (s, v) in &versions {
        assert_eq!(store.stream_version(s).await.expect("version"), Some(*v));
    }
    // The counters: exactly one winner per version.
    let mut wins: HashMap<StreamId, u64> = HashMap::new();
    for log in &logs {
        for (s, n) in &log.counted {
            *wins.entry(s.clone()).or_default() += n;
        }
    }
    for (s, n) in &wins {
        assert_eq!(versions.get(s), Some(n), "counter {s}");
    }
    // The subscriber got the same feed, whole envelopes.
    let mut got: Vec<StoredEvent> = Vec::with_capacity(feed.len());
    while got.len() + (head as usize) < feed.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the subscription stalled")
            .expect("next");
        got.push(e);
    }
    assert_eq!(&got[..], &feed[head as usize..]);

    let inline = after.inline_appends - before.inline_appends;
    (inline, after.appends - before.appends - inline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_buffered_appenders_mix_inline_and_writer_groups_into_one_feed() {
    concurrent_appenders(Durability::Buffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_appenders_mix_inline_and_writer_groups_into_one_feed() {
    concurrent_appenders(Durability::FlushEveryBatch).await;
}

async fn concurrent_appenders(durability: Durability) {
    let store = open(temporary(durability)).await;
    let (mut inline, mut writer) = (0, 0);
    // Contention is up to the scheduler: repeat until both paths have committed appends in
    // the same run (the first round practically always has both).
    for _ in 0..10 {
        // A round takes well under a second; a broken store tends to hang instead (a head
        // never published, a counter never matching).
        let (i, w) = tokio::time::timeout(Duration::from_secs(60), round(&store, 24, 30))
            .await
            .expect("the round stalled");
        inline += i;
        writer += w;
        if i > 0 && w > 0 {
            break;
        }
    }
    assert!(
        inline > 0 && writer > 0,
        "wanted appends both inline and through the writer: {inline} and {writer}"
    );
    let stats = store.stats();
    assert!(stats.groups < stats.appends, "no group commit: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_appends_are_flushed_on_close_and_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = || {
        SledConfig::new(dir.path())
            .durability(Durability::Buffered)
            // Longer than the test: only the close can have flushed them.
            .flush_every(Duration::from_secs(3600))
    };
    let store = open(config()).await;
    append_in_sequence(&store, "closed", 30).await;
    assert_eq!(store.stats().inline_appends, 30);
    let before = read_feed(&store).await;
    drop(store);

    let store = open(config()).await;
    assert_eq!(read_feed(&store).await, before);
    // And the reopened store's state continues where it was.
    let s = stream("closed");
    let appended = store
        .append(AppendBatch::single(
            s.clone(),
            ExpectedVersion::Exact(30),
            vec![event(5000, "after")],
        ))
        .await
        .expect("append");
    assert_eq!(appended.first_position, 31);
    assert_eq!(appended.versions, vec![(s, 31)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_append_is_refused_or_ordered_at_once_and_seen_only_once_durable() {
    let store = open(temporary(Durability::FlushEveryBatch)).await;
    ordered_appends(&store, true).await;
    assert!(store.stats().inline_appends >= 1, "{:?}", store.stats());
}

/// The writer thread's path: it tells an ordered append its place once the group is
/// applied, and answers it for good after the sync; a refusal ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_append_through_the_writer_is_ordered_then_durable() {
    for durability in [Durability::FlushEveryBatch, Durability::Buffered] {
        let store = open(temporary(durability).inline_appends(false)).await;
        // Only a durable store has a sync to come once the append is ordered.
        let sync_pending = durability == Durability::FlushEveryBatch;
        ordered_appends(&store, sync_pending).await;
        assert_eq!(store.stats().inline_appends, 0, "{:?}", store.stats());
    }
}

/// Two ordered appends and a refused one, checked through the feed and a subscription;
/// `sync_pending`: whether the first comes back before its sync.
async fn ordered_appends(store: &SledStore, sync_pending: bool) {
    let s = stream("ordered");
    let mut sub = store.subscribe(1).await.expect("subscribe");
    let ordered = store
        .append_ordered(AppendBatch::single(
            s.clone(),
            ExpectedVersion::NoStream,
            vec![event(1, "ordered")],
        ))
        .await
        .expect("ordered");
    assert_eq!(ordered.appended().versions, vec![(s.clone(), 1)]);
    assert!(
        format!("{ordered:?}").contains(&format!("sync_pending: {sync_pending}")),
        "{ordered:?}"
    );
    // Ordered after it, whether or not the first is durable yet: the writer takes it and
    // answers it after the first.
    let second = store.append(AppendBatch::single(
        s.clone(),
        ExpectedVersion::Exact(1),
        vec![event(2, "ordered")],
    ));
    let (first, second) = tokio::join!(ordered.durable(), second);
    assert_eq!(first.expect("durable").first_position, 1);
    assert_eq!(second.expect("second").first_position, 2);
    // A refusal comes at once, from the ordered step.
    let refused = store
        .append_ordered(AppendBatch::single(
            s.clone(),
            ExpectedVersion::Exact(7),
            vec![event(3, "refused")],
        ))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict { .. })),
        "{refused:?}"
    );
    for position in [1, 2] {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("the subscriber gets the events")
            .expect("event");
        assert_eq!(e.position, position);
    }
    assert_eq!(read_feed(store).await.len(), 2);
}
