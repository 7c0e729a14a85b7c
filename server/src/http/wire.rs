//! The JSON bodies of the HTTP API, in the camelCase of AWS IoT Jobs and EMQX Fleets, and
//! their conversions from and to the service's types.
//!
//! Request bodies refuse unknown fields and parse ids into core's validated newtypes during
//! deserialization, so a bad id is a 400 naming its place in the body (`targets.thingNames[2]`)
//! before any handler runs. Times in responses are epoch seconds, as on the device protocol.

use fleetops_core::command::CommandExecution;
use fleetops_core::config::{
    AbortCriterion, EndBehavior, FailureType, IncreaseCriterion, JobConfig, RetryCriterion,
    Rollout, Schedule, Stage, StageAction, StageErrorThreshold, StageTargets, TargetSelection,
    Targets, MAX_RATE_PER_MINUTE,
};
use fleetops_core::cron::{CronExpr, MaintenanceWindow, UtcOffset};
use fleetops_core::event::{Event, JobCancelReason, PauseReason};
use fleetops_core::group::Group;
use fleetops_core::ids::StreamKind;
use fleetops_core::job::{Job, StageState};
use fleetops_core::job_execution::JobExecution;
use fleetops_core::policy::stages as stage_rules;
use fleetops_core::projection::JobCounters;
use fleetops_core::store::StoredEvent;
use fleetops_core::{
    CommandStatus, Duration, ExecutionId, GroupName, JobExecutionStatus, JobId, JobStatus,
    StreamId, ThingName, Timestamp,
};
use fleetops_service::{
    CommandRow, ExecutionRow, GroupSummary, JobDescription, JobSpec, JobSummary, JobUpdate,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::ApiError;

/// A point in time as the API accepts it: epoch seconds, or an RFC 3339 string such as
/// `2030-01-01T00:00:00Z`. Responses write epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireTime(pub Timestamp);

impl<'de> Deserialize<'de> for WireTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        let err = |m: String| serde::de::Error::custom(m);
        match Raw::deserialize(d).map_err(|_| {
            err("expected epoch seconds (a non-negative integer) or an RFC 3339 string".into())
        })? {
            Raw::Secs(s) => s
                .checked_mul(1000)
                .map(|ms| WireTime(Timestamp::from_millis(ms)))
                .ok_or_else(|| err(format!("{s} seconds is out of range"))),
            Raw::Text(t) => {
                let at =
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .map_err(|e| err(format!("`{t}` is not an RFC 3339 time: {e}")))?;
                let ms = at.unix_timestamp_nanos() / 1_000_000;
                u64::try_from(ms)
                    .map(|ms| WireTime(Timestamp::from_millis(ms)))
                    .map_err(|_| err(format!("`{t}` is before 1970")))
            }
        }
    }
}

impl Serialize for WireTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.as_secs())
    }
}

/// Reads an optional request field that, when given, must hold a value: `null` is refused as
/// the wrong type instead of being read as "absent", because the OpenAPI document declares no
/// field nullable and generated clients rely on that. Used with `#[serde(default)]`, so a
/// field left out is still `None`.
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

pub(super) fn secs(t: Timestamp) -> u64 {
    t.as_secs()
}

// ---- jobs: request ----------------------------------------------------------------------------

/// `POST /api/v1/jobs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobRequest {
    /// The new job's id; a UUIDv7 is generated when absent.
    #[serde(default, deserialize_with = "present")]
    pub job_id: Option<JobId>,
    /// A name for people.
    #[serde(default, deserialize_with = "present")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    /// Things and groups.
    pub targets: TargetsWire,
    /// `SNAPSHOT` (default) or `CONTINUOUS`.
    #[serde(default)]
    pub target_selection: TargetSelection,
    /// What devices get; a JSON object.
    pub document: Value,
    /// In-progress timeout.
    #[serde(default, deserialize_with = "present")]
    pub timeout_config: Option<TimeoutConfig>,
    /// Rollout rate.
    #[serde(default, deserialize_with = "present")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    /// Abort rules.
    #[serde(default, deserialize_with = "present")]
    pub abort_config: Option<AbortConfig>,
    /// Retry rules.
    #[serde(default, deserialize_with = "present")]
    pub job_executions_retry_config: Option<RetryConfig>,
    /// Start and end times.
    #[serde(default, deserialize_with = "present")]
    pub scheduling_config: Option<SchedulingConfig>,
    /// Ordered rollout stages.
    #[serde(default, deserialize_with = "present")]
    pub staged_rollout_config: Option<StagedRolloutConfig>,
}

/// `stagedRolloutConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StagedRolloutConfig {
    /// The stages, in order, 1 to 10.
    pub stages: Vec<StageWire>,
}

/// One stage: exactly one of `thingNames`, `thingGroupNames` and `percentage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageWire {
    /// Things of the stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub thing_names: Option<Vec<ThingName>>,
    /// Groups whose members (when the job starts) form the stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub thing_group_names: Option<Vec<GroupName>>,
    /// A share of all targets, 1 to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub percentage: Option<u8>,
    /// The gate: the share of the stage's things that must succeed, 0 to 100.
    pub success_threshold_percentage: f64,
    /// Pause or abort early on failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub error_threshold: Option<StageErrorThresholdWire>,
}

/// `errorThreshold` of a stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageErrorThresholdWire {
    /// `FAILED`, `REJECTED`, `TIMED_OUT` or `ALL`.
    pub failure_type: FailureType,
    /// Failure share in percent of the stage's terminal executions.
    pub threshold_percentage: f64,
    /// Checked once this many of the stage's executions are terminal.
    pub min_number_of_executed_things: u32,
    /// `PAUSE` or `ABORT`.
    pub action: StageAction,
}

/// One maintenance window of `schedulingConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindowWire {
    /// A five-field cron expression: when the window opens.
    pub start_time: String,
    /// How long it stays open, 1 to 1430 minutes.
    pub duration_in_minutes: u32,
    /// `UTC` (default) or a fixed offset such as `+02:00`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub time_zone: Option<String>,
}

/// `PUT /api/v1/jobs/{jobId}/things/{thingName}/cancel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelExecutionRequest {
    /// Required to cancel an `IN_PROGRESS` execution.
    #[serde(default)]
    pub force: bool,
    /// Cancel only if the execution is at this version (else 409 `VersionMismatch`).
    #[serde(default, deserialize_with = "present")]
    pub expected_version: Option<u64>,
    /// Keys merged into the execution's status details.
    #[serde(default, deserialize_with = "present")]
    pub status_details: Option<fleetops_core::status::StatusDetails>,
}

/// `POST /api/v1/jobs/{jobId}/pause` and `…/resume`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PauseJobRequest {
    /// A remark kept with the pause or resume.
    #[serde(default, deserialize_with = "present")]
    pub comment: Option<String>,
}

/// `PATCH /api/v1/jobs/{jobId}`: the options to change; an absent field is kept. An empty
/// `description` clears it, an empty `criteriaList` removes the abort or retry rules; the
/// timeout and rollout can be changed but not removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateJobRequest {
    /// New description; empty clears it.
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    /// New in-progress timeout, for executions queued from now on.
    #[serde(default, deserialize_with = "present")]
    pub timeout_config: Option<TimeoutConfig>,
    /// New rollout rate.
    #[serde(default, deserialize_with = "present")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    /// New abort rules.
    #[serde(default, deserialize_with = "present")]
    pub abort_config: Option<AbortConfig>,
    /// New retry rules, for failures from now on.
    #[serde(default, deserialize_with = "present")]
    pub job_executions_retry_config: Option<RetryConfig>,
}

impl UpdateJobRequest {
    /// The service's update; ranges are checked by core, as at creation.
    pub fn into_update(self) -> Result<JobUpdate, ApiError> {
        let rollout = match self.job_executions_rollout_config {
            None => None,
            Some(r) => Some(rollout_of(Some(r))?),
        };
        Ok(JobUpdate {
            description: self.description.map(|d| (!d.is_empty()).then_some(d)),
            in_progress_timeout: self
                .timeout_config
                .map(|t| Some(Duration::from_minutes(t.in_progress_timeout_in_minutes))),
            rollout,
            abort: self.abort_config.map(|a| abort_of(Some(a.criteria_list))),
            retry: self
                .job_executions_retry_config
                .map(|r| retry_of(Some(r.criteria_list))),
        })
    }
}

fn abort_of(list: Option<Vec<AbortCriterionWire>>) -> Vec<AbortCriterion> {
    list.unwrap_or_default()
        .into_iter()
        .map(|c| AbortCriterion {
            failure_type: c.failure_type,
            min_executed: c.min_number_of_executed_things,
            threshold_percent: c.threshold_percentage,
        })
        .collect()
}

fn retry_of(list: Option<Vec<RetryCriterionWire>>) -> Vec<RetryCriterion> {
    list.unwrap_or_default()
        .into_iter()
        .map(|c| RetryCriterion {
            failure_type: c.failure_type,
            number_of_retries: c.number_of_retries,
        })
        .collect()
}

fn stages_of(config: Option<StagedRolloutConfig>) -> Result<Vec<Stage>, ApiError> {
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    if config.stages.is_empty() {
        return Err(ApiError::invalid(
            "stagedRolloutConfig.stages",
            "give at least one stage",
        ));
    }
    config
        .stages
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let targets = match (s.thing_names, s.thing_group_names, s.percentage) {
                (Some(things), None, None) => StageTargets::Things { things },
                (None, Some(groups), None) => StageTargets::Groups { groups },
                (None, None, Some(percent)) => StageTargets::Percent { percent },
                _ => {
                    return Err(ApiError::invalid(
                        &format!("stagedRolloutConfig.stages[{i}]"),
                        "give exactly one of thingNames, thingGroupNames and percentage",
                    ))
                }
            };
            Ok(Stage {
                targets,
                success_percent: s.success_threshold_percentage,
                error_threshold: s.error_threshold.map(|t| StageErrorThreshold {
                    failure_type: t.failure_type,
                    min_executed: t.min_number_of_executed_things,
                    threshold_percent: t.threshold_percentage,
                    action: t.action,
                }),
            })
        })
        .collect()
}

fn windows_of(list: Vec<MaintenanceWindowWire>) -> Result<Vec<MaintenanceWindow>, ApiError> {
    list.into_iter()
        .enumerate()
        .map(|(i, w)| {
            let start = CronExpr::parse(&w.start_time).map_err(|e| {
                ApiError::invalid(
                    &format!("schedulingConfig.maintenanceWindows[{i}].startTime"),
                    e,
                )
            })?;
            let time_zone = match w.time_zone.as_deref() {
                None => UtcOffset::UTC,
                Some(z) => UtcOffset::parse(z).map_err(|e| {
                    ApiError::invalid(
                        &format!("schedulingConfig.maintenanceWindows[{i}].timeZone"),
                        e,
                    )
                })?,
            };
            Ok(MaintenanceWindow {
                start,
                duration_minutes: w.duration_in_minutes,
                time_zone,
            })
        })
        .collect()
}

fn rollout_of(config: Option<RolloutConfig>) -> Result<Rollout, ApiError> {
    Ok(match config {
        None => Rollout::Unlimited,
        Some(RolloutConfig {
            maximum_per_minute: None,
            exponential_rate: None,
        }) => {
            return Err(ApiError::invalid(
                "jobExecutionsRolloutConfig",
                "give maximumPerMinute, exponentialRate or both",
            ))
        }
        Some(RolloutConfig {
            maximum_per_minute: Some(per_minute),
            exponential_rate: None,
        }) => Rollout::Fixed { per_minute },
        Some(RolloutConfig {
            maximum_per_minute,
            exponential_rate: Some(e),
        }) => {
            let criterion = match (
                e.rate_increase_criteria.number_of_notified_things,
                e.rate_increase_criteria.number_of_succeeded_things,
            ) {
                (Some(n), None) => IncreaseCriterion::NotifiedThings(n),
                (None, Some(n)) => IncreaseCriterion::SucceededThings(n),
                _ => {
                    return Err(ApiError::invalid(
                        "rateIncreaseCriteria",
                        "give exactly one of numberOfNotifiedThings and \
                         numberOfSucceededThings",
                    ))
                }
            };
            Rollout::Exponential {
                base_per_minute: e.base_rate_per_minute,
                factor: e.increment_factor,
                criterion,
                max_per_minute: maximum_per_minute.unwrap_or(MAX_RATE_PER_MINUTE),
            }
        }
    })
}

/// `targets`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetsWire {
    /// Things named directly.
    #[serde(default)]
    pub thing_names: Vec<ThingName>,
    /// Groups whose members are targets.
    #[serde(default)]
    pub thing_group_names: Vec<GroupName>,
}

/// `timeoutConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutConfig {
    /// How long an execution may stay `IN_PROGRESS`, 1 to 10,080 minutes.
    pub in_progress_timeout_in_minutes: u64,
}

/// `jobExecutionsRolloutConfig`: a fixed rate (`maximumPerMinute` alone) or an exponential
/// one capped by `maximumPerMinute`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutConfig {
    /// The fixed rate, or the ceiling of an exponential rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub maximum_per_minute: Option<u32>,
    /// An exponential rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub exponential_rate: Option<ExponentialRate>,
}

/// `exponentialRate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExponentialRate {
    /// The initial rate.
    pub base_rate_per_minute: u32,
    /// The multiplier, 1.1 to 5.0.
    pub increment_factor: f64,
    /// What must grow to raise the rate; exactly one of the two fields.
    pub rate_increase_criteria: RateIncreaseCriteria,
}

/// `rateIncreaseCriteria`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateIncreaseCriteria {
    /// Raise the rate every this many more things notified.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub number_of_notified_things: Option<u32>,
    /// Raise the rate every this many more things succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub number_of_succeeded_things: Option<u32>,
}

/// `abortConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortConfig {
    /// The rules; the first that holds cancels the job.
    pub criteria_list: Vec<AbortCriterionWire>,
}

/// What an abort rule does; only `CANCEL` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AbortAction {
    /// Cancel the job.
    Cancel,
}

/// One abort rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortCriterionWire {
    /// `FAILED`, `REJECTED`, `TIMED_OUT` or `ALL`.
    pub failure_type: FailureType,
    /// `CANCEL`.
    pub action: AbortAction,
    /// Failure share in percent of terminal executions.
    pub threshold_percentage: f64,
    /// Checked once this many executions are terminal.
    pub min_number_of_executed_things: u32,
}

/// `jobExecutionsRetryConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// The rules.
    pub criteria_list: Vec<RetryCriterionWire>,
}

/// One retry rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryCriterionWire {
    /// `FAILED`, `TIMED_OUT` or `ALL`.
    pub failure_type: FailureType,
    /// Further attempts after the first, 1 to 9.
    pub number_of_retries: u32,
}

/// `schedulingConfig`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingConfig {
    /// The job stays `SCHEDULED` until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub start_time: Option<WireTime>,
    /// What `jobEndBehavior` says happens then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default, deserialize_with = "present")]
    pub end_time: Option<WireTime>,
    /// `STOP_ROLLOUT` (default), `CANCEL` or `FORCE_CANCEL`.
    #[serde(default)]
    pub job_end_behavior: EndBehavior,
    /// Queue executions only inside these windows (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindowWire>,
}

impl CreateJobRequest {
    /// The service's job request; `generated` is used when the body names no `jobId`.
    /// Ranges are checked by core when the job is created (`JobConfig::validate`); only the
    /// combinations the wire form allows but core cannot express are refused here.
    pub fn into_spec(self, generated: impl FnOnce() -> JobId) -> Result<JobSpec, ApiError> {
        let rollout = rollout_of(self.job_executions_rollout_config)?;
        let stages = stages_of(self.staged_rollout_config)?;
        let (schedule, maintenance_windows) = match self.scheduling_config {
            None => (Schedule::default(), Vec::new()),
            Some(s) => (
                Schedule {
                    start_time: s.start_time.map(|t| t.0),
                    end_time: s.end_time.map(|t| t.0),
                    end_behavior: s.job_end_behavior,
                },
                windows_of(s.maintenance_windows)?,
            ),
        };
        let config = JobConfig {
            in_progress_timeout: self
                .timeout_config
                .map(|t| Duration::from_minutes(t.in_progress_timeout_in_minutes)),
            rollout,
            abort: abort_of(self.abort_config.map(|a| a.criteria_list)),
            retry: retry_of(self.job_executions_retry_config.map(|r| r.criteria_list)),
            schedule,
            stages,
            maintenance_windows,
        };
        let mut spec = JobSpec::new(self.job_id.unwrap_or_else(generated), self.document)
            .things(self.targets.thing_names)
            .groups(self.targets.thing_group_names)
            .config(config);
        spec.selection = self.target_selection;
        spec.description = self.description;
        spec.name = self.name;
        Ok(spec)
    }
}

// ---- jobs: responses --------------------------------------------------------------------------

/// `{jobId}`, the answer to a create.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCreated {
    /// The job.
    pub job_id: JobId,
    /// Its status right after creation (`IN_PROGRESS` or `SCHEDULED`).
    pub status: JobStatus,
}

/// Per-status execution counts, AWS-style.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProcessDetails {
    /// `QUEUED`.
    pub number_of_queued_things: u64,
    /// `IN_PROGRESS`.
    pub number_of_in_progress_things: u64,
    /// `SUCCEEDED`.
    pub number_of_succeeded_things: u64,
    /// `FAILED`.
    pub number_of_failed_things: u64,
    /// `REJECTED`.
    pub number_of_rejected_things: u64,
    /// `TIMED_OUT`.
    pub number_of_timed_out_things: u64,
    /// `CANCELED`.
    pub number_of_canceled_things: u64,
    /// `REMOVED`.
    pub number_of_removed_things: u64,
}

impl From<&JobCounters> for JobProcessDetails {
    fn from(c: &JobCounters) -> Self {
        Self {
            number_of_queued_things: c.queued,
            number_of_in_progress_things: c.in_progress,
            number_of_succeeded_things: c.succeeded,
            number_of_failed_things: c.failed,
            number_of_rejected_things: c.rejected,
            number_of_timed_out_things: c.timed_out,
            number_of_canceled_things: c.canceled,
            number_of_removed_things: c.removed,
        }
    }
}

/// `GET /api/v1/jobs/{jobId}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job.
    pub job_id: JobId,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its status.
    pub status: JobStatus,
    /// Snapshot or continuous.
    pub target_selection: TargetSelection,
    /// Things and groups.
    pub targets: TargetsWire,
    /// What devices get.
    pub document: Value,
    /// When it was created.
    pub created_at: u64,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it completed or was canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
    /// Whether in-progress executions were canceled too.
    pub force_canceled: bool,
    /// Who or what canceled it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<JobCancelReason>,
    /// Whether the rollout stopped (end time passed, canceled).
    pub rollout_stopped: bool,
    /// Targets with no execution yet.
    pub remaining_targets: u64,
    /// The options, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_config: Option<TimeoutConfig>,
    /// The rollout, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    /// The abort rules, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_config: Option<AbortConfig>,
    /// The retry rules, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_executions_retry_config: Option<RetryConfig>,
    /// The schedule, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling_config: Option<SchedulingConfig>,
    /// Per-status counts.
    pub job_process_details: JobProcessDetails,
    /// Set while the rollout is paused: since when and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseView>,
    /// The stages, as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged_rollout_config: Option<StagedRolloutConfig>,
    /// Where each stage stands (once the job started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_progress: Option<StageProgressView>,
}

/// A pause in force.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PauseView {
    /// Since when.
    pub paused_at: u64,
    /// `{by: "operator", comment}`, `{by: "stageGate", stage, succeeded, required, size}` or
    /// `{by: "stageErrorThreshold", stage, failed, executed}`.
    pub reason: PauseReason,
}

/// A staged job's progress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageProgressView {
    /// The current stage (0-based; the number of stages once all are through).
    pub current_stage: u32,
    /// Each configured stage.
    pub stages: Vec<StageStatusView>,
}

/// One stage's figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageStatusView {
    /// Its index.
    pub stage: u32,
    /// `WAITING`, `RUNNING`, `GATE_FAILED`, `PASSED` or `OVERRIDDEN`.
    pub state: StageState,
    /// Its things.
    pub number_of_things: u64,
    /// Successes its gate needs.
    pub required_succeeded_things: u64,
    /// Per-status counts of its executions.
    pub job_process_details: JobProcessDetails,
}

fn stage_wire(s: &Stage) -> StageWire {
    let (thing_names, thing_group_names, percentage) = match &s.targets {
        StageTargets::Things { things } => (Some(things.clone()), None, None),
        StageTargets::Groups { groups } => (None, Some(groups.clone()), None),
        StageTargets::Percent { percent } => (None, None, Some(*percent)),
    };
    StageWire {
        thing_names,
        thing_group_names,
        percentage,
        success_threshold_percentage: s.success_percent,
        error_threshold: s.error_threshold.as_ref().map(|t| StageErrorThresholdWire {
            failure_type: t.failure_type,
            threshold_percentage: t.threshold_percent,
            min_number_of_executed_things: t.min_executed,
            action: t.action,
        }),
    }
}

fn targets_wire(t: &Targets) -> TargetsWire {
    TargetsWire {
        thing_names: t.things.clone(),
        thing_group_names: t.groups.clone(),
    }
}

impl From<&JobDescription> for JobView {
    fn from(d: &JobDescription) -> Self {
        let job: &Job = &d.job;
        let c = &job.config;
        let rollout = match &c.rollout {
            Rollout::Unlimited => None,
            Rollout::Fixed { per_minute } => Some(RolloutConfig {
                maximum_per_minute: Some(*per_minute),
                exponential_rate: None,
            }),
            Rollout::Exponential {
                base_per_minute,
                factor,
                criterion,
                max_per_minute,
            } => Some(RolloutConfig {
                maximum_per_minute: Some(*max_per_minute),
                exponential_rate: Some(ExponentialRate {
                    base_rate_per_minute: *base_per_minute,
                    increment_factor: *factor,
                    rate_increase_criteria: match criterion {
                        IncreaseCriterion::NotifiedThings(n) => RateIncreaseCriteria {
                            number_of_notified_things: Some(*n),
                            number_of_succeeded_things: None,
                        },
                        IncreaseCriterion::SucceededThings(n) => RateIncreaseCriteria {
                            number_of_notified_things: None,
                            number_of_succeeded_things: Some(*n),
                        },
                    },
                }),
            }),
        };
        let schedule = &c.schedule;
        Self {
            job_id: job.job_id.clone(),
            name: job.name.clone(),
            description: job.description.clone(),
            status: job.status,
            target_selection: job.selection,
            targets: targets_wire(&job.targets),
            document: job.document.clone(),
            created_at: secs(job.created_at),
            started_at: job.started_at.map(secs),
            completed_at: job.ended_at.map(secs),
            force_canceled: job.forced,
            cancel_reason: job.cancel_reason.clone(),
            rollout_stopped: job.rollout_stopped,
            remaining_targets: d.remaining_targets,
            timeout_config: c.in_progress_timeout.map(|t| TimeoutConfig {
                in_progress_timeout_in_minutes: t.as_secs() / 60,
            }),
            job_executions_rollout_config: rollout,
            abort_config: (!c.abort.is_empty()).then(|| AbortConfig {
                criteria_list: c
                    .abort
                    .iter()
                    .map(|a| AbortCriterionWire {
                        failure_type: a.failure_type,
                        action: AbortAction::Cancel,
                        threshold_percentage: a.threshold_percent,
                        min_number_of_executed_things: a.min_executed,
                    })
                    .collect(),
            }),
            job_executions_retry_config: (!c.retry.is_empty()).then(|| RetryConfig {
                criteria_list: c
                    .retry
                    .iter()
                    .map(|r| RetryCriterionWire {
                        failure_type: r.failure_type,
                        number_of_retries: r.number_of_retries,
                    })
                    .collect(),
            }),
            scheduling_config: (schedule.start_time.is_some()
                || schedule.end_time.is_some()
                || !c.maintenance_windows.is_empty())
            .then(|| SchedulingConfig {
                start_time: schedule.start_time.map(WireTime),
                end_time: schedule.end_time.map(WireTime),
                job_end_behavior: schedule.end_behavior,
                maintenance_windows: c
                    .maintenance_windows
                    .iter()
                    .map(|w| MaintenanceWindowWire {
                        start_time: w.start.to_string(),
                        duration_in_minutes: w.duration_minutes,
                        time_zone: Some(w.time_zone.to_string()),
                    })
                    .collect(),
            }),
            job_process_details: (&d.counters).into(),
            // A job that ended while paused is no longer paused: it has nothing left to resume.
            paused: job
                .paused
                .as_ref()
                .filter(|_| !job.status.is_terminal())
                .map(|p| PauseView {
                    paused_at: secs(p.at),
                    reason: p.reason.clone(),
                }),
            staged_rollout_config: (!c.stages.is_empty()).then(|| StagedRolloutConfig {
                stages: c.stages.iter().map(stage_wire).collect(),
            }),
            stage_progress: (!d.stages.is_empty()).then(|| StageProgressView {
                current_stage: job.stage,
                stages: d
                    .stages
                    .iter()
                    .zip(&c.stages)
                    .zip(0u32..)
                    .map(|((p, s), i)| StageStatusView {
                        stage: i,
                        state: job.stage_state(i),
                        number_of_things: p.size,
                        required_succeeded_things: stage_rules::required(s, p.size),
                        job_process_details: (&p.counters).into(),
                    })
                    .collect(),
            }),
        }
    }
}

/// A job in `GET /api/v1/jobs`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSummaryView {
    /// The job.
    pub job_id: JobId,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its status.
    pub status: JobStatus,
    /// Whether its rollout is paused.
    pub paused: bool,
    /// Snapshot or continuous.
    pub target_selection: TargetSelection,
    /// Things targeted: those with an execution and those still to queue once started; the
    /// named things and current group members (each counted once) before.
    pub number_of_targets: u64,
    /// When it was created.
    pub created_at: u64,
    /// Per-status counts.
    pub job_process_details: JobProcessDetails,
}

impl From<JobSummary> for JobSummaryView {
    fn from(s: JobSummary) -> Self {
        Self {
            job_id: s.job_id,
            name: s.name,
            description: s.description,
            status: s.status,
            paused: s.paused,
            target_selection: s.selection,
            number_of_targets: s.targets,
            created_at: secs(s.created_at),
            job_process_details: (&s.counters).into(),
        }
    }
}

/// A job execution in a listing.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionSummaryView {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub thing_name: ThingName,
    /// Its status.
    pub status: JobExecutionStatus,
    /// The current attempt.
    pub execution_number: u32,
    /// Its version.
    pub version_number: u64,
    /// When the current attempt was queued.
    pub queued_at: u64,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Last change.
    pub last_updated_at: u64,
}

impl From<ExecutionRow> for ExecutionSummaryView {
    fn from(r: ExecutionRow) -> Self {
        let e = r.execution;
        Self {
            job_id: r.job_id,
            thing_name: r.thing,
            status: e.status,
            execution_number: e.execution_number,
            version_number: e.version,
            queued_at: secs(e.queued_at),
            started_at: e.started_at.map(secs),
            last_updated_at: secs(e.last_updated_at),
        }
    }
}

/// One job execution in full.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionView {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub thing_name: ThingName,
    /// Its status.
    pub status: JobExecutionStatus,
    /// The device's last status details.
    pub status_details: std::collections::BTreeMap<String, String>,
    /// The current attempt.
    pub execution_number: u32,
    /// Its version.
    pub version_number: u64,
    /// When the current attempt was queued.
    pub queued_at: u64,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Last change.
    pub last_updated_at: u64,
}

impl From<JobExecution> for ExecutionView {
    fn from(e: JobExecution) -> Self {
        Self {
            job_id: e.job_id,
            thing_name: e.thing,
            status: e.status,
            status_details: e
                .status_details
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
            execution_number: e.execution_number,
            version_number: e.version_number,
            queued_at: secs(e.queued_at),
            started_at: e.started_at.map(secs),
            last_updated_at: secs(e.last_updated_at),
        }
    }
}

/// `POST /api/v1/jobs/{jobId}/cancel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelJobRequest {
    /// Cancel in-progress executions too.
    #[serde(default)]
    pub force: bool,
    /// A remark kept with the cancellation.
    #[serde(default, deserialize_with = "present")]
    pub comment: Option<String>,
}

// ---- commands ---------------------------------------------------------------------------------

/// The TTL of a command when the request gives none, in seconds.
pub const DEFAULT_COMMAND_TTL_SECS: u64 = 60;

fn default_ttl() -> u64 {
    DEFAULT_COMMAND_TTL_SECS
}

/// `POST /api/v1/commands`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendCommandRequest {
    /// The device.
    pub thing_name: ThingName,
    /// What to do; required unless `commandId` names a registered command.
    #[serde(default, deserialize_with = "present")]
    pub action: Option<String>,
    /// Arguments of an ad-hoc command (default `{}`).
    #[serde(default, deserialize_with = "present")]
    pub params: Option<Value>,
    /// The parameters of a registered command, checked against its declaration.
    #[serde(default, deserialize_with = "present")]
    pub parameters: Option<Map<String, Value>>,
    /// Seconds the device has to answer, 1 to 86,400 (default 60).
    #[serde(default = "default_ttl")]
    pub ttl: u64,
    /// A command template id, passed to the device.
    #[serde(default, deserialize_with = "present")]
    pub command_id: Option<String>,
}

/// `{executionId}`, the answer to a command sent without `wait`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandSent {
    /// The command execution.
    pub execution_id: ExecutionId,
}

/// One command execution.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    /// The execution.
    pub execution_id: ExecutionId,
    /// The device.
    pub thing_name: ThingName,
    /// The template id, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// What to do.
    pub action: String,
    /// Arguments.
    pub params: Value,
    /// Seconds the device had to answer.
    pub ttl: u64,
    /// Its status.
    pub status: CommandStatus,
    /// What the device answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it ended so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// When it was sent.
    pub sent_at: u64,
    /// When its TTL ends.
    pub deadline: u64,
    /// When it reached its terminal status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
}

impl From<CommandExecution> for CommandView {
    fn from(c: CommandExecution) -> Self {
        Self {
            execution_id: c.execution_id,
            thing_name: c.thing,
            command_id: c.command_id,
            action: c.action,
            params: c.params,
            ttl: c.ttl.as_secs(),
            status: c.status,
            result: c.result,
            status_reason: c.status_reason,
            sent_at: secs(c.sent_at),
            deadline: secs(c.deadline),
            completed_at: c.completed_at.map(secs),
        }
    }
}

/// A command execution in a listing.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandSummaryView {
    /// The execution.
    pub execution_id: ExecutionId,
    /// The device.
    pub thing_name: ThingName,
    /// What it asks of the device.
    pub action: String,
    /// Its status.
    pub status: CommandStatus,
    /// When it was sent.
    pub sent_at: u64,
    /// When its TTL ends.
    pub deadline: u64,
}

impl From<CommandRow> for CommandSummaryView {
    fn from(r: CommandRow) -> Self {
        Self {
            execution_id: r.execution_id,
            thing_name: r.thing,
            action: r.action,
            status: r.status,
            sent_at: secs(r.sent_at),
            deadline: secs(r.deadline),
        }
    }
}

/// `POST /api/v1/commands/{executionId}/cancel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelCommandRequest {
    /// Why.
    #[serde(default, deserialize_with = "present")]
    pub reason: Option<String>,
}

// ---- thing groups -----------------------------------------------------------------------------

/// `PUT /api/v1/thing-groups/{name}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// Free text.
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
    /// Initial members.
    #[serde(default)]
    pub thing_names: Vec<ThingName>,
}

/// `PUT` and `DELETE /api/v1/thing-groups/{name}/members`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MembersRequest {
    /// The things to add or remove.
    pub thing_names: Vec<ThingName>,
}

/// A thing group.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    /// Its name.
    pub thing_group_name: GroupName,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How many things it holds (list them with `GET …/members`).
    pub number_of_things: usize,
}

impl From<&Group> for GroupView {
    fn from(g: &Group) -> Self {
        Self {
            thing_group_name: g.name.clone(),
            description: g.description.clone(),
            number_of_things: g.members.len(),
        }
    }
}

impl From<GroupSummary> for GroupView {
    fn from(g: GroupSummary) -> Self {
        Self {
            thing_group_name: g.name,
            description: g.description,
            number_of_things: g.members,
        }
    }
}

// ---- history and live events ------------------------------------------------------------------

/// One stored event, in `GET …/history` pages: its envelope and the fact.
///
/// `type` and `details` come from the stored JSON form of core's `Event` (its `type` tag and
/// the remaining fields), which golden tests freeze, so this shape is as stable as the stored
/// format. `details` is that form as is: times inside it are epoch milliseconds and
/// durations milliseconds, unlike the epoch seconds of `recordedAt` and the rest of the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    /// Its position in the global feed (1-based); increases along every stream.
    pub position: u64,
    /// Its version within its stream (1-based, no gaps).
    pub stream_version: u64,
    /// The event's id (a UUIDv7).
    pub event_id: uuid::Uuid,
    /// When it was decided, in epoch seconds.
    pub recorded_at: u64,
    /// The event's kind: core's variant name, such as `ExecutionQueued`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The event's fields, as stored.
    pub details: Value,
}

impl From<&StoredEvent> for HistoryItem {
    fn from(e: &StoredEvent) -> Self {
        Self {
            position: e.position,
            stream_version: e.stream_version,
            event_id: e.event_id,
            recorded_at: secs(e.recorded_at),
            kind: e.event.type_name(),
            details: details(&e.event),
        }
    }
}

/// The stored JSON of `event` without its `type` tag.
fn details(event: &Event) -> Value {
    match serde_json::to_value(event) {
        Ok(Value::Object(mut fields)) => {
            fields.remove("type");
            Value::Object(fields)
        }
        // An internally tagged enum of plain data with string keys always serializes to an
        // object; should that ever change, the item still goes out, without details.
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// One message of `GET /api/v1/events`: a [`HistoryItem`] with the stream it belongs to and
/// the ids that stream's name carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedItem {
    /// The event.
    #[serde(flatten)]
    pub item: HistoryItem,
    /// The stream: `job/{jobId}`, `exec/{jobId}/{thingName}`, `cmd/{executionId}` or
    /// `group/{name}`.
    pub stream: StreamId,
    /// The job, for job and job execution streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The thing, for job execution and thing streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<ThingName>,
    /// The command execution, for command streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<ExecutionId>,
}

impl From<&StoredEvent> for FeedItem {
    fn from(e: &StoredEvent) -> Self {
        let (job_id, thing_name, execution_id) = match e.stream.kind() {
            StreamKind::Job(job) => (Some(job), None, None),
            StreamKind::JobExecution(job, thing) => (Some(job), Some(thing), None),
            StreamKind::Command(id) => (None, None, Some(id)),
            StreamKind::Thing(thing) => (None, Some(thing), None),
            StreamKind::Group(_)
            | StreamKind::ApiKey(_)
            | StreamKind::CommandTemplate(_)
            | StreamKind::Custom(_) => (None, None, None),
        };
        Self {
            item: HistoryItem::from(e),
            stream: e.stream.clone(),
            job_id,
            thing_name,
            execution_id,
        }
    }
}

// ---- paging -----------------------------------------------------------------------------------

/// One page of a listing: `items`, and `nextToken` to pass for the next page (absent at
/// the end).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageView<T> {
    /// The items.
    pub items: Vec<T>,
    /// The token of the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}
