//! Answers to retried requests: a device that lost a reply and sends the same request again,
//! with the same `clientToken`, gets the answer it missed rather than a fresh decision
//! (which, after an accepted terminal update, would be `TerminalStateReached`).
//!
//! Only requests that change state are remembered (start-next, update, command response): a
//! repeated read is simply answered again with what is current. A remembered answer is
//! served for the same thing, token and operation (job or command execution included)
//! within the configured window, and memory is bounded per thing and overall. The memory is
//! in the process only: after a restart a retry is decided afresh, and the rules refuse what
//! would apply twice (a terminal execution refuses updates, a command refuses a second
//! response).

use std::collections::{HashMap, VecDeque};

use fleetops_core::device::{DeviceRequest, Inbound, Operation, Outbound};
use fleetops_core::{Duration, Rejection, ThingName, Timestamp};

/// One remembered answer.
#[derive(Debug)]
struct Entry {
    token: String,
    operation: Operation,
    reply: Outbound,
    at: Timestamp,
    seq: u64,
}

/// Remembered answers, kept by whoever serializes a thing's requests (the service keeps one
/// per worker shard: every request of a thing goes to one shard).
#[derive(Debug)]
pub struct ReplyCache {
    window: Duration,
    per_thing: usize,
    max: usize,
    things: HashMap<ThingName, VecDeque<Entry>>,
    /// Every entry in insertion order, by thing and sequence number; entries evicted per
    /// thing leave stale items here, which count against `max` until they reach the front.
    order: VecDeque<(ThingName, u64)>,
    next_seq: u64,
}

/// Whether the answer to `request` is remembered: only requests that change state.
pub fn remembered(request: &DeviceRequest) -> bool {
    matches!(
        request,
        DeviceRequest::StartNext(_)
            | DeviceRequest::Update { .. }
            | DeviceRequest::CommandResponse { .. }
    )
}

/// Which request a remembered answer belongs to: the same thing, token and operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    thing: ThingName,
    token: String,
    operation: Operation,
}

/// What to do with a device request before deciding it.
#[derive(Debug, Clone, PartialEq)]
pub enum Recall {
    /// A retry of a request answered within the window: send this answer again.
    Answered(Outbound),
    /// Decide it; with a key, [`ReplyCache::record`] the answer under it afterwards.
    Decide(Option<RequestKey>),
}

/// Whether an answer is worth giving again to a retry: an acceptance, or a refusal by the
/// rules (which stands). A failure inside the service, or a request throttled while the
/// read model caught up, may go through when retried, so it is decided again.
pub fn worth_remembering(reply: &Outbound) -> bool {
    match reply {
        Outbound::Accepted { .. } => true,
        Outbound::Rejected { rejection, .. } => !matches!(
            rejection,
            Rejection::RequestThrottled | Rejection::InternalError { .. }
        ),
        _ => false,
    }
}

impl ReplyCache {
    /// Whether `inbound` is a retry answered within the window before `now`, or must be
    /// decided (and under which key its answer is then recorded, if at all).
    pub fn recall(&self, inbound: &Inbound, now: Timestamp) -> Recall {
        let Some(token) = inbound
            .client_token
            .as_ref()
            .filter(|_| remembered(&inbound.request))
        else {
            return Recall::Decide(None);
        };
        let key = RequestKey {
            thing: inbound.thing.clone(),
            token: token.clone(),
            operation: inbound.request.operation(),
        };
        match self.get(&key.thing, &key.token, &key.operation, now) {
            Some(reply) => Recall::Answered(reply),
            None => Recall::Decide(Some(key)),
        }
    }

    /// Records the answer given at `now` to the request under `key`, if it is
    /// [worth remembering](worth_remembering).
    pub fn record(&mut self, key: RequestKey, reply: &Outbound, now: Timestamp) {
        if worth_remembering(reply) {
            self.put(&key.thing, key.token, key.operation, reply.clone(), now);
        }
    }

    /// Remembers answers for `window`, at most `per_thing` per thing and `max` in all.
    pub fn new(window: Duration, per_thing: usize, max: usize) -> Self {
        Self {
            window,
            per_thing,
            max,
            things: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// The answer given to `thing`'s request with `token` for `operation`, if it was given
    /// within the window before `now`.
    fn get(
        &self,
        thing: &ThingName,
        token: &str,
        operation: &Operation,
        now: Timestamp,
    ) -> Option<Outbound> {
        let entries = self.things.get(thing)?;
        entries
            .iter()
            .rev()
            .find(|e| e.token == token && &e.operation == operation)
            .filter(|e| now.saturating_since(e.at) <= self.window)
            .map(|e| e.reply.clone())
    }

    /// Remembers the answer `reply` given at `now`.
    fn put(
        &mut self,
        thing: &ThingName,
        token: String,
        operation: Operation,
        reply: Outbound,
        now: Timestamp,
    ) {
        if self.per_thing == 0 || self.max == 0 {
            return;
        }
        self.expire(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let entries = self.things.entry(thing.clone()).or_default();
        // A token reused for the same operation replaces its older answer.
        entries.retain(|e| !(e.token == token && e.operation == operation));
        if entries.len() >= self.per_thing {
            entries.pop_front();
        }
        entries.push_back(Entry {
            token,
            operation,
            reply,
            at: now,
            seq,
        });
        self.order.push_back((thing.clone(), seq));
        while self.order.len() > self.max {
            if let Some((t, s)) = self.order.pop_front() {
                self.remove(&t, s);
            }
        }
    }

    /// Forgets answers older than the window, oldest first.
    fn expire(&mut self, now: Timestamp) {
        while let Some((thing, seq)) = self.order.front().cloned() {
            let at = self
                .things
                .get(&thing)
                .and_then(|es| es.iter().find(|e| e.seq == seq))
                .map(|e| e.at);
            match at {
                Some(at) if now.saturating_since(at) <= self.window => return,
                _ => {
                    self.order.pop_front();
                    self.remove(&thing, seq);
                }
            }
        }
    }

    fn remove(&mut self, thing: &ThingName, seq: u64) {
        if let Some(entries) = self.things.get_mut(thing) {
            entries.retain(|e| e.seq != seq);
            if entries.is_empty() {
                self.things.remove(thing);
            }
        }
    }

    /// How many answers are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.things.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetops_core::device::Reply;
    use fleetops_core::JobId;

    fn t(s: &str) -> ThingName {
        ThingName::parse(s).unwrap()
    }

    fn op(job: &str) -> Operation {
        Operation::Update(JobId::parse(job).unwrap())
    }

    fn reply(thing: &str, n: u64) -> Outbound {
        Outbound::Accepted {
            thing: t(thing),
            operation: Operation::StartNext,
            client_token: Some(format!("tok-{n}")),
            reply: Reply::StartNext(None),
            timestamp: Timestamp::from_millis(n),
        }
    }

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    #[test]
    fn same_thing_token_and_operation_within_the_window() {
        let mut c = ReplyCache::new(Duration::from_secs(600), 4, 100);
        c.put(&t("a"), "x".into(), op("j1"), reply("a", 1), T0);
        assert_eq!(c.get(&t("a"), "x", &op("j1"), T0), Some(reply("a", 1)));
        let edge = T0.saturating_add(Duration::from_secs(600));
        assert_eq!(c.get(&t("a"), "x", &op("j1"), edge), Some(reply("a", 1)));
        // Another thing, token or job is another request.
        assert_eq!(c.get(&t("b"), "x", &op("j1"), T0), None);
        assert_eq!(c.get(&t("a"), "y", &op("j1"), T0), None);
        assert_eq!(c.get(&t("a"), "x", &op("j2"), T0), None);
        // After the window it is forgotten.
        let late = T0.saturating_add(Duration::from_millis(600_001));
        assert_eq!(c.get(&t("a"), "x", &op("j1"), late), None);
        c.put(&t("b"), "z".into(), op("j1"), reply("b", 2), late);
        assert_eq!(c.len(), 1, "the expired answer is dropped");
    }

    #[test]
    fn only_state_changing_requests_with_a_token_are_recalled_and_only_lasting_answers_kept() {
        use fleetops_core::device::{StartNextRequest, UpdateRequest};
        let mut c = ReplyCache::new(Duration::from_secs(600), 4, 100);
        let request = |token: Option<&str>, request: DeviceRequest| Inbound {
            thing: t("a"),
            client_token: token.map(str::to_owned),
            request,
        };
        let start = || DeviceRequest::StartNext(StartNextRequest::default());
        // No token, or a read: decided every time, nothing recorded.
        assert_eq!(c.recall(&request(None, start()), T0), Recall::Decide(None));
        let read = DeviceRequest::GetPending;
        assert_eq!(
            c.recall(&request(Some("x"), read), T0),
            Recall::Decide(None)
        );
        // A throttled answer is decided again; an accepted one is given again.
        let Recall::Decide(Some(key)) = c.recall(&request(Some("x"), start()), T0) else {
            panic!("a start-next with a token is recorded");
        };
        let throttled = Outbound::Rejected {
            thing: t("a"),
            operation: Operation::StartNext,
            client_token: Some("x".into()),
            rejection: Rejection::RequestThrottled,
            timestamp: T0,
        };
        c.record(key.clone(), &throttled, T0);
        assert_eq!(
            c.recall(&request(Some("x"), start()), T0),
            Recall::Decide(Some(key.clone()))
        );
        c.record(key, &reply("a", 1), T0);
        assert_eq!(
            c.recall(&request(Some("x"), start()), T0),
            Recall::Answered(reply("a", 1))
        );
        // The same token for another operation is another request.
        let update = DeviceRequest::Update {
            job_id: JobId::parse("j").unwrap(),
            request: UpdateRequest::default(),
        };
        assert!(matches!(
            c.recall(&request(Some("x"), update), T0),
            Recall::Decide(Some(_))
        ));
    }

    #[test]
    fn bounded_per_thing_and_overall() {
        let mut c = ReplyCache::new(Duration::from_secs(600), 3, 5);
        for i in 0..10u64 {
            c.put(&t("a"), format!("k{i}"), op("j"), reply("a", i), T0);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&t("a"), "k6", &op("j"), T0), None);
        assert!(c.get(&t("a"), "k9", &op("j"), T0).is_some());
        for i in 0..10u64 {
            c.put(&t(&format!("t{i}")), "k".into(), op("j"), reply("a", i), T0);
        }
        assert!(c.len() <= 5, "{}", c.len());
        assert!(c.order.len() <= 5);
        assert!(c.get(&t("t9"), "k", &op("j"), T0).is_some());
        assert_eq!(c.get(&t("t0"), "k", &op("j"), T0), None);
    }
}
