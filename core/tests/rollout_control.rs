//! Given/when/then tests of rollout control: stages and their gates, pause and resume,
//! updates of a running job, and the stage assignment.

mod common;

use std::collections::BTreeSet;

use common::*;
use fleetops_core::config::{
    AbortCriterion, FailureType, JobConfig, Rollout, Stage, StageAction, StageErrorThreshold,
    StageTargets, TargetSelection, Targets,
};
use fleetops_core::cron::{CronExpr, MaintenanceWindow, UtcOffset};
use fleetops_core::event::{JobCancelReason, PauseReason};
use fleetops_core::job::{Job, JobIntent, StageState};
use fleetops_core::policy::stages::{self, StageProgress, Verdict};
use fleetops_core::projection::JobCounters;
use fleetops_core::testkit::gwt::given;
use fleetops_core::{Duration, ErrorCode, Event, GroupName, JobExecutionStatus as S, ThingName};
use serde_json::json;

fn targets() -> Targets {
    Targets {
        things: vec![thing()],
        groups: vec![],
    }
}

fn create(config: JobConfig, selection: TargetSelection) -> JobIntent {
    JobIntent::Create {
        job_id: job(),
        name: None,
        description: None,
        targets: targets(),
        selection,
        document: json!({"op": "flash"}),
        config,
    }
}

fn created(config: JobConfig) -> Event {
    Event::JobCreated {
        job_id: job(),
        name: None,
        description: None,
        targets: targets(),
        selection: TargetSelection::Snapshot,
        document: json!({"op": "flash"}),
        config,
        created_at: t(100),
    }
}

fn stage(percent: u8, success: f64, error: Option<StageErrorThreshold>) -> Stage {
    Stage {
        targets: StageTargets::Percent { percent },
        success_percent: success,
        error_threshold: error,
    }
}

fn staged(stages: Vec<Stage>) -> JobConfig {
    JobConfig {
        stages,
        ..JobConfig::default()
    }
}

fn counters(pairs: &[(S, u64)]) -> JobCounters {
    pairs
        .iter()
        .flat_map(|&(s, n)| (0..n).map(move |_| s))
        .collect()
}

fn review(size: u64, pairs: &[(S, u64)]) -> JobIntent {
    JobIntent::Review {
        counters: counters(pairs),
        all_queued: false,
        stage: Some(StageProgress {
            size,
            counters: counters(pairs),
            retries_owed: 0,
        }),
    }
}

fn running(config: JobConfig) -> Vec<Event> {
    vec![created(config), Event::JobStarted { at: t(100) }]
}

fn gate_pause(stage: u32, succeeded: u64, required: u64, size: u64) -> Event {
    Event::JobPaused {
        at: t(200),
        reason: PauseReason::StageGate {
            stage,
            succeeded,
            required,
            size,
        },
    }
}

// ---- stages --------------------------------------------------------------------------------

#[test]
fn a_stage_passes_its_gate_once_enough_succeeded() {
    // Given a running job whose first stage needs 90 % of its 10 things,
    let h = running(staged(vec![stage(10, 90.0, None), stage(90, 90.0, None)]));
    // when 8 succeeded and 2 are still in progress, nothing is decided yet;
    given::<Job>(h.clone())
        .when(review(10, &[(S::Succeeded, 8), (S::InProgress, 2)]), t(200))
        .then_nothing();
    // when 9 succeeded, the next stage starts.
    given::<Job>(h)
        .when(review(10, &[(S::Succeeded, 9), (S::InProgress, 1)]), t(200))
        .then_expect([Event::JobStageAdvanced {
            at: t(200),
            stage: 1,
            overridden: false,
        }]);
}

#[test]
fn a_gate_that_can_no_longer_be_met_pauses_the_job() {
    // Given a stage of 10 that needs 90 %,
    let h = running(staged(vec![stage(10, 90.0, None)]));
    // when 2 failed, at most 8 can succeed: the gate fails and the job pauses.
    let job = given::<Job>(h.clone())
        .when(
            review(10, &[(S::Succeeded, 5), (S::Failed, 2), (S::InProgress, 3)]),
            t(200),
        )
        .then_expect([gate_pause(0, 5, 9, 10)])
        .expect("a job");
    assert_eq!(job.stage_state(0), StageState::GateFailed);
    assert!(!job.is_queueing());
    // A failure a retry rule still owes another attempt is undecided, not failed.
    let with_retry = JobIntent::Review {
        counters: JobCounters::default(),
        all_queued: false,
        stage: Some(StageProgress {
            size: 10,
            counters: counters(&[(S::Succeeded, 5), (S::Failed, 2), (S::InProgress, 3)]),
            retries_owed: 1,
        }),
    };
    given::<Job>(h).when(with_retry, t(200)).then_nothing();
}

#[test]
fn resuming_after_a_failed_gate_overrides_it_and_starts_the_next_stage() {
    // Given a job paused by its first stage's gate,
    let mut h = running(staged(vec![stage(10, 90.0, None), stage(90, 90.0, None)]));
    h.push(gate_pause(0, 5, 9, 10));
    // when the operator resumes it, the job proceeds to the next stage;
    let job = given::<Job>(h)
        .when(
            JobIntent::Resume {
                comment: Some("known flaky batch".into()),
            },
            t(300),
        )
        .then_expect([
            Event::JobResumed {
                at: t(300),
                comment: Some("known flaky batch".into()),
            },
            Event::JobStageAdvanced {
                at: t(300),
                stage: 1,
                overridden: true,
            },
        ])
        .expect("a job");
    // then stage 0 shows as overridden and stage 1 runs.
    assert_eq!(job.stage_state(0), StageState::Overridden);
    assert_eq!(job.stage_state(1), StageState::Running);
    assert!(job.is_queueing());
}

#[test]
fn a_stage_error_threshold_pauses_or_aborts() {
    let threshold = |action| StageErrorThreshold {
        failure_type: FailureType::Failed,
        min_executed: 4,
        threshold_percent: 50.0,
        action,
    };
    let pairs = [(S::Succeeded, 2), (S::Failed, 2), (S::Queued, 96)];
    // Given a PAUSE threshold crossed, the job pauses;
    let h = running(staged(vec![stage(
        100,
        10.0,
        Some(threshold(StageAction::Pause)),
    )]));
    let paused = Event::JobPaused {
        at: t(200),
        reason: PauseReason::StageErrorThreshold {
            stage: 0,
            failed: 2,
            executed: 4,
        },
    };
    given::<Job>(h.clone())
        .when(review(100, &pairs), t(200))
        .then_expect([paused.clone()]);
    // below the minimum executed, it does not fire.
    given::<Job>(h.clone())
        .when(review(100, &[(S::Failed, 3), (S::Queued, 97)]), t(200))
        .then_nothing();
    // Resumed, the threshold is disarmed for this stage.
    let mut resumed = h;
    resumed.push(paused);
    resumed.push(Event::JobResumed {
        at: t(250),
        comment: None,
    });
    given::<Job>(resumed)
        .when(review(100, &pairs), t(300))
        .then_nothing();
    // Given an ABORT threshold, the job is canceled.
    given::<Job>(running(staged(vec![stage(
        100,
        10.0,
        Some(threshold(StageAction::Abort)),
    )])))
    .when(review(100, &pairs), t(200))
    .then_expect([Event::JobCanceled {
        at: t(200),
        force: false,
        reason: JobCancelReason::StageAborted {
            stage: 0,
            failed: 2,
            executed: 4,
        },
    }]);
}

#[test]
fn a_staged_job_completes_only_after_its_last_stage() {
    let mut h = running(staged(vec![stage(100, 100.0, None)]));
    let all_done = |stage| JobIntent::Review {
        counters: counters(&[(S::Succeeded, 3)]),
        all_queued: true,
        stage,
    };
    let progress = StageProgress {
        size: 3,
        counters: counters(&[(S::Succeeded, 3)]),
        retries_owed: 0,
    };
    given::<Job>(h.clone())
        .when(all_done(Some(progress)), t(200))
        .then_expect([Event::JobStageAdvanced {
            at: t(200),
            stage: 1,
            overridden: false,
        }]);
    h.push(Event::JobStageAdvanced {
        at: t(200),
        stage: 1,
        overridden: false,
    });
    given::<Job>(h)
        .when(all_done(None), t(201))
        .then_expect([Event::JobCompleted { at: t(201) }]);
}

#[test]
fn continuous_jobs_cannot_have_stages_and_stage_values_are_checked() {
    given::<Job>([])
        .when(
            create(
                staged(vec![stage(50, 90.0, None)]),
                TargetSelection::Continuous,
            ),
            t(100),
        )
        .then_reject(ErrorCode::InvalidRequest);
    for bad in [
        staged(vec![stage(60, 90.0, None), stage(50, 90.0, None)]),
        staged(vec![stage(0, 90.0, None)]),
        staged(vec![stage(10, 101.0, None)]),
        staged(vec![Stage {
            targets: StageTargets::Things { things: vec![] },
            success_percent: 50.0,
            error_threshold: None,
        }]),
        staged((0..11).map(|_| stage(1, 1.0, None)).collect()),
    ] {
        given::<Job>([])
            .when(create(bad, TargetSelection::Snapshot), t(100))
            .then_reject(ErrorCode::InvalidRequest);
    }
}

#[test]
fn stages_split_targets_by_names_then_by_a_stable_percentage() {
    let job_id = job();
    let things: BTreeSet<ThingName> = (0..100)
        .map(|i| ThingName::parse(&format!("dev-{i:03}")).unwrap())
        .collect();
    let canary = GroupName::parse("canary").unwrap();
    let members = |g: &GroupName| -> Vec<ThingName> {
        if g.as_str() == "canary" {
            vec![
                ThingName::parse("dev-007").unwrap(),
                ThingName::parse("outsider").unwrap(),
            ]
        } else {
            vec![]
        }
    };
    let plan = vec![
        Stage {
            targets: StageTargets::Groups {
                groups: vec![canary],
            },
            success_percent: 100.0,
            error_threshold: None,
        },
        stage(10, 90.0, None),
        stage(25, 90.0, None),
    ];
    let out = stages::assign(&job_id, &plan, &things, &members);
    assert_eq!(out.len(), 4, "three stages and the rest");
    // Names that are not targets are ignored.
    assert_eq!(out[0].len(), 1);
    assert_eq!(out[1].len(), 10);
    assert_eq!(out[2].len(), 25);
    assert_eq!(out[3].len(), 64);
    // Every target is in exactly one set.
    let all: BTreeSet<_> = out.iter().flatten().cloned().collect();
    assert_eq!(all, things);
    // The pick is the same on every call, and not merely the first names in order.
    assert_eq!(stages::assign(&job_id, &plan, &things, &members), out);
    let first_ten: BTreeSet<_> = things
        .iter()
        .filter(|t| t.as_str() != "dev-007")
        .take(10)
        .cloned()
        .collect();
    assert_ne!(out[1], first_ten);
}

#[test]
fn an_empty_stage_passes_at_once_and_verdicts_round_up() {
    let s = stage(10, 95.0, None);
    assert_eq!(stages::required(&s, 10), 10);
    assert_eq!(stages::required(&s, 100), 95);
    assert_eq!(stages::required(&s, 0), 0);
    assert_eq!(
        stages::evaluate(&s, &StageProgress::default(), true),
        Verdict::Passed
    );
}

// ---- pause and resume ---------------------------------------------------------------------

#[test]
fn an_operator_pauses_and_resumes_a_running_job() {
    let h = running(JobConfig::default());
    let pause = JobIntent::Pause {
        comment: Some("holiday".into()),
    };
    let paused = Event::JobPaused {
        at: t(200),
        reason: PauseReason::Operator {
            comment: Some("holiday".into()),
        },
    };
    let job = given::<Job>(h.clone())
        .when(pause.clone(), t(200))
        .then_expect([paused.clone()])
        .expect("a job");
    assert!(job.is_rolling_out() && !job.is_queueing());
    let mut p = h.clone();
    p.push(paused);
    // Pausing twice is refused; a paused job neither completes nor advances;
    given::<Job>(p.clone())
        .when(pause, t(210))
        .then_reject(ErrorCode::InvalidStateTransition);
    given::<Job>(p.clone())
        .when(
            JobIntent::Review {
                counters: counters(&[(S::Succeeded, 1)]),
                all_queued: true,
                stage: None,
            },
            t(220),
        )
        .then_nothing();
    // resuming clears the pause.
    let job = given::<Job>(p)
        .when(JobIntent::Resume { comment: None }, t(230))
        .then_expect([Event::JobResumed {
            at: t(230),
            comment: None,
        }])
        .expect("a job");
    assert!(job.is_queueing() && job.paused.is_none());
    // A job that is not paused cannot be resumed.
    given::<Job>(h)
        .when(JobIntent::Resume { comment: None }, t(230))
        .then_reject(ErrorCode::InvalidStateTransition);
}

#[test]
fn abort_rules_and_end_times_still_apply_while_paused() {
    let config = JobConfig {
        abort: vec![AbortCriterion {
            failure_type: FailureType::Failed,
            min_executed: 1,
            threshold_percent: 50.0,
        }],
        ..JobConfig::default()
    };
    let mut h = running(config);
    h.push(Event::JobPaused {
        at: t(150),
        reason: PauseReason::Operator { comment: None },
    });
    given::<Job>(h)
        .when(
            JobIntent::Review {
                counters: counters(&[(S::Failed, 1)]),
                all_queued: false,
                stage: None,
            },
            t(200),
        )
        .then_expect([Event::JobCanceled {
            at: t(200),
            force: false,
            reason: JobCancelReason::Aborted {
                criterion: 0,
                failed: 1,
                executed: 1,
            },
        }]);
}

// ---- updates ------------------------------------------------------------------------------

fn update() -> JobIntent {
    JobIntent::Update {
        description: None,
        in_progress_timeout: None,
        rollout: None,
        abort: None,
        retry: None,
    }
}

#[test]
fn an_update_replaces_the_options_it_names_and_keeps_the_rest() {
    let base = JobConfig {
        in_progress_timeout: Some(Duration::from_minutes(10)),
        ..JobConfig::default()
    };
    let mut intent = update();
    if let JobIntent::Update {
        description,
        rollout,
        ..
    } = &mut intent
    {
        *description = Some(Some("slower".into()));
        *rollout = Some(Rollout::Fixed { per_minute: 5 });
    }
    let job = given::<Job>(running(base.clone()))
        .when(intent, t(200))
        .then_expect([Event::JobUpdated {
            at: t(200),
            description: Some("slower".into()),
            config: JobConfig {
                rollout: Rollout::Fixed { per_minute: 5 },
                ..base
            },
        }])
        .expect("a job");
    assert_eq!(job.description.as_deref(), Some("slower"));
    assert_eq!(
        job.config.in_progress_timeout,
        Some(Duration::from_minutes(10))
    );
}

#[test]
fn an_update_is_validated_like_a_create_and_refused_once_the_job_ended() {
    let mut bad = update();
    if let JobIntent::Update { rollout, .. } = &mut bad {
        *rollout = Some(Rollout::Fixed { per_minute: 0 });
    }
    given::<Job>(running(JobConfig::default()))
        .when(bad, t(200))
        .then_reject(ErrorCode::InvalidRequest);
    let mut done = running(JobConfig::default());
    done.push(Event::JobCompleted { at: t(150) });
    given::<Job>(done)
        .when(update(), t(200))
        .then_reject(ErrorCode::InvalidStateTransition);
}

// ---- maintenance windows -----------------------------------------------------------------

#[test]
fn window_options_are_checked_at_creation() {
    let window = |minutes| MaintenanceWindow {
        start: CronExpr::parse("0 2 * * *").unwrap(),
        duration_minutes: minutes,
        time_zone: UtcOffset::UTC,
    };
    for bad in [0, 1431] {
        let config = JobConfig {
            maintenance_windows: vec![window(bad)],
            ..JobConfig::default()
        };
        given::<Job>([])
            .when(create(config, TargetSelection::Snapshot), t(100))
            .then_reject(ErrorCode::InvalidRequest);
    }
    let ok = JobConfig {
        maintenance_windows: vec![window(60)],
        ..JobConfig::default()
    };
    given::<Job>([])
        .when(create(ok, TargetSelection::Snapshot), t(100))
        .then_expect([
            Event::JobCreated {
                job_id: job(),
                name: None,
                description: None,
                targets: targets(),
                selection: TargetSelection::Snapshot,
                document: json!({"op": "flash"}),
                config: JobConfig {
                    maintenance_windows: vec![window(60)],
                    ..JobConfig::default()
                },
                created_at: t(100),
            },
            Event::JobStarted { at: t(100) },
        ]);
}

// ---- cancelling one execution ------------------------------------------------------------

mod cancel_one {
    use super::*;
    use fleetops_core::event::{EndReason, StatusDetails};
    use fleetops_core::ids::StatusDetailKey;
    use fleetops_core::job_execution::{JobExecution, JobExecutionIntent as I};

    fn details(pairs: &[(&str, &str)]) -> StatusDetails {
        pairs
            .iter()
            .map(|(k, v)| (StatusDetailKey::parse(k).unwrap(), (*v).to_owned()))
            .collect()
    }

    fn in_progress_with_details() -> Vec<Event> {
        let mut h = history_to(S::Queued);
        h.push(Event::ExecutionStarted {
            at: t(110),
            status_details: Some(details(&[("step", "download"), ("pct", "40")])),
            in_progress_deadline: None,
            step: fleetops_core::event::StepTimer::Unchanged,
        });
        h
    }

    #[test]
    fn an_operator_cancel_merges_the_status_details_patch() {
        let s = given::<JobExecution>(in_progress_with_details())
            .when(
                I::OperatorCancel {
                    force: true,
                    expected_version: Some(2),
                    status_details: Some(details(&[("pct", "41"), ("why", "bad batch")])),
                },
                t(200),
            )
            .then_expect([Event::ExecutionCanceled {
                at: t(200),
                forced: true,
                reason: EndReason::Operator,
                status_details: Some(details(&[
                    ("step", "download"),
                    ("pct", "41"),
                    ("why", "bad batch"),
                ])),
            }])
            .expect("an execution");
        assert_eq!(s.status, S::Canceled);
        assert_eq!(s.status_details.len(), 3);
    }

    #[test]
    fn an_in_progress_execution_needs_force_and_the_version_must_match() {
        let cancel = |force, expected_version| I::OperatorCancel {
            force,
            expected_version,
            status_details: None,
        };
        given::<JobExecution>(in_progress_with_details())
            .when(cancel(false, None), t(200))
            .then_reject(ErrorCode::InvalidStateTransition);
        given::<JobExecution>(in_progress_with_details())
            .when(cancel(true, Some(1)), t(200))
            .then_reject(ErrorCode::VersionMismatch);
        // A queued one is canceled without force.
        given::<JobExecution>(history_to(S::Queued))
            .when(cancel(false, Some(1)), t(200))
            .then_expect([Event::ExecutionCanceled {
                at: t(200),
                forced: false,
                reason: EndReason::Operator,
                status_details: None,
            }]);
        // A terminal one cannot be canceled.
        given::<JobExecution>(history_to(S::Succeeded))
            .when(cancel(true, None), t(200))
            .then_reject(ErrorCode::TerminalStateReached);
    }
}
