//! Reference models of the two execution aggregates, written from the transition table of
//! the transition table of docs/design.md and the documented rules, not from the aggregates' code. Deadlines decide the
//! outcome: once a deadline has passed, device updates (and command answers and cancels) are
//! refused as timed out even before the timer fires.
//!
//! Each model is a handful of plain fields and one method per intent that says what the
//! aggregate must do: refuse with a given code, accept with no change, or move to a status.
//! A model changes only when it predicts acceptance, so "a refusal changes nothing" holds for
//! the model by construction and is checked against the aggregate by the property tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use fleetops_core::{CommandStatus as C, Duration, ErrorCode, JobExecutionStatus as S, Timestamp};

/// The longest accepted `statusDetails` value, in characters.
const MAX_DETAIL_CHARS: usize = 1024;
/// The longest accepted step timeout, in minutes (7 days).
const MAX_STEP_MINUTES: u64 = 10_080;
/// The most attempts an execution gets, the first included.
const MAX_ATTEMPTS: u32 = 10;
/// The longest accepted command `statusReason`, in bytes.
const MAX_REASON_BYTES: usize = 1024;
/// The accepted command TTLs: one second to one day.
const MIN_TTL_MS: u64 = 1_000;
const MAX_TTL_MS: u64 = 86_400_000;

/// What the model says a decision must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused with this code; nothing changes.
    Refused(ErrorCode),
    /// Accepted with no event (a stale timer, a repeated report).
    Unchanged,
    /// Accepted with exactly one event, leaving this job execution status.
    Job(S),
    /// Accepted with exactly one event, leaving this command status.
    Command(C),
}

/// Plain-string status details, so the model does not lean on the core's types.
pub type Details = BTreeMap<String, String>;

/// The step timer a device asks for (`stepTimeoutInMinutes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Field absent.
    Keep,
    /// `-1`.
    Clear,
    /// A number of minutes, possibly out of range.
    Minutes(u64),
}

/// A device's job execution update, as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The requested status; `None` when the field is missing.
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

/// The job execution as the design describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecModel {
    /// Current status.
    pub status: S,
    /// `versionNumber`: one per stored event.
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

fn device_input_ok(details: Option<&Details>, step: Step) -> bool {
    let details_ok =
        details.is_none_or(|d| d.values().all(|v| v.chars().count() <= MAX_DETAIL_CHARS));
    let step_ok = match step {
        Step::Minutes(m) => (1..=MAX_STEP_MINUTES).contains(&m),
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

    /// Records one accepted event at `now` that leaves `status`.
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

    /// Whether the execution is in progress with a deadline at or before `now`.
    fn timed_out_at(&self, now: Timestamp) -> bool {
        let due = |d: Option<Timestamp>| d.is_some_and(|d| d <= now);
        self.status == S::InProgress && (due(self.in_progress_deadline) || due(self.step_deadline))
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

    /// The retry policy queues a new attempt after FAILED or TIMED_OUT.
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
    if from == to || !from_is_terminal(from) {
        return true;
    }
    (to == S::Removed && by_remove && from != S::Removed)
        || (to == S::Queued && by_retry && matches!(from, S::Failed | S::TimedOut))
}

fn from_is_terminal(s: S) -> bool {
    !matches!(s, S::Queued | S::InProgress)
}

/// A device's command response, as the model reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The answered status (any command status; only three are valid).
    pub status: C,
    /// `statusReason`.
    pub reason: Option<String>,
}

/// The command execution as the design describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdModel {
    /// Current status.
    pub status: C,
    /// One per stored event.
    pub version: u64,
    /// `sent_at + ttl`.
    pub deadline: Timestamp,
    /// When it reached its terminal status.
    pub completed_at: Option<Timestamp>,
    /// The device's or the backend's reason.
    pub reason: Option<String>,
}

impl CmdModel {
    /// Send: a new command with a TTL of 1 s to 1 day and a 1–128 byte action.
    pub fn send(
        model: &mut Option<CmdModel>,
        ttl: Duration,
        action_len: usize,
        now: Timestamp,
    ) -> Expect {
        if model.is_some()
            || !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl.as_millis())
            || !(1..=128).contains(&action_len)
        {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        *model = Some(CmdModel {
            status: C::Sent,
            version: 1,
            deadline: now + ttl,
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
            || r.reason
                .as_ref()
                .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Expect::Refused(ErrorCode::InvalidRequest);
        }
        if m.status != C::Sent || now >= m.deadline {
            return Expect::Refused(ErrorCode::TerminalStateReached);
        }
        m.finish(r.status, r.reason.clone(), now)
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
    /// or after the deadline is refused: the command is timed out as of `now`.
    pub fn cancel(model: &mut Option<CmdModel>, reason: Option<String>, now: Timestamp) -> Expect {
        match model {
            None => Expect::Refused(ErrorCode::ResourceNotFound),
            Some(m) if m.status == C::Sent && now < m.deadline => {
                m.finish(C::Canceled, reason, now)
            }
            Some(_) => Expect::Refused(ErrorCode::TerminalStateReached),
        }
    }
}
