//! What an append accepts and refuses: version expectations, atomic multi-stream batches,
//! malformed batches and idempotency keys.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, IdempotencyKey, NewEvent, StoreError,
    StoredEvent, StreamAppend,
};

use super::calls::{append_err, append_ok, head, join, read_all, read_all_paged};
use super::checks::{
    assert_positions_from_one, assert_stream_consistent, assert_unchanged, expect_conflict,
    snapshot,
};
use super::inputs::{appended, at, batch, event_id, small_event, stored, stream, Ids};

/// Checks `Any`, `NoStream` and `Exact(n)`, the exact contents of every `Conflict`, and that a
/// refused append changes nothing and consumes no position.
pub async fn expected_versions<S: EventStore>(store: S) {
    use ExpectedVersion::{Any, Exact, NoStream};
    let ids = Ids::default();
    let s = stream("versions/s");
    let fresh = stream("versions/fresh");
    let watched = [s.clone(), fresh.clone()];

    let got = append_ok(
        &store,
        batch(&s, NoStream, ids.small(1)),
        "NoStream, new stream",
    )
    .await;
    assert_eq!(got, appended(1, 1, &[(&s, 1)]), "NoStream on a new stream");

    expect_conflict(
        &store,
        batch(&s, NoStream, ids.small(1)),
        (&s, NoStream, Some(1)),
        &watched,
        "NoStream on an existing stream",
    )
    .await;

    let got = append_ok(&store, batch(&s, Exact(1), ids.small(2)), "Exact(1) at 1").await;
    assert_eq!(
        got,
        appended(2, 3, &[(&s, 3)]),
        "Exact(1) on a stream at version 1; the refused append must not consume a position"
    );

    for stale in [Exact(1), Exact(2), Exact(4), Exact(0), Exact(u64::MAX)] {
        expect_conflict(
            &store,
            batch(&s, stale, ids.small(1)),
            (&s, stale, Some(3)),
            &watched,
            &format!("{stale:?} on a stream at version 3"),
        )
        .await;
    }
    for wrong in [Exact(0), Exact(1)] {
        expect_conflict(
            &store,
            batch(&fresh, wrong, ids.small(1)),
            (&fresh, wrong, None),
            &watched,
            &format!("{wrong:?} on a never-written stream"),
        )
        .await;
    }

    let got = append_ok(&store, batch(&fresh, Any, ids.small(1)), "Any, new stream").await;
    assert_eq!(got, appended(4, 4, &[(&fresh, 1)]), "Any on a new stream");
    let got = append_ok(&store, batch(&s, Any, ids.small(2)), "Any, existing").await;
    assert_eq!(
        got,
        appended(5, 6, &[(&s, 5)]),
        "Any on a stream at version 3"
    );
    let got = append_ok(&store, batch(&s, Exact(5), ids.small(3)), "Exact(5) at 5").await;
    assert_eq!(
        got,
        appended(7, 9, &[(&s, 8)]),
        "Exact(5) on a stream at version 5"
    );
    expect_conflict(
        &store,
        batch(&fresh, NoStream, ids.small(1)),
        (&fresh, NoStream, Some(1)),
        &watched,
        "NoStream on a stream created with Any",
    )
    .await;

    let feed = read_all_paged(&store).await;
    assert_positions_from_one(&feed, "feed after the expected-version checks");
    assert_eq!(
        feed.len(),
        9,
        "events stored after the expected-version checks"
    );
    assert_stream_consistent(&store, &s, &feed, 8).await;
    assert_stream_consistent(&store, &fresh, &feed, 1).await;
}

/// A multi-stream batch in which any one stream fails its check stores nothing: no stream
/// changes (not even those created by the batch), the head stays, and no position is
/// consumed. A successful multi-stream batch gets consecutive positions in batch order.
pub async fn multi_stream_atomicity<S: EventStore>(store: S) {
    use ExpectedVersion::{Any, Exact, NoStream};
    let ids = Ids::default();
    let a = stream("atomic/a");
    let b = stream("atomic/b");
    let c = stream("atomic/c");
    let d = stream("atomic/d");
    let watched = [a.clone(), b.clone(), c.clone(), d.clone()];

    append_ok(&store, batch(&a, NoStream, ids.small(2)), "setup a").await;
    append_ok(&store, batch(&b, NoStream, ids.small(1)), "setup b").await;

    // Three streams whose expectations all hold: a at 2, b at 1, c new.
    let good = [(&a, Exact(2)), (&b, Exact(1)), (&c, NoStream)];
    // For each position in the batch, a stale expectation for that stream and what it meets.
    let stale = [(Exact(1), Some(2)), (NoStream, Some(1)), (Exact(1), None)];
    for bad in 0..good.len() {
        let mut streams = Vec::new();
        for (i, (s, expected)) in good.iter().enumerate() {
            let expected = if i == bad { stale[i].0 } else { *expected };
            streams.push(StreamAppend {
                stream: (*s).clone(),
                expected,
                events: ids.small(i as u64 + 1),
            });
        }
        let batch = AppendBatch {
            streams,
            idempotency_key: None,
        };
        expect_conflict(
            &store,
            batch,
            (good[bad].0, stale[bad].0, stale[bad].1),
            &watched,
            &format!("three-stream batch whose stream #{bad} is stale"),
        )
        .await;
    }

    // The same batch with every expectation right goes through as one unit.
    let (ea, ec, eb) = (ids.small(2), ids.small(3), ids.small(1));
    let got = append_ok(
        &store,
        AppendBatch::single(a.clone(), Exact(2), ea.clone())
            .with(c.clone(), NoStream, ec.clone())
            .with(b.clone(), Any, eb.clone()),
        "three-stream batch",
    )
    .await;
    assert_eq!(
        got,
        appended(4, 9, &[(&a, 4), (&c, 3), (&b, 2)]),
        "a three-stream batch after three refused ones: positions follow the head, \
         versions are listed in batch order"
    );
    let expected: Vec<StoredEvent> = [
        stored(&ea[0], &a, 3, 4, None),
        stored(&ea[1], &a, 4, 5, None),
        stored(&ec[0], &c, 1, 6, None),
        stored(&ec[1], &c, 2, 7, None),
        stored(&ec[2], &c, 3, 8, None),
        stored(&eb[0], &b, 2, 9, None),
    ]
    .into();
    assert_eq!(
        read_all(&store, 4, 100).await,
        expected,
        "a multi-stream batch must occupy consecutive positions in batch order"
    );

    // A batch that creates a stream and fails on an existing one leaves the new stream absent.
    expect_conflict(
        &store,
        AppendBatch::single(d.clone(), NoStream, ids.small(1)).with(
            a.clone(),
            Exact(3),
            ids.small(1),
        ),
        (&a, Exact(3), Some(4)),
        &watched,
        "batch creating d and failing on a",
    )
    .await;
    let got = append_ok(
        &store,
        AppendBatch::single(d.clone(), NoStream, ids.small(1)).with(
            a.clone(),
            Exact(4),
            ids.small(1),
        ),
        "batch creating d",
    )
    .await;
    assert_eq!(
        got,
        appended(10, 11, &[(&d, 1), (&a, 5)]),
        "batch creating d"
    );

    let feed = read_all_paged(&store).await;
    assert_positions_from_one(&feed, "feed after the atomicity checks");
    for (s, v) in [(&a, 5), (&b, 2), (&c, 3), (&d, 1)] {
        assert_stream_consistent(&store, s, &feed, v).await;
    }
}

/// Malformed batches (no stream, a stream without events, a stream named twice) fail with
/// `InvalidBatch` and store nothing, not even their valid parts; nor do they consume their
/// idempotency key.
pub async fn invalid_batches<S: EventStore>(store: S) {
    use ExpectedVersion::{Any, Exact, NoStream};
    let ids = Ids::default();
    let a = stream("invalid/a");
    let b = stream("invalid/b");
    let watched = [a.clone(), b.clone()];
    append_ok(&store, batch(&a, NoStream, ids.small(1)), "setup a").await;

    let key = IdempotencyKey("conformance-invalid".into());
    let cases: Vec<(&str, AppendBatch)> = vec![
        ("a batch with no stream", AppendBatch::default()),
        (
            "a batch with no stream but a key",
            AppendBatch::default().idempotent(key.clone()),
        ),
        (
            "a single stream without events",
            AppendBatch::single(a.clone(), Exact(1), vec![]),
        ),
        (
            "a valid stream followed by one without events",
            AppendBatch::single(a.clone(), Exact(1), ids.small(1)).with(
                b.clone(),
                NoStream,
                vec![],
            ),
        ),
        (
            "a stream named twice",
            AppendBatch::single(a.clone(), Exact(1), ids.small(1))
                .with(b.clone(), NoStream, ids.small(1))
                .with(a.clone(), Any, ids.small(1)),
        ),
        (
            "a new stream named twice, with a key",
            AppendBatch::single(b.clone(), Any, ids.small(1))
                .with(b.clone(), Any, ids.small(1))
                .idempotent(key.clone()),
        ),
    ];
    for (what, batch) in cases {
        let before = snapshot(&store, &watched).await;
        let err = append_err(&store, batch, what).await;
        assert!(
            matches!(err, StoreError::InvalidBatch { .. }),
            "{what}: expected InvalidBatch, got {err:?}"
        );
        let after = snapshot(&store, &watched).await;
        assert_unchanged(&before, &after, what);
    }

    // The key of a refused batch is still free.
    let got = append_ok(
        &store,
        batch(&b, NoStream, ids.small(2)).idempotent(key),
        "valid batch reusing the key of invalid ones",
    )
    .await;
    assert_eq!(
        got,
        appended(2, 3, &[(&b, 2)]),
        "an idempotency key used only by invalid batches must still be free"
    );
}

/// A repeated idempotency key returns the first `Appended` and stores nothing, whatever the
/// repeated batch holds (even a `NoStream` that would now conflict), also when the duplicates
/// arrive concurrently. A key is only taken by a batch that was stored.
pub async fn idempotency_keys<S: EventStore>(store: S) {
    use ExpectedVersion::{Any, Exact, NoStream};
    let store = Arc::new(store);
    let ids = Arc::new(Ids::default());
    let a = stream("idem/a");
    let b = stream("idem/b");
    let c = stream("idem/c");
    let watched = [a.clone(), b.clone(), c.clone()];
    let k1 = IdempotencyKey("conformance-idem-1".into());

    let first_events = ids.small(2);
    let first = batch(&a, NoStream, first_events.clone()).idempotent(k1.clone());
    let a1 = append_ok(&*store, first.clone(), "first append with key 1").await;
    assert_eq!(a1, appended(1, 2, &[(&a, 2)]), "first append with key 1");
    let want: Vec<StoredEvent> = vec![
        stored(&first_events[0], &a, 1, 1, Some(&k1)),
        stored(&first_events[1], &a, 2, 2, Some(&k1)),
    ];
    assert_eq!(
        read_all(&*store, 1, 10).await,
        want,
        "events of a keyed batch carry the key in their envelope"
    );

    // The same batch again: its NoStream would conflict now, but the key answers first.
    let before = snapshot(&*store, &watched).await;
    let again = append_ok(&*store, first.clone(), "retry of the keyed batch").await;
    assert_eq!(
        again, a1,
        "a retried keyed batch must return the first result"
    );
    assert_unchanged(
        &before,
        &snapshot(&*store, &watched).await,
        "retry with key 1",
    );

    // A different batch under the same key.
    let other = batch(&b, Any, ids.small(3)).idempotent(k1.clone());
    let again = append_ok(&*store, other, "different batch, same key").await;
    assert_eq!(
        again, a1,
        "a reused key returns the first result, whatever the batch"
    );
    assert_unchanged(&before, &snapshot(&*store, &watched).await, "reused key 1");

    // Without a key, appends go through as usual.
    let got = append_ok(&*store, batch(&a, Exact(2), ids.small(1)), "unkeyed append").await;
    assert_eq!(
        got,
        appended(3, 3, &[(&a, 3)]),
        "unkeyed append after keyed ones"
    );

    // A refused batch leaves its key free for the caller's re-decided retry.
    let k2 = IdempotencyKey("conformance-idem-2".into());
    expect_conflict(
        &*store,
        batch(&a, Exact(2), ids.small(1)).idempotent(k2.clone()),
        (&a, Exact(2), Some(3)),
        &watched,
        "stale append with key 2",
    )
    .await;
    let retry = batch(&a, Exact(3), ids.small(1)).idempotent(k2.clone());
    let a2 = append_ok(&*store, retry.clone(), "re-decided append with key 2").await;
    assert_eq!(
        a2,
        appended(4, 4, &[(&a, 4)]),
        "a key whose first batch conflicted must still be free"
    );
    assert_eq!(
        append_ok(&*store, retry, "second retry with key 2").await,
        a2,
        "key 2 is taken once stored"
    );

    // Sixteen concurrent copies of one keyed batch: one is stored, all get its result.
    let k3 = IdempotencyKey("conformance-idem-3".into());
    let dup = batch(&b, NoStream, ids.small(3)).idempotent(k3);
    let head_before = head(&*store).await;
    let handles: Vec<JoinHandle<Appended>> = (0..16)
        .map(|i| {
            let (store, dup) = (store.clone(), dup.clone());
            tokio::spawn(async move {
                append_ok(&*store, dup, &format!("concurrent duplicate {i}")).await
            })
        })
        .collect();
    let results = join(handles, "concurrent duplicate").await;
    let expected = appended(head_before + 1, head_before + 3, &[(&b, 3)]);
    for r in &results {
        assert_eq!(
            r, &expected,
            "every concurrent duplicate gets the one stored result"
        );
    }
    assert_eq!(
        head(&*store).await,
        head_before + 3,
        "concurrent duplicates must be stored once"
    );

    // Eight keys, four concurrent copies each, all appending to one stream with `Any`.
    let head_before = head(&*store).await;
    let handles: Vec<JoinHandle<(u64, Appended)>> = (0..32u64)
        .map(|i| {
            let (store, c) = (store.clone(), c.clone());
            let key = i % 8;
            // Copies of one key carry the same event ids, like a client's retries.
            let events: Vec<NewEvent> = (0..2)
                .map(|j| {
                    let seq = 1_000_000 + key * 2 + j;
                    NewEvent::new(event_id(seq, at(seq)), small_event(seq), at(seq))
                })
                .collect();
            let b = batch(&c, Any, events)
                .idempotent(IdempotencyKey(format!("conformance-idem-many-{key}")));
            tokio::spawn(async move {
                (
                    key,
                    append_ok(&*store, b, &format!("keyed append {i}")).await,
                )
            })
        })
        .collect();
    let mut by_key: BTreeMap<u64, Vec<Appended>> = BTreeMap::new();
    for (key, got) in join(handles, "keyed appender").await {
        by_key.entry(key).or_default().push(got);
    }
    let mut positions = HashSet::new();
    for (key, results) in &by_key {
        assert!(
            results.iter().all(|r| r == &results[0]),
            "copies of key {key} got different results: {results:?}"
        );
        for p in results[0].first_position..=results[0].last_position {
            assert!(positions.insert(p), "two keys were given position {p}");
        }
    }
    assert_eq!(
        head(&*store).await,
        head_before + 16,
        "eight keys × two events must be stored exactly once each"
    );
    let feed = read_all_paged(&*store).await;
    assert_positions_from_one(&feed, "feed after the idempotency checks");
    assert_stream_consistent(&*store, &c, &feed, 16).await;
}
