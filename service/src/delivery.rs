//! Deliveries in flight: the batches a task handed to the link whose acknowledgements are
//! still to come.
//!
//! Waiting for the broker's acknowledgement of one batch before handing over the next costs a
//! broker round trip per batch, which serialized the outbox and every worker shard behind the
//! broker. [`DeviceLink::submit`] puts a batch on the wire in order and returns at once; the
//! task that submitted it keeps the pending acknowledgement here, bounded, and learns of
//! failures a little later. Nothing is spawned: the set lives in the task, so it ends with the
//! task and never holds the runtime open after a shutdown.

use fleetops_core::device::Outbound;
use fleetops_core::link::{Delivery, DeviceLink, LinkError};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

/// Batches a task may have awaiting acknowledgement before it waits for the oldest.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

/// A delivery that finished, with the batch it carried (kept for a retry).
pub(crate) struct Finished {
    pub result: Result<(), LinkError>,
    pub messages: Vec<Outbound>,
}

type Pending = futures::future::BoxFuture<'static, Finished>;

/// The deliveries one task has in flight.
#[derive(Default)]
pub(crate) struct InFlight {
    set: FuturesUnordered<Pending>,
}

impl InFlight {
    /// Hands `messages` to the link and returns the deliveries that finished meanwhile: with
    /// the window full, this first waits for one. A batch the link refused at once comes back
    /// among them, failed. When `keep` is set a finished delivery carries its batch, for the
    /// caller's retry; otherwise an empty one.
    pub async fn submit<L: DeviceLink>(
        &mut self,
        link: &L,
        messages: Vec<Outbound>,
        keep: bool,
    ) -> Vec<Finished> {
        let mut done = Vec::new();
        if self.set.len() >= MAX_IN_FLIGHT {
            if let Some(f) = self.set.next().await {
                done.push(f);
            }
        }
        let kept = if keep { messages.clone() } else { Vec::new() };
        match link.submit(messages).await {
            Ok(delivery) => self.push(delivery, kept),
            Err(e) => done.push(Finished {
                result: Err(e),
                messages: kept,
            }),
        }
        done
    }

    /// Takes over a delivery another task submitted; `messages` is its batch, for a retry.
    pub fn adopt(&mut self, delivery: Delivery, messages: Vec<Outbound>) {
        self.push(delivery, messages);
    }

    fn push(&mut self, delivery: Delivery, messages: Vec<Outbound>) {
        self.set.push(Box::pin(async move {
            Finished {
                result: delivery.await,
                messages,
            }
        }));
    }

    /// The deliveries that already finished, without waiting.
    pub fn reap(&mut self) -> Vec<Finished> {
        let mut out = Vec::new();
        while let Some(Some(f)) = self.set.next().now_or_never() {
            out.push(f);
        }
        out
    }

    /// Waits for the next delivery to finish; pending forever when none is in flight, so it
    /// can sit in a `select!` beside the task's other work.
    pub async fn next(&mut self) -> Finished {
        match self.set.next().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }
}
