//! Where the runtime gets `now` from, and how it sleeps until a deadline.
//!
//! The core never reads a clock; the runtime reads one [`Clock`] and passes `now` into every
//! decision. Production uses [`SystemClock`]; tests use [`ManualClock`] and move time
//! explicitly, so a TTL or a rollout window passes exactly when the test says so.

use std::sync::Arc;

use fleetops_core::{Duration, Timestamp};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of `now` that can also wait for a point in time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Completes once [`Clock::now`] is at or past `at`. Dropping the future cancels the wait.
    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()>;
}

/// The operating system's wall clock, with tokio timers for sleeping.
///
/// ```
/// use fleetops_service::clock::{Clock, SystemClock};
/// assert!(SystemClock.now().as_secs() > 1_600_000_000);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let wait = at.saturating_since(self.now());
        Box::pin(tokio::time::sleep(wait.into()))
    }
}

/// A clock that only moves when told to: tests drive every timer explicitly.
///
/// Cloning yields another handle to the same clock.
///
/// ```
/// use fleetops_core::{Duration, Timestamp};
/// use fleetops_service::clock::{Clock, ManualClock};
/// let clock = ManualClock::new(Timestamp::from_secs(1_000));
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now(), Timestamp::from_secs(1_005));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<Timestamp>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Moves the clock forward by `d`, waking every sleeper whose time has come.
    pub fn advance(&self, d: Duration) {
        self.now.send_modify(|now| *now = *now + d);
    }

    /// Sets the clock to `at`; a time in the past is ignored, since time never runs backwards.
    pub fn set(&self, at: Timestamp) {
        self.now.send_if_modified(|now| {
            if at > *now {
                *now = at;
                true
            } else {
                false
            }
        });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.borrow()
    }

    fn sleep_until(&self, at: Timestamp) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as any handle; if every handle is gone, time stops and
            // the sleeper simply never wakes, like a timer of a stopped clock.
            if rx.wait_for(|now| *now >= at).await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    }
}
