//! A deterministic fleet simulator: one thread, one seed, the machine's read model and
//! decisions, the in-memory reference store, simulated devices and a simulated broker that
//! drops, duplicates, delays and reorders device requests. The service crashes and restarts
//! (from a snapshot image or from position 1), devices forget what they were doing, and the
//! clock jumps. After every step the invariants below are checked; a failing seed prints the
//! command that reproduces it.
//!
//! - `cargo test -p fleetops-machine --test simulator` runs `FLEETOPS_SIM_SEEDS` seeds (300
//!   by default) from `FLEETOPS_SIM_BASE` (1);
//! - `FLEETOPS_SIM_SEED=<seed>` runs one seed and prints its trace;
//! - `FLEETOPS_SIM_SEEDS=100000 cargo test --release -p fleetops-machine --test simulator`
//!   runs as many as asked, and reports the simulated executions per second.
//!
//! The simulated service does what `fleetops-service`'s tasks do, through the same machine
//! calls: the fold, the job planning, the deadline scan; the device requests are decided by
//! core's aggregates on the replayed stream, as the service's worker does.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::config::{
    FailureType, JobConfig, RetryCriterion, Rollout, TargetSelection, Targets,
};
use fleetops_core::device::{CommandResponse, StartNextRequest, UpdateRequest};
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::projection::JobCounters;
use fleetops_core::store::{
    AppendBatch, EventStore, ExpectedVersion, NewEvent, StoreError, StoredEvent, StreamAppend,
};
use fleetops_core::{
    Aggregate, CommandStatus, Duration, Event, ExecutionId, JobExecutionStatus, JobId, StreamId,
    ThingName, Timestamp,
};
use fleetops_machine::jobs::{self, JobStep, PlannedAppend};
use fleetops_machine::timers::Timer;
use fleetops_machine::{Effects, ReadModel};
use fleetops_store_memory::MemoryStore;

/// splitmix64: small, fast and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(i)
    }
}

/// A device request on its way through the broker.
#[derive(Debug, Clone)]
enum Request {
    StartNext(ThingName),
    Update {
        thing: ThingName,
        job: JobId,
        status: JobExecutionStatus,
        version: u64,
    },
    Respond {
        thing: ThingName,
        id: ExecutionId,
        status: CommandStatus,
    },
}

/// What a device remembers: the execution it is working on, and commands it was sent.
#[derive(Debug, Default, Clone)]
struct Device {
    current: Option<(JobId, u64)>,
    commands: Vec<ExecutionId>,
}

/// The knobs of one run, drawn from the seed.
#[derive(Debug, Clone)]
struct Shape {
    things: usize,
    steps: usize,
    drop: u64,
    duplicate: u64,
    crash: u64,
    silent: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    rt: tokio::runtime::Runtime,
    store: MemoryStore,
    model: ReadModel,
    now: Timestamp,
    next_id: u128,
    shape: Shape,
    things: Vec<ThingName>,
    devices: HashMap<ThingName, Device>,
    broker: VecDeque<Request>,
    dirty: BTreeSet<JobId>,
    jobs: Vec<JobId>,
    /// A snapshot image and the position it reflects, as the service saves them.
    image: Option<(Vec<u8>, u64)>,
    /// Events a device saw accepted: stream, version, event.
    accepted: Vec<(StreamId, u64, Event)>,
    /// The terminal status first seen for each attempt.
    terminal: HashMap<(JobId, ThingName, u32), JobExecutionStatus>,
    trace: VecDeque<String>,
    step: usize,
    finished_executions: u64,
}

const TRACE: usize = 40;

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
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
            shape,
            things,
            devices,
            broker: VecDeque::new(),
            dirty: BTreeSet::new(),
            jobs: Vec::new(),
            image: None,
            accepted: Vec::new(),
            terminal: HashMap::new(),
            trace: VecDeque::new(),
            step: 0,
            finished_executions: 0,
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
            "seed {} failed at step {}: {why}\n{:?}\nlast steps:\n  {}\nreproduce: \
             FLEETOPS_SIM_SEED={} cargo test -p fleetops-machine --test simulator -- --nocapture",
            self.seed,
            self.step,
            self.shape,
            trace.join("\n  "),
            self.seed
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
        let batch = AppendBatch {
            streams,
            idempotency_key: None,
        };
        match self.rt.block_on(self.store.append(batch)) {
            Ok(_) => {
                self.fold();
                Ok(())
            }
            Err(StoreError::Conflict { stream, .. }) => Err(stream),
            Err(e) => self.fail(&format!("append: {e}")),
        }
    }

    fn decide_append<A: Aggregate>(
        &mut self,
        stream: &StreamId,
        intent: A::Intent,
    ) -> Result<Vec<Event>, String> {
        let (state, version) = self.load::<A>(stream);
        let events = A::decide(state.as_ref(), intent, self.now).map_err(|r| r.to_string())?;
        if events.is_empty() {
            return Ok(events);
        }
        let part = PlannedAppend {
            stream: stream.clone(),
            expected: ExpectedVersion::from_current(version),
            events: events.clone(),
        };
        self.append(vec![part])
            .map_err(|s| format!("conflict on {s}"))?;
        Ok(events)
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
        self.dirty.extend(fx.dirty_jobs);
        for id in fx.commands_sent {
            if let Some(c) = self.model.command(&id) {
                let thing = c.thing.clone();
                if let Some(d) = self.devices.get_mut(&thing) {
                    d.commands.push(id);
                }
            }
        }
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
                let (parts, _) = jobs::decide_queue(&j, things, self.now)
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
                        progressed |= r.is_ok_and(|e| !e.is_empty());
                    }
                    Timer::Execution { job_id, thing } => {
                        let stream = StreamId::job_execution(&job_id, &thing);
                        let r = self.decide_append::<JobExecution>(
                            &stream,
                            JobExecutionIntent::CheckTimeout,
                        );
                        progressed |= r.is_ok_and(|e| !e.is_empty());
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

    fn handle(&mut self, request: Request) {
        match request {
            Request::StartNext(thing) => {
                let Some(job) = self
                    .model
                    .proj
                    .next_pending(&thing)
                    .map(|k| k.job_id.clone())
                else {
                    return;
                };
                let stream = StreamId::job_execution(&job, &thing);
                let StartNextRequest {
                    status_details,
                    step_timeout,
                } = StartNextRequest::default();
                let intent = JobExecutionIntent::Start {
                    status_details,
                    step_timeout,
                };
                match self.decide_append::<JobExecution>(&stream, intent) {
                    Ok(_) => {
                        let (state, _) = self.load::<JobExecution>(&stream);
                        if let Some(s) = state {
                            self.note(format!("{thing} started {job} (v{})", s.version_number));
                            if let Some(d) = self.devices.get_mut(&thing) {
                                d.current = Some((job, s.version_number));
                            }
                        }
                    }
                    Err(why) => self.note(format!("{thing} start-next refused: {why}")),
                }
            }
            Request::Update {
                thing,
                job,
                status,
                version,
            } => {
                let stream = StreamId::job_execution(&job, &thing);
                let intent = JobExecutionIntent::Update(UpdateRequest {
                    status: Some(status),
                    expected_version: Some(version),
                    ..UpdateRequest::default()
                });
                match self.decide_append::<JobExecution>(&stream, intent) {
                    Ok(events) => {
                        self.note(format!("{thing} updated {job} to {status:?}"));
                        let mut v = version;
                        for e in events {
                            v += 1;
                            self.accepted.push((stream.clone(), v, e));
                        }
                    }
                    Err(why) => self.note(format!("{thing} update of {job} refused: {why}")),
                }
            }
            Request::Respond { thing, id, status } => {
                let stream = StreamId::command(&id);
                let intent = CommandIntent::Respond(CommandResponse {
                    status,
                    result: None,
                    status_reason: None,
                });
                if self.model.command(&id).is_none_or(|c| c.thing != thing) {
                    return;
                }
                match self.decide_append::<CommandExecution>(&stream, intent) {
                    Ok(_) => self.note(format!("{thing} answered {id}: {status:?}")),
                    Err(why) => self.note(format!("{thing} answer to {id} refused: {why}")),
                }
            }
        }
    }

    // ---- the world: operators, devices, broker, crashes, the clock ----

    fn create_job(&mut self) {
        let n = self.jobs.len();
        let job_id = JobId::parse(&format!("job-{n}")).expect("a valid id");
        let k = 1 + usize::try_from(self.rng.below(self.things.len() as u64)).unwrap_or(0);
        let skip = usize::try_from(self.rng.below(self.things.len() as u64)).unwrap_or(0);
        let targets: Vec<ThingName> = self
            .things
            .iter()
            .cycle()
            .skip(skip)
            .take(k)
            .cloned()
            .collect();
        let config = JobConfig {
            retry: if self.rng.chance(50) {
                vec![RetryCriterion {
                    failure_type: FailureType::All,
                    number_of_retries: 1 + u32::try_from(self.rng.below(3)).unwrap_or(0),
                }]
            } else {
                Vec::new()
            },
            in_progress_timeout: self
                .rng
                .chance(60)
                .then(|| Duration::from_minutes(1 + self.rng.below(10))),
            rollout: if self.rng.chance(30) {
                Rollout::Fixed {
                    per_minute: 1 + u32::try_from(self.rng.below(5)).unwrap_or(0),
                }
            } else {
                Rollout::default()
            },
            ..JobConfig::default()
        };
        let intent = JobIntent::Create {
            job_id: job_id.clone(),
            description: None,
            targets: Targets {
                things: targets
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
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

    fn send_command(&mut self) {
        let Some(thing) = self.rng.pick(&self.things).cloned() else {
            return;
        };
        self.next_id += 1;
        let id = ExecutionId::parse(&format!("cmd-{}", self.next_id)).expect("a valid id");
        let intent = CommandIntent::Send {
            execution_id: id.clone(),
            thing: thing.clone(),
            command_id: None,
            action: "reboot".to_owned(),
            params: serde_json::json!({}),
            ttl: Duration::from_secs(5 + self.rng.below(60)),
        };
        match self.decide_append::<CommandExecution>(&StreamId::command(&id), intent) {
            Ok(_) => self.note(format!("sent {id} to {thing}")),
            Err(why) => self.fail(&format!("send refused: {why}")),
        }
    }

    fn cancel_job(&mut self) {
        let Some(job) = self.rng.pick(&self.jobs).cloned() else {
            return;
        };
        let force = self.rng.chance(50);
        let intent = JobIntent::Cancel {
            force,
            comment: None,
        };
        match self.decide_append::<Job>(&StreamId::job(&job), intent) {
            Ok(_) => self.note(format!("canceled {job} (force {force})")),
            Err(why) => self.note(format!("cancel {job} refused: {why}")),
        }
    }

    /// A device acts: asks for work, or reports on what it has.
    fn device_acts(&mut self, answer_all: bool) {
        let Some(thing) = self.rng.pick(&self.things).cloned() else {
            return;
        };
        let silent = !answer_all && self.rng.chance(self.shape.silent);
        let device = self.devices.get(&thing).cloned().unwrap_or_default();
        if let Some(id) = device.commands.first().cloned() {
            if let Some(d) = self.devices.get_mut(&thing) {
                d.commands.remove(0);
            }
            if !silent {
                let status = if self.rng.chance(80) {
                    CommandStatus::Succeeded
                } else {
                    CommandStatus::Failed
                };
                self.broker
                    .push_back(Request::Respond { thing, id, status });
            }
            return;
        }
        match device.current {
            Some((job, version)) => {
                if silent {
                    return;
                }
                let status = match self.rng.below(10) {
                    0..=5 => JobExecutionStatus::Succeeded,
                    6..=7 => JobExecutionStatus::Failed,
                    8 => JobExecutionStatus::Rejected,
                    _ => JobExecutionStatus::InProgress,
                };
                if let Some(d) = self.devices.get_mut(&thing) {
                    d.current = (status == JobExecutionStatus::InProgress)
                        .then(|| (job.clone(), version + 1));
                }
                self.broker.push_back(Request::Update {
                    thing,
                    job,
                    status,
                    version,
                });
            }
            None => self.broker.push_back(Request::StartNext(thing)),
        }
    }

    /// The broker delivers one request: maybe another than the oldest, maybe twice, maybe
    /// not at all.
    fn deliver(&mut self, reliable: bool) {
        if self.broker.is_empty() {
            return;
        }
        let i = if reliable {
            0
        } else {
            usize::try_from(self.rng.below(self.broker.len().min(4) as u64)).unwrap_or(0)
        };
        let Some(request) = self.broker.remove(i) else {
            return;
        };
        if !reliable && self.rng.chance(self.shape.drop) {
            self.note(format!("broker dropped {request:?}"));
            return;
        }
        if !reliable && self.rng.chance(self.shape.duplicate) {
            self.broker.push_back(request.clone());
        }
        self.handle(request);
    }

    /// The service crashes: everything in memory is gone; it resumes from the snapshot
    /// image (or position 1) and the feed, then looks at every job again, as the service's
    /// recovery does.
    fn crash_service(&mut self) {
        let before = self.model.encode();
        let mut model = match &self.image {
            Some((bytes, at)) if self.rng.chance(50) => ReadModel::decode(bytes, *at)
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
        self.dirty = self.jobs.iter().cloned().collect();
        for job in self.jobs.clone() {
            self.job_step(&job);
        }
        self.note("service restarted".to_owned());
    }

    fn save_image(&mut self) {
        self.image = Some((self.model.encode(), self.model.checkpoint()));
    }

    // ---- invariants ----

    fn check(&mut self) {
        for (job_id, entry) in &self.model.jobs {
            let folded: JobCounters = entry.executions.values().map(|m| m.status).collect();
            let counters = self.model.proj.counters(job_id);
            if folded != counters {
                self.fail(&format!(
                    "counters of {job_id} are {counters:?}, the executions fold to {folded:?}"
                ));
            }
            for (thing, m) in &entry.executions {
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
        // Every terminal attempt seen before is still terminal (a restart lost nothing).
        for ((job, thing, n), s) in &self.terminal {
            let now = self.model.exec(job, thing);
            let same_attempt = now.is_some_and(|m| m.execution_number == *n);
            if same_attempt
                && now.is_some_and(|m| m.status != *s && m.status != JobExecutionStatus::Removed)
            {
                self.fail(&format!(
                    "{job} on {thing} attempt {n} lost its terminal {s:?}"
                ));
            }
        }
    }

    fn check_accepted_are_stored(&self) {
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

    fn run(&mut self) {
        let steps = self.shape.steps;
        for step in 0..steps {
            self.step = step;
            let roll = self.rng.below(100);
            match roll {
                0..=5 => self.create_job(),
                6..=9 => self.send_command(),
                10 => self.cancel_job(),
                11..=45 => self.device_acts(false),
                46..=75 => self.deliver(false),
                76..=85 => {
                    if let Some(job) = self.dirty.pop_first() {
                        self.job_step(&job);
                    }
                }
                86..=93 => self.now = self.now + Duration::from_millis(self.rng.below(3_000)),
                94 => {
                    let jump = Duration::from_secs(60 + self.rng.below(900));
                    self.note(format!("clock jumps {jump:?}"));
                    self.now = self.now + jump;
                }
                95..=96 => {
                    if let Some(t) = self.rng.pick(&self.things).cloned() {
                        self.note(format!("{t} restarts and forgets"));
                        self.devices.insert(t, Device::default());
                    }
                }
                97 => self.save_image(),
                _ => {
                    if self.rng.chance(self.shape.crash * 25) {
                        self.crash_service();
                    }
                }
            }
            self.timers();
            self.check();
        }
        self.drain();
        self.check_accepted_are_stored();
    }

    /// No more operators, faults or silence: devices answer, the broker delivers, time moves
    /// on; then every job must have ended.
    fn drain(&mut self) {
        self.note("drain".to_owned());
        for round in 0..2_000 {
            self.step = self.shape.steps + round;
            while let Some(job) = self.dirty.pop_first() {
                self.job_step(&job);
            }
            for _ in 0..self.things.len() {
                self.device_acts(true);
            }
            while !self.broker.is_empty() {
                self.deliver(true);
            }
            self.now = self.now + Duration::from_secs(30);
            self.timers();
            self.check();
            let open = self
                .model
                .jobs
                .values()
                .any(|e| !e.job.status.is_terminal());
            if !open && self.broker.is_empty() {
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

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_fleets_keep_every_invariant() {
    if let Some(seed) = env_u64("FLEETOPS_SIM_SEED") {
        let mut sim = Sim::new(seed);
        sim.run();
        println!(
            "seed {seed}: {:?}\n  {}",
            sim.shape,
            sim.trace.iter().cloned().collect::<Vec<_>>().join("\n  ")
        );
        return;
    }
    let base = env_u64("FLEETOPS_SIM_BASE").unwrap_or(1);
    let seeds = env_u64("FLEETOPS_SIM_SEEDS").unwrap_or(300);
    let started = Instant::now();
    let mut executions = 0;
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for seed in base..base + seeds {
        let mut sim = Sim::new(seed);
        sim.run();
        executions += sim.finished_executions;
        for s in sim.terminal.values() {
            *by_status.entry(format!("{s:?}")).or_default() += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds, {executions} executions finished ({by_status:?}) in {secs:.1} s: {:.0} \
         executions/s",
        executions as f64 / secs
    );
    // A simulator whose devices never finish anything checks nothing.
    for status in ["Succeeded", "Failed", "Rejected", "TimedOut", "Canceled"] {
        assert!(
            by_status.get(status).copied().unwrap_or(0) > 0,
            "no execution ended {status} in {seeds} seeds: {by_status:?}"
        );
    }
}
