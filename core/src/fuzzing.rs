//! `arbitrary::Arbitrary` for the public types (feature `arbitrary`), for fuzz targets.
//!
//! Every impl yields a value the core accepts, whatever the input bytes: ids keep the
//! characters of an arbitrary string that are in their alphabet, up to their length (one
//! letter when none is left); texts, JSON and `statusDetails` are cut to their limits;
//! numbers with a range are drawn inside it. A fuzz target that wants refusals too mixes in
//! its own raw values.
//!
//! `StatusDetails` is a type alias of a `BTreeMap`, so the generic map impl applies to it and
//! may exceed the limits; the intents, requests and events below bound the details they hold.

use std::collections::BTreeSet;

use arbitrary::{Arbitrary, Result, Unstructured};
use serde_json::{Map, Number, Value};

use crate::access::{Scope, SecretHash};
use crate::api_key::MAX_KEY_NAME_LEN;
use crate::command::{CommandIntent, MAX_REASON_LEN, MAX_TTL, MIN_TTL};
use crate::config::{
    AbortCriterion, EndBehavior, FailureType, IncreaseCriterion, JobConfig, RetryCriterion,
    Rollout, Schedule, TargetSelection, Targets, MAX_ATTEMPTS, MAX_RATE_PER_MINUTE,
    MAX_TIMEOUT_MINUTES,
};
use crate::device::{
    CommandResponse, DescribeRequest, DeviceRequest, ExecutionSummary, ExecutionView, Inbound,
    JobTarget, Operation, PendingJobs, StartNextRequest, StepTimeout, UpdateRequest,
};
use crate::event::{
    EndReason, Event, JobCancelReason, PauseReason, StatusDetails, StepTimer, TimeoutCause,
};
use crate::group::{GroupIntent, MAX_MEMBERS_PER_CHANGE};
use crate::ids::{
    ApiKeyId, CommandId, ExecutionId, GroupName, JobId, StatusDetailKey, StreamId, ThingName,
};
use crate::job::{JobIntent, MAX_COMMENT_LEN, MAX_DESCRIPTION_LEN, MAX_JOB_NAME_LEN};
use crate::job_execution::{ExecutionState, JobExecutionIntent, MAX_DETAIL_VALUE_LEN};
use crate::limits::{
    json_len, MAX_COMMAND_ACTION_LEN, MAX_COMMAND_ID_LEN, MAX_COMMAND_PARAMS_BYTES,
    MAX_JOB_DOCUMENT_BYTES, MAX_JOB_TARGETS, MAX_PENDING_LISTED, MAX_STATUS_DETAILS_BYTES,
    MAX_STATUS_DETAILS_KEYS,
};
use crate::projection::JobCounters;
use crate::status::{CommandStatus, JobExecutionStatus, JobStatus};
use crate::time::{Duration, Timestamp};

// ---- helpers --------------------------------------------------------------------------------

fn thing_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

fn job_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn group_char(c: char) -> bool {
    thing_char(c) || matches!(c, '.' | ' ' | '(' | ')')
}

/// 1 to `max` characters of the alphabet `ok`: those of an arbitrary string, or one letter.
fn id_text(u: &mut Unstructured<'_>, max: usize, ok: fn(char) -> bool) -> Result<String> {
    let raw: &str = u.arbitrary()?;
    let mut s: String = raw.chars().filter(|c| ok(*c)).take(max).collect();
    if s.is_empty() {
        s.push(char::from(b'a' + u.int_in_range(0..=25)?));
    }
    Ok(s)
}

/// Parses text drawn from the alphabet; an error (never expected) ends the input.
fn parsed<T, E>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|_| arbitrary::Error::IncorrectFormat)
}

/// Any text of at most `max` characters.
fn text(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let raw: &str = u.arbitrary()?;
    Ok(raw.chars().take(max).collect())
}

fn option<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

/// A number in `range`.
fn within(u: &mut Unstructured<'_>, range: std::ops::RangeInclusive<u64>) -> Result<u64> {
    u.int_in_range(range)
}

/// JSON of depth at most `depth`: any finite number (the core reads floats back exactly).
fn json(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    let kinds = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(u.arbitrary::<u64>()?),
        4 => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        5 => Value::String(u.arbitrary()?),
        6 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| json(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(u.arbitrary()?, json(u, depth - 1)?);
            }
            Value::Object(m)
        }
    })
}

/// JSON within `max` bytes (`fallback` when over).
fn bounded_json(u: &mut Unstructured<'_>, max: usize, fallback: Value) -> Result<Value> {
    let v = json(u, 3)?;
    Ok(if json_len(&v) <= max { v } else { fallback })
}

/// A JSON object within `max` bytes: a job document.
fn json_object(u: &mut Unstructured<'_>, max: usize) -> Result<Value> {
    let n = u.int_in_range(0..=6)?;
    let mut m = Map::new();
    for _ in 0..n {
        m.insert(u.arbitrary()?, json(u, 2)?);
    }
    let v = Value::Object(m);
    Ok(if json_len(&v) <= max {
        v
    } else {
        Value::Object(Map::new())
    })
}

/// An optional JSON value, never `Some(null)` (serde reads it back as `None`).
fn optional_json(u: &mut Unstructured<'_>, max: usize) -> Result<Option<Value>> {
    Ok(option(u, |u| bounded_json(u, max, Value::Bool(false)))?.filter(|v| !v.is_null()))
}

/// `statusDetails` within every limit: keys while they fit, values cut to their length.
fn status_details(u: &mut Unstructured<'_>) -> Result<StatusDetails> {
    let mut details = StatusDetails::new();
    let mut bytes = 0;
    while details.len() < MAX_STATUS_DETAILS_KEYS && u.arbitrary::<bool>()? {
        let key = StatusDetailKey::arbitrary(u)?;
        let value = text(u, MAX_DETAIL_VALUE_LEN)?;
        let len = key.as_str().len() + value.len();
        if bytes + len <= MAX_STATUS_DETAILS_BYTES && !details.contains_key(&key) {
            bytes += len;
            details.insert(key, value);
        }
    }
    Ok(details)
}

fn optional_details(u: &mut Unstructured<'_>) -> Result<Option<StatusDetails>> {
    option(u, status_details)
}

fn minutes(u: &mut Unstructured<'_>, range: std::ops::RangeInclusive<u64>) -> Result<Duration> {
    Ok(Duration::from_millis(within(
        u,
        Duration::from_minutes(*range.start()).as_millis()
            ..=Duration::from_minutes(*range.end()).as_millis(),
    )?))
}

fn in_progress_timeout(u: &mut Unstructured<'_>) -> Result<Option<Duration>> {
    option(u, |u| minutes(u, 1..=MAX_TIMEOUT_MINUTES))
}

/// A thing list of at most `max` names.
fn things(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<ThingName>> {
    let mut v: Vec<ThingName> = u.arbitrary()?;
    v.truncate(max);
    Ok(v)
}

// ---- ids ------------------------------------------------------------------------------------

macro_rules! arbitrary_id {
    ($t:ty, $ok:expr) => {
        impl<'a> Arbitrary<'a> for $t {
            fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
                parsed(<$t>::parse(&id_text(u, <$t>::MAX_LEN, $ok)?))
            }
        }
    };
}

arbitrary_id!(ThingName, thing_char);
arbitrary_id!(JobId, job_char);
arbitrary_id!(ExecutionId, job_char);
arbitrary_id!(GroupName, group_char);
arbitrary_id!(ApiKeyId, job_char);
arbitrary_id!(CommandId, job_char);
arbitrary_id!(StatusDetailKey, thing_char);

impl<'a> Arbitrary<'a> for StreamId {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=7)? {
            0 => Self::command(&u.arbitrary()?),
            1 => Self::job(&u.arbitrary()?),
            2 => Self::job_execution(&u.arbitrary()?, &u.arbitrary()?),
            3 => Self::group(&u.arbitrary()?),
            4 => Self::api_key(&u.arbitrary()?),
            5 => Self::command_template(&u.arbitrary()?),
            6 => Self::thing(&u.arbitrary()?),
            _ => parsed(Self::custom(&id_text(u, 200, |c| {
                thing_char(c) || c == '/'
            })?))?,
        })
    }
}

// ---- statuses and time ----------------------------------------------------------------------

impl<'a> Arbitrary<'a> for JobExecutionStatus {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&Self::ALL)?)
    }
}

impl<'a> Arbitrary<'a> for CommandStatus {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&Self::ALL)?)
    }
}

impl<'a> Arbitrary<'a> for JobStatus {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&[
            Self::Scheduled,
            Self::InProgress,
            Self::Completed,
            Self::Canceled,
        ])?)
    }
}

impl<'a> Arbitrary<'a> for Timestamp {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self::from_millis(u.arbitrary()?))
    }
}

impl<'a> Arbitrary<'a> for Duration {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self::from_millis(u.arbitrary()?))
    }
}

// ---- job config -----------------------------------------------------------------------------

impl<'a> Arbitrary<'a> for Targets {
    /// At least one and at most [`MAX_JOB_TARGETS`] names.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut things = things(u, MAX_JOB_TARGETS)?;
        let mut groups: Vec<GroupName> = u.arbitrary()?;
        groups.truncate(MAX_JOB_TARGETS - things.len());
        if things.is_empty() && groups.is_empty() {
            things.push(u.arbitrary()?);
        }
        Ok(Self { things, groups })
    }
}

impl<'a> Arbitrary<'a> for TargetSelection {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(if u.arbitrary()? {
            Self::Snapshot
        } else {
            Self::Continuous
        })
    }
}

fn rate(u: &mut Unstructured<'_>) -> Result<u32> {
    u.int_in_range(1..=MAX_RATE_PER_MINUTE)
}

impl<'a> Arbitrary<'a> for IncreaseCriterion {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let n = u.int_in_range(1..=u32::MAX)?;
        Ok(if u.arbitrary()? {
            Self::NotifiedThings(n)
        } else {
            Self::SucceededThings(n)
        })
    }
}

/// A float in `[lo, hi]` from a 32-bit fraction.
fn float_in(u: &mut Unstructured<'_>, lo: f64, hi: f64) -> Result<f64> {
    let f = f64::from(u.arbitrary::<u32>()?) / f64::from(u32::MAX);
    Ok((lo + f * (hi - lo)).clamp(lo, hi))
}

impl<'a> Arbitrary<'a> for Rollout {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=2)? {
            0 => Self::Unlimited,
            1 => Self::Fixed {
                per_minute: rate(u)?,
            },
            _ => {
                let (a, b) = (rate(u)?, rate(u)?);
                Self::Exponential {
                    base_per_minute: a.min(b),
                    factor: float_in(u, 1.1, 5.0)?,
                    criterion: u.arbitrary()?,
                    max_per_minute: a.max(b),
                }
            }
        })
    }
}

impl<'a> Arbitrary<'a> for FailureType {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&[Self::Failed, Self::Rejected, Self::TimedOut, Self::All])?)
    }
}

impl<'a> Arbitrary<'a> for AbortCriterion {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            failure_type: u.arbitrary()?,
            min_executed: u.int_in_range(1..=u32::MAX)?,
            threshold_percent: float_in(u, 0.0, 100.0)?,
        })
    }
}

impl<'a> Arbitrary<'a> for RetryCriterion {
    /// Never `REJECTED`; 1 to [`MAX_ATTEMPTS`]` - 1` retries.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            failure_type: *u.choose(&[
                FailureType::Failed,
                FailureType::TimedOut,
                FailureType::All,
            ])?,
            number_of_retries: u.int_in_range(1..=MAX_ATTEMPTS - 1)?,
        })
    }
}

impl<'a> Arbitrary<'a> for EndBehavior {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&[Self::StopRollout, Self::Cancel, Self::ForceCancel])?)
    }
}

/// A schedule whose end time, if any, is after `now` and after the start time.
fn schedule_after(u: &mut Unstructured<'_>, now: Timestamp) -> Result<Schedule> {
    let start_time: Option<Timestamp> = u.arbitrary()?;
    let base = start_time.map_or(now, |s| s.max(now));
    let end_time = option(u, |u| {
        Ok(base + Duration::from_millis(u.arbitrary::<u64>()?.saturating_add(1)))
    })?
    .filter(|end| *end > base);
    Ok(Schedule {
        start_time,
        end_time,
        end_behavior: u.arbitrary()?,
    })
}

impl<'a> Arbitrary<'a> for Schedule {
    /// The end time, if any, is after the start time: valid at every `now` before it.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        schedule_after(u, Timestamp::EPOCH)
    }
}

/// A config that passes [`JobConfig::validate`] at `now`.
fn job_config_at(u: &mut Unstructured<'_>, now: Timestamp) -> Result<JobConfig> {
    let mut abort: Vec<AbortCriterion> = u.arbitrary()?;
    abort.truncate(8);
    let mut retry: Vec<RetryCriterion> = u.arbitrary()?;
    retry.truncate(8);
    Ok(JobConfig {
        in_progress_timeout: in_progress_timeout(u)?,
        rollout: u.arbitrary()?,
        abort,
        retry,
        schedule: schedule_after(u, now)?,
        stages: Vec::new(),
        maintenance_windows: Vec::new(),
    })
}

impl<'a> Arbitrary<'a> for JobConfig {
    /// Valid at every `now` before its end time (always, without one).
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        job_config_at(u, Timestamp::EPOCH)
    }
}

impl<'a> Arbitrary<'a> for JobCounters {
    /// Each count below 2^32, so sums never overflow.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut n = || u.arbitrary::<u32>().map(u64::from);
        Ok(Self {
            queued: n()?,
            in_progress: n()?,
            succeeded: n()?,
            failed: n()?,
            rejected: n()?,
            timed_out: n()?,
            canceled: n()?,
            removed: n()?,
        })
    }
}

// ---- events ---------------------------------------------------------------------------------

impl<'a> Arbitrary<'a> for EndReason {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&[
            Self::Operator,
            Self::JobCanceled,
            Self::JobAborted,
            Self::JobEnded,
            Self::LeftGroup,
        ])?)
    }
}

impl<'a> Arbitrary<'a> for JobCancelReason {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=2)? {
            0 => Self::Operator {
                comment: option(u, |u| text(u, MAX_COMMENT_LEN))?,
            },
            1 => {
                let executed = within(u, 1..=u64::from(u32::MAX))?;
                Self::Aborted {
                    criterion: u.int_in_range(0..=7)?,
                    failed: within(u, 0..=executed)?,
                    executed,
                }
            }
            _ => Self::EndTime,
        })
    }
}

impl<'a> Arbitrary<'a> for TimeoutCause {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&[Self::InProgress, Self::Step])?)
    }
}

impl<'a> Arbitrary<'a> for StepTimer {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=2)? {
            0 => Self::Unchanged,
            1 => Self::Set(u.arbitrary()?),
            _ => Self::Cleared,
        })
    }
}

fn command_id(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    option(u, |u| id_text(u, MAX_COMMAND_ID_LEN, job_char))
}

fn action(u: &mut Unstructured<'_>) -> Result<String> {
    let mut a = text(u, MAX_COMMAND_ACTION_LEN)?;
    if a.is_empty() {
        a.push_str("run");
    }
    Ok(a)
}

fn ttl(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(Duration::from_millis(within(
        u,
        MIN_TTL.as_millis()..=MAX_TTL.as_millis(),
    )?))
}

fn reason(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    option(u, |u| text(u, MAX_REASON_LEN))
}

fn description(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    option(u, |u| text(u, MAX_DESCRIPTION_LEN))
}

fn response_status(u: &mut Unstructured<'_>) -> Result<CommandStatus> {
    Ok(*u.choose(&[
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Rejected,
    ])?)
}

/// Non-empty, sorted, distinct members, as `decide` emits them.
fn member_change(u: &mut Unstructured<'_>) -> Result<Vec<ThingName>> {
    let mut set: BTreeSet<ThingName> = things(u, MAX_MEMBERS_PER_CHANGE)?.into_iter().collect();
    if set.is_empty() {
        set.insert(u.arbitrary()?);
    }
    Ok(set.into_iter().collect())
}

/// 1 to [`MAX_KEY_NAME_LEN`] characters without control characters, as `decide` accepts.
fn key_name(u: &mut Unstructured<'_>) -> Result<String> {
    let mut name: String = u
        .arbitrary::<String>()?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_KEY_NAME_LEN)
        .collect();
    if name.is_empty() {
        name.push('k');
    }
    Ok(name)
}

/// No name, or 1 to [`MAX_JOB_NAME_LEN`] characters without control characters.
fn job_name(u: &mut Unstructured<'_>) -> Result<Option<String>> {
    if !u.arbitrary::<bool>()? {
        return Ok(None);
    }
    let name: String = u
        .arbitrary::<String>()?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_JOB_NAME_LEN)
        .collect();
    Ok(Some(if name.is_empty() { "job".into() } else { name }))
}

impl<'a> Arbitrary<'a> for Scope {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(*u.choose(&Scope::ALL)?)
    }
}

impl<'a> Arbitrary<'a> for Event {
    /// Every variant, with the field values `decide` could have produced.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let at: Timestamp = u.arbitrary()?;
        Ok(match u.int_in_range(0..=33)? {
            0 => Self::CommandSent {
                execution_id: u.arbitrary()?,
                thing: u.arbitrary()?,
                command_id: command_id(u)?,
                action: action(u)?,
                params: bounded_json(u, MAX_COMMAND_PARAMS_BYTES, Value::Null)?,
                ttl: ttl(u)?,
                sent_at: at,
            },
            1 => Self::CommandResponded {
                status: response_status(u)?,
                result: optional_json(u, MAX_COMMAND_PARAMS_BYTES)?,
                status_reason: reason(u)?,
                at,
            },
            2 => Self::CommandTimedOut { at },
            3 => Self::CommandCanceled {
                at,
                reason: reason(u)?,
            },
            4 => Self::JobCreated {
                job_id: u.arbitrary()?,
                name: job_name(u)?,
                description: description(u)?,
                targets: u.arbitrary()?,
                selection: u.arbitrary()?,
                document: json_object(u, MAX_JOB_DOCUMENT_BYTES)?,
                config: job_config_at(u, at)?,
                created_at: at,
            },
            5 => Self::JobStarted { at },
            6 => Self::JobRolloutStopped { at },
            7 => Self::JobCompleted { at },
            8 => Self::JobCanceled {
                at,
                force: u.arbitrary()?,
                reason: u.arbitrary()?,
            },
            9 => Self::JobDeleted { at },
            10 => Self::ExecutionQueued {
                job_id: u.arbitrary()?,
                thing: u.arbitrary()?,
                execution_number: 1,
                queued_at: at,
                in_progress_timeout: in_progress_timeout(u)?,
            },
            11 => Self::ExecutionStarted {
                at,
                status_details: optional_details(u)?,
                in_progress_deadline: in_progress_timeout(u)?.map(|t| at + t),
                step: u.arbitrary()?,
            },
            12 => Self::ExecutionProgressed {
                at,
                status_details: optional_details(u)?,
                step: u.arbitrary()?,
            },
            13 => Self::ExecutionFinished {
                status: *u.choose(&[
                    JobExecutionStatus::Succeeded,
                    JobExecutionStatus::Failed,
                    JobExecutionStatus::Rejected,
                ])?,
                at,
                status_details: optional_details(u)?,
            },
            14 => Self::ExecutionTimedOut {
                at,
                cause: u.arbitrary()?,
            },
            15 => Self::ExecutionCanceled {
                at,
                forced: u.arbitrary()?,
                reason: u.arbitrary()?,
                status_details: None,
            },
            16 => Self::ExecutionRemoved {
                at,
                forced: u.arbitrary()?,
                reason: u.arbitrary()?,
            },
            17 => Self::ExecutionRequeued {
                execution_number: u.int_in_range(2..=MAX_ATTEMPTS)?,
                queued_at: at,
            },
            18 => Self::GroupCreated {
                name: u.arbitrary()?,
                description: description(u)?,
                at,
            },
            19 => Self::GroupMembersAdded {
                things: member_change(u)?,
                at,
            },
            20 => Self::GroupMembersRemoved {
                things: member_change(u)?,
                at,
            },
            21 => Self::GroupDeleted { at },
            22 => Self::ApiKeyCreated {
                key_id: u.arbitrary()?,
                name: key_name(u)?,
                scope: u.arbitrary()?,
                secret_hash: SecretHash::from_bytes(u.arbitrary()?),
                created_at: at,
            },
            23 => Self::ApiKeyRevoked { at },
            24 => Self::CommandTemplateRegistered {
                command_id: u.arbitrary()?,
                action: "act".into(),
                description: description(u)?,
                payload: serde_json::json!({}),
                parameters: vec![],
                at,
            },
            25 => Self::CommandTemplateDeleted { at },
            26 => Self::JobPaused {
                at,
                reason: match u.int_in_range(0..=2)? {
                    0 => PauseReason::Operator {
                        comment: description(u)?,
                    },
                    1 => PauseReason::StageGate {
                        stage: u.int_in_range(0..=9)?,
                        succeeded: u.arbitrary()?,
                        required: u.arbitrary()?,
                        size: u.arbitrary()?,
                    },
                    _ => PauseReason::StageErrorThreshold {
                        stage: u.int_in_range(0..=9)?,
                        failed: u.arbitrary()?,
                        executed: u.arbitrary()?,
                    },
                },
            },
            27 => Self::JobResumed {
                at,
                comment: description(u)?,
            },
            28 => Self::JobStageAdvanced {
                at,
                stage: u.int_in_range(0..=10)?,
                overridden: u.arbitrary()?,
            },
            29 => Self::JobUpdated {
                at,
                description: description(u)?,
                config: job_config_at(u, at)?,
            },
            30 => Self::CommandResponseIgnored {
                status: response_status(u)?,
                result: optional_json(u, MAX_COMMAND_PARAMS_BYTES)?,
                status_reason: reason(u)?,
                at,
            },
            31 => Self::ThingPresenceChanged {
                name: u.arbitrary()?,
                online: u.arbitrary()?,
                stamp: u.arbitrary()?,
                at,
            },
            32 => Self::ThingDeregistered { at },
            _ => Self::ThingRegistered {
                name: u.arbitrary()?,
                // An empty record keeps within every registry limit.
                attributes: std::collections::BTreeMap::new(),
                thing_type: None,
                client_id: None,
                at,
            },
        })
    }
}

// ---- device requests ------------------------------------------------------------------------

impl<'a> Arbitrary<'a> for JobTarget {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(if u.arbitrary()? {
            Self::Next
        } else {
            Self::Job(u.arbitrary()?)
        })
    }
}

impl<'a> Arbitrary<'a> for StepTimeout {
    /// Keep, clear, or 1 to [`MAX_TIMEOUT_MINUTES`] minutes.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=2)? {
            0 => Self::Keep,
            1 => Self::Clear,
            _ => Self::Minutes(within(u, 1..=MAX_TIMEOUT_MINUTES)?),
        })
    }
}

impl<'a> Arbitrary<'a> for UpdateRequest {
    /// A status a device may set; details and step timer within their limits.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            status: Some(*u.choose(&[
                JobExecutionStatus::InProgress,
                JobExecutionStatus::Succeeded,
                JobExecutionStatus::Failed,
                JobExecutionStatus::Rejected,
            ])?),
            status_details: optional_details(u)?,
            expected_version: u.arbitrary()?,
            execution_number: u.arbitrary()?,
            step_timeout: u.arbitrary()?,
            include_job_execution_state: u.arbitrary()?,
            include_job_document: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for StartNextRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            status_details: optional_details(u)?,
            step_timeout: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for DescribeRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            job: u.arbitrary()?,
            execution_number: u.arbitrary()?,
            include_job_document: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for CommandResponse {
    /// `SUCCEEDED`, `FAILED` or `REJECTED`; a result never `null`; a bounded reason.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            status: response_status(u)?,
            result: optional_json(u, MAX_COMMAND_PARAMS_BYTES)?,
            status_reason: reason(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for DeviceRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=4)? {
            0 => Self::GetPending,
            1 => Self::StartNext(u.arbitrary()?),
            2 => Self::Describe(u.arbitrary()?),
            3 => Self::Update {
                job_id: u.arbitrary()?,
                request: u.arbitrary()?,
            },
            _ => Self::CommandResponse {
                execution_id: u.arbitrary()?,
                response: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Operation {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=4)? {
            0 => Self::GetPending,
            1 => Self::StartNext,
            2 => Self::Describe(u.arbitrary()?),
            3 => Self::Update(u.arbitrary()?),
            _ => Self::CommandResponse(u.arbitrary()?),
        })
    }
}

impl<'a> Arbitrary<'a> for Inbound {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            thing: u.arbitrary()?,
            client_token: u.arbitrary()?,
            request: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for ExecutionState {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            status: u.arbitrary()?,
            status_details: status_details(u)?,
            version_number: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for ExecutionSummary {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            job_id: u.arbitrary()?,
            queued_at: u.arbitrary()?,
            started_at: u.arbitrary()?,
            last_updated_at: u.arbitrary()?,
            version_number: u.arbitrary()?,
            execution_number: u.arbitrary()?,
        })
    }
}

impl<'a> Arbitrary<'a> for PendingJobs {
    /// At most [`MAX_PENDING_LISTED`] of each kind, as the service lists them.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut in_progress: Vec<ExecutionSummary> = u.arbitrary()?;
        in_progress.truncate(MAX_PENDING_LISTED);
        let mut queued: Vec<ExecutionSummary> = u.arbitrary()?;
        queued.truncate(MAX_PENDING_LISTED);
        Ok(Self {
            in_progress,
            queued,
        })
    }
}

impl<'a> Arbitrary<'a> for ExecutionView {
    /// A document, when present, is a bounded JSON object.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            job_id: u.arbitrary()?,
            thing_name: u.arbitrary()?,
            status: u.arbitrary()?,
            status_details: status_details(u)?,
            queued_at: u.arbitrary()?,
            started_at: u.arbitrary()?,
            last_updated_at: u.arbitrary()?,
            version_number: u.arbitrary()?,
            execution_number: u.arbitrary()?,
            job_document: option(u, |u| json_object(u, MAX_JOB_DOCUMENT_BYTES))?,
        })
    }
}

// ---- intents --------------------------------------------------------------------------------

impl<'a> Arbitrary<'a> for JobExecutionIntent {
    /// Every variant; device parts within their limits.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=6)? {
            0 => Self::Queue {
                job_id: u.arbitrary()?,
                thing: u.arbitrary()?,
                in_progress_timeout: in_progress_timeout(u)?,
            },
            1 => Self::Update(u.arbitrary()?),
            2 => Self::Start {
                status_details: optional_details(u)?,
                step_timeout: u.arbitrary()?,
            },
            3 => Self::CheckTimeout,
            4 => Self::Cancel {
                force: u.arbitrary()?,
                reason: u.arbitrary()?,
            },
            5 => Self::Remove {
                force: u.arbitrary()?,
                reason: u.arbitrary()?,
            },
            _ => Self::Retry,
        })
    }
}

impl<'a> Arbitrary<'a> for CommandIntent {
    /// Every variant; a send within every limit, a response with a device status.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=5)? {
            0 => Self::Send {
                execution_id: u.arbitrary()?,
                thing: u.arbitrary()?,
                command_id: command_id(u)?,
                action: action(u)?,
                params: bounded_json(u, MAX_COMMAND_PARAMS_BYTES, Value::Null)?,
                ttl: ttl(u)?,
            },
            1 => Self::Respond(u.arbitrary()?),
            2 => Self::CheckTimeout,
            3 => Self::Cancel { reason: reason(u)? },
            4 => Self::RecordLate(u.arbitrary()?),
            _ => Self::Undeliverable {
                reason: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for JobIntent {
    /// Every variant; a create's parts within their limits, its config valid at every `now`
    /// before its end time.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=3)? {
            0 => Self::Create {
                job_id: u.arbitrary()?,
                name: job_name(u)?,
                description: description(u)?,
                targets: u.arbitrary()?,
                selection: u.arbitrary()?,
                document: json_object(u, MAX_JOB_DOCUMENT_BYTES)?,
                config: u.arbitrary()?,
            },
            1 => Self::Review {
                counters: u.arbitrary()?,
                all_queued: u.arbitrary()?,
                stage: None,
            },
            2 => Self::Cancel {
                force: u.arbitrary()?,
                comment: option(u, |u| text(u, MAX_COMMENT_LEN))?,
            },
            _ => Self::Delete {
                force: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for GroupIntent {
    /// Every variant; at most [`MAX_MEMBERS_PER_CHANGE`] names per change.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=3)? {
            0 => Self::Create {
                name: u.arbitrary()?,
                description: description(u)?,
            },
            1 => Self::AddMembers(things(u, MAX_MEMBERS_PER_CHANGE)?),
            2 => Self::RemoveMembers(things(u, MAX_MEMBERS_PER_CHANGE)?),
            _ => Self::Delete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::command::{valid_command_id, CommandExecution};
    use crate::group::Group;
    use crate::job::Job;
    use crate::job_execution::JobExecution;

    /// Deterministic pseudo-random bytes (xorshift), so the test needs no extra crate.
    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn each<T: for<'a> Arbitrary<'a>>(mut check: impl FnMut(T)) {
        for seed in 0..400 {
            for len in [0, 1, 7, 64, 512, 4096] {
                let data = bytes(seed, len);
                let mut u = Unstructured::new(&data);
                if let Ok(v) = T::arbitrary(&mut u) {
                    check(v);
                }
            }
        }
    }

    #[test]
    fn ids_round_trip_through_parse() {
        each(|t: ThingName| assert_eq!(ThingName::parse(t.as_str()), Ok(t)));
        each(|t: JobId| assert_eq!(JobId::parse(t.as_str()), Ok(t)));
        each(|t: ExecutionId| assert_eq!(ExecutionId::parse(t.as_str()), Ok(t)));
        each(|t: GroupName| assert_eq!(GroupName::parse(t.as_str()), Ok(t)));
        each(|t: ApiKeyId| assert_eq!(ApiKeyId::parse(t.as_str()), Ok(t)));
        each(|t: StatusDetailKey| assert_eq!(StatusDetailKey::parse(t.as_str()), Ok(t)));
        each(|t: StreamId| assert_eq!(StreamId::try_from(t.as_str()), Ok(t)));
    }

    #[test]
    fn configs_pass_validation_and_events_round_trip() {
        each(|c: JobConfig| assert_eq!(c.validate(Timestamp::EPOCH), Ok(())));
        let mut kinds = BTreeSet::new();
        each(|e: Event| {
            kinds.insert(e.type_name());
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e, "{text}");
            if let Event::CommandSent { command_id, .. } = &e {
                assert!(command_id.as_deref().is_none_or(valid_command_id));
            }
        });
        assert_eq!(kinds.len(), 34, "{kinds:?}");
        each(|r: Inbound| {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Inbound>(&text).unwrap(), r, "{text}");
        });
    }

    #[test]
    fn creations_are_accepted() {
        let now = Timestamp::EPOCH;
        each(|i: CommandIntent| {
            if matches!(i, CommandIntent::Send { .. }) {
                CommandExecution::execute(None, i, now).unwrap();
            }
        });
        each(|i: JobIntent| {
            if matches!(i, JobIntent::Create { .. }) {
                Job::execute(None, i, now).unwrap();
            }
        });
        each(|i: GroupIntent| {
            if matches!(i, GroupIntent::Create { .. }) {
                Group::execute(None, i, now).unwrap();
            }
        });
        each(|i: JobExecutionIntent| {
            if matches!(i, JobExecutionIntent::Queue { .. }) {
                JobExecution::execute(None, i, now).unwrap();
            }
        });
    }
}
