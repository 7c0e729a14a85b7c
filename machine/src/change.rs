//! Status changes as the fold reports them.

use fleetops_core::device::Outbound;
use fleetops_core::{CommandStatus, ExecutionId, JobExecutionStatus, JobId, ThingName, Timestamp};

/// A status change, as embedders see it.
///
/// Folded once per stored transition, in feed order, by [`ReadModel::apply`](crate::ReadModel::apply)
/// (the service offers them as `Fleet::status_changes`). Job execution changes are also
/// published as [`Outbound::StatusChange`](fleetops_core::device::Outbound::StatusChange)
/// when the runtime is configured to (MQTT: `{prefix}/events/jobExecution/{jobId}/{status}`);
/// command changes of commands with a command id as
/// [`Outbound::CommandStatusChange`](fleetops_core::device::Outbound::CommandStatusChange)
/// when configured to as well (MQTT `$aws` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusChange {
    /// A job execution reached a new status, or a new attempt was queued.
    JobExecution {
        /// The job.
        job_id: JobId,
        /// The device.
        thing: ThingName,
        /// The new status.
        status: JobExecutionStatus,
        /// The attempt.
        execution_number: u32,
        /// The execution's version after the change.
        version_number: u64,
        /// When it changed.
        at: Timestamp,
        /// The global position of the event that changed it.
        position: u64,
    },
    /// A command execution was sent or reached its terminal status.
    Command {
        /// The command execution.
        execution_id: ExecutionId,
        /// The device.
        thing: ThingName,
        /// The command id it was sent as, if any.
        command_id: Option<String>,
        /// The new status.
        status: CommandStatus,
        /// The reason stored with the change (a device's answer), if any.
        status_reason: Option<String>,
        /// When it changed.
        at: Timestamp,
        /// The global position of the event that changed it.
        position: u64,
    },
}

impl StatusChange {
    /// The message that publishes this change to whoever follows status events: job
    /// execution changes, and with `commands` the changes of commands that have a command id
    /// (the event topic names it; ad-hoc commands without one publish nothing).
    pub fn published(&self, commands: bool) -> Option<Outbound> {
        match self {
            StatusChange::JobExecution {
                job_id,
                thing,
                status,
                execution_number,
                version_number,
                at,
                ..
            } => Some(Outbound::StatusChange {
                job_id: job_id.clone(),
                thing: thing.clone(),
                status: *status,
                execution_number: *execution_number,
                version_number: *version_number,
                timestamp: *at,
            }),
            StatusChange::Command {
                execution_id,
                thing,
                command_id: Some(command_id),
                status,
                status_reason,
                at,
                ..
            } if commands => Some(Outbound::CommandStatusChange {
                execution_id: execution_id.clone(),
                command_id: command_id.clone(),
                thing: thing.clone(),
                status: *status,
                status_reason: status_reason.clone(),
                timestamp: *at,
            }),
            StatusChange::Command { .. } => None,
        }
    }
}
