//! Which publish a PUBACK acknowledges.
//!
//! rumqttc's `publish()` returns once the request is queued, and its event loop only reports
//! packet ids: `Outgoing::Publish(pkid)` when a publish is written, `Incoming::PubAck` when the
//! broker accepts it. The event loop takes requests from its channel strictly in order, so the
//! n-th fresh publish written is the n-th one submitted: [`AckTracker`] keeps the submitters'
//! waiters in that order and pairs each with its packet id as it is written.
//!
//! Reconnects need care. On a connection error rumqttc moves unacknowledged publishes and the
//! requests still in its channel to a pending queue, replays it if the broker resumed the
//! session, and silently drops it if not. The tracker is told how many fresh publishes sat in
//! that queue, and fails exactly those (plus the in-flight ones) when the next session is new.

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;

use crate::error::Error;

/// Completed when the broker acknowledged the publish (or it failed).
pub(crate) type Waiter = oneshot::Sender<Result<(), Error>>;

/// Pairs submitted publishes with packet ids and acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct AckTracker {
    /// Submitted, not yet written: in the order of rumqttc's request channel.
    unassigned: VecDeque<Waiter>,
    /// Written with a packet id, awaiting PUBACK.
    inflight: HashMap<u16, Waiter>,
    /// Taken from the channel but held back by rumqttc because its packet id was still in use.
    collided: Option<(u16, Waiter)>,
    /// How many leading `unassigned` waiters rumqttc holds in its pending queue, which it
    /// drops if the next connection starts a new session.
    drained: usize,
    /// Whether a connection error happened since the last ConnAck.
    broken: bool,
}

fn complete(w: Waiter, outcome: Result<(), Error>) {
    // The submitter may have given up (timeout); nobody to tell then.
    let _ = w.send(outcome);
}

impl AckTracker {
    /// A publish is about to enter rumqttc's request channel.
    pub fn submit(&mut self, waiter: Waiter) {
        self.unassigned.push_back(waiter);
    }

    /// The publish submitted last never entered the channel (the event loop is gone).
    pub fn withdraw_last(&mut self) {
        self.unassigned.pop_back();
    }

    /// rumqttc wrote a publish: `pkid` 0 for QoS 0.
    pub fn on_written(&mut self, pkid: u16) {
        if pkid == 0 {
            // QoS 0 has no acknowledgement: written is as good as it gets.
            if let Some(w) = self.unassigned.pop_front() {
                complete(w, Ok(()));
            }
            return;
        }
        if let Some((id, _)) = &self.collided {
            if *id == pkid && !self.inflight.contains_key(&pkid) {
                if let Some((id, w)) = self.collided.take() {
                    self.inflight.insert(id, w);
                }
                return;
            }
        }
        if self.inflight.contains_key(&pkid) {
            // A retransmission on a resumed session: already paired.
            return;
        }
        // Between a connection error and the next ConnAck the only writes reported are stale:
        // rumqttc buffers the event of a publish whose write failed and hands it out after
        // the reconnect, before the ConnAck. That publish precedes the drained ones in the
        // channel order, so `drained` stays as it is.
        if let Some(w) = self.unassigned.pop_front() {
            self.inflight.insert(pkid, w);
        }
    }

    /// rumqttc held a fresh publish back because `pkid` is still unacknowledged.
    pub fn on_collision(&mut self, pkid: u16) {
        if let Some(w) = self.unassigned.pop_front() {
            self.collided = Some((pkid, w));
        }
    }

    /// The broker acknowledged `pkid`; `refused` carries a failure reason code.
    #[cfg(test)]
    pub fn on_puback(&mut self, pkid: u16, refused: Option<String>) {
        self.on_puback_outcome(
            pkid,
            match refused {
                None => Ok(()),
                Some(reason) => Err(Error::PublishRefused { reason }),
            },
        );
    }

    /// The broker acknowledged `pkid` with this outcome.
    pub fn on_puback_outcome(&mut self, pkid: u16, outcome: Result<(), Error>) {
        if let Some(w) = self.inflight.remove(&pkid) {
            complete(w, outcome);
        }
    }

    /// The connection failed; `drained_fresh` fresh (never written) publishes now sit in
    /// rumqttc's pending queue.
    pub fn on_connection_error(&mut self, drained_fresh: usize) {
        self.broken = true;
        self.drained = drained_fresh.min(self.unassigned.len());
    }

    /// A connection was established.
    pub fn on_connack(&mut self, session_present: bool) {
        if self.broken && !session_present {
            // rumqttc dropped its pending queue: everything in flight and every fresh publish
            // it had drained is gone and will never be acknowledged.
            for (_, w) in self.inflight.drain() {
                complete(w, Err(Error::SessionLost));
            }
            if let Some((_, w)) = self.collided.take() {
                complete(w, Err(Error::SessionLost));
            }
            for w in self.unassigned.drain(..self.drained) {
                complete(w, Err(Error::SessionLost));
            }
        }
        self.broken = false;
        self.drained = 0;
    }

    /// The event loop stopped for good.
    pub fn close(&mut self) {
        for (_, w) in self.inflight.drain() {
            complete(w, Err(Error::Closed));
        }
        if let Some((_, w)) = self.collided.take() {
            complete(w, Err(Error::Closed));
        }
        for w in self.unassigned.drain(..) {
            complete(w, Err(Error::Closed));
        }
    }

    /// Publishes not yet acknowledged, for diagnostics.
    pub fn outstanding(&self) -> usize {
        self.unassigned.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(t: &mut AckTracker) -> oneshot::Receiver<Result<(), Error>> {
        let (tx, rx) = oneshot::channel();
        t.submit(tx);
        rx
    }

    fn done(rx: &mut oneshot::Receiver<Result<(), Error>>) -> Option<Result<(), Error>> {
        rx.try_recv().ok()
    }

    #[test]
    fn acks_are_matched_by_packet_id_in_any_order() {
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        let mut b = waiter(&mut t);
        let mut c = waiter(&mut t);
        t.on_written(1);
        t.on_written(2);
        t.on_written(0);
        assert_eq!(done(&mut c), Some(Ok(())), "QoS 0 completes on write");
        t.on_puback(2, None);
        assert_eq!(done(&mut b), Some(Ok(())));
        assert_eq!(done(&mut a), None);
        t.on_puback(1, Some("NotAuthorized".into()));
        assert!(matches!(
            done(&mut a),
            Some(Err(Error::PublishRefused { .. }))
        ));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn resumed_session_retransmits_without_repairing() {
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        t.on_written(1);
        let mut b = waiter(&mut t); // still in the channel: drained into pending
        t.on_connection_error(1);
        t.on_connack(true);
        t.on_written(1); // retransmission of a
        t.on_written(2); // b, fresh
        t.on_puback(1, None);
        t.on_puback(2, None);
        assert_eq!(done(&mut a), Some(Ok(())));
        assert_eq!(done(&mut b), Some(Ok(())));
    }

    #[test]
    fn new_session_fails_what_rumqttc_dropped_and_keeps_the_rest_aligned() {
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        t.on_written(1);
        let mut b = waiter(&mut t); // drained into pending, will be dropped
        t.on_connection_error(1);
        let mut c = waiter(&mut t); // sent after the error: stays in the channel
        t.on_connection_error(1); // a failed reconnect attempt recounts
        t.on_connack(false);
        assert_eq!(done(&mut a), Some(Err(Error::SessionLost)));
        assert_eq!(done(&mut b), Some(Err(Error::SessionLost)));
        assert_eq!(done(&mut c), None);
        t.on_written(1);
        t.on_puback(1, None);
        assert_eq!(done(&mut c), Some(Ok(())));
    }

    #[test]
    fn a_failed_write_reported_after_the_reconnect_keeps_the_drained_count() {
        // a's write failed (its event comes late); b and c were drained from the channel.
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        let mut b = waiter(&mut t);
        let mut c = waiter(&mut t);
        t.on_connection_error(2);
        t.on_written(7); // the stale event of a, handed out before the ConnAck
        t.on_connack(false);
        for rx in [&mut a, &mut b, &mut c] {
            assert_eq!(done(rx), Some(Err(Error::SessionLost)));
        }
        let mut d = waiter(&mut t);
        t.on_written(8);
        t.on_puback(8, None);
        assert_eq!(done(&mut d), Some(Ok(())));
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn collisions_are_resolved_when_the_old_id_is_acked() {
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        let mut b = waiter(&mut t);
        t.on_written(1);
        t.on_collision(1);
        t.on_puback(1, None);
        t.on_written(1); // rumqttc now writes the held-back publish with the same id
        assert_eq!(done(&mut a), Some(Ok(())));
        assert_eq!(done(&mut b), None);
        t.on_puback(1, None);
        assert_eq!(done(&mut b), Some(Ok(())));
    }

    #[test]
    fn close_fails_everything() {
        let mut t = AckTracker::default();
        let mut a = waiter(&mut t);
        let mut b = waiter(&mut t);
        t.on_written(1);
        t.close();
        assert_eq!(done(&mut a), Some(Err(Error::Closed)));
        assert_eq!(done(&mut b), Some(Err(Error::Closed)));
    }
}
