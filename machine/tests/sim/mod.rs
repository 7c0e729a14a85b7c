//! The deterministic fleet simulator shared by `simulator.rs` (seeded runs) and
//! `runtime_props.rs` (a proptest state-machine test): one thread, the machine's read model
//! and decisions, the in-memory reference store, simulated devices and a simulated broker
//! that drops, duplicates, delays and reorders device requests, replies and the messages the
//! service publishes. The service crashes and restarts (from a snapshot image or from
//! position 1), devices forget what they were doing, and the clock jumps. Every step is an
//! [`Op`]; after each one the invariants are checked (see [`Sim::check`]).
//!
//! The simulated service does what `fleetops-service`'s tasks do, through the same machine
//! calls: the fold, whose effects go to the machine's [`Outbox`]; the outbox task, which
//! polls it and puts `notify`, `notify-next` and command requests on the broker; a new
//! command's sender, which publishes the request itself; the routing of device requests and
//! their replies; the job planning and the deadline scan; decisions are core's aggregates on
//! the replayed stream. A crash loses the outbox; the restarted service owes again what
//! [`Outbox::recover`] derives from the folded model.

// Each test binary uses part of the simulator.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::config::{
    FailureType, JobConfig, RetryCriterion, Rollout, Stage, StageAction, StageErrorThreshold,
    StageTargets, TargetSelection, Targets,
};
use fleetops_core::cron::{window_state, CronExpr, MaintenanceWindow, UtcOffset};
use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, JobTarget, Outbound, Reply, StartNextRequest,
    UpdateRequest,
};
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::projection::JobCounters;
use fleetops_core::store::{
    AppendBatch, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, StreamAppend,
};
use fleetops_core::testkit::rng::SplitMix64;
use fleetops_core::{
    Aggregate, CommandStatus, Duration, Event, ExecutionId, JobExecutionStatus, JobId, StreamId,
    ThingName, Timestamp,
};
use fleetops_machine::jobs::{self, JobStep, PlannedAppend};
use fleetops_machine::outbox::{command_request, Outbox};
use fleetops_machine::requests::Route;
use fleetops_machine::timers::Timer;
use fleetops_machine::{Effects, ReadModel};
use fleetops_store_memory::MemoryStore;

/// A message on its way through the broker: a device's request, the service's reply, or a
/// message the service's outbox publishes to a device.
#[derive(Debug, Clone)]
enum Message {
    Request(ThingName, DeviceRequest),
    Reply(ThingName, Result<Reply, String>),
    Push(Outbound),
}

/// How many entries a simulated `notify` lists, as the service's default.
const NOTIFY_MAX: usize = 10;

/// Unpublished status changes the simulated service keeps: small, so the cap drops some.
const STATUS_CHANGES_KEPT: usize = 16;

/// A decision that went through: the new state, what was stored, and the stream version
/// before it.
struct Decided<A> {
    state: Option<A>,
    events: Vec<Event>,
    before: u64,
}

/// What a device remembers: the execution it is working on, the commands it was sent and
/// has yet to take up, and those it took up (so a request heard again is not answered twice).
#[derive(Debug, Default, Clone)]
struct Device {
    current: Option<(JobId, u64)>,
    commands: Vec<ExecutionId>,
    taken: HashSet<ExecutionId>,
}

/// The knobs of one run, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Shape {
    things: usize,
    steps: usize,
    drop: u64,
    duplicate: u64,
    crash: u64,
    silent: u64,
}

pub struct Sim {
    seed: u64,
    rng: SplitMix64,
    rt: tokio::runtime::Runtime,
    store: MemoryStore,
    model: ReadModel,
    now: Timestamp,
    next_id: u128,
    /// The run's size and fault rates.
    pub shape: Shape,
    things: Vec<ThingName>,
    devices: HashMap<ThingName, Device>,
    broker: VecDeque<Message>,
    /// What the service owes the devices; lost when it crashes.
    outbox: Outbox,
    /// The next execution (job and attempt) the service last published a `notify-next`
    /// for, per thing (in the order of `things`), since it started: what the devices were
    /// last told.
    told_next: Vec<Option<(JobId, u32)>>,
    /// Command requests the service published since it started.
    requested: BTreeSet<ExecutionId>,
    dirty: BTreeSet<JobId>,
    jobs: Vec<JobId>,
    /// A snapshot image and the position it reflects, as the service saves them.
    image: Option<(Vec<u8>, u64)>,
    /// Events a device saw accepted: stream, version, event.
    accepted: Vec<(StreamId, u64, Event)>,
    /// The terminal status first seen for each attempt.
    pub terminal: HashMap<(JobId, ThingName, u32), JobExecutionStatus>,
    trace: VecDeque<String>,
    step: usize,
    /// Attempts that reached a terminal status.
    pub finished_executions: u64,
    /// Messages the service's outbox (and new commands' senders) put on the broker.
    pub published: u64,
    /// Executions a device looked up (`jobs/{jobId}/get`) and had described.
    pub described: u64,
    /// How to run this fleet again, for a failure message.
    replay: String,
    /// Rollout-control facts stored, by kind (see [`control_kind`]).
    pub controls: std::collections::BTreeMap<&'static str, u64>,
}

/// The rollout-control kind of a stored event, counted to show the seeds reach each rule.
fn control_kind(e: &Event) -> Option<&'static str> {
    use fleetops_core::event::{EndReason, JobCancelReason, PauseReason};
    Some(match e {
        Event::JobPaused {
            reason: PauseReason::Operator { .. },
            ..
        } => "operator pause",
        Event::JobPaused {
            reason: PauseReason::StageGate { .. },
            ..
        } => "gate pause",
        Event::JobPaused {
            reason: PauseReason::StageErrorThreshold { .. },
            ..
        } => "threshold pause",
        Event::JobResumed { .. } => "resume",
        Event::JobStageAdvanced {
            overridden: false, ..
        } => "stage passed",
        Event::JobStageAdvanced {
            overridden: true, ..
        } => "stage overridden",
        Event::JobUpdated { .. } => "update",
        Event::JobCanceled {
            reason: JobCancelReason::StageAborted { .. },
            ..
        } => "stage abort",
        Event::ExecutionCanceled {
            reason: EndReason::Operator,
            ..
        } => "execution cancel",
        _ => return None,
    })
}

const TRACE: usize = 40;

impl Sim {
    /// A fleet drawn from `seed`, for a seeded run.
    pub fn new(seed: u64) -> Self {
        let mut sim = Self::fleet(seed);
        sim.replay = format!(
            "FLEETOPS_SIM_SEED={seed} cargo test -p fleetops-machine --test simulator -- \
             --nocapture"
        );
        sim
    }

    /// A fleet drawn from `seed`, for steps chosen elsewhere (the proptest, which prints the
    /// steps of a failure itself).
    pub fn for_steps(seed: u64) -> Self {
        let mut sim = Self::fleet(seed);
        sim.replay = "cargo test -p fleetops-machine --test runtime_props (proptest prints the \
                      minimal failing steps and keeps them in tests/runtime_props.regressions)"
            .to_owned();
        sim
    }

    fn fleet(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let shape = Shape {
            things: 2 + usize::try_from(rng.below(12)).unwrap_or(0),
            steps: 150 + usize::try_from(rng.below(250)).unwrap_or(0),
            drop: rng.below(15),
            duplicate: rng.below(15),
            crash: rng.below(4),
            silent: rng.below(25),
        };
        let things: Vec<ThingName> = (0..shape.things)
            .map(|i| ThingName::parse(&format!("dev-{i}")).expect("a valid name"))
            .collect();
        let devices = things
            .iter()
            .map(|t| (t.clone(), Device::default()))
            .collect();
        Sim {
            seed,
            rng,
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a current-thread runtime"),
            store: MemoryStore::new(),
            model: ReadModel::default(),
            now: Timestamp::from_millis(1_800_000_000_000),
            next_id: 1,
            told_next: vec![None; shape.things],
            shape,
            things,
            devices,
            broker: VecDeque::new(),
            outbox: Outbox::new(STATUS_CHANGES_KEPT, true),
            requested: BTreeSet::new(),
            dirty: BTreeSet::new(),
            jobs: Vec::new(),
            image: None,
            accepted: Vec::new(),
            terminal: HashMap::new(),
            trace: VecDeque::new(),
            step: 0,
            finished_executions: 0,
            published: 0,
            described: 0,
            replay: String::new(),
            controls: std::collections::BTreeMap::new(),
        }
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("step {} at {}: {what}", self.step, self.now));
    }

    fn fail(&self, why: &str) -> ! {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        panic!(
            "seed {} failed at step {}: {why}\n{:?}\nlast steps:\n  {}\nreproduce: {}",
            self.seed,
            self.step,
            self.shape,
            trace.join("\n  "),
            self.replay
        );
    }

    fn envelopes(&mut self, events: &[Event]) -> Vec<NewEvent> {
        events
            .iter()
            .map(|e| {
                self.next_id += 1;
                NewEvent::new(uuid::Uuid::from_u128(self.next_id), e.clone(), self.now)
            })
            .collect()
    }

    // ---- the service side: store, fold, decisions ----

    fn load<A: Aggregate>(&self, stream: &StreamId) -> (Option<A>, Option<u64>) {
        let history = self
            .rt
            .block_on(self.store.read_stream(stream, 1, usize::MAX))
            .unwrap_or_else(|e| self.fail(&format!("read {stream}: {e}")));
        let version = history.last().map(|e| e.stream_version);
        let state = A::replay(history.iter().map(|e| &e.event))
            .unwrap_or_else(|e| self.fail(&format!("{stream} does not replay: {e}")));
        (state, version)
    }

    /// Appends and folds; `Err` only on a version conflict.
    fn append(&mut self, parts: Vec<PlannedAppend>) -> Result<(), StreamId> {
        let mut streams = Vec::with_capacity(parts.len());
        for p in parts {
            let events = self.envelopes(&p.events);
            streams.push(StreamAppend {
                stream: p.stream,
                expected: p.expected,
                events,
            });
        }
        let kinds: Vec<&'static str> = streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| control_kind(&e.event)))
            .flatten()
            .collect();
        let batch = AppendBatch {
            streams,
            idempotency_key: None,
        };
        match self.rt.block_on(self.store.append(batch)) {
            Ok(_) => {
                for k in kinds {
                    *self.controls.entry(k).or_default() += 1;
                }
                self.fold();
                Ok(())
            }
            Err(StoreError::Conflict { stream, .. }) => Err(stream),
            Err(e) => self.fail(&format!("append: {e}")),
        }
    }

    /// Loads, decides and appends, as the service's `execute` does: one read of the stream.
    fn decide_append<A: Aggregate>(
        &mut self,
        stream: &StreamId,
        intent: A::Intent,
    ) -> Result<Decided<A>, String> {
        let (state, version) = self.load::<A>(stream);
        let (state, events) = A::execute(state, intent, self.now).map_err(|r| r.to_string())?;
        let before = version.unwrap_or(0);
        if !events.is_empty() {
            let part = PlannedAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::from_current(version),
                events: events.clone(),
            };
            self.append(vec![part])
                .map_err(|s| format!("conflict on {s}"))?;
        }
        Ok(Decided {
            state,
            events,
            before,
        })
    }

    fn fold(&mut self) {
        let from = self.model.checkpoint() + 1;
        let page: Vec<StoredEvent> = self
            .rt
            .block_on(self.store.read_all(from, usize::MAX))
            .unwrap_or_else(|e| self.fail(&format!("read the feed: {e}")));
        let mut fx = Effects::default();
        for e in &page {
            if let Err(err) = self.model.apply(e, &mut fx) {
                self.fail(&format!("fold position {}: {err}", e.position));
            }
        }
        // As the service's follower: the outbox takes what it owes, the job driver the rest.
        let _ = self.outbox.owe(&mut fx);
        self.dirty.extend(fx.dirty_jobs);
    }

    /// The next execution of `thing` as the fold tells a change of it: job and attempt.
    fn front(&self, thing: &ThingName) -> Option<(JobId, u32)> {
        let job = self.model.next_pending_job(thing)?;
        let n = self
            .model
            .exec(&job, thing)
            .map_or(0, |m| m.execution_number);
        Some((job, n))
    }

    /// One round of the service's outbox task: polls a batch of at most `max` of each kind,
    /// builds the messages from the state now (loading the streams they need) and puts them
    /// on the broker. Status changes go to followers, not devices: they are only taken.
    fn publish(&mut self, max: usize) {
        let owed = self.outbox.poll(max);
        if owed.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(owed.things.len() * 2 + owed.commands.len());
        let mut next = Vec::new();
        for (thing, flags) in owed.things {
            if flags.notify {
                out.push(self.model.notify(&thing, self.now, NOTIFY_MAX));
            }
            if flags.next {
                next.push(thing);
            }
        }
        for thing in next {
            let state = self.model.next_pending_job(&thing).and_then(|job| {
                self.load::<JobExecution>(&StreamId::job_execution(&job, &thing))
                    .0
            });
            let front = self.front(&thing);
            if let Some(i) = self.things.iter().position(|t| *t == thing) {
                self.told_next[i] = front;
            }
            out.push(self.model.notify_next(thing, state.as_ref(), self.now));
        }
        for id in owed.commands {
            let (state, _) = self.load::<CommandExecution>(&StreamId::command(&id));
            if let Some(request) = state.and_then(|c| command_request(&c, self.now)) {
                self.requested.insert(id);
                out.push(request);
            }
        }
        self.note(format!("service published {} messages", out.len()));
        self.published += out.len() as u64;
        self.broker.extend(out.into_iter().map(Message::Push));
    }

    /// One step of the job driver, for one dirty job.
    fn job_step(&mut self, job: &JobId) {
        let step = self.model.plan_job(job, self.now, 4);
        let progressed = match step {
            JobStep::Executions(items, intent) => {
                self.note(format!(
                    "job {job}: {intent:?} on {} executions",
                    items.len()
                ));
                if intent == JobExecutionIntent::Retry {
                    if let Some(j) = self.model.jobs.get(job).map(|e| e.job.clone()) {
                        self.check_may_queue(&j, &[], "retried");
                    }
                }
                let parts = jobs::decide_executions(items, &intent, self.now);
                self.append_dropping_conflicts(parts)
            }
            JobStep::Review(j) => {
                let intent = self.model.review_intent(job);
                self.note(format!("job {job}: review"));
                let events = Job::decide(Some(&j), intent, self.now).unwrap_or_default();
                let part = PlannedAppend {
                    stream: StreamId::job(job),
                    expected: ExpectedVersion::Exact(j.version),
                    events,
                };
                let _ = self.append(vec![part]);
                true
            }
            JobStep::Queue(j, things) => {
                self.note(format!("job {job}: queue {}", things.len()));
                self.check_may_queue(&j, &things, "queued");
                let parts = jobs::decide_queue(&j, things, self.now)
                    .unwrap_or_else(|r| self.fail(&format!("queue refused: {r}")));
                self.append_dropping_conflicts(parts)
            }
            JobStep::Idle => false,
        };
        let again = self.model.arm_job(job, self.now, progressed);
        if progressed || again {
            self.dirty.insert(job.clone());
        }
    }

    /// Nothing is queued (or retried) while a job is paused or outside its maintenance
    /// windows, and a staged job queues only things of stages that started.
    fn check_may_queue(&self, job: &Job, things: &[ThingName], what: &str) {
        let id = &job.job_id;
        if job.paused.is_some() {
            self.fail(&format!("{id} {what} executions while paused"));
        }
        if !window_state(&job.config.maintenance_windows, self.now).open {
            self.fail(&format!("{id} {what} executions outside its windows"));
        }
        let book = self.model.jobs.get(id).and_then(|e| e.stages.as_ref());
        for t in things {
            if let Some(s) = book.and_then(|b| b.of.get(t)) {
                if *s > job.stage {
                    self.fail(&format!(
                        "{id} queued {t} of stage {s} while at stage {}",
                        job.stage
                    ));
                }
            }
        }
    }

    fn append_dropping_conflicts(&mut self, mut parts: Vec<PlannedAppend>) -> bool {
        while !parts.is_empty() {
            match self.append(parts.clone()) {
                Ok(()) => return true,
                Err(stream) => parts.retain(|p| p.stream != stream),
            }
        }
        false
    }

    /// Fires every due deadline, as the scheduler does.
    fn timers(&mut self) {
        loop {
            let due = self.model.due_timers(self.now, |_, _| false, 1024, 1024);
            if due.fire.is_empty() {
                return;
            }
            let mut progressed = false;
            for d in due.fire {
                match d.timer {
                    Timer::Command { execution_id, .. } => {
                        let stream = StreamId::command(&execution_id);
                        let r = self.decide_append::<CommandExecution>(
                            &stream,
                            CommandIntent::CheckTimeout,
                        );
                        progressed |= r.is_ok_and(|d| !d.events.is_empty());
                    }
                    Timer::Execution { job_id, thing } => {
                        let stream = StreamId::job_execution(&job_id, &thing);
                        let r = self.decide_append::<JobExecution>(
                            &stream,
                            JobExecutionIntent::CheckTimeout,
                        );
                        progressed |= r.is_ok_and(|d| !d.events.is_empty());
                    }
                    Timer::Job(job) => {
                        self.job_step(&job);
                        progressed = true;
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// The service answers one device request, routed by the machine.
    fn handle(&mut self, thing: &ThingName, request: DeviceRequest) -> Result<Reply, String> {
        match self.model.route(thing, request, usize::MAX) {
            Route::Answered(answer) => answer.map_err(|r| r.to_string()),
            Route::Execution {
                stream,
                intent,
                answer,
                ..
            } => {
                let done = self.decide_append::<JobExecution>(&stream, intent)?;
                let state = done
                    .state
                    .ok_or_else(|| format!("{stream} does not exist"))?;
                for (v, e) in (done.before + 1..).zip(done.events) {
                    self.accepted.push((stream.clone(), v, e));
                }
                Ok(self.model.answer(answer, &state))
            }
            Route::Describe(d) => {
                let stream = &d.stream;
                let history = self
                    .rt
                    .block_on(self.store.read_stream(stream, 1, usize::MAX))
                    .unwrap_or_else(|e| self.fail(&format!("read {stream}: {e}")));
                let reply = self
                    .model
                    .describe(thing, &d, history.iter().map(|e| &e.event))
                    .unwrap_or_else(|e| self.fail(&format!("{stream} does not replay: {e}")));
                // The current attempt, described from its stream, is what the read model
                // folded: a device that asks sees the state the runtime decides on.
                if let Ok(Reply::Describe(view)) = &reply {
                    self.described += 1;
                    let folded = self
                        .model
                        .exec(&d.job_id, thing)
                        .map(|m| (m.status, m.version, m.execution_number, m.last_updated_at));
                    let described = (
                        view.status,
                        view.version_number,
                        view.execution_number,
                        view.last_updated_at,
                    );
                    if d.execution_number.is_none() && folded != Some(described) {
                        self.fail(&format!(
                            "{stream} is described as {described:?}, folded as {folded:?}"
                        ));
                    }
                    if view.job_document.is_some() != d.include_document {
                        self.fail(&format!("{stream}: the job document was not as asked"));
                    }
                }
                reply.map_err(|r| r.to_string())
            }
            Route::Command { stream, intent, .. } => {
                self.decide_append::<CommandExecution>(&stream, intent)?;
                Ok(Reply::CommandResponse)
            }
        }
    }

    // ---- the world: operators, devices, broker, crashes, the clock ----

    fn thing(&self, i: u8) -> ThingName {
        self.things[usize::from(i) % self.things.len()].clone()
    }

    fn create_job(&mut self, first: u8, count: u8, retries: u8, timeout: u8, per_minute: u8) {
        let n = self.jobs.len();
        let job_id = JobId::parse(&format!("job-{n}")).expect("a valid id");
        let k = 1 + usize::from(count) % self.things.len();
        let targets: BTreeSet<ThingName> = (0..k)
            .map(|i| self.thing(first.wrapping_add(u8::try_from(i).unwrap_or(0))))
            .collect();
        let config = JobConfig {
            retry: if retries > 0 {
                vec![RetryCriterion {
                    failure_type: FailureType::All,
                    number_of_retries: u32::from(retries),
                }]
            } else {
                Vec::new()
            },
            in_progress_timeout: (timeout > 0).then(|| Duration::from_minutes(u64::from(timeout))),
            rollout: if per_minute > 0 {
                Rollout::Fixed {
                    per_minute: u32::from(per_minute),
                }
            } else {
                Rollout::default()
            },
            ..JobConfig::default()
        };
        let intent = JobIntent::Create {
            job_id: job_id.clone(),
            name: None,
            description: None,
            targets: Targets {
                things: targets.into_iter().collect(),
                groups: Vec::new(),
            },
            selection: TargetSelection::Snapshot,
            document: serde_json::json!({"op": "sim"}),
            config,
        };
        match self.decide_append::<Job>(&StreamId::job(&job_id), intent) {
            Ok(_) => {
                self.note(format!("created {job_id} on {k} things"));
                self.jobs.push(job_id.clone());
                self.dirty.insert(job_id);
            }
            Err(why) => self.fail(&format!("create job refused: {why}")),
        }
    }

    /// An operator creates a snapshot job with percentage stages (each with a gate, some with
    /// an error threshold) and/or a maintenance window that opens every few minutes.
    fn create_controlled_job(&mut self, first: u8, count: u8, stages: u8, window: u8, retries: u8) {
        let n = self.jobs.len();
        let job_id = JobId::parse(&format!("job-{n}")).expect("a valid id");
        let k = 1 + usize::from(count) % self.things.len();
        let targets: BTreeSet<ThingName> = (0..k)
            .map(|i| self.thing(first.wrapping_add(u8::try_from(i).unwrap_or(0))))
            .collect();
        let shares: &[u8] = match stages % 4 {
            0 => &[],
            1 => &[50],
            2 => &[20, 40],
            _ => &[20, 30, 50],
        };
        let gate = [0.0, 50.0, 90.0, 100.0][usize::from((stages >> 2) % 4)];
        let threshold = (stages & 0x10 != 0).then(|| StageErrorThreshold {
            failure_type: FailureType::All,
            min_executed: 1 + u32::from((stages >> 6) % 3),
            threshold_percent: 50.0,
            action: if stages & 0x20 != 0 {
                StageAction::Abort
            } else {
                StageAction::Pause
            },
        });
        let stage_list: Vec<Stage> = shares
            .iter()
            .map(|&percent| Stage {
                targets: StageTargets::Percent { percent },
                success_percent: gate,
                error_threshold: threshold.clone(),
            })
            .collect();
        let windows = if window == 0 {
            Vec::new()
        } else {
            let step = [5, 10, 15, 20][usize::from(window % 4)];
            let tz = if window & 0x10 != 0 { "+05:30" } else { "UTC" };
            vec![MaintenanceWindow {
                start: CronExpr::parse(&format!("*/{step} * * * *")).expect("valid"),
                duration_minutes: 1 + u32::from((window >> 2) % 4),
                time_zone: UtcOffset::parse(tz).expect("valid"),
            }]
        };
        let config = JobConfig {
            retry: if retries > 0 {
                vec![RetryCriterion {
                    failure_type: FailureType::All,
                    number_of_retries: u32::from(retries),
                }]
            } else {
                Vec::new()
            },
            in_progress_timeout: Some(Duration::from_minutes(3)),
            stages: stage_list,
            maintenance_windows: windows,
            ..JobConfig::default()
        };
        let intent = JobIntent::Create {
            job_id: job_id.clone(),
            name: None,
            description: None,
            targets: Targets {
                things: targets.into_iter().collect(),
                groups: Vec::new(),
            },
            selection: TargetSelection::Snapshot,
            document: serde_json::json!({"op": "sim"}),
            config,
        };
        match self.decide_append::<Job>(&StreamId::job(&job_id), intent) {
            Ok(_) => {
                self.note(format!(
                    "created {job_id} on {k} things, stages {stages:#x}, window {window:#x}"
                ));
                self.jobs.push(job_id.clone());
                self.dirty.insert(job_id);
            }
            Err(why) => self.fail(&format!("create job refused: {why}")),
        }
    }

    /// An operator pauses, resumes or updates a job, or cancels one of its executions.
    fn operate(&mut self, job: u8, action: u8, arg: u8) {
        if self.jobs.is_empty() {
            return;
        }
        let job = self.jobs[usize::from(job) % self.jobs.len()].clone();
        let stream = StreamId::job(&job);
        let outcome = match action % 4 {
            0 => self
                .decide_append::<Job>(&stream, JobIntent::Pause { comment: None })
                .map(|_| "paused".to_owned()),
            1 => self
                .decide_append::<Job>(&stream, JobIntent::Resume { comment: None })
                .map(|_| "resumed".to_owned()),
            2 => {
                let intent = JobIntent::Update {
                    description: Some(Some(format!("update {arg}"))),
                    in_progress_timeout: (arg & 1 != 0)
                        .then(|| Some(Duration::from_minutes(1 + u64::from(arg % 5)))),
                    rollout: Some(if arg & 2 != 0 {
                        Rollout::Fixed {
                            per_minute: 1 + u32::from(arg % 4),
                        }
                    } else {
                        Rollout::Unlimited
                    }),
                    abort: None,
                    retry: (arg & 4 != 0).then(|| {
                        vec![RetryCriterion {
                            failure_type: FailureType::All,
                            number_of_retries: 1,
                        }]
                    }),
                };
                self.decide_append::<Job>(&stream, intent)
                    .map(|_| "updated".to_owned())
            }
            _ => {
                let thing = self.thing(arg);
                let version = self.model.exec(&job, &thing).map(|m| m.version);
                let expected_version = match arg % 3 {
                    0 => None,
                    1 => version,
                    _ => version.map(|v| v + 1),
                };
                let intent = JobExecutionIntent::OperatorCancel {
                    force: arg & 0x40 != 0,
                    expected_version,
                    status_details: Some(
                        [(
                            StatusDetailKey::parse("canceledBy").expect("valid"),
                            "operator".to_owned(),
                        )]
                        .into(),
                    ),
                };
                let stream = StreamId::job_execution(&job, &thing);
                let wrong = matches!(expected_version, Some(e) if Some(e) != version);
                match self.decide_append::<JobExecution>(&stream, intent) {
                    Ok(d) if wrong && !d.events.is_empty() => {
                        self.fail(&format!("{job}/{thing} canceled at a wrong version"))
                    }
                    Ok(_) => Ok(format!("canceled {thing}'s execution")),
                    Err(why) => Err(why),
                }
            }
        };
        match outcome {
            Ok(what) => self.note(format!("{job}: {what}")),
            Err(why) => self.note(format!("{job}: operator refused: {why}")),
        }
    }

    /// An operator sends a command, as the service's sender does: the request is marked as
    /// the sender's before the append, and published by the sender once stored, unless it
    /// goes away first (`sender_gone`), when the outbox owes it instead.
    fn send_command(&mut self, thing: u8, ttl_secs: u8, sender_gone: bool) {
        let thing = self.thing(thing);
        self.next_id += 1;
        let id = ExecutionId::parse(&format!("cmd-{}", self.next_id)).expect("a valid id");
        let intent = CommandIntent::Send {
            execution_id: id.clone(),
            thing: thing.clone(),
            command_id: None,
            action: "reboot".to_owned(),
            params: serde_json::json!({}),
            ttl: Duration::from_secs(1 + u64::from(ttl_secs)),
        };
        self.outbox.sender_owes(id.clone());
        let done = match self.decide_append::<CommandExecution>(&StreamId::command(&id), intent) {
            Ok(done) => done,
            Err(why) => {
                self.outbox.sender_stored_nothing(&id);
                self.fail(&format!("send refused: {why}"))
            }
        };
        if sender_gone {
            self.note(format!("sent {id} to {thing}; the sender went away"));
            self.outbox.sender_gave_up(id);
            return;
        }
        // The fold came first (append, then fold): it must have left the request to us.
        if self.outbox.owes_request(&id) {
            self.fail(&format!("the fold owes {id}, which its sender publishes"));
        }
        let request = done.state.and_then(|c| command_request(&c, self.now));
        let Some(request) = request else {
            self.fail(&format!("{id} was just sent, yet has no request"));
        };
        self.note(format!("sent {id} to {thing}"));
        self.requested.insert(id);
        self.published += 1;
        self.broker.push_back(Message::Push(request));
    }

    fn cancel_job(&mut self, job: u8, force: bool) {
        if self.jobs.is_empty() {
            return;
        }
        let job = self.jobs[usize::from(job) % self.jobs.len()].clone();
        let intent = JobIntent::Cancel {
            force,
            comment: None,
        };
        match self.decide_append::<Job>(&StreamId::job(&job), intent) {
            Ok(_) => self.note(format!("canceled {job} (force {force})")),
            Err(why) => self.note(format!("cancel {job} refused: {why}")),
        }
    }

    /// A device acts: answers a command it was sent, reports on the execution it works on,
    /// or asks for work. `choice` picks the outcome; `silent` keeps it quiet.
    fn device_acts(&mut self, thing: u8, choice: u8, silent: bool) {
        let thing = self.thing(thing);
        // What it acts on, without copying all it remembers.
        let (command, current) = self
            .devices
            .get(&thing)
            .map(|d| (d.commands.first().cloned(), d.current.clone()))
            .unwrap_or_default();
        if let Some(id) = command {
            if let Some(d) = self.devices.get_mut(&thing) {
                d.commands.remove(0);
                d.taken.insert(id.clone());
            }
            if !silent {
                let status = if choice % 5 == 4 {
                    CommandStatus::Failed
                } else {
                    CommandStatus::Succeeded
                };
                let request = DeviceRequest::CommandResponse {
                    execution_id: id,
                    response: CommandResponse {
                        status,
                        result: None,
                        status_reason: None,
                    },
                };
                self.broker.push_back(Message::Request(thing, request));
            }
            return;
        }
        let request = match current {
            Some(_) if silent => return,
            // Now and then a device looks its execution up (`jobs/{jobId}/get`), the current
            // attempt or the first one, with or without the document.
            Some((job_id, _)) if choice % 16 == 15 => DeviceRequest::Describe(DescribeRequest {
                job: JobTarget::Job(job_id),
                execution_number: (choice % 32 == 31).then_some(1),
                include_job_document: choice % 64 < 32,
            }),
            Some((job_id, version)) => {
                let status = match choice % 10 {
                    0..=5 => JobExecutionStatus::Succeeded,
                    6..=7 => JobExecutionStatus::Failed,
                    8 => JobExecutionStatus::Rejected,
                    _ => JobExecutionStatus::InProgress,
                };
                DeviceRequest::Update {
                    job_id,
                    request: UpdateRequest {
                        status: Some(status),
                        expected_version: Some(version),
                        include_job_execution_state: true,
                        ..UpdateRequest::default()
                    },
                }
            }
            None => DeviceRequest::StartNext(StartNextRequest::default()),
        };
        self.broker.push_back(Message::Request(thing, request));
    }

    /// A device receives the answer to one of its requests. A refusal means what it holds
    /// is stale: it forgets its execution and asks `start-next` again (which offers the one in
    /// progress first).
    fn device_hears(&mut self, thing: &ThingName, reply: &Result<Reply, String>) {
        let Some(device) = self.devices.get_mut(thing) else {
            return;
        };
        let Ok(reply) = reply else {
            device.current = None;
            return;
        };
        match reply {
            Reply::StartNext(Some(view)) => {
                device.current = Some((view.job_id.clone(), view.version_number));
            }
            Reply::StartNext(None) => device.current = None,
            Reply::Update {
                execution_state: Some(state),
                ..
            } => {
                device.current = (state.status == JobExecutionStatus::InProgress)
                    .then(|| device.current.take())
                    .flatten()
                    .map(|(job, _)| (job, state.version_number));
            }
            _ => {}
        }
    }

    /// A device receives a message the service published. A command request joins the
    /// commands it has to answer, unless it heard it before; an idle device told that an
    /// execution is next asks for it (`start-next`). A `notify` changes nothing: the list it
    /// carries is what `start-next` picks from anyway.
    fn device_gets(&mut self, message: Outbound) {
        match message {
            Outbound::CommandRequest {
                thing,
                execution_id,
                ..
            } => {
                let Some(device) = self.devices.get_mut(&thing) else {
                    return;
                };
                if !device.taken.contains(&execution_id) && !device.commands.contains(&execution_id)
                {
                    device.commands.push(execution_id);
                }
            }
            Outbound::NotifyNext {
                thing,
                execution: Some(view),
                ..
            } if self
                .devices
                .get(&thing)
                .is_some_and(|d| d.current.is_none()) =>
            {
                self.note(format!("{thing} told {} is next: start-next", view.job_id));
                let request = DeviceRequest::StartNext(StartNextRequest::default());
                self.broker.push_back(Message::Request(thing, request));
            }
            _ => {}
        }
    }

    /// The broker delivers one message: the oldest, or one of the next few (`pick`), maybe
    /// twice, maybe not at all.
    fn deliver(&mut self, pick: u8, drop: bool, duplicate: bool) {
        if self.broker.is_empty() {
            return;
        }
        let i = usize::from(pick) % self.broker.len().min(4);
        let Some(message) = self.broker.remove(i) else {
            return;
        };
        if drop {
            self.note(format!("broker dropped {message:?}"));
            return;
        }
        if duplicate {
            self.broker.push_back(message.clone());
        }
        match message {
            Message::Request(thing, request) => {
                let what = format!("{request:?}");
                match self.handle(&thing, request) {
                    Ok(reply) => {
                        self.note(format!("{thing}: {} accepted", short(&what)));
                        self.broker.push_back(Message::Reply(thing, Ok(reply)));
                    }
                    // A refusal changes nothing; the device hears it and asks again.
                    Err(why) => {
                        self.note(format!("{thing}: {} refused: {why}", short(&what)));
                        self.broker.push_back(Message::Reply(thing, Err(why)));
                    }
                }
            }
            Message::Reply(thing, reply) => self.device_hears(&thing, &reply),
            Message::Push(message) => self.device_gets(message),
        }
    }

    /// The service crashes: everything in memory is gone, the outbox too; it resumes from
    /// the snapshot image (or position 1) and the feed, then owes again what the folded
    /// model says may be owed and looks at every job again, as the service's recovery does.
    fn crash_service(&mut self, from_image: bool) {
        self.outbox = Outbox::new(STATUS_CHANGES_KEPT, true);
        self.told_next.fill(None);
        self.requested.clear();
        let before = self.model.encode();
        let mut model = match &self.image {
            Some((bytes, at)) if from_image => ReadModel::decode(bytes, *at)
                .unwrap_or_else(|e| self.fail(&format!("image does not decode: {e}"))),
            _ => ReadModel::default(),
        };
        let page = self
            .rt
            .block_on(self.store.read_all(model.checkpoint() + 1, usize::MAX))
            .unwrap_or_else(|e| self.fail(&format!("read the feed: {e}")));
        for e in &page {
            if let Err(err) = model.apply(e, &mut Effects::default()) {
                self.fail(&format!(
                    "fold after restart, position {}: {err}",
                    e.position
                ));
            }
        }
        // Job deadlines armed by the driver (rollout windows) are not facts of the feed; the
        // recovery pass's ticks arm them again. Everything else must be exactly as before.
        let (was, is) = (
            without_job_deadlines(&before),
            without_job_deadlines(&model.encode()),
        );
        if was != is {
            self.fail(&format!(
                "the model folded after a restart differs from the one before: {}",
                first_difference(&was, &is, String::new())
            ));
        }
        self.model = model;
        self.note(format!("service restarted (from image: {from_image})"));
        self.outbox.recover(&self.model, self.now);
        self.check_recovery_owes_everything();
        for job in self.jobs.clone() {
            self.job_step(&job);
        }
    }

    fn save_image(&mut self) {
        self.image = Some((self.model.encode(), self.model.checkpoint()));
    }

    /// Performs one step, fires what is due, and checks every invariant.
    pub fn apply(&mut self, op: &Op) {
        self.step += 1;
        match *op {
            Op::CreateJob {
                first,
                count,
                retries,
                timeout,
                per_minute,
            } => self.create_job(first, count, retries, timeout, per_minute),
            Op::SendCommand {
                thing,
                ttl_secs,
                sender_gone,
            } => self.send_command(thing, ttl_secs, sender_gone),
            Op::CancelJob { job, force } => self.cancel_job(job, force),
            Op::CreateControlledJob {
                first,
                count,
                stages,
                window,
                retries,
            } => self.create_controlled_job(first, count, stages, window, retries),
            Op::Operate { job, action, arg } => self.operate(job, action, arg),
            Op::DeviceActs {
                thing,
                choice,
                silent,
            } => self.device_acts(thing, choice, silent),
            Op::Deliver {
                pick,
                drop,
                duplicate,
            } => self.deliver(pick, drop, duplicate),
            Op::Publish { batch } => self.publish(1 + usize::from(batch % 8)),
            Op::JobTick => {
                if let Some(job) = self.dirty.pop_first() {
                    self.job_step(&job);
                }
            }
            Op::Advance { millis } => {
                self.now = self.now + Duration::from_millis(u64::from(millis))
            }
            Op::Jump { secs } => {
                self.note(format!("clock jumps {secs} s"));
                self.now = self.now + Duration::from_secs(u64::from(secs));
            }
            Op::DeviceRestart { thing } => {
                let t = self.thing(thing);
                self.note(format!("{t} restarts and forgets"));
                // Back online, it is owed its pending list, as the service's presence
                // handling does.
                let _ = self.outbox.reconnected(&self.model, &t);
                self.devices.insert(t, Device::default());
            }
            Op::SaveImage => self.save_image(),
            Op::CrashService { from_image } => self.crash_service(from_image),
        }
        self.timers();
        self.check();
    }

    /// A step drawn from the seed, with the run's fault rates.
    pub fn random_op(&mut self) -> Op {
        let shape = self.shape.clone();
        let r = &mut self.rng;
        let byte = |r: &mut SplitMix64| u8::try_from(r.below(256)).unwrap_or(0);
        match r.below(100) {
            0..=5 if r.chance(40) => Op::CreateControlledJob {
                first: byte(r),
                count: byte(r),
                stages: byte(r),
                window: if r.chance(40) { byte(r) | 1 } else { 0 },
                retries: u8::try_from(r.below(3)).unwrap_or(0),
            },
            0..=5 => Op::CreateJob {
                first: byte(r),
                count: byte(r),
                retries: if r.chance(50) {
                    1 + u8::try_from(r.below(3)).unwrap_or(0)
                } else {
                    0
                },
                timeout: if r.chance(60) {
                    1 + u8::try_from(r.below(10)).unwrap_or(0)
                } else {
                    0
                },
                per_minute: if r.chance(30) {
                    1 + u8::try_from(r.below(5)).unwrap_or(0)
                } else {
                    0
                },
            },
            6..=9 => Op::SendCommand {
                thing: byte(r),
                ttl_secs: 4 + u8::try_from(r.below(60)).unwrap_or(0),
                sender_gone: r.chance(20),
            },
            10 if r.chance(30) => Op::CancelJob {
                job: byte(r),
                force: r.chance(50),
            },
            10 => Op::Operate {
                job: byte(r),
                action: byte(r),
                arg: byte(r),
            },
            11..=40 => Op::DeviceActs {
                thing: byte(r),
                choice: byte(r),
                silent: r.chance(shape.silent),
            },
            41..=45 => Op::Publish { batch: byte(r) },
            46..=75 => Op::Deliver {
                pick: byte(r),
                drop: r.chance(shape.drop),
                duplicate: r.chance(shape.duplicate),
            },
            76..=85 => Op::JobTick,
            86..=93 => Op::Advance {
                millis: u16::try_from(r.below(3_000)).unwrap_or(0),
            },
            94 => Op::Jump {
                secs: 60 + u16::try_from(r.below(900)).unwrap_or(0),
            },
            95..=96 => Op::DeviceRestart { thing: byte(r) },
            97 => Op::SaveImage,
            _ if r.chance(shape.crash * 25) => Op::CrashService {
                from_image: r.chance(50),
            },
            _ => Op::Advance { millis: 0 },
        }
    }

    // ---- invariants ----

    /// The invariants that hold after every step: a terminal attempt never changes (and a
    /// restart loses none), a job's counters equal a fold of its executions, no command is
    /// still `SENT` past its TTL, and nothing owed is forgotten (see [`Sim::check_owed`]).
    pub fn check(&mut self) {
        self.check_owed();
        for job_id in self.model.jobs.keys() {
            let folded: JobCounters = self
                .model
                .proj
                .executions_of(job_id)
                .map(|(_, m)| m.status)
                .collect();
            if let Some(book) = self.model.jobs.get(job_id).and_then(|e| e.stages.as_ref()) {
                for (i, c) in book.counters.iter().enumerate() {
                    let stage: JobCounters = self
                        .model
                        .proj
                        .executions_of(job_id)
                        .filter(|(t, _)| {
                            book.of.get(*t).and_then(|s| usize::try_from(*s).ok()) == Some(i)
                        })
                        .map(|(_, m)| m.status)
                        .collect();
                    if stage != *c {
                        self.fail(&format!(
                            "stage {i} of {job_id} counts {c:?}, its executions fold to {stage:?}"
                        ));
                    }
                }
            }
            let counters = self.model.proj.counters(job_id);
            if folded != counters {
                self.fail(&format!(
                    "counters of {job_id} are {counters:?}, the executions fold to {folded:?}"
                ));
            }
            for (thing, m) in self.model.proj.executions_of(job_id) {
                if !m.status.is_terminal() {
                    continue;
                }
                let key = (job_id.clone(), thing.clone(), m.execution_number);
                match self.terminal.get(&key) {
                    Some(s) if *s != m.status && m.status != JobExecutionStatus::Removed => self
                        .fail(&format!(
                            "{job_id} on {thing} attempt {} was {s:?}, now {:?}",
                            m.execution_number, m.status
                        )),
                    Some(_) => {}
                    None => {
                        self.finished_executions += 1;
                        self.terminal.insert(key, m.status);
                    }
                }
            }
        }
        for (id, c) in &self.model.commands {
            if c.status == CommandStatus::Sent && c.deadline < self.now {
                self.fail(&format!(
                    "command {id} is still SENT past its TTL ({})",
                    c.deadline
                ));
            }
        }
        for ((job, thing, n), s) in &self.terminal {
            let m = self.model.exec(job, thing);
            let same_attempt = m.is_some_and(|m| m.execution_number == *n);
            if same_attempt
                && m.is_some_and(|m| m.status != *s && m.status != JobExecutionStatus::Removed)
            {
                self.fail(&format!(
                    "{job} on {thing} attempt {n} lost its terminal {s:?}"
                ));
            }
        }
    }

    /// Nothing owed is forgotten, since the service (re)started: a thing whose next execution
    /// is not the one it was last told about is owed a `notify-next`, and a live command
    /// (`SENT`, its TTL ahead) was published or is owed its request. Whether the broker
    /// delivers them is another matter: devices pull, and timers end what stays stuck.
    fn check_owed(&self) {
        for (thing, told) in self.things.iter().zip(&self.told_next) {
            // Compared in place: this runs after every step.
            let told = told.as_ref();
            let same = match (self.model.proj.next_pending(thing), told) {
                (None, None) => true,
                (Some(key), Some((job, n))) => {
                    key.job_id == *job
                        && self
                            .model
                            .exec(job, thing)
                            .map_or(0, |m| m.execution_number)
                            == *n
                }
                _ => false,
            };
            if !same && !self.outbox.owed(thing).next {
                self.fail(&format!(
                    "{thing}'s next execution is {:?}, it was told {told:?}, and no \
                     notify-next is owed",
                    self.front(thing)
                ));
            }
        }
        for (id, c) in &self.model.commands {
            let live = c.status == CommandStatus::Sent && c.deadline > self.now;
            if live && !self.requested.contains(id) && !self.outbox.owes_request(id) {
                self.fail(&format!(
                    "command {id} is live, yet its request was neither published nor owed"
                ));
            }
        }
    }

    /// Nothing owed is lost across a restart: right after [`Outbox::recover`], every thing
    /// with a pending execution is owed both notifications, every live command its request,
    /// and nothing else is owed.
    fn check_recovery_owes_everything(&self) {
        for thing in &self.things {
            let pending = self.model.next_pending_job(thing).is_some();
            let owed = self.outbox.owed(thing);
            if pending && !(owed.notify && owed.next) {
                self.fail(&format!(
                    "after the restart {thing} has a pending execution, and is owed only {owed:?}"
                ));
            }
            if !pending && owed.any() {
                self.fail(&format!(
                    "after the restart {thing} has nothing pending, yet is owed {owed:?}"
                ));
            }
        }
        for (id, c) in &self.model.commands {
            let live = c.status == CommandStatus::Sent && c.deadline > self.now;
            if live != self.outbox.owes_request(id) {
                self.fail(&format!(
                    "after the restart command {id} is {:?} (live: {live}), and its request \
                     owed: {}",
                    c.status, !live
                ));
            }
        }
    }

    /// The read model's record of every execution is what its stream replays to: the fold
    /// the runtime decides on and the aggregate the store holds never drift apart.
    pub fn check_records_match_streams(&self) {
        for job_id in self.model.jobs.keys() {
            for (thing, m) in self.model.proj.executions_of(job_id) {
                let stream = StreamId::job_execution(job_id, thing);
                let (state, version) = self.load::<JobExecution>(&stream);
                let Some(s) = state else {
                    self.fail(&format!("{stream} is folded but not stored"));
                };
                let stored = (
                    s.status,
                    s.execution_number,
                    version.unwrap_or(0),
                    s.queued_at,
                    s.started_at,
                    s.last_updated_at,
                );
                let folded = (
                    m.status,
                    m.execution_number,
                    m.version,
                    m.queued_at,
                    m.started_at,
                    m.last_updated_at,
                );
                if stored != folded {
                    self.fail(&format!(
                        "{stream} folds to {folded:?}, its stream replays to {stored:?}"
                    ));
                }
            }
        }
    }

    /// Every event a device saw accepted is in the store at the version it was given.
    pub fn check_accepted_are_stored(&self) {
        for (stream, version, event) in &self.accepted {
            let stored = self
                .rt
                .block_on(self.store.read_stream(stream, *version, 1))
                .unwrap_or_else(|e| self.fail(&format!("read {stream}: {e}")));
            if stored.first().map(|e| &e.event) != Some(event) {
                self.fail(&format!(
                    "{stream} v{version}: accepted {event:?}, stored {stored:?}"
                ));
            }
        }
    }

    /// The seeded run: the seed's steps, then [`Sim::finish`].
    pub fn run(&mut self) {
        for _ in 0..self.shape.steps {
            let op = self.random_op();
            self.apply(&op);
        }
        self.finish();
    }

    /// No more operators, faults or silence: devices answer, the broker delivers, time moves
    /// on, until every job has ended (or it fails); then every accepted update must be
    /// stored.
    pub fn finish(&mut self) {
        self.note("drain".to_owned());
        for round in 0..400u32 {
            // The operator resumes whatever a gate, a threshold or a colleague paused.
            let paused: Vec<JobId> = self
                .model
                .jobs
                .iter()
                .filter(|(_, e)| e.job.paused.is_some() && !e.job.status.is_terminal())
                .map(|(id, _)| id.clone())
                .collect();
            for job in paused {
                let stream = StreamId::job(&job);
                let _ = self.decide_append::<Job>(&stream, JobIntent::Resume { comment: None });
                self.dirty.insert(job);
            }
            while let Some(job) = self.dirty.pop_first() {
                self.job_step(&job);
            }
            let n = u8::try_from(self.things.len()).unwrap_or(u8::MAX);
            for i in 0..n {
                let choice = u8::try_from((round + u32::from(i)) % 256).unwrap_or(0);
                self.device_acts(i, choice, false);
            }
            while !self.outbox.is_empty() {
                self.publish(64);
            }
            while !self.broker.is_empty() {
                self.deliver(0, false, false);
            }
            self.apply(&Op::Advance { millis: 30_000 });
            let open = self
                .model
                .jobs
                .values()
                .any(|e| !e.job.status.is_terminal());
            if !open && self.broker.is_empty() {
                self.check_accepted_are_stored();
                self.check_records_match_streams();
                return;
            }
        }
        let open: Vec<String> = self
            .model
            .jobs
            .iter()
            .filter(|(_, e)| !e.job.status.is_terminal())
            .map(|(id, e)| format!("{id} {:?} {:?}", e.job.status, self.model.proj.counters(id)))
            .collect();
        self.fail(&format!("jobs never ended: {open:?}"));
    }
}

/// One step of a simulated fleet. The byte fields pick things, jobs and outcomes modulo
/// what exists, so any value is a valid step (which proptest relies on when it shrinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An operator creates a snapshot job on `count` things from `first`.
    CreateJob {
        /// The first target.
        first: u8,
        /// How many targets (modulo the fleet's size, plus one).
        count: u8,
        /// Retries of failed or timed-out executions (0: none).
        retries: u8,
        /// In-progress timeout in minutes (0: none).
        timeout: u8,
        /// Rollout rate per minute (0: unlimited).
        per_minute: u8,
    },
    /// An operator sends a command.
    SendCommand {
        /// The device.
        thing: u8,
        /// Its TTL in seconds, less one.
        ttl_secs: u8,
        /// The sender goes away once the command is stored, before it publishes the
        /// request: the outbox owes it instead.
        sender_gone: bool,
    },
    /// An operator creates a staged and/or windowed snapshot job.
    CreateControlledJob {
        /// The first target.
        first: u8,
        /// How many targets (modulo the fleet's size, plus one).
        count: u8,
        /// Bits: number of stages (0 to 3), gate, error threshold and its action.
        stages: u8,
        /// 0: no window; else bits of its period, duration and offset.
        window: u8,
        /// Retries of failed or timed-out executions (0: none).
        retries: u8,
    },
    /// An operator pauses, resumes or updates a job, or cancels one execution of it.
    Operate {
        /// Which job.
        job: u8,
        /// What (modulo 4): pause, resume, update, cancel an execution.
        action: u8,
        /// The update's values, or the execution's thing, force and expected version.
        arg: u8,
    },
    /// An operator cancels a job.
    CancelJob {
        /// Which job.
        job: u8,
        /// Cancel in-progress executions too.
        force: bool,
    },
    /// A device acts.
    DeviceActs {
        /// The device.
        thing: u8,
        /// The outcome it picks.
        choice: u8,
        /// It stays quiet.
        silent: bool,
    },
    /// The broker delivers a message.
    Deliver {
        /// Which of the next few.
        pick: u8,
        /// Drops it instead.
        drop: bool,
        /// Delivers it again later too.
        duplicate: bool,
    },
    /// The service's outbox task publishes a batch of what is owed.
    Publish {
        /// At most this many (modulo 8, plus one) of each kind.
        batch: u8,
    },
    /// The job driver takes a step.
    JobTick,
    /// Time passes.
    Advance {
        /// How much.
        millis: u16,
    },
    /// The clock jumps.
    Jump {
        /// How far.
        secs: u16,
    },
    /// A device restarts and forgets what it was doing.
    DeviceRestart {
        /// The device.
        thing: u8,
    },
    /// The service saves a snapshot image.
    SaveImage,
    /// The service crashes and restarts.
    CrashService {
        /// From the last image (else from position 1).
        from_image: bool,
    },
}

fn short(what: &str) -> &str {
    what.split(['(', ' ', '{']).next().unwrap_or(what)
}

/// A model image without the deadlines of job streams.
fn without_job_deadlines(bytes: &[u8]) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(list) = v
        .pointer_mut("/proj/deadlines")
        .and_then(serde_json::Value::as_array_mut)
    {
        list.retain(|e| !e.to_string().starts_with("[\"job/"));
    }
    v
}

/// Where two JSON values first differ, for a failure message.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> String {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) if w == v => {}
                    Some(w) => return first_difference(v, w, format!("{at}/{k}")),
                    None => return format!("{at}/{k} only before"),
                }
            }
            format!("{at}: keys only after")
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                if v != w {
                    return first_difference(v, w, format!("{at}/{i}"));
                }
            }
            format!("{at}: equal")
        }
        _ => format!("{at}: before {a}, after {b}"),
    }
}
