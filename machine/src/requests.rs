//! How each device request is answered, decided from the [`ReadModel`]: which aggregate it
//! goes to with which intent, or the answer itself when the model holds it; and the reply
//! built from the state a decision left behind.
//!
//! The driver loads the aggregate the [`Route`] names (from its cache or by replaying the
//! stream), decides with core's rules, appends, and asks [`ReadModel::answer`] for the reply:
//! append first, then answer.

use fleetops_core::command::CommandIntent;
use fleetops_core::device::{DeviceRequest, ExecutionView, JobTarget, Reply, StartNextRequest};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::{
    Aggregate, Event, EvolveError, ExecutionId, JobExecutionStatus, JobId, Rejection, StreamId,
    ThingName,
};

use crate::model::ReadModel;

/// Where a device request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Answered from the read model alone, or refused.
    Answered(Result<Reply, Rejection>),
    /// Decide `intent` on the thing's execution of `job_id`, then [`ReadModel::answer`].
    Execution {
        /// The job.
        job_id: JobId,
        /// The execution's stream.
        stream: StreamId,
        /// What to decide.
        intent: JobExecutionIntent,
        /// How to answer from the new state.
        answer: Answer,
    },
    /// Read the execution's stream and [`ReadModel::describe`] it.
    Describe(Describe),
    /// Decide `intent` on a command execution of this thing; answered `CommandResponse`.
    Command {
        /// The command execution.
        execution_id: ExecutionId,
        /// The command's stream.
        stream: StreamId,
        /// What to decide.
        intent: CommandIntent,
    },
}

/// A `jobs/{jobId}/get` to answer from the execution's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    /// The job.
    pub job_id: JobId,
    /// The execution's stream, to read before [`ReadModel::describe`].
    pub stream: StreamId,
    /// The attempt asked for; the current one when absent.
    pub execution_number: Option<u32>,
    /// Answer with the job document.
    pub include_document: bool,
}

/// How an execution decision is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `start-next`: the started execution with its job document.
    StartNext,
    /// An update: the new state and the job document when asked.
    Update {
        /// Answer with the execution state.
        include_state: bool,
        /// Answer with the job document.
        include_document: bool,
    },
}

/// The refusal for an execution the device named that does not exist.
pub fn execution_not_found(job: &JobId, thing: &ThingName) -> Rejection {
    Rejection::ResourceNotFound {
        kind: "job execution",
        id: format!("{job}/{thing}"),
    }
}

/// The refusal for a command the device cannot answer: unknown, or another thing's.
pub fn command_not_found(id: &ExecutionId) -> Rejection {
    Rejection::ResourceNotFound {
        kind: "command execution",
        id: id.to_string(),
    }
}

impl ReadModel {
    /// Where `thing`'s `request` goes. `GetPending` lists at most `max_listed` executions.
    pub fn route(&self, thing: &ThingName, request: DeviceRequest, max_listed: usize) -> Route {
        match request {
            DeviceRequest::GetPending => {
                Route::Answered(Ok(Reply::Pending(self.pending_jobs(thing, max_listed))))
            }
            DeviceRequest::StartNext(StartNextRequest {
                status_details,
                step_timeout,
            }) => match self.proj.next_pending(thing) {
                None => Route::Answered(Ok(Reply::StartNext(None))),
                Some(key) => Route::Execution {
                    stream: StreamId::job_execution(&key.job_id, thing),
                    job_id: key.job_id.clone(),
                    intent: JobExecutionIntent::Start {
                        status_details,
                        step_timeout,
                    },
                    answer: Answer::StartNext,
                },
            },
            DeviceRequest::Describe(req) => {
                let job_id = match req.job {
                    JobTarget::Job(id) => id,
                    JobTarget::Next => match self.proj.next_pending(thing) {
                        Some(key) => key.job_id.clone(),
                        None => {
                            return Route::Answered(Err(Rejection::ResourceNotFound {
                                kind: "job execution",
                                id: format!("$next/{thing}"),
                            }))
                        }
                    },
                };
                Route::Describe(Describe {
                    stream: StreamId::job_execution(&job_id, thing),
                    job_id,
                    execution_number: req.execution_number,
                    include_document: req.include_job_document,
                })
            }
            DeviceRequest::Update { job_id, request } => {
                let answer = Answer::Update {
                    include_state: request.include_job_execution_state,
                    include_document: request.include_job_document,
                };
                Route::Execution {
                    stream: StreamId::job_execution(&job_id, thing),
                    job_id,
                    intent: JobExecutionIntent::Update(request),
                    answer,
                }
            }
            DeviceRequest::CommandResponse {
                execution_id,
                response,
            } => {
                // A device may only answer its own commands.
                if self
                    .command(&execution_id)
                    .is_some_and(|c| &c.thing != thing)
                {
                    return Route::Answered(Err(command_not_found(&execution_id)));
                }
                Route::Command {
                    stream: StreamId::command(&execution_id),
                    execution_id,
                    intent: CommandIntent::Respond(response),
                }
            }
        }
    }

    /// The reply to an execution decision, from the state it left.
    pub fn answer(&self, answer: Answer, state: &JobExecution) -> Reply {
        match answer {
            Answer::StartNext => Reply::StartNext(Some(self.view(state, true))),
            Answer::Update {
                include_state,
                include_document,
            } => Reply::Update {
                execution_state: include_state.then(|| state.state()),
                job_document: if include_document {
                    self.jobs.get(&state.job_id).map(|e| e.job.document.clone())
                } else {
                    None
                },
            },
        }
    }

    /// Describes an execution from its stream's history (`d.stream`, read by the caller):
    /// the current attempt, or an earlier one (replayed up to the requeue that began the
    /// attempt after it).
    pub fn describe<'a>(
        &self,
        thing: &ThingName,
        d: &Describe,
        history: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Result<Reply, Rejection>, EvolveError> {
        let (job_id, execution_number) = (&d.job_id, d.execution_number);
        let history = history.into_iter().take_while(|e| {
            !matches!(e, Event::ExecutionRequeued { execution_number: n, .. }
                if execution_number.is_some_and(|wanted| *n > wanted))
        });
        let state = JobExecution::replay(history)?
            .filter(|s| s.status != JobExecutionStatus::Removed)
            .filter(|s| execution_number.is_none_or(|n| n == s.execution_number));
        Ok(match state {
            Some(s) => Ok(Reply::Describe(self.view(&s, d.include_document))),
            None => Err(execution_not_found(job_id, thing)),
        })
    }

    /// The execution as a device sees it, with the job document when asked.
    pub fn view(&self, s: &JobExecution, with_document: bool) -> ExecutionView {
        ExecutionView {
            job_id: s.job_id.clone(),
            thing_name: s.thing.clone(),
            status: s.status,
            status_details: s.status_details.clone(),
            queued_at: s.queued_at,
            started_at: s.started_at,
            last_updated_at: s.last_updated_at,
            version_number: s.version_number,
            execution_number: s.execution_number,
            job_document: if with_document {
                self.jobs.get(&s.job_id).map(|e| e.job.document.clone())
            } else {
                None
            },
        }
    }
}
