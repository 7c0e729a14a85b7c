//! Percentiles of latency samples and medians across runs.

use std::time::Duration;

/// Latency and rate of a batch of request/response round trips.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Median round trip, in microseconds.
    pub p50_us: f64,
    /// 99th percentile round trip, in microseconds.
    pub p99_us: f64,
    /// Completed round trips per second over the whole batch.
    pub per_sec: f64,
    /// Round trips measured.
    pub count: usize,
}

impl Latency {
    /// Summarizes `samples` (in any order) taken over `total` wall time.
    pub fn from_samples(mut samples: Vec<Duration>, total: Duration) -> Self {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let pick = |pct: usize| -> f64 {
            if samples.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest sample with at least pct % of samples at or below it.
            let rank = (samples.len() * pct).div_ceil(100).max(1);
            us(samples[rank - 1])
        };
        let secs = total.as_secs_f64();
        Self {
            p50_us: pick(50),
            p99_us: pick(99),
            per_sec: if secs > 0.0 {
                samples.len() as f64 / secs
            } else {
                f64::NAN
            },
            count: samples.len(),
        }
    }
}

/// The median of `values` (the lower middle one for an even count); NaN when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let l = Latency::from_samples(samples, Duration::from_secs(1));
        assert_eq!(l.p50_us, 50.0);
        assert_eq!(l.p99_us, 99.0);
        assert_eq!(l.per_sec, 100.0);
        let one = Latency::from_samples(vec![Duration::from_micros(7)], Duration::from_secs(1));
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
        assert!(Latency::from_samples(vec![], Duration::ZERO)
            .p50_us
            .is_nan());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median([]).is_nan());
    }
}
