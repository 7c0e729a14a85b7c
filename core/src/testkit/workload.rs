//! The workload of the store benchmarks, shared so that every store is measured on the same
//! events, batches and concurrency: what a rollout and devices append, built outside the
//! timed sections, and a recorder of the figures a run reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use crate::event::{Event, StepTimer};
use crate::ids::{JobId, StreamId, ThingName};
use crate::status::JobExecutionStatus;
use crate::store::{AppendBatch, ExpectedVersion, NewEvent};
use crate::time::{Duration as CoreDuration, Timestamp};

/// Recorded values (events per second, ratios, group sizes), by name.
#[derive(Default)]
pub struct Recorder(Mutex<BTreeMap<String, Vec<f64>>>);

impl Recorder {
    /// Adds a value under `name`.
    pub fn record(&self, name: &str, value: f64) {
        let mut map = self.0.lock().unwrap();
        map.entry(name.to_owned()).or_default().push(value);
    }

    /// The median of every recorded value but the first (a cold start).
    pub fn median(&self, name: &str) -> Option<f64> {
        let map = self.0.lock().unwrap();
        let all = map.get(name)?;
        let mut v = all[usize::from(all.len() > 1)..].to_vec();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

/// The job every workload event belongs to.
pub fn job() -> JobId {
    JobId::parse("bench-job").unwrap()
}

/// The event a rollout appends in bulk.
pub fn queued(n: u64) -> NewEvent {
    let at = Timestamp::from_millis(1_700_000_000_000 + n);
    NewEvent::new(
        Uuid::from_u64_pair(0x0190_0000_0000_7000, n),
        Event::ExecutionQueued {
            job_id: job(),
            thing: ThingName::parse(&format!("thing-{n}")).unwrap(),
            execution_number: 1,
            queued_at: at,
            in_progress_timeout: Some(CoreDuration::from_minutes(30)),
        },
        at,
    )
}

/// A mix of execution events for the read benchmarks.
pub fn mixed(n: u64) -> NewEvent {
    let at = Timestamp::from_millis(1_700_000_000_000 + n);
    let event = match n % 3 {
        0 => return queued(n),
        1 => Event::ExecutionStarted {
            at,
            status_details: None,
            in_progress_deadline: Some(at + CoreDuration::from_minutes(30)),
            step: StepTimer::Unchanged,
        },
        _ => Event::ExecutionFinished {
            status: JobExecutionStatus::Succeeded,
            at,
            status_details: None,
        },
    };
    NewEvent::new(Uuid::from_u64_pair(0x0190_0000_0000_7000, n), event, at)
}

/// The execution stream of the `n`-th thing of [`job`].
pub fn exec_stream(n: u64) -> StreamId {
    StreamId::job_execution(&job(), &ThingName::parse(&format!("thing-{n}")).unwrap())
}

/// The batches one appender sends in one timed run.
pub fn build_batches(events_per_append: u64, appends: u64, unique: &AtomicU64) -> Vec<AppendBatch> {
    let id = unique.fetch_add(1, Ordering::Relaxed);
    if events_per_append == 1 {
        // One event creating a new stream, like queuing one execution.
        (0..appends)
            .map(|_| {
                let n = unique.fetch_add(1, Ordering::Relaxed);
                AppendBatch::single(exec_stream(n), ExpectedVersion::NoStream, vec![queued(n)])
            })
            .collect()
    } else {
        // 100 events on one stream with exact expectations, like a busy aggregate.
        let stream = StreamId::custom(&format!("bench/{id}")).unwrap();
        (0..appends)
            .map(|i| {
                let expected = if i == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(i * events_per_append)
                };
                let events = (0..events_per_append)
                    .map(|_| queued(unique.fetch_add(1, Ordering::Relaxed)))
                    .collect();
                AppendBatch::single(stream.clone(), expected, events)
            })
            .collect()
    }
}

/// Appends per appender per timed run, so each run writes a few thousand events at least.
pub fn appends_per_task(events_per_append: u64, appenders: u64) -> u64 {
    match (events_per_append, appenders) {
        (1, 1) => 300,
        (1, 16) => 60,
        (1, _) => 10,
        (_, 1) => 40,
        (_, 16) => 6,
        _ => 1,
    }
}

/// Events per second of `events` appended or read in `d`.
pub fn rate(events: u64, d: Duration) -> f64 {
    // Event counts stay far below 2^53.
    #[allow(clippy::cast_precision_loss)]
    let events = events as f64;
    events / d.as_secs_f64()
}
