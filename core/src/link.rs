//! The `DeviceLink` port: how the runtime talks to devices, whatever the transport.

use std::future::Future;
use std::pin::Pin;

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

/// The pending delivery of a batch handed over with [`DeviceLink::submit`].
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'static>>;

/// The transport port.
///
/// `send` returns once the transport has handed every message over (for MQTT: the broker
/// acknowledged each QoS 1 publish), so the runtime can tell delivered from owed.
#[async_trait]
pub trait DeviceLink: Send + Sync + 'static {
    /// Delivers a batch of messages.
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError>;

    /// Hands a batch to the transport and returns as soon as it is on its way, with a
    /// [`Delivery`] that resolves once it is delivered as [`DeviceLink::send`] means it.
    ///
    /// Batches submitted one after another go on the wire in that order, so a caller can
    /// hand over its next batch while the broker is still acknowledging this one instead of
    /// paying a broker round trip per batch. The default sends and waits, which is correct
    /// for any transport, only slower.
    async fn submit(&self, messages: Vec<Outbound>) -> Result<Delivery, LinkError> {
        self.send(messages).await?;
        Ok(Box::pin(std::future::ready(Ok(()))))
    }

    /// Waits for the next events from devices, returning at most `max` at once.
    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError>;
}
