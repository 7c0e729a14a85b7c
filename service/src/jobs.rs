//! The job driver: one task that moves every job along. For a job marked dirty (by the
//! follower when its executions change, by the scheduler at a start/end time or rollout
//! window, by an operator), one tick asks the machine for the job's next step
//! ([`fleetops_machine::jobs`], which has the priority order) and carries it out as one
//! append. A tick that did something marks the job dirty again, so large jobs proceed batch
//! by batch while other jobs get their turn.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use fleetops_core::job::Job;
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::link::DeviceLink;
use fleetops_core::store::{AppendBatch, EventStore, StoreError, StreamAppend};
use fleetops_core::{JobId, StreamId, ThingName, Timestamp};
use fleetops_machine::jobs::{self, JobStep, PlannedAppend};

use crate::error::FleetError;
use crate::runtime::Inner;
use crate::sync::lock;

/// The job driver task.
pub(crate) async fn run<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    loop {
        // Rollouts are the leader's; a new leader marks every job, so what piles up meanwhile
        // (a job id at most once) is only a hint.
        inner.until_leading().await;
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
        let step = self.read().plan_job(job_id, now, self.config.job_batch);
        let progressed = match step {
            JobStep::Executions(items, intent) => {
                self.apply_to_executions(items, intent, now).await?
            }
            JobStep::Review(job) => self.review(&job).await?,
            JobStep::Queue(job, things) => self.queue(&job, things, now).await?,
            JobStep::Idle => false,
        };
        let again = self.write().arm_job(job_id, self.clock.now(), progressed);
        self.scheduler_wake.notify_one();
        Ok(progressed || again)
    }

    /// Envelopes for the planned parts, decided at `now`.
    fn stream_appends(&self, parts: Vec<PlannedAppend>, now: Timestamp) -> Vec<StreamAppend> {
        parts
            .into_iter()
            .map(|p| StreamAppend {
                events: self.envelopes(&p.events, now),
                stream: p.stream,
                expected: p.expected,
            })
            .collect()
    }

    /// Decides `intent` for each execution and appends all of them as one batch. Executions
    /// whose state moved on (refused, or a conflict) are left for the next tick.
    async fn apply_to_executions(
        &self,
        items: Vec<(ThingName, JobExecution)>,
        intent: JobExecutionIntent,
        now: Timestamp,
    ) -> Result<bool, FleetError> {
        let parts = jobs::decide_executions(items, &intent, now);
        // These states were decided from the folded summary, not the full state: forget
        // whatever the cache holds for them.
        {
            let mut cache = lock(&self.cache);
            for p in &parts {
                cache.remove(&p.stream);
            }
        }
        let parts = self.stream_appends(parts, now);
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
        let intent = self.read().review_intent(&job.job_id);
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
        let parts = jobs::decide_queue(job, things, now)?;
        let parts = self.stream_appends(parts, now);
        self.append_parts(parts).await
    }
}
