//! What the conformance suite cannot show with one store: several instances on one schema,
//! group commit, migrations on restart, corrupt rows, and durability across a reopen.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{admin, event, read_feed, stream, tag};
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, Snapshot, StoreError, StoredEvent,
};
use fleetops_store_postgres::testing::{TestPostgres, TestPostgresOptions};
use fleetops_store_postgres::{PostgresStore, SCHEMA_VERSION};
use tokio::sync::Barrier;

const PATIENCE: Duration = Duration::from_secs(30);

/// Reads `n` events from a subscription at `from`, checking positions run on by one.
async fn follow(store: &PostgresStore, from: u64, n: u64, who: String) -> Vec<StoredEvent> {
    let mut sub = store.subscribe(from).await.expect("subscribe");
    let mut got = Vec::new();
    for want in from..from + n {
        let e = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: nothing at position {want} within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(e.position, want, "{who}: skipped or repeated a position");
        got.push(e);
    }
    got
}

/// Checks a whole feed: positions 1..=n, each stream's versions 1, 2, 3… in feed order.
fn check_feed(feed: &[StoredEvent], n: u64, who: &str) {
    assert_eq!(feed.len() as u64, n, "{who}: events");
    let mut versions: HashMap<&StreamId, u64> = HashMap::new();
    for (i, e) in feed.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "{who}: position at index {i}");
        let v = versions.entry(&e.stream).or_default();
        *v += 1;
        assert_eq!(
            e.stream_version, *v,
            "{who}: version of {} at {}",
            e.stream, e.position
        );
    }
}

/// Two instances on one schema, each with 12 appenders (own streams with exact versions, and
/// two-stream batches onto shared streams) and subscribers from 0 and from mid-way. Every
/// subscriber of both instances, and `read_all` on both, see positions 1..=N exactly once, in
/// order, with every stream's versions in order: where a BIGSERIAL feed would let a follower
/// skip an event that committed late. The stores' poll interval is a minute, so the
/// cross-instance deliveries come from LISTEN/NOTIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_gap_free_feed() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    const TASKS: u64 = 12;
    const APPENDS: u64 = 25;
    let schema = pg.fresh_schema();
    let open = || async {
        PostgresStore::connect(pg.config(&schema).poll_interval(Duration::from_secs(60)))
            .await
            .expect("open an instance")
    };
    let stores = [open().await, open().await];
    // Events per append: 1 + i % 3 on the own stream, plus 1 on a shared stream every 4th.
    let per_task: u64 = (0..APPENDS)
        .map(|i| 1 + i % 3 + u64::from(i % 4 == 3))
        .sum();
    let total = 2 * TASKS * per_task;

    let mut followers = Vec::new();
    for (k, s) in stores.iter().enumerate() {
        for from in [0u64, 1] {
            let (s, who) = (s.clone(), format!("instance {k} subscriber from {from}"));
            followers.push(tokio::spawn(async move {
                follow(&s, from.max(1), total, who).await
            }));
        }
    }

    let start = Arc::new(Barrier::new(2 * TASKS as usize));
    let mut writers = Vec::new();
    for (k, store) in stores.iter().enumerate() {
        for task in 0..TASKS {
            let (store, start) = (store.clone(), start.clone());
            writers.push(tokio::spawn(async move {
                start.wait().await;
                let own = stream(&format!("own-{k}-{task}"));
                let shared = stream(&format!("shared-{}", task % 3));
                let mut v = 0;
                for i in 0..APPENDS {
                    let events: Vec<_> = (0..1 + i % 3)
                        .map(|j| {
                            event(
                                u128::from(k as u64 * 1_000_000 + task * 1000 + i * 10 + j),
                                "w",
                            )
                        })
                        .collect();
                    let n = events.len() as u64;
                    let mut batch = AppendBatch::single(
                        own.clone(),
                        ExpectedVersion::from_current((v > 0).then_some(v)),
                        events,
                    );
                    if i % 4 == 3 {
                        batch =
                            batch.with(shared.clone(), ExpectedVersion::Any, vec![event(9, "s")]);
                    }
                    let got = store.append(batch).await.expect("append");
                    v += n;
                    assert_eq!(got.versions[0], (own.clone(), v));
                }
            }));
        }
    }
    // A follower starting mid-way, on the second instance.
    let late = {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = stores[1].clone();
        let from = s.head_position().await.unwrap() + 1;
        tokio::spawn(async move {
            let got = follow(
                &s,
                from,
                total + 1 - from,
                format!("late subscriber from {from}"),
            )
            .await;
            (from, got)
        })
    };
    for w in writers {
        w.await.expect("writer");
    }

    let feeds = [read_feed(&stores[0]).await, read_feed(&stores[1]).await];
    check_feed(&feeds[0], total, "read_all on instance 0");
    assert!(feeds[0] == feeds[1], "both instances read the same feed");
    for f in followers {
        let got = f.await.expect("follower");
        assert!(got == feeds[0], "a subscriber saw what read_all sees");
    }
    let (from, got) = late.await.expect("late follower");
    assert!(
        got[..] == feeds[0][(from - 1) as usize..],
        "the late subscriber's tail"
    );
    for (k, s) in stores.iter().enumerate() {
        let stats = s.writer_stats();
        assert_eq!(stats.appends, TASKS * APPENDS, "instance {k}: {stats:?}");
        eprintln!("instance {k}: {stats:?}");
    }
}

/// 64 appends released at once take far fewer than 64 transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_transactions() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let store = pg.fresh_store().await.expect("open");
    let start = Arc::new(Barrier::new(64));
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let s = stream(&format!("group-{i}"));
                store
                    .append(AppendBatch::single(
                        s,
                        ExpectedVersion::NoStream,
                        vec![event(i.into(), "g")],
                    ))
                    .await
                    .expect("append")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("appender");
    }
    let stats = store.writer_stats();
    eprintln!("64 concurrent appends: {stats:?}");
    assert_eq!((stats.appends, stats.events), (64, 64));
    assert!(
        stats.groups <= 16,
        "64 concurrent appends took {} transactions: the writer does not group",
        stats.groups
    );
    assert!(stats.largest_group >= 4, "{stats:?}");
    check_feed(&read_feed(&store).await, 64, "feed");
}

async fn versions(client: &tokio_postgres::Client, schema: String) -> Vec<i32> {
    let rows = client
        .query(
            &format!("SELECT version FROM {schema}.fleetops_migrations ORDER BY version"),
            &[],
        )
        .await
        .expect("read the migrations");
    rows.iter().map(|r| r.get::<_, i32>(0)).collect()
}

/// Reopening migrates nothing again; instances starting at once on a new schema both open;
/// a schema from a newer build is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_idempotent_and_race_free() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let schema = pg.fresh_schema();
    let db = admin(&pg).await;
    let all: Vec<i32> = (1..=SCHEMA_VERSION).collect();
    {
        let store = PostgresStore::connect(pg.config(&schema))
            .await
            .expect("first open");
        store
            .append(AppendBatch::single(
                stream("m"),
                ExpectedVersion::NoStream,
                vec![event(1, "m")],
            ))
            .await
            .unwrap();
    }
    let again = PostgresStore::connect(pg.config(&schema))
        .await
        .expect("reopen");
    let second = PostgresStore::connect(pg.config(&schema))
        .await
        .expect("a second instance");
    assert_eq!(
        versions(&db, schema.clone()).await,
        all,
        "each migration recorded once"
    );
    assert_eq!(read_feed(&again).await.len(), 1);
    assert_eq!(read_feed(&second).await.len(), 1);

    // Eight instances racing to create and migrate one new schema.
    let racing = pg.fresh_schema();
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let config = pg.config(&racing);
            tokio::spawn(async move { PostgresStore::connect(config).await })
        })
        .collect();
    for o in opens {
        o.await.unwrap().expect("a racing open");
    }
    assert_eq!(
        versions(&db, racing.clone()).await,
        all,
        "racing opens migrated once"
    );

    db.execute(
        &format!("INSERT INTO {racing}.fleetops_migrations (version) VALUES ($1)"),
        &[&(SCHEMA_VERSION + 1)],
    )
    .await
    .unwrap();
    let err = PostgresStore::connect(pg.config(&racing))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer"), "{err}");
}

/// Damaged rows read as `Corrupt`, through every read path, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_rows_are_reported() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let schema = pg.fresh_schema();
    let store = PostgresStore::connect(pg.config(&schema)).await.unwrap();
    let s = stream("c");
    let events = (1..=5).map(|n| event(n, "c")).collect();
    store
        .append(AppendBatch::single(
            s.clone(),
            ExpectedVersion::NoStream,
            events,
        ))
        .await
        .unwrap();
    let db = admin(&pg).await;
    let corrupt = |r: Result<Vec<StoredEvent>, StoreError>, what: &str| match r {
        Err(StoreError::Corrupt { location, detail }) => {
            eprintln!("{what}: Corrupt at {location}: {detail}");
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    };

    db.execute(
        &format!("UPDATE {schema}.events SET payload = '\\x7b6e6f'::bytea WHERE position = 2"),
        &[],
    )
    .await
    .unwrap();
    corrupt(store.read_all(1, 10).await, "read_all over a bad payload");
    corrupt(
        store.read_stream(&s, 1, 10).await,
        "read_stream over a bad payload",
    );
    let mut sub = store.subscribe(1).await.unwrap();
    assert_eq!(sub.next().await.unwrap().position, 1);
    assert!(
        matches!(sub.next().await, Err(StoreError::Corrupt { .. })),
        "subscription"
    );

    db.execute(
        &format!("UPDATE {schema}.events SET stream = 'not a stream!' WHERE position = 3"),
        &[],
    )
    .await
    .unwrap();
    corrupt(store.read_all(3, 1).await, "a bad stream name");
    db.execute(
        &format!("UPDATE {schema}.events SET stream_version = -1 WHERE position = 4"),
        &[],
    )
    .await
    .unwrap();
    corrupt(store.read_all(4, 1).await, "a negative version");
    db.execute(
        &format!("DELETE FROM {schema}.events WHERE position = 4"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(store.head_position().await.unwrap(), 5);
    match store.read_all(4, 10).await {
        Err(StoreError::Corrupt { location, detail }) => {
            assert_eq!(location, "position 4", "{detail}");
            assert!(detail.contains("missing"), "{detail}");
        }
        other => panic!("a hole in the feed: expected Corrupt, got {other:?}"),
    }
}

/// Everything survives closing every handle and opening again: events, versions, positions,
/// idempotency keys and snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reopen_keeps_everything() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let schema = pg.fresh_schema();
    let (a, b) = (stream("a"), stream("b"));
    let key = IdempotencyKey("create\0a-b".into());
    let (first, feed, snapshot) = {
        let store = PostgresStore::connect(pg.config(&schema)).await.unwrap();
        let first = store
            .append(
                AppendBatch::single(
                    a.clone(),
                    ExpectedVersion::NoStream,
                    vec![event(1, "a1"), event(2, "a2")],
                )
                .with(b.clone(), ExpectedVersion::NoStream, vec![event(3, "b1")])
                .idempotent(key.clone()),
            )
            .await
            .unwrap();
        let feed = read_feed(&store).await;
        let snapshot = Snapshot {
            position: 3,
            event_key: feed[2].fingerprint(),
            bytes: b"state".to_vec(),
        };
        store.save_snapshot("fold", snapshot.clone()).await.unwrap();
        (first, feed, snapshot)
    };
    let store = PostgresStore::connect(pg.config(&schema)).await.unwrap();
    assert!(read_feed(&store).await == feed, "the feed after a reopen");
    assert_eq!(tag(&feed[0]), Some("a1"));
    assert_eq!(feed[0].idempotency_key, Some(key.clone()));
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(2));
    assert_eq!(store.head_position().await.unwrap(), 3);
    let retried = store
        .append(
            AppendBatch::single(a.clone(), ExpectedVersion::NoStream, vec![event(4, "x")])
                .idempotent(key),
        )
        .await
        .unwrap();
    assert_eq!(retried, first, "a key is remembered across a reopen");
    assert_eq!(store.load_snapshot("fold").await.unwrap(), Some(snapshot));
    let next = store
        .append(AppendBatch::single(
            a.clone(),
            ExpectedVersion::Exact(2),
            vec![event(5, "a3")],
        ))
        .await
        .unwrap();
    assert_eq!((next.first_position, next.versions[0].1), (4, 3));
}

async fn next_within_5s(sub: &mut dyn fleetops_core::store::Subscription) -> StoredEvent {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the other instance's append was not delivered within 5 s")
        .expect("next")
}

/// A LISTEN session that the server ends is re-established, and the head is read again, so a
/// subscriber on one instance keeps receiving the other's appends without the poll fallback
/// (its poll interval here is a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_survive_a_lost_listen_session() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let schema = pg.fresh_schema();
    let open = || async {
        PostgresStore::connect(pg.config(&schema).poll_interval(Duration::from_secs(60)))
            .await
            .expect("open an instance")
    };
    let (a, b) = (open().await, open().await);
    let s = stream("listen");
    let mut sub = b.subscribe(1).await.unwrap();
    a.append(AppendBatch::single(
        s.clone(),
        ExpectedVersion::NoStream,
        vec![event(1, "1")],
    ))
    .await
    .unwrap();
    assert_eq!(next_within_5s(&mut *sub).await.position, 1);

    let db = admin(&pg).await;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'fleetops-listen'",
            &[],
        )
        .await
        .unwrap()
        .len();
    assert_eq!(killed, 2, "one LISTEN session per instance");
    // Appended while B may still be reconnecting: the head it reads after LISTEN covers it.
    a.append(AppendBatch::single(
        s.clone(),
        ExpectedVersion::Exact(1),
        vec![event(2, "2")],
    ))
    .await
    .unwrap();
    assert_eq!(next_within_5s(&mut *sub).await.position, 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.append(AppendBatch::single(
        s,
        ExpectedVersion::Exact(2),
        vec![event(3, "3")],
    ))
    .await
    .unwrap();
    assert_eq!(next_within_5s(&mut *sub).await.position, 3);
}

/// A server whose default isolation is serializable (a DBA's choice) must not make appends of
/// two instances fail on the feed head: the store's sessions run read committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_race_on_a_serializable_server() {
    let Some(pg) = TestPostgres::start_or_skip_with(TestPostgresOptions {
        settings: vec![(
            "default_transaction_isolation".into(),
            "serializable".into(),
        )],
        ..TestPostgresOptions::default()
    }) else {
        return;
    };
    let schema = pg.fresh_schema();
    let stores = [
        PostgresStore::connect(pg.config(&schema)).await.unwrap(),
        PostgresStore::connect(pg.config(&schema)).await.unwrap(),
    ];
    let tasks: Vec<_> = (0..16u64)
        .map(|t| {
            let store = stores[(t % 2) as usize].clone();
            tokio::spawn(async move {
                let s = stream(&format!("ser-{t}"));
                for i in 0..20u64 {
                    let expected = ExpectedVersion::from_current((i > 0).then_some(i));
                    let e = event(u128::from(t * 100 + i), "s");
                    store
                        .append(AppendBatch::single(s.clone(), expected, vec![e]))
                        .await
                        .expect("append on a serializable server");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    check_feed(&read_feed(&stores[0]).await, 320, "feed");
}
