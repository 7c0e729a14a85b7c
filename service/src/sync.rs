//! Small synchronization helpers shared by every task; a leaf module, so any module may use
//! it without a dependency on the runtime.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every value behind
/// these mutexes is a queue or a map that stays consistent after any single operation.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
