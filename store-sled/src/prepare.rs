//! Appends as the writer takes them: validated and encoded on the appending task, so the
//! writer, which every append waits for, only checks versions and writes.

use std::sync::Arc;

use fleetops_core::ids::StreamId;
use fleetops_core::store::{AppendBatch, ExpectedVersion, IdempotencyKey, StoreError};

use crate::codec::{self, PreEncoded};
use crate::tail::TailEvent;

/// The events of one stream in an append, already encoded.
pub(crate) struct PreparedStream {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<PreEncoded>,
    /// The same events as reads will return them, position and version still 0; one per
    /// entry of `events`, or none when the store keeps no live tail.
    pub(crate) read_back: Vec<TailEvent>,
}

/// An append, encoded on the caller's task.
pub(crate) struct PreparedBatch {
    pub(crate) streams: Vec<PreparedStream>,
    pub(crate) idempotency_key: Option<IdempotencyKey>,
    pub(crate) events: usize,
}

/// Encodes a batch on the caller's task, so the writer only checks versions and writes.
/// With `tail`, also builds the events as reads will return them, for the live tail, from
/// the events themselves (they are moved, not cloned).
pub(crate) fn prepare(batch: AppendBatch, tail: bool) -> Result<PreparedBatch, StoreError> {
    batch.validate()?;
    let events = batch.len();
    let idem = batch.idempotency_key;
    let mut streams = Vec::with_capacity(batch.streams.len());
    for s in batch.streams {
        let encoded = s
            .events
            .iter()
            .map(|e| PreEncoded::new(&s.stream, e, idem.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let read_back = if tail {
            s.events
                .into_iter()
                .zip(&encoded)
                .map(|(e, record)| TailEvent {
                    bytes: record.len(),
                    event: Arc::new(codec::read_back(&s.stream, e, idem.as_ref())),
                })
                .collect()
        } else {
            Vec::new()
        };
        streams.push(PreparedStream {
            stream: s.stream,
            expected: s.expected,
            events: encoded,
            read_back,
        });
    }
    Ok(PreparedBatch {
        streams,
        idempotency_key: idem,
        events,
    })
}
