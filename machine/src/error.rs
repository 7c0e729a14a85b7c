//! Why the feed does not fold.

use fleetops_core::projection::ProjectionError;
use fleetops_core::{EvolveError, StreamId};

/// Why an event could not be folded into the [`ReadModel`](crate::ReadModel).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    /// The feed itself is wrong (a gap, an execution never queued): the fold stops and the
    /// runtime resubscribes from its checkpoint.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// One stream's history does not replay; the runtime reports it and folds on.
    #[error("stream {stream} does not replay: {source}")]
    Corrupt {
        /// The stream.
        stream: StreamId,
        /// What its aggregate said.
        source: EvolveError,
    },
}
