//! The `DeviceLink` port: how the runtime talks to devices, whatever the transport.

use async_trait::async_trait;

use crate::device::{Inbound, Outbound};
use crate::ids::ThingName;

/// Something that happened on the device side of the link.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A device request, already parsed; malformed ones are answered by the transport itself.
    Request(Inbound),
    /// A device connected or disconnected, when the transport can tell.
    Presence {
        /// The device.
        thing: ThingName,
        /// Whether it is now online.
        online: bool,
    },
}

/// Why the link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link was shut down; no more events will come.
    #[error("device link closed")]
    Closed,
    /// The transport could not deliver (broker unreachable, acknowledgement missing).
    #[error("device link failed: {detail}")]
    Transport {
        /// What failed.
        detail: String,
    },
}

/// The transport port.
///
/// `send` returns once the transport has handed every message over (for MQTT: the broker
/// acknowledged each QoS 1 publish), so the runtime can tell delivered from owed.
#[async_trait]
pub trait DeviceLink: Send + Sync + 'static {
    /// Delivers a batch of messages.
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError>;

    /// Waits for the next events from devices, returning at most `max` at once.
    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError>;
}
