//! Commands through the runtime: succeed, fail, time out, cancel, fast failure when offline.

mod common;

use common::*;
use fleetops_core::device::{CommandResponse, DeviceRequest, Outbound};
use fleetops_core::{CommandStatus, Duration, ErrorCode, ExecutionId};
use fleetops_service::{CommandFilter, FleetConfig, FleetError, Page};
use serde_json::json;

async fn request_for(env: &mut Env) -> (fleetops_core::ThingName, ExecutionId, Duration) {
    request_for_in(&mut env.devices).await
}

fn respond(id: &ExecutionId, status: CommandStatus) -> DeviceRequest {
    DeviceRequest::CommandResponse {
        execution_id: id.clone(),
        response: CommandResponse {
            status,
            result: Some(json!({"ok": status == CommandStatus::Succeeded})),
            status_reason: None,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_succeeds_or_fails_as_the_device_answers() {
    let mut env = env().await;
    let lamp = t("lamp");
    for status in [
        CommandStatus::Succeeded,
        CommandStatus::Failed,
        CommandStatus::Rejected,
    ] {
        let handle = env
            .fleet
            .send_command(
                lamp.clone(),
                "toggle",
                json!({"n": 1}),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let (thing, id, ttl) = request_for(&mut env).await;
        assert_eq!((&thing, &id), (&lamp, handle.execution_id()));
        assert_eq!(ttl, Duration::from_secs(30));
        let reply = env.devices.call(&lamp, respond(&id, status)).await.unwrap();
        accepted(&reply);
        let done = handle.outcome().await.unwrap();
        assert_eq!(done.status, status);
        assert_eq!(
            done.result,
            Some(json!({"ok": status == CommandStatus::Succeeded}))
        );
        // A second answer is refused: the command is terminal.
        let again = env.devices.call(&lamp, respond(&id, status)).await.unwrap();
        assert_eq!(rejected(&again).code(), ErrorCode::TerminalStateReached);
    }
    let listed = env.fleet.list_commands(
        &CommandFilter {
            thing: Some(lamp.clone()),
            status: Some(CommandStatus::Failed),
            ..CommandFilter::default()
        },
        &Page::first(10),
    );
    assert_eq!(listed.items.len(), 1);
    let by_action = |action: &str| {
        env.fleet
            .list_commands(
                &CommandFilter {
                    action: Some(action.to_owned()),
                    ..CommandFilter::default()
                },
                &Page::first(10),
            )
            .items
    };
    assert!(by_action("no-such-action").is_empty());
    let action = listed.items[0].action.clone();
    assert!(by_action(&action).iter().all(|c| c.action == action));
    assert!(!by_action(&action).is_empty());
    let all = env
        .fleet
        .list_commands(&CommandFilter::default(), &Page::first(2));
    assert_eq!(all.items.len(), 2);
    let rest = env.fleet.list_commands(
        &CommandFilter::default(),
        &Page {
            after: all.next.clone(),
            limit: 2,
        },
    );
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_times_out_at_its_ttl_and_a_late_answer_is_refused() {
    let mut env = env().await;
    let lamp = t("lamp");
    let handle = env
        .fleet
        .send_command(lamp.clone(), "reboot", json!({}), Duration::from_secs(10))
        .await
        .unwrap();
    let (_, id, _) = request_for(&mut env).await;
    advance(&env, Duration::from_secs(9)).await;
    assert_eq!(
        env.fleet.get_command(&id).await.unwrap().status,
        CommandStatus::Sent
    );
    env.clock.advance(Duration::from_secs(1));
    let done = handle.outcome().await.unwrap();
    assert_eq!(done.status, CommandStatus::TimedOut);
    let late = env
        .devices
        .call(&lamp, respond(&id, CommandStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(rejected(&late).code(), ErrorCode::TerminalStateReached);
    assert_eq!(
        env.fleet.get_command(&id).await.unwrap().status,
        CommandStatus::TimedOut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_can_be_canceled_once() {
    let mut env = env().await;
    let lamp = t("lamp");
    let handle = env
        .fleet
        .send_command(lamp.clone(), "reboot", json!({}), Duration::from_secs(10))
        .await
        .unwrap();
    let id = handle.execution_id().clone();
    let (_, _, _) = request_for(&mut env).await;
    let c = env
        .fleet
        .cancel_command(&id, Some("operator".into()))
        .await
        .unwrap();
    assert_eq!(c.status, CommandStatus::Canceled);
    assert_eq!(
        handle.outcome().await.unwrap().status,
        CommandStatus::Canceled
    );
    let again = env.fleet.cancel_command(&id, None).await.unwrap_err();
    assert_eq!(
        again.rejection().map(|r| r.code()),
        Some(ErrorCode::TerminalStateReached)
    );
    let unknown = ExecutionId::parse("nope").unwrap();
    let err = env.fleet.cancel_command(&unknown, None).await.unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::ResourceNotFound)
    );
    // The device may not answer someone else's command.
    let other = env
        .devices
        .call(&t("intruder"), respond(&id, CommandStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(rejected(&other).code(), ErrorCode::ResourceNotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_to_offline_things_fail_fast_when_configured() {
    let env = env_with(FleetConfig {
        fail_commands_when_offline: true,
        ..FleetConfig::default()
    })
    .await;
    let lamp = t("lamp");
    env.devices.presence(&lamp, false).await.unwrap();
    eventually("presence seen", || env.fleet.presence(&lamp) == Some(false)).await;
    let err = env
        .fleet
        .send_command(lamp.clone(), "x", json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        FleetError::Offline {
            thing: lamp.clone()
        }
    );
    env.devices.presence(&lamp, true).await.unwrap();
    eventually("presence seen", || env.fleet.presence(&lamp) == Some(true)).await;
    env.fleet
        .send_command(lamp, "x", json!({}), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_refused_without_storing_anything() {
    let env = env().await;
    let err = env
        .fleet
        .send_command(t("lamp"), "", json!({}), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::InvalidRequest)
    );
    let err = env
        .fleet
        .send_command(t("lamp"), "x", json!({}), Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.code()),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(env.store.len().unwrap(), 0);
}

#[test]
fn the_fleet_and_its_handles_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<TestFleet>();
    send::<fleetops_service::CommandHandle>();
    send_sync::<fleetops_service::FleetError>();
}

/// What the scripted link does with the n-th `submit`.
#[derive(Clone, Copy)]
enum Submit {
    /// Never returns: the sender is stuck there until its caller gives up.
    Stuck,
    /// Hands the batch over; its acknowledgement never comes.
    NeverAcked,
    /// Hands the batch over; its delivery fails.
    Fails,
    /// Hands the batch over and it is delivered.
    Delivered,
}

/// The in-process link with the first `submit`s scripted; the later ones are delivered.
struct ScriptedLink {
    link: fleetops_service::link::ChannelLink,
    script: Vec<Submit>,
    calls: std::sync::atomic::AtomicUsize,
}

impl ScriptedLink {
    fn pair(script: Vec<Submit>) -> (Self, fleetops_service::link::DeviceEnd) {
        let (link, devices) = fleetops_service::link::ChannelLink::pair(64);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        (
            Self {
                link,
                script,
                calls,
            },
            devices,
        )
    }
}

#[async_trait::async_trait]
impl fleetops_core::link::DeviceLink for ScriptedLink {
    async fn send(&self, m: Vec<Outbound>) -> Result<(), fleetops_core::link::LinkError> {
        self.link.send(m).await
    }

    async fn submit(
        &self,
        m: Vec<Outbound>,
    ) -> Result<fleetops_core::link::Delivery, fleetops_core::link::LinkError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let next = self.script.get(call).copied().unwrap_or(Submit::Delivered);
        if matches!(next, Submit::Stuck) {
            std::future::pending::<()>().await;
        }
        self.link.send(m).await?;
        Ok(match next {
            Submit::NeverAcked => Box::pin(std::future::pending()),
            Submit::Fails => Box::pin(std::future::ready(Err(
                fleetops_core::link::LinkError::Transport {
                    detail: "no PUBACK".into(),
                },
            ))),
            Submit::Stuck | Submit::Delivered => Box::pin(std::future::ready(Ok(()))),
        })
    }

    async fn recv(
        &self,
        max: usize,
    ) -> Result<Vec<fleetops_core::link::LinkEvent>, fleetops_core::link::LinkError> {
        self.link.recv(max).await
    }

    async fn settle(&self, receipts: Vec<fleetops_core::link::Receipt>) {
        self.link.settle(receipts).await;
    }
}

/// The sender publishes a new command's request itself and the fold leaves it out of the
/// outbox; a sender dropped after the append but before the publish must hand it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_sender_is_dropped_before_publishing_is_still_sent() {
    let (link, mut devices) = ScriptedLink::pair(vec![Submit::Stuck]);
    let store = fleetops_store_memory::MemoryStore::new();
    let fleet = fleetops_service::Fleet::start(store, link).await.unwrap();
    let lamp = t("lamp");
    let send = fleet.send_command(lamp.clone(), "toggle", json!({}), Duration::from_secs(30));
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(300), send).await;
    assert!(dropped.is_err(), "the first submit never returns");
    // Stored before it was dropped …
    let listed = fleet.list_commands(&CommandFilter::default(), &Page::default());
    assert_eq!(listed.items.len(), 1, "the command was stored");
    let id = listed.items[0].execution_id.clone();
    // … and its request still goes out, through the outbox.
    let request = tokio::time::timeout(std::time::Duration::from_secs(10), devices.recv())
        .await
        .expect("the request is published");
    match request {
        Some(Outbound::CommandRequest {
            thing,
            execution_id,
            ..
        }) => assert_eq!((thing, execution_id), (lamp.clone(), id.clone())),
        other => panic!("expected the command request, got {other:?}"),
    }
    let reply = devices
        .call(&lamp, respond(&id, CommandStatus::Succeeded))
        .await
        .unwrap();
    accepted(&reply);
    eventually("the command succeeds", || {
        fleet
            .list_commands(&CommandFilter::default(), &Page::default())
            .items
            .iter()
            .any(|c| c.status == CommandStatus::Succeeded)
    })
    .await;
}

/// The first request's acknowledgement never comes and the second one's delivery fails: the
/// broker's acknowledgement is the outbox's business, not the sender's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_never_waits_for_the_broker_and_a_failed_delivery_is_sent_again() {
    let (link, mut devices) = ScriptedLink::pair(vec![Submit::NeverAcked, Submit::Fails]);
    let fleet = fleetops_service::Fleet::start(fleetops_store_memory::MemoryStore::new(), link)
        .await
        .unwrap();
    let lamp = t("lamp");
    let within = std::time::Duration::from_secs(5);
    // The first request's acknowledgement never comes: the send returns all the same.
    let first = tokio::time::timeout(
        within,
        fleet.send_command(lamp.clone(), "a", json!({}), Duration::from_secs(30)),
    )
    .await
    .expect("send_command does not wait for the broker")
    .unwrap();
    let (_, id, _) = request_for_in(&mut devices).await;
    assert_eq!(&id, first.execution_id());
    // The second one's delivery fails: the outbox publishes it again.
    let second = tokio::time::timeout(
        within,
        fleet.send_command(lamp.clone(), "b", json!({}), Duration::from_secs(30)),
    )
    .await
    .expect("send_command returns")
    .unwrap();
    for _ in 0..2 {
        let (_, id, _) = tokio::time::timeout(within, request_for_in(&mut devices))
            .await
            .expect("the request is sent, then sent again");
        assert_eq!(&id, second.execution_id());
    }
}

async fn request_for_in(
    devices: &mut fleetops_service::link::DeviceEnd,
) -> (fleetops_core::ThingName, ExecutionId, Duration) {
    match devices.recv().await {
        Some(Outbound::CommandRequest {
            thing,
            execution_id,
            ttl,
            ..
        }) => (thing, execution_id, ttl),
        other => panic!("expected a command request, got {other:?}"),
    }
}

/// One shard for every thing, and a store that is slow for one command's stream: the batch
/// that answers that command waits for the store, while the shard answers another command
/// beside it instead of queueing it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_append_holds_only_its_own_command_in_a_shard() {
    use fleetops_core::StreamId;
    use std::time::Duration as StdDuration;

    let (fleet, faults, mut devices) = one_shard_held().await;
    let (lamp, fan) = (t("lamp"), t("fan"));
    let ttl = Duration::from_secs(60);
    let slow = fleet
        .send_command(lamp.clone(), "toggle", json!({}), ttl)
        .await
        .unwrap();
    let quick = fleet
        .send_command(fan.clone(), "toggle", json!({}), ttl)
        .await
        .unwrap();
    let slow_id = slow.execution_id().clone();
    for _ in 0..2 {
        request_for_in(&mut devices).await;
    }
    faults.hold(StreamId::command(&slow_id));
    devices
        .request(
            &lamp,
            Some("slow".into()),
            respond(&slow_id, CommandStatus::Succeeded),
        )
        .await
        .unwrap();
    // Its batch is waiting for the store before the fan answers, so the two are not in
    // one batch (whose replies go out together).
    eventually("the lamp's answer waits at the store", || {
        faults.holding() == 1
    })
    .await;
    let reply = tokio::time::timeout(
        StdDuration::from_secs(10),
        devices.call(
            &fan,
            respond(quick.execution_id(), CommandStatus::Succeeded),
        ),
    )
    .await
    .expect("the fan's answer is not held behind the lamp's")
    .unwrap();
    accepted(&reply);
    assert_eq!(
        quick.outcome().await.unwrap().status,
        CommandStatus::Succeeded
    );
    // The lamp's answer still waits for the store: nothing of it is stored or acknowledged.
    assert_eq!(
        fleet.get_command(&slow_id).await.unwrap().status,
        CommandStatus::Sent
    );
    assert!(devices.drain().is_empty());
    faults.release();
    let done = tokio::time::timeout(StdDuration::from_secs(10), slow.outcome())
        .await
        .expect("the lamp's answer is stored once the store goes on")
        .unwrap();
    assert_eq!(done.status, CommandStatus::Succeeded);
}
