//! How the runtime is doing: whether its store answers, whether the projection follower
//! folds, whether the link delivers, and what could not be delivered.
//!
//! A failing follower used to make every write wait forever for its fold while the process
//! looked alive. Now the follower reports its failures here (counted, with backoff), writes
//! fail at once with [`FleetError::Unavailable`] while it is failing, and
//! [`Fleet::health`](crate::Fleet::health) gives operators (and `/healthz`) the whole picture.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::FleetError;
use crate::sync::lock;

/// Consecutive follower failures after which the follower counts as failed (and writes fail
/// fast): one failure is retried at once, a few in a row mean the store or the feed is broken.
pub(crate) const FOLLOWER_FAILED_AFTER: u32 = 3;

/// The state of one part of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthStatus {
    /// Working.
    Ok,
    /// Working with trouble (a retry under way, a link that lost messages); no action yet.
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// Not working: writes fail with [`FleetError::Unavailable`] until it recovers.
    Failed {
        /// What is wrong.
        reason: String,
    },
}

impl HealthStatus {
    /// Whether this part failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }

    /// The reason, unless it is [`HealthStatus::Ok`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Ok => None,
            Self::Degraded { reason } | Self::Failed { reason } => Some(reason),
        }
    }
}

/// A report of the runtime's health, from [`Fleet::health`](crate::Fleet::health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The event store: `Failed` when it did not answer a read of its head in time.
    pub store: HealthStatus,
    /// The projection follower: `Failed` after several failures in a row, or when health
    /// checks saw it behind the store's head without moving for longer than
    /// [`FleetConfig::apply_timeout`](crate::FleetConfig::apply_timeout); `Degraded` while
    /// it retries.
    pub follower: HealthStatus,
    /// The device link, as the outbox sees it: `Degraded` while its last delivery failed
    /// for a transient reason (broker away). Never `Failed`: the transport reconnects on its
    /// own and what is owed is sent again.
    pub link: HealthStatus,
    /// The global position the projections have folded.
    pub checkpoint: u64,
    /// The store's head position, when it answered.
    pub head: Option<u64>,
    /// Messages that could never be delivered (cannot be encoded, refused by the broker),
    /// since the start.
    pub undeliverable: u64,
    /// Messages whose delivery failed transiently and were left to recovery after the last
    /// retry, since the start.
    pub given_up: u64,
}

impl Health {
    /// Whether the runtime serves writes: neither the store nor the follower failed.
    pub fn is_serving(&self) -> bool {
        !self.store.is_failed() && !self.follower.is_failed()
    }

    /// What keeps the runtime from serving, if anything.
    pub fn problem(&self) -> Option<String> {
        [("store", &self.store), ("follower", &self.follower)]
            .into_iter()
            .find(|(_, s)| s.is_failed())
            .map(|(part, s)| format!("{part}: {}", s.reason().unwrap_or("failed")))
    }

    /// How many events the projections are behind the store's head, when it answered.
    pub fn behind(&self) -> Option<u64> {
        self.head.map(|h| h.saturating_sub(self.checkpoint))
    }
}

/// What the follower last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FollowerStatus {
    /// Failures in a row since it last folded.
    pub failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

impl FollowerStatus {
    pub fn failed(&self) -> bool {
        self.failures >= FOLLOWER_FAILED_AFTER
    }
}

/// A gate for a log line that can repeat fast: at most one line per period, carrying how
/// many occurrences it stands for.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Counts one occurrence; `Some(n)` when a line is due now, `n` being the occurrences
    /// it stands for (this one included).
    pub fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        self.suppressed += 1;
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// How often a repeating warning is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The runtime's health as its tasks report it.
pub(crate) struct HealthState {
    pub follower: watch::Sender<FollowerStatus>,
    /// The checkpoint at which a health check first saw the projections behind the head,
    /// and when: the follower counts as stuck once it stays there, behind, for too long.
    behind_since: Mutex<Option<(u64, Instant)>>,
    /// The last transient delivery failure, until a delivery succeeds.
    pub link: Mutex<Option<String>>,
    pub undeliverable: AtomicU64,
    pub given_up: AtomicU64,
    pub follower_log: Mutex<Throttle>,
    pub undeliverable_log: Mutex<Throttle>,
    pub given_up_log: Mutex<Throttle>,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            follower: watch::Sender::new(FollowerStatus::default()),
            behind_since: Mutex::new(None),
            link: Mutex::new(None),
            undeliverable: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            follower_log: Mutex::new(Throttle::new(LOG_EVERY)),
            undeliverable_log: Mutex::new(Throttle::new(LOG_EVERY)),
            given_up_log: Mutex::new(Throttle::new(LOG_EVERY)),
        }
    }
}

impl HealthState {
    /// The follower failed once more.
    pub fn follower_failed(&self, what: &str, err: &str) {
        let mut failures = 0;
        self.follower.send_modify(|s| {
            s.failures = s.failures.saturating_add(1);
            s.last_error = Some(format!("{what}: {err}"));
            failures = s.failures;
        });
        if failures == FOLLOWER_FAILED_AFTER {
            tracing::error!(failures, %err, what, "the projection follower is failing; writes fail until it recovers");
        }
        if let Some(count) = lock(&self.follower_log).admit() {
            tracing::warn!(failures, count, %err, what, "projection follower failure; retrying with backoff");
        }
    }

    /// How long the projections have been behind `head` at `checkpoint` without moving, as
    /// far as health checks saw (`None`: not behind). Sampled: each check that finds the
    /// checkpoint moved starts counting again.
    pub fn stuck_for(&self, checkpoint: u64, head: Option<u64>) -> Option<Duration> {
        let mut behind = lock(&self.behind_since);
        match head {
            Some(h) if h > checkpoint => match *behind {
                Some((cp, since)) if cp == checkpoint => Some(since.elapsed()),
                _ => {
                    *behind = Some((checkpoint, Instant::now()));
                    Some(Duration::ZERO)
                }
            },
            _ => {
                *behind = None;
                None
            }
        }
    }

    /// The follower folded a batch.
    pub fn follower_folded(&self) {
        if self.follower.borrow().failures > 0 {
            let was = self.follower.send_replace(FollowerStatus::default());
            tracing::info!(failures = was.failures, "the projection follower recovered");
        }
    }

    /// `Unavailable` while the follower is failing.
    pub fn ensure_serving(&self) -> Result<(), FleetError> {
        let s = self.follower.borrow();
        if s.failed() {
            return Err(FleetError::Unavailable {
                reason: format!(
                    "the projection follower is failing ({} failures in a row, last: {})",
                    s.failures,
                    s.last_error.as_deref().unwrap_or("unknown")
                ),
            });
        }
        Ok(())
    }

    /// A delivery finished: `None` when it succeeded (at least in part), else the transient
    /// failure that took the whole batch.
    pub fn link_result(&self, failure: Option<String>) {
        *lock(&self.link) = failure;
    }

    /// Counts a message that can never be delivered.
    pub fn count_undeliverable(&self) -> (u64, Option<u64>) {
        let total = self.undeliverable.fetch_add(1, Ordering::Relaxed) + 1;
        (total, lock(&self.undeliverable_log).admit())
    }

    /// Counts `n` messages left to recovery after the last retry.
    pub fn count_given_up(&self, n: u64) -> (u64, Option<u64>) {
        let total = self.given_up.fetch_add(n, Ordering::Relaxed) + n;
        (total, lock(&self.given_up_log).admit())
    }
}

/// Exponential backoff between follower retries, capped.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(5);

    pub const fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay to wait now; the next one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert_eq!(delays[1], Duration::from_millis(20));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), Backoff::CAP);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[test]
    fn a_throttle_logs_once_per_period_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.admit(), Some(1));
        for _ in 0..99 {
            assert_eq!(t.admit(), None);
        }
        let mut t = Throttle::new(Duration::ZERO);
        assert_eq!(t.admit(), Some(1));
        assert_eq!(t.admit(), Some(1));
    }

    #[test]
    fn stuck_counts_only_while_behind_at_the_same_checkpoint() {
        let h = HealthState::default();
        assert_eq!(h.stuck_for(5, Some(5)), None);
        assert_eq!(h.stuck_for(5, Some(9)), Some(Duration::ZERO));
        std::thread::sleep(Duration::from_millis(20));
        assert!(h.stuck_for(5, Some(9)).unwrap() >= Duration::from_millis(20));
        // It moved: counting starts again.
        assert_eq!(h.stuck_for(6, Some(9)), Some(Duration::ZERO));
        assert_eq!(h.stuck_for(9, Some(9)), None);
        assert_eq!(h.stuck_for(9, None), None);
    }

    #[test]
    fn the_follower_fails_after_several_failures_in_a_row_and_recovers_on_a_fold() {
        let h = HealthState::default();
        for _ in 1..FOLLOWER_FAILED_AFTER {
            h.follower_failed("subscribe", "boom");
            assert!(h.ensure_serving().is_ok());
        }
        h.follower_failed("subscribe", "boom");
        assert!(matches!(
            h.ensure_serving(),
            Err(FleetError::Unavailable { reason }) if reason.contains("boom")
        ));
        h.follower_folded();
        assert!(h.ensure_serving().is_ok());
    }
}
