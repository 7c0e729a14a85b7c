//! Smoke runs of `fleetops bench` as a process: its own mosquitto, tiny sizes. They check that
//! the bench completes, prints each figure beside its raw-MQTT baseline with a ratio, and
//! refuses bad input with a message instead of a panic. The figures themselves are not
//! checked: performance is measured (BENCHMARKS.md), not asserted.

use std::process::{Command, Output};

fn fleetops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(args)
        .output()
        .expect("run the fleetops binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The run's standard output; fails with both outputs if it did not succeed.
fn succeeded(out: &Output) -> String {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    stdout
}

/// One run of the commands scenario alone, on its own mosquitto.
const COMMANDS_ONCE: &[&str] = &[
    "bench",
    "--spawn-mosquitto",
    "--scenario",
    "commands",
    "--runs",
    "1",
];

const TINY: &[&str] = &[
    "bench",
    "--spawn-mosquitto",
    "--runs",
    "1",
    "--round-trips",
    "20",
    "--requests",
    "40",
    "--concurrency",
    "4",
    "--devices",
    "20",
    "--timeout-secs",
    "120",
];

/// More commands in flight than a device's connection window (64): both sides must still
/// answer every one. The raw responder used to drop the responses its request channel had no
/// room for, and the run then waited for them until its timeout.
#[test]
fn commands_run_with_more_in_flight_than_a_device_window() {
    let more = [
        "--round-trips",
        "5",
        "--requests",
        "600",
        "--concurrency",
        "256",
        "--timeout-secs",
        "60",
    ];
    let out = fleetops(&[COMMANDS_ONCE, &more].concat());
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("| throughput, 256 in flight | "),
        "{stdout}"
    );
}

#[test]
fn prints_both_scenarios_beside_the_raw_baseline_with_ratios() {
    let out = fleetops(TINY);
    let stdout = succeeded(&out);
    assert!(stdout.contains("| figure | fleetops | raw MQTT | fleetops / raw |"));
    for row in [
        "| round trip p50 |",
        "| round trip p99 |",
        "| throughput, 4 in flight |",
        "| throughput, 4 in flight, raw replying to each response as fleetops does |",
        "| job to 20 devices, create → all SUCCEEDED |",
        // CPU per operation beside each throughput figure: both processes did work, so
        // every cell is filled and the ratio is a number.
        "| CPU per command, 4 in flight: bench process |",
        "| CPU per command, 4 in flight: broker |",
        "| CPU per command, 4 in flight, raw replying: bench process |",
        "| CPU per command, 4 in flight, raw replying: broker |",
        "| CPU per execution: bench process |",
        "| CPU per execution: broker |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no `{row}` row in:\n{stdout}"));
        // fleetops, raw, ratio: three filled cells, the last one a ratio.
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "{line}");
        assert!(cells[2..5].iter().all(|c| !c.is_empty()), "{line}");
        let ratio: f64 = cells[4]
            .strip_suffix('x')
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no ratio in `{line}`"));
        assert!(ratio.is_finite() && ratio > 0.0, "{line}");
    }
    // The flush a round trip waits for, measured in the same run, beside the ratio to raw
    // MQTT plus that one flush.
    let append = stdout
        .lines()
        .find(|l| l.starts_with("| lone durable store append p50 (one flush) | "))
        .unwrap_or_else(|| panic!("no store append row in:\n{stdout}"));
    assert!(append.contains("µs") || append.contains("ms"), "{append}");
    assert!(
        stdout.contains("| round trip p50 / (raw p50 + one append) | | | "),
        "{stdout}"
    );
    assert!(stdout.contains("spawned mosquitto"), "{stdout}");
}

#[test]
fn json_output_has_both_sides_and_the_ratio() {
    let mut args = TINY.to_vec();
    args.extend(["--scenario", "job", "--json"]);
    let out = fleetops(&args);
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let seconds = &v["job"]["seconds"];
    for key in ["fleetops", "raw", "ratio"] {
        assert!(
            seconds[key].as_f64().is_some_and(|x| x > 0.0),
            "{key} in {seconds}"
        );
    }
    assert_eq!(v["job"]["runs"].as_array().map(Vec::len), Some(1));
    for figure in ["cpu_process_us", "cpu_broker_us"] {
        let cpu = &v["job"][figure];
        for key in ["fleetops", "raw", "ratio"] {
            assert!(cpu[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {cpu}");
        }
    }
    assert!(
        v["job"]["device_connections"].is_null(),
        "a connection per device by default"
    );
    assert!(v["commands"].is_null(), "only the job scenario ran");
    assert!(v["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
}

/// `--device-connections`: both sides simulate the job's devices over a few shared
/// connections (subscribed per device, answering as each device would), and the job is
/// measured on both, as with a connection per device.
#[test]
fn a_job_over_shared_device_connections_has_both_figures() {
    let out = fleetops(&[
        "bench",
        "--spawn-mosquitto",
        "--scenario",
        "job",
        "--devices",
        "300",
        "--device-connections",
        "3",
        "--runs",
        "1",
        "--timeout-secs",
        "60",
        "--json",
    ]);
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let job = &v["job"];
    assert_eq!(job["devices"].as_u64(), Some(300), "{job}");
    assert_eq!(job["device_connections"].as_u64(), Some(3), "{job}");
    for key in ["fleetops", "raw", "ratio"] {
        assert!(
            job["seconds"][key].as_f64().is_some_and(|x| x > 0.0),
            "{key} in {job}"
        );
    }
    let runs = job["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{job}");
    for key in ["fleetops_secs", "raw_secs"] {
        assert!(
            runs[0][key].as_f64().is_some_and(|x| x > 0.0),
            "{key} in {job}"
        );
    }
    // Every simulated device's requests were accepted: the codec's messages, not lookalikes.
    assert_eq!(job["device_errors"].as_u64(), Some(0), "{job}");
}

#[test]
fn bad_input_is_refused_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["bench", "--broker", "http://localhost:1883"], "mqtt://"),
        (
            &["bench", "--broker", "mqtt://localhost:99999"],
            "invalid port",
        ),
        (&["bench"], "--broker"),
        (&["bench", "--spawn-mosquitto", "--runs", "0"], "--runs"),
        (
            &["bench", "--spawn-mosquitto", "--devices", "x"],
            "--devices",
        ),
        (
            &["bench", "--spawn-mosquitto", "--device-connections", "0"],
            "--device-connections",
        ),
        (
            &[
                "bench",
                "--spawn-mosquitto",
                "--scenario",
                "job",
                "--devices",
                "3",
                "--device-connections",
                "4",
            ],
            "every connection carries at least one device",
        ),
        (
            &[
                "bench",
                "--spawn-mosquitto",
                "--scenario",
                "commands",
                "--device-connections",
                "2",
            ],
            "job scenario only",
        ),
    ];
    for (args, needle) in cases {
        let out = fleetops(args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in {stderr}"
        );
    }
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| text(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

/// SIGTERM in the middle of a run ends the bench with an error, and takes its private
/// mosquitto and temporary directories with it instead of leaving them behind.
#[test]
fn a_terminated_bench_leaves_no_broker_or_temporary_directory_behind() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(COMMANDS_ONCE)
        .args(["--round-trips", "10000000"])
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the bench");
    let ours = |prefix: &str| {
        std::fs::read_dir(tmp.path())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ours("fleetops-bench-mosquitto-") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench started no broker"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let root = tmp.path().to_string_lossy().into_owned();
    // The broker runs (it has its config in our directory), and the round trips are under way.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!processes_mentioning(&root).is_empty(), "no broker running");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the bench") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bench did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("the bench's output");
    let stderr = text(&out.stderr);
    assert!(!status.success(), "exit {status:?}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // A killed child may take a moment to be gone from /proc.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&root).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after the bench ended: {:?}",
            processes_mentioning(&root)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        ours("fleetops-bench-"),
        0,
        "temporary directories left behind"
    );
}
