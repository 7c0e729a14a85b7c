//! The device-facing operations as typed values: what a device asks and what it is told.
//!
//! These mirror the AWS IoT Jobs device MQTT API and EMQX Fleets' command topics, without any
//! wire format: `fleetops-transport-mqtt` maps topics and JSON onto these types and back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{ExecutionId, JobId, ThingName};
use crate::rejection::Rejection;
use crate::status::{CommandStatus, ExecutionState, JobExecutionStatus, StatusDetails};
use crate::time::{Duration, Timestamp};

/// Which job a describe request is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobTarget {
    /// `$next`: the next pending execution (in progress first, then oldest queued).
    Next,
    /// A named job.
    Job(JobId),
}

/// What an update or start-next does to the step timer (`stepTimeoutInMinutes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepTimeout {
    /// Field absent: keep the current step timer.
    #[default]
    Keep,
    /// Set or replace it, this many minutes from now (1 to 10,080).
    Minutes(u64),
    /// `-1`: clear it.
    Clear,
}

/// `…/jobs/{jobId}/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The new status; devices may set `IN_PROGRESS`, `SUCCEEDED`, `FAILED`, `REJECTED`.
    pub status: Option<JobExecutionStatus>,
    /// Replaces the status details when present.
    pub status_details: Option<StatusDetails>,
    /// Refuse with `VersionMismatch` unless the current version is this.
    pub expected_version: Option<u64>,
    /// Refuse with `ResourceNotFound` unless the current attempt has this number.
    pub execution_number: Option<u32>,
    /// The step timer.
    pub step_timeout: StepTimeout,
    /// Answer with the execution state.
    pub include_job_execution_state: bool,
    /// Answer with the job document.
    pub include_job_document: bool,
}

/// `…/jobs/start-next`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartNextRequest {
    /// Status details for the started execution.
    pub status_details: Option<StatusDetails>,
    /// The step timer.
    pub step_timeout: StepTimeout,
}

/// `…/jobs/{jobId}/get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribeRequest {
    /// The job or `$next`.
    pub job: JobTarget,
    /// A specific attempt; the current one when absent.
    pub execution_number: Option<u32>,
    /// Include the job document (default true).
    pub include_job_document: bool,
}

/// `…/commands/things/{thing}/executions/{id}/response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// `SUCCEEDED`, `FAILED` or `REJECTED`.
    pub status: CommandStatus,
    /// The device's result.
    pub result: Option<Value>,
    /// Why, in the device's words.
    pub status_reason: Option<String>,
}

/// A request from a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeviceRequest {
    /// `jobs/get`: list pending executions.
    GetPending,
    /// `jobs/start-next`.
    StartNext(StartNextRequest),
    /// `jobs/{jobId}/get`.
    Describe(DescribeRequest),
    /// `jobs/{jobId}/update`.
    Update {
        /// The job.
        job_id: JobId,
        /// The update.
        request: UpdateRequest,
    },
    /// A command response.
    CommandResponse {
        /// The command execution.
        execution_id: ExecutionId,
        /// The answer.
        response: CommandResponse,
    },
}

/// Which request a reply answers; it decides the reply topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// `jobs/get`.
    GetPending,
    /// `jobs/start-next`.
    StartNext,
    /// `jobs/{jobId}/get` (`$next` echoed as asked).
    Describe(JobTarget),
    /// `jobs/{jobId}/update`.
    Update(JobId),
    /// `commands/…/executions/{id}/response`.
    CommandResponse(ExecutionId),
}

impl DeviceRequest {
    /// The operation this request is, for addressing its reply.
    pub fn operation(&self) -> Operation {
        match self {
            Self::GetPending => Operation::GetPending,
            Self::StartNext(_) => Operation::StartNext,
            Self::Describe(d) => Operation::Describe(d.job.clone()),
            Self::Update { job_id, .. } => Operation::Update(job_id.clone()),
            Self::CommandResponse { execution_id, .. } => {
                Operation::CommandResponse(execution_id.clone())
            }
        }
    }
}

/// A request as received, with who sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    /// The device, from the topic.
    pub thing: ThingName,
    /// Echoed in the reply.
    pub client_token: Option<String>,
    /// What it asks.
    pub request: DeviceRequest,
}

/// A pending execution in a `notify` or `get` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionSummary {
    /// The job.
    pub job_id: JobId,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// When it started, if it did.
    pub started_at: Option<Timestamp>,
    /// Last change.
    pub last_updated_at: Timestamp,
    /// Version number.
    pub version_number: u64,
    /// Attempt number.
    pub execution_number: u32,
}

/// A whole execution, as `describe`, `start-next` and `notify-next` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionView {
    /// The job.
    pub job_id: JobId,
    /// The device.
    pub thing_name: ThingName,
    /// Status.
    pub status: JobExecutionStatus,
    /// Status details.
    pub status_details: StatusDetails,
    /// When the current attempt was queued.
    pub queued_at: Timestamp,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// Last change.
    pub last_updated_at: Timestamp,
    /// Version number.
    pub version_number: u64,
    /// Attempt number.
    pub execution_number: u32,
    /// The job document, when asked for.
    pub job_document: Option<Value>,
}

/// The pending executions of a thing, `IN_PROGRESS` first, then `QUEUED` by queue time.
///
/// The service lists at most [`MAX_PENDING_LISTED`](crate::limits::MAX_PENDING_LISTED) of
/// each kind, the first ones in queue order, so the message fits the payload bound however
/// many jobs are pending; a device learns of the rest as the first ones finish.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJobs {
    /// In-progress executions.
    pub in_progress: Vec<ExecutionSummary>,
    /// Queued executions, oldest first.
    pub queued: Vec<ExecutionSummary>,
}

/// The body of an accepted reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Answer to `jobs/get`.
    Pending(PendingJobs),
    /// Answer to `start-next`; `None` when nothing is pending.
    StartNext(Option<ExecutionView>),
    /// Answer to describe.
    Describe(ExecutionView),
    /// Answer to update.
    Update {
        /// When `includeJobExecutionState` was set.
        execution_state: Option<ExecutionState>,
        /// When `includeJobDocument` was set.
        job_document: Option<Value>,
    },
    /// A command response was recorded.
    CommandResponse,
}

/// A message the runtime hands to the transport: owed to a device, or (a status change) to
/// operators and embedding services.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// An accepted reply.
    Accepted {
        /// Addressee.
        thing: ThingName,
        /// What it answers.
        operation: Operation,
        /// Echoed token.
        client_token: Option<String>,
        /// Body.
        reply: Reply,
        /// When.
        timestamp: Timestamp,
    },
    /// A rejected reply.
    Rejected {
        /// Addressee.
        thing: ThingName,
        /// What it answers.
        operation: Operation,
        /// Echoed token.
        client_token: Option<String>,
        /// Why.
        rejection: Rejection,
        /// When.
        timestamp: Timestamp,
    },
    /// `jobs/notify`: the pending list changed.
    Notify {
        /// Addressee.
        thing: ThingName,
        /// The pending list (at most 10 entries in all).
        jobs: PendingJobs,
        /// When.
        timestamp: Timestamp,
    },
    /// `jobs/notify-next`: the next pending execution changed; `None` when none is left.
    NotifyNext {
        /// Addressee.
        thing: ThingName,
        /// The new next execution.
        execution: Option<ExecutionView>,
        /// When.
        timestamp: Timestamp,
    },
    /// A command request.
    CommandRequest {
        /// Addressee.
        thing: ThingName,
        /// The execution.
        execution_id: ExecutionId,
        /// Template id.
        command_id: Option<String>,
        /// What to do.
        action: String,
        /// Arguments.
        params: Value,
        /// When it was sent.
        timestamp: Timestamp,
        /// Remaining time to live (MQTT message expiry).
        ttl: Duration,
    },
    /// A job execution reached a new status, or a new attempt of it was queued: an event for
    /// operators and embedding services, not for the device. Transports publish it where
    /// devices do not read (MQTT: `{prefix}/events/jobExecution/{jobId}/{status}`).
    StatusChange {
        /// The job.
        job_id: JobId,
        /// The device the execution belongs to (not the addressee).
        thing: ThingName,
        /// The new status.
        status: JobExecutionStatus,
        /// The attempt.
        execution_number: u32,
        /// The execution's version after the change.
        version_number: u64,
        /// When it changed.
        timestamp: Timestamp,
    },
    /// A command execution sent as a registered (or ad-hoc, named) command reached a new
    /// status: an event for operators, not for the device. Only transports speaking AWS IoT
    /// Commands publish it (MQTT `$aws`: `$aws/events/commandExecution/{commandId}/{status}`).
    CommandStatusChange {
        /// The command execution.
        execution_id: ExecutionId,
        /// The command id it was sent as (`CommandSent.command_id`).
        command_id: String,
        /// The device the execution belongs to (not the addressee).
        thing: ThingName,
        /// The new status.
        status: CommandStatus,
        /// The device's or the service's reason, when there is one.
        status_reason: Option<String>,
        /// When it changed.
        timestamp: Timestamp,
    },
}

impl Outbound {
    /// The addressee; for a [`Outbound::StatusChange`], the thing it is about.
    pub fn thing(&self) -> &ThingName {
        match self {
            Self::Accepted { thing, .. }
            | Self::Rejected { thing, .. }
            | Self::Notify { thing, .. }
            | Self::NotifyNext { thing, .. }
            | Self::CommandRequest { thing, .. }
            | Self::StatusChange { thing, .. }
            | Self::CommandStatusChange { thing, .. } => thing,
        }
    }

    /// Whether the message goes to its thing (everything but the status change events).
    pub fn is_device_bound(&self) -> bool {
        !matches!(
            self,
            Self::StatusChange { .. } | Self::CommandStatusChange { .. }
        )
    }
}
