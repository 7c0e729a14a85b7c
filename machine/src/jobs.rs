//! What each job needs next, decided from the [`ReadModel`] alone.
//!
//! A job marked dirty (its executions changed, a deadline of it is due, an operator acted)
//! gets one [`JobStep`] at a time, in priority order:
//!
//! 1. queue the new attempts the retry policy owes (before anything counts them as failures),
//!    unless the job is paused or outside its maintenance windows;
//! 2. remove the still-queued executions of things that left a continuous job's groups;
//! 3. after a cancel or delete, end the executions the job no longer wants;
//! 4. review the job (start and end time, abort rules, the current stage's threshold and
//!    gate, completion) through `JobIntent::Review`;
//! 5. roll out: queue the next batch of executions the rollout rate allows, unless the job is
//!    paused or outside its maintenance windows (then its deadline is the next opening).
//!
//! The driver carries a step out as one atomic multi-stream append of the
//! [`PlannedAppend`]s decided here, with the versions the model had; a conflict means the
//! model was behind, and the next step sees the newer state.

use std::sync::Arc;

use fleetops_core::cron::window_state;
use fleetops_core::event::{EndReason, JobCancelReason};
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::policy::rollout;
use fleetops_core::policy::stages::StageProgress;
use fleetops_core::projection::JobCounters;
use fleetops_core::store::ExpectedVersion;
use fleetops_core::{
    Aggregate, Event, JobExecutionStatus, JobId, JobStatus, Rejection, StreamId, ThingName,
    Timestamp,
};

use crate::model::{JobEntry, ReadModel};

/// The one step a job needs now.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStep {
    /// Runtime intents on existing executions (retry, remove, cancel), with each execution's
    /// state as the model knows it.
    Executions(Vec<(ThingName, JobExecution)>, JobExecutionIntent),
    /// Review the job (start, end, abort or complete it).
    Review(Arc<Job>),
    /// Queue first attempts for these things.
    Queue(Arc<Job>, Vec<ThingName>),
    /// Nothing to do now.
    Idle,
}

/// One stream's part of a multi-stream append, before the driver gives each event an id
/// and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAppend {
    /// The stream.
    pub stream: StreamId,
    /// The version the decision was taken on.
    pub expected: ExpectedVersion,
    /// What to store.
    pub events: Vec<Event>,
}

impl ReadModel {
    /// The step `job_id` needs at `now`, touching at most `batch` executions.
    pub fn plan_job(&self, job_id: &JobId, now: Timestamp, batch: usize) -> JobStep {
        let Some(entry) = self.jobs.get(job_id) else {
            return JobStep::Idle;
        };
        let job = Arc::clone(&entry.job);
        let batch = batch.max(1);
        let take = |things: &mut dyn Iterator<Item = &ThingName>,
                    keep: &dyn Fn(JobExecutionStatus) -> bool| {
            things
                .filter_map(|t| {
                    self.proj
                        .execution(job_id, t)
                        .filter(|m| keep(m.status))
                        .map(|m| (t.clone(), m.to_state(job_id, t)))
                })
                .take(batch)
                .collect::<Vec<_>>()
        };
        // Retries are queued like first attempts: not while paused, only inside a window.
        let window_open = window_state(&job.config.maintenance_windows, now).open;
        if !entry.retry_owed.is_empty() && job.paused.is_none() && window_open {
            let items = take(&mut entry.retry_owed.iter(), &|s| {
                matches!(s, JobExecutionStatus::Failed | JobExecutionStatus::TimedOut)
            });
            return JobStep::Executions(items, JobExecutionIntent::Retry);
        }
        if !entry.leave_owed.is_empty() {
            let items = take(&mut entry.leave_owed.iter(), &|s| {
                s == JobExecutionStatus::Queued
            });
            return JobStep::Executions(
                items,
                JobExecutionIntent::Remove {
                    force: true,
                    reason: EndReason::LeftGroup,
                },
            );
        }
        let counters = self.proj.counters(job_id);
        if job.deleted || job.status == JobStatus::Canceled {
            let forced = job.forced || job.deleted;
            // Nothing left to end: skip the scan (a canceled job stays dirty while its
            // in-progress executions finish).
            if counters.queued == 0 && (!forced || counters.in_progress == 0) {
                return JobStep::Idle;
            }
            let keep = |s: JobExecutionStatus| {
                s == JobExecutionStatus::Queued || (forced && s == JobExecutionStatus::InProgress)
            };
            let items = take(&mut self.proj.executions_of(job_id).map(|(t, _)| t), &keep);
            let intent = if job.deleted {
                JobExecutionIntent::Remove {
                    force: true,
                    reason: EndReason::Operator,
                }
            } else {
                let reason = match job.cancel_reason {
                    Some(
                        JobCancelReason::Aborted { .. } | JobCancelReason::StageAborted { .. },
                    ) => EndReason::JobAborted,
                    Some(JobCancelReason::EndTime) => EndReason::JobEnded,
                    _ => EndReason::JobCanceled,
                };
                JobExecutionIntent::Cancel {
                    force: forced,
                    reason,
                }
            };
            return JobStep::Executions(items, intent);
        }
        if job.status.is_terminal() {
            return JobStep::Idle;
        }
        let review = self.review_of(entry);
        if Job::decide(Some(&job), review, now).is_ok_and(|e| !e.is_empty()) {
            return JobStep::Review(job);
        }
        if job.is_queueing() && window_open && !entry.to_queue.is_empty() {
            let n = allowance(entry, &counters, self.proj.execution_count_of(job_id), now).now;
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(batch);
            if n > 0 {
                let things = entry.to_queue.iter().take(n).cloned().collect();
                return JobStep::Queue(job, things);
            }
        }
        JobStep::Idle
    }

    /// The review intent for `job_id` as the model stands: its counters, and whether every
    /// target has an execution.
    pub fn review_intent(&self, job_id: &JobId) -> JobIntent {
        match self.jobs.get(job_id) {
            Some(entry) => self.review_of(entry),
            None => JobIntent::Review {
                counters: self.proj.counters(job_id),
                all_queued: true,
                stage: None,
            },
        }
    }

    /// The review intent of a job: every target has an execution once nothing waits in the
    /// rollout queue, in a later stage or for a retry; a staged job adds its current stage.
    fn review_of(&self, entry: &JobEntry) -> JobIntent {
        let job_id = &entry.job.job_id;
        let book = entry.stages.as_ref();
        let all_queued = entry.to_queue.is_empty()
            && entry.retry_owed.is_empty()
            && !book.is_some_and(|b| b.waiting());
        JobIntent::Review {
            counters: self.proj.counters(job_id),
            all_queued,
            stage: book.and_then(|b| self.stage_progress(entry, b, entry.job.stage)),
        }
    }

    /// The figures of stage `i` of a staged job; `None` past its configured stages.
    fn stage_progress(
        &self,
        entry: &JobEntry,
        book: &crate::model::StageBook,
        i: u32,
    ) -> Option<StageProgress> {
        let idx = usize::try_from(i).ok()?;
        if idx >= entry.job.config.stages.len() {
            return None;
        }
        Some(StageProgress {
            size: *book.sizes.get(idx)?,
            counters: *book.counters.get(idx)?,
            retries_owed: entry
                .retry_owed
                .iter()
                .filter(|t| book.of.get(*t) == Some(&i))
                .count() as u64,
        })
    }

    /// Each configured stage's figures, for describing a staged job.
    pub fn stage_figures(&self, job_id: &JobId) -> Vec<StageProgress> {
        let Some((entry, book)) = self
            .jobs
            .get(job_id)
            .and_then(|e| e.stages.as_ref().map(|b| (e, b)))
        else {
            return Vec::new();
        };
        (0..entry.job.config.stages.len())
            .filter_map(|i| self.stage_progress(entry, book, u32::try_from(i).ok()?))
            .collect()
    }

    /// Re-arms the job's deadline (start or end time, next rollout window) after a step;
    /// returns whether the rollout may queue more right now (and the step did nothing, so
    /// the job must be looked at again).
    pub fn arm_job(&mut self, job_id: &JobId, now: Timestamp, progressed: bool) -> bool {
        let Some(entry) = self.jobs.get(job_id) else {
            return false;
        };
        let job = &entry.job;
        let mut at = job.next_deadline();
        let mut again = false;
        let rollout_owed = job.is_queueing() && !entry.to_queue.is_empty();
        let retry_owed = !entry.retry_owed.is_empty() && job.paused.is_none();
        let windows = window_state(&job.config.maintenance_windows, now);
        if (rollout_owed || retry_owed) && !windows.open {
            // Outside every window: wake at the next opening.
            if let Some(w) = windows.next_open {
                at = Some(at.map_or(w, |a| a.min(w)));
            }
        } else if rollout_owed {
            let counters = self.proj.counters(job_id);
            let allowance = allowance(entry, &counters, self.proj.execution_count_of(job_id), now);
            if allowance.now > 0 {
                again = !progressed;
            } else if let Some(w) = allowance.next_window {
                at = Some(at.map_or(w, |a| a.min(w)));
            }
        }
        self.proj.arm(&StreamId::job(job_id), at);
        again
    }
}

/// What the rollout rate allows at `now`.
fn allowance(
    entry: &JobEntry,
    counters: &JobCounters,
    queued_ever: usize,
    now: Timestamp,
) -> rollout::Allowance {
    let started = entry.job.started_at.unwrap_or(now);
    let window = rollout::window_start(started, now);
    let in_window = match entry.window {
        Some((w, n)) if w == window => n,
        _ => 0,
    };
    rollout::allowance(
        &entry.job.config.rollout,
        started,
        now,
        in_window,
        queued_ever as u64,
        counters.succeeded,
    )
}

/// Decides `intent` for each execution at `now`. An execution whose state moved on since
/// the model saw it (the intent is refused) is left out; the next step sees it as it is.
pub fn decide_executions(
    items: Vec<(ThingName, JobExecution)>,
    intent: &JobExecutionIntent,
    now: Timestamp,
) -> Vec<PlannedAppend> {
    items
        .into_iter()
        .filter_map(|(thing, state)| {
            let stream = StreamId::job_execution(&state.job_id, &thing);
            match JobExecution::decide(Some(&state), intent.clone(), now) {
                Ok(events) if !events.is_empty() => Some(PlannedAppend {
                    stream,
                    expected: ExpectedVersion::Exact(state.version_number),
                    events,
                }),
                Ok(_) | Err(_) => None,
            }
        })
        .collect()
}

/// Decides the first attempt of `job` on each of `things` at `now`: one append per new
/// execution. (Its first state needs no cache: it has no status details, so the read model's
/// record of it is the whole state.)
pub fn decide_queue(
    job: &Job,
    things: Vec<ThingName>,
    now: Timestamp,
) -> Result<Vec<PlannedAppend>, Rejection> {
    let mut parts = Vec::with_capacity(things.len());
    for thing in things {
        let intent = JobExecutionIntent::Queue {
            job_id: job.job_id.clone(),
            thing: thing.clone(),
            in_progress_timeout: job.config.in_progress_timeout,
        };
        let events = JobExecution::decide(None, intent, now)?;
        parts.push(PlannedAppend {
            stream: StreamId::job_execution(&job.job_id, &thing),
            expected: ExpectedVersion::NoStream,
            events,
        });
    }
    Ok(parts)
}
