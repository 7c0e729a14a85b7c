//! Racing writers and readers: one winner per version, whole batches, a gap-free global
//! feed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use tokio::task::JoinHandle;

use crate::ids::StreamId;
use crate::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent,
};

use super::calls::{
    append_ok, call, collect, head, join, read_all, read_all_paged, read_stream_paged, subscribe,
    version, PAGE,
};
use super::checks::{assert_positions_from_one, assert_stream_consistent};
use super::inputs::{batch, stream, Ids};

/// Sixteen tasks race on one stream, each reading the version and appending with
/// `Exact(version)`. Exactly one append wins per version, losers get a `Conflict` naming what
/// they expected and a newer version, and the stream ends without gaps or duplicates, holding
/// exactly the winners' events at the versions their `Appended` reported.
pub async fn racing_appenders_on_one_stream<S: EventStore>(store: S) {
    const TASKS: u64 = 16;
    const ATTEMPTS: u64 = 40;
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    let s = stream("race/one");

    let tasks: Vec<JoinHandle<(Vec<Win>, u64)>> = (0..TASKS)
        .map(|task| {
            let (store, ids, s) = (store.clone(), ids.clone(), s.clone());
            tokio::spawn(async move {
                let mut wins = Vec::new();
                let mut conflicts = 0;
                for attempt in 0..ATTEMPTS {
                    let current = version(&*store, &s).await;
                    let expected = ExpectedVersion::from_current(current);
                    // Yield between read and write so the race happens on any runtime.
                    tokio::task::yield_now().await;
                    let events = ids.small(1 + (task + attempt) % 3);
                    let step = format!("racer {task}, attempt {attempt}: append {expected:?}");
                    match call(&step, store.append(batch(&s, expected, events.clone()))).await {
                        Ok(got) => wins.push(Win::check(got, &s, current, events, &step)),
                        Err(StoreError::Conflict {
                            stream,
                            expected: reported,
                            actual,
                        }) => {
                            assert_eq!(stream, s, "{step}: conflict names the wrong stream");
                            assert_eq!(reported, expected, "{step}: conflict misreports expected");
                            assert!(
                                actual > current,
                                "{step}: conflict reports version {actual:?}, but the stream \
                                 was already at {current:?} before (versions never go back)"
                            );
                            conflicts += 1;
                        }
                        Err(e) => panic!("{step}: expected success or Conflict, got {e:?}"),
                    }
                }
                (wins, conflicts)
            })
        })
        .collect();
    let results = join(tasks, "racing appender").await;
    let conflicts: u64 = results.iter().map(|(_, c)| c).sum();
    let mut wins: Vec<Win> = results.into_iter().flat_map(|(w, _)| w).collect();
    wins.sort_by_key(|w| w.first_version);

    assert!(
        conflicts > 0,
        "{TASKS} tasks × {ATTEMPTS} attempts never conflicted: the race did not happen, \
         so this case proved nothing"
    );
    // Exactly one winner per version: the winners' version ranges tile 1..=n.
    let mut next = 1;
    for w in &wins {
        assert_eq!(
            w.first_version,
            next,
            "two appends won overlapping versions, or a version was skipped: {:?}",
            wins.iter()
                .map(|w| (w.first_version, w.events.len()))
                .collect::<Vec<_>>()
        );
        next += w.events.len() as u64;
    }
    let total = next - 1;
    assert_eq!(
        version(&*store, &s).await,
        Some(total),
        "final stream version"
    );
    let events = read_stream_paged(&*store, &s).await;
    assert_eq!(events.len() as u64, total, "events in the raced stream");
    for w in &wins {
        for (i, new) in w.events.iter().enumerate() {
            let got = &events[(w.first_version - 1) as usize + i];
            assert_eq!(
                got.event_id,
                new.event_id,
                "version {} must hold the event of the append that won it",
                w.first_version + i as u64
            );
            let position = w.appended.first_position + i as u64;
            assert_eq!(
                got.position, position,
                "position of version {}",
                got.stream_version
            );
        }
    }
    let feed = read_all_paged(&*store).await;
    assert_positions_from_one(&feed, "feed after the race");
    assert_eq!(feed.len() as u64, total, "losers must store nothing");
    assert_stream_consistent(&*store, &s, &feed, total).await;
}

/// Eight tasks race two-stream batches over four shared streams while a reader polls the feed.
/// Each batch is stored whole or not at all; every stream stays gap-free; and the reader never
/// sees a batch in part.
pub async fn racing_multi_stream_batches<S: EventStore>(store: S) {
    const TASKS: u64 = 8;
    const ATTEMPTS: u64 = 30;
    const STREAMS: u64 = 4;
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    let streams: Arc<Vec<StreamId>> = Arc::new(
        (0..STREAMS)
            .map(|i| stream(&format!("race/multi/{i}")))
            .collect(),
    );
    let done = Arc::new(AtomicBool::new(false));

    // The reader records the length of every prefix it saw; each must end on a batch boundary.
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Acquire) {
                let feed = read_all(&*store, 1, 1_000_000).await;
                assert_positions_from_one(&feed, "a reader's view of the feed during the race");
                seen.push(feed.len() as u64);
                tokio::task::yield_now().await;
            }
            seen
        })
    };

    let writers: Vec<JoinHandle<Vec<StoredBatch>>> = (0..TASKS)
        .map(|task| {
            let (store, ids, streams) = (store.clone(), ids.clone(), streams.clone());
            tokio::spawn(async move {
                let mut wins = Vec::new();
                for attempt in 0..ATTEMPTS {
                    let x = &streams[((task + attempt) % STREAMS) as usize];
                    let y = &streams[((task + attempt + 1 + task % 2) % STREAMS) as usize];
                    let vx = version(&*store, x).await;
                    let vy = version(&*store, y).await;
                    tokio::task::yield_now().await;
                    let (ex, ey) = (ids.small(2), ids.small(1));
                    let (xx, xy) = (
                        ExpectedVersion::from_current(vx),
                        ExpectedVersion::from_current(vy),
                    );
                    let b = AppendBatch::single(x.clone(), xx, ex.clone()).with(
                        y.clone(),
                        xy,
                        ey.clone(),
                    );
                    let step = format!("batch writer {task}, attempt {attempt}");
                    match call(&step, store.append(b)).await {
                        Ok(got) => {
                            assert_eq!(got.last_position - got.first_position, 2, "{step}: span");
                            assert_eq!(
                                got.versions,
                                vec![
                                    (x.clone(), vx.unwrap_or(0) + 2),
                                    (y.clone(), vy.unwrap_or(0) + 1)
                                ],
                                "{step}: versions after a successful two-stream append"
                            );
                            wins.push((got, vec![(x.clone(), ex), (y.clone(), ey)]));
                        }
                        Err(StoreError::Conflict {
                            stream,
                            expected,
                            actual,
                        }) => {
                            let sent = if &stream == x {
                                xx
                            } else if &stream == y {
                                xy
                            } else {
                                panic!("{step}: conflict names {stream}, not in the batch")
                            };
                            assert_eq!(expected, sent, "{step}: conflict misreports expected");
                            assert!(
                                !expected.admits(actual),
                                "{step}: conflict on {stream} although {expected:?} admits \
                                 the reported version {actual:?}"
                            );
                        }
                        Err(e) => panic!("{step}: expected success or Conflict, got {e:?}"),
                    }
                }
                wins
            })
        })
        .collect();
    let wins: Vec<_> = join(writers, "batch writer")
        .await
        .into_iter()
        .flatten()
        .collect();
    done.store(true, Ordering::Release);
    let seen = join(vec![reader], "feed reader").await.remove(0);

    let feed = read_all_paged(&*store).await;
    assert_positions_from_one(&feed, "feed after the multi-stream race");
    let mut boundaries: HashSet<u64> = wins.iter().map(|(a, _)| a.last_position).collect();
    boundaries.insert(0);
    let stored_total: u64 = wins
        .iter()
        .map(|(a, _)| a.last_position - a.first_position + 1)
        .sum();
    assert_eq!(
        feed.len() as u64,
        stored_total,
        "only winning batches are stored"
    );
    for len in seen {
        assert!(
            boundaries.contains(&len),
            "a reader saw the feed end at position {len}, in the middle of a batch"
        );
    }
    for (got, parts) in &wins {
        let mut position = got.first_position;
        for (s, events) in parts {
            for new in events {
                let e = &feed[(position - 1) as usize];
                assert_eq!(
                    (&e.stream, e.event_id),
                    (s, new.event_id),
                    "position {position} must hold the batch's event, in batch order"
                );
                position += 1;
            }
        }
    }
    for s in streams.iter() {
        let v = version(&*store, s).await.unwrap_or(0);
        assert_stream_consistent(&*store, s, &feed, v).await;
    }
}

/// Sixteen tasks append to their own streams while a reader follows the feed from a
/// checkpoint. The final feed holds positions 1..=N exactly, each stream in version order, each
/// batch on consecutive positions; the reader never meets a gap or a repeat.
pub async fn concurrent_writers_global_order<S: EventStore>(store: S) {
    const TASKS: u64 = 16;
    const APPENDS: u64 = 50;
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    // Events per append cycle through 1..=4, so the total is known before anything runs.
    let per_task: u64 = (0..APPENDS).map(|i| 1 + i % 4).sum();
    let total = TASKS * per_task;

    // A projection-like follower: pages from its checkpoint until it has the whole feed.
    let follower = {
        let store = store.clone();
        tokio::spawn(call("follower catching up with the writers", async move {
            let mut checkpoint = 0u64;
            while checkpoint < total {
                let page = read_all(&*store, checkpoint + 1, PAGE).await;
                for e in &page {
                    assert_eq!(
                        e.position,
                        checkpoint + 1,
                        "a follower at checkpoint {checkpoint} got position {}: a position \
                         was skipped, repeated, or became visible before a lower one",
                        e.position
                    );
                    checkpoint = e.position;
                }
                if page.is_empty() {
                    tokio::time::sleep(StdDuration::from_millis(1)).await;
                }
            }
            checkpoint
        }))
    };

    let writers: Vec<JoinHandle<StreamHistory>> = (0..TASKS)
        .map(|task| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let s = stream(&format!("order/{task}"));
                let mut done = Vec::new();
                let mut v = None;
                for i in 0..APPENDS {
                    let events = ids.small(1 + i % 4);
                    let step = format!("writer {task}, append {i}");
                    let expected = ExpectedVersion::from_current(v);
                    let got = append_ok(&*store, batch(&s, expected, events.clone()), &step).await;
                    let new_version = v.unwrap_or(0) + events.len() as u64;
                    assert_eq!(
                        got.versions,
                        vec![(s.clone(), new_version)],
                        "{step}: version"
                    );
                    assert_eq!(
                        got.last_position - got.first_position + 1,
                        events.len() as u64,
                        "{step}: a batch's positions must be consecutive"
                    );
                    v = Some(new_version);
                    done.push((got, events));
                }
                (s, done)
            })
        })
        .collect();
    let written = join(writers, "writer").await;
    let reached = join(vec![follower], "follower").await.remove(0);
    assert_eq!(reached, total, "the follower's final checkpoint");

    assert_eq!(
        head(&*store).await,
        total,
        "head_position after the concurrent writers"
    );
    let feed = read_all_paged(&*store).await;
    assert_positions_from_one(&feed, "feed after the concurrent writers");
    assert_eq!(feed.len() as u64, total, "events in the feed");
    for (s, appends) in &written {
        for (got, events) in appends {
            for (i, new) in events.iter().enumerate() {
                let e = &feed[(got.first_position - 1) as usize + i];
                assert_eq!(
                    (&e.stream, e.event_id),
                    (s, new.event_id),
                    "position {} must hold the appended event",
                    e.position
                );
            }
        }
        assert_stream_consistent(&*store, s, &feed, per_task).await;
    }
}

/// Thirty-two tasks append at once, half of them single-stream batches to their own streams,
/// half two-stream batches (their own stream and one of four shared ones), while live
/// subscriptions follow the feed (two started before the first append, from 0 and from 1, one
/// started mid-way from the middle of what is stored by then) and a reader polls `read_all`
/// from its checkpoint. Every follower sees the positions from where it started on, each
/// exactly once and in order, every stream's versions one after the other, and in the end
/// exactly the final feed: a store that makes a position visible before a lower one (a
/// sequence handed out before commit) fails here.
pub async fn live_followers_under_concurrent_appends<S: EventStore>(store: S) {
    const TASKS: u64 = 32;
    const APPENDS: u64 = 12;
    const SHARED: u64 = 4;
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    // Own-stream events per append cycle through 1..=3; odd tasks add one shared event.
    let own_per_task: u64 = (0..APPENDS).map(|i| 1 + i % 3).sum();
    let total = TASKS * own_per_task + (TASKS / 2) * APPENDS;

    let follow = |sub, from, who| {
        tokio::spawn(call(who, async move {
            let (_, got, _) = collect(sub, from, total, who).await;
            assert_versions_in_order(&got, who);
            got
        }))
    };
    let before_at_0 = follow(subscribe(&*store, 0).await, 1, "subscription from 0");
    let before_at_1 = follow(subscribe(&*store, 1).await, 1, "subscription from 1");
    let poller = {
        let store = store.clone();
        tokio::spawn(call("read_all poller", async move {
            let mut got: Vec<StoredEvent> = Vec::new();
            while (got.len() as u64) < total {
                let checkpoint = got.len() as u64;
                let page = read_all(&*store, checkpoint + 1, PAGE).await;
                for e in &page {
                    assert_eq!(
                        e.position,
                        got.len() as u64 + 1,
                        "a read_all poller at checkpoint {checkpoint} got position {}: a \
                         position was skipped, repeated, or became visible before a lower one",
                        e.position
                    );
                    got.push(e.clone());
                }
                if page.is_empty() {
                    tokio::time::sleep(StdDuration::from_millis(1)).await;
                }
            }
            assert_versions_in_order(&got, "read_all poller");
            got
        }))
    };

    let writers: Vec<JoinHandle<()>> = (0..TASKS)
        .map(|task| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let own = stream(&format!("live/own/{task}"));
                let shared = stream(&format!("live/shared/{}", task % SHARED));
                let mut v = None;
                for i in 0..APPENDS {
                    let events = ids.small(1 + i % 3);
                    let n = events.len() as u64;
                    let mut b = batch(&own, ExpectedVersion::from_current(v), events);
                    if task % 2 == 1 {
                        b = b.with(shared.clone(), ExpectedVersion::Any, ids.small(1));
                    }
                    let step = format!("live writer {task}, append {i}");
                    let got = append_ok(&*store, b, &step).await;
                    let own_version = v.unwrap_or(0) + n;
                    assert_eq!(got.versions[0], (own.clone(), own_version), "{step}");
                    v = Some(own_version);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();

    // Mid-way: once a third of the feed is stored, follow from the middle of what is there,
    // so the subscription catches up through stored events and then goes live.
    let mid = loop {
        let h = head(&*store).await;
        if h >= total / 3 {
            break h / 2 + 1;
        }
        tokio::time::sleep(StdDuration::from_millis(1)).await;
    };
    let midway = follow(
        subscribe(&*store, mid).await,
        mid,
        "subscription from mid-way",
    );

    join(writers, "live writer").await;
    let feed = read_all_paged(&*store).await;
    assert_positions_from_one(&feed, "feed after the live race");
    assert_eq!(feed.len() as u64, total, "events in the feed");
    for (handle, from, who) in [
        (before_at_0, 1, "subscription from 0"),
        (before_at_1, 1, "subscription from 1"),
        (midway, mid, "subscription from mid-way"),
        (poller, 1, "read_all poller"),
    ] {
        let got = join(vec![handle], who).await.remove(0);
        assert!(
            got[..] == feed[(from - 1) as usize..],
            "{who} saw other events than the final feed holds"
        );
    }
    for task in 0..TASKS {
        let own = stream(&format!("live/own/{task}"));
        assert_stream_consistent(&*store, &own, &feed, own_per_task).await;
    }
    for k in 0..SHARED {
        let shared = stream(&format!("live/shared/{k}"));
        let writers_of_k = (0..TASKS).filter(|t| t % 2 == 1 && t % SHARED == k).count() as u64;
        assert_stream_consistent(&*store, &shared, &feed, writers_of_k * APPENDS).await;
    }
}

/// Each stream's versions run on by one, in the order a follower saw its events.
fn assert_versions_in_order(events: &[StoredEvent], who: &str) {
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    for e in events {
        let prev = last.insert(&e.stream, e.stream_version);
        if let Some(prev) = prev {
            assert_eq!(
                e.stream_version,
                prev + 1,
                "{who}: {} went from version {prev} to {} at position {}",
                e.stream,
                e.stream_version,
                e.position
            );
        }
    }
}

/// A stored multi-stream batch as its writer knows it: the result and each stream's events, in
/// batch order.
type StoredBatch = (Appended, Vec<(StreamId, Vec<NewEvent>)>);

/// What a single-stream writer appended: its stream and each append's result and events.
type StreamHistory = (StreamId, Vec<(Appended, Vec<NewEvent>)>);

/// One won append of the racing case.
struct Win {
    first_version: u64,
    appended: Appended,
    events: Vec<NewEvent>,
}

impl Win {
    /// Checks a winning `Appended` against the version the racer read, and records it.
    fn check(
        got: Appended,
        stream: &StreamId,
        read: Option<u64>,
        events: Vec<NewEvent>,
        step: &str,
    ) -> Self {
        let n = events.len() as u64;
        let first_version = read.unwrap_or(0) + 1;
        assert_eq!(
            got.versions,
            vec![(stream.clone(), first_version + n - 1)],
            "{step}: version after a successful append"
        );
        assert_eq!(
            got.last_position - got.first_position + 1,
            n,
            "{step}: a batch's positions must be consecutive"
        );
        Self {
            first_version,
            appended: got,
            events,
        }
    }
}
