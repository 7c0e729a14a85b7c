//! A simulated device's decisions, whatever carries its messages: the transports' adapters
//! tell a [`SimDevice`] what the device heard and carry out what it says, when it says.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetops_core::device::{
    CommandResponse, ExecutionView, PendingJobs, StepTimeout, UpdateRequest,
};
use fleetops_core::event::StatusDetails;
use fleetops_core::ids::StatusDetailKey;
use fleetops_core::{CommandStatus, ExecutionId, JobExecutionStatus, JobId, ThingName};

use super::behaviour::{Behaviour, Outcome, Task};

/// How many reported attempts a device remembers. A device works on one execution at a
/// time, so a few cover any notification that arrives late.
const REMEMBERED: usize = 8;

/// The step timeout a [`Outcome::Silent`] device sets: the smallest the protocol allows.
const SILENT_STEP_TIMEOUT: StepTimeout = StepTimeout::Minutes(1);

/// What the simulated devices did, counted as they go.
#[derive(Debug, Default)]
pub struct Stats {
    /// `start-next` requests sent.
    pub start_next: AtomicU64,
    /// Commands answered `SUCCEEDED`.
    pub commands_succeeded: AtomicU64,
    /// Commands answered `FAILED`.
    pub commands_failed: AtomicU64,
    /// Commands answered `REJECTED`.
    pub commands_rejected: AtomicU64,
    /// Commands left unanswered on purpose.
    pub commands_silent: AtomicU64,
    /// Job attempts reported `SUCCEEDED`.
    pub jobs_succeeded: AtomicU64,
    /// Job attempts reported `FAILED`.
    pub jobs_failed: AtomicU64,
    /// Job attempts reported `REJECTED`.
    pub jobs_rejected: AtomicU64,
    /// Job attempts left `IN_PROGRESS` with a step timeout on purpose.
    pub jobs_stalled: AtomicU64,
    /// Requests the fleet refused, or that failed on the way (timeouts, lost connections).
    pub errors: AtomicU64,
}

impl Stats {
    /// Commands answered, whatever the status.
    pub fn commands_answered(&self) -> u64 {
        self.commands_succeeded.load(Ordering::Relaxed)
            + self.commands_failed.load(Ordering::Relaxed)
            + self.commands_rejected.load(Ordering::Relaxed)
    }

    /// Job attempts finished by the device (terminal status reported).
    pub fn jobs_done(&self) -> u64 {
        self.jobs_succeeded.load(Ordering::Relaxed)
            + self.jobs_failed.load(Ordering::Relaxed)
            + self.jobs_rejected.load(Ordering::Relaxed)
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A behaviour and the counters of the devices that follow it: the one place that decides
/// what a simulated device says, for every transport.
#[derive(Clone)]
pub struct Simulator {
    behaviour: Arc<dyn Behaviour>,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What a device does about its jobs after hearing from the fleet.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing.
    Wait,
    /// Send `start-next`, and hand its answer to [`SimDevice::on_started`].
    StartNext,
    /// Report on the execution, which is in progress already.
    Report(Report),
}

/// A job update a device sends: after its execution time, then [`Simulator::reported`] (or
/// [`SimDevice::unreported`] if it fails).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    after: Duration,
    job_id: JobId,
    request: UpdateRequest,
    outcome: Outcome,
}

impl Report {
    /// How long the device works before sending it.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// The job.
    pub fn job_id(&self) -> &JobId {
        &self.job_id
    }

    /// The update.
    pub fn request(&self) -> &UpdateRequest {
        &self.request
    }
}

/// A device's answer to a command request: after its execution time, then
/// [`Simulator::answered`].
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    after: Duration,
    response: Option<CommandResponse>,
    outcome: Outcome,
}

impl Answer {
    /// How long the device works before answering.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// The answer; `None` when the device never answers.
    pub fn response(&self) -> Option<&CommandResponse> {
        self.response.as_ref()
    }
}

impl Simulator {
    /// Devices that do what `behaviour` says.
    pub fn new(behaviour: impl Behaviour) -> Self {
        Self {
            behaviour: Arc::new(behaviour),
            stats: Arc::default(),
        }
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The device `thing`, remembering nothing yet.
    pub fn device(&self, thing: ThingName) -> SimDevice {
        SimDevice {
            sim: self.clone(),
            thing,
            reported: VecDeque::new(),
        }
    }

    /// What `thing` answers to a command request; commands need no memory, so a command
    /// handler can answer without its device.
    pub fn answer(&self, thing: &ThingName, execution_id: &ExecutionId, action: &str) -> Answer {
        let task = Task::Command(execution_id);
        let outcome = self.behaviour.outcome(thing, task);
        let status = match outcome {
            Outcome::Succeed => Some(CommandStatus::Succeeded),
            Outcome::Fail => Some(CommandStatus::Failed),
            Outcome::Reject => Some(CommandStatus::Rejected),
            Outcome::Silent | Outcome::Ignore => None,
        };
        Answer {
            after: self.behaviour.exec_time(thing, task),
            response: status.map(|status| CommandResponse {
                status,
                // A map of typed values, which the `$aws` layout's AWS IoT Commands dialect
                // requires and every other layout accepts.
                result: (status == CommandStatus::Succeeded)
                    .then(|| serde_json::json!({ "action": { "s": action } })),
                status_reason: (status != CommandStatus::Succeeded)
                    .then(|| format!("simulated {}", status.as_str())),
            }),
            outcome,
        }
    }

    /// Counts `report` as sent (and, where the transport tells, taken by the fleet).
    pub fn reported(&self, report: &Report) {
        bump(match report.outcome {
            Outcome::Succeed => &self.stats.jobs_succeeded,
            Outcome::Fail => &self.stats.jobs_failed,
            Outcome::Reject => &self.stats.jobs_rejected,
            Outcome::Silent | Outcome::Ignore => &self.stats.jobs_stalled,
        });
    }

    /// Counts `answer` as given (or, for no answer, as left unanswered).
    pub fn answered(&self, answer: &Answer) {
        bump(match answer.outcome {
            Outcome::Succeed => &self.stats.commands_succeeded,
            Outcome::Fail => &self.stats.commands_failed,
            Outcome::Reject => &self.stats.commands_rejected,
            Outcome::Silent | Outcome::Ignore => &self.stats.commands_silent,
        });
    }
}

/// One simulated device: what it does about its jobs, and the attempts it reported on
/// lately, so a late or repeated notification does not make it report again (a silent
/// device reporting progress again would restart the step timer meant to end it).
#[derive(Debug)]
pub struct SimDevice {
    sim: Simulator,
    thing: ThingName,
    reported: VecDeque<(JobId, u32)>,
}

impl SimDevice {
    /// Its thing name.
    pub fn thing(&self) -> &ThingName {
        &self.thing
    }

    /// On `notify-next`: start a queued execution; report on one in progress (a device that
    /// already started it, e.g. before a restart of the fleet, finishes it).
    pub fn on_next(&mut self, execution: Option<&ExecutionView>) -> Next {
        match execution {
            None => Next::Wait,
            Some(v) if self.remembers(v) => Next::Wait,
            Some(v) if v.status == JobExecutionStatus::InProgress => {
                self.report(v).map_or(Next::Wait, Next::Report)
            }
            Some(_) => self.start_next(),
        }
    }

    /// On the pending list the device pulled (after a connect): start the next execution if
    /// there is any. `jobs/notify` needs no answer: `notify-next` says the same about the
    /// next execution, which is all a device works on.
    pub fn on_pending(&self, jobs: &PendingJobs) -> Next {
        if jobs.in_progress.is_empty() && jobs.queued.is_empty() {
            Next::Wait
        } else {
            self.start_next()
        }
    }

    /// On the answer to `start-next`: what to report on the execution started, if anything.
    pub fn on_started(&mut self, execution: Option<&ExecutionView>) -> Option<Report> {
        execution.and_then(|v| self.report(v))
    }

    /// `report` was refused or lost: counted as an error, and forgotten, so the next
    /// notification about the attempt tries again.
    pub fn unreported(&mut self, report: &Report) {
        bump(&self.sim.stats.errors);
        let attempt = report.request.execution_number;
        self.reported
            .retain(|(job, n)| !(job == &report.job_id && Some(*n) == attempt));
    }

    fn start_next(&self) -> Next {
        bump(&self.sim.stats.start_next);
        Next::StartNext
    }

    fn remembers(&self, v: &ExecutionView) -> bool {
        self.reported
            .iter()
            .any(|(job, n)| job == &v.job_id && *n == v.execution_number)
    }

    /// Decides the report on `v`, and remembers it: at most one report per attempt.
    fn report(&mut self, v: &ExecutionView) -> Option<Report> {
        if self.remembers(v) {
            return None;
        }
        let task = Task::Job {
            job: &v.job_id,
            attempt: v.execution_number,
        };
        let behaviour = &self.sim.behaviour;
        let outcome = behaviour.outcome(&self.thing, task);
        let (status, step_timeout) = match outcome {
            Outcome::Succeed => (JobExecutionStatus::Succeeded, StepTimeout::Keep),
            Outcome::Fail => (JobExecutionStatus::Failed, StepTimeout::Keep),
            Outcome::Reject => (JobExecutionStatus::Rejected, StepTimeout::Keep),
            Outcome::Silent => (JobExecutionStatus::InProgress, SILENT_STEP_TIMEOUT),
            Outcome::Ignore => return None,
        };
        let mut details = StatusDetails::new();
        if outcome == Outcome::Silent {
            if let Ok(key) = StatusDetailKey::parse("step") {
                details.insert(key, "downloading".into());
            }
        }
        if self.reported.len() == REMEMBERED {
            self.reported.pop_front();
        }
        self.reported
            .push_back((v.job_id.clone(), v.execution_number));
        Some(Report {
            after: behaviour.exec_time(&self.thing, task),
            job_id: v.job_id.clone(),
            request: UpdateRequest {
                status: Some(status),
                status_details: (!details.is_empty()).then_some(details),
                execution_number: Some(v.execution_number),
                step_timeout,
                ..UpdateRequest::default()
            },
            outcome,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::from_fn;
    use fleetops_core::Timestamp;

    fn view(job: &str, attempt: u32, status: JobExecutionStatus) -> ExecutionView {
        ExecutionView {
            job_id: JobId::parse(job).unwrap(),
            thing_name: ThingName::parse("d1").unwrap(),
            status,
            status_details: StatusDetails::new(),
            queued_at: Timestamp::EPOCH,
            started_at: None,
            last_updated_at: Timestamp::EPOCH,
            version_number: 1,
            execution_number: attempt,
            job_document: None,
        }
    }

    /// Silent on `j-silent`, ignores `j-ignore`, fails other first attempts; leaves commands
    /// `s…` unanswered and rejects the others.
    fn sim() -> Simulator {
        Simulator::new(from_fn(|_, task| match task {
            Task::Job { job, .. } if job.as_str() == "j-silent" => Outcome::Silent,
            Task::Job { job, .. } if job.as_str() == "j-ignore" => Outcome::Ignore,
            Task::Job { attempt: 1, .. } => Outcome::Fail,
            Task::Job { .. } => Outcome::Succeed,
            Task::Command(id) if id.as_str().starts_with('s') => Outcome::Silent,
            Task::Command(_) => Outcome::Reject,
        }))
    }

    #[test]
    fn a_device_starts_what_is_queued_and_reports_once_per_attempt() {
        let sim = sim();
        let mut d = sim.device(ThingName::parse("d1").unwrap());
        let queued = view("j", 1, JobExecutionStatus::Queued);
        assert_eq!(d.on_next(Some(&queued)), Next::StartNext);
        assert_eq!(d.on_next(None), Next::Wait);
        let started = view("j", 1, JobExecutionStatus::InProgress);
        let report = d.on_started(Some(&started)).unwrap();
        assert_eq!(report.request().status, Some(JobExecutionStatus::Failed));
        assert_eq!(report.request().execution_number, Some(1));
        // A late notification about the same attempt changes nothing.
        assert_eq!(d.on_next(Some(&started)), Next::Wait);
        assert_eq!(d.on_started(Some(&started)), None);
        // Unless the report never made it: then the device tries again.
        d.unreported(&report);
        assert!(matches!(d.on_next(Some(&started)), Next::Report(_)));
        // The retry is a new attempt.
        let retry = view("j", 2, JobExecutionStatus::InProgress);
        let Next::Report(report) = d.on_next(Some(&retry)) else {
            panic!("no report on the retry");
        };
        assert_eq!(report.request().status, Some(JobExecutionStatus::Succeeded));
        sim.reported(&report);
        let stats = sim.stats();
        assert_eq!(stats.start_next.load(Ordering::Relaxed), 1);
        assert_eq!(stats.jobs_done(), 1);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn silent_devices_report_progress_with_a_step_timeout_and_ignoring_ones_say_nothing() {
        let sim = sim();
        let mut d = sim.device(ThingName::parse("d1").unwrap());
        let silent = view("j-silent", 1, JobExecutionStatus::InProgress);
        let report = d.on_started(Some(&silent)).unwrap();
        let request = report.request();
        assert_eq!(request.status, Some(JobExecutionStatus::InProgress));
        assert_eq!(request.step_timeout, StepTimeout::Minutes(1));
        assert!(request.status_details.is_some());
        // Reporting progress again would restart the step timer meant to end it.
        assert_eq!(d.on_next(Some(&silent)), Next::Wait);
        let ignored = view("j-ignore", 1, JobExecutionStatus::InProgress);
        assert_eq!(d.on_started(Some(&ignored)), None);
        assert_eq!(d.on_next(Some(&ignored)), Next::Wait);
        let pending = PendingJobs {
            in_progress: vec![],
            queued: vec![],
        };
        assert_eq!(d.on_pending(&pending), Next::Wait);
    }

    #[test]
    fn commands_are_answered_or_left_alone_as_the_behaviour_says() {
        let sim = sim();
        let thing = ThingName::parse("d1").unwrap();
        let answer = sim.answer(&thing, &ExecutionId::parse("r1").unwrap(), "reboot");
        let response = answer.response().unwrap();
        assert_eq!(response.status, CommandStatus::Rejected);
        assert_eq!(
            response.status_reason.as_deref(),
            Some("simulated REJECTED")
        );
        sim.answered(&answer);
        let silent = sim.answer(&thing, &ExecutionId::parse("s1").unwrap(), "reboot");
        assert_eq!(silent.response(), None);
        sim.answered(&silent);
        let stats = sim.stats();
        assert_eq!(stats.commands_answered(), 1);
        assert_eq!(stats.commands_silent.load(Ordering::Relaxed), 1);
    }
}
