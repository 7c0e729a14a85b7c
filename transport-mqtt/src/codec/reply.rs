//! Service → device messages: encoded by the service, decoded by the device SDK.

use fleetops_core::device::{JobTarget, Operation, Outbound, Reply};
use fleetops_core::ids::{ExecutionId, JobId, ThingName};
use fleetops_core::status::CommandStatus;
use fleetops_core::time::{Duration, Timestamp};
use serde::de::DeserializeOwned;

use super::json::{
    aws_reason, summaries, AckIn, AckOut, CommandRequestIn, CommandRequestOut,
    CommandStatusChangeOut, ExecutionOut, ExecutionReplyIn, ExecutionReplyOut, JobsOut, NotifyIn,
    NotifyOut, PendingIn, PendingOut, RejectedIn, RejectedOut, StatusChangeOut, UpdateIn,
    UpdateOut,
};
use super::request::to_vec;
use super::topic::{RequestOp, TopicRef};
use super::{
    truncated, ttl_secs, Codec, CommandRequest, DecodeError, DeviceMessage, EncodeError, Encoded,
    PublishProps, Qos, WireError,
};

fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::GetPending => "get",
        Operation::StartNext => "start-next",
        Operation::Describe(_) => "describe",
        Operation::Update(_) => "update",
        Operation::CommandResponse(_) => "command response",
    }
}

fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Pending(_) => "pending",
        Reply::StartNext(_) => "start-next",
        Reply::Describe(_) => "describe",
        Reply::Update { .. } => "update",
        Reply::CommandResponse => "command response",
    }
}

impl Codec {
    /// Encodes a message owed to a device, or a status change for operators (on
    /// `{p}/events/jobExecution/{jobId}/{status}`). Every message is QoS 1 and not retained; a
    /// command request carries its TTL as MQTT 5 message expiry, a response topic and the
    /// execution id as correlation data.
    pub fn encode(&self, message: &Outbound) -> Result<Encoded, EncodeError> {
        let l = &self.layout;
        let mut properties = PublishProps::default();
        let (topic, payload) = match message {
            Outbound::Accepted {
                thing,
                operation,
                client_token,
                reply,
                timestamp,
            } => {
                let client_token = client_token.as_deref();
                let timestamp = timestamp.as_secs();
                let payload = match (operation, reply) {
                    (Operation::GetPending, Reply::Pending(jobs)) => to_vec(&PendingOut {
                        in_progress_jobs: summaries(&jobs.in_progress),
                        queued_jobs: summaries(&jobs.queued),
                        timestamp,
                        client_token,
                    }),
                    (Operation::StartNext, Reply::StartNext(execution)) => {
                        to_vec(&ExecutionReplyOut {
                            execution: execution.as_ref().map(ExecutionOut::from),
                            timestamp,
                            client_token,
                        })
                    }
                    (Operation::Describe(_), Reply::Describe(execution)) => {
                        to_vec(&ExecutionReplyOut {
                            execution: Some(ExecutionOut::from(execution)),
                            timestamp,
                            client_token,
                        })
                    }
                    (
                        Operation::Update(_),
                        Reply::Update {
                            execution_state,
                            job_document,
                        },
                    ) => to_vec(&UpdateOut {
                        execution_state: execution_state.as_ref(),
                        job_document: job_document.as_ref(),
                        timestamp,
                        client_token,
                    }),
                    (Operation::CommandResponse(_), Reply::CommandResponse) => to_vec(&AckOut {
                        timestamp,
                        client_token,
                    }),
                    (op, reply) => {
                        return Err(EncodeError::ReplyMismatch {
                            operation: operation_name(op),
                            reply: reply_name(reply),
                        })
                    }
                };
                (l.reply_topic(thing, operation, true), payload)
            }
            Outbound::Rejected {
                thing,
                operation,
                client_token,
                rejection,
                timestamp,
            } => (
                l.reply_topic(thing, operation, false),
                to_vec(&RejectedOut {
                    code: rejection.code().as_str(),
                    message: rejection.to_string(),
                    client_token: client_token.as_deref(),
                    timestamp: timestamp.as_secs(),
                    execution_state: rejection.execution_state(),
                }),
            ),
            Outbound::Notify {
                thing,
                jobs,
                timestamp,
            } => (
                l.notify_topic(thing),
                to_vec(&NotifyOut {
                    jobs: JobsOut {
                        in_progress: summaries(&jobs.in_progress),
                        queued: summaries(&jobs.queued),
                    },
                    timestamp: timestamp.as_secs(),
                }),
            ),
            Outbound::NotifyNext {
                thing,
                execution,
                timestamp,
            } => (
                l.notify_next_topic(thing),
                to_vec(&ExecutionReplyOut {
                    execution: execution.as_ref().map(ExecutionOut::from),
                    timestamp: timestamp.as_secs(),
                    client_token: None,
                }),
            ),
            Outbound::CommandRequest {
                thing,
                execution_id,
                command_id,
                action,
                params,
                timestamp,
                ttl,
            } => {
                let ttl = ttl_secs(*ttl);
                properties = PublishProps {
                    // An expiry of 0 is not "expired" in MQTT 5, so at least one second.
                    message_expiry_secs: Some(u32::try_from(ttl.max(1)).unwrap_or(u32::MAX)),
                    response_topic: Some(l.command_response_topic(thing, execution_id)),
                    correlation_data: Some(execution_id.as_str().as_bytes().to_vec()),
                };
                (
                    l.command_request_topic(thing, execution_id),
                    to_vec(&CommandRequestOut {
                        execution_id: l.aws_commands().then(|| execution_id.as_str()),
                        command_id: command_id.as_deref(),
                        action,
                        params,
                        timestamp: timestamp.as_secs(),
                        ttl,
                    }),
                )
            }
            Outbound::StatusChange {
                job_id,
                thing,
                status,
                execution_number,
                version_number,
                timestamp,
            } => (
                l.job_execution_event_topic(job_id, *status),
                to_vec(&StatusChangeOut {
                    job_id: job_id.as_str(),
                    thing_name: thing.as_str(),
                    status: *status,
                    execution_number: *execution_number,
                    version_number: *version_number,
                    timestamp: timestamp.as_secs(),
                }),
            ),
            Outbound::CommandStatusChange {
                execution_id,
                command_id,
                thing,
                status,
                status_reason,
                timestamp,
            } => {
                let status = aws_command_status(*status);
                (
                    l.command_execution_event_topic(command_id, status)
                        .map_err(|reason| EncodeError::InvalidField {
                            field: "commandId",
                            reason,
                        })?,
                    to_vec(&CommandStatusChangeOut {
                        execution_id: execution_id.as_str(),
                        command_id,
                        thing_name: thing.as_str(),
                        status,
                        status_reason: status_reason.as_deref().map(aws_reason),
                        event_type: "COMMAND_EXECUTION",
                        timestamp: timestamp.as_millis(),
                    }),
                )
            }
        };
        // Built from validated ids under a bounded prefix, so always short: the check keeps
        // the guarantee local rather than relying on every id bound.
        Codec::check_topic(&topic)?;
        Ok(Encoded {
            topic,
            payload: self.check_size(payload)?,
            qos: Qos::AtLeastOnce,
            properties,
        })
    }

    /// Decodes a message the service published to a device (device SDK side). Returns the
    /// addressee with the message.
    pub fn decode_device_message(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(ThingName, DeviceMessage), DecodeError> {
        let not_device_bound = || DecodeError::NotDeviceBound {
            topic: truncated(topic, 256),
        };
        let parsed = self.layout.parse(topic).ok_or_else(not_device_bound)?;
        if payload.len() > self.limits.max_payload {
            return Err(DecodeError::TooLarge {
                len: payload.len(),
                max: self.limits.max_payload,
            });
        }
        let thing = match parsed {
            TopicRef::Reply { thing, .. }
            | TopicRef::Notify { thing }
            | TopicRef::NotifyNext { thing }
            | TopicRef::CommandRequest { thing, .. } => ThingName::parse(thing)?,
            TopicRef::Request { .. } | TopicRef::Unknown { .. } => return Err(not_device_bound()),
        };
        let msg = match parsed {
            TopicRef::Reply { op, accepted, .. } => {
                let operation = Self::operation(op)?;
                if accepted {
                    Self::accepted(operation, payload)?
                } else {
                    let r: RejectedIn = json(payload)?;
                    DeviceMessage::Rejected {
                        operation,
                        client_token: r.client_token,
                        error: WireError {
                            code: r.code,
                            message: r.message,
                            execution_state: r.execution_state,
                        },
                        timestamp: Timestamp::from_secs(r.timestamp),
                    }
                }
            }
            TopicRef::Notify { .. } => {
                let n: NotifyIn = json(payload)?;
                let timestamp = Timestamp::from_secs(n.timestamp);
                DeviceMessage::Notify {
                    jobs: n.jobs(),
                    timestamp,
                }
            }
            TopicRef::NotifyNext { .. } => {
                let n: ExecutionReplyIn = json(payload)?;
                DeviceMessage::NotifyNext {
                    execution: n.execution.map(Into::into),
                    timestamp: Timestamp::from_secs(n.timestamp),
                }
            }
            TopicRef::CommandRequest { execution, .. } => {
                let execution_id = ExecutionId::parse(execution)?;
                let c: CommandRequestIn = json(payload)?;
                DeviceMessage::Command(CommandRequest {
                    execution_id,
                    command_id: c.command_id,
                    action: c.action,
                    params: c.params,
                    timestamp: Timestamp::from_secs(c.timestamp),
                    ttl: Duration::from_secs(c.ttl),
                })
            }
            TopicRef::Request { .. } | TopicRef::Unknown { .. } => return Err(not_device_bound()),
        };
        Ok((thing, msg))
    }

    fn operation(op: RequestOp<'_>) -> Result<Operation, DecodeError> {
        Ok(match op {
            RequestOp::GetPending => Operation::GetPending,
            RequestOp::StartNext => Operation::StartNext,
            RequestOp::Describe("$next") => Operation::Describe(JobTarget::Next),
            RequestOp::Describe(job) => Operation::Describe(JobTarget::Job(JobId::parse(job)?)),
            RequestOp::Update(job) => Operation::Update(JobId::parse(job)?),
            RequestOp::CommandResponse(id) => Operation::CommandResponse(ExecutionId::parse(id)?),
        })
    }

    fn accepted(operation: Operation, payload: &[u8]) -> Result<DeviceMessage, DecodeError> {
        let (client_token, reply, timestamp) = match &operation {
            Operation::GetPending => {
                let r: PendingIn = json(payload)?;
                let (token, ts) = (r.client_token.clone(), r.timestamp);
                (token, Reply::Pending(r.jobs()), ts)
            }
            Operation::StartNext => {
                let r: ExecutionReplyIn = json(payload)?;
                (
                    r.client_token,
                    Reply::StartNext(r.execution.map(Into::into)),
                    r.timestamp,
                )
            }
            Operation::Describe(_) => {
                let r: ExecutionReplyIn = json(payload)?;
                let execution = r
                    .execution
                    .ok_or_else(|| DecodeError::Json("describe reply without execution".into()))?;
                (
                    r.client_token,
                    Reply::Describe(execution.into()),
                    r.timestamp,
                )
            }
            Operation::Update(_) => {
                let r: UpdateIn = json(payload)?;
                (
                    r.client_token,
                    Reply::Update {
                        execution_state: r.execution_state,
                        job_document: r.job_document,
                    },
                    r.timestamp,
                )
            }
            Operation::CommandResponse(_) => {
                let r: AckIn = json(payload)?;
                (r.client_token, Reply::CommandResponse, r.timestamp)
            }
        };
        Ok(DeviceMessage::Accepted {
            operation,
            client_token,
            reply,
            timestamp: Timestamp::from_secs(timestamp),
        })
    }
}

fn json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))
}

/// A command status as AWS IoT Commands spells it: `SENT` is AWS's `CREATED`; `CANCELED`,
/// which AWS has no status for, keeps fleetops' name.
fn aws_command_status(status: CommandStatus) -> &'static str {
    match status {
        CommandStatus::Sent => "CREATED",
        other => other.as_str(),
    }
}
