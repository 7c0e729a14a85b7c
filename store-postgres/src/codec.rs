//! Between core's types and the database's: appends encoded for the group-commit function,
//! rows decoded into [`StoredEvent`]s. Decoding never panics: a value that does not fit gives
//! [`StoreError::Corrupt`].

use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    AppendBatch, Appended, ExpectedVersion, IdempotencyKey, StoreError, StoredEvent,
};
use fleetops_core::time::Timestamp;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::corrupt;

/// The columns every event read selects, in the order [`decode_event`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "position, stream, stream_version, event_id, \
     recorded_at_ms, schema_version, correlation_id, causation_id, idempotency_key, payload";

/// An append encoded on the appending task, ready for the writer.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) streams: Vec<PreparedStream>,
    pub(crate) events: usize,
}

/// One stream of a [`Prepared`] append.
#[derive(Debug)]
pub(crate) struct PreparedStream {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    /// `expected` as the function takes it ([`expected_code`]).
    pub(crate) expected_code: i64,
    pub(crate) events: Vec<PreparedEvent>,
}

/// One event's columns.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    pub(crate) id: Uuid,
    pub(crate) recorded_at_ms: i64,
    pub(crate) schema_version: i16,
    pub(crate) correlation: Option<Uuid>,
    pub(crate) causation: Option<Uuid>,
    pub(crate) payload: Vec<u8>,
}

/// Encodes a validated batch. The payload is the event's serde_json encoding, as the other
/// stores write it; the schema version is the event's own (`Event::schema_version`).
pub(crate) fn prepare(batch: AppendBatch) -> Result<Prepared, StoreError> {
    let events = batch.len();
    let mut streams = Vec::with_capacity(batch.streams.len());
    for s in batch.streams {
        let mut out = Vec::with_capacity(s.events.len());
        for e in s.events {
            let payload = serde_json::to_vec(&e.event).map_err(|err| StoreError::Backend {
                detail: format!("encoding an event of {}: {err}", s.stream),
            })?;
            out.push(PreparedEvent {
                id: e.event_id,
                recorded_at_ms: to_i64(e.recorded_at.as_millis(), "recorded_at")?,
                schema_version: i16::from_ne_bytes(e.event.schema_version().to_ne_bytes()),
                correlation: e.correlation_id,
                causation: e.causation_id,
                payload,
            });
        }
        streams.push(PreparedStream {
            stream: s.stream,
            expected: s.expected,
            expected_code: expected_code(s.expected),
            events: out,
        });
    }
    Ok(Prepared {
        key: batch.idempotency_key.map(|k| k.0.into_bytes()),
        streams,
        events,
    })
}

/// An expectation as the function takes it: -2 any, -1 no stream, n exactly n. An exact
/// version past `i64::MAX` becomes `i64::MAX`: no stream reaches either, so both conflict (and
/// the conflict reports the expectation as the caller gave it).
pub(crate) fn expected_code(e: ExpectedVersion) -> i64 {
    match e {
        ExpectedVersion::Any => -2,
        ExpectedVersion::NoStream => -1,
        ExpectedVersion::Exact(n) => i64::try_from(n).unwrap_or(i64::MAX),
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::InvalidBatch {
        reason: format!("{what} {v} does not fit PostgreSQL's bigint"),
    })
}

/// A non-negative `bigint` as `u64`.
pub(crate) fn to_u64(v: i64, location: &str, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(location, format!("negative {what} {v}")))
}

/// A `bigint` bit pattern as the `u64` it was stored from (snapshot event keys).
pub(crate) fn bits_u64(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A `u64` stored in a `bigint` column bit for bit.
pub(crate) fn bits_i64(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn column<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r Row,
    i: usize,
    location: &str,
) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| corrupt(location, format!("column {i}: {}", crate::error::chain(&e))))
}

/// A stream name read back.
pub(crate) fn stream_id(name: String, location: &str) -> Result<StreamId, StoreError> {
    StreamId::try_from(name).map_err(|e| corrupt(location, format!("stream name: {e}")))
}

/// A row of [`EVENT_COLUMNS`].
pub(crate) fn decode_event(row: &Row) -> Result<StoredEvent, StoreError> {
    let raw_position: i64 = column(row, 0, "events")?;
    let location = format!("position {raw_position}");
    let loc = location.as_str();
    let position = to_u64(raw_position, loc, "position")?;
    let stream = stream_id(column(row, 1, loc)?, loc)?;
    let stream_version = to_u64(column(row, 2, loc)?, loc, "stream version")?;
    let event_id: Uuid = column(row, 3, loc)?;
    let recorded_at = Timestamp::from_millis(to_u64(column(row, 4, loc)?, loc, "time")?);
    let schema: i16 = column(row, 5, loc)?;
    let schema_version = u16::from_ne_bytes(schema.to_ne_bytes());
    let correlation_id: Option<Uuid> = column(row, 6, loc)?;
    let causation_id: Option<Uuid> = column(row, 7, loc)?;
    let key: Option<Vec<u8>> = column(row, 8, loc)?;
    let idempotency_key = key
        .map(|k| {
            String::from_utf8(k)
                .map(IdempotencyKey)
                .map_err(|e| corrupt(loc, format!("idempotency key: {e}")))
        })
        .transpose()?;
    let payload: &[u8] = column(row, 9, loc)?;
    let event =
        serde_json::from_slice(payload).map_err(|e| corrupt(loc, format!("event payload: {e}")))?;
    Ok(StoredEvent {
        event_id,
        stream,
        stream_version,
        position,
        recorded_at,
        schema_version,
        correlation_id,
        causation_id,
        idempotency_key,
        event,
    })
}

/// A stored or remembered result of the group-commit function (outcome 0).
pub(crate) fn decode_appended(
    first: Option<i64>,
    last: Option<i64>,
    streams: Vec<String>,
    versions: Vec<Option<i64>>,
) -> Result<Appended, StoreError> {
    let loc = "append result";
    let (Some(first), Some(last)) = (first, last) else {
        return Err(corrupt(loc, "no positions"));
    };
    if streams.len() != versions.len() {
        return Err(corrupt(loc, "streams and versions differ in length"));
    }
    let versions = streams
        .into_iter()
        .zip(versions)
        .map(|(s, v)| {
            let v = v.ok_or_else(|| corrupt(loc, "missing version"))?;
            Ok((stream_id(s, loc)?, to_u64(v, loc, "version")?))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Appended {
        first_position: to_u64(first, loc, "position")?,
        last_position: to_u64(last, loc, "position")?,
        versions,
    })
}
