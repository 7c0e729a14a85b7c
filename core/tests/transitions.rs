//! The transition rules, walked exhaustively: every (from, to, actor, force) of the job
//! execution table of docs/design.md, and every (status, intent) of the command execution.
//!
//! The allowed set is written out by hand from the design table, independently of the code,
//! so a change to `check_transition` or `decide` that drifts from the design fails here.
//! `decide` is walked both before and after the in-progress deadline: past it, a device's
//! well-formed update to an IN_PROGRESS execution is refused as timed out.

mod common;

use common::*;
use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::device::{CommandResponse, UpdateRequest};
use fleetops_core::event::EndReason;
use fleetops_core::job_execution::{check_transition, Actor, JobExecution, JobExecutionIntent};
use fleetops_core::{
    Aggregate, CommandStatus as C, Duration, ErrorCode, Event, ExecutionId, JobExecutionStatus as S,
};

/// (from, to, actor, needs force) — every allowed job execution transition.
const ALLOWED: &[(S, S, Actor, bool)] = &[
    (S::Queued, S::InProgress, Actor::Device, false),
    (S::Queued, S::Succeeded, Actor::Device, false),
    (S::Queued, S::Failed, Actor::Device, false),
    (S::Queued, S::Rejected, Actor::Device, false),
    (S::InProgress, S::InProgress, Actor::Device, false),
    (S::InProgress, S::Succeeded, Actor::Device, false),
    (S::InProgress, S::Failed, Actor::Device, false),
    (S::InProgress, S::Rejected, Actor::Device, false),
    (S::InProgress, S::TimedOut, Actor::Service, false),
    (S::Queued, S::Canceled, Actor::Service, false),
    (S::InProgress, S::Canceled, Actor::Service, true),
    (S::Succeeded, S::Removed, Actor::Service, false),
    (S::Failed, S::Removed, Actor::Service, false),
    (S::Rejected, S::Removed, Actor::Service, false),
    (S::TimedOut, S::Removed, Actor::Service, false),
    (S::Canceled, S::Removed, Actor::Service, false),
    (S::Queued, S::Removed, Actor::Service, true),
    (S::InProgress, S::Removed, Actor::Service, true),
    (S::Failed, S::Queued, Actor::Service, false),
    (S::TimedOut, S::Queued, Actor::Service, false),
];

const DEVICE_STATUSES: [S; 4] = [S::InProgress, S::Succeeded, S::Failed, S::Rejected];

/// The refusal code the design gives a transition that is not allowed.
fn expected_refusal(from: S, to: S, actor: Actor) -> ErrorCode {
    let device_status = DEVICE_STATUSES.contains(&to);
    if (actor == Actor::Device) != device_status {
        ErrorCode::InvalidRequest
    } else if from == S::Removed
        || (from.is_terminal() && !matches!(to, S::Removed | S::Queued))
        || (to == S::Queued && matches!(from, S::Succeeded | S::Rejected | S::Canceled))
    {
        // Nothing leaves a terminal status but deletion, and a retry of FAILED / TIMED_OUT.
        ErrorCode::TerminalStateReached
    } else {
        ErrorCode::InvalidStateTransition
    }
}

fn expected(from: S, to: S, actor: Actor, force: bool) -> Result<(), ErrorCode> {
    let allowed = ALLOWED
        .iter()
        .any(|&(f, t, a, needs)| f == from && t == to && a == actor && (force || !needs));
    if allowed {
        Ok(())
    } else {
        Err(expected_refusal(from, to, actor))
    }
}

#[test]
fn the_table_matches_the_design_for_every_triple() {
    let mut checked = 0;
    for from in S::ALL {
        for to in S::ALL {
            for actor in [Actor::Device, Actor::Service] {
                for force in [false, true] {
                    assert_eq!(
                        check_transition(from, to, actor, force),
                        expected(from, to, actor, force),
                        "{from:?} -> {to:?} by {actor:?} (force {force})"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 8 * 8 * 2 * 2);
}

/// The intent that asks for `to` as `actor`, if one exists.
fn intent_for(to: S, actor: Actor, force: bool) -> Option<JobExecutionIntent> {
    Some(match (actor, to) {
        (Actor::Device, _) => JobExecutionIntent::Update(UpdateRequest {
            status: Some(to),
            ..UpdateRequest::default()
        }),
        (Actor::Service, S::Canceled) => JobExecutionIntent::Cancel {
            force,
            reason: EndReason::Operator,
        },
        (Actor::Service, S::Removed) => JobExecutionIntent::Remove {
            force,
            reason: EndReason::Operator,
        },
        (Actor::Service, S::Queued) => JobExecutionIntent::Retry,
        (Actor::Service, S::TimedOut) => JobExecutionIntent::CheckTimeout,
        // The service has no intent that reports a device outcome.
        (Actor::Service, _) => return None,
    })
}

/// What `decide` must answer at `now`: the table, except that an in-progress execution whose
/// deadline has passed is timed out as of `now`, so a device's well-formed update is refused
/// as terminal even before the timer fires.
fn expected_at(
    from: S,
    to: S,
    actor: Actor,
    force: bool,
    past_deadline: bool,
) -> Result<(), ErrorCode> {
    let table = expected(from, to, actor, force);
    if past_deadline
        && actor == Actor::Device
        && from == S::InProgress
        && table != Err(ErrorCode::InvalidRequest)
    {
        return Err(ErrorCode::TerminalStateReached);
    }
    table
}

#[test]
fn decide_follows_the_table_from_every_status() {
    let mut decided = 0;
    for from in S::ALL {
        let state = JobExecution::replay(&history_to(from)).expect("history evolves");
        let state = state.expect("exists");
        assert_eq!(state.status, from);
        for to in S::ALL {
            for actor in [Actor::Device, Actor::Service] {
                for force in [false, true] {
                    let Some(intent) = intent_for(to, actor, force) else {
                        continue;
                    };
                    // Late enough for every in-progress deadline to have passed, so timers
                    // fire; device updates are also walked before the deadline (710 s).
                    let times: &[(u64, bool)] = match actor {
                        Actor::Device => &[(120, false), (100_000, true)],
                        Actor::Service => &[(100_000, true)],
                    };
                    for &(secs, late) in times {
                        let now = t(secs);
                        let outcome = JobExecution::decide(Some(&state), intent.clone(), now);
                        let ctx =
                            format!("{from:?} -> {to:?} by {actor:?} (force {force}) at {secs} s");
                        match (expected_at(from, to, actor, force, late), outcome) {
                            (Ok(()), Ok(events)) => {
                                assert!(!events.is_empty() || from == to, "{ctx}: no events");
                                let mut s = Some(state.clone());
                                for e in &events {
                                    s = Some(JobExecution::evolve(s, e).expect("evolves"));
                                }
                                assert_eq!(s.expect("exists").status, to, "{ctx}");
                            }
                            // A timer for an execution that is not in progress is stale: no-op.
                            (Err(_), Ok(events)) if intent == JobExecutionIntent::CheckTimeout => {
                                assert!(events.is_empty(), "{ctx}: stale timer emitted {events:?}")
                            }
                            (Err(code), Err(r)) => {
                                assert_eq!(r.code(), code, "{ctx}: {r:?}");
                                if code == ErrorCode::TerminalStateReached
                                    && late
                                    && from == S::InProgress
                                {
                                    // Timed out as of now: says so, and shows the unchanged state.
                                    assert_eq!(
                                        r,
                                        fleetops_core::rejection::Rejection::TerminalStateReached {
                                            status: "TIMED_OUT",
                                            execution_state: Some(Box::new(state.state())),
                                        },
                                        "{ctx}"
                                    );
                                }
                            }
                            (want, got) => panic!("{ctx}: expected {want:?}, got {got:?}"),
                        }
                        decided += 1;
                    }
                }
            }
        }
    }
    assert!(decided > 150, "only {decided} decisions walked");
}

fn sent() -> Event {
    Event::CommandSent {
        execution_id: ExecutionId::parse("c1").expect("valid"),
        thing: thing(),
        command_id: None,
        action: "reboot".into(),
        params: serde_json::json!({}),
        ttl: Duration::from_secs(30),
        sent_at: t(100),
    }
}

fn command_history(status: C) -> Vec<Event> {
    let end = match status {
        C::Sent => None,
        C::Succeeded | C::Failed | C::Rejected => Some(Event::CommandResponded {
            status,
            result: None,
            status_reason: None,
            at: t(101),
        }),
        C::TimedOut => Some(Event::CommandTimedOut { at: t(130) }),
        C::Canceled => Some(Event::CommandCanceled {
            at: t(101),
            reason: None,
        }),
    };
    std::iter::once(sent()).chain(end).collect()
}

#[test]
fn command_executions_end_once_and_for_all() {
    for from in C::ALL {
        let state = CommandExecution::replay(&command_history(from)).expect("evolves");
        let state = state.expect("exists");
        assert_eq!(state.status, from);
        for answer in [C::Succeeded, C::Failed, C::Rejected] {
            let respond = CommandIntent::Respond(CommandResponse {
                status: answer,
                result: None,
                status_reason: None,
            });
            let out = CommandExecution::decide(Some(&state), respond, t(110));
            if from == C::Sent {
                let events = out.expect("a sent command accepts a response");
                assert_eq!(events.len(), 1);
                let s = CommandExecution::evolve(Some(state.clone()), &events[0]).expect("evolves");
                assert_eq!(s.status, answer);
            } else {
                assert_eq!(
                    out.expect_err("late").code(),
                    ErrorCode::TerminalStateReached
                );
            }
        }
        // A device can never claim SENT, TIMED_OUT or CANCELED.
        for bogus in [C::Sent, C::TimedOut, C::Canceled] {
            let respond = CommandIntent::Respond(CommandResponse {
                status: bogus,
                result: None,
                status_reason: None,
            });
            let out = CommandExecution::decide(Some(&state), respond, t(110));
            assert_eq!(
                out.expect_err("bogus").code(),
                ErrorCode::InvalidRequest,
                "{from:?}"
            );
        }
        let cancel =
            CommandExecution::decide(Some(&state), CommandIntent::Cancel { reason: None }, t(110));
        match from {
            C::Sent => assert!(matches!(
                cancel.as_deref(),
                Ok([Event::CommandCanceled { .. }])
            )),
            _ => assert_eq!(
                cancel.expect_err("terminal").code(),
                ErrorCode::TerminalStateReached
            ),
        }
        // At the deadline the command is timed out as of now, timer or not: no cancel either.
        let late_cancel =
            CommandExecution::decide(Some(&state), CommandIntent::Cancel { reason: None }, t(130));
        assert_eq!(
            late_cancel.expect_err("timed out or terminal").code(),
            ErrorCode::TerminalStateReached,
            "{from:?}"
        );
        let timeout = CommandExecution::decide(Some(&state), CommandIntent::CheckTimeout, t(130));
        match from {
            C::Sent => assert!(matches!(
                timeout.as_deref(),
                Ok([Event::CommandTimedOut { .. }])
            )),
            _ => assert_eq!(timeout, Ok(vec![])),
        }
    }
}
