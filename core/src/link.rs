//! The `DeviceLink` port: how the runtime talks to devices, whatever the transport.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::device::{Inbound, Outbound};
use crate::ids::ThingName;

/// A transport's handle on one received request, handed back with [`DeviceLink::settle`]
/// once the runtime is done with the request.
///
/// Opaque to the runtime: the transport decides what the number means (for MQTT: which
/// connection delivered the publish and its packet id). A transport with nothing to
/// acknowledge uses [`Receipt::NONE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt(u64);

impl Receipt {
    /// A receipt that acknowledges nothing (in-process links, tests, QoS 0 requests).
    pub const NONE: Receipt = Receipt(0);

    /// A receipt carrying the transport's own number.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The transport's number.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

/// Something that happened on the device side of the link.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A device request, already parsed (malformed ones are answered by the transport
    /// itself), with the receipt the runtime hands back to [`DeviceLink::settle`] once the
    /// request's effect is stored or it was refused.
    Request(Inbound, Receipt),
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

    /// Tells the transport that the requests behind `receipts` are done with: each one's
    /// effect is stored, or it was refused (its reply may still be on its way). Only then
    /// may the transport acknowledge them to whoever delivered them (for MQTT: the PUBACK to
    /// the broker), so a request acknowledged there is never lost with the process; one not
    /// yet settled is delivered again after a crash.
    ///
    /// Receipts arrive in the order the runtime finished the requests, which across things
    /// is not the order they were received. The default does nothing, which is right for a
    /// transport that acknowledges nothing.
    async fn settle(&self, receipts: Vec<Receipt>) {
        let _ = receipts;
    }
}
