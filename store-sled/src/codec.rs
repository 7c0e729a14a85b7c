//! The on-disk layout: key spaces, record formats and their checksums.
//!
//! Everything lives in one sled tree (`fleetops/v1`), split into key spaces by a one-byte tag.
//! One tree means one `apply_batch` per group commit, which sled recovers atomically.
//!
//! | tag | key | value |
//! |-----|-----|-------|
//! | `M` | `M` + name | store metadata (the format marker) |
//! | `E` | `E` + position (u64 BE) | one event record |
//! | `S` | `S` + stream + `0x00` + first version (u64 BE) | a *run*: first position (u64), count (u32) |
//! | `I` | `I` + idempotency key | the first batch's [`Appended`] |
//! | `P` | `P` + projection + `0x00` + user key | a projection value |
//! | `C` | `C` + projection | a projection checkpoint (u64) |
//!
//! Integers in keys are big-endian so that sled's byte order is numeric order: the `E` space
//! is the global feed in position order and each stream's runs are in version order. Stream
//! names never contain `0x00` (their alphabet is printable ASCII), so `S` + stream + `0x00` is
//! a prefix that belongs to exactly one stream.
//!
//! A *run* is the consecutive versions a stream got within one append: those events also have
//! consecutive positions, so one index entry per stream per append is enough to find them. An
//! append of 100 events to one stream writes 101 keys, not 200.
//!
//! Every value starts with a format byte and a CRC-32 computed over the **key and** the rest
//! of the value, so a flipped bit is caught even where the bytes would still parse, and so is a
//! value that ended up under the wrong key. Integers inside values are little-endian.

use fleetops_core::event::Event;
use fleetops_core::ids::StreamId;
use fleetops_core::store::{Appended, IdempotencyKey, NewEvent, StoreError, StoredEvent};
use fleetops_core::time::Timestamp;
use uuid::Uuid;

/// Tag of the event key space (the global feed).
pub(crate) const TAG_EVENT: u8 = b'E';
/// Tag of the stream run index.
pub(crate) const TAG_RUN: u8 = b'S';
/// Tag of the idempotency keys.
pub(crate) const TAG_IDEM: u8 = b'I';
/// Tag of projection data.
pub(crate) const TAG_PROJ: u8 = b'P';
/// Tag of projection checkpoints.
pub(crate) const TAG_CHECKPOINT: u8 = b'C';

/// The key of the format marker (metadata key space `M`), and the marker this code writes
/// and accepts.
pub(crate) const FORMAT_KEY: &[u8] = b"Mformat";
/// Bumped whenever the layout changes incompatibly; an unknown marker refuses to open.
pub(crate) const FORMAT_MARKER: &[u8] = b"fleetops-sled/1";

/// The version byte every value starts with.
const RECORD_FORMAT: u8 = 1;
/// Format byte + CRC-32.
const HEADER: usize = 5;

/// Offsets inside an event record, fixed so the writer can patch the version in place.
const EV_ID: usize = HEADER;
const EV_VERSION: usize = EV_ID + 16;
const EV_RECORDED: usize = EV_VERSION + 8;
const EV_SCHEMA: usize = EV_RECORDED + 8;
const EV_FLAGS: usize = EV_SCHEMA + 2;
const EV_VAR: usize = EV_FLAGS + 1;

const FLAG_CORRELATION: u8 = 1;
const FLAG_CAUSATION: u8 = 2;
const FLAG_IDEMPOTENCY: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_CORRELATION | FLAG_CAUSATION | FLAG_IDEMPOTENCY;

fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        location: location.into(),
        detail: detail.into(),
    }
}

fn crc(key: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(body);
    h.finalize()
}

/// Writes the format byte and the checksum of `key` + `value[HEADER..]` into `value[..HEADER]`.
pub(crate) fn seal(key: &[u8], value: &mut [u8]) {
    let sum = crc(key, &value[HEADER..]);
    value[0] = RECORD_FORMAT;
    value[1..HEADER].copy_from_slice(&sum.to_le_bytes());
}

/// Checks the format byte and checksum; returns the body after the header.
pub(crate) fn open<'v>(
    key: &[u8],
    value: &'v [u8],
    location: &str,
) -> Result<&'v [u8], StoreError> {
    if value.len() < HEADER {
        return Err(corrupt(
            location,
            format!("record of {} bytes is truncated", value.len()),
        ));
    }
    if value[0] != RECORD_FORMAT {
        return Err(corrupt(
            location,
            format!("unknown record format {}", value[0]),
        ));
    }
    let stored = u32::from_le_bytes([value[1], value[2], value[3], value[4]]);
    let actual = crc(key, &value[HEADER..]);
    if stored != actual {
        return Err(corrupt(
            location,
            format!("checksum mismatch: stored {stored:08x}, computed {actual:08x}"),
        ));
    }
    Ok(&value[HEADER..])
}

/// A value with a header reserved, ready for [`seal`].
fn sealed(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(&[0; HEADER]);
    v.extend_from_slice(body);
    seal(key, &mut v);
    v
}

// ---- keys ------------------------------------------------------------------------------

/// `E` + position.
pub(crate) fn event_key(position: u64) -> [u8; 9] {
    let mut k = [0; 9];
    k[0] = TAG_EVENT;
    k[1..].copy_from_slice(&position.to_be_bytes());
    k
}

/// The position in an `E` key.
pub(crate) fn event_key_position(key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [TAG_EVENT, rest @ ..] if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().unwrap_or([0; 8])))
        }
        _ => Err(corrupt(
            format!("key {}", show_key(key)),
            "not an event key",
        )),
    }
}

/// `S` + stream + `0x00`: the prefix of every run of `stream`.
pub(crate) fn run_prefix(stream: &StreamId) -> Vec<u8> {
    let s = stream.as_str().as_bytes();
    let mut k = Vec::with_capacity(s.len() + 10);
    k.push(TAG_RUN);
    k.extend_from_slice(s);
    k.push(0);
    k
}

/// `S` + stream + `0x00` + first version.
pub(crate) fn run_key(prefix: &[u8], first_version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&first_version.to_be_bytes());
    k
}

/// The first version in a run key under `prefix`.
pub(crate) fn run_key_version(prefix: &[u8], key: &[u8]) -> Result<u64, StoreError> {
    key.strip_prefix(prefix)
        .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(format!("key {}", show_key(key)), "malformed run key"))
}

/// `I` + idempotency key.
pub(crate) fn idem_key(key: &IdempotencyKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.0.len() + 1);
    k.push(TAG_IDEM);
    k.extend_from_slice(key.0.as_bytes());
    k
}

/// `P` + projection + `0x00`: the prefix of a projection's data.
pub(crate) fn proj_prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 2);
    k.push(TAG_PROJ);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// `C` + projection.
pub(crate) fn checkpoint_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(TAG_CHECKPOINT);
    k.extend_from_slice(name.as_bytes());
    k
}

/// A key for error messages: printable ASCII as is, other bytes as `\xNN`.
pub(crate) fn show_key(key: &[u8]) -> String {
    if let Ok(pos) = event_key_position_raw(key) {
        return format!("event {pos}");
    }
    key.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

fn event_key_position_raw(key: &[u8]) -> Result<u64, ()> {
    match key {
        [TAG_EVENT, rest @ ..] => <[u8; 8]>::try_from(rest)
            .map(u64::from_be_bytes)
            .map_err(|_| ()),
        _ => Err(()),
    }
}

// ---- events ----------------------------------------------------------------------------

/// An event encoded by the appender, before the writer knows its version and position.
///
/// Encoding happens on the caller's task, not on the single writer thread, so JSON
/// serialisation of concurrent appends runs in parallel; the writer only patches the version
/// and computes the checksum.
#[derive(Debug)]
pub(crate) struct PreEncoded(Vec<u8>);

impl PreEncoded {
    /// Encodes everything but the version, position and checksum.
    pub(crate) fn new(
        stream: &StreamId,
        e: &NewEvent,
        idem: Option<&IdempotencyKey>,
    ) -> Result<Self, StoreError> {
        let payload = serde_json::to_vec(&e.event).map_err(|err| StoreError::Backend {
            detail: format!("cannot encode event {}: {err}", e.event_id),
        })?;
        let stream = stream.as_str().as_bytes();
        let stream_len = u16::try_from(stream.len()).map_err(|_| StoreError::InvalidBatch {
            reason: "stream name longer than 65535 bytes".into(),
        })?;
        let idem = idem.map(|k| k.0.as_bytes());
        let idem_len = match idem {
            Some(k) => Some(
                u32::try_from(k.len()).map_err(|_| StoreError::InvalidBatch {
                    reason: "idempotency key longer than 4 GiB".into(),
                })?,
            ),
            None => None,
        };
        let mut flags = 0;
        let mut v = Vec::with_capacity(
            EV_VAR + 32 + 2 + stream.len() + idem.map_or(0, |k| 4 + k.len()) + payload.len(),
        );
        v.extend_from_slice(&[0; HEADER]);
        v.extend_from_slice(e.event_id.as_bytes());
        v.extend_from_slice(&[0; 8]); // version, patched by the writer
        v.extend_from_slice(&e.recorded_at.as_millis().to_le_bytes());
        v.extend_from_slice(&e.event.schema_version().to_le_bytes());
        v.push(0); // flags, set below
        if let Some(id) = e.correlation_id {
            flags |= FLAG_CORRELATION;
            v.extend_from_slice(id.as_bytes());
        }
        if let Some(id) = e.causation_id {
            flags |= FLAG_CAUSATION;
            v.extend_from_slice(id.as_bytes());
        }
        v.extend_from_slice(&stream_len.to_le_bytes());
        v.extend_from_slice(stream);
        if let (Some(k), Some(len)) = (idem, idem_len) {
            flags |= FLAG_IDEMPOTENCY;
            v.extend_from_slice(&len.to_le_bytes());
            v.extend_from_slice(k);
        }
        v.extend_from_slice(&payload);
        v[EV_FLAGS] = flags;
        Ok(Self(v))
    }

    /// The size of the record in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Sets the version, checksums the record under its key and returns the value bytes.
    pub(crate) fn finish(mut self, key: &[u8], version: u64) -> Vec<u8> {
        self.0[EV_VERSION..EV_RECORDED].copy_from_slice(&version.to_le_bytes());
        seal(key, &mut self.0);
        self.0
    }
}

/// The event as decoding its record gives it back.
///
/// The live tail hands subscribers the appended [`Event`] itself instead of decoding the
/// record, so it must equal what a read decodes. JSON reads back every event exactly (core's
/// `float_roundtrip` feature covers floats) except for one value: an `Option<Value>` holding
/// `Value::Null` is written as `null` and read back as `None`. `CommandResponded::result` is
/// the only such field of [`Event`]; this maps it the way a read would.
pub(crate) fn as_read_back(event: Event) -> Event {
    match event {
        Event::CommandResponded {
            status,
            result: Some(serde_json::Value::Null),
            status_reason,
            at,
        } => Event::CommandResponded {
            status,
            result: None,
            status_reason,
            at,
        },
        other => other,
    }
}

/// What a read returns for `e` once the writer has stored it (the writer fills in
/// `position` and `stream_version`, left 0 here): the envelope the record encodes, built from
/// the appended event instead of decoded from the record.
pub(crate) fn read_back(
    stream: &StreamId,
    e: NewEvent,
    idem: Option<&IdempotencyKey>,
) -> StoredEvent {
    StoredEvent {
        event_id: e.event_id,
        stream: stream.clone(),
        stream_version: 0,
        position: 0,
        recorded_at: e.recorded_at,
        schema_version: e.event.schema_version(),
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        idempotency_key: idem.cloned(),
        event: as_read_back(e.event),
    }
}

/// A bounds-checked reader over a record body.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated: needs {n} bytes at offset {}, has {}",
                    self.at,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        // `take` returned exactly N bytes, so the conversion cannot fail.
        self.take(N).map(|s| s.try_into().unwrap_or([0; N]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }
}

/// Decodes an event record stored under `E` + `position`.
pub(crate) fn decode_event(
    position: u64,
    key: &[u8],
    value: &[u8],
) -> Result<StoredEvent, StoreError> {
    decode_event_cached(position, key, value, &mut None)
}

/// Decodes an event record, reusing the previous record's stream name when it is the same: the events
/// of one append to one stream sit side by side, and validating a stream name costs more
/// than cloning it.
pub(crate) fn decode_event_cached(
    position: u64,
    key: &[u8],
    value: &[u8],
    last_stream: &mut Option<StreamId>,
) -> Result<StoredEvent, StoreError> {
    let location = || format!("event at position {position}");
    let body = open(key, value, &location())?;
    decode_event_body(position, body, last_stream).map_err(|detail| corrupt(location(), detail))
}

fn decode_event_body(
    position: u64,
    body: &[u8],
    last_stream: &mut Option<StreamId>,
) -> Result<StoredEvent, String> {
    let mut c = Cursor { buf: body, at: 0 };
    let event_id = Uuid::from_bytes(c.array()?);
    let stream_version = c.u64()?;
    let recorded_at = Timestamp::from_millis(c.u64()?);
    let schema_version = u16::from_le_bytes(c.array()?);
    let [flags] = c.array()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let correlation_id = if flags & FLAG_CORRELATION != 0 {
        Some(Uuid::from_bytes(c.array()?))
    } else {
        None
    };
    let causation_id = if flags & FLAG_CAUSATION != 0 {
        Some(Uuid::from_bytes(c.array()?))
    } else {
        None
    };
    let stream_len = usize::from(u16::from_le_bytes(c.array()?));
    let stream_bytes = c.take(stream_len)?;
    let stream = match last_stream {
        Some(s) if s.as_str().as_bytes() == stream_bytes => s.clone(),
        _ => {
            let text = std::str::from_utf8(stream_bytes)
                .map_err(|e| format!("stream name is not UTF-8: {e}"))?;
            let s = StreamId::try_from(text).map_err(|e| format!("invalid stream name: {e}"))?;
            *last_stream = Some(s.clone());
            s
        }
    };
    let idempotency_key = if flags & FLAG_IDEMPOTENCY != 0 {
        let len = u32::from_le_bytes(c.array()?);
        let len = usize::try_from(len).map_err(|_| "idempotency key too long".to_owned())?;
        let key = std::str::from_utf8(c.take(len)?)
            .map_err(|e| format!("idempotency key is not UTF-8: {e}"))?;
        Some(IdempotencyKey(key.to_owned()))
    } else {
        None
    };
    let event: Event =
        serde_json::from_slice(c.rest()).map_err(|e| format!("event payload: {e}"))?;
    if stream_version == 0 {
        return Err("stream version 0".into());
    }
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

// ---- runs ------------------------------------------------------------------------------

/// One run: `count` consecutive versions of a stream stored at consecutive positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// The version of the run's first event.
    pub(crate) first_version: u64,
    /// The position of the run's first event.
    pub(crate) first_position: u64,
    /// How many events, at least 1.
    pub(crate) count: u32,
}

impl Run {
    /// The version of the run's last event.
    pub(crate) fn last_version(&self) -> u64 {
        self.first_version + u64::from(self.count) - 1
    }

    /// The position of the run's last event.
    pub(crate) fn last_position(&self) -> u64 {
        self.first_position + u64::from(self.count) - 1
    }
}

/// The value of a run key.
pub(crate) fn encode_run(key: &[u8], first_position: u64, count: u32) -> Vec<u8> {
    let mut body = [0u8; 12];
    body[..8].copy_from_slice(&first_position.to_le_bytes());
    body[8..].copy_from_slice(&count.to_le_bytes());
    sealed(key, &body)
}

/// Decodes a run stored under `prefix` + first version.
pub(crate) fn decode_run(prefix: &[u8], key: &[u8], value: &[u8]) -> Result<Run, StoreError> {
    let location = || format!("stream index {}", show_key(key));
    let first_version = run_key_version(prefix, key)?;
    let body = open(key, value, &location())?;
    let mut c = Cursor { buf: body, at: 0 };
    let parsed = (|| -> Result<(u64, u32), String> {
        let p = c.u64()?;
        let n = u32::from_le_bytes(c.array()?);
        if !c.rest().is_empty() {
            return Err("trailing bytes".into());
        }
        Ok((p, n))
    })();
    let (first_position, count) = parsed.map_err(|d| corrupt(location(), d))?;
    if first_version == 0 || first_position == 0 || count == 0 {
        return Err(corrupt(location(), "zero version, position or count"));
    }
    if first_version.checked_add(u64::from(count)).is_none()
        || first_position.checked_add(u64::from(count)).is_none()
    {
        return Err(corrupt(location(), "run overflows"));
    }
    Ok(Run {
        first_version,
        first_position,
        count,
    })
}

// ---- idempotency -----------------------------------------------------------------------

/// The value of an idempotency key: the first batch's outcome.
pub(crate) fn encode_appended(key: &[u8], a: &Appended) -> Vec<u8> {
    let mut body = Vec::with_capacity(20 + a.versions.len() * 40);
    body.extend_from_slice(&a.first_position.to_le_bytes());
    body.extend_from_slice(&a.last_position.to_le_bytes());
    body.extend_from_slice(&(a.versions.len() as u32).to_le_bytes());
    for (stream, version) in &a.versions {
        let s = stream.as_str().as_bytes();
        // Stream names are at most a few hundred bytes (validated ids), so u16 always fits.
        body.extend_from_slice(&(s.len() as u16).to_le_bytes());
        body.extend_from_slice(s);
        body.extend_from_slice(&version.to_le_bytes());
    }
    sealed(key, &body)
}

/// Decodes an idempotency record.
pub(crate) fn decode_appended(key: &[u8], value: &[u8]) -> Result<Appended, StoreError> {
    let location = || format!("idempotency record {}", show_key(key));
    let body = open(key, value, &location())?;
    let parse = || -> Result<Appended, String> {
        let mut c = Cursor { buf: body, at: 0 };
        let first_position = c.u64()?;
        let last_position = c.u64()?;
        let n = u32::from_le_bytes(c.array()?);
        let mut versions = Vec::new();
        for _ in 0..n {
            let len = usize::from(u16::from_le_bytes(c.array()?));
            let s = std::str::from_utf8(c.take(len)?).map_err(|e| format!("stream name: {e}"))?;
            let stream = StreamId::try_from(s).map_err(|e| format!("stream name: {e}"))?;
            versions.push((stream, c.u64()?));
        }
        if !c.rest().is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(Appended {
            first_position,
            last_position,
            versions,
        })
    };
    parse().map_err(|d| corrupt(location(), d))
}

// ---- projections -----------------------------------------------------------------------

/// A projection value: the caller's bytes behind the header.
pub(crate) fn encode_proj_value(key: &[u8], value: &[u8]) -> Vec<u8> {
    sealed(key, value)
}

/// The caller's bytes of a projection value.
pub(crate) fn decode_proj_value(key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    open(key, value, &format!("projection record {}", show_key(key))).map(<[u8]>::to_vec)
}

/// A checkpoint value.
pub(crate) fn encode_checkpoint(key: &[u8], position: u64) -> Vec<u8> {
    sealed(key, &position.to_le_bytes())
}

/// Decodes a checkpoint value.
pub(crate) fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let location = format!("projection checkpoint {}", show_key(key));
    let body = open(key, value, &location)?;
    <[u8; 8]>::try_from(body)
        .map(u64::from_le_bytes)
        .map_err(|_| corrupt(location, format!("{} bytes, expected 8", body.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetops_core::event::Event;

    fn sample(idem: bool) -> (StreamId, NewEvent, Option<IdempotencyKey>) {
        let stream = StreamId::custom("a/b").unwrap();
        let mut e = NewEvent::new(
            Uuid::from_u128(7),
            Event::CommandTimedOut {
                at: Timestamp::from_millis(42),
            },
            Timestamp::from_millis(41),
        );
        e.correlation_id = Some(Uuid::from_u128(8));
        let key = idem.then(|| IdempotencyKey("k-1".into()));
        (stream, e, key)
    }

    #[test]
    fn events_round_trip_with_every_optional_field() {
        for idem in [false, true] {
            let (stream, e, key) = sample(idem);
            let k = event_key(9);
            let v = PreEncoded::new(&stream, &e, key.as_ref())
                .unwrap()
                .finish(&k, 3);
            let got = decode_event(9, &k, &v).unwrap();
            assert_eq!(got.event_id, e.event_id);
            assert_eq!(got.stream, stream);
            assert_eq!(got.stream_version, 3);
            assert_eq!(got.position, 9);
            assert_eq!(got.recorded_at, e.recorded_at);
            assert_eq!(got.correlation_id, e.correlation_id);
            assert_eq!(got.causation_id, None);
            assert_eq!(got.idempotency_key, key);
            assert_eq!(got.event, e.event);
        }
    }

    /// The live tail serves [`read_back`] in place of decoding the record; the two must
    /// agree on every field, including the one value JSON does not read back as written.
    #[test]
    fn read_back_equals_the_decoded_record() {
        let (stream, mut with_all, key) = sample(true);
        with_all.causation_id = Some(Uuid::from_u128(9));
        let responded = |result| {
            NewEvent::new(
                Uuid::from_u128(10),
                Event::CommandResponded {
                    status: fleetops_core::CommandStatus::Succeeded,
                    result,
                    status_reason: Some("ok".into()),
                    at: Timestamp::from_millis(43),
                },
                Timestamp::from_millis(43),
            )
        };
        let cases = [
            (with_all, key.clone()),
            (sample(false).1, None),
            (responded(Some(serde_json::Value::Null)), key.clone()),
            (
                responded(Some(serde_json::json!({"a": [1.5, null, 1e-300]}))),
                None,
            ),
            (responded(None), None),
        ];
        for (e, key) in cases {
            let k = event_key(12);
            let encoded = PreEncoded::new(&stream, &e, key.as_ref()).unwrap();
            let mut expected = read_back(&stream, e, key.as_ref());
            (expected.position, expected.stream_version) = (12, 4);
            let decoded = decode_event(12, &k, &encoded.finish(&k, 4)).unwrap();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_corrupt() {
        let (stream, e, key) = sample(true);
        let k = event_key(9);
        let v = PreEncoded::new(&stream, &e, key.as_ref())
            .unwrap()
            .finish(&k, 3);
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut w = v.clone();
                w[i] ^= 1 << bit;
                assert!(
                    matches!(decode_event(9, &k, &w), Err(StoreError::Corrupt { .. })),
                    "byte {i} bit {bit}"
                );
            }
        }
        for len in 0..v.len() {
            assert!(matches!(
                decode_event(9, &k, &v[..len]),
                Err(StoreError::Corrupt { .. })
            ));
        }
        // The same bytes under another position's key are caught too.
        assert!(matches!(
            decode_event(10, &event_key(10), &v),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn runs_and_idempotency_records_round_trip_and_detect_damage() {
        let stream = StreamId::custom("s").unwrap();
        let prefix = run_prefix(&stream);
        let k = run_key(&prefix, 5);
        let v = encode_run(&k, 100, 3);
        let run = decode_run(&prefix, &k, &v).unwrap();
        assert_eq!(
            (run.first_version, run.first_position, run.count),
            (5, 100, 3)
        );
        assert_eq!((run.last_version(), run.last_position()), (7, 102));
        let mut bad = v.clone();
        bad[7] ^= 0x10;
        assert!(decode_run(&prefix, &k, &bad).is_err());

        let a = Appended {
            first_position: 4,
            last_position: 6,
            versions: vec![(stream.clone(), 2), (StreamId::custom("t").unwrap(), 1)],
        };
        let ik = idem_key(&IdempotencyKey("x".into()));
        let v = encode_appended(&ik, &a);
        assert_eq!(decode_appended(&ik, &v).unwrap(), a);
        assert!(decode_appended(&ik, &v[..v.len() - 1]).is_err());
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(event_key(255) < event_key(256));
        let p = run_prefix(&StreamId::custom("s").unwrap());
        assert!(run_key(&p, 255) < run_key(&p, 256));
        // One stream's prefix is never the prefix of another stream's keys.
        let q = run_prefix(&StreamId::custom("s2").unwrap());
        assert!(!q.starts_with(&p));
    }
}
