//! A reference model of the two execution aggregates, for checking a running system against.
//!
//! The model says what fleetops must answer to every operation on a job execution or a
//! command execution: refuse with a given code, accept with no change, or accept and move to
//! a given status. It is written from the documented lifecycle (the transition table of
//! `docs/design.md` and the limits of `docs/operations.md`), not from the aggregates' code: it
//! never calls [`JobExecution`](crate::job_execution::JobExecution) or
//! [`CommandExecution`](crate::command::CommandExecution), and holds only a handful of plain
//! fields per execution. Its size limits are the core's own constants
//! ([`crate::limits`], [`crate::config`], and those of the aggregates' modules), so the two
//! cannot drift apart.
//!
//! The crate's own property tests step this model beside the real aggregates under
//! re-delivered, reordered and late messages, clock jumps and restarts, and require the same
//! answer and the same state after every step.
//!
//! # Checking an embedding service against it
//!
//! A service that embeds fleetops adds its own storage, transport and rules around the core.
//! To check that "my service plus fleetops behave like the model", drive both with the same
//! sequence of [`Op`]s and compare after every step:
//!
//! 1. build the operation, e.g. `Op::job(job, thing, JobOp::Update(..))`;
//! 2. ask the model: [`Model::step`] returns the [`Expect`]ed outcome, and changes the model
//!    only when that outcome is a stored change;
//! 3. perform the same operation on your system (over its API, MQTT, or by handing
//!    [`Op::to_intent`] to the runtime) and turn its answer into an [`Expect`]: a refusal is
//!    [`Expect::Refused`] with its [`ErrorCode`]; an accepted request that stored nothing (the
//!    version did not move) is [`Expect::Unchanged`]; an accepted one that stored a change is
//!    [`Expect::Job`] or [`Expect::Command`] with the status it left;
//! 4. assert the two are equal, and compare whatever state your system exposes with the
//!    model's accessors ([`Model::job_status`], [`Model::job_version`], [`Model::job_details`],
//!    [`Model::command_status`], …).
//!
//! Time is a parameter: pass the same `now` to the model as your system's clock shows. A
//! system that fires its own timers moves on its own when a deadline passes; apply
//! [`Model::timers_due`] to the model at the same instants ([`Model::next_deadline`] says
//! when the next one is due).
//!
//! The model alone, through one job execution's life:
//!
//! ```
//! use fleetops_core::testkit::model::{Expect, JobOp, Model, Op, Update};
//! use fleetops_core::{Duration, ErrorCode, JobExecutionStatus as S, JobId, ThingName, Timestamp};
//!
//! let job = JobId::parse("ota-42").unwrap();
//! let thing = ThingName::parse("pump-7").unwrap();
//! let on_pump = |op| Op::job(job.clone(), thing.clone(), op);
//! let t0 = Timestamp::from_secs(1_700_000_000);
//! let mut model = Model::new();
//!
//! let queue = on_pump(JobOp::Queue { in_progress_timeout: Some(Duration::from_minutes(10)) });
//! assert_eq!(model.step(&queue, t0), Expect::Job(S::Queued));
//!
//! let start = on_pump(JobOp::Update(Update::new(S::InProgress)));
//! assert_eq!(model.step(&start, t0 + Duration::from_secs(5)), Expect::Job(S::InProgress));
//! // The same report again carries nothing new: accepted, nothing stored.
//! assert_eq!(model.step(&start, t0 + Duration::from_secs(6)), Expect::Unchanged);
//!
//! let done = on_pump(JobOp::Update(Update {
//!     expected_version: Some(2),
//!     ..Update::new(S::Succeeded)
//! }));
//! assert_eq!(model.step(&done, t0 + Duration::from_secs(60)), Expect::Job(S::Succeeded));
//! assert_eq!(model.job_version(&job, &thing), Some(3));
//!
//! // SUCCEEDED is terminal: a late progress report is refused and changes nothing.
//! let late = on_pump(JobOp::Update(Update::new(S::InProgress)));
//! assert_eq!(
//!     model.step(&late, t0 + Duration::from_secs(61)),
//!     Expect::Refused(ErrorCode::TerminalStateReached)
//! );
//! assert_eq!(model.job_status(&job, &thing), Some(S::Succeeded));
//! assert_eq!(model.job_version(&job, &thing), Some(3));
//! ```
//!
//! The same loop against a system: here the "system" is the core's aggregates kept in memory,
//! which is what the crate's property tests do; an embedder puts its service there.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use fleetops_core::command::CommandExecution;
//! use fleetops_core::job_execution::JobExecution;
//! use fleetops_core::testkit::model::{CommandOp, Expect, Intent, JobOp, Model, NewCommand, Op};
//! use fleetops_core::{
//!     Aggregate, CommandStatus, Duration, ExecutionId, JobId, ThingName, Timestamp,
//! };
//!
//! /// Runs `op` on the system and reads its answer as an `Expect`.
//! fn run(
//!     jobs: &mut HashMap<(JobId, ThingName), JobExecution>,
//!     commands: &mut HashMap<ExecutionId, CommandExecution>,
//!     op: &Op,
//!     now: Timestamp,
//! ) -> Expect {
//!     match op.to_intent() {
//!         Intent::Job { job, thing, intent } => {
//!             let key = (job, thing);
//!             let before = jobs.get(&key).cloned();
//!             match JobExecution::execute(before, intent, now) {
//!                 Err(refusal) => Expect::Refused(refusal.code()),
//!                 Ok((_, events)) if events.is_empty() => Expect::Unchanged,
//!                 Ok((after, _)) => {
//!                     let after = after.expect("an event leaves a state");
//!                     let status = after.status;
//!                     jobs.insert(key, after);
//!                     Expect::Job(status)
//!                 }
//!             }
//!         }
//!         Intent::Command { id, intent } => {
//!             let before = commands.get(&id).cloned();
//!             match CommandExecution::execute(before, intent, now) {
//!                 Err(refusal) => Expect::Refused(refusal.code()),
//!                 Ok((_, events)) if events.is_empty() => Expect::Unchanged,
//!                 Ok((after, _)) => {
//!                     let after = after.expect("an event leaves a state");
//!                     let status = after.status;
//!                     commands.insert(id, after);
//!                     Expect::Command(status)
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! let thing = ThingName::parse("pump-7").unwrap();
//! let job = JobId::parse("ota-42").unwrap();
//! let cmd = ExecutionId::parse("cmd-1").unwrap();
//! let t0 = Timestamp::from_secs(1_700_000_000);
//! let reboot = NewCommand::new(thing.clone(), "reboot", Duration::from_secs(30));
//! let ops = [
//!     (Op::job(job.clone(), thing.clone(), JobOp::Queue { in_progress_timeout: None }), t0),
//!     (Op::job(job.clone(), thing.clone(), JobOp::Cancel { force: false }), t0),
//!     (Op::job(job.clone(), thing.clone(), JobOp::Retry), t0),
//!     (Op::command(cmd.clone(), CommandOp::Send(reboot)), t0),
//!     (Op::command(cmd.clone(), CommandOp::CheckTimeout), t0 + Duration::from_secs(30)),
//! ];
//!
//! let (mut jobs, mut commands, mut model) = (HashMap::new(), HashMap::new(), Model::new());
//! for (op, now) in &ops {
//!     let expected = model.step(op, *now);
//!     assert_eq!(run(&mut jobs, &mut commands, op, *now), expected, "{op:?}");
//! }
//! assert_eq!(model.command_status(&cmd), Some(CommandStatus::TimedOut));
//! ```
//!
//! # What it does not model
//!
//! Jobs themselves (rollout, abort rules, scheduling), thing groups, the wire codecs (topics,
//! payload sizes, `clientToken`, the alphabet of ids and `statusDetails` keys, which the
//! model's types cannot even express wrongly), and commands the transport could not deliver.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::command::{CommandIntent, MAX_REASON_LEN, MAX_TTL, MIN_TTL};
use crate::config::{MAX_ATTEMPTS, MAX_TIMEOUT_MINUTES};
use crate::device::{CommandResponse, StepTimeout, UpdateRequest};
use crate::event::{EndReason, StatusDetails};
use crate::ids::{ExecutionId, JobId, ThingName};
use crate::job_execution::{JobExecutionIntent, MAX_DETAIL_VALUE_LEN};
use crate::limits::{
    json_len, MAX_COMMAND_ACTION_LEN, MAX_COMMAND_ID_LEN, MAX_COMMAND_PARAMS_BYTES,
    MAX_STATUS_DETAILS_BYTES, MAX_STATUS_DETAILS_KEYS,
};
use crate::rejection::ErrorCode;
use crate::status::{CommandStatus as C, JobExecutionStatus as S};
use crate::time::{Duration, Timestamp};

/// What the model says a decision must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused with this code; nothing changes.
    Refused(ErrorCode),
    /// Accepted with no change stored (a stale timer, a repeated report).
    Unchanged,
    /// Accepted with exactly one change stored, leaving this job execution status.
    Job(S),
    /// Accepted with exactly one change stored, leaving this command status.
    Command(C),
}

/// A job execution's `statusDetails`: the core's plain map of validated keys to strings.
pub type Details = StatusDetails;

/// The step timer a device asks for (`stepTimeoutInMinutes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Step {
    /// Field absent: the step timer stays as it is.
    #[default]
    Keep,
    /// `-1`: clear the step timer.
    Clear,
    /// A number of minutes, possibly out of range (refused unless 1 to
    /// [`MAX_TIMEOUT_MINUTES`]).
    Minutes(u64),
}

impl From<Step> for StepTimeout {
    fn from(step: Step) -> Self {
        match step {
            Step::Keep => StepTimeout::Keep,
            Step::Clear => StepTimeout::Clear,
            Step::Minutes(m) => StepTimeout::Minutes(m),
        }
    }
}

/// A device's job execution update (`…/jobs/{jobId}/update`), as the model reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// The requested status; `None` when the field is missing (always refused).
    pub status: Option<S>,
    /// Replacement status details.
    pub details: Option<Details>,
    /// `expectedVersion`.
    pub expected_version: Option<u64>,
    /// `executionNumber`.
    pub execution_number: Option<u32>,
    /// `stepTimeoutInMinutes`.
    pub step: Step,
}

impl Update {
    /// An update to `status` and nothing else.
    pub fn new(status: S) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }
}

/// The job execution as the design describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecModel {
    /// Current status.
    pub status: S,
    /// `versionNumber`: one per stored change.
    pub version: u64,
    /// `executionNumber`: one per attempt.
    pub execution_number: u32,
    /// Current status details.
    pub details: Details,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    /// Last change.
    pub last_updated_at: Timestamp,
    /// The job's in-progress timeout.
    pub in_progress_timeout: Option<Duration>,
    /// Armed at IN_PROGRESS.
    pub in_progress_deadline: Option<Timestamp>,
    /// Armed by the device's step timeout, never past the in-progress deadline.
    pub step_deadline: Option<Timestamp>,
}

/// Whether the device-supplied parts of an update or start-next are within the documented
/// limits: at most [`MAX_STATUS_DETAILS_KEYS`] entries, [`MAX_STATUS_DETAILS_BYTES`] of keys
/// and values (UTF-8), [`MAX_DETAIL_VALUE_LEN`] characters per value, and a step timeout of 1
/// to [`MAX_TIMEOUT_MINUTES`] minutes.
fn device_input_ok(details: Option<&Details>, step: Step) -> bool {
    let details_ok = details.is_none_or(|d| {
        let bytes: usize = d.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        d.len() <= MAX_STATUS_DETAILS_KEYS
            && bytes <= MAX_STATUS_DETAILS_BYTES
            && d.values()
                .all(|v| v.chars().count() <= MAX_DETAIL_VALUE_LEN)
    });
    let step_ok = match step {
        Step::Minutes(m) => (1..=MAX_TIMEOUT_MINUTES).contains(&m),
        Step::Keep | Step::Clear => true,
    };
    details_ok && step_ok
}

impl ExecModel {
    /// Queue: the first attempt. A second queue for the same execution is a bad request.
    pub fn queue(
        model: &mut Option<ExecModel>,
        timeout: Option<Duration>,
        now: Timestamp,
    ) -> Expect {
        if model.is_some() {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        *model = Some(ExecModel {
            status: S::Queued,
            version: 1,
            execution_number: 1,
            details: Details::new(),
            queued_at: now,
            started_at: None,
            last_updated_at: now,
            in_progress_timeout: timeout,
            in_progress_deadline: None,
            step_deadline: None,
        });
        Expect::Job(S::Queued)
    }

    /// Records one accepted change at `now` that leaves `status`.
    fn changed(&mut self, status: S, now: Timestamp) -> Expect {
        self.status = status;
        self.version += 1;
        self.last_updated_at = now;
        if status != S::InProgress {
            // Timers only run while in progress.
            self.in_progress_deadline = None;
            self.step_deadline = None;
        }
        Expect::Job(status)
    }

    fn arm_step(&mut self, step: Step, now: Timestamp) {
        match step {
            Step::Keep => {}
            Step::Clear => self.step_deadline = None,
            Step::Minutes(m) => {
                let at = now + Duration::from_minutes(m);
                self.step_deadline = Some(match self.in_progress_deadline {
                    Some(bound) => at.min(bound),
                    None => at,
                });
            }
        }
    }

    /// The device moves a pending execution to `to` (already known to be allowed).
    fn device_moves(
        &mut self,
        to: S,
        details: Option<Details>,
        step: Step,
        now: Timestamp,
    ) -> Expect {
        match (self.status, to) {
            (S::Queued, S::InProgress) => {
                self.started_at = Some(now);
                self.in_progress_deadline = self.in_progress_timeout.map(|t| now + t);
                self.arm_step(step, now);
            }
            (S::InProgress, S::InProgress) => {
                let same_details = details.as_ref().is_none_or(|d| *d == self.details);
                if same_details && step == Step::Keep {
                    // A repeated progress report carries nothing new.
                    return Expect::Unchanged;
                }
                self.arm_step(step, now);
            }
            _ => {}
        }
        if let Some(d) = details {
            self.details = d;
        }
        self.changed(to, now)
    }

    /// `…/jobs/{jobId}/update`.
    pub fn update(model: &mut Option<ExecModel>, u: Update, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        // Request shape first: these are never valid, whatever the state.
        let Some(to) = u.status else {
            return Expect::Refused(ErrorCode::InvalidRequest);
        };
        if !device_input_ok(u.details.as_ref(), u.step)
            || !matches!(to, S::InProgress | S::Succeeded | S::Failed | S::Rejected)
        {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        // Then the addressed attempt and version.
        if u.execution_number.is_some_and(|n| n != m.execution_number) {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        }
        if u.expected_version.is_some_and(|v| v != m.version) {
            return Expect::Refused(ErrorCode::VersionMismatch);
        }
        // Then the clock: in progress with a deadline at or before `now` is timed out as of
        // `now`, whether or not the timer has fired (only the timer records it).
        if m.timed_out_at(now) {
            return Expect::Refused(ErrorCode::TerminalStateReached);
        }
        // Then the state: a device only moves pending executions.
        if !matches!(m.status, S::Queued | S::InProgress) {
            return Expect::Refused(ErrorCode::TerminalStateReached);
        }
        m.device_moves(to, u.details, u.step, now)
    }

    /// `…/jobs/start-next` picked this execution.
    pub fn start_next(
        model: &mut Option<ExecModel>,
        details: Option<Details>,
        step: Step,
        now: Timestamp,
    ) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        if !device_input_ok(details.as_ref(), step) {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        match m.status {
            S::Queued => m.device_moves(S::InProgress, details, step, now),
            // start-next hands back an execution already in progress as it is, even past a
            // deadline (the timer records the timeout).
            S::InProgress => Expect::Unchanged,
            _ => Expect::Refused(ErrorCode::TerminalStateReached),
        }
    }

    /// The earliest pending deadline: only an IN_PROGRESS execution has one.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.status != S::InProgress {
            return None;
        }
        [self.in_progress_deadline, self.step_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the execution is in progress with a deadline at or before `now`.
    fn timed_out_at(&self, now: Timestamp) -> bool {
        self.next_deadline().is_some_and(|d| d <= now)
    }

    /// A timer fired at `now`.
    pub fn check_timeout(model: &mut Option<ExecModel>, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        if m.timed_out_at(now) {
            return m.changed(S::TimedOut, now);
        }
        Expect::Unchanged
    }

    /// The service cancels (in progress only with force).
    pub fn cancel(model: &mut Option<ExecModel>, force: bool, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        match m.status {
            S::Queued => m.changed(S::Canceled, now),
            S::InProgress if force => m.changed(S::Canceled, now),
            S::InProgress => Expect::Refused(ErrorCode::InvalidStateTransition),
            _ => Expect::Refused(ErrorCode::TerminalStateReached),
        }
    }

    /// The service deletes the record (pending only with force).
    pub fn remove(model: &mut Option<ExecModel>, force: bool, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        match m.status {
            S::Removed => Expect::Refused(ErrorCode::TerminalStateReached),
            S::Queued | S::InProgress if !force => {
                Expect::Refused(ErrorCode::InvalidStateTransition)
            }
            _ => m.changed(S::Removed, now),
        }
    }

    /// The retry policy queues a new attempt after FAILED or TIMED_OUT, up to
    /// [`MAX_ATTEMPTS`] attempts in all.
    pub fn retry(model: &mut Option<ExecModel>, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        match m.status {
            S::Failed | S::TimedOut if m.execution_number >= MAX_ATTEMPTS => {
                Expect::Refused(ErrorCode::InvalidRequest)
            }
            S::Failed | S::TimedOut => {
                m.execution_number += 1;
                m.queued_at = now;
                m.started_at = None;
                m.details.clear();
                m.changed(S::Queued, now)
            }
            S::Queued | S::InProgress => Expect::Refused(ErrorCode::InvalidStateTransition),
            _ => Expect::Refused(ErrorCode::TerminalStateReached),
        }
    }
}

/// Whether the design lets an execution leave `from` for `to` through the given intent.
/// Terminal statuses are left only by deletion (to REMOVED) and by a retry (FAILED or
/// TIMED_OUT to a new QUEUED attempt); REMOVED is never left.
pub fn terminal_exit_allowed(from: S, to: S, by_remove: bool, by_retry: bool) -> bool {
    if from == to || matches!(from, S::Queued | S::InProgress) {
        return true;
    }
    (to == S::Removed && by_remove && from != S::Removed)
        || (to == S::Queued && by_retry && matches!(from, S::Failed | S::TimedOut))
}

/// A device's command response, as the model reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The answered status (any command status; only SUCCEEDED, FAILED and REJECTED are
    /// valid).
    pub status: C,
    /// The device's result; the model does not look at it.
    pub result: Option<Value>,
    /// `statusReason`, at most [`MAX_REASON_LEN`] characters.
    pub reason: Option<String>,
}

impl Response {
    /// An answer with `status` and nothing else.
    pub fn new(status: C) -> Self {
        Self {
            status,
            result: None,
            reason: None,
        }
    }
}

/// A new command, as the backend sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    /// The device.
    pub thing: ThingName,
    /// Optional template id: 1 to [`MAX_COMMAND_ID_LEN`] characters of `[a-zA-Z0-9_-]`.
    pub command_id: Option<String>,
    /// What to do: 1 to [`MAX_COMMAND_ACTION_LEN`] characters.
    pub action: String,
    /// Arguments: at most [`MAX_COMMAND_PARAMS_BYTES`] of compact JSON.
    pub params: Value,
    /// Time to live: [`MIN_TTL`] to [`MAX_TTL`] (one second to one day).
    pub ttl: Duration,
}

impl NewCommand {
    /// A command with no template id and empty params (`{}`).
    pub fn new(thing: ThingName, action: impl Into<String>, ttl: Duration) -> Self {
        Self {
            thing,
            command_id: None,
            action: action.into(),
            params: Value::Object(serde_json::Map::new()),
            ttl,
        }
    }
}

/// The command execution as the design describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdModel {
    /// Current status.
    pub status: C,
    /// One per stored change.
    pub version: u64,
    /// `sent_at + ttl`.
    pub deadline: Timestamp,
    /// When it reached its terminal status.
    pub completed_at: Option<Timestamp>,
    /// The device's or the backend's reason.
    pub reason: Option<String>,
}

fn reason_ok(reason: Option<&String>) -> bool {
    reason.is_none_or(|r| r.chars().count() <= MAX_REASON_LEN)
}

fn command_id_ok(id: &str) -> bool {
    (1..=MAX_COMMAND_ID_LEN).contains(&id.chars().count())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl CmdModel {
    /// Send: a new command within the documented bounds; an id already used is a bad request.
    pub fn send(model: &mut Option<CmdModel>, cmd: &NewCommand, now: Timestamp) -> Expect {
        if model.is_some()
            || !(MIN_TTL..=MAX_TTL).contains(&cmd.ttl)
            || !(1..=MAX_COMMAND_ACTION_LEN).contains(&cmd.action.chars().count())
            || cmd
                .command_id
                .as_deref()
                .is_some_and(|id| !command_id_ok(id))
            || json_len(&cmd.params) > MAX_COMMAND_PARAMS_BYTES
        {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        *model = Some(CmdModel {
            status: C::Sent,
            version: 1,
            deadline: now + cmd.ttl,
            completed_at: None,
            reason: None,
        });
        Expect::Command(C::Sent)
    }

    fn finish(&mut self, status: C, reason: Option<String>, now: Timestamp) -> Expect {
        self.status = status;
        self.reason = reason;
        self.version += 1;
        self.completed_at = Some(now);
        Expect::Command(status)
    }

    /// The device answers. Once the TTL has passed the command is timed out, whether or not
    /// the timer has fired: a late answer never changes anything.
    pub fn respond(model: &mut Option<CmdModel>, r: &Response, now: Timestamp) -> Expect {
        let Some(m) = model else {
            return Expect::Refused(ErrorCode::ResourceNotFound);
        };
        if !matches!(r.status, C::Succeeded | C::Failed | C::Rejected)
            || !reason_ok(r.reason.as_ref())
        {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        if m.status != C::Sent || now >= m.deadline {
            return Expect::Refused(ErrorCode::TerminalStateReached);
        }
        m.finish(r.status, r.reason.clone(), now)
    }

    /// The deadline, while the command still awaits its answer.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        (self.status == C::Sent).then_some(self.deadline)
    }

    /// The TTL timer fired at `now`; a timer for an unknown or finished command is stale.
    pub fn check_timeout(model: &mut Option<CmdModel>, now: Timestamp) -> Expect {
        match model {
            Some(m) if m.status == C::Sent && now >= m.deadline => {
                let reason = m.reason.clone();
                m.finish(C::TimedOut, reason, now)
            }
            _ => Expect::Unchanged,
        }
    }

    /// The backend cancels a command still awaiting its answer. Like a late answer, a cancel at
    /// or after the deadline is refused: the command is timed out as of `now`. An over-long
    /// reason is a bad request, whether or not the command exists.
    pub fn cancel(model: &mut Option<CmdModel>, reason: Option<String>, now: Timestamp) -> Expect {
        if !reason_ok(reason.as_ref()) {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        match model {
            None => Expect::Refused(ErrorCode::ResourceNotFound),
            Some(m) if m.status == C::Sent && now < m.deadline => {
                m.finish(C::Canceled, reason, now)
            }
            Some(_) => Expect::Refused(ErrorCode::TerminalStateReached),
        }
    }
}

// ---- the step API -------------------------------------------------------------------------------

/// An operation on one job execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOp {
    /// Service: queue the first attempt, with the job's in-progress timeout.
    Queue {
        /// The job's in-progress timeout.
        in_progress_timeout: Option<Duration>,
    },
    /// Device: `…/jobs/{jobId}/update`.
    Update(Update),
    /// Device: start-next picked this execution.
    StartNext {
        /// Status details to store.
        details: Option<Details>,
        /// The step timer.
        step: Step,
    },
    /// Service: the execution's timer fired.
    CheckTimeout,
    /// Service: cancel the execution (in progress only with `force`).
    Cancel {
        /// Cancel even if in progress.
        force: bool,
    },
    /// Service: delete the record (pending only with `force`).
    Remove {
        /// Delete even if pending.
        force: bool,
    },
    /// Service: the retry policy queues a new attempt after FAILED or TIMED_OUT.
    Retry,
}

/// An operation on one command execution.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOp {
    /// Backend: send a new command.
    Send(NewCommand),
    /// Device: the command's response.
    Respond(Response),
    /// Service: the command's TTL timer fired.
    CheckTimeout,
    /// Backend: cancel the command.
    Cancel {
        /// Why, at most [`MAX_REASON_LEN`] characters.
        reason: Option<String>,
    },
}

/// One operation on the fleet: what [`Model::step`] takes, and what an embedder also runs
/// on its own system.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// An operation on the execution of `job` on `thing`.
    Job {
        /// The job.
        job: JobId,
        /// The device.
        thing: ThingName,
        /// What happens to the execution.
        op: JobOp,
    },
    /// An operation on the command execution `id`.
    Command {
        /// The command execution.
        id: ExecutionId,
        /// What happens to it.
        op: CommandOp,
    },
}

/// An [`Op`] as the core's intent, addressed to its aggregate: what the runtime decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// For the job execution of `job` on `thing`.
    Job {
        /// The job.
        job: JobId,
        /// The device.
        thing: ThingName,
        /// The intent.
        intent: JobExecutionIntent,
    },
    /// For the command execution `id`.
    Command {
        /// The command execution.
        id: ExecutionId,
        /// The intent.
        intent: CommandIntent,
    },
}

impl Op {
    /// `op` on the execution of `job` on `thing`.
    pub fn job(job: JobId, thing: ThingName, op: JobOp) -> Self {
        Op::Job { job, thing, op }
    }

    /// `op` on the command execution `id`.
    pub fn command(id: ExecutionId, op: CommandOp) -> Self {
        Op::Command { id, op }
    }

    /// Whether a device sends this operation (an update, start-next or command response),
    /// as opposed to the service or the backend.
    pub fn is_device(&self) -> bool {
        matches!(
            self,
            Op::Job {
                op: JobOp::Update(_) | JobOp::StartNext { .. },
                ..
            } | Op::Command {
                op: CommandOp::Respond(_),
                ..
            }
        )
    }

    /// The core intent that performs this operation, for a system built on the core's
    /// aggregates. Cancel and delete are an operator's (`EndReason::Operator`); an update asks
    /// for neither the execution state nor the job document in its reply.
    pub fn to_intent(&self) -> Intent {
        match self {
            Op::Job { job, thing, op } => {
                let intent = match op {
                    JobOp::Queue {
                        in_progress_timeout,
                    } => JobExecutionIntent::Queue {
                        job_id: job.clone(),
                        thing: thing.clone(),
                        in_progress_timeout: *in_progress_timeout,
                    },
                    JobOp::Update(u) => JobExecutionIntent::Update(UpdateRequest {
                        status: u.status,
                        status_details: u.details.clone(),
                        expected_version: u.expected_version,
                        execution_number: u.execution_number,
                        step_timeout: u.step.into(),
                        include_job_execution_state: false,
                        include_job_document: false,
                    }),
                    JobOp::StartNext { details, step } => JobExecutionIntent::Start {
                        status_details: details.clone(),
                        step_timeout: (*step).into(),
                    },
                    JobOp::CheckTimeout => JobExecutionIntent::CheckTimeout,
                    JobOp::Cancel { force } => JobExecutionIntent::Cancel {
                        force: *force,
                        reason: EndReason::Operator,
                    },
                    JobOp::Remove { force } => JobExecutionIntent::Remove {
                        force: *force,
                        reason: EndReason::Operator,
                    },
                    JobOp::Retry => JobExecutionIntent::Retry,
                };
                Intent::Job {
                    job: job.clone(),
                    thing: thing.clone(),
                    intent,
                }
            }
            Op::Command { id, op } => {
                let intent = match op {
                    CommandOp::Send(cmd) => CommandIntent::Send {
                        execution_id: id.clone(),
                        thing: cmd.thing.clone(),
                        command_id: cmd.command_id.clone(),
                        action: cmd.action.clone(),
                        params: cmd.params.clone(),
                        ttl: cmd.ttl,
                    },
                    CommandOp::Respond(r) => CommandIntent::Respond(CommandResponse {
                        status: r.status,
                        result: r.result.clone(),
                        status_reason: r.reason.clone(),
                    }),
                    CommandOp::CheckTimeout => CommandIntent::CheckTimeout,
                    CommandOp::Cancel { reason } => CommandIntent::Cancel {
                        reason: reason.clone(),
                    },
                };
                Intent::Command {
                    id: id.clone(),
                    intent,
                }
            }
        }
    }
}

/// The model of a whole fleet: every job execution, keyed by job and thing, and every command
/// execution, keyed by its id. See the [module docs](self) for how to use it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    jobs: BTreeMap<(JobId, ThingName), ExecModel>,
    commands: BTreeMap<ExecutionId, CmdModel>,
}

impl Model {
    /// An empty fleet: no executions at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `op` at `now` and says what the system must answer. The model changes only
    /// when the answer is a change ([`Expect::Job`] or [`Expect::Command`]): a refusal or an
    /// accepted no-op leaves it exactly as it was.
    pub fn step(&mut self, op: &Op, now: Timestamp) -> Expect {
        match op {
            Op::Job { job, thing, op } => {
                let key = (job.clone(), thing.clone());
                let mut slot = self.jobs.remove(&key);
                let expect = match op {
                    JobOp::Queue {
                        in_progress_timeout,
                    } => ExecModel::queue(&mut slot, *in_progress_timeout, now),
                    JobOp::Update(u) => ExecModel::update(&mut slot, u.clone(), now),
                    JobOp::StartNext { details, step } => {
                        ExecModel::start_next(&mut slot, details.clone(), *step, now)
                    }
                    JobOp::CheckTimeout => ExecModel::check_timeout(&mut slot, now),
                    JobOp::Cancel { force } => ExecModel::cancel(&mut slot, *force, now),
                    JobOp::Remove { force } => ExecModel::remove(&mut slot, *force, now),
                    JobOp::Retry => ExecModel::retry(&mut slot, now),
                };
                if let Some(m) = slot {
                    self.jobs.insert(key, m);
                }
                expect
            }
            Op::Command { id, op } => {
                let mut slot = self.commands.remove(id);
                let expect = match op {
                    CommandOp::Send(cmd) => CmdModel::send(&mut slot, cmd, now),
                    CommandOp::Respond(r) => CmdModel::respond(&mut slot, r, now),
                    CommandOp::CheckTimeout => CmdModel::check_timeout(&mut slot, now),
                    CommandOp::Cancel { reason } => {
                        CmdModel::cancel(&mut slot, reason.clone(), now)
                    }
                };
                if let Some(m) = slot {
                    self.commands.insert(id.clone(), m);
                }
                expect
            }
        }
    }

    /// The execution of `job` on `thing`, if it was ever queued.
    pub fn job_execution(&self, job: &JobId, thing: &ThingName) -> Option<&ExecModel> {
        self.jobs.get(&(job.clone(), thing.clone()))
    }

    /// The status of the execution of `job` on `thing`.
    pub fn job_status(&self, job: &JobId, thing: &ThingName) -> Option<S> {
        self.job_execution(job, thing).map(|m| m.status)
    }

    /// The `versionNumber` of the execution of `job` on `thing`.
    pub fn job_version(&self, job: &JobId, thing: &ThingName) -> Option<u64> {
        self.job_execution(job, thing).map(|m| m.version)
    }

    /// The `executionNumber` (current attempt) of the execution of `job` on `thing`.
    pub fn job_attempt(&self, job: &JobId, thing: &ThingName) -> Option<u32> {
        self.job_execution(job, thing).map(|m| m.execution_number)
    }

    /// The `statusDetails` of the execution of `job` on `thing`.
    pub fn job_details(&self, job: &JobId, thing: &ThingName) -> Option<&Details> {
        self.job_execution(job, thing).map(|m| &m.details)
    }

    /// Every job execution, in (job, thing) order.
    pub fn job_executions(&self) -> impl Iterator<Item = (&JobId, &ThingName, &ExecModel)> {
        self.jobs.iter().map(|((j, t), m)| (j, t, m))
    }

    /// The command execution `id`, if it was ever sent.
    pub fn command(&self, id: &ExecutionId) -> Option<&CmdModel> {
        self.commands.get(id)
    }

    /// The status of the command execution `id`.
    pub fn command_status(&self, id: &ExecutionId) -> Option<C> {
        self.command(id).map(|m| m.status)
    }

    /// The version of the command execution `id`.
    pub fn command_version(&self, id: &ExecutionId) -> Option<u64> {
        self.command(id).map(|m| m.version)
    }

    /// The `statusReason` of the command execution `id`.
    pub fn command_reason(&self, id: &ExecutionId) -> Option<&str> {
        self.command(id).and_then(|m| m.reason.as_deref())
    }

    /// Every command execution, in id order.
    pub fn commands(&self) -> impl Iterator<Item = (&ExecutionId, &CmdModel)> {
        self.commands.iter()
    }

    /// The earliest pending deadline in the fleet: when the next timer is due.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        let jobs = self.jobs.values().filter_map(ExecModel::next_deadline);
        let commands = self.commands.values().filter_map(CmdModel::next_deadline);
        jobs.chain(commands).min()
    }

    /// The timer operations due at `now`: one `CheckTimeout` per execution whose deadline is
    /// at or before `now`, each of which [`Model::step`] turns into a timeout.
    pub fn timers_due(&self, now: Timestamp) -> Vec<Op> {
        let due = |d: Option<Timestamp>| d.is_some_and(|d| d <= now);
        let jobs = self
            .jobs
            .iter()
            .filter(|(_, m)| due(m.next_deadline()))
            .map(|((job, thing), _)| Op::job(job.clone(), thing.clone(), JobOp::CheckTimeout));
        let commands = self
            .commands
            .iter()
            .filter(|(_, m)| due(m.next_deadline()))
            .map(|(id, _)| Op::command(id.clone(), CommandOp::CheckTimeout));
        jobs.chain(commands).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_op(thing: &str, op: JobOp) -> Op {
        let job = JobId::parse("job-1").expect("valid");
        Op::job(job, ThingName::parse(thing).expect("valid"), op)
    }

    fn cmd_op(id: &str, op: CommandOp) -> Op {
        Op::command(ExecutionId::parse(id).expect("valid"), op)
    }

    const T0: Timestamp = Timestamp::from_secs(1_000);

    #[test]
    fn executions_are_independent_and_refusals_change_nothing() {
        let mut model = Model::new();
        let queue = |timeout| JobOp::Queue {
            in_progress_timeout: timeout,
        };
        let ten = Some(Duration::from_minutes(10));
        assert_eq!(
            model.step(&job_op("a", queue(ten)), T0),
            Expect::Job(S::Queued)
        );
        assert_eq!(
            model.step(&job_op("b", queue(None)), T0),
            Expect::Job(S::Queued)
        );
        let start = JobOp::Update(Update::new(S::InProgress));
        assert_eq!(
            model.step(&job_op("a", start), T0),
            Expect::Job(S::InProgress)
        );

        let before = model.clone();
        let refused = [
            job_op("a", queue(None)),
            job_op("c", JobOp::Retry),
            job_op("b", JobOp::Remove { force: false }),
            cmd_op("cmd-1", CommandOp::Cancel { reason: None }),
        ];
        for op in &refused {
            assert!(matches!(model.step(op, T0), Expect::Refused(_)), "{op:?}");
        }
        assert_eq!(model, before);

        let job = JobId::parse("job-1").expect("valid");
        let b = ThingName::parse("b").expect("valid");
        assert_eq!(model.job_status(&job, &b), Some(S::Queued));
        assert_eq!(model.job_executions().count(), 2);
    }

    #[test]
    fn timers_due_names_every_expired_execution_and_only_those() {
        let mut model = Model::new();
        let thing = ThingName::parse("t").expect("valid");
        let send = |secs| {
            CommandOp::Send(NewCommand::new(
                thing.clone(),
                "go",
                Duration::from_secs(secs),
            ))
        };
        model.step(&cmd_op("c-30", send(30)), T0);
        model.step(&cmd_op("c-60", send(60)), T0);
        model.step(
            &job_op(
                "a",
                JobOp::Queue {
                    in_progress_timeout: Some(Duration::from_secs(45)),
                },
            ),
            T0,
        );
        model.step(
            &job_op(
                "a",
                JobOp::StartNext {
                    details: None,
                    step: Step::Keep,
                },
            ),
            T0,
        );

        assert_eq!(model.next_deadline(), Some(T0 + Duration::from_secs(30)));
        assert!(model.timers_due(T0 + Duration::from_secs(29)).is_empty());
        let due = model.timers_due(T0 + Duration::from_secs(45));
        assert_eq!(
            due,
            vec![
                job_op("a", JobOp::CheckTimeout),
                cmd_op("c-30", CommandOp::CheckTimeout)
            ]
        );
        for op in &due {
            assert!(matches!(
                model.step(op, T0 + Duration::from_secs(45)),
                Expect::Job(S::TimedOut) | Expect::Command(C::TimedOut)
            ));
        }
        assert_eq!(model.next_deadline(), Some(T0 + Duration::from_secs(60)));
    }

    #[test]
    fn limits_count_characters_where_the_documents_say_characters() {
        let mut model = Model::new();
        let thing = ThingName::parse("t").expect("valid");
        let ttl = Duration::from_secs(30);
        let wide = "é".repeat(MAX_COMMAND_ACTION_LEN);
        let send = CommandOp::Send(NewCommand::new(thing.clone(), wide, ttl));
        assert_eq!(model.step(&cmd_op("c", send), T0), Expect::Command(C::Sent));
        let long = "é".repeat(MAX_REASON_LEN + 1);
        let cancel = CommandOp::Cancel { reason: Some(long) };
        assert_eq!(
            model.step(&cmd_op("c", cancel), T0),
            Expect::Refused(ErrorCode::InvalidRequest)
        );
        let reason = Some("é".repeat(MAX_REASON_LEN));
        let cancel = CommandOp::Cancel { reason };
        assert_eq!(
            model.step(&cmd_op("c", cancel), T0),
            Expect::Command(C::Canceled)
        );
    }
}
