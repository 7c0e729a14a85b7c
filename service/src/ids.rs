//! Where new ids come from: event ids (UUIDv7) and command execution ids.
//!
//! The core never makes ids; the runtime draws them from an [`IdSource`]. Production uses
//! [`UuidV7Ids`]; tests may use [`SequentialIds`] for readable, reproducible ids.

use std::sync::atomic::{AtomicU64, Ordering};

use fleetops_core::ExecutionId;
use uuid::Uuid;

/// A source of fresh ids.
pub trait IdSource: Send + Sync + 'static {
    /// A new event id; UUIDv7 keeps them roughly time-ordered, as the envelope asks.
    fn event_id(&self) -> Uuid;

    /// A new command execution id.
    fn execution_id(&self) -> ExecutionId;
}

/// Random, time-ordered UUIDv7 ids.
///
/// ```
/// use fleetops_service::ids::{IdSource, UuidV7Ids};
/// let ids = UuidV7Ids;
/// assert_eq!(ids.event_id().get_version_num(), 7);
/// assert_eq!(ids.execution_id().as_str().len(), 32);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Ids;

impl IdSource for UuidV7Ids {
    fn event_id(&self) -> Uuid {
        Uuid::now_v7()
    }

    fn execution_id(&self) -> ExecutionId {
        // 32 lowercase hex digits: inside the execution id alphabet and length by construction.
        let s = Uuid::now_v7().simple().to_string();
        ExecutionId::parse(&s).expect("a simple-form UUID is a valid execution id")
    }
}

/// Counting ids (`cmd-1`, `cmd-2`, …), for tests that compare ids.
///
/// ```
/// use fleetops_service::ids::{IdSource, SequentialIds};
/// let ids = SequentialIds::default();
/// assert_eq!(ids.execution_id().as_str(), "cmd-1");
/// assert_eq!(ids.event_id().as_u128(), 2);
/// ```
#[derive(Debug, Default)]
pub struct SequentialIds {
    next: AtomicU64,
}

impl SequentialIds {
    fn bump(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl IdSource for SequentialIds {
    fn event_id(&self) -> Uuid {
        Uuid::from_u128(u128::from(self.bump()))
    }

    fn execution_id(&self) -> ExecutionId {
        let s = format!("cmd-{}", self.bump());
        ExecutionId::parse(&s).expect("cmd-N is a valid execution id")
    }
}
