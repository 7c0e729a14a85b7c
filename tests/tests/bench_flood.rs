//! `fleetops bench --scenario flood` as a process, with tiny sizes: it completes, prints each
//! flood variant's round trips beside the same device's round trips without a flood, with a
//! ratio, and the noisy device got an answer to its malformed requests. The figures
//! themselves are measured (BENCHMARKS.md), not asserted.

use std::process::Command;

use fleetops_tests::binary;

#[test]
fn the_flood_scenario_prints_round_trips_during_and_without_the_flood() {
    let out = Command::new(binary(env!("CARGO_BIN_EXE_fleetops-under-test")))
        .args([
            "bench",
            "--spawn-mosquitto",
            "--scenario",
            "flood",
            "--runs",
            "1",
            "--round-trips",
            "30",
            "--flood-messages",
            "500",
            "--timeout-secs",
            "120",
        ])
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| figure | during the flood | without a flood | flood / quiet |"),
        "{stdout}"
    );
    for row in [
        "| QoS 0 flood, round trip p50 |",
        "| QoS 0 flood, round trip p99 |",
        "| QoS 1 flood, round trip p50 |",
        "| QoS 1 flood, round trip p99 |",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no `{row}` row in:\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "{line}");
        assert!(cells[4].ends_with('x'), "a ratio: {line}");
        // The quiet side always has samples.
        assert!(!cells[3].starts_with("NaN"), "{line}");
    }
    // Every malformed QoS 1 request was answered (QoS 0 ones may be dropped on the way).
    let qos1 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("QoS 1 flood:"))
        .unwrap_or_else(|| panic!("no QoS 1 summary in:\n{stdout}"));
    assert!(qos1.contains(" 500 replies received"), "{qos1}");
}
