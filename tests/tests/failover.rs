//! Three `fleetops serve` instances on one PostgreSQL database and one mosquitto, splitting
//! the device traffic with a shared subscription; the leader is SIGKILLed in the middle of a
//! rollout to 1,000 devices.
//!
//! Checked, through HTTP and then the database itself:
//! - exactly one instance leads (`/healthz`), and a survivor takes the lead after the kill;
//! - the job completes with exact counters: 1,000 SUCCEEDED and nothing else;
//! - a job created on one instance is seen by every other instance;
//! - commands sent through any instance, with `wait=true`, come back SUCCEEDED (the device's
//!   answer reaches whichever instance the broker hands it to, so most of them cross
//!   instances);
//! - no execution reaches two terminal statuses, and each was queued exactly once;
//! - the killed instance, restarted, catches up with the feed and sees the finished job.
//!
//! Every device is a real `DeviceClient` (its own MQTT connection). The server processes
//! and PostgreSQL are real, started by the test on free ports.
//!
//! `FLEETOPS_FAILOVER_RUNS=10` repeats the whole scenario (a fresh database and broker each
//! time), killing after a different wave of the rollout each run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::testkit::histories::check_execution_histories;
use fleetops_core::{JobId, ThingName};
use fleetops_server::devices::{SimConfig, Simulation};
use fleetops_service::sim::{Behaviour, Outcome, Task};
use fleetops_store_postgres::testing::TestPostgres;
use fleetops_store_postgres::{PostgresConfig, PostgresStore};
use fleetops_tests::{binary, quiet_broker, Api, Serve, ServeConfig};
use fleetops_transport_mqtt::codec::TopicLayout;
use fleetops_transport_mqtt::testing::TestBroker;
use serde_json::{json, Value};

const DEVICES: usize = 1000;
const INSTANCES: usize = 3;
/// The rollout grows with successes: 50 executions, then 112 once 50 succeeded, then 253
/// once 112 did, then the rest. Each wave waits for the devices of the one before, so the
/// kill can land between waves.
const BASE_PER_MINUTE: u32 = 50;
/// The waves' sizes, in executions created; the kill comes once one of them is reached.
const KILL_POINTS: [u64; 3] = [50, 112, 253];

/// Every device succeeds, after a little work on jobs so that some executions are in progress
/// when the leader dies.
struct Works;

impl Behaviour for Works {
    fn outcome(&self, _: &ThingName, _: Task<'_>) -> Outcome {
        Outcome::Succeed
    }

    fn exec_time(&self, _: &ThingName, task: Task<'_>) -> Duration {
        match task {
            Task::Job { .. } => Duration::from_millis(200),
            Task::Command(_) => Duration::ZERO,
        }
    }
}

fn thing(i: usize) -> String {
    format!("fo-{i:04}")
}

fn start_instance(broker: &TestBroker, url: &str, i: usize) -> (Serve, tempfile::TempDir) {
    // Unused with PostgreSQL, but every instance gets its own, as separate machines would.
    let data = tempfile::tempdir().expect("a data directory");
    let mut config = ServeConfig::new(
        binary(env!("CARGO_BIN_EXE_fleetops-under-test")),
        data.path(),
        broker,
        "fleets",
    );
    config.client_id = format!("fleetops-{i}");
    config.extra_args = vec![
        "--store".into(),
        url.to_owned(),
        "--shared-group".into(),
        "fleetops".into(),
    ];
    (Serve::start(&config), data)
}

async fn healthz(api: &Api) -> Option<Value> {
    let (status, body) = api.get("/healthz").await;
    (status == 200).then_some(body)
}

/// Waits until exactly one of `apis` (those still alive) says it leads; returns its index.
async fn leader(apis: &[Option<Api>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leading = Vec::new();
        for (i, api) in apis.iter().enumerate() {
            if let Some(api) = api {
                if let Some(h) = healthz(api).await {
                    if h["leading"] == true {
                        leading.push(i);
                    }
                }
            }
        }
        if leading.len() == 1 {
            return leading[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single leader within 30 s: {leading:?} lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn counters(job: &Value) -> [u64; 8] {
    let d = &job["jobProcessDetails"];
    [
        "numberOfQueuedThings",
        "numberOfInProgressThings",
        "numberOfSucceededThings",
        "numberOfFailedThings",
        "numberOfRejectedThings",
        "numberOfTimedOutThings",
        "numberOfCanceledThings",
        "numberOfRemovedThings",
    ]
    .map(|k| {
        d[k].as_u64()
            .unwrap_or_else(|| panic!("{k} missing from {job}"))
    })
}

async fn command_through(api: &Api, target: &str, via: usize) {
    let (status, body) = api
        .post(
            "/api/v1/commands?wait=true",
            &json!({"thingName": target, "action": "ping", "params": {"via": via}, "ttl": 30}),
        )
        .await;
    assert!(status == 200 || status == 201, "via {via}: {status} {body}");
    assert_eq!(
        body["status"], "SUCCEEDED",
        "command via instance {via}: {body}"
    );
}

async fn scenario(run: usize) {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    let url = pg.url();
    let broker = quiet_broker(vec![TopicLayout::fleets()]);
    let mut instances: Vec<Option<(Serve, tempfile::TempDir)>> = (0..INSTANCES)
        .map(|i| Some(start_instance(&broker, &url, i)))
        .collect();
    let mut apis: Vec<Option<Api>> = instances
        .iter()
        .map(|s| s.as_ref().map(|(s, _)| s.api()))
        .collect();
    let first = leader(&apis).await;

    let things: Vec<ThingName> = (0..DEVICES)
        .map(|i| ThingName::parse(&thing(i)).expect("a valid name"))
        .collect();
    let mut sim = SimConfig::new(broker.device_config(), things.clone(), Arc::new(Works));
    sim.layout = TopicLayout::fleets();
    let devices = Simulation::start(sim).await.expect("the devices connect");

    // Commands through every instance while all three run.
    for (i, api) in apis.iter().enumerate() {
        let api = api.as_ref().expect("running");
        for k in 0..3 {
            command_through(api, &thing((i * 37 + k * 101) % DEVICES), i).await;
        }
    }

    // The job is created on an instance that does not lead: the leader rolls it out.
    let creator = (first + 1) % INSTANCES;
    let job = format!("failover-{run}");
    let targets: Vec<String> = (0..DEVICES).map(thing).collect();
    let creator_api = apis[creator].clone().expect("running");
    let (status, body) = creator_api
        .post(
            "/api/v1/jobs",
            &json!({
                "jobId": job,
                "targets": {"thingNames": targets},
                "document": {"operation": "update"},
                "jobExecutionsRolloutConfig": {"exponentialRate": {
                    "baseRatePerMinute": BASE_PER_MINUTE,
                    "incrementFactor": 1.5,
                    "rateIncreaseCriteria": {"numberOfSucceededThings": 25},
                }},
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Every instance sees it; the leader is killed once part of it is rolled out (a different
    // part on each run).
    let kill_at = KILL_POINTS[run % KILL_POINTS.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = 0;
        for api in apis.iter().flatten() {
            let (status, _) = api.get(&format!("/api/v1/jobs/{job}")).await;
            seen += usize::from(status == 200);
        }
        let described = creator_api.get_ok(&format!("/api/v1/jobs/{job}")).await;
        let queued: u64 = counters(&described).iter().sum();
        if seen == INSTANCES && queued >= kill_at {
            assert!(
                queued < DEVICES as u64,
                "the rollout finished before the kill point {kill_at}: {described}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout did not reach {kill_at} executions (seen by {seen} instances): {described}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut killed, killed_data) = instances[first].take().expect("the leader runs");
    killed.kill();
    apis[first] = None;
    let second = leader(&apis).await;
    assert_ne!(second, first);

    // Commands through the survivors, during the rest of the rollout.
    for (i, api) in apis.iter().enumerate() {
        if let Some(api) = api {
            command_through(api, &thing((i * 53 + 7) % DEVICES), i).await;
        }
    }

    let survivor = apis[second].clone().expect("the new leader runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let described = survivor.get_ok(&format!("/api/v1/jobs/{job}")).await;
        if described["status"] == "COMPLETED" {
            break described;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not complete after the failover: {}\n--- new leader's log:\n{}",
            described["jobProcessDetails"],
            instances[second]
                .as_ref()
                .map(|(s, _)| s.log())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expected = [0, 0, DEVICES as u64, 0, 0, 0, 0, 0];
    assert_eq!(counters(&done), expected, "exact counters: {done}");

    // The killed instance comes back on the same database and catches up.
    let (restarted, _restarted_data) = start_instance(&broker, &url, first);
    drop(killed_data);
    let api = restarted.api();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, described) = api.get(&format!("/api/v1/jobs/{job}")).await;
        if status == 200 && described["status"] == "COMPLETED" {
            assert_eq!(counters(&described), expected, "restarted: {described}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted instance did not catch up: {status} {described}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apis[first] = Some(api);
    command_through(apis[first].as_ref().expect("restarted"), &thing(1), first).await;
    // The restarted instance does not take the lead back while the new leader lives.
    assert_eq!(leader(&apis).await, second);

    devices.stop().await;
    drop(restarted);
    instances.clear();

    // The stored histories, read from the database itself: each execution queued once, at
    // most one terminal event per attempt, and (no retries configured) one attempt each.
    let store = PostgresStore::connect(PostgresConfig::new(url.clone()))
        .await
        .expect("open the database");
    let job_id = JobId::parse(&job).expect("a valid job id");
    check_execution_histories(&store, &job_id, &things).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_finish_a_rollout_across_a_leader_kill() {
    let runs: usize = std::env::var("FLEETOPS_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for run in 0..runs {
        let started = Instant::now();
        scenario(run).await;
        eprintln!("failover run {run}: passed in {:?}", started.elapsed());
    }
}
