//! The store conformance suite: the executable form of the [`EventStore`] contract.
//!
//! Every storage backend runs [`run`] from one of its tests, inside a multi-threaded tokio
//! runtime so that the racing cases really race:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     fleetops_core::testkit::conformance::run(|| async { MyStore::new() }).await;
//! }
//! ```
//!
//! Each case takes a fresh, empty store and panics with a message naming the broken rule.
//! The cases are also public one by one, so a backend can run them as separate tests or
//! skip the slow [`large_stream`] in a quick loop ([`run_quick`]).
//!
//! Besides the rules written in `store.rs`, the suite pins down a few choices the port leaves
//! implicit, because projections and the runtime rely on them:
//! - `from` 0 in `read_stream` / `read_all` reads as 1 (versions and positions are 1-based);
//!   a `limit` of 0 returns nothing; `usize::MAX` is a valid limit.
//! - A batch that fails (conflict or invalid shape) does not consume its idempotency key, so
//!   the caller can re-decide and retry under the same key.
//! - The idempotency key is checked before the version expectations: the retry of a
//!   `NoStream` append returns the first result rather than a conflict.
//! - Readers never see part of a batch, nor a position before the ones below it.
//!
//! The suite needs a tokio runtime with timers enabled (`#[tokio::test]` enables them): every
//! wait on the store is bounded, so a stuck store fails with a message instead of hanging.
//! Event ids are deterministic UUIDv7 values derived from a counter, since the core has no
//! random source.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures::future::join_all;
use serde_json::json;
use tokio::task::JoinHandle;
use uuid::{Builder, Uuid};

use crate::event::{Event, StatusDetails, StepTimer};
use crate::ids::{ExecutionId, GroupName, JobId, StatusDetailKey, StreamId, ThingName};
use crate::status::{CommandStatus, JobExecutionStatus};
use crate::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, IdempotencyKey, NewEvent, StoreError,
    StoredEvent, StreamAppend, Subscription,
};
use crate::time::{Duration, Timestamp};

/// How long one call to the store may take before the suite declares the store stuck.
const PATIENCE: StdDuration = StdDuration::from_secs(30);
/// How long the suite listens to make sure a subscription delivers nothing more.
const QUIET: StdDuration = StdDuration::from_millis(200);
/// Page size for reading whole feeds back; deliberately not a round number so pages end in
/// the middle of batches.
const PAGE: usize = 97;
/// Number of events in [`large_stream`].
const LARGE_STREAM_EVENTS: u64 = 100_000;
/// Events per append in [`large_stream`].
const LARGE_STREAM_BATCH: u64 = 1_000;
/// Millisecond timestamp the suite's clock starts from (November 2023).
const EPOCH_MS: u64 = 1_700_000_000_000;

/// Runs every case, each on a fresh store from `make_store`.
///
/// Call it inside `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`; panics with a
/// message naming the broken rule.
pub async fn run<S, F, Fut>(mut make_store: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    run_quick(&mut make_store).await;
    announce("large_stream");
    large_stream(make_store().await).await;
}

/// Runs every case except [`large_stream`], each on a fresh store from `make_store`.
pub async fn run_quick<S, F, Fut>(mut make_store: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                announce(stringify!($case));
                $case(make_store().await).await;
            )*
        };
    }
    cases!(
        append_and_read,
        expected_versions,
        multi_stream_atomicity,
        invalid_batches,
        racing_appenders_on_one_stream,
        racing_multi_stream_batches,
        concurrent_writers_global_order,
        idempotency_keys,
        subscription_from_empty_store,
        subscription_catch_up_then_live,
        snapshots,
    );
}

/// Names the case about to run, so a failure or a hang in the captured output is attributable.
fn announce(case: &str) {
    eprintln!("conformance: {case}");
}

// ---- the cases ------------------------------------------------------------------------------

/// Appends to and reads from a few streams and checks every envelope field, the 1-based
/// versions and positions, `from`/`limit` paging of both reads, `stream_version` and
/// `head_position`, starting from an empty store.
pub async fn append_and_read<S: EventStore>(store: S) {
    let ids = Ids::default();
    let cmd = StreamId::command(&parse_id::<ExecutionId>("conformance-cmd-1"));
    let group = StreamId::group(&parse_id::<GroupName>("conformance-group"));
    let exec = StreamId::job_execution(
        &parse_id::<JobId>("conformance-job"),
        &parse_id::<ThingName>("thing-1"),
    );
    let unknown = stream("basics/never-written");

    // An empty store.
    assert_eq!(head(&store).await, 0, "head_position of an empty store");
    assert_eq!(
        read_all(&store, 1, 10).await,
        none(),
        "read_all of an empty store"
    );
    for s in [&cmd, &unknown] {
        assert_eq!(
            version(&store, s).await,
            None,
            "stream_version of never-written stream {s}"
        );
        assert_eq!(
            read_stream(&store, s, 1, 10).await,
            none(),
            "read_stream of never-written stream {s}"
        );
    }

    // Batch 1: a command stream, with correlation, causation and an idempotency key.
    let correlation = Uuid::from_u128(0x0c0e);
    let causation = Uuid::from_u128(0x0ca5);
    let key = IdempotencyKey("conformance-basics-1".into());
    let b1 = vec![
        NewEvent {
            correlation_id: Some(correlation),
            causation_id: Some(causation),
            ..ids.new_event(command_sent(1))
        },
        NewEvent {
            correlation_id: Some(correlation),
            ..ids.new_event(Event::CommandResponded {
                status: CommandStatus::Succeeded,
                result: Some(json!({"uptimeSecs": 12, "fw": "1.2.3"})),
                status_reason: Some("done".into()),
                at: at(2),
            })
        },
    ];
    let got = append_ok(
        &store,
        AppendBatch::single(cmd.clone(), ExpectedVersion::NoStream, b1.clone())
            .idempotent(key.clone()),
        "append batch 1",
    )
    .await;
    assert_eq!(
        got,
        appended(1, 2, &[(&cmd, 2)]),
        "result of the first append to an empty store"
    );

    // Batch 2: a group stream, `Any`, no key.
    let b2 = vec![
        ids.new_event(Event::GroupCreated {
            name: parse_id("conformance-group"),
            description: Some("conformance fleet".into()),
            at: at(3),
        }),
        ids.new_event(Event::GroupMembersAdded {
            things: vec![parse_id("thing-1"), parse_id("thing-2")],
            at: at(4),
        }),
    ];
    let got = append_ok(
        &store,
        AppendBatch::single(group.clone(), ExpectedVersion::Any, b2.clone()),
        "append batch 2",
    )
    .await;
    assert_eq!(got, appended(3, 4, &[(&group, 2)]), "result of batch 2");

    // Batch 3: the command stream again.
    let b3 = vec![ids.new_event(Event::CommandTimedOut { at: at(5) })];
    let got = append_ok(
        &store,
        AppendBatch::single(cmd.clone(), ExpectedVersion::Exact(2), b3.clone()),
        "append batch 3",
    )
    .await;
    assert_eq!(got, appended(5, 5, &[(&cmd, 3)]), "result of batch 3");

    // Batch 4: a job execution stream with richer payloads.
    let mut details = StatusDetails::new();
    details.insert(parse_id::<StatusDetailKey>("step"), "flash".into());
    details.insert(parse_id::<StatusDetailKey>("progress"), "40%".into());
    let b4 = vec![
        ids.new_event(Event::ExecutionQueued {
            job_id: parse_id("conformance-job"),
            thing: parse_id("thing-1"),
            execution_number: 1,
            queued_at: at(6),
            in_progress_timeout: Some(Duration::from_minutes(10)),
        }),
        ids.new_event(Event::ExecutionStarted {
            at: at(7),
            status_details: Some(details.clone()),
            in_progress_deadline: Some(at(7) + Duration::from_minutes(10)),
            step: StepTimer::Set(at(7) + Duration::from_minutes(2)),
        }),
        ids.new_event(Event::ExecutionFinished {
            status: JobExecutionStatus::Failed,
            at: at(8),
            status_details: Some(details),
        }),
    ];
    let got = append_ok(
        &store,
        AppendBatch::single(exec.clone(), ExpectedVersion::NoStream, b4.clone()),
        "append batch 4",
    )
    .await;
    assert_eq!(got, appended(6, 8, &[(&exec, 3)]), "result of batch 4");

    let all = vec![
        stored(&b1[0], &cmd, 1, 1, Some(&key)),
        stored(&b1[1], &cmd, 2, 2, Some(&key)),
        stored(&b2[0], &group, 1, 3, None),
        stored(&b2[1], &group, 2, 4, None),
        stored(&b3[0], &cmd, 3, 5, None),
        stored(&b4[0], &exec, 1, 6, None),
        stored(&b4[1], &exec, 2, 7, None),
        stored(&b4[2], &exec, 3, 8, None),
    ];
    let cmd_events = vec![all[0].clone(), all[1].clone(), all[4].clone()];

    // The global feed, with every envelope field.
    assert_eq!(
        read_all(&store, 1, 100).await,
        all,
        "read_all(1, 100) must return every event with its full envelope"
    );
    assert_eq!(read_all(&store, 3, 2).await, all[2..4], "read_all(3, 2)");
    assert_eq!(read_all(&store, 8, 10).await, all[7..], "read_all(8, 10)");
    assert_eq!(
        read_all(&store, 9, 10).await,
        none(),
        "read_all past the head"
    );
    assert_eq!(
        read_all(&store, u64::MAX, 10).await,
        none(),
        "read_all(u64::MAX, 10)"
    );
    assert_eq!(
        read_all(&store, 1, 0).await,
        none(),
        "read_all with limit 0"
    );
    assert_eq!(
        read_all(&store, 0, 3).await,
        all[..3],
        "read_all from 0 must read as from 1"
    );
    assert_eq!(
        read_all(&store, 1, usize::MAX).await,
        all,
        "read_all with limit usize::MAX"
    );

    // One stream.
    assert_eq!(
        read_stream(&store, &cmd, 1, 100).await,
        cmd_events,
        "read_stream({cmd}, 1, 100) must return only that stream's events, in version order"
    );
    assert_eq!(
        read_stream(&store, &cmd, 2, 1).await,
        cmd_events[1..2],
        "read_stream({cmd}, 2, 1)"
    );
    assert_eq!(
        read_stream(&store, &cmd, 2, 10).await,
        cmd_events[1..],
        "read_stream({cmd}, 2, 10)"
    );
    assert_eq!(
        read_stream(&store, &cmd, 4, 10).await,
        none(),
        "read_stream past the stream's end"
    );
    assert_eq!(
        read_stream(&store, &cmd, u64::MAX, 10).await,
        none(),
        "read_stream(u64::MAX, 10)"
    );
    assert_eq!(
        read_stream(&store, &cmd, 1, 0).await,
        none(),
        "read_stream with limit 0"
    );
    assert_eq!(
        read_stream(&store, &cmd, 0, 10).await,
        cmd_events,
        "read_stream from 0 must read as from 1"
    );
    assert_eq!(
        read_stream(&store, &exec, 1, usize::MAX).await,
        all[5..],
        "read_stream with limit usize::MAX"
    );
    assert_eq!(
        read_stream(&store, &group, 1, 10).await,
        all[2..4],
        "read_stream({group})"
    );
    assert_eq!(
        read_stream(&store, &unknown, 1, 10).await,
        none(),
        "read_stream of a never-written stream in a non-empty store"
    );

    // Versions and head.
    for (s, v) in [
        (&cmd, Some(3)),
        (&group, Some(2)),
        (&exec, Some(3)),
        (&unknown, None),
    ] {
        assert_eq!(version(&store, s).await, v, "stream_version({s})");
    }
    assert_eq!(head(&store).await, 8, "head_position after 8 events");
}

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

/// Snapshots (persisted projection checkpoints): none before the first save; a save is read
/// back byte for byte with its position and event key, per name; a later save replaces it
/// and survives more appends; a position past the head, or a key that is not the
/// fingerprint of the event stored at the position (a snapshot of another history), is
/// refused and leaves the saved one in place; a deleted snapshot is gone.
pub async fn snapshots<S: EventStore>(store: S) {
    use crate::store::Snapshot as Saved;
    let ids = Ids::default();
    let s = stream("snap/feed");
    let load = |name: &'static str| {
        let store = &store;
        async move {
            call("load_snapshot", store.load_snapshot(name))
                .await
                .unwrap_or_else(|e| panic!("load_snapshot({name}) failed: {e}"))
        }
    };
    let key_at = |position: u64| {
        let store = &store;
        async move {
            call("read_all", store.read_all(position, 1))
                .await
                .unwrap_or_else(|e| panic!("read_all({position}) failed: {e}"))[0]
                .fingerprint()
        }
    };
    assert_eq!(load("fleet").await, None, "an empty store has no snapshot");
    let empty = Saved {
        position: 0,
        event_key: 0,
        bytes: b"{}".to_vec(),
    };
    call("save_snapshot", store.save_snapshot("empty", empty.clone()))
        .await
        .unwrap_or_else(|e| panic!("saving a snapshot at position 0 failed: {e}"));
    assert_eq!(load("empty").await, Some(empty), "position 0 has key 0");
    append_ok(
        &store,
        batch(&s, ExpectedVersion::NoStream, ids.small(3)),
        "append 1",
    )
    .await;
    assert_ne!(
        key_at(2).await,
        key_at(3).await,
        "fingerprints tell events apart"
    );
    let first = Saved {
        position: 3,
        event_key: key_at(3).await,
        bytes: b"{\"state\":1}".to_vec(),
    };
    call("save_snapshot", store.save_snapshot("fleet", first.clone()))
        .await
        .unwrap_or_else(|e| panic!("saving a snapshot at the head failed: {e}"));
    assert_eq!(
        load("fleet").await,
        Some(first.clone()),
        "a saved snapshot reads back"
    );
    assert_eq!(load("other").await, None, "snapshots are kept per name");

    let past = Saved {
        position: 4,
        event_key: 0,
        bytes: vec![1],
    };
    assert!(
        call("save_snapshot", store.save_snapshot("fleet", past))
            .await
            .is_err(),
        "a snapshot past the feed head must be refused"
    );
    let foreign = Saved {
        position: 3,
        event_key: key_at(2).await,
        bytes: vec![2],
    };
    assert!(
        call("save_snapshot", store.save_snapshot("fleet", foreign))
            .await
            .is_err(),
        "a snapshot keyed to another event than the one at its position must be refused"
    );
    assert_eq!(
        load("fleet").await,
        Some(first),
        "a refused save changes nothing"
    );

    append_ok(
        &store,
        batch(&s, ExpectedVersion::Exact(3), ids.small(2)),
        "append 2",
    )
    .await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let second = Saved {
        position: 5,
        event_key: key_at(5).await,
        bytes: big,
    };
    call(
        "save_snapshot",
        store.save_snapshot("fleet", second.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("replacing a snapshot failed: {e}"));
    assert_eq!(
        load("fleet").await,
        Some(second),
        "a later save replaces the snapshot"
    );

    call("delete_snapshot", store.delete_snapshot("fleet"))
        .await
        .unwrap_or_else(|e| panic!("delete_snapshot failed: {e}"));
    assert_eq!(load("fleet").await, None, "a deleted snapshot is gone");
    call("delete_snapshot", store.delete_snapshot("fleet"))
        .await
        .unwrap_or_else(|e| panic!("deleting a missing snapshot must succeed: {e}"));
    assert!(load("empty").await.is_some(), "deleting is per name");
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

/// One stream of 100,000 events appended 1,000 at a time, read back whole through
/// `read_stream` and `read_all` paging, with every version, position and event id checked.
pub async fn large_stream<S: EventStore>(store: S) {
    let ids = Ids::default();
    let s = stream("large/one");
    let mut expected_ids = Vec::with_capacity(LARGE_STREAM_EVENTS as usize);
    let mut v = 0;
    while v < LARGE_STREAM_EVENTS {
        let events = ids.small(LARGE_STREAM_BATCH);
        expected_ids.extend(events.iter().map(|e| e.event_id));
        let expected = ExpectedVersion::from_current((v > 0).then_some(v));
        let got = append_ok(&store, batch(&s, expected, events), "large stream append").await;
        let n = v + LARGE_STREAM_BATCH;
        assert_eq!(
            got,
            appended(v + 1, n, &[(&s, n)]),
            "append of events {}..={n} to the large stream",
            v + 1
        );
        v = n;
    }
    assert_eq!(
        version(&store, &s).await,
        Some(LARGE_STREAM_EVENTS),
        "large stream version"
    );
    assert_eq!(
        head(&store).await,
        LARGE_STREAM_EVENTS,
        "head after the large stream"
    );

    // Pages that do not divide the batches, so pages straddle batch boundaries.
    const STREAM_PAGE: usize = 4_093;
    let mut from = 1;
    loop {
        let page = read_stream(&store, &s, from, STREAM_PAGE).await;
        if page.is_empty() {
            break;
        }
        assert!(
            page.len() <= STREAM_PAGE,
            "read_stream returned more than its limit"
        );
        for e in &page {
            assert_eq!(
                (e.stream_version, e.position),
                (from, from),
                "large stream: version and position at version {from}"
            );
            assert_eq!(
                Some(&e.event_id),
                expected_ids.get((from - 1) as usize),
                "large stream: event id at version {from}"
            );
            from += 1;
        }
    }
    assert_eq!(
        from - 1,
        LARGE_STREAM_EVENTS,
        "events read back through read_stream"
    );

    let mut from = 1;
    loop {
        let page = read_all(&store, from, 10_007).await;
        if page.is_empty() {
            break;
        }
        for e in &page {
            assert_eq!(e.position, from, "large stream: read_all position");
            assert_eq!(
                Some(&e.event_id),
                expected_ids.get((from - 1) as usize),
                "large stream: event id at position {from}"
            );
            from += 1;
        }
    }
    assert_eq!(
        from - 1,
        LARGE_STREAM_EVENTS,
        "events read back through read_all"
    );
}

// ---- helpers: deterministic inputs ------------------------------------------------------------

/// A source of deterministic, distinct event ids for one case (shared by its tasks).
#[derive(Debug, Default)]
struct Ids {
    next: AtomicU64,
}

impl Ids {
    /// An event with a fresh id and no correlation.
    fn new_event(&self, event: Event) -> NewEvent {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let recorded_at = event_time(&event);
        NewEvent::new(event_id(seq, recorded_at), event, recorded_at)
    }

    /// `n` small events of alternating kinds.
    fn small(&self, n: u64) -> Vec<NewEvent> {
        (0..n)
            .map(|_| {
                let seq = self.next.fetch_add(1, Ordering::Relaxed);
                NewEvent::new(event_id(seq, at(seq)), small_event(seq), at(seq))
            })
            .collect()
    }
}

/// A UUIDv7 made of the event's time and a sequence number instead of random bits.
fn event_id(seq: u64, at: Timestamp) -> Uuid {
    // The builder overwrites the top two bits of byte 2 with the variant; sequence numbers stay
    // far below 2^62, so distinct numbers give distinct ids.
    let mut bytes = [0u8; 10];
    bytes[2..].copy_from_slice(&seq.to_be_bytes());
    Builder::from_unix_timestamp_millis(at.as_millis(), &bytes).into_uuid()
}

/// An empty event list, typed for comparisons.
fn none() -> Vec<StoredEvent> {
    Vec::new()
}

/// A small event: a command time-out or one thing joining a group.
fn small_event(seq: u64) -> Event {
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
fn command_sent(seq: u64) -> Event {
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
fn event_time(event: &Event) -> Timestamp {
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
fn at(n: u64) -> Timestamp {
    Timestamp::from_millis(EPOCH_MS + n)
}

/// Parses a fixed, valid identifier of the suite.
fn parse_id<T>(s: &str) -> T
where
    T: TryFrom<String>,
    T::Error: Display,
{
    T::try_from(s.to_owned()).unwrap_or_else(|e| panic!("conformance id {s:?} is invalid: {e}"))
}

/// A custom stream `x/conformance/{name}`.
fn stream(name: &str) -> StreamId {
    let name = format!("conformance/{name}");
    StreamId::custom(&name)
        .unwrap_or_else(|e| panic!("conformance stream {name:?} is invalid: {e}"))
}

/// A single-stream batch.
fn batch(stream: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendBatch {
    AppendBatch::single(stream.clone(), expected, events)
}

/// The `Appended` the contract demands.
fn appended(first: u64, last: u64, versions: &[(&StreamId, u64)]) -> Appended {
    Appended {
        first_position: first,
        last_position: last,
        versions: versions.iter().map(|(s, v)| ((*s).clone(), *v)).collect(),
    }
}

/// The envelope the contract demands for `new` stored at `version` / `position`.
fn stored(
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

// ---- helpers: talking to the store -----------------------------------------------------------

/// Awaits one store call, failing the case if it takes longer than [`PATIENCE`].
async fn call<T>(step: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{step}: the store did not answer within {PATIENCE:?}"),
    }
}

/// Unwraps a result the contract says must be a success.
#[track_caller]
fn must<T>(result: Result<T, StoreError>, step: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{step}: the store failed: {e} ({e:?})"),
    }
}

async fn append_ok<S: EventStore + ?Sized>(store: &S, batch: AppendBatch, step: &str) -> Appended {
    must(call(step, store.append(batch)).await, step)
}

async fn append_err<S: EventStore + ?Sized>(
    store: &S,
    batch: AppendBatch,
    step: &str,
) -> StoreError {
    match call(step, store.append(batch)).await {
        Ok(got) => panic!("{step}: the store accepted a batch it must refuse: {got:?}"),
        Err(e) => e,
    }
}

/// Appends a batch that must fail with exactly `Conflict { stream, expected, actual }` and
/// checks that nothing observable changed.
async fn expect_conflict<S: EventStore + ?Sized>(
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

async fn version<S: EventStore + ?Sized>(store: &S, stream: &StreamId) -> Option<u64> {
    let step = format!("stream_version({stream})");
    must(call(&step, store.stream_version(stream)).await, &step)
}

async fn head<S: EventStore + ?Sized>(store: &S) -> u64 {
    must(
        call("head_position", store.head_position()).await,
        "head_position",
    )
}

async fn read_all<S: EventStore + ?Sized>(store: &S, from: u64, limit: usize) -> Vec<StoredEvent> {
    let step = format!("read_all({from}, {limit})");
    let page = must(call(&step, store.read_all(from, limit)).await, &step);
    assert!(page.len() <= limit, "{step} returned {} events", page.len());
    page
}

async fn read_stream<S: EventStore + ?Sized>(
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
async fn read_all_paged<S: EventStore + ?Sized>(store: &S) -> Vec<StoredEvent> {
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
async fn read_stream_paged<S: EventStore + ?Sized>(
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

async fn subscribe<S: EventStore + ?Sized>(store: &S, from: u64) -> Box<dyn Subscription> {
    let step = format!("subscribe({from})");
    must(call(&step, store.subscribe(from)).await, &step)
}

async fn next_event(sub: &mut dyn Subscription, step: &str) -> StoredEvent {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => panic!("{step}: the subscription failed: {e} ({e:?})"),
        Err(_) => panic!("{step}: no event within {PATIENCE:?}"),
    }
}

/// Reads a subscription from `from` until position `until`, checking each step.
async fn collect(
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
async fn expect_quiet(sub: &mut dyn Subscription, who: &str) {
    if let Ok(got) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{who}: delivered an event past the head: {got:?}");
    }
}

/// Awaits spawned tasks in order, re-raising a task's panic with its own message.
async fn join<T>(handles: Vec<JoinHandle<T>>, what: &str) -> Vec<T> {
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

// ---- helpers: checking observable state -------------------------------------------------------

/// What a reader can see: the head, the whole feed and the versions of some streams.
#[derive(Debug, PartialEq)]
struct Snapshot {
    head: u64,
    feed: Vec<StoredEvent>,
    versions: Vec<(StreamId, Option<u64>)>,
}

async fn snapshot<S: EventStore + ?Sized>(store: &S, streams: &[StreamId]) -> Snapshot {
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

fn assert_unchanged(before: &Snapshot, after: &Snapshot, step: &str) {
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

/// Positions run 1, 2, 3… with no gap or repeat.
fn assert_positions_from_one(feed: &[StoredEvent], what: &str) {
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
async fn assert_stream_consistent<S: EventStore + ?Sized>(
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
