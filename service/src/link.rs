//! An in-process [`DeviceLink`]: [`ChannelLink`] with its device side, [`DeviceEnd`], for fast
//! tests and benchmarks ([`crate::sim::simulate`] runs simulated devices on that side).
//!
//! Both directions are bounded channels, so a slow device side slows the fleet down instead
//! of growing a queue.
//!
//! ```
//! use fleetops_core::ThingName;
//! use fleetops_core::device::{DeviceRequest, Outbound, Reply};
//! use fleetops_service::{Fleet, link::ChannelLink};
//! use fleetops_store_memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (link, mut devices) = ChannelLink::pair(16);
//! let _fleet = Fleet::start(MemoryStore::new(), link).await?;
//! let t = ThingName::parse("t1")?;
//! let reply = devices.call(&t, DeviceRequest::GetPending).await?;
//! assert!(matches!(reply, Outbound::Accepted { reply: Reply::Pending(p), .. } if p.queued.is_empty()));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use fleetops_core::device::{DeviceRequest, Inbound, Outbound};
use fleetops_core::link::{DeviceLink, LinkError, LinkEvent, Receipt};
use fleetops_core::ThingName;
use tokio::sync::{mpsc, Mutex};

/// The fleet's side of an in-process link.
#[derive(Debug)]
pub struct ChannelLink {
    inbound: Mutex<mpsc::Receiver<LinkEvent>>,
    outbound: mpsc::Sender<Outbound>,
    receipts: Arc<Receipts>,
}

/// The receipts of a [`ChannelLink`]: numbered by the device side, recorded when the fleet
/// settles them, so tests can see when a request was done with.
#[derive(Debug, Default)]
struct Receipts {
    next: AtomicU64,
    settled: StdMutex<Vec<Receipt>>,
}

impl Receipts {
    fn issue(&self) -> Receipt {
        // Numbered from 1: 0 is `Receipt::NONE`.
        Receipt::new(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl ChannelLink {
    /// A link and its device side, each direction holding at most `capacity` messages.
    pub fn pair(capacity: usize) -> (ChannelLink, DeviceEnd) {
        let (in_tx, in_rx) = mpsc::channel(capacity.max(1));
        let (out_tx, out_rx) = mpsc::channel(capacity.max(1));
        let receipts = Arc::new(Receipts::default());
        (
            ChannelLink {
                inbound: Mutex::new(in_rx),
                outbound: out_tx,
                receipts: Arc::clone(&receipts),
            },
            DeviceEnd {
                tx: in_tx,
                rx: out_rx,
                stash: VecDeque::new(),
                next_token: 0,
                receipts,
            },
        )
    }
}

#[async_trait]
impl DeviceLink for ChannelLink {
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError> {
        for m in messages {
            self.outbound.send(m).await.map_err(|_| LinkError::Closed)?;
        }
        Ok(())
    }

    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError> {
        let mut rx = self.inbound.lock().await;
        let mut buf = Vec::new();
        if rx.recv_many(&mut buf, max.max(1)).await == 0 {
            return Err(LinkError::Closed);
        }
        Ok(buf)
    }

    async fn settle(&self, receipts: Vec<Receipt>) {
        self.receipts
            .settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(receipts);
    }
}

/// The devices' side of a [`ChannelLink`]: send requests and presence, receive what the fleet
/// sends.
#[derive(Debug)]
pub struct DeviceEnd {
    tx: mpsc::Sender<LinkEvent>,
    rx: mpsc::Receiver<Outbound>,
    /// Messages set aside by [`DeviceEnd::call`] while it waited for its reply.
    stash: VecDeque<Outbound>,
    next_token: u64,
    receipts: Arc<Receipts>,
}

/// A cloneable sending half of a [`DeviceEnd`], for tasks that only send (presence bursts,
/// request generators) while another task receives.
#[derive(Debug, Clone)]
pub struct DeviceSender {
    tx: mpsc::Sender<LinkEvent>,
}

impl DeviceSender {
    /// Sends any link event.
    pub async fn send(&self, event: LinkEvent) -> Result<(), LinkError> {
        self.tx.send(event).await.map_err(|_| LinkError::Closed)
    }

    /// Reports `thing` online or offline.
    pub async fn presence(&self, thing: &ThingName, online: bool) -> Result<(), LinkError> {
        self.send(LinkEvent::Presence {
            thing: thing.clone(),
            online,
        })
        .await
    }
}

impl DeviceEnd {
    /// The channel itself, for a sender that must not wait (it reserves a slot first).
    pub(crate) fn raw_sender(&self) -> mpsc::Sender<LinkEvent> {
        self.tx.clone()
    }

    /// A sending handle that can live in another task.
    pub fn sender(&self) -> DeviceSender {
        DeviceSender {
            tx: self.tx.clone(),
        }
    }

    /// Sends a request from `thing`.
    pub async fn request(
        &self,
        thing: &ThingName,
        client_token: Option<String>,
        request: DeviceRequest,
    ) -> Result<(), LinkError> {
        self.request_with_receipt(thing, client_token, request)
            .await
            .map(|_| ())
    }

    /// Sends a request from `thing` with a fresh receipt, and returns the receipt (see
    /// [`DeviceEnd::settled`]).
    pub async fn request_with_receipt(
        &self,
        thing: &ThingName,
        client_token: Option<String>,
        request: DeviceRequest,
    ) -> Result<Receipt, LinkError> {
        let receipt = self.receipts.issue();
        self.send(LinkEvent::Request(
            Inbound {
                thing: thing.clone(),
                client_token,
                request,
            },
            receipt,
        ))
        .await?;
        Ok(receipt)
    }

    /// The receipts the fleet settled so far (its requests decided and stored), in the
    /// order it settled them.
    pub fn settled(&self) -> Vec<Receipt> {
        self.receipts
            .settled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reports `thing` online or offline.
    pub async fn presence(&self, thing: &ThingName, online: bool) -> Result<(), LinkError> {
        self.send(LinkEvent::Presence {
            thing: thing.clone(),
            online,
        })
        .await
    }

    /// Sends any link event.
    pub async fn send(&self, event: LinkEvent) -> Result<(), LinkError> {
        self.tx.send(event).await.map_err(|_| LinkError::Closed)
    }

    /// The next message from the fleet (set-aside ones first); `None` once the fleet is gone.
    pub async fn recv(&mut self) -> Option<Outbound> {
        if let Some(m) = self.stash.pop_front() {
            return Some(m);
        }
        self.rx.recv().await
    }

    /// Every message available right now, without waiting.
    pub fn drain(&mut self) -> Vec<Outbound> {
        let mut out: Vec<Outbound> = self.stash.drain(..).collect();
        while let Ok(m) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }

    /// Sends a request with a fresh client token and waits for the reply carrying it; other
    /// messages that arrive meanwhile are kept for [`DeviceEnd::recv`] and [`DeviceEnd::drain`].
    pub async fn call(
        &mut self,
        thing: &ThingName,
        request: DeviceRequest,
    ) -> Result<Outbound, LinkError> {
        self.next_token += 1;
        let token = format!("call-{}", self.next_token);
        self.call_with_token(thing, &token, request).await
    }

    /// [`DeviceEnd::call`] with the client token given, as a device that retries a request
    /// sends the same token again.
    pub async fn call_with_token(
        &mut self,
        thing: &ThingName,
        token: &str,
        request: DeviceRequest,
    ) -> Result<Outbound, LinkError> {
        self.request(thing, Some(token.to_owned()), request).await?;
        loop {
            let m = self.rx.recv().await.ok_or(LinkError::Closed)?;
            let matches = match &m {
                Outbound::Accepted { client_token, .. }
                | Outbound::Rejected { client_token, .. } => client_token.as_deref() == Some(token),
                _ => false,
            };
            if matches {
                return Ok(m);
            }
            self.stash.push_back(m);
        }
    }
}
