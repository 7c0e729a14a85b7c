//! How to reach the database and how the store behaves.

use std::time::Duration;

use crate::error::PgError;

/// The longest schema name: the notification channel is `fleetops_feed_` + schema and
/// PostgreSQL truncates identifiers at 63 bytes.
pub const MAX_SCHEMA_LEN: usize = 48;

/// Settings of a [`PostgresStore`](crate::PostgresStore) and its
/// [`PostgresLease`](crate::PostgresLease).
///
/// Connections are made without TLS: the store is meant for a database on loopback or a
/// private network (TLS can be added with a `tokio-postgres` TLS connector later).
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) read_connections: usize,
    pub(crate) max_group_events: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_retry: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    /// Without the URL's password: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("read_connections", &self.read_connections)
            .field("max_group_events", &self.max_group_events)
            .field("poll_interval", &self.poll_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease_ttl", &self.lease_ttl)
            .field("lease_retry", &self.lease_retry)
            .finish()
    }
}

/// `url` with the password of a `scheme://user:password@host` URL, or of a `password=` pair,
/// replaced by `***`.
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_owned(),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PostgresConfig {
    /// A store at `url` (`postgres://user[:password]@host[:port]/database`, or the key=value
    /// form), in schema `public`, with the defaults below.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "public".into(),
            read_connections: 2,
            max_group_events: 4096,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            lease_retry: Duration::from_millis(500),
        }
    }

    /// The schema holding the store's tables, created if missing (default `public`). A
    /// lower-case identifier (`[a-z_][a-z0-9_]*`, at most [`MAX_SCHEMA_LEN`] bytes). Instances
    /// that share a store name the same schema; separate schemas are separate stores (and
    /// separate leases) in one database.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Connections used for reads and subscriptions, each pipelining the queries of many
    /// callers (default 2, at least 1).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n.max(1);
        self
    }

    /// A group commit stops taking queued appends once it holds this many events (default
    /// 4096); an append larger than that forms a group of its own.
    pub fn max_group_events(mut self, n: usize) -> Self {
        self.max_group_events = n.max(1);
        self
    }

    /// How often an idle subscription reads the feed even without a notification (default
    /// 1 s): the fallback for a notification lost while the listening connection reconnected.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long a connection attempt may take (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The lease's time to live (default 10 s): the lease session's `idle_session_timeout`,
    /// so the server ends the session of a holder paused longer than this, and the limit a
    /// renewal ping may take. Pings go every quarter of it.
    pub fn lease_ttl(mut self, d: Duration) -> Self {
        self.lease_ttl = d.max(Duration::from_millis(100));
        self
    }

    /// How often a waiting lease asks for the lock again (default 500 ms).
    pub fn lease_retry(mut self, d: Duration) -> Self {
        self.lease_retry = d.max(Duration::from_millis(1));
        self
    }

    /// The URL given to [`PostgresConfig::new`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The notification channel on which appends announce the new head.
    pub(crate) fn channel(&self) -> String {
        format!("fleetops_feed_{}", self.schema)
    }

    /// Checks the schema name, which is spliced into SQL and connection options: only a plain
    /// identifier is safe there without quoting rules.
    pub(crate) fn check_schema(&self) -> Result<(), PgError> {
        let s = &self.schema;
        let bad = |reason: &str| {
            Err(PgError::Schema {
                name: s.clone(),
                reason: reason.into(),
            })
        };
        if s.is_empty() || s.len() > MAX_SCHEMA_LEN {
            return bad("must have 1 to 48 bytes");
        }
        if s.starts_with("pg_") {
            return bad("names starting with pg_ are reserved by PostgreSQL");
        }
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return bad("must match [a-z_][a-z0-9_]*");
        }
        Ok(())
    }

    /// The 64-bit advisory-lock key of this schema's lease: FNV-1a of a fixed prefix and the
    /// schema, so schemas sharing a database have distinct leases.
    pub(crate) fn lease_key(&self) -> i64 {
        lock_key(&format!("fleetops-lease/{}", self.schema))
    }
}

/// FNV-1a of `name`, as the `bigint` an advisory lock takes.
pub(crate) fn lock_key(name: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let h = name
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    i64::from_ne_bytes(h.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["public", "fleet_1", "_x"] {
            assert!(
                PostgresConfig::new("").schema(ok).check_schema().is_ok(),
                "{ok}"
            );
        }
        let long = "a".repeat(MAX_SCHEMA_LEN + 1);
        for bad in [
            "",
            "Fleet",
            "1a",
            "a-b",
            "a b",
            "a;drop",
            "pg_x",
            long.as_str(),
        ] {
            assert!(
                PostgresConfig::new("").schema(bad).check_schema().is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn debug_hides_passwords() {
        for url in [
            "postgres://fleet:s3cret@db:5432/fleet",
            "host=db user=fleet password=s3cret dbname=fleet",
        ] {
            let shown = format!("{:?}", PostgresConfig::new(url));
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("fleet"), "{shown}");
        }
    }

    #[test]
    fn lease_keys_differ_by_schema() {
        let a = PostgresConfig::new("").schema("a").lease_key();
        let b = PostgresConfig::new("").schema("b").lease_key();
        assert_ne!(a, b);
    }
}
