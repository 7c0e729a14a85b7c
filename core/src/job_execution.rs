//! The job execution aggregate: one job on one thing.
//!
//! # Deadlines decide the outcome
//!
//! An IN_PROGRESS execution whose in-progress deadline or step deadline is at or before `now`
//! has timed out as of `now`, whatever the order in which the runtime sees things: a device
//! update is refused with `TerminalStateReached` (status `TIMED_OUT`, `executionState` the
//! current, still IN_PROGRESS, state) even if `CheckTimeout` has not run yet. Only the timer
//! records the timeout (`ExecutionTimedOut`); the refusal changes nothing.
//!
//! A device update is checked in this order:
//! 1. request shape — a missing status, over-long status details, an out-of-range step
//!    timeout or a status a device never sets: `InvalidRequest`;
//! 2. the addressed attempt — another `executionNumber`: `ResourceNotFound`;
//! 3. the expected version — another `expectedVersion`: `VersionMismatch` (so a device that
//!    names a stale version learns that first, with the current state);
//! 4. the deadline — IN_PROGRESS with a deadline at or before `now`: `TerminalStateReached`
//!    with status `TIMED_OUT`;
//! 5. the transition table (`check_transition`).
//!
//! start-next (`JobExecutionIntent::Start`) on an execution already IN_PROGRESS returns it
//! unchanged with no events, past its deadline or not; it is not refused.

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::config::{MAX_ATTEMPTS, MAX_TIMEOUT_MINUTES};
use crate::device::{StepTimeout, UpdateRequest};
use crate::event::{EndReason, Event, EvolveError, StepTimer, TimeoutCause};
use crate::ids::{JobId, ThingName};
use crate::limits::{MAX_STATUS_DETAILS_BYTES, MAX_STATUS_DETAILS_KEYS};
use crate::rejection::{ErrorCode, Rejection};
use crate::status::{JobExecutionStatus, StatusDetails};
use crate::time::{Duration, Timestamp};

// Defined with the statuses, below refusals and device messages, which carry it too; kept
// reachable here.
pub use crate::status::ExecutionState;

/// The longest value in `statusDetails`, in characters.
pub const MAX_DETAIL_VALUE_LEN: usize = 1024;

/// Who causes a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The thing, through the device protocol.
    Device,
    /// The service: timers, operators, job-level rules.
    Service,
}

/// The transition table of docs/design.md, as one function.
///
/// Returns the wire code of the refusal when `actor` may not move an execution from `from` to
/// `to` (`force` is the operator's force flag for cancel and delete). Request-shape errors
/// (a status this actor never sets) come before state errors, as a device would expect from
/// a validating API: `InvalidRequest` says "never valid", `InvalidStateTransition` says
/// "not from here", `TerminalStateReached` says "nothing changes any more".
pub fn check_transition(
    from: JobExecutionStatus,
    to: JobExecutionStatus,
    actor: Actor,
    force: bool,
) -> Result<(), ErrorCode> {
    use JobExecutionStatus as S;
    match actor {
        Actor::Device if !to.is_device_settable() => return Err(ErrorCode::InvalidRequest),
        Actor::Service if to.is_device_settable() => return Err(ErrorCode::InvalidRequest),
        _ => {}
    }
    if from == S::Removed {
        return Err(ErrorCode::TerminalStateReached);
    }
    match to {
        // Deletion is the way on from every terminal status; pending ones need force.
        S::Removed if from.is_terminal() || force => Ok(()),
        S::Removed => Err(ErrorCode::InvalidStateTransition),
        // A retry's new attempt.
        S::Queued => match from {
            S::Failed | S::TimedOut => Ok(()),
            S::Queued | S::InProgress => Err(ErrorCode::InvalidStateTransition),
            _ => Err(ErrorCode::TerminalStateReached),
        },
        _ if from.is_terminal() => Err(ErrorCode::TerminalStateReached),
        // Device: start, progress and finish, from either pending status.
        S::InProgress | S::Succeeded | S::Failed | S::Rejected => Ok(()),
        S::TimedOut if from == S::InProgress => Ok(()),
        S::TimedOut => Err(ErrorCode::InvalidStateTransition),
        S::Canceled if from == S::Queued || force => Ok(()),
        S::Canceled => Err(ErrorCode::InvalidStateTransition),
    }
}

/// The state of one job execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobExecution {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub thing: ThingName,
    /// Current status.
    pub status: JobExecutionStatus,
    /// The device's last status details.
    pub status_details: StatusDetails,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    /// Last change.
    pub last_updated_at: Timestamp,
    /// Bumped on every change.
    pub version_number: u64,
    /// Bumped per retry attempt, from 1.
    pub execution_number: u32,
    /// The job's in-progress timeout.
    pub in_progress_timeout: Option<Duration>,
    /// When the in-progress timer expires.
    pub in_progress_deadline: Option<Timestamp>,
    /// When the step timer expires.
    pub step_deadline: Option<Timestamp>,
}

impl JobExecution {
    /// What the device sees as `executionState`.
    pub fn state(&self) -> ExecutionState {
        ExecutionState {
            status: self.status,
            status_details: self.status_details.clone(),
            version_number: self.version_number,
        }
    }

    /// The earliest pending deadline, if the execution is in progress.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.status != JobExecutionStatus::InProgress {
            return None;
        }
        match (self.in_progress_deadline, self.step_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn refuse(&self, to: JobExecutionStatus, code: ErrorCode, field: &'static str) -> Rejection {
        let execution_state = Some(Box::new(self.state()));
        match code {
            ErrorCode::TerminalStateReached => Rejection::TerminalStateReached {
                status: self.status.as_str(),
                execution_state,
            },
            ErrorCode::InvalidStateTransition => Rejection::InvalidStateTransition {
                from: self.status.as_str(),
                to: to.as_str(),
                execution_state,
            },
            _ => Rejection::invalid(field, format!("{} cannot be set here", to.as_str())),
        }
    }

    fn step_timer(
        &self,
        step: StepTimeout,
        now: Timestamp,
        in_progress_deadline: Option<Timestamp>,
    ) -> StepTimer {
        match step {
            StepTimeout::Keep => StepTimer::Unchanged,
            StepTimeout::Clear => StepTimer::Cleared,
            StepTimeout::Minutes(m) => {
                let at = now + Duration::from_minutes(m);
                // A step never outlives the execution's own in-progress bound.
                StepTimer::Set(in_progress_deadline.map_or(at, |d| at.min(d)))
            }
        }
    }

    /// Events for a device moving the execution to `to` (already checked as allowed).
    fn device_events(
        &self,
        to: JobExecutionStatus,
        status_details: Option<StatusDetails>,
        step: StepTimeout,
        now: Timestamp,
    ) -> Vec<Event> {
        use JobExecutionStatus as S;
        match (self.status, to) {
            (S::Queued, S::InProgress) => {
                let in_progress_deadline = self.in_progress_timeout.map(|t| now + t);
                vec![Event::ExecutionStarted {
                    at: now,
                    status_details,
                    in_progress_deadline,
                    step: self.step_timer(step, now, in_progress_deadline),
                }]
            }
            (_, S::InProgress) => {
                let unchanged = status_details
                    .as_ref()
                    .is_none_or(|d| *d == self.status_details);
                if unchanged && step == StepTimeout::Keep {
                    // A repeated progress report (MQTT delivers at least once) changes nothing.
                    return vec![];
                }
                vec![Event::ExecutionProgressed {
                    at: now,
                    status_details,
                    step: self.step_timer(step, now, self.in_progress_deadline),
                }]
            }
            _ => vec![Event::ExecutionFinished {
                status: to,
                at: now,
                status_details,
            }],
        }
    }
}

/// What can be asked of a job execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobExecutionIntent {
    /// Service: queue the first attempt.
    Queue {
        /// The job.
        job_id: JobId,
        /// The device.
        thing: ThingName,
        /// The job's in-progress timeout.
        in_progress_timeout: Option<Duration>,
    },
    /// Device: `…/jobs/{jobId}/update`. Refused as `TIMED_OUT` if in progress with a deadline
    /// at or before `now` (see the module docs for the order of checks).
    Update(UpdateRequest),
    /// Device: start-next picked this execution. Starts it if queued; no change if in progress
    /// (even past a deadline: the timer records the timeout).
    Start {
        /// Status details to store.
        status_details: Option<StatusDetails>,
        /// The step timer.
        step_timeout: StepTimeout,
    },
    /// Service: a timer fired; times out if a deadline has passed.
    CheckTimeout,
    /// Service: cancel (in-progress only with `force`).
    Cancel {
        /// Cancel even if in progress.
        force: bool,
        /// Why.
        reason: EndReason,
    },
    /// An operator cancels this one execution (in-progress only with `force`), optionally
    /// only at `expected_version`, merging `status_details` into the execution's details.
    OperatorCancel {
        /// Cancel even if in progress.
        force: bool,
        /// Refuse with `VersionMismatch` unless the execution is at this version.
        expected_version: Option<u64>,
        /// Keys to set in the status details (the others are kept).
        status_details: Option<StatusDetails>,
    },
    /// Service: delete the record (pending only with `force`).
    Remove {
        /// Remove even if pending.
        force: bool,
        /// Why.
        reason: EndReason,
    },
    /// Service: queue a new attempt after `FAILED` or `TIMED_OUT` (the retry policy decided).
    Retry,
}

/// The size of a `statusDetails` map as the limit counts it: the UTF-8 bytes of every key
/// and every value (JSON quoting and punctuation not included).
pub fn status_details_bytes(details: &StatusDetails) -> usize {
    details
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum()
}

/// Checks the device-supplied parts shared by update and start-next.
fn validate_device_input(
    status_details: Option<&StatusDetails>,
    step: StepTimeout,
) -> Result<(), Rejection> {
    if let Some(details) = status_details {
        // Every reply and notification about the execution carries these: bounded so each
        // fits the transport's payload limit.
        if details.len() > MAX_STATUS_DETAILS_KEYS {
            return Err(Rejection::invalid(
                "statusDetails",
                format!(
                    "has {} keys, at most {MAX_STATUS_DETAILS_KEYS} are allowed",
                    details.len()
                ),
            ));
        }
        let bytes = status_details_bytes(details);
        if bytes > MAX_STATUS_DETAILS_BYTES {
            return Err(Rejection::invalid(
                "statusDetails",
                format!(
                    "holds {bytes} bytes of keys and values, at most \
                     {MAX_STATUS_DETAILS_BYTES} are allowed"
                ),
            ));
        }
        if let Some((k, _)) = details
            .iter()
            .find(|(_, v)| v.chars().count() > MAX_DETAIL_VALUE_LEN)
        {
            return Err(Rejection::invalid(
                "statusDetails",
                format!("value of {k} is longer than {MAX_DETAIL_VALUE_LEN} characters"),
            ));
        }
    }
    if let StepTimeout::Minutes(m) = step {
        if m == 0 || m > MAX_TIMEOUT_MINUTES {
            return Err(Rejection::invalid(
                "stepTimeoutInMinutes",
                format!("must be 1 to {MAX_TIMEOUT_MINUTES}, or -1 to clear"),
            ));
        }
    }
    Ok(())
}

impl Aggregate for JobExecution {
    type Intent = JobExecutionIntent;
    const NAME: &'static str = "job execution";

    fn decide(
        state: Option<&Self>,
        intent: JobExecutionIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        use JobExecutionStatus as S;
        if let JobExecutionIntent::Queue {
            job_id,
            thing,
            in_progress_timeout,
        } = intent
        {
            if state.is_some() {
                return Err(Rejection::invalid(
                    "thingName",
                    "already has an execution of this job",
                ));
            }
            return Ok(vec![Event::ExecutionQueued {
                job_id,
                thing,
                execution_number: 1,
                queued_at: now,
                in_progress_timeout,
            }]);
        }
        let Some(s) = state else {
            return Err(not_found("job execution", "unknown"));
        };
        match intent {
            JobExecutionIntent::Queue { .. } => unreachable_queue(),
            JobExecutionIntent::Update(req) => {
                let to = req
                    .status
                    .ok_or_else(|| Rejection::invalid("status", "is required"))?;
                validate_device_input(req.status_details.as_ref(), req.step_timeout)?;
                if !to.is_device_settable() {
                    return Err(s.refuse(to, ErrorCode::InvalidRequest, "status"));
                }
                if req
                    .execution_number
                    .is_some_and(|n| n != s.execution_number)
                {
                    return Err(not_found(
                        "job execution",
                        format!(
                            "{}/{} #{}",
                            s.job_id,
                            s.thing,
                            req.execution_number.unwrap_or(0)
                        ),
                    ));
                }
                if let Some(expected) = req.expected_version {
                    if expected != s.version_number {
                        return Err(Rejection::VersionMismatch {
                            expected,
                            actual: s.version_number,
                            execution_state: Some(Box::new(s.state())),
                        });
                    }
                }
                // Timed out as of `now`, even if the timer has not fired yet.
                if s.next_deadline().is_some_and(|d| d <= now) {
                    return Err(Rejection::TerminalStateReached {
                        status: S::TimedOut.as_str(),
                        execution_state: Some(Box::new(s.state())),
                    });
                }
                check_transition(s.status, to, Actor::Device, false)
                    .map_err(|code| s.refuse(to, code, "status"))?;
                Ok(s.device_events(to, req.status_details, req.step_timeout, now))
            }
            JobExecutionIntent::Start {
                status_details,
                step_timeout,
            } => {
                validate_device_input(status_details.as_ref(), step_timeout)?;
                match s.status {
                    S::Queued => {
                        Ok(s.device_events(S::InProgress, status_details, step_timeout, now))
                    }
                    // start-next returns an execution already in progress unchanged.
                    S::InProgress => Ok(vec![]),
                    _ => Err(s.refuse(S::InProgress, ErrorCode::TerminalStateReached, "status")),
                }
            }
            JobExecutionIntent::CheckTimeout => {
                let due = |d: Option<Timestamp>| d.filter(|d| *d <= now);
                if s.status != S::InProgress {
                    return Ok(vec![]);
                }
                let cause = match (due(s.in_progress_deadline), due(s.step_deadline)) {
                    (Some(a), Some(b)) if b < a => TimeoutCause::Step,
                    (Some(_), _) => TimeoutCause::InProgress,
                    (None, Some(_)) => TimeoutCause::Step,
                    (None, None) => return Ok(vec![]),
                };
                Ok(vec![Event::ExecutionTimedOut { at: now, cause }])
            }
            JobExecutionIntent::Cancel { force, reason } => {
                check_transition(s.status, S::Canceled, Actor::Service, force)
                    .map_err(|code| s.refuse(S::Canceled, code, "status"))?;
                Ok(vec![Event::ExecutionCanceled {
                    at: now,
                    forced: s.status == S::InProgress,
                    reason,
                    status_details: None,
                }])
            }
            JobExecutionIntent::OperatorCancel {
                force,
                expected_version,
                status_details,
            } => {
                if let Some(expected) = expected_version {
                    if expected != s.version_number {
                        return Err(Rejection::VersionMismatch {
                            expected,
                            actual: s.version_number,
                            execution_state: Some(Box::new(s.state())),
                        });
                    }
                }
                check_transition(s.status, S::Canceled, Actor::Service, force)
                    .map_err(|code| s.refuse(S::Canceled, code, "status"))?;
                let merged = status_details.map(|patch| {
                    let mut d = s.status_details.clone();
                    d.extend(patch);
                    d
                });
                // The merged map must fit the same limits a device's details do.
                validate_device_input(merged.as_ref(), StepTimeout::Keep)?;
                Ok(vec![Event::ExecutionCanceled {
                    at: now,
                    forced: s.status == S::InProgress,
                    reason: EndReason::Operator,
                    status_details: merged,
                }])
            }
            JobExecutionIntent::Remove { force, reason } => {
                check_transition(s.status, S::Removed, Actor::Service, force)
                    .map_err(|code| s.refuse(S::Removed, code, "status"))?;
                Ok(vec![Event::ExecutionRemoved {
                    at: now,
                    forced: s.status.is_pending(),
                    reason,
                }])
            }
            JobExecutionIntent::Retry => {
                check_transition(s.status, S::Queued, Actor::Service, false)
                    .map_err(|code| s.refuse(S::Queued, code, "status"))?;
                if s.execution_number >= MAX_ATTEMPTS {
                    return Err(Rejection::invalid(
                        "executionNumber",
                        format!("at most {MAX_ATTEMPTS} attempts"),
                    ));
                }
                Ok(vec![Event::ExecutionRequeued {
                    execution_number: s.execution_number + 1,
                    queued_at: now,
                }])
            }
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        use JobExecutionStatus as S;
        let out_of_order = |s: &Option<Self>| EvolveError::OutOfOrder {
            event: event.type_name(),
            state: s.as_ref().map_or("none", |s| s.status.as_str()),
        };
        if let Event::ExecutionQueued {
            job_id,
            thing,
            execution_number,
            queued_at,
            in_progress_timeout,
        } = event
        {
            if state.is_some() {
                return Err(out_of_order(&state));
            }
            return Ok(Self {
                job_id: job_id.clone(),
                thing: thing.clone(),
                status: S::Queued,
                status_details: StatusDetails::new(),
                queued_at: *queued_at,
                started_at: None,
                last_updated_at: *queued_at,
                version_number: 1,
                execution_number: *execution_number,
                in_progress_timeout: *in_progress_timeout,
                in_progress_deadline: None,
                step_deadline: None,
            });
        }
        if event.execution_status().is_none() {
            return Err(foreign(Self::NAME, event));
        }
        let Some(mut s) = state else {
            return Err(out_of_order(&None));
        };
        // Which statuses each event may follow; evolve enforces order only, never rules.
        let follows = match event {
            Event::ExecutionStarted { .. } => s.status == S::Queued,
            Event::ExecutionProgressed { .. } | Event::ExecutionTimedOut { .. } => {
                s.status == S::InProgress
            }
            Event::ExecutionFinished { status, .. } => {
                s.status.is_pending() && status.is_terminal()
            }
            Event::ExecutionCanceled { .. } => s.status.is_pending(),
            Event::ExecutionRemoved { .. } => s.status != S::Removed,
            Event::ExecutionRequeued { .. } => matches!(s.status, S::Failed | S::TimedOut),
            _ => false,
        };
        if !follows {
            return Err(out_of_order(&Some(s)));
        }
        let apply_step = |s: &mut Self, step: &StepTimer| match step {
            StepTimer::Unchanged => {}
            StepTimer::Set(at) => s.step_deadline = Some(*at),
            StepTimer::Cleared => s.step_deadline = None,
        };
        match event {
            Event::ExecutionStarted {
                at,
                status_details,
                in_progress_deadline,
                step,
            } => {
                s.status = S::InProgress;
                s.started_at = Some(*at);
                s.last_updated_at = *at;
                s.in_progress_deadline = *in_progress_deadline;
                if let Some(d) = status_details {
                    s.status_details = d.clone();
                }
                apply_step(&mut s, step);
            }
            Event::ExecutionProgressed {
                at,
                status_details,
                step,
            } => {
                s.last_updated_at = *at;
                if let Some(d) = status_details {
                    s.status_details = d.clone();
                }
                apply_step(&mut s, step);
            }
            Event::ExecutionFinished {
                status,
                at,
                status_details,
            } => {
                s.status = *status;
                s.last_updated_at = *at;
                if let Some(d) = status_details {
                    s.status_details = d.clone();
                }
            }
            Event::ExecutionTimedOut { at, .. } => {
                s.status = S::TimedOut;
                s.last_updated_at = *at;
            }
            Event::ExecutionCanceled {
                at, status_details, ..
            } => {
                s.status = S::Canceled;
                s.last_updated_at = *at;
                if let Some(d) = status_details {
                    s.status_details = d.clone();
                }
            }
            Event::ExecutionRemoved { at, .. } => {
                s.status = S::Removed;
                s.last_updated_at = *at;
            }
            Event::ExecutionRequeued {
                execution_number,
                queued_at,
            } => {
                s.status = S::Queued;
                s.execution_number = *execution_number;
                s.queued_at = *queued_at;
                s.last_updated_at = *queued_at;
                s.started_at = None;
                s.status_details.clear();
            }
            _ => return Err(foreign(Self::NAME, event)),
        }
        if !s.status.is_pending() || s.status == S::Queued {
            s.in_progress_deadline = None;
            s.step_deadline = None;
        }
        s.version_number += 1;
        Ok(s)
    }
}

/// `Queue` is handled before the state lookup; this arm only keeps the match exhaustive.
fn unreachable_queue() -> Result<Vec<Event>, Rejection> {
    Err(Rejection::InternalError {
        detail: "queue intent reached the update path".into(),
    })
}
