//! # fleetops-core
//!
//! The pure, deterministic heart of fleetops: validated ids, the three event-sourced aggregates
//! (command execution, job, job execution) plus thing groups, their events, the transition
//! rules, the timeout / rollout / abort / retry policies, the device-facing operations as typed
//! values, and the ports (`EventStore`, `DeviceLink`) the adapters implement.
//!
//! Nothing here performs I/O, reads a clock or draws a random number: `now` and new ids are
//! parameters, so every decision can be replayed and tested exactly. The async runtime lives in
//! `fleetops-service`; storage and transport live in their own crates.
//!
//! Every aggregate follows the same shape:
//! - `decide(&state, intent, now) -> Result<Vec<Event>, Rejection>` holds every rule;
//! - `evolve(state, &event) -> Result<state, EvolveError>` only applies facts.

pub mod aggregate;
pub mod command;
pub mod config;
pub mod device;
pub mod event;
pub mod group;
pub mod ids;
pub mod job;
pub mod job_execution;
pub mod limits;
pub mod link;
pub mod policy;
pub mod projection;
pub mod rejection;
pub mod status;
pub mod store;
pub mod time;

pub use aggregate::Aggregate;
pub use event::{Event, EvolveError};
pub use ids::{ExecutionId, GroupName, IdError, JobId, StreamId, ThingName};
pub use rejection::{ErrorCode, Rejection};
pub use status::{CommandStatus, JobExecutionStatus, JobStatus};
pub use store::{EventStore, StoreError};
pub use time::{Duration, Timestamp};

#[cfg(feature = "testkit")]
pub mod testkit;

#[cfg(feature = "proptest")]
pub mod strategies;

#[cfg(feature = "arbitrary")]
mod fuzzing;
