//! The crate's error type.

use std::time::Duration;

use fleetops_core::link::LinkError;

use crate::codec::{DecodeError, EncodeError, WireError};

/// Everything that can go wrong in the MQTT binding and the device SDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configuration value is unusable.
    #[error("invalid configuration {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The TLS settings could not be turned into a client configuration.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// No connection with subscriptions in place was established in time.
    #[error("no connection to {broker} within {timeout:?} (last error: {last_error})")]
    ConnectTimeout {
        /// `host:port`.
        broker: String,
        /// How long it waited.
        timeout: Duration,
        /// The last connection error seen, if any.
        last_error: String,
    },
    /// The broker refused one or more subscriptions (usually an ACL).
    #[error("the broker refused subscriptions: {0}")]
    SubscriptionRefused(String),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(#[from] EncodeError),
    /// A message could not be decoded.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The broker answered a QoS 1 publish with an error reason (e.g. not authorized).
    #[error("the broker refused the publish: {reason}")]
    PublishRefused {
        /// The PUBACK reason code.
        reason: String,
    },
    /// The broker accepted a QoS 1 publish but no client subscribes to its topic (MQTT 5
    /// PUBACK reason code 0x10, "No matching subscribers").
    #[error("no matching subscribers (PUBACK reason code 0x10)")]
    NoSubscribers,
    /// The connection dropped and the new one did not resume the session, so the broker never
    /// acknowledged the publish; it was not delivered.
    #[error("the connection was lost before the broker acknowledged the publish")]
    SessionLost,
    /// No acknowledgement or reply arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The service refused a device request.
    #[error("rejected: {0}")]
    Rejected(WireError),
    /// A reply arrived that does not answer the request (a service bug).
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// The client or link was shut down.
    #[error("connection closed")]
    Closed,
}

impl From<Error> for LinkError {
    fn from(e: Error) -> Self {
        match e {
            Error::Closed => LinkError::Closed,
            other => LinkError::Transport {
                detail: other.to_string(),
            },
        }
    }
}
