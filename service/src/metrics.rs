//! What the runtime counts for monitoring, read with [`Fleet::metrics`](crate::Fleet::metrics):
//! device requests by operation and result, refusals by code, store append latency and
//! command latency, counted as they happen; executions, jobs and commands by status and the
//! outbox backlog, computed from the read model when asked. Plain numbers: the binary renders
//! them in Prometheus' format, an embedder in whatever its monitoring wants.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fleetops_core::device::{Operation, Outbound};
use fleetops_core::{CommandStatus, ErrorCode, JobExecutionStatus, JobStatus};

use crate::sync::lock;

/// Upper bounds (seconds) of the store append latency buckets: a flush-per-append store
/// answers in about 0.2–2 ms; the top buckets catch a struggling disk or database.
const APPEND_BOUNDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds (seconds) of the command latency buckets: from a sub-millisecond round trip
/// on loopback to a command that waits out a long TTL.
const COMMAND_BOUNDS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];

/// A histogram with fixed buckets, updated without a lock.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<AtomicU64>,
    /// The sum of the observations in microseconds (whole microseconds add up exactly).
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        // Microseconds to seconds for display; precision loss only past 2^53 µs (285 years).
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        HistogramSnapshot {
            buckets,
            sum,
            count: total,
        }
    }
}

/// A histogram as read: cumulative counts per upper bound (seconds), the last bound
/// `f64::INFINITY`; the sum of the observations in seconds; their count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, bounds increasing, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// The runtime's figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetMetrics {
    /// Job executions by their current status (every status listed, zeros included).
    pub executions_by_status: Vec<(JobExecutionStatus, u64)>,
    /// Jobs by status (every status listed).
    pub jobs_by_status: Vec<(JobStatus, u64)>,
    /// Command executions by status (every status listed).
    pub commands_by_status: Vec<(CommandStatus, u64)>,
    /// Device requests answered, by operation (`get-pending`, `start-next`, `describe`,
    /// `update`, `command-response`) and result (`accepted`, `rejected`).
    pub device_requests: Vec<(&'static str, &'static str, u64)>,
    /// Refused device requests by error code (those the transport refuses itself before
    /// they reach the runtime are counted by the link).
    pub refusals: Vec<(ErrorCode, u64)>,
    /// Messages the outbox owes devices and has not sent yet.
    pub outbox_backlog: u64,
    /// Messages that could never be delivered (see [`Health`](crate::Health)).
    pub undeliverable: u64,
    /// Messages whose delivery kept failing and was left to recovery.
    pub given_up: u64,
    /// Store appends that failed (conflicts excluded: they are part of deciding).
    pub append_failures: u64,
    /// How long store appends took, from the call to the store's answer.
    pub append_seconds: HistogramSnapshot,
    /// How long commands took from being sent to their terminal status, as this runtime
    /// folded them (every runtime sharing a store folds every command).
    pub command_seconds: HistogramSnapshot,
    /// The global position the read model has folded.
    pub checkpoint: u64,
    /// Whether this runtime does the fleet-wide duties.
    pub leading: bool,
}

/// The counters the tasks update.
#[derive(Debug)]
pub(crate) struct Recorder {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    refusals: Mutex<HashMap<ErrorCode, u64>>,
    append: Histogram,
    append_failures: AtomicU64,
    command: Histogram,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(HashMap::new()),
            append: Histogram::new(APPEND_BOUNDS),
            append_failures: AtomicU64::new(0),
            command: Histogram::new(COMMAND_BOUNDS),
        }
    }
}

/// The operation's name in metrics.
fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::GetPending => "get-pending",
        Operation::StartNext => "start-next",
        Operation::Describe(_) => "describe",
        Operation::Update(_) => "update",
        Operation::CommandResponse(_) => "command-response",
    }
}

impl Recorder {
    /// Counts the answer to a device request.
    pub fn answered(&self, reply: &Outbound) {
        let (op, result, code) = match reply {
            Outbound::Accepted { operation, .. } => (operation_name(operation), "accepted", None),
            Outbound::Rejected {
                operation,
                rejection,
                ..
            } => (
                operation_name(operation),
                "rejected",
                Some(rejection.code()),
            ),
            _ => return,
        };
        *lock(&self.requests).entry((op, result)).or_insert(0) += 1;
        if let Some(code) = code {
            *lock(&self.refusals).entry(code).or_insert(0) += 1;
        }
    }

    /// Records one store append's latency, and whether it failed for another reason than a
    /// version conflict.
    pub fn appended(&self, took: Duration, failed: bool) {
        self.append.observe(took);
        if failed {
            self.append_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a command's time from sent to terminal.
    pub fn command_done(&self, took: Duration) {
        self.command.observe(took);
    }

    /// The counted part of [`FleetMetrics`].
    pub fn fill(&self, m: &mut FleetMetrics) {
        m.device_requests = lock(&self.requests)
            .iter()
            .map(|((op, result), n)| (*op, *result, *n))
            .collect();
        m.refusals = ErrorCode::ALL
            .iter()
            .map(|c| (*c, lock(&self.refusals).get(c).copied().unwrap_or(0)))
            .collect();
        m.append_seconds = self.append.snapshot();
        m.append_failures = self.append_failures.load(Ordering::Relaxed);
        m.command_seconds = self.command.snapshot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively_and_sums_in_seconds() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 1), (0.01, 3), (f64::INFINITY, 4)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 2.0105).abs() < 1e-9, "{}", s.sum);
    }
}
