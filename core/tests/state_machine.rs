//! State-machine property tests of the two execution aggregates.
//!
//! Each case generates a sequence of steps — device messages (job execution updates with any
//! status, details, `expectedVersion`, `executionNumber` and step timeout; start-next; command
//! responses of every status), service intents (queue/send, cancel ± force, remove ± force,
//! retry, timer checks), clock ticks, re-deliveries of earlier device messages, delivery of
//! held-back older messages, and restarts — and runs them against the real aggregate and the
//! public reference model (`fleetops_core::testkit::model`) side by side. Every operation is
//! one `Op`: the model answers it through `Model::step`, the aggregate decides its
//! `Op::to_intent`, exactly as an embedder checks its own service. After every step it checks:
//!
//! - the model and the aggregate agree on refuse (with the same code) / no-op / new status, and
//!   on every field the model tracks (versions, attempt, details, deadlines, timestamps, the
//!   timers due);
//! - a refusal or a no-op leaves the model exactly as it was;
//! - every emitted event evolves, and bumps the version by exactly one; a refusal or an empty
//!   decision leaves the version alone;
//! - no terminal status is left, except to REMOVED by deletion and to QUEUED by a retry;
//! - replaying the stored events (after a JSON round trip, as a store keeps them) gives the
//!   live state exactly;
//! - a refusal that carries an `executionState` carries the current one;
//! - a device message re-delivered right after its first delivery never changes the status,
//!   and one that changed the state and named its `expectedVersion` is refused when repeated.
//!
//! A third property drives a small fleet (several job executions and commands) through the
//! step API alone, as an embedder would drive its service, and checks that the model and the
//! aggregates agree on every answer, every execution's state and the timers due.
//!
//! `PROPTEST_CASES` overrides the case count. Failures are saved under
//! `core/proptest-regressions/` and replayed first on every later run.

use std::collections::BTreeMap;

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::event::TimeoutCause;
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::limits::MAX_COMMAND_PARAMS_BYTES;
use fleetops_core::testkit::model::{
    terminal_exit_allowed, CommandOp, Details, Expect, Intent, JobOp, Model, NewCommand, Op,
    Response, Step, Update,
};
use fleetops_core::{
    Aggregate, CommandStatus as C, Duration, Event, ExecutionId, JobExecutionStatus as S, JobId,
    ThingName, Timestamp,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};
use serde_json::json;

/// A fixed start of time, so failures replay exactly.
const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// The case count: `PROPTEST_CASES` if set, else `default`. Failures persist under
/// `core/proptest-regressions/` (cargo runs tests from the package root).
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/state_machine.txt",
        ))),
        ..Config::default()
    }
}

// ---- shared generators -------------------------------------------------------------------------

/// How a generated message names a version or attempt number; resolved against the state the
/// device saw when it sent the message.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Absent,
    Right,
    Wrong { delta: u64, above: bool },
}

impl Pick {
    fn resolve(self, current: u64) -> Option<u64> {
        match self {
            Pick::Absent => None,
            Pick::Right => Some(current),
            Pick::Wrong { delta, above } => Some(if above || current < delta {
                current + delta
            } else {
                current - delta
            }),
        }
    }
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => Just(Pick::Absent),
        3 => Just(Pick::Right),
        1 => (1u64..3, any::<bool>()).prop_map(|(delta, above)| Pick::Wrong { delta, above }),
    ]
}

/// Clock advances: mostly short, sometimes far past any deadline.
fn tick() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => (0u64..5_000).prop_map(Duration::from_millis),
        3 => (0u64..20 * 60_000).prop_map(Duration::from_millis),
        1 => (0u64..3 * 3_600_000).prop_map(Duration::from_millis),
        1 => (0u64..8 * 86_400_000).prop_map(Duration::from_millis),
    ]
}

/// Moves the clock to just before, exactly at, or just after the earliest pending deadline,
/// so the `<=` / `<` boundaries of timers and late answers are hit exactly.
fn deadline_offset() -> impl Strategy<Value = i8> {
    prop::sample::select(vec![-1i8, 0, 1])
}

/// `now` moved to `deadline + offset` milliseconds, never backwards.
fn to_deadline(now: Timestamp, deadline: Option<Timestamp>, offset: i8) -> Timestamp {
    let Some(d) = deadline else { return now };
    let target = match offset {
        -1 => Timestamp::from_millis(d.as_millis().saturating_sub(1)),
        0 => d,
        _ => d + Duration::from_millis(1),
    };
    now.max(target)
}

fn step_timeout() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => Just(Step::Keep),
        1 => Just(Step::Clear),
        3 => (1u64..=30).prop_map(Step::Minutes),
        1 => Just(Step::Minutes(10_080)),
        // Out of range: zero, one past seven days, absurd.
        1 => prop::sample::select(vec![0, 10_081, u64::MAX]).prop_map(Step::Minutes),
    ]
}

fn detail_key(k: &str) -> StatusDetailKey {
    StatusDetailKey::parse(k).expect("generated keys are valid")
}

/// `n` entries `k0`, `k1`, … of `len` characters each, the last one `extra` longer.
fn big_details(n: usize, len: usize, extra: usize) -> Details {
    (0..n)
        .map(|i| {
            let len = if i + 1 == n { len + extra } else { len };
            (detail_key(&format!("k{i}")), "x".repeat(len))
        })
        .collect()
}

fn details() -> impl Strategy<Value = Option<Details>> {
    let key = prop::sample::select(vec!["progress", "step", "note:1"]).prop_map(detail_key);
    let value = prop_oneof![
        8 => prop::sample::select(vec!["", "1", "50%", "done"]).prop_map(str::to_owned),
        // 1,024 characters but 2,048 bytes: the limit counts characters.
        1 => Just("é".repeat(1024)),
        1 => Just("x".repeat(1025)),
    ];
    prop_oneof![
        4 => Just(None),
        6 => prop::collection::btree_map(key, value, 0..3).prop_map(Some),
        // Either side of the entry limit (32) and of the size limit (8 entries of 2 + 1,022
        // bytes are exactly 8,192).
        1 => prop::sample::select(vec![(32, 1, 0), (33, 1, 0), (8, 1022, 0), (8, 1022, 1)])
            .prop_map(|(n, len, extra)| Some(big_details(n, len, extra))),
    ]
}

fn json_roundtrip(log: &[Event]) -> Vec<Event> {
    log.iter()
        .map(|e| {
            let text = serde_json::to_string(e).expect("events encode");
            serde_json::from_str(&text).expect("stored events decode")
        })
        .collect()
}

// ---- job execution -----------------------------------------------------------------------------

/// A device job message as generated (numbers not yet resolved).
#[derive(Debug, Clone)]
enum JobMsgGen {
    Update {
        status: Option<S>,
        details: Option<Details>,
        expected_version: Pick,
        execution_number: Pick,
        step: Step,
    },
    StartNext {
        details: Option<Details>,
        step: Step,
    },
}

#[derive(Debug, Clone)]
enum ExecStep {
    Queue {
        timeout: Option<Duration>,
    },
    /// The device sends a message and it arrives now.
    Deliver(JobMsgGen),
    /// The device sends a message that the network holds back.
    Hold(JobMsgGen),
    /// A held-back message arrives, after whatever happened since it was sent.
    ReleaseHeld(Index),
    /// An earlier message arrives again (at-least-once delivery).
    Duplicate(Index),
    CheckTimeout,
    Cancel {
        force: bool,
    },
    Remove {
        force: bool,
    },
    Retry,
    /// A device reports FAILED for the current attempt, and the retry policy queues the next
    /// one: how a flaky device climbs to the attempt limit.
    FailThenRetry,
    Tick(Duration),
    /// The clock moves to the earliest pending deadline, offset by -1, 0 or +1 ms.
    TickToDeadline(i8),
    Restart,
}

fn job_status() -> impl Strategy<Value = Option<S>> {
    prop_oneof![
        6 => Just(Some(S::InProgress)),
        1 => Just(Some(S::Succeeded)),
        2 => Just(Some(S::Failed)),
        1 => Just(Some(S::Rejected)),
        // Statuses a device may never set.
        1 => prop::sample::select(vec![S::Queued, S::TimedOut, S::Canceled, S::Removed])
            .prop_map(Some),
        1 => Just(None),
    ]
}

fn job_msg() -> impl Strategy<Value = JobMsgGen> {
    prop_oneof![
        4 => (job_status(), details(), pick(), pick(), step_timeout()).prop_map(
            |(status, details, expected_version, execution_number, step)| JobMsgGen::Update {
                status,
                details,
                expected_version,
                execution_number,
                step,
            }
        ),
        1 => (details(), step_timeout())
            .prop_map(|(details, step)| JobMsgGen::StartNext { details, step }),
    ]
}

fn in_progress_timeout() -> impl Strategy<Value = Option<Duration>> {
    prop_oneof![
        1 => Just(None),
        3 => (1u64..=60).prop_map(|m| Some(Duration::from_minutes(m))),
    ]
}

fn exec_step(flaky: u32) -> impl Strategy<Value = ExecStep> {
    prop_oneof![
        // Cancel and remove end most runs for good, so they are rare and mostly unforced.
        1 => in_progress_timeout().prop_map(|timeout| ExecStep::Queue { timeout }),
        16 => job_msg().prop_map(ExecStep::Deliver),
        3 => job_msg().prop_map(ExecStep::Hold),
        3 => any::<Index>().prop_map(ExecStep::ReleaseHeld),
        5 => any::<Index>().prop_map(ExecStep::Duplicate),
        5 => Just(ExecStep::CheckTimeout),
        1 => prop::bool::weighted(0.3).prop_map(|force| ExecStep::Cancel { force }),
        1 => prop::bool::weighted(0.3).prop_map(|force| ExecStep::Remove { force }),
        6 => Just(ExecStep::Retry),
        flaky => Just(ExecStep::FailThenRetry),
        6 => tick().prop_map(ExecStep::Tick),
        3 => deadline_offset().prop_map(ExecStep::TickToDeadline),
        1 => Just(ExecStep::Restart),
    ]
}

/// Most runs queue the execution first; some start from nothing to check unknown executions.
/// One run in eight follows a flaky device that fails attempt after attempt, to reach the
/// attempt limit.
fn exec_steps() -> impl Strategy<Value = Vec<ExecStep>> {
    let steps = prop_oneof![
        7 => prop::collection::vec(exec_step(1), 1..80),
        1 => prop::collection::vec(exec_step(30), 1..80),
    ];
    (prop::option::weighted(0.9, in_progress_timeout()), steps).prop_map(|(first, mut steps)| {
        if let Some(timeout) = first {
            steps.insert(0, ExecStep::Queue { timeout });
        }
        steps
    })
}

/// A delivered device message, remembered for re-delivery.
#[derive(Debug)]
struct Delivered<M> {
    msg: M,
    /// Whether its first delivery stored an event.
    changed: bool,
    /// The number of stored events right after its first delivery.
    log_len_after: usize,
}

/// Which kind of intent a step ran, for the terminal-exit rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Device,
    Remove,
    Retry,
    Other,
}

struct ExecRun {
    now: Timestamp,
    state: Option<JobExecution>,
    model: Model,
    log: Vec<Event>,
    delivered: Vec<Delivered<JobOp>>,
    held: Vec<JobOp>,
}

impl ExecRun {
    fn new() -> Self {
        Self {
            now: T0,
            state: None,
            model: Model::new(),
            log: Vec::new(),
            delivered: Vec::new(),
            held: Vec::new(),
        }
    }

    fn job() -> JobId {
        JobId::parse("job-1").expect("valid")
    }

    fn thing() -> ThingName {
        ThingName::parse("thing-1").expect("valid")
    }

    /// Fixes the numbers of a generated message against what the device last saw.
    fn resolve(&self, g: &JobMsgGen) -> JobOp {
        let (version, attempt) = self
            .model
            .job_execution(&Self::job(), &Self::thing())
            .map_or((0, 0), |m| (m.version, u64::from(m.execution_number)));
        match g {
            JobMsgGen::Update {
                status,
                details,
                expected_version,
                execution_number,
                step,
            } => JobOp::Update(Update {
                status: *status,
                details: details.clone(),
                expected_version: expected_version.resolve(version),
                execution_number: execution_number
                    .resolve(attempt)
                    .map(|n| u32::try_from(n).expect("small")),
                step: *step,
            }),
            JobMsgGen::StartNext { details, step } => JobOp::StartNext {
                details: details.clone(),
                step: *step,
            },
        }
    }

    /// Runs `op` through the model's step API and the aggregate, checks they agree, and
    /// returns what the model expected.
    fn apply(&mut self, op: JobOp) -> Result<Expect, TestCaseError> {
        let kind = match op {
            JobOp::Update(_) | JobOp::StartNext { .. } => Kind::Device,
            JobOp::Remove { .. } => Kind::Remove,
            JobOp::Retry => Kind::Retry,
            JobOp::Queue { .. } | JobOp::CheckTimeout | JobOp::Cancel { .. } => Kind::Other,
        };
        let op = Op::job(Self::job(), Self::thing(), op);
        prop_assert_eq!(op.is_device(), kind == Kind::Device);
        let model_before = self.model.clone();
        let expect = self.model.step(&op, self.now);
        if !matches!(expect, Expect::Job(_)) {
            prop_assert_eq!(&self.model, &model_before, "{:?} changed the model", expect);
        }
        let Intent::Job { job, thing, intent } = op.to_intent() else {
            return Err(TestCaseError::fail(format!("{op:?} is not a job intent")));
        };
        prop_assert_eq!((job, thing), (Self::job(), Self::thing()));
        self.decide(intent, expect, kind)?;
        Ok(expect)
    }

    fn deliver(&mut self, msg: JobOp) -> Result<(), TestCaseError> {
        let before = self.log.len();
        self.apply(msg.clone())?;
        self.delivered.push(Delivered {
            msg,
            changed: self.log.len() > before,
            log_len_after: self.log.len(),
        });
        Ok(())
    }

    fn step(&mut self, step: &ExecStep) -> Result<(), TestCaseError> {
        match step {
            ExecStep::Queue { timeout } => self
                .apply(JobOp::Queue {
                    in_progress_timeout: *timeout,
                })
                .map(drop),
            ExecStep::Deliver(g) => {
                let msg = self.resolve(g);
                self.deliver(msg)
            }
            ExecStep::Hold(g) => {
                let msg = self.resolve(g);
                self.held.push(msg);
                Ok(())
            }
            ExecStep::ReleaseHeld(i) => {
                if self.held.is_empty() {
                    return Ok(());
                }
                let msg = self.held.remove(i.index(self.held.len()));
                self.deliver(msg)
            }
            ExecStep::Duplicate(i) => {
                if self.delivered.is_empty() {
                    return Ok(());
                }
                let d = i.get(&self.delivered);
                let msg = d.msg.clone();
                let right_after = d.log_len_after == self.log.len();
                let versioned_change =
                    d.changed && matches!(&msg, JobOp::Update(u) if u.expected_version.is_some());
                let status_before = self.state.as_ref().map(|s| s.status);
                let expect = self.apply(msg.clone())?;
                if right_after {
                    prop_assert_eq!(
                        self.state.as_ref().map(|s| s.status),
                        status_before,
                        "an immediate re-delivery of {:?} changed the status",
                        msg
                    );
                }
                if versioned_change {
                    prop_assert!(
                        matches!(expect, Expect::Refused(_)),
                        "a repeated update that names its expectedVersion applied twice: {:?}",
                        msg
                    );
                }
                Ok(())
            }
            ExecStep::CheckTimeout => self.apply(JobOp::CheckTimeout).map(drop),
            ExecStep::Cancel { force } => self.apply(JobOp::Cancel { force: *force }).map(drop),
            ExecStep::Remove { force } => self.apply(JobOp::Remove { force: *force }).map(drop),
            ExecStep::Retry => self.apply(JobOp::Retry).map(drop),
            ExecStep::FailThenRetry => {
                self.deliver(JobOp::Update(Update::new(S::Failed)))?;
                self.apply(JobOp::Retry).map(drop)
            }
            ExecStep::Tick(dt) => {
                self.now = self.now + *dt;
                Ok(())
            }
            ExecStep::TickToDeadline(offset) => {
                let next = self.state.as_ref().and_then(JobExecution::next_deadline);
                self.now = to_deadline(self.now, next, *offset);
                Ok(())
            }
            ExecStep::Restart => {
                let rebuilt = JobExecution::replay(&json_roundtrip(&self.log))
                    .map_err(|e| TestCaseError::fail(format!("stored history is corrupt: {e}")))?;
                prop_assert_eq!(&rebuilt, &self.state, "restart lost or changed state");
                self.state = rebuilt;
                Ok(())
            }
        }
    }

    /// Decides `intent` on the aggregate, compares with the model's `expect`, applies the
    /// events, then checks every invariant.
    fn decide(
        &mut self,
        intent: JobExecutionIntent,
        expect: Expect,
        kind: Kind,
    ) -> Result<(), TestCaseError> {
        let before = self.state.clone();
        let outcome = JobExecution::decide(before.as_ref(), intent.clone(), self.now);
        // The runtime's path must agree with decide + evolve.
        let executed = JobExecution::execute(before.clone(), intent.clone(), self.now);
        match (&outcome, &executed) {
            (Ok(a), Ok((_, b))) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "decide {:?} but execute {:?}", outcome, executed),
        }
        match (expect, outcome) {
            (Expect::Refused(code), Err(r)) => {
                prop_assert_eq!(r.code(), code, "wrong refusal for {:?}: {:?}", intent, r);
                if let (Some(echoed), Some(s)) = (r.execution_state(), &before) {
                    prop_assert_eq!(echoed, &s.state(), "refusal echoes a stale state");
                }
            }
            (Expect::Unchanged, Ok(events)) if events.is_empty() => {}
            (Expect::Job(status), Ok(events)) if events.len() == 1 => {
                let mut state = before.clone();
                for e in &events {
                    let version = state.as_ref().map_or(0, |s| s.version_number);
                    let next = JobExecution::evolve(state, e).map_err(|err| {
                        TestCaseError::fail(format!("emitted {e:?} does not evolve: {err}"))
                    })?;
                    prop_assert_eq!(next.version_number, version + 1, "version after {:?}", e);
                    state = Some(next);
                }
                let status_now = state.as_ref().map(|s| s.status);
                prop_assert_eq!(status_now, Some(status), "status after {:?}", intent);
                if let (Some(Event::ExecutionTimedOut { cause, .. }), Some(b)) =
                    (events.first(), &before)
                {
                    // The timer named as the cause must be one that has expired.
                    let deadline = match cause {
                        TimeoutCause::InProgress => b.in_progress_deadline,
                        TimeoutCause::Step => b.step_deadline,
                    };
                    prop_assert!(
                        deadline.is_some_and(|d| d <= self.now),
                        "timed out by {:?} whose deadline {:?} is not due at {:?}",
                        cause,
                        deadline,
                        self.now
                    );
                }
                self.log.extend(events);
                self.state = state;
            }
            (expect, outcome) => {
                prop_assert!(
                    false,
                    "model expects {:?} for {:?} at {:?}, aggregate decided {:?}",
                    expect,
                    intent,
                    before.as_ref().map(|s| s.status),
                    outcome
                );
            }
        }
        self.check(before.as_ref(), kind)
    }

    fn check(&self, before: Option<&JobExecution>, kind: Kind) -> Result<(), TestCaseError> {
        if let (Some(b), Some(a)) = (before, &self.state) {
            prop_assert!(
                terminal_exit_allowed(
                    b.status,
                    a.status,
                    kind == Kind::Remove,
                    kind == Kind::Retry
                ),
                "left terminal {:?} for {:?} by a {:?} intent",
                b.status,
                a.status,
                kind
            );
            prop_assert!(a.version_number >= b.version_number);
            prop_assert!(a.execution_number >= b.execution_number);
        }
        let (job, thing) = (Self::job(), Self::thing());
        let model = self.model.job_execution(&job, &thing);
        prop_assert_eq!(self.state.is_some(), model.is_some());
        prop_assert_eq!(
            self.model.job_executions().count(),
            usize::from(model.is_some())
        );
        if let (Some(s), Some(m)) = (&self.state, model) {
            prop_assert_eq!(Some(s.status), self.model.job_status(&job, &thing));
            prop_assert_eq!(Some(s.version_number), self.model.job_version(&job, &thing));
            // One event per version: the version counts the stored history.
            prop_assert_eq!(s.version_number, self.log.len() as u64);
            prop_assert_eq!(
                Some(s.execution_number),
                self.model.job_attempt(&job, &thing)
            );
            prop_assert_eq!(
                Some(&s.status_details),
                self.model.job_details(&job, &thing)
            );
            prop_assert_eq!(s.queued_at, m.queued_at);
            prop_assert_eq!(s.started_at, m.started_at);
            prop_assert_eq!(s.last_updated_at, m.last_updated_at);
            prop_assert_eq!(s.in_progress_timeout, m.in_progress_timeout);
            prop_assert_eq!(s.in_progress_deadline, m.in_progress_deadline);
            prop_assert_eq!(s.step_deadline, m.step_deadline);
            if let (Some(step), Some(bound)) = (s.step_deadline, s.in_progress_deadline) {
                prop_assert!(step <= bound, "step timer outlives the in-progress bound");
            }
            let earliest = [m.in_progress_deadline, m.step_deadline]
                .into_iter()
                .flatten()
                .min()
                .filter(|_| m.status == S::InProgress);
            prop_assert_eq!(s.next_deadline(), earliest);
            prop_assert_eq!(self.model.next_deadline(), earliest);
            // The model's timer list names this execution exactly when its deadline is due.
            let due = earliest.is_some_and(|d| d <= self.now);
            let timers = self.model.timers_due(self.now);
            prop_assert_eq!(
                timers,
                if due {
                    vec![Op::job(job, thing, JobOp::CheckTimeout)]
                } else {
                    vec![]
                }
            );
        }
        let replayed = JobExecution::replay(&self.log)
            .map_err(|e| TestCaseError::fail(format!("stored history does not replay: {e}")))?;
        prop_assert_eq!(&replayed, &self.state, "replay differs from the live state");
        Ok(())
    }
}

// ---- command execution -------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum CmdStep {
    Send(NewCommand),
    Deliver(Response),
    Hold(Response),
    ReleaseHeld(Index),
    Duplicate(Index),
    CheckTimeout,
    Cancel(Option<String>),
    Tick(Duration),
    /// The clock moves to the TTL deadline, offset by -1, 0 or +1 ms.
    TickToDeadline(i8),
    Restart,
}

fn ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        6 => (1_000u64..=120_000).prop_map(Duration::from_millis),
        1 => Just(Duration::from_secs(86_400)),
        // Out of range: under a second, over a day.
        1 => prop::sample::select(vec![0, 999, 86_400_001]).prop_map(Duration::from_millis),
    ]
}

/// Either side of the action limit (128 characters), in one-byte and two-byte characters.
fn action() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![0usize, 1, 8, 128, 129]),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(n, wide)| if wide { "é" } else { "a" }.repeat(n))
}

fn command_id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(None),
        2 => Just(Some("tpl_1-a".to_owned())),
        // Empty, outside the alphabet, 64 and 65 characters.
        1 => prop::sample::select(vec![
            String::new(),
            "bad id".to_owned(),
            "x".repeat(64),
            "x".repeat(65),
        ])
        .prop_map(Some),
    ]
}

/// Params either side of the size limit: a JSON string of `n` characters is `n + 2` bytes.
fn params() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        6 => Just(json!({"level": 3})),
        1 => prop::sample::select(vec![MAX_COMMAND_PARAMS_BYTES - 2, MAX_COMMAND_PARAMS_BYTES - 1])
            .prop_map(|n| json!("p".repeat(n))),
    ]
}

fn new_command(ttl: Duration, action: String, command_id: Option<String>) -> NewCommand {
    NewCommand {
        command_id,
        ..NewCommand::new(CmdRun::thing(), action, ttl)
    }
}

fn send() -> impl Strategy<Value = NewCommand> {
    (ttl(), action(), command_id(), params()).prop_map(|(ttl, action, command_id, params)| {
        NewCommand {
            params,
            ..new_command(ttl, action, command_id)
        }
    })
}

/// A cancel reason either side of its limit (1,024 characters, counted as characters).
fn cancel_reason() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        4 => Just(Some("operator".to_owned())),
        1 => Just(Some("é".repeat(1024))),
        1 => Just(Some("r".repeat(1025))),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let status = prop_oneof![
        3 => Just(C::Succeeded),
        2 => Just(C::Failed),
        1 => Just(C::Rejected),
        // Statuses a device may never answer with.
        1 => prop::sample::select(vec![C::Sent, C::TimedOut, C::Canceled]),
    ];
    let result = prop_oneof![Just(None), Just(Some(json!({"ok": true})))];
    let reason = prop_oneof![
        3 => Just(None),
        2 => Just(Some("because".to_owned())),
        1 => Just(Some("r".repeat(1024))),
        1 => Just(Some("r".repeat(1025))),
        // 1,024 characters but 2,048 bytes: the limit counts characters.
        1 => Just(Some("é".repeat(1024))),
    ];
    (status, result, reason).prop_map(|(status, result, reason)| Response {
        status,
        result,
        reason,
    })
}

fn cmd_step() -> impl Strategy<Value = CmdStep> {
    prop_oneof![
        1 => send().prop_map(CmdStep::Send),
        4 => response().prop_map(CmdStep::Deliver),
        1 => response().prop_map(CmdStep::Hold),
        1 => any::<Index>().prop_map(CmdStep::ReleaseHeld),
        2 => any::<Index>().prop_map(CmdStep::Duplicate),
        2 => Just(CmdStep::CheckTimeout),
        1 => cancel_reason().prop_map(CmdStep::Cancel),
        3 => tick().prop_map(CmdStep::Tick),
        2 => deadline_offset().prop_map(CmdStep::TickToDeadline),
        1 => Just(CmdStep::Restart),
    ]
}

fn cmd_steps() -> impl Strategy<Value = Vec<CmdStep>> {
    (
        prop::option::weighted(0.9, ttl()),
        prop::collection::vec(cmd_step(), 1..40),
    )
        .prop_map(|(first, mut steps)| {
            if let Some(ttl) = first {
                steps.insert(0, CmdStep::Send(new_command(ttl, "a".repeat(8), None)));
            }
            steps
        })
}

struct CmdRun {
    now: Timestamp,
    state: Option<CommandExecution>,
    model: Model,
    log: Vec<Event>,
    delivered: Vec<Delivered<Response>>,
    held: Vec<Response>,
}

impl CmdRun {
    fn new() -> Self {
        Self {
            now: T0,
            state: None,
            model: Model::new(),
            log: Vec::new(),
            delivered: Vec::new(),
            held: Vec::new(),
        }
    }

    fn id() -> ExecutionId {
        ExecutionId::parse("cmd-1").expect("valid")
    }

    fn thing() -> ThingName {
        ThingName::parse("thing-1").expect("valid")
    }

    /// Runs `op` through the model's step API and the aggregate, checks they agree, and
    /// returns what the model expected.
    fn apply(&mut self, op: CommandOp) -> Result<Expect, TestCaseError> {
        let op = Op::command(Self::id(), op);
        let model_before = self.model.clone();
        let expect = self.model.step(&op, self.now);
        if !matches!(expect, Expect::Command(_)) {
            prop_assert_eq!(&self.model, &model_before, "{:?} changed the model", expect);
        }
        let Intent::Command { id, intent } = op.to_intent() else {
            return Err(TestCaseError::fail(format!(
                "{op:?} is not a command intent"
            )));
        };
        prop_assert_eq!(id, Self::id());
        self.decide(intent, expect)?;
        Ok(expect)
    }

    fn deliver(&mut self, r: Response) -> Result<(), TestCaseError> {
        let before = self.log.len();
        self.apply(CommandOp::Respond(r.clone()))?;
        self.delivered.push(Delivered {
            msg: r,
            changed: self.log.len() > before,
            log_len_after: self.log.len(),
        });
        Ok(())
    }

    fn step(&mut self, step: &CmdStep) -> Result<(), TestCaseError> {
        match step {
            CmdStep::Send(cmd) => self.apply(CommandOp::Send(cmd.clone())).map(drop),
            CmdStep::Deliver(r) => self.deliver(r.clone()),
            CmdStep::Hold(r) => {
                self.held.push(r.clone());
                Ok(())
            }
            CmdStep::ReleaseHeld(i) => {
                if self.held.is_empty() {
                    return Ok(());
                }
                let r = self.held.remove(i.index(self.held.len()));
                self.deliver(r)
            }
            CmdStep::Duplicate(i) => {
                if self.delivered.is_empty() {
                    return Ok(());
                }
                let d = i.get(&self.delivered);
                let (r, changed) = (d.msg.clone(), d.changed);
                let expect = self.apply(CommandOp::Respond(r.clone()))?;
                // A command is answered once: a repeated answer never lands again.
                prop_assert!(
                    !changed || matches!(expect, Expect::Refused(_)),
                    "a repeated response applied twice: {:?}",
                    r
                );
                Ok(())
            }
            CmdStep::CheckTimeout => self.apply(CommandOp::CheckTimeout).map(drop),
            CmdStep::Cancel(reason) => self
                .apply(CommandOp::Cancel {
                    reason: reason.clone(),
                })
                .map(drop),
            CmdStep::Tick(dt) => {
                self.now = self.now + *dt;
                Ok(())
            }
            CmdStep::TickToDeadline(offset) => {
                let deadline = self.state.as_ref().map(|s| s.deadline);
                self.now = to_deadline(self.now, deadline, *offset);
                Ok(())
            }
            CmdStep::Restart => {
                let rebuilt = CommandExecution::replay(&json_roundtrip(&self.log))
                    .map_err(|e| TestCaseError::fail(format!("stored history is corrupt: {e}")))?;
                prop_assert_eq!(&rebuilt, &self.state, "restart lost or changed state");
                self.state = rebuilt;
                Ok(())
            }
        }
    }

    fn decide(&mut self, intent: CommandIntent, expect: Expect) -> Result<(), TestCaseError> {
        let before = self.state.clone();
        let outcome = CommandExecution::decide(before.as_ref(), intent.clone(), self.now);
        let executed = CommandExecution::execute(before.clone(), intent.clone(), self.now);
        match (&outcome, &executed) {
            (Ok(a), Ok((_, b))) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "decide {:?} but execute {:?}", outcome, executed),
        }
        match (expect, outcome) {
            (Expect::Refused(code), Err(r)) => {
                prop_assert_eq!(r.code(), code, "wrong refusal for {:?}: {:?}", intent, r);
            }
            (Expect::Unchanged, Ok(events)) if events.is_empty() => {}
            (Expect::Command(status), Ok(events)) if events.len() == 1 => {
                let mut state = before.clone();
                for e in &events {
                    let version = state.as_ref().map_or(0, |s| s.version);
                    let next = CommandExecution::evolve(state, e).map_err(|err| {
                        TestCaseError::fail(format!("emitted {e:?} does not evolve: {err}"))
                    })?;
                    prop_assert_eq!(next.version, version + 1, "version after {:?}", e);
                    state = Some(next);
                }
                prop_assert_eq!(state.as_ref().map(|s| s.status), Some(status));
                self.log.extend(events);
                self.state = state;
            }
            (expect, outcome) => {
                prop_assert!(
                    false,
                    "model expects {:?} for {:?} at {:?}, aggregate decided {:?}",
                    expect,
                    intent,
                    before.as_ref().map(|s| s.status),
                    outcome
                );
            }
        }
        if let (Some(b), Some(a)) = (&before, &self.state) {
            // Every command status but SENT is final.
            prop_assert!(
                b.status == C::Sent || a.status == b.status,
                "left terminal {:?} for {:?}",
                b.status,
                a.status
            );
            prop_assert!(a.version >= b.version);
        }
        let id = Self::id();
        let model = self.model.command(&id);
        prop_assert_eq!(self.state.is_some(), model.is_some());
        prop_assert_eq!(self.model.commands().count(), usize::from(model.is_some()));
        if let (Some(s), Some(m)) = (&self.state, model) {
            prop_assert_eq!(Some(s.status), self.model.command_status(&id));
            prop_assert_eq!(Some(s.version), self.model.command_version(&id));
            prop_assert_eq!(s.version, self.log.len() as u64);
            prop_assert_eq!(s.deadline, m.deadline);
            prop_assert_eq!(s.completed_at, m.completed_at);
            prop_assert_eq!(s.status_reason.as_deref(), self.model.command_reason(&id));
            let pending = (s.status == C::Sent).then_some(s.deadline);
            prop_assert_eq!(self.model.next_deadline(), pending);
            let due = pending.is_some_and(|d| d <= self.now);
            prop_assert_eq!(
                self.model.timers_due(self.now),
                if due {
                    vec![Op::command(id, CommandOp::CheckTimeout)]
                } else {
                    vec![]
                }
            );
        }
        let replayed = CommandExecution::replay(&self.log)
            .map_err(|e| TestCaseError::fail(format!("stored history does not replay: {e}")))?;
        prop_assert_eq!(&replayed, &self.state, "replay differs from the live state");
        Ok(())
    }
}

// ---- a fleet, through the step API alone --------------------------------------------------------

/// One generated fleet step: an operation on one of a few executions, or the clock moving on
/// (after which every timer the model says is due fires on both sides).
#[derive(Debug, Clone)]
enum FleetStep {
    Op(Op),
    Tick(Duration),
}

fn fleet_job_op() -> impl Strategy<Value = JobOp> {
    let update = (
        job_status(),
        details(),
        prop::option::of(1u64..5),
        prop::option::of(1u32..3),
        step_timeout(),
    )
        .prop_map(
            |(status, details, expected_version, execution_number, step)| {
                JobOp::Update(Update {
                    status,
                    details,
                    expected_version,
                    execution_number,
                    step,
                })
            },
        );
    prop_oneof![
        2 => in_progress_timeout().prop_map(|t| JobOp::Queue { in_progress_timeout: t }),
        6 => update,
        2 => (details(), step_timeout())
            .prop_map(|(details, step)| JobOp::StartNext { details, step }),
        1 => Just(JobOp::CheckTimeout),
        1 => any::<bool>().prop_map(|force| JobOp::Cancel { force }),
        1 => any::<bool>().prop_map(|force| JobOp::Remove { force }),
        2 => Just(JobOp::Retry),
    ]
}

fn fleet_command_op() -> impl Strategy<Value = CommandOp> {
    prop_oneof![
        2 => send().prop_map(CommandOp::Send),
        3 => response().prop_map(CommandOp::Respond),
        1 => Just(CommandOp::CheckTimeout),
        1 => cancel_reason().prop_map(|reason| CommandOp::Cancel { reason }),
    ]
}

fn fleet_step() -> impl Strategy<Value = FleetStep> {
    let job = prop::sample::select(vec!["job-1", "job-2"]).prop_map(|j| JobId::parse(j).unwrap());
    let thing =
        prop::sample::select(vec!["thing-1", "thing-2"]).prop_map(|t| ThingName::parse(t).unwrap());
    let id =
        prop::sample::select(vec!["cmd-1", "cmd-2"]).prop_map(|i| ExecutionId::parse(i).unwrap());
    prop_oneof![
        6 => (job, thing, fleet_job_op())
            .prop_map(|(job, thing, op)| FleetStep::Op(Op::job(job, thing, op))),
        3 => (id, fleet_command_op()).prop_map(|(id, op)| FleetStep::Op(Op::command(id, op))),
        2 => tick().prop_map(FleetStep::Tick),
    ]
}

/// The aggregates of a small fleet, kept in memory: the "system" the model is checked
/// against, as an embedder would put its own service here.
#[derive(Default)]
struct Fleet {
    jobs: BTreeMap<(JobId, ThingName), JobExecution>,
    commands: BTreeMap<ExecutionId, CommandExecution>,
}

impl Fleet {
    /// Runs `op` and reads the answer as an `Expect`, as an embedder reads its service's.
    fn run(&mut self, op: &Op, now: Timestamp) -> Result<Expect, TestCaseError> {
        fn answer<A: Aggregate>(
            before: Option<A>,
            intent: A::Intent,
            now: Timestamp,
        ) -> Result<Option<A>, Expect> {
            match A::execute(before, intent, now) {
                Err(refusal) => Err(Expect::Refused(refusal.code())),
                Ok((_, events)) if events.is_empty() => Err(Expect::Unchanged),
                Ok((after, _)) => Ok(after),
            }
        }
        Ok(match op.to_intent() {
            Intent::Job { job, thing, intent } => {
                let key = (job, thing);
                match answer(self.jobs.get(&key).cloned(), intent, now) {
                    Err(expect) => expect,
                    Ok(after) => {
                        let after = after.ok_or_else(|| TestCaseError::fail("no state"))?;
                        let status = after.status;
                        self.jobs.insert(key, after);
                        Expect::Job(status)
                    }
                }
            }
            Intent::Command { id, intent } => {
                match answer(self.commands.get(&id).cloned(), intent, now) {
                    Err(expect) => expect,
                    Ok(after) => {
                        let after = after.ok_or_else(|| TestCaseError::fail("no state"))?;
                        let status = after.status;
                        self.commands.insert(id, after);
                        Expect::Command(status)
                    }
                }
            }
        })
    }

    /// Checks every execution the model knows against the fleet's, and the other way round.
    fn agrees_with(&self, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(model.job_executions().count(), self.jobs.len());
        for ((job, thing), s) in &self.jobs {
            let m = model.job_execution(job, thing);
            prop_assert!(m.is_some(), "the model lost {}/{}", job, thing);
            prop_assert_eq!(Some(s.status), model.job_status(job, thing));
            prop_assert_eq!(Some(s.version_number), model.job_version(job, thing));
            prop_assert_eq!(Some(s.execution_number), model.job_attempt(job, thing));
            prop_assert_eq!(Some(&s.status_details), model.job_details(job, thing));
        }
        prop_assert_eq!(model.commands().count(), self.commands.len());
        for (id, s) in &self.commands {
            prop_assert_eq!(Some(s.status), model.command_status(id));
            prop_assert_eq!(Some(s.version), model.command_version(id));
            prop_assert_eq!(s.status_reason.as_deref(), model.command_reason(id));
        }
        let jobs = self.jobs.values().filter_map(JobExecution::next_deadline);
        let commands = self
            .commands
            .values()
            .filter(|c| c.status == C::Sent)
            .map(|c| c.deadline);
        prop_assert_eq!(model.next_deadline(), jobs.chain(commands).min());
        Ok(())
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Job executions follow the design's table under any interleaving of device messages
    /// (including repeated and late ones), service intents, clock ticks and restarts.
    #[test]
    fn job_execution_agrees_with_the_model_under_redelivery_reordering_and_restarts(
        steps in exec_steps()
    ) {
        let mut run = ExecRun::new();
        for step in &steps {
            run.step(step)?;
        }
    }

    /// Command executions: one answer, within the TTL, or a timeout or cancel; nothing after.
    #[test]
    fn command_execution_agrees_with_the_model_under_redelivery_reordering_and_restarts(
        steps in cmd_steps()
    ) {
        let mut run = CmdRun::new();
        for step in &steps {
            run.step(step)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// A fleet of job and command executions, driven only through `Op`, `Model::step` and
    /// `Op::to_intent` — the loop an embedder runs — agrees with the aggregates on every
    /// answer and every execution's state, operations on one execution never touch another,
    /// and the timers the model says are due are exactly the ones that time something out.
    #[test]
    fn a_fleet_driven_through_the_step_api_agrees_with_the_aggregates(
        steps in prop::collection::vec(fleet_step(), 1..60)
    ) {
        let (mut model, mut fleet, mut now) = (Model::new(), Fleet::default(), T0);
        for step in &steps {
            match step {
                FleetStep::Op(op) => {
                    let expected = model.step(op, now);
                    prop_assert_eq!(fleet.run(op, now)?, expected, "{:?} at {:?}", op, now);
                }
                FleetStep::Tick(dt) => {
                    now = now + *dt;
                    for op in model.timers_due(now) {
                        let expected = model.step(&op, now);
                        let timed_out = matches!(
                            expected,
                            Expect::Job(S::TimedOut) | Expect::Command(C::TimedOut)
                        );
                        prop_assert!(timed_out, "due timer {:?} answered {:?}", op, expected);
                        prop_assert_eq!(fleet.run(&op, now)?, expected, "{:?} at {:?}", op, now);
                    }
                    prop_assert!(model.next_deadline().is_none_or(|d| d > now));
                }
            }
            fleet.agrees_with(&model)?;
        }
    }
}
