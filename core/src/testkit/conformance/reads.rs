//! Round trips: what the reads return after appends, envelope by envelope, page by page, up
//! to a stream of 100,000 events.

use serde_json::json;
use uuid::Uuid;

use crate::event::{Event, StatusDetails, StepTimer};
use crate::ids::{ExecutionId, GroupName, JobId, StatusDetailKey, StreamId, ThingName};
use crate::status::{CommandStatus, JobExecutionStatus};
use crate::store::{AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, NewEvent};
use crate::time::Duration;

use super::calls::{append_ok, head, read_all, read_stream, version};
use super::inputs::{appended, at, batch, command_sent, none, parse_id, stored, stream, Ids};

/// Number of events in [`large_stream`].
const LARGE_STREAM_EVENTS: u64 = 100_000;
/// Events per append in [`large_stream`].
const LARGE_STREAM_BATCH: u64 = 1_000;

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
