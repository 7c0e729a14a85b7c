//! The JSON shapes of the wire messages: camelCase fields, timestamps in epoch seconds.
//!
//! Outgoing shapes borrow from core's values (`…Out`); incoming shapes own validated values
//! (`…In`). Device requests are not here: the service decodes them field by field in
//! `request.rs` so every refusal names the offending field.

use fleetops_core::device::{ExecutionSummary, ExecutionView, PendingJobs};
use fleetops_core::event::StatusDetails;
use fleetops_core::ids::{JobId, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::rejection::ErrorCode;
use fleetops_core::status::JobExecutionStatus;
use fleetops_core::time::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Deserializes a present field as `Some`, even when it is `null`: for fields holding arbitrary
/// JSON (job documents, command results) `null` is a value, not an absence.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn secs(t: Timestamp) -> u64 {
    t.as_secs()
}

/// `JobExecutionSummary`, outgoing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SummaryOut<'a> {
    job_id: &'a str,
    queued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<u64>,
    last_updated_at: u64,
    version_number: u64,
    execution_number: u32,
}

impl<'a> From<&'a ExecutionSummary> for SummaryOut<'a> {
    fn from(s: &'a ExecutionSummary) -> Self {
        Self {
            job_id: s.job_id.as_str(),
            queued_at: secs(s.queued_at),
            started_at: s.started_at.map(secs),
            last_updated_at: secs(s.last_updated_at),
            version_number: s.version_number,
            execution_number: s.execution_number,
        }
    }
}

pub(crate) fn summaries(list: &[ExecutionSummary]) -> Vec<SummaryOut<'_>> {
    list.iter().map(SummaryOut::from).collect()
}

/// `JobExecutionSummary`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SummaryIn {
    job_id: JobId,
    queued_at: u64,
    #[serde(default)]
    started_at: Option<u64>,
    last_updated_at: u64,
    version_number: u64,
    execution_number: u32,
}

impl From<SummaryIn> for ExecutionSummary {
    fn from(s: SummaryIn) -> Self {
        Self {
            job_id: s.job_id,
            queued_at: Timestamp::from_secs(s.queued_at),
            started_at: s.started_at.map(Timestamp::from_secs),
            last_updated_at: Timestamp::from_secs(s.last_updated_at),
            version_number: s.version_number,
            execution_number: s.execution_number,
        }
    }
}

/// `JobExecution`, outgoing.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionOut<'a> {
    job_id: &'a str,
    thing_name: &'a str,
    status: JobExecutionStatus,
    #[serde(skip_serializing_if = "StatusDetails::is_empty")]
    status_details: &'a StatusDetails,
    queued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<u64>,
    last_updated_at: u64,
    version_number: u64,
    execution_number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_document: Option<&'a Value>,
}

impl<'a> From<&'a ExecutionView> for ExecutionOut<'a> {
    fn from(v: &'a ExecutionView) -> Self {
        Self {
            job_id: v.job_id.as_str(),
            thing_name: v.thing_name.as_str(),
            status: v.status,
            status_details: &v.status_details,
            queued_at: secs(v.queued_at),
            started_at: v.started_at.map(secs),
            last_updated_at: secs(v.last_updated_at),
            version_number: v.version_number,
            execution_number: v.execution_number,
            job_document: v.job_document.as_ref(),
        }
    }
}

/// A job execution status change, outgoing (`{p}/events/jobExecution/{jobId}/{status}`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusChangeOut<'a> {
    pub job_id: &'a str,
    pub thing_name: &'a str,
    pub status: JobExecutionStatus,
    pub execution_number: u32,
    pub version_number: u64,
    pub timestamp: u64,
}

/// A command execution status event, outgoing
/// (`$aws/events/commandExecution/{commandId}/{status}`), after AWS IoT Commands' event
/// message: thing name and command id instead of ARNs, `timestamp` in epoch milliseconds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandStatusChangeOut<'a> {
    pub execution_id: &'a str,
    pub command_id: &'a str,
    pub thing_name: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<AwsReasonOut<'a>>,
    pub event_type: &'static str,
    pub timestamp: u64,
}

/// `JobExecution`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionIn {
    job_id: JobId,
    thing_name: ThingName,
    status: JobExecutionStatus,
    #[serde(default)]
    status_details: StatusDetails,
    queued_at: u64,
    #[serde(default)]
    started_at: Option<u64>,
    last_updated_at: u64,
    version_number: u64,
    execution_number: u32,
    #[serde(default, deserialize_with = "present")]
    job_document: Option<Value>,
}

impl From<ExecutionIn> for ExecutionView {
    fn from(e: ExecutionIn) -> Self {
        Self {
            job_id: e.job_id,
            thing_name: e.thing_name,
            status: e.status,
            status_details: e.status_details,
            queued_at: Timestamp::from_secs(e.queued_at),
            started_at: e.started_at.map(Timestamp::from_secs),
            last_updated_at: Timestamp::from_secs(e.last_updated_at),
            version_number: e.version_number,
            execution_number: e.execution_number,
            job_document: e.job_document,
        }
    }
}

/// `get/accepted`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PendingOut<'a> {
    pub in_progress_jobs: Vec<SummaryOut<'a>>,
    pub queued_jobs: Vec<SummaryOut<'a>>,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `get/accepted`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PendingIn {
    #[serde(default)]
    in_progress_jobs: Vec<SummaryIn>,
    #[serde(default)]
    queued_jobs: Vec<SummaryIn>,
    pub timestamp: u64,
    #[serde(default)]
    pub client_token: Option<String>,
}

impl PendingIn {
    pub fn jobs(self) -> PendingJobs {
        PendingJobs {
            in_progress: self.in_progress_jobs.into_iter().map(Into::into).collect(),
            queued: self.queued_jobs.into_iter().map(Into::into).collect(),
        }
    }
}

/// `start-next/accepted`, `{jobId}/get/accepted` and `notify-next`: `{execution?, timestamp}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionReplyOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution: Option<ExecutionOut<'a>>,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `start-next/accepted`, `{jobId}/get/accepted` and `notify-next`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionReplyIn {
    #[serde(default)]
    pub execution: Option<ExecutionIn>,
    pub timestamp: u64,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `update/accepted`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_state: Option<&'a ExecutionState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_document: Option<&'a Value>,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `update/accepted`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateIn {
    #[serde(default)]
    pub execution_state: Option<ExecutionState>,
    #[serde(default, deserialize_with = "present")]
    pub job_document: Option<Value>,
    pub timestamp: u64,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// `response/accepted`: nothing but the echo.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AckOut<'a> {
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `response/accepted`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AckIn {
    pub timestamp: u64,
    #[serde(default)]
    pub client_token: Option<String>,
}

/// Every `…/rejected`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RejectedOut<'a> {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_state: Option<&'a ExecutionState>,
}

/// Every `…/rejected`, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RejectedIn {
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub client_token: Option<String>,
    pub timestamp: u64,
    #[serde(default)]
    pub execution_state: Option<ExecutionState>,
}

/// The `jobs` object of `notify`: lists keyed by status, empty ones left out.
#[derive(Serialize)]
pub(crate) struct JobsOut<'a> {
    #[serde(rename = "IN_PROGRESS", skip_serializing_if = "Vec::is_empty")]
    pub in_progress: Vec<SummaryOut<'a>>,
    #[serde(rename = "QUEUED", skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<SummaryOut<'a>>,
}

/// `notify`.
#[derive(Serialize)]
pub(crate) struct NotifyOut<'a> {
    pub jobs: JobsOut<'a>,
    pub timestamp: u64,
}

#[derive(Deserialize, Default)]
struct JobsIn {
    #[serde(rename = "IN_PROGRESS", default)]
    in_progress: Vec<SummaryIn>,
    #[serde(rename = "QUEUED", default)]
    queued: Vec<SummaryIn>,
}

/// `notify`, incoming.
#[derive(Deserialize)]
pub(crate) struct NotifyIn {
    #[serde(default)]
    jobs: JobsIn,
    pub timestamp: u64,
}

impl NotifyIn {
    pub fn jobs(self) -> PendingJobs {
        PendingJobs {
            in_progress: self.jobs.in_progress.into_iter().map(Into::into).collect(),
            queued: self.jobs.queued.into_iter().map(Into::into).collect(),
        }
    }
}

/// A command request (EMQX Fleets shape).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandRequestOut<'a> {
    /// The execution id, in the body too with the AWS IoT Commands dialect (AWS devices
    /// read it from the topic or the body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<&'a str>,
    pub action: &'a str,
    pub params: &'a Value,
    pub timestamp: u64,
    /// Seconds, rounded up.
    pub ttl: u64,
}

/// A command request, incoming.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandRequestIn {
    #[serde(default)]
    pub command_id: Option<String>,
    pub action: String,
    #[serde(default)]
    pub params: Value,
    pub timestamp: u64,
    pub ttl: u64,
}

/// The longest AWS `reasonCode`, in bytes.
pub(crate) const MAX_REASON_CODE: usize = 64;

/// An AWS IoT Commands `statusReason`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AwsReasonOut<'a> {
    reason_code: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason_description: &'a str,
}

/// The reason code a device SDK sends when its reason text starts with none.
const DEVICE_REASON_CODE: &str = "DEVICE_REASON";

/// Splits reason text back into AWS's object: `CODE: description` (as the service folds it)
/// or a bare `CODE` keep their code; any other text becomes the description of
/// [`DEVICE_REASON_CODE`].
pub(crate) fn aws_reason(text: &str) -> AwsReasonOut<'_> {
    let is_code = |c: &str| {
        !c.is_empty()
            && c.len() <= MAX_REASON_CODE
            && c.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_' || ch == '-')
    };
    match text.split_once(": ") {
        Some((code, description)) if is_code(code) => AwsReasonOut {
            reason_code: code,
            reason_description: description,
        },
        _ if is_code(text) => AwsReasonOut {
            reason_code: text,
            reason_description: "",
        },
        _ => AwsReasonOut {
            reason_code: DEVICE_REASON_CODE,
            reason_description: text,
        },
    }
}
