//! # fleetops-service
//!
//! [`Fleet`], the async runtime (tokio) an embedding Rust service uses to send **commands** and
//! run **jobs** on a fleet of devices. It is generic over the two ports of `fleetops-core`:
//! an [`EventStore`](fleetops_core::EventStore) (memory, sled, …) and a
//! [`DeviceLink`](fleetops_core::link::DeviceLink) (MQTT, or the in-process [`link::ChannelLink`]).
//!
//! The rules all live in core; this crate is the loop that receives, decides, appends,
//! publishes and sleeps until the next deadline ("pure core, thin driver loop").
//!
//! ## Tasks
//!
//! A fixed set of long-lived tasks, never one per execution:
//!
//! - **projection follower**: subscribes to the store's global feed and folds every event into
//!   core's `Projections` (per-job counters, per-thing pending queue, deadline index) and the
//!   service's own indexes; then tells the other tasks what the new events imply, and starts
//!   a snapshot save when one is due;
//! - **inbound loop**: reads `DeviceLink::recv` batches and routes each request to a worker
//!   shard chosen by thing name, so one thing's requests are decided in order;
//! - **worker shards** (4 by default): answer device requests (get pending, start-next,
//!   describe, update, command responses) and run per-execution timers; each batch of work
//!   runs things (and command executions) in parallel and submits all replies in one link
//!   batch, without waiting for the broker's acknowledgement before the next batch;
//! - **scheduler**: sleeps until the earliest deadline of the projections (command TTLs,
//!   in-progress and step timeouts, job start and end times, rollout windows) and fires what
//!   is due;
//! - **job driver**: retries, group-membership removals, cancel cleanup, job review (start,
//!   end, abort, complete) and the rollout, queuing executions in batches at the configured
//!   rate, each batch one atomic multi-stream append;
//! - **outbox**: publishes `notify`, `notify-next` and command requests that stored events
//!   imply, built from the current state when sent; what is owed is decided by
//!   `fleetops-machine`'s `Outbox`, which the follower feeds and this task polls.
//!
//! Every decision loads the aggregate (replaying its stream, or from the folded state for
//! jobs and groups), decides with `now` from the injected [`clock::Clock`], and appends with
//! `ExpectedVersion::Exact`; on a conflict it reloads and tries again. Each append is followed
//! by a wait for the follower to fold it, so every task reads its own writes.
//!
//! ## Recovery
//!
//! Start resumes the projections from the store's snapshot (the persisted checkpoint, see
//! below) and folds the events after it before serving. Then every job gets a tick (owed retries,
//! removals, cleanup, rollout and review are all derived from the folded state), every thing
//! with pending executions gets `notify` and `notify-next` again, live commands get their
//! request again (with the remaining TTL), and the scheduler fires every overdue deadline at
//! once. Devices treat duplicates as harmless, as the protocol requires.
//!
//! **Persisted checkpoints.** Every [`FleetConfig::snapshot_every`] folded events (100,000 by
//! default) and at [`Fleet::shutdown`], the read models are saved through the store's snapshot
//! port (`EventStore::save_snapshot`; store-sled writes them behind the events they reflect)
//! with the position they reflect. A snapshot is a cache of the feed: one that is missing,
//! undecodable, of another format or schema, or past the feed head is ignored with a warning
//! and the start folds from position 1. The tests check that a snapshot taken at any position
//! plus the rest of the feed folds to exactly the state of a full fold.
//!
//! ## Device notifications
//!
//! `notify` goes to a thing when an execution joins or leaves its pending list (queued, new
//! attempt, finished, canceled, removed), with at most [`FleetConfig::notify_max`] entries, in
//! progress first, then queued by queue time. `notify-next` goes when the thing's next pending
//! execution changes (another job, or a new attempt of the same job, or none left), never for
//! progress of the same execution. Both are built when sent, from the current state, so a
//! burst of changes to one thing yields one message of each kind with the latest state.
//!
//! ## Limits of this version
//!
//! - The read models keep a small record for every execution and command ever stored (about
//!   1.3 KB per execution, measured in `BENCHMARKS.md`); there is no retention policy yet.
//! - Status changes are offered as typed values ([`Fleet::status_changes`]); job execution
//!   changes are also sent through the link ([`FleetConfig::publish_status_changes`], on by
//!   default; MQTT publishes them on `{prefix}/events/jobExecution/{jobId}/{status}`). Both
//!   are best effort: a change folded but not yet published when the process stops is not
//!   published after the restart.
//! - One `Fleet` per store: the runtime assumes it is the only writer (other writers are
//!   detected by version checks, but their effects are only seen through the feed).
//!
//! ## Example
//!
//! ```
//! use fleetops_core::{JobId, ThingName, JobExecutionStatus};
//! use fleetops_service::{Fleet, JobSpec, link::ChannelLink, sim::{simulate, Outcome}};
//! use fleetops_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (link, devices) = ChannelLink::pair(256);
//! let fleet = Fleet::start(MemoryStore::new(), link).await?;
//! let _sim = simulate(devices, Outcome::Succeed);
//! let things: Vec<ThingName> = (0..10).map(|i| ThingName::parse(&format!("t{i}"))).collect::<Result<_, _>>()?;
//! let job = JobId::parse("hello")?;
//! fleet.create_job(JobSpec::new(job.clone(), serde_json::json!({"op": "hello"})).things(things)).await?;
//! loop {
//!     let d = fleet.describe_job(&job)?;
//!     if d.counters.succeeded == 10 { break; }
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! # Ok(()) }
//! ```
//!
//! In production the store is `fleetops-store-sled` and the link `fleetops-transport-mqtt`'s
//! `MqttLink`: `examples/embed_axum.rs` is a whole axum service built that way, and
//! `docs/embedding.md` walks through it and through testing an embedding with the reference
//! model, the in-process link and the [`clock::ManualClock`].
//!
//! ## Features
//!
//! None: test support lives in `fleetops-core`'s `testkit` and `proptest` features and in
//! [`link::ChannelLink`].

mod cache;
pub mod clock;
mod delivery;
pub mod error;
mod fleet;
mod follower;
mod health;
pub mod ids;
mod jobs;
mod keys;
mod leader;
pub mod link;
mod metrics;
mod outbox;
mod runtime;
mod scheduler;
pub mod sim;
mod snapshot;
mod sync;
mod templates;
mod types;
mod worker;

pub use error::FleetError;
pub use fleet::{CommandFilter, CommandHandle, EventStream, Fleet, FleetBuilder, ThingFilter};
pub use health::{Health, HealthStatus};
pub use keys::MAX_ACTIVE_API_KEYS;
pub use metrics::{FleetMetrics, HistogramSnapshot};
pub use templates::{CommandTemplateSpec, MAX_COMMAND_TEMPLATES};
pub use types::{
    CommandRow, ExecutionRow, FleetConfig, GroupSummary, HistoryPage, JobDescription, JobFilter,
    JobSpec, JobSummary, JobUpdate, Page, Paged, StatusChange,
};
