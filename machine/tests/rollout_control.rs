//! Given a folded history, when the job driver plans, then: what a job queues while paused,
//! outside its maintenance windows, and stage by stage; when its deadline wakes it.

use fleetops_core::config::{
    FailureType, JobConfig, RetryCriterion, Stage, StageTargets, TargetSelection, Targets,
};
use fleetops_core::cron::{CronExpr, MaintenanceWindow, UtcOffset};
use fleetops_core::event::{PauseReason, SCHEMA_VERSION};
use fleetops_core::job::JobIntent;
use fleetops_core::job_execution::JobExecutionIntent;
use fleetops_core::store::StoredEvent;
use fleetops_core::{Event, JobExecutionStatus, JobId, StreamId, ThingName, Timestamp};
use fleetops_machine::jobs::JobStep;
use fleetops_machine::{Effects, ReadModel};

/// 2026-12-05 00:30 UTC.
const T0: u64 = 1_796_430_600;

fn at(secs_after: u64) -> Timestamp {
    Timestamp::from_secs(T0 + secs_after)
}

fn job() -> JobId {
    JobId::parse("rollout").unwrap()
}

fn thing(name: &str) -> ThingName {
    ThingName::parse(name).unwrap()
}

/// A model folded from events given per stream, in order.
struct Given {
    model: ReadModel,
    position: u64,
    versions: std::collections::HashMap<StreamId, u64>,
}

impl Given {
    fn new() -> Self {
        Self {
            model: ReadModel::default(),
            position: 0,
            versions: Default::default(),
        }
    }

    fn event(mut self, stream: StreamId, event: Event) -> Self {
        self.position += 1;
        let v = self.versions.entry(stream.clone()).or_default();
        *v += 1;
        let stored = StoredEvent {
            event_id: uuid::Uuid::nil(),
            stream,
            stream_version: *v,
            position: self.position,
            recorded_at: Timestamp::EPOCH,
            schema_version: SCHEMA_VERSION,
            correlation_id: None,
            causation_id: None,
            idempotency_key: None,
            event,
        };
        self.model
            .apply(&stored, &mut Effects::default())
            .expect("folds");
        self
    }

    fn job(self, event: Event) -> Self {
        self.event(StreamId::job(&job()), event)
    }

    fn exec(self, t: &str, event: Event) -> Self {
        self.event(StreamId::job_execution(&job(), &thing(t)), event)
    }

    fn created(self, things: &[&str], config: JobConfig) -> Self {
        self.job(Event::JobCreated {
            job_id: job(),
            name: None,
            description: None,
            targets: Targets {
                things: things.iter().map(|t| thing(t)).collect(),
                groups: vec![],
            },
            selection: TargetSelection::Snapshot,
            document: serde_json::json!({}),
            config,
            created_at: at(0),
        })
        .job(Event::JobStarted { at: at(0) })
    }

    fn queued(self, t: &str) -> Self {
        self.exec(
            t,
            Event::ExecutionQueued {
                job_id: job(),
                thing: thing(t),
                execution_number: 1,
                queued_at: at(1),
                in_progress_timeout: None,
            },
        )
    }

    fn finished(self, t: &str, status: JobExecutionStatus) -> Self {
        self.exec(
            t,
            Event::ExecutionFinished {
                status,
                at: at(2),
                status_details: None,
            },
        )
    }
}

fn queues(step: &JobStep) -> Vec<String> {
    match step {
        JobStep::Queue(_, things) => things.iter().map(|t| t.as_str().to_owned()).collect(),
        _ => vec![],
    }
}

#[test]
fn a_paused_job_queues_nothing_until_resumed() {
    // Given a running job paused by its operator,
    let g = Given::new()
        .created(&["a", "b"], JobConfig::default())
        .job(Event::JobPaused {
            at: at(1),
            reason: PauseReason::Operator { comment: None },
        });
    // when the driver plans, nothing is queued, and nothing is due later;
    let mut model = g.model.clone();
    assert_eq!(model.plan_job(&job(), at(5), 10), JobStep::Idle);
    assert!(!model.arm_job(&job(), at(5), false));
    assert_eq!(model.proj.next_deadline(), None);
    // once resumed, it queues its targets.
    let g = g.job(Event::JobResumed {
        at: at(6),
        comment: None,
    });
    assert_eq!(queues(&g.model.plan_job(&job(), at(6), 10)), ["a", "b"]);
}

#[test]
fn retries_wait_while_paused_and_the_job_does_not_complete() {
    let config = JobConfig {
        retry: vec![RetryCriterion {
            failure_type: FailureType::Failed,
            number_of_retries: 1,
        }],
        ..JobConfig::default()
    };
    // Given a job whose one execution failed (a retry is owed) and which is paused,
    let g = Given::new()
        .created(&["a"], config)
        .queued("a")
        .finished("a", JobExecutionStatus::Failed)
        .job(Event::JobPaused {
            at: at(3),
            reason: PauseReason::Operator { comment: None },
        });
    // then no retry is queued, and the review does not see every target done.
    assert_eq!(g.model.plan_job(&job(), at(5), 10), JobStep::Idle);
    match g.model.review_intent(&job()) {
        JobIntent::Review { all_queued, .. } => assert!(!all_queued),
        other => panic!("{other:?}"),
    }
    // Resumed, the retry comes first.
    let g = g.job(Event::JobResumed {
        at: at(6),
        comment: None,
    });
    assert!(matches!(
        g.model.plan_job(&job(), at(6), 10),
        JobStep::Executions(_, JobExecutionIntent::Retry)
    ));
}

#[test]
fn outside_its_window_a_job_sleeps_until_the_next_opening() {
    // Given a job whose window opens on the hour for 10 minutes, at 00:30,
    let config = JobConfig {
        maintenance_windows: vec![MaintenanceWindow {
            start: CronExpr::parse("0 * * * *").unwrap(),
            duration_minutes: 10,
            time_zone: UtcOffset::UTC,
        }],
        ..JobConfig::default()
    };
    let g = Given::new().created(&["a", "b"], config);
    let mut model = g.model.clone();
    // then nothing is queued and the job's deadline is 01:00;
    assert_eq!(model.plan_job(&job(), at(0), 10), JobStep::Idle);
    assert!(!model.arm_job(&job(), at(0), false));
    assert_eq!(model.proj.next_deadline(), Some(at(30 * 60)));
    // at 01:05 it queues; at 01:10 the window is closed again.
    assert_eq!(queues(&model.plan_job(&job(), at(35 * 60), 10)), ["a", "b"]);
    assert_eq!(model.plan_job(&job(), at(40 * 60), 10), JobStep::Idle);
}

#[test]
fn stages_are_queued_one_after_the_other() {
    let stage = |names: &[&str]| Stage {
        targets: StageTargets::Things {
            things: names.iter().map(|t| thing(t)).collect(),
        },
        success_percent: 100.0,
        error_threshold: None,
    };
    let config = JobConfig {
        stages: vec![stage(&["a"]), stage(&["b", "c"])],
        ..JobConfig::default()
    };
    // Given a two-stage job over a, b, c and d (d in no stage),
    let g = Given::new().created(&["a", "b", "c", "d"], config);
    // then only the first stage is queued;
    assert_eq!(queues(&g.model.plan_job(&job(), at(1), 10)), ["a"]);
    let g = g.queued("a");
    assert_eq!(g.model.plan_job(&job(), at(1), 10), JobStep::Idle);
    // when a succeeded, the review carries the stage's figures and passes the gate;
    let g = g.finished("a", JobExecutionStatus::Succeeded);
    assert!(matches!(
        g.model.plan_job(&job(), at(3), 10),
        JobStep::Review(_)
    ));
    match g.model.review_intent(&job()) {
        JobIntent::Review {
            stage: Some(p),
            all_queued,
            ..
        } => {
            assert_eq!(p.size, 1);
            assert_eq!(p.counters.succeeded, 1);
            assert!(!all_queued, "later stages still wait");
        }
        other => panic!("{other:?}"),
    }
    // once stage 1 starts, its things are queued; d waits for the end of the stages.
    let g = g.job(Event::JobStageAdvanced {
        at: at(3),
        stage: 1,
        overridden: false,
    });
    assert_eq!(queues(&g.model.plan_job(&job(), at(3), 10)), ["b", "c"]);
    let figures = g.model.stage_figures(&job());
    assert_eq!(figures.len(), 2);
    assert_eq!((figures[0].size, figures[1].size), (1, 2));
    let g = g.job(Event::JobStageAdvanced {
        at: at(4),
        stage: 2,
        overridden: false,
    });
    assert_eq!(
        queues(&g.model.plan_job(&job(), at(4), 10)),
        ["b", "c", "d"]
    );
}
