//! Every size limit of what operators and devices may store, in one place.
//!
//! The limits exist so that every message the service owes a device fits the transport's
//! payload bound (128 KiB by default): the largest message is a start-next or describe reply,
//! which carries the job document and the execution's `statusDetails` together. With the
//! figures below that is at most 32 KiB + 8 KiB of values plus the envelope, well inside it.
//! A request over a limit is refused with `InvalidRequest` before anything is stored; the
//! same figures are enforced by the aggregates' `decide`, so an embedding service that
//! bypasses the HTTP API gets the same guarantee.
//!
//! `docs/operations.md` lists each limit with its error code; the server's OpenAPI document
//! states the same numbers.

use serde_json::Value;

/// The largest job document, in bytes of compact JSON (as AWS IoT Jobs: 32 KiB).
pub const MAX_JOB_DOCUMENT_BYTES: usize = 32 * 1024;

/// The largest command `params`, in bytes of compact JSON.
pub const MAX_COMMAND_PARAMS_BYTES: usize = 32 * 1024;

/// The longest command `action`, in characters (so the HTTP API's schema can state it exactly;
/// at most 512 bytes of UTF-8).
pub const MAX_COMMAND_ACTION_LEN: usize = 128;

/// The longest command `commandId` (a template id), in characters of `[a-zA-Z0-9_-]`.
pub const MAX_COMMAND_ID_LEN: usize = 64;

/// The most `statusDetails` entries one execution may hold.
pub const MAX_STATUS_DETAILS_KEYS: usize = 32;

/// The largest `statusDetails` map: keys plus values, in bytes.
pub const MAX_STATUS_DETAILS_BYTES: usize = 8 * 1024;

/// The longest job or group description, in characters (as JSON Schema's `maxLength` counts
/// them, so the HTTP API's document states the limit exactly).
pub const MAX_DESCRIPTION_LEN: usize = 2048;

/// The most targets (thing names plus group names) one job may name.
pub const MAX_JOB_TARGETS: usize = 10_000;

/// The most members one thing group may hold.
pub const MAX_GROUP_MEMBERS: usize = 100_000;

/// The most jobs of each kind (in progress, queued) a `jobs/get` reply or a `notify`
/// message lists: the first ones in queue order, as AWS IoT Jobs caps its pending list.
pub const MAX_PENDING_LISTED: usize = 100;

/// The longest MQTT topic the service publishes to, in bytes. MQTT encodes a topic's length
/// in two bytes, so anything longer cannot be published at all; the bound is far below that
/// so a refusal to a hostile topic never produces a malformed packet.
pub const MAX_TOPIC_BYTES: usize = 1024;

/// The most attributes one registered thing may hold.
pub const MAX_THING_ATTRIBUTES: usize = 50;

/// The longest thing attribute name, in characters of `[a-zA-Z0-9_.:-]`.
pub const MAX_ATTRIBUTE_NAME_LEN: usize = 128;

/// The longest thing attribute value, in characters (no control characters).
pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 800;

/// The longest thing type name, in characters of `[a-zA-Z0-9:_-]`.
pub const MAX_THING_TYPE_LEN: usize = 128;

/// The longest MQTT client id a thing may be registered with, in characters of
/// `[a-zA-Z0-9:_.-]` (one topic level, so presence topics that name it parse).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// The most late or duplicate answers kept per command execution; later ones are dropped, so a
/// device repeating itself cannot grow a finished command's history without bound.
pub const MAX_LATE_RESPONSES: u32 = 16;

/// The size of `value` as compact JSON, in bytes, without building the text.
pub fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_len_is_the_compact_encoding() {
        let v = serde_json::json!({"a": [1, 2, "é"], "b": null});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
    }
}
