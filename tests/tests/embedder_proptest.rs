//! An embedder's property test, written only against what fleetops publishes: the `proptest`
//! feature's strategies, the `testkit` feature's reference model, and the service crate's
//! in-process link and manual clock. It is the worked example `docs/embedding.md` points to.
//!
//! "My service" here is a [`Fleet`] on the in-memory store, with devices on the other end of
//! a [`ChannelLink`] and time on a [`ManualClock`]. Random sequences of operator calls,
//! device messages and clock jumps go to it and, as [`Op`]s, to the [`Model`]; after every
//! step the answers must agree and every execution must be where the model says.

use std::time::Instant;

use fleetops_core::config::JobConfig;
use fleetops_core::device::{CommandResponse, DeviceRequest, Outbound};
use fleetops_core::strategies;
use fleetops_core::testkit::model::{
    CommandOp, Expect, JobOp, Model, NewCommand, Op, Response, Step, Update,
};
use fleetops_core::{
    CommandStatus, Duration, ExecutionId, JobExecutionStatus, JobId, ThingName, Timestamp,
};
use fleetops_service::clock::{Clock, ManualClock};
use fleetops_service::link::{ChannelLink, DeviceEnd};
use fleetops_service::{Fleet, FleetError, JobSpec};
use fleetops_store_memory::MemoryStore;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;

/// The job's in-progress timeout: clock jumps below cross it sometimes.
const IN_PROGRESS_MINUTES: u64 = 10;

/// One thing that can happen to the service.
#[derive(Debug, Clone)]
enum Action {
    /// A device reports on its execution of the job.
    Update {
        thing: Index,
        status: JobExecutionStatus,
        /// `expectedVersion`: absent, the current one, or a stale one.
        version: Option<bool>,
        step_minutes: Option<u64>,
    },
    /// The operator cancels a thing's execution.
    Cancel { thing: Index, force: bool },
    /// The operator deletes a thing's execution.
    Remove { thing: Index, force: bool },
    /// The operator sends a command to a thing.
    Send { thing: Index, ttl_secs: u64 },
    /// A device answers one of the commands sent so far.
    Respond {
        command: Index,
        status: CommandStatus,
    },
    /// The operator cancels one of the commands sent so far.
    CancelCommand { command: Index },
    /// Time passes; timers may fire.
    Advance { secs: u64 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (
            any::<Index>(),
            strategies::device_settable_status(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(1..=30u64),
        )
            .prop_map(|(thing, status, version, step_minutes)| Action::Update {
                thing,
                status,
                version,
                step_minutes,
            }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(thing, force)| Action::Cancel { thing, force }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(thing, force)| Action::Remove { thing, force }),
        2 => (any::<Index>(), 1..=600u64).prop_map(|(thing, ttl_secs)| Action::Send { thing, ttl_secs }),
        2 => (any::<Index>(), strategies::command_response_status())
            .prop_map(|(command, status)| Action::Respond { command, status }),
        1 => any::<Index>().prop_map(|command| Action::CancelCommand { command }),
        2 => prop_oneof![1..=120u64, 300..=1_200u64].prop_map(|secs| Action::Advance { secs }),
    ]
}

/// The embedder's service under test, and its devices.
struct Service {
    fleet: Fleet<MemoryStore, ChannelLink>,
    devices: DeviceEnd,
    clock: ManualClock,
    job: JobId,
    things: Vec<ThingName>,
    commands: Vec<(ExecutionId, ThingName)>,
}

impl Service {
    async fn start(job: JobId, things: Vec<ThingName>) -> Self {
        let clock = ManualClock::new(Timestamp::from_secs(1_700_000_000));
        let (link, devices) = ChannelLink::pair(4096);
        let fleet = Fleet::builder(MemoryStore::new(), link)
            .clock(clock.clone())
            .start()
            .await
            .expect("the fleet starts");
        Self {
            fleet,
            devices,
            clock,
            job,
            things,
            commands: Vec::new(),
        }
    }

    /// A device's request, answered over the link: accepted or refused with a code.
    async fn device(&mut self, thing: &ThingName, request: DeviceRequest) -> Result<(), Expect> {
        let reply = self
            .devices
            .call(thing, request)
            .await
            .expect("the fleet answers");
        // Notifications are not what this test checks; keep the channel from filling.
        self.devices.drain();
        match reply {
            Outbound::Accepted { .. } => Ok(()),
            Outbound::Rejected { rejection, .. } => Err(Expect::Refused(rejection.code())),
            other => panic!("not a reply: {other:?}"),
        }
    }

    async fn job_version(&self, thing: &ThingName) -> Option<(JobExecutionStatus, u64)> {
        self.fleet
            .get_job_execution(&self.job, thing)
            .await
            .ok()
            .map(|e| (e.status, e.version_number))
    }

    async fn command_version(&self, id: &ExecutionId) -> Option<(CommandStatus, u64)> {
        self.fleet
            .get_command(id)
            .await
            .ok()
            .map(|c| (c.status, c.version))
    }
}

/// An accepted call's outcome, told by whether the stored version moved.
fn job_outcome(
    before: Option<(JobExecutionStatus, u64)>,
    after: Option<(JobExecutionStatus, u64)>,
) -> Expect {
    match (before, after) {
        (Some((_, v0)), Some((s, v1))) if v1 > v0 => Expect::Job(s),
        _ => Expect::Unchanged,
    }
}

fn command_outcome(
    before: Option<(CommandStatus, u64)>,
    after: Option<(CommandStatus, u64)>,
) -> Expect {
    match (before, after) {
        (None, Some((s, _))) => Expect::Command(s),
        (Some((_, v0)), Some((s, v1))) if v1 > v0 => Expect::Command(s),
        _ => Expect::Unchanged,
    }
}

fn refused(e: &FleetError) -> Expect {
    match e {
        FleetError::Rejected(r) => Expect::Refused(r.code()),
        other => panic!("the service failed rather than refused: {other}"),
    }
}

/// Every execution and command of the service is where the model says, in status and
/// version. Timers fire on the service's own schedule, so give it a moment to catch up.
async fn agree(service: &Service, model: &Model) -> Result<(), TestCaseError> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut differ = Vec::new();
        for thing in &service.things {
            let want = model
                .job_status(&service.job, thing)
                .zip(model.job_version(&service.job, thing));
            let got = service.job_version(thing).await;
            if want != got {
                differ.push(format!("{thing}: model {want:?}, service {got:?}"));
            }
        }
        for (id, _) in &service.commands {
            let want = model.command_status(id).zip(model.command_version(id));
            let got = service.command_version(id).await;
            if want != got {
                differ.push(format!("command {id}: model {want:?}, service {got:?}"));
            }
        }
        if differ.is_empty() {
            return Ok(());
        }
        prop_assert!(Instant::now() < deadline, "{}", differ.join("\n"));
        service.fleet.caught_up().await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn run(
    job: JobId,
    things: Vec<ThingName>,
    actions: Vec<Action>,
) -> Result<(), TestCaseError> {
    let mut service = Service::start(job.clone(), things.clone()).await;
    let mut model = Model::new();
    let timeout = Duration::from_minutes(IN_PROGRESS_MINUTES);

    // The job queues one execution per thing, at the time it is created.
    let config = JobConfig {
        in_progress_timeout: Some(timeout),
        ..JobConfig::default()
    };
    let mut spec = JobSpec::new(job.clone(), json!({"operation": "update"})).things(things.clone());
    spec.config = config;
    service
        .fleet
        .create_job(spec)
        .await
        .expect("the job is created");
    let t0 = service.clock.now();
    for thing in &things {
        let queue = Op::job(
            job.clone(),
            thing.clone(),
            JobOp::Queue {
                in_progress_timeout: Some(timeout),
            },
        );
        prop_assert_eq!(
            model.step(&queue, t0),
            Expect::Job(JobExecutionStatus::Queued)
        );
    }
    agree(&service, &model).await?;

    for action in actions {
        let now = service.clock.now();
        match action {
            Action::Update {
                thing,
                status,
                version,
                step_minutes,
            } => {
                let thing = thing.get(&things).clone();
                let current = model.job_version(&job, &thing).unwrap_or(0);
                let update = Update {
                    expected_version: version
                        .map(|fresh| if fresh { current } else { current + 1 }),
                    step: step_minutes.map_or(Step::Keep, Step::Minutes),
                    ..Update::new(status)
                };
                let op = Op::job(job.clone(), thing.clone(), JobOp::Update(update));
                let want = model.step(&op, now);
                let request = match op.to_intent() {
                    fleetops_core::testkit::model::Intent::Job {
                        intent: fleetops_core::job_execution::JobExecutionIntent::Update(request),
                        ..
                    } => request,
                    other => panic!("an update maps to an update: {other:?}"),
                };
                let before = service.job_version(&thing).await;
                let got = match service
                    .device(
                        &thing,
                        DeviceRequest::Update {
                            job_id: job.clone(),
                            request,
                        },
                    )
                    .await
                {
                    Ok(()) => job_outcome(before, service.job_version(&thing).await),
                    Err(refusal) => refusal,
                };
                prop_assert_eq!(got, want, "update from {}", thing);
            }
            Action::Cancel { thing, force } => {
                let thing = thing.get(&things).clone();
                let want = model.step(
                    &Op::job(job.clone(), thing.clone(), JobOp::Cancel { force }),
                    now,
                );
                let before = service.job_version(&thing).await;
                let got = match service
                    .fleet
                    .cancel_job_execution(&job, &thing, force)
                    .await
                {
                    Ok(_) => job_outcome(before, service.job_version(&thing).await),
                    Err(e) => refused(&e),
                };
                prop_assert_eq!(got, want, "cancel (force: {}) of {}", force, thing);
            }
            Action::Remove { thing, force } => {
                let thing = thing.get(&things).clone();
                let want = model.step(
                    &Op::job(job.clone(), thing.clone(), JobOp::Remove { force }),
                    now,
                );
                let before = service.job_version(&thing).await;
                let got = match service
                    .fleet
                    .delete_job_execution(&job, &thing, force)
                    .await
                {
                    Ok(_) => job_outcome(before, service.job_version(&thing).await),
                    Err(e) => refused(&e),
                };
                prop_assert_eq!(got, want, "delete (force: {}) of {}", force, thing);
            }
            Action::Send { thing, ttl_secs } => {
                let thing = thing.get(&things).clone();
                let ttl = Duration::from_secs(ttl_secs);
                let handle = service
                    .fleet
                    .send_command(thing.clone(), "reboot", json!({}), ttl)
                    .await
                    .expect("a valid command is sent");
                let id = handle.execution_id().clone();
                let send = NewCommand::new(thing.clone(), "reboot", ttl);
                let want = model.step(&Op::command(id.clone(), CommandOp::Send(send)), now);
                let got = command_outcome(None, service.command_version(&id).await);
                prop_assert_eq!(got, want, "send to {}", thing);
                service.commands.push((id, thing));
            }
            Action::Respond { command, status } => {
                if service.commands.is_empty() {
                    continue;
                }
                let (id, thing) = command.get(&service.commands).clone();
                let want = model.step(
                    &Op::command(id.clone(), CommandOp::Respond(Response::new(status))),
                    now,
                );
                let before = service.command_version(&id).await;
                let response = CommandResponse {
                    status,
                    result: None,
                    status_reason: None,
                };
                let got = match service
                    .device(
                        &thing,
                        DeviceRequest::CommandResponse {
                            execution_id: id.clone(),
                            response,
                        },
                    )
                    .await
                {
                    Ok(()) => command_outcome(before, service.command_version(&id).await),
                    Err(refusal) => refusal,
                };
                prop_assert_eq!(got, want, "response to {}", id);
            }
            Action::CancelCommand { command } => {
                if service.commands.is_empty() {
                    continue;
                }
                let (id, _) = command.get(&service.commands).clone();
                let want = model.step(
                    &Op::command(id.clone(), CommandOp::Cancel { reason: None }),
                    now,
                );
                let before = service.command_version(&id).await;
                let got = match service.fleet.cancel_command(&id, None).await {
                    Ok(_) => command_outcome(before, service.command_version(&id).await),
                    Err(e) => refused(&e),
                };
                prop_assert_eq!(got, want, "cancel of {}", id);
            }
            Action::Advance { secs } => {
                service.clock.advance(Duration::from_secs(secs));
                let now = service.clock.now();
                // The service fires its own timers; the model is told which are due.
                for timer in model.timers_due(now) {
                    model.step(&timer, now);
                }
            }
        }
        agree(&service, &model).await?;
    }
    service.fleet.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Shrinking replays whole services; a failure is readable at a few dozen steps.
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    /// The embedding service and the reference model agree on every answer and every
    /// execution's state, whatever devices, operators and the clock do.
    #[test]
    fn my_service_behaves_like_the_model(
        job in strategies::job_id(),
        things in proptest::collection::btree_set(strategies::thing_name(), 1..=3),
        actions in proptest::collection::vec(action(), 1..=30),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(run(job, things.into_iter().collect(), actions))?;
    }
}
