//! The topic tree: where each message of the device protocol is published.
//!
//! Every topic a device uses sits under its own thing name, either
//! `{prefix}/things/{thing}/jobs/…` or `{prefix}/commands/things/{thing}/executions/…`, so one
//! broker pattern ACL per tree confines each device to its own topics. Status-change events
//! for operators go to `{prefix}/events/…`, which no device pattern reaches.

use std::fmt;

use fleetops_core::device::{JobTarget, Operation};
use fleetops_core::ids::{ExecutionId, JobId, ThingName};
use fleetops_core::status::JobExecutionStatus;

/// The three prefixes fleetops ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// `fleets/…`: the default, outside any reserved `$` namespace.
    Fleets,
    /// `$emqx/…`: the topics of EMQX Fleets.
    Emqx,
    /// `$aws/…`: the topics of the AWS IoT Jobs device MQTT API, and AWS IoT Commands'
    /// topics and bodies for commands (the payload format level `json` after `request` and
    /// `response`).
    Aws,
}

impl Preset {
    /// The topic prefix of this preset.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Fleets => "fleets",
            Self::Emqx => "$emqx",
            Self::Aws => "$aws",
        }
    }
}

/// Why a custom prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The prefix is empty.
    #[error("topic prefix must not be empty")]
    Empty,
    /// The prefix is longer than [`TopicLayout::MAX_PREFIX_LEN`].
    #[error("topic prefix is {len} bytes long, at most {max} are allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The prefix holds a wildcard, a NUL or a control character.
    #[error("topic prefix contains {found:?}, which is not allowed in a topic")]
    InvalidChar {
        /// The refused character.
        found: char,
    },
    /// The prefix starts or ends with `/` or holds an empty level (`a//b`).
    #[error("topic prefix {prefix:?} has an empty level")]
    EmptyLevel {
        /// The refused prefix.
        prefix: String,
    },
    /// `$share` is reserved for shared subscriptions and can not be a publish topic.
    #[error("topic prefix must not start with $share")]
    Reserved,
}

/// Where the device protocol lives: a prefix in front of the fixed topic tree.
///
/// ```
/// use fleetops_transport_mqtt::codec::TopicLayout;
/// let aws = TopicLayout::aws();
/// assert_eq!(aws.prefix(), "$aws");
/// assert_eq!(TopicLayout::default().prefix(), "fleets");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicLayout {
    prefix: String,
    /// Commands speak AWS IoT Commands: topics end in the payload format level `json`, and
    /// responses carry AWS's `statusReason` object and typed `result` values. Only the `$aws`
    /// preset does; a custom prefix keeps fleetops' own command topics and bodies.
    aws_commands: bool,
}

impl Default for TopicLayout {
    fn default() -> Self {
        Self::fleets()
    }
}

impl fmt::Display for TopicLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}

/// A reply or request operation as it appears in a topic, ids not yet validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOp<'a> {
    /// `jobs/get`.
    GetPending,
    /// `jobs/start-next`.
    StartNext,
    /// `jobs/{jobId}/get`, `$next` included.
    Describe(&'a str),
    /// `jobs/{jobId}/update`.
    Update(&'a str),
    /// `commands/things/{thing}/executions/{id}/response`.
    CommandResponse(&'a str),
}

/// What a topic under a [`TopicLayout`] names, with its levels borrowed and not yet validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRef<'a> {
    /// A request, device → service.
    Request {
        /// The thing name level.
        thing: &'a str,
        /// The operation.
        op: RequestOp<'a>,
    },
    /// An `accepted` or `rejected` reply, service → device.
    Reply {
        /// The thing name level.
        thing: &'a str,
        /// The operation answered.
        op: RequestOp<'a>,
        /// `accepted` (true) or `rejected` (false).
        accepted: bool,
    },
    /// `jobs/notify`, service → device.
    Notify {
        /// The thing name level.
        thing: &'a str,
    },
    /// `jobs/notify-next`, service → device.
    NotifyNext {
        /// The thing name level.
        thing: &'a str,
    },
    /// A command request, service → device.
    CommandRequest {
        /// The thing name level.
        thing: &'a str,
        /// The execution id level.
        execution: &'a str,
    },
    /// Inside a thing's jobs or commands tree, but no operation of the protocol.
    Unknown {
        /// The thing name level.
        thing: &'a str,
        /// Whether the last level is `accepted` or `rejected`: such a topic is never answered,
        /// so two services can never answer each other's refusals in a loop.
        reply_like: bool,
    },
}

const ACCEPTED: &str = "accepted";
/// The payload format level of AWS IoT Commands topics; JSON is the only format spoken.
const AWS_FORMAT: &str = "json";
const AWS_FORMAT_SUFFIX: &str = "/json";
const REJECTED: &str = "rejected";

fn outcome(level: &str) -> Option<bool> {
    match level {
        ACCEPTED => Some(true),
        REJECTED => Some(false),
        _ => None,
    }
}

impl TopicLayout {
    /// The longest accepted prefix, in bytes.
    pub const MAX_PREFIX_LEN: usize = 64;

    /// The `fleets` preset (the default).
    pub fn fleets() -> Self {
        Self::preset(Preset::Fleets)
    }

    /// The `$emqx` preset (EMQX Fleets topics).
    pub fn emqx() -> Self {
        Self::preset(Preset::Emqx)
    }

    /// The `$aws` preset (AWS IoT Jobs topics).
    pub fn aws() -> Self {
        Self::preset(Preset::Aws)
    }

    /// One of the shipped presets.
    pub fn preset(preset: Preset) -> Self {
        Self {
            prefix: preset.prefix().to_owned(),
            aws_commands: preset == Preset::Aws,
        }
    }

    /// A custom prefix: one or more non-empty topic levels without wildcards.
    pub fn custom(prefix: &str) -> Result<Self, LayoutError> {
        if prefix.is_empty() {
            return Err(LayoutError::Empty);
        }
        if prefix.len() > Self::MAX_PREFIX_LEN {
            return Err(LayoutError::TooLong {
                len: prefix.len(),
                max: Self::MAX_PREFIX_LEN,
            });
        }
        if let Some(found) = prefix
            .chars()
            .find(|c| matches!(c, '+' | '#' | '\0') || c.is_control())
        {
            return Err(LayoutError::InvalidChar { found });
        }
        if prefix.split('/').any(str::is_empty) {
            return Err(LayoutError::EmptyLevel {
                prefix: prefix.to_owned(),
            });
        }
        if prefix == "$share" || prefix.starts_with("$share/") {
            return Err(LayoutError::Reserved);
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            aws_commands: false,
        })
    }

    /// The prefix, e.g. `fleets` or `$aws`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether commands speak the AWS IoT Commands dialect (the `$aws` preset only).
    pub fn aws_commands(&self) -> bool {
        self.aws_commands
    }

    /// Classifies `topic`; `None` when it lies outside the protocol's two trees.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<TopicRef<'a>> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let levels: Vec<&'a str> = rest.split('/').collect();
        match levels.as_slice() {
            ["things", thing, "jobs", tail @ ..] => Some(Self::parse_jobs(thing, tail)),
            ["commands", "things", thing, "executions", tail @ ..] => Some(if self.aws_commands {
                Self::parse_aws_commands(thing, tail)
            } else {
                Self::parse_commands(thing, tail)
            }),
            _ => None,
        }
    }

    fn parse_jobs<'a>(thing: &'a str, tail: &[&'a str]) -> TopicRef<'a> {
        let op = |name: &'a str, job: Option<&'a str>| match (name, job) {
            ("get", None) => Some(RequestOp::GetPending),
            ("start-next", None) => Some(RequestOp::StartNext),
            ("get", Some(job)) => Some(RequestOp::Describe(job)),
            ("update", Some(job)) => Some(RequestOp::Update(job)),
            _ => None,
        };
        let found = match tail {
            ["notify"] => Some(TopicRef::Notify { thing }),
            ["notify-next"] => Some(TopicRef::NotifyNext { thing }),
            [name] => op(name, None).map(|op| TopicRef::Request { thing, op }),
            [name, last] if outcome(last).is_some() => op(name, None).map(|op| TopicRef::Reply {
                thing,
                op,
                accepted: outcome(last) == Some(true),
            }),
            [job, name] => op(name, Some(job)).map(|op| TopicRef::Request { thing, op }),
            [job, name, last] => outcome(last).and_then(|accepted| {
                op(name, Some(job)).map(|op| TopicRef::Reply {
                    thing,
                    op,
                    accepted,
                })
            }),
            _ => None,
        };
        found.unwrap_or_else(|| Self::unknown(thing, tail))
    }

    fn parse_commands<'a>(thing: &'a str, tail: &[&'a str]) -> TopicRef<'a> {
        let found = match tail {
            [id, "response"] => Some(TopicRef::Request {
                thing,
                op: RequestOp::CommandResponse(id),
            }),
            [id, "response", last] => outcome(last).map(|accepted| TopicRef::Reply {
                thing,
                op: RequestOp::CommandResponse(id),
                accepted,
            }),
            [id, "request"] => Some(TopicRef::CommandRequest {
                thing,
                execution: id,
            }),
            _ => None,
        };
        found.unwrap_or_else(|| Self::unknown(thing, tail))
    }

    /// AWS IoT Commands: every topic ends in the payload format level, after `accepted` or
    /// `rejected` for replies.
    fn parse_aws_commands<'a>(thing: &'a str, tail: &[&'a str]) -> TopicRef<'a> {
        let found = match tail {
            [id, "response", AWS_FORMAT] => Some(TopicRef::Request {
                thing,
                op: RequestOp::CommandResponse(id),
            }),
            [id, "response", last, AWS_FORMAT] => outcome(last).map(|accepted| TopicRef::Reply {
                thing,
                op: RequestOp::CommandResponse(id),
                accepted,
            }),
            [id, "request", AWS_FORMAT] => Some(TopicRef::CommandRequest {
                thing,
                execution: id,
            }),
            _ => None,
        };
        found.unwrap_or_else(|| Self::unknown(thing, tail))
    }

    fn unknown<'a>(thing: &'a str, tail: &[&'a str]) -> TopicRef<'a> {
        // `…/rejected/json` is reply-like too: AWS puts the format level after the outcome.
        let reply_like = match tail {
            [.., last] if outcome(last).is_some() => true,
            [.., outcome_level, AWS_FORMAT] => outcome(outcome_level).is_some(),
            _ => false,
        };
        TopicRef::Unknown { thing, reply_like }
    }

    fn jobs(&self, thing: &ThingName) -> String {
        format!("{}/things/{thing}/jobs", self.prefix)
    }

    fn execution(&self, thing: &ThingName, id: &ExecutionId) -> String {
        format!("{}/commands/things/{thing}/executions/{id}", self.prefix)
    }

    /// The topic a device publishes `operation` to.
    pub fn request_topic(&self, thing: &ThingName, operation: &Operation) -> String {
        match operation {
            Operation::GetPending => format!("{}/get", self.jobs(thing)),
            Operation::StartNext => format!("{}/start-next", self.jobs(thing)),
            Operation::Describe(JobTarget::Next) => format!("{}/$next/get", self.jobs(thing)),
            Operation::Describe(JobTarget::Job(job)) => format!("{}/{job}/get", self.jobs(thing)),
            Operation::Update(job) => format!("{}/{job}/update", self.jobs(thing)),
            Operation::CommandResponse(id) => self.command_response_topic(thing, id),
        }
    }

    /// The topic the answer to `operation` is published to: the request topic followed by
    /// `/accepted` or `/rejected` (AWS IoT Commands: before the format level,
    /// `…/response/accepted/json`).
    pub fn reply_topic(&self, thing: &ThingName, operation: &Operation, accepted: bool) -> String {
        self.outcome_topic(&self.request_topic(thing, operation), accepted)
    }

    /// The reply topic of a request published on `topic`, which may be any topic inside the
    /// protocol's trees (a refusal answers unknown topics too).
    pub fn outcome_topic(&self, topic: &str, accepted: bool) -> String {
        let level = if accepted { ACCEPTED } else { REJECTED };
        let commands = topic
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("/commands/"));
        if self.aws_commands && commands {
            if let Some(base) = topic.strip_suffix(AWS_FORMAT_SUFFIX) {
                return format!("{base}/{level}{AWS_FORMAT_SUFFIX}");
            }
        }
        format!("{topic}/{level}")
    }

    /// `{p}/things/{thing}/jobs/notify`.
    pub fn notify_topic(&self, thing: &ThingName) -> String {
        format!("{}/notify", self.jobs(thing))
    }

    /// `{p}/things/{thing}/jobs/notify-next`.
    pub fn notify_next_topic(&self, thing: &ThingName) -> String {
        format!("{}/notify-next", self.jobs(thing))
    }

    /// `/json` with the AWS IoT Commands dialect, nothing otherwise.
    fn format_suffix(&self) -> &'static str {
        if self.aws_commands {
            AWS_FORMAT_SUFFIX
        } else {
            ""
        }
    }

    /// `{p}/commands/things/{thing}/executions/{id}/request` (`…/request/json` for `$aws`).
    pub fn command_request_topic(&self, thing: &ThingName, id: &ExecutionId) -> String {
        format!(
            "{}/request{}",
            self.execution(thing, id),
            self.format_suffix()
        )
    }

    /// `{p}/commands/things/{thing}/executions/{id}/response` (`…/response/json` for `$aws`).
    pub fn command_response_topic(&self, thing: &ThingName, id: &ExecutionId) -> String {
        format!(
            "{}/response{}",
            self.execution(thing, id),
            self.format_suffix()
        )
    }

    /// `{p}/events/jobExecution/{jobId}/{status}`, `status` in wire spelling (`SUCCEEDED`):
    /// where the service publishes job execution status changes for operators and embedding
    /// services. Outside the things' trees, so the device ACL patterns never reach it.
    pub fn job_execution_event_topic(&self, job: &JobId, status: JobExecutionStatus) -> String {
        format!(
            "{}/events/jobExecution/{job}/{}",
            self.prefix,
            status.as_str()
        )
    }

    /// `{p}/events/commandExecution/{commandId}/{status}`, `status` as AWS IoT Commands spells
    /// it (`SUCCEEDED`, `CREATED`): where a service speaking AWS IoT Commands publishes
    /// command execution status changes. Refuses a command id that is not one topic level.
    pub fn command_execution_event_topic(
        &self,
        command_id: &str,
        status: &str,
    ) -> Result<String, String> {
        if command_id.is_empty()
            || command_id
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#' | '\0') || c.is_control())
        {
            return Err("must be one non-empty topic level without wildcards".into());
        }
        Ok(format!(
            "{}/events/commandExecution/{command_id}/{status}",
            self.prefix
        ))
    }

    /// `{p}/events/jobExecution/#`: every job execution status change (backend users only).
    pub fn job_execution_events_filter(&self) -> String {
        format!("{}/events/jobExecution/#", self.prefix)
    }

    /// The filters the service subscribes to.
    ///
    /// With `catch_all`, a `#` filter covers the jobs tree, so requests on topics that name
    /// no operation reach the service and are answered `InvalidTopic` (the commands tree gets
    /// its response filter only, see below); they must be subscribed
    /// with MQTT 5 No Local, or the service would receive its own replies. Without it, one
    /// filter per request topic. Both spell the first level out: `#` and `+` never match a
    /// first level starting with `$`, so `+/things/…` would miss `$aws/things/…`.
    pub fn service_filters(&self, catch_all: bool) -> Vec<String> {
        let p = &self.prefix;
        let f = self.format_suffix();
        if catch_all {
            // The commands tree is not caught whole: a subscription of the service's own
            // that matches command request topics would count as a subscriber there, and the
            // broker could never say that nobody listens for a command (PUBACK 0x10).
            vec![
                format!("{p}/things/+/jobs/#"),
                format!("{p}/commands/things/+/executions/+/response{f}"),
            ]
        } else {
            vec![
                format!("{p}/things/+/jobs/get"),
                format!("{p}/things/+/jobs/start-next"),
                format!("{p}/things/+/jobs/+/get"),
                format!("{p}/things/+/jobs/+/update"),
                format!("{p}/commands/things/+/executions/+/response{f}"),
            ]
        }
    }

    /// The filters a device subscribes to: its notifications, its replies and its command
    /// requests, and nothing it publishes itself.
    pub fn device_filters(&self, thing: &ThingName) -> Vec<String> {
        let jobs = self.jobs(thing);
        let commands = format!("{}/commands/things/{thing}/executions", self.prefix);
        let f = self.format_suffix();
        vec![
            format!("{jobs}/notify"),
            format!("{jobs}/notify-next"),
            format!("{jobs}/get/+"),
            format!("{jobs}/start-next/+"),
            format!("{jobs}/+/get/+"),
            format!("{jobs}/+/update/+"),
            format!("{commands}/+/request{f}"),
            format!("{commands}/+/response/+{f}"),
        ]
    }

    /// The mosquitto ACL lines that confine each device (client id = thing name) to its own
    /// topics.
    pub fn acl_patterns(&self) -> [String; 2] {
        let p = &self.prefix;
        [
            format!("pattern readwrite {p}/things/%c/#"),
            format!("pattern readwrite {p}/commands/things/%c/#"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thing() -> ThingName {
        ThingName::parse("t-1").unwrap()
    }

    #[test]
    fn presets_and_custom_prefixes() {
        assert_eq!(TopicLayout::emqx().prefix(), "$emqx");
        assert_eq!(TopicLayout::custom("a/b").unwrap().prefix(), "a/b");
        assert_eq!(TopicLayout::custom(""), Err(LayoutError::Empty));
        assert!(matches!(
            TopicLayout::custom("a/+"),
            Err(LayoutError::InvalidChar { found: '+' })
        ));
        assert!(matches!(
            TopicLayout::custom("a//b"),
            Err(LayoutError::EmptyLevel { .. })
        ));
        assert!(matches!(
            TopicLayout::custom("/a"),
            Err(LayoutError::EmptyLevel { .. })
        ));
        assert_eq!(TopicLayout::custom("$share/g"), Err(LayoutError::Reserved));
        assert!(TopicLayout::custom(&"a".repeat(65)).is_err());
    }

    #[test]
    fn every_topic_round_trips_through_parse() {
        let l = TopicLayout::aws();
        let t = thing();
        let job = fleetops_core::JobId::parse("j1").unwrap();
        let id = ExecutionId::parse("e1").unwrap();
        let cases = [
            (Operation::GetPending, RequestOp::GetPending),
            (Operation::StartNext, RequestOp::StartNext),
            (
                Operation::Describe(JobTarget::Next),
                RequestOp::Describe("$next"),
            ),
            (
                Operation::Describe(JobTarget::Job(job.clone())),
                RequestOp::Describe("j1"),
            ),
            (Operation::Update(job), RequestOp::Update("j1")),
            (
                Operation::CommandResponse(id.clone()),
                RequestOp::CommandResponse("e1"),
            ),
        ];
        for (operation, op) in cases {
            let topic = l.request_topic(&t, &operation);
            assert_eq!(
                l.parse(&topic),
                Some(TopicRef::Request { thing: "t-1", op }),
                "{topic}"
            );
            for accepted in [true, false] {
                let topic = l.reply_topic(&t, &operation, accepted);
                assert_eq!(
                    l.parse(&topic),
                    Some(TopicRef::Reply {
                        thing: "t-1",
                        op,
                        accepted
                    }),
                    "{topic}"
                );
            }
        }
        assert_eq!(
            l.parse(&l.notify_topic(&t)),
            Some(TopicRef::Notify { thing: "t-1" })
        );
        assert_eq!(
            l.parse(&l.notify_next_topic(&t)),
            Some(TopicRef::NotifyNext { thing: "t-1" })
        );
        assert_eq!(
            l.parse(&l.command_request_topic(&t, &id)),
            Some(TopicRef::CommandRequest {
                thing: "t-1",
                execution: "e1"
            })
        );
    }

    #[test]
    fn exact_topic_strings() {
        let l = TopicLayout::fleets();
        let t = thing();
        assert_eq!(
            l.reply_topic(&t, &Operation::Describe(JobTarget::Next), true),
            "fleets/things/t-1/jobs/$next/get/accepted"
        );
        assert_eq!(
            l.command_request_topic(&t, &ExecutionId::parse("e").unwrap()),
            "fleets/commands/things/t-1/executions/e/request"
        );
        assert_eq!(l.acl_patterns()[0], "pattern readwrite fleets/things/%c/#");
        let job = JobId::parse("fw-2").unwrap();
        assert_eq!(
            l.job_execution_event_topic(&job, JobExecutionStatus::TimedOut),
            "fleets/events/jobExecution/fw-2/TIMED_OUT"
        );
        assert_eq!(
            l.job_execution_events_filter(),
            "fleets/events/jobExecution/#"
        );
        // Neither a request nor anything a device is sent.
        assert_eq!(l.parse("fleets/events/jobExecution/fw-2/SUCCEEDED"), None);
    }

    #[test]
    fn unknown_and_foreign_topics() {
        let l = TopicLayout::fleets();
        assert_eq!(l.parse("other/things/t/jobs/get"), None);
        assert_eq!(l.parse("fleets"), None);
        assert_eq!(l.parse("fleetsx/things/t/jobs/get"), None);
        assert_eq!(l.parse("fleets/things/t"), None);
        assert_eq!(
            l.parse("fleets/things/t/jobs"),
            Some(TopicRef::Unknown {
                thing: "t",
                reply_like: false
            })
        );
        assert_eq!(
            l.parse("fleets/things/t/jobs/j/delete"),
            Some(TopicRef::Unknown {
                thing: "t",
                reply_like: false
            })
        );
        assert_eq!(
            l.parse("fleets/things/t/jobs/rejected"),
            Some(TopicRef::Unknown {
                thing: "t",
                reply_like: true
            })
        );
        assert_eq!(
            l.parse("fleets/things/t/jobs/a/b/c/accepted"),
            Some(TopicRef::Unknown {
                thing: "t",
                reply_like: true
            })
        );
        // A job may be called `get`: the level count disambiguates.
        assert_eq!(
            l.parse("fleets/things/t/jobs/get/get"),
            Some(TopicRef::Request {
                thing: "t",
                op: RequestOp::Describe("get")
            })
        );
        assert_eq!(
            l.parse("fleets/commands/things/t/executions/e/other"),
            Some(TopicRef::Unknown {
                thing: "t",
                reply_like: false
            })
        );
    }
}
