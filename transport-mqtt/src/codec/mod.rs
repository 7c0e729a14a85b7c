//! The pure codec: topics and JSON payloads ↔ core's typed device operations. No I/O.
//!
//! Two directions, each with an encoder and a decoder, so the service binding and the device
//! SDK share one definition of the wire:
//!
//! | direction | encode | decode |
//! |---|---|---|
//! | device → service (requests) | [`Codec::encode_request`] (device SDK) | [`Codec::decode_request`] (service) |
//! | service → device (replies, notifications, commands) | [`Codec::encode`] (service) | [`Codec::decode_device_message`] (device SDK) |
//! | service → operators (job execution status changes) | [`Codec::encode`] (service) | — (plain JSON, see `docs/protocol.md`) |
//!
//! The service-side decoder never panics and never fails: any topic and payload bytes end up
//! as a request, a refusal carrying the ready-made `rejected` reply, or an ignored message.
//! Field names, reply shapes and error codes follow the AWS IoT Jobs device MQTT API; command
//! topics and bodies follow EMQX Fleets. `docs/protocol.md` is the human-readable version.

mod json;
mod presence;
mod reply;
mod request;
mod topic;

#[cfg(test)]
mod aws_tests;
#[cfg(test)]
mod tests;

use fleetops_core::device::{ExecutionView, Inbound, Operation, PendingJobs, Reply};
use fleetops_core::ids::{ExecutionId, IdError, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::limits::MAX_TOPIC_BYTES;
use fleetops_core::rejection::{ErrorCode, Rejection};
use fleetops_core::time::{Duration, Timestamp};
use serde_json::Value;

pub use presence::{
    birth_payload, decode_presence, presence_topic, Presence, PresenceDecoded, PresenceError,
    PresenceSource,
};
pub use topic::{LayoutError, Preset, RequestOp, TopicLayout, TopicRef};

/// Size bounds of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload encoded or decoded, in bytes (128 KiB by default). Larger requests
    /// are refused with `InvalidRequest` without being parsed.
    pub max_payload: usize,
    /// The longest `clientToken` accepted and echoed, in bytes (64, as AWS IoT Jobs).
    pub max_client_token: usize,
}

impl Limits {
    /// The default payload bound: 128 KiB.
    pub const DEFAULT_MAX_PAYLOAD: usize = 128 * 1024;
    /// The default `clientToken` bound: 64 bytes.
    pub const DEFAULT_MAX_CLIENT_TOKEN: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            max_client_token: Self::DEFAULT_MAX_CLIENT_TOKEN,
        }
    }
}

/// MQTT quality of service of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    /// QoS 0.
    AtMostOnce,
    /// QoS 1: every message of the protocol.
    AtLeastOnce,
}

/// MQTT 5 properties of a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProps {
    /// Message expiry interval in seconds: the broker drops the message once it is older.
    pub message_expiry_secs: Option<u32>,
    /// Where the answer goes (MQTT 5 request/response).
    pub response_topic: Option<String>,
    /// Echoed by MQTT 5 responders; fleetops puts the execution id here.
    pub correlation_data: Option<Vec<u8>>,
}

impl PublishProps {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        self.message_expiry_secs.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
    }
}

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The topic.
    pub topic: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// The QoS.
    pub qos: Qos,
    /// MQTT 5 properties.
    pub properties: PublishProps,
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload exceeds [`Limits::max_payload`].
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An accepted reply whose body does not answer its operation (a runtime bug).
    #[error("a {reply} reply can not answer {operation}")]
    ReplyMismatch {
        /// The operation, by name.
        operation: &'static str,
        /// The reply body, by name.
        reply: &'static str,
    },
    /// A field holds a value the wire can not carry.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field, in wire spelling.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Why a device-bound message could not be decoded (device SDK side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The topic is not one the service publishes to a device.
    #[error("{topic:?} is not a device-bound topic of the protocol")]
    NotDeviceBound {
        /// The topic (truncated).
        topic: String,
    },
    /// A thing name, job id or execution id in the topic is invalid.
    #[error("invalid id in topic: {0}")]
    Id(#[from] IdError),
    /// The payload exceeds [`Limits::max_payload`].
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not the JSON shape of its topic.
    #[error("invalid json: {0}")]
    Json(String),
}

/// A `rejected` reply as a device receives it: the wire carries the code and a message, not
/// core's structured [`Rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// The error code.
    pub code: ErrorCode,
    /// The human-readable message.
    pub message: String,
    /// The execution's current state, for `VersionMismatch` and transition refusals.
    pub execution_state: Option<ExecutionState>,
}

impl WireError {
    /// What a device receives for `rejection`.
    pub fn from_rejection(rejection: &Rejection) -> Self {
        Self {
            code: rejection.code(),
            message: rejection.to_string(),
            execution_state: rejection.execution_state().cloned(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

/// A command request as a device receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The command execution, from the topic.
    pub execution_id: ExecutionId,
    /// The command template, if any.
    pub command_id: Option<String>,
    /// What to do.
    pub action: String,
    /// Arguments (`null` when absent).
    pub params: Value,
    /// When the service sent it (whole seconds).
    pub timestamp: Timestamp,
    /// How long the service waits for the answer (whole seconds, rounded up).
    pub ttl: Duration,
}

/// A message from the service, as a device decodes it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceMessage {
    /// An `accepted` reply.
    Accepted {
        /// What it answers, from the topic.
        operation: Operation,
        /// The echoed token.
        client_token: Option<String>,
        /// The body.
        reply: Reply,
        /// When (whole seconds).
        timestamp: Timestamp,
    },
    /// A `rejected` reply.
    Rejected {
        /// What it answers, from the topic.
        operation: Operation,
        /// The echoed token.
        client_token: Option<String>,
        /// Why.
        error: WireError,
        /// When (whole seconds).
        timestamp: Timestamp,
    },
    /// `jobs/notify`.
    Notify {
        /// The pending executions.
        jobs: PendingJobs,
        /// When (whole seconds).
        timestamp: Timestamp,
    },
    /// `jobs/notify-next`.
    NotifyNext {
        /// The next pending execution; `None` when none is left.
        execution: Option<ExecutionView>,
        /// When (whole seconds).
        timestamp: Timestamp,
    },
    /// A command request.
    Command(CommandRequest),
}

/// What the service-side decoder made of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A well-formed request, for the runtime.
    Request(Inbound),
    /// A request the codec refuses itself; publish [`Refusal::reply`] and log it.
    Refused(Refusal),
    /// Not a request: outside the protocol's topics, or a topic the service itself publishes
    /// to (replies, notifications, command requests). Never answered.
    Ignored,
}

/// A request refused by the codec, with its `rejected` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The thing, when its topic level is a valid thing name.
    pub thing: Option<ThingName>,
    /// The client token, when it could be read.
    pub client_token: Option<String>,
    /// Why.
    pub rejection: Rejection,
    /// The `rejected` reply: published on the request topic followed by `/rejected`.
    pub reply: Encoded,
}

/// What a refusal's topic adds to its request's topic (before the `/json` level of AWS IoT
/// Commands topics: the length is the same).
const REJECTED_SUFFIX: &str = "/rejected";

/// The wire codec for one topic layout and one set of limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Codec {
    layout: TopicLayout,
    limits: Limits,
}

impl Codec {
    /// A codec for `layout` and `limits`.
    pub fn new(layout: TopicLayout, limits: Limits) -> Self {
        Self { layout, limits }
    }

    /// The topic layout.
    pub fn layout(&self) -> &TopicLayout {
        &self.layout
    }

    /// The size limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a refusal of a request received on `topic` could be published: its reply
    /// topic (`{topic}/rejected`) is at most [`MAX_TOPIC_BYTES`] long. A request on a longer
    /// topic is never answered ([`Codec::decode_request`] ignores it): MQTT encodes a topic's
    /// length in two bytes, and a reply to a hostile topic must never become a malformed
    /// packet.
    pub fn answerable(topic: &str) -> bool {
        topic.len() + REJECTED_SUFFIX.len() <= MAX_TOPIC_BYTES
    }

    /// Refuses a topic the service must not publish to.
    fn check_topic(topic: &str) -> Result<(), EncodeError> {
        if topic.len() > MAX_TOPIC_BYTES {
            return Err(EncodeError::InvalidField {
                field: "topic",
                reason: format!(
                    "is {} bytes, at most {MAX_TOPIC_BYTES} are allowed",
                    topic.len()
                ),
            });
        }
        Ok(())
    }

    fn check_size(&self, payload: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
        if payload.len() > self.limits.max_payload {
            return Err(EncodeError::TooLarge {
                len: payload.len(),
                max: self.limits.max_payload,
            });
        }
        Ok(payload)
    }
}

/// Truncates `s` to at most `max` bytes on a character boundary, for echoing untrusted text.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Seconds on the wire for a TTL: rounded up, so a device never sees less time than it has.
pub(crate) fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_millis().div_ceil(1000)
}

impl DeviceMessage {
    /// What a device decodes from `message`: timestamps truncated to whole seconds, the TTL
    /// rounded up to whole seconds, and a [`Rejection`] reduced to its code, message and
    /// execution state. Returns the addressee too. Useful to assert on what a device sees.
    ///
    /// `None` for a message no device is sent (a status change, published under
    /// `{p}/events/…`, which [`Codec::decode_device_message`] refuses as not device-bound).
    pub fn from_outbound(
        message: &fleetops_core::device::Outbound,
    ) -> Option<(ThingName, DeviceMessage)> {
        use fleetops_core::device::Outbound as O;
        let secs = |t: Timestamp| Timestamp::from_secs(t.as_secs());
        let summaries = |jobs: &PendingJobs| PendingJobs {
            in_progress: jobs.in_progress.iter().map(Self::summary_secs).collect(),
            queued: jobs.queued.iter().map(Self::summary_secs).collect(),
        };
        let view = |v: &ExecutionView| ExecutionView {
            queued_at: secs(v.queued_at),
            started_at: v.started_at.map(secs),
            last_updated_at: secs(v.last_updated_at),
            ..v.clone()
        };
        let msg = match message {
            O::Accepted {
                operation,
                client_token,
                reply,
                timestamp,
                ..
            } => DeviceMessage::Accepted {
                operation: operation.clone(),
                client_token: client_token.clone(),
                reply: match reply {
                    Reply::Pending(jobs) => Reply::Pending(summaries(jobs)),
                    Reply::StartNext(v) => Reply::StartNext(v.as_ref().map(view)),
                    Reply::Describe(v) => Reply::Describe(view(v)),
                    other => other.clone(),
                },
                timestamp: secs(*timestamp),
            },
            O::Rejected {
                operation,
                client_token,
                rejection,
                timestamp,
                ..
            } => DeviceMessage::Rejected {
                operation: operation.clone(),
                client_token: client_token.clone(),
                error: WireError::from_rejection(rejection),
                timestamp: secs(*timestamp),
            },
            O::Notify {
                jobs, timestamp, ..
            } => DeviceMessage::Notify {
                jobs: summaries(jobs),
                timestamp: secs(*timestamp),
            },
            O::NotifyNext {
                execution,
                timestamp,
                ..
            } => DeviceMessage::NotifyNext {
                execution: execution.as_ref().map(view),
                timestamp: secs(*timestamp),
            },
            O::CommandRequest {
                execution_id,
                command_id,
                action,
                params,
                timestamp,
                ttl,
                ..
            } => DeviceMessage::Command(CommandRequest {
                execution_id: execution_id.clone(),
                command_id: command_id.clone(),
                action: action.clone(),
                params: params.clone(),
                timestamp: secs(*timestamp),
                ttl: Duration::from_secs(ttl_secs(*ttl)),
            }),
            O::StatusChange { .. } | O::CommandStatusChange { .. } => return None,
        };
        Some((message.thing().clone(), msg))
    }

    fn summary_secs(
        s: &fleetops_core::device::ExecutionSummary,
    ) -> fleetops_core::device::ExecutionSummary {
        let secs = |t: Timestamp| Timestamp::from_secs(t.as_secs());
        fleetops_core::device::ExecutionSummary {
            queued_at: secs(s.queued_at),
            started_at: s.started_at.map(secs),
            last_updated_at: secs(s.last_updated_at),
            ..s.clone()
        }
    }
}
