//! Group commit: one writer task per store takes every append waiting in its queue and runs
//! them as one call of `fleetops_append` (created by the first migration): one statement, so
//! one transaction and one round trip for the whole group. The function checks and stores
//! each batch in turn and returns a result per batch, so a conflict fails only its own batch.
//!
//! A group's outcome is known only when the server answers after the commit (tokio-postgres
//! reads up to `ReadyForQuery`, so a failed commit is an error, not a success). If the
//! connection breaks before that, the group may or may not have committed: every append of it
//! gets `StoreError::Backend` saying so (a caller that must know retries with its idempotency
//! key), and the next group reconnects.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fleetops_core::store::{Appended, StoreError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use crate::codec::{decode_appended, stream_id, to_u64, Prepared};
use crate::config::PostgresConfig;
use crate::conn::connect;
use crate::error::{backend, corrupt, PgError};

/// An append waiting for the writer, with the way back to its caller.
pub(crate) struct Job {
    pub(crate) batch: Prepared,
    pub(crate) reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Counters of the group commit, shared with the store's handles.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) groups: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) largest_group: AtomicU64,
}

/// The writer's connection with its prepared call.
struct WriteConn {
    client: Client,
    append: Statement,
}

impl WriteConn {
    async fn open(config: &PostgresConfig) -> Result<Self, PgError> {
        let client = connect(config, "writer").await?;
        let append = client
            .prepare("SELECT * FROM fleetops_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
            .await
            .map_err(PgError::Query)?;
        Ok(Self { client, append })
    }
}

/// Runs until every sender is dropped (the store closed), then finishes the queue.
pub(crate) async fn run(
    config: PostgresConfig,
    mut queue: mpsc::UnboundedReceiver<Job>,
    counters: Arc<Counters>,
    head: Arc<watch::Sender<u64>>,
    mut conn: Option<WriteConnSlot>,
) {
    while let Some(first) = queue.recv().await {
        // Appenders answered by the last group are being woken right now and are about to
        // queue their next append: one yield lets them, so groups stay large under steady
        // load instead of alternating between one append and the rest.
        tokio::task::yield_now().await;
        let mut events = first.batch.events;
        let mut group = vec![first];
        while events < config.max_group_events {
            match queue.try_recv() {
                Ok(job) => {
                    events += job.batch.events;
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(|c| c.0.client.is_closed()) {
            conn = match WriteConn::open(&config).await {
                Ok(c) => Some(WriteConnSlot(c)),
                Err(e) => {
                    let err = StoreError::from(e);
                    for job in group {
                        let _ = job.reply.send(Err(err.clone()));
                    }
                    continue;
                }
            };
        }
        let Some(WriteConnSlot(c)) = conn.as_ref() else {
            continue;
        };
        counters.groups.fetch_add(1, Ordering::Relaxed);
        counters
            .appends
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        counters
            .largest_group
            .fetch_max(group.len() as u64, Ordering::Relaxed);
        match commit(c, &mut group).await {
            Ok(results) => {
                let top = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .map(|a| a.last_position)
                    .max();
                let stored: u64 = group
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_ok())
                    .map(|(j, _)| j.batch.events as u64)
                    .sum();
                counters.events.fetch_add(stored, Ordering::Relaxed);
                // Wake this store's subscribers now; other instances hear the NOTIFY.
                if let Some(top) = top {
                    head.send_if_modified(|h| {
                        let newer = top > *h;
                        if newer {
                            *h = top;
                        }
                        newer
                    });
                }
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = ?e, appends = group.len(), "group commit failed");
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The writer's connection, opened by the store before the task starts so a schema without
/// the function fails the open rather than the first append.
pub(crate) struct WriteConnSlot(WriteConn);

impl WriteConnSlot {
    pub(crate) async fn open(config: &PostgresConfig) -> Result<Self, PgError> {
        Ok(Self(WriteConn::open(config).await?))
    }
}

/// The function's parameters for a group, flattened into arrays.
#[derive(Default)]
struct Params {
    b_key: Vec<Option<Vec<u8>>>,
    b_streams: Vec<i32>,
    s_stream: Vec<String>,
    s_expected: Vec<i64>,
    s_events: Vec<i32>,
    e_id: Vec<Uuid>,
    e_recorded: Vec<i64>,
    e_schema: Vec<i16>,
    e_correlation: Vec<Option<Uuid>>,
    e_causation: Vec<Option<Uuid>>,
    e_payload: Vec<Vec<u8>>,
}

fn count(n: usize) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| StoreError::InvalidBatch {
        reason: format!("{n} entries do not fit one append"),
    })
}

impl Params {
    fn build(group: &mut [Job]) -> Result<Self, StoreError> {
        let mut p = Self::default();
        for job in group {
            let b = &mut job.batch;
            p.b_key.push(b.key.clone());
            p.b_streams.push(count(b.streams.len())?);
            for s in &mut b.streams {
                p.s_stream.push(s.stream.as_str().to_owned());
                p.s_expected.push(s.expected_code);
                p.s_events.push(count(s.events.len())?);
                for e in &mut s.events {
                    p.e_id.push(e.id);
                    p.e_recorded.push(e.recorded_at_ms);
                    p.e_schema.push(e.schema_version);
                    p.e_correlation.push(e.correlation);
                    p.e_causation.push(e.causation);
                    // Moved, not copied: the job keeps only what a conflict report needs.
                    p.e_payload.push(std::mem::take(&mut e.payload));
                }
            }
        }
        Ok(p)
    }

    fn as_refs(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.b_key,
            &self.b_streams,
            &self.s_stream,
            &self.s_expected,
            &self.s_events,
            &self.e_id,
            &self.e_recorded,
            &self.e_schema,
            &self.e_correlation,
            &self.e_causation,
            &self.e_payload,
        ]
    }
}

/// Commits a group; returns each batch's result, in order.
async fn commit(
    c: &WriteConn,
    group: &mut [Job],
) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
    let params = Params::build(group)?;
    let rows = c
        .client
        .query(&c.append, &params.as_refs())
        .await
        .map_err(|e| {
            if c.client.is_closed() {
                StoreError::Backend {
                    detail: format!(
                        "the connection broke during a group commit, which may or may not \
                         have been stored (retry with an idempotency key to know): {}",
                        crate::error::chain(&e)
                    ),
                }
            } else {
                backend("group commit", &e)
            }
        })?;
    if rows.len() != group.len() {
        return Err(corrupt(
            "fleetops_append",
            format!("{} results for {} appends", rows.len(), group.len()),
        ));
    }
    let loc = "append result";
    let col = |e: tokio_postgres::Error| corrupt(loc, crate::error::chain(&e));
    rows.iter()
        .zip(group.iter())
        .map(|(row, job)| {
            let outcome: i16 = row.try_get(0).map_err(col)?;
            let first: Option<i64> = row.try_get(1).map_err(col)?;
            let last: Option<i64> = row.try_get(2).map_err(col)?;
            let streams: Vec<String> = row.try_get(3).map_err(col)?;
            let versions: Vec<Option<i64>> = row.try_get(4).map_err(col)?;
            Ok(match outcome {
                0 => decode_appended(first, last, streams, versions),
                1 => {
                    let (Some(name), Some(actual)) = (streams.first(), versions.first()) else {
                        return Err(corrupt(loc, "conflict without a stream"));
                    };
                    let stream = stream_id(name.clone(), loc)?;
                    let expected = job
                        .batch
                        .streams
                        .iter()
                        .find(|s| s.stream == stream)
                        .map(|s| s.expected)
                        .ok_or_else(|| corrupt(loc, format!("conflict on foreign {stream}")))?;
                    let actual = actual.map(|v| to_u64(v, loc, "version")).transpose()?;
                    Err(StoreError::Conflict {
                        stream,
                        expected,
                        actual,
                    })
                }
                other => Err(corrupt(loc, format!("unknown outcome {other}"))),
            })
        })
        .collect()
}
