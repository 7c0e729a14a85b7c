//! Test support shared by every crate: the store conformance suite and the given/when/then
//! harness for aggregates. Behind the `testkit` feature so it never reaches production builds.

pub mod conformance;
pub mod gwt;
