//! Append throughput of `MemoryStore`, in events per second.
//!
//! Each benchmark times only the `append` calls, through the `EventStore` trait as the service
//! uses it: the batches are built beforehand, in untimed chunks, and a fresh store replaces the
//! current one (untimed) once it holds [`STORE_CAP`] events, so a long run neither measures
//! event construction nor grows memory without bound.
//!
//! The events are `ExecutionQueued`, the event a rollout appends in bulk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent};
use fleetops_core::{Event, JobId, StreamId, ThingName, Timestamp};
use fleetops_store_memory::MemoryStore;
use tokio::runtime::{Builder, Runtime};
use uuid::Uuid;

/// Events a store may hold before the benchmark starts a fresh one.
const STORE_CAP: u64 = 1_000_000;
/// Events built ahead per untimed chunk.
const CHUNK_EVENTS: u64 = 50_000;

/// What one append looks like.
#[derive(Clone, Copy)]
enum Shape {
    /// One event creating a new stream (`NoStream`), like sending a command.
    NewStreamEach,
    /// `events` events on one stream, `Exact(current)`, like a busy aggregate.
    OneStream { events: u64 },
    /// `streams` new streams with `per_stream` events each, like a rollout chunk.
    ManyStreams { streams: u64, per_stream: u64 },
}

impl Shape {
    fn events_per_append(self) -> u64 {
        match self {
            Shape::NewStreamEach => 1,
            Shape::OneStream { events } => events,
            Shape::ManyStreams {
                streams,
                per_stream,
            } => streams * per_stream,
        }
    }
}

/// Builds the batches of one writer, tracking the versions its expectations need.
struct Workload {
    shape: Shape,
    writer: u64,
    /// Version of the single stream of `OneStream` in the current store.
    version: u64,
    /// Counter making stream names unique within a store.
    next_stream: u64,
    job: JobId,
}

impl Workload {
    fn new(shape: Shape, writer: u64) -> Self {
        Self {
            shape,
            writer,
            version: 0,
            next_stream: 0,
            job: JobId::parse("bench-job").expect("valid job id"),
        }
    }

    /// Forgets the streams of the previous store.
    fn reset(&mut self) {
        self.version = 0;
        self.next_stream = 0;
    }

    fn event(&self, n: u64) -> NewEvent {
        let at = Timestamp::from_millis(1_700_000_000_000 + n);
        let thing = ThingName::parse(&format!("thing-{}-{n}", self.writer)).expect("valid thing");
        NewEvent::new(
            Uuid::now_v7(),
            Event::ExecutionQueued {
                job_id: self.job.clone(),
                thing,
                execution_number: 1,
                queued_at: at,
                in_progress_timeout: None,
            },
            at,
        )
    }

    fn fresh_stream(&mut self) -> StreamId {
        self.next_stream += 1;
        StreamId::custom(&format!("bench/{}/{}", self.writer, self.next_stream))
            .expect("valid stream")
    }

    fn batch(&mut self) -> AppendBatch {
        match self.shape {
            Shape::NewStreamEach => {
                let s = self.fresh_stream();
                AppendBatch::single(s, ExpectedVersion::NoStream, vec![self.event(0)])
            }
            Shape::OneStream { events } => {
                let s =
                    StreamId::custom(&format!("bench/{}/one", self.writer)).expect("valid stream");
                let expected =
                    ExpectedVersion::from_current((self.version > 0).then_some(self.version));
                let batch =
                    AppendBatch::single(s, expected, (0..events).map(|i| self.event(i)).collect());
                self.version += events;
                batch
            }
            Shape::ManyStreams {
                streams,
                per_stream,
            } => {
                let mut batch = AppendBatch::default();
                for _ in 0..streams {
                    let s = self.fresh_stream();
                    let events = (0..per_stream).map(|i| self.event(i)).collect();
                    batch = batch.with(s, ExpectedVersion::NoStream, events);
                }
                batch
            }
        }
    }
}

/// Times `iters` appends of `shape` by `writers` concurrent tasks (each doing its share) on
/// `rt`, returning only the time spent appending.
fn timed_appends(rt: &Runtime, shape: Shape, writers: u64, iters: u64) -> Duration {
    let per_append = shape.events_per_append();
    let per_chunk = (CHUNK_EVENTS / per_append / writers).max(1);
    let mut workloads: Vec<Workload> = (0..writers).map(|w| Workload::new(shape, w)).collect();
    let mut store = Arc::new(MemoryStore::new());
    let mut held = 0;
    let mut done = 0;
    let mut elapsed = Duration::ZERO;
    while done < iters {
        let n = per_chunk.min((iters - done).div_ceil(writers));
        if held + n * writers * per_append > STORE_CAP {
            store = Arc::new(MemoryStore::new());
            held = 0;
            workloads.iter_mut().for_each(Workload::reset);
        }
        let chunks: Vec<Vec<AppendBatch>> = workloads
            .iter_mut()
            .map(|w| (0..n).map(|_| w.batch()).collect())
            .collect();
        let start = Instant::now();
        rt.block_on(async {
            let tasks: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for batch in chunk {
                            store.append(batch).await.expect("benchmark append");
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("benchmark writer");
            }
        });
        elapsed += start.elapsed();
        held += n * writers * per_append;
        done += n * writers;
    }
    // Scale to the requested count: the last chunk may round up by at most `writers - 1`.
    elapsed.mul_f64(iters as f64 / done as f64)
}

fn appends(c: &mut Criterion) {
    let single = Builder::new_current_thread().build().expect("runtime");
    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");

    let mut group = c.benchmark_group("store-memory/append");
    let cases: [(&str, Shape, u64, &Runtime); 6] = [
        ("single_event/new_stream", Shape::NewStreamEach, 1, &single),
        (
            "single_event/one_stream",
            Shape::OneStream { events: 1 },
            1,
            &single,
        ),
        (
            "single_event/new_stream/2_writers",
            Shape::NewStreamEach,
            2,
            &multi,
        ),
        (
            "batch_1000/one_stream",
            Shape::OneStream { events: 1_000 },
            1,
            &single,
        ),
        (
            "batch_1000/100_streams_x_10",
            Shape::ManyStreams {
                streams: 100,
                per_stream: 10,
            },
            1,
            &single,
        ),
        (
            "batch_1000/one_stream/2_writers",
            Shape::OneStream { events: 1_000 },
            2,
            &multi,
        ),
    ];
    for (name, shape, writers, rt) in cases {
        group.throughput(Throughput::Elements(shape.events_per_append()));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| timed_appends(rt, shape, writers, iters))
        });
    }
    group.finish();
}

/// `criterion_group!` generates an undocumented public function; keep the allowance to it.
#[allow(missing_docs)]
mod harness {
    criterion::criterion_group!(benches, super::appends);
}

criterion_main!(harness::benches);
