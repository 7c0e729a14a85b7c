//! What a simulated device chooses: an [`Outcome`] and an execution time per [`Task`], from a
//! [`Behaviour`]; and the seeded draws that make random behaviours reproducible.

use std::sync::Arc;
use std::time::Duration;

use fleetops_core::{ExecutionId, JobId, ThingName};

/// What a device does with one command or one job attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answer `SUCCEEDED`.
    Succeed,
    /// Answer `FAILED`.
    Fail,
    /// Answer `REJECTED`.
    Reject,
    /// Never answer a command (it times out); start a job, report `IN_PROGRESS` with a
    /// one-minute step timeout, then go quiet (the step timer ends it `TIMED_OUT`).
    Silent,
    /// Never answer a command; start a job and never report on it (only the job's
    /// in-progress timeout, if any, ends it).
    Ignore,
}

/// The piece of work a device is deciding about.
#[derive(Debug, Clone, Copy)]
pub enum Task<'a> {
    /// A command execution.
    Command(&'a ExecutionId),
    /// An attempt (1 for the first, 2 for the first retry, …) of a job execution.
    Job {
        /// The job.
        job: &'a JobId,
        /// The execution number.
        attempt: u32,
    },
}

impl Task<'_> {
    /// A stable 64-bit key of the task, for seeded randomness.
    pub fn key(&self) -> u64 {
        match self {
            Task::Command(id) => fnv1a(id.as_str().as_bytes()),
            Task::Job { job, attempt } => mix(fnv1a(job.as_str().as_bytes()) ^ u64::from(*attempt)),
        }
    }
}

/// Decides what each simulated device does. Called from many tasks at once.
///
/// An [`Outcome`] is a behaviour on its own (every device, every task), and [`from_fn`]
/// makes one of a closure.
pub trait Behaviour: Send + Sync + 'static {
    /// The outcome of `task` on `thing`.
    fn outcome(&self, thing: &ThingName, task: Task<'_>) -> Outcome;

    /// How long `thing` works on `task` before answering; at once unless said otherwise.
    fn exec_time(&self, thing: &ThingName, task: Task<'_>) -> Duration {
        let _ = (thing, task);
        Duration::ZERO
    }
}

impl Behaviour for Outcome {
    fn outcome(&self, _: &ThingName, _: Task<'_>) -> Outcome {
        *self
    }
}

impl<B: Behaviour + ?Sized> Behaviour for Arc<B> {
    fn outcome(&self, thing: &ThingName, task: Task<'_>) -> Outcome {
        (**self).outcome(thing, task)
    }

    fn exec_time(&self, thing: &ThingName, task: Task<'_>) -> Duration {
        (**self).exec_time(thing, task)
    }
}

/// A behaviour that answers at once with what `f` says.
pub fn from_fn<F>(f: F) -> FromFn<F>
where
    F: Fn(&ThingName, Task<'_>) -> Outcome + Send + Sync + 'static,
{
    FromFn(f)
}

/// The behaviour of [`from_fn`].
#[derive(Clone, Copy)]
pub struct FromFn<F>(F);

impl<F> std::fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromFn(..)")
    }
}

impl<F> Behaviour for FromFn<F>
where
    F: Fn(&ThingName, Task<'_>) -> Outcome + Send + Sync + 'static,
{
    fn outcome(&self, thing: &ThingName, task: Task<'_>) -> Outcome {
        (self.0)(thing, task)
    }
}

/// Why [`Ratios::new`] refused its weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatioError {
    /// A weight that is not a finite number of at least 0.
    #[error("ratio `{name}` must be a finite number >= 0, got {value}")]
    Invalid {
        /// Which weight.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// All weights are zero: devices would not know what to do.
    #[error("at least one of the success, failure, reject and silent ratios must be above 0")]
    AllZero,
}

/// Relative weights of the outcomes a random device picks (they need not add up to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    success: f64,
    failure: f64,
    reject: f64,
    silent: f64,
}

impl Ratios {
    /// Checks the weights: each finite and >= 0, not all zero.
    pub fn new(success: f64, failure: f64, reject: f64, silent: f64) -> Result<Self, RatioError> {
        for (name, value) in [
            ("success", success),
            ("failure", failure),
            ("reject", reject),
            ("silent", silent),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(RatioError::Invalid {
                    name,
                    value: value.to_string(),
                });
            }
        }
        if success + failure + reject + silent <= 0.0 {
            return Err(RatioError::AllZero);
        }
        Ok(Self {
            success,
            failure,
            reject,
            silent,
        })
    }

    /// The outcome for a draw `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> Outcome {
        let total = self.success + self.failure + self.reject + self.silent;
        let x = u * total;
        if x < self.success {
            Outcome::Succeed
        } else if x < self.success + self.failure {
            Outcome::Fail
        } else if x < self.success + self.failure + self.reject {
            Outcome::Reject
        } else if self.silent > 0.0 {
            Outcome::Silent
        } else {
            // Only reachable through rounding at the very top of the range.
            Outcome::Succeed
        }
    }
}

/// How long a device works on a task: fixed, or uniform in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecTime {
    /// Always this long.
    Fixed(Duration),
    /// Uniformly distributed in `low..=high`.
    Uniform {
        /// The shortest.
        low: Duration,
        /// The longest.
        high: Duration,
    },
}

impl ExecTime {
    /// The time for a draw `u` in `[0, 1)`.
    pub fn at(&self, u: f64) -> Duration {
        match *self {
            ExecTime::Fixed(d) => d,
            ExecTime::Uniform { low, high } => low + (high - low).mul_f64(u.clamp(0.0, 1.0)),
        }
    }
}

/// Outcomes drawn at random with fixed [`Ratios`], the same for commands and job attempts;
/// every draw depends only on the seed, the thing and the task.
#[derive(Debug, Clone)]
pub struct RandomBehaviour {
    /// The weights.
    pub ratios: Ratios,
    /// The execution time distribution.
    pub exec_time: ExecTime,
    /// The seed.
    pub seed: u64,
}

impl Behaviour for RandomBehaviour {
    fn outcome(&self, thing: &ThingName, task: Task<'_>) -> Outcome {
        self.ratios
            .pick(unit(draw(self.seed, device_key(thing), task.key(), 1)))
    }

    fn exec_time(&self, thing: &ThingName, task: Task<'_>) -> Duration {
        self.exec_time
            .at(unit(draw(self.seed, device_key(thing), task.key(), 2)))
    }
}

/// splitmix64's finalizer: a good 64-bit mix, enough for simulation draws.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw from `(seed, device, key, purpose)`.
pub fn draw(seed: u64, device: u64, key: u64, purpose: u64) -> u64 {
    mix(mix(mix(seed ^ mix(device)) ^ key) ^ purpose)
}

/// Maps a draw to `[0, 1)`.
pub fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable 64-bit key of a device, for [`draw`]: from its name, so a device draws the same
/// whichever simulation (and transport) runs it.
pub fn device_key(thing: &ThingName) -> u64 {
    fnv1a(thing.as_str().as_bytes())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_checked_and_honoured() {
        assert_eq!(Ratios::new(0.0, 0.0, 0.0, 0.0), Err(RatioError::AllZero));
        assert!(Ratios::new(-1.0, 1.0, 0.0, 0.0).is_err());
        assert!(Ratios::new(f64::NAN, 1.0, 0.0, 0.0).is_err());
        let only_fail = Ratios::new(0.0, 1.0, 0.0, 0.0).unwrap();
        assert!((0..1000).all(|i| only_fail.pick(unit(mix(i))) == Outcome::Fail));
        let r = Ratios::new(6.0, 2.0, 1.0, 1.0).unwrap();
        let mut counts = std::collections::HashMap::new();
        for i in 0..10_000u64 {
            *counts.entry(r.pick(unit(mix(i)))).or_insert(0) += 1;
        }
        let share = |o| f64::from(counts[&o]) / 10_000.0;
        assert!((share(Outcome::Succeed) - 0.6).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Fail) - 0.2).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Reject) - 0.1).abs() < 0.03, "{counts:?}");
        assert!((share(Outcome::Silent) - 0.1).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn draws_depend_on_seed_device_and_task_only() {
        let job = JobId::parse("j").unwrap();
        let a = Task::Job {
            job: &job,
            attempt: 1,
        };
        let b = Task::Job {
            job: &job,
            attempt: 2,
        };
        assert_eq!(draw(7, 1, a.key(), 1), draw(7, 1, a.key(), 1));
        assert_ne!(draw(7, 1, a.key(), 1), draw(8, 1, a.key(), 1));
        assert_ne!(draw(7, 1, a.key(), 1), draw(7, 2, a.key(), 1));
        assert_ne!(a.key(), b.key());
        let (t1, t2) = (
            ThingName::parse("d1").unwrap(),
            ThingName::parse("d2").unwrap(),
        );
        assert_eq!(device_key(&t1), device_key(&t1.clone()));
        assert_ne!(device_key(&t1), device_key(&t2));
        let u = unit(u64::MAX);
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn exec_times_are_fixed_or_spread_over_their_range() {
        let u = ExecTime::Uniform {
            low: Duration::from_millis(100),
            high: Duration::from_millis(200),
        };
        assert_eq!(u.at(0.5), Duration::from_millis(150));
        assert_eq!(
            ExecTime::Fixed(Duration::from_secs(1)).at(0.9),
            Duration::from_secs(1)
        );
    }
}
