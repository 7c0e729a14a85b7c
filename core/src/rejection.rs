//! Why a decision was refused. Variants map one-to-one onto the wire error codes.

use serde::{Deserialize, Serialize};

use crate::status::ExecutionState;

/// The error codes of the device protocol (AWS IoT Jobs compatible).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The topic does not name a known operation.
    InvalidTopic,
    /// The payload is not valid JSON, or not the expected shape.
    InvalidJson,
    /// A field has a value the operation does not accept.
    InvalidRequest,
    /// The requested status cannot be reached from the current one.
    InvalidStateTransition,
    /// The job, execution or command does not exist.
    ResourceNotFound,
    /// `expectedVersion` differs from the current version.
    VersionMismatch,
    /// The service failed; the request may be retried.
    InternalError,
    /// The service is shedding load; retry later.
    RequestThrottled,
    /// The execution is already terminal.
    TerminalStateReached,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 9] = [
        Self::InvalidTopic,
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::InvalidStateTransition,
        Self::ResourceNotFound,
        Self::VersionMismatch,
        Self::InternalError,
        Self::RequestThrottled,
        Self::TerminalStateReached,
    ];

    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "InvalidTopic",
            Self::InvalidJson => "InvalidJson",
            Self::InvalidRequest => "InvalidRequest",
            Self::InvalidStateTransition => "InvalidStateTransition",
            Self::ResourceNotFound => "ResourceNotFound",
            Self::VersionMismatch => "VersionMismatch",
            Self::InternalError => "InternalError",
            Self::RequestThrottled => "RequestThrottled",
            Self::TerminalStateReached => "TerminalStateReached",
        }
    }
}

/// A refused intent. Refusals never change state; each maps to exactly one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The topic names no known operation.
    #[error("invalid topic {topic:?}")]
    InvalidTopic {
        /// The refused topic.
        topic: String,
    },
    /// The payload could not be decoded.
    #[error("invalid json: {detail}")]
    InvalidJson {
        /// What the decoder said.
        detail: String,
    },
    /// A field holds a value the operation does not accept.
    #[error("invalid {field}: {reason}")]
    InvalidRequest {
        /// The offending field, in wire spelling.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The target status cannot be reached from the current one by this actor.
    #[error("cannot go from {from} to {to}")]
    InvalidStateTransition {
        /// The current status (wire name).
        from: &'static str,
        /// The requested status (wire name).
        to: &'static str,
        /// The current state of a job execution, echoed to the device.
        execution_state: Option<Box<ExecutionState>>,
    },
    /// The named resource does not exist.
    #[error("{kind} {id} not found")]
    ResourceNotFound {
        /// What kind of resource (`job`, `job execution`, `command execution`, `group`).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// `expectedVersion` is not the current version.
    #[error("expected version {expected}, current version is {actual}")]
    VersionMismatch {
        /// What the request expected.
        expected: u64,
        /// The current version.
        actual: u64,
        /// The current state, so the device can reconcile.
        execution_state: Option<Box<ExecutionState>>,
    },
    /// The service failed.
    #[error("internal error: {detail}")]
    InternalError {
        /// What failed, for logs.
        detail: String,
    },
    /// The service is shedding load.
    #[error("request throttled")]
    RequestThrottled,
    /// The record is already terminal; nothing changes any more.
    #[error("already in terminal status {status}")]
    TerminalStateReached {
        /// The terminal status (wire name).
        status: &'static str,
        /// The current state of a job execution, echoed to the device.
        execution_state: Option<Box<ExecutionState>>,
    },
}

impl Rejection {
    /// The wire code of this refusal.
    pub const fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            Self::InvalidJson { .. } => ErrorCode::InvalidJson,
            Self::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            Self::InvalidStateTransition { .. } => ErrorCode::InvalidStateTransition,
            Self::ResourceNotFound { .. } => ErrorCode::ResourceNotFound,
            Self::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Self::InternalError { .. } => ErrorCode::InternalError,
            Self::RequestThrottled => ErrorCode::RequestThrottled,
            Self::TerminalStateReached { .. } => ErrorCode::TerminalStateReached,
        }
    }

    /// The execution state carried by the refusal, if any.
    pub fn execution_state(&self) -> Option<&ExecutionState> {
        match self {
            Self::InvalidStateTransition {
                execution_state, ..
            }
            | Self::VersionMismatch {
                execution_state, ..
            }
            | Self::TerminalStateReached {
                execution_state, ..
            } => execution_state.as_deref(),
            _ => None,
        }
    }

    /// Shorthand for [`Rejection::InvalidRequest`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field,
            reason: reason.into(),
        }
    }
}
