//! The store's LISTEN session: appends of every instance sharing the schema `pg_notify` the
//! new head on the schema's channel at commit; this task publishes it to the store's
//! subscribers through a `watch`. On a broken session it reconnects with a growing pause and,
//! once listening again, reads the head, so a notification missed in between is made up for
//! (subscriptions also poll, see `PostgresConfig::poll_interval`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;

use crate::config::PostgresConfig;
use crate::conn::connect_raw;
use crate::error::chain;

/// Raises the published head to `to` (never lowers it), waking subscribers if it moved.
pub(crate) fn publish(head: &watch::Sender<u64>, to: u64) {
    head.send_if_modified(|h| {
        let newer = to > *h;
        if newer {
            *h = to;
        }
        newer
    });
}

/// Listens until the task is aborted (the store is dropped).
pub(crate) async fn run(config: PostgresConfig, head: Arc<watch::Sender<u64>>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match session(&config, &head).await {
            Ok(()) => tracing::warn!("the LISTEN session of the store closed; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "the LISTEN session of the store failed"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn session(config: &PostgresConfig, head: &watch::Sender<u64>) -> Result<(), String> {
    let (client, mut connection) = connect_raw(config, "listen", &[])
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Notifications arrive as the connection's asynchronous messages, so this task drives the
    // connection itself instead of spawning it as a plain future.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(chain(&e)),
            }
        }
        Ok(())
    });
    let result = async {
        // The channel name is `fleetops_feed_` + a checked plain identifier.
        client
            .batch_execute(&format!("LISTEN {}", config.channel()))
            .await
            .map_err(|e| chain(&e))?;
        let now: i64 = client
            .query_one("SELECT position FROM feed_head", &[])
            .await
            .map_err(|e| chain(&e))?
            .get(0);
        publish(head, u64::try_from(now).unwrap_or(0));
        while let Some(payload) = rx.recv().await {
            match payload.parse::<u64>() {
                Ok(to) => publish(head, to),
                Err(_) => tracing::warn!(%payload, "ignoring a malformed feed notification"),
            }
        }
        Ok(())
    }
    .await;
    drop(client);
    match result {
        Err(e) => {
            driver.abort();
            Err(e)
        }
        // The notifications ended: the driver saw the connection end, and says why.
        Ok(()) => driver.await.unwrap_or_else(|e| Err(e.to_string())),
    }
}
