//! What survives closing and reopening a store, and group commit under concurrency.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{event, read_feed, stream, tag};
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, StoreError};
use fleetops_store_sled::{Durability, SledConfig, SledStore};

async fn open(dir: &tempfile::TempDir, durability: Durability) -> SledStore {
    SledStore::open_async(SledConfig::new(dir.path()).durability(durability))
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_streams_versions_positions_and_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (stream("a"), stream("b"), stream("c"));
    let key = IdempotencyKey("create-a-b".into());

    let (first, feed_before) = {
        let store = open(&dir, Durability::FlushEveryBatch).await;
        store
            .append(AppendBatch::single(
                c.clone(),
                ExpectedVersion::NoStream,
                vec![event(1, "c1")],
            ))
            .await
            .unwrap();
        let first = store
            .append(
                AppendBatch::single(
                    a.clone(),
                    ExpectedVersion::NoStream,
                    vec![event(2, "a1"), event(3, "a2")],
                )
                .with(b.clone(), ExpectedVersion::NoStream, vec![event(4, "b1")])
                .idempotent(key.clone()),
            )
            .await
            .unwrap();
        assert_eq!((first.first_position, first.last_position), (2, 4));
        store
            .append(AppendBatch::single(
                a.clone(),
                ExpectedVersion::Exact(2),
                vec![event(5, "a3")],
            ))
            .await
            .unwrap();
        (first, read_feed(&store).await)
    };
    assert_eq!(feed_before.len(), 5);

    let store = open(&dir, Durability::FlushEveryBatch).await;
    assert_eq!(store.head_position().await.unwrap(), 5);
    assert_eq!(
        read_feed(&store).await,
        feed_before,
        "the feed survives byte for byte"
    );
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(3));
    assert_eq!(store.stream_version(&b).await.unwrap(), Some(1));
    assert_eq!(store.stream_version(&c).await.unwrap(), Some(1));
    let a_events = store.read_stream(&a, 1, 10).await.unwrap();
    assert_eq!(
        a_events
            .iter()
            .map(|e| (e.stream_version, e.position))
            .collect::<Vec<_>>(),
        vec![(1, 2), (2, 3), (3, 5)]
    );

    // The idempotency key still answers with the first result and stores nothing.
    let again = store
        .append(
            AppendBatch::single(a.clone(), ExpectedVersion::NoStream, vec![event(99, "dup")])
                .idempotent(key),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(store.head_position().await.unwrap(), 5);

    // Version checks see the stored heads, and appends continue at the right position.
    let err = store
        .append(AppendBatch::single(
            b.clone(),
            ExpectedVersion::NoStream,
            vec![event(6, "b?")],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Conflict {
            stream: b.clone(),
            expected: ExpectedVersion::NoStream,
            actual: Some(1)
        }
    );
    let next = store
        .append(AppendBatch::single(
            b.clone(),
            ExpectedVersion::Exact(1),
            vec![event(7, "b2")],
        ))
        .await
        .unwrap();
    assert_eq!((next.first_position, next.versions[0].1), (6, 2));
    assert_eq!(tag(&store.read_all(6, 1).await.unwrap()[0]), Some("b2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_appends_survive_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir, Durability::Buffered).await;
        for i in 0..50u128 {
            store
                .append(AppendBatch::single(
                    stream("buf"),
                    ExpectedVersion::Any,
                    vec![event(i, "x")],
                ))
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
    }
    let store = open(&dir, Durability::Buffered).await;
    assert_eq!(store.head_position().await.unwrap(), 50);
    assert_eq!(
        store.stream_version(&stream("buf")).await.unwrap(),
        Some(50)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_reopen_without_gap_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = {
        let store = open(&dir, Durability::FlushEveryBatch).await;
        for i in 0..30u128 {
            store
                .append(AppendBatch::single(
                    stream(&format!("s{}", i % 3)),
                    ExpectedVersion::Any,
                    vec![event(i, &i.to_string())],
                ))
                .await
                .unwrap();
        }
        let mut sub = store.subscribe(1).await.unwrap();
        let mut last = 0;
        for expected in 1..=17 {
            let e = sub.next().await.unwrap();
            assert_eq!(e.position, expected);
            last = e.position;
        }
        last
        // store and subscription dropped here: the database closes
    };
    let store = open(&dir, Durability::FlushEveryBatch).await;
    let mut sub = store.subscribe(checkpoint + 1).await.unwrap();
    for expected in checkpoint + 1..=30 {
        assert_eq!(sub.next().await.unwrap().position, expected);
    }
    // Live: a new append arrives after the catch-up, once.
    let writer = store.clone();
    let live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .append(AppendBatch::single(
                stream("live"),
                ExpectedVersion::NoStream,
                vec![event(100, "live")],
            ))
            .await
            .unwrap()
    });
    let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the live event arrives")
        .unwrap();
    assert_eq!((e.position, tag(&e)), (31, Some("live")));
    live.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err(),
        "nothing is delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_flushes_and_isolates_conflicts() {
    let store = Arc::new(SledStore::open_temporary().unwrap());
    let contested = stream("contested");
    let mut tasks = Vec::new();
    for i in 0..200u128 {
        let store = Arc::clone(&store);
        let contested = contested.clone();
        tasks.push(tokio::spawn(async move {
            // Every tenth append races for the same new stream: exactly one can win.
            let (s, expected) = if i % 10 == 0 {
                (contested, ExpectedVersion::NoStream)
            } else {
                (stream(&format!("own-{i}")), ExpectedVersion::NoStream)
            };
            (
                i,
                store
                    .append(AppendBatch::single(s, expected, vec![event(i, "g")]))
                    .await,
            )
        }));
    }
    let mut won = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(_) if i % 10 == 0 => won += 1,
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) if i % 10 == 0 => {}
            Err(e) => panic!("append {i} failed: {e}"),
        }
    }
    assert_eq!(won, 1, "one racer wins the contested stream");
    assert_eq!(store.head_position().await.unwrap(), 181);
    let stats = store.stats();
    assert_eq!(stats.appends, 200);
    assert_eq!(stats.events, 181);
    assert!(
        stats.flushes * 2 <= stats.appends,
        "concurrent appends share flushes: {stats:?}"
    );
    // The feed is gap-free and every stored event is one of the successful appends.
    let feed = read_feed(&*store).await;
    assert!(feed
        .iter()
        .enumerate()
        .all(|(i, e)| e.position == i as u64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, Durability::FlushEveryBatch).await;
    let second = SledStore::open_async(SledConfig::new(dir.path())).await;
    assert!(
        matches!(second, Err(StoreError::Backend { .. })),
        "sled's file lock refuses a second opener: {second:?}"
    );
    drop(store);
    // Dropping the last handle closes the database at once.
    open(&dir, Durability::FlushEveryBatch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_reopen_and_stay_per_name() {
    use fleetops_core::store::Snapshot;
    let dir = tempfile::tempdir().unwrap();
    let (saved, other) = {
        let store = open(&dir, Durability::Buffered).await;
        store
            .append(AppendBatch::single(
                stream("s"),
                ExpectedVersion::NoStream,
                vec![event(1, "x"), event(2, "y")],
            ))
            .await
            .unwrap();
        let feed = read_feed(&store).await;
        let saved = Snapshot {
            position: 2,
            event_key: feed[1].fingerprint(),
            bytes: b"folded state".to_vec(),
        };
        let other = Snapshot {
            position: 1,
            event_key: feed[0].fingerprint(),
            bytes: vec![7],
        };
        store.save_snapshot("fleet", saved.clone()).await.unwrap();
        // A name outside the projection alphabet is still accepted (hashed), and distinct.
        store
            .save_snapshot("fleet/a b", other.clone())
            .await
            .unwrap();
        store.flush().await.unwrap();
        (saved, other)
    };
    let store = open(&dir, Durability::Buffered).await;
    assert_eq!(store.load_snapshot("fleet").await.unwrap(), Some(saved));
    assert_eq!(store.load_snapshot("fleet/a b").await.unwrap(), Some(other));
    assert_eq!(store.load_snapshot("none").await.unwrap(), None);
}
