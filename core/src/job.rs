//! The job aggregate: one operation for many things.
//!
//! The job stream stays small whatever the fleet size: it records creation, start, the end of
//! rollout, completion, cancellation and deletion. Per-status counts and which executions exist
//! live in projections of the global feed ([`crate::projection`]); the job decides job-level
//! transitions from those figures, passed in through [`JobIntent::Review`].

use serde_json::Value;

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::config::{AbortCriterion, RetryCriterion, Rollout, StageAction};
use crate::config::{EndBehavior, JobConfig, TargetSelection, Targets};
use crate::event::{Event, EvolveError, JobCancelReason, PauseReason};
use crate::ids::JobId;
use crate::limits::{self, MAX_JOB_DOCUMENT_BYTES, MAX_JOB_TARGETS};
use crate::policy::abort;
use crate::policy::stages::{self, StageProgress, Verdict};
use crate::projection::JobCounters;
use crate::rejection::Rejection;
use crate::status::JobStatus;
use crate::time::{Duration, Timestamp};

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
    /// The current stage of a staged job (0-based; the number of stages once all passed).
    #[serde(default)]
    pub stage: u32,
    /// Stages an operator pushed past a failed gate by resuming.
    #[serde(default)]
    pub overridden_stages: Vec<u32>,
    /// The current stage's error threshold was overridden by a resume.
    #[serde(default)]
    pub threshold_overridden: bool,
    /// Set while the rollout is paused.
    #[serde(default)]
    pub paused: Option<JobPause>,
}

/// A pause in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobPause {
    /// Since when.
    pub at: Timestamp,
    /// Who or what paused it.
    pub reason: PauseReason,
}

/// Where one stage of a staged job stands, derived from the job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StageState {
    /// An earlier stage is still running.
    Waiting,
    /// The current stage; its gate is not decided yet.
    Running,
    /// The current stage failed its gate; the job is paused until an operator resumes it.
    GateFailed,
    /// Passed its gate.
    Passed,
    /// Failed its gate, and an operator resumed the job past it.
    Overridden,
}

impl Job {
    /// Whether executions may still be queued.
    pub fn is_rolling_out(&self) -> bool {
        self.status == JobStatus::InProgress && !self.rollout_stopped && !self.deleted
    }

    /// Whether executions and retries may be queued now, windows aside: rolling out and not
    /// paused.
    pub fn is_queueing(&self) -> bool {
        self.is_rolling_out() && self.paused.is_none()
    }

    /// Where stage `i` stands.
    pub fn stage_state(&self, i: u32) -> StageState {
        if i < self.stage {
            if self.overridden_stages.contains(&i) {
                StageState::Overridden
            } else {
                StageState::Passed
            }
        } else if i > self.stage {
            StageState::Waiting
        } else if matches!(
            &self.paused,
            Some(JobPause { reason: PauseReason::StageGate { stage, .. }, .. }) if *stage == i
        ) {
            StageState::GateFailed
        } else {
            StageState::Running
        }
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
        /// Whether every snapshot target has been queued (and no retry is owed).
        all_queued: bool,
        /// The current stage's figures, for a staged job whose stages are not all through.
        stage: Option<StageProgress>,
    },
    /// An operator pauses the rollout.
    Pause {
        /// Remark.
        comment: Option<String>,
    },
    /// An operator resumes a paused job; a stage whose gate failed is passed over.
    Resume {
        /// Remark.
        comment: Option<String>,
    },
    /// An operator changes a scheduled or running job; `None` keeps a value as it is.
    Update {
        /// New description (`Some(None)` clears it).
        description: Option<Option<String>>,
        /// New in-progress timeout (`Some(None)` removes it); executions queued from now on
        /// get it.
        in_progress_timeout: Option<Option<Duration>>,
        /// New rollout rate.
        rollout: Option<Rollout>,
        /// New abort rules.
        abort: Option<Vec<AbortCriterion>>,
        /// New retry rules; failures from now on are judged by them.
        retry: Option<Vec<RetryCriterion>>,
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
            if selection == TargetSelection::Continuous && !config.stages.is_empty() {
                return Err(Rejection::invalid(
                    "stages",
                    "a CONTINUOUS job cannot have stages: its targets are never complete, so \
                     no stage could pass its gate",
                ));
            }
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
                stage,
            } => Ok(review(job, &counters, all_queued, stage.as_ref(), now)),
            JobIntent::Pause { comment } => {
                check_comment(comment.as_deref())?;
                if job.status != JobStatus::InProgress || job.paused.is_some() {
                    return Err(Rejection::InvalidStateTransition {
                        from: if job.paused.is_some() {
                            "PAUSED"
                        } else {
                            job.status.as_str()
                        },
                        to: "PAUSED",
                        execution_state: None,
                    });
                }
                Ok(vec![Event::JobPaused {
                    at: now,
                    reason: PauseReason::Operator { comment },
                }])
            }
            JobIntent::Resume { comment } => {
                check_comment(comment.as_deref())?;
                let Some(pause) = job.paused.as_ref().filter(|_| !job.status.is_terminal()) else {
                    return Err(Rejection::InvalidStateTransition {
                        from: job.status.as_str(),
                        to: "RESUMED",
                        execution_state: None,
                    });
                };
                let mut events = vec![Event::JobResumed { at: now, comment }];
                // Resuming a job its gate paused is the operator overriding the gate.
                if let PauseReason::StageGate { stage, .. } = pause.reason {
                    if stage == job.stage {
                        events.push(Event::JobStageAdvanced {
                            at: now,
                            stage: stage + 1,
                            overridden: true,
                        });
                    }
                }
                Ok(events)
            }
            JobIntent::Update {
                description,
                in_progress_timeout,
                rollout,
                abort,
                retry,
            } => {
                if job.status.is_terminal() {
                    return Err(Rejection::InvalidStateTransition {
                        from: job.status.as_str(),
                        to: "UPDATED",
                        execution_state: None,
                    });
                }
                let description = description.unwrap_or_else(|| job.description.clone());
                if description
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
                {
                    return Err(Rejection::invalid(
                        "description",
                        format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
                    ));
                }
                let mut config = job.config.clone();
                if let Some(t) = in_progress_timeout {
                    config.in_progress_timeout = t;
                }
                if let Some(r) = rollout {
                    config.rollout = r;
                }
                if let Some(a) = abort {
                    config.abort = a;
                }
                if let Some(r) = retry {
                    config.retry = r;
                }
                // Checked as at creation, except the schedule, which does not change (its end
                // time may have passed since).
                let mut check = config.clone();
                check.schedule = Default::default();
                check.validate(now)?;
                Ok(vec![Event::JobUpdated {
                    at: now,
                    description,
                    config,
                }])
            }
            JobIntent::Cancel { force, comment } => {
                check_comment(comment.as_deref())?;
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
                stage: 0,
                overridden_stages: Vec::new(),
                threshold_overridden: false,
                paused: None,
            });
        }
        let Some(mut job) = state.filter(|j| !j.deleted) else {
            return Err(match event {
                Event::JobStarted { .. }
                | Event::JobRolloutStopped { .. }
                | Event::JobCompleted { .. }
                | Event::JobCanceled { .. }
                | Event::JobPaused { .. }
                | Event::JobResumed { .. }
                | Event::JobStageAdvanced { .. }
                | Event::JobUpdated { .. }
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
            Event::JobPaused { at, reason }
                if job.status == JobStatus::InProgress && job.paused.is_none() =>
            {
                job.paused = Some(JobPause {
                    at: *at,
                    reason: reason.clone(),
                });
            }
            Event::JobResumed { .. } if job.paused.is_some() => {
                if let Some(JobPause {
                    reason: PauseReason::StageErrorThreshold { stage, .. },
                    ..
                }) = job.paused.take()
                {
                    job.threshold_overridden |= stage == job.stage;
                }
            }
            Event::JobStageAdvanced {
                stage, overridden, ..
            } if job.status == JobStatus::InProgress && *stage > job.stage => {
                if *overridden {
                    job.overridden_stages.push(job.stage);
                }
                job.stage = *stage;
                job.threshold_overridden = false;
            }
            Event::JobUpdated {
                description,
                config,
                ..
            } if !job.status.is_terminal() => {
                job.description.clone_from(description);
                job.config = config.clone();
            }
            Event::JobStarted { .. }
            | Event::JobRolloutStopped { .. }
            | Event::JobCompleted { .. }
            | Event::JobPaused { .. }
            | Event::JobResumed { .. }
            | Event::JobStageAdvanced { .. }
            | Event::JobUpdated { .. }
            | Event::JobCanceled { .. } => return Err(out_of_order(&Some(job))),
            other => return Err(foreign(Self::NAME, other)),
        }
        job.version += 1;
        Ok(job)
    }
}

fn check_comment(comment: Option<&str>) -> Result<(), Rejection> {
    if comment.is_some_and(|c| c.chars().count() > MAX_COMMENT_LEN) {
        return Err(Rejection::invalid(
            "comment",
            format!("must be at most {MAX_COMMENT_LEN} characters"),
        ));
    }
    Ok(())
}

/// The current stage's rule, if it has something to say: its error threshold, then its gate.
fn review_stage(job: &Job, progress: &StageProgress, now: Timestamp) -> Option<Event> {
    let stage = job.config.stages.get(usize::try_from(job.stage).ok()?)?;
    let index = job.stage;
    match stages::evaluate(stage, progress, !job.threshold_overridden) {
        Verdict::Undecided => None,
        Verdict::Passed => Some(Event::JobStageAdvanced {
            at: now,
            stage: index + 1,
            overridden: false,
        }),
        Verdict::GateFailed {
            succeeded,
            required,
        } => Some(Event::JobPaused {
            at: now,
            reason: PauseReason::StageGate {
                stage: index,
                succeeded,
                required,
                size: progress.size,
            },
        }),
        Verdict::Threshold {
            failed,
            executed,
            action: StageAction::Pause,
        } => Some(Event::JobPaused {
            at: now,
            reason: PauseReason::StageErrorThreshold {
                stage: index,
                failed,
                executed,
            },
        }),
        Verdict::Threshold {
            failed,
            executed,
            action: StageAction::Abort,
        } => Some(Event::JobCanceled {
            at: now,
            force: false,
            reason: JobCancelReason::StageAborted {
                stage: index,
                failed,
                executed,
            },
        }),
    }
}

/// The clock- and count-driven job rules, in priority order: start, end time, abort, and
/// unless paused, the current stage's threshold and gate, then completion.
fn review(
    job: &Job,
    counters: &JobCounters,
    all_queued: bool,
    stage: Option<&StageProgress>,
    now: Timestamp,
) -> Vec<Event> {
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
            // A paused job waits for its operator, even when every execution is done.
            if job.paused.is_some() {
                return vec![];
            }
            // Once the rollout stopped (end time), stages no longer gate anything.
            if !job.rollout_stopped {
                if let Some(e) = stage.and_then(|p| review_stage(job, p, now)) {
                    return vec![e];
                }
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
