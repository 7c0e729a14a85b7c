//! Projections: pure folds over the global feed.
//!
//! They hold what no single stream should (docs/design.md, "no hot stream"): per-job status
//! counters, each thing's queue of pending executions (what `notify` and `start-next` read) and
//! the deadline index the scheduler sleeps on. Each fold is O(1) per event (amortised, with
//! logarithmic ordered-set updates) and keeps a bounded entry per execution.
//!
//! [`Projections::apply`] skips events at or below its checkpoint, so a caller that persists
//! the checkpoint with the state resumes without seeing an event twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::config::FailureType;
use crate::device::ExecutionSummary;
use crate::event::Event;
use crate::ids::{JobId, StreamId, StreamKind, ThingName};
use crate::job_execution::JobExecution;
use crate::status::{JobExecutionStatus, StatusDetails};
use crate::store::StoredEvent;
use crate::time::{Duration, Timestamp};

/// Per-status execution counts of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCounters {
    /// `QUEUED`.
    pub queued: u64,
    /// `IN_PROGRESS`.
    pub in_progress: u64,
    /// `SUCCEEDED`.
    pub succeeded: u64,
    /// `FAILED`.
    pub failed: u64,
    /// `REJECTED`.
    pub rejected: u64,
    /// `TIMED_OUT`.
    pub timed_out: u64,
    /// `CANCELED`.
    pub canceled: u64,
    /// `REMOVED`.
    pub removed: u64,
}

impl JobCounters {
    fn slot(&mut self, s: JobExecutionStatus) -> &mut u64 {
        use JobExecutionStatus as S;
        match s {
            S::Queued => &mut self.queued,
            S::InProgress => &mut self.in_progress,
            S::Succeeded => &mut self.succeeded,
            S::Failed => &mut self.failed,
            S::Rejected => &mut self.rejected,
            S::TimedOut => &mut self.timed_out,
            S::Canceled => &mut self.canceled,
            S::Removed => &mut self.removed,
        }
    }

    /// The count of one status.
    pub fn get(&self, s: JobExecutionStatus) -> u64 {
        let mut copy = *self;
        *copy.slot(s)
    }

    /// Moves one execution from `from` (`None`: new) to `to`.
    pub fn record(&mut self, from: Option<JobExecutionStatus>, to: JobExecutionStatus) {
        if let Some(f) = from {
            let slot = self.slot(f);
            *slot = slot.saturating_sub(1);
        }
        *self.slot(to) += 1;
    }

    /// Executions still owed to devices.
    pub fn pending(&self) -> u64 {
        self.queued + self.in_progress
    }

    /// Executions the devices finished or that timed out: the base of abort percentages.
    pub fn executed(&self) -> u64 {
        self.succeeded + self.failed + self.rejected + self.timed_out
    }

    /// Executions whose status matches `failure_type`.
    pub fn failures(&self, failure_type: FailureType) -> u64 {
        match failure_type {
            FailureType::Failed => self.failed,
            FailureType::Rejected => self.rejected,
            FailureType::TimedOut => self.timed_out,
            FailureType::All => self.failed + self.rejected + self.timed_out,
        }
    }

    /// Every execution ever queued and not removed.
    pub fn total(&self) -> u64 {
        self.pending() + self.executed() + self.canceled
    }
}

impl FromIterator<JobExecutionStatus> for JobCounters {
    /// Counts executions by status (handy for tests and for rebuilding figures).
    fn from_iter<I: IntoIterator<Item = JobExecutionStatus>>(statuses: I) -> Self {
        let mut counters = Self::default();
        for s in statuses {
            counters.record(None, s);
        }
        counters
    }
}

/// A thing's pending executions in [`PendingKey`] order. A sorted `Vec` sized to its length
/// rather than a `BTreeSet`: most things have one or two pending executions, and a
/// `BTreeSet` allocates a node of eleven keys (≈ 450 bytes) for the first, which was a third
/// of the runtime's memory per queued execution.
#[derive(Debug, Clone, Default)]
struct PendingQueue(Vec<PendingKey>);

impl PendingQueue {
    fn insert(&mut self, key: PendingKey) {
        if let Err(at) = self.0.binary_search(&key) {
            // Grow by one, not by the default doubling: the queue is usually that short.
            self.0.reserve_exact(1);
            self.0.insert(at, key);
        }
    }

    fn remove(&mut self, key: &PendingKey) {
        if let Ok(at) = self.0.binary_search(key) {
            self.0.remove(at);
        }
    }

    fn first(&self) -> Option<&PendingKey> {
        self.0.first()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a PendingQueue {
    type Item = &'a PendingKey;
    type IntoIter = std::slice::Iter<'a, PendingKey>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Where an execution sits in its thing's pending queue: in progress first, then queued, each
/// by queue time, then job id for a total order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PendingKey {
    /// 0 for `IN_PROGRESS`, 1 for `QUEUED`.
    pub rank: u8,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// The job.
    pub job_id: JobId,
}

/// The one record the read side keeps per execution: a few words, whatever the job
/// document's size. Listings, `jobs/get`, `notify`, the pending queues, the deadline index
/// and the runtime's decisions all read it; only the status details (which need the stream)
/// are left out, and [`ExecutionEntry::has_status_details`] says whether there are any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionEntry {
    /// Current status.
    pub status: JobExecutionStatus,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    /// The last change.
    pub last_updated_at: Timestamp,
    /// The stream version, which is also the execution's `versionNumber` (every event bumps
    /// it).
    pub version: u64,
    /// Current attempt.
    pub execution_number: u32,
    /// In-progress deadline.
    pub in_progress_deadline: Option<Timestamp>,
    /// Step deadline.
    pub step_deadline: Option<Timestamp>,
    /// The job's in-progress timeout, to compute the deadline at start.
    pub in_progress_timeout: Option<Duration>,
    /// Whether the execution has status details. Without any, this record is the whole
    /// state ([`ExecutionEntry::full_state`]), so a runtime that no longer caches the state
    /// need not read the stream back to decide on it.
    pub has_status_details: bool,
}

impl ExecutionEntry {
    /// The execution as `jobs/get` and `notify` list it.
    pub fn summary(&self, job_id: &JobId) -> ExecutionSummary {
        ExecutionSummary {
            job_id: job_id.clone(),
            queued_at: self.queued_at,
            started_at: self.started_at,
            last_updated_at: self.last_updated_at,
            version_number: self.version,
            execution_number: self.execution_number,
        }
    }

    /// The execution's aggregate state without its status details, which only the stream
    /// holds: enough for the runtime's own intents (cancel, remove, retry, time out), whose
    /// rules never read the details. A refusal that would quote them is the caller's cue to
    /// load the stream.
    pub fn to_state(&self, job_id: &JobId, thing: &ThingName) -> JobExecution {
        JobExecution {
            job_id: job_id.clone(),
            thing: thing.clone(),
            status: self.status,
            status_details: StatusDetails::new(),
            queued_at: self.queued_at,
            started_at: self.started_at,
            last_updated_at: self.last_updated_at,
            version_number: self.version,
            execution_number: self.execution_number,
            in_progress_timeout: self.in_progress_timeout,
            in_progress_deadline: self.in_progress_deadline,
            step_deadline: self.step_deadline,
        }
    }

    /// The execution's whole aggregate state, as the stream replays to, when it has no status
    /// details (most executions: devices that only report a status); `None` when it has some,
    /// which only the stream holds.
    pub fn full_state(&self, job_id: &JobId, thing: &ThingName) -> Option<JobExecution> {
        (!self.has_status_details).then(|| self.to_state(job_id, thing))
    }

    fn deadline(&self) -> Option<Timestamp> {
        if self.status != JobExecutionStatus::InProgress {
            return None;
        }
        match (self.in_progress_deadline, self.step_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn pending_key(&self, job_id: &JobId) -> Option<PendingKey> {
        let rank = match self.status {
            JobExecutionStatus::InProgress => 0,
            JobExecutionStatus::Queued => 1,
            _ => return None,
        };
        Some(PendingKey {
            rank,
            queued_at: self.queued_at,
            job_id: job_id.clone(),
        })
    }
}

/// Why an event could not be projected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// A job execution event arrived for an execution that was never queued.
    #[error("event {event} at position {position} for unknown execution {stream}")]
    UnknownExecution {
        /// The event's type tag.
        event: &'static str,
        /// Its global position.
        position: u64,
        /// Its stream.
        stream: StreamId,
    },
    /// The feed skipped a position: events were lost between the store and the projection.
    #[error("feed gap: expected position {expected}, got {got}")]
    Gap {
        /// The position that should have come next.
        expected: u64,
        /// The position that came.
        got: u64,
    },
}

/// Why a [`ProjectionsSnapshot`] cannot be restored: it contradicts itself, so it was not
/// written by [`Projections::snapshot`] (a corrupt or foreign record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The same execution appears twice.
    #[error("snapshot lists the execution of job {job} on {thing} twice")]
    DuplicateExecution {
        /// The job.
        job: JobId,
        /// The thing.
        thing: ThingName,
    },
    /// The same job's counters appear twice.
    #[error("snapshot lists the counters of job {0} twice")]
    DuplicateCounters(JobId),
    /// The same stream's deadline appears twice.
    #[error("snapshot lists a deadline of stream {0} twice")]
    DuplicateDeadline(StreamId),
}

/// A serializable image of [`Projections`] at their checkpoint, so a runtime can persist its
/// checkpoint with the state and resume the fold from there instead of from position 1.
///
/// Only what cannot be derived is kept: the per-thing pending queues are rebuilt from the
/// executions on [`Projections::restore`]. Every list is sorted, so equal projections give
/// equal snapshots (tests compare a restored-and-caught-up fold with a full one this way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionsSnapshot {
    /// The position of the last applied event.
    pub checkpoint: u64,
    /// Every execution, by job and thing.
    pub executions: Vec<(JobId, ThingName, ExecutionEntry)>,
    /// Per-job counters.
    pub counters: Vec<(JobId, JobCounters)>,
    /// Armed deadlines, by stream.
    pub deadlines: Vec<(StreamId, Timestamp)>,
}

/// The runtime's read models, folded from the global feed.
#[derive(Debug, Clone, Default)]
pub struct Projections {
    checkpoint: u64,
    /// Every execution, by job, then by thing in order (so a job's executions page by
    /// thing name without a second index).
    executions: HashMap<JobId, BTreeMap<ThingName, ExecutionEntry>>,
    /// How many entries `executions` holds.
    execution_count: usize,
    counters: HashMap<JobId, JobCounters>,
    pending: HashMap<ThingName, PendingQueue>,
    deadlines: BTreeSet<(Timestamp, StreamId)>,
    deadline_of: HashMap<StreamId, Timestamp>,
}

impl Projections {
    /// Empty projections at position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position of the last applied event.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Applies one stored event. Events at or below the checkpoint are skipped (a replay after
    /// restart); a position past `checkpoint + 1` is a gap and refused.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<(), ProjectionError> {
        if stored.position <= self.checkpoint {
            return Ok(());
        }
        if stored.position != self.checkpoint + 1 {
            return Err(ProjectionError::Gap {
                expected: self.checkpoint + 1,
                got: stored.position,
            });
        }
        self.apply_event(stored)?;
        self.checkpoint = stored.position;
        Ok(())
    }

    fn set_deadline(&mut self, stream: &StreamId, at: Option<Timestamp>) {
        if let Some(old) = self.deadline_of.remove(stream) {
            self.deadlines.remove(&(old, stream.clone()));
        }
        if let Some(at) = at {
            self.deadline_of.insert(stream.clone(), at);
            self.deadlines.insert((at, stream.clone()));
        }
    }

    fn apply_event(&mut self, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let stream = &stored.stream;
        match &stored.event {
            Event::CommandSent { ttl, sent_at, .. } => {
                self.set_deadline(stream, Some(*sent_at + *ttl))
            }
            Event::CommandResponded { .. }
            | Event::CommandTimedOut { .. }
            | Event::CommandCanceled { .. } => {
                self.set_deadline(stream, None);
            }
            Event::JobCreated {
                config, created_at, ..
            } => {
                // A job that starts at once gets JobStarted next, which sets the end deadline.
                let start = config.schedule.start_time.filter(|t| t > created_at);
                self.set_deadline(stream, start);
            }
            Event::JobStarted { .. } => {
                // Read the end time from the job's own deadline bookkeeping: the job aggregate
                // re-arms it through `Job::next_deadline`; here only clear the start deadline.
                self.set_deadline(stream, None);
            }
            Event::JobRolloutStopped { .. }
            | Event::JobCompleted { .. }
            | Event::JobCanceled { .. }
            | Event::JobDeleted { .. } => self.set_deadline(stream, None),
            Event::GroupCreated { .. }
            | Event::GroupMembersAdded { .. }
            | Event::GroupMembersRemoved { .. }
            | Event::GroupDeleted { .. } => {}
            _ => self.apply_execution(stored)?,
        }
        Ok(())
    }

    fn apply_execution(&mut self, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let (stream, event, position) = (&stored.stream, &stored.event, stored.position);
        let Some(to) = event.execution_status() else {
            return Ok(());
        };
        let StreamKind::JobExecution(job_id, thing) = stream.kind() else {
            return Err(ProjectionError::UnknownExecution {
                event: event.type_name(),
                position,
                stream: stream.clone(),
            });
        };
        let old = self
            .executions
            .get(&job_id)
            .and_then(|m| m.get(&thing))
            .cloned();
        let mut entry = match (&old, event) {
            (
                None,
                Event::ExecutionQueued {
                    queued_at,
                    execution_number,
                    in_progress_timeout,
                    ..
                },
            ) => ExecutionEntry {
                status: to,
                queued_at: *queued_at,
                started_at: None,
                last_updated_at: *queued_at,
                version: 0,
                execution_number: *execution_number,
                in_progress_deadline: None,
                step_deadline: None,
                in_progress_timeout: *in_progress_timeout,
                has_status_details: false,
            },
            (Some(e), _) => e.clone(),
            (None, _) => {
                return Err(ProjectionError::UnknownExecution {
                    event: event.type_name(),
                    position,
                    stream: stream.clone(),
                })
            }
        };
        entry.status = to;
        entry.version = stored.stream_version;
        // As the aggregate's fold: an event that carries details replaces them, a requeue
        // clears them, and every other event leaves them as they were.
        match event {
            Event::ExecutionStarted {
                status_details: Some(d),
                ..
            }
            | Event::ExecutionProgressed {
                status_details: Some(d),
                ..
            }
            | Event::ExecutionFinished {
                status_details: Some(d),
                ..
            }
            | Event::ExecutionCanceled {
                status_details: Some(d),
                ..
            } => entry.has_status_details = !d.is_empty(),
            Event::ExecutionRequeued { .. } => entry.has_status_details = false,
            _ => {}
        }
        match event {
            Event::ExecutionStarted {
                at,
                in_progress_deadline,
                step,
                ..
            } => {
                entry.started_at = Some(*at);
                entry.last_updated_at = *at;
                entry.in_progress_deadline = *in_progress_deadline;
                apply_step(&mut entry, *step);
            }
            Event::ExecutionProgressed { at, step, .. } => {
                entry.last_updated_at = *at;
                apply_step(&mut entry, *step);
            }
            Event::ExecutionFinished { at, .. }
            | Event::ExecutionTimedOut { at, .. }
            | Event::ExecutionCanceled { at, .. }
            | Event::ExecutionRemoved { at, .. } => entry.last_updated_at = *at,
            Event::ExecutionRequeued {
                execution_number,
                queued_at,
            } => {
                entry.execution_number = *execution_number;
                entry.queued_at = *queued_at;
                entry.started_at = None;
                entry.last_updated_at = *queued_at;
            }
            _ => {}
        }
        // Timers run only while in progress, as in the aggregate.
        if to != JobExecutionStatus::InProgress {
            entry.in_progress_deadline = None;
            entry.step_deadline = None;
        }
        let key = (job_id, thing);
        let (job_id, thing) = (&key.0, &key.1);
        self.counters
            .entry(job_id.clone())
            .or_default()
            .record(old.as_ref().map(|e| e.status), to);
        let old_key = old.as_ref().and_then(|e| e.pending_key(job_id));
        let new_key = entry.pending_key(job_id);
        if old_key != new_key {
            if let Some(k) = old_key {
                if let Some(set) = self.pending.get_mut(thing) {
                    set.remove(&k);
                    if set.is_empty() {
                        self.pending.remove(thing);
                    }
                }
            }
            if let Some(k) = new_key {
                self.pending.entry(thing.clone()).or_default().insert(k);
            }
        }
        self.set_deadline(stream, entry.deadline());
        if old.is_none() {
            self.execution_count += 1;
        }
        let (job_id, thing) = key;
        self.executions
            .entry(job_id)
            .or_default()
            .insert(thing, entry);
        Ok(())
    }

    /// The counters of a job (all zero for an unknown job).
    pub fn counters(&self, job: &JobId) -> JobCounters {
        self.counters.get(job).copied().unwrap_or_default()
    }

    /// A thing's pending executions, in progress first, then queued by queue time.
    pub fn pending(&self, thing: &ThingName) -> impl Iterator<Item = &PendingKey> + '_ {
        self.pending.get(thing).into_iter().flatten()
    }

    /// The first `per_kind` in-progress and the first `per_kind` queued executions of a
    /// thing, in queue order: what a bounded pending list shows however many are pending.
    pub fn pending_listed(
        &self,
        thing: &ThingName,
        per_kind: usize,
    ) -> impl Iterator<Item = &PendingKey> + '_ {
        let set = self.pending.get(thing);
        let in_progress = set
            .into_iter()
            .flatten()
            .take_while(|k| k.rank == 0)
            .take(per_kind);
        let queued = set
            .into_iter()
            .flatten()
            .skip_while(|k| k.rank == 0)
            .take(per_kind);
        in_progress.chain(queued)
    }

    /// The next pending execution of a thing.
    pub fn next_pending(&self, thing: &ThingName) -> Option<&PendingKey> {
        self.pending.get(thing).and_then(|s| s.first())
    }

    /// The projected entry of one execution.
    pub fn execution(&self, job: &JobId, thing: &ThingName) -> Option<&ExecutionEntry> {
        self.executions.get(job)?.get(thing)
    }

    /// Every execution of a job, by thing name (empty for an unknown job).
    pub fn executions_of(
        &self,
        job: &JobId,
    ) -> impl DoubleEndedIterator<Item = (&ThingName, &ExecutionEntry)> + '_ {
        self.executions.get(job).into_iter().flatten()
    }

    /// The executions of a job on things after `after` (exclusive), by thing name: one
    /// page of a listing without walking the ones before it.
    pub fn executions_after<'a>(
        &'a self,
        job: &JobId,
        after: Option<&'a ThingName>,
    ) -> impl Iterator<Item = (&'a ThingName, &'a ExecutionEntry)> + 'a {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.executions
            .get(job)
            .into_iter()
            .flat_map(move |m| m.range::<ThingName, _>((lower, Bound::Unbounded)))
    }

    /// How many executions a job has (removed ones included).
    pub fn execution_count_of(&self, job: &JobId) -> usize {
        self.executions.get(job).map_or(0, BTreeMap::len)
    }

    /// Streams whose deadline is at or before `now`, earliest first.
    pub fn due(&self, now: Timestamp) -> impl Iterator<Item = &(Timestamp, StreamId)> + '_ {
        self.deadlines.iter().take_while(move |(at, _)| *at <= now)
    }

    /// The earliest deadline, for the scheduler's sleep.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Sets or clears a stream's deadline from outside the fold (the runtime arms a job's end
    /// time or a rollout window, which no single event states).
    pub fn arm(&mut self, stream: &StreamId, at: Option<Timestamp>) {
        self.set_deadline(stream, at);
    }

    /// Number of executions tracked.
    pub fn execution_count(&self) -> usize {
        self.execution_count
    }

    /// An image of the projections at their checkpoint, sorted for a stable encoding.
    pub fn snapshot(&self) -> ProjectionsSnapshot {
        let mut jobs: Vec<_> = self.executions.iter().collect();
        jobs.sort_by(|a, b| a.0.cmp(b.0));
        let executions: Vec<_> = jobs
            .into_iter()
            .flat_map(|(j, m)| m.iter().map(|(t, e)| (j.clone(), t.clone(), e.clone())))
            .collect();
        let mut counters: Vec<_> = self.counters.iter().map(|(j, c)| (j.clone(), *c)).collect();
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deadlines: Vec<_> = self
            .deadline_of
            .iter()
            .map(|(s, at)| (s.clone(), *at))
            .collect();
        deadlines.sort();
        ProjectionsSnapshot {
            checkpoint: self.checkpoint,
            executions,
            counters,
            deadlines,
        }
    }

    /// Rebuilds projections from a snapshot; the next event to apply is `checkpoint + 1`.
    /// A snapshot that contradicts itself is refused, so the caller can fold from position 1
    /// instead.
    pub fn restore(snapshot: ProjectionsSnapshot) -> Result<Self, SnapshotError> {
        let mut p = Projections {
            checkpoint: snapshot.checkpoint,
            ..Projections::default()
        };
        for (job, thing, entry) in snapshot.executions {
            if let Some(k) = entry.pending_key(&job) {
                p.pending.entry(thing.clone()).or_default().insert(k);
            }
            if p.executions
                .entry(job.clone())
                .or_default()
                .insert(thing.clone(), entry)
                .is_some()
            {
                return Err(SnapshotError::DuplicateExecution { job, thing });
            }
            p.execution_count += 1;
        }
        for (job, c) in snapshot.counters {
            if p.counters.insert(job.clone(), c).is_some() {
                return Err(SnapshotError::DuplicateCounters(job));
            }
        }
        for (stream, at) in snapshot.deadlines {
            if p.deadline_of.insert(stream.clone(), at).is_some() {
                return Err(SnapshotError::DuplicateDeadline(stream));
            }
            p.deadlines.insert((at, stream));
        }
        Ok(p)
    }
}

fn apply_step(entry: &mut ExecutionEntry, step: crate::event::StepTimer) {
    use crate::event::StepTimer;
    match step {
        StepTimer::Unchanged => {}
        StepTimer::Set(at) => entry.step_deadline = Some(at),
        StepTimer::Cleared => entry.step_deadline = None,
    }
}
