//! Crashes found by the fuzz targets in `fuzz/`, kept as ordinary tests with their root cause.

use fleetops_core::command::CommandExecution;
use fleetops_core::config::{AbortCriterion, FailureType, JobConfig, TargetSelection, Targets};
use fleetops_core::job::Job;
use fleetops_core::store::StoredEvent;
use fleetops_core::{Aggregate, CommandStatus, Event, JobId, StreamId, ThingName, Timestamp};
use serde_json::json;

fn json_round_trip(e: &Event) -> Event {
    let text = serde_json::to_string(e).expect("encodes");
    serde_json::from_str(&text).expect("decodes")
}

/// `aggregate_ops` (and `stored_event_decode`, given such a number): a job created with an abort
/// threshold of 1.2355704249592825e-307 % replayed, after a JSON round trip, into a job whose
/// threshold was 1.2355704249592823e-307 %, so a restart changed the job.
///
/// Root cause: serde_json's default float parser is fast but not correctly rounded; for about a
/// third of all `f64` values it reads the shortest decimal that serde_json itself wrote back as a
/// neighbouring value. Stored events are JSON, so a float in a job config, a job document or a
/// command's params or result could drift on every read. Fixed by enabling serde_json's
/// `float_roundtrip` feature in fleetops-core (and, through feature unification, everywhere
/// serde_json decodes stored events).
#[test]
fn floats_in_stored_events_survive_a_json_round_trip() {
    let config = JobConfig {
        abort: vec![AbortCriterion {
            failure_type: FailureType::All,
            min_executed: 1,
            threshold_percent: 1.235_570_424_959_282_5e-307,
        }],
        ..JobConfig::default()
    };
    let created = Event::JobCreated {
        job_id: JobId::parse("job-1").expect("valid"),
        name: None,
        description: None,
        targets: Targets {
            things: vec![ThingName::parse("thing-1").expect("valid")],
            groups: vec![],
        },
        selection: TargetSelection::Snapshot,
        document: json!({"gain": -1.819_967_304_027_17e-179, "ratio": 1.603_964_615_428_183e143}),
        config,
        created_at: Timestamp::from_secs(100),
    };
    assert_eq!(json_round_trip(&created), created);
    let job = Job::replay([&created]).expect("replays");
    let reread = Job::replay([&json_round_trip(&created)]).expect("replays");
    assert_eq!(reread, job, "a restart changed the job");

    let answered = Event::CommandResponded {
        status: CommandStatus::Succeeded,
        result: Some(json!({"x": 1.071_566_039_146_582_6e-75})),
        status_reason: None,
        at: Timestamp::from_secs(101),
    };
    assert_eq!(json_round_trip(&answered), answered);
    let sent = Event::CommandSent {
        execution_id: fleetops_core::ExecutionId::parse("c-1").expect("valid"),
        thing: ThingName::parse("thing-1").expect("valid"),
        command_id: None,
        action: "calibrate".into(),
        params: json!({"offset": 1.071_566_039_146_582_6e-75}),
        ttl: fleetops_core::Duration::from_secs(30),
        sent_at: Timestamp::from_secs(100),
    };
    assert_eq!(json_round_trip(&sent), sent);
    let history = [sent, answered];
    let reread: Vec<Event> = history.iter().map(json_round_trip).collect();
    assert_eq!(
        CommandExecution::replay(&reread).expect("replays"),
        CommandExecution::replay(&history).expect("replays")
    );

    // The envelope a store writes decodes to the same record.
    let stored = StoredEvent {
        event_id: uuid::Uuid::from_u128(7),
        stream: StreamId::job(&JobId::parse("job-1").expect("valid")),
        stream_version: 1,
        position: 1,
        recorded_at: Timestamp::from_secs(100),
        schema_version: 1,
        correlation_id: None,
        causation_id: None,
        idempotency_key: None,
        event: created,
    };
    let text = serde_json::to_vec(&stored).expect("encodes");
    let back: StoredEvent = serde_json::from_slice(&text).expect("decodes");
    assert_eq!(back, stored);
}
