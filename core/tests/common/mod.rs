//! Shared builders for the core's integration tests (included with `mod common;`).
#![allow(dead_code)]

use fleetops_core::event::{EndReason, StepTimer, TimeoutCause};
use fleetops_core::{Duration, Event, JobExecutionStatus as S, JobId, ThingName, Timestamp};

pub fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

pub fn job() -> JobId {
    JobId::parse("job-1").expect("valid")
}

pub fn thing() -> ThingName {
    ThingName::parse("thing-1").expect("valid")
}

pub fn queued() -> Event {
    Event::ExecutionQueued {
        job_id: job(),
        thing: thing(),
        execution_number: 1,
        queued_at: t(100),
        in_progress_timeout: Some(Duration::from_minutes(10)),
    }
}

pub fn started(at: u64) -> Event {
    Event::ExecutionStarted {
        at: t(at),
        status_details: None,
        in_progress_deadline: Some(t(at) + Duration::from_minutes(10)),
        step: StepTimer::Unchanged,
    }
}

/// A history that leaves a job execution in `status`.
pub fn history_to(status: S) -> Vec<Event> {
    let mut h = vec![queued()];
    match status {
        S::Queued => {}
        S::InProgress => h.push(started(110)),
        S::Succeeded | S::Failed | S::Rejected => h.push(Event::ExecutionFinished {
            status,
            at: t(110),
            status_details: None,
        }),
        S::TimedOut => {
            h.push(started(110));
            h.push(Event::ExecutionTimedOut {
                at: t(800),
                cause: TimeoutCause::InProgress,
            });
        }
        S::Canceled => h.push(Event::ExecutionCanceled {
            at: t(110),
            forced: false,
            reason: EndReason::JobCanceled,
            status_details: None,
        }),
        S::Removed => {
            h.push(Event::ExecutionCanceled {
                at: t(110),
                forced: false,
                reason: EndReason::JobCanceled,
                status_details: None,
            });
            h.push(Event::ExecutionRemoved {
                at: t(120),
                forced: false,
                reason: EndReason::Operator,
            });
        }
    }
    h
}
