//! Proptest strategies for the public types (feature `proptest`).
//!
//! Every function without `invalid`/`oversized` in its name yields only values the core
//! accepts: ids pass their `parse`, texts and JSON stay within [`crate::limits`] and the
//! per-field bounds next to each aggregate, job configs pass [`JobConfig::validate`] at the
//! `now` they were drawn for, and events are facts `decide` could have emitted (they survive
//! a JSON round trip). The `invalid_*` and `oversized_*` functions yield values a boundary
//! refuses: the id's `parse`, or the aggregate's `decide` with `InvalidRequest`.
//!
//! Ids are drawn mostly short, so two draws often collide (the same thing added to a group
//! twice), and sometimes up to their full length.
//!
//! ```
//! use fleetops_core::strategies;
//! use fleetops_core::ThingName;
//! use proptest::prelude::*;
//!
//! proptest!(|(name in strategies::thing_name())| {
//!     prop_assert_eq!(ThingName::parse(name.as_str()), Ok(name));
//! });
//! ```

use proptest::collection::{btree_map, btree_set, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::string::string_regex;
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
    CommandResponse, DescribeRequest, DeviceRequest, Inbound, JobTarget, Operation,
    StartNextRequest, StepTimeout, UpdateRequest,
};
use crate::event::{EndReason, Event, JobCancelReason, StatusDetails, StepTimer, TimeoutCause};
use crate::group::GroupIntent;
use crate::ids::{
    ApiKeyId, CommandId, ExecutionId, GroupName, JobId, StatusDetailKey, StreamId, ThingName,
};
use crate::job::{JobIntent, MAX_COMMENT_LEN, MAX_DESCRIPTION_LEN, MAX_JOB_NAME_LEN};
use crate::job_execution::{JobExecutionIntent, MAX_DETAIL_VALUE_LEN};
use crate::limits::{
    json_len, MAX_COMMAND_ACTION_LEN, MAX_COMMAND_ID_LEN, MAX_COMMAND_PARAMS_BYTES,
    MAX_JOB_DOCUMENT_BYTES, MAX_STATUS_DETAILS_BYTES, MAX_STATUS_DETAILS_KEYS,
};
use crate::projection::JobCounters;
use crate::status::{CommandStatus, JobExecutionStatus, JobStatus};
use crate::template::{ParameterSpec, ParameterType};
use crate::time::{Duration, Timestamp};

// ---- ids ------------------------------------------------------------------------------------

/// The alphabet of thing names and status detail keys, as a regex class.
const THING_CLASS: &str = "[a-zA-Z0-9:_-]";
/// The alphabet of group names, as a regex class.
const GROUP_CLASS: &str = "[a-zA-Z0-9:_.() -]";
/// The alphabet of job ids, execution ids and command ids, as a regex class.
const JOB_CLASS: &str = "[a-zA-Z0-9_-]";
/// The longest custom stream name after `x/`.
const MAX_CUSTOM_STREAM_LEN: usize = 200;

fn thing_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

fn job_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn group_char(c: char) -> bool {
    thing_char(c) || matches!(c, '.' | ' ' | '(' | ')')
}

fn regex(pattern: &str) -> impl Strategy<Value = String> {
    string_regex(pattern).expect("the module's own patterns are valid regexes")
}

/// 1 to `max` characters of `class`: mostly short (so draws collide), sometimes any length.
fn id_text(class: &str, max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        2 => regex("[a-c]{1,2}"),
        2 => regex(&format!("{class}{{1,{}}}", max.min(16))),
        1 => regex(&format!("{class}{{1,{max}}}")),
    ]
}

/// Text an id of this alphabet and length refuses: empty, one character too many or more,
/// or a character outside the alphabet somewhere.
fn invalid_id_text(class: &str, max: usize, ok: fn(char) -> bool) -> impl Strategy<Value = String> {
    let bad = any::<char>().prop_filter("outside the alphabet", move |c| !ok(*c));
    let valid = || regex(&format!("{class}{{0,8}}"));
    prop_oneof![
        Just(String::new()),
        regex(&format!("{class}{{{},{}}}", max + 1, max + 40)),
        (valid(), bad, valid()).prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
}

macro_rules! id_strategies {
    ($(#[$doc:meta])* $valid:ident, $(#[$idoc:meta])* $invalid:ident, $t:ty, $class:expr, $ok:expr) => {
        $(#[$doc])*
        pub fn $valid() -> impl Strategy<Value = $t> {
            id_text($class, <$t>::MAX_LEN)
                .prop_map(|s| <$t>::parse(&s).expect("drawn from the id's alphabet and length"))
        }

        $(#[$idoc])*
        pub fn $invalid() -> impl Strategy<Value = String> {
            invalid_id_text($class, <$t>::MAX_LEN, $ok)
        }
    };
}

id_strategies!(
    /// A valid [`ThingName`].
    thing_name,
    /// Text [`ThingName::parse`] refuses.
    invalid_thing_name,
    ThingName, THING_CLASS, thing_char
);
id_strategies!(
    /// A valid [`JobId`].
    job_id,
    /// Text [`JobId::parse`] refuses.
    invalid_job_id,
    JobId, JOB_CLASS, job_char
);
id_strategies!(
    /// A valid [`ExecutionId`].
    execution_id,
    /// Text [`ExecutionId::parse`] refuses.
    invalid_execution_id,
    ExecutionId, JOB_CLASS, job_char
);
id_strategies!(
    /// A valid [`GroupName`].
    group_name,
    /// Text [`GroupName::parse`] refuses.
    invalid_group_name,
    GroupName, GROUP_CLASS, group_char
);
id_strategies!(
    /// A valid [`ApiKeyId`].
    api_key_id,
    /// Text [`ApiKeyId::parse`] refuses.
    invalid_api_key_id,
    ApiKeyId, JOB_CLASS, job_char
);
id_strategies!(
    /// A valid [`CommandId`], the id of a registered command.
    template_id,
    /// Text [`CommandId::parse`] refuses.
    invalid_template_id,
    CommandId, JOB_CLASS, job_char
);
id_strategies!(
    /// A valid [`StatusDetailKey`].
    status_detail_key,
    /// Text [`StatusDetailKey::parse`] refuses.
    invalid_status_detail_key,
    StatusDetailKey, THING_CLASS, thing_char
);

/// A valid [`StreamId`] of every kind: command, job, job execution, group, thing, API key,
/// registered command and custom.
pub fn stream_id() -> impl Strategy<Value = StreamId> {
    prop_oneof![
        execution_id().prop_map(|id| StreamId::command(&id)),
        job_id().prop_map(|id| StreamId::job(&id)),
        (job_id(), thing_name()).prop_map(|(j, t)| StreamId::job_execution(&j, &t)),
        group_name().prop_map(|g| StreamId::group(&g)),
        api_key_id().prop_map(|k| StreamId::api_key(&k)),
        template_id().prop_map(|c| StreamId::command_template(&c)),
        thing_name().prop_map(|t| StreamId::thing(&t)),
        regex(&format!("[a-zA-Z0-9:_/-]{{1,{MAX_CUSTOM_STREAM_LEN}}}"))
            .prop_map(|name| StreamId::custom(&name).expect("drawn from the custom alphabet")),
    ]
}

/// Text [`StreamId::parse`] refuses: no or an unknown category, or a category whose ids are
/// invalid or missing.
pub fn invalid_stream_id() -> impl Strategy<Value = String> {
    let custom_bad = any::<char>().prop_filter("outside the custom alphabet", |c| {
        !thing_char(*c) && *c != '/'
    });
    prop_oneof![
        regex("[a-zA-Z0-9:_-]{0,12}"),
        regex("[a-z]{1,6}/[a-z0-9]{1,6}").prop_filter("an unknown category", |s| {
            !matches!(
                s.split_once('/').map(|(p, _)| p),
                Some("cmd" | "job" | "exec" | "group" | "thing" | "key" | "tpl" | "x")
            )
        }),
        invalid_execution_id().prop_map(|id| format!("cmd/{id}")),
        invalid_job_id().prop_map(|id| format!("job/{id}")),
        job_id().prop_map(|id| format!("exec/{id}")),
        (invalid_job_id(), thing_name())
            .prop_filter("no second slash", |(j, _)| !j.contains('/'))
            .prop_map(|(j, t)| format!("exec/{j}/{t}")),
        (job_id(), invalid_thing_name()).prop_map(|(j, t)| format!("exec/{j}/{t}")),
        invalid_group_name().prop_map(|g| format!("group/{g}")),
        prop_oneof![
            Just(String::new()),
            regex(&format!(
                "[a-z]{{{},{}}}",
                MAX_CUSTOM_STREAM_LEN + 1,
                MAX_CUSTOM_STREAM_LEN + 20
            )),
            (regex("[a-z/]{0,8}"), custom_bad).prop_map(|(a, c)| format!("{a}{c}")),
        ]
        .prop_map(|name| format!("x/{name}")),
    ]
}

/// A valid command template id (`commandId`): 1 to [`MAX_COMMAND_ID_LEN`] characters of
/// `[a-zA-Z0-9_-]`, as [`crate::command::valid_command_id`] accepts.
pub fn command_id() -> impl Strategy<Value = String> {
    id_text(JOB_CLASS, MAX_COMMAND_ID_LEN)
}

/// A command template id [`crate::command::valid_command_id`] refuses.
pub fn invalid_command_id() -> impl Strategy<Value = String> {
    invalid_id_text(JOB_CLASS, MAX_COMMAND_ID_LEN, job_char)
}

// ---- statuses -------------------------------------------------------------------------------

/// Any [`JobExecutionStatus`].
pub fn job_execution_status() -> impl Strategy<Value = JobExecutionStatus> {
    select(JobExecutionStatus::ALL.to_vec())
}

/// A status a device may report in an update (`IN_PROGRESS`, `SUCCEEDED`, `FAILED`,
/// `REJECTED`).
pub fn device_settable_status() -> impl Strategy<Value = JobExecutionStatus> {
    select(
        JobExecutionStatus::ALL
            .into_iter()
            .filter(|s| s.is_device_settable())
            .collect::<Vec<_>>(),
    )
}

/// Any [`CommandStatus`].
pub fn command_status() -> impl Strategy<Value = CommandStatus> {
    select(CommandStatus::ALL.to_vec())
}

/// A status a device may answer a command with (`SUCCEEDED`, `FAILED`, `REJECTED`).
pub fn command_response_status() -> impl Strategy<Value = CommandStatus> {
    select(vec![
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Rejected,
    ])
}

/// Any [`JobStatus`].
pub fn job_status() -> impl Strategy<Value = JobStatus> {
    select(vec![
        JobStatus::Scheduled,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Canceled,
    ])
}

// ---- time -----------------------------------------------------------------------------------

/// The last millisecond of year 9999, the latest time [`Timestamp`]'s `Display` shows as a date.
const LAST_DATE_MS: u64 = 253_402_300_799_999;

/// A [`Timestamp`] from the epoch to the end of year 9999.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    (0..=LAST_DATE_MS).prop_map(Timestamp::from_millis)
}

/// Any [`Duration`] (arithmetic on timestamps saturates, so every value is usable).
pub fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => (0..=Duration::from_minutes(60 * 24 * 365).as_millis()).prop_map(Duration::from_millis),
        1 => any::<u64>().prop_map(Duration::from_millis),
    ]
}

/// A job's in-progress timeout: 1 minute to [`MAX_TIMEOUT_MINUTES`], in milliseconds.
pub fn in_progress_timeout() -> impl Strategy<Value = Duration> {
    (Duration::from_minutes(1).as_millis()
        ..=Duration::from_minutes(MAX_TIMEOUT_MINUTES).as_millis())
        .prop_map(Duration::from_millis)
}

/// A command's time to live: [`MIN_TTL`] to [`MAX_TTL`].
pub fn command_ttl() -> impl Strategy<Value = Duration> {
    (MIN_TTL.as_millis()..=MAX_TTL.as_millis()).prop_map(Duration::from_millis)
}

/// A TTL `decide` refuses: under [`MIN_TTL`] or over [`MAX_TTL`].
pub fn invalid_command_ttl() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0..MIN_TTL.as_millis()).prop_map(Duration::from_millis),
        (MAX_TTL.as_millis() + 1..=u64::MAX).prop_map(Duration::from_millis),
    ]
}

/// A valid step timer request: keep, clear, or 1 to [`MAX_TIMEOUT_MINUTES`] minutes.
pub fn step_timeout() -> impl Strategy<Value = StepTimeout> {
    prop_oneof![
        Just(StepTimeout::Keep),
        Just(StepTimeout::Clear),
        (1..=MAX_TIMEOUT_MINUTES).prop_map(StepTimeout::Minutes),
    ]
}

/// A step timer `decide` refuses: 0 minutes or more than [`MAX_TIMEOUT_MINUTES`].
pub fn invalid_step_timeout() -> impl Strategy<Value = StepTimeout> {
    prop_oneof![
        Just(StepTimeout::Minutes(0)),
        (MAX_TIMEOUT_MINUTES + 1..=u64::MAX).prop_map(StepTimeout::Minutes),
    ]
}

// ---- text and JSON --------------------------------------------------------------------------

/// Any text of at most `max_chars` characters (any Unicode), mostly short.
pub fn text_up_to(max_chars: usize) -> impl Strategy<Value = String> {
    let chars = |max: usize| vec(any::<char>(), 0..=max).prop_map(String::from_iter);
    prop_oneof![4 => chars(max_chars.min(16)), 1 => chars(max_chars)]
}

/// Text of more than `max_chars` characters (up to 64 more), for the limits counted in
/// characters.
pub fn text_longer_than(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), max_chars + 1..=max_chars + 64).prop_map(String::from_iter)
}

/// A valid command `action`: 1 to [`MAX_COMMAND_ACTION_LEN`] characters.
pub fn command_action() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(any::<char>(), 1..=16).prop_map(String::from_iter),
        1 => vec(any::<char>(), 1..=MAX_COMMAND_ACTION_LEN).prop_map(String::from_iter),
    ]
}

/// An `action` `decide` refuses: empty or over [`MAX_COMMAND_ACTION_LEN`] characters.
pub fn invalid_command_action() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        text_longer_than(MAX_COMMAND_ACTION_LEN)
    ]
}

/// A device's `statusReason` or a cancel reason: at most [`MAX_REASON_LEN`] characters.
pub fn reason() -> impl Strategy<Value = String> {
    text_up_to(MAX_REASON_LEN)
}

/// A job or group description: at most [`MAX_DESCRIPTION_LEN`] characters.
pub fn description() -> impl Strategy<Value = String> {
    text_up_to(MAX_DESCRIPTION_LEN)
}

/// A job name: 1 to [`MAX_JOB_NAME_LEN`] characters, none of them a control character.
pub fn job_name() -> impl Strategy<Value = String> {
    regex(&format!("[a-zA-Z0-9 ._()éü-]{{1,{MAX_JOB_NAME_LEN}}}"))
}

/// An operator's cancel comment: at most [`MAX_COMMENT_LEN`] characters.
pub fn comment() -> impl Strategy<Value = String> {
    text_up_to(MAX_COMMENT_LEN)
}

/// Any JSON value of depth at most 3 (a few KiB at most). Numbers are integers or finite
/// floats; the core reads floats back exactly.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        text_up_to(24).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text_up_to(8), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An optional JSON value that is never `Some(null)`: serde writes `Some(null)` and `None`
/// alike, so a stored or transported `Some(null)` reads back as `None`.
pub fn optional_json() -> impl Strategy<Value = Option<Value>> {
    option::of(json_value().prop_filter("not null", |v| !v.is_null()))
}

/// A valid job document: a JSON object of at most [`MAX_JOB_DOCUMENT_BYTES`].
pub fn job_document() -> impl Strategy<Value = Value> {
    btree_map(text_up_to(12), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
        .prop_filter("within the document limit", |d| {
            json_len(d) <= MAX_JOB_DOCUMENT_BYTES
        })
}

/// A job document `decide` refuses for its size: an object over [`MAX_JOB_DOCUMENT_BYTES`].
pub fn oversized_job_document() -> impl Strategy<Value = Value> {
    (job_document(), 0..2048usize).prop_map(|(mut doc, extra)| {
        if let Value::Object(m) = &mut doc {
            m.insert(
                "padding".into(),
                Value::String("p".repeat(MAX_JOB_DOCUMENT_BYTES + extra)),
            );
        }
        doc
    })
}

/// A job document `decide` refuses for its shape: any JSON but an object.
pub fn non_object_job_document() -> impl Strategy<Value = Value> {
    json_value().prop_filter("not an object", |v| !v.is_object())
}

/// Valid command `params`: any JSON of at most [`MAX_COMMAND_PARAMS_BYTES`].
pub fn command_params() -> impl Strategy<Value = Value> {
    json_value().prop_filter("within the params limit", |p| {
        json_len(p) <= MAX_COMMAND_PARAMS_BYTES
    })
}

/// Command `params` `decide` refuses: JSON over [`MAX_COMMAND_PARAMS_BYTES`].
pub fn oversized_command_params() -> impl Strategy<Value = Value> {
    (json_value(), 0..2048usize).prop_map(|(v, extra)| {
        serde_json::json!({ "value": v, "padding": "p".repeat(MAX_COMMAND_PARAMS_BYTES + extra) })
    })
}

/// Valid `statusDetails`: at most [`MAX_STATUS_DETAILS_KEYS`] keys, at most
/// [`MAX_STATUS_DETAILS_BYTES`] of keys and values, values of at most
/// [`MAX_DETAIL_VALUE_LEN`] characters.
pub fn status_details() -> impl Strategy<Value = StatusDetails> {
    let value = || prop_oneof![8 => text_up_to(24), 1 => text_up_to(MAX_DETAIL_VALUE_LEN)];
    let pairs = || (status_detail_key(), value());
    prop_oneof![
        3 => vec(pairs(), 0..=4),
        1 => vec(pairs(), 0..=MAX_STATUS_DETAILS_KEYS),
    ]
    .prop_map(|pairs| {
        // Keep entries while they fit the byte budget; later duplicates of a key are dropped.
        let mut details = StatusDetails::new();
        let mut bytes = 0;
        for (k, v) in pairs {
            let len = k.as_str().len() + v.len();
            if details.contains_key(&k) || bytes + len > MAX_STATUS_DETAILS_BYTES {
                continue;
            }
            bytes += len;
            details.insert(k, v);
        }
        details
    })
}

/// `statusDetails` `decide` refuses: too many keys, too many bytes, or a value too long.
pub fn invalid_status_details() -> impl Strategy<Value = StatusDetails> {
    let key = |i: usize| StatusDetailKey::parse(&format!("k{i}")).expect("valid key");
    prop_oneof![
        // More keys than allowed, each small.
        (
            MAX_STATUS_DETAILS_KEYS + 1..=MAX_STATUS_DETAILS_KEYS + 16,
            text_up_to(8)
        )
            .prop_map(move |(n, v)| {
                (0..n)
                    .map(|i| (key(i), v.clone()))
                    .collect::<StatusDetails>()
            }),
        // Few enough keys, values within their length, but over the byte budget in all.
        (
            MAX_STATUS_DETAILS_BYTES / MAX_DETAIL_VALUE_LEN + 1..=MAX_STATUS_DETAILS_KEYS,
            MAX_DETAIL_VALUE_LEN - 8..=MAX_DETAIL_VALUE_LEN,
        )
            .prop_map(move |(n, len)| {
                (0..n)
                    .map(|i| (key(i), "v".repeat(len)))
                    .collect::<StatusDetails>()
            }),
        // One value over its length.
        (
            status_details(),
            status_detail_key(),
            text_longer_than(MAX_DETAIL_VALUE_LEN)
        )
            .prop_map(|(mut d, k, v)| {
                d.insert(k, v);
                d
            }),
    ]
}

// ---- job config -----------------------------------------------------------------------------

/// Non-empty [`Targets`]: a few things and groups, at least one of either.
pub fn targets() -> impl Strategy<Value = Targets> {
    prop_oneof![
        (vec(thing_name(), 1..4), vec(group_name(), 0..3)),
        (vec(thing_name(), 0..4), vec(group_name(), 1..3)),
    ]
    .prop_map(|(things, groups)| Targets { things, groups })
}

/// Either [`TargetSelection`].
pub fn target_selection() -> impl Strategy<Value = TargetSelection> {
    select(vec![TargetSelection::Snapshot, TargetSelection::Continuous])
}

fn rate() -> impl Strategy<Value = u32> {
    prop_oneof![3 => 1..=1000u32, 1 => 1..=MAX_RATE_PER_MINUTE]
}

/// A valid [`IncreaseCriterion`]: a step of at least 1.
pub fn increase_criterion() -> impl Strategy<Value = IncreaseCriterion> {
    prop_oneof![
        (1..=u32::MAX).prop_map(IncreaseCriterion::NotifiedThings),
        (1..=u32::MAX).prop_map(IncreaseCriterion::SucceededThings),
    ]
}

/// A valid [`Rollout`]: rates 1 to [`MAX_RATE_PER_MINUTE`], factor 1.1 to 5.0, maximum at
/// least the base.
pub fn rollout() -> impl Strategy<Value = Rollout> {
    prop_oneof![
        Just(Rollout::Unlimited),
        rate().prop_map(|per_minute| Rollout::Fixed { per_minute }),
        (rate(), rate(), 1.1f64..=5.0, increase_criterion()).prop_map(
            |(a, b, factor, criterion)| {
                Rollout::Exponential {
                    base_per_minute: a.min(b),
                    factor,
                    criterion,
                    max_per_minute: a.max(b),
                }
            }
        ),
    ]
}

/// Any [`FailureType`].
pub fn failure_type() -> impl Strategy<Value = FailureType> {
    select(vec![
        FailureType::Failed,
        FailureType::Rejected,
        FailureType::TimedOut,
        FailureType::All,
    ])
}

/// A valid [`AbortCriterion`]: at least one execution, a threshold of 0 to 100 percent.
pub fn abort_criterion() -> impl Strategy<Value = AbortCriterion> {
    (failure_type(), 1..=u32::MAX, 0.0f64..=100.0).prop_map(
        |(failure_type, min_executed, threshold_percent)| AbortCriterion {
            failure_type,
            min_executed,
            threshold_percent,
        },
    )
}

/// A valid [`RetryCriterion`]: not `REJECTED`, 1 to [`MAX_ATTEMPTS`]` - 1` retries.
pub fn retry_criterion() -> impl Strategy<Value = RetryCriterion> {
    (
        select(vec![
            FailureType::Failed,
            FailureType::TimedOut,
            FailureType::All,
        ]),
        1..MAX_ATTEMPTS,
    )
        .prop_map(|(failure_type, number_of_retries)| RetryCriterion {
            failure_type,
            number_of_retries,
        })
}

/// Any [`EndBehavior`].
pub fn end_behavior() -> impl Strategy<Value = EndBehavior> {
    select(vec![
        EndBehavior::StopRollout,
        EndBehavior::Cancel,
        EndBehavior::ForceCancel,
    ])
}

/// A [`Schedule`] valid at `now`: any start time (a past one starts the job at once), an end
/// time after both `now` and the start time.
pub fn schedule(now: Timestamp) -> impl Strategy<Value = Schedule> {
    let span = || 0..=Duration::from_minutes(60 * 24 * 365).as_millis();
    (
        option::of((any::<bool>(), span())),
        option::of(span()),
        end_behavior(),
    )
        .prop_map(move |(start, end, end_behavior)| {
            let start_time = start.map(|(ahead, ms)| {
                let d = Duration::from_millis(ms);
                if ahead {
                    now + d
                } else {
                    Timestamp::from_millis(now.as_millis().saturating_sub(ms))
                }
            });
            let base = start_time.map_or(now, |s| s.max(now));
            // After `base`; none when `base` is the end of time.
            let end_time = end
                .map(|ms| base + Duration::from_millis(ms.saturating_add(1)))
                .filter(|e| *e > base);
            Schedule {
                start_time,
                end_time,
                end_behavior,
            }
        })
}

/// A [`JobConfig`] that passes [`JobConfig::validate`] at `now`.
pub fn job_config(now: Timestamp) -> impl Strategy<Value = JobConfig> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        (
            option::of(in_progress_timeout()),
            rollout(),
            vec(abort_criterion(), 0..3),
            vec(retry_criterion(), 0..3),
            schedule(now),
        )
            .prop_map(
                |(in_progress_timeout, rollout, abort, retry, schedule)| JobConfig {
                    in_progress_timeout,
                    rollout,
                    abort,
                    retry,
                    schedule,
                    stages: Vec::new(),
                    maintenance_windows: Vec::new(),
                },
            )
    };
    strategy.boxed()
}

/// A [`JobConfig`] that [`JobConfig::validate`] refuses at `now`: a valid one with exactly
/// one option pushed out of its range.
pub fn invalid_job_config(now: Timestamp) -> impl Strategy<Value = JobConfig> {
    let over_minutes = Duration::from_minutes(MAX_TIMEOUT_MINUTES).as_millis() + 1;
    // Two groups: `prop_oneof!` takes at most ten unboxed arms.
    let rollout_or_timeout = prop_oneof![
        (0..Duration::from_minutes(1).as_millis())
            .prop_map(|ms| Breakage::Timeout(Duration::from_millis(ms))),
        (over_minutes..=u64::MAX).prop_map(|ms| Breakage::Timeout(Duration::from_millis(ms))),
        prop_oneof![Just(0), MAX_RATE_PER_MINUTE + 1..=u32::MAX].prop_map(Breakage::FixedRate),
        (2..=MAX_RATE_PER_MINUTE).prop_map(Breakage::MaxBelowBase),
        prop_oneof![
            -1e9f64..1.1,
            (5.0f64..1e9).prop_filter("above 5", |f| *f > 5.0),
            Just(f64::NAN)
        ]
        .prop_map(Breakage::Factor),
        Just(Breakage::ZeroStep),
    ];
    let rules_or_schedule = prop_oneof![
        prop_oneof![
            -1e9f64..0.0,
            (100.0f64..1e9).prop_filter("above 100", |f| *f > 100.0),
            Just(f64::NAN)
        ]
        .prop_map(Breakage::Threshold),
        Just(Breakage::ZeroMinExecuted),
        Just(Breakage::RetryRejected),
        prop_oneof![Just(0), MAX_ATTEMPTS..=u32::MAX].prop_map(Breakage::Retries),
        (0..=now.as_millis().min(LAST_DATE_MS)).prop_map(Breakage::EndNotAhead),
        any::<u64>().prop_map(Breakage::EndBeforeStart),
    ];
    let breakage = prop_oneof![rollout_or_timeout, rules_or_schedule];
    (job_config(now), breakage).prop_map(move |(mut config, breakage)| {
        breakage.apply(&mut config, now);
        config
    })
}

/// One way to push a valid config out of range.
#[derive(Debug, Clone)]
enum Breakage {
    Timeout(Duration),
    FixedRate(u32),
    MaxBelowBase(u32),
    Factor(f64),
    ZeroStep,
    Threshold(f64),
    ZeroMinExecuted,
    RetryRejected,
    Retries(u32),
    EndNotAhead(u64),
    EndBeforeStart(u64),
}

impl Breakage {
    fn apply(self, c: &mut JobConfig, now: Timestamp) {
        let exponential = |factor, criterion, base, max| Rollout::Exponential {
            base_per_minute: base,
            factor,
            criterion,
            max_per_minute: max,
        };
        let abort = AbortCriterion {
            failure_type: FailureType::All,
            min_executed: 1,
            threshold_percent: 50.0,
        };
        match self {
            Self::Timeout(d) => c.in_progress_timeout = Some(d),
            Self::FixedRate(per_minute) => c.rollout = Rollout::Fixed { per_minute },
            Self::MaxBelowBase(base) => {
                c.rollout = exponential(2.0, IncreaseCriterion::NotifiedThings(1), base, base - 1);
            }
            Self::Factor(f) => {
                c.rollout = exponential(f, IncreaseCriterion::NotifiedThings(1), 1, 1);
            }
            Self::ZeroStep => {
                c.rollout = exponential(2.0, IncreaseCriterion::SucceededThings(0), 1, 1);
            }
            Self::Threshold(threshold_percent) => c.abort.push(AbortCriterion {
                threshold_percent,
                ..abort
            }),
            Self::ZeroMinExecuted => c.abort.push(AbortCriterion {
                min_executed: 0,
                ..abort
            }),
            Self::RetryRejected => c.retry.push(RetryCriterion {
                failure_type: FailureType::Rejected,
                number_of_retries: 1,
            }),
            Self::Retries(number_of_retries) => c.retry.push(RetryCriterion {
                failure_type: FailureType::Failed,
                number_of_retries,
            }),
            Self::EndNotAhead(ms) => {
                c.schedule.end_time = Some(Timestamp::from_millis(ms.min(now.as_millis())))
            }
            Self::EndBeforeStart(back) => {
                // Start ahead of `now` when possible, end between `now` (excluded) and start.
                let start = now + Duration::from_minutes(60);
                if start > now {
                    let room = start.as_millis() - now.as_millis();
                    let end = start.as_millis() - back % room;
                    c.schedule.start_time = Some(start);
                    c.schedule.end_time = Some(Timestamp::from_millis(end));
                } else {
                    c.schedule.end_time = Some(now);
                }
            }
        }
    }
}

// ---- events ---------------------------------------------------------------------------------

/// Any [`EndReason`].
pub fn end_reason() -> impl Strategy<Value = EndReason> {
    select(vec![
        EndReason::Operator,
        EndReason::JobCanceled,
        EndReason::JobAborted,
        EndReason::JobEnded,
        EndReason::LeftGroup,
    ])
}

/// A valid [`JobCancelReason`]: an operator comment within [`MAX_COMMENT_LEN`], an abort
/// with `failed <= executed` and at least one execution, or the end time.
pub fn job_cancel_reason() -> impl Strategy<Value = JobCancelReason> {
    prop_oneof![
        option::of(comment()).prop_map(|comment| JobCancelReason::Operator { comment }),
        (0..4usize, 1..=u64::from(u32::MAX), any::<u64>()).prop_map(|(criterion, executed, f)| {
            JobCancelReason::Aborted {
                criterion,
                failed: f % (executed + 1),
                executed,
            }
        }),
        Just(JobCancelReason::EndTime),
    ]
}

/// Either [`TimeoutCause`].
pub fn timeout_cause() -> impl Strategy<Value = TimeoutCause> {
    select(vec![TimeoutCause::InProgress, TimeoutCause::Step])
}

/// A [`StepTimer`] change; a set deadline is any timestamp.
pub fn step_timer() -> impl Strategy<Value = StepTimer> {
    prop_oneof![
        Just(StepTimer::Unchanged),
        timestamp().prop_map(StepTimer::Set),
        Just(StepTimer::Cleared),
    ]
}

/// A command execution event with valid fields.
pub fn command_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            execution_id(),
            thing_name(),
            option::of(command_id()),
            command_action(),
            command_params(),
            command_ttl(),
            timestamp(),
        )
            .prop_map(
                |(execution_id, thing, command_id, action, params, ttl, sent_at)| {
                    Event::CommandSent {
                        execution_id,
                        thing,
                        command_id,
                        action,
                        params,
                        ttl,
                        sent_at,
                    }
                }
            ),
        (
            command_response_status(),
            optional_json(),
            option::of(reason()),
            timestamp(),
        )
            .prop_map(
                |(status, result, status_reason, at)| Event::CommandResponded {
                    status,
                    result,
                    status_reason,
                    at,
                }
            ),
        timestamp().prop_map(|at| Event::CommandTimedOut { at }),
        (timestamp(), option::of(reason()))
            .prop_map(|(at, reason)| Event::CommandCanceled { at, reason }),
        (
            command_response_status(),
            optional_json(),
            option::of(reason()),
            timestamp(),
        )
            .prop_map(|(status, result, status_reason, at)| {
                Event::CommandResponseIgnored {
                    status,
                    result,
                    status_reason,
                    at,
                }
            }),
    ]
}

/// A valid thing attribute map, within the registry's limits.
pub fn thing_attributes() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
    proptest::collection::btree_map(regex("[a-zA-Z0-9_.:-]{1,16}"), regex("[ -~]{0,24}"), 0..6)
}

/// A thing event with valid fields.
pub fn thing_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            thing_name(),
            thing_attributes(),
            option::of(regex("[a-zA-Z0-9:_-]{1,16}")),
            option::of(regex("[a-zA-Z0-9:_.-]{1,16}")),
            timestamp(),
        )
            .prop_map(|(name, attributes, thing_type, client_id, at)| {
                Event::ThingRegistered {
                    name,
                    attributes,
                    thing_type,
                    client_id,
                    at,
                }
            }),
        timestamp().prop_map(|at| Event::ThingDeregistered { at }),
        (thing_name(), any::<bool>(), any::<u64>(), timestamp()).prop_map(
            |(name, online, stamp, at)| Event::ThingPresenceChanged {
                name,
                online,
                stamp,
                at,
            }
        ),
    ]
}

/// A job event with valid fields; a created job's config is valid at its creation time.
pub fn job_event() -> impl Strategy<Value = Event> {
    let created = timestamp().prop_flat_map(|created_at| {
        (
            job_id(),
            option::of(description()),
            targets(),
            target_selection(),
            job_document(),
            job_config(created_at),
            option::of(job_name()),
        )
            .prop_map(
                move |(job_id, description, targets, selection, document, config, name)| {
                    Event::JobCreated {
                        job_id,
                        name,
                        description,
                        targets,
                        selection,
                        document,
                        config,
                        created_at,
                    }
                },
            )
    });
    prop_oneof![
        created,
        timestamp().prop_map(|at| Event::JobStarted { at }),
        timestamp().prop_map(|at| Event::JobRolloutStopped { at }),
        timestamp().prop_map(|at| Event::JobCompleted { at }),
        (timestamp(), any::<bool>(), job_cancel_reason())
            .prop_map(|(at, force, reason)| Event::JobCanceled { at, force, reason }),
        timestamp().prop_map(|at| Event::JobDeleted { at }),
        (timestamp(), option::of(comment())).prop_map(|(at, comment)| Event::JobPaused {
            at,
            reason: crate::event::PauseReason::Operator { comment },
        }),
        (timestamp(), option::of(comment()))
            .prop_map(|(at, comment)| Event::JobResumed { at, comment }),
        timestamp()
            .prop_flat_map(|at| (Just(at), option::of(description()), job_config(at)))
            .prop_map(|(at, description, config)| Event::JobUpdated {
                at,
                description,
                config,
            })
            .boxed(),
        (timestamp(), 1..10u32, any::<bool>()).prop_map(|(at, stage, overridden)| {
            Event::JobStageAdvanced {
                at,
                stage,
                overridden,
            }
        }),
    ]
}

/// A job execution event with valid fields: a first attempt is number 1, a retry 2 to
/// [`MAX_ATTEMPTS`], a device finishes with `SUCCEEDED`, `FAILED` or `REJECTED`, an
/// in-progress deadline is at least the start.
pub fn job_execution_event() -> impl Strategy<Value = Event> {
    let finished = select(vec![
        JobExecutionStatus::Succeeded,
        JobExecutionStatus::Failed,
        JobExecutionStatus::Rejected,
    ]);
    prop_oneof![
        (
            job_id(),
            thing_name(),
            timestamp(),
            option::of(in_progress_timeout())
        )
            .prop_map(|(job_id, thing, queued_at, in_progress_timeout)| {
                Event::ExecutionQueued {
                    job_id,
                    thing,
                    execution_number: 1,
                    queued_at,
                    in_progress_timeout,
                }
            }),
        (
            timestamp(),
            option::of(status_details()),
            option::of(in_progress_timeout()),
            step_timer(),
        )
            .prop_map(
                |(at, status_details, timeout, step)| Event::ExecutionStarted {
                    at,
                    status_details,
                    in_progress_deadline: timeout.map(|t| at + t),
                    step,
                }
            ),
        (timestamp(), option::of(status_details()), step_timer()).prop_map(
            |(at, status_details, step)| Event::ExecutionProgressed {
                at,
                status_details,
                step,
            }
        ),
        (finished, timestamp(), option::of(status_details())).prop_map(
            |(status, at, status_details)| Event::ExecutionFinished {
                status,
                at,
                status_details,
            }
        ),
        (timestamp(), timeout_cause())
            .prop_map(|(at, cause)| Event::ExecutionTimedOut { at, cause }),
        (
            timestamp(),
            any::<bool>(),
            end_reason(),
            option::of(status_details())
        )
            .prop_map(
                |(at, forced, reason, status_details)| Event::ExecutionCanceled {
                    at,
                    forced,
                    reason,
                    status_details,
                }
            ),
        (timestamp(), any::<bool>(), end_reason())
            .prop_map(|(at, forced, reason)| { Event::ExecutionRemoved { at, forced, reason } }),
        (2..=MAX_ATTEMPTS, timestamp()).prop_map(|(execution_number, queued_at)| {
            Event::ExecutionRequeued {
                execution_number,
                queued_at,
            }
        }),
    ]
}

/// A group event with valid fields: member lists are non-empty, sorted and distinct, as
/// `decide` emits them.
pub fn group_event() -> impl Strategy<Value = Event> {
    let members = || btree_set(thing_name(), 1..6).prop_map(|s| s.into_iter().collect::<Vec<_>>());
    prop_oneof![
        (group_name(), option::of(description()), timestamp()).prop_map(
            |(name, description, at)| Event::GroupCreated {
                name,
                description,
                at,
            }
        ),
        (members(), timestamp()).prop_map(|(things, at)| Event::GroupMembersAdded { things, at }),
        (members(), timestamp()).prop_map(|(things, at)| Event::GroupMembersRemoved { things, at }),
        timestamp().prop_map(|at| Event::GroupDeleted { at }),
    ]
}

/// Any [`Scope`].
pub fn scope() -> impl Strategy<Value = Scope> {
    select(Scope::ALL.to_vec())
}

/// An API key event with valid fields: a name of 1 to [`MAX_KEY_NAME_LEN`] characters without
/// control characters, any scope and digest.
pub fn api_key_event() -> impl Strategy<Value = Event> {
    let name = regex(&format!("[a-zA-Z0-9 ._-]{{1,{MAX_KEY_NAME_LEN}}}"));
    prop_oneof![
        (api_key_id(), name, scope(), any::<[u8; 32]>(), timestamp()).prop_map(
            |(key_id, name, scope, digest, created_at)| Event::ApiKeyCreated {
                key_id,
                name,
                scope,
                secret_hash: SecretHash::from_bytes(digest),
                created_at,
            }
        ),
        timestamp().prop_map(|at| Event::ApiKeyRevoked { at }),
    ]
}

/// A command template event with valid fields: a payload whose one placeholder names its
/// one parameter.
pub fn command_template_event() -> impl Strategy<Value = Event> {
    let registered = (
        template_id(),
        regex("[a-z]{1,16}"),
        option::of(description()),
        regex("[a-z]{1,16}"),
        timestamp(),
    )
        .prop_map(|(command_id, action, description, param, at)| {
            Event::CommandTemplateRegistered {
                command_id,
                action,
                description,
                payload: serde_json::json!({ "value": format!("${{{param}}}") }),
                parameters: vec![ParameterSpec {
                    name: param,
                    kind: ParameterType::String,
                    required: true,
                    default: None,
                    minimum: None,
                    maximum: None,
                    max_length: Some(64),
                    allowed: vec![],
                }],
                at,
            }
        });
    prop_oneof![
        registered,
        timestamp().prop_map(|at| Event::CommandTemplateDeleted { at }),
    ]
}

/// Any [`Event`], every variant, with valid fields.
pub fn event() -> impl Strategy<Value = Event> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        prop_oneof![
            command_event(),
            job_event(),
            job_execution_event(),
            group_event(),
            api_key_event(),
            command_template_event(),
            thing_event(),
        ]
    };
    strategy.boxed()
}

// ---- device requests ------------------------------------------------------------------------

/// Either [`JobTarget`].
pub fn job_target() -> impl Strategy<Value = JobTarget> {
    prop_oneof![Just(JobTarget::Next), job_id().prop_map(JobTarget::Job)]
}

/// A valid update: a device-settable status, valid status details and step timer; the
/// version and attempt, when named, are any number.
pub fn update_request() -> impl Strategy<Value = UpdateRequest> {
    (
        device_settable_status(),
        option::of(status_details()),
        option::of(any::<u64>()),
        option::of(any::<u32>()),
        step_timeout(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(status, status_details, expected_version, execution_number, step_timeout, a, b)| {
                UpdateRequest {
                    status: Some(status),
                    status_details,
                    expected_version,
                    execution_number,
                    step_timeout,
                    include_job_execution_state: a,
                    include_job_document: b,
                }
            },
        )
}

/// A valid start-next request.
pub fn start_next_request() -> impl Strategy<Value = StartNextRequest> {
    (option::of(status_details()), step_timeout()).prop_map(|(status_details, step_timeout)| {
        StartNextRequest {
            status_details,
            step_timeout,
        }
    })
}

/// A describe request.
pub fn describe_request() -> impl Strategy<Value = DescribeRequest> {
    (job_target(), option::of(any::<u32>()), any::<bool>()).prop_map(
        |(job, execution_number, include_job_document)| DescribeRequest {
            job,
            execution_number,
            include_job_document,
        },
    )
}

/// A valid command response: `SUCCEEDED`, `FAILED` or `REJECTED`, any JSON result but
/// `null` (see [`optional_json`]), a reason
/// within [`MAX_REASON_LEN`].
pub fn command_response() -> impl Strategy<Value = CommandResponse> {
    (
        command_response_status(),
        optional_json(),
        option::of(reason()),
    )
        .prop_map(|(status, result, status_reason)| CommandResponse {
            status,
            result,
            status_reason,
        })
}

/// Any valid [`DeviceRequest`].
pub fn device_request() -> impl Strategy<Value = DeviceRequest> {
    prop_oneof![
        Just(DeviceRequest::GetPending),
        start_next_request().prop_map(DeviceRequest::StartNext),
        describe_request().prop_map(DeviceRequest::Describe),
        (job_id(), update_request())
            .prop_map(|(job_id, request)| DeviceRequest::Update { job_id, request }),
        (execution_id(), command_response()).prop_map(|(execution_id, response)| {
            DeviceRequest::CommandResponse {
                execution_id,
                response,
            }
        }),
    ]
}

/// Any [`Operation`].
pub fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        Just(Operation::GetPending),
        Just(Operation::StartNext),
        job_target().prop_map(Operation::Describe),
        job_id().prop_map(Operation::Update),
        execution_id().prop_map(Operation::CommandResponse),
    ]
}

/// A valid request as received: a thing, an optional client token of at most 64 characters,
/// a request.
pub fn inbound() -> impl Strategy<Value = Inbound> {
    (thing_name(), option::of(text_up_to(64)), device_request()).prop_map(
        |(thing, client_token, request)| Inbound {
            thing,
            client_token,
            request,
        },
    )
}

// ---- intents --------------------------------------------------------------------------------

/// Any valid [`JobExecutionIntent`]: device parts within their limits.
pub fn job_execution_intent() -> impl Strategy<Value = JobExecutionIntent> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        prop_oneof![
            (job_id(), thing_name(), option::of(in_progress_timeout())).prop_map(
                |(job_id, thing, in_progress_timeout)| JobExecutionIntent::Queue {
                    job_id,
                    thing,
                    in_progress_timeout,
                }
            ),
            update_request().prop_map(JobExecutionIntent::Update),
            (option::of(status_details()), step_timeout()).prop_map(
                |(status_details, step_timeout)| JobExecutionIntent::Start {
                    status_details,
                    step_timeout,
                }
            ),
            Just(JobExecutionIntent::CheckTimeout),
            (any::<bool>(), end_reason())
                .prop_map(|(force, reason)| JobExecutionIntent::Cancel { force, reason }),
            (any::<bool>(), end_reason())
                .prop_map(|(force, reason)| JobExecutionIntent::Remove { force, reason }),
            Just(JobExecutionIntent::Retry),
        ]
    };
    strategy.boxed()
}

/// Any valid [`CommandIntent`]: a send within every limit, a response with a device status.
pub fn command_intent() -> impl Strategy<Value = CommandIntent> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        prop_oneof![
            (
                execution_id(),
                thing_name(),
                option::of(command_id()),
                command_action(),
                command_params(),
                command_ttl(),
            )
                .prop_map(|(execution_id, thing, command_id, action, params, ttl)| {
                    CommandIntent::Send {
                        execution_id,
                        thing,
                        command_id,
                        action,
                        params,
                        ttl,
                    }
                }),
            command_response().prop_map(CommandIntent::Respond),
            Just(CommandIntent::CheckTimeout),
            option::of(reason()).prop_map(|reason| CommandIntent::Cancel { reason }),
            text_up_to(256).prop_map(|reason| CommandIntent::Undeliverable { reason }),
            command_response().prop_map(CommandIntent::RecordLate),
        ]
    };
    strategy.boxed()
}

/// Per-status execution counts, each below 2^32 (so sums never overflow).
pub fn job_counters() -> impl Strategy<Value = JobCounters> {
    let n = || prop_oneof![3 => 0..=20u64, 1 => 0..=u64::from(u32::MAX)];
    ((n(), n(), n(), n()), (n(), n(), n(), n())).prop_map(
        |((queued, in_progress, succeeded, failed), (rejected, timed_out, canceled, removed))| {
            JobCounters {
                queued,
                in_progress,
                succeeded,
                failed,
                rejected,
                timed_out,
                canceled,
                removed,
            }
        },
    )
}

/// Any valid [`JobIntent`] at `now`: a create's targets, description, document and config
/// pass every check `decide` makes at `now`.
pub fn job_intent(now: Timestamp) -> impl Strategy<Value = JobIntent> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        prop_oneof![
            (
                job_id(),
                option::of(description()),
                targets(),
                target_selection(),
                job_document(),
                job_config(now),
                option::of(job_name()),
            )
                .prop_map(
                    |(job_id, description, targets, selection, document, config, name)| {
                        JobIntent::Create {
                            job_id,
                            name,
                            description,
                            targets,
                            selection,
                            document,
                            config,
                        }
                    }
                ),
            (job_counters(), any::<bool>()).prop_map(|(counters, all_queued)| JobIntent::Review {
                counters,
                all_queued,
                stage: None,
            }),
            option::of(comment()).prop_map(|comment| JobIntent::Pause { comment }),
            option::of(comment()).prop_map(|comment| JobIntent::Resume { comment }),
            (any::<bool>(), option::of(comment()))
                .prop_map(|(force, comment)| JobIntent::Cancel { force, comment }),
            any::<bool>().prop_map(|force| JobIntent::Delete { force }),
        ]
    };
    strategy.boxed()
}

/// Any valid [`GroupIntent`]: a description within [`MAX_DESCRIPTION_LEN`], a few members
/// per change.
pub fn group_intent() -> impl Strategy<Value = GroupIntent> {
    // Boxed: the nested strategy types otherwise overflow a test thread's stack in debug builds.
    let strategy = {
        prop_oneof![
            (group_name(), option::of(description()))
                .prop_map(|(name, description)| GroupIntent::Create { name, description }),
            vec(thing_name(), 0..6).prop_map(GroupIntent::AddMembers),
            vec(thing_name(), 0..6).prop_map(GroupIntent::RemoveMembers),
            Just(GroupIntent::Delete),
        ]
    };
    strategy.boxed()
}
