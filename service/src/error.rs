//! The runtime's error type, with explicit conversions from the layers below.

use fleetops_core::link::LinkError;
use fleetops_core::projection::ProjectionError;
use fleetops_core::{EvolveError, Rejection, StoreError, StreamId, ThingName};

/// Why a [`Fleet`](crate::Fleet) operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The rules refused the request; nothing was stored.
    #[error("refused: {0}")]
    Rejected(Rejection),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(StoreError),
    /// The device link failed.
    #[error("device link: {0}")]
    Link(LinkError),
    /// A stored history does not replay: the store holds corrupt or foreign events.
    #[error("corrupt history in {stream}: {source}")]
    Corrupt {
        /// The stream that failed to replay.
        stream: StreamId,
        /// What the aggregate said.
        source: EvolveError,
    },
    /// The global feed could not be folded into the projections.
    #[error("projection: {0}")]
    Projection(ProjectionError),
    /// Concurrent writers kept changing a stream; the request gave up after several attempts.
    #[error("too much contention on {stream}")]
    Contention {
        /// The contested stream.
        stream: StreamId,
    },
    /// The thing is offline and the fleet is configured to fail commands to offline things.
    #[error("thing {thing} is offline")]
    Offline {
        /// The thing.
        thing: ThingName,
    },
    /// The runtime cannot serve the request now: its store or its projection follower is
    /// failing, or the projections did not fold a write within
    /// [`FleetConfig::apply_timeout`](crate::FleetConfig::apply_timeout). A write refused
    /// before it reached the store stored nothing; one whose fold timed out was stored and
    /// shows once the projections catch up. Worth retrying later.
    #[error("fleet unavailable: {reason}")]
    Unavailable {
        /// What is failing.
        reason: String,
    },
    /// The runtime was shut down.
    #[error("fleet runtime stopped")]
    Stopped,
}

impl From<Rejection> for FleetError {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

impl From<StoreError> for FleetError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<LinkError> for FleetError {
    fn from(e: LinkError) -> Self {
        Self::Link(e)
    }
}

impl From<ProjectionError> for FleetError {
    fn from(e: ProjectionError) -> Self {
        Self::Projection(e)
    }
}

impl FleetError {
    /// The refusal a device is told about: the rule's own refusal, or `InternalError` for
    /// failures of the service itself (which the device may retry).
    pub fn to_rejection(&self) -> Rejection {
        match self {
            Self::Rejected(r) => r.clone(),
            other => Rejection::InternalError {
                detail: other.to_string(),
            },
        }
    }

    /// The refusal, if the rules refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

impl From<fleetops_machine::FoldError> for FleetError {
    fn from(e: fleetops_machine::FoldError) -> Self {
        match e {
            fleetops_machine::FoldError::Projection(p) => Self::Projection(p),
            fleetops_machine::FoldError::Corrupt { stream, source } => {
                Self::Corrupt { stream, source }
            }
        }
    }
}
