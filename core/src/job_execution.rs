//! The job execution aggregate: one job on one thing.

use serde::{Deserialize, Serialize};

use crate::event::StatusDetails;
use crate::status::JobExecutionStatus;

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
