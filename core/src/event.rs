//! Every event fleetops stores, with a stable type tag and a schema version.
//!
//! Events are facts: they carry the values a decision produced (deadlines already computed,
//! statuses already chosen), so applying them needs no logic. The JSON form is the storage
//! format: the `type` tag and field names are frozen by golden tests in `tests/golden.rs`;
//! a change of meaning gets a new schema version and an upcaster, never a silent rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{Scope, SecretHash};
use crate::config::{JobConfig, TargetSelection, Targets};
use crate::ids::{ApiKeyId, CommandId, ExecutionId, GroupName, JobId, ThingName};
use crate::status::{CommandStatus, JobExecutionStatus};
use crate::template::ParameterSpec;
use crate::time::{Duration, Timestamp};

// Defined with the statuses, below refusals, which carry it too; kept reachable here.
pub use crate::status::StatusDetails;

/// The schema version every event kind is written with today.
pub const SCHEMA_VERSION: u16 = 1;

/// Why a job execution was canceled or removed by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndReason {
    /// An operator canceled or deleted this execution.
    Operator,
    /// An operator canceled the job.
    JobCanceled,
    /// An abort rule canceled the job.
    JobAborted,
    /// The job's end time passed.
    JobEnded,
    /// The thing left the group of a continuous job.
    LeftGroup,
}

/// Why a job stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum JobCancelReason {
    /// An operator canceled it.
    #[serde(rename_all = "camelCase")]
    Operator {
        /// The operator's remark.
        comment: Option<String>,
    },
    /// An abort rule fired.
    #[serde(rename_all = "camelCase")]
    Aborted {
        /// The index of the rule in the job's abort list.
        criterion: usize,
        /// Failures of the rule's type when it fired.
        failed: u64,
        /// Terminal executions when it fired.
        executed: u64,
    },
    /// The end time passed with end behaviour `CANCEL` or `FORCE_CANCEL`.
    EndTime,
    /// A stage's error threshold with action `ABORT` was crossed.
    #[serde(rename_all = "camelCase")]
    StageAborted {
        /// The stage (0-based).
        stage: u32,
        /// The stage's failures of the threshold's type.
        failed: u64,
        /// The stage's terminal executions.
        executed: u64,
    },
}

/// Why a job paused its rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "camelCase")]
pub enum PauseReason {
    /// An operator paused it.
    #[serde(rename_all = "camelCase")]
    Operator {
        /// The operator's remark.
        comment: Option<String>,
    },
    /// A stage cannot reach its success gate any more.
    #[serde(rename_all = "camelCase")]
    StageGate {
        /// The stage (0-based).
        stage: u32,
        /// Its things that succeeded.
        succeeded: u64,
        /// Successes the gate needs.
        required: u64,
        /// Its things.
        size: u64,
    },
    /// A stage's error threshold with action `PAUSE` was crossed.
    #[serde(rename_all = "camelCase")]
    StageErrorThreshold {
        /// The stage (0-based).
        stage: u32,
        /// The stage's failures of the threshold's type.
        failed: u64,
        /// The stage's terminal executions.
        executed: u64,
    },
}

/// Which timer ended an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimeoutCause {
    /// The in-progress timer, started at `IN_PROGRESS`.
    InProgress,
    /// The step timer the device set with `stepTimeoutInMinutes`.
    Step,
}

/// A change to the step timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "deadline", rename_all = "camelCase")]
pub enum StepTimer {
    /// Keep whatever was set.
    Unchanged,
    /// Set or replace the deadline.
    Set(Timestamp),
    /// Remove the step timer.
    Cleared,
}

/// A stored fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    // ---- command execution ------------------------------------------------------------------
    /// A command was published to a thing; it times out at `sent_at + ttl`.
    #[serde(rename_all = "camelCase")]
    CommandSent {
        /// The execution.
        execution_id: ExecutionId,
        /// The device.
        thing: ThingName,
        /// An optional id of a command template.
        command_id: Option<String>,
        /// What to do.
        action: String,
        /// Arguments.
        params: Value,
        /// Time to live.
        ttl: Duration,
        /// When it was sent.
        sent_at: Timestamp,
    },
    /// The device answered.
    #[serde(rename_all = "camelCase")]
    CommandResponded {
        /// `SUCCEEDED`, `FAILED` or `REJECTED`.
        status: CommandStatus,
        /// The device's result.
        result: Option<Value>,
        /// The device's reason.
        status_reason: Option<String>,
        /// When the answer arrived.
        at: Timestamp,
    },
    /// The TTL passed without an answer.
    #[serde(rename_all = "camelCase")]
    CommandTimedOut {
        /// When the timer fired.
        at: Timestamp,
    },
    /// The backend canceled the command.
    #[serde(rename_all = "camelCase")]
    CommandCanceled {
        /// When.
        at: Timestamp,
        /// Why.
        reason: Option<String>,
    },

    // ---- job -----------------------------------------------------------------------------
    /// A job was created.
    #[serde(rename_all = "camelCase")]
    JobCreated {
        /// The job.
        job_id: JobId,
        /// A name for people; absent in jobs created before names existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Free text.
        description: Option<String>,
        /// Things and groups.
        targets: Targets,
        /// Snapshot or continuous.
        selection: TargetSelection,
        /// What the devices get.
        document: Value,
        /// Options.
        config: JobConfig,
        /// When.
        created_at: Timestamp,
    },
    /// The job began rolling out.
    #[serde(rename_all = "camelCase")]
    JobStarted {
        /// When.
        at: Timestamp,
    },
    /// The end time passed with `STOP_ROLLOUT`: no more executions are queued.
    #[serde(rename_all = "camelCase")]
    JobRolloutStopped {
        /// When.
        at: Timestamp,
    },
    /// Every execution of a snapshot job is terminal.
    #[serde(rename_all = "camelCase")]
    JobCompleted {
        /// When.
        at: Timestamp,
    },
    /// The job was canceled; `force` also ends in-progress executions.
    #[serde(rename_all = "camelCase")]
    JobCanceled {
        /// When.
        at: Timestamp,
        /// Whether in-progress executions are canceled too.
        force: bool,
        /// Who or what canceled it.
        reason: JobCancelReason,
    },
    /// The rollout paused: no executions or retries are queued until `JobResumed`.
    #[serde(rename_all = "camelCase")]
    JobPaused {
        /// When.
        at: Timestamp,
        /// Who or what paused it.
        reason: PauseReason,
    },
    /// An operator resumed a paused job.
    #[serde(rename_all = "camelCase")]
    JobResumed {
        /// When.
        at: Timestamp,
        /// The operator's remark.
        comment: Option<String>,
    },
    /// A staged job moved on to `stage` (0-based; the number of stages once every stage is
    /// through).
    #[serde(rename_all = "camelCase")]
    JobStageAdvanced {
        /// When.
        at: Timestamp,
        /// The new current stage.
        stage: u32,
        /// The previous stage's gate had failed and an operator resumed the job anyway.
        overridden: bool,
    },
    /// An operator changed a job's description or options; they apply from `at` on.
    #[serde(rename_all = "camelCase")]
    JobUpdated {
        /// When.
        at: Timestamp,
        /// The new description.
        description: Option<String>,
        /// The new options, whole.
        config: JobConfig,
    },
    /// The job was deleted: a tombstone; history stays.
    #[serde(rename_all = "camelCase")]
    JobDeleted {
        /// When.
        at: Timestamp,
    },

    // ---- job execution -------------------------------------------------------------------
    /// An attempt was queued for a thing (the first, or a retry).
    #[serde(rename_all = "camelCase")]
    ExecutionQueued {
        /// The job.
        job_id: JobId,
        /// The device.
        thing: ThingName,
        /// 1 for the first attempt, bumped per retry.
        execution_number: u32,
        /// When.
        queued_at: Timestamp,
        /// The job's in-progress timeout, copied so the execution decides alone.
        in_progress_timeout: Option<Duration>,
    },
    /// The device started the execution.
    #[serde(rename_all = "camelCase")]
    ExecutionStarted {
        /// When.
        at: Timestamp,
        /// New status details, if the device sent some.
        status_details: Option<StatusDetails>,
        /// `at + in-progress timeout`, if the job has one.
        in_progress_deadline: Option<Timestamp>,
        /// The step timer.
        step: StepTimer,
    },
    /// The device reported progress while `IN_PROGRESS`.
    #[serde(rename_all = "camelCase")]
    ExecutionProgressed {
        /// When.
        at: Timestamp,
        /// New status details, if the device sent some.
        status_details: Option<StatusDetails>,
        /// The step timer.
        step: StepTimer,
    },
    /// The device reported a terminal status.
    #[serde(rename_all = "camelCase")]
    ExecutionFinished {
        /// `SUCCEEDED`, `FAILED` or `REJECTED`.
        status: JobExecutionStatus,
        /// When.
        at: Timestamp,
        /// Final status details, if the device sent some.
        status_details: Option<StatusDetails>,
    },
    /// A timer expired while `IN_PROGRESS`.
    #[serde(rename_all = "camelCase")]
    ExecutionTimedOut {
        /// When the timer fired.
        at: Timestamp,
        /// Which timer.
        cause: TimeoutCause,
    },
    /// The service canceled the execution.
    #[serde(rename_all = "camelCase")]
    ExecutionCanceled {
        /// When.
        at: Timestamp,
        /// Whether it was `IN_PROGRESS` (only allowed with force).
        forced: bool,
        /// Why.
        reason: EndReason,
        /// The execution's status details after the operator's patch was merged in, when the
        /// operator gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status_details: Option<StatusDetails>,
    },
    /// The execution record was deleted.
    #[serde(rename_all = "camelCase")]
    ExecutionRemoved {
        /// When.
        at: Timestamp,
        /// Whether it was still pending (only allowed with force).
        forced: bool,
        /// Why.
        reason: EndReason,
    },
    /// A failed or timed-out attempt was queued again under a new execution number.
    #[serde(rename_all = "camelCase")]
    ExecutionRequeued {
        /// The new attempt's number.
        execution_number: u32,
        /// When.
        queued_at: Timestamp,
    },

    // ---- thing group ---------------------------------------------------------------------
    /// A thing group was created.
    #[serde(rename_all = "camelCase")]
    GroupCreated {
        /// The group.
        name: GroupName,
        /// Free text.
        description: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Things joined the group (only those not already members are listed).
    #[serde(rename_all = "camelCase")]
    GroupMembersAdded {
        /// The new members.
        things: Vec<ThingName>,
        /// When.
        at: Timestamp,
    },
    /// Things left the group (only actual members are listed).
    #[serde(rename_all = "camelCase")]
    GroupMembersRemoved {
        /// The former members.
        things: Vec<ThingName>,
        /// When.
        at: Timestamp,
    },
    /// The group was deleted.
    #[serde(rename_all = "camelCase")]
    GroupDeleted {
        /// When.
        at: Timestamp,
    },

    // ---- API key -------------------------------------------------------------------------
    /// An API key was created. Only the digest of its secret is stored.
    #[serde(rename_all = "camelCase")]
    ApiKeyCreated {
        /// The key.
        key_id: ApiKeyId,
        /// Who or what it is for.
        name: String,
        /// What it may do.
        scope: Scope,
        /// The digest of its secret.
        secret_hash: SecretHash,
        /// When.
        created_at: Timestamp,
    },
    /// The key was revoked.
    #[serde(rename_all = "camelCase")]
    ApiKeyRevoked {
        /// When.
        at: Timestamp,
    },

    // ---- command template ----------------------------------------------------------------
    /// A command was registered: its action, payload template and parameters.
    #[serde(rename_all = "camelCase")]
    CommandTemplateRegistered {
        /// The command.
        command_id: CommandId,
        /// The action devices get.
        action: String,
        /// Free text.
        description: Option<String>,
        /// The payload, with `${name}` placeholders.
        payload: Value,
        /// The declared parameters.
        parameters: Vec<ParameterSpec>,
        /// When.
        at: Timestamp,
    },
    /// The command was deleted; its id may be registered again.
    #[serde(rename_all = "camelCase")]
    CommandTemplateDeleted {
        /// When.
        at: Timestamp,
    },
    // ---- command execution, later additions ----------------------------------------------
    /// An answer arrived for a command that had already ended (late, or a duplicate). Kept
    /// for the audit trail; it changes no status.
    #[serde(rename_all = "camelCase")]
    CommandResponseIgnored {
        /// The status the device reported.
        status: CommandStatus,
        /// The device's result.
        result: Option<Value>,
        /// The device's reason.
        status_reason: Option<String>,
        /// When the answer arrived.
        at: Timestamp,
    },

    // ---- thing ---------------------------------------------------------------------------
    /// A thing was registered, or its record replaced (the whole record, every time).
    #[serde(rename_all = "camelCase")]
    ThingRegistered {
        /// The thing.
        name: ThingName,
        /// Its attributes.
        attributes: BTreeMap<String, String>,
        /// Its thing type name.
        thing_type: Option<String>,
        /// The MQTT client id it connects with, when not its name.
        client_id: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// The thing's registry record was removed (its presence is kept).
    #[serde(rename_all = "camelCase")]
    ThingDeregistered {
        /// When.
        at: Timestamp,
    },
    /// A presence source said the thing connected or disconnected.
    #[serde(rename_all = "camelCase")]
    ThingPresenceChanged {
        /// The thing.
        name: ThingName,
        /// Connected or not.
        online: bool,
        /// The source's ordering key, in milliseconds.
        stamp: u64,
        /// When the report was recorded.
        at: Timestamp,
    },
}

impl Event {
    /// The stable type tag, as stored in JSON.
    pub const fn type_name(&self) -> &'static str {
        match self {
            Self::CommandSent { .. } => "CommandSent",
            Self::CommandResponded { .. } => "CommandResponded",
            Self::CommandTimedOut { .. } => "CommandTimedOut",
            Self::CommandCanceled { .. } => "CommandCanceled",
            Self::JobCreated { .. } => "JobCreated",
            Self::JobStarted { .. } => "JobStarted",
            Self::JobRolloutStopped { .. } => "JobRolloutStopped",
            Self::JobCompleted { .. } => "JobCompleted",
            Self::JobCanceled { .. } => "JobCanceled",
            Self::JobDeleted { .. } => "JobDeleted",
            Self::JobPaused { .. } => "JobPaused",
            Self::JobResumed { .. } => "JobResumed",
            Self::JobStageAdvanced { .. } => "JobStageAdvanced",
            Self::JobUpdated { .. } => "JobUpdated",
            Self::ExecutionQueued { .. } => "ExecutionQueued",
            Self::ExecutionStarted { .. } => "ExecutionStarted",
            Self::ExecutionProgressed { .. } => "ExecutionProgressed",
            Self::ExecutionFinished { .. } => "ExecutionFinished",
            Self::ExecutionTimedOut { .. } => "ExecutionTimedOut",
            Self::ExecutionCanceled { .. } => "ExecutionCanceled",
            Self::ExecutionRemoved { .. } => "ExecutionRemoved",
            Self::ExecutionRequeued { .. } => "ExecutionRequeued",
            Self::GroupCreated { .. } => "GroupCreated",
            Self::GroupMembersAdded { .. } => "GroupMembersAdded",
            Self::GroupMembersRemoved { .. } => "GroupMembersRemoved",
            Self::GroupDeleted { .. } => "GroupDeleted",
            Self::ApiKeyCreated { .. } => "ApiKeyCreated",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            Self::CommandTemplateRegistered { .. } => "CommandTemplateRegistered",
            Self::CommandTemplateDeleted { .. } => "CommandTemplateDeleted",
            Self::CommandResponseIgnored { .. } => "CommandResponseIgnored",
            Self::ThingRegistered { .. } => "ThingRegistered",
            Self::ThingDeregistered { .. } => "ThingDeregistered",
            Self::ThingPresenceChanged { .. } => "ThingPresenceChanged",
        }
    }

    /// The schema version this kind is written with.
    pub const fn schema_version(&self) -> u16 {
        SCHEMA_VERSION
    }

    /// The job execution status this event leads to, if it is a job execution event.
    /// Projections use it to move counters without holding the aggregate.
    pub const fn execution_status(&self) -> Option<JobExecutionStatus> {
        use JobExecutionStatus as S;
        match self {
            Self::ExecutionQueued { .. } | Self::ExecutionRequeued { .. } => Some(S::Queued),
            Self::ExecutionStarted { .. } | Self::ExecutionProgressed { .. } => Some(S::InProgress),
            Self::ExecutionFinished { status, .. } => Some(*status),
            Self::ExecutionTimedOut { .. } => Some(S::TimedOut),
            Self::ExecutionCanceled { .. } => Some(S::Canceled),
            Self::ExecutionRemoved { .. } => Some(S::Removed),
            _ => None,
        }
    }
}

/// Why an event could not be applied: the history is corrupt or belongs to another aggregate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolveError {
    /// The event cannot follow the current state (e.g. a response before the command was sent).
    #[error("event {event} cannot follow status {state}")]
    OutOfOrder {
        /// The event's type tag.
        event: &'static str,
        /// The aggregate's status, or `none` before its first event.
        state: &'static str,
    },
    /// The event belongs to another aggregate type.
    #[error("event {event} does not belong to a {aggregate} stream")]
    Foreign {
        /// The event's type tag.
        event: &'static str,
        /// The aggregate that was replaying.
        aggregate: &'static str,
    },
}
