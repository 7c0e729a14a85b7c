//! The crate's own errors (connecting, migrating) and how backend failures become
//! [`StoreError`]s.

use std::error::Error as StdError;
use std::fmt::Write as _;

use fleetops_core::store::StoreError;

/// Why a [`PostgresStore`](crate::PostgresStore) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection URL does not parse.
    #[error("invalid PostgreSQL URL: {}", chain(.0))]
    Url(#[source] tokio_postgres::Error),
    /// The schema name is not a plain lower-case identifier.
    #[error("invalid schema name {name:?}: {reason}")]
    Schema {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or refused the session.
    #[error("connecting to PostgreSQL failed: {}", chain(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// A migration failed; its transaction was rolled back, so the schema is unchanged.
    #[error("migration to version {version} failed: {}", chain(.source))]
    Migrate {
        /// The version being applied (0: the bookkeeping before the first).
        version: i32,
        /// What the server said.
        source: tokio_postgres::Error,
    },
    /// The schema was migrated by a newer build: this one does not know its layout.
    #[error("schema is at version {found}, newer than the {known} this build knows")]
    TooNew {
        /// The version found in `fleetops_migrations`.
        found: i32,
        /// The latest version this build applies.
        known: i32,
    },
    /// A store call made while opening failed (reading the feed head).
    #[error("opening the store failed: {0}")]
    Open(StoreError),
    /// A query made while opening failed.
    #[error("query failed while opening the store: {}", chain(.0))]
    Query(#[source] tokio_postgres::Error),
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend {
            detail: e.to_string(),
        }
    }
}

/// An error with its sources: `tokio_postgres::Error` displays only "db error" and keeps the
/// server's message (and SQLSTATE) in its source.
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = s.source();
    }
    out
}

/// A failed query or connection as a store error.
pub(crate) fn backend(what: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Backend {
        detail: format!("{what}: {}", chain(e)),
    }
}

/// A stored value that does not decode.
pub(crate) fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        location: location.into(),
        detail: detail.into(),
    }
}
