//! Property tests of the projections: folding the global feed through
//! [`Projections`] must give exactly what replaying each stream gives.
//!
//! Histories are random but valid: random intents against a few job executions and commands,
//! decided by the real aggregates at an advancing clock, with only accepted events appended to
//! one global feed (positions 1, 2, …), as the runtime does. The expected read models are then
//! computed the slow, obvious way — replay every stream, look at its status — and compared
//! with the fold:
//!
//! - per-job counters equal a direct count of each execution's replayed status;
//! - each thing's pending queue holds exactly its QUEUED and IN_PROGRESS executions, in
//!   progress first, then by queue time, then by job id;
//! - the deadline index holds exactly each in-progress execution's `next_deadline()` and each
//!   unanswered command's TTL deadline;
//! - applying a prefix and then the rest (with an overlap re-delivered, as a subscription
//!   resumed from an older checkpoint does) equals applying everything once; re-applying
//!   applied positions changes nothing; a gap is refused and changes nothing.

use std::collections::BTreeMap;

use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::device::{CommandResponse, StepTimeout, UpdateRequest};
use fleetops_core::event::EndReason;
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::projection::{
    ExecutionEntry, JobCounters, PendingKey, ProjectionError, Projections,
};
use fleetops_core::store::StoredEvent;
use fleetops_core::{
    Aggregate, CommandStatus as C, Duration, Event, ExecutionId, JobExecutionStatus as S, JobId,
    StreamId, ThingName, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::json;
use uuid::Uuid;

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
const JOBS: [&str; 3] = ["job-a", "job-b", "job-c"];
const THINGS: [&str; 3] = ["thing-a", "thing-b", "thing-c"];
const COMMANDS: [&str; 2] = ["cmd-1", "cmd-2"];

fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/projection_props.txt",
        ))),
        ..Config::default()
    }
}

fn job(i: usize) -> JobId {
    JobId::parse(JOBS[i]).expect("valid")
}

fn thing(i: usize) -> ThingName {
    ThingName::parse(THINGS[i]).expect("valid")
}

fn command(i: usize) -> ExecutionId {
    ExecutionId::parse(COMMANDS[i]).expect("valid")
}

#[derive(Debug, Clone)]
enum ExecOp {
    Queue(Option<u64>),
    /// A status, a step timeout and a details patch: `Some(0)` an empty one, `Some(n)` one
    /// that sets key `k` to `n`.
    Report(S, StepTimeout, Option<u8>),
    CheckTimeout,
    Cancel(bool),
    Remove(bool),
    Retry,
}

#[derive(Debug, Clone)]
enum CmdOp {
    Send(u64),
    Respond(C),
    CheckTimeout,
    Cancel,
}

#[derive(Debug, Clone)]
enum Op {
    Exec {
        job: usize,
        thing: usize,
        op: ExecOp,
    },
    Cmd {
        cmd: usize,
        op: CmdOp,
    },
}

fn exec_op() -> impl Strategy<Value = ExecOp> {
    let step = prop_oneof![
        3 => Just(StepTimeout::Keep),
        1 => Just(StepTimeout::Clear),
        2 => (1u64..=20).prop_map(StepTimeout::Minutes),
    ];
    let status = prop_oneof![
        4 => Just(S::InProgress),
        2 => Just(S::Succeeded),
        2 => Just(S::Failed),
        1 => Just(S::Rejected),
    ];
    prop_oneof![
        4 => prop::option::of(1u64..=30).prop_map(ExecOp::Queue),
        6 => (status, step, prop::option::of(0u8..3))
            .prop_map(|(s, st, d)| ExecOp::Report(s, st, d)),
        2 => Just(ExecOp::CheckTimeout),
        1 => any::<bool>().prop_map(ExecOp::Cancel),
        1 => any::<bool>().prop_map(ExecOp::Remove),
        2 => Just(ExecOp::Retry),
    ]
}

fn cmd_op() -> impl Strategy<Value = CmdOp> {
    prop_oneof![
        2 => (1u64..=600).prop_map(CmdOp::Send),
        2 => prop::sample::select(vec![C::Succeeded, C::Failed, C::Rejected]).prop_map(CmdOp::Respond),
        1 => Just(CmdOp::CheckTimeout),
        1 => Just(CmdOp::Cancel),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..JOBS.len(), 0..THINGS.len(), exec_op())
            .prop_map(|(job, thing, op)| Op::Exec { job, thing, op }),
        1 => (0..COMMANDS.len(), cmd_op()).prop_map(|(cmd, op)| Op::Cmd { cmd, op }),
    ]
}

/// Clock steps between intents; zero is common so queue times tie and job ids break them.
fn dt() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 1u64..60_000,
        1 => 60_000u64..3_600_000,
    ]
}

/// A valid history: the global feed, and every stream's replayed state.
#[derive(Debug)]
struct History {
    feed: Vec<StoredEvent>,
    executions: BTreeMap<(usize, usize), JobExecution>,
    commands: BTreeMap<usize, CommandExecution>,
}

fn build(ops: &[(Op, u64)]) -> History {
    let mut now = T0;
    let mut feed: Vec<StoredEvent> = Vec::new();
    let mut streams: BTreeMap<StreamId, Vec<Event>> = BTreeMap::new();
    let mut executions = BTreeMap::new();
    let mut commands = BTreeMap::new();
    let mut append = |stream: StreamId, events: Vec<Event>, now: Timestamp| {
        let stored = streams.entry(stream.clone()).or_default();
        for event in events {
            stored.push(event.clone());
            let position = feed.len() as u64 + 1;
            feed.push(StoredEvent {
                event_id: Uuid::from_u128(u128::from(position)),
                stream: stream.clone(),
                stream_version: stored.len() as u64,
                position,
                recorded_at: now,
                schema_version: event.schema_version(),
                correlation_id: None,
                causation_id: None,
                idempotency_key: None,
                event,
            });
        }
    };
    for (op, dt) in ops {
        now = now + Duration::from_millis(*dt);
        match op {
            Op::Exec {
                job: j,
                thing: t,
                op,
            } => {
                let intent = match op {
                    ExecOp::Queue(timeout) => JobExecutionIntent::Queue {
                        job_id: job(*j),
                        thing: thing(*t),
                        in_progress_timeout: timeout.map(Duration::from_minutes),
                    },
                    ExecOp::Report(status, step, details) => {
                        JobExecutionIntent::Update(UpdateRequest {
                            status: Some(*status),
                            step_timeout: *step,
                            status_details: details.map(|n| {
                                let key =
                                    fleetops_core::ids::StatusDetailKey::parse("k").expect("valid");
                                (n > 0).then(|| (key, n.to_string())).into_iter().collect()
                            }),
                            ..UpdateRequest::default()
                        })
                    }
                    ExecOp::CheckTimeout => JobExecutionIntent::CheckTimeout,
                    ExecOp::Cancel(force) => JobExecutionIntent::Cancel {
                        force: *force,
                        reason: EndReason::JobCanceled,
                    },
                    ExecOp::Remove(force) => JobExecutionIntent::Remove {
                        force: *force,
                        reason: EndReason::Operator,
                    },
                    ExecOp::Retry => JobExecutionIntent::Retry,
                };
                let state = executions.remove(&(*j, *t));
                match JobExecution::execute(state.clone(), intent, now) {
                    Ok((next, events)) => {
                        append(StreamId::job_execution(&job(*j), &thing(*t)), events, now);
                        if let Some(next) = next {
                            executions.insert((*j, *t), next);
                        }
                    }
                    Err(_) => {
                        if let Some(state) = state {
                            executions.insert((*j, *t), state);
                        }
                    }
                }
            }
            Op::Cmd { cmd: c, op } => {
                let intent = match op {
                    CmdOp::Send(ttl_secs) => CommandIntent::Send {
                        execution_id: command(*c),
                        thing: thing(0),
                        command_id: None,
                        action: "reboot".into(),
                        params: json!({}),
                        ttl: Duration::from_secs(*ttl_secs),
                    },
                    CmdOp::Respond(status) => CommandIntent::Respond(CommandResponse {
                        status: *status,
                        result: None,
                        status_reason: None,
                    }),
                    CmdOp::CheckTimeout => CommandIntent::CheckTimeout,
                    CmdOp::Cancel => CommandIntent::Cancel { reason: None },
                };
                let state = commands.remove(c);
                match CommandExecution::execute(state.clone(), intent, now) {
                    Ok((next, events)) => {
                        append(StreamId::command(&command(*c)), events, now);
                        if let Some(next) = next {
                            commands.insert(*c, next);
                        }
                    }
                    Err(_) => {
                        if let Some(state) = state {
                            commands.insert(*c, state);
                        }
                    }
                }
            }
        }
    }
    History {
        feed,
        executions,
        commands,
    }
}

/// Everything observable about the projections, for comparing two of them.
#[derive(Debug, PartialEq)]
struct View {
    checkpoint: u64,
    counters: Vec<JobCounters>,
    pending: Vec<Vec<PendingKey>>,
    next_pending: Vec<Option<PendingKey>>,
    deadlines: Vec<(Timestamp, StreamId)>,
    next_deadline: Option<Timestamp>,
    entries: Vec<Option<ExecutionEntry>>,
    execution_count: usize,
}

fn view(p: &Projections) -> View {
    let things = (0..THINGS.len()).map(thing);
    View {
        checkpoint: p.checkpoint(),
        counters: (0..JOBS.len()).map(|j| p.counters(&job(j))).collect(),
        pending: things
            .clone()
            .map(|t| {
                let queue: Vec<PendingKey> = p.pending(&t).cloned().collect();
                queue
            })
            .collect(),
        next_pending: things.map(|t| p.next_pending(&t).cloned()).collect(),
        deadlines: p.due(Timestamp::MAX).cloned().collect(),
        next_deadline: p.next_deadline(),
        entries: (0..JOBS.len())
            .flat_map(|j| (0..THINGS.len()).map(move |t| (j, t)))
            .map(|(j, t)| p.execution(&job(j), &thing(t)).cloned())
            .collect(),
        execution_count: p.execution_count(),
    }
}

fn fold(events: &[StoredEvent]) -> Projections {
    let mut p = Projections::new();
    for e in events {
        p.apply(e).expect("a gap-free feed projects");
    }
    p
}

fn history() -> impl Strategy<Value = History> {
    prop::collection::vec((op(), dt()), 0..120).prop_map(|ops| build(&ops))
}

proptest! {
    #![proptest_config(config(256))]

    /// The read models equal what replaying every stream says, for any valid history.
    #[test]
    fn projections_equal_a_direct_count_of_replayed_streams(h in history()) {
        // Each stream's own replay is the truth the projection must match.
        for ((j, t), state) in &h.executions {
            let stream = StreamId::job_execution(&job(*j), &thing(*t));
            let own: Vec<Event> = h.feed.iter().filter(|e| e.stream == stream)
                .map(|e| e.event.clone()).collect();
            let replayed = JobExecution::replay(&own).expect("replays");
            prop_assert_eq!(replayed.as_ref(), Some(state));
        }
        let p = fold(&h.feed);
        prop_assert_eq!(p.checkpoint(), h.feed.len() as u64);
        prop_assert_eq!(p.execution_count(), h.executions.len());

        for j in 0..JOBS.len() {
            let mut expected = JobCounters::default();
            for state in h.executions.iter().filter(|((jj, _), _)| *jj == j).map(|(_, s)| s) {
                expected.record(None, state.status);
            }
            prop_assert_eq!(p.counters(&job(j)), expected, "counters of {}", job(j));
        }

        for t in 0..THINGS.len() {
            // (rank, queued_at, job): in progress first, then oldest queued, then job id.
            let mut expected: Vec<(u8, Timestamp, JobId)> = h.executions.iter()
                .filter(|((_, tt), s)| *tt == t && matches!(s.status, S::Queued | S::InProgress))
                .map(|((j, _), s)| (u8::from(s.status == S::Queued), s.queued_at, job(*j)))
                .collect();
            expected.sort();
            let got: Vec<(u8, Timestamp, JobId)> = p.pending(&thing(t))
                .map(|k| (k.rank, k.queued_at, k.job_id.clone()))
                .collect();
            prop_assert_eq!(&got, &expected, "pending queue of {}", thing(t));
            prop_assert_eq!(
                p.next_pending(&thing(t)).map(|k| k.job_id.clone()),
                expected.first().map(|(_, _, j)| j.clone())
            );
        }

        let mut expected: Vec<(Timestamp, StreamId)> = h.executions.iter()
            .filter_map(|((j, t), s)| {
                s.next_deadline().map(|d| (d, StreamId::job_execution(&job(*j), &thing(*t))))
            })
            .chain(h.commands.iter().filter(|(_, c)| c.status == C::Sent)
                .map(|(i, c)| (c.deadline, StreamId::command(&command(*i)))))
            .collect();
        expected.sort();
        let got: Vec<(Timestamp, StreamId)> = p.due(Timestamp::MAX).cloned().collect();
        prop_assert_eq!(&got, &expected, "deadline index");
        prop_assert_eq!(p.next_deadline(), expected.first().map(|(d, _)| *d));

        for ((j, t), s) in &h.executions {
            let entry = p.execution(&job(*j), &thing(*t)).expect("tracked");
            // The record is the aggregate's state less its status details, so the runtime's
            // own intents decide on it exactly as on the replayed stream.
            let mut without_details = s.clone();
            without_details.status_details = Default::default();
            prop_assert_eq!(entry.to_state(&job(*j), &thing(*t)), without_details);
            // The flag follows the details, so the record alone rebuilds an execution that
            // has none, and never one that has some.
            prop_assert_eq!(entry.has_status_details, !s.status_details.is_empty());
            let full = entry.full_state(&job(*j), &thing(*t));
            prop_assert_eq!(full.as_ref(), s.status_details.is_empty().then_some(s));
        }
    }

    /// A projection resumed from a checkpoint ends where one uninterrupted fold ends, however
    /// much of the feed is delivered twice; a skipped position is refused without harm.
    #[test]
    fn projections_resume_from_a_checkpoint_skip_redelivery_and_refuse_gaps(
        h in history(),
        split in any::<prop::sample::Index>(),
        overlap in any::<prop::sample::Index>(),
        gap in 1u64..5,
    ) {
        let all = view(&fold(&h.feed));
        let n = h.feed.len();
        let k = split.index(n + 1);
        let mut p = fold(&h.feed[..k]);
        prop_assert_eq!(p.checkpoint(), k as u64);

        // A gap: the next event seen is past checkpoint + 1.
        if let Some(next) = h.feed.get(k) {
            let before = view(&p);
            let mut skipped = next.clone();
            skipped.position = k as u64 + 1 + gap;
            prop_assert_eq!(
                p.apply(&skipped),
                Err(ProjectionError::Gap { expected: k as u64 + 1, got: k as u64 + 1 + gap })
            );
            prop_assert_eq!(view(&p), before, "a refused gap changed the projections");
        }

        // Resume from an older position: [j, k) is delivered a second time.
        let j = overlap.index(k + 1);
        for e in &h.feed[j..] {
            p.apply(e).expect("resumed feed projects");
        }
        prop_assert_eq!(view(&p), all, "prefix + rest differs from one fold");

        // Everything again: all positions are already applied.
        for e in &h.feed {
            p.apply(e).expect("re-delivery is accepted");
        }
        prop_assert_eq!(view(&p), view(&fold(&h.feed)), "re-delivery changed the projections");
    }
}
