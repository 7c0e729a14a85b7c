//! The thing registry and presence: `GET`, `PUT`, `DELETE /api/v1/things/{thingName}` and
//! the filtered, paged `GET /api/v1/things`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleetops_core::limits::{MAX_ATTRIBUTE_NAME_LEN, MAX_ATTRIBUTE_VALUE_LEN, MAX_THING_TYPE_LEN};
use fleetops_core::link::DeviceLink;
use fleetops_core::thing::{
    valid_attribute_name, valid_attribute_value, valid_thing_type, Connectivity, Thing,
};
use fleetops_core::{EventStore, ThingName};
use fleetops_service::ThingFilter;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::handlers::{page, thing_name};
use super::wire::{present, PageView};
use super::ApiState;

type ApiResult<T> = Result<T, ApiError>;

/// A thing as the API shows it: its registry record and its connectivity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingView {
    /// Its name.
    pub thing_name: ThingName,
    /// Whether it is in the registry (a thing known only from presence is not).
    pub registered: bool,
    /// Its attributes.
    pub attributes: BTreeMap<String, String>,
    /// Its thing type name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_type_name: Option<String>,
    /// The MQTT client id it connects with, when not its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `online`, `offline` or `unknown`.
    pub connectivity: Connectivity,
    /// When connectivity last changed, in epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity_since: Option<u64>,
    /// When the registry record was last written, in epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<u64>,
    /// Events applied to the thing's stream.
    pub version: u64,
}

impl From<Thing> for ThingView {
    fn from(t: Thing) -> Self {
        Self {
            thing_name: t.name,
            registered: t.registered,
            attributes: t.attributes,
            thing_type_name: t.thing_type,
            client_id: t.client_id,
            connectivity: t.connectivity,
            connectivity_since: t.connectivity_since.map(|s| s.as_secs()),
            registered_at: t.registered_at.map(|s| s.as_secs()),
            version: t.version,
        }
    }
}

/// The body of `PUT /api/v1/things/{thingName}`: the whole record, replaced.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PutThingRequest {
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "present")]
    thing_type_name: Option<String>,
    #[serde(default, deserialize_with = "present")]
    client_id: Option<String>,
}

/// The query of `GET /api/v1/things`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListThingsQuery {
    attribute_name: Option<String>,
    attribute_value: Option<String>,
    thing_type_name: Option<String>,
    connectivity: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn put_thing<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PutThingRequest>,
) -> ApiResult<Response> {
    let name = thing_name(&name)?;
    let existed = app.fleet.thing(&name).is_some_and(|t| t.registered);
    let thing = app
        .fleet
        .register_thing(name, body.attributes, body.thing_type_name, body.client_id)
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ThingView::from(thing))).into_response())
}

pub(super) async fn get_thing<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<ThingView>> {
    let name = thing_name(&name)?;
    let thing = app.fleet.thing(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "thing {name} is neither registered nor known to presence"
        ))
    })?;
    Ok(Json(thing.into()))
}

pub(super) async fn delete_thing<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let name = thing_name(&name)?;
    app.fleet.deregister_thing(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_things<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<ListThingsQuery>,
) -> ApiResult<Json<PageView<ThingView>>> {
    let connectivity = q
        .connectivity
        .map(|c| {
            Connectivity::parse(&c).ok_or_else(|| {
                ApiError::invalid("connectivity", "must be online, offline or unknown")
            })
        })
        .transpose()?;
    // Filters are parsed like the record they match: a value no record can hold is refused.
    if q.attribute_name
        .as_deref()
        .is_some_and(|n| !valid_attribute_name(n))
    {
        return Err(ApiError::invalid(
            "attributeName",
            format!("must be 1 to {MAX_ATTRIBUTE_NAME_LEN} characters of [a-zA-Z0-9_.:-]"),
        ));
    }
    if q.attribute_value
        .as_deref()
        .is_some_and(|v| !valid_attribute_value(v))
    {
        return Err(ApiError::invalid(
            "attributeValue",
            format!(
                "must be at most {MAX_ATTRIBUTE_VALUE_LEN} characters, without control characters"
            ),
        ));
    }
    if q.thing_type_name
        .as_deref()
        .is_some_and(|t| !valid_thing_type(t))
    {
        return Err(ApiError::invalid(
            "thingTypeName",
            format!("must be 1 to {MAX_THING_TYPE_LEN} characters of [a-zA-Z0-9:_-]"),
        ));
    }
    let filter = ThingFilter {
        attribute_name: q.attribute_name,
        attribute_value: q.attribute_value,
        thing_type: q.thing_type_name,
        connectivity,
    };
    let p = page(q.limit, q.next_token)?;
    let paged = app.fleet.list_things(&filter, &p);
    Ok(Json(PageView {
        items: paged.items.into_iter().map(ThingView::from).collect(),
        next_token: paged.next,
    }))
}
