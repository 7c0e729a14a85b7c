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
    /// A device connected or disconnected, when the transport can tell. Without a stamp
    /// of its own, the runtime orders it by its arrival time.
    Presence {
        /// The device.
        thing: ThingName,
        /// Whether it is now online.
        online: bool,
    },
    /// A presence source reported on a device, with the source's ordering key.
    PresenceReport {
        /// Whom the source names.
        subject: PresenceSubject,
        /// Whether it is now online.
        online: bool,
        /// The source's ordering key, in milliseconds: a birth and the last will of one
        /// connection share it, a later connection has a greater one.
        stamp: u64,
    },
}

/// Whom a presence source names: a thing, or an MQTT client id the runtime maps to a thing
/// through the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceSubject {
    /// The thing itself (the topic names it).
    Thing(ThingName),
    /// A client id, as the broker's own connection events name devices.
    Client(String),
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
    /// Some messages of a batch were not delivered; every message not listed was.
    ///
    /// Each message of a batch succeeds or fails on its own: one that cannot be encoded, or
    /// that the broker refuses, never takes the others down with it.
    #[error("{} message(s) of the batch not delivered, first: {}", failed.len(), first_detail(failed))]
    Partial {
        /// The messages that failed, by their index in the batch, in ascending order.
        failed: Vec<MessageFailure>,
    },
}

fn first_detail(failed: &[MessageFailure]) -> &str {
    failed.first().map_or("", |f| f.detail.as_str())
}

/// Why one message of a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFailure {
    /// The message's index in the batch handed to the link.
    pub index: usize,
    /// Trying the same message again cannot help: it cannot be encoded (too large for the
    /// transport's limits), or the broker refused it (an ACL, a quota). Otherwise the
    /// failure was transient (connection lost, no acknowledgement in time).
    pub permanent: bool,
    /// What went wrong.
    pub detail: String,
}

impl LinkError {
    /// The failed messages of a batch of `len` messages that ended with this error: the
    /// listed ones for [`LinkError::Partial`], every message (as transient) otherwise.
    pub fn failures(&self, len: usize) -> Vec<MessageFailure> {
        match self {
            Self::Partial { failed } => failed.iter().filter(|f| f.index < len).cloned().collect(),
            other => (0..len)
                .map(|index| MessageFailure {
                    index,
                    permanent: false,
                    detail: other.to_string(),
                })
                .collect(),
        }
    }

    /// The error for a batch whose messages failed as `failed` says (`None`: all delivered).
    /// A batch whose every message failed transiently for the same reason is reported as
    /// that one error rather than a list.
    pub fn from_failures(len: usize, mut failed: Vec<MessageFailure>) -> Option<Self> {
        if failed.is_empty() {
            return None;
        }
        failed.sort_by_key(|f| f.index);
        let uniform = failed.len() == len
            && failed
                .iter()
                .all(|f| !f.permanent && f.detail == failed[0].detail);
        if uniform {
            let detail = failed.swap_remove(0).detail;
            return Some(Self::Transport { detail });
        }
        Some(Self::Partial { failed })
    }
}

/// The pending delivery of a batch handed over with [`DeviceLink::submit`].
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), LinkError>> + Send + 'static>>;

/// The transport port.
///
/// `send` returns once the transport has handed every message over (for MQTT: the broker
/// acknowledged each QoS 1 publish), so the runtime can tell delivered from owed. Messages
/// of a batch fail one by one: a failure that concerns only some of them is a
/// [`LinkError::Partial`] naming them, and every message it does not name was delivered.
#[async_trait]
pub trait DeviceLink: Send + Sync + 'static {
    /// Delivers a batch of messages.
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError>;

    /// Hands a batch to the transport and returns as soon as it is on its way, with a
    /// [`Delivery`] that resolves once it is delivered as [`DeviceLink::send`] means it.
    ///
    /// Batches submitted one after another go on the wire in that order, so a caller can
    /// hand over its next batch while the broker is still acknowledging this one instead of
    /// paying a broker round trip per batch. An error here means nothing of the batch was
    /// handed over; what happened to each message handed over is the [`Delivery`]'s
    /// outcome. The default sends and waits, which is correct for any transport, only
    /// slower; its delivery resolves at once to what `send` returned.
    async fn submit(&self, messages: Vec<Outbound>) -> Result<Delivery, LinkError> {
        let outcome = self.send(messages).await;
        Ok(Box::pin(std::future::ready(outcome)))
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

/// A shared link is a link: an embedder hands `Arc::clone(&link)` to the runtime and keeps
/// its own handle, to read the transport's statistics or disconnect it cleanly once the
/// runtime has stopped. Every method forwards, `submit` and `settle` included, so the
/// transport's own batching and acknowledgements are kept.
#[async_trait]
impl<T: DeviceLink + ?Sized> DeviceLink for std::sync::Arc<T> {
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError> {
        (**self).send(messages).await
    }

    async fn submit(&self, messages: Vec<Outbound>) -> Result<Delivery, LinkError> {
        (**self).submit(messages).await
    }

    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError> {
        (**self).recv(max).await
    }

    async fn settle(&self, receipts: Vec<Receipt>) {
        (**self).settle(receipts).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(index: usize, permanent: bool, detail: &str) -> MessageFailure {
        MessageFailure {
            index,
            permanent,
            detail: detail.into(),
        }
    }

    #[test]
    fn failures_name_the_messages_that_failed_and_nothing_else() {
        assert_eq!(LinkError::from_failures(3, vec![]), None);
        let partial = LinkError::from_failures(
            3,
            vec![failure(2, false, "timeout"), failure(0, true, "too large")],
        )
        .unwrap();
        assert_eq!(
            partial.failures(3),
            vec![failure(0, true, "too large"), failure(2, false, "timeout")]
        );
        // A whole batch lost to one transient cause is that cause.
        let all = LinkError::from_failures(2, vec![failure(0, false, "x"), failure(1, false, "x")]);
        assert_eq!(all, Some(LinkError::Transport { detail: "x".into() }));
        // A whole-batch error fails every message, transiently.
        assert_eq!(
            LinkError::Closed.failures(2),
            vec![
                failure(0, false, "device link closed"),
                failure(1, false, "device link closed")
            ]
        );
        // Even a whole batch is listed when one of its failures is permanent.
        let mixed =
            LinkError::from_failures(2, vec![failure(0, true, "x"), failure(1, false, "x")]);
        assert!(matches!(mixed, Some(LinkError::Partial { .. })));
    }
}
