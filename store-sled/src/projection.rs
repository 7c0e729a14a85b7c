//! Projections: key-value state derived from the feed, stored with its checkpoint.
//!
//! The service keeps its indexes (executions by job, by thing and by status; pending deadlines
//! as due time → stream; per-job counters) as projections of the global feed rather than in
//! the append transaction, so that appends stay O(1) and no index becomes a hot key. What makes
//! that safe is [`Projection::apply`](crate::Projection::apply): the index writes derived from
//! events `from+1..=to` and the new checkpoint `to` are written in **one** atomic sled batch,
//! and only if the stored checkpoint is still `from`. So:
//!
//! - after a crash, the checkpoint and the index agree: either both include the update or
//!   neither does, and the projector resumes from the checkpoint with
//!   [`EventStore::read_all`](fleetops_core::store::EventStore::read_all) or
//!   `subscribe(checkpoint + 1)`;
//! - an update can never be applied twice, nor on top of a state it was not computed from
//!   (compare-and-set on the checkpoint; a second projector racing on the same projection
//!   gets [`ProjectionError::CheckpointMismatch`]);
//! - the checkpoint can never pass the feed head ([`ProjectionError::BeyondHead`]).
//!
//! Together: every event affects a projection exactly once, across any number of restarts.
//! Updates go through the writer thread, so they share the group commit (and its flush) with
//! appends. Reads see the latest applied update.
//!
//! Keys are the caller's bytes; an ordered encoding (big-endian integers, `/`-separated
//! names) turns "executions of job J" or "deadlines due before T" into a prefix or range scan.
//! `tests/projection.rs` builds such indexes from the feed as an example.
//!
//! This module is what the writer checks and applies (the batch, the update, its errors and
//! the name rules) and names no other module of the crate. The
//! [`Projection`](crate::Projection) handle, which reads entries and sends updates to the
//! writer, lives with `SledStore` in `store`.

use fleetops_core::store::StoreError;

/// One key-value pair of a projection scan, the key without the projection's prefix.
pub type ProjectionEntry = (Vec<u8>, Vec<u8>);

/// Longest projection name, in bytes.
pub const MAX_PROJECTION_NAME: usize = 64;

/// Why a projection operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The name is empty, too long or outside `[a-zA-Z0-9_.-]`.
    #[error("invalid projection name {name:?}: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The stored checkpoint is not the one the update was computed from; nothing was written.
    #[error(
        "projection {name} is at checkpoint {actual}, the update was computed from {expected}"
    )]
    CheckpointMismatch {
        /// The projection.
        name: String,
        /// The checkpoint the update claimed to start from.
        expected: u64,
        /// The stored checkpoint.
        actual: u64,
    },
    /// The new checkpoint lies past the last stored event; nothing was written.
    #[error("checkpoint {checkpoint} is past the feed head {head}")]
    BeyondHead {
        /// The refused checkpoint.
        checkpoint: u64,
        /// The feed head when the update was checked.
        head: u64,
    },
    /// The new checkpoint is before the old one; nothing was written.
    #[error("checkpoint would move backwards from {from} to {to}")]
    Backwards {
        /// The checkpoint the update started from.
        from: u64,
        /// The refused new checkpoint.
        to: u64,
    },
    /// The store failed (corrupt record, I/O, closed).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes to apply to a projection together with its new checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectionBatch {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ProjectionBatch {
    /// An empty batch (applying it only moves the checkpoint).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`. A later write to the same key in the batch wins.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.writes.push((key.into(), Some(value.into())));
        self
    }

    /// Removes `key` (a no-op if it is absent).
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.writes.push((key.into(), None));
        self
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// One projection update, as the writer checks and applies it.
pub(crate) struct ProjectionUpdate {
    pub(crate) name: String,
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl ProjectionUpdate {
    /// The update that applies `batch` to projection `name` and moves its checkpoint from
    /// `from` to `to`.
    pub(crate) fn new(name: &str, from: u64, to: u64, batch: ProjectionBatch) -> Self {
        Self {
            name: name.to_owned(),
            from,
            to,
            writes: batch.writes,
        }
    }
}

/// Checks a projection name against the rules of [`MAX_PROJECTION_NAME`] and
/// [`ProjectionError::InvalidName`].
pub(crate) fn validate_name(name: &str) -> Result<(), ProjectionError> {
    let bad = |reason| {
        Err(ProjectionError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_PROJECTION_NAME {
        return bad("longer than 64 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("only [a-zA-Z0-9_.-] is allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("executions.by-thing_2").is_ok());
        for bad in ["", "a/b", "a\0b", "é", &"n".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(ProjectionError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
