//! Things through the runtime: presence folded from the link, the registry, and late
//! command answers kept in the command's history.

mod common;

use std::collections::BTreeMap;

use common::*;
use fleetops_core::device::{CommandResponse, DeviceRequest};
use fleetops_core::thing::{Connectivity, PresenceReport};
use fleetops_core::{CommandStatus, Duration, ErrorCode, Rejection, StreamId};
use fleetops_service::{FleetError, Page, ThingFilter};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_stored_and_an_old_report_never_overwrites_a_newer_one() {
    let env = env().await;
    let lamp = t("lamp");
    assert_eq!(env.fleet.thing(&lamp), None);
    let report = |online, stamp| PresenceReport { online, stamp };
    env.fleet
        .report_presence(&lamp, report(true, 20))
        .await
        .unwrap();
    env.fleet
        .report_presence(&lamp, report(false, 10))
        .await
        .unwrap();
    let thing = env.fleet.thing(&lamp).expect("known from presence");
    assert_eq!(thing.connectivity, Connectivity::Online);
    assert!(!thing.registered);
    env.fleet
        .report_presence(&lamp, report(false, 20))
        .await
        .unwrap();
    assert_eq!(env.fleet.presence(&lamp), Some(false));
    // Stored: the thing's stream holds the two reports that were kept.
    let history = env
        .fleet
        .history(&StreamId::thing(&lamp), 0, 10)
        .await
        .unwrap();
    assert_eq!(history.events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_records_filters_them_and_refuses_a_taken_client_id() {
    let env = env().await;
    let attrs = |site: &str| BTreeMap::from([("site".to_owned(), site.to_owned())]);
    env.fleet
        .register_thing(
            t("a"),
            attrs("north"),
            Some("pump".into()),
            Some("hw-1".into()),
        )
        .await
        .unwrap();
    env.fleet
        .register_thing(t("b"), attrs("south"), Some("pump".into()), None)
        .await
        .unwrap();
    let taken = env
        .fleet
        .register_thing(t("c"), BTreeMap::new(), None, Some("hw-1".into()))
        .await
        .unwrap_err();
    assert!(matches!(
        taken,
        FleetError::Rejected(Rejection::InvalidRequest {
            field: "clientId",
            ..
        })
    ));
    assert_eq!(env.fleet.thing(&t("c")), None, "a refusal stores nothing");
    let north = ThingFilter {
        attribute_name: Some("site".into()),
        attribute_value: Some("north".into()),
        ..ThingFilter::default()
    };
    let page = env.fleet.list_things(&north, &Page::first(10));
    let names: Vec<_> = page.items.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["a"]);
    env.fleet.deregister_thing(&t("a")).await.unwrap();
    let err = env.fleet.deregister_thing(&t("a")).await.unwrap_err();
    assert_eq!(
        err.rejection().map(Rejection::code),
        Some(ErrorCode::ResourceNotFound)
    );
    // The client id is free again.
    env.fleet
        .register_thing(t("c"), BTreeMap::new(), None, Some("hw-1".into()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_is_refused_to_the_device_and_kept_in_the_history() {
    let mut env = env().await;
    let lamp = t("lamp");
    let handle = env
        .fleet
        .send_command(lamp.clone(), "toggle", json!({}), Duration::from_secs(5))
        .await
        .unwrap();
    let id = handle.execution_id().clone();
    advance(&env, Duration::from_secs(6)).await;
    let done = handle.outcome().await.unwrap();
    assert_eq!(done.status, CommandStatus::TimedOut);
    let answer = DeviceRequest::CommandResponse {
        execution_id: id.clone(),
        response: CommandResponse {
            status: CommandStatus::Succeeded,
            result: Some(json!({"late": true})),
            status_reason: None,
        },
    };
    let reply = env.devices.call(&lamp, answer).await.unwrap();
    assert_eq!(rejected(&reply).code(), ErrorCode::TerminalStateReached);
    let history = env
        .fleet
        .history(&StreamId::command(&id), 0, 10)
        .await
        .unwrap();
    let kinds: Vec<_> = history.events.iter().map(|e| e.event.type_name()).collect();
    assert_eq!(
        kinds,
        ["CommandSent", "CommandTimedOut", "CommandResponseIgnored"]
    );
    let after = env.fleet.get_command(&id).await.unwrap();
    assert_eq!(after.status, CommandStatus::TimedOut);
    assert_eq!(after.late_responses, 1);
}
