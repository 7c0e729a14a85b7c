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
//!
//! # Layers
//!
//! The modules are layered so each can be read and tested with only what is below it. A
//! module names only modules listed before it here, never one after it (re-exports count);
//! the workspace's `modules` test fails on any cycle.
//!
//! 1. **Values**: `time`, `cron` (maintenance windows), `ids`, `status` (statuses,
//!    `StatusDetails`, `ExecutionState`), `limits`, `access` (API key scopes and secret
//!    digests). Plain data and figures that everything above carries.
//! 2. **Vocabulary**: `rejection`, `config`, `template` (command payloads and parameters),
//!    `event`, `device`. What is refused, configured, stored, and exchanged with devices.
//! 3. **Ports and read models**: `aggregate` (the trait), `store`, `lease`, `link`,
//!    `projection`, `policy`. What aggregates are, where events go, who leads when several
//!    runtimes share a store, and the folds and pure rules the job decides with.
//! 4. **Aggregates**: `command`, `job`, `job_execution`, `group`, `thing`, `api_key`,
//!    `command_template`. None names another: what two of them share (a limit, a value
//!    type) moves down a layer, and stays reachable from its old path by a `pub use`.
//! 5. **Kits**: `testkit`, `strategies` and the `arbitrary` impls, behind features. They may
//!    name anything; nothing names them.
//!
//! # Features
//!
//! None is on by default, and none adds a dependency to a default build.
//!
//! - `testkit` — module `testkit`: the reference model of job executions and commands
//!   (`testkit::model`, for checking an embedding system against), the store conformance
//!   suite, a fault-injecting store and a given/when/then harness for aggregates.
//!
//!   ```
//!   # #[cfg(feature = "testkit")] {
//!   use fleetops_core::group::{Group, GroupIntent};
//!   use fleetops_core::testkit::gwt::given;
//!   use fleetops_core::{ErrorCode, Timestamp};
//!
//!   given::<Group>([])
//!       .when(GroupIntent::Delete, Timestamp::from_secs(1))
//!       .then_reject(ErrorCode::ResourceNotFound);
//!   # }
//!   ```
//!
//! - `proptest` — module `strategies`: proptest strategies of valid values of every public type
//!   (ids, statuses, times, status details, configs, events, intents, device requests), and of
//!   invalid ones each boundary refuses (`invalid_thing_name()`, `oversized_job_document()`,
//!   `invalid_status_details()`, …).
//!
//!   ```
//!   # #[cfg(feature = "proptest")] {
//!   use fleetops_core::strategies;
//!   use proptest::prelude::*;
//!
//!   // A config drawn for `now` passes validation at `now`.
//!   let configs = strategies::timestamp()
//!       .prop_flat_map(|now| (Just(now), strategies::job_config(now)));
//!   proptest!(|((now, config) in configs)| {
//!       prop_assert_eq!(config.validate(now), Ok(()));
//!   });
//!   # }
//!   ```
//!
//! - `arbitrary` — `arbitrary::Arbitrary` for the same types, for fuzz targets. Every value
//!   is valid: ids keep to their alphabet and length, texts, JSON and status details to their
//!   limits, configs pass validation (at any `now` before their end time). A `StatusDetails`
//!   drawn on its own is the generic `BTreeMap` impl, unbounded; those inside intents, requests
//!   and events are bounded.
//!
//!   ```
//!   # #[cfg(feature = "arbitrary")] {
//!   use arbitrary::{Arbitrary, Unstructured};
//!   use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
//!   use fleetops_core::{Aggregate, ThingName, Timestamp};
//!
//!   let mut u = Unstructured::new(b"some fuzzer bytes: sensor-7");
//!   let thing = ThingName::arbitrary(&mut u).unwrap();
//!   assert_eq!(ThingName::parse(thing.as_str()), Ok(thing));
//!   let intent = JobExecutionIntent::arbitrary(&mut u).unwrap();
//!   // Whatever it is, deciding it never panics.
//!   let _ = JobExecution::decide(None, intent, Timestamp::from_secs(1));
//!   # }
//!   ```

// On docs.rs-style builds (`--cfg docsrs`, nightly), items behind a feature are marked
// with the feature that enables them.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod access;
pub mod aggregate;
pub mod api_key;
pub mod command;
pub mod command_template;
pub mod config;
pub mod cron;
pub mod device;
pub mod event;
pub mod group;
pub mod ids;
pub mod job;
pub mod job_execution;
pub mod lease;
pub mod limits;
pub mod link;
pub mod policy;
pub mod projection;
pub mod rejection;
pub mod status;
pub mod store;
pub mod template;
pub mod thing;
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
