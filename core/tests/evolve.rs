//! `evolve` applies facts only, but refuses histories that cannot have happened: such a history
//! is corrupt, and replaying it must fail loudly rather than produce a plausible state.

mod common;

use common::*;
use fleetops_core::event::{EndReason, EvolveError, JobCancelReason};
use fleetops_core::group::Group;
use fleetops_core::job::Job;
use fleetops_core::job_execution::JobExecution;
use fleetops_core::{Aggregate, Event, JobExecutionStatus as S};

fn removed() -> Event {
    Event::ExecutionRemoved {
        at: t(300),
        forced: false,
        reason: EndReason::Operator,
    }
}

#[test]
fn a_job_execution_history_that_cannot_happen_is_refused() {
    let impossible: Vec<Vec<Event>> = vec![
        // Nothing follows REMOVED, not even a second removal.
        [history_to(S::Removed), vec![removed()]].concat(),
        // A finished execution cannot start, progress or be requeued after success.
        [history_to(S::Succeeded), vec![started(200)]].concat(),
        [
            history_to(S::Succeeded),
            vec![Event::ExecutionRequeued {
                execution_number: 2,
                queued_at: t(200),
            }],
        ]
        .concat(),
        // Only an in-progress execution times out.
        [
            history_to(S::Queued),
            vec![Event::ExecutionTimedOut {
                at: t(200),
                cause: fleetops_core::event::TimeoutCause::Step,
            }],
        ]
        .concat(),
        // Queued twice.
        vec![queued(), queued()],
        // An execution event before the execution exists.
        vec![started(110)],
    ];
    for h in impossible {
        let err = JobExecution::replay(&h).expect_err("impossible history accepted");
        assert!(
            matches!(err, EvolveError::OutOfOrder { .. }),
            "{err:?} for {h:?}"
        );
    }
}

#[test]
fn foreign_events_are_refused_by_every_aggregate() {
    let job_event = Event::JobStarted { at: t(1) };
    assert!(matches!(
        JobExecution::replay(&[queued(), job_event.clone()]),
        Err(EvolveError::Foreign { .. })
    ));
    assert!(matches!(
        Group::replay(&[job_event]),
        Err(EvolveError::Foreign { .. })
    ));
    assert!(matches!(
        Job::replay(&[queued()]),
        Err(EvolveError::Foreign { .. })
    ));
    let cancel = Event::JobCanceled {
        at: t(1),
        force: false,
        reason: JobCancelReason::EndTime,
    };
    assert!(matches!(
        Job::replay(&[cancel]),
        Err(EvolveError::OutOfOrder { .. })
    ));
}
