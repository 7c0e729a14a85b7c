//! The values the [`Fleet`](crate::Fleet) API takes and returns.

use std::sync::Arc;

use fleetops_core::config::{
    AbortCriterion, JobConfig, RetryCriterion, Rollout, TargetSelection, Targets,
};
use fleetops_core::job::Job;
use fleetops_core::projection::JobCounters;
use fleetops_core::Duration;
use fleetops_core::{CommandStatus, ExecutionId, GroupName, JobId, ThingName, Timestamp};
use serde_json::Value;

pub use fleetops_machine::StatusChange;

/// A request to create a job.
///
/// ```
/// use fleetops_core::{JobId, ThingName};
/// use fleetops_service::JobSpec;
/// let spec = JobSpec::new(JobId::parse("fw-2").unwrap(), serde_json::json!({"url": "…"}))
///     .things([ThingName::parse("t1").unwrap()]);
/// assert_eq!(spec.targets.things.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The new job's id.
    pub job_id: JobId,
    /// A name for people.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Things and groups.
    pub targets: Targets,
    /// Snapshot (default) or continuous.
    pub selection: TargetSelection,
    /// What devices get (a JSON object).
    pub document: Value,
    /// Rollout, abort, retry, timeouts, schedule.
    pub config: JobConfig,
}

impl JobSpec {
    /// A snapshot job with no targets yet and default options.
    pub fn new(job_id: JobId, document: Value) -> Self {
        Self {
            job_id,
            name: None,
            description: None,
            targets: Targets::default(),
            selection: TargetSelection::Snapshot,
            document,
            config: JobConfig::default(),
        }
    }

    /// Adds things as targets.
    pub fn things(mut self, things: impl IntoIterator<Item = ThingName>) -> Self {
        self.targets.things.extend(things);
        self
    }

    /// Adds groups as targets.
    pub fn groups(mut self, groups: impl IntoIterator<Item = GroupName>) -> Self {
        self.targets.groups.extend(groups);
        self
    }

    /// Follows group membership after the start.
    pub fn continuous(mut self) -> Self {
        self.selection = TargetSelection::Continuous;
        self
    }

    /// Sets the options.
    pub fn config(mut self, config: JobConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// A job with its per-status execution counts.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDescription {
    /// The job's state, shared with the runtime (a job may name 100,000 things; describing
    /// it must not copy them).
    pub job: Arc<Job>,
    /// Per-status execution counts.
    pub counters: JobCounters,
    /// Targets that have no execution yet (rollout still to do).
    pub remaining_targets: u64,
    /// A staged job's figures per configured stage, in order (empty without stages).
    pub stages: Vec<fleetops_core::policy::stages::StageProgress>,
}

/// A change to a scheduled or running job (see [`Fleet::update_job`](crate::Fleet::update_job));
/// `None` keeps a value as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    /// New description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// New in-progress timeout (`Some(None)` removes it), for executions queued from now on.
    pub in_progress_timeout: Option<Option<Duration>>,
    /// New rollout rate.
    pub rollout: Option<Rollout>,
    /// New abort rules.
    pub abort: Option<Vec<AbortCriterion>>,
    /// New retry rules, for failures from now on.
    pub retry: Option<Vec<RetryCriterion>>,
}

/// A job in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    /// The job.
    pub job_id: JobId,
    /// Its name.
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Its status.
    pub status: JobStatus,
    /// Whether its rollout is paused (and it can still be resumed).
    pub paused: bool,
    /// Snapshot or continuous.
    pub selection: TargetSelection,
    /// Things targeted: those with an execution plus those still to queue once the job has
    /// started; before, the named things and current group members, each counted once.
    pub targets: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// Per-status execution counts.
    pub counters: JobCounters,
}

pub use fleetops_core::JobStatus;

/// A thing group in a listing: its members are counted, not copied (a group may hold
/// 100,000 things).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Its name.
    pub name: GroupName,
    /// Free text.
    pub description: Option<String>,
    /// How many things it holds.
    pub members: usize,
}

/// Which jobs to list; every field left `None` lets all through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only snapshot or only continuous jobs.
    pub selection: Option<TargetSelection>,
}

/// A job execution in a listing: the read side's one record of it
/// ([`ExecutionEntry`](fleetops_core::projection::ExecutionEntry)) with its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRow {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub thing: ThingName,
    /// The execution as folded: status, attempt, version, times and deadlines.
    pub execution: fleetops_core::projection::ExecutionEntry,
}

/// A command execution in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    /// The execution.
    pub execution_id: ExecutionId,
    /// The device.
    pub thing: ThingName,
    /// What it asks of the device.
    pub action: String,
    /// Its status.
    pub status: CommandStatus,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When its TTL ends.
    pub deadline: Timestamp,
}

/// Keyset paging: at most `limit` items after the key `after` (exclusive).
///
/// ```
/// use fleetops_service::Page;
/// let first = Page::first(50);
/// assert_eq!(first.after, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The last key of the previous page (a thing name, job id or execution id).
    pub after: Option<String>,
    /// The most items to return (capped at [`Page::MAX_LIMIT`]).
    pub limit: usize,
}

impl Page {
    /// The largest page served.
    pub const MAX_LIMIT: usize = 1000;

    /// The first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { after: None, limit }
    }

    /// The page after `key`.
    pub fn after(key: impl Into<String>, limit: usize) -> Self {
        Self {
            after: Some(key.into()),
            limit,
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.limit.clamp(1, Self::MAX_LIMIT)
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::first(100)
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    /// The items.
    pub items: Vec<T>,
    /// The key to pass as [`Page::after`] for the next page; `None` at the end.
    pub next: Option<String>,
}

/// One page of a stream's history, from [`Fleet::history`](crate::Fleet::history).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The stored events with their envelopes, oldest first.
    pub events: Vec<fleetops_core::store::StoredEvent>,
    /// The stream version to pass as `after` for the next page; `None` on the last page.
    pub next: Option<u64>,
}

/// Tuning of the runtime; the defaults suit a small server.
///
/// ```
/// use fleetops_service::FleetConfig;
/// let config = FleetConfig { fail_commands_when_offline: true, ..FleetConfig::default() };
/// assert_eq!(config.shards, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Worker tasks that serialize device requests and timers per thing.
    pub shards: usize,
    /// Executions queued (or canceled, retried) per atomic append by the job driver.
    pub job_batch: usize,
    /// Requests a worker takes from its queue at once.
    pub worker_batch: usize,
    /// The most items of one thing's job traffic (or of one command execution) in one worker
    /// batch. Each thing's items run one after the other while other things run beside them,
    /// and a batch ends when its longest chain does: the cap keeps one noisy thing from
    /// holding a shard. The rest waits, in order, for the next batches.
    pub worker_batch_per_thing: usize,
    /// Capacity of each worker's queue (back-pressure on the link and the scheduler). A
    /// worker also holds up to this many items it took from the queue but has not run yet
    /// (the rest of a noisy thing's items, see `worker_batch_per_thing`).
    pub worker_queue: usize,
    /// Attempts at an optimistic append before giving up with `Contention`.
    pub max_conflict_retries: usize,
    /// Refuse a command at once when presence says the thing is offline.
    pub fail_commands_when_offline: bool,
    /// Entries in a `notify` message (the protocol says at most 10).
    pub notify_max: usize,
    /// Messages per `DeviceLink::send` from the outbox.
    pub outbox_batch: usize,
    /// Buffer of the status-change broadcast; slow receivers lose the oldest. It also bounds
    /// the job execution status changes waiting in the outbox to be published (the oldest
    /// are dropped, with a warning, when the link falls that far behind).
    pub status_change_buffer: usize,
    /// Publish every job execution status change through the link as an
    /// [`Outbound::StatusChange`](fleetops_core::device::Outbound::StatusChange) (MQTT:
    /// `{prefix}/events/jobExecution/{jobId}/{status}`), batched by the outbox with the other
    /// messages. Best effort, like the broadcast: not re-sent after a restart.
    pub publish_status_changes: bool,
    /// With `publish_status_changes`, also publish the status changes of commands sent with a
    /// command id as [`Outbound::CommandStatusChange`](fleetops_core::device::Outbound::CommandStatusChange)
    /// (MQTT `$aws` layout: `$aws/events/commandExecution/{commandId}/{status}`). Off by
    /// default: only a link speaking AWS IoT Commands has a topic for them.
    pub publish_command_status_changes: bool,
    /// Job execution states kept in memory to spare the store a replay per device request
    /// (0 turns the cache off). Stale entries are harmless: appends check versions. Only an
    /// execution with status details needs its entry: without any, the read model's record
    /// is the whole state, and a miss costs no read.
    pub execution_cache: usize,
    /// Folded events between two snapshots of the projections, the persisted checkpoint a
    /// start resumes from instead of folding the whole feed (0: never save nor load one).
    /// A snapshot is also saved by [`Fleet::shutdown`](crate::Fleet::shutdown). Each save
    /// copies the whole read model (the follower waits for the copy) and encodes the copy
    /// on a blocking thread, so memory briefly holds the read model twice (measured on a
    /// 100,000-device job: peak RSS 572 MiB instead of 457, the job no slower;
    /// `BENCHMARKS.md`).
    pub snapshot_every: u64,
    /// How long the answer to a state-changing device request (start-next, update, command
    /// response) that carried a `clientToken` is remembered: the same request from the same
    /// thing with the same token (same operation, job or command execution) within this
    /// window gets the same answer again instead of a fresh decision.
    pub retry_window: std::time::Duration,
    /// The most answers remembered per thing for retries (the oldest are forgotten first).
    pub retry_replies_per_thing: usize,
    /// The most answers remembered for retries in all (split evenly across the shards).
    pub retry_replies: usize,
    /// How long a write waits for the projections to fold it before it fails with
    /// [`FleetError::Unavailable`](crate::FleetError::Unavailable) (the write is stored; it
    /// shows once the projections catch up). Writes fail at once, without waiting, while
    /// [`Fleet::health`](crate::Fleet::health) says the store or the follower failed.
    pub apply_timeout: std::time::Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            shards: 4,
            job_batch: 1000,
            worker_batch: 256,
            worker_queue: 4096,
            max_conflict_retries: 8,
            fail_commands_when_offline: false,
            notify_max: 10,
            outbox_batch: 512,
            status_change_buffer: 4096,
            publish_status_changes: true,
            publish_command_status_changes: false,
            execution_cache: crate::cache::DEFAULT_CAPACITY,
            snapshot_every: 100_000,
            worker_batch_per_thing: 16,
            retry_window: std::time::Duration::from_secs(600),
            retry_replies_per_thing: 16,
            retry_replies: 100_000,
            apply_timeout: std::time::Duration::from_secs(10),
        }
    }
}
