//! An in-process [`DeviceLink`]: [`ChannelLink`] with its device side, [`DeviceEnd`], and a
//! simulator of many devices ([`simulate`]) for fast tests and benchmarks.
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
use fleetops_core::device::{
    CommandResponse, DeviceRequest, ExecutionView, Inbound, Outbound, Reply, StartNextRequest,
    UpdateRequest,
};
use fleetops_core::link::{DeviceLink, LinkError, LinkEvent, Receipt};
use fleetops_core::{CommandStatus, JobExecutionStatus, ThingName};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;

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

/// What a simulated device does with a job execution it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimAction {
    /// Report `SUCCEEDED`.
    Succeed,
    /// Report `FAILED`.
    Fail,
    /// Report `REJECTED`.
    Reject,
    /// Never answer (timers will end it).
    Ignore,
}

/// Decides a simulated device's outcome for an execution (by thing, job, attempt…).
pub type Behavior = Arc<dyn Fn(&ThingName, &ExecutionView) -> SimAction + Send + Sync>;

/// Counters of a running simulation.
#[derive(Debug, Default)]
pub struct SimStats {
    /// `start-next` requests sent.
    pub start_next: AtomicU64,
    /// Updates sent.
    pub updates: AtomicU64,
    /// Rejected replies received.
    pub rejected: AtomicU64,
    /// Command requests answered.
    pub commands: AtomicU64,
    /// Messages received from the fleet (status changes, which no device receives, left out).
    pub received: AtomicU64,
}

/// A running simulation; dropping it stops the devices.
#[derive(Debug)]
pub struct Simulation {
    /// Live counters.
    pub stats: Arc<SimStats>,
    task: JoinHandle<()>,
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Simulates every device behind `end`: on `notify-next` a device sends `start-next` (or, if
/// the execution is already in progress, its update), then reports what `behavior` says; it
/// answers every command request with `SUCCEEDED`.
///
/// Requests are queued locally and sent as the fleet takes them, so the simulator never
/// blocks the fleet's sends; the queue holds at most a request or two per device.
pub fn simulate(mut end: DeviceEnd, behavior: Behavior) -> Simulation {
    let stats = Arc::new(SimStats::default());
    let s = Arc::clone(&stats);
    let task = tokio::spawn(async move {
        let mut queue: VecDeque<LinkEvent> = VecDeque::new();
        let tx = end.tx.clone();
        loop {
            tokio::select! {
                biased;
                m = end.rx.recv() => {
                    let Some(m) = m else { return };
                    // Status changes are for operators; no device receives them.
                    if m.is_device_bound() {
                        s.received.fetch_add(1, Ordering::Relaxed);
                        react(m, &behavior, &s, &mut queue);
                    }
                }
                permit = tx.reserve(), if !queue.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(e) = queue.pop_front() {
                        permit.send(e);
                    }
                }
            }
        }
    });
    Simulation { stats, task }
}

fn req(thing: &ThingName, request: DeviceRequest) -> LinkEvent {
    LinkEvent::Request(
        Inbound {
            thing: thing.clone(),
            client_token: None,
            request,
        },
        Receipt::NONE,
    )
}

fn finish(
    thing: &ThingName,
    view: &ExecutionView,
    behavior: &Behavior,
    stats: &SimStats,
    queue: &mut VecDeque<LinkEvent>,
) {
    let status = match behavior(thing, view) {
        SimAction::Succeed => JobExecutionStatus::Succeeded,
        SimAction::Fail => JobExecutionStatus::Failed,
        SimAction::Reject => JobExecutionStatus::Rejected,
        SimAction::Ignore => return,
    };
    stats.updates.fetch_add(1, Ordering::Relaxed);
    queue.push_back(req(
        thing,
        DeviceRequest::Update {
            job_id: view.job_id.clone(),
            request: UpdateRequest {
                status: Some(status),
                execution_number: Some(view.execution_number),
                ..UpdateRequest::default()
            },
        },
    ));
}

fn react(m: Outbound, behavior: &Behavior, stats: &SimStats, queue: &mut VecDeque<LinkEvent>) {
    match m {
        Outbound::NotifyNext {
            thing,
            execution: Some(view),
            ..
        } => {
            if view.status == JobExecutionStatus::InProgress {
                finish(&thing, &view, behavior, stats, queue);
            } else {
                stats.start_next.fetch_add(1, Ordering::Relaxed);
                queue.push_back(req(
                    &thing,
                    DeviceRequest::StartNext(StartNextRequest::default()),
                ));
            }
        }
        Outbound::Accepted {
            thing,
            reply: Reply::StartNext(Some(view)),
            ..
        } => finish(&thing, &view, behavior, stats, queue),
        Outbound::Rejected { .. } => {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
        }
        Outbound::CommandRequest {
            thing,
            execution_id,
            ..
        } => {
            stats.commands.fetch_add(1, Ordering::Relaxed);
            queue.push_back(req(
                &thing,
                DeviceRequest::CommandResponse {
                    execution_id,
                    response: CommandResponse {
                        status: CommandStatus::Succeeded,
                        result: None,
                        status_reason: None,
                    },
                },
            ));
        }
        _ => {}
    }
}
