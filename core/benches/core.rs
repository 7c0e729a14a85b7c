//! Core benchmarks: decide+evolve transitions per second and the replay of
//! 1,000,000 stored events. Targets: at least 5M transitions/s on one core; a 1M-event replay
//! under 0.5 s. Figures and the machine they came from are in `BENCHMARKS.md`.
//!
//! Run: `cargo bench -p fleetops-core --bench core -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use fleetops_core::command::{CommandExecution, CommandIntent};
use fleetops_core::device::{CommandResponse, StepTimeout, UpdateRequest};
use fleetops_core::event::{StatusDetails, StepTimer};
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::job_execution::{JobExecution, JobExecutionIntent};
use fleetops_core::{
    Aggregate, CommandStatus, Duration, Event, ExecutionId, JobExecutionStatus, JobId, ThingName,
    Timestamp,
};
use serde_json::json;

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn details(progress: &str) -> StatusDetails {
    [(
        StatusDetailKey::parse("progress").expect("valid"),
        progress.to_owned(),
    )]
    .into()
}

fn update(status: JobExecutionStatus, details: Option<StatusDetails>) -> JobExecutionIntent {
    JobExecutionIntent::Update(UpdateRequest {
        status: Some(status),
        status_details: details,
        ..UpdateRequest::default()
    })
}

/// The intents of one job execution's life: queue, start, one progress report with a step
/// timer, success. Four transitions, each one decide and one evolve.
fn job_lifecycle() -> Vec<JobExecutionIntent> {
    vec![
        JobExecutionIntent::Queue {
            job_id: JobId::parse("job-1").expect("valid"),
            thing: ThingName::parse("thing-1").expect("valid"),
            in_progress_timeout: Some(Duration::from_minutes(30)),
        },
        update(JobExecutionStatus::InProgress, None),
        JobExecutionIntent::Update(UpdateRequest {
            status: Some(JobExecutionStatus::InProgress),
            status_details: Some(details("50%")),
            step_timeout: StepTimeout::Minutes(5),
            ..UpdateRequest::default()
        }),
        update(JobExecutionStatus::Succeeded, Some(details("100%"))),
    ]
}

/// The intents of one command's life: send, then the device's answer.
fn command_lifecycle() -> Vec<CommandIntent> {
    vec![
        CommandIntent::Send {
            execution_id: ExecutionId::parse("cmd-1").expect("valid"),
            thing: ThingName::parse("thing-1").expect("valid"),
            command_id: None,
            action: "reboot".into(),
            params: json!({"delay": 5}),
            ttl: Duration::from_secs(30),
        },
        CommandIntent::Respond(CommandResponse {
            status: CommandStatus::Succeeded,
            result: None,
            status_reason: None,
        }),
    ]
}

fn transitions(c: &mut Criterion) {
    let mut group = c.benchmark_group("transitions");

    let job = job_lifecycle();
    group.throughput(Throughput::Elements(job.len() as u64));
    group.bench_function("job_execution_queue_start_progress_succeed", |b| {
        // The runtime owns each decoded intent; cloning them is set-up, not the transition.
        b.iter_batched(
            || job.clone(),
            |intents| {
                let mut state = None;
                for (i, intent) in intents.into_iter().enumerate() {
                    let now = T0 + Duration::from_secs(i as u64);
                    let (next, events) =
                        JobExecution::execute(state, intent, now).expect("lifecycle is valid");
                    black_box(&events);
                    state = next;
                }
                black_box(state)
            },
            BatchSize::SmallInput,
        )
    });

    let cmd = command_lifecycle();
    group.throughput(Throughput::Elements(cmd.len() as u64));
    group.bench_function("command_send_respond", |b| {
        b.iter_batched(
            || cmd.clone(),
            |intents| {
                let mut state = None;
                for intent in intents {
                    let (next, events) =
                        CommandExecution::execute(state, intent, T0).expect("lifecycle is valid");
                    black_box(&events);
                    state = next;
                }
                black_box(state)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// 250,000 executions × 4 events, as the stored streams of a large job.
fn many_short_streams() -> Vec<Vec<Event>> {
    let job = JobId::parse("job-1").expect("valid");
    (0..250_000u64)
        .map(|i| {
            let at = T0 + Duration::from_secs(i);
            vec![
                Event::ExecutionQueued {
                    job_id: job.clone(),
                    thing: ThingName::parse(&format!("thing-{i}")).expect("valid"),
                    execution_number: 1,
                    queued_at: at,
                    in_progress_timeout: Some(Duration::from_minutes(30)),
                },
                Event::ExecutionStarted {
                    at,
                    status_details: None,
                    in_progress_deadline: Some(at + Duration::from_minutes(30)),
                    step: StepTimer::Unchanged,
                },
                Event::ExecutionProgressed {
                    at,
                    status_details: Some(details("50%")),
                    step: StepTimer::Set(at + Duration::from_minutes(5)),
                },
                Event::ExecutionFinished {
                    status: JobExecutionStatus::Succeeded,
                    at,
                    status_details: Some(details("100%")),
                },
            ]
        })
        .collect()
}

/// One execution that reported progress 999,998 times: the longest stream a device can make.
fn one_long_stream() -> Vec<Event> {
    let mut events = vec![
        Event::ExecutionQueued {
            job_id: JobId::parse("job-1").expect("valid"),
            thing: ThingName::parse("thing-1").expect("valid"),
            execution_number: 1,
            queued_at: T0,
            in_progress_timeout: None,
        },
        Event::ExecutionStarted {
            at: T0,
            status_details: None,
            in_progress_deadline: None,
            step: StepTimer::Unchanged,
        },
    ];
    events.extend((0..999_998u64).map(|i| Event::ExecutionProgressed {
        at: T0 + Duration::from_millis(i),
        status_details: Some(details(&(i % 100).to_string())),
        step: StepTimer::Unchanged,
    }));
    events
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    // A million events per iteration: few samples are enough for a stable median.
    group.sample_size(10);
    group.throughput(Throughput::Elements(1_000_000));

    let streams = many_short_streams();
    assert_eq!(streams.iter().map(Vec::len).sum::<usize>(), 1_000_000);
    group.bench_function("1m_events_250k_executions", |b| {
        b.iter(|| {
            for stream in &streams {
                black_box(JobExecution::replay(stream).expect("valid history"));
            }
        })
    });

    let stream = one_long_stream();
    assert_eq!(stream.len(), 1_000_000);
    group.bench_function("1m_events_one_stream", |b| {
        b.iter(|| black_box(JobExecution::replay(&stream).expect("valid history")))
    });
    group.finish();
}

/// The criterion group; the function the macro generates has no doc comment of its own.
mod groups {
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::transitions, super::replay);
}
criterion_main!(groups::benches);
