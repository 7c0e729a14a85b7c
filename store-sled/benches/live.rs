//! Live-feed latency: how long from the start of an append until a subscriber following the
//! feed holds the event, with a single appender, in both durability modes.
//!
//! This is the service's command round trip in miniature: the projection follower follows a
//! subscription, so every append pays its own commit plus the subscription's delivery. Each
//! timed iteration appends one event and waits until the append is acknowledged **and** the
//! subscriber task has received it (whichever comes last). Criterion reports the time per
//! round trip; the summary at the end adds the process CPU time per round trip, which the
//! shared machine's load distorts less than wall-clock time.
//!
//! Run briefly: `cargo bench -p fleetops-store-sled --bench live -- --warm-up-time 1
//! --measurement-time 5`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, NewEvent};
use fleetops_core::{Event, JobExecutionStatus, StreamId, Timestamp};
use fleetops_store_sled::{Durability, SledConfig, SledStore};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::cpu_time;

/// A small execution event, like most of what a command round trip appends.
fn event(n: u64) -> NewEvent {
    let at = Timestamp::from_millis(1_700_000_000_000 + n);
    NewEvent::new(
        Uuid::from_u64_pair(0x0190_0000_0000_7000, n),
        Event::ExecutionFinished {
            status: JobExecutionStatus::Succeeded,
            at,
            status_details: None,
        },
        at,
    )
}

fn bench_mode(c: &mut Criterion, rt: &Runtime, label: &str, durability: Durability) {
    let store = rt.block_on(async {
        SledStore::open_async(SledConfig::temporary().unwrap().durability(durability))
            .await
            .unwrap()
    });
    // The follower: publishes the position of every event it receives.
    let (seen_tx, seen_rx) = watch::channel(0u64);
    let follower = rt.spawn({
        let store = store.clone();
        async move {
            let mut sub = store.subscribe(1).await.unwrap();
            while let Ok(e) = sub.next().await {
                seen_tx.send_replace(e.position);
            }
        }
    });
    let counter = Arc::new(AtomicU64::new(0));
    let stream = StreamId::custom("live-bench").unwrap();
    let cpu = Arc::new(std::sync::Mutex::new((Duration::ZERO, 0u64)));

    c.bench_function(label, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let (store, stream, counter, cpu) = (
                store.clone(),
                stream.clone(),
                Arc::clone(&counter),
                Arc::clone(&cpu),
            );
            let mut seen = seen_rx.clone();
            async move {
                let cpu_start = cpu_time();
                let start = Instant::now();
                for _ in 0..iters {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let batch =
                        AppendBatch::single(stream.clone(), ExpectedVersion::Any, vec![event(n)]);
                    let appended = store.append(batch).await.unwrap();
                    seen.wait_for(|p| *p >= appended.last_position)
                        .await
                        .unwrap();
                }
                let elapsed = start.elapsed();
                let mut cpu = cpu.lock().unwrap();
                cpu.0 += cpu_time().saturating_sub(cpu_start);
                cpu.1 += iters;
                elapsed
            }
        })
    });
    let (total, n) = *cpu.lock().unwrap();
    if n > 0 {
        println!(
            "{label}: process CPU per round trip {:.1} µs over {n} round trips",
            total.as_secs_f64() * 1e6 / n as f64
        );
    }
    follower.abort();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    bench_mode(
        &mut c,
        &rt,
        "live/append-to-subscriber/flush-every-batch",
        Durability::FlushEveryBatch,
    );
    bench_mode(
        &mut c,
        &rt,
        "live/append-to-subscriber/buffered",
        Durability::Buffered,
    );
    c.final_summary();
}
