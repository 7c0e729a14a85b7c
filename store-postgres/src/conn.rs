//! Opening sessions: every connection of the store is made here, bound to the store's schema.

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::config::PostgresConfig;
use crate::error::PgError;

/// A raw session: the client and the connection future that must be polled for it to work.
pub(crate) type Raw = (Client, Connection<Socket, NoTlsStream>);

/// Connects without TLS (see [`PostgresConfig`]), with `search_path` set to the store's
/// schema and read committed isolation at session start (no extra round trip), plus `extra` server settings
/// (`name=value` pairs, e.g. the lease's `idle_session_timeout`).
pub(crate) async fn connect_raw(
    config: &PostgresConfig,
    purpose: &str,
    extra: &[(&str, String)],
) -> Result<Raw, PgError> {
    let mut pg: Config = config.url.parse().map_err(PgError::Url)?;
    // The schema name is checked to be a plain identifier, so it needs no escaping here.
    // Read committed whatever the server's or role's default: the append function relies on
    // each statement seeing what committed before it, and on waiting for the feed head's row
    // lock rather than failing with a serialization error (a space in an option value is
    // escaped with a backslash).
    let mut options = format!(
        "-c search_path={} -c default_transaction_isolation=read\\ committed",
        config.schema
    );
    for (name, value) in extra {
        options.push_str(&format!(" -c {name}={value}"));
    }
    if let Some(existing) = pg.get_options() {
        options = format!("{existing} {options}");
    }
    pg.options(options)
        .application_name(format!("fleetops-{purpose}"))
        .connect_timeout(config.connect_timeout);
    pg.connect(NoTls).await.map_err(PgError::Connect)
}

/// Connects and drives the connection on a task of its own, which ends (closing the session)
/// when the client is dropped.
pub(crate) async fn connect(config: &PostgresConfig, purpose: &str) -> Result<Client, PgError> {
    let (client, connection) = connect_raw(config, purpose, &[]).await?;
    let purpose = purpose.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(
                connection = %purpose,
                error = %crate::error::chain(&e),
                "PostgreSQL connection ended"
            );
        }
    });
    Ok(client)
}
