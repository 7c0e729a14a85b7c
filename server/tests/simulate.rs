//! `fleetops simulate` against a real mosquitto (the transport's `TestBroker`): the binary's
//! devices answer a `Fleet` (sled on disk, `MqttLink`) as their ratios say.

use std::process::{Child, Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use fleetops_core::{CommandStatus, Duration, JobId, JobStatus, ThingName};
use fleetops_service::{Fleet, JobDescription, JobSpec};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{MqttLink, MqttLinkConfig};
use serde_json::json;

/// Kills the simulator however the test ends.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn simulate(broker: &TestBroker, prefix: &str, devices: u32, ratios: &[&str]) -> Sim {
    let child = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .arg("simulate")
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", broker.port())])
        .args(["--devices", &devices.to_string(), "--prefix", prefix])
        .args([
            "--exec-time",
            "5ms..20ms",
            "--duration",
            "120s",
            "--seed",
            "3",
        ])
        .args(ratios)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fleetops simulate");
    Sim(child)
}

fn things(prefix: &str, n: u32) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("{prefix}{i:04}")).unwrap())
        .collect()
}

async fn finished(fleet: &Fleet<SledStore, MqttLink>, job: &JobId) -> JobDescription {
    let deadline = Instant::now() + StdDuration::from_secs(60);
    loop {
        let d = fleet.describe_job(job).unwrap();
        if d.job.status == JobStatus::Completed {
            return d;
        }
        assert!(Instant::now() < deadline, "job not done: {d:?}");
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_answer_as_their_ratios_say() {
    let broker = TestBroker::start_with(BrokerOptions {
        verbose_log: false,
        extra_config: "log_type information\n".into(),
        ..BrokerOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open_async(SledConfig::new(dir.path()))
        .await
        .unwrap();
    let link = MqttLink::connect(MqttLinkConfig::new(broker.service_config()))
        .await
        .unwrap();
    let fleet = Fleet::start(store, link).await.unwrap();

    // Jobs created before the devices connect: they pull them on connect.
    let cases: [(&str, u32, &[&str]); 3] = [
        ("ok-", 20, &["--success", "1"]),
        ("bad-", 20, &["--success", "0", "--failure", "1"]),
        ("mix-", 40, &["--success", "1", "--reject", "1"]),
    ];
    for (prefix, n, _) in cases {
        let job = JobId::parse(&format!("job-{}", prefix.trim_end_matches('-'))).unwrap();
        fleet
            .create_job(JobSpec::new(job, json!({"op": "test"})).things(things(prefix, n)))
            .await
            .unwrap();
    }
    let _sims: Vec<Sim> = cases
        .iter()
        .map(|(prefix, n, ratios)| simulate(&broker, prefix, *n, ratios))
        .collect();

    let ok = finished(&fleet, &JobId::parse("job-ok").unwrap()).await;
    assert_eq!(ok.counters.succeeded, 20, "{ok:?}");
    let bad = finished(&fleet, &JobId::parse("job-bad").unwrap()).await;
    assert_eq!(bad.counters.failed, 20, "{bad:?}");
    let mix = finished(&fleet, &JobId::parse("job-mix").unwrap()).await;
    let c = &mix.counters;
    assert_eq!(c.succeeded + c.rejected, 40, "{mix:?}");
    // Half and half, drawn with a fixed seed: far from all-or-nothing.
    assert!((8..=32).contains(&c.rejected), "{mix:?}");

    // Commands take the same ratios.
    let ok_cmd = fleet
        .send_command(
            things("ok-", 1).remove(0),
            "ping",
            json!({}),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let bad_cmd = fleet
        .send_command(
            things("bad-", 1).remove(0),
            "ping",
            json!({}),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(
        ok_cmd.outcome().await.unwrap().status,
        CommandStatus::Succeeded
    );
    assert_eq!(
        bad_cmd.outcome().await.unwrap().status,
        CommandStatus::Failed
    );
    fleet.shutdown().await;
}
