//! Which deadlines are due, decided from the [`ReadModel`]'s deadline index: command TTLs,
//! in-progress and step timeouts, job start and end times, rollout windows. The driver sleeps
//! until [`DueTimers::next`] and hands each [`Timer`] to whoever decides it; a due deadline
//! stays in the index until the event that settles it is folded.

use std::collections::HashSet;

use fleetops_core::ids::StreamKind;
use fleetops_core::{ExecutionId, JobId, StreamId, ThingName, Timestamp};

use crate::model::ReadModel;

/// A due deadline and what decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// A command's TTL may have passed: `CommandIntent::CheckTimeout` on its stream.
    Command {
        /// The command execution.
        execution_id: ExecutionId,
        /// Its device, whose requests are decided in order with it.
        thing: ThingName,
    },
    /// A job execution's in-progress or step timer may have expired:
    /// `JobExecutionIntent::CheckTimeout`.
    Execution {
        /// The job.
        job_id: JobId,
        /// The device.
        thing: ThingName,
    },
    /// A job's start or end time or rollout window: the job's next step.
    Job(JobId),
}

/// One due deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The stream whose deadline it is.
    pub stream: StreamId,
    /// The deadline.
    pub at: Timestamp,
    /// What decides it.
    pub timer: Timer,
}

/// What one scan of the deadline index found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DueTimers {
    /// The due deadlines to fire now, earliest first.
    pub fire: Vec<Due>,
    /// Every due stream the scan looked at, fired now or skipped as already in flight.
    pub seen: HashSet<StreamId>,
    /// The scan stopped at a limit: more are due, scan again at once.
    pub truncated: bool,
    /// The earliest deadline in the index, due or not.
    pub next: Option<Timestamp>,
}

impl ReadModel {
    /// The deadlines due at `now`, at most `fire_limit` fired and `scan_limit` looked at;
    /// `in_flight` says which (stream, deadline) were fired recently and are still being
    /// decided, so they are skipped rather than fired again.
    pub fn due_timers(
        &self,
        now: Timestamp,
        in_flight: impl Fn(&StreamId, Timestamp) -> bool,
        scan_limit: usize,
        fire_limit: usize,
    ) -> DueTimers {
        let mut out = DueTimers::default();
        for (at, stream) in self.proj.due(now) {
            if out.seen.len() >= scan_limit || out.fire.len() >= fire_limit {
                out.truncated = true;
                break;
            }
            out.seen.insert(stream.clone());
            if in_flight(stream, *at) {
                continue;
            }
            let timer = match stream.kind() {
                StreamKind::Command(id) => match self.command(&id) {
                    Some(c) => Timer::Command {
                        thing: c.thing.clone(),
                        execution_id: id,
                    },
                    None => continue,
                },
                StreamKind::JobExecution(job_id, thing) => Timer::Execution { job_id, thing },
                StreamKind::Job(job) => Timer::Job(job),
                StreamKind::Group(_)
                | StreamKind::Thing(_)
                | StreamKind::ApiKey(_)
                | StreamKind::CommandTemplate(_)
                | StreamKind::Custom(_) => continue,
            };
            out.fire.push(Due {
                stream: stream.clone(),
                at: *at,
                timer,
            });
        }
        out.next = self.proj.next_deadline();
        out
    }
}
