//! # fleetops-machine
//!
//! The part of the fleetops runtime that decides, without doing: the read model folded from
//! the store's global feed and the decisions the runtime takes from it, as synchronous code
//! with no async runtime, lock, clock, randomness or I/O. Time comes in as a parameter and
//! what to store or send goes out as data; `fleetops-service` is the tokio driver that moves
//! data between the ports (the store, the device link, the operators' API) and this crate.
//! CI checks that no runtime, storage or network crate is in its dependency tree, as it does
//! for `fleetops-core`.
//!
//! - [`ReadModel`]: core's projections (job counters, each thing's pending queue, the
//!   deadline index) plus the runtime's indexes (jobs with what their rollout still owes,
//!   executions, groups, commands), folded once per event by [`ReadModel::apply`], which
//!   also reports the [`Effects`] a live runtime acts on: jobs to look at again, things
//!   owed a `notify` or `notify-next`, command requests owed, [`StatusChange`]s.
//! - [`image`]: the read model as bytes, for the snapshots a start resumes from.
//! - [`jobs`]: what a job needs next (retries, removals, cancel cleanup, review, the next
//!   rollout batch) as a [`jobs::JobStep`], and the appends that carry it out.
//! - [`requests`]: where each device request goes ([`requests::Route`]) and the reply built
//!   from the state its decision left.
//! - [`timers`]: which deadlines are due and what decides each.
//! - [`replies`]: the answers a retried request (same thing, `clientToken` and operation)
//!   gets again instead of a fresh decision.
//! - [`outbox`]: what the runtime owes the devices (notifications, command requests, status
//!   changes to publish) as an [`outbox::Outbox`] the driver polls, what a restart owes
//!   again, and the messages built from the state current when they are sent.
//!
//! ## Layers
//!
//! `error` and `change` are leaves; `model` folds; `image` encodes the model; `jobs`,
//! `requests`, `timers` and `outbox` decide from it; `replies` is a leaf beside them.
//! Nothing here names `fleetops-service`.
//!
//! ## The fleet simulator
//!
//! `tests/sim` runs whole fleets through this crate in one thread, from a seed, and checks
//! the runtime's invariants after every step. `cargo test` runs 300 seeds and a proptest of
//! step sequences; a failing seed prints `FLEETOPS_SIM_SEED=<n> cargo test -p
//! fleetops-machine --test simulator`, which replays it alone, and `FLEETOPS_SIM_SEEDS=<count>`
//! runs as many as asked.

mod change;
mod error;
pub mod image;
pub mod jobs;
pub mod model;
pub mod outbox;
pub mod replies;
pub mod requests;
pub mod timers;

pub use change::StatusChange;
pub use error::FoldError;
pub use model::{Effects, NotifyFlags, ReadModel};
