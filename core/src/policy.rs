//! Job policies as pure functions of counts and `now`: rollout pacing, abort rules, retries.

/// Rollout pacing.
pub mod rollout {
    use crate::config::{IncreaseCriterion, Rollout};
    use crate::time::{Duration, Timestamp};

    const MINUTE: Duration = Duration::from_minutes(1);

    /// How many executions may be queued now.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Allowance {
        /// Executions that may be queued at once (`u64::MAX`: no limit).
        pub now: u64,
        /// When the next window opens, if pacing applies.
        pub next_window: Option<Timestamp>,
    }

    /// The current rate in executions per minute; `None` for an unlimited rollout.
    ///
    /// An exponential rollout multiplies its base rate by `factor` once per full step of the
    /// criterion count (notified or succeeded things), capped at its maximum.
    pub fn rate_per_minute(rollout: &Rollout, notified: u64, succeeded: u64) -> Option<u64> {
        match rollout {
            Rollout::Unlimited => None,
            Rollout::Fixed { per_minute } => Some(u64::from(*per_minute)),
            Rollout::Exponential {
                base_per_minute,
                factor,
                criterion,
                max_per_minute,
            } => {
                let (count, step) = match criterion {
                    IncreaseCriterion::NotifiedThings(n) => (notified, *n),
                    IncreaseCriterion::SucceededThings(n) => (succeeded, *n),
                };
                let steps = count / u64::from(step.max(1));
                // 2^63 overflows any rate long before; cap the exponent to keep floats finite.
                let steps = i32::try_from(steps.min(256)).unwrap_or(256);
                let rate = f64::from(*base_per_minute) * factor.powi(steps);
                let max = f64::from(*max_per_minute);
                // Truncation is intended: a rate is a whole number of executions.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let rate = rate.min(max).max(1.0) as u64;
                Some(rate)
            }
        }
    }

    /// What the rollout driver may queue at `now`, given what it queued in the current
    /// one-minute window (windows are counted from `started_at`).
    pub fn allowance(
        rollout: &Rollout,
        started_at: Timestamp,
        now: Timestamp,
        queued_in_window: u64,
        notified: u64,
        succeeded: u64,
    ) -> Allowance {
        let Some(rate) = rate_per_minute(rollout, notified, succeeded) else {
            return Allowance {
                now: u64::MAX,
                next_window: None,
            };
        };
        let start = window_start(started_at, now);
        Allowance {
            now: rate.saturating_sub(queued_in_window),
            next_window: Some(start + MINUTE),
        }
    }

    /// The start of the one-minute window that holds `now`.
    pub fn window_start(started_at: Timestamp, now: Timestamp) -> Timestamp {
        let elapsed = now.saturating_since(started_at).as_millis();
        let windows = elapsed / MINUTE.as_millis();
        started_at + Duration::from_millis(windows * MINUTE.as_millis())
    }
}

/// Abort rules.
pub mod abort {
    use crate::config::AbortCriterion;
    use crate::event::JobCancelReason;
    use crate::projection::JobCounters;

    /// The first rule that holds, as the reason to cancel the job; `None` if none holds.
    ///
    /// A rule holds once at least `min_executed` executions are terminal (succeeded, failed,
    /// rejected or timed out) and failures of its type make up at least `threshold_percent`
    /// of them.
    pub fn evaluate(
        criteria: &[AbortCriterion],
        counters: &JobCounters,
    ) -> Option<JobCancelReason> {
        let executed = counters.executed();
        criteria.iter().enumerate().find_map(|(criterion, c)| {
            if executed == 0 || executed < u64::from(c.min_executed) {
                return None;
            }
            let failed = counters.failures(c.failure_type);
            // Counts stay far below 2^53, so the float ratio is exact enough.
            #[allow(clippy::cast_precision_loss)]
            let percent = failed as f64 * 100.0 / executed as f64;
            (percent >= c.threshold_percent).then_some(JobCancelReason::Aborted {
                criterion,
                failed,
                executed,
            })
        })
    }
}

/// Retry rules.
pub mod retry {
    use crate::config::{RetryCriterion, MAX_ATTEMPTS};
    use crate::status::JobExecutionStatus;

    /// Whether an attempt that ended in `status` gets another one. `execution_number` is the
    /// attempt that just ended (1 for the first). `REJECTED` is never retried.
    pub fn should_retry(
        criteria: &[RetryCriterion],
        status: JobExecutionStatus,
        execution_number: u32,
    ) -> bool {
        if !matches!(
            status,
            JobExecutionStatus::Failed | JobExecutionStatus::TimedOut
        ) || execution_number >= MAX_ATTEMPTS
        {
            return false;
        }
        criteria
            .iter()
            .filter(|c| c.failure_type.matches(status))
            .any(|c| execution_number <= c.number_of_retries)
    }
}

/// Staged rollouts: who is in which stage, and whether a stage passed its gate.
pub mod stages {
    use std::collections::BTreeSet;

    use crate::config::{Stage, StageAction, StageTargets};
    use crate::ids::{GroupName, JobId, ThingName};
    use crate::projection::JobCounters;

    /// A stage's figures, as the read side counts them.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct StageProgress {
        /// Its things.
        pub size: u64,
        /// Per-status counts of its executions.
        pub counters: JobCounters,
        /// Its failed or timed-out executions that a retry rule still owes another attempt
        /// (counted as undecided, not as failures).
        pub retries_owed: u64,
    }

    /// Where a stage stands.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Verdict {
        /// Not enough is known yet.
        Undecided,
        /// Enough of its things succeeded.
        Passed,
        /// Even if every undecided thing succeeded, the gate could not be met.
        GateFailed {
            /// Successes so far.
            succeeded: u64,
            /// Successes the gate needs.
            required: u64,
        },
        /// The error threshold was crossed.
        Threshold {
            /// Failures of its type.
            failed: u64,
            /// Terminal executions.
            executed: u64,
            /// Pause or abort.
            action: StageAction,
        },
    }

    /// Successes a stage of `size` things needs: `success_percent` of them, rounded up.
    pub fn required(stage: &Stage, size: u64) -> u64 {
        // Sizes stay far below 2^53, so the float is exact enough; rounding up makes 95 %
        // of 10 mean 10, never 9.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let r = (stage.success_percent * size as f64 / 100.0).ceil() as u64;
        r.min(size)
    }

    /// The stage's verdict. The error threshold (when `threshold_armed`) is checked first,
    /// like an abort rule over the stage's executions; then the gate is decided as soon as
    /// the outcome is certain: passed once the successes reach the requirement, failed once
    /// the things still undecided (not yet terminal, or owed a retry) could not make up the
    /// difference. Canceled and removed executions count as decided, not as successes.
    pub fn evaluate(stage: &Stage, p: &StageProgress, threshold_armed: bool) -> Verdict {
        let c = &p.counters;
        if let (Some(t), true) = (&stage.error_threshold, threshold_armed) {
            let executed = c.executed();
            if executed > 0 && executed >= u64::from(t.min_executed) {
                let failed = c.failures(t.failure_type);
                #[allow(clippy::cast_precision_loss)]
                let percent = failed as f64 * 100.0 / executed as f64;
                if percent >= t.threshold_percent {
                    return Verdict::Threshold {
                        failed,
                        executed,
                        action: t.action,
                    };
                }
            }
        }
        let required = required(stage, p.size);
        if c.succeeded >= required {
            return Verdict::Passed;
        }
        let decided = (c.executed() + c.canceled + c.removed).saturating_sub(p.retries_owed);
        let undecided = p.size.saturating_sub(decided);
        if c.succeeded + undecided < required {
            return Verdict::GateFailed {
                succeeded: c.succeeded,
                required,
            };
        }
        Verdict::Undecided
    }

    /// A thing's place in percentage stages: FNV-1a of the job id and the thing name, so the
    /// pick is spread over the fleet, the same on every replay, and differs per job.
    fn rank(job: &JobId, thing: &ThingName) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in job
            .as_str()
            .bytes()
            .chain(std::iter::once(0xff))
            .chain(thing.as_str().bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// Splits `targets` into the stages, plus one last set: the targets no stage took, rolled
    /// out after every stage passed. A thing is in the first things or groups stage naming
    /// it (names that are not targets are ignored); percentage stages then take, in order,
    /// `percent` of all targets (rounded up) from the rest, in the order of a 64-bit FNV-1a hash
    /// of the job id, a `0xff` byte and the thing name.
    pub fn assign(
        job: &JobId,
        stages: &[Stage],
        targets: &BTreeSet<ThingName>,
        members: &dyn Fn(&GroupName) -> Vec<ThingName>,
    ) -> Vec<BTreeSet<ThingName>> {
        let mut out = vec![BTreeSet::new(); stages.len() + 1];
        let mut free = targets.clone();
        for (i, stage) in stages.iter().enumerate() {
            let named: Vec<ThingName> = match &stage.targets {
                StageTargets::Things { things } => things.clone(),
                StageTargets::Groups { groups } => groups.iter().flat_map(members).collect(),
                StageTargets::Percent { .. } => continue,
            };
            for t in named {
                if free.remove(&t) {
                    out[i].insert(t);
                }
            }
        }
        let mut pool: Vec<(u64, ThingName)> =
            free.iter().map(|t| (rank(job, t), t.clone())).collect();
        pool.sort();
        let mut pool = pool.into_iter().map(|(_, t)| t);
        let total = targets.len() as u64;
        for (i, stage) in stages.iter().enumerate() {
            if let StageTargets::Percent { percent } = stage.targets {
                let n = (u64::from(percent) * total).div_ceil(100);
                for t in pool.by_ref().take(usize::try_from(n).unwrap_or(usize::MAX)) {
                    free.remove(&t);
                    out[i].insert(t);
                }
            }
        }
        out[stages.len()] = free;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AbortCriterion, FailureType, IncreaseCriterion, RetryCriterion, Rollout};
    use crate::projection::JobCounters;
    use crate::status::JobExecutionStatus as S;
    use crate::time::{Duration, Timestamp};

    #[test]
    fn fixed_rollout_opens_a_window_per_minute() {
        let r = Rollout::Fixed { per_minute: 10 };
        let t0 = Timestamp::from_secs(1000);
        let a = rollout::allowance(&r, t0, t0 + Duration::from_secs(59), 4, 0, 0);
        assert_eq!(a.now, 6);
        assert_eq!(a.next_window, Some(t0 + Duration::from_secs(60)));
        let a = rollout::allowance(&r, t0, t0 + Duration::from_secs(61), 0, 0, 0);
        assert_eq!(a.next_window, Some(t0 + Duration::from_secs(120)));
        assert_eq!(rollout::allowance(&r, t0, t0, 12, 0, 0).now, 0);
        assert_eq!(
            rollout::allowance(&Rollout::Unlimited, t0, t0, 5, 0, 0).now,
            u64::MAX
        );
    }

    #[test]
    fn exponential_rollout_grows_per_step_and_caps() {
        let r = Rollout::Exponential {
            base_per_minute: 10,
            factor: 2.0,
            criterion: IncreaseCriterion::SucceededThings(5),
            max_per_minute: 50,
        };
        assert_eq!(rollout::rate_per_minute(&r, 100, 4), Some(10));
        assert_eq!(rollout::rate_per_minute(&r, 0, 5), Some(20));
        assert_eq!(rollout::rate_per_minute(&r, 0, 10), Some(40));
        assert_eq!(rollout::rate_per_minute(&r, 0, 15), Some(50));
        assert_eq!(rollout::rate_per_minute(&r, 0, u64::MAX), Some(50));
    }

    fn counters(pairs: &[(S, u64)]) -> JobCounters {
        pairs
            .iter()
            .flat_map(|&(s, n)| (0..n).map(move |_| s))
            .collect()
    }

    #[test]
    fn abort_fires_at_the_threshold_after_the_minimum() {
        let rule = [AbortCriterion {
            failure_type: FailureType::Failed,
            min_executed: 10,
            threshold_percent: 50.0,
        }];
        assert_eq!(
            abort::evaluate(&rule, &counters(&[(S::Failed, 5), (S::Succeeded, 4)])),
            None
        );
        assert!(abort::evaluate(&rule, &counters(&[(S::Failed, 5), (S::Succeeded, 5)])).is_some());
        assert_eq!(
            abort::evaluate(&rule, &counters(&[(S::Failed, 4), (S::Succeeded, 6)])),
            None
        );
        // Rejections do not count as FAILED, but do count for ALL.
        let c = counters(&[(S::Rejected, 6), (S::Succeeded, 4)]);
        assert_eq!(abort::evaluate(&rule, &c), None);
        let all = [AbortCriterion {
            failure_type: FailureType::All,
            ..rule[0].clone()
        }];
        assert!(abort::evaluate(&all, &c).is_some());
    }

    #[test]
    fn retries_follow_type_and_count() {
        let rules = [RetryCriterion {
            failure_type: FailureType::Failed,
            number_of_retries: 2,
        }];
        assert!(retry::should_retry(&rules, S::Failed, 1));
        assert!(retry::should_retry(&rules, S::Failed, 2));
        assert!(!retry::should_retry(&rules, S::Failed, 3));
        assert!(!retry::should_retry(&rules, S::TimedOut, 1));
        assert!(!retry::should_retry(&rules, S::Rejected, 1));
        let all = [RetryCriterion {
            failure_type: FailureType::All,
            number_of_retries: 9,
        }];
        assert!(retry::should_retry(&all, S::TimedOut, 9));
        assert!(!retry::should_retry(&all, S::TimedOut, 10));
    }
}
