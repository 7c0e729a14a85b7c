//! What the runtime owes the devices, decided without sending anything: the [`Outbox`].
//!
//! Stored events imply messages: a thing whose pending list changed is owed a `notify`, one
//! whose next pending execution changed a `notify-next`, a new command its request, and (when
//! the runtime publishes them) each job execution status change its `StatusChange` message (and,
//! when asked, each status change of a command with a command id).
//! The fold reports these as [`Effects`]; [`Outbox::owe`] records them, and the driver
//! [`Outbox::poll`]s a batch at a time, builds each device message from the state current
//! when it sends ([`ReadModel::notify`], [`ReadModel::notify_next`], [`command_request`]),
//! and hands them to its link: append first, then publish.
//!
//! Nothing here is the truth. A message lost on the way is healed by the device pulling on
//! reconnect, by the timers that end whatever stays stuck, and, after a restart, by
//! [`Outbox::recover`], which owes again everything the folded state may still owe. Devices
//! treat duplicates as harmless, so owing too much is always safe; owing too little is what
//! the fleet simulator checks never happens across a restart.

use std::collections::{HashMap, HashSet, VecDeque};

use fleetops_core::command::CommandExecution;
use fleetops_core::device::Outbound;
use fleetops_core::job_execution::JobExecution;
use fleetops_core::{CommandStatus, ExecutionId, JobId, ThingName, Timestamp};

use crate::model::{Effects, NotifyFlags, ReadModel};

/// What the runtime still has to send, as data: per thing the notifications owed (coalesced,
/// one entry per thing, in the order things first became owed), the command requests owed in
/// order, and the job execution status changes to publish in feed order, at most a cap of
/// them. It also holds the new commands whose sender publishes the request itself, so the
/// fold of their `CommandSent` owes nothing twice.
///
/// Owed notifications hold flags, not messages: the message is built when it is sent, so a
/// burst of changes to one thing becomes one message with the latest state. Command requests
/// hold ids for the same reason: a command that ended meanwhile is skipped when built.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// What each owed thing is owed; a thing is here exactly when it is in `order`.
    things: HashMap<ThingName, NotifyFlags>,
    /// Owed things, first owed first.
    order: VecDeque<ThingName>,
    /// Owed command requests, in the order they became owed.
    commands: VecDeque<ExecutionId>,
    /// Status change messages to publish, in feed order.
    status_changes: VecDeque<Outbound>,
    /// New commands whose sender publishes the request itself.
    sending: HashSet<ExecutionId>,
    /// The most status changes kept waiting (at least one).
    status_change_cap: usize,
    /// Whether job execution status changes are published at all.
    publish_status_changes: bool,
    /// Whether command status changes are published too (with `publish_status_changes`).
    publish_command_changes: bool,
}

/// What one [`Outbox::owe`] did, for the driver: whether to wake its sender, and how many
/// status changes the cap dropped (so it can warn that the link is behind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Owing {
    /// Something new is owed: the driver wakes whatever sends.
    pub owed: bool,
    /// Unpublished status changes dropped, oldest first, to keep the cap.
    pub dropped: usize,
}

/// The next batch [`Outbox::poll`] hands the driver. The driver builds the device messages
/// from the state current then; the status changes are built already.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Owed {
    /// Things and what they are owed, first owed first.
    pub things: Vec<(ThingName, NotifyFlags)>,
    /// Commands whose request is owed, if still live when built ([`command_request`]).
    pub commands: Vec<ExecutionId>,
    /// Status change messages, in feed order.
    pub status_changes: Vec<Outbound>,
}

impl Owed {
    /// Whether the batch is empty: nothing was owed.
    pub fn is_empty(&self) -> bool {
        self.things.is_empty() && self.commands.is_empty() && self.status_changes.is_empty()
    }
}

/// Both notifications: what a thing is owed when it is unknown what it heard last.
const BOTH: NotifyFlags = NotifyFlags {
    notify: true,
    next: true,
};

impl Outbox {
    /// An empty outbox that keeps at most `status_change_cap` unpublished status changes (at
    /// least one), and publishes job execution status changes only when
    /// `publish_status_changes` is set.
    pub fn new(status_change_cap: usize, publish_status_changes: bool) -> Self {
        Self {
            things: HashMap::new(),
            order: VecDeque::new(),
            commands: VecDeque::new(),
            status_changes: VecDeque::new(),
            sending: HashSet::new(),
            status_change_cap: status_change_cap.max(1),
            publish_status_changes,
            publish_command_changes: false,
        }
    }

    /// Also publishes the status changes of commands that have a command id (only transports
    /// speaking AWS IoT Commands have a topic for them).
    pub fn with_command_changes(mut self, publish: bool) -> Self {
        self.publish_command_changes = publish;
        self
    }

    /// Records what a fold owes: takes its things and new commands out of `fx` (a new command
    /// whose sender publishes the request itself is left to it, and its mark cleared), and
    /// copies the publishable status changes. The rest of `fx` (jobs, finished commands,
    /// the status changes themselves) is for the driver's other tasks.
    ///
    /// When the link is behind, the oldest unpublished status changes are dropped to keep the
    /// cap: they are best effort, while notifications and requests are owed until sent.
    pub fn owe(&mut self, fx: &mut Effects) -> Owing {
        let mut owed = false;
        for (thing, flags) in std::mem::take(&mut fx.things) {
            owed |= self.owe_thing(thing, flags);
        }
        for id in std::mem::take(&mut fx.commands_sent) {
            // The mark is checked once: the fold of a command's `CommandSent` is the only
            // fold that would owe its request.
            if !self.sending.remove(&id) {
                self.commands.push_back(id);
                owed = true;
            }
        }
        let mut dropped = 0;
        if self.publish_status_changes {
            let before = self.status_changes.len();
            self.status_changes.extend(
                fx.changes
                    .iter()
                    .filter_map(|c| c.published(self.publish_command_changes)),
            );
            owed |= self.status_changes.len() > before;
            dropped = self
                .status_changes
                .len()
                .saturating_sub(self.status_change_cap);
            self.status_changes.drain(..dropped);
        }
        Owing { owed, dropped }
    }

    /// Owes `thing` what `flags` say, merged with what it is owed already (it keeps its
    /// place in line). Returns whether anything is owed by this call.
    pub fn owe_thing(&mut self, thing: ThingName, flags: NotifyFlags) -> bool {
        if !flags.any() {
            return false;
        }
        if let Some(f) = self.things.get_mut(&thing) {
            f.merge(flags);
        } else {
            self.things.insert(thing.clone(), flags);
            self.order.push_back(thing);
        }
        true
    }

    /// Owes the request of command `id`. Building it checks that the command is stored and
    /// still live, so owing one that is neither is harmless.
    pub fn owe_request(&mut self, id: ExecutionId) {
        self.commands.push_back(id);
    }

    /// `thing` came back online: it is owed its pending list and next execution at once, if
    /// it has any pending, in case what was sent while it was away was lost. Returns whether
    /// anything is owed.
    pub fn reconnected(&mut self, model: &ReadModel, thing: &ThingName) -> bool {
        model.proj.next_pending(thing).is_some() && self.owe_thing(thing.clone(), BOTH)
    }

    /// A sender is about to store new command `id` and publish its request itself as soon as
    /// the store holds it, rather than wait for the fold to owe it here. Marked before the
    /// append, so the fold (which can only come after) leaves the request to the sender.
    ///
    /// The mark ends in one of three ways: the fold of the command consumes it (whether the
    /// sender published or not); [`Outbox::sender_stored_nothing`]; or
    /// [`Outbox::sender_gave_up`].
    pub fn sender_owes(&mut self, id: ExecutionId) {
        self.sending.insert(id);
    }

    /// The sender's append stored nothing (a conflict, a refusal, a store error): no request
    /// is owed, and no fold will come to clear the mark.
    pub fn sender_stored_nothing(&mut self, id: &ExecutionId) {
        self.sending.remove(id);
    }

    /// The sender went away between its append and its publish, or during the append (when
    /// it is unknown whether the command was stored): the request is owed here. Building it
    /// skips a command the store does not hold or that is no longer live.
    pub fn sender_gave_up(&mut self, id: ExecutionId) {
        self.sending.remove(&id);
        self.commands.push_back(id);
    }

    /// Owes what a restarted runtime may still owe, derived from the folded `model` alone
    /// (what the old runtime owed was lost with it): both notifications to every thing with
    /// a pending execution, and the request of every command still live at `now`. Some
    /// devices hear a message twice, which the protocol makes harmless.
    pub fn recover(&mut self, model: &ReadModel, now: Timestamp) {
        let mut things = model.things_with_pending();
        // The model's index is a hash map: sort, so a run is the same from the same state.
        things.sort_unstable();
        for thing in things {
            self.owe_thing(thing, BOTH);
        }
        self.commands.extend(
            model
                .commands
                .iter()
                .filter(|(_, c)| c.status == CommandStatus::Sent && c.deadline > now)
                .map(|(id, _)| id.clone()),
        );
    }

    /// Takes the next batch: up to `max` things, `max` command requests and `max` status
    /// changes (`max` is at least one, so a poll always makes progress), each first owed
    /// first.
    pub fn poll(&mut self, max: usize) -> Owed {
        let max = max.max(1);
        let mut things = Vec::with_capacity(max.min(self.order.len()));
        while things.len() < max {
            let Some(thing) = self.order.pop_front() else {
                break;
            };
            if let Some(flags) = self.things.remove(&thing) {
                things.push((thing, flags));
            }
        }
        let n = self.commands.len().min(max);
        let commands = self.commands.drain(..n).collect();
        let n = self.status_changes.len().min(max);
        let status_changes = self.status_changes.drain(..n).collect();
        Owed {
            things,
            commands,
            status_changes,
        }
    }

    /// How many messages are owed: things owed a notification, command requests, status
    /// changes (a thing owed both notifications counts once).
    pub fn backlog(&self) -> usize {
        self.order.len() + self.commands.len() + self.status_changes.len()
    }

    /// Whether nothing is owed (new commands marked for their senders are not owed here).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty() && self.commands.is_empty() && self.status_changes.is_empty()
    }

    /// What `thing` is owed now (no flag set when nothing).
    pub fn owed(&self, thing: &ThingName) -> NotifyFlags {
        self.things.get(thing).copied().unwrap_or_default()
    }

    /// Whether the request of command `id` is owed now (a scan of the owed requests).
    pub fn owes_request(&self, id: &ExecutionId) -> bool {
        self.commands.contains(id)
    }
}

impl ReadModel {
    /// The `notify` for `thing` at `now`: its pending list as [`ReadModel::pending_jobs`]
    /// lists it, with at most `max` entries.
    pub fn notify(&self, thing: &ThingName, now: Timestamp, max: usize) -> Outbound {
        Outbound::Notify {
            thing: thing.clone(),
            jobs: self.pending_jobs(thing, max),
            timestamp: now,
        }
    }

    /// The job of `thing`'s next pending execution, whose state a `notify-next` shows (the
    /// driver loads it: the model keeps no status details).
    pub fn next_pending_job(&self, thing: &ThingName) -> Option<JobId> {
        self.proj.next_pending(thing).map(|k| k.job_id.clone())
    }

    /// The `notify-next` for `thing` at `now`, from the state of its next execution as the
    /// driver loaded it (the job of [`ReadModel::next_pending_job`]); `None` there, or an
    /// execution no longer pending, tells the device that nothing is next.
    pub fn notify_next(
        &self,
        thing: ThingName,
        next: Option<&JobExecution>,
        now: Timestamp,
    ) -> Outbound {
        Outbound::NotifyNext {
            thing,
            execution: next
                .filter(|s| s.status.is_pending())
                .map(|s| self.view(s, true)),
            timestamp: now,
        }
    }

    /// Whether the folded state still owes command `id`'s request at `now`: it is `SENT`
    /// and its deadline is ahead. The fold never runs ahead of the store, so a command it
    /// shows ended is ended; one it does not show (not folded yet) may be live.
    pub fn command_live(&self, id: &ExecutionId, now: Timestamp) -> bool {
        self.command(id)
            .is_some_and(|c| c.status == CommandStatus::Sent && c.deadline > now)
    }
}

/// The request of command `c` at `now`, with the remaining TTL, while it is owed: `SENT` and
/// its deadline ahead. `None` once it was answered, canceled or timed out, or its TTL passed.
pub fn command_request(c: &CommandExecution, now: Timestamp) -> Option<Outbound> {
    (c.status == CommandStatus::Sent && c.deadline > now).then(|| Outbound::CommandRequest {
        thing: c.thing.clone(),
        execution_id: c.execution_id.clone(),
        command_id: c.command_id.clone(),
        action: c.action.clone(),
        params: c.params.clone(),
        timestamp: c.sent_at,
        ttl: c.deadline.saturating_since(now),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fleetops_core::command::CommandIntent;
    use fleetops_core::config::{JobConfig, TargetSelection, Targets};
    use fleetops_core::store::StoredEvent;
    use fleetops_core::{Aggregate, Duration, Event, JobExecutionStatus, StreamId};

    use super::*;

    fn thing(name: &str) -> ThingName {
        ThingName::parse(name).expect("a valid name")
    }

    fn id(name: &str) -> ExecutionId {
        ExecutionId::parse(name).expect("a valid id")
    }

    const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    fn at(secs: u64) -> Timestamp {
        T0 + Duration::from_secs(secs)
    }

    /// A feed folded event by event, as the runtime's follower folds it.
    #[derive(Default)]
    struct Feed {
        model: ReadModel,
        versions: HashMap<StreamId, u64>,
        position: u64,
    }

    impl Feed {
        fn push(&mut self, stream: StreamId, event: Event) -> Effects {
            let v = self.versions.entry(stream.clone()).or_default();
            *v += 1;
            self.position += 1;
            let stored = StoredEvent {
                event_id: uuid::Uuid::from_u128(u128::from(self.position)),
                stream,
                stream_version: *v,
                position: self.position,
                recorded_at: T0,
                schema_version: event.schema_version(),
                correlation_id: None,
                causation_id: None,
                idempotency_key: None,
                event,
            };
            let mut fx = Effects::default();
            self.model.apply(&stored, &mut fx).expect("the event folds");
            fx
        }

        fn job(&mut self, job: &str, things: &[&str]) -> JobId {
            let job_id = JobId::parse(job).expect("a valid id");
            let created = Event::JobCreated {
                job_id: job_id.clone(),
                name: None,
                description: None,
                targets: Targets {
                    things: things.iter().map(|t| thing(t)).collect(),
                    groups: Vec::new(),
                },
                selection: TargetSelection::Snapshot,
                document: serde_json::json!({"op": "test"}),
                config: JobConfig::default(),
                created_at: T0,
            };
            self.push(StreamId::job(&job_id), created);
            self.push(StreamId::job(&job_id), Event::JobStarted { at: T0 });
            job_id
        }

        fn queue(&mut self, job: &JobId, t: &str) -> Effects {
            let event = Event::ExecutionQueued {
                job_id: job.clone(),
                thing: thing(t),
                execution_number: 1,
                queued_at: T0,
                in_progress_timeout: None,
            };
            self.push(StreamId::job_execution(job, &thing(t)), event)
        }

        fn finish(&mut self, job: &JobId, t: &str) -> Effects {
            let event = Event::ExecutionFinished {
                status: JobExecutionStatus::Succeeded,
                at: at(1),
                status_details: None,
            };
            self.push(StreamId::job_execution(job, &thing(t)), event)
        }

        fn command(&mut self, name: &str, t: &str, ttl_secs: u64) -> Effects {
            self.command_as(name, t, ttl_secs, None)
        }

        fn command_as(
            &mut self,
            name: &str,
            t: &str,
            ttl_secs: u64,
            command_id: Option<&str>,
        ) -> Effects {
            let intent = CommandIntent::Send {
                execution_id: id(name),
                thing: thing(t),
                command_id: command_id.map(str::to_owned),
                action: "reboot".to_owned(),
                params: serde_json::json!({}),
                ttl: Duration::from_secs(ttl_secs),
            };
            let (_, events) =
                CommandExecution::execute(None, intent, T0).expect("a new command is sent");
            let mut fx = Effects::default();
            for e in events {
                let more = self.push(StreamId::command(&id(name)), e);
                fx.commands_sent.extend(more.commands_sent);
                fx.changes.extend(more.changes);
            }
            fx
        }

        fn respond(&mut self, name: &str) -> Effects {
            let event = Event::CommandResponded {
                status: CommandStatus::Succeeded,
                result: None,
                status_reason: None,
                at: at(1),
            };
            self.push(StreamId::command(&id(name)), event)
        }
    }

    fn flags(notify: bool, next: bool) -> NotifyFlags {
        NotifyFlags { notify, next }
    }

    #[test]
    fn a_thing_owed_twice_is_owed_once_with_both_flags_in_its_first_place() {
        let mut outbox = Outbox::new(8, false);
        assert!(outbox.owe_thing(thing("a"), flags(true, false)));
        assert!(outbox.owe_thing(thing("b"), flags(false, true)));
        assert!(outbox.owe_thing(thing("a"), flags(false, true)));
        assert!(!outbox.owe_thing(thing("c"), flags(false, false)));
        assert_eq!(outbox.owed(&thing("a")), flags(true, true));
        assert_eq!(outbox.owed(&thing("c")), flags(false, false));
        let owed = outbox.poll(10);
        assert_eq!(
            owed.things,
            vec![
                (thing("a"), flags(true, true)),
                (thing("b"), flags(false, true))
            ]
        );
        assert!(outbox.is_empty());
        assert!(outbox.poll(10).is_empty());
    }

    #[test]
    fn a_poll_takes_at_most_max_of_each_kind_first_owed_first() {
        let mut outbox = Outbox::new(8, false);
        for name in ["a", "b", "c"] {
            outbox.owe_thing(thing(name), flags(true, true));
            outbox.owe_request(id(&format!("cmd-{name}")));
        }
        let first = outbox.poll(2);
        let names: Vec<&str> = first.things.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(first.commands, vec![id("cmd-a"), id("cmd-b")]);
        assert!(!outbox.is_empty());
        // A thing polled and owed again goes to the back of the line.
        outbox.owe_thing(thing("a"), flags(true, false));
        let second = outbox.poll(0);
        assert_eq!(second.things, vec![(thing("c"), flags(true, true))]);
        assert_eq!(second.commands, vec![id("cmd-c")]);
        let third = outbox.poll(5);
        assert_eq!(third.things, vec![(thing("a"), flags(true, false))]);
        assert!(third.commands.is_empty());
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_fold_owes_its_things_and_new_commands_and_keeps_the_rest_for_the_driver() {
        let mut feed = Feed::default();
        let job = feed.job("job-1", &["a"]);
        let mut fx = feed.queue(&job, "a");
        fx.commands_sent.push(id("cmd-1"));
        let mut outbox = Outbox::new(8, false);
        let owing = outbox.owe(&mut fx);
        assert_eq!(
            owing,
            Owing {
                owed: true,
                dropped: 0
            }
        );
        assert!(fx.things.is_empty() && fx.commands_sent.is_empty());
        // The driver still gets the jobs to look at and the changes to broadcast.
        assert_eq!(fx.dirty_jobs, vec![job]);
        assert_eq!(fx.changes.len(), 1);
        assert_eq!(outbox.owed(&thing("a")), flags(true, true));
        let owed = outbox.poll(8);
        assert_eq!(owed.commands, vec![id("cmd-1")]);
        // Publishing is off: no status change is owed.
        assert!(owed.status_changes.is_empty());
        assert_eq!(outbox.owe(&mut Effects::default()), Owing::default());
    }

    #[test]
    fn status_changes_are_published_in_feed_order_and_the_oldest_dropped_past_the_cap() {
        let mut feed = Feed::default();
        let job = feed.job("job-1", &["a", "b", "c"]);
        let mut outbox = Outbox::new(2, true);
        let mut fx = feed.queue(&job, "a");
        assert_eq!(outbox.owe(&mut fx).dropped, 0);
        let mut fx = feed.queue(&job, "b");
        fx.changes.extend(feed.queue(&job, "c").changes);
        // Command changes are never published, so they neither count nor drop anything.
        fx.changes.extend(feed.command("cmd-1", "a", 30).changes);
        assert_eq!(fx.changes.len(), 3);
        assert_eq!(
            outbox.owe(&mut fx),
            Owing {
                owed: true,
                dropped: 1
            }
        );
        let owed = outbox.poll(8);
        let things: Vec<&str> = owed
            .status_changes
            .iter()
            .map(|m| m.thing().as_str())
            .collect();
        assert_eq!(things, ["b", "c"]);
        assert!(owed
            .status_changes
            .iter()
            .all(|m| matches!(m, Outbound::StatusChange { .. })));
        // A cap of zero keeps one.
        let mut outbox = Outbox::new(0, true);
        let mut fx = feed.finish(&job, "a");
        fx.changes.extend(feed.finish(&job, "b").changes);
        assert_eq!(outbox.owe(&mut fx).dropped, 1);
        assert_eq!(outbox.poll(8).status_changes.len(), 1);
    }

    #[test]
    fn command_status_changes_are_published_when_asked_and_only_with_a_command_id() {
        // Given an outbox that publishes command changes too
        let mut feed = Feed::default();
        let mut outbox = Outbox::new(8, true).with_command_changes(true);
        // When a command with an id and an ad-hoc one without are sent, and the first answered
        let mut fx = feed.command_as("cmd-1", "a", 30, Some("set-temp"));
        fx.changes.extend(feed.command("cmd-2", "b", 30).changes);
        fx.changes.extend(feed.respond("cmd-1").changes);
        assert_eq!(fx.changes.len(), 3);
        let _ = outbox.owe(&mut fx);
        // Then the named command's two changes are published, in feed order, and nothing else
        let published: Vec<(String, CommandStatus)> = outbox
            .poll(8)
            .status_changes
            .into_iter()
            .map(|m| match m {
                Outbound::CommandStatusChange {
                    command_id, status, ..
                } => (command_id, status),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            published,
            [
                ("set-temp".to_owned(), CommandStatus::Sent),
                ("set-temp".to_owned(), CommandStatus::Succeeded)
            ]
        );
        // Given the default outbox, when the same happens, then no command change is published
        let mut feed = Feed::default();
        let mut outbox = Outbox::new(8, true);
        let mut fx = feed.command_as("cmd-1", "a", 30, Some("set-temp"));
        fx.changes.extend(feed.respond("cmd-1").changes);
        let _ = outbox.owe(&mut fx);
        assert!(outbox.poll(8).status_changes.is_empty());
    }

    #[test]
    fn a_command_its_sender_publishes_is_not_owed_by_its_fold() {
        let mut feed = Feed::default();
        let mut outbox = Outbox::new(8, false);
        outbox.sender_owes(id("cmd-1"));
        outbox.sender_owes(id("cmd-2"));
        let mut fx = feed.command("cmd-1", "a", 30);
        fx.commands_sent
            .extend(feed.command("cmd-3", "a", 30).commands_sent);
        assert!(outbox.owe(&mut fx).owed);
        assert!(!outbox.owes_request(&id("cmd-1")));
        assert!(outbox.owes_request(&id("cmd-3")));
        // The mark was consumed: a second fold of the same id (a replay) would owe it.
        let mut again = Effects {
            commands_sent: vec![id("cmd-1")],
            ..Effects::default()
        };
        assert!(outbox.owe(&mut again).owed);
        assert!(outbox.owes_request(&id("cmd-1")));
        // A sender that stored nothing owes nothing; one that gave up hands its request over.
        outbox.sender_stored_nothing(&id("cmd-2"));
        let mut fx = Effects {
            commands_sent: vec![id("cmd-2")],
            ..Effects::default()
        };
        assert!(outbox.owe(&mut fx).owed);
        outbox.sender_owes(id("cmd-4"));
        outbox.sender_gave_up(id("cmd-4"));
        let owed = outbox.poll(8);
        assert_eq!(
            owed.commands,
            vec![id("cmd-3"), id("cmd-1"), id("cmd-2"), id("cmd-4")]
        );
        // The mark went with the give-up: the fold of cmd-4 owes it again (a harmless
        // duplicate), rather than leaving it to a sender that is gone.
        let mut fx = Effects {
            commands_sent: vec![id("cmd-4")],
            ..Effects::default()
        };
        assert!(outbox.owe(&mut fx).owed);
        assert!(outbox.owes_request(&id("cmd-4")));
    }

    #[test]
    fn recovery_owes_every_pending_thing_and_live_command_and_nothing_else() {
        let mut feed = Feed::default();
        let job = feed.job("job-1", &["a", "b", "c", "d"]);
        for t in ["a", "b", "c", "d"] {
            let _ = feed.queue(&job, t);
        }
        // c is done: nothing pending is left for it.
        let _ = feed.finish(&job, "c");
        // "e" has only commands.
        let _ = feed.command("cmd-live", "e", 60);
        let _ = feed.command("cmd-answered", "e", 60);
        let _ = feed.respond("cmd-answered");
        let _ = feed.command("cmd-expired", "e", 5);
        let now = at(10);

        let mut outbox = Outbox::new(8, true);
        outbox.recover(&feed.model, now);
        let owed = outbox.poll(100);
        assert!(outbox.is_empty());
        let things: BTreeSet<&str> = owed.things.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(things, BTreeSet::from(["a", "b", "d"]));
        assert!(owed.things.iter().all(|(_, f)| *f == BOTH));
        // In a stable order, the same from the same state.
        let names: Vec<&str> = owed.things.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
        assert_eq!(owed.commands, vec![id("cmd-live")]);
        assert!(owed.status_changes.is_empty());
        assert!(feed.model.command_live(&id("cmd-live"), now));
        assert!(!feed.model.command_live(&id("cmd-expired"), now));
        assert!(!feed.model.command_live(&id("cmd-answered"), now));
        assert!(!feed.model.command_live(&id("cmd-unknown"), now));
    }

    #[test]
    fn a_thing_that_reconnects_is_owed_both_notifications_only_with_something_pending() {
        let mut feed = Feed::default();
        let job = feed.job("job-1", &["a", "b"]);
        let _ = feed.queue(&job, "a");
        let mut outbox = Outbox::new(8, false);
        assert!(outbox.reconnected(&feed.model, &thing("a")));
        assert!(!outbox.reconnected(&feed.model, &thing("b")));
        assert_eq!(outbox.owed(&thing("a")), BOTH);
        assert_eq!(outbox.owed(&thing("b")), NotifyFlags::default());
    }

    #[test]
    fn messages_are_built_from_the_state_when_sent() {
        let mut feed = Feed::default();
        let job = feed.job("job-1", &["a"]);
        let _ = feed.queue(&job, "a");
        let a = thing("a");
        let Outbound::Notify { jobs, .. } = feed.model.notify(&a, at(2), 10) else {
            panic!("a notify");
        };
        assert_eq!(jobs.queued.len(), 1);
        assert_eq!(feed.model.next_pending_job(&a), Some(job.clone()));
        assert_eq!(feed.model.next_pending_job(&thing("b")), None);

        let queued = JobExecution::replay([&Event::ExecutionQueued {
            job_id: job.clone(),
            thing: a.clone(),
            execution_number: 1,
            queued_at: T0,
            in_progress_timeout: None,
        }])
        .expect("replays")
        .expect("exists");
        let Outbound::NotifyNext { execution, .. } =
            feed.model.notify_next(a.clone(), Some(&queued), at(2))
        else {
            panic!("a notify-next");
        };
        let view = execution.expect("the queued execution is next");
        assert_eq!(view.job_id, job);
        assert_eq!(view.job_document, Some(serde_json::json!({"op": "test"})));
        let mut done = queued.clone();
        done.status = JobExecutionStatus::Succeeded;
        for next in [None, Some(&done)] {
            let message = feed.model.notify_next(a.clone(), next, at(2));
            assert!(matches!(
                message,
                Outbound::NotifyNext {
                    execution: None,
                    ..
                }
            ));
        }
    }

    #[test]
    fn a_command_request_is_built_only_while_sent_and_before_its_deadline() {
        let intent = CommandIntent::Send {
            execution_id: id("cmd-1"),
            thing: thing("a"),
            command_id: None,
            action: "reboot".to_owned(),
            params: serde_json::json!({"x": 1}),
            ttl: Duration::from_secs(30),
        };
        let (state, _) = CommandExecution::execute(None, intent, T0).expect("sent");
        let mut c = state.expect("a command");
        let Some(Outbound::CommandRequest { ttl, timestamp, .. }) = command_request(&c, at(10))
        else {
            panic!("a request");
        };
        assert_eq!((ttl, timestamp), (Duration::from_secs(20), T0));
        assert!(command_request(&c, at(30)).is_none());
        c.status = CommandStatus::Succeeded;
        assert!(command_request(&c, at(10)).is_none());
    }
}
