//! `SledStore` beside raw sled doing the same writes, in one run.
//!
//! - **append**: 1 or 100 events per append, 1, 16 or 256 concurrent appenders, through the
//!   `EventStore` trait with [`Durability::FlushEveryBatch`]. Beside it, two raw-sled
//!   baselines writing the same event records (same keys, same value bytes), flushed the same
//!   way:
//!   - `raw-grouped`: one thread writing `apply_batch` batches of the mean size the store's
//!     group commit formed in the paired run, one flush per batch: what sled costs for the
//!     same bytes, batching and flushes, with no store logic at all (the 0.8x target);
//!   - `raw-threads`: the appenders as OS threads, each `apply_batch` + `flush` per append:
//!     what using sled directly from concurrent callers gives.
//! - **read_stream**: one 10,000-event stream whose appends are interleaved with other
//!   streams, read whole; beside raw sled scanning the same records (no decoding).
//! - **replay**: the whole feed (200,000 events) through `read_all` pages of 10,000 and
//!   through a subscription; beside raw sled scanning the same records.
//!
//! The machine is shared and its disk latency and CPU load swing by several times within a
//! minute, so the baselines are **paired**: every timed iteration of the store (what criterion
//! reports) is immediately followed by the raw-sled runs of the same work, and the summary at
//! the end prints the medians of the rates and of the per-pair ratios. Event construction is
//! outside the timed sections. Run time is kept modest (10 samples, short windows).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent};
use fleetops_core::testkit::workload::{
    appends_per_task, build_batches, exec_stream, mixed, queued, rate, Recorder,
};
use fleetops_core::StreamId;
use fleetops_store_sled::internals::{encode_event, TREE_NAME};
use fleetops_store_sled::{Durability, SledConfig, SledStore};
use tokio::runtime::Runtime;

mod common;
use common::cpu_time;

const SAMPLES: usize = 10;
const REPLAY_EVENTS: u64 = 200_000;
const STREAM_EVENTS: u64 = 10_000;

/// The encoded record of a representative event: the value bytes the raw baselines write.
fn record_bytes() -> Vec<u8> {
    let e = queued(123_456);
    encode_event(&exec_stream(123_456), &e, None, 1, 1)
        .unwrap()
        .1
}

fn raw_db(dir: &std::path::Path) -> sled::Tree {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(256 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    db.open_tree(TREE_NAME).unwrap()
}

fn event_key(position: u64) -> [u8; 9] {
    let mut k = [b'E'; 9];
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

/// Raw sled writing `events` records in `apply_batch` batches of `per_batch`, one flush each.
fn raw_grouped(tree: &sled::Tree, next: &AtomicU64, value: &[u8], events: u64, per_batch: u64) {
    let mut left = events;
    while left > 0 {
        let n = left.min(per_batch);
        let mut batch = sled::Batch::default();
        for _ in 0..n {
            let p = next.fetch_add(1, Ordering::Relaxed);
            batch.insert(&event_key(p)[..], value);
        }
        tree.apply_batch(batch).unwrap();
        tree.flush().unwrap();
        left -= n;
    }
}

/// Raw sled from `threads` OS threads, each `appends` times `apply_batch` + `flush`.
fn raw_threads(
    tree: &sled::Tree,
    next: &AtomicU64,
    value: &[u8],
    threads: u64,
    appends: u64,
    per_append: u64,
) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..appends {
                    let mut batch = sled::Batch::default();
                    for _ in 0..per_append {
                        let p = next.fetch_add(1, Ordering::Relaxed);
                        batch.insert(&event_key(p)[..], value);
                    }
                    tree.apply_batch(batch).unwrap();
                    tree.flush().unwrap();
                }
            });
        }
    });
}

fn bench_appends(c: &mut Criterion, rt: &Runtime, rec: &Arc<Recorder>) -> Vec<String> {
    let mut labels = Vec::new();
    let value = Arc::new(record_bytes());
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
            .measurement_time(Duration::from_secs(2));

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            rt.block_on(SledStore::open_async(
                SledConfig::new(dir.path()).durability(Durability::FlushEveryBatch),
            ))
            .unwrap(),
        );
        let raw_dir = tempfile::tempdir().unwrap();
        let raw = raw_db(raw_dir.path());
        let raw_next = Arc::new(AtomicU64::new(1));
        let unique = Arc::new(AtomicU64::new(0));
        group.bench_function("fleetops", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let (store, unique, rec, label) = (
                    Arc::clone(&store),
                    Arc::clone(&unique),
                    Arc::clone(rec),
                    label.clone(),
                );
                let (raw, raw_next, value) =
                    (raw.clone(), Arc::clone(&raw_next), Arc::clone(&value));
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let work: Vec<Vec<AppendBatch>> = (0..appenders)
                            .map(|_| build_batches(events_per_append, per_task, &unique))
                            .collect();
                        let before = store.stats();
                        let start = Instant::now();
                        let tasks: Vec<_> = work
                            .into_iter()
                            .map(|batches| {
                                let store = Arc::clone(&store);
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
                        let elapsed = start.elapsed();
                        total += elapsed;
                        let after = store.stats();
                        let groups = after.groups - before.groups;
                        let per_group = (events / groups.max(1)).max(1);

                        // The paired baselines, off the runtime's workers.
                        let (raw, raw_next, value) =
                            (raw.clone(), Arc::clone(&raw_next), Arc::clone(&value));
                        let (grouped, threads) = tokio::task::spawn_blocking(move || {
                            let t = Instant::now();
                            raw_grouped(&raw, &raw_next, &value, events, per_group);
                            let grouped = t.elapsed();
                            let t = Instant::now();
                            raw_threads(
                                &raw,
                                &raw_next,
                                &value,
                                appenders,
                                per_task,
                                events_per_append,
                            );
                            (grouped, t.elapsed())
                        })
                        .await
                        .unwrap();
                        let f = rate(events, elapsed);
                        rec.record(&format!("{label}/fleetops"), f);
                        rec.record(&format!("{label}/raw-grouped"), rate(events, grouped));
                        rec.record(&format!("{label}/raw-threads"), rate(events, threads));
                        rec.record(&format!("{label}/vs-grouped"), f / rate(events, grouped));
                        rec.record(&format!("{label}/vs-threads"), f / rate(events, threads));
                        rec.record(&format!("{label}/per-group"), per_group as f64);
                    }
                    total
                }
            })
        });
        group.finish();
    }
    labels
}

fn bench_reads(c: &mut Criterion, rt: &Runtime, rec: &Arc<Recorder>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        rt.block_on(SledStore::open_async(SledConfig::new(dir.path())))
            .unwrap(),
    );
    let target = StreamId::custom("bench/reader").unwrap();
    // The 10,000-event stream, in appends of 100 interleaved with appends to other streams, then
    // filler up to REPLAY_EVENTS for the replay benchmark.
    rt.block_on(async {
        let mut n = 0;
        for i in 0..STREAM_EVENTS / 100 {
            let events = (0..100)
                .map(|_| {
                    n += 1;
                    mixed(n)
                })
                .collect();
            let expected = ExpectedVersion::from_current((i > 0).then_some(i * 100));
            store
                .append(AppendBatch::single(target.clone(), expected, events))
                .await
                .unwrap();
            let noise = (0..100)
                .map(|_| {
                    n += 1;
                    mixed(n)
                })
                .collect();
            store
                .append(AppendBatch::single(
                    exec_stream(i),
                    ExpectedVersion::Any,
                    noise,
                ))
                .await
                .unwrap();
        }
        while n < REPLAY_EVENTS {
            let batch = (0..1000)
                .map(|_| {
                    n += 1;
                    mixed(n)
                })
                .collect();
            store
                .append(AppendBatch::single(
                    exec_stream(n % 5000),
                    ExpectedVersion::Any,
                    batch,
                ))
                .await
                .unwrap();
        }
    });
    let head = rt.block_on(store.head_position()).unwrap();
    assert_eq!(head, REPLAY_EVENTS);

    // Raw sled holding the same records: the feed by position, the stream's contiguously.
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = raw_db(raw_dir.path());
    {
        let feed = rt.block_on(store.read_all(1, usize::MAX)).unwrap();
        let mut batch = sled::Batch::default();
        for e in &feed {
            let ne = NewEvent {
                event_id: e.event_id,
                event: e.event.clone(),
                recorded_at: e.recorded_at,
                correlation_id: e.correlation_id,
                causation_id: e.causation_id,
            };
            let (k, v) = encode_event(&e.stream, &ne, None, e.position, e.stream_version).unwrap();
            batch.insert(k.clone(), v.clone());
            if e.stream == target {
                let mut sk = b"S".to_vec();
                sk.extend_from_slice(&e.stream_version.to_be_bytes());
                batch.insert(sk, v);
            }
        }
        raw.apply_batch(batch).unwrap();
        raw.flush().unwrap();
    }
    let raw_stream = {
        let raw = raw.clone();
        move || {
            let t = Instant::now();
            let bytes: usize = raw.scan_prefix(b"S").map(|kv| kv.unwrap().1.len()).sum();
            assert!(bytes > 0);
            t.elapsed()
        }
    };
    let raw_feed = {
        let raw = raw.clone();
        move || {
            let t = Instant::now();
            let bytes: usize = raw
                .range(event_key(1)..=event_key(REPLAY_EVENTS))
                .map(|kv| kv.unwrap().1.len())
                .sum();
            assert!(bytes > 0);
            t.elapsed()
        }
    };

    let mut group = c.benchmark_group("read_stream/10k");
    group
        .throughput(Throughput::Elements(STREAM_EVENTS))
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("fleetops", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, target, rec, raw_stream) = (
                Arc::clone(&store),
                target.clone(),
                Arc::clone(rec),
                raw_stream.clone(),
            );
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let events = store.read_stream(&target, 1, usize::MAX).await.unwrap();
                    let elapsed = t.elapsed();
                    total += elapsed;
                    assert_eq!(events.len() as u64, STREAM_EVENTS);
                    let raw = tokio::task::spawn_blocking(raw_stream.clone())
                        .await
                        .unwrap();
                    let (f, r) = (rate(STREAM_EVENTS, elapsed), rate(STREAM_EVENTS, raw));
                    rec.record("read_stream/10k/fleetops", f);
                    rec.record("read_stream/10k/raw", r);
                    rec.record("read_stream/10k/vs-raw", f / r);
                }
                total
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("replay/200k");
    group
        .throughput(Throughput::Elements(REPLAY_EVENTS))
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("read_all", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, rec, raw_feed) = (Arc::clone(&store), Arc::clone(rec), raw_feed.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, cpu) = (Instant::now(), cpu_time());
                    let mut from = 1;
                    while from <= REPLAY_EVENTS {
                        let page = store.read_all(from, 10_000).await.unwrap();
                        from = page.last().unwrap().position + 1;
                    }
                    let elapsed = t.elapsed();
                    let cpu = cpu_time().saturating_sub(cpu);
                    if !cpu.is_zero() {
                        rec.record("replay/200k/read_all-cpu", rate(REPLAY_EVENTS, cpu));
                    }
                    total += elapsed;
                    let raw = tokio::task::spawn_blocking(raw_feed.clone()).await.unwrap();
                    let (f, r) = (rate(REPLAY_EVENTS, elapsed), rate(REPLAY_EVENTS, raw));
                    rec.record("replay/200k/read_all", f);
                    rec.record("replay/200k/raw", r);
                    rec.record("replay/200k/read_all-vs-raw", f / r);
                }
                total
            }
        })
    });
    group.bench_function("subscribe", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, rec) = (Arc::clone(&store), Arc::clone(rec));
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, cpu) = (Instant::now(), cpu_time());
                    let mut sub = store.subscribe(1).await.unwrap();
                    for _ in 0..REPLAY_EVENTS {
                        sub.next().await.unwrap();
                    }
                    let elapsed = t.elapsed();
                    let cpu = cpu_time().saturating_sub(cpu);
                    if !cpu.is_zero() {
                        rec.record("replay/200k/subscribe-cpu", rate(REPLAY_EVENTS, cpu));
                    }
                    total += elapsed;
                    rec.record("replay/200k/subscribe", rate(REPLAY_EVENTS, elapsed));
                }
                total
            }
        })
    });
    group.finish();
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 1e6 => format!("{:.2}M", r / 1e6),
        Some(r) if r >= 1e3 => format!("{:.1}k", r / 1e3),
        Some(r) => format!("{r:.0}"),
        None => "-".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn summary(rec: &Recorder, labels: &[String]) {
    let m = |name: &str| rec.median(name);
    let x = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    println!("\n## summary: medians of paired samples (events/s)\n");
    println!(
        "| workload | fleetops | raw-grouped | fleetops / raw-grouped | raw-threads | \
         fleetops / raw-threads | events per group |"
    );
    println!("|---|---|---|---|---|---|---|");
    for label in labels {
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            fmt_rate(m(&format!("{label}/fleetops"))),
            fmt_rate(m(&format!("{label}/raw-grouped"))),
            x(m(&format!("{label}/vs-grouped"))),
            fmt_rate(m(&format!("{label}/raw-threads"))),
            x(m(&format!("{label}/vs-threads"))),
            m(&format!("{label}/per-group")).map_or("-".into(), |g| format!("{g:.0}")),
        );
    }
    println!(
        "\ngroup commit, 256 vs 1 concurrent single-event appenders: {}",
        ratio(m("append/1ev/256c/fleetops"), m("append/1ev/1c/fleetops"))
    );
    println!(
        "read_stream 10k: {} (raw scan of the same records {}, paired ratio {})",
        fmt_rate(m("read_stream/10k/fleetops")),
        fmt_rate(m("read_stream/10k/raw")),
        x(m("read_stream/10k/vs-raw"))
    );
    println!(
        "replay 200k: read_all {} (raw scan {}, paired ratio {}), subscribe {}",
        fmt_rate(m("replay/200k/read_all")),
        fmt_rate(m("replay/200k/raw")),
        x(m("replay/200k/read_all-vs-raw")),
        fmt_rate(m("replay/200k/subscribe"))
    );
    println!(
        "replay per CPU-second (all threads of the process): read_all {}, subscribe {}",
        fmt_rate(m("replay/200k/read_all-cpu")),
        fmt_rate(m("replay/200k/subscribe-cpu"))
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at the end: {}", load.trim());
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let mut c = Criterion::default().configure_from_args();
    let labels = bench_appends(&mut c, &rt, &rec);
    bench_reads(&mut c, &rt, &rec);
    c.final_summary();
    summary(&rec, &labels);
}
