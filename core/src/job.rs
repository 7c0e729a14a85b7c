//! The job aggregate: one operation for many things.
//!
//! The job stream stays small whatever the fleet size: it records creation, start, the end of
//! rollout, completion, cancellation and deletion. Per-status counts and which executions exist
//! live in projections of the global feed ([`crate::projection`]); the job decides job-level
//! transitions from those figures, passed in through [`JobIntent::Review`].

use serde_json::Value;

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::config::{EndBehavior, JobConfig, TargetSelection, Targets};
use crate::event::{Event, EvolveError, JobCancelReason};
use crate::ids::JobId;
use crate::limits::{self, MAX_JOB_DOCUMENT_BYTES, MAX_JOB_TARGETS};
use crate::policy::abort;
use crate::projection::JobCounters;
use crate::rejection::Rejection;
use crate::status::JobStatus;
use crate::time::Timestamp;

// Groups share the limit, and aggregates do not name each other (see the crate docs' layers):
// it lives in `limits` and stays reachable here.
pub use crate::limits::MAX_DESCRIPTION_LEN;

/// The longest operator comment, in characters.
pub const MAX_COMMENT_LEN: usize = 2048;

/// The longest job name, in characters.
pub const MAX_JOB_NAME_LEN: usize = 128;

/// The state of a job. It serializes (field names in snake case) so a runtime can persist it
/// inside a projection snapshot.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Its id.
    pub job_id: JobId,
    /// A name for people (EMQX Fleets shows jobs by name); ids stay the identity.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Things and groups.
    pub targets: Targets,
    /// Snapshot or continuous.
    pub selection: TargetSelection,
    /// What devices get.
    pub document: Value,
    /// Options.
    pub config: JobConfig,
    /// Current status.
    pub status: JobStatus,
    /// When it was created.
    pub created_at: Timestamp,
    /// When rollout began.
    pub started_at: Option<Timestamp>,
    /// When it completed or was canceled.
    pub ended_at: Option<Timestamp>,
    /// No more executions are queued (end time with `STOP_ROLLOUT`, or the job ended).
    pub rollout_stopped: bool,
    /// Canceled with force.
    pub forced: bool,
    /// Why it was canceled.
    pub cancel_reason: Option<JobCancelReason>,
    /// Tombstoned.
    pub deleted: bool,
    /// Number of events applied.
    pub version: u64,
}

impl Job {
    /// Whether executions may still be queued.
    pub fn is_rolling_out(&self) -> bool {
        self.status == JobStatus::InProgress && !self.rollout_stopped && !self.deleted
    }

    /// The next time [`JobIntent::Review`] has something to do by the clock alone (start or
    /// end time), if any.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        match self.status {
            JobStatus::Scheduled => self.config.schedule.start_time,
            JobStatus::InProgress if !self.rollout_stopped => self.config.schedule.end_time,
            _ => None,
        }
    }
}

/// What can be asked of a job.
// A create carries the whole job; intents live for one decision, never in collections, so
// boxing it would only add an allocation per create.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum JobIntent {
    /// Create a job; it starts at once unless its start time is ahead.
    Create {
        /// New id.
        job_id: JobId,
        /// 1 to [`MAX_JOB_NAME_LEN`] characters without control characters; not unique.
        name: Option<String>,
        /// Free text (at most [`MAX_DESCRIPTION_LEN`] characters).
        description: Option<String>,
        /// At least one thing or group; at most [`MAX_JOB_TARGETS`] names in all.
        targets: Targets,
        /// Snapshot or continuous.
        selection: TargetSelection,
        /// What devices get: a JSON object of at most [`MAX_JOB_DOCUMENT_BYTES`].
        document: Value,
        /// Options (validated here).
        config: JobConfig,
    },
    /// Re-evaluate the clock- and count-driven rules: start time, end time, abort rules,
    /// completion. `counters` come from the executions projection; `all_queued` says every
    /// target of a snapshot job has an execution.
    Review {
        /// The job's per-status execution counts.
        counters: JobCounters,
        /// Whether every snapshot target has been queued.
        all_queued: bool,
    },
    /// An operator cancels the job.
    Cancel {
        /// Also cancel in-progress executions.
        force: bool,
        /// Remark.
        comment: Option<String>,
    },
    /// Tombstone the job (not in progress unless `force`).
    Delete {
        /// Delete even while in progress.
        force: bool,
    },
}

impl Aggregate for Job {
    type Intent = JobIntent;
    const NAME: &'static str = "job";

    fn decide(
        state: Option<&Self>,
        intent: JobIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        if let JobIntent::Create {
            job_id,
            name,
            description,
            targets,
            selection,
            document,
            config,
        } = intent
        {
            if state.is_some() {
                return Err(Rejection::invalid(
                    "jobId",
                    format!("job {job_id} already exists"),
                ));
            }
            if targets.things.is_empty() && targets.groups.is_empty() {
                return Err(Rejection::invalid(
                    "targets",
                    "name at least one thing or group",
                ));
            }
            let target_count = targets.things.len() + targets.groups.len();
            if target_count > MAX_JOB_TARGETS {
                return Err(Rejection::invalid(
                    "targets",
                    format!(
                        "names {target_count} things and groups, at most {MAX_JOB_TARGETS} \
                         are allowed (put more things in a group)"
                    ),
                ));
            }
            if description
                .as_ref()
                .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
            {
                return Err(Rejection::invalid(
                    "description",
                    format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
                ));
            }
            if let Some(n) = &name {
                let len = n.chars().count();
                if len == 0 || len > MAX_JOB_NAME_LEN {
                    return Err(Rejection::invalid(
                        "name",
                        format!("must be 1 to {MAX_JOB_NAME_LEN} characters"),
                    ));
                }
                if n.chars().any(char::is_control) {
                    return Err(Rejection::invalid(
                        "name",
                        "must not contain control characters",
                    ));
                }
            }
            if !document.is_object() {
                return Err(Rejection::invalid("document", "must be a JSON object"));
            }
            // Every notification and start-next reply carries the document: bounded so each
            // fits the transport's payload limit.
            let document_len = limits::json_len(&document);
            if document_len > MAX_JOB_DOCUMENT_BYTES {
                return Err(Rejection::invalid(
                    "document",
                    format!(
                        "is {document_len} bytes of JSON, at most {MAX_JOB_DOCUMENT_BYTES} are \
                         allowed"
                    ),
                ));
            }
            config.validate(now)?;
            let start_now = config.schedule.start_time.is_none_or(|t| t <= now);
            let mut events = vec![Event::JobCreated {
                job_id,
                name,
                description,
                targets,
                selection,
                document,
                config,
                created_at: now,
            }];
            if start_now {
                events.push(Event::JobStarted { at: now });
            }
            return Ok(events);
        }
        let Some(job) = state.filter(|j| !j.deleted) else {
            return Err(not_found("job", "unknown"));
        };
        match intent {
            JobIntent::Create { .. } => Err(Rejection::InternalError {
                detail: "create intent reached the existing-job path".into(),
            }),
            JobIntent::Review {
                counters,
                all_queued,
            } => Ok(review(job, &counters, all_queued, now)),
            JobIntent::Cancel { force, comment } => {
                if comment
                    .as_ref()
                    .is_some_and(|c| c.chars().count() > MAX_COMMENT_LEN)
                {
                    return Err(Rejection::invalid(
                        "comment",
                        format!("must be at most {MAX_COMMENT_LEN} characters"),
                    ));
                }
                // Canceling again with force upgrades a plain cancel, as AWS allows.
                let cancelable = match job.status {
                    JobStatus::Scheduled | JobStatus::InProgress => true,
                    JobStatus::Canceled => force && !job.forced,
                    JobStatus::Completed => false,
                };
                if !cancelable {
                    return Err(Rejection::InvalidStateTransition {
                        from: job.status.as_str(),
                        to: JobStatus::Canceled.as_str(),
                        execution_state: None,
                    });
                }
                Ok(vec![Event::JobCanceled {
                    at: now,
                    force,
                    reason: JobCancelReason::Operator { comment },
                }])
            }
            JobIntent::Delete { force } => {
                if job.status == JobStatus::InProgress && !force {
                    return Err(Rejection::InvalidStateTransition {
                        from: job.status.as_str(),
                        to: "DELETED",
                        execution_state: None,
                    });
                }
                Ok(vec![Event::JobDeleted { at: now }])
            }
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        let out_of_order = |s: &Option<Self>| EvolveError::OutOfOrder {
            event: event.type_name(),
            state: s.as_ref().map_or("none", |s| s.status.as_str()),
        };
        if let Event::JobCreated {
            job_id,
            name,
            description,
            targets,
            selection,
            document,
            config,
            created_at,
        } = event
        {
            if state.is_some() {
                return Err(out_of_order(&state));
            }
            return Ok(Self {
                job_id: job_id.clone(),
                name: name.clone(),
                description: description.clone(),
                targets: targets.clone(),
                selection: *selection,
                document: document.clone(),
                config: config.clone(),
                status: JobStatus::Scheduled,
                created_at: *created_at,
                started_at: None,
                ended_at: None,
                rollout_stopped: false,
                forced: false,
                cancel_reason: None,
                deleted: false,
                version: 1,
            });
        }
        let Some(mut job) = state.filter(|j| !j.deleted) else {
            return Err(match event {
                Event::JobStarted { .. }
                | Event::JobRolloutStopped { .. }
                | Event::JobCompleted { .. }
                | Event::JobCanceled { .. }
                | Event::JobDeleted { .. } => out_of_order(&None),
                other => foreign(Self::NAME, other),
            });
        };
        match event {
            Event::JobStarted { at } if job.status == JobStatus::Scheduled => {
                job.status = JobStatus::InProgress;
                job.started_at = Some(*at);
            }
            Event::JobRolloutStopped { .. } if job.status == JobStatus::InProgress => {
                job.rollout_stopped = true;
            }
            Event::JobCompleted { at } if job.status == JobStatus::InProgress => {
                job.status = JobStatus::Completed;
                job.ended_at = Some(*at);
                job.rollout_stopped = true;
            }
            Event::JobCanceled { at, force, reason }
                if !matches!(job.status, JobStatus::Completed) =>
            {
                job.status = JobStatus::Canceled;
                job.ended_at.get_or_insert(*at);
                job.forced |= *force;
                job.rollout_stopped = true;
                job.cancel_reason = Some(reason.clone());
            }
            Event::JobDeleted { .. } => job.deleted = true,
            Event::JobStarted { .. }
            | Event::JobRolloutStopped { .. }
            | Event::JobCompleted { .. }
            | Event::JobCanceled { .. } => return Err(out_of_order(&Some(job))),
            other => return Err(foreign(Self::NAME, other)),
        }
        job.version += 1;
        Ok(job)
    }
}

/// The clock- and count-driven job rules, in priority order: start, end time, abort, complete.
fn review(job: &Job, counters: &JobCounters, all_queued: bool, now: Timestamp) -> Vec<Event> {
    let schedule = &job.config.schedule;
    match job.status {
        JobStatus::Scheduled => {
            if schedule.start_time.is_some_and(|t| t <= now) {
                return vec![Event::JobStarted { at: now }];
            }
            vec![]
        }
        JobStatus::InProgress => {
            if schedule.end_time.is_some_and(|e| e <= now) {
                match schedule.end_behavior {
                    EndBehavior::StopRollout if !job.rollout_stopped => {
                        return vec![Event::JobRolloutStopped { at: now }];
                    }
                    EndBehavior::StopRollout => {}
                    EndBehavior::Cancel | EndBehavior::ForceCancel => {
                        return vec![Event::JobCanceled {
                            at: now,
                            force: schedule.end_behavior == EndBehavior::ForceCancel,
                            reason: JobCancelReason::EndTime,
                        }];
                    }
                }
            }
            if let Some(reason) = abort::evaluate(&job.config.abort, counters) {
                return vec![Event::JobCanceled {
                    at: now,
                    force: false,
                    reason,
                }];
            }
            let rollout_over = all_queued || job.rollout_stopped;
            if job.selection == TargetSelection::Snapshot && rollout_over && counters.pending() == 0
            {
                return vec![Event::JobCompleted { at: now }];
            }
            vec![]
        }
        JobStatus::Completed | JobStatus::Canceled => vec![],
    }
}
