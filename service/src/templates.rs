//! Registered commands on the fleet: register, delete, list, and send a command by its id
//! with parameters, rendered into its payload by core's rules.

use fleetops_core::command_template::{CommandTemplate, CommandTemplateIntent};
use fleetops_core::ids::CommandId;
use fleetops_core::link::DeviceLink;
use fleetops_core::store::EventStore;
use fleetops_core::template::ParameterSpec;
use fleetops_core::{Duration, Rejection, StreamId, ThingName};
use serde_json::{Map, Value};

use crate::error::FleetError;
use crate::fleet::{not_found, page, rename, CommandHandle, Fleet};
use crate::types::{Page, Paged};

/// The most commands that may be registered at once (deleted ones do not count).
pub const MAX_COMMAND_TEMPLATES: usize = 1_000;

/// A command to register: what [`Fleet::register_command`] takes.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandTemplateSpec {
    /// Its id.
    pub command_id: CommandId,
    /// The action devices get.
    pub action: String,
    /// Free text.
    pub description: Option<String>,
    /// The payload template, with `${name}` placeholders.
    pub payload: Value,
    /// The parameters a request fills it with.
    pub parameters: Vec<ParameterSpec>,
}

impl<S: EventStore, L: DeviceLink> Fleet<S, L> {
    /// Registers a command (again, once deleted). Refused when its template does not check
    /// out, the id is registered, or [`MAX_COMMAND_TEMPLATES`] are registered.
    pub async fn register_command(
        &self,
        spec: CommandTemplateSpec,
    ) -> Result<CommandTemplate, FleetError> {
        self.inner.ensure_serving()?;
        let registered = self
            .inner
            .read()
            .templates
            .values()
            .filter(|t| !t.deleted)
            .count();
        if registered >= MAX_COMMAND_TEMPLATES {
            return Err(FleetError::Rejected(Rejection::invalid(
                "commandId",
                format!(
                    "{registered} commands are registered, at most {MAX_COMMAND_TEMPLATES} are \
                     allowed; delete one first"
                ),
            )));
        }
        let id = spec.command_id.clone();
        let intent = CommandTemplateIntent::Register {
            command_id: spec.command_id,
            action: spec.action,
            description: spec.description,
            payload: spec.payload,
            parameters: spec.parameters,
        };
        let done = self
            .inner
            .execute::<CommandTemplate>(&StreamId::command_template(&id), intent)
            .await?;
        done.state.ok_or_else(|| not_found("command", &id))
    }

    /// Deletes a registered command; commands already sent by it are unaffected.
    pub async fn delete_command(&self, id: &CommandId) -> Result<(), FleetError> {
        self.inner.ensure_serving()?;
        self.inner
            .execute::<CommandTemplate>(
                &StreamId::command_template(id),
                CommandTemplateIntent::Delete,
            )
            .await
            .map_err(|e| rename(e, "command", id))?;
        Ok(())
    }

    /// A registered command, as folded; `None` when unknown or deleted.
    pub fn command_template(&self, id: &CommandId) -> Option<CommandTemplate> {
        self.inner
            .read()
            .templates
            .get(id)
            .filter(|t| !t.deleted)
            .cloned()
    }

    /// Registered commands by id.
    pub fn list_command_templates(&self, page_req: &Page) -> Paged<CommandTemplate> {
        let st = self.inner.read();
        page(
            st.templates
                .iter()
                .filter(|(_, t)| !t.deleted)
                .map(|(id, t)| (id.clone(), t.clone())),
            page_req,
        )
    }

    /// Sends the registered command `id` to `thing`, its payload rendered from `parameters`;
    /// a refusal names the parameter. The device gets the command's action and id.
    pub async fn send_registered_command(
        &self,
        thing: ThingName,
        id: &CommandId,
        parameters: &Map<String, Value>,
        ttl: Duration,
    ) -> Result<CommandHandle, FleetError> {
        let template = self
            .command_template(id)
            .ok_or_else(|| not_found("command", id))?;
        let params = template.render(parameters)?;
        self.send_command_with(
            thing,
            Some(id.as_str().to_owned()),
            template.action,
            params,
            ttl,
        )
        .await
    }
}
