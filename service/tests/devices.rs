//! The device protocol through the runtime (docs/protocol.md): get pending, start-next, describe
//! (`$next` too), update with its options and refusals, and when `notify` / `notify-next` go.

mod common;

use common::*;
use fleetops_core::device::{
    DescribeRequest, DeviceRequest, JobTarget, Outbound, Reply, UpdateRequest,
};
use fleetops_core::link::{DeviceLink, LinkError, LinkEvent, Receipt};
use fleetops_core::store::EventStore;
use fleetops_core::{ErrorCode, JobExecutionStatus as S, JobId, ThingName};
use fleetops_service::{FleetConfig, JobSpec, StatusChange};
use futures::StreamExt;
use serde_json::json;

fn notifies(msgs: &[Outbound], thing: &ThingName) -> (Vec<Vec<JobId>>, Vec<Option<JobId>>) {
    let mut notify = Vec::new();
    let mut next = Vec::new();
    for m in msgs {
        match m {
            Outbound::Notify { thing: t, jobs, .. } if t == thing => notify.push(
                jobs.in_progress
                    .iter()
                    .chain(jobs.queued.iter())
                    .map(|s| s.job_id.clone())
                    .collect(),
            ),
            Outbound::NotifyNext {
                thing: t,
                execution,
                ..
            } if t == thing => next.push(execution.as_ref().map(|e| e.job_id.clone())),
            _ => {}
        }
    }
    (notify, next)
}

async fn job_for(env: &Env, id: &str, thing: &ThingName) -> JobId {
    let job = j(id);
    env.fleet
        .create_job(JobSpec::new(job.clone(), json!({"job": id})).things([thing.clone()]))
        .await
        .unwrap();
    settle(&env.fleet).await;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_and_notify_next_go_exactly_when_they_should() {
    let mut env = env().await;
    let d = t("dev");
    let a = job_for(&env, "a", &d).await;
    let (n, nx) = notifies(&env.devices.drain(), &d);
    assert_eq!((n, nx), (vec![vec![a.clone()]], vec![Some(a.clone())]));
    // Starting A changes neither the pending set nor the next execution.
    start_next(&mut env.devices, &d).await;
    settle(&env.fleet).await;
    assert_eq!(notifies(&env.devices.drain(), &d), (vec![], vec![]));
    // Progress changes nothing either.
    let progress = UpdateRequest {
        status: Some(S::InProgress),
        status_details: Some([("step".parse().unwrap(), "2".to_owned())].into()),
        ..UpdateRequest::default()
    };
    accepted(&update(&mut env.devices, &d, &a, progress).await);
    settle(&env.fleet).await;
    assert_eq!(notifies(&env.devices.drain(), &d), (vec![], vec![]));
    // A second job joins the list behind the in-progress one: notify only.
    let b = job_for(&env, "b", &d).await;
    let (n, nx) = notifies(&env.devices.drain(), &d);
    assert_eq!((n, nx), (vec![vec![a.clone(), b.clone()]], vec![]));
    // A finishes: B is next.
    update(&mut env.devices, &d, &a, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    let (n, nx) = notifies(&env.devices.drain(), &d);
    assert_eq!((n, nx), (vec![vec![b.clone()]], vec![Some(b.clone())]));
    // B finishes: nothing is next.
    start_next(&mut env.devices, &d).await;
    update(&mut env.devices, &d, &b, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    let (n, nx) = notifies(&env.devices.drain(), &d);
    assert_eq!((n, nx), (vec![vec![]], vec![None]));
    // Other things hear nothing.
    assert_eq!(
        notifies(&env.devices.drain(), &t("other")),
        (vec![], vec![])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_lists_at_most_ten_in_progress_first() {
    let mut env = env().await;
    let d = t("busy");
    for i in 0..12 {
        env.clock.advance(fleetops_core::Duration::from_secs(1));
        job_for(&env, &format!("j{i:02}"), &d).await;
    }
    start_next(&mut env.devices, &d).await; // j00 in progress
    env.devices.drain();
    job_for(&env, "j12", &d).await;
    let msgs = env.devices.drain();
    let jobs = msgs
        .iter()
        .find_map(|m| match m {
            Outbound::Notify { jobs, .. } => Some(jobs.clone()),
            _ => None,
        })
        .expect("a notify");
    assert_eq!(jobs.in_progress.len() + jobs.queued.len(), 10);
    assert_eq!(jobs.in_progress[0].job_id, j("j00"));
    assert_eq!(jobs.queued[0].job_id, j("j01"));
    // get pending lists them all, in the same order.
    let r = env
        .devices
        .call(&d, DeviceRequest::GetPending)
        .await
        .unwrap();
    let Reply::Pending(p) = accepted(&r) else {
        panic!()
    };
    assert_eq!((p.in_progress.len(), p.queued.len()), (1, 12));
    assert!(p
        .queued
        .windows(2)
        .all(|w| w[0].queued_at <= w[1].queued_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_next_describe_and_update_follow_the_protocol() {
    let mut env = env().await;
    let d = t("dev");
    // Nothing pending: start-next answers with no execution; $next is not found.
    let r = start_next(&mut env.devices, &d).await;
    assert_eq!(accepted(&r), &Reply::StartNext(None));
    let next = DeviceRequest::Describe(DescribeRequest {
        job: JobTarget::Next,
        execution_number: None,
        include_job_document: true,
    });
    let r = env.devices.call(&d, next.clone()).await.unwrap();
    assert_eq!(rejected(&r).code(), ErrorCode::ResourceNotFound);

    let job = job_for(&env, "proto", &d).await;
    let r = env.devices.call(&d, next.clone()).await.unwrap();
    let Reply::Describe(view) = accepted(&r) else {
        panic!()
    };
    assert_eq!((view.status, view.version_number), (S::Queued, 1));
    assert_eq!(view.job_document, Some(json!({"job": "proto"})));

    let r = start_next(&mut env.devices, &d).await;
    let Reply::StartNext(Some(view)) = accepted(&r) else {
        panic!()
    };
    assert_eq!((view.status, view.version_number), (S::InProgress, 2));
    assert!(view.job_document.is_some());
    // start-next again returns the in-progress execution unchanged.
    let r = start_next(&mut env.devices, &d).await;
    let Reply::StartNext(Some(again)) = accepted(&r) else {
        panic!()
    };
    assert_eq!(again.version_number, 2);

    // expectedVersion mismatch: refused with the current state.
    let stale = UpdateRequest {
        status: Some(S::Succeeded),
        expected_version: Some(1),
        ..UpdateRequest::default()
    };
    let r = update(&mut env.devices, &d, &job, stale).await;
    let rej = rejected(&r);
    assert_eq!(rej.code(), ErrorCode::VersionMismatch);
    assert_eq!(rej.execution_state().map(|s| s.version_number), Some(2));
    // Devices may not set service statuses.
    let r = update(&mut env.devices, &d, &job, set_status(S::Canceled)).await;
    assert_eq!(rejected(&r).code(), ErrorCode::InvalidRequest);
    // Unknown jobs are not found, and the client token is echoed on refusals.
    let r = update(&mut env.devices, &d, &j("nope"), set_status(S::Succeeded)).await;
    assert_eq!(rejected(&r).code(), ErrorCode::ResourceNotFound);
    assert!(matches!(
        &r,
        Outbound::Rejected {
            client_token: Some(_),
            ..
        }
    ));

    let done = UpdateRequest {
        status: Some(S::Succeeded),
        expected_version: Some(2),
        include_job_execution_state: true,
        include_job_document: true,
        ..UpdateRequest::default()
    };
    let r = update(&mut env.devices, &d, &job, done.clone()).await;
    let Reply::Update {
        execution_state,
        job_document,
    } = accepted(&r)
    else {
        panic!()
    };
    assert_eq!(
        execution_state
            .as_ref()
            .map(|s| (s.status, s.version_number)),
        Some((S::Succeeded, 3))
    );
    assert_eq!(job_document, &Some(json!({"job": "proto"})));
    // A duplicate of the same final update is refused, and nothing changes.
    let r = update(&mut env.devices, &d, &job, set_status(S::Succeeded)).await;
    assert_eq!(rejected(&r).code(), ErrorCode::TerminalStateReached);
    // Describing a named job works after it finished; an unknown attempt is not found.
    let describe = |n| {
        DeviceRequest::Describe(DescribeRequest {
            job: JobTarget::Job(job.clone()),
            execution_number: n,
            include_job_document: false,
        })
    };
    let r = env.devices.call(&d, describe(None)).await.unwrap();
    let Reply::Describe(view) = accepted(&r) else {
        panic!()
    };
    assert_eq!(
        (view.status, view.job_document.clone()),
        (S::Succeeded, None)
    );
    let r = env.devices.call(&d, describe(Some(2))).await.unwrap();
    assert_eq!(rejected(&r).code(), ErrorCode::ResourceNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedders_see_events_and_status_changes() {
    let mut env = env().await;
    let mut changes = env.fleet.status_changes();
    let mut events = env.fleet.events(1).await.unwrap();
    let d = t("dev");
    let job = job_for(&env, "seen", &d).await;
    start_next(&mut env.devices, &d).await;
    update(&mut env.devices, &d, &job, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    let mut statuses = Vec::new();
    while let Ok(c) = changes.try_recv() {
        if let StatusChange::JobExecution { status, .. } = c {
            statuses.push(status);
        }
    }
    assert_eq!(statuses, vec![S::Queued, S::InProgress, S::Succeeded]);
    let first = events.next().await.unwrap().unwrap();
    assert_eq!((first.position, first.event.type_name()), (1, "JobCreated"));
    let mut last = first.position;
    while last < env.fleet.checkpoint() {
        let e = events.next().await.unwrap().unwrap();
        assert_eq!(e.position, last + 1);
        last = e.position;
    }
}

/// The job execution status changes the link has carried so far, for `job`.
fn published(msgs: &[Outbound], job: &JobId) -> Vec<(S, u32, u64)> {
    msgs.iter()
        .filter_map(|m| match m {
            Outbound::StatusChange {
                job_id,
                status,
                execution_number,
                version_number,
                ..
            } if job_id == job => Some((*status, *execution_number, *version_number)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_published_through_the_link() {
    let mut env = env().await;
    let d = t("pub");
    let job = job_for(&env, "published", &d).await;
    start_next(&mut env.devices, &d).await;
    update(&mut env.devices, &d, &job, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while published(&seen, &job).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "got {seen:?}");
        seen.extend(env.devices.drain());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // Queued at creation, then IN_PROGRESS and SUCCEEDED, in order, with their versions.
    assert_eq!(
        published(&seen, &job),
        vec![
            (S::Queued, 1, 1),
            (S::InProgress, 1, 2),
            (S::Succeeded, 1, 3)
        ]
    );
    let last = seen
        .iter()
        .rev()
        .find(|m| matches!(m, Outbound::StatusChange { .. }))
        .unwrap();
    assert_eq!(last.thing(), &d);
    assert!(!last.is_device_bound());
    assert!(matches!(last, Outbound::StatusChange { timestamp, .. } if *timestamp == T0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_stay_off_the_link_when_turned_off() {
    let mut env = env_with(FleetConfig {
        publish_status_changes: false,
        ..FleetConfig::default()
    })
    .await;
    let d = t("quiet");
    let job = job_for(&env, "unpublished", &d).await;
    start_next(&mut env.devices, &d).await;
    update(&mut env.devices, &d, &job, set_status(S::Succeeded)).await;
    settle(&env.fleet).await;
    // The outbox sends batch after batch: once the final (empty) notify is here, the QUEUED
    // and IN_PROGRESS changes would have been too, and SUCCEEDED shares the notify's batch.
    let empty_notify = |m: &Outbound| match m {
        Outbound::Notify { jobs, .. } => jobs.in_progress.is_empty() && jobs.queued.is_empty(),
        _ => false,
    };
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.iter().any(empty_notify) {
        assert!(std::time::Instant::now() < deadline, "got {seen:?}");
        seen.extend(env.devices.drain());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    seen.extend(env.devices.drain());
    assert_eq!(published(&seen, &job), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_device_messages_change_nothing_twice() {
    let mut env = env().await;
    let d = t("dup");
    let job = job_for(&env, "twice", &d).await;
    // start-next twice: one start, the second returns the same execution unchanged.
    start_next(&mut env.devices, &d).await;
    let r = start_next(&mut env.devices, &d).await;
    let Reply::StartNext(Some(v)) = accepted(&r) else {
        panic!()
    };
    assert_eq!(v.version_number, 2);
    // The same progress report twice: stored once.
    let progress = UpdateRequest {
        status: Some(S::InProgress),
        status_details: Some([("pct".parse().unwrap(), "50".to_owned())].into()),
        ..UpdateRequest::default()
    };
    accepted(&update(&mut env.devices, &d, &job, progress.clone()).await);
    accepted(&update(&mut env.devices, &d, &job, progress.clone()).await);
    // The final report, then a late copy of the progress report and of the final one.
    accepted(&update(&mut env.devices, &d, &job, set_status(S::Succeeded)).await);
    let late = update(&mut env.devices, &d, &job, progress).await;
    assert_eq!(rejected(&late).code(), ErrorCode::TerminalStateReached);
    let again = update(&mut env.devices, &d, &job, set_status(S::Failed)).await;
    assert_eq!(rejected(&again).code(), ErrorCode::TerminalStateReached);
    let x = env.fleet.get_job_execution(&job, &d).await.unwrap();
    assert_eq!((x.status, x.version_number), (S::Succeeded, 4));
    let d2 = env.fleet.describe_job(&job).unwrap();
    assert_eq!((d2.counters.succeeded, d2.counters.total()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_coming_online_is_told_what_is_pending() {
    let mut env = env().await;
    let d = t("sleepy");
    let job = job_for(&env, "wake", &d).await;
    env.devices.drain();
    env.devices.presence(&d, false).await.unwrap();
    env.devices.presence(&t("idle"), true).await.unwrap();
    settle(&env.fleet).await;
    assert_eq!(notifies(&env.devices.drain(), &t("idle")), (vec![], vec![]));
    env.devices.presence(&d, true).await.unwrap();
    eventually("presence seen", || env.fleet.presence(&d) == Some(true)).await;
    settle(&env.fleet).await;
    let (n, nx) = notifies(&env.devices.drain(), &d);
    assert_eq!((n, nx), (vec![vec![job.clone()]], vec![Some(job)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_client_token_gets_the_same_answer() {
    let mut env = env().await;
    let d = t("retry");
    let job = job_for(&env, "retried", &d).await;
    start_next(&mut env.devices, &d).await;
    let done = DeviceRequest::Update {
        job_id: job.clone(),
        request: UpdateRequest {
            include_job_execution_state: true,
            ..set_status(S::Succeeded)
        },
    };
    let first = env
        .devices
        .call_with_token(&d, "tok-1", done.clone())
        .await
        .unwrap();
    accepted(&first);
    // The device lost the reply and retries a little later: the same answer, not
    // TerminalStateReached, and nothing stored twice.
    env.clock.advance(mins(9));
    let retry = env
        .devices
        .call_with_token(&d, "tok-1", done.clone())
        .await
        .unwrap();
    assert_eq!(retry, first);
    let x = env.fleet.get_job_execution(&job, &d).await.unwrap();
    assert_eq!((x.status, x.version_number), (S::Succeeded, 3));
    // Another token, or none, is a new request, decided by the rules.
    let other = env
        .devices
        .call_with_token(&d, "tok-2", done.clone())
        .await
        .unwrap();
    assert_eq!(rejected(&other).code(), ErrorCode::TerminalStateReached);
    env.devices.request(&d, None, done.clone()).await.unwrap();
    let m = loop {
        let m = env.devices.recv().await.unwrap();
        if matches!(m, Outbound::Rejected { .. } | Outbound::Accepted { .. }) {
            break m;
        }
    };
    assert_eq!(rejected(&m).code(), ErrorCode::TerminalStateReached);
    // The same token for another operation is another request too.
    let describe = DeviceRequest::Describe(DescribeRequest {
        job: JobTarget::Job(job.clone()),
        execution_number: None,
        include_job_document: false,
    });
    let described = env
        .devices
        .call_with_token(&d, "tok-1", describe)
        .await
        .unwrap();
    accepted(&described);
    // Past the window the answer is forgotten.
    env.clock.advance(mins(2));
    let late = env
        .devices
        .call_with_token(&d, "tok-1", done)
        .await
        .unwrap();
    assert_eq!(rejected(&late).code(), ErrorCode::TerminalStateReached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_lists_show_at_most_100_of_each_kind_first_in_queue_order() {
    let mut env = env_with(FleetConfig {
        notify_max: usize::MAX,
        ..FleetConfig::default()
    })
    .await;
    let d = t("busy");
    let jobs: Vec<JobId> = (0..105).map(|i| j(&format!("job-{i:03}"))).collect();
    for (i, job) in jobs.iter().enumerate() {
        env.fleet
            .create_job(JobSpec::new(job.clone(), json!({"i": i})).things([d.clone()]))
            .await
            .unwrap();
        // A distinct queue time per job, so queue order is creation order.
        env.clock
            .advance(fleetops_core::Duration::from_millis(1000));
    }
    settle(&env.fleet).await;
    // Two of them in progress, out of queue order.
    for job in [&jobs[50], &jobs[7]] {
        accepted(&update(&mut env.devices, &d, job, set_status(S::InProgress)).await);
    }
    settle(&env.fleet).await;
    env.devices.drain();
    let r = env
        .devices
        .call(&d, DeviceRequest::GetPending)
        .await
        .unwrap();
    let Reply::Pending(p) = accepted(&r) else {
        panic!("{r:?}")
    };
    let ids = |v: &[fleetops_core::device::ExecutionSummary]| -> Vec<JobId> {
        v.iter().map(|s| s.job_id.clone()).collect()
    };
    assert_eq!(ids(&p.in_progress), vec![jobs[7].clone(), jobs[50].clone()]);
    let queued: Vec<JobId> = jobs
        .iter()
        .filter(|j| **j != jobs[7] && **j != jobs[50])
        .take(100)
        .cloned()
        .collect();
    assert_eq!(p.queued.len(), 100);
    assert_eq!(ids(&p.queued), queued);
    // notify is capped the same way.
    let job = j("one-more");
    env.fleet
        .create_job(JobSpec::new(job, json!({})).things([d.clone()]))
        .await
        .unwrap();
    settle(&env.fleet).await;
    let notify = env
        .devices
        .drain()
        .into_iter()
        .find_map(|m| match m {
            Outbound::Notify { jobs, .. } => Some(jobs),
            _ => None,
        })
        .expect("a notify");
    assert_eq!((notify.in_progress.len(), notify.queued.len()), (2, 100));
    assert_eq!(ids(&notify.queued), queued);
}

/// A link that notes the store's head whenever the fleet settles a request.
struct Watching {
    link: fleetops_service::link::ChannelLink,
    store: fleetops_store_memory::MemoryStore,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(Receipt, u64)>>>,
}

#[async_trait::async_trait]
impl DeviceLink for Watching {
    async fn send(&self, messages: Vec<Outbound>) -> Result<(), LinkError> {
        self.link.send(messages).await
    }

    async fn recv(&self, max: usize) -> Result<Vec<LinkEvent>, LinkError> {
        self.link.recv(max).await
    }

    async fn settle(&self, receipts: Vec<Receipt>) {
        let head = self.store.head_position().await.unwrap();
        self.seen
            .lock()
            .unwrap()
            .extend(receipts.iter().map(|r| (*r, head)));
        self.link.settle(receipts).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_settled_with_the_link_only_once_its_effect_is_stored() {
    let store = fleetops_store_memory::MemoryStore::new();
    let (link, devices) = fleetops_service::link::ChannelLink::pair(64);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let fleet = fleetops_service::Fleet::builder(
        store.clone(),
        Watching {
            link,
            store: store.clone(),
            seen: std::sync::Arc::clone(&seen),
        },
    )
    .start()
    .await
    .unwrap();
    let d = t("acked");
    let job = j("durable");
    fleet
        .create_job(JobSpec::new(job.clone(), json!({})).things([d.clone()]))
        .await
        .unwrap();
    // The rollout driver queues the execution after the job is created: wait for it, so the
    // start below has something to store.
    settle(&fleet).await;
    let before = store.head_position().await.unwrap();
    let r = devices
        .request_with_receipt(
            &d,
            Some("x".into()),
            DeviceRequest::StartNext(Default::default()),
        )
        .await
        .unwrap();
    eventually("settled", || devices.settled().contains(&r)).await;
    let at = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(x, _)| *x == r)
        .map(|(_, h)| *h);
    assert!(
        at.is_some_and(|h| h > before),
        "settled before the start was stored: head {at:?}, before {before}"
    );
    // A refused request is settled too.
    let refused = devices
        .request_with_receipt(
            &d,
            None,
            DeviceRequest::Update {
                job_id: j("unknown"),
                request: set_status(S::Succeeded),
            },
        )
        .await
        .unwrap();
    eventually("refusal settled", || devices.settled().contains(&refused)).await;
}

/// One thing flooding its shard does not hold the others back: the shard takes a few items
/// of each thing per batch, so a quiet thing's request queued behind 3,000 of a noisy
/// thing's is answered long before the noisy ones are.
///
/// The whole burst must be queued at the shard before the shard gets far, whatever the
/// machine's load: the store's feed stalls, so the shard's first update waits for its fold
/// while the fleet takes in every request, and heals once they are all in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_thing_does_not_hold_its_shard() {
    use fleetops_core::testkit::FaultyStore;
    let (link, mut devices) = fleetops_service::link::ChannelLink::pair(8192);
    let store = FaultyStore::new(fleetops_store_memory::MemoryStore::new());
    let faults = store.handle();
    let fleet = fleetops_service::Fleet::builder(store, link)
        .config(FleetConfig {
            shards: 1,
            ..FleetConfig::default()
        })
        .start()
        .await
        .unwrap();
    let noisy = t("noisy");
    let quiet = t("quiet");
    let job = j("chatty");
    fleet
        .create_job(JobSpec::new(job.clone(), json!({})).things([noisy.clone()]))
        .await
        .unwrap();
    // The execution must be queued before the feed stalls, or the noisy updates are refused
    // at once instead of waiting for their fold.
    settle(&fleet).await;
    faults.stall();
    // Progress reports that each store an event.
    let n = 3000;
    for i in 0..n {
        let request = DeviceRequest::Update {
            job_id: job.clone(),
            request: UpdateRequest {
                status: Some(S::InProgress),
                status_details: Some([("n".parse().unwrap(), i.to_string())].into()),
                ..UpdateRequest::default()
            },
        };
        devices.request(&noisy, None, request).await.unwrap();
    }
    devices
        .request(&quiet, Some("quiet".into()), DeviceRequest::GetPending)
        .await
        .unwrap();
    // Taking in 3,001 requests takes milliseconds; the shard waits for its first fold
    // (up to the apply timeout, far longer) until the feed heals.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    faults.heal();
    let mut before = 0;
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), devices.recv())
            .await
            .expect("replies keep coming")
            .unwrap();
        if m.thing() == &quiet {
            break;
        }
        if matches!(m, Outbound::Accepted { .. } | Outbound::Rejected { .. }) {
            before += 1;
        }
    }
    eprintln!("noisy replies before the quiet one: {before}");
    assert!(
        before < n / 3,
        "{before} of the noisy thing's {n} replies went before the quiet thing's"
    );
    drop(fleet);
}

/// After a crash the broker delivers unsettled requests again, to a fleet that remembers no
/// answers: an already applied terminal update is refused, never applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_terminal_update_after_a_restart_is_not_applied_twice() {
    let mut env = env().await;
    let d = t("redelivered");
    let job = job_for(&env, "once", &d).await;
    start_next(&mut env.devices, &d).await;
    let done = DeviceRequest::Update {
        job_id: job.clone(),
        request: set_status(S::Succeeded),
    };
    accepted(
        &env.devices
            .call_with_token(&d, "final", done.clone())
            .await
            .unwrap(),
    );
    settle(&env.fleet).await;
    let head = env.store.head_position().await.unwrap();
    drop(env.fleet);
    let (fleet, mut devices) = start(&env.store, &env.clock, FleetConfig::default()).await;
    let again = devices.call_with_token(&d, "final", done).await.unwrap();
    assert_eq!(rejected(&again).code(), ErrorCode::TerminalStateReached);
    fleet.caught_up().await.unwrap();
    let x = fleet.get_job_execution(&job, &d).await.unwrap();
    assert_eq!((x.status, x.version_number), (S::Succeeded, 3));
    // Nothing was stored for the redelivered update (the restart itself stores nothing).
    assert_eq!(env.store.head_position().await.unwrap(), head);
}
