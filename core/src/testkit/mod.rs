//! Test support shared by every crate: the store conformance suite, a fault-injecting store
//! wrapper, the given/when/then harness for aggregates, checks of stored execution histories,
//! a seeded generator for deterministic runs, and a reference model of the
//! execution lifecycles with a step API, against which the core's aggregates — or an
//! embedding service — are checked operation by operation. Behind the `testkit` feature so it
//! never reaches production builds.

pub mod conformance;
pub mod faults;
pub mod gwt;
pub mod histories;
pub mod model;
pub mod rng;
pub mod workload;

pub use faults::{Fault, FaultHandle, FaultyStore};
pub use model::{CommandOp, Expect, Intent, JobOp, Model, NewCommand, Op, Response, Step, Update};
