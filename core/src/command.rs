//! The command execution aggregate: one real-time request to one online thing.
//!
//! `SENT` until the device answers, the TTL passes or the backend cancels; then one of the five
//! terminal statuses, for good.
//!
//! The deadline decides the outcome, whatever the order in which the runtime sees things: once
//! the TTL has passed (`now >= deadline`) the command is timed out, even if the timer has not
//! fired yet. A response or a cancel at or after the deadline is therefore refused with
//! `TerminalStateReached` and status `TIMED_OUT`, and only `CheckTimeout` records the timeout.
//! Request-shape errors (`InvalidRequest`) come first, then a status already terminal (refused
//! with that status), then the deadline.

use serde_json::Value;

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::device::CommandResponse;
use crate::event::{Event, EvolveError};
use crate::ids::{ExecutionId, ThingName};
use crate::limits::{
    self, MAX_COMMAND_ACTION_LEN, MAX_COMMAND_ID_LEN, MAX_COMMAND_PARAMS_BYTES, MAX_LATE_RESPONSES,
};
use crate::rejection::Rejection;
use crate::status::CommandStatus;
use crate::time::{Duration, Timestamp};

/// The shortest accepted TTL.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest accepted TTL: one day.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// The longest `statusReason` or cancel reason, in characters (as JSON Schema's `maxLength`
/// counts them, so the HTTP API's document can state the limit exactly).
pub const MAX_REASON_LEN: usize = 1024;

/// Whether `id` is a valid command template id: 1 to [`MAX_COMMAND_ID_LEN`] characters of
/// `[a-zA-Z0-9_-]`. The id is passed to devices as is, so it keeps to the id alphabet.
pub fn valid_command_id(id: &str) -> bool {
    (1..=MAX_COMMAND_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The state of one command execution.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandExecution {
    /// Its id.
    pub execution_id: ExecutionId,
    /// The device.
    pub thing: ThingName,
    /// Optional template id.
    pub command_id: Option<String>,
    /// What to do.
    pub action: String,
    /// Arguments.
    pub params: Value,
    /// Time to live.
    pub ttl: Duration,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// `sent_at + ttl`.
    pub deadline: Timestamp,
    /// Current status.
    pub status: CommandStatus,
    /// The device's result.
    pub result: Option<Value>,
    /// The device's or the backend's reason.
    pub status_reason: Option<String>,
    /// When it reached its terminal status.
    pub completed_at: Option<Timestamp>,
    /// Answers that arrived after it ended and were kept for the audit trail.
    pub late_responses: u32,
    /// Number of events that changed it (kept late answers do not count, so this is the
    /// stream's version minus `late_responses`).
    pub version: u64,
}

/// What can be asked of a command execution.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandIntent {
    /// Publish a new command.
    Send {
        /// New id (chosen by the runtime).
        execution_id: ExecutionId,
        /// The device.
        thing: ThingName,
        /// Optional template id.
        command_id: Option<String>,
        /// What to do (1 to [`MAX_COMMAND_ACTION_LEN`] characters).
        action: String,
        /// Arguments (at most [`MAX_COMMAND_PARAMS_BYTES`] of compact JSON).
        params: Value,
        /// Time to live (1 s to 1 day).
        ttl: Duration,
    },
    /// The device answered.
    Respond(CommandResponse),
    /// The timer fired; times out if the deadline has passed.
    CheckTimeout,
    /// The backend cancels; refused as `TIMED_OUT` at or after the deadline.
    Cancel {
        /// Why.
        reason: Option<String>,
    },
    /// The request can never reach the device (the transport cannot encode it, or the
    /// broker refused it): the command ends `FAILED`, its `statusReason` starting with
    /// [`UNDELIVERABLE_PREFIX`]. Refused like a cancel once the command has ended or timed
    /// out, so it never overrides the device's own answer.
    Undeliverable {
        /// What the transport said.
        reason: String,
    },
    /// The device answered a command that [`CommandIntent::Respond`] refused as ended
    /// (late, or a duplicate): the answer is kept as `CommandResponseIgnored`, which changes
    /// no status, up to [`MAX_LATE_RESPONSES`] per command (then nothing is kept). Refused
    /// while the command is still pending: that answer must go through `Respond`.
    RecordLate(CommandResponse),
}

/// How the `statusReason` of a command that could not be delivered begins.
pub const UNDELIVERABLE_PREFIX: &str = "undeliverable: ";

/// `UNDELIVERABLE_PREFIX` and `reason`, cut at a character boundary to fit
/// [`MAX_REASON_LEN`].
fn undeliverable_reason(reason: &str) -> String {
    let mut out = format!("{UNDELIVERABLE_PREFIX}{reason}");
    if out.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

impl Aggregate for CommandExecution {
    type Intent = CommandIntent;
    const NAME: &'static str = "command execution";

    fn decide(
        state: Option<&Self>,
        intent: CommandIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        match intent {
            CommandIntent::Send {
                execution_id,
                thing,
                command_id,
                action,
                params,
                ttl,
            } => {
                if state.is_some() {
                    return Err(Rejection::invalid("executionId", "already exists"));
                }
                if action.is_empty() || action.chars().count() > MAX_COMMAND_ACTION_LEN {
                    return Err(Rejection::invalid(
                        "action",
                        format!("must be 1 to {MAX_COMMAND_ACTION_LEN} characters"),
                    ));
                }
                if command_id
                    .as_deref()
                    .is_some_and(|id| !valid_command_id(id))
                {
                    return Err(Rejection::invalid(
                        "commandId",
                        format!("must be 1 to {MAX_COMMAND_ID_LEN} characters of [a-zA-Z0-9_-]"),
                    ));
                }
                // The request carries the params to the device: bounded so it always fits
                // the transport's payload limit.
                let params_len = limits::json_len(&params);
                if params_len > MAX_COMMAND_PARAMS_BYTES {
                    return Err(Rejection::invalid(
                        "params",
                        format!(
                            "is {params_len} bytes of JSON, at most {MAX_COMMAND_PARAMS_BYTES} \
                             are allowed"
                        ),
                    ));
                }
                if ttl < MIN_TTL || ttl > MAX_TTL {
                    return Err(Rejection::invalid(
                        "ttl",
                        format!(
                            "must be {} to {} seconds",
                            MIN_TTL.as_secs(),
                            MAX_TTL.as_secs()
                        ),
                    ));
                }
                Ok(vec![Event::CommandSent {
                    execution_id,
                    thing,
                    command_id,
                    action,
                    params,
                    ttl,
                    sent_at: now,
                }])
            }
            CommandIntent::Respond(response) => {
                let state = state.ok_or_else(|| not_found("command execution", "unknown"))?;
                if !matches!(
                    response.status,
                    CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Rejected
                ) {
                    return Err(Rejection::invalid(
                        "status",
                        "must be SUCCEEDED, FAILED or REJECTED",
                    ));
                }
                if response
                    .status_reason
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
                {
                    return Err(Rejection::invalid(
                        "statusReason",
                        format!("must be at most {MAX_REASON_LEN} characters"),
                    ));
                }
                ensure_pending(state, now)?;
                Ok(vec![Event::CommandResponded {
                    status: response.status,
                    result: response.result,
                    status_reason: response.status_reason,
                    at: now,
                }])
            }
            CommandIntent::CheckTimeout => match state {
                Some(s) if s.status == CommandStatus::Sent && now >= s.deadline => {
                    Ok(vec![Event::CommandTimedOut { at: now }])
                }
                // A timer for a finished or unknown command is simply stale.
                _ => Ok(vec![]),
            },
            CommandIntent::Cancel { reason } => {
                if reason
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
                {
                    return Err(Rejection::invalid(
                        "reason",
                        format!("must be at most {MAX_REASON_LEN} characters"),
                    ));
                }
                let state = state.ok_or_else(|| not_found("command execution", "unknown"))?;
                ensure_pending(state, now)?;
                Ok(vec![Event::CommandCanceled { at: now, reason }])
            }
            CommandIntent::Undeliverable { reason } => {
                let state = state.ok_or_else(|| not_found("command execution", "unknown"))?;
                ensure_pending(state, now)?;
                // The stored fact is the one a device's FAILED answer records: the command
                // failed, and the reason says the service, not the device, ended it.
                Ok(vec![Event::CommandResponded {
                    status: CommandStatus::Failed,
                    result: None,
                    status_reason: Some(undeliverable_reason(&reason)),
                    at: now,
                }])
            }
            CommandIntent::RecordLate(response) => {
                let state = state.ok_or_else(|| not_found("command execution", "unknown"))?;
                if ensure_pending(state, now).is_ok() {
                    return Err(Rejection::invalid(
                        "status",
                        "the command is still pending; its answer is not late",
                    ));
                }
                // The bounds of `Respond` apply, so a late answer stores nothing larger than a
                // timely one could.
                if response
                    .status_reason
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
                    || state.late_responses >= MAX_LATE_RESPONSES
                {
                    return Ok(vec![]);
                }
                Ok(vec![Event::CommandResponseIgnored {
                    status: response.status,
                    result: response.result,
                    status_reason: response.status_reason,
                    at: now,
                }])
            }
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        let out_of_order = |s: &Option<Self>| EvolveError::OutOfOrder {
            event: event.type_name(),
            state: s.as_ref().map_or("none", |s| s.status.as_str()),
        };
        match event {
            Event::CommandSent {
                execution_id,
                thing,
                command_id,
                action,
                params,
                ttl,
                sent_at,
            } => {
                if state.is_some() {
                    return Err(out_of_order(&state));
                }
                Ok(Self {
                    execution_id: execution_id.clone(),
                    thing: thing.clone(),
                    command_id: command_id.clone(),
                    action: action.clone(),
                    params: params.clone(),
                    ttl: *ttl,
                    sent_at: *sent_at,
                    deadline: *sent_at + *ttl,
                    status: CommandStatus::Sent,
                    result: None,
                    status_reason: None,
                    completed_at: None,
                    late_responses: 0,
                    version: 1,
                })
            }
            Event::CommandResponded {
                status,
                result,
                status_reason,
                at,
            } => {
                let mut s = pending(state, event)?;
                s.status = *status;
                s.result = result.clone();
                s.status_reason = status_reason.clone();
                s.completed_at = Some(*at);
                Ok(s)
            }
            Event::CommandTimedOut { at } => {
                let mut s = pending(state, event)?;
                s.status = CommandStatus::TimedOut;
                s.completed_at = Some(*at);
                Ok(s)
            }
            Event::CommandCanceled { at, reason } => {
                let mut s = pending(state, event)?;
                s.status = CommandStatus::Canceled;
                s.status_reason = reason.clone();
                s.completed_at = Some(*at);
                Ok(s)
            }
            Event::CommandResponseIgnored { .. } => match state {
                // Beside the execution, not a change of it: `version` counts changes only, so
                // a late answer never looks like one to whoever compares versions.
                Some(mut s) => {
                    s.late_responses += 1;
                    Ok(s)
                }
                None => Err(out_of_order(&state)),
            },
            other => Err(foreign(Self::NAME, other)),
        }
    }
}

/// The state an ending event applies to (bumped to the next version), or why it cannot apply.
fn pending(
    state: Option<CommandExecution>,
    event: &Event,
) -> Result<CommandExecution, EvolveError> {
    match state {
        Some(mut s) if s.status == CommandStatus::Sent => {
            s.version += 1;
            Ok(s)
        }
        other => Err(EvolveError::OutOfOrder {
            event: event.type_name(),
            state: other.as_ref().map_or("none", |s| s.status.as_str()),
        }),
    }
}

/// Refuses a change to a command that has ended, or that is timed out as of `now` because its
/// deadline has passed although the timer has not fired yet.
fn ensure_pending(state: &CommandExecution, now: Timestamp) -> Result<(), Rejection> {
    if state.status.is_terminal() {
        return Err(Rejection::TerminalStateReached {
            status: state.status.as_str(),
            execution_state: None,
        });
    }
    if now >= state.deadline {
        return Err(Rejection::TerminalStateReached {
            status: CommandStatus::TimedOut.as_str(),
            execution_state: None,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent() -> CommandExecution {
        let intent = CommandIntent::Send {
            execution_id: ExecutionId::parse("c-1").unwrap(),
            thing: ThingName::parse("lamp-1").unwrap(),
            command_id: None,
            action: "on".into(),
            params: Value::Null,
            ttl: Duration::from_secs(10),
        };
        CommandExecution::execute(None, intent, Timestamp::from_secs(100))
            .unwrap()
            .0
            .unwrap()
    }

    #[test]
    fn an_undeliverable_request_fails_the_command_with_a_bounded_reason() {
        let reason = "é".repeat(MAX_REASON_LEN);
        let (state, events) = CommandExecution::execute(
            Some(sent()),
            CommandIntent::Undeliverable { reason },
            Timestamp::from_secs(101),
        )
        .unwrap();
        let state = state.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(state.status, CommandStatus::Failed);
        let why = state.status_reason.unwrap();
        assert!(why.starts_with(UNDELIVERABLE_PREFIX), "{why}");
        assert!(why.len() <= MAX_REASON_LEN);
        // Once ended (or past the deadline) it is refused and changes nothing.
        let again = CommandExecution::execute(
            Some(CommandExecution {
                status: CommandStatus::Succeeded,
                ..sent()
            }),
            CommandIntent::Undeliverable { reason: "x".into() },
            Timestamp::from_secs(101),
        );
        assert!(matches!(
            again,
            Err(Rejection::TerminalStateReached {
                status: "SUCCEEDED",
                ..
            })
        ));
        let late = CommandExecution::execute(
            Some(sent()),
            CommandIntent::Undeliverable { reason: "x".into() },
            Timestamp::from_secs(110),
        );
        assert!(matches!(
            late,
            Err(Rejection::TerminalStateReached {
                status: "TIMED_OUT",
                ..
            })
        ));
    }
}
