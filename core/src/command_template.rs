//! Registered commands (command templates): an action, a payload template and the parameters
//! a request fills it with, as AWS IoT's reusable Commands and EMQX Fleets' thing-type actions
//! declare them.
//!
//! Registering checks the template once ([`crate::template::validate`]); sending a command by
//! its id renders the payload from the request's parameters ([`CommandTemplate::render`]).
//! Ad-hoc commands, with an action and params of their own, stay allowed.

use serde_json::{Map, Value};

use crate::aggregate::{foreign, not_found, Aggregate};
use crate::event::{Event, EvolveError};
use crate::ids::CommandId;
use crate::limits::{MAX_COMMAND_ACTION_LEN, MAX_DESCRIPTION_LEN};
use crate::rejection::Rejection;
use crate::template::{self, ParameterSpec};
use crate::time::Timestamp;

/// The state of a registered command; serializable for projection snapshots.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommandTemplate {
    /// Its id, given to devices as `commandId`.
    pub command_id: CommandId,
    /// The action devices get.
    pub action: String,
    /// Free text.
    pub description: Option<String>,
    /// The payload with `${name}` placeholders.
    pub payload: Value,
    /// The declared parameters.
    pub parameters: Vec<ParameterSpec>,
    /// When it was (last) registered.
    pub registered_at: Timestamp,
    /// Deleted: commands can no longer be sent by this id until it is registered again.
    pub deleted: bool,
    /// Number of events applied.
    pub version: u64,
}

impl CommandTemplate {
    /// The payload for a request's `parameters`, or a refusal naming the parameter.
    pub fn render(&self, parameters: &Map<String, Value>) -> Result<Value, Rejection> {
        template::render(&self.payload, &self.parameters, parameters)
    }
}

/// What can be asked of a registered command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandTemplateIntent {
    /// Register it (again, after a delete).
    Register {
        /// Its id.
        command_id: CommandId,
        /// 1 to [`MAX_COMMAND_ACTION_LEN`] characters.
        action: String,
        /// At most [`MAX_DESCRIPTION_LEN`] characters.
        description: Option<String>,
        /// The payload template.
        payload: Value,
        /// The parameters.
        parameters: Vec<ParameterSpec>,
    },
    /// Delete it.
    Delete,
}

impl Aggregate for CommandTemplate {
    type Intent = CommandTemplateIntent;
    const NAME: &'static str = "command";

    fn decide(
        state: Option<&Self>,
        intent: CommandTemplateIntent,
        now: Timestamp,
    ) -> Result<Vec<Event>, Rejection> {
        match intent {
            CommandTemplateIntent::Register {
                command_id,
                action,
                description,
                payload,
                parameters,
            } => {
                if state.is_some_and(|t| !t.deleted) {
                    return Err(Rejection::invalid(
                        "commandId",
                        format!("command {command_id} is already registered"),
                    ));
                }
                let len = action.chars().count();
                if len == 0 || len > MAX_COMMAND_ACTION_LEN {
                    return Err(Rejection::invalid(
                        "action",
                        format!("must be 1 to {MAX_COMMAND_ACTION_LEN} characters"),
                    ));
                }
                if description
                    .as_ref()
                    .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
                {
                    return Err(Rejection::invalid(
                        "description",
                        format!("must be at most {MAX_DESCRIPTION_LEN} characters"),
                    ));
                }
                template::validate(&payload, &parameters)?;
                Ok(vec![Event::CommandTemplateRegistered {
                    command_id,
                    action,
                    description,
                    payload,
                    parameters,
                    at: now,
                }])
            }
            CommandTemplateIntent::Delete => match state {
                Some(t) if !t.deleted => Ok(vec![Event::CommandTemplateDeleted { at: now }]),
                _ => Err(not_found("command", "unknown")),
            },
        }
    }

    fn evolve(state: Option<Self>, event: &Event) -> Result<Self, EvolveError> {
        let out_of_order = |state: &'static str| EvolveError::OutOfOrder {
            event: event.type_name(),
            state,
        };
        match (state, event) {
            (
                old,
                Event::CommandTemplateRegistered {
                    command_id,
                    action,
                    description,
                    payload,
                    parameters,
                    at,
                },
            ) => {
                if old.as_ref().is_some_and(|t| !t.deleted) {
                    return Err(out_of_order("registered"));
                }
                Ok(Self {
                    command_id: command_id.clone(),
                    action: action.clone(),
                    description: description.clone(),
                    payload: payload.clone(),
                    parameters: parameters.clone(),
                    registered_at: *at,
                    deleted: false,
                    version: old.map_or(0, |t| t.version) + 1,
                })
            }
            (Some(mut t), Event::CommandTemplateDeleted { .. }) if !t.deleted => {
                t.deleted = true;
                t.version += 1;
                Ok(t)
            }
            (Some(_), Event::CommandTemplateDeleted { .. }) => Err(out_of_order("deleted")),
            (None, Event::CommandTemplateDeleted { .. }) => Err(out_of_order("none")),
            (_, other) => Err(foreign(Self::NAME, other)),
        }
    }
}
