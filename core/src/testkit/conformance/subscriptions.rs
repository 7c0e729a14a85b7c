//! Subscriptions: stored events first, then live ones, none skipped or repeated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use tokio::task::JoinHandle;

use crate::ids::StreamId;
use crate::store::{EventStore, ExpectedVersion};

use super::calls::{append_ok, collect, expect_quiet, join, next_event, read_all_paged, subscribe};
use super::inputs::{batch, stream, Ids};

/// A subscription opened on an empty store, and one opened past the head, receive events
/// appended later, in order, and nothing else.
pub async fn subscription_from_empty_store<S: EventStore>(store: S) {
    let store = Arc::new(store);
    let ids = Ids::default();
    let s = stream("sub/empty");

    let early = subscribe(&*store, 1).await;
    let waiting = tokio::spawn(collect(early, 1, 5, "subscriber opened on an empty store"));
    // Let the subscriber reach its wait for new events before anything is appended.
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    append_ok(
        &*store,
        batch(&s, ExpectedVersion::NoStream, ids.small(2)),
        "append 1",
    )
    .await;
    tokio::time::sleep(StdDuration::from_millis(5)).await;
    append_ok(
        &*store,
        batch(&s, ExpectedVersion::Exact(2), ids.small(3)),
        "append 2",
    )
    .await;
    let (_, got, mut early) = join(vec![waiting], "subscriber").await.remove(0);
    let feed = read_all_paged(&*store).await;
    assert_eq!(
        got, feed,
        "a subscriber opened before any event must receive them all"
    );
    expect_quiet(&mut *early, "subscriber opened on an empty store").await;

    // From exactly head + 1, while nothing is being written.
    let mut ahead = subscribe(&*store, 6).await;
    expect_quiet(&mut *ahead, "subscriber opened at head + 1").await;
    let more = ids.small(2);
    append_ok(
        &*store,
        batch(&s, ExpectedVersion::Exact(5), more.clone()),
        "append 3",
    )
    .await;
    for (i, new) in more.iter().enumerate() {
        let e = next_event(&mut *ahead, "subscriber opened at head + 1").await;
        assert_eq!(
            (e.position, e.event_id),
            (6 + i as u64, new.event_id),
            "subscriber opened at head + 1 must get exactly the new events"
        );
    }
    expect_quiet(&mut *ahead, "subscriber opened at head + 1").await;
}

/// Subscriptions opened from 1, from the middle, and at the head while writers keep appending:
/// each gets every event from its start on, first the stored ones then the live ones, with
/// strictly consecutive positions and full envelopes, nothing skipped or repeated.
pub async fn subscription_catch_up_then_live<S: EventStore>(store: S) {
    const PRELOAD: u64 = 300;
    const WRITERS: u64 = 2;
    const LIVE_PER_WRITER: u64 = 200;
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    let total = PRELOAD + WRITERS * LIVE_PER_WRITER;

    // Preload in batches of up to 7 events over a few streams.
    let mut versions: HashMap<StreamId, u64> = HashMap::new();
    let mut loaded = 0;
    while loaded < PRELOAD {
        let n = (1 + loaded % 7).min(PRELOAD - loaded);
        let s = stream(&format!("sub/pre/{}", loaded % 5));
        let v = versions.entry(s.clone()).or_default();
        let expected = ExpectedVersion::from_current((*v > 0).then_some(*v));
        append_ok(&*store, batch(&s, expected, ids.small(n)), "preload").await;
        *v += n;
        loaded += n;
    }

    let at_head = subscribe(&*store, PRELOAD + 1).await;
    let at_head = tokio::spawn(collect(
        at_head,
        PRELOAD + 1,
        total,
        "subscriber from the head",
    ));

    let writers: Vec<JoinHandle<()>> = (0..WRITERS)
        .map(|w| {
            let (store, ids) = (store.clone(), ids.clone());
            tokio::spawn(async move {
                let s = stream(&format!("sub/live/{w}"));
                let mut written = 0;
                while written < LIVE_PER_WRITER {
                    let n = (1 + written % 4).min(LIVE_PER_WRITER - written);
                    let expected = ExpectedVersion::from_current((written > 0).then_some(written));
                    append_ok(&*store, batch(&s, expected, ids.small(n)), "live writer").await;
                    written += n;
                    // Spread the writes out so subscribers catch up in the middle of them.
                    if written % 20 == 0 {
                        tokio::time::sleep(StdDuration::from_millis(1)).await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();

    // Open catch-up subscriptions while the writers are busy.
    tokio::time::sleep(StdDuration::from_millis(2)).await;
    let mut followers = vec![at_head];
    for from in [1, PRELOAD / 2] {
        let sub = subscribe(&*store, from).await;
        followers.push(tokio::spawn(collect(
            sub,
            from,
            total,
            "catch-up subscriber",
        )));
    }
    join(writers, "live writer").await;
    let results = join(followers, "subscriber").await;

    let feed = read_all_paged(&*store).await;
    assert_eq!(feed.len() as u64, total, "events in the feed");
    for (from, got, mut sub) in results {
        assert_eq!(
            got,
            feed[(from - 1) as usize..],
            "a subscription from {from} must deliver exactly what read_all holds from there"
        );
        expect_quiet(
            &mut *sub,
            &format!("subscriber from {from}, after the head"),
        )
        .await;
    }
}
