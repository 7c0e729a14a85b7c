//! Arbitrary bytes read as a sequence of intents for the four aggregates (a job execution, a
//! command execution, a job and a thing group), decided at an arbitrary, moving `now`.
//!
//! Never a panic, and after every intent: every emitted event evolves and bumps the version by
//! exactly one; a terminal status is left only the ways the transition table (docs/design.md) allows (job execution:
//! deletion to REMOVED and a retry to QUEUED; command: never; job: a plain cancel upgraded to a
//! forced one; group: never undeleted); replaying the stored events gives the live state, and
//! so does replaying them after a JSON round trip (what a restart reads back).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::config::{
    AbortCriterion, EndBehavior, FailureType, IncreaseCriterion, JobConfig, RetryCriterion,
    Rollout, Schedule, TargetSelection, Targets,
};
use fleetops_core::device::{CommandResponse, StepTimeout, UpdateRequest};
use fleetops_core::event::{EndReason, StatusDetails};
use fleetops_core::group::{Group, GroupIntent};
use fleetops_core::job::{Job, JobIntent};
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::projection::JobCounters;
use fleetops_core::{
    Aggregate, CommandStatus, Duration, Event, ExecutionId, GroupName, JobExecutionStatus, JobId,
    JobStatus, ThingName, Timestamp,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// A number a device names (`expectedVersion`, `executionNumber`): absent, the current one,
/// or anything.
#[derive(Arbitrary, Debug)]
enum Num<T> {
    Absent,
    Current,
    Raw(T),
}

/// A step timer: a valid one (the core's `Arbitrary`), or any number of minutes, so the
/// range check is exercised too.
#[derive(Arbitrary, Debug, Clone)]
enum Step {
    Valid(StepTimeout),
    RawMinutes(u64),
}

#[derive(Arbitrary, Debug, Clone)]
struct RolloutIn {
    kind: u8,
    base: u32,
    factor: f64,
    every: u32,
    on_success: bool,
    max: u32,
}

#[derive(Arbitrary, Debug, Clone)]
struct ConfigIn {
    in_progress_timeout_ms: Option<u64>,
    rollout: RolloutIn,
    abort: Vec<(FailureType, u32, f64)>,
    retry: Vec<(FailureType, u32)>,
    start_in_ms: Option<u64>,
    end_in_ms: Option<u64>,
    end_behavior: EndBehavior,
}

#[derive(Arbitrary, Debug)]
enum Op {
    // ---- job execution
    Queue {
        timeout_ms: Option<u64>,
    },
    Update {
        status: Option<JobExecutionStatus>,
        /// Unbounded: the generic map impl, so over-limit details are exercised too.
        details: Option<StatusDetails>,
        expected_version: Num<u64>,
        execution_number: Num<u32>,
        step: Step,
    },
    StartNext {
        details: Option<StatusDetails>,
        step: Step,
    },
    ExecCheckTimeout,
    ExecCancel(bool),
    ExecRemove(bool),
    ExecRetry,
    // ---- command execution
    Send {
        ttl_ms: u64,
        action: String,
        command_id: Option<String>,
    },
    Respond {
        status: CommandStatus,
        reason: Option<String>,
    },
    CmdCheckTimeout,
    CmdCancel(Option<String>),
    // ---- job
    JobCreate {
        description: Option<String>,
        things: Vec<ThingName>,
        groups: Vec<GroupName>,
        continuous: bool,
        document_is_object: bool,
        config: ConfigIn,
    },
    JobReview {
        counters: JobCounters,
        all_queued: bool,
    },
    JobCancel {
        force: bool,
        comment: Option<String>,
    },
    JobDelete(bool),
    // ---- group
    GroupCreate(Option<String>),
    GroupAdd(Vec<ThingName>),
    GroupRemove(Vec<ThingName>),
    GroupDelete,
    // ---- time and crashes
    Tick(u32),
    Jump(u64),
    Restart,
}

/// What the invariant check needs to know about an aggregate.
trait Probe: Aggregate + PartialEq {
    fn version(&self) -> u64;
    /// Whether going from `self` to `after` through `op` is allowed for a terminal `self`.
    fn leaves_terminal_legally(&self, after: &Self, op: &Op) -> bool;
}

impl Probe for JobExecution {
    fn version(&self) -> u64 {
        self.version_number
    }
    fn leaves_terminal_legally(&self, after: &Self, op: &Op) -> bool {
        use JobExecutionStatus as S;
        !self.status.is_terminal()
            || after.status == self.status
            || (after.status == S::Removed && matches!(op, Op::ExecRemove(_)))
            || (after.status == S::Queued
                && matches!(self.status, S::Failed | S::TimedOut)
                && matches!(op, Op::ExecRetry)
                && after.execution_number == self.execution_number + 1)
    }
}

impl Probe for CommandExecution {
    fn version(&self) -> u64 {
        self.version
    }
    fn leaves_terminal_legally(&self, after: &Self, _: &Op) -> bool {
        !self.status.is_terminal() || after.status == self.status
    }
}

impl Probe for Job {
    fn version(&self) -> u64 {
        self.version
    }
    fn leaves_terminal_legally(&self, after: &Self, _: &Op) -> bool {
        !self.status.is_terminal()
            || after.status == self.status
            || (self.status == JobStatus::Canceled && after.status == JobStatus::Canceled)
    }
}

impl Probe for Group {
    fn version(&self) -> u64 {
        self.version
    }
    fn leaves_terminal_legally(&self, after: &Self, _: &Op) -> bool {
        !self.deleted || after.deleted
    }
}

/// One aggregate's stream: its live state and its stored events.
struct Stream<A> {
    state: Option<A>,
    log: Vec<Event>,
}

impl<A: Probe> Stream<A> {
    fn new() -> Self {
        Self {
            state: None,
            log: Vec::new(),
        }
    }

    fn apply(&mut self, intent: A::Intent, now: Timestamp, op: &Op) {
        match A::decide(self.state.as_ref(), intent, now) {
            Err(rejection) => {
                // Everything a refusal offers the wire layer must work on any refusal.
                let _ = (rejection.code(), rejection.to_string());
                let _ = rejection.execution_state();
            }
            Ok(events) => {
                let mut state = self.state.clone();
                for e in &events {
                    let version = state.as_ref().map_or(0, Probe::version);
                    let next = A::evolve(state, e).unwrap_or_else(|err| {
                        panic!("{} emitted {e:?}, which does not evolve: {err}", A::NAME)
                    });
                    assert_eq!(next.version(), version + 1, "version after {e:?}");
                    state = Some(next);
                }
                if let (Some(before), Some(after)) = (&self.state, &state) {
                    assert!(
                        before.leaves_terminal_legally(after, op),
                        "{op:?} took a {} from {before:?} to {after:?}",
                        A::NAME
                    );
                }
                self.log.extend(events);
                self.state = state;
            }
        }
        let replayed = A::replay(&self.log).expect("stored history replays");
        assert_eq!(replayed, self.state, "replay differs from the live state");
    }

    /// Rebuilds the state from the stored events as a restart would read them back.
    fn restart(&mut self) {
        let stored: Vec<Event> = self
            .log
            .iter()
            .map(|e| {
                let text = serde_json::to_string(e).expect("events encode");
                serde_json::from_str(&text).expect("stored events decode")
            })
            .collect();
        assert_eq!(stored, self.log, "events change through JSON");
        let rebuilt = A::replay(&stored).expect("stored history replays");
        assert_eq!(rebuilt, self.state, "restart changed the state");
        self.state = rebuilt;
    }
}

fn step(s: Step) -> StepTimeout {
    match s {
        Step::Valid(step) => step,
        Step::RawMinutes(m) => StepTimeout::Minutes(m),
    }
}

fn config(c: ConfigIn, now: Timestamp) -> JobConfig {
    let r = c.rollout;
    let criterion = if r.on_success {
        IncreaseCriterion::SucceededThings(r.every)
    } else {
        IncreaseCriterion::NotifiedThings(r.every)
    };
    JobConfig {
        in_progress_timeout: c.in_progress_timeout_ms.map(Duration::from_millis),
        rollout: match r.kind % 3 {
            0 => Rollout::Unlimited,
            1 => Rollout::Fixed { per_minute: r.base },
            _ => Rollout::Exponential {
                base_per_minute: r.base,
                factor: r.factor,
                criterion,
                max_per_minute: r.max,
            },
        },
        abort: c
            .abort
            .into_iter()
            .map(
                |(failure_type, min_executed, threshold_percent)| AbortCriterion {
                    failure_type,
                    min_executed,
                    threshold_percent,
                },
            )
            .collect(),
        retry: c
            .retry
            .into_iter()
            .map(|(failure_type, number_of_retries)| RetryCriterion {
                failure_type,
                number_of_retries,
            })
            .collect(),
        schedule: Schedule {
            start_time: c.start_in_ms.map(|d| now + Duration::from_millis(d)),
            end_time: c.end_in_ms.map(|d| now + Duration::from_millis(d)),
            end_behavior: c.end_behavior,
        },
        stages: Vec::new(),
        maintenance_windows: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(start) = u.arbitrary::<u64>() else {
        return;
    };
    let mut now = Timestamp::from_millis(start);
    let job_id = JobId::parse("job-1").expect("valid");
    let thing = ThingName::parse("thing-1").expect("valid");
    let mut exec = Stream::<JobExecution>::new();
    let mut cmd = Stream::<CommandExecution>::new();
    let mut job = Stream::<Job>::new();
    let mut group = Stream::<Group>::new();

    // `arbitrary` keeps producing values from exhausted input, so stop when it is used up.
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else {
            return;
        };
        let o = &op;
        match op {
            Op::Queue { timeout_ms } => exec.apply(
                JobExecutionIntent::Queue {
                    job_id: job_id.clone(),
                    thing: thing.clone(),
                    in_progress_timeout: timeout_ms.map(Duration::from_millis),
                },
                now,
                o,
            ),
            Op::Update {
                status,
                ref details,
                ref expected_version,
                ref execution_number,
                ref step,
            } => {
                let current = exec.state.as_ref();
                let expected_version = match expected_version {
                    Num::Absent => None,
                    Num::Current => current.map(|s| s.version_number),
                    Num::Raw(v) => Some(*v),
                };
                let execution_number = match execution_number {
                    Num::Absent => None,
                    Num::Current => current.map(|s| s.execution_number),
                    Num::Raw(n) => Some(*n),
                };
                let request = UpdateRequest {
                    status,
                    status_details: details.clone(),
                    expected_version,
                    execution_number,
                    step_timeout: self::step(step.clone()),
                    include_job_execution_state: false,
                    include_job_document: false,
                };
                exec.apply(JobExecutionIntent::Update(request), now, o)
            }
            Op::StartNext {
                ref details,
                ref step,
            } => {
                let intent = JobExecutionIntent::Start {
                    status_details: details.clone(),
                    step_timeout: self::step(step.clone()),
                };
                exec.apply(intent, now, o)
            }
            Op::ExecCheckTimeout => exec.apply(JobExecutionIntent::CheckTimeout, now, o),
            Op::ExecCancel(force) => exec.apply(
                JobExecutionIntent::Cancel {
                    force,
                    reason: EndReason::Operator,
                },
                now,
                o,
            ),
            Op::ExecRemove(force) => exec.apply(
                JobExecutionIntent::Remove {
                    force,
                    reason: EndReason::Operator,
                },
                now,
                o,
            ),
            Op::ExecRetry => exec.apply(JobExecutionIntent::Retry, now, o),
            Op::Send {
                ttl_ms,
                ref action,
                ref command_id,
            } => cmd.apply(
                CommandIntent::Send {
                    execution_id: ExecutionId::parse("cmd-1").expect("valid"),
                    thing: thing.clone(),
                    command_id: command_id.clone(),
                    action: action.clone(),
                    params: json!({ "p": ttl_ms }),
                    ttl: Duration::from_millis(ttl_ms),
                },
                now,
                o,
            ),
            Op::Respond { status, ref reason } => cmd.apply(
                CommandIntent::Respond(CommandResponse {
                    status,
                    result: Some(json!({ "status": status.as_str() })),
                    status_reason: reason.clone(),
                }),
                now,
                o,
            ),
            Op::CmdCheckTimeout => cmd.apply(CommandIntent::CheckTimeout, now, o),
            Op::CmdCancel(ref reason) => cmd.apply(
                CommandIntent::Cancel {
                    reason: reason.clone(),
                },
                now,
                o,
            ),
            Op::JobCreate {
                ref description,
                ref things,
                ref groups,
                continuous,
                document_is_object,
                ref config,
            } => {
                let intent = JobIntent::Create {
                    job_id: job_id.clone(),
                    name: None,
                    description: description.clone(),
                    targets: Targets {
                        things: things.clone(),
                        groups: groups.clone(),
                    },
                    selection: if continuous {
                        TargetSelection::Continuous
                    } else {
                        TargetSelection::Snapshot
                    },
                    document: if document_is_object {
                        json!({ "url": "https://fw.invalid/1.bin" })
                    } else {
                        json!([1, 2])
                    },
                    config: self::config(config.clone(), now),
                };
                job.apply(intent, now, o)
            }
            Op::JobReview {
                counters,
                all_queued,
            } => job.apply(
                JobIntent::Review {
                    counters,
                    all_queued,
                    stage: None,
                },
                now,
                o,
            ),
            Op::JobCancel { force, ref comment } => job.apply(
                JobIntent::Cancel {
                    force,
                    comment: comment.clone(),
                },
                now,
                o,
            ),
            Op::JobDelete(force) => job.apply(JobIntent::Delete { force }, now, o),
            Op::GroupCreate(ref description) => group.apply(
                GroupIntent::Create {
                    name: GroupName::parse("lobby").expect("valid"),
                    description: description.clone(),
                },
                now,
                o,
            ),
            Op::GroupAdd(ref names) => group.apply(GroupIntent::AddMembers(names.clone()), now, o),
            Op::GroupRemove(ref names) => {
                group.apply(GroupIntent::RemoveMembers(names.clone()), now, o)
            }
            Op::GroupDelete => group.apply(GroupIntent::Delete, now, o),
            Op::Tick(ms) => now = now + Duration::from_millis(u64::from(ms)),
            Op::Jump(ms) => now = now + Duration::from_millis(ms),
            Op::Restart => {
                exec.restart();
                cmd.restart();
                job.restart();
                group.restart();
            }
        }
    }
});
