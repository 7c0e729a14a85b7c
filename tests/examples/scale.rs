//! Scale measurement: a job to N simulated devices over the in-process link, from create to
//! every execution SUCCEEDED. Not run in CI.
//!
//! ```text
//! cargo run --release -p fleetops-tests --example scale -- --devices 100000 --store sled
//! cargo run --release -p fleetops-tests --example scale -- --devices 100000 --store sled --hold
//! cargo run --release -p fleetops-tests --example scale -- --devices 100000 --store memory
//! cargo run --release -p fleetops-tests --features mimalloc --example scale -- --devices 100000 --store sled --hold
//! ```
//!
//! Options: `--buffered` (sled acknowledges before flushing), `--sled-cache-mib N`, `--cache N`
//! (execution states cached), `--shards N`, `--worker-batch N`, `--snapshot-every N` (folded
//! events between snapshots during the run; 0: none). Built with `--features mimalloc` it
//! runs on the `fleetops` binary's allocator, whose timings are the binary's; it then counts
//! no heap.
//!
//! Without `--hold`, devices are live from the start: the figure is create → all SUCCEEDED
//! and the peak resident set. With `--hold`, devices swallow every message until all
//! executions are queued and the fleet is quiet, the resident set is read (memory per queued
//! execution = growth since before the job / N), then every device reports presence online,
//! which makes the fleet re-send `notify-next`, and the devices run the job.

#[cfg(not(feature = "mimalloc"))]
use std::alloc::System;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetops_core::group::MAX_MEMBERS_PER_CHANGE;
use fleetops_core::limits::MAX_GROUP_MEMBERS;
use fleetops_core::store::EventStore;
use fleetops_core::{GroupName, JobId, JobStatus, ThingName};
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::sim::{simulate, Outcome};
use fleetops_service::{Fleet, FleetConfig, JobSpec};
use fleetops_store_memory::MemoryStore;
use fleetops_store_sled::{Durability, SledConfig, SledStore};
#[cfg(not(feature = "mimalloc"))]
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts live heap bytes, so memory per execution is measured exactly rather than through
/// the resident set (which keeps freed pages in malloc's arenas).
#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOC: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The `fleetops` binary's allocator (`--features mimalloc`): timings as the binary's, glibc's
/// malloc being a sizeable share of the CPU here; no heap is counted.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Live heap bytes, when the allocator counts them.
#[cfg(not(feature = "mimalloc"))]
fn live_heap() -> Option<usize> {
    let s = ALLOC.stats();
    let live = s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated;
    Some(usize::try_from(live).unwrap_or(0))
}

/// Live heap bytes, when the allocator counts them.
#[cfg(feature = "mimalloc")]
fn live_heap() -> Option<usize> {
    None
}

/// Heap growth per execution, or why there is no figure.
fn per_execution(before: Option<usize>, after: Option<usize>, n: usize) -> String {
    match (before, after) {
        (Some(b), Some(a)) => format!("{:.0} bytes", a.saturating_sub(b) as f64 / n as f64),
        _ => "not counted (mimalloc)".into(),
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn wait_for<S: EventStore>(
    fleet: &Fleet<S, ChannelLink>,
    job: &JobId,
    done: impl Fn(&fleetops_service::JobDescription) -> bool,
) -> Result<(), Box<dyn std::error::Error>> {
    while !done(&fleet.describe_job(job)?) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Swallows everything the fleet sends until it has been quiet for a while; gives the device
/// end back.
async fn swallow_until_quiet(mut end: DeviceEnd) -> DeviceEnd {
    loop {
        match tokio::time::timeout(Duration::from_millis(500), end.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return end,
        }
    }
}

async fn run<S: EventStore + Clone>(
    store: S,
    n: usize,
    hold: bool,
    config: FleetConfig,
) -> Result<S, Box<dyn std::error::Error>> {
    let (link, devices) = ChannelLink::pair(8192);
    let fleet = Fleet::builder(store, link).config(config).start().await?;
    let things: Vec<ThingName> = (0..n)
        .map(|i| ThingName::parse(&format!("dev-{i:06}")))
        .collect::<Result<_, _>>()?;
    // A job names at most `limits::MAX_JOB_TARGETS` targets, so the fleet joins groups of at
    // most `limits::MAX_GROUP_MEMBERS` (added in the largest chunks one request may carry)
    // and the job targets the groups.
    let mut groups = Vec::new();
    for (i, members) in things.chunks(MAX_GROUP_MEMBERS).enumerate() {
        let group = GroupName::parse(&format!("scale-fleet-{i}"))?;
        fleet.create_group(group.clone(), None).await?;
        for chunk in members.chunks(MAX_MEMBERS_PER_CHANGE) {
            fleet.add_group_members(&group, chunk.to_vec()).await?;
        }
        groups.push(group);
    }
    let rss_before = status_kib("VmRSS:");
    let heap_before = live_heap();
    let job = JobId::parse("scale")?;
    let doc = serde_json::json!({
        "operation": "firmware",
        "url": "https://example.invalid/fw-2.bin",
        "sha256": "0".repeat(64),
    });
    let t0 = Instant::now();
    let (sim, online_at) = if hold {
        let swallow = tokio::spawn(swallow_until_quiet(devices));
        fleet
            .create_job(JobSpec::new(job.clone(), doc).groups(groups.clone()))
            .await?;
        wait_for(&fleet, &job, |d| d.counters.queued == n as u64).await?;
        println!("create → all queued          {:.2?}", t0.elapsed());
        let end = swallow.await?;
        let rss = status_kib("VmRSS:");
        let heap = live_heap();
        println!("RSS before job               {} MiB", rss_before / 1024);
        println!("RSS all queued, quiet        {} MiB", rss / 1024);
        if let (Some(before), Some(after)) = (heap_before, heap) {
            println!(
                "live heap before / queued    {} MiB / {} MiB",
                before >> 20,
                after >> 20
            );
        }
        println!(
            "heap per queued execution    {} (RSS growth per execution {:.0} bytes)",
            per_execution(heap_before, heap, n),
            rss.saturating_sub(rss_before) as f64 * 1024.0 / n as f64
        );
        // The runtime's own share: a second fleet on the same store folds the same events;
        // its heap growth is its projections (plus the recovery queue of owed notifications).
        {
            let (link2, _end2) = ChannelLink::pair(16);
            let before = live_heap();
            let shadow = Fleet::start(fleet.store().clone(), link2).await?;
            let after = live_heap();
            println!(
                "runtime heap per queued execution {} (a second fleet's catch-up, {} events)",
                per_execution(before, after, n),
                shadow.checkpoint()
            );
        }
        let sender = end.sender();
        let sim = simulate(end, Outcome::Succeed);
        let online = Instant::now();
        tokio::spawn(async move {
            for t in &things {
                let _ = sender.presence(t, true).await;
            }
        });
        (sim, Some(online))
    } else {
        let sim = simulate(devices, Outcome::Succeed);
        fleet
            .create_job(JobSpec::new(job.clone(), doc).groups(groups))
            .await?;
        wait_for(&fleet, &job, |d| {
            d.counters.queued + d.counters.in_progress + d.counters.succeeded == n as u64
        })
        .await?;
        println!("create → all queued          {:.2?}", t0.elapsed());
        (sim, None)
    };
    wait_for(&fleet, &job, |d| d.job.status == JobStatus::Completed).await?;
    let d = fleet.describe_job(&job)?;
    assert_eq!(d.counters.succeeded, n as u64);
    if let Some(online) = online_at {
        println!("devices online → all SUCCEEDED {:.2?}", online.elapsed());
    } else {
        let total = t0.elapsed();
        println!(
            "create → all SUCCEEDED       {total:.2?}  ({:.0} executions/s)",
            n as f64 / total.as_secs_f64()
        );
    }
    println!(
        "peak RSS (VmHWM)             {} MiB",
        status_kib("VmHWM:") / 1024
    );
    println!(
        "device requests              start-next {} updates {} errors {}",
        sim.stats().start_next.load(Ordering::Relaxed),
        sim.stats().jobs_done(),
        sim.stats().errors.load(Ordering::Relaxed)
    );
    let store = fleet.store().clone();
    drop(sim);
    // A clean stop saves a snapshot of the projections (the persisted checkpoint).
    let t1 = Instant::now();
    fleet.shutdown().await;
    println!("shutdown (final snapshot)    {:.2?}", t1.elapsed());
    // Restart cost, twice in the same run: resuming from that snapshot, and folding the whole
    // feed as a fleet without snapshots does.
    let (link, _devices) = ChannelLink::pair(16);
    let t1 = Instant::now();
    let fleet = Fleet::start(store.clone(), link).await?;
    let resumed = t1.elapsed();
    println!(
        "restart from snapshot        {resumed:.2?} (snapshot at {}, {} events)",
        fleet.snapshot_position(),
        fleet.checkpoint()
    );
    drop(fleet);
    let (link, _devices) = ChannelLink::pair(16);
    let t1 = Instant::now();
    let fleet = Fleet::builder(store.clone(), link)
        .config(FleetConfig {
            snapshot_every: 0,
            ..FleetConfig::default()
        })
        .start()
        .await?;
    let full = t1.elapsed();
    println!(
        "restart folding the feed     {full:.2?} ({} events; snapshot/full = {:.2})",
        fleet.checkpoint(),
        resumed.as_secs_f64() / full.as_secs_f64()
    );
    Ok(store)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let n: usize = arg("--devices")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let hold = args.iter().any(|a| a == "--hold");
    let store = arg("--store").unwrap_or_else(|| "sled".into());
    let mut config = FleetConfig::default();
    if let Some(v) = arg("--shards").and_then(|v| v.parse().ok()) {
        config.shards = v;
    }
    if let Some(v) = arg("--worker-batch").and_then(|v| v.parse().ok()) {
        config.worker_batch = v;
    }
    if let Some(v) = arg("--cache").and_then(|v| v.parse().ok()) {
        config.execution_cache = v;
    }
    if let Some(v) = arg("--snapshot-every").and_then(|v| v.parse().ok()) {
        config.snapshot_every = v;
    }
    println!("config: {config:?}");
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
    );
    println!("devices                      {n}");
    if store == "memory" {
        println!("store: memory");
        run(MemoryStore::new(), n, hold, config).await?;
    } else {
        let dir = tempfile::tempdir()?;
        let buffered = args.iter().any(|a| a == "--buffered");
        let durability = if buffered {
            Durability::Buffered
        } else {
            Durability::FlushEveryBatch
        };
        println!("store: sled ({durability:?})");
        let mut sled = SledConfig::new(dir.path()).durability(durability);
        if let Some(mib) = arg("--sled-cache-mib").and_then(|v| v.parse::<u64>().ok()) {
            sled = sled.cache_capacity(mib * 1024 * 1024);
            println!("sled page cache: {mib} MiB");
        }
        let store = SledStore::open_async(sled).await?;
        let store = run(store, n, hold, config).await?;
        let s = store.stats();
        println!(
            "sled writer                  appends {} events {} groups {} flushes {}",
            s.appends, s.events, s.groups, s.flushes
        );
    }
    Ok(())
}
