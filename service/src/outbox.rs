//! The outbox: publishes what stored events imply, after they are stored.
//!
//! What is owed is the machine's [`Outbox`](fleetops_machine::outbox::Outbox), shared by the
//! tasks: the follower hands it each fold's effects (per thing, that a `notify` or
//! `notify-next` is owed; which command requests are owed; with
//! `FleetConfig::publish_status_changes`, the job execution status changes to publish), and
//! this task polls it a batch at a time. Here the data only moves: the task loads the
//! streams a message needs, has the machine build each device message from the current
//! read models when it sends (so a burst of changes to one thing becomes one message with
//! the latest state), adds the status changes as they happened, and hands the batch to the
//! link. Nothing here is the truth: a message lost on the way is healed by the device
//! pulling on reconnect, by the recovery pass after a restart, and by the timers that end
//! whatever stays stuck.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::device::Outbound;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::{ExecutionId, JobId, StreamId, ThingName};

use crate::delivery::{Finished, InFlight};
use crate::error::FleetError;
use crate::runtime::Inner;
use crate::sync::lock;
use fleetops_machine::outbox::command_request;
use fleetops_machine::NotifyFlags;

/// Delivery attempts per batch before the outbox gives it up (and leaves it to recovery).
const SEND_ATTEMPTS: u32 = 3;

/// The outbox task.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    let mut in_flight = InFlight::default();
    loop {
        let handed = std::mem::take(&mut *lock(&inner.handed));
        for (delivery, messages) in handed {
            in_flight.adopt(delivery, messages);
        }
        for f in in_flight.reap() {
            inner.redeliver(f).await;
        }
        let owed = lock(&inner.outbox).poll(inner.config.outbox_batch);
        if !owed.is_empty() && !inner.leading() {
            // The leader publishes what the folds owe; a runtime that shares its store only
            // publishes its own new commands (the sender's fast path in `runtime`). A new leader
            // owes everything again, so nothing dropped here is lost.
            continue;
        }
        if owed.is_empty() {
            // `Notify` keeps a wake-up that came before we wait, so none is lost here.
            tokio::select! {
                () = inner.outbox_wake.notified() => {}
                f = in_flight.next() => inner.redeliver(f).await,
            }
            continue;
        }
        let mut messages = inner.build(owed.things, owed.commands).await;
        // Status changes are facts already built by the follower, in feed order.
        messages.extend(owed.status_changes);
        if messages.is_empty() {
            continue;
        }
        // On the wire in order; the acknowledgement is awaited while the next batch is built.
        for f in in_flight.submit(&inner.link, messages, true).await {
            inner.redeliver(f).await;
        }
    }
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// Looks at a finished delivery, message by message: a message that can never be
    /// delivered is recorded (see [`Inner::undeliverable`]) and never retried; the ones
    /// that failed for a transient reason are sent again (and waited for) a few times, then
    /// left to recovery with a counted warning. Messages that went through are done, whatever
    /// happened to the others of their batch.
    async fn redeliver(&self, finished: Finished) {
        let Finished { result, messages } = finished;
        let mut result = result.map_err(|e| (e, messages));
        let mut attempt = 1;
        loop {
            let (err, batch) = match result {
                Ok(()) => {
                    self.health.link_result(None);
                    return;
                }
                Err(failed) => failed,
            };
            let failures = err.failures(batch.len());
            let whole = failures.len() == batch.len() && failures.iter().all(|f| !f.permanent);
            self.health.link_result(whole.then(|| err.to_string()));
            let mut retry = Vec::new();
            for f in failures {
                let message = &batch[f.index];
                if f.permanent {
                    self.undeliverable(message, &f.detail).await;
                } else {
                    retry.push(message.clone());
                }
            }
            if retry.is_empty() {
                return;
            }
            if attempt >= SEND_ATTEMPTS {
                let n = retry.len() as u64;
                let (total, due) = self.health.count_given_up(n);
                if let Some(lines) = due {
                    tracing::warn!(%err, dropped = n, total, lines, "outbox delivery failed; leaving it to recovery");
                }
                return;
            }
            tracing::debug!(%err, attempt, messages = retry.len(), "outbox delivery failed; retrying");
            tokio::time::sleep(StdDuration::from_millis(100) * attempt).await;
            attempt += 1;
            result = self.link.send(retry.clone()).await.map_err(|e| (e, retry));
        }
    }

    /// Records a message the link can never deliver (it cannot be encoded, or the broker
    /// refused it). A command request ends its command `FAILED` with the reason (an event,
    /// so the operator and the command's handle see why); any other message is counted and
    /// logged, rate-limited. Its execution stays as stored: a device that asks again gets
    /// the same state through its own request.
    async fn undeliverable(&self, message: &Outbound, detail: &str) {
        let (total, due) = self.health.count_undeliverable();
        if let Outbound::CommandRequest { execution_id, .. } = message {
            let stream = StreamId::command(execution_id);
            let intent = CommandIntent::Undeliverable {
                reason: detail.to_owned(),
            };
            match self.execute_command(&stream, intent).await {
                Ok(_) => {
                    tracing::warn!(%execution_id, reason = detail, total, "command request undeliverable; the command failed")
                }
                // Answered, canceled or timed out meanwhile: nothing left to end.
                Err(FleetError::Rejected(_)) => {}
                Err(err) => {
                    tracing::warn!(%execution_id, %err, "cannot record an undeliverable command request; its timeout ends it");
                }
            }
            return;
        }
        if let Some(lines) = due {
            tracing::warn!(
                kind = kind(message),
                thing = %message.thing(),
                reason = detail,
                total,
                lines,
                "dropped a message that can never be delivered"
            );
        }
    }
}

/// The kind of a device message, for logs.
fn kind(message: &Outbound) -> &'static str {
    match message {
        Outbound::Notify { .. } => "notify",
        Outbound::NotifyNext { .. } => "notify-next",
        Outbound::CommandRequest { .. } => "command-request",
        Outbound::StatusChange { .. } | Outbound::CommandStatusChange { .. } => "status-change",
        Outbound::Accepted { .. } | Outbound::Rejected { .. } => "reply",
    }
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// Builds the owed messages from the current state.
    async fn build(
        &self,
        things: Vec<(ThingName, NotifyFlags)>,
        commands: Vec<ExecutionId>,
    ) -> Vec<Outbound> {
        let now = self.clock.now();
        let mut out = Vec::with_capacity(things.len() * 2 + commands.len());
        let mut next: Vec<(ThingName, Option<JobId>)> = Vec::new();
        {
            let st = self.read();
            for (thing, flags) in things {
                if flags.notify {
                    out.push(st.notify(&thing, now, self.config.notify_max));
                }
                if flags.next {
                    let job = st.next_pending_job(&thing);
                    next.push((thing, job));
                }
            }
        }
        // The next execution's full view needs its status details: read the streams
        // concurrently, a batch at a time.
        let views = futures::future::join_all(next.into_iter().map(|(thing, job)| async move {
            let state = match job {
                None => None,
                Some(job) => {
                    let stream = StreamId::job_execution(&job, &thing);
                    match self.load_execution(&stream).await {
                        Ok(state) => state,
                        Err(err) => {
                            tracing::warn!(%stream, %err, "cannot build notify-next");
                            return None;
                        }
                    }
                }
            };
            Some(self.read().notify_next(thing, state.as_ref(), now))
        }))
        .await;
        out.extend(views.into_iter().flatten());
        let requests = futures::future::join_all(commands.into_iter().map(|id| async move {
            let stream = StreamId::command(&id);
            // The request's fields never change; whether it is still owed is the folded
            // status, so a stale cached state cannot resend a finished command.
            let cached = lock(&self.command_cache).get(&stream).map(|(_, c)| c);
            let live = self.read().command_live(&id, now);
            let loaded = match cached {
                Some(c) if live => Ok((Some(c), None)),
                _ => self.load::<CommandExecution>(&stream).await,
            };
            match loaded {
                Ok((Some(c), _)) => command_request(&c, now),
                Ok(_) => None,
                Err(err) => {
                    tracing::warn!(%stream, %err, "cannot build a command request");
                    None
                }
            }
        }))
        .await;
        out.extend(requests.into_iter().flatten());
        out
    }

    /// What a restarted runtime still owes (the machine's `Outbox::recover`): notifications
    /// for every thing with pending executions, and the requests of live commands.
    /// Duplicates are harmless by design.
    pub(crate) fn queue_recovery(&self) {
        let now = self.clock.now();
        {
            let st = self.read();
            lock(&self.outbox).recover(&st, now);
        }
        self.outbox_wake.notify_one();
    }
}
