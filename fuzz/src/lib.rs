//! Input generators shared by the fuzz targets: `arbitrary` mirrors of the wire-facing core
//! types, turned into valid core values (ids are parsed, falling back to fixed valid ones).

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, ExecutionSummary, ExecutionView, JobTarget,
    Operation, Outbound, PendingJobs, Reply, StartNextRequest, StepTimeout, UpdateRequest,
};
use fleetops_core::event::StatusDetails;
use fleetops_core::ids::{ExecutionId, JobId, StatusDetailKey, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::rejection::Rejection;
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_core::time::{Duration, Timestamp};
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

fn pick<T>(
    u: &mut Unstructured<'_>,
    parse: impl Fn(&str) -> Option<T>,
    fallback: &str,
) -> arbitrary::Result<T> {
    let s: &str = u.arbitrary()?;
    Ok(parse(s).unwrap_or_else(|| parse(fallback).expect("fallback is valid")))
}

/// A valid thing name.
pub fn thing(u: &mut Unstructured<'_>) -> arbitrary::Result<ThingName> {
    pick(u, |s| ThingName::parse(s).ok(), "thing-1")
}

fn job(u: &mut Unstructured<'_>) -> arbitrary::Result<JobId> {
    pick(u, |s| JobId::parse(s).ok(), "job-1")
}

fn execution(u: &mut Unstructured<'_>) -> arbitrary::Result<ExecutionId> {
    pick(u, |s| ExecutionId::parse(s).ok(), "exec-1")
}

fn time(u: &mut Unstructured<'_>) -> arbitrary::Result<Timestamp> {
    Ok(Timestamp::from_millis(u.arbitrary()?))
}

/// JSON of bounded depth. Numbers are integers or dyadic fractions, which serde_json prints
/// and parses back exactly (arbitrary floats may move by one ULP in its default parser).
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

fn details(u: &mut Unstructured<'_>) -> arbitrary::Result<StatusDetails> {
    let n = u.int_in_range(0..=4)?;
    let mut d = BTreeMap::new();
    for _ in 0..n {
        let k = pick(u, |s| StatusDetailKey::parse(s).ok(), "step")?;
        d.insert(k, u.arbitrary()?);
    }
    Ok(d)
}

fn job_status(u: &mut Unstructured<'_>) -> arbitrary::Result<JobExecutionStatus> {
    Ok(*u.choose(&JobExecutionStatus::ALL)?)
}

fn step(u: &mut Unstructured<'_>) -> arbitrary::Result<StepTimeout> {
    Ok(match u.int_in_range(0..=2)? {
        0 => StepTimeout::Keep,
        1 => StepTimeout::Clear,
        _ => StepTimeout::Minutes(u.arbitrary()?),
    })
}

fn summary(u: &mut Unstructured<'_>) -> arbitrary::Result<ExecutionSummary> {
    Ok(ExecutionSummary {
        job_id: job(u)?,
        queued_at: time(u)?,
        started_at: if u.arbitrary()? { Some(time(u)?) } else { None },
        last_updated_at: time(u)?,
        version_number: u.arbitrary()?,
        execution_number: u.arbitrary()?,
    })
}

fn pending(u: &mut Unstructured<'_>) -> arbitrary::Result<PendingJobs> {
    let a = u.int_in_range(0..=3)?;
    let b = u.int_in_range(0..=3)?;
    Ok(PendingJobs {
        in_progress: (0..a).map(|_| summary(u)).collect::<Result<_, _>>()?,
        queued: (0..b).map(|_| summary(u)).collect::<Result<_, _>>()?,
    })
}

fn view(u: &mut Unstructured<'_>) -> arbitrary::Result<ExecutionView> {
    Ok(ExecutionView {
        job_id: job(u)?,
        thing_name: thing(u)?,
        status: job_status(u)?,
        status_details: details(u)?,
        queued_at: time(u)?,
        started_at: if u.arbitrary()? { Some(time(u)?) } else { None },
        last_updated_at: time(u)?,
        version_number: u.arbitrary()?,
        execution_number: u.arbitrary()?,
        job_document: if u.arbitrary()? {
            Some(json(u, 3)?)
        } else {
            None
        },
    })
}

fn state(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<Box<ExecutionState>>> {
    Ok(if u.arbitrary()? {
        Some(Box::new(ExecutionState {
            status: job_status(u)?,
            status_details: details(u)?,
            version_number: u.arbitrary()?,
        }))
    } else {
        None
    })
}

fn rejection(u: &mut Unstructured<'_>) -> arbitrary::Result<Rejection> {
    let name = |u: &mut Unstructured<'_>| -> arbitrary::Result<&'static str> {
        Ok(job_status(u)?.as_str())
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
            execution_state: state(u)?,
        },
        4 => Rejection::ResourceNotFound {
            kind: "job",
            id: u.arbitrary()?,
        },
        5 => Rejection::VersionMismatch {
            expected: u.arbitrary()?,
            actual: u.arbitrary()?,
            execution_state: state(u)?,
        },
        6 => Rejection::InternalError {
            detail: u.arbitrary()?,
        },
        7 => Rejection::RequestThrottled,
        _ => Rejection::TerminalStateReached {
            status: name(u)?,
            execution_state: state(u)?,
        },
    })
}

fn operation(u: &mut Unstructured<'_>) -> arbitrary::Result<Operation> {
    Ok(match u.int_in_range(0..=5)? {
        0 => Operation::GetPending,
        1 => Operation::StartNext,
        2 => Operation::Describe(JobTarget::Next),
        3 => Operation::Describe(JobTarget::Job(job(u)?)),
        4 => Operation::Update(job(u)?),
        _ => Operation::CommandResponse(execution(u)?),
    })
}

/// The body that answers `operation`.
fn reply_for(u: &mut Unstructured<'_>, operation: &Operation) -> arbitrary::Result<Reply> {
    Ok(match operation {
        Operation::GetPending => Reply::Pending(pending(u)?),
        Operation::StartNext => {
            Reply::StartNext(if u.arbitrary()? { Some(view(u)?) } else { None })
        }
        Operation::Describe(_) => Reply::Describe(view(u)?),
        Operation::Update(_) => Reply::Update {
            execution_state: state(u)?.map(|b| *b),
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
    let thing = thing(u)?;
    Ok(match u.int_in_range(0..=5)? {
        0 => {
            let operation = operation(u)?;
            let reply = reply_for(u, &operation)?;
            Outbound::Accepted {
                thing,
                operation,
                client_token: token(u)?,
                reply,
                timestamp: time(u)?,
            }
        }
        1 => Outbound::Rejected {
            thing,
            operation: operation(u)?,
            client_token: token(u)?,
            rejection: rejection(u)?,
            timestamp: time(u)?,
        },
        2 => Outbound::Notify {
            thing,
            jobs: pending(u)?,
            timestamp: time(u)?,
        },
        3 => Outbound::NotifyNext {
            thing,
            execution: if u.arbitrary()? { Some(view(u)?) } else { None },
            timestamp: time(u)?,
        },
        5 => Outbound::StatusChange {
            job_id: job(u)?,
            thing,
            status: job_status(u)?,
            execution_number: u.arbitrary()?,
            version_number: u.arbitrary()?,
            timestamp: time(u)?,
        },
        _ => Outbound::CommandRequest {
            thing,
            execution_id: execution(u)?,
            command_id: u.arbitrary()?,
            action: u.arbitrary()?,
            params: json(u, 3)?,
            timestamp: time(u)?,
            ttl: Duration::from_millis(u.arbitrary()?),
        },
    })
}

/// Any request a device may send; command responses carry a device-settable status.
pub fn device_request(u: &mut Unstructured<'_>) -> arbitrary::Result<DeviceRequest> {
    Ok(match u.int_in_range(0..=4)? {
        0 => DeviceRequest::GetPending,
        1 => DeviceRequest::StartNext(StartNextRequest {
            status_details: if u.arbitrary()? {
                Some(details(u)?)
            } else {
                None
            },
            step_timeout: step(u)?,
        }),
        2 => DeviceRequest::Describe(DescribeRequest {
            job: if u.arbitrary()? {
                JobTarget::Next
            } else {
                JobTarget::Job(job(u)?)
            },
            execution_number: u.arbitrary()?,
            include_job_document: u.arbitrary()?,
        }),
        3 => DeviceRequest::Update {
            job_id: job(u)?,
            request: UpdateRequest {
                status: if u.arbitrary()? {
                    Some(job_status(u)?)
                } else {
                    None
                },
                status_details: if u.arbitrary()? {
                    Some(details(u)?)
                } else {
                    None
                },
                expected_version: u.arbitrary()?,
                execution_number: u.arbitrary()?,
                step_timeout: step(u)?,
                include_job_execution_state: u.arbitrary()?,
                include_job_document: u.arbitrary()?,
            },
        },
        _ => DeviceRequest::CommandResponse {
            execution_id: execution(u)?,
            response: CommandResponse {
                status: *u.choose(&[
                    CommandStatus::Succeeded,
                    CommandStatus::Failed,
                    CommandStatus::Rejected,
                ])?,
                result: if u.arbitrary()? {
                    Some(json(u, 3)?)
                } else {
                    None
                },
                status_reason: u.arbitrary()?,
            },
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
