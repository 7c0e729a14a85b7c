//! The runtime's read side: core's [`Projections`] plus the runtime's own indexes, folded
//! together from the global feed by one writer.
//!
//! Everything here is a pure fold of stored events, so a restarted runtime that replays the
//! feed from position 1 ends in exactly the state the old one had, including what is still
//! owed (retries, removals of things that left a group, executions not yet rolled out).
//! Memory is a few small records per execution and per command; job documents are held once
//! per job, never per execution.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fleetops_core::api_key::ApiKey;
use fleetops_core::command_template::CommandTemplate;
use fleetops_core::config::TargetSelection;
use fleetops_core::device::PendingJobs;
use fleetops_core::group::Group;
use fleetops_core::ids::StreamKind;
use fleetops_core::ids::{ApiKeyId, CommandId};
use fleetops_core::job::Job;
use fleetops_core::limits::MAX_PENDING_LISTED;
use fleetops_core::policy::{retry, rollout, stages};
use fleetops_core::projection::{ExecutionEntry, JobCounters, Projections};
use fleetops_core::store::StoredEvent;
use fleetops_core::thing::{Connectivity, Thing};
use fleetops_core::{
    Aggregate, CommandStatus, Event, ExecutionId, GroupName, JobExecutionStatus, JobId, JobStatus,
    StreamId, ThingName, Timestamp,
};

use crate::change::StatusChange;
use crate::error::FoldError;

/// One job and what its rollout still owes.
#[derive(Debug, Clone)]
pub struct JobEntry {
    /// The job as folded (its document held once, here).
    pub job: Arc<Job>,
    /// Targets that have no execution yet and may still get one, in rollout order.
    pub to_queue: BTreeSet<ThingName>,
    /// Failed or timed-out executions the retry policy gives another attempt.
    pub retry_owed: BTreeSet<ThingName>,
    /// Queued executions of things that left every target group of a continuous job.
    pub leave_owed: BTreeSet<ThingName>,
    /// The current rollout window and how many first attempts were queued in it.
    pub window: Option<(Timestamp, u64)>,
    /// A staged job's stages, resolved when it starts.
    pub stages: Option<StageBook>,
}

/// Who is in which stage of a staged job, and each stage's figures. Targets of stages not yet
/// started wait in `later` and move to `to_queue` when their stage starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageBook {
    /// Each target's stage (the last index holds the targets no stage named).
    pub of: BTreeMap<ThingName, u32>,
    /// Per stage, its targets that wait for the stage to start.
    pub later: Vec<BTreeSet<ThingName>>,
    /// Per stage, its size.
    pub sizes: Vec<u64>,
    /// Per stage, its executions' per-status counts.
    pub counters: Vec<JobCounters>,
}

impl StageBook {
    /// Whether any stage still holds targets waiting to start.
    pub fn waiting(&self) -> bool {
        self.later.iter().any(|s| !s.is_empty())
    }
}

/// What the runtime remembers of one command execution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommandEntry {
    /// The device.
    pub thing: ThingName,
    /// What it asks of the device, for listings.
    pub action: String,
    /// Current status.
    pub status: CommandStatus,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// When it times out.
    pub deadline: Timestamp,
    /// The command id it was sent as, if any: names its status change events.
    #[serde(default)]
    pub command_id: Option<String>,
}

/// Flags of what a thing is owed after a fold: `notify` when its pending list changed,
/// `next` when its next pending execution changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyFlags {
    /// Its pending list changed: `notify` is owed.
    pub notify: bool,
    /// Its next pending execution changed: `notify-next` is owed.
    pub next: bool,
}

impl NotifyFlags {
    /// Whether anything is owed.
    pub fn any(self) -> bool {
        self.notify || self.next
    }

    /// Owes what either owes.
    pub fn merge(&mut self, other: NotifyFlags) {
        self.notify |= other.notify;
        self.next |= other.next;
    }
}

/// What a fold asks the live runtime to do; ignored while catching up at start, where the
/// recovery pass derives what is owed from the final state instead.
#[derive(Debug, Default)]
pub struct Effects {
    /// Jobs whose next step may have changed.
    pub dirty_jobs: Vec<JobId>,
    /// Things owed a notification.
    pub things: Vec<(ThingName, NotifyFlags)>,
    /// New commands, whose request is owed.
    pub commands_sent: Vec<ExecutionId>,
    /// Commands that reached a terminal status.
    pub commands_done: Vec<ExecutionId>,
    /// Status changes, in feed order.
    pub changes: Vec<StatusChange>,
    /// Things presence now says are online (they get their pending list again at once).
    pub came_online: Vec<ThingName>,
}

/// The read model: core's projections and the runtime's own indexes, folded together in one
/// pass over the feed.
#[derive(Debug, Default, Clone)]
pub struct ReadModel {
    /// Core's projections: counters, pending queues, deadlines.
    pub proj: Projections,
    /// Every job.
    pub jobs: BTreeMap<JobId, JobEntry>,
    /// Every group.
    pub groups: BTreeMap<GroupName, Group>,
    /// Jobs that name each group, to follow membership for continuous jobs.
    pub group_jobs: HashMap<GroupName, Vec<JobId>>,
    /// The jobs each thing has an execution of (few per thing, so a vector).
    pub thing_jobs: HashMap<ThingName, Vec<JobId>>,
    /// Every command execution.
    pub commands: BTreeMap<ExecutionId, CommandEntry>,
    /// The command executions of each thing.
    pub thing_commands: HashMap<ThingName, Vec<ExecutionId>>,
    /// Every API key, revoked ones included (an id is never reused).
    pub api_keys: BTreeMap<ApiKeyId, ApiKey>,
    /// Every registered command, deleted ones included.
    pub templates: BTreeMap<CommandId, CommandTemplate>,
    /// Every thing that was registered or reported on by presence.
    pub things: BTreeMap<ThingName, Thing>,
    /// The registered MQTT client ids, to the thing each names (presence sources that report
    /// client ids are mapped through it).
    pub client_things: HashMap<String, ThingName>,
}

/// How a batch of the feed folded (see [`ReadModel::fold_batch`]).
#[derive(Debug, Default)]
pub struct Folded {
    /// Events skipped because their stream's history does not replay, with their positions.
    pub skipped: Vec<(u64, FoldError)>,
    /// The event the fold stopped at, because the feed itself is broken (a gap, an
    /// execution never queued); the events after it in the batch were not folded.
    pub stopped: Option<(u64, FoldError)>,
}

fn corrupt(stream: &StreamId, source: fleetops_core::EvolveError) -> FoldError {
    FoldError::Corrupt {
        stream: stream.clone(),
        source,
    }
}

impl ReadModel {
    /// The position of the last folded event.
    pub fn checkpoint(&self) -> u64 {
        self.proj.checkpoint()
    }

    /// The folded record of `job`'s execution on `thing`: core's projection entry, the one
    /// execution record the read side keeps.
    pub fn exec(&self, job: &JobId, thing: &ThingName) -> Option<&ExecutionEntry> {
        self.proj.execution(job, thing)
    }

    /// The pending key of `thing`'s next execution: job and attempt.
    fn front(&self, thing: &ThingName) -> Option<(JobId, u32)> {
        let key = self.proj.next_pending(thing)?;
        let n = self
            .exec(&key.job_id, thing)
            .map_or(0, |m| m.execution_number);
        Some((key.job_id.clone(), n))
    }

    /// Up to `max` pending executions of `thing`, in progress first, then queued by age, and
    /// at most [`MAX_PENDING_LISTED`] of each kind: the lists of `jobs/get` and `notify`
    /// stay bounded (the message under the payload limit) however many jobs are pending.
    pub fn pending_jobs(&self, thing: &ThingName, max: usize) -> PendingJobs {
        let mut out = PendingJobs::default();
        for key in self
            .proj
            .pending_listed(thing, MAX_PENDING_LISTED)
            .take(max)
        {
            let Some(meta) = self.exec(&key.job_id, thing) else {
                continue;
            };
            let s = meta.summary(&key.job_id);
            if meta.status == JobExecutionStatus::InProgress {
                out.in_progress.push(s);
            } else {
                out.queued.push(s);
            }
        }
        out
    }

    /// Whether `thing` is a target of `job` through its thing list or one of its groups
    /// other than `except`.
    fn still_targeted(&self, job: &Job, thing: &ThingName, except: &GroupName) -> bool {
        job.targets.things.contains(thing)
            || job.targets.groups.iter().any(|g| {
                g != except
                    && self
                        .groups
                        .get(g)
                        .is_some_and(|gr| !gr.deleted && gr.members.contains(thing))
            })
    }

    /// Folds a batch of the feed in order. An event whose stream does not replay is skipped
    /// and reported, so one corrupt record does not stop the fleet; a broken feed stops the
    /// fold at that event, so the driver resubscribes from the checkpoint instead of folding
    /// past a hole.
    pub fn fold_batch(&mut self, batch: &[StoredEvent], fx: &mut Effects) -> Folded {
        let mut out = Folded::default();
        for e in batch {
            match self.apply(e, fx) {
                Ok(()) => {}
                Err(err @ FoldError::Projection(_)) => {
                    out.stopped = Some((e.position, err));
                    break;
                }
                Err(err @ FoldError::Corrupt { .. }) => out.skipped.push((e.position, err)),
            }
        }
        out
    }

    /// Folds one stored event. Events at or below the checkpoint are skipped.
    pub fn apply(&mut self, stored: &StoredEvent, fx: &mut Effects) -> Result<(), FoldError> {
        if stored.position <= self.proj.checkpoint() {
            return Ok(());
        }
        let kind = stored.stream.kind();
        // What the thing's pending list looked like before, to tell notify from notify-next.
        let before = match &kind {
            StreamKind::JobExecution(job, thing) => {
                let old = self.exec(job, thing);
                Some((
                    self.front(thing),
                    old.filter(|m| m.status.is_pending())
                        .map(|m| m.execution_number),
                    old.map(|m| m.status),
                ))
            }
            _ => None,
        };
        self.proj.apply(stored)?;
        match kind {
            StreamKind::Command(id) => self.apply_command(id, stored, fx),
            StreamKind::Job(job_id) => self.apply_job(job_id, stored, fx)?,
            StreamKind::JobExecution(job_id, thing) => {
                let old_status = before.as_ref().and_then(|b| b.2);
                self.apply_execution(&job_id, &thing, old_status, stored, fx);
                if let Some((front_before, member_before, _)) = before {
                    let member_after = self
                        .exec(&job_id, &thing)
                        .filter(|m| m.status.is_pending())
                        .map(|m| m.execution_number);
                    let flags = NotifyFlags {
                        notify: member_before != member_after,
                        next: front_before != self.front(&thing),
                    };
                    if flags.any() {
                        fx.things.push((thing, flags));
                    }
                }
            }
            StreamKind::Group(name) => self.apply_group(name, stored, fx)?,
            StreamKind::ApiKey(id) => {
                let old = self.api_keys.get(&id).cloned();
                let key =
                    ApiKey::evolve(old, &stored.event).map_err(|e| corrupt(&stored.stream, e))?;
                self.api_keys.insert(id, key);
            }
            StreamKind::CommandTemplate(id) => {
                let old = self.templates.get(&id).cloned();
                let t = CommandTemplate::evolve(old, &stored.event)
                    .map_err(|e| corrupt(&stored.stream, e))?;
                self.templates.insert(id, t);
            }
            StreamKind::Thing(name) => self.apply_thing(name, stored, fx)?,
            StreamKind::Custom(_) => {}
        }
        Ok(())
    }

    fn apply_thing(
        &mut self,
        name: ThingName,
        stored: &StoredEvent,
        fx: &mut Effects,
    ) -> Result<(), FoldError> {
        let old = self.things.remove(&name);
        let was = old.as_ref().map(|t| t.connectivity);
        if let Some(id) = old.as_ref().and_then(|t| t.client_id.as_ref()) {
            if self.client_things.get(id) == Some(&name) {
                self.client_things.remove(id);
            }
        }
        let thing = Thing::evolve(old, &stored.event).map_err(|e| corrupt(&stored.stream, e))?;
        if let Some(id) = &thing.client_id {
            self.client_things.insert(id.clone(), name.clone());
        }
        if thing.connectivity == Connectivity::Online && was != Some(Connectivity::Online) {
            fx.came_online.push(name.clone());
        }
        self.things.insert(name, thing);
        Ok(())
    }

    /// The thing a presence source's MQTT client id names: the registered thing with that
    /// client id, else the thing of that name (a client id that is a valid thing name).
    pub fn thing_of_client(&self, client_id: &str) -> Option<ThingName> {
        if let Some(t) = self.client_things.get(client_id) {
            return Some(t.clone());
        }
        let name = ThingName::parse(client_id).ok()?;
        // A thing registered under another client id is not named by its own name.
        match self.things.get(&name) {
            Some(t) if t.client_id.as_deref().is_some_and(|c| c != client_id) => None,
            _ => Some(name),
        }
    }

    /// Whether `thing` is online, offline or unknown.
    pub fn connectivity(&self, thing: &ThingName) -> Connectivity {
        self.things
            .get(thing)
            .map_or(Connectivity::Unknown, |t| t.connectivity)
    }

    fn apply_command(&mut self, id: ExecutionId, stored: &StoredEvent, fx: &mut Effects) {
        let (status, at, reason) = match &stored.event {
            Event::CommandSent {
                thing,
                command_id,
                action,
                ttl,
                sent_at,
                ..
            } => {
                self.commands.insert(
                    id.clone(),
                    CommandEntry {
                        thing: thing.clone(),
                        action: action.clone(),
                        status: CommandStatus::Sent,
                        sent_at: *sent_at,
                        deadline: *sent_at + *ttl,
                        command_id: command_id.clone(),
                    },
                );
                self.thing_commands
                    .entry(thing.clone())
                    .or_default()
                    .push(id.clone());
                fx.commands_sent.push(id.clone());
                (CommandStatus::Sent, *sent_at, None)
            }
            Event::CommandResponded {
                status,
                status_reason,
                at,
                ..
            } => (*status, *at, status_reason.clone()),
            Event::CommandTimedOut { at } => (CommandStatus::TimedOut, *at, None),
            Event::CommandCanceled { at, reason } => (CommandStatus::Canceled, *at, reason.clone()),
            // Late answers change no status (and keep the same terminal one).
            _ => return,
        };
        let Some(entry) = self.commands.get_mut(&id) else {
            return;
        };
        entry.status = status;
        if status.is_terminal() {
            fx.commands_done.push(id.clone());
        }
        fx.changes.push(StatusChange::Command {
            execution_id: id,
            thing: entry.thing.clone(),
            command_id: entry.command_id.clone(),
            status,
            status_reason: reason,
            at,
            position: stored.position,
        });
    }

    fn apply_job(
        &mut self,
        job_id: JobId,
        stored: &StoredEvent,
        fx: &mut Effects,
    ) -> Result<(), FoldError> {
        let event = &stored.event;
        if let Event::JobCreated { targets, .. } = event {
            let job = Job::evolve(None, event).map_err(|e| corrupt(&stored.stream, e))?;
            for g in &targets.groups {
                self.group_jobs
                    .entry(g.clone())
                    .or_default()
                    .push(job_id.clone());
            }
            self.jobs.insert(
                job_id.clone(),
                JobEntry {
                    job: Arc::new(job),
                    to_queue: BTreeSet::new(),
                    retry_owed: BTreeSet::new(),
                    leave_owed: BTreeSet::new(),
                    window: None,
                    stages: None,
                },
            );
        } else {
            let Some(entry) = self.jobs.get_mut(&job_id) else {
                return Err(corrupt(
                    &stored.stream,
                    fleetops_core::EvolveError::OutOfOrder {
                        event: event.type_name(),
                        state: "none",
                    },
                ));
            };
            let old = std::mem::replace(&mut entry.job, Arc::new(placeholder_job(&job_id)));
            let job = Job::evolve(Some(Arc::unwrap_or_clone(old)), event)
                .map_err(|e| corrupt(&stored.stream, e))?;
            entry.job = Arc::new(job);
            match event {
                Event::JobStarted { .. } => {
                    // Targets are resolved here, in feed order: a replay after a restart sees
                    // the same group memberships at this position, so it resolves the same set.
                    let job = Arc::clone(&entry.job);
                    let mut targets: BTreeSet<ThingName> =
                        job.targets.things.iter().cloned().collect();
                    for g in &job.targets.groups {
                        if let Some(group) = self.groups.get(g).filter(|g| !g.deleted) {
                            targets.extend(group.members.iter().cloned());
                        }
                    }
                    let book = (!job.config.stages.is_empty()).then(|| {
                        let groups = &self.groups;
                        let members = |g: &GroupName| -> Vec<ThingName> {
                            groups
                                .get(g)
                                .filter(|g| !g.deleted)
                                .map(|g| g.members.iter().cloned().collect())
                                .unwrap_or_default()
                        };
                        let sets = stages::assign(&job_id, &job.config.stages, &targets, &members);
                        let mut book = StageBook {
                            of: BTreeMap::new(),
                            sizes: sets.iter().map(|s| s.len() as u64).collect(),
                            counters: vec![JobCounters::default(); sets.len()],
                            later: Vec::with_capacity(sets.len()),
                        };
                        for (i, set) in sets.into_iter().enumerate() {
                            let i = u32::try_from(i).unwrap_or(u32::MAX);
                            for t in &set {
                                book.of.insert(t.clone(), i);
                            }
                            book.later.push(set);
                        }
                        book
                    });
                    targets.retain(|t| self.proj.execution(&job_id, t).is_none());
                    if let Some(entry) = self.jobs.get_mut(&job_id) {
                        if let Some(mut book) = book {
                            for set in &mut book.later {
                                set.retain(|t| targets.contains(t));
                            }
                            // The first stage starts with the job.
                            entry.stages = Some(book);
                            release_stages(entry, job.stage);
                        } else {
                            entry.to_queue = targets;
                        }
                    }
                }
                Event::JobRolloutStopped { .. } => {
                    entry.to_queue.clear();
                    if let Some(book) = &mut entry.stages {
                        book.later.iter_mut().for_each(BTreeSet::clear);
                    }
                }
                Event::JobStageAdvanced { stage, .. } => release_stages(entry, *stage),
                Event::JobCanceled { .. } | Event::JobDeleted { .. } => {
                    entry.to_queue.clear();
                    entry.retry_owed.clear();
                    entry.leave_owed.clear();
                    if let Some(book) = &mut entry.stages {
                        book.later.iter_mut().for_each(BTreeSet::clear);
                    }
                }
                _ => {}
            }
        }
        // The job's own clock deadline (start or end time); the job driver adds rollout windows.
        let next = self.jobs.get(&job_id).and_then(|e| e.job.next_deadline());
        self.proj.arm(&stored.stream, next);
        fx.dirty_jobs.push(job_id);
        Ok(())
    }

    /// The runtime's indexes after core's projection folded an execution event (`old`:
    /// the execution's status before it).
    fn apply_execution(
        &mut self,
        job_id: &JobId,
        thing: &ThingName,
        old: Option<JobExecutionStatus>,
        stored: &StoredEvent,
        fx: &mut Effects,
    ) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            // An execution of an unknown job cannot be queued by this runtime; core's projection
            // still tracks it, the runtime's indexes skip it.
            return;
        };
        let Some(meta) = self.proj.execution(job_id, thing) else {
            return;
        };
        if let Some(book) = &mut entry.stages {
            if let Some(&i) = book.of.get(thing) {
                let i = usize::try_from(i).unwrap_or(usize::MAX);
                if let Some(c) = book.counters.get_mut(i) {
                    if old != Some(meta.status) {
                        c.record(old, meta.status);
                    }
                }
                if let Some(set) = book.later.get_mut(i) {
                    set.remove(thing);
                }
            }
        }
        if let Event::ExecutionQueued { queued_at, .. } = &stored.event {
            entry.to_queue.remove(thing);
            if let Some(started) = entry.job.started_at {
                let w = rollout::window_start(started, *queued_at);
                entry.window = match entry.window {
                    Some((cur, n)) if cur == w => Some((cur, n + 1)),
                    _ => Some((w, 1)),
                };
            }
            // Most things have one execution at a time: start with room for one rather
            // than a default growth of four.
            let jobs = self
                .thing_jobs
                .entry(thing.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            if !jobs.contains(job_id) {
                jobs.push(job_id.clone());
            }
        }
        entry.retry_owed.remove(thing);
        if meta.status != JobExecutionStatus::Queued {
            entry.leave_owed.remove(thing);
        }
        let job_live = !entry.job.status.is_terminal() && !entry.job.deleted;
        if job_live
            && retry::should_retry(&entry.job.config.retry, meta.status, meta.execution_number)
        {
            entry.retry_owed.insert(thing.clone());
        }
        let renewed = matches!(stored.event, Event::ExecutionRequeued { .. });
        if old != Some(meta.status) || renewed {
            fx.dirty_jobs.push(job_id.clone());
            fx.changes.push(StatusChange::JobExecution {
                job_id: job_id.clone(),
                thing: thing.clone(),
                status: meta.status,
                execution_number: meta.execution_number,
                version_number: meta.version,
                at: meta.last_updated_at,
                position: stored.position,
            });
        }
    }

    fn apply_group(
        &mut self,
        name: GroupName,
        stored: &StoredEvent,
        fx: &mut Effects,
    ) -> Result<(), FoldError> {
        let old = self.groups.remove(&name);
        let old_members: Vec<ThingName> = match (&stored.event, &old) {
            (Event::GroupDeleted { .. }, Some(g)) => g.members.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let group = Group::evolve(old, &stored.event).map_err(|e| corrupt(&stored.stream, e))?;
        self.groups.insert(name.clone(), group);
        let (added, things) = match &stored.event {
            Event::GroupMembersAdded { things, .. } => (true, things),
            Event::GroupMembersRemoved { things, .. } => (false, things),
            // Deleting a group is every member leaving it at once.
            Event::GroupDeleted { .. } => (false, &old_members),
            _ => return Ok(()),
        };
        let jobs = self.group_jobs.get(&name).cloned().unwrap_or_default();
        for job_id in jobs {
            let Some(entry) = self.jobs.get(&job_id) else {
                continue;
            };
            let job = Arc::clone(&entry.job);
            // Only a continuous job that is rolling out follows membership; a scheduled one
            // resolves its groups when it starts.
            if job.selection != TargetSelection::Continuous
                || job.status != JobStatus::InProgress
                || !job.is_rolling_out()
            {
                continue;
            }
            let leaving: Vec<ThingName> = if added {
                Vec::new()
            } else {
                things
                    .iter()
                    .filter(|t| !self.still_targeted(&job, t, &name))
                    .cloned()
                    .collect()
            };
            let proj = &self.proj;
            let Some(entry) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            if added {
                for t in things {
                    entry.leave_owed.remove(t);
                    if proj.execution(&job_id, t).is_none() {
                        entry.to_queue.insert(t.clone());
                    }
                }
            } else {
                for t in leaving {
                    entry.to_queue.remove(&t);
                    if proj
                        .execution(&job_id, &t)
                        .is_some_and(|m| m.status == JobExecutionStatus::Queued)
                    {
                        entry.leave_owed.insert(t);
                    }
                }
            }
            fx.dirty_jobs.push(job_id);
        }
        Ok(())
    }

    /// The command execution of `id`, as folded (without params or result).
    pub fn command(&self, id: &ExecutionId) -> Option<&CommandEntry> {
        self.commands.get(id)
    }

    /// Things with at least one pending execution (for recovery).
    pub fn things_with_pending(&self) -> Vec<ThingName> {
        self.thing_jobs
            .iter()
            .filter(|(t, _)| self.proj.next_pending(t).is_some())
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// Moves the waiting targets of every stage up to `current` into the rollout queue.
fn release_stages(entry: &mut JobEntry, current: u32) {
    let Some(book) = &mut entry.stages else {
        return;
    };
    let upto = usize::try_from(current).unwrap_or(usize::MAX);
    for set in book.later.iter_mut().take(upto.saturating_add(1)) {
        entry.to_queue.append(set);
    }
}

/// A throwaway value that stands in while the real job is moved out for `evolve`; never seen
/// by readers, because the fold holds the write lock throughout.
fn placeholder_job(job_id: &JobId) -> Job {
    Job {
        job_id: job_id.clone(),
        name: None,
        description: None,
        targets: Default::default(),
        selection: TargetSelection::Snapshot,
        document: serde_json::Value::Null,
        config: Default::default(),
        status: JobStatus::Canceled,
        created_at: Timestamp::EPOCH,
        started_at: None,
        ended_at: None,
        rollout_stopped: true,
        forced: false,
        cancel_reason: None,
        deleted: true,
        version: 0,
        stage: 0,
        overridden_stages: Vec::new(),
        threshold_overridden: false,
        paused: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetops_core::event::SCHEMA_VERSION;
    use fleetops_core::projection::ProjectionError;

    fn stored(position: u64, stream: StreamId, version: u64, event: Event) -> StoredEvent {
        StoredEvent {
            event_id: uuid::Uuid::nil(),
            stream,
            stream_version: version,
            position,
            recorded_at: Timestamp::EPOCH,
            schema_version: SCHEMA_VERSION,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            event,
        }
    }

    fn group(name: &str, position: u64) -> StoredEvent {
        let name = GroupName::parse(name).unwrap();
        stored(
            position,
            StreamId::group(&name),
            1,
            Event::GroupCreated {
                name,
                description: None,
                at: Timestamp::EPOCH,
            },
        )
    }

    #[test]
    fn a_corrupt_stream_is_skipped_and_a_broken_feed_stops_the_fold() {
        let mut model = ReadModel::default();
        let mut fx = Effects::default();
        let job = JobId::parse("never-created").unwrap();
        // A job stream that starts with JobStarted does not replay: skipped, the rest folds.
        let corrupt = stored(
            2,
            StreamId::job(&job),
            1,
            Event::JobStarted {
                at: Timestamp::EPOCH,
            },
        );
        let batch = [group("a", 1), corrupt, group("b", 3)];
        let folded = model.fold_batch(&batch, &mut fx);
        assert_eq!(folded.skipped.len(), 1);
        assert_eq!(folded.skipped[0].0, 2);
        assert!(folded.stopped.is_none());
        assert_eq!(model.checkpoint(), 3);
        assert_eq!(model.groups.len(), 2);
        // A gap stops the fold at the event past it; nothing after it is folded.
        let folded = model.fold_batch(&[group("d", 5), group("e", 6)], &mut fx);
        assert!(matches!(
            folded.stopped,
            Some((
                5,
                FoldError::Projection(ProjectionError::Gap {
                    expected: 4,
                    got: 5
                })
            ))
        ));
        assert_eq!(model.checkpoint(), 3);
        assert_eq!(model.groups.len(), 2);
    }

    #[test]
    fn api_keys_fold_into_the_model_and_survive_its_image() {
        use fleetops_core::access::{Scope, SecretHash};
        let mut model = ReadModel::default();
        let mut fx = Effects::default();
        let id = ApiKeyId::parse("k1").unwrap();
        let stream = StreamId::api_key(&id);
        let created = Event::ApiKeyCreated {
            key_id: id.clone(),
            name: "ci".into(),
            scope: Scope::Operator,
            secret_hash: SecretHash::from_bytes([1; 32]),
            created_at: Timestamp::EPOCH,
        };
        let revoked = Event::ApiKeyRevoked {
            at: Timestamp::from_secs(5),
        };
        let folded = model.fold_batch(&[stored(1, stream.clone(), 1, created)], &mut fx);
        assert!(folded.skipped.is_empty() && folded.stopped.is_none());
        assert!(model.api_keys[&id].is_active());
        let image = ReadModel::decode(&model.encode(), 1).unwrap();
        assert_eq!(image.api_keys, model.api_keys);
        model.fold_batch(&[stored(2, stream, 2, revoked)], &mut fx);
        assert_eq!(
            model.api_keys[&id].revoked_at,
            Some(Timestamp::from_secs(5))
        );
    }

    #[test]
    fn presence_sources_naming_client_ids_find_the_registered_thing() {
        let mut model = ReadModel::default();
        let mut fx = Effects::default();
        let lamp = ThingName::parse("lamp-7").unwrap();
        let registered = stored(
            1,
            StreamId::thing(&lamp),
            1,
            Event::ThingRegistered {
                name: lamp.clone(),
                attributes: Default::default(),
                thing_type: None,
                client_id: Some("hw-17".into()),
                at: Timestamp::EPOCH,
            },
        );
        model.apply(&registered, &mut fx).unwrap();
        assert_eq!(model.thing_of_client("hw-17"), Some(lamp.clone()));
        // Its own name is not its client id any more; another valid name is itself.
        assert_eq!(model.thing_of_client("lamp-7"), None);
        assert_eq!(
            model.thing_of_client("lamp-8"),
            Some(ThingName::parse("lamp-8").unwrap())
        );
        assert_eq!(model.thing_of_client("not/a thing"), None);
        assert_eq!(model.connectivity(&lamp), Connectivity::Unknown);
        let online = stored(
            2,
            StreamId::thing(&lamp),
            2,
            Event::ThingPresenceChanged {
                name: lamp.clone(),
                online: true,
                stamp: 5,
                at: Timestamp::EPOCH,
            },
        );
        model.apply(&online, &mut fx).unwrap();
        assert_eq!(model.connectivity(&lamp), Connectivity::Online);
        assert_eq!(fx.came_online, std::slice::from_ref(&lamp));
        // The image keeps things and rebuilds the client id index.
        let back = ReadModel::decode(&model.encode(), 2).unwrap();
        assert_eq!(back.thing_of_client("hw-17"), Some(lamp.clone()));
        assert_eq!(back.things, model.things);
    }
}
