//! The registered-command routes: register a command (its action, payload template and
//! parameters), list and describe them, delete one. Sending one is `POST /api/v1/commands`
//! with `commandId` and `parameters`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetops_core::command_template::CommandTemplate;
use fleetops_core::ids::CommandId;
use fleetops_core::link::DeviceLink;
use fleetops_core::template::ParameterSpec;
use fleetops_core::{EventStore, Rejection};
use fleetops_service::{CommandTemplateSpec, FleetError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::handlers::{page, page_view, PageQuery};
use super::wire::{present, secs, PageView};
use super::ApiState;

/// `PUT /api/v1/command-templates/{commandId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RegisterRequest {
    action: String,
    #[serde(default, deserialize_with = "present")]
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    payload: Option<Value>,
    #[serde(default)]
    parameters: Vec<ParameterSpec>,
}

/// A registered command.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateView {
    /// Its id.
    pub command_id: CommandId,
    /// The action devices get.
    pub action: String,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The payload template.
    pub payload: Value,
    /// The declared parameters.
    pub parameters: Vec<ParameterSpec>,
    /// When it was registered, in seconds since the epoch.
    pub registered_at: u64,
}

impl From<CommandTemplate> for TemplateView {
    fn from(t: CommandTemplate) -> Self {
        Self {
            command_id: t.command_id,
            action: t.action,
            description: t.description,
            payload: t.payload,
            parameters: t.parameters,
            registered_at: secs(t.registered_at),
        }
    }
}

fn command_id(value: &str) -> Result<CommandId, ApiError> {
    CommandId::parse(value).map_err(|e| ApiError::invalid("commandId", format!("`{value}`: {e}")))
}

pub(super) async fn register<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    let id = command_id(&id)?;
    let spec = CommandTemplateSpec {
        command_id: id.clone(),
        action: body.action,
        description: body.description,
        payload: body.payload.unwrap_or_else(|| Value::Object(Map::new())),
        parameters: body.parameters,
    };
    match app.fleet.register_command(spec).await {
        Ok(t) => Ok((StatusCode::CREATED, Json(t.into()))),
        Err(FleetError::Rejected(Rejection::InvalidRequest {
            field: "commandId",
            reason,
        })) if reason.ends_with("already registered") => Err(ApiError::already_exists(format!(
            "command {id} is already registered; delete it first to change it"
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<PageView<TemplateView>>, ApiError> {
    let p = page(q.limit, q.next_token)?;
    Ok(Json(page_view(app.fleet.list_command_templates(&p))))
}

pub(super) async fn get<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TemplateView>, ApiError> {
    let id = command_id(&id)?;
    app.fleet
        .command_template(&id)
        .map(|t| Json(t.into()))
        .ok_or_else(|| ApiError::not_found(format!("command {id} is not registered")))
}

pub(super) async fn delete<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = command_id(&id)?;
    app.fleet.delete_command(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
