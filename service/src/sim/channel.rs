//! The in-process adapter: every device behind a [`DeviceEnd`], in one task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fleetops_core::device::{DeviceRequest, Inbound, Outbound, Reply, StartNextRequest};
use fleetops_core::link::{LinkEvent, Receipt};
use fleetops_core::{ExecutionId, ThingName};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

use super::behaviour::Behaviour;
use super::device::{Answer, Next, Report, SimDevice, Simulator, Stats};
use crate::link::DeviceEnd;

/// A running in-process simulation; dropping it stops the devices.
#[derive(Debug)]
pub struct Simulation {
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Simulation {
    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Simulates every device behind `end` as `behaviour` says (see [`SimDevice`] and
/// [`Simulator::answer`]): any thing the fleet writes to is a device.
///
/// Requests are queued locally and sent as the fleet takes them, so the simulator never
/// blocks the fleet's sends; the queue holds at most a request or two per device.
pub fn simulate(end: DeviceEnd, behaviour: impl Behaviour) -> Simulation {
    let sim = Simulator::new(behaviour);
    let stats = Arc::clone(sim.stats());
    let task = tokio::spawn(Devices::new(sim).run(end));
    Simulation { stats, task }
}

/// Work a device finishes after its execution time.
enum Done {
    Report(ThingName, Report),
    Answer(ThingName, ExecutionId, Answer),
}

struct Devices {
    sim: Simulator,
    devices: HashMap<ThingName, SimDevice>,
    /// Requests ready to go, oldest first.
    queue: VecDeque<LinkEvent>,
    /// Work still under way (only with a non-zero execution time).
    working: FuturesUnordered<BoxFuture<'static, Done>>,
}

impl Devices {
    fn new(sim: Simulator) -> Self {
        Self {
            sim,
            devices: HashMap::new(),
            queue: VecDeque::new(),
            working: FuturesUnordered::new(),
        }
    }

    async fn run(mut self, mut end: DeviceEnd) {
        let tx = end.raw_sender();
        loop {
            tokio::select! {
                biased;
                m = end.recv() => match m {
                    Some(m) => self.hear(m),
                    None => return,
                },
                Some(done) = self.working.next(), if !self.working.is_empty() => self.finish(done),
                permit = tx.reserve(), if !self.queue.is_empty() => {
                    let Ok(permit) = permit else { return };
                    if let Some(e) = self.queue.pop_front() {
                        permit.send(e);
                    }
                }
            }
        }
    }

    fn device(&mut self, thing: ThingName) -> &mut SimDevice {
        let sim = &self.sim;
        self.devices
            .entry(thing)
            .or_insert_with_key(|thing| sim.device(thing.clone()))
    }

    fn hear(&mut self, m: Outbound) {
        match m {
            Outbound::NotifyNext {
                thing,
                execution: None,
                ..
            } => {
                // Nothing pending: no notification about an earlier attempt can follow, so
                // there is nothing left to remember about this device.
                self.devices.remove(&thing);
            }
            Outbound::NotifyNext {
                thing, execution, ..
            } => {
                let next = self.device(thing.clone()).on_next(execution.as_ref());
                self.next(thing, next);
            }
            Outbound::Accepted {
                thing,
                reply: Reply::StartNext(execution),
                ..
            } => {
                if let Some(report) = self.device(thing.clone()).on_started(execution.as_ref()) {
                    self.after(Done::Report(thing, report));
                }
            }
            Outbound::Accepted {
                thing,
                reply: Reply::Pending(jobs),
                ..
            } => {
                let next = self.device(thing.clone()).on_pending(&jobs);
                self.next(thing, next);
            }
            Outbound::Rejected { .. } => {
                self.sim.stats().errors.fetch_add(1, Ordering::Relaxed);
            }
            Outbound::CommandRequest {
                thing,
                execution_id,
                action,
                ..
            } => {
                let answer = self.sim.answer(&thing, &execution_id, &action);
                if answer.response().is_some() {
                    self.after(Done::Answer(thing, execution_id, answer));
                } else {
                    self.sim.answered(&answer);
                }
            }
            _ => {}
        }
    }

    fn next(&mut self, thing: ThingName, next: Next) {
        match next {
            Next::Wait => {}
            Next::StartNext => {
                self.send(thing, DeviceRequest::StartNext(StartNextRequest::default()))
            }
            Next::Report(report) => self.after(Done::Report(thing, report)),
        }
    }

    /// Finishes `done` after its execution time: at once when there is none, as the
    /// simulator is mostly used.
    fn after(&mut self, done: Done) {
        let wait = match &done {
            Done::Report(_, r) => r.after(),
            Done::Answer(_, _, a) => a.after(),
        };
        if wait.is_zero() {
            self.finish(done);
        } else {
            self.working.push(Box::pin(async move {
                tokio::time::sleep(wait).await;
                done
            }));
        }
    }

    fn finish(&mut self, done: Done) {
        match done {
            Done::Report(thing, report) => {
                self.sim.reported(&report);
                self.send(
                    thing,
                    DeviceRequest::Update {
                        job_id: report.job_id().clone(),
                        request: report.request().clone(),
                    },
                );
            }
            Done::Answer(thing, execution_id, answer) => {
                self.sim.answered(&answer);
                if let Some(response) = answer.response() {
                    self.send(
                        thing,
                        DeviceRequest::CommandResponse {
                            execution_id,
                            response: response.clone(),
                        },
                    );
                }
            }
        }
    }

    fn send(&mut self, thing: ThingName, request: DeviceRequest) {
        self.queue.push_back(LinkEvent::Request(
            Inbound {
                thing,
                client_token: None,
                request,
            },
            Receipt::NONE,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::ChannelLink;
    use crate::sim::{Outcome, Task};
    use fleetops_core::device::{ExecutionView, Operation};
    use fleetops_core::event::StatusDetails;
    use fleetops_core::link::DeviceLink;
    use fleetops_core::{Duration as Ttl, JobExecutionStatus, JobId, Timestamp};
    use std::time::{Duration, Instant};

    /// Succeeds after 50 ms; leaves command `quiet` unanswered.
    struct Slow;

    impl Behaviour for Slow {
        fn outcome(&self, _: &ThingName, task: Task<'_>) -> Outcome {
            match task {
                Task::Command(id) if id.as_str() == "quiet" => Outcome::Silent,
                _ => Outcome::Succeed,
            }
        }

        fn exec_time(&self, _: &ThingName, _: Task<'_>) -> Duration {
            Duration::from_millis(50)
        }
    }

    fn command(thing: &ThingName, id: &str) -> Outbound {
        Outbound::CommandRequest {
            thing: thing.clone(),
            execution_id: ExecutionId::parse(id).unwrap(),
            command_id: None,
            action: "blink".into(),
            params: serde_json::json!({}),
            timestamp: Timestamp::EPOCH,
            ttl: Ttl::from_secs(60),
        }
    }

    async fn requests(link: &ChannelLink) -> Vec<DeviceRequest> {
        let events = tokio::time::timeout(Duration::from_secs(5), link.recv(16))
            .await
            .expect("the devices answer")
            .unwrap();
        events
            .into_iter()
            .filter_map(|e| match e {
                LinkEvent::Request(inbound, _) => Some(inbound.request),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn devices_take_their_execution_time_and_keep_silent_commands_unanswered() {
        let (link, end) = ChannelLink::pair(16);
        let sim = simulate(end, Slow);
        let thing = ThingName::parse("d1").unwrap();
        let started = Instant::now();
        link.send(vec![command(&thing, "quiet"), command(&thing, "loud")])
            .await
            .unwrap();
        let answers = requests(&link).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            answers.as_slice(),
            [DeviceRequest::CommandResponse { execution_id, .. }] if execution_id.as_str() == "loud"
        ));
        let view = ExecutionView {
            job_id: JobId::parse("j").unwrap(),
            thing_name: thing.clone(),
            status: JobExecutionStatus::InProgress,
            status_details: StatusDetails::new(),
            queued_at: Timestamp::EPOCH,
            started_at: None,
            last_updated_at: Timestamp::EPOCH,
            version_number: 1,
            execution_number: 1,
            job_document: None,
        };
        link.send(vec![Outbound::Accepted {
            thing: thing.clone(),
            operation: Operation::StartNext,
            client_token: None,
            reply: Reply::StartNext(Some(view)),
            timestamp: Timestamp::EPOCH,
        }])
        .await
        .unwrap();
        assert!(matches!(
            requests(&link).await.as_slice(),
            [DeviceRequest::Update { request, .. }]
                if request.status == Some(JobExecutionStatus::Succeeded)
        ));
        let stats = sim.stats();
        assert_eq!(stats.commands_answered(), 1);
        assert_eq!(stats.commands_silent.load(Ordering::Relaxed), 1);
        assert_eq!(stats.jobs_done(), 1);
    }
}
