//! Test support shared by every crate: the store conformance suite, a fault-injecting store
//! wrapper and the given/when/then harness for aggregates. Behind the `testkit` feature so it
//! never reaches production builds.

pub mod conformance;
pub mod faults;
pub mod gwt;

pub use faults::{Fault, FaultHandle, FaultyStore};
