//! End to end: `Fleet` on `SledStore`, `MqttLink` and `DeviceClient`s over a real mosquitto.
//!
//! Time is a manual clock starting at the wall clock, so rollout windows and timeouts pass
//! when the test says; everything else (broker, MQTT sessions, sled flushes) is real.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::config::{FailureType, JobConfig, RetryCriterion, Rollout};
use fleetops_core::device::{ExecutionView, StartNextRequest, UpdateRequest};
use fleetops_core::store::EventStore;
use fleetops_core::testkit::histories::check_execution_histories;
use fleetops_core::{Duration, JobExecutionStatus as S, JobId, JobStatus, ThingName};
use fleetops_service::clock::{Clock, ManualClock, SystemClock};
use fleetops_service::{Fleet, FleetConfig, JobSpec};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{DeviceClient, DeviceConfig, DeviceEvent, MqttLink, MqttLinkConfig};
use serde_json::json;
use tokio::task::JoinHandle;

type Decide = Arc<dyn Fn(usize, &ExecutionView) -> Option<S> + Send + Sync>;

fn broker() -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        verbose_log: false,
        // The harness waits for the "running" line, an information-level message that the
        // quiet log levels leave out; keep information, skip the per-message debug lines.
        extra_config: "log_type information\n".into(),
        ..BrokerOptions::default()
    })
}

async fn link(broker: &TestBroker) -> MqttLink {
    let mut c = MqttLinkConfig::new(broker.service_config());
    c.ack_timeout = StdDuration::from_secs(10);
    MqttLink::connect(c).await.expect("service link connects")
}

async fn open_store(dir: &std::path::Path) -> SledStore {
    // A previous incarnation may still be releasing its handles: retry briefly.
    let deadline = Instant::now() + StdDuration::from_secs(10);
    loop {
        match SledStore::open_async(SledConfig::new(dir)).await {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(StdDuration::from_millis(50)).await;
            }
            Err(e) => panic!("reopen sled: {e}"),
        }
    }
}

/// A device: pulls on connect, reacts to notify-next, starts and finishes what `decide` says
/// (`None`: go silent on that attempt).
async fn device(
    broker: &TestBroker,
    index: usize,
    thing: ThingName,
    decide: Decide,
    finished: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    let mut config = DeviceConfig::new(broker.device_config(), thing);
    config.max_inflight = 8;
    // A request the killed service took but never answered is retried after this.
    config.request_timeout = StdDuration::from_secs(2);
    let (client, mut events) = DeviceClient::connect(config, None)
        .await
        .expect("device connects");
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let view = match event {
                DeviceEvent::NotifyNext {
                    execution: Some(v), ..
                } => Some(v),
                DeviceEvent::Pending(p) if !(p.in_progress.is_empty() && p.queued.is_empty()) => {
                    client.describe_next().await.ok()
                }
                _ => None,
            };
            let Some(view) = view else { continue };
            let view = if view.status == S::Queued {
                match client.start_next(StartNextRequest::default()).await {
                    Ok(Some(v)) => v,
                    _ => continue,
                }
            } else {
                view
            };
            let Some(status) = decide(index, &view) else {
                continue;
            };
            let request = UpdateRequest {
                status: Some(status),
                execution_number: Some(view.execution_number),
                ..UpdateRequest::default()
            };
            if client.update(view.job_id.clone(), request).await.is_ok() {
                finished.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

async fn devices(
    broker: &TestBroker,
    things: &[ThingName],
    decide: Decide,
) -> (Vec<JoinHandle<()>>, Arc<AtomicUsize>) {
    let finished = Arc::new(AtomicUsize::new(0));
    let mut out = Vec::with_capacity(things.len());
    // Connect in waves, so the broker is not hit by every handshake at once.
    for chunk in things.chunks(100).enumerate() {
        let (offset, chunk) = chunk;
        let conns = chunk.iter().enumerate().map(|(i, t)| {
            device(
                broker,
                offset * 100 + i,
                t.clone(),
                Arc::clone(&decide),
                Arc::clone(&finished),
            )
        });
        out.extend(futures::future::join_all(conns).await);
    }
    (out, finished)
}

fn things(n: usize) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("e2e-{i:04}")).unwrap())
        .collect()
}

async fn wait_until<St: EventStore>(
    fleet: &Fleet<St, MqttLink>,
    job: &JobId,
    limit: StdDuration,
    done: impl Fn(&fleetops_service::JobDescription) -> bool,
) -> fleetops_service::JobDescription {
    let deadline = Instant::now() + limit;
    loop {
        let d = fleet.describe_job(job).expect("job exists");
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out; job is {d:?}");
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_run_a_job_with_rollout_and_retries() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let clock = ManualClock::new(SystemClock.now());
    let fleet = Fleet::builder(store.clone(), link(&broker).await)
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let targets = things(1000);
    // Every tenth device fails its first attempt; the retry policy gives it a second one.
    let decide: Decide = Arc::new(|i, v| {
        Some(if i % 10 == 0 && v.execution_number == 1 {
            S::Failed
        } else {
            S::Succeeded
        })
    });
    let started = Instant::now();
    let (_devices, _) = devices(&broker, &targets, decide).await;
    let connected = started.elapsed();
    let job = JobId::parse("e2e-rollout").unwrap();
    fleet
        .create_job(
            JobSpec::new(job.clone(), json!({"firmware": "2.0"}))
                .things(targets.clone())
                .config(JobConfig {
                    rollout: Rollout::Fixed { per_minute: 400 },
                    retry: vec![RetryCriterion {
                        failure_type: FailureType::Failed,
                        number_of_retries: 2,
                    }],
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    // The first window: 400 queued and no more, however fast the devices are.
    let d = wait_until(&fleet, &job, StdDuration::from_secs(30), |d| {
        d.counters.succeeded >= 360
    })
    .await;
    assert_eq!(d.counters.total(), 400, "{d:?}");
    clock.advance(Duration::from_secs(60));
    wait_until(&fleet, &job, StdDuration::from_secs(30), |d| {
        d.counters.total() == 800
    })
    .await;
    clock.advance(Duration::from_secs(60));
    let d = wait_until(&fleet, &job, StdDuration::from_secs(60), |d| {
        d.job.status == JobStatus::Completed
    })
    .await;
    assert_eq!(d.counters.succeeded, 1000, "{d:?}");
    let retried = fleet
        .list_job_executions(&job, None, &fleetops_service::Page::first(1000))
        .unwrap()
        .items
        .iter()
        .filter(|r| r.execution.execution_number == 2)
        .count();
    assert_eq!(retried, 100);
    check_execution_histories(&store, &job, &targets).await;
    eprintln!(
        "1000 devices: connected in {connected:.2?}, job done in {:.2?}",
        started.elapsed() - connected
    );
}

/// One run of the kill-and-restart scenario: the service dies (tasks aborted, MQTT
/// connection and sled handles dropped without any shutdown) while executions are queued,
/// in progress with timers pending, and failed awaiting a retry; a new one on the reopened
/// store finishes the job.
async fn kill_and_restart_once(run: usize) {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemClock.now());
    let targets = things(200);
    let job = JobId::parse("e2e-restart").unwrap();
    // Every fifth device goes silent on its first attempt (its in-progress timer is pending
    // at the kill); every seventh fails its first attempt.
    let decide: Decide = Arc::new(|i, v| match (i % 5, i % 7, v.execution_number) {
        (0, _, 1) => None,
        (_, 0, 1) => Some(S::Failed),
        _ => Some(S::Succeeded),
    });
    let (_devices, _) = devices(&broker, &targets, decide).await;
    let config = JobConfig {
        rollout: Rollout::Fixed { per_minute: 120 },
        in_progress_timeout: Some(Duration::from_minutes(10)),
        retry: vec![RetryCriterion {
            failure_type: FailureType::All,
            number_of_retries: 2,
        }],
        ..JobConfig::default()
    };
    // Snapshots every 100 events, so the restart resumes from a persisted checkpoint taken
    // mid-job: the last periodic one after a crash (even runs), the final one after a clean
    // shutdown (odd runs).
    let snapshots = FleetConfig {
        snapshot_every: std::env::var("FLEETOPS_SNAPSHOT_EVERY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
        ..FleetConfig::default()
    };
    let crash = run.is_multiple_of(2);
    {
        let store = open_store(dir.path()).await;
        let fleet = Fleet::builder(store, link(&broker).await)
            .clock(clock.clone())
            .config(snapshots.clone())
            .start()
            .await
            .unwrap();
        fleet
            .create_job(
                JobSpec::new(job.clone(), json!({"v": run}))
                    .things(targets.clone())
                    .config(config),
            )
            .await
            .unwrap();
        // Kill once part of the first window is done.
        wait_until(&fleet, &job, StdDuration::from_secs(30), |d| {
            d.counters.succeeded >= 40 + (run as u64 % 5) * 10
        })
        .await;
        eprintln!(
            "run {run}: before the stop, {:?} at {}",
            fleet.describe_job(&job).unwrap().counters,
            fleet.checkpoint()
        );
        if crash {
            fleet.abort().await;
        } else {
            fleet.shutdown().await;
        }
    }
    let store = open_store(dir.path()).await;
    let fleet = Fleet::builder(store.clone(), link(&broker).await)
        .clock(clock.clone())
        .config(snapshots)
        .start()
        .await
        .unwrap();
    eprintln!(
        "run {run} crash={crash}: resumed at {} of head {}, counters {:?}",
        fleet.snapshot_position(),
        store.head_position().await.unwrap(),
        fleet.describe_job(&job).unwrap().counters
    );
    assert!(
        fleet.snapshot_position() > 0,
        "run {run}: the restart resumed from a snapshot (crash: {crash})"
    );
    // The next window, then the in-progress timeouts, then the retries' window.
    clock.advance(Duration::from_secs(60));
    // Every execution must have been started before the timeouts are due, or a silent
    // device's timer would start after the clock moved and never expire.
    wait_until(&fleet, &job, StdDuration::from_secs(30), |d| {
        d.remaining_targets == 0 && d.counters.queued == 0
    })
    .await;
    clock.advance(Duration::from_minutes(10));
    let d = wait_until(&fleet, &job, StdDuration::from_secs(60), |d| {
        d.job.status == JobStatus::Completed
    })
    .await;
    assert_eq!(d.counters.succeeded, 200, "run {run}: {d:?}");
    assert_eq!(d.counters.total(), 200);
    check_execution_histories(&store, &job, &targets).await;
    for th in &targets {
        let x = fleet.get_job_execution(&job, th).await.unwrap();
        assert_eq!(x.status, S::Succeeded, "run {run}: {th}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_in_the_middle_of_a_job() {
    // FLEETOPS_RESTART_RUNS=20 loops it, as the acceptance asks.
    let runs: usize = std::env::var("FLEETOPS_RESTART_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        let t = Instant::now();
        kill_and_restart_once(run).await;
        eprintln!("restart run {run}: ok in {:.2?}", t.elapsed());
    }
}
