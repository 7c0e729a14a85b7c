//! One bad message never takes its batch down: against a real mosquitto, a message the
//! broker refuses (an ACL) and one too large to encode fail alone, marked permanent, while
//! every other message of the same batch is published and acknowledged.

// Each test file compiles its own copy of `common` and uses only part of it; without this,
// every helper another file needs would be reported as dead code here.
#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::raw::{raw, Raw};
use common::{command, link_config, now, thing};
use fleetops_core::device::{ExecutionSummary, Outbound, PendingJobs};
use fleetops_core::ids::JobId;
use fleetops_core::link::{DeviceLink, LinkError};
use fleetops_transport_mqtt::codec::{Limits, TopicLayout};
use fleetops_transport_mqtt::testing::{BrokerOptions, TestBroker};
use fleetops_transport_mqtt::{Error, MqttLink};

/// Small enough that a notify listing a few dozen jobs cannot be encoded.
const SMALL_PAYLOAD: usize = 1024;

fn notify(name: &str, jobs: usize) -> Outbound {
    let summary = |i: usize| ExecutionSummary {
        job_id: JobId::parse(&format!("job-{i}")).unwrap(),
        queued_at: now(),
        started_at: None,
        last_updated_at: now(),
        version_number: 1,
        execution_number: 1,
    };
    Outbound::Notify {
        thing: thing(name),
        jobs: PendingJobs {
            in_progress: vec![],
            queued: (0..jobs).map(summary).collect(),
        },
        timestamp: now(),
    }
}

/// The topics `client` receives within `d`, sorted.
async fn topics_within(client: &mut Raw, d: Duration) -> Vec<String> {
    let mut got: Vec<String> = client
        .silent_for(d)
        .await
        .iter()
        .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
        .collect();
    got.sort();
    got
}

#[tokio::test]
async fn a_refused_or_unencodable_message_fails_alone_and_the_rest_is_delivered() {
    let broker = TestBroker::start_with(BrokerOptions {
        // The service may publish jobs topics but not command requests.
        service_acl: Some(vec![
            "topic read fleets/#".into(),
            "topic write fleets/things/#".into(),
        ]),
        ..BrokerOptions::default()
    });
    let mut config = link_config(&broker, TopicLayout::fleets());
    config.limits = Limits {
        max_payload: SMALL_PAYLOAD,
        ..Limits::default()
    };
    let link = MqttLink::connect(config).await.expect("service connects");
    let mut seen = raw(&broker, "watcher", true).await;
    seen.subscribe("fleets/things/+/jobs/notify").await;

    let batch = vec![
        notify("a-1", 0),
        command(&thing("b-1"), "c-1", "reboot", 30_000), // refused by the broker's ACL
        notify("c-1", 1),
        notify("d-1", 100), // too large to encode
        notify("e-1", 0),
    ];
    let err = link.send(batch.clone()).await.unwrap_err();
    let LinkError::Partial { failed } = &err else {
        panic!("{err:?}")
    };
    let failed: Vec<(usize, bool)> = failed.iter().map(|f| (f.index, f.permanent)).collect();
    assert_eq!(failed, vec![(1, true), (3, true)], "{err}");
    assert_eq!(
        topics_within(&mut seen, Duration::from_millis(500)).await,
        vec![
            "fleets/things/a-1/jobs/notify",
            "fleets/things/c-1/jobs/notify",
            "fleets/things/e-1/jobs/notify",
        ]
    );

    // The crate's own view, message by message.
    let outcomes = link.publish_each(&batch).await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok() && outcomes[4].is_ok());
    assert!(
        matches!(&outcomes[1], Err(Error::PublishRefused { reason }) if reason.contains("NotAuthorized")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[3], Err(Error::Encode(_))),
        "{:?}",
        outcomes[3]
    );

    // The pipelined path behaves the same, and later batches are unaffected.
    let delivery = link.submit(batch).await.expect("handed over");
    assert!(matches!(delivery.await, Err(LinkError::Partial { failed }) if failed.len() == 2));
    link.send(vec![notify("f-1", 0)])
        .await
        .expect("a clean batch");
    assert_eq!(link.outstanding(), 0);
}
