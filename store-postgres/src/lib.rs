//! # fleetops-store-postgres
//!
//! A PostgreSQL [`EventStore`](fleetops_core::store::EventStore) for fleetops, which several
//! service instances can share, with a [`PostgresLease`] that tells them which one leads. It
//! passes core's conformance suite. The crate README explains the design; in short:
//!
//! - **Gap-free feed in commit order.** Positions come from a one-row `feed_head` table
//!   updated inside the append transaction: its row lock serializes appenders until commit,
//!   so positions are assigned, and become visible, in commit order.
//! - **Group commit.** One writer task per store takes every queued append and runs them in
//!   one transaction and one round trip (the `fleetops_append` function), each checked on its
//!   own: a conflict fails only its batch.
//! - **Subscriptions** read the feed in pages and wait on `LISTEN`/`NOTIFY` (so they see
//!   other instances' appends), polling every second as a fallback.
//! - **Migrations** are versioned and applied at connect under an advisory lock.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use fleetops_core::lease::Lease;
//! use fleetops_store_postgres::{PostgresConfig, PostgresStore};
//! let store = PostgresStore::connect(
//!     PostgresConfig::new("postgres://fleetops@127.0.0.1/fleetops").schema("fleet"),
//! )
//! .await?;
//! let mut hold = store.lease().acquire().await?; // this instance leads until `hold.lost()`
//! # Ok(()) }
//! ```
//!
//! Features:
//! - `test-postgres`: the [`testing`] module, a throwaway PostgreSQL server per test
//!   (`initdb` + `pg_ctl` on a free loopback port).
//!
//! ## Modules
//!
//! Layered, bottom up; a module names only modules of the layers below its own:
//!
//! 1. `error` (the crate's errors, backend failures as `StoreError`s).
//! 2. `config`, and `codec` (parameters and rows).
//! 3. `conn` (every session is opened there), `migrate` (the schema and its versions).
//! 4. `read` (the read connections), `writer` (group commit), `listen` (the LISTEN session),
//!    `lease`.
//! 5. `subscription`, over `read`.
//! 6. `store`: [`PostgresStore`] and its `EventStore` implementation.
//! 7. `testing` (feature `test-postgres`), over `store`.

// On docs.rs-style builds (`--cfg docsrs`, nightly), items behind a feature are marked
// with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod codec;
mod config;
mod conn;
mod error;
mod lease;
mod listen;
mod migrate;
mod read;
mod store;
mod subscription;
mod writer;

#[cfg(feature = "test-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-postgres")))]
pub mod testing;

pub use config::{PostgresConfig, MAX_SCHEMA_LEN};
pub use error::PgError;
pub use lease::PostgresLease;
pub use store::{PostgresStore, WriterStats};

/// The latest schema version (`fleetops_migrations.version`) this build applies.
pub const SCHEMA_VERSION: i32 = migrate::LATEST;
