//! The service's side of the conversation without a Fleet runtime: a scripted responder
//! reads `MqttLink::recv` and answers with `Outbound` values, the way the runtime will.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fleetops_core::device::{
    DeviceRequest, ExecutionSummary, ExecutionView, Inbound, JobTarget, Outbound, PendingJobs,
    Reply,
};
use fleetops_core::ids::{ExecutionId, JobId, StatusDetailKey, ThingName};
use fleetops_core::job_execution::ExecutionState;
use fleetops_core::link::{DeviceLink, LinkEvent};
use fleetops_core::rejection::Rejection;
use fleetops_core::status::JobExecutionStatus;
use fleetops_core::time::Timestamp;
use fleetops_transport_mqtt::MqttLink;
use serde_json::Value;
use tokio::task::JoinHandle;

/// Plays the service: a tiny in-memory job store answering like the runtime will. Special
/// job ids trigger the codes the codec can not produce itself.
pub struct Script {
    executions: Vec<Execution>,
    pub open_commands: Vec<ExecutionId>,
    tick: u64,
}

#[derive(Clone)]
struct Execution {
    thing: ThingName,
    job: JobId,
    status: JobExecutionStatus,
    details: BTreeMap<StatusDetailKey, String>,
    version: u64,
    queued_at: Timestamp,
    started_at: Option<Timestamp>,
    updated_at: Timestamp,
    document: Value,
}

impl Execution {
    fn summary(&self) -> ExecutionSummary {
        ExecutionSummary {
            job_id: self.job.clone(),
            queued_at: self.queued_at,
            started_at: self.started_at,
            last_updated_at: self.updated_at,
            version_number: self.version,
            execution_number: 1,
        }
    }

    fn view(&self, with_document: bool) -> ExecutionView {
        ExecutionView {
            job_id: self.job.clone(),
            thing_name: self.thing.clone(),
            status: self.status,
            status_details: self.details.clone(),
            queued_at: self.queued_at,
            started_at: self.started_at,
            last_updated_at: self.updated_at,
            version_number: self.version,
            execution_number: 1,
            job_document: with_document.then(|| self.document.clone()),
        }
    }

    fn state(&self) -> ExecutionState {
        ExecutionState {
            status: self.status,
            status_details: self.details.clone(),
            version_number: self.version,
        }
    }
}

impl Script {
    pub fn new() -> Self {
        Self {
            executions: vec![],
            open_commands: vec![],
            tick: 0,
        }
    }

    pub fn queue(&mut self, thing: &ThingName, job: &str, document: Value) {
        let at = self.now();
        self.executions.push(Execution {
            thing: thing.clone(),
            job: JobId::parse(job).unwrap(),
            status: JobExecutionStatus::Queued,
            details: BTreeMap::new(),
            version: 1,
            queued_at: at,
            started_at: None,
            updated_at: at,
            document,
        });
    }

    fn now(&mut self) -> Timestamp {
        self.tick += 1;
        Timestamp::from_secs(1_700_000_000 + self.tick)
    }

    pub fn pending(&self, thing: &ThingName) -> PendingJobs {
        let mine = |s: JobExecutionStatus| {
            self.executions
                .iter()
                .filter(|e| &e.thing == thing && e.status == s)
                .map(Execution::summary)
                .collect()
        };
        PendingJobs {
            in_progress: mine(JobExecutionStatus::InProgress),
            queued: mine(JobExecutionStatus::Queued),
        }
    }

    fn next_index(&self, thing: &ThingName) -> Option<usize> {
        let find = |s| {
            self.executions
                .iter()
                .position(|e| &e.thing == thing && e.status == s)
        };
        find(JobExecutionStatus::InProgress).or_else(|| find(JobExecutionStatus::Queued))
    }

    fn answer(&mut self, i: Inbound) -> Vec<Outbound> {
        let operation = i.request.operation();
        let timestamp = self.now();
        let thing = i.thing.clone();
        let client_token = i.client_token.clone();
        let reject = |rejection: Rejection| Outbound::Rejected {
            thing: thing.clone(),
            operation: operation.clone(),
            client_token: client_token.clone(),
            rejection,
            timestamp,
        };
        let accept = |reply: Reply| Outbound::Accepted {
            thing: thing.clone(),
            operation: operation.clone(),
            client_token: client_token.clone(),
            reply,
            timestamp,
        };
        let not_found = |id: &str| Rejection::ResourceNotFound {
            kind: "job execution",
            id: id.to_owned(),
        };
        match i.request {
            DeviceRequest::GetPending => vec![accept(Reply::Pending(self.pending(&thing)))],
            DeviceRequest::StartNext(r) => {
                let Some(n) = self.next_index(&thing) else {
                    return vec![accept(Reply::StartNext(None))];
                };
                let e = &mut self.executions[n];
                if e.status == JobExecutionStatus::Queued {
                    e.status = JobExecutionStatus::InProgress;
                    e.started_at = Some(timestamp);
                    e.updated_at = timestamp;
                    e.version += 1;
                    if let Some(d) = r.status_details {
                        e.details = d;
                    }
                }
                vec![accept(Reply::StartNext(Some(e.view(true))))]
            }
            DeviceRequest::Describe(d) => {
                let found = match &d.job {
                    JobTarget::Next => self.next_index(&thing),
                    JobTarget::Job(j) if j.as_str() == "boom" => {
                        return vec![reject(Rejection::InternalError {
                            detail: "store unavailable".into(),
                        })]
                    }
                    JobTarget::Job(j) if j.as_str() == "busy" => {
                        return vec![reject(Rejection::RequestThrottled)]
                    }
                    JobTarget::Job(j) => self
                        .executions
                        .iter()
                        .position(|e| e.thing == thing && &e.job == j),
                };
                match found {
                    Some(n) => vec![accept(Reply::Describe(
                        self.executions[n].view(d.include_job_document),
                    ))],
                    None => vec![reject(not_found("$next"))],
                }
            }
            DeviceRequest::Update { job_id, request } => {
                let Some(n) = self
                    .executions
                    .iter()
                    .position(|e| e.thing == thing && e.job == job_id)
                else {
                    return vec![reject(not_found(job_id.as_str()))];
                };
                let e = &mut self.executions[n];
                let state = Some(Box::new(e.state()));
                if e.status.is_terminal() {
                    return vec![reject(Rejection::TerminalStateReached {
                        status: e.status.as_str(),
                        execution_state: state,
                    })];
                }
                if let Some(expected) = request.expected_version {
                    if expected != e.version {
                        return vec![reject(Rejection::VersionMismatch {
                            expected,
                            actual: e.version,
                            execution_state: state,
                        })];
                    }
                }
                let Some(to) = request.status else {
                    return vec![reject(Rejection::invalid("status", "is required"))];
                };
                if to == JobExecutionStatus::Queued {
                    return vec![reject(Rejection::InvalidStateTransition {
                        from: e.status.as_str(),
                        to: to.as_str(),
                        execution_state: state,
                    })];
                }
                if e.started_at.is_none() {
                    e.started_at = Some(timestamp);
                }
                e.status = to;
                e.version += 1;
                e.updated_at = timestamp;
                if let Some(d) = request.status_details {
                    e.details = d;
                }
                let e = e.clone();
                let mut out = vec![accept(Reply::Update {
                    execution_state: request.include_job_execution_state.then(|| e.state()),
                    job_document: request.include_job_document.then(|| e.document.clone()),
                })];
                if to.is_terminal() {
                    out.push(Outbound::Notify {
                        thing: thing.clone(),
                        jobs: self.pending(&thing),
                        timestamp,
                    });
                    let next = self
                        .next_index(&thing)
                        .map(|n| self.executions[n].view(false));
                    out.push(Outbound::NotifyNext {
                        thing: thing.clone(),
                        execution: next,
                        timestamp,
                    });
                }
                out
            }
            DeviceRequest::CommandResponse { execution_id, .. } => {
                if let Some(n) = self.open_commands.iter().position(|c| c == &execution_id) {
                    self.open_commands.remove(n);
                    vec![accept(Reply::CommandResponse)]
                } else {
                    vec![reject(Rejection::TerminalStateReached {
                        status: "TIMED_OUT",
                        execution_state: None,
                    })]
                }
            }
        }
    }
}

/// Runs `script` against the link until the link closes; records every request.
pub fn respond(
    link: Arc<MqttLink>,
    script: Arc<Mutex<Script>>,
) -> (JoinHandle<()>, Arc<Mutex<Vec<Inbound>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        while let Ok(events) = link.recv(64).await {
            let mut out = Vec::new();
            let mut receipts = Vec::new();
            for e in events {
                if let LinkEvent::Request(i, r) = e {
                    log.lock().unwrap().push(i.clone());
                    out.extend(script.lock().unwrap().answer(i));
                    receipts.push(r);
                }
            }
            // Decided: the broker may forget the requests, as the runtime settles them.
            link.settle(receipts).await;
            // A reply lost to a broker restart is the device's to retry, as with the runtime.
            if let Err(e) = link.send(out).await {
                eprintln!("responder: reply not delivered: {e}");
            }
        }
    });
    (task, seen)
}
