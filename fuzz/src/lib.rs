//! Input generators shared by the fuzz targets, for what fleetops-core's `arbitrary` feature
//! does not cover: transport settings, the messages the service hands the transport
//! (`Outbound`, with replies that answer their operation, and refusals), topic levels.
//! Every core value inside them (ids, statuses, times, requests, execution views) comes from
//! the core's own `Arbitrary` impls.

use arbitrary::{Arbitrary, Unstructured};
use fleetops_core::device::{Operation, Outbound, Reply};
use fleetops_core::ids::ThingName;
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::rejection::Rejection;
use fleetops_core::status::JobExecutionStatus;
use fleetops_core::time::Duration;
use fleetops_transport_mqtt::codec::{Limits, TopicLayout};
use serde_json::{Map, Value};

/// A topic layout: the presets, a custom prefix, or an arbitrary (possibly invalid) one.
pub fn layout(u: &mut Unstructured<'_>) -> arbitrary::Result<TopicLayout> {
    Ok(match u.int_in_range(0..=4)? {
        0 => TopicLayout::fleets(),
        1 => TopicLayout::emqx(),
        2 => TopicLayout::aws(),
        3 => TopicLayout::custom("acme/iot").expect("valid"),
        _ => TopicLayout::custom(u.arbitrary()?).unwrap_or_default(),
    })
}

/// Limits, small enough sometimes to exercise the size checks.
pub fn limits(u: &mut Unstructured<'_>) -> arbitrary::Result<Limits> {
    Ok(if u.arbitrary()? {
        Limits::default()
    } else {
        Limits {
            max_payload: u.int_in_range(0..=4096)?,
            max_client_token: u.int_in_range(0..=80)?,
        }
    })
}

/// JSON of bounded depth for the bodies of outbound messages (command params, an update
/// reply's document): any shape, `null` included, as the service may pass them through.
/// Numbers are integers or dyadic fractions, which print and parse back exactly.
pub fn json(u: &mut Unstructured<'_>, depth: u8) -> arbitrary::Result<Value> {
    let leaf_only = depth == 0;
    Ok(match u.int_in_range(0..=if leaf_only { 5 } else { 7 })? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(u.arbitrary::<u64>()?),
        4 => Value::from(f64::from(u.arbitrary::<i32>()?) / 64.0),
        5 => Value::String(u.arbitrary()?),
        6 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| json(u, depth - 1))
                    .collect::<Result<_, _>>()?,
            )
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

fn rejection(u: &mut Unstructured<'_>) -> arbitrary::Result<Rejection> {
    let name = |u: &mut Unstructured<'_>| -> arbitrary::Result<&'static str> {
        Ok(u.arbitrary::<JobExecutionStatus>()?.as_str())
    };
    Ok(match u.int_in_range(0..=8)? {
        0 => Rejection::InvalidTopic {
            topic: u.arbitrary()?,
        },
        1 => Rejection::InvalidJson {
            detail: u.arbitrary()?,
        },
        2 => Rejection::invalid("status", u.arbitrary::<String>()?),
        3 => Rejection::InvalidStateTransition {
            from: name(u)?,
            to: name(u)?,
            execution_state: u.arbitrary()?,
        },
        4 => Rejection::ResourceNotFound {
            kind: "job",
            id: u.arbitrary()?,
        },
        5 => Rejection::VersionMismatch {
            expected: u.arbitrary()?,
            actual: u.arbitrary()?,
            execution_state: u.arbitrary()?,
        },
        6 => Rejection::InternalError {
            detail: u.arbitrary()?,
        },
        7 => Rejection::RequestThrottled,
        _ => Rejection::TerminalStateReached {
            status: name(u)?,
            execution_state: u.arbitrary()?,
        },
    })
}

/// The body that answers `operation`.
fn reply_for(u: &mut Unstructured<'_>, operation: &Operation) -> arbitrary::Result<Reply> {
    Ok(match operation {
        Operation::GetPending => Reply::Pending(u.arbitrary()?),
        Operation::StartNext => Reply::StartNext(u.arbitrary()?),
        Operation::Describe(_) => Reply::Describe(u.arbitrary()?),
        Operation::Update(_) => Reply::Update {
            execution_state: u.arbitrary::<Option<ExecutionState>>()?,
            job_document: if u.arbitrary()? {
                Some(json(u, 3)?)
            } else {
                None
            },
        },
        Operation::CommandResponse(_) => Reply::CommandResponse,
    })
}

fn token(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<String>> {
    u.arbitrary()
}

/// Any message the service hands the transport: owed to a device (accepted replies answer
/// their operation) or a status change for operators.
pub fn outbound(u: &mut Unstructured<'_>) -> arbitrary::Result<Outbound> {
    let thing: ThingName = u.arbitrary()?;
    Ok(match u.int_in_range(0..=5)? {
        0 => {
            let operation: Operation = u.arbitrary()?;
            let reply = reply_for(u, &operation)?;
            Outbound::Accepted {
                thing,
                operation,
                client_token: token(u)?,
                reply,
                timestamp: u.arbitrary()?,
            }
        }
        1 => Outbound::Rejected {
            thing,
            operation: u.arbitrary()?,
            client_token: token(u)?,
            rejection: rejection(u)?,
            timestamp: u.arbitrary()?,
        },
        2 => Outbound::Notify {
            thing,
            jobs: u.arbitrary()?,
            timestamp: u.arbitrary()?,
        },
        3 => Outbound::NotifyNext {
            thing,
            execution: u.arbitrary()?,
            timestamp: u.arbitrary()?,
        },
        5 => Outbound::StatusChange {
            job_id: u.arbitrary()?,
            thing,
            status: u.arbitrary()?,
            execution_number: u.arbitrary()?,
            version_number: u.arbitrary()?,
            timestamp: u.arbitrary()?,
        },
        _ => Outbound::CommandRequest {
            thing,
            execution_id: u.arbitrary()?,
            command_id: u.arbitrary()?,
            action: u.arbitrary()?,
            params: json(u, 3)?,
            timestamp: u.arbitrary()?,
            ttl: Duration::from_millis(u.arbitrary()?),
        },
    })
}

/// Topic levels that steer the decoder into every branch, plus raw text.
#[derive(Arbitrary, Debug)]
pub enum Level<'a> {
    /// `things`
    Things,
    /// `jobs`
    Jobs,
    /// `commands`
    Commands,
    /// `executions`
    Executions,
    /// `get`
    Get,
    /// `start-next`
    StartNext,
    /// `update`
    Update,
    /// `$next`
    Next,
    /// `notify`
    Notify,
    /// `notify-next`
    NotifyNext,
    /// `request`
    Request,
    /// `response`
    Response,
    /// `accepted`
    Accepted,
    /// `rejected`
    Rejected,
    /// A valid thing-like name.
    Name,
    /// Anything.
    Raw(&'a str),
}

impl Level<'_> {
    /// The level's text.
    pub fn text(&self) -> &str {
        match self {
            Self::Things => "things",
            Self::Jobs => "jobs",
            Self::Commands => "commands",
            Self::Executions => "executions",
            Self::Get => "get",
            Self::StartNext => "start-next",
            Self::Update => "update",
            Self::Next => "$next",
            Self::Notify => "notify",
            Self::NotifyNext => "notify-next",
            Self::Request => "request",
            Self::Response => "response",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Name => "dev-1",
            Self::Raw(s) => s,
        }
    }
}
