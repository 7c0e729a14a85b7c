//! Job options as typed values: targets, timeouts, rollout, abort, retry and schedule.
//!
//! These are what `JobCreated` stores. They are validated once by [`JobConfig::validate`] when a
//! job is created; the policies in [`crate::policy`] assume valid values.

use serde::{Deserialize, Serialize};

use crate::cron::{MaintenanceWindow, MAX_WINDOW_MINUTES};
use crate::ids::{GroupName, ThingName};
use crate::rejection::Rejection;
use crate::status::JobExecutionStatus;
use crate::time::{Duration, Timestamp};

/// The longest in-progress or step timeout: 7 days, as AWS IoT Jobs allows.
pub const MAX_TIMEOUT_MINUTES: u64 = 10_080;
/// The most attempts an execution may get, the first one included.
pub const MAX_ATTEMPTS: u32 = 10;
/// The highest rollout rate, executions per minute.
pub const MAX_RATE_PER_MINUTE: u32 = 1_000_000;
/// The most stages a job may have.
pub const MAX_STAGES: usize = 10;
/// The most names (things or groups) one stage may list.
pub const MAX_STAGE_NAMES: usize = 100;
/// The most maintenance windows a job may have.
pub const MAX_WINDOWS: usize = 10;

/// Who a job is for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    /// Things named directly.
    #[serde(default)]
    pub things: Vec<ThingName>,
    /// Groups whose members are targets.
    #[serde(default)]
    pub groups: Vec<GroupName>,
}

/// Whether group membership is read once or followed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TargetSelection {
    /// Targets are resolved when the job starts; the job completes when they are all done.
    #[default]
    Snapshot,
    /// Things that join a target group later get an execution; the job never completes.
    Continuous,
}

/// How fast executions are queued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Rollout {
    /// Queue every target at once.
    #[default]
    Unlimited,
    /// At most `per_minute` executions queued in any minute since the start.
    #[serde(rename_all = "camelCase")]
    Fixed {
        /// Executions per minute.
        per_minute: u32,
    },
    /// Start at `base_per_minute` and multiply the rate by `factor` each time the criterion
    /// count grows by its threshold, capped at `max_per_minute`.
    #[serde(rename_all = "camelCase")]
    Exponential {
        /// The initial rate.
        base_per_minute: u32,
        /// The multiplier, 1.1 to 5.0.
        factor: f64,
        /// What must grow to raise the rate.
        criterion: IncreaseCriterion,
        /// The ceiling of the rate.
        max_per_minute: u32,
    },
}

/// The count that raises an exponential rollout's rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", content = "every", rename_all = "camelCase")]
pub enum IncreaseCriterion {
    /// Every `n` more things notified (queued).
    NotifiedThings(u32),
    /// Every `n` more things that succeeded.
    SucceededThings(u32),
}

/// Which terminal outcome an abort or retry rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureType {
    /// `FAILED` executions.
    Failed,
    /// `REJECTED` executions.
    Rejected,
    /// `TIMED_OUT` executions.
    TimedOut,
    /// Any of the three.
    All,
}

impl FailureType {
    /// Whether `status` counts as this failure type.
    pub const fn matches(self, status: JobExecutionStatus) -> bool {
        use JobExecutionStatus as S;
        match self {
            Self::Failed => matches!(status, S::Failed),
            Self::Rejected => matches!(status, S::Rejected),
            Self::TimedOut => matches!(status, S::TimedOut),
            Self::All => matches!(status, S::Failed | S::Rejected | S::TimedOut),
        }
    }
}

/// Cancel the job once enough executions failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortCriterion {
    /// What counts as a failure.
    pub failure_type: FailureType,
    /// The rule is checked only once this many executions are terminal.
    pub min_executed: u32,
    /// The failure share, in percent of terminal executions, at which the job is aborted.
    pub threshold_percent: f64,
}

/// Run a failed execution again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryCriterion {
    /// `FAILED`, `TIMED_OUT` or `ALL` (both); `REJECTED` is never retried.
    pub failure_type: FailureType,
    /// Further attempts after the first, 1 to 9 (10 attempts in all).
    pub number_of_retries: u32,
}

/// What happens when a job's end time passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndBehavior {
    /// Queue no more executions; those queued continue.
    #[default]
    StopRollout,
    /// Cancel the job: queued executions are canceled, in-progress ones continue.
    Cancel,
    /// Cancel the job and every unfinished execution.
    ForceCancel,
}

/// When a job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// The job stays `SCHEDULED` until then.
    pub start_time: Option<Timestamp>,
    /// What [`Schedule::end_behavior`] says happens then.
    pub end_time: Option<Timestamp>,
    /// What to do at the end time.
    #[serde(default)]
    pub end_behavior: EndBehavior,
}

/// Who belongs to a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StageTargets {
    /// These things (those that are targets of the job).
    Things {
        /// The names.
        things: Vec<ThingName>,
    },
    /// The members of these groups (those that are targets of the job) when the job starts.
    Groups {
        /// The groups.
        groups: Vec<GroupName>,
    },
    /// This share of all the job's targets, in percent (rounded up), picked from those no
    /// things or groups stage names, in a fixed pseudo-random order of the job id and the
    /// thing name.
    Percent {
        /// 1 to 100.
        percent: u8,
    },
}

/// What a stage's error threshold does when it is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StageAction {
    /// Pause the job until an operator resumes it.
    Pause,
    /// Cancel the job.
    Abort,
}

/// A stage's error threshold: like an abort rule, counted over the stage's executions only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageErrorThreshold {
    /// What counts as a failure.
    pub failure_type: FailureType,
    /// Checked once this many of the stage's executions are terminal.
    pub min_executed: u32,
    /// The failure share, in percent of the stage's terminal executions, that trips it.
    pub threshold_percent: f64,
    /// Pause or abort.
    pub action: StageAction,
}

/// One stage of a staged rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Its things.
    pub targets: StageTargets,
    /// The gate: the share of the stage's things, in percent, that must succeed before the
    /// next stage starts.
    pub success_percent: f64,
    /// Pause or abort the job early when too many of the stage's executions fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_threshold: Option<StageErrorThreshold>,
}

/// Every option of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobConfig {
    /// How long an execution may stay `IN_PROGRESS`.
    pub in_progress_timeout: Option<Duration>,
    /// Queueing pace.
    #[serde(default)]
    pub rollout: Rollout,
    /// Abort rules; the first that holds cancels the job.
    #[serde(default)]
    pub abort: Vec<AbortCriterion>,
    /// Retry rules.
    #[serde(default)]
    pub retry: Vec<RetryCriterion>,
    /// Start and end times.
    #[serde(default)]
    pub schedule: Schedule,
    /// Ordered rollout stages; empty: one rollout of every target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// Queue executions (and retries) only inside these windows; empty: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
}

impl JobConfig {
    /// Checks every option against its documented range.
    pub fn validate(&self, now: Timestamp) -> Result<(), Rejection> {
        if let Some(t) = self.in_progress_timeout {
            if t < Duration::from_minutes(1) || t > Duration::from_minutes(MAX_TIMEOUT_MINUTES) {
                return Err(Rejection::invalid(
                    "inProgressTimeoutInMinutes",
                    format!("must be 1 to {MAX_TIMEOUT_MINUTES} minutes"),
                ));
            }
        }
        match &self.rollout {
            Rollout::Unlimited => {}
            Rollout::Fixed { per_minute } => check_rate("maximumPerMinute", *per_minute)?,
            Rollout::Exponential {
                base_per_minute,
                factor,
                criterion,
                max_per_minute,
            } => {
                check_rate("baseRatePerMinute", *base_per_minute)?;
                check_rate("maximumPerMinute", *max_per_minute)?;
                if max_per_minute < base_per_minute {
                    return Err(Rejection::invalid(
                        "maximumPerMinute",
                        "must not be below baseRatePerMinute",
                    ));
                }
                if !(1.1..=5.0).contains(factor) {
                    return Err(Rejection::invalid("incrementFactor", "must be 1.1 to 5.0"));
                }
                let (IncreaseCriterion::NotifiedThings(n) | IncreaseCriterion::SucceededThings(n)) =
                    criterion;
                if *n == 0 {
                    return Err(Rejection::invalid(
                        "rateIncreaseCriteria",
                        "must be at least 1",
                    ));
                }
            }
        }
        for a in &self.abort {
            if !(0.0..=100.0).contains(&a.threshold_percent) {
                return Err(Rejection::invalid(
                    "thresholdPercentage",
                    "must be 0 to 100",
                ));
            }
            if a.min_executed == 0 {
                return Err(Rejection::invalid(
                    "minNumberOfExecutedThings",
                    "must be at least 1",
                ));
            }
        }
        for r in &self.retry {
            if matches!(r.failure_type, FailureType::Rejected) {
                return Err(Rejection::invalid(
                    "failureType",
                    "retries apply to FAILED, TIMED_OUT or ALL",
                ));
            }
            if r.number_of_retries == 0 || r.number_of_retries >= MAX_ATTEMPTS {
                return Err(Rejection::invalid(
                    "numberOfRetries",
                    format!("must be 1 to {}", MAX_ATTEMPTS - 1),
                ));
            }
        }
        self.validate_stages()?;
        if self.maintenance_windows.len() > MAX_WINDOWS {
            return Err(Rejection::invalid(
                "maintenanceWindows",
                format!("at most {MAX_WINDOWS} windows are allowed"),
            ));
        }
        for w in &self.maintenance_windows {
            if w.duration_minutes == 0 || w.duration_minutes > MAX_WINDOW_MINUTES {
                return Err(Rejection::invalid(
                    "durationInMinutes",
                    format!("must be 1 to {MAX_WINDOW_MINUTES}"),
                ));
            }
        }
        if let Some(end) = self.schedule.end_time {
            if end <= now {
                return Err(Rejection::invalid("endTime", "must be in the future"));
            }
            if self.schedule.start_time.is_some_and(|s| end <= s) {
                return Err(Rejection::invalid("endTime", "must be after startTime"));
            }
        }
        Ok(())
    }
}

impl JobConfig {
    /// Checks the stages: how many, their names, percentages, gates and thresholds.
    fn validate_stages(&self) -> Result<(), Rejection> {
        if self.stages.len() > MAX_STAGES {
            return Err(Rejection::invalid(
                "stages",
                format!("at most {MAX_STAGES} stages are allowed"),
            ));
        }
        let mut percent_total = 0u32;
        for stage in &self.stages {
            match &stage.targets {
                StageTargets::Things { things } if things.is_empty() => {
                    return Err(Rejection::invalid("thingNames", "name at least one thing"))
                }
                StageTargets::Groups { groups } if groups.is_empty() => {
                    return Err(Rejection::invalid(
                        "thingGroupNames",
                        "name at least one group",
                    ))
                }
                StageTargets::Things { things } if things.len() > MAX_STAGE_NAMES => {
                    return Err(Rejection::invalid(
                        "thingNames",
                        format!("at most {MAX_STAGE_NAMES} names per stage"),
                    ))
                }
                StageTargets::Groups { groups } if groups.len() > MAX_STAGE_NAMES => {
                    return Err(Rejection::invalid(
                        "thingGroupNames",
                        format!("at most {MAX_STAGE_NAMES} names per stage"),
                    ))
                }
                StageTargets::Percent { percent } => {
                    if *percent == 0 || *percent > 100 {
                        return Err(Rejection::invalid("percentage", "must be 1 to 100"));
                    }
                    percent_total += u32::from(*percent);
                }
                StageTargets::Things { .. } | StageTargets::Groups { .. } => {}
            }
            if !(0.0..=100.0).contains(&stage.success_percent) {
                return Err(Rejection::invalid(
                    "successThresholdPercentage",
                    "must be 0 to 100",
                ));
            }
            if let Some(t) = &stage.error_threshold {
                if !(0.0..=100.0).contains(&t.threshold_percent) {
                    return Err(Rejection::invalid(
                        "errorThreshold.thresholdPercentage",
                        "must be 0 to 100",
                    ));
                }
                if t.min_executed == 0 {
                    return Err(Rejection::invalid(
                        "errorThreshold.minNumberOfExecutedThings",
                        "must be at least 1",
                    ));
                }
            }
        }
        if percent_total > 100 {
            return Err(Rejection::invalid(
                "percentage",
                "the stages' percentages add up to more than 100",
            ));
        }
        Ok(())
    }
}

fn check_rate(field: &'static str, rate: u32) -> Result<(), Rejection> {
    if rate == 0 || rate > MAX_RATE_PER_MINUTE {
        return Err(Rejection::invalid(
            field,
            format!("must be 1 to {MAX_RATE_PER_MINUTE}"),
        ));
    }
    Ok(())
}
