//! Projections: atomic writes with a checkpoint, compare-and-set, and an example projector
//! that maintains the indexes the service needs (executions by job, by thing and by status,
//! due deadlines, per-status counters) from the feed, exactly once across restarts.

mod common;

use common::{event, stream};
use fleetops_core::event::{Event, StepTimer};
use fleetops_core::ids::{JobId, StreamId, ThingName};
use fleetops_core::status::JobExecutionStatus;
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent, StoredEvent};
use fleetops_core::time::Timestamp;
use fleetops_store_sled::{ProjectionBatch, ProjectionError, SledConfig, SledStore};
use uuid::Uuid;

async fn open(dir: &tempfile::TempDir) -> SledStore {
    SledStore::open_async(SledConfig::new(dir.path()))
        .await
        .expect("open")
}

async fn append_n(store: &SledStore, n: u128) {
    for i in 0..n {
        store
            .append(AppendBatch::single(
                stream("p"),
                ExpectedVersion::Any,
                vec![event(i, "p")],
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_checkpoint_are_stored_together_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        append_n(&store, 5).await;
        let p = store.projection("demo").unwrap();
        assert_eq!(p.checkpoint().await.unwrap(), 0);
        let mut batch = ProjectionBatch::new();
        batch
            .put(b"k/1".to_vec(), b"one".to_vec())
            .put(b"k/2".to_vec(), b"two".to_vec());
        p.apply(0, 3, batch).await.unwrap();
        let mut batch = ProjectionBatch::new();
        batch
            .delete(b"k/1".to_vec())
            .put(b"k/3".to_vec(), b"three".to_vec());
        p.apply(3, 5, batch).await.unwrap();
    }
    let store = open(&dir).await;
    let p = store.projection("demo").unwrap();
    assert_eq!(p.checkpoint().await.unwrap(), 5);
    assert_eq!(p.get(b"k/1").await.unwrap(), None);
    assert_eq!(p.get(b"k/2").await.unwrap(), Some(b"two".to_vec()));
    assert_eq!(
        p.scan_prefix(b"k/", 10).await.unwrap(),
        vec![
            (b"k/2".to_vec(), b"two".to_vec()),
            (b"k/3".to_vec(), b"three".to_vec())
        ]
    );
    assert_eq!(p.scan_range(b"k/3", b"k/4", 10).await.unwrap().len(), 1);
    // Another projection is a separate space.
    let other = store.projection("other").unwrap();
    assert_eq!(other.checkpoint().await.unwrap(), 0);
    assert!(other.scan_prefix(b"", 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_updates_write_nothing() {
    let store = SledStore::open_temporary().unwrap();
    append_n(&store, 3).await;
    let p = store.projection("cas").unwrap();
    let batch = || {
        let mut b = ProjectionBatch::new();
        b.put(b"x".to_vec(), b"1".to_vec());
        b
    };
    p.apply(0, 2, batch()).await.unwrap();
    assert_eq!(
        p.apply(0, 3, batch()).await,
        Err(ProjectionError::CheckpointMismatch {
            name: "cas".into(),
            expected: 0,
            actual: 2
        }),
        "an update computed from a stale checkpoint is refused"
    );
    assert_eq!(
        p.apply(2, 4, batch()).await,
        Err(ProjectionError::BeyondHead {
            checkpoint: 4,
            head: 3
        })
    );
    assert_eq!(
        p.apply(2, 1, batch()).await,
        Err(ProjectionError::Backwards { from: 2, to: 1 })
    );
    assert_eq!(p.checkpoint().await.unwrap(), 2);
    assert!(matches!(
        store.projection("no/slash"),
        Err(ProjectionError::InvalidName { .. })
    ));
}

// ---- an example projector ------------------------------------------------------------------

fn exec_stream(job: &str, thing: &str) -> StreamId {
    StreamId::job_execution(
        &JobId::parse(job).unwrap(),
        &ThingName::parse(thing).unwrap(),
    )
}

fn ne(n: u128, event: Event) -> NewEvent {
    NewEvent::new(Uuid::from_u128(n), event, Timestamp::from_millis(n as u64))
}

/// Index keys. `/` never occurs in job ids or thing names, so the parts cannot run together.
fn by_job(job: &str, thing: &str) -> Vec<u8> {
    format!("job/{job}/{thing}").into_bytes()
}
fn by_thing(thing: &str, job: &str) -> Vec<u8> {
    format!("thing/{thing}/{job}").into_bytes()
}
fn by_status(status: JobExecutionStatus, job: &str, thing: &str) -> Vec<u8> {
    format!("status/{}/{job}/{thing}", status.as_str()).into_bytes()
}
fn due(at: Timestamp, stream: &StreamId) -> Vec<u8> {
    let mut k = b"due/".to_vec();
    k.extend_from_slice(&at.as_millis().to_be_bytes());
    k.extend_from_slice(stream.as_str().as_bytes());
    k
}
fn counter(job: &str, status: JobExecutionStatus) -> Vec<u8> {
    format!("count/{job}/{}", status.as_str()).into_bytes()
}

/// Derives the index writes of one chunk of the feed. Counters are read-modify-write, which
/// is only correct if every event is applied exactly once: that is what the test checks.
async fn project(p: &fleetops_store_sled::Projection, events: &[StoredEvent]) -> ProjectionBatch {
    use std::collections::HashMap;
    let mut batch = ProjectionBatch::new();
    let mut counts: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut status_of: HashMap<(String, String), JobExecutionStatus> = HashMap::new();
    for e in events {
        let Some(status) = e.event.execution_status() else {
            continue;
        };
        let fleetops_core::ids::StreamKind::JobExecution(job, thing) = e.stream.kind() else {
            continue;
        };
        let (job, thing) = (job.to_string(), thing.to_string());
        let old = match status_of.get(&(job.clone(), thing.clone())) {
            Some(s) => Some(*s),
            None => p
                .get(&by_job(&job, &thing))
                .await
                .unwrap()
                .map(|v| serde_json::from_slice(&v).unwrap()),
        };
        if let Some(old) = old {
            batch.delete(by_status(old, &job, &thing));
            *counts.entry(counter(&job, old)).or_default() -= 1;
        }
        *counts.entry(counter(&job, status)).or_default() += 1;
        let encoded = serde_json::to_vec(&status).unwrap();
        batch.put(by_job(&job, &thing), encoded.clone());
        batch.put(by_thing(&thing, &job), encoded);
        batch.put(by_status(status, &job, &thing), Vec::new());
        match &e.event {
            Event::ExecutionStarted {
                in_progress_deadline: Some(at),
                ..
            } => {
                batch.put(due(*at, &e.stream), Vec::new());
            }
            Event::ExecutionFinished { .. } => {
                // The example only ever sets deadline 1000 + n; a real projector would keep
                // the deadline in the execution's record to delete it precisely.
                for n in 0..10u64 {
                    batch.delete(due(Timestamp::from_millis(1000 + n), &e.stream));
                }
            }
            _ => {}
        }
        status_of.insert((job, thing), status);
    }
    for (key, delta) in counts {
        let old = p
            .get(&key)
            .await
            .unwrap()
            .map(|v| i64::from_le_bytes(v.try_into().unwrap()))
            .unwrap_or(0);
        batch.put(key, (old + delta).to_le_bytes().to_vec());
    }
    batch
}

/// Catches the projection up with the feed in chunks; stops after `max_chunks` if given
/// (a "crash" between chunks).
async fn catch_up(store: &SledStore, max_chunks: Option<usize>) {
    let p = store.projection("executions").unwrap();
    let mut chunks = 0;
    loop {
        let from = p.checkpoint().await.unwrap();
        let events = store.read_all(from + 1, 3).await.unwrap();
        let Some(last) = events.last() else { return };
        let batch = project(&p, &events).await;
        p.apply(from, last.position, batch).await.unwrap();
        chunks += 1;
        if Some(chunks) == max_chunks {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_maintains_the_service_indexes_exactly_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let q = |job: &str, thing: &str, n| {
        ne(
            n,
            Event::ExecutionQueued {
                job_id: JobId::parse(job).unwrap(),
                thing: ThingName::parse(thing).unwrap(),
                execution_number: 1,
                queued_at: Timestamp::from_millis(1),
                in_progress_timeout: None,
            },
        )
    };
    let started = |n: u128| {
        ne(
            n,
            Event::ExecutionStarted {
                at: Timestamp::from_millis(2),
                status_details: None,
                in_progress_deadline: Some(Timestamp::from_millis(1000 + n as u64 % 10)),
                step: StepTimer::Unchanged,
            },
        )
    };
    let finished = |n| {
        ne(
            n,
            Event::ExecutionFinished {
                status: JobExecutionStatus::Succeeded,
                at: Timestamp::from_millis(3),
                status_details: None,
            },
        )
    };
    {
        let store = open(&dir).await;
        let mut n = 0;
        for thing in ["t1", "t2", "t3"] {
            for job in ["j1", "j2"] {
                n += 1;
                store
                    .append(AppendBatch::single(
                        exec_stream(job, thing),
                        ExpectedVersion::NoStream,
                        vec![q(job, thing, n)],
                    ))
                    .await
                    .unwrap();
            }
        }
        for (job, thing) in [("j1", "t1"), ("j1", "t2"), ("j2", "t3")] {
            n += 1;
            store
                .append(AppendBatch::single(
                    exec_stream(job, thing),
                    ExpectedVersion::Exact(1),
                    vec![started(n)],
                ))
                .await
                .unwrap();
        }
        n += 1;
        store
            .append(AppendBatch::single(
                exec_stream("j1", "t1"),
                ExpectedVersion::Exact(2),
                vec![finished(n)],
            ))
            .await
            .unwrap();
        // Project part of the feed, then "crash".
        catch_up(&store, Some(2)).await;
    }
    {
        // Restart: resume from the stored checkpoint, again interrupted.
        let store = open(&dir).await;
        assert_eq!(
            store
                .projection("executions")
                .unwrap()
                .checkpoint()
                .await
                .unwrap(),
            6
        );
        catch_up(&store, Some(1)).await;
    }
    let store = open(&dir).await;
    catch_up(&store, None).await;
    let p = store.projection("executions").unwrap();
    assert_eq!(
        p.checkpoint().await.unwrap(),
        store.head_position().await.unwrap()
    );

    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    // Executions by job, by thing, by status: prefix scans, no full scan.
    assert_eq!(
        keys(p.scan_prefix(b"job/j1/", 100).await.unwrap()),
        ["job/j1/t1", "job/j1/t2", "job/j1/t3"]
    );
    assert_eq!(
        keys(p.scan_prefix(b"thing/t3/", 100).await.unwrap()),
        ["thing/t3/j1", "thing/t3/j2"]
    );
    assert_eq!(
        keys(p.scan_prefix(b"status/IN_PROGRESS/", 100).await.unwrap()),
        ["status/IN_PROGRESS/j1/t2", "status/IN_PROGRESS/j2/t3"]
    );
    assert_eq!(
        keys(p.scan_prefix(b"status/QUEUED/", 100).await.unwrap()).len(),
        3
    );
    // Deadlines due by a time: a range scan from the start of the space.
    let due_by = |ms: u64| {
        let mut end = b"due/".to_vec();
        end.extend_from_slice(&(ms + 1).to_be_bytes());
        end
    };
    let due_now = p
        .scan_range(b"due/", &due_by(1_000_000), 100)
        .await
        .unwrap();
    assert_eq!(
        due_now.len(),
        2,
        "t1's deadline was removed when it finished"
    );
    // Counters are exact: every event counted once despite two interruptions.
    let count = |job: &'static str, s| {
        let p = p.clone();
        async move {
            p.get(&counter(job, s))
                .await
                .unwrap()
                .map(|v| i64::from_le_bytes(v.try_into().unwrap()))
                .unwrap_or(0)
        }
    };
    use JobExecutionStatus::*;
    assert_eq!(count("j1", Queued).await, 1);
    assert_eq!(count("j1", InProgress).await, 1);
    assert_eq!(count("j1", Succeeded).await, 1);
    assert_eq!(count("j2", Queued).await, 2);
    assert_eq!(count("j2", InProgress).await, 1);
}
