//! The job driver: one task that moves every job along. For a job marked dirty (by the
//! follower when its executions change, by the scheduler at a start/end time or rollout
//! window, by an operator), one tick does at most one step, in priority order:
//!
//! 1. queue the new attempts the retry policy owes (before anything counts them as failures);
//! 2. remove the still-queued executions of things that left a continuous job's groups;
//! 3. after a cancel or delete, end the executions the job no longer wants;
//! 4. review the job (start and end time, abort rules, completion) through `JobIntent::Review`;
//! 5. roll out: queue the next batch of executions the rollout rate allows, as one atomic
//!    multi-stream append.
//!
//! A tick that did something marks the job dirty again, so large jobs proceed batch by batch
//! while other jobs get their turn. Every step reads the projections, decides with core's
//! rules and appends with the versions it read; a conflict means the projection was behind,
//! and the next tick sees the newer state.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fleetops_core::event::{EndReason, JobCancelReason};
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::link::DeviceLink;
use fleetops_core::policy::rollout;
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, StoreError, StreamAppend};
use fleetops_core::{
    Aggregate, JobExecutionStatus, JobId, JobStatus, StreamId, ThingName, Timestamp,
};

use crate::error::FleetError;
use crate::runtime::Inner;
use crate::sync::lock;

/// One step a tick decided on.
enum Step {
    /// Service intents on existing executions (retry, remove, cancel).
    Executions(Vec<(ThingName, JobExecution)>, JobExecutionIntent),
    /// Review the job.
    Review(Arc<Job>),
    /// Queue first attempts for these things.
    Queue(Arc<Job>, Vec<ThingName>),
    /// Nothing to do now.
    Idle,
}

/// The job driver task.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    loop {
        let batch: Vec<JobId> = std::mem::take(&mut *lock(&inner.dirty_jobs))
            .into_iter()
            .collect();
        if batch.is_empty() {
            inner.jobs_wake.notified().await;
            continue;
        }
        for job in batch {
            match inner.tick(&job).await {
                Ok(true) => inner.mark_job(job),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%job, %err, "job step failed; retrying shortly");
                    tokio::time::sleep(StdDuration::from_millis(100)).await;
                    inner.mark_job(job);
                }
            }
        }
    }
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// One step for one job; `true` when more may be due at once.
    pub(crate) async fn tick(&self, job_id: &JobId) -> Result<bool, FleetError> {
        let now = self.clock.now();
        let step = self.plan(job_id, now);
        let progressed = match step {
            Step::Executions(items, intent) => self.apply_to_executions(items, intent, now).await?,
            Step::Review(job) => self.review(&job).await?,
            Step::Queue(job, things) => self.queue(&job, things, now).await?,
            Step::Idle => false,
        };
        let again = self.arm_job(job_id, progressed);
        Ok(progressed || again)
    }

    /// Reads the projections and picks the step.
    fn plan(&self, job_id: &JobId, now: Timestamp) -> Step {
        let st = self.read();
        let Some(entry) = st.jobs.get(job_id) else {
            return Step::Idle;
        };
        let job = Arc::clone(&entry.job);
        let batch = self.config.job_batch.max(1);
        let take = |things: &mut dyn Iterator<Item = &ThingName>,
                    keep: &dyn Fn(JobExecutionStatus) -> bool| {
            things
                .filter_map(|t| {
                    entry
                        .executions
                        .get(t)
                        .filter(|m| keep(m.status))
                        .map(|m| (t.clone(), m.to_state(job_id, t)))
                })
                .take(batch)
                .collect::<Vec<_>>()
        };
        if !entry.retry_owed.is_empty() {
            let items = take(&mut entry.retry_owed.iter(), &|s| {
                matches!(s, JobExecutionStatus::Failed | JobExecutionStatus::TimedOut)
            });
            return Step::Executions(items, JobExecutionIntent::Retry);
        }
        if !entry.leave_owed.is_empty() {
            let items = take(&mut entry.leave_owed.iter(), &|s| {
                s == JobExecutionStatus::Queued
            });
            return Step::Executions(
                items,
                JobExecutionIntent::Remove {
                    force: true,
                    reason: EndReason::LeftGroup,
                },
            );
        }
        let counters = st.proj.counters(job_id);
        if job.deleted || job.status == JobStatus::Canceled {
            let forced = job.forced || job.deleted;
            // Nothing left to end: skip the scan (a canceled job stays dirty while its
            // in-progress executions finish).
            if counters.queued == 0 && (!forced || counters.in_progress == 0) {
                return Step::Idle;
            }
            let keep = |s: JobExecutionStatus| {
                s == JobExecutionStatus::Queued || (forced && s == JobExecutionStatus::InProgress)
            };
            let items = take(&mut entry.executions.keys(), &keep);
            let intent = if job.deleted {
                JobExecutionIntent::Remove {
                    force: true,
                    reason: EndReason::Operator,
                }
            } else {
                let reason = match job.cancel_reason {
                    Some(JobCancelReason::Aborted { .. }) => EndReason::JobAborted,
                    Some(JobCancelReason::EndTime) => EndReason::JobEnded,
                    _ => EndReason::JobCanceled,
                };
                JobExecutionIntent::Cancel {
                    force: forced,
                    reason,
                }
            };
            return Step::Executions(items, intent);
        }
        if job.status.is_terminal() {
            return Step::Idle;
        }
        let review = JobIntent::Review {
            counters,
            all_queued: entry.to_queue.is_empty(),
        };
        if Job::decide(Some(&job), review, now).is_ok_and(|e| !e.is_empty()) {
            return Step::Review(job);
        }
        if job.is_rolling_out() && !entry.to_queue.is_empty() {
            let n = self.allowance(entry, &counters, now).now;
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(batch);
            if n > 0 {
                let things = entry.to_queue.iter().take(n).cloned().collect();
                return Step::Queue(job, things);
            }
        }
        Step::Idle
    }

    fn allowance(
        &self,
        entry: &crate::state::JobEntry,
        counters: &fleetops_core::projection::JobCounters,
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
            entry.executions.len() as u64,
            counters.succeeded,
        )
    }

    /// Re-arms the job's deadline (start or end time, next rollout window); returns whether
    /// the rollout may queue more right now.
    fn arm_job(&self, job_id: &JobId, progressed: bool) -> bool {
        let now = self.clock.now();
        let mut st = self.write();
        let Some(entry) = st.jobs.get(job_id) else {
            return false;
        };
        let mut at = entry.job.next_deadline();
        let mut again = false;
        if entry.job.is_rolling_out() && !entry.to_queue.is_empty() {
            let counters = st.proj.counters(job_id);
            let allowance = self.allowance(entry, &counters, now);
            if allowance.now > 0 {
                again = !progressed;
            } else if let Some(w) = allowance.next_window {
                at = Some(at.map_or(w, |a| a.min(w)));
            }
        }
        st.proj.arm(&StreamId::job(job_id), at);
        drop(st);
        self.scheduler_wake.notify_one();
        again
    }

    /// Decides `intent` for each execution and appends all of them as one batch. Executions
    /// whose state moved on (refused, or a conflict) are left for the next tick.
    async fn apply_to_executions(
        &self,
        items: Vec<(ThingName, JobExecution)>,
        intent: JobExecutionIntent,
        now: Timestamp,
    ) -> Result<bool, FleetError> {
        let mut parts = Vec::with_capacity(items.len());
        for (thing, state) in items {
            let stream = StreamId::job_execution(&state.job_id, &thing);
            match JobExecution::decide(Some(&state), intent.clone(), now) {
                Ok(events) if !events.is_empty() => parts.push(StreamAppend {
                    stream,
                    expected: ExpectedVersion::Exact(state.version_number),
                    events: self.envelopes(&events, now),
                }),
                Ok(_) => {}
                Err(r) => tracing::debug!(%stream, %r, "service intent refused; state moved on"),
            }
        }
        // These states were decided from the folded summary, not the full state: forget
        // whatever the cache holds for them.
        {
            let mut cache = lock(&self.cache);
            for p in &parts {
                cache.remove(&p.stream);
            }
        }
        self.append_parts(parts).await
    }

    /// Appends a multi-stream batch; a stream that conflicts is dropped and the rest retried.
    async fn append_parts(&self, mut parts: Vec<StreamAppend>) -> Result<bool, FleetError> {
        while !parts.is_empty() {
            let batch = AppendBatch {
                streams: parts.clone(),
                idempotency_key: None,
            };
            match self.append(batch).await {
                Ok(_) => return Ok(true),
                Err(FleetError::Store(StoreError::Conflict { stream, .. })) => {
                    parts.retain(|p| p.stream != stream);
                }
                Err(e) => return Err(e),
            }
        }
        // Everything conflicted: the projection is behind; let it catch up first.
        self.catch_up().await?;
        Ok(true)
    }

    async fn review(&self, job: &Job) -> Result<bool, FleetError> {
        let (counters, all_queued) = {
            let st = self.read();
            let all_queued = st
                .jobs
                .get(&job.job_id)
                .is_none_or(|e| e.to_queue.is_empty());
            (st.proj.counters(&job.job_id), all_queued)
        };
        let intent = JobIntent::Review {
            counters,
            all_queued,
        };
        let stream = StreamId::job(&job.job_id);
        match self
            .try_execute::<Job>(&stream, Some(job.clone()), Some(job.version), intent)
            .await?
        {
            Some(_) => Ok(true),
            None => {
                self.catch_up().await?;
                Ok(true)
            }
        }
    }

    async fn queue(
        &self,
        job: &Job,
        things: Vec<ThingName>,
        now: Timestamp,
    ) -> Result<bool, FleetError> {
        let mut parts = Vec::with_capacity(things.len());
        let mut states = Vec::with_capacity(things.len());
        for thing in things {
            let intent = JobExecutionIntent::Queue {
                job_id: job.job_id.clone(),
                thing: thing.clone(),
                in_progress_timeout: job.config.in_progress_timeout,
            };
            let events = JobExecution::decide(None, intent, now)?;
            if let Ok(Some(state)) = JobExecution::replay(events.iter()) {
                states.push(state);
            }
            parts.push(StreamAppend {
                stream: StreamId::job_execution(&job.job_id, &thing),
                expected: ExpectedVersion::NoStream,
                events: self.envelopes(&events, now),
            });
        }
        let progressed = self.append_parts(parts).await?;
        // The first state of each execution is fully known: cache it for the device's
        // start-next, but only where the stored execution is the one decided here (a stream
        // that conflicted holds another history).
        let mine: Vec<JobExecution> = {
            let st = self.read();
            states
                .into_iter()
                .filter(|s| {
                    st.exec(&s.job_id, &s.thing)
                        .is_some_and(|m| m.version == 1 && m.queued_at == s.queued_at)
                })
                .collect()
        };
        let mut cache = lock(&self.cache);
        for s in mine {
            cache.put(StreamId::job_execution(&s.job_id, &s.thing), 1, s);
        }
        Ok(progressed)
    }
}
