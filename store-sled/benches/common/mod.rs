//! Helpers shared by the benchmarks.

use std::time::Duration;

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux; zero
/// elsewhere). Lets the summary say what a read costs in CPU, which the shared machine's load
/// does not distort the way it distorts wall-clock rates.
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name may contain spaces; the fields after it are space-separated.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; the
    // kernel reports them in clock ticks of 1/100 s on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}
