//! The `proptest` feature's strategies keep their promises: every valid value passes the
//! boundary that guards its type (an id's `parse`, `JobConfig::validate`, the aggregates'
//! `decide`), every event survives a JSON round trip, and every `invalid_*`/`oversized_*`
//! value is refused by that same boundary.
#![cfg(feature = "proptest")]

use std::collections::BTreeSet;

use fleetops_core::command::{valid_command_id, CommandExecution, CommandIntent, MAX_REASON_LEN};
use fleetops_core::device::{CommandResponse, StepTimeout, UpdateRequest};
use fleetops_core::group::{Group, GroupIntent};
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::job::{Job, JobIntent, MAX_COMMENT_LEN, MAX_DESCRIPTION_LEN};
use fleetops_core::job_execution::{
    status_details_bytes, JobExecution, JobExecutionIntent, MAX_DETAIL_VALUE_LEN,
};
use fleetops_core::limits::{
    json_len, MAX_COMMAND_PARAMS_BYTES, MAX_JOB_DOCUMENT_BYTES, MAX_STATUS_DETAILS_BYTES,
    MAX_STATUS_DETAILS_KEYS,
};
use fleetops_core::strategies as s;
use fleetops_core::{
    Aggregate, Duration, Event, ExecutionId, GroupName, JobId, Rejection, StreamId, ThingName,
    Timestamp,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::json;

/// The field of an `InvalidRequest`, or a failure naming what came instead.
fn refused_field<T: std::fmt::Debug>(r: Result<T, Rejection>) -> Result<&'static str, String> {
    match r {
        Err(Rejection::InvalidRequest { field, .. }) => Ok(field),
        other => Err(format!("expected InvalidRequest, got {other:?}")),
    }
}

fn now() -> Timestamp {
    Timestamp::from_secs(1_700_000_000)
}

fn queued_execution() -> JobExecution {
    JobExecution::replay(&[Event::ExecutionQueued {
        job_id: JobId::parse("job-1").unwrap(),
        thing: ThingName::parse("thing-1").unwrap(),
        execution_number: 1,
        queued_at: now(),
        in_progress_timeout: None,
    }])
    .unwrap()
    .unwrap()
}

fn sent_command() -> CommandExecution {
    CommandExecution::replay(&[Event::CommandSent {
        execution_id: ExecutionId::parse("cmd-1").unwrap(),
        thing: ThingName::parse("thing-1").unwrap(),
        command_id: None,
        action: "reboot".into(),
        params: json!({}),
        ttl: Duration::from_secs(60),
        sent_at: now(),
    }])
    .unwrap()
    .unwrap()
}

fn send(
    action: String,
    command_id: Option<String>,
    params: serde_json::Value,
    ttl: Duration,
) -> CommandIntent {
    CommandIntent::Send {
        execution_id: ExecutionId::parse("cmd-1").unwrap(),
        thing: ThingName::parse("thing-1").unwrap(),
        command_id,
        action,
        params,
        ttl,
    }
}

fn create(document: serde_json::Value, description: Option<String>) -> JobIntent {
    JobIntent::Create {
        job_id: JobId::parse("job-1").unwrap(),
        name: None,
        description,
        targets: fleetops_core::config::Targets {
            things: vec![ThingName::parse("thing-1").unwrap()],
            groups: vec![],
        },
        selection: Default::default(),
        document,
        config: Default::default(),
    }
}

/// Draws `n` values of `strategy` outside a `proptest!` block.
fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

proptest! {
    // ---- ids ----------------------------------------------------------------------------

    #[test]
    fn every_id_round_trips_through_parse(
        thing in s::thing_name(),
        job in s::job_id(),
        exec in s::execution_id(),
        group in s::group_name(),
        key in s::status_detail_key(),
        stream in s::stream_id(),
        command_id in s::command_id(),
    ) {
        prop_assert_eq!(ThingName::parse(thing.as_str()), Ok(thing.clone()));
        prop_assert_eq!(JobId::parse(job.as_str()), Ok(job.clone()));
        prop_assert_eq!(ExecutionId::parse(exec.as_str()), Ok(exec.clone()));
        prop_assert_eq!(GroupName::parse(group.as_str()), Ok(group.clone()));
        prop_assert_eq!(StatusDetailKey::parse(key.as_str()), Ok(key.clone()));
        prop_assert_eq!(StreamId::try_from(stream.as_str()), Ok(stream.clone()));
        prop_assert_eq!(StreamId::parse(stream.as_str()), Ok(stream.kind()));
        prop_assert!(valid_command_id(&command_id), "{command_id:?}");
    }

    #[test]
    fn every_invalid_id_is_refused_by_its_parse(
        thing in s::invalid_thing_name(),
        job in s::invalid_job_id(),
        exec in s::invalid_execution_id(),
        group in s::invalid_group_name(),
        key in s::invalid_status_detail_key(),
        stream in s::invalid_stream_id(),
        command_id in s::invalid_command_id(),
    ) {
        prop_assert!(ThingName::parse(&thing).is_err(), "{thing:?}");
        prop_assert!(JobId::parse(&job).is_err(), "{job:?}");
        prop_assert!(ExecutionId::parse(&exec).is_err(), "{exec:?}");
        prop_assert!(GroupName::parse(&group).is_err(), "{group:?}");
        prop_assert!(StatusDetailKey::parse(&key).is_err(), "{key:?}");
        prop_assert!(StreamId::parse(&stream).is_err(), "{stream:?}");
        prop_assert!(!valid_command_id(&command_id), "{command_id:?}");
        // Serde goes through the same parse: a stored record with such an id is refused.
        prop_assert!(serde_json::from_value::<ThingName>(json!(thing)).is_err());
    }

    // ---- configs and limits -------------------------------------------------------------

    #[test]
    fn every_config_passes_validation_at_its_now(
        (now, config) in s::timestamp().prop_flat_map(|now| (Just(now), s::job_config(now)))
    ) {
        prop_assert_eq!(config.validate(now), Ok(()));
    }

    #[test]
    fn every_invalid_config_is_refused(
        (now, config) in s::timestamp()
            .prop_flat_map(|now| (Just(now), s::invalid_job_config(now)))
    ) {
        prop_assert!(refused_field(config.validate(now)).is_ok(), "{config:?}");
        // And by `decide`, which validates it on create.
        let create = JobIntent::Create {
            job_id: JobId::parse("job-1").unwrap(),
            name: None,
            description: None,
            targets: fleetops_core::config::Targets {
                things: vec![ThingName::parse("t").unwrap()],
                groups: vec![],
            },
            selection: Default::default(),
            document: json!({}),
            config,
        };
        prop_assert!(refused_field(Job::decide(None, create, now)).is_ok());
    }

    #[test]
    fn generated_payloads_stay_within_the_limits(
        details in s::status_details(),
        document in s::job_document(),
        params in s::command_params(),
    ) {
        prop_assert!(details.len() <= MAX_STATUS_DETAILS_KEYS);
        prop_assert!(status_details_bytes(&details) <= MAX_STATUS_DETAILS_BYTES);
        prop_assert!(details.values().all(|v| v.chars().count() <= MAX_DETAIL_VALUE_LEN));
        prop_assert!(document.is_object());
        prop_assert!(json_len(&document) <= MAX_JOB_DOCUMENT_BYTES);
        prop_assert!(json_len(&params) <= MAX_COMMAND_PARAMS_BYTES);
    }

    // ---- events -------------------------------------------------------------------------

    #[test]
    fn every_event_survives_a_json_round_trip(event in s::event()) {
        let text = serde_json::to_string(&event).unwrap();
        let back: Event = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &event);
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn every_device_request_survives_a_json_round_trip(inbound in s::inbound()) {
        let text = serde_json::to_string(&inbound).unwrap();
        let back: fleetops_core::device::Inbound = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, inbound);
    }

    // ---- valid intents are accepted ------------------------------------------------------

    #[test]
    fn valid_creations_are_accepted(
        (now, job) in s::timestamp().prop_flat_map(|now| (Just(now), s::job_intent(now))),
        command in s::command_intent(),
        group in s::group_intent(),
        exec in s::job_execution_intent(),
    ) {
        if matches!(job, JobIntent::Create { .. }) {
            prop_assert!(Job::execute(None, job, now).is_ok());
        }
        if matches!(command, CommandIntent::Send { .. }) {
            prop_assert!(CommandExecution::execute(None, command, now).is_ok());
        }
        if matches!(group, GroupIntent::Create { .. }) {
            prop_assert!(Group::execute(None, group, now).is_ok());
        }
        if matches!(exec, JobExecutionIntent::Queue { .. }) {
            prop_assert!(JobExecution::execute(None, exec, now).is_ok());
        }
    }

    #[test]
    fn valid_device_input_is_accepted(
        update in s::update_request(),
        details in proptest::option::of(s::status_details()),
        step in s::step_timeout(),
        response in s::command_response(),
        reason in proptest::option::of(s::reason()),
    ) {
        // From QUEUED every device status is reachable, and no deadline runs yet.
        let update = UpdateRequest { expected_version: None, execution_number: None, ..update };
        let queued = queued_execution();
        prop_assert!(JobExecution::execute(Some(queued.clone()), JobExecutionIntent::Update(update), now()).is_ok());
        let start = JobExecutionIntent::Start { status_details: details, step_timeout: step };
        prop_assert!(JobExecution::execute(Some(queued), start, now()).is_ok());
        prop_assert!(CommandExecution::execute(Some(sent_command()), CommandIntent::Respond(response), now()).is_ok());
        let cancel = CommandIntent::Cancel { reason };
        prop_assert!(CommandExecution::execute(Some(sent_command()), cancel, now()).is_ok());
    }

    // ---- invalid input is refused -------------------------------------------------------

    #[test]
    fn over_limit_status_details_and_step_timers_are_refused(
        details in s::invalid_status_details(),
        step in s::invalid_step_timeout(),
        status in s::device_settable_status(),
    ) {
        let queued = queued_execution();
        let update = |status_details, step_timeout| JobExecutionIntent::Update(UpdateRequest {
            status: Some(status),
            status_details,
            step_timeout,
            ..UpdateRequest::default()
        });
        let start = |status_details, step_timeout| JobExecutionIntent::Start { status_details, step_timeout };
        for intent in [
            update(Some(details.clone()), StepTimeout::Keep),
            update(None, step),
            start(Some(details.clone()), StepTimeout::Keep),
            start(None, step),
        ] {
            let field = refused_field(JobExecution::decide(Some(&queued), intent, now()));
            prop_assert!(matches!(field, Ok("statusDetails" | "stepTimeoutInMinutes")), "{field:?}");
        }
    }

    #[test]
    fn invalid_command_sends_are_refused(
        action in s::invalid_command_action(),
        command_id in s::invalid_command_id(),
        params in s::oversized_command_params(),
        ttl in s::invalid_command_ttl(),
        good_action in s::command_action(),
        good_ttl in s::command_ttl(),
    ) {
        let refused = |intent| refused_field(CommandExecution::decide(None, intent, now()));
        prop_assert_eq!(refused(send(action, None, json!({}), good_ttl)), Ok("action"));
        prop_assert_eq!(refused(send(good_action.clone(), Some(command_id), json!({}), good_ttl)), Ok("commandId"));
        prop_assert_eq!(refused(send(good_action.clone(), None, params, good_ttl)), Ok("params"));
        prop_assert_eq!(refused(send(good_action, None, json!({}), ttl)), Ok("ttl"));
    }

    #[test]
    fn over_long_texts_are_refused(
        reason in s::text_longer_than(MAX_REASON_LEN),
        description in s::text_longer_than(MAX_DESCRIPTION_LEN),
        comment in s::text_longer_than(MAX_COMMENT_LEN),
        status in s::command_response_status(),
    ) {
        let sent = sent_command();
        let respond = CommandIntent::Respond(CommandResponse {
            status,
            result: None,
            status_reason: Some(reason.clone()),
        });
        prop_assert_eq!(refused_field(CommandExecution::decide(Some(&sent), respond, now())), Ok("statusReason"));
        let cancel = CommandIntent::Cancel { reason: Some(reason) };
        prop_assert_eq!(refused_field(CommandExecution::decide(Some(&sent), cancel, now())), Ok("reason"));
        prop_assert_eq!(
            refused_field(Job::decide(None, create(json!({}), Some(description.clone())), now())),
            Ok("description")
        );
        let group = GroupIntent::Create { name: GroupName::parse("g").unwrap(), description: Some(description) };
        prop_assert_eq!(refused_field(Group::decide(None, group, now())), Ok("description"));
        let job = Job::execute(None, create(json!({}), None), now()).unwrap().0;
        let cancel = JobIntent::Cancel { force: false, comment: Some(comment) };
        prop_assert_eq!(refused_field(Job::decide(job.as_ref(), cancel, now())), Ok("comment"));
    }

    #[test]
    fn invalid_job_documents_are_refused(
        oversized in s::oversized_job_document(),
        not_object in s::non_object_job_document(),
    ) {
        prop_assert_eq!(refused_field(Job::decide(None, create(oversized, None), now())), Ok("document"));
        prop_assert_eq!(refused_field(Job::decide(None, create(not_object, None), now())), Ok("document"));
    }

    // ---- strategies drive the aggregates ------------------------------------------------

    #[test]
    fn folding_generated_intents_keeps_replay_equal_to_live_state(
        exec in proptest::collection::vec((s::job_execution_intent(), s::duration()), 0..12),
        command in proptest::collection::vec((s::command_intent(), s::duration()), 0..12),
        group in proptest::collection::vec((s::group_intent(), s::duration()), 0..12),
        job in proptest::collection::vec((s::job_intent(now()), s::duration()), 0..12),
    ) {
        fold::<JobExecution>(exec)?;
        fold::<CommandExecution>(command)?;
        fold::<Group>(group)?;
        fold::<Job>(job)?;
    }
}

/// Decides each intent at an advancing clock; refusals change nothing, accepted events
/// evolve, and the stored history replays to the live state.
fn fold<A: Aggregate + PartialEq>(
    intents: Vec<(A::Intent, Duration)>,
) -> Result<(), TestCaseError> {
    let mut now = now();
    let mut state: Option<A> = None;
    let mut log = Vec::new();
    for (intent, step) in intents {
        now = now + Duration::from_millis(step.as_millis() % 3_600_000);
        // A refusal leaves the state as it was; accepted events must all evolve.
        if let Ok(events) = A::decide(state.as_ref(), intent, now) {
            for e in events {
                let next = A::evolve(state.take(), &e);
                prop_assert!(next.is_ok(), "{} emitted {e:?}: {next:?}", A::NAME);
                state = next.ok();
                log.push(e);
            }
        }
        prop_assert_eq!(&A::replay(&log).unwrap(), &state);
    }
    Ok(())
}

/// `event()` draws every variant, and the valid/invalid strategies cover every branch the
/// promise names (a weak check of the distribution, on a fixed seed).
#[test]
fn the_event_strategy_draws_every_variant() {
    let names: BTreeSet<&str> = sample(s::event(), 3000)
        .iter()
        .map(Event::type_name)
        .collect();
    assert_eq!(names.len(), 34, "{names:?}");
}
