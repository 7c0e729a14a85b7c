//! `fleetops demo` runs to completion: the real binary, its embedded broker, sled in a
//! temporary directory and simulated devices over MQTT; the final table's figures are the
//! ones the devices' roles imply.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

#[test]
fn the_demo_runs_to_completion_with_the_expected_table() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(["demo", "--devices", "50", "--seed", "7", "--speed", "60"])
        .args(["--timeout-secs", "120"])
        .output()
        .expect("run fleetops demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Rows: kind, status, count, expected.
    let mut rows: HashMap<(String, String), (u64, u64)> = HashMap::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && (f[0] == "command" || f[0] == "job") {
            if let (Ok(count), Ok(expected)) = (f[2].parse(), f[3].parse()) {
                rows.insert((f[0].into(), f[1].into()), (count, expected));
            }
        }
    }
    let get = |kind: &str, status: &str| {
        rows.get(&(kind.to_string(), status.to_string()))
            .copied()
            .unwrap_or_else(|| panic!("no row {kind} {status} in\n{stdout}"))
    };
    // 50 devices: 10 % of commands fail and 10 % go unanswered; of the job, 10 % fail once
    // then succeed, 5 % (rounded up) fail twice, reject, or stall until the step timeout.
    assert_eq!(get("command", "SUCCEEDED"), (40, 40), "{stdout}");
    assert_eq!(get("command", "FAILED"), (5, 5), "{stdout}");
    assert_eq!(get("command", "TIMED_OUT"), (5, 5), "{stdout}");
    assert_eq!(get("job", "SUCCEEDED"), (41, 41), "{stdout}");
    assert_eq!(get("job", "FAILED"), (3, 3), "{stdout}");
    assert_eq!(get("job", "REJECTED"), (3, 3), "{stdout}");
    assert_eq!(get("job", "TIMED_OUT"), (3, 3), "{stdout}");
    assert_eq!(get("job", "retried"), (8, 8), "{stdout}");
    assert!(stdout.contains("Time taken:"), "{stdout}");
    // Not a terminal: plain lines instead of bars, no escape sequences.
    assert!(!stdout.contains('\u{1b}'), "{stdout}");
    eprintln!("demo with 50 devices took {:.1?}", started.elapsed());
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetops"))
        .args(["demo", "--devices", "3"])
        .output()
        .expect("run fleetops demo");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--devices"), "{stderr}");
}
