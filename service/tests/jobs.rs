//! Jobs through the runtime: rollout pacing, retries, abort rules, continuous groups, step
//! timeouts, schedules, cancel and delete, listings.

mod common;

use common::*;
use fleetops_core::config::TargetSelection;
use fleetops_core::config::{
    AbortCriterion, EndBehavior, FailureType, IncreaseCriterion, JobConfig, RetryCriterion,
    Rollout, Schedule,
};
use fleetops_core::device::{Reply, StartNextRequest, StepTimeout, UpdateRequest};
use fleetops_core::event::{JobCancelReason, TimeoutCause};
use fleetops_core::{
    Duration, ErrorCode, Event, GroupName, JobExecutionStatus as S, JobId, JobStatus, StreamId,
    ThingName,
};
use fleetops_service::sim::{from_fn, simulate, Outcome, Task};
use fleetops_service::{JobFilter, JobSpec, Page};
use serde_json::json;

fn doc() -> serde_json::Value {
    json!({"operation": "update", "url": "https://example.invalid/fw.bin"})
}

/// A job over `targets` queueing at most `per_minute` of them a minute.
fn paced(job: &JobId, targets: &[ThingName], per_minute: u32) -> JobSpec {
    JobSpec::new(job.clone(), doc())
        .things(targets.to_vec())
        .config(JobConfig {
            rollout: Rollout::Fixed { per_minute },
            ..JobConfig::default()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rollout_queues_at_most_its_rate_per_minute() {
    let env = env().await;
    let job = j("paced");
    let targets = things("p", 25);
    env.fleet
        .create_job(paced(&job, &targets, 10))
        .await
        .unwrap();
    settle(&env.fleet).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!((d.counters.queued, d.remaining_targets), (10, 15));
    advance(&env, Duration::from_secs(59)).await;
    assert_eq!(env.fleet.describe_job(&job).unwrap().counters.queued, 10);
    advance(&env, Duration::from_secs(1)).await;
    assert_eq!(env.fleet.describe_job(&job).unwrap().counters.queued, 20);
    advance(&env, Duration::from_secs(60)).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!((d.counters.queued, d.remaining_targets), (25, 0));
    // Paging over the executions, with a status filter.
    let first = env
        .fleet
        .list_job_executions(&job, Some(S::Queued), &Page::first(20))
        .unwrap();
    assert_eq!(first.items.len(), 20);
    let rest = env
        .fleet
        .list_job_executions(
            &job,
            Some(S::Queued),
            &Page {
                after: first.next,
                limit: 20,
            },
        )
        .unwrap();
    assert_eq!(rest.items.len(), 5);
    assert_eq!(rest.next, None);
    assert!(env
        .fleet
        .list_job_executions(&job, Some(S::Succeeded), &Page::first(20))
        .unwrap()
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exponential_rollout_speeds_up_as_things_succeed() {
    let env = env().await;
    let job = j("expo");
    let _sim = simulate(env.devices, Outcome::Succeed);
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .things(things("x", 20))
                .config(JobConfig {
                    rollout: Rollout::Exponential {
                        base_per_minute: 2,
                        factor: 2.0,
                        criterion: IncreaseCriterion::SucceededThings(2),
                        max_per_minute: 8,
                    },
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    // 2 queued; their successes raise the rate to 4, then 8, within the first minute.
    eventually("first window", || {
        env.fleet.describe_job(&job).unwrap().counters.succeeded == 8
    })
    .await;
    settle(&env.fleet).await;
    assert_eq!(env.fleet.describe_job(&job).unwrap().counters.total(), 8);
    env.clock.advance(Duration::from_secs(60));
    eventually("second window", || {
        env.fleet.describe_job(&job).unwrap().counters.succeeded == 16
    })
    .await;
    settle(&env.fleet).await;
    assert_eq!(env.fleet.describe_job(&job).unwrap().counters.total(), 16);
    env.clock.advance(Duration::from_secs(60));
    eventually("job completes", || {
        env.fleet.describe_job(&job).unwrap().job.status == JobStatus::Completed
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_executions_are_retried_up_to_the_limit_then_the_job_completes() {
    let env = env().await;
    let job = j("flaky");
    let targets = things("f", 4);
    // f0000 fails its first two attempts, f0001 always fails, the rest succeed.
    let _sim = simulate(
        env.devices,
        from_fn(|thing, task| match (thing.as_str(), task) {
            ("f0000", Task::Job { attempt, .. }) if attempt <= 2 => Outcome::Fail,
            ("f0001", Task::Job { .. }) => Outcome::Fail,
            _ => Outcome::Succeed,
        }),
    );
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .things(targets.clone())
                .config(JobConfig {
                    retry: vec![RetryCriterion {
                        failure_type: FailureType::Failed,
                        number_of_retries: 3,
                    }],
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    eventually("job completes", || {
        env.fleet.describe_job(&job).unwrap().job.status == JobStatus::Completed
    })
    .await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!((d.counters.succeeded, d.counters.failed), (3, 1));
    let rows = env
        .fleet
        .list_job_executions(&job, None, &Page::first(10))
        .unwrap();
    let number = |name: &str| {
        rows.items
            .iter()
            .find(|r| r.thing.as_str() == name)
            .map(|r| (r.execution.status, r.execution.execution_number))
    };
    assert_eq!(number("f0000"), Some((S::Succeeded, 3)));
    assert_eq!(number("f0001"), Some((S::Failed, 4)));
    assert_eq!(number("f0002"), Some((S::Succeeded, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_rule_fires_at_its_threshold_and_cancels_only_queued_executions() {
    let mut env = env().await;
    let job = j("risky");
    let targets = things("a", 10);
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .things(targets.clone())
                .config(JobConfig {
                    abort: vec![AbortCriterion {
                        failure_type: FailureType::Failed,
                        min_executed: 3,
                        threshold_percent: 60.0,
                    }],
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    settle(&env.fleet).await;
    for th in &targets[..4] {
        let r = start_next(&mut env.devices, th).await;
        assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    }
    // 1 failed of 2 executed: below the minimum.
    update(&mut env.devices, &targets[0], &job, set_status(S::Failed)).await;
    update(
        &mut env.devices,
        &targets[1],
        &job,
        set_status(S::Succeeded),
    )
    .await;
    settle(&env.fleet).await;
    assert_eq!(
        env.fleet.describe_job(&job).unwrap().job.status,
        JobStatus::InProgress
    );
    // 2 failed of 3 executed = 66.7% ≥ 60%: abort.
    update(&mut env.devices, &targets[2], &job, set_status(S::Failed)).await;
    settle(&env.fleet).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!(d.job.status, JobStatus::Canceled);
    assert!(matches!(
        d.job.cancel_reason,
        Some(JobCancelReason::Aborted {
            failed: 2,
            executed: 3,
            ..
        })
    ));
    assert_eq!(
        status_of(&env.fleet, &job, &targets[3]),
        Some(S::InProgress)
    );
    for th in &targets[4..] {
        assert_eq!(status_of(&env.fleet, &job, th), Some(S::Canceled), "{th}");
    }
    assert_eq!(
        (
            d.counters.canceled,
            d.counters.in_progress,
            d.counters.failed,
            d.counters.succeeded
        ),
        (6, 1, 2, 1)
    );
    // The in-progress execution may still finish.
    let r = update(
        &mut env.devices,
        &targets[3],
        &job,
        set_status(S::Succeeded),
    )
    .await;
    accepted(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_job_follows_group_membership() {
    let mut env = env().await;
    let g = GroupName::parse("lobby").unwrap();
    env.fleet.create_group(g.clone(), None).await.unwrap();
    env.fleet
        .add_group_members(&g, vec![t("c1")])
        .await
        .unwrap();
    let job = j("follow");
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .groups([g.clone()])
                .continuous(),
        )
        .await
        .unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &t("c1")), Some(S::Queued));
    // Joiners get an execution.
    env.fleet
        .add_group_members(&g, vec![t("c2"), t("c3")])
        .await
        .unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &t("c2")), Some(S::Queued));
    assert_eq!(status_of(&env.fleet, &job, &t("c3")), Some(S::Queued));
    // c3 starts; then c2 and c3 leave: c2's queued execution is removed, c3's stays.
    start_next(&mut env.devices, &t("c3")).await;
    env.fleet
        .remove_group_members(&g, vec![t("c2"), t("c3")])
        .await
        .unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &t("c2")), Some(S::Removed));
    assert_eq!(status_of(&env.fleet, &job, &t("c3")), Some(S::InProgress));
    assert_eq!(status_of(&env.fleet, &job, &t("c1")), Some(S::Queued));
    // A thing that leaves and comes back before anything happened keeps one execution.
    env.fleet
        .add_group_members(&g, vec![t("c4")])
        .await
        .unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &t("c4")), Some(S::Queued));
    // The job never completes by itself.
    update(&mut env.devices, &t("c3"), &job, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    assert_eq!(
        env.fleet.describe_job(&job).unwrap().job.status,
        JobStatus::InProgress
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_group_is_its_members_leaving_a_continuous_job() {
    let mut env = env().await;
    let (g, other) = (
        GroupName::parse("hall").unwrap(),
        GroupName::parse("roof").unwrap(),
    );
    for (group, members) in [
        (&g, vec![t("d1"), t("d2"), t("d3")]),
        (&other, vec![t("d3")]),
    ] {
        env.fleet.create_group(group.clone(), None).await.unwrap();
        env.fleet.add_group_members(group, members).await.unwrap();
    }
    let job = j("follow-hall");
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .groups([g.clone(), other.clone()])
                .continuous(),
        )
        .await
        .unwrap();
    settle(&env.fleet).await;
    start_next(&mut env.devices, &t("d2")).await;
    env.fleet.delete_group(&g).await.unwrap();
    settle(&env.fleet).await;
    // d1 only belonged to the deleted group: its queued execution goes. d2 already started,
    // so it stays; d3 is still targeted through the other group.
    assert_eq!(status_of(&env.fleet, &job, &t("d1")), Some(S::Removed));
    assert_eq!(status_of(&env.fleet, &job, &t("d2")), Some(S::InProgress));
    assert_eq!(status_of(&env.fleet, &job, &t("d3")), Some(S::Queued));
    // Deleting the other group removes d3's execution as well.
    env.fleet.delete_group(&other).await.unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &t("d3")), Some(S::Removed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_is_replaced_then_cleared() {
    let mut env = env().await;
    let job = j("steps");
    let dev = t("s1");
    env.fleet
        .create_job(JobSpec::new(job.clone(), doc()).things([dev.clone()]))
        .await
        .unwrap();
    settle(&env.fleet).await;
    // Start with a 5-minute step timer.
    let r = env
        .devices
        .call(
            &dev,
            fleetops_core::device::DeviceRequest::StartNext(StartNextRequest {
                status_details: None,
                step_timeout: StepTimeout::Minutes(5),
            }),
        )
        .await
        .unwrap();
    assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    // At +3 min, replace it with 10 minutes (now due at +13).
    advance(&env, mins(3)).await;
    let step = |m| UpdateRequest {
        status: Some(S::InProgress),
        step_timeout: m,
        ..UpdateRequest::default()
    };
    accepted(&update(&mut env.devices, &dev, &job, step(StepTimeout::Minutes(10))).await);
    advance(&env, mins(3)).await; // +6: the first timer would have fired by now.
    assert_eq!(status_of(&env.fleet, &job, &dev), Some(S::InProgress));
    // Clear it: nothing fires, however long we wait.
    accepted(&update(&mut env.devices, &dev, &job, step(StepTimeout::Clear)).await);
    advance(&env, mins(60)).await;
    assert_eq!(status_of(&env.fleet, &job, &dev), Some(S::InProgress));
    // A new one fires when due.
    accepted(&update(&mut env.devices, &dev, &job, step(StepTimeout::Minutes(1))).await);
    advance(&env, mins(1)).await;
    assert_eq!(status_of(&env.fleet, &job, &dev), Some(S::TimedOut));
    let history = env.fleet.events(1).await.unwrap();
    drop(history);
    let x = env.fleet.get_job_execution(&job, &dev).await.unwrap();
    assert_eq!(x.status, S::TimedOut);
    let stream = StreamId::job_execution(&job, &dev);
    let events = fleetops_core::EventStore::read_stream(&env.store, &stream, 1, 100)
        .await
        .unwrap();
    assert!(matches!(
        events.last().map(|e| &e.event),
        Some(Event::ExecutionTimedOut {
            cause: TimeoutCause::Step,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_progress_timeout_ends_an_execution_and_a_retry_follows() {
    let mut env = env().await;
    let job = j("slow");
    let dev = t("s1");
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .things([dev.clone()])
                .config(JobConfig {
                    in_progress_timeout: Some(mins(10)),
                    retry: vec![RetryCriterion {
                        failure_type: FailureType::TimedOut,
                        number_of_retries: 1,
                    }],
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    settle(&env.fleet).await;
    start_next(&mut env.devices, &dev).await;
    advance(&env, mins(10)).await;
    let x = env.fleet.get_job_execution(&job, &dev).await.unwrap();
    assert_eq!((x.status, x.execution_number), (S::Queued, 2));
    start_next(&mut env.devices, &dev).await;
    advance(&env, mins(10)).await;
    let x = env.fleet.get_job_execution(&job, &dev).await.unwrap();
    assert_eq!((x.status, x.execution_number), (S::TimedOut, 2));
    assert_eq!(
        env.fleet.describe_job(&job).unwrap().job.status,
        JobStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_starts_at_its_start_time_and_stops_rollout_at_its_end() {
    let env = env().await;
    let job = j("later");
    let targets = things("l", 30);
    env.fleet
        .create_job(
            JobSpec::new(job.clone(), doc())
                .things(targets)
                .config(JobConfig {
                    rollout: Rollout::Fixed { per_minute: 10 },
                    schedule: Schedule {
                        start_time: Some(T0 + mins(10)),
                        end_time: Some(T0 + mins(11) + Duration::from_secs(30)),
                        end_behavior: EndBehavior::StopRollout,
                    },
                    ..JobConfig::default()
                }),
        )
        .await
        .unwrap();
    settle(&env.fleet).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!(
        (d.job.status, d.counters.total()),
        (JobStatus::Scheduled, 0)
    );
    advance(&env, mins(10)).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!(
        (d.job.status, d.counters.queued),
        (JobStatus::InProgress, 10)
    );
    advance(&env, mins(1)).await;
    assert_eq!(env.fleet.describe_job(&job).unwrap().counters.queued, 20);
    advance(&env, Duration::from_secs(30)).await; // the end time: rollout stops
    advance(&env, mins(5)).await;
    let d = env.fleet.describe_job(&job).unwrap();
    assert!(d.job.rollout_stopped);
    assert_eq!(
        (d.job.status, d.counters.queued, d.remaining_targets),
        (JobStatus::InProgress, 20, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_time_cancel_and_force_cancel() {
    for (behavior, in_progress_after) in [
        (EndBehavior::Cancel, S::InProgress),
        (EndBehavior::ForceCancel, S::Canceled),
    ] {
        let mut env = env().await;
        let job = j("ending");
        let targets = things("e", 3);
        env.fleet
            .create_job(
                JobSpec::new(job.clone(), doc())
                    .things(targets.clone())
                    .config(JobConfig {
                        schedule: Schedule {
                            start_time: None,
                            end_time: Some(T0 + mins(5)),
                            end_behavior: behavior,
                        },
                        ..JobConfig::default()
                    }),
            )
            .await
            .unwrap();
        settle(&env.fleet).await;
        start_next(&mut env.devices, &targets[0]).await;
        advance(&env, mins(5)).await;
        let d = env.fleet.describe_job(&job).unwrap();
        assert_eq!(d.job.status, JobStatus::Canceled);
        assert_eq!(d.job.cancel_reason, Some(JobCancelReason::EndTime));
        assert_eq!(
            status_of(&env.fleet, &job, &targets[0]),
            Some(in_progress_after)
        );
        assert_eq!(status_of(&env.fleet, &job, &targets[1]), Some(S::Canceled));
        assert_eq!(status_of(&env.fleet, &job, &targets[2]), Some(S::Canceled));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cancel_jobs_and_delete_executions() {
    let mut env = env().await;
    let job = j("ops");
    let targets = things("o", 4);
    env.fleet
        .create_job(JobSpec::new(job.clone(), doc()).things(targets.clone()))
        .await
        .unwrap();
    settle(&env.fleet).await;
    start_next(&mut env.devices, &targets[0]).await;
    start_next(&mut env.devices, &targets[1]).await;
    update(
        &mut env.devices,
        &targets[1],
        &job,
        set_status(S::Succeeded),
    )
    .await;
    // Delete a terminal execution; a pending one needs force.
    env.fleet
        .delete_job_execution(&job, &targets[1], false)
        .await
        .unwrap();
    let err = env
        .fleet
        .delete_job_execution(&job, &targets[2], false)
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::InvalidStateTransition)
    );
    // Cancel one execution, then the job (plain: in-progress ones continue).
    env.fleet
        .cancel_job_execution(&job, &targets[2], false)
        .await
        .unwrap();
    env.fleet
        .cancel_job(&job, false, Some("enough".into()))
        .await
        .unwrap();
    settle(&env.fleet).await;
    assert_eq!(
        status_of(&env.fleet, &job, &targets[0]),
        Some(S::InProgress)
    );
    assert_eq!(status_of(&env.fleet, &job, &targets[3]), Some(S::Canceled));
    // Cancel again with force: the in-progress one is canceled too.
    env.fleet.cancel_job(&job, true, None).await.unwrap();
    settle(&env.fleet).await;
    assert_eq!(status_of(&env.fleet, &job, &targets[0]), Some(S::Canceled));
    let d = env.fleet.describe_job(&job).unwrap();
    assert_eq!(
        (
            d.counters.canceled,
            d.counters.removed,
            d.counters.pending()
        ),
        (3, 1, 0)
    );
    let canceled = JobFilter {
        status: Some(JobStatus::Canceled),
        ..JobFilter::default()
    };
    let listed = env.fleet.list_jobs(&canceled, &Page::first(10));
    assert_eq!(listed.items.len(), 1);
    let continuous = JobFilter {
        selection: Some(TargetSelection::Continuous),
        ..JobFilter::default()
    };
    assert!(env
        .fleet
        .list_jobs(&continuous, &Page::first(10))
        .items
        .is_empty());
    // The device is told the job is gone.
    let r = update(
        &mut env.devices,
        &targets[0],
        &job,
        set_status(S::Succeeded),
    )
    .await;
    assert_eq!(rejected(&r).code(), ErrorCode::TerminalStateReached);
    assert_eq!(
        env.fleet
            .list_thing_executions(&targets[0], None, &Page::first(10))
            .items
            .len(),
        1
    );
    env.fleet.delete_job(&job, false).await.unwrap();
    assert!(env.fleet.describe_job(&job).is_err());
    // A deleted job is gone from every listing, not only from describe.
    let err = env
        .fleet
        .list_job_executions(&job, None, &Page::first(10))
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::ResourceNotFound)
    );
    assert!(env
        .fleet
        .list_thing_executions(&targets[0], None, &Page::first(10))
        .items
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_jobs_are_refused() {
    let env = env().await;
    let err = env
        .fleet
        .create_job(JobSpec::new(j("empty"), doc()))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::InvalidRequest)
    );
    env.fleet
        .create_job(JobSpec::new(j("dup"), doc()).things([t("x")]))
        .await
        .unwrap();
    let err = env
        .fleet
        .create_job(JobSpec::new(j("dup"), doc()).things([t("x")]))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::InvalidRequest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cached_state_only_executions_with_status_details_are_read_back() {
    // No state cache at all: every decision starts from the read model or the stream.
    let store = fleetops_core::testkit::FaultyStore::new(fleetops_store_memory::MemoryStore::new());
    let reads = store.handle();
    let (link, mut devices) = fleetops_service::link::ChannelLink::pair(64);
    let fleet = fleetops_service::Fleet::builder(store.clone(), link)
        .clock(fleetops_service::clock::ManualClock::new(T0))
        .ids(fleetops_service::ids::SequentialIds::default())
        .config(fleetops_service::FleetConfig {
            execution_cache: 0,
            ..fleetops_service::FleetConfig::default()
        })
        .start()
        .await
        .unwrap();
    let job = j("lean");
    let (plain, detailed) = (t("plain"), t("detailed"));
    fleet
        .create_job(JobSpec::new(job.clone(), doc()).things([plain.clone(), detailed.clone()]))
        .await
        .unwrap();
    // The rollout driver queues the executions after the job is created.
    settle(&fleet).await;
    let details = |k: &str, v: &str| {
        Some(
            [(
                fleetops_core::ids::StatusDetailKey::parse(k).unwrap(),
                v.to_owned(),
            )]
            .into_iter()
            .collect(),
        )
    };

    // A device that reports statuses alone: the folded record is its whole state.
    let r = start_next(&mut devices, &plain).await;
    assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    accepted(&update(&mut devices, &plain, &job, set_status(S::Succeeded)).await);
    let plain_stream = StreamId::job_execution(&job, &plain);
    assert_eq!(
        reads.stream_reads(&plain_stream),
        0,
        "decided on the read model"
    );

    // Status details live only in the stream: it is read, so a repeated report of the same
    // details is seen to change nothing.
    let r = devices
        .call(
            &detailed,
            fleetops_core::device::DeviceRequest::StartNext(StartNextRequest {
                status_details: details("step", "download"),
                step_timeout: StepTimeout::Keep,
            }),
        )
        .await
        .unwrap();
    assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    let again = UpdateRequest {
        status: Some(S::InProgress),
        status_details: details("step", "download"),
        ..UpdateRequest::default()
    };
    accepted(&update(&mut devices, &detailed, &job, again).await);
    let finish = UpdateRequest {
        status: Some(S::Succeeded),
        status_details: details("result", "ok"),
        ..UpdateRequest::default()
    };
    accepted(&update(&mut devices, &detailed, &job, finish).await);
    let detailed_stream = StreamId::job_execution(&job, &detailed);
    assert!(
        reads.stream_reads(&detailed_stream) > 0,
        "details come from the stream"
    );
    let state = fleet.get_job_execution(&job, &detailed).await.unwrap();
    assert_eq!(state.status, S::Succeeded);
    // Queued, started, finished: the repeated report added nothing.
    assert_eq!(state.version_number, 3);
    let keys: Vec<&str> = state.status_details.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["result"]);
    let plain_state = fleet.get_job_execution(&job, &plain).await.unwrap();
    assert_eq!(plain_state.status, S::Succeeded);
    fleet.shutdown().await;
}

#[test]
fn a_cached_state_another_writer_overtook_gives_way_to_the_folded_one() {
    // A lock held twice would hang the runtime's shutdown as well as the request: run it on a
    // thread of its own, so the test fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(overtaken_cached_state());
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the fleet answered without hanging or failing");
}

async fn overtaken_cached_state() {
    let mut env = env().await;
    let job = j("overtaken");
    let dev = t("o1");
    env.fleet
        .create_job(JobSpec::new(job.clone(), doc()).things([dev.clone()]))
        .await
        .unwrap();
    settle(&env.fleet).await;
    // Started here, so the runtime caches the execution at version 2.
    let r = start_next(&mut env.devices, &dev).await;
    assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    // Another writer (a second instance on the store) stores a progress report.
    let stream = StreamId::job_execution(&job, &dev);
    let progressed = fleetops_core::store::NewEvent::new(
        uuid::Uuid::now_v7(),
        Event::ExecutionProgressed {
            at: T0,
            status_details: None,
            step: fleetops_core::event::StepTimer::Unchanged,
        },
        T0,
    );
    fleetops_core::EventStore::append(
        &env.store,
        fleetops_core::store::AppendBatch::single(
            stream.clone(),
            fleetops_core::store::ExpectedVersion::Exact(2),
            vec![progressed],
        ),
    )
    .await
    .unwrap();
    settle(&env.fleet).await;
    // The cached version 2 is stale once version 3 is folded: the next decision drops it and
    // starts from the folded record.
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        update(&mut env.devices, &dev, &job, set_status(S::Succeeded)),
    )
    .await
    .expect("the update is answered");
    accepted(&done);
    let state = env.fleet.get_job_execution(&job, &dev).await.unwrap();
    assert_eq!((state.status, state.version_number), (S::Succeeded, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_queue_each_target_once_and_keep_the_rate() {
    // Batches of 3: a job of 40 targets takes 14 driver steps, a paced one stops mid-batch.
    let env = env_with(fleetops_service::FleetConfig {
        job_batch: 3,
        ..fleetops_service::FleetConfig::default()
    })
    .await;
    let all = j("all-at-once");
    let targets = things("b", 40);
    env.fleet
        .create_job(JobSpec::new(all.clone(), doc()).things(targets.clone()))
        .await
        .unwrap();
    let slow = j("paced-small-batches");
    env.fleet
        .create_job(paced(&slow, &targets, 10))
        .await
        .unwrap();
    settle(&env.fleet).await;
    // Every target queued exactly once: one execution stream each, at its first version.
    let d = env.fleet.describe_job(&all).unwrap();
    assert_eq!((d.counters.queued, d.remaining_targets), (40, 0));
    for thing in &targets {
        let stream = StreamId::job_execution(&all, thing);
        let events = fleetops_core::EventStore::read_stream(&env.store, &stream, 1, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{thing}: {events:?}");
    }
    // The paced job stops at its rate, inside its fourth batch: 10, not 12.
    let d = env.fleet.describe_job(&slow).unwrap();
    assert_eq!((d.counters.queued, d.remaining_targets), (10, 30));
    advance(&env, Duration::from_secs(60)).await;
    assert_eq!(env.fleet.describe_job(&slow).unwrap().counters.queued, 20);
}

/// One shard for every thing, and a store slow for one thing's execution: that thing's next
/// request waits behind its held update (a thing's requests are decided in order, each on
/// what the one before stored), while another thing is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_update_holds_its_things_next_request_and_no_other_thing() {
    use fleetops_core::device::{DescribeRequest, DeviceRequest, JobTarget, Outbound};

    let (fleet, faults, mut devices) = one_shard_held().await;
    let (slow, quick) = (t("held-dev"), t("quick-dev"));
    let job = j("held");
    fleet
        .create_job(JobSpec::new(job.clone(), doc()).things([slow.clone(), quick.clone()]))
        .await
        .unwrap();
    settle(&fleet).await;
    let r = start_next(&mut devices, &slow).await;
    assert!(matches!(accepted(&r), Reply::StartNext(Some(_))));
    faults.hold(StreamId::job_execution(&job, &slow));
    let update = DeviceRequest::Update {
        job_id: job.clone(),
        request: set_status(S::Succeeded),
    };
    devices
        .request(&slow, Some("first".into()), update)
        .await
        .unwrap();
    eventually("the update waits at the store", || faults.holding() == 1).await;
    let describe = DeviceRequest::Describe(DescribeRequest {
        job: JobTarget::Job(job.clone()),
        execution_number: None,
        include_job_document: false,
    });
    devices
        .request(&slow, Some("second".into()), describe)
        .await
        .unwrap();
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        start_next(&mut devices, &quick),
    )
    .await
    .expect("another thing is answered while the held update waits");
    assert!(matches!(accepted(&other), Reply::StartNext(Some(_))));
    let token = |m: &Outbound| match m {
        Outbound::Accepted { client_token, .. } | Outbound::Rejected { client_token, .. } => {
            client_token.clone()
        }
        _ => None,
    };
    let early: Vec<_> = devices.drain().iter().filter_map(token).collect();
    assert!(
        early.is_empty(),
        "answered before the update was stored: {early:?}"
    );
    faults.release();
    let mut replies = Vec::new();
    while replies.len() < 2 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), devices.recv())
            .await
            .expect("the held requests are answered once the store goes on")
            .expect("the fleet is running");
        if let Some(tok) = token(&m) {
            accepted(&m);
            replies.push(tok);
        }
    }
    assert_eq!(replies, ["first", "second"]);
    assert_eq!(status_of(&fleet, &job, &slow), Some(S::Succeeded));
}
