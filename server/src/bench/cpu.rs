//! CPU time per operation of a timed phase: the bench process's own (every thread, the ones
//! that ended included) and the spawned broker's. Throughput on a shared two-core machine
//! moves by tens of percent from run to run; the CPU an operation costs moves far less, and
//! says where a gap to raw MQTT comes from: the bench process (service, store, devices,
//! clients) or the broker.

use serde::Serialize;

/// CPU per operation of one timed phase, µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerOp {
    /// The bench process: the side measured (its clients, service, store and devices) and
    /// whatever else the process did meanwhile (the progress bar).
    pub process_us: f64,
    /// The spawned broker (`--spawn-mosquitto`); `None` for a broker given with `--broker`, or
    /// where its CPU time cannot be read (`/proc`, Linux only).
    pub broker_us: Option<f64>,
}

/// The CPU clocks at the start of a phase.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    broker: Option<(u32, f64)>,
    process: f64,
}

impl CpuMeter {
    /// Reads the clocks now; `broker` is the spawned broker's process id.
    pub fn start(broker: Option<u32>) -> Self {
        Self {
            broker: broker.and_then(|pid| Some((pid, process_cpu_secs(pid)?))),
            process: own_cpu_secs(),
        }
    }

    /// The CPU spent since [`CpuMeter::start`], per operation of `ops`; `None` for no
    /// operation.
    pub fn per_op(&self, ops: usize) -> Option<CpuPerOp> {
        if ops == 0 {
            return None;
        }
        let per_op = |secs: f64| secs * 1e6 / ops as f64;
        Some(CpuPerOp {
            process_us: per_op(own_cpu_secs() - self.process),
            broker_us: self
                .broker
                .and_then(|(pid, start)| Some(per_op(process_cpu_secs(pid)? - start))),
        })
    }
}

/// This process's CPU time, seconds: `CLOCK_PROCESS_CPUTIME_ID`, which counts every thread,
/// ended ones included, to the nanosecond.
fn own_cpu_secs() -> f64 {
    clock_secs(rustix::time::ClockId::ProcessCPUTime)
}

/// A clock's reading, seconds.
fn clock_secs(clock: rustix::time::ClockId) -> f64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Another process's CPU time, seconds: the sum over its threads of the nanoseconds each has
/// run (`/proc/<pid>/task/<tid>/schedstat`, first field). `None` where `/proc` is missing or
/// the process is gone. (mosquitto runs in one thread, so none ends between two readings.)
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let schedstat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_on_this_process_shows_in_its_cpu_per_operation() {
        let meter = CpuMeter::start(None);
        // 20 ms of this thread's own CPU (its own clock, not the one under test), however
        // long the machine takes to give it.
        let thread = || clock_secs(rustix::time::ClockId::ThreadCPUTime);
        let started = thread();
        let mut x = 0u64;
        while thread() - started < 0.02 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let cpu = meter.per_op(10).expect("ten operations");
        // The process's clock counts this thread: at least 2,000 µs per operation.
        assert!(cpu.process_us >= 2_000.0, "{cpu:?}");
        assert_eq!(cpu.broker_us, None);
        assert_eq!(meter.per_op(0), None);
    }

    #[test]
    fn another_process_cpu_time_is_read_from_proc() {
        #[cfg(target_os = "linux")]
        {
            let own = process_cpu_secs(std::process::id()).expect("/proc is readable");
            assert!(own > 0.0);
        }
        assert_eq!(process_cpu_secs(u32::MAX), None, "no such process");
    }
}
