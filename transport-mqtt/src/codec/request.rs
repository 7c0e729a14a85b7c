//! Device requests: decoded by the service field by field, encoded by the device SDK.

use fleetops_core::device::{
    CommandResponse, DescribeRequest, DeviceRequest, Inbound, JobTarget, StartNextRequest,
    StepTimeout, UpdateRequest,
};
use fleetops_core::event::StatusDetails;
use fleetops_core::ids::{ExecutionId, JobId, StatusDetailKey, ThingName};
use fleetops_core::rejection::Rejection;
use fleetops_core::status::{CommandStatus, JobExecutionStatus};
use fleetops_core::time::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value};

use super::json::{aws_reason, AwsReasonOut, RejectedOut, MAX_REASON_CODE};
use super::topic::{RequestOp, TopicRef};
use super::{truncated, Codec, Decoded, EncodeError, Encoded, PublishProps, Qos, Refusal};

/// How much of an untrusted topic a refusal message repeats.
const MAX_ECHOED_TOPIC: usize = 256;

/// The JSON object of a request, with typed, null-tolerant accessors that refuse with
/// `InvalidRequest` naming the field.
struct Fields(Map<String, Value>);

impl Fields {
    /// The field, with JSON `null` read as absent (SDKs often serialize unset fields as null).
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn bool(&self, key: &'static str) -> Result<Option<bool>, Rejection> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Rejection::invalid(key, "must be a boolean"))
            })
            .transpose()
    }

    fn u64(&self, key: &'static str) -> Result<Option<u64>, Rejection> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| Rejection::invalid(key, "must be a non-negative integer"))
            })
            .transpose()
    }

    fn u32(&self, key: &'static str) -> Result<Option<u32>, Rejection> {
        self.u64(key)?
            .map(|n| {
                u32::try_from(n)
                    .map_err(|_| Rejection::invalid(key, format!("must be at most {}", u32::MAX)))
            })
            .transpose()
    }

    fn string(&self, key: &'static str) -> Result<Option<&str>, Rejection> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Rejection::invalid(key, "must be a string"))
            })
            .transpose()
    }

    /// `stepTimeoutInMinutes`: absent keeps the timer, `-1` clears it, `n ≥ 0` sets it. The
    /// allowed range of `n` is a business rule, checked by core.
    fn step_timeout(&self) -> Result<StepTimeout, Rejection> {
        const KEY: &str = "stepTimeoutInMinutes";
        let Some(v) = self.get(KEY) else {
            return Ok(StepTimeout::Keep);
        };
        match (v.as_i64(), v.as_u64()) {
            (Some(-1), _) => Ok(StepTimeout::Clear),
            (_, Some(n)) => Ok(StepTimeout::Minutes(n)),
            _ => Err(Rejection::invalid(
                KEY,
                "must be a whole number of minutes, or -1 to clear",
            )),
        }
    }

    /// `statusDetails`: an object of string values under valid keys.
    fn status_details(&self) -> Result<Option<StatusDetails>, Rejection> {
        const KEY: &str = "statusDetails";
        let Some(v) = self.get(KEY) else {
            return Ok(None);
        };
        let obj = v
            .as_object()
            .ok_or_else(|| Rejection::invalid(KEY, "must be an object of strings"))?;
        obj.iter()
            .map(|(k, v)| {
                let key = StatusDetailKey::parse(k)
                    .map_err(|e| Rejection::invalid(KEY, format!("key: {e}")))?;
                let value = v.as_str().ok_or_else(|| {
                    Rejection::invalid(KEY, format!("value of {key} must be a string"))
                })?;
                Ok((key, value.to_owned()))
            })
            .collect::<Result<StatusDetails, Rejection>>()
            .map(Some)
    }

    fn job_status(&self) -> Result<Option<JobExecutionStatus>, Rejection> {
        self.string("status")?
            .map(|s| {
                JobExecutionStatus::parse(s).ok_or_else(|| {
                    Rejection::invalid("status", format!("{s:?} is not a job execution status"))
                })
            })
            .transpose()
    }

    /// The `status` of a command response: only the three a device may answer.
    fn command_status(&self) -> Result<CommandStatus, Rejection> {
        match self.string("status")? {
            Some("SUCCEEDED") => Ok(CommandStatus::Succeeded),
            Some("FAILED") => Ok(CommandStatus::Failed),
            Some("REJECTED") => Ok(CommandStatus::Rejected),
            Some(other) => Err(Rejection::invalid(
                "status",
                format!("{other:?} is not SUCCEEDED, FAILED or REJECTED"),
            )),
            None => Err(Rejection::invalid("status", "is required")),
        }
    }
}

/// The longest AWS `reasonDescription`, in bytes.
const MAX_REASON_DESCRIPTION: usize = 1024;

impl Fields {
    /// An AWS IoT Commands response: `status`, optional `executionId` (must match the topic),
    /// `statusReason` `{reasonCode, reasonDescription?}` folded into the reason text
    /// `CODE: description`, and `result` a map of typed values kept as JSON.
    fn aws_command_response(&self, topic_id: &str) -> Result<CommandResponse, Rejection> {
        let status =
            match self.string("status")? {
                Some("SUCCEEDED") => CommandStatus::Succeeded,
                Some("FAILED") => CommandStatus::Failed,
                Some("REJECTED") => CommandStatus::Rejected,
                // fleetops command executions have no intermediate status and the service alone
                // decides timeouts: both are refused rather than silently reinterpreted.
                Some("IN_PROGRESS") => return Err(Rejection::invalid(
                    "status",
                    "IN_PROGRESS is not supported: answer once with SUCCEEDED, FAILED or REJECTED",
                )),
                Some("TIMED_OUT") => {
                    return Err(Rejection::invalid(
                        "status",
                        "TIMED_OUT is decided by the service: answer FAILED with a reasonCode",
                    ))
                }
                Some(other) => {
                    return Err(Rejection::invalid(
                        "status",
                        format!("{other:?} is not SUCCEEDED, FAILED or REJECTED"),
                    ))
                }
                None => return Err(Rejection::invalid("status", "is required")),
            };
        if let Some(id) = self.string("executionId")? {
            if id != topic_id {
                return Err(Rejection::invalid(
                    "executionId",
                    "does not match the execution id in the topic",
                ));
            }
        }
        Ok(CommandResponse {
            status,
            result: self.aws_result()?,
            status_reason: self.aws_status_reason()?,
        })
    }

    fn aws_status_reason(&self) -> Result<Option<String>, Rejection> {
        const KEY: &str = "statusReason";
        let Some(v) = self.get(KEY) else {
            return Ok(None);
        };
        let obj = v.as_object().ok_or_else(|| {
            Rejection::invalid(KEY, "must be an object {reasonCode, reasonDescription?}")
        })?;
        let code = obj
            .get("reasonCode")
            .and_then(Value::as_str)
            .ok_or_else(|| Rejection::invalid("statusReason.reasonCode", "is a required string"))?;
        let valid = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if code.is_empty() || code.len() > MAX_REASON_CODE || !code.chars().all(valid) {
            return Err(Rejection::invalid(
                "statusReason.reasonCode",
                format!("must be 1 to {MAX_REASON_CODE} characters of [A-Z0-9_-]"),
            ));
        }
        let description = match obj.get("reasonDescription").filter(|d| !d.is_null()) {
            None => "",
            Some(d) => d.as_str().ok_or_else(|| {
                Rejection::invalid("statusReason.reasonDescription", "must be a string")
            })?,
        };
        if description.len() > MAX_REASON_DESCRIPTION || description.chars().any(char::is_control) {
            return Err(Rejection::invalid(
                "statusReason.reasonDescription",
                format!(
                    "must be at most {MAX_REASON_DESCRIPTION} bytes without control characters"
                ),
            ));
        }
        Ok(Some(if description.is_empty() {
            code.to_owned()
        } else {
            format!("{code}: {description}")
        }))
    }

    /// `result`: `{name: {"s": string} | {"b": bool} | {"bin": base64 string}}`. Binary
    /// values are kept as the device sent them, not decoded.
    fn aws_result(&self) -> Result<Option<Value>, Rejection> {
        const KEY: &str = "result";
        let Some(v) = self.get(KEY) else {
            return Ok(None);
        };
        let obj = v
            .as_object()
            .ok_or_else(|| Rejection::invalid(KEY, "must be an object of typed values"))?;
        for (name, value) in obj {
            let typed = value.as_object().filter(|o| o.len() == 1);
            let ok = typed.is_some_and(|o| match o.iter().next() {
                Some((k, v)) => match k.as_str() {
                    "s" | "bin" => v.is_string(),
                    "b" => v.is_boolean(),
                    _ => false,
                },
                None => false,
            });
            if !ok {
                return Err(Rejection::invalid(
                    KEY,
                    format!(
                        "value of {:?} must be one of {{\"s\": string}}, {{\"b\": boolean}}, {{\"bin\": string}}",
                        truncated(name, 64)
                    ),
                ));
            }
        }
        Ok(Some(v.clone()))
    }
}

/// Parses a payload into a JSON object; an empty payload counts as `{}`.
fn parse_object(payload: &[u8]) -> Result<Fields, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        // Several device SDKs publish `get` and `start-next` with no body at all.
        return Ok(Fields(Map::new()));
    }
    // serde_json rejects invalid UTF-8 and bounds nesting depth (128), so hostile input can
    // neither panic nor exhaust the stack.
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(Fields(map)),
        Ok(_) => Err(Rejection::InvalidJson {
            detail: "the payload must be a JSON object".into(),
        }),
        Err(e) => Err(Rejection::InvalidJson {
            detail: e.to_string(),
        }),
    }
}

impl Codec {
    /// Decodes a publish received by the service. Never fails and never panics: the outcome
    /// is a request, a refusal with its ready `rejected` reply (timestamped `now`), or
    /// [`Decoded::Ignored`].
    ///
    /// A topic too long to answer (see [`Codec::answerable`]) is ignored, whatever it holds.
    pub fn decode_request(&self, topic: &str, payload: &[u8], now: Timestamp) -> Decoded {
        if !Self::answerable(topic) {
            return Decoded::Ignored;
        }
        let Some(parsed) = self.layout.parse(topic) else {
            return Decoded::Ignored;
        };
        let (thing, op) = match parsed {
            TopicRef::Request { thing, op } => (thing, Some(op)),
            TopicRef::Unknown {
                thing,
                reply_like: false,
            } => (thing, None),
            // Replies, notifications and command requests flow the other way; a topic that
            // looks like a reply is never answered, so no two parties can loop on refusals.
            TopicRef::Unknown {
                reply_like: true, ..
            }
            | TopicRef::Reply { .. }
            | TopicRef::Notify { .. }
            | TopicRef::NotifyNext { .. }
            | TopicRef::CommandRequest { .. } => return Decoded::Ignored,
        };
        let thing_name = ThingName::parse(thing).ok();
        let refuse = |rejection: Rejection, client_token: Option<String>| {
            Decoded::Refused(self.refusal(topic, thing_name.clone(), client_token, rejection, now))
        };

        if payload.len() > self.limits.max_payload {
            return refuse(
                Rejection::invalid(
                    "payload",
                    format!(
                        "is {} bytes, at most {} are allowed",
                        payload.len(),
                        self.limits.max_payload
                    ),
                ),
                None,
            );
        }
        let fields = parse_object(payload);
        // The token is read before anything else is judged, so every later refusal echoes it.
        let token = match &fields {
            Ok(f) => self.client_token(f),
            Err(_) => Ok(None),
        };
        let echo = token.clone().ok().flatten();

        let Some(op) = op else {
            return refuse(
                Rejection::InvalidTopic {
                    topic: truncated(topic, MAX_ECHOED_TOPIC),
                },
                echo,
            );
        };
        let Some(thing_name) = thing_name.clone() else {
            return refuse(
                Rejection::InvalidTopic {
                    topic: truncated(topic, MAX_ECHOED_TOPIC),
                },
                echo,
            );
        };
        let fields = match fields {
            Ok(f) => f,
            Err(rejection) => return refuse(rejection, None),
        };
        let client_token = match token {
            Ok(t) => t,
            Err(rejection) => return refuse(rejection, None),
        };
        match Self::request(op, &fields, self.layout.aws_commands()) {
            Ok(request) => Decoded::Request(Inbound {
                thing: thing_name,
                client_token,
                request,
            }),
            Err(rejection) => refuse(rejection, client_token),
        }
    }

    fn client_token(&self, fields: &Fields) -> Result<Option<String>, Rejection> {
        let Some(token) = fields.string("clientToken")? else {
            return Ok(None);
        };
        if token.len() > self.limits.max_client_token {
            return Err(Rejection::invalid(
                "clientToken",
                format!("is longer than {} bytes", self.limits.max_client_token),
            ));
        }
        Ok(Some(token.to_owned()))
    }

    fn request(op: RequestOp<'_>, f: &Fields, aws: bool) -> Result<DeviceRequest, Rejection> {
        Ok(match op {
            RequestOp::GetPending => DeviceRequest::GetPending,
            RequestOp::StartNext => DeviceRequest::StartNext(StartNextRequest {
                status_details: f.status_details()?,
                step_timeout: f.step_timeout()?,
            }),
            RequestOp::Describe(job) => DeviceRequest::Describe(DescribeRequest {
                job: if job == "$next" {
                    JobTarget::Next
                } else {
                    JobTarget::Job(
                        JobId::parse(job)
                            .map_err(|e| Rejection::invalid("jobId", e.to_string()))?,
                    )
                },
                execution_number: f.u32("executionNumber")?,
                include_job_document: f.bool("includeJobDocument")?.unwrap_or(true),
            }),
            RequestOp::Update(job) => DeviceRequest::Update {
                job_id: JobId::parse(job)
                    .map_err(|e| Rejection::invalid("jobId", e.to_string()))?,
                request: UpdateRequest {
                    status: f.job_status()?,
                    status_details: f.status_details()?,
                    expected_version: f.u64("expectedVersion")?,
                    execution_number: f.u32("executionNumber")?,
                    step_timeout: f.step_timeout()?,
                    include_job_execution_state: f
                        .bool("includeJobExecutionState")?
                        .unwrap_or(false),
                    include_job_document: f.bool("includeJobDocument")?.unwrap_or(false),
                },
            },
            RequestOp::CommandResponse(id) => DeviceRequest::CommandResponse {
                execution_id: ExecutionId::parse(id)
                    .map_err(|e| Rejection::invalid("executionId", e.to_string()))?,
                response: if aws {
                    f.aws_command_response(id)?
                } else {
                    CommandResponse {
                        status: f.command_status()?,
                        // `result` is arbitrary JSON, so a present `null` is kept as a value.
                        result: f.0.get("result").cloned(),
                        status_reason: f.string("statusReason")?.map(str::to_owned),
                    }
                },
            },
        })
    }

    fn refusal(
        &self,
        topic: &str,
        thing: Option<ThingName>,
        client_token: Option<String>,
        rejection: Rejection,
        now: Timestamp,
    ) -> Refusal {
        let body = RejectedOut {
            code: rejection.code().as_str(),
            message: rejection.to_string(),
            client_token: client_token.as_deref(),
            timestamp: now.as_secs(),
            execution_state: None,
        };
        // Serializing plain structs of strings and numbers can not fail.
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        Refusal {
            thing,
            client_token,
            rejection,
            reply: Encoded {
                topic: self.layout.outcome_topic(topic, false),
                payload,
                qos: Qos::AtLeastOnce,
                properties: PublishProps::default(),
            },
        }
    }

    /// Encodes a device request (device SDK side), with `client_token` echoed in the reply.
    pub fn encode_request(
        &self,
        thing: &ThingName,
        client_token: Option<&str>,
        request: &DeviceRequest,
    ) -> Result<Encoded, EncodeError> {
        if let Some(t) = client_token {
            if t.len() > self.limits.max_client_token {
                return Err(EncodeError::InvalidField {
                    field: "clientToken",
                    reason: format!("is longer than {} bytes", self.limits.max_client_token),
                });
            }
        }
        let payload = match request {
            DeviceRequest::GetPending => to_vec(&GetOut { client_token }),
            DeviceRequest::StartNext(r) => to_vec(&StartNextOut {
                status_details: r.status_details.as_ref(),
                step_timeout_in_minutes: step_value(r.step_timeout),
                client_token,
            }),
            DeviceRequest::Describe(r) => to_vec(&DescribeOut {
                execution_number: r.execution_number,
                include_job_document: r.include_job_document,
                client_token,
            }),
            DeviceRequest::Update { request: r, .. } => to_vec(&UpdateOut {
                status: r.status,
                status_details: r.status_details.as_ref(),
                expected_version: r.expected_version,
                execution_number: r.execution_number,
                step_timeout_in_minutes: step_value(r.step_timeout),
                include_job_execution_state: r.include_job_execution_state,
                include_job_document: r.include_job_document,
                client_token,
            }),
            DeviceRequest::CommandResponse {
                execution_id,
                response: r,
            } => {
                if !matches!(
                    r.status,
                    CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Rejected
                ) {
                    return Err(EncodeError::InvalidField {
                        field: "status",
                        reason: format!(
                            "a device answers SUCCEEDED, FAILED or REJECTED, not {}",
                            r.status.as_str()
                        ),
                    });
                }
                if self.layout.aws_commands() {
                    to_vec(&AwsCommandResponseOut {
                        status: r.status,
                        execution_id: execution_id.as_str(),
                        status_reason: r.status_reason.as_deref().map(aws_reason),
                        result: r.result.as_ref(),
                        client_token,
                    })
                } else {
                    to_vec(&CommandResponseOut {
                        status: r.status,
                        result: r.result.as_ref(),
                        status_reason: r.status_reason.as_deref(),
                        client_token,
                    })
                }
            }
        };
        Ok(Encoded {
            topic: self.layout.request_topic(thing, &request.operation()),
            payload: self.check_size(payload)?,
            qos: Qos::AtLeastOnce,
            properties: PublishProps::default(),
        })
    }
}

pub(crate) fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Every wire struct is plain data with string map keys; serialization can not fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn step_value(step: StepTimeout) -> Option<Value> {
    match step {
        StepTimeout::Keep => None,
        StepTimeout::Clear => Some(Value::from(-1)),
        StepTimeout::Minutes(n) => Some(Value::from(n)),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GetOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StartNextOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    status_details: Option<&'a StatusDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_timeout_in_minutes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescribeOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_number: Option<u32>,
    include_job_document: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<JobExecutionStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_details: Option<&'a StatusDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step_timeout_in_minutes: Option<Value>,
    #[serde(skip_serializing_if = "is_false")]
    include_job_execution_state: bool,
    #[serde(skip_serializing_if = "is_false")]
    include_job_document: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CommandResponseOut<'a> {
    status: CommandStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}

/// A command response in the AWS IoT Commands shape.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AwsCommandResponseOut<'a> {
    status: CommandStatus,
    execution_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<AwsReasonOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_token: Option<&'a str>,
}
