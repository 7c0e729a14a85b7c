//! Golden JSON encodings of every event kind: the storage format is frozen here.
//!
//! A rename of a variant or field changes the bytes and fails this test; stored history would
//! otherwise stop decoding silently. A deliberate change needs a new schema version and an
//! upcaster, and then a new golden line.

mod common;

use std::collections::BTreeMap;

use common::*;
use fleetops_core::access::{Scope, SecretHash};
use fleetops_core::config::*;
use fleetops_core::cron::{CronExpr, MaintenanceWindow, UtcOffset};
use fleetops_core::event::{EndReason, JobCancelReason, PauseReason, StepTimer, TimeoutCause};
use fleetops_core::ids::{ApiKeyId, CommandId, StatusDetailKey};
use fleetops_core::store::StoredEvent;
use fleetops_core::template::{ParameterSpec, ParameterType};
use fleetops_core::{
    CommandStatus, Duration, Event, ExecutionId, GroupName, JobExecutionStatus, StreamId,
};
use serde_json::json;
use uuid::Uuid;

fn samples() -> Vec<Event> {
    let details: BTreeMap<StatusDetailKey, String> = [(
        StatusDetailKey::parse("step").expect("valid"),
        "2/3".to_owned(),
    )]
    .into();
    vec![
        Event::CommandSent {
            execution_id: ExecutionId::parse("c-1").expect("valid"),
            thing: thing(),
            command_id: Some("lock".into()),
            action: "lock".into(),
            params: json!({"door": "front"}),
            ttl: Duration::from_secs(30),
            sent_at: t(100),
        },
        Event::CommandResponded {
            status: CommandStatus::Succeeded,
            result: Some(json!({"locked": true})),
            status_reason: None,
            at: t(101),
        },
        Event::CommandTimedOut { at: t(130) },
        Event::CommandCanceled {
            at: t(105),
            reason: Some("operator".into()),
        },
        Event::JobCreated {
            job_id: job(),
            name: None,
            description: Some("firmware 2.1".into()),
            targets: Targets {
                things: vec![thing()],
                groups: vec![GroupName::parse("lobby").expect("valid")],
            },
            selection: TargetSelection::Continuous,
            document: json!({"url": "https://fw.invalid/2.1.bin"}),
            config: JobConfig {
                in_progress_timeout: Some(Duration::from_minutes(30)),
                rollout: Rollout::Exponential {
                    base_per_minute: 10,
                    factor: 2.0,
                    criterion: IncreaseCriterion::SucceededThings(5),
                    max_per_minute: 100,
                },
                abort: vec![AbortCriterion {
                    failure_type: FailureType::Failed,
                    min_executed: 10,
                    threshold_percent: 20.0,
                }],
                retry: vec![RetryCriterion {
                    failure_type: FailureType::TimedOut,
                    number_of_retries: 2,
                }],
                schedule: Schedule {
                    start_time: Some(t(200)),
                    end_time: Some(t(9000)),
                    end_behavior: EndBehavior::Cancel,
                },
                stages: vec![],
                maintenance_windows: vec![],
            },
            created_at: t(100),
        },
        Event::JobCreated {
            job_id: job(),
            name: Some("Thermostat firmware 2.1 (EU)".into()),
            description: None,
            targets: Targets {
                things: vec![],
                groups: vec![GroupName::parse("com.example.thermostat (default)").expect("valid")],
            },
            selection: TargetSelection::Snapshot,
            document: json!({}),
            config: JobConfig::default(),
            created_at: t(5),
        },
        Event::JobStarted { at: t(200) },
        Event::JobRolloutStopped { at: t(9000) },
        Event::JobCompleted { at: t(9500) },
        Event::JobCanceled {
            at: t(300),
            force: true,
            reason: JobCancelReason::Aborted {
                criterion: 0,
                failed: 3,
                executed: 10,
            },
        },
        Event::JobDeleted { at: t(9999) },
        Event::ExecutionQueued {
            job_id: job(),
            thing: thing(),
            execution_number: 1,
            queued_at: t(200),
            in_progress_timeout: Some(Duration::from_minutes(30)),
        },
        Event::ExecutionStarted {
            at: t(210),
            status_details: Some(details.clone()),
            in_progress_deadline: Some(t(2010)),
            step: StepTimer::Set(t(810)),
        },
        Event::ExecutionProgressed {
            at: t(220),
            status_details: None,
            step: StepTimer::Cleared,
        },
        Event::ExecutionFinished {
            status: JobExecutionStatus::Failed,
            at: t(230),
            status_details: Some(details),
        },
        Event::ExecutionTimedOut {
            at: t(2010),
            cause: TimeoutCause::Step,
        },
        Event::ExecutionCanceled {
            at: t(240),
            forced: true,
            reason: EndReason::JobAborted,
            status_details: None,
        },
        Event::ExecutionRemoved {
            at: t(250),
            forced: false,
            reason: EndReason::LeftGroup,
        },
        Event::ExecutionRequeued {
            execution_number: 2,
            queued_at: t(260),
        },
        Event::GroupCreated {
            name: GroupName::parse("lobby").expect("valid"),
            description: None,
            at: t(10),
        },
        Event::GroupMembersAdded {
            things: vec![thing()],
            at: t(11),
        },
        Event::GroupMembersRemoved {
            things: vec![thing()],
            at: t(12),
        },
        Event::GroupDeleted { at: t(13) },
        Event::ApiKeyCreated {
            key_id: ApiKeyId::parse("k-1").expect("valid"),
            name: "dashboard".into(),
            scope: Scope::Read,
            secret_hash: SecretHash::from_bytes([0x5a; 32]),
            created_at: t(14),
        },
        Event::ApiKeyRevoked { at: t(15) },
        Event::CommandTemplateRegistered {
            command_id: CommandId::parse("set-temp").expect("valid"),
            action: "setTemperature".into(),
            description: Some("thermostat set point".into()),
            payload: json!({"target": "${celsius}", "note": "to ${celsius} C"}),
            parameters: vec![ParameterSpec {
                name: "celsius".into(),
                kind: ParameterType::Number,
                required: true,
                default: None,
                minimum: Some(5.0),
                maximum: Some(30.0),
                max_length: None,
                allowed: vec![],
            }],
            at: t(16),
        },
        Event::CommandTemplateDeleted { at: t(17) },
        Event::JobPaused {
            at: t(400),
            reason: PauseReason::StageGate {
                stage: 1,
                succeeded: 80,
                required: 86,
                size: 90,
            },
        },
        Event::JobResumed {
            at: t(500),
            comment: Some("known bad batch".into()),
        },
        Event::JobStageAdvanced {
            at: t(500),
            stage: 2,
            overridden: true,
        },
        Event::JobUpdated {
            at: t(600),
            description: Some("slower".into()),
            config: JobConfig {
                rollout: Rollout::Fixed { per_minute: 5 },
                ..JobConfig::default()
            },
        },
        Event::JobCreated {
            job_id: job(),
            name: None,
            description: None,
            targets: Targets {
                things: vec![thing()],
                groups: vec![],
            },
            selection: TargetSelection::Snapshot,
            document: json!({}),
            config: JobConfig {
                stages: vec![
                    Stage {
                        targets: StageTargets::Groups {
                            groups: vec![GroupName::parse("canary").expect("valid")],
                        },
                        success_percent: 100.0,
                        error_threshold: Some(StageErrorThreshold {
                            failure_type: FailureType::All,
                            min_executed: 5,
                            threshold_percent: 10.0,
                            action: StageAction::Pause,
                        }),
                    },
                    Stage {
                        targets: StageTargets::Percent { percent: 30 },
                        success_percent: 95.0,
                        error_threshold: None,
                    },
                ],
                maintenance_windows: vec![MaintenanceWindow {
                    start: CronExpr::parse("0 2 * * 1-5").expect("valid"),
                    duration_minutes: 90,
                    time_zone: UtcOffset::parse("+02:00").expect("valid"),
                }],
                ..JobConfig::default()
            },
            created_at: t(700),
        },
        Event::ExecutionCanceled {
            at: t(800),
            forced: true,
            reason: EndReason::Operator,
            status_details: Some(
                [(
                    StatusDetailKey::parse("why").expect("valid"),
                    "recall".to_owned(),
                )]
                .into(),
            ),
        },
        Event::JobCanceled {
            at: t(900),
            force: false,
            reason: JobCancelReason::StageAborted {
                stage: 0,
                failed: 2,
                executed: 5,
            },
        },
        Event::CommandResponseIgnored {
            status: CommandStatus::Succeeded,
            result: Some(json!({"locked": true})),
            status_reason: None,
            at: t(140),
        },
        Event::ThingRegistered {
            name: thing(),
            attributes: [("site".to_owned(), "north".to_owned())].into(),
            thing_type: Some("pump".into()),
            client_id: Some("hw-00ab-17".into()),
            at: t(14),
        },
        Event::ThingDeregistered { at: t(15) },
        Event::ThingPresenceChanged {
            name: thing(),
            online: false,
            stamp: 1_733_300_000_000,
            at: t(16),
        },
    ]
}

/// Fails to compile when a variant is added without a golden sample.
fn covered(e: &Event) -> usize {
    match e {
        Event::CommandSent { .. } => 0,
        Event::CommandResponded { .. } => 1,
        Event::CommandTimedOut { .. } => 2,
        Event::CommandCanceled { .. } => 3,
        Event::JobCreated { .. } => 4,
        Event::JobStarted { .. } => 5,
        Event::JobRolloutStopped { .. } => 6,
        Event::JobCompleted { .. } => 7,
        Event::JobCanceled { .. } => 8,
        Event::JobDeleted { .. } => 9,
        Event::ExecutionQueued { .. } => 10,
        Event::ExecutionStarted { .. } => 11,
        Event::ExecutionProgressed { .. } => 12,
        Event::ExecutionFinished { .. } => 13,
        Event::ExecutionTimedOut { .. } => 14,
        Event::ExecutionCanceled { .. } => 15,
        Event::ExecutionRemoved { .. } => 16,
        Event::ExecutionRequeued { .. } => 17,
        Event::GroupCreated { .. } => 18,
        Event::GroupMembersAdded { .. } => 19,
        Event::GroupMembersRemoved { .. } => 20,
        Event::GroupDeleted { .. } => 21,
        Event::ApiKeyCreated { .. } => 22,
        Event::ApiKeyRevoked { .. } => 23,
        Event::CommandTemplateRegistered { .. } => 24,
        Event::CommandTemplateDeleted { .. } => 25,
        Event::JobPaused { .. } => 26,
        Event::JobResumed { .. } => 27,
        Event::JobStageAdvanced { .. } => 28,
        Event::JobUpdated { .. } => 29,
        Event::CommandResponseIgnored { .. } => 30,
        Event::ThingRegistered { .. } => 31,
        Event::ThingDeregistered { .. } => 32,
        Event::ThingPresenceChanged { .. } => 33,
    }
}

const GOLDEN: &str = include_str!("golden/events.jsonl");

#[test]
fn every_event_kind_has_a_golden_sample() {
    let mut seen = [false; 34];
    for e in samples() {
        seen[covered(&e)] = true;
    }
    assert!(seen.iter().all(|s| *s), "missing samples: {seen:?}");
}

#[test]
fn events_encode_to_their_golden_json_and_back() {
    let lines: Vec<&str> = GOLDEN.lines().filter(|l| !l.trim().is_empty()).collect();
    let samples = samples();
    if std::env::var_os("FLEETOPS_BLESS").is_some() {
        let out: Vec<String> = samples
            .iter()
            .map(|e| serde_json::to_string(e).expect("encodes"))
            .collect();
        std::fs::write("tests/golden/events.jsonl", out.join("\n") + "\n").expect("writes");
        return;
    }
    assert_eq!(
        lines.len(),
        samples.len(),
        "golden file and samples differ in count"
    );
    for (e, line) in samples.iter().zip(lines) {
        assert_eq!(
            serde_json::to_string(e).expect("encodes"),
            line,
            "{} encoding",
            e.type_name()
        );
        let back: Event = serde_json::from_str(line).expect("golden line decodes");
        assert_eq!(&back, e, "{} decoding", e.type_name());
        let tag = serde_json::from_str::<serde_json::Value>(line).expect("json")["type"].clone();
        assert_eq!(tag, e.type_name(), "type tag");
    }
}

#[test]
fn the_envelope_has_a_stable_encoding() {
    let stored = StoredEvent {
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
        stream: StreamId::job(&job()),
        stream_version: 2,
        position: 17,
        recorded_at: t(200),
        schema_version: 1,
        correlation_id: None,
        causation_id: Some(Uuid::from_u128(7)),
        idempotency_key: None,
        event: Event::JobStarted { at: t(200) },
    };
    let json = serde_json::to_string(&stored).expect("encodes");
    assert_eq!(
        json,
        r#"{"eventId":"01900000-0000-7000-8000-000000000001","stream":"job/job-1","streamVersion":2,"position":17,"recordedAt":200000,"schemaVersion":1,"correlationId":null,"causationId":"00000000-0000-0000-0000-000000000007","idempotencyKey":null,"event":{"type":"JobStarted","at":200000}}"#
    );
    assert_eq!(
        serde_json::from_str::<StoredEvent>(&json).expect("decodes"),
        stored
    );
}

#[test]
fn unknown_or_invalid_events_are_refused_not_guessed() {
    for bad in [
        r#"{"type":"NoSuchEvent","at":1}"#,
        r#"{"type":"GroupMembersAdded","things":["a/b"],"at":1}"#,
        r#"{"type":"ExecutionFinished","status":"LOST","at":1,"statusDetails":null}"#,
        r#"{"at":1}"#,
    ] {
        assert!(serde_json::from_str::<Event>(bad).is_err(), "{bad}");
    }
}
