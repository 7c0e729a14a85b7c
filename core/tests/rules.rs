//! One given/when/then test per rule of the three aggregates and groups.

mod common;

use common::*;
use fleetops_core::command::{CommandExecution, CommandIntent, MAX_REASON_LEN};
use fleetops_core::config::{
    AbortCriterion, EndBehavior, FailureType, JobConfig, Schedule, TargetSelection, Targets,
};
use fleetops_core::device::{CommandResponse, StepTimeout, UpdateRequest};
use fleetops_core::event::{JobCancelReason, StatusDetails, StepTimer, TimeoutCause};
use fleetops_core::group::{Group, GroupIntent};
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent as I};
use fleetops_core::limits;
use fleetops_core::projection::JobCounters;
use fleetops_core::rejection::Rejection;
use fleetops_core::testkit::gwt::given;
use fleetops_core::{
    Aggregate, CommandStatus, Duration, ErrorCode, Event, ExecutionId, GroupName,
    JobExecutionStatus as S, ThingName,
};
use serde_json::json;

fn update(status: S) -> UpdateRequest {
    UpdateRequest {
        status: Some(status),
        ..UpdateRequest::default()
    }
}

fn details(v: &str) -> StatusDetails {
    [(
        StatusDetailKey::parse("progress").expect("valid"),
        v.to_owned(),
    )]
    .into()
}

// ---- job execution ---------------------------------------------------------------------------

#[test]
fn starting_arms_the_in_progress_timer() {
    given::<JobExecution>([queued()])
        .when(I::Update(update(S::InProgress)), t(200))
        .then_expect([Event::ExecutionStarted {
            at: t(200),
            status_details: None,
            in_progress_deadline: Some(t(200) + Duration::from_minutes(10)),
            step: StepTimer::Unchanged,
        }]);
}

#[test]
fn a_step_timeout_is_set_replaced_then_cleared() {
    let with_step = |m| UpdateRequest {
        step_timeout: StepTimeout::Minutes(m),
        ..update(S::InProgress)
    };
    let s = given::<JobExecution>([queued(), started(110)])
        .when(I::Update(with_step(2)), t(120))
        .then_expect([Event::ExecutionProgressed {
            at: t(120),
            status_details: None,
            step: StepTimer::Set(t(240)),
        }])
        .expect("exists");
    assert_eq!(s.step_deadline, Some(t(240)));
    let history = vec![
        queued(),
        started(110),
        Event::ExecutionProgressed {
            at: t(120),
            status_details: None,
            step: StepTimer::Set(t(240)),
        },
    ];
    // Replaced: a new value starts from now.
    given::<JobExecution>(history.clone())
        .when(I::Update(with_step(3)), t(130))
        .then_expect([Event::ExecutionProgressed {
            at: t(130),
            status_details: None,
            step: StepTimer::Set(t(310)),
        }]);
    // Cleared with -1: the timer no longer fires.
    let cleared = UpdateRequest {
        step_timeout: StepTimeout::Clear,
        ..update(S::InProgress)
    };
    let s = given::<JobExecution>(history)
        .when(I::Update(cleared), t(130))
        .then_expect([Event::ExecutionProgressed {
            at: t(130),
            status_details: None,
            step: StepTimer::Cleared,
        }])
        .expect("exists");
    assert_eq!(s.step_deadline, None);
    given::<JobExecution>([queued(), started(110)])
        .when(I::CheckTimeout, t(300))
        .then_nothing();
}

#[test]
fn a_step_never_outlives_the_in_progress_bound() {
    // In-progress deadline is 110 s + 10 min = 710 s; a 60-minute step is capped there.
    given::<JobExecution>([queued(), started(110)])
        .when(
            I::Update(UpdateRequest {
                step_timeout: StepTimeout::Minutes(60),
                ..update(S::InProgress)
            }),
            t(120),
        )
        .then_expect([Event::ExecutionProgressed {
            at: t(120),
            status_details: None,
            step: StepTimer::Set(t(710)),
        }]);
}

#[test]
fn out_of_range_step_timeouts_are_invalid_requests() {
    for m in [0, 10_081] {
        given::<JobExecution>([queued(), started(110)])
            .when(
                I::Update(UpdateRequest {
                    step_timeout: StepTimeout::Minutes(m),
                    ..update(S::InProgress)
                }),
                t(120),
            )
            .then_reject(ErrorCode::InvalidRequest);
    }
}

#[test]
fn timers_fire_only_when_due_and_name_their_cause() {
    let step_at_300 = Event::ExecutionProgressed {
        at: t(120),
        status_details: None,
        step: StepTimer::Set(t(300)),
    };
    given::<JobExecution>([queued(), started(110), step_at_300.clone()])
        .when(I::CheckTimeout, t(299))
        .then_nothing();
    given::<JobExecution>([queued(), started(110), step_at_300])
        .when(I::CheckTimeout, t(300))
        .then_expect([Event::ExecutionTimedOut {
            at: t(300),
            cause: TimeoutCause::Step,
        }]);
    given::<JobExecution>([queued(), started(110)])
        .when(I::CheckTimeout, t(710))
        .then_expect([Event::ExecutionTimedOut {
            at: t(710),
            cause: TimeoutCause::InProgress,
        }]);
    // A queued execution has no running timer.
    given::<JobExecution>([queued()])
        .when(I::CheckTimeout, t(100_000))
        .then_nothing();
}

/// `t(secs)` moved by `ms` milliseconds (negative: earlier).
fn at_ms(secs: u64, ms: i64) -> fleetops_core::Timestamp {
    let base = t(secs).as_millis();
    fleetops_core::Timestamp::from_millis(base.checked_add_signed(ms).expect("in range"))
}

/// The refusal of an update to an execution timed out as of now, before the timer ran.
fn timed_out(history: &[Event]) -> Rejection {
    let state = JobExecution::replay(history)
        .expect("evolves")
        .expect("exists");
    Rejection::TerminalStateReached {
        status: "TIMED_OUT",
        execution_state: Some(Box::new(state.state())),
    }
}

#[test]
fn an_update_at_the_in_progress_deadline_is_late_even_before_the_timer_fires() {
    // Started at 110 s with a 10-minute timeout: the in-progress deadline is 710 s.
    let h = vec![queued(), started(110)];
    given::<JobExecution>(h.clone())
        .when(I::Update(update(S::Succeeded)), at_ms(710, -1))
        .then_expect([Event::ExecutionFinished {
            status: S::Succeeded,
            at: at_ms(710, -1),
            status_details: None,
        }]);
    for status in [S::Succeeded, S::Failed, S::Rejected, S::InProgress] {
        given::<JobExecution>(h.clone())
            .when(I::Update(update(status)), t(710))
            .then_reject_with(timed_out(&h));
    }
    // The timer records it; until then the state is unchanged.
    given::<JobExecution>(h.clone())
        .when(I::CheckTimeout, t(710))
        .then_expect([Event::ExecutionTimedOut {
            at: t(710),
            cause: TimeoutCause::InProgress,
        }]);
    // start-next hands the in-progress execution back unchanged, deadline or not.
    given::<JobExecution>(h)
        .when(
            I::Start {
                status_details: None,
                step_timeout: StepTimeout::Keep,
            },
            t(710),
        )
        .then_nothing();
}

#[test]
fn an_update_at_the_step_deadline_is_late_even_before_the_timer_fires() {
    let h = vec![
        queued(),
        started(110),
        Event::ExecutionProgressed {
            at: t(120),
            status_details: None,
            step: StepTimer::Set(t(300)),
        },
    ];
    // Even a report that would re-arm the step timer comes too late at the deadline.
    let rearm = UpdateRequest {
        step_timeout: StepTimeout::Minutes(5),
        ..update(S::InProgress)
    };
    given::<JobExecution>(h.clone())
        .when(I::Update(rearm.clone()), at_ms(300, -1))
        .then_expect([Event::ExecutionProgressed {
            at: at_ms(300, -1),
            status_details: None,
            step: StepTimer::Set(at_ms(600, -1)),
        }]);
    given::<JobExecution>(h.clone())
        .when(I::Update(rearm), t(300))
        .then_reject_with(timed_out(&h));
    given::<JobExecution>(h.clone())
        .when(I::Update(update(S::Succeeded)), t(300))
        .then_reject_with(timed_out(&h));
}

#[test]
fn a_late_update_is_checked_after_shape_attempt_and_version() {
    let h = vec![queued(), started(110)];
    // Request shape first.
    given::<JobExecution>(h.clone())
        .when(I::Update(update(S::TimedOut)), t(710))
        .then_reject(ErrorCode::InvalidRequest);
    given::<JobExecution>(h.clone())
        .when(I::Update(UpdateRequest::default()), t(710))
        .then_reject(ErrorCode::InvalidRequest);
    // Then the addressed attempt and the expected version.
    given::<JobExecution>(h.clone())
        .when(
            I::Update(UpdateRequest {
                execution_number: Some(2),
                ..update(S::Succeeded)
            }),
            t(710),
        )
        .then_reject(ErrorCode::ResourceNotFound);
    given::<JobExecution>(h.clone())
        .when(
            I::Update(UpdateRequest {
                expected_version: Some(1),
                ..update(S::Succeeded)
            }),
            t(710),
        )
        .then_reject(ErrorCode::VersionMismatch);
    // Then the deadline, before the transition table.
    given::<JobExecution>(h.clone())
        .when(
            I::Update(UpdateRequest {
                expected_version: Some(2),
                execution_number: Some(1),
                ..update(S::Succeeded)
            }),
            t(710),
        )
        .then_reject_with(timed_out(&h));
    // A queued execution has no running deadline: it can still start, however late.
    given::<JobExecution>([queued()])
        .when(I::Update(update(S::InProgress)), t(100_000))
        .then_expect([Event::ExecutionStarted {
            at: t(100_000),
            status_details: None,
            in_progress_deadline: Some(t(100_000) + Duration::from_minutes(10)),
            step: StepTimer::Unchanged,
        }]);
}

#[test]
fn expected_version_mismatch_returns_the_current_state() {
    let r = given::<JobExecution>([queued(), started(110)])
        .when(
            I::Update(UpdateRequest {
                expected_version: Some(1),
                ..update(S::Succeeded)
            }),
            t(120),
        )
        .then_reject(ErrorCode::VersionMismatch);
    let state = r.execution_state().expect("state attached");
    assert_eq!((state.status, state.version_number), (S::InProgress, 2));
    given::<JobExecution>([queued(), started(110)])
        .when(
            I::Update(UpdateRequest {
                expected_version: Some(2),
                ..update(S::Succeeded)
            }),
            t(120),
        )
        .then_expect([Event::ExecutionFinished {
            status: S::Succeeded,
            at: t(120),
            status_details: None,
        }]);
}

#[test]
fn an_update_for_another_attempt_is_not_found() {
    given::<JobExecution>([queued()])
        .when(
            I::Update(UpdateRequest {
                execution_number: Some(2),
                ..update(S::InProgress)
            }),
            t(120),
        )
        .then_reject(ErrorCode::ResourceNotFound);
}

#[test]
fn a_repeated_progress_report_changes_nothing() {
    let with = UpdateRequest {
        status_details: Some(details("50")),
        ..update(S::InProgress)
    };
    let h = vec![
        queued(),
        Event::ExecutionStarted {
            at: t(110),
            status_details: Some(details("50")),
            in_progress_deadline: Some(t(710)),
            step: StepTimer::Unchanged,
        },
    ];
    given::<JobExecution>(h.clone())
        .when(I::Update(with), t(120))
        .then_nothing();
    given::<JobExecution>(h)
        .when(I::Update(update(S::InProgress)), t(120))
        .then_nothing();
}

#[test]
fn a_duplicate_terminal_report_is_refused_with_the_state() {
    let h = vec![
        queued(),
        Event::ExecutionFinished {
            status: S::Succeeded,
            at: t(110),
            status_details: None,
        },
    ];
    let r = given::<JobExecution>(h.clone())
        .when(I::Update(update(S::Succeeded)), t(120))
        .then_reject(ErrorCode::TerminalStateReached);
    assert_eq!(r.execution_state().map(|s| s.status), Some(S::Succeeded));
    // A stale IN_PROGRESS arriving after the final report is refused as well.
    given::<JobExecution>(h)
        .when(I::Update(update(S::InProgress)), t(120))
        .then_reject(ErrorCode::TerminalStateReached);
}

#[test]
fn status_detail_values_are_bounded() {
    let long = "x".repeat(1025);
    given::<JobExecution>([queued()])
        .when(
            I::Update(UpdateRequest {
                status_details: Some(details(&long)),
                ..update(S::InProgress)
            }),
            t(120),
        )
        .then_reject(ErrorCode::InvalidRequest);
    given::<JobExecution>([queued()])
        .when(I::Update(UpdateRequest::default()), t(120))
        .then_reject(ErrorCode::InvalidRequest);
}

#[test]
fn start_next_starts_queued_and_keeps_in_progress() {
    given::<JobExecution>([queued(), started(110)])
        .when(
            I::Start {
                status_details: None,
                step_timeout: StepTimeout::Keep,
            },
            t(120),
        )
        .then_nothing();
    given::<JobExecution>([queued()])
        .when(
            I::Start {
                status_details: None,
                step_timeout: StepTimeout::Minutes(1),
            },
            t(120),
        )
        .then_expect([Event::ExecutionStarted {
            at: t(120),
            status_details: None,
            in_progress_deadline: Some(t(720)),
            step: StepTimer::Set(t(180)),
        }]);
}

#[test]
fn retries_bump_the_execution_number_up_to_ten_attempts() {
    let failed = Event::ExecutionFinished {
        status: S::Failed,
        at: t(110),
        status_details: None,
    };
    let s = given::<JobExecution>([queued(), failed.clone()])
        .when(I::Retry, t(120))
        .then_expect([Event::ExecutionRequeued {
            execution_number: 2,
            queued_at: t(120),
        }])
        .expect("exists");
    assert_eq!(
        (s.status, s.execution_number, s.version_number),
        (S::Queued, 2, 3)
    );
    let mut h = vec![queued(), failed.clone()];
    for n in 2..=10 {
        h.push(Event::ExecutionRequeued {
            execution_number: n,
            queued_at: t(120),
        });
        h.push(failed.clone());
    }
    given::<JobExecution>(h)
        .when(I::Retry, t(130))
        .then_reject(ErrorCode::InvalidRequest);
}

#[test]
fn unknown_executions_are_not_found() {
    given::<JobExecution>([])
        .when(I::Update(update(S::InProgress)), t(1))
        .then_reject(ErrorCode::ResourceNotFound);
}

// ---- command execution -----------------------------------------------------------------------

fn send(ttl: u64) -> CommandIntent {
    CommandIntent::Send {
        execution_id: ExecutionId::parse("c1").expect("valid"),
        thing: thing(),
        command_id: None,
        action: "unlock".into(),
        params: json!({"door": 1}),
        ttl: Duration::from_secs(ttl),
    }
}

#[test]
fn a_command_is_sent_then_answered() {
    let sent = given::<CommandExecution>([])
        .when(send(30), t(100))
        .then_expect([Event::CommandSent {
            execution_id: ExecutionId::parse("c1").expect("valid"),
            thing: thing(),
            command_id: None,
            action: "unlock".into(),
            params: json!({"door": 1}),
            ttl: Duration::from_secs(30),
            sent_at: t(100),
        }]);
    assert_eq!(sent.expect("exists").deadline, t(130));
}

fn sent_event() -> Event {
    Event::CommandSent {
        execution_id: ExecutionId::parse("c1").expect("valid"),
        thing: thing(),
        command_id: None,
        action: "unlock".into(),
        params: json!({"door": 1}),
        ttl: Duration::from_secs(30),
        sent_at: t(100),
    }
}

fn respond(status: CommandStatus) -> CommandIntent {
    CommandIntent::Respond(CommandResponse {
        status,
        result: Some(json!(1)),
        status_reason: None,
    })
}

#[test]
fn a_response_at_the_deadline_is_late_even_before_the_timer_fires() {
    given::<CommandExecution>([sent_event()])
        .when(respond(CommandStatus::Failed), t(129))
        .then_expect([Event::CommandResponded {
            status: CommandStatus::Failed,
            result: Some(json!(1)),
            status_reason: None,
            at: t(129),
        }]);
    given::<CommandExecution>([sent_event()])
        .when(respond(CommandStatus::Succeeded), t(130))
        .then_reject_with(Rejection::TerminalStateReached {
            status: "TIMED_OUT",
            execution_state: None,
        });
    given::<CommandExecution>([sent_event()])
        .when(CommandIntent::CheckTimeout, t(129))
        .then_nothing();
}

#[test]
fn a_cancel_at_the_deadline_is_late_even_before_the_timer_fires() {
    given::<CommandExecution>([sent_event()])
        .when(
            CommandIntent::Cancel {
                reason: Some("operator".into()),
            },
            at_ms(130, -1),
        )
        .then_expect([Event::CommandCanceled {
            at: at_ms(130, -1),
            reason: Some("operator".into()),
        }]);
    for late in [t(130), t(131)] {
        given::<CommandExecution>([sent_event()])
            .when(CommandIntent::Cancel { reason: None }, late)
            .then_reject_with(Rejection::TerminalStateReached {
                status: "TIMED_OUT",
                execution_state: None,
            });
    }
    // A command that has ended is refused with its own status.
    given::<CommandExecution>([
        sent_event(),
        Event::CommandCanceled {
            at: t(110),
            reason: None,
        },
    ])
    .when(CommandIntent::Cancel { reason: None }, t(130))
    .then_reject_with(Rejection::TerminalStateReached {
        status: "CANCELED",
        execution_state: None,
    });
}

#[test]
fn a_late_response_never_changes_a_terminal_command() {
    let h = [sent_event(), Event::CommandTimedOut { at: t(130) }];
    given::<CommandExecution>(h)
        .when(respond(CommandStatus::Succeeded), t(131))
        .then_reject_with(Rejection::TerminalStateReached {
            status: "TIMED_OUT",
            execution_state: None,
        });
    given::<CommandExecution>([])
        .when(respond(CommandStatus::Succeeded), t(1))
        .then_reject(ErrorCode::ResourceNotFound);
}

#[test]
fn command_ttl_and_action_are_validated() {
    given::<CommandExecution>([])
        .when(send(0), t(100))
        .then_reject(ErrorCode::InvalidRequest);
    given::<CommandExecution>([])
        .when(send(86_401), t(100))
        .then_reject(ErrorCode::InvalidRequest);
}

// ---- job ---------------------------------------------------------------------------------------

fn create(config: JobConfig) -> JobIntent {
    JobIntent::Create {
        job_id: job(),
        name: None,
        description: None,
        targets: Targets {
            things: vec![thing()],
            groups: vec![],
        },
        selection: TargetSelection::Snapshot,
        document: json!({"op": "reboot"}),
        config,
    }
}

fn created(config: JobConfig) -> Event {
    Event::JobCreated {
        job_id: job(),
        name: None,
        description: None,
        targets: Targets {
            things: vec![thing()],
            groups: vec![],
        },
        selection: TargetSelection::Snapshot,
        document: json!({"op": "reboot"}),
        config,
        created_at: t(100),
    }
}

fn counters(pairs: &[(S, u64)]) -> JobCounters {
    pairs
        .iter()
        .flat_map(|&(s, n)| (0..n).map(move |_| s))
        .collect()
}

#[test]
fn a_job_starts_at_once_or_at_its_start_time() {
    given::<Job>([])
        .when(create(JobConfig::default()), t(100))
        .then_expect([
            created(JobConfig::default()),
            Event::JobStarted { at: t(100) },
        ]);
    let later = JobConfig {
        schedule: Schedule {
            start_time: Some(t(500)),
            ..Schedule::default()
        },
        ..JobConfig::default()
    };
    given::<Job>([])
        .when(create(later.clone()), t(100))
        .then_expect([created(later.clone())]);
    let review = || JobIntent::Review {
        counters: JobCounters::default(),
        all_queued: false,
        stage: None,
    };
    given::<Job>([created(later.clone())])
        .when(review(), t(499))
        .then_nothing();
    given::<Job>([created(later)])
        .when(review(), t(500))
        .then_expect([Event::JobStarted { at: t(500) }]);
}

#[test]
fn a_job_needs_targets_and_valid_options() {
    let mut no_targets = create(JobConfig::default());
    if let JobIntent::Create { targets, .. } = &mut no_targets {
        targets.things.clear();
    }
    given::<Job>([])
        .when(no_targets, t(100))
        .then_reject(ErrorCode::InvalidRequest);
    let bad = JobConfig {
        in_progress_timeout: Some(Duration::from_secs(10)),
        ..JobConfig::default()
    };
    given::<Job>([])
        .when(create(bad), t(100))
        .then_reject(ErrorCode::InvalidRequest);
}

#[test]
fn a_snapshot_job_completes_when_every_execution_is_terminal() {
    let h = [
        created(JobConfig::default()),
        Event::JobStarted { at: t(100) },
    ];
    let review = |c: JobCounters, all| JobIntent::Review {
        counters: c,
        all_queued: all,
        stage: None,
    };
    given::<Job>(h.clone())
        .when(
            review(counters(&[(S::Succeeded, 3), (S::InProgress, 1)]), true),
            t(200),
        )
        .then_nothing();
    given::<Job>(h.clone())
        .when(review(counters(&[(S::Succeeded, 3)]), false), t(200))
        .then_nothing();
    given::<Job>(h)
        .when(
            review(counters(&[(S::Succeeded, 3), (S::Failed, 1)]), true),
            t(200),
        )
        .then_expect([Event::JobCompleted { at: t(200) }]);
}

#[test]
fn an_abort_rule_cancels_the_job_at_its_threshold() {
    let config = JobConfig {
        abort: vec![AbortCriterion {
            failure_type: FailureType::Failed,
            min_executed: 4,
            threshold_percent: 50.0,
        }],
        ..JobConfig::default()
    };
    let h = [created(config), Event::JobStarted { at: t(100) }];
    let review = |c: JobCounters| JobIntent::Review {
        counters: c,
        all_queued: false,
        stage: None,
    };
    given::<Job>(h.clone())
        .when(
            review(counters(&[
                (S::Failed, 1),
                (S::Succeeded, 2),
                (S::Queued, 5),
            ])),
            t(200),
        )
        .then_nothing();
    given::<Job>(h)
        .when(
            review(counters(&[
                (S::Failed, 2),
                (S::Succeeded, 2),
                (S::Queued, 5),
            ])),
            t(200),
        )
        .then_expect([Event::JobCanceled {
            at: t(200),
            force: false,
            reason: JobCancelReason::Aborted {
                criterion: 0,
                failed: 2,
                executed: 4,
            },
        }]);
}

#[test]
fn the_end_time_applies_the_end_behaviour() {
    for (behavior, expected) in [
        (
            EndBehavior::StopRollout,
            Event::JobRolloutStopped { at: t(900) },
        ),
        (
            EndBehavior::Cancel,
            Event::JobCanceled {
                at: t(900),
                force: false,
                reason: JobCancelReason::EndTime,
            },
        ),
        (
            EndBehavior::ForceCancel,
            Event::JobCanceled {
                at: t(900),
                force: true,
                reason: JobCancelReason::EndTime,
            },
        ),
    ] {
        let config = JobConfig {
            schedule: Schedule {
                start_time: None,
                end_time: Some(t(900)),
                end_behavior: behavior,
            },
            ..JobConfig::default()
        };
        let h = [created(config), Event::JobStarted { at: t(100) }];
        let review = JobIntent::Review {
            counters: counters(&[(S::Queued, 1)]),
            all_queued: false,
            stage: None,
        };
        given::<Job>(h.clone())
            .when(review.clone(), t(899))
            .then_nothing();
        given::<Job>(h).when(review, t(900)).then_expect([expected]);
    }
}

#[test]
fn a_canceled_job_can_be_forced_once_and_deleted() {
    let h = [
        created(JobConfig::default()),
        Event::JobStarted { at: t(100) },
        Event::JobCanceled {
            at: t(150),
            force: false,
            reason: JobCancelReason::Operator { comment: None },
        },
    ];
    given::<Job>(h.clone())
        .when(
            JobIntent::Cancel {
                force: false,
                comment: None,
            },
            t(160),
        )
        .then_reject(ErrorCode::InvalidStateTransition);
    given::<Job>(h.clone())
        .when(
            JobIntent::Cancel {
                force: true,
                comment: None,
            },
            t(160),
        )
        .then_expect([Event::JobCanceled {
            at: t(160),
            force: true,
            reason: JobCancelReason::Operator { comment: None },
        }]);
    let gone = given::<Job>(h)
        .when(JobIntent::Delete { force: false }, t(170))
        .then_expect([Event::JobDeleted { at: t(170) }]);
    assert!(gone.expect("tombstone kept").deleted);
    let running = [
        created(JobConfig::default()),
        Event::JobStarted { at: t(100) },
    ];
    given::<Job>(running)
        .when(JobIntent::Delete { force: false }, t(170))
        .then_reject(ErrorCode::InvalidStateTransition);
}

// ---- group -------------------------------------------------------------------------------------

#[test]
fn group_membership_changes_list_only_real_changes() {
    let name = GroupName::parse("lobby").expect("valid");
    let a = ThingName::parse("a").expect("valid");
    let b = ThingName::parse("b").expect("valid");
    let h = vec![
        Event::GroupCreated {
            name: name.clone(),
            description: None,
            at: t(1),
        },
        Event::GroupMembersAdded {
            things: vec![a.clone()],
            at: t(2),
        },
    ];
    given::<Group>(h.clone())
        .when(GroupIntent::AddMembers(vec![a.clone(), b.clone()]), t(3))
        .then_expect([Event::GroupMembersAdded {
            things: vec![b.clone()],
            at: t(3),
        }]);
    given::<Group>(h.clone())
        .when(GroupIntent::AddMembers(vec![a.clone()]), t(3))
        .then_nothing();
    given::<Group>(h.clone())
        .when(GroupIntent::RemoveMembers(vec![b]), t(3))
        .then_nothing();
    given::<Group>(h.clone())
        .when(
            GroupIntent::Create {
                name,
                description: None,
            },
            t(3),
        )
        .then_reject(ErrorCode::InvalidRequest);
    let mut deleted = h;
    deleted.push(Event::GroupDeleted { at: t(4) });
    given::<Group>(deleted)
        .when(GroupIntent::AddMembers(vec![a]), t(5))
        .then_reject(ErrorCode::ResourceNotFound);
}

#[test]
fn rejections_map_one_to_one_onto_wire_codes() {
    use std::collections::HashSet;
    let all = [
        Rejection::InvalidTopic { topic: "x".into() },
        Rejection::InvalidJson { detail: "x".into() },
        Rejection::invalid("f", "x"),
        Rejection::InvalidStateTransition {
            from: "A",
            to: "B",
            execution_state: None,
        },
        Rejection::ResourceNotFound {
            kind: "job",
            id: "j".into(),
        },
        Rejection::VersionMismatch {
            expected: 1,
            actual: 2,
            execution_state: None,
        },
        Rejection::InternalError { detail: "x".into() },
        Rejection::RequestThrottled,
        Rejection::TerminalStateReached {
            status: "SUCCEEDED",
            execution_state: None,
        },
    ];
    let codes: HashSet<_> = all.iter().map(Rejection::code).collect();
    assert_eq!(codes.len(), ErrorCode::ALL.len());
    let _ = CommandStatus::Sent;
    let _ = CommandResponse {
        status: CommandStatus::Succeeded,
        result: None,
        status_reason: None,
    };
}

// ---- size limits -------------------------------------------------------------------------------

/// The field an `InvalidRequest` names.
#[track_caller]
fn field_of(r: Rejection) -> &'static str {
    match r {
        Rejection::InvalidRequest { field, .. } => field,
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
}

/// A JSON object of exactly `bytes` bytes of compact JSON (at least 8).
fn object_of(bytes: usize) -> serde_json::Value {
    let v = json!({ "x": "a".repeat(bytes - 8) });
    assert_eq!(limits::json_len(&v), bytes);
    v
}

fn things(prefix: &str, n: usize) -> Vec<ThingName> {
    (0..n)
        .map(|i| ThingName::parse(&format!("{prefix}{i}")).expect("valid"))
        .collect()
}

#[test]
fn the_job_document_is_bounded_in_bytes() {
    let with_doc = |document| {
        let mut intent = create(JobConfig::default());
        if let JobIntent::Create { document: d, .. } = &mut intent {
            *d = document;
        }
        intent
    };
    let at = given::<Job>([]).when(with_doc(object_of(limits::MAX_JOB_DOCUMENT_BYTES)), t(100));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<Job>([])
        .when(
            with_doc(object_of(limits::MAX_JOB_DOCUMENT_BYTES + 1)),
            t(100),
        )
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "document");
}

#[test]
fn a_job_names_at_most_the_target_limit_counting_things_and_groups() {
    let with_targets = |n_things: usize| {
        let mut intent = create(JobConfig::default());
        if let JobIntent::Create { targets, .. } = &mut intent {
            targets.things = things("t", n_things);
            targets.groups = vec![GroupName::parse("g").expect("valid")];
        }
        intent
    };
    let at = given::<Job>([]).when(with_targets(limits::MAX_JOB_TARGETS - 1), t(100));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<Job>([])
        .when(with_targets(limits::MAX_JOB_TARGETS), t(100))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "targets");
}

#[test]
fn free_text_is_bounded_in_characters() {
    use fleetops_core::job::{MAX_COMMENT_LEN, MAX_DESCRIPTION_LEN};
    let with_description = |n: usize| {
        let mut intent = create(JobConfig::default());
        if let JobIntent::Create { description, .. } = &mut intent {
            // Two bytes per character: the limit counts characters, not bytes.
            *description = Some("é".repeat(n));
        }
        intent
    };
    let at = given::<Job>([]).when(with_description(MAX_DESCRIPTION_LEN), t(100));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<Job>([])
        .when(with_description(MAX_DESCRIPTION_LEN + 1), t(100))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "description");

    let h = [
        created(JobConfig::default()),
        Event::JobStarted { at: t(100) },
    ];
    let cancel = |n: usize| JobIntent::Cancel {
        force: false,
        comment: Some("é".repeat(n)),
    };
    let at = given::<Job>(h.clone()).when(cancel(MAX_COMMENT_LEN), t(200));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<Job>(h)
        .when(cancel(MAX_COMMENT_LEN + 1), t(200))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "comment");

    let group = |n: usize| GroupIntent::Create {
        name: GroupName::parse("g").expect("valid"),
        description: Some("é".repeat(n)),
    };
    let at = given::<Group>([]).when(group(MAX_DESCRIPTION_LEN), t(1));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<Group>([])
        .when(group(MAX_DESCRIPTION_LEN + 1), t(1))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "description");

    let reason = |n: usize| CommandIntent::Cancel {
        reason: Some("é".repeat(n)),
    };
    let at = given::<CommandExecution>([sent_event()]).when(reason(MAX_REASON_LEN), t(101));
    assert!(at.outcome().is_ok(), "{:?}", at.outcome());
    let over = given::<CommandExecution>([sent_event()])
        .when(reason(MAX_REASON_LEN + 1), t(101))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "reason");
}

fn send_with(action: &str, command_id: Option<&str>, params: serde_json::Value) -> CommandIntent {
    CommandIntent::Send {
        execution_id: ExecutionId::parse("c1").expect("valid"),
        thing: thing(),
        command_id: command_id.map(str::to_owned),
        action: action.into(),
        params,
        ttl: Duration::from_secs(60),
    }
}

#[track_caller]
fn command_refused(intent: CommandIntent) -> &'static str {
    field_of(
        given::<CommandExecution>([])
            .when(intent, t(100))
            .then_reject(ErrorCode::InvalidRequest),
    )
}

#[track_caller]
fn command_accepted(intent: CommandIntent) {
    let then = given::<CommandExecution>([]).when(intent, t(100));
    assert!(then.outcome().is_ok(), "{:?}", then.outcome());
}

#[test]
fn command_params_action_and_id_are_bounded() {
    let max = limits::MAX_COMMAND_PARAMS_BYTES;
    command_accepted(send_with("a", None, object_of(max)));
    assert_eq!(
        command_refused(send_with("a", None, object_of(max + 1))),
        "params"
    );

    // The action counts characters, whatever their size in bytes.
    let action_max = limits::MAX_COMMAND_ACTION_LEN;
    command_accepted(send_with(&"é".repeat(action_max), None, json!({})));
    command_accepted(send_with(&"a".repeat(action_max), None, json!({})));
    assert_eq!(
        command_refused(send_with(&"é".repeat(action_max + 1), None, json!({}))),
        "action"
    );
    assert_eq!(
        command_refused(send_with(&"a".repeat(action_max + 1), None, json!({}))),
        "action"
    );
    assert_eq!(command_refused(send_with("", None, json!({}))), "action");

    let id_max = limits::MAX_COMMAND_ID_LEN;
    command_accepted(send_with(
        "a",
        Some(&"Az0_-".repeat(13)[..id_max]),
        json!({}),
    ));
    for bad in [
        String::new(),
        "a".repeat(id_max + 1),
        "a/b".into(),
        "a b".into(),
        "é".into(),
    ] {
        assert_eq!(
            command_refused(send_with("a", Some(&bad), json!({}))),
            "commandId",
            "{bad:?}"
        );
    }
}

/// `n` entries of 3-byte keys whose keys and values hold `bytes` bytes in all.
fn details_of(n: usize, bytes: usize) -> StatusDetails {
    let mut left = bytes - 3 * n;
    (0..n)
        .map(|i| {
            let len = (left / (n - i)).min(1024);
            left -= len;
            (
                StatusDetailKey::parse(&format!("k{i:02}")).expect("valid"),
                "v".repeat(len),
            )
        })
        .collect()
}

#[test]
fn status_details_are_bounded_in_keys_and_bytes() {
    let keys = limits::MAX_STATUS_DETAILS_KEYS;
    let bytes = limits::MAX_STATUS_DETAILS_BYTES;
    let cases = [
        (details_of(keys, 3 * keys), true),
        (details_of(keys + 1, 3 * (keys + 1)), false),
        (details_of(8, bytes), true),
        (details_of(9, bytes + 1), false),
    ];
    for (d, ok) in cases {
        let (n, size) = (
            d.len(),
            fleetops_core::job_execution::status_details_bytes(&d),
        );
        let via_update = I::Update(UpdateRequest {
            status_details: Some(d.clone()),
            ..update(S::InProgress)
        });
        let via_start = I::Start {
            status_details: Some(d),
            step_timeout: StepTimeout::Keep,
        };
        for intent in [via_update, via_start] {
            let then = given::<JobExecution>([queued()]).when(intent, t(120));
            if ok {
                assert!(
                    then.outcome().is_ok(),
                    "{n} keys, {size} bytes: {:?}",
                    then.outcome()
                );
            } else {
                let r = then.then_reject(ErrorCode::InvalidRequest);
                assert_eq!(field_of(r), "statusDetails", "{n} keys, {size} bytes");
            }
        }
    }
}

#[test]
fn a_group_holds_at_most_the_member_limit() {
    let name = GroupName::parse("big").expect("valid");
    let h = vec![
        Event::GroupCreated {
            name,
            description: None,
            at: t(1),
        },
        Event::GroupMembersAdded {
            things: things("m", limits::MAX_GROUP_MEMBERS - 1),
            at: t(2),
        },
    ];
    // A thing already in the group does not count twice.
    let mut last = things("m", 1);
    last.extend(things("new", 1));
    given::<Group>(h.clone())
        .when(GroupIntent::AddMembers(last), t(3))
        .then_expect([Event::GroupMembersAdded {
            things: things("new", 1),
            at: t(3),
        }]);
    let over = given::<Group>(h)
        .when(GroupIntent::AddMembers(things("new", 2)), t(3))
        .then_reject(ErrorCode::InvalidRequest);
    assert_eq!(field_of(over), "thingNames");
}

#[test]
fn a_job_name_is_optional_short_and_printable() {
    let named = |name: &str| {
        let mut intent = create(JobConfig::default());
        if let JobIntent::Create { name: n, .. } = &mut intent {
            *n = Some(name.to_owned());
        }
        intent
    };
    let job = given::<Job>([])
        .when(named("Thermostats, EU (wave 1)"), t(100))
        .then_expect([
            {
                let mut e = created(JobConfig::default());
                if let Event::JobCreated { name, .. } = &mut e {
                    *name = Some("Thermostats, EU (wave 1)".into());
                }
                e
            },
            Event::JobStarted { at: t(100) },
        ])
        .expect("a job");
    assert_eq!(job.name.as_deref(), Some("Thermostats, EU (wave 1)"));
    for bad in [
        String::new(),
        "line\nbreak".into(),
        "x".repeat(fleetops_core::job::MAX_JOB_NAME_LEN + 1),
    ] {
        let r = given::<Job>([])
            .when(named(&bad), t(100))
            .then_reject(ErrorCode::InvalidRequest);
        assert!(
            matches!(r, Rejection::InvalidRequest { field: "name", .. }),
            "{bad:?}: {r:?}"
        );
    }
}

// ---- late command answers ----------------------------------------------------------------------

fn late(status: CommandStatus) -> CommandIntent {
    CommandIntent::RecordLate(CommandResponse {
        status,
        result: Some(json!({"late": true})),
        status_reason: None,
    })
}

#[test]
fn a_late_answer_is_kept_and_changes_no_status() {
    let state = given::<CommandExecution>([sent_event(), Event::CommandTimedOut { at: t(130) }])
        .when(late(CommandStatus::Succeeded), t(140))
        .then_expect([Event::CommandResponseIgnored {
            status: CommandStatus::Succeeded,
            result: Some(json!({"late": true})),
            status_reason: None,
            at: t(140),
        }])
        .expect("exists");
    assert_eq!(state.status, CommandStatus::TimedOut);
    assert_eq!(state.completed_at, Some(t(130)));
    assert_eq!(state.late_responses, 1);
    // Kept beside the execution: its version counts changes only.
    assert_eq!(state.version, 2);
}

#[test]
fn a_duplicate_answer_after_the_first_is_kept_too() {
    let answered = Event::CommandResponded {
        status: CommandStatus::Succeeded,
        result: None,
        status_reason: None,
        at: t(110),
    };
    given::<CommandExecution>([sent_event(), answered])
        .when(late(CommandStatus::Failed), t(111))
        .then_expect([Event::CommandResponseIgnored {
            status: CommandStatus::Failed,
            result: Some(json!({"late": true})),
            status_reason: None,
            at: t(111),
        }]);
}

#[test]
fn an_answer_past_the_deadline_is_late_before_the_timer_fires() {
    given::<CommandExecution>([sent_event()])
        .when(late(CommandStatus::Succeeded), t(130))
        .then_expect([Event::CommandResponseIgnored {
            status: CommandStatus::Succeeded,
            result: Some(json!({"late": true})),
            status_reason: None,
            at: t(130),
        }]);
}

#[test]
fn a_timely_answer_is_not_recorded_as_late() {
    given::<CommandExecution>([sent_event()])
        .when(late(CommandStatus::Succeeded), t(110))
        .then_reject(ErrorCode::InvalidRequest);
}

#[test]
fn late_answers_are_kept_up_to_the_limit_then_dropped() {
    let ignored = Event::CommandResponseIgnored {
        status: CommandStatus::Succeeded,
        result: None,
        status_reason: None,
        at: t(140),
    };
    let mut history = vec![sent_event(), Event::CommandTimedOut { at: t(130) }];
    history.extend((0..limits::MAX_LATE_RESPONSES).map(|_| ignored.clone()));
    given::<CommandExecution>(history)
        .when(late(CommandStatus::Succeeded), t(150))
        .then_nothing();
}

// ---- things: registry ------------------------------------------------------------------------

use fleetops_core::thing::{
    Connectivity, OfflineCommands, PresenceReport, Thing, ThingIntent as TI,
};
use std::collections::BTreeMap;

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn register(attributes: BTreeMap<String, String>) -> TI {
    TI::Register {
        name: thing(),
        attributes,
        thing_type: Some("pump".into()),
        client_id: Some("hw-1".into()),
    }
}

fn registered() -> Event {
    Event::ThingRegistered {
        name: thing(),
        attributes: attrs(&[("site", "north")]),
        thing_type: Some("pump".into()),
        client_id: Some("hw-1".into()),
        at: t(10),
    }
}

#[test]
fn registering_a_thing_records_the_whole_record() {
    let state = given::<Thing>([])
        .when(register(attrs(&[("site", "north")])), t(10))
        .then_expect([registered()])
        .expect("exists");
    assert!(state.registered);
    assert_eq!(state.connectivity, Connectivity::Unknown);
}

#[test]
fn registering_the_same_record_again_stores_nothing() {
    given::<Thing>([registered()])
        .when(register(attrs(&[("site", "north")])), t(20))
        .then_nothing();
}

#[test]
fn a_record_over_the_limits_is_refused_naming_the_field() {
    let many: BTreeMap<String, String> = (0..=limits::MAX_THING_ATTRIBUTES)
        .map(|i| (format!("a{i}"), "v".to_owned()))
        .collect();
    let long_value = attrs(&[("k", &"v".repeat(limits::MAX_ATTRIBUTE_VALUE_LEN + 1))]);
    for (bad, field) in [
        (many, "attributes"),
        (attrs(&[("bad name", "v")]), "attributes"),
        (attrs(&[("", "v")]), "attributes"),
        (long_value, "attributes"),
        (attrs(&[("k", "line\nbreak")]), "attributes"),
    ] {
        let r = given::<Thing>([])
            .when(register(bad), t(1))
            .then_reject(ErrorCode::InvalidRequest);
        assert!(matches!(r, Rejection::InvalidRequest { field: f, .. } if f == field));
    }
    let r = given::<Thing>([])
        .when(
            TI::Register {
                name: thing(),
                attributes: BTreeMap::new(),
                thing_type: Some("a/b".into()),
                client_id: None,
            },
            t(1),
        )
        .then_reject(ErrorCode::InvalidRequest);
    assert!(matches!(
        r,
        Rejection::InvalidRequest {
            field: "thingTypeName",
            ..
        }
    ));
    let r = given::<Thing>([])
        .when(
            TI::Register {
                name: thing(),
                attributes: BTreeMap::new(),
                thing_type: None,
                client_id: Some("x".repeat(limits::MAX_CLIENT_ID_LEN + 1)),
            },
            t(1),
        )
        .then_reject(ErrorCode::InvalidRequest);
    assert!(matches!(
        r,
        Rejection::InvalidRequest {
            field: "clientId",
            ..
        }
    ));
}

#[test]
fn the_longest_valid_record_is_accepted() {
    let full: BTreeMap<String, String> = (0..limits::MAX_THING_ATTRIBUTES)
        .map(|i| {
            (
                format!("{i:0>width$}", width = limits::MAX_ATTRIBUTE_NAME_LEN),
                "é".repeat(limits::MAX_ATTRIBUTE_VALUE_LEN),
            )
        })
        .collect();
    let then = given::<Thing>([]).when(register(full), t(1));
    assert!(matches!(then.outcome(), Ok(events) if events.len() == 1));
}

#[test]
fn deregistering_an_unregistered_thing_is_not_found() {
    given::<Thing>([])
        .when(TI::Deregister, t(1))
        .then_reject(ErrorCode::ResourceNotFound);
    given::<Thing>([registered(), Event::ThingDeregistered { at: t(20) }])
        .when(TI::Deregister, t(30))
        .then_reject(ErrorCode::ResourceNotFound);
}

#[test]
fn deregistering_keeps_presence() {
    let state = given::<Thing>([registered(), presence(true, 5, 15)])
        .when(TI::Deregister, t(20))
        .then_expect([Event::ThingDeregistered { at: t(20) }])
        .expect("exists");
    assert!(!state.registered);
    assert!(state.attributes.is_empty() && state.client_id.is_none());
    assert_eq!(state.connectivity, Connectivity::Online);
}

// ---- things: presence ------------------------------------------------------------------------

fn presence(online: bool, stamp: u64, at: u64) -> Event {
    Event::ThingPresenceChanged {
        name: thing(),
        online,
        stamp,
        at: t(at),
    }
}

fn report(online: bool, stamp: u64) -> TI {
    TI::ReportPresence {
        name: thing(),
        report: PresenceReport { online, stamp },
    }
}

#[test]
fn a_first_report_is_kept() {
    let state = given::<Thing>([])
        .when(report(true, 5), t(50))
        .then_expect([presence(true, 5, 50)])
        .expect("exists");
    assert_eq!(state.connectivity, Connectivity::Online);
    assert_eq!(state.connectivity_since, Some(t(50)));
    assert!(!state.registered);
}

#[test]
fn an_old_offline_arriving_after_a_newer_online_is_ignored() {
    // Connection 5 died (its will), connection 6 is up; connection 5's will arrives last.
    given::<Thing>([presence(true, 5, 50), presence(true, 6, 60)])
        .when(report(false, 5), t(61))
        .then_nothing();
}

#[test]
fn the_will_of_a_connection_supersedes_its_own_birth() {
    given::<Thing>([presence(true, 5, 50)])
        .when(report(false, 5), t(55))
        .then_expect([presence(false, 5, 55)]);
}

#[test]
fn a_birth_arriving_after_its_own_connection_s_will_is_ignored() {
    given::<Thing>([presence(false, 5, 55)])
        .when(report(true, 5), t(56))
        .then_nothing();
}

#[test]
fn a_duplicate_report_is_ignored() {
    given::<Thing>([presence(true, 5, 50)])
        .when(report(true, 5), t(51))
        .then_nothing();
}

#[test]
fn a_newer_report_of_the_same_state_moves_the_stamp_not_the_since() {
    let state = given::<Thing>([presence(true, 5, 50)])
        .when(report(true, 7), t(70))
        .then_expect([presence(true, 7, 70)])
        .expect("exists");
    assert_eq!(state.connectivity_since, Some(t(50)));
    assert_eq!(state.presence_stamp, 7);
}

// ---- commands to offline things ----------------------------------------------------------------

#[test]
fn under_fail_a_command_to_a_thing_whose_will_fired_is_refused() {
    let given = given::<Thing>([presence(true, 5, 50), presence(false, 5, 55)]);
    let connectivity = fleetops_core::thing::connectivity(given.state());
    assert_eq!(connectivity, Connectivity::Offline);
    assert!(!OfflineCommands::Fail.admits(connectivity));
    // The default waits for the thing.
    assert!(OfflineCommands::Wait.admits(connectivity));
    assert_eq!(OfflineCommands::default(), OfflineCommands::Wait);
}

#[test]
fn a_thing_online_or_never_reported_on_gets_its_command() {
    let online = given::<Thing>([presence(true, 5, 50)]);
    assert!(OfflineCommands::Fail.admits(fleetops_core::thing::connectivity(online.state())));
    let never = given::<Thing>([registered()]);
    assert_eq!(
        fleetops_core::thing::connectivity(never.state()),
        Connectivity::Unknown
    );
    assert!(OfflineCommands::Fail.admits(Connectivity::Unknown));
    assert!(OfflineCommands::Fail.admits(fleetops_core::thing::connectivity(None)));
}
