//! The status sets of the three aggregates, with their wire names, and what a device is shown
//! of its execution's status ([`ExecutionState`], [`StatusDetails`]).
//!
//! These sit in the bottom layer (see the crate docs) because refusals, events, device
//! messages and the job execution aggregate all carry them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::StatusDetailKey;

/// A job execution's `statusDetails`: short strings keyed by validated names.
pub type StatusDetails = BTreeMap<StatusDetailKey, String>;

/// The state a device sees in replies and refusals (`executionState` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionState {
    /// Current status.
    pub status: JobExecutionStatus,
    /// Current status details.
    pub status_details: StatusDetails,
    /// Current version number.
    pub version_number: u64,
}

/// Status of a command execution. `SENT` is the only non-terminal one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    /// Published to the device; awaiting its response.
    Sent,
    /// The device answered with success.
    Succeeded,
    /// The device answered with a failure.
    Failed,
    /// The device refused the command.
    Rejected,
    /// No response arrived within the TTL.
    TimedOut,
    /// Canceled by the backend.
    Canceled,
}

impl CommandStatus {
    /// Every status, in declaration order (for exhaustive tests and tables).
    pub const ALL: [CommandStatus; 6] = [
        Self::Sent,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::TimedOut,
        Self::Canceled,
    ];

    /// The wire name, e.g. `TIMED_OUT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "SENT",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
            Self::TimedOut => "TIMED_OUT",
            Self::Canceled => "CANCELED",
        }
    }

    /// Whether no further transition is possible.
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Sent)
    }
}

/// Status of one job execution (one job on one thing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobExecutionStatus {
    /// Pending; waiting for the device to pick it up.
    Queued,
    /// The device has started it.
    InProgress,
    /// The device reported success.
    Succeeded,
    /// The device reported failure.
    Failed,
    /// The device refused the job.
    Rejected,
    /// The in-progress or step timer expired.
    TimedOut,
    /// Canceled by the service.
    Canceled,
    /// The execution record was deleted.
    Removed,
}

impl JobExecutionStatus {
    /// Every status, in declaration order.
    pub const ALL: [JobExecutionStatus; 8] = [
        Self::Queued,
        Self::InProgress,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::TimedOut,
        Self::Canceled,
        Self::Removed,
    ];

    /// The wire name, e.g. `IN_PROGRESS`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
            Self::TimedOut => "TIMED_OUT",
            Self::Canceled => "CANCELED",
            Self::Removed => "REMOVED",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the device is done with it (everything but `QUEUED` and `IN_PROGRESS`).
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }

    /// Whether it is still owed to the device (`QUEUED` or `IN_PROGRESS`).
    pub const fn is_pending(self) -> bool {
        !self.is_terminal()
    }

    /// The statuses a device may report in an update.
    pub const fn is_device_settable(self) -> bool {
        matches!(
            self,
            Self::InProgress | Self::Succeeded | Self::Failed | Self::Rejected
        )
    }
}

/// Status of a job as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Created with a start time still ahead.
    Scheduled,
    /// Rolling out or waiting for executions to finish.
    InProgress,
    /// A snapshot job whose executions are all terminal.
    Completed,
    /// Canceled by an operator, an abort rule or the end of its schedule.
    Canceled,
}

impl JobStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Canceled => "CANCELED",
        }
    }

    /// Whether the job can no longer change status.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Canceled)
    }
}
