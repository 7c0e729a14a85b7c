//! The `Lease` port: which of several runtimes sharing one store does the fleet-wide work.
//!
//! Several `fleetops serve` instances may share one store (PostgreSQL). Each answers device
//! requests and operator calls, but the fleet-wide duties (firing deadlines, rolling jobs out,
//! publishing what stored events owe devices) are owned by one instance at a time: the one
//! holding the lease. A store that has a single writer by construction (store-sled, which locks
//! its directory; store-memory) needs no lease: [`SoleLease`] is always held.
//!
//! The lease is for efficiency, not safety. Every decision is appended with an exact version
//! expectation, so two instances that both believe they lead (one paused past its lease, say)
//! can only race to append the same transition: one wins, the other gets a conflict, reloads and
//! finds nothing left to do. What they publish twice, devices take as the duplicates the
//! protocol already tells them to expect.

use async_trait::async_trait;

use crate::store::StoreError;

/// Leadership among the runtimes sharing one store.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// Waits until this runtime holds the lease and returns the hold; dropping the hold gives
    /// the lease up. Fails only when the backend fails in a way a retry cannot mend soon (the
    /// caller backs off and calls again). Cancel-safe: a cancelled call holds nothing.
    async fn acquire(&self) -> Result<Box<dyn LeaseHold>, StoreError>;
}

/// A held lease.
#[async_trait]
pub trait LeaseHold: Send {
    /// Resolves when the lease is lost (the backend's session ended or a renewal failed), with
    /// the reason. Never resolves for a lease that cannot be lost. Cancel-safe: a cancelled
    /// call leaves the lease held.
    async fn lost(&mut self) -> StoreError;
}

/// The lease of a store with a single writer: always granted, never lost.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoleLease;

#[async_trait]
impl Lease for SoleLease {
    async fn acquire(&self) -> Result<Box<dyn LeaseHold>, StoreError> {
        Ok(Box::new(SoleHold))
    }
}

/// The hold of a [`SoleLease`].
#[derive(Debug)]
struct SoleHold;

#[async_trait]
impl LeaseHold for SoleHold {
    async fn lost(&mut self) -> StoreError {
        std::future::pending().await
    }
}
