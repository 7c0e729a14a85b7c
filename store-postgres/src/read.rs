//! The read paths, on a few connections shared by every caller: tokio-postgres pipelines the
//! queries of concurrent callers on one connection, so a handful serve many readers. Each
//! connection prepares its statements once; a broken one is replaced on next use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fleetops_core::ids::StreamId;
use fleetops_core::store::{Snapshot, StoreError, StoredEvent};
use tokio::sync::Mutex;
use tokio_postgres::{Client, Statement};

use crate::codec::{bits_i64, bits_u64, decode_event, to_u64, EVENT_COLUMNS};
use crate::config::PostgresConfig;
use crate::conn::connect;
use crate::error::{backend, corrupt, PgError};

/// One read connection with its prepared statements.
struct ReadConn {
    client: Client,
    read_all: Statement,
    read_stream: Statement,
    stream_version: Statement,
    head: Statement,
    load_snapshot: Statement,
    save_snapshot: Statement,
    delete_snapshot: Statement,
}

impl ReadConn {
    async fn open(config: &PostgresConfig) -> Result<Self, PgError> {
        let client = connect(config, "read").await?;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await.map_err(PgError::Query) }
        };
        let (read_all, read_stream, stream_version, head) = futures::try_join!(
            prepare(format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 \
                 ORDER BY position LIMIT $2"
            )),
            prepare(format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream = $1 AND stream_version >= $2 \
                 ORDER BY stream_version LIMIT $3"
            )),
            prepare("SELECT version FROM streams WHERE stream = $1".into()),
            prepare("SELECT position FROM feed_head".into()),
        )?;
        let (load_snapshot, save_snapshot, delete_snapshot) = futures::try_join!(
            prepare("SELECT position, event_key, bytes FROM snapshots WHERE name = $1".into()),
            prepare(
                "INSERT INTO snapshots (name, position, event_key, bytes) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
                 event_key = excluded.event_key, bytes = excluded.bytes, saved_at = now()"
                    .into()
            ),
            prepare("DELETE FROM snapshots WHERE name = $1".into()),
        )?;
        Ok(Self {
            client,
            read_all,
            read_stream,
            stream_version,
            head,
            load_snapshot,
            save_snapshot,
            delete_snapshot,
        })
    }
}

/// The read connections of one store.
pub(crate) struct Reader {
    config: PostgresConfig,
    slots: Vec<Mutex<Option<Arc<ReadConn>>>>,
    next: AtomicUsize,
}

/// A `limit` or version as a `bigint` parameter; anything above `i64::MAX` means "all".
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Reader {
    /// Opens the first connection now (so a bad URL fails the open), the others on first use.
    pub(crate) async fn open(config: PostgresConfig) -> Result<Self, PgError> {
        let first = Arc::new(ReadConn::open(&config).await?);
        let slots = (0..config.read_connections)
            .map(|i| Mutex::new((i == 0).then(|| first.clone())))
            .collect();
        Ok(Self {
            config,
            slots,
            next: AtomicUsize::new(0),
        })
    }

    /// A live connection, round robin; reconnects a slot whose connection has closed.
    async fn conn(&self) -> Result<Arc<ReadConn>, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(ReadConn::open(&self.config).await?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Up to `limit` events from `from` (0 reads as 1), checked to run on without a hole.
    pub(crate) async fn read_all(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = from.max(1);
        let c = self.conn().await?;
        let rows = c
            .client
            .query(&c.read_all, &[&clamp(from), &clamp(limit as u64)])
            .await
            .map_err(|e| backend("read_all", &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let e = decode_event(row)?;
            let want = from + i as u64;
            if e.position != want {
                return Err(corrupt(
                    format!("position {want}"),
                    format!("missing from the feed (the next stored is {})", e.position),
                ));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Up to `limit` events of `stream` from version `from` (0 reads as 1).
    pub(crate) async fn read_stream(
        &self,
        stream: &StreamId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = from.max(1);
        let c = self.conn().await?;
        let rows = c
            .client
            .query(
                &c.read_stream,
                &[&stream.as_str(), &clamp(from), &clamp(limit as u64)],
            )
            .await
            .map_err(|e| backend("read_stream", &e))?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let e = decode_event(row)?;
            let want = from + i as u64;
            if e.stream != *stream || e.stream_version != want {
                return Err(corrupt(
                    format!("stream {stream} version {want}"),
                    format!("found {} version {}", e.stream, e.stream_version),
                ));
            }
            out.push(e);
        }
        Ok(out)
    }

    pub(crate) async fn stream_version(
        &self,
        stream: &StreamId,
    ) -> Result<Option<u64>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.stream_version, &[&stream.as_str()])
            .await
            .map_err(|e| backend("stream_version", &e))?;
        let loc = format!("stream {stream}");
        row.map(|r| {
            let v: i64 = r.try_get(0).map_err(|e| corrupt(&loc, e.to_string()))?;
            to_u64(v, &loc, "version")
        })
        .transpose()
    }

    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_one(&c.head, &[])
            .await
            .map_err(|e| backend("head_position", &e))?;
        let v: i64 = row
            .try_get(0)
            .map_err(|e| corrupt("feed_head", e.to_string()))?;
        to_u64(v, "feed_head", "position")
    }

    pub(crate) async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
        let c = self.conn().await?;
        let row = c
            .client
            .query_opt(&c.load_snapshot, &[&name])
            .await
            .map_err(|e| backend("load_snapshot", &e))?;
        let loc = format!("snapshot {name}");
        row.map(|r| {
            let get = |e: tokio_postgres::Error| corrupt(&loc, e.to_string());
            let position: i64 = r.try_get(0).map_err(get)?;
            let key: i64 = r.try_get(1).map_err(get)?;
            let bytes: Vec<u8> = r.try_get(2).map_err(get)?;
            Ok(Snapshot {
                position: to_u64(position, &loc, "position")?,
                event_key: bits_u64(key),
                bytes,
            })
        })
        .transpose()
    }

    pub(crate) async fn save_snapshot(&self, name: &str, s: &Snapshot) -> Result<(), StoreError> {
        let c = self.conn().await?;
        let position = i64::try_from(s.position).map_err(|_| StoreError::InvalidBatch {
            reason: format!("snapshot position {} does not fit a bigint", s.position),
        })?;
        c.client
            .execute(
                &c.save_snapshot,
                &[&name, &position, &bits_i64(s.event_key), &s.bytes],
            )
            .await
            .map_err(|e| backend("save_snapshot", &e))?;
        Ok(())
    }

    pub(crate) async fn delete_snapshot(&self, name: &str) -> Result<(), StoreError> {
        let c = self.conn().await?;
        c.client
            .execute(&c.delete_snapshot, &[&name])
            .await
            .map_err(|e| backend("delete_snapshot", &e))?;
        Ok(())
    }
}
