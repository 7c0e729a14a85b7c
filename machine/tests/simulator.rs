//! Seeded runs of the deterministic fleet simulator (`sim/`).
//!
//! - `cargo test -p fleetops-machine --test simulator` runs `FLEETOPS_SIM_SEEDS` seeds (300
//!   by default) from `FLEETOPS_SIM_BASE` (1);
//! - `FLEETOPS_SIM_SEED=<seed>` runs one seed and prints its last steps; a failing seed
//!   prints exactly that command;
//! - `FLEETOPS_SIM_SEEDS=100000 cargo test --release -p fleetops-machine --test simulator --
//!   --nocapture` runs as many as asked and reports the simulated executions per second.

mod sim;

use std::collections::BTreeMap;
use std::time::Instant;

use sim::Sim;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_fleets_keep_every_invariant() {
    if let Some(seed) = env_u64("FLEETOPS_SIM_SEED") {
        let mut sim = Sim::new(seed);
        sim.run();
        println!("seed {seed} passed: {:?}", sim.shape);
        return;
    }
    let base = env_u64("FLEETOPS_SIM_BASE").unwrap_or(1);
    let seeds = env_u64("FLEETOPS_SIM_SEEDS").unwrap_or(300);
    let started = Instant::now();
    let mut executions = 0;
    let mut published = 0;
    let mut described = 0;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut controls: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in base..base + seeds {
        let mut sim = Sim::new(seed);
        sim.run();
        executions += sim.finished_executions;
        published += sim.published;
        described += sim.described;
        for (k, n) in &sim.controls {
            *controls.entry(k).or_default() += n;
        }
        for s in sim.terminal.values() {
            *by_status.entry(format!("{s:?}")).or_default() += 1;
        }
        if seeds >= 1_000 && (seed - base + 1).is_multiple_of(seeds / 10) {
            println!("{} of {seeds} seeds passed", seed - base + 1);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds, {executions} executions finished ({by_status:?}), {published} messages \
         published, {described} executions described, in {secs:.1} s: {:.0} executions/s",
        executions as f64 / secs
    );
    // Nor does one whose service never publishes.
    assert!(published > 0, "nothing was published in {seeds} seeds");
    assert!(
        described > 0,
        "no device looked its execution up in {seeds} seeds"
    );
    println!("rollout control stored: {controls:?}");
    // Every rollout-control rule is reached by some seed.
    if seeds >= 300 {
        for kind in [
            "operator pause",
            "gate pause",
            "threshold pause",
            "resume",
            "stage passed",
            "stage overridden",
            "update",
            "stage abort",
            "execution cancel",
        ] {
            assert!(
                controls.contains_key(kind),
                "no seed stored a {kind} in {seeds} seeds: {controls:?}"
            );
        }
    }
    // A simulator whose devices never finish anything checks nothing.
    for status in ["Succeeded", "Failed", "Rejected", "TimedOut", "Canceled"] {
        assert!(
            by_status.get(status).copied().unwrap_or(0) > 0,
            "no execution ended {status} in {seeds} seeds: {by_status:?}"
        );
    }
}
