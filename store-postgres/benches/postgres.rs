//! `PostgresStore` beside `SledStore` doing the same work, in one run.
//!
//! - **append**: 1 or 100 events per append, 1, 16 or 256 concurrent appenders, through the
//!   `EventStore` trait. PostgreSQL runs with `fsync`, `synchronous_commit` and
//!   `full_page_writes` on (its defaults: every acknowledged group is flushed to disk);
//!   sled with `Durability::FlushEveryBatch`.
//! - **read_stream**: one 10,000-event stream whose appends are interleaved with other
//!   streams, read whole in pages of 1,000.
//! - **replay**: the whole feed (100,000 events) through `read_all` pages of 10,000.
//!
//! Paired: every timed iteration of the PostgreSQL store (what criterion reports) is followed
//! by the same work on sled, and the summary prints the medians of both rates and of the
//! per-pair ratios, so the shared machine's swings hit both alike. Both stores live on the same
//! file system (temporary directories). The summary also prints the rows (events) per second
//! appended and the mean group size.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion};
use fleetops_core::testkit::workload::{appends_per_task, build_batches, mixed, rate, Recorder};
use fleetops_core::StreamId;
use fleetops_store_postgres::testing::{TestPostgres, TestPostgresOptions};
use fleetops_store_sled::{Durability, SledConfig, SledStore};
use tokio::runtime::Runtime;

const SAMPLES: usize = 10;
const REPLAY_EVENTS: u64 = 100_000;
const STREAM_EVENTS: u64 = 10_000;

/// Runs every appender's batches concurrently on `store`; returns the wall time.
async fn append_all<S: EventStore>(store: &Arc<S>, work: Vec<Vec<AppendBatch>>) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|batches| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                for batch in batches {
                    store.append(batch).await.expect("append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

fn bench_appends(
    c: &mut Criterion,
    rt: &Runtime,
    pg: &TestPostgres,
    rec: &Arc<Recorder>,
) -> Vec<String> {
    let mut labels = Vec::new();
    for (events_per_append, appenders) in
        [(1, 1), (1, 16), (1, 256), (100, 1), (100, 16), (100, 256)]
    {
        let per_task = appends_per_task(events_per_append, appenders);
        let events = events_per_append * appenders * per_task;
        let label = format!("append/{events_per_append}ev/{appenders}c");
        labels.push(label.clone());
        let mut group = c.benchmark_group(&label);
        group
            .throughput(Throughput::Elements(events))
            .sample_size(SAMPLES)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(3));

        let store = Arc::new(rt.block_on(pg.fresh_store()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let sled = Arc::new(
            rt.block_on(SledStore::open_async(
                SledConfig::new(dir.path()).durability(Durability::FlushEveryBatch),
            ))
            .unwrap(),
        );
        let unique = Arc::new(AtomicU64::new(0));
        group.bench_function("postgres", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (store, sled, unique, rec, label) = (
                    Arc::clone(&store),
                    Arc::clone(&sled),
                    Arc::clone(&unique),
                    Arc::clone(rec),
                    label.clone(),
                );
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let work: Vec<Vec<AppendBatch>> = (0..appenders)
                            .map(|_| build_batches(events_per_append, per_task, &unique))
                            .collect();
                        let baseline = work.clone();
                        let before = store.writer_stats();
                        let elapsed = append_all(&store, work).await;
                        total += elapsed;
                        let after = store.writer_stats();
                        let groups = (after.groups - before.groups).max(1);
                        let sled_elapsed = append_all(&sled, baseline).await;
                        let p = rate(events, elapsed);
                        let s = rate(events, sled_elapsed);
                        rec.record(&format!("{label}/postgres"), p);
                        rec.record(&format!("{label}/sled"), s);
                        rec.record(&format!("{label}/ratio"), p / s);
                        rec.record(
                            &format!("{label}/appends-per-group"),
                            (appenders * per_task) as f64 / groups as f64,
                        );
                    }
                    total
                }
            })
        });
        group.finish();
    }
    labels
}

/// Fills a store with the read benchmarks' data: the target stream in appends of 100,
/// interleaved with appends to other streams, then filler up to [`REPLAY_EVENTS`].
async fn fill<S: EventStore>(store: &S, target: &StreamId) {
    let mut n = 0u64;
    let mut written = 0u64;
    let mut version = 0u64;
    while written < REPLAY_EVENTS {
        if version < STREAM_EVENTS {
            let events: Vec<_> = (0..100).map(|i| mixed(n + i)).collect();
            n += 100;
            store
                .append(AppendBatch::single(
                    target.clone(),
                    ExpectedVersion::from_current((version > 0).then_some(version)),
                    events,
                ))
                .await
                .unwrap();
            version += 100;
            written += 100;
        }
        let other = StreamId::custom(&format!("bench/other/{n}")).unwrap();
        let events: Vec<_> = (0..500).map(|i| mixed(n + i)).collect();
        n += 500;
        store
            .append(AppendBatch::single(
                other,
                ExpectedVersion::NoStream,
                events,
            ))
            .await
            .unwrap();
        written += 500;
    }
}

async fn read_whole_stream<S: EventStore>(store: &S, target: &StreamId) -> u64 {
    let mut from = 1;
    loop {
        let page = store.read_stream(target, from, 1000).await.unwrap();
        if page.is_empty() {
            return from - 1;
        }
        from += page.len() as u64;
    }
}

async fn replay<S: EventStore>(store: &S) -> u64 {
    let mut from = 1;
    loop {
        let page = store.read_all(from, 10_000).await.unwrap();
        if page.is_empty() {
            return from - 1;
        }
        from += page.len() as u64;
    }
}

fn bench_reads(c: &mut Criterion, rt: &Runtime, pg: &TestPostgres, rec: &Arc<Recorder>) {
    let target = StreamId::custom("bench/reader").unwrap();
    let store = Arc::new(rt.block_on(pg.fresh_store()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(
        rt.block_on(SledStore::open_async(SledConfig::new(dir.path())))
            .unwrap(),
    );
    rt.block_on(async {
        fill(&*store, &target).await;
        fill(&*sled, &target).await;
    });

    let mut group = c.benchmark_group("read_stream");
    group
        .throughput(Throughput::Elements(STREAM_EVENTS))
        .sample_size(SAMPLES)
        .measurement_time(Duration::from_secs(3));
    group.bench_function("postgres", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, sled, rec, target) = (
                Arc::clone(&store),
                Arc::clone(&sled),
                Arc::clone(rec),
                target.clone(),
            );
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    assert_eq!(read_whole_stream(&*store, &target).await, STREAM_EVENTS);
                    let p = t.elapsed();
                    total += p;
                    let t = Instant::now();
                    assert_eq!(read_whole_stream(&*sled, &target).await, STREAM_EVENTS);
                    let s = t.elapsed();
                    rec.record("read_stream/postgres", rate(STREAM_EVENTS, p));
                    rec.record("read_stream/sled", rate(STREAM_EVENTS, s));
                    rec.record(
                        "read_stream/ratio",
                        rate(STREAM_EVENTS, p) / rate(STREAM_EVENTS, s),
                    );
                }
                total
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("replay");
    group
        .throughput(Throughput::Elements(REPLAY_EVENTS))
        .sample_size(SAMPLES)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("postgres", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, sled, rec) = (Arc::clone(&store), Arc::clone(&sled), Arc::clone(rec));
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let n = replay(&*store).await;
                    let p = t.elapsed();
                    total += p;
                    let t = Instant::now();
                    assert_eq!(replay(&*sled).await, n);
                    let s = t.elapsed();
                    rec.record("replay/postgres", rate(n, p));
                    rec.record("replay/sled", rate(n, s));
                    rec.record("replay/ratio", rate(n, p) / rate(n, s));
                }
                total
            }
        })
    });
    group.finish();
}

fn main() {
    let Some(pg) = TestPostgres::start_or_skip_with(TestPostgresOptions {
        durable: true,
        ..TestPostgresOptions::default()
    }) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let mut c = Criterion::default().configure_from_args();
    let labels = bench_appends(&mut c, &rt, &pg, &rec);
    bench_reads(&mut c, &rt, &pg, &rec);
    c.final_summary();

    let k = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let r = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!("\nSummary (medians of paired iterations; events/s; ratio = postgres / sled):");
    println!("| case | postgres | sled | ratio | appends per transaction |");
    println!("|---|---|---|---|---|");
    for label in labels
        .iter()
        .map(String::as_str)
        .chain(["read_stream", "replay"])
    {
        println!(
            "| {label} | {} | {} | {} | {} |",
            k(rec.median(&format!("{label}/postgres"))),
            k(rec.median(&format!("{label}/sled"))),
            r(rec.median(&format!("{label}/ratio"))),
            r(rec.median(&format!("{label}/appends-per-group"))),
        );
    }
    let best = labels
        .iter()
        .filter_map(|l| rec.median(&format!("{l}/postgres")))
        .fold(0.0, f64::max);
    println!("\nrows appended per second (best case above, events = rows of `events`): {best:.0}");
}
