//! Rate-limited warnings, per device: a device that floods malformed requests costs one log
//! line per interval, carrying how many it suppressed, instead of one line per message.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// The key that devices share once [`WarnLimiter`] tracks as many as it may.
const OVERFLOW: &str = "*";

/// Decides which warnings are written: at most one per key per interval.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    interval: Duration,
    max_tracked: usize,
    /// Per key: when its last line was written, and the warnings suppressed since.
    entries: HashMap<String, (Instant, u64)>,
}

impl WarnLimiter {
    /// At most one line per key per `interval`, tracking at most `max_tracked` keys.
    pub fn new(interval: Duration, max_tracked: usize) -> Self {
        Self {
            interval,
            max_tracked: max_tracked.max(1),
            entries: HashMap::new(),
        }
    }

    /// Whether a warning about `key` is written now: `Some(suppressed)` with the count of
    /// warnings about it left out since its last line, or `None` (counted) to leave it out.
    ///
    /// Once `max_tracked` keys are tracked, keys whose interval ended are forgotten; if none
    /// has, a new key shares one entry with every other untracked key, so memory stays
    /// bounded whatever the number of devices.
    pub fn check(&mut self, key: &str, now: Instant) -> Option<u64> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.max_tracked {
            let interval = self.interval;
            self.entries
                .retain(|_, (at, _)| now.duration_since(*at) < interval);
        }
        let key = if self.entries.contains_key(key) || self.entries.len() < self.max_tracked {
            key
        } else {
            OVERFLOW
        };
        match self.entries.get_mut(key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.interval => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                // The overflow entry may exceed the bound by one.
                self.entries.insert(key.to_owned(), (now, 0));
                Some(0)
            }
        }
    }

    /// How many keys are tracked.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_count() {
        let mut w = WarnLimiter::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(w.check("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(w.check("a", t0 + Duration::from_secs(i)), None);
        }
        // Another device is not held back by the first.
        assert_eq!(w.check("b", t0), Some(0));
        assert_eq!(w.check("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(w.check("a", t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn tracked_keys_are_bounded() {
        let mut w = WarnLimiter::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for k in ["a", "b", "c"] {
            assert_eq!(w.check(k, t0), Some(0));
        }
        // Full and nobody expired: new keys share one entry.
        assert_eq!(w.check("d", t0), Some(0));
        assert_eq!(w.check("e", t0), None);
        assert!(w.tracked() <= 4);
        // Once the interval has passed, old keys make room.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(w.check("f", later), Some(0));
        assert!(w.tracked() <= 3, "{}", w.tracked());
    }
}
