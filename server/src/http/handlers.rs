//! The route handlers: parse at the boundary, call one `Fleet` method, shape the answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fleetops_core::config::TargetSelection;
use fleetops_core::group::MAX_MEMBERS_PER_CHANGE;
use fleetops_core::ids::CommandId;
use fleetops_core::limits::MAX_COMMAND_ACTION_LEN;
use fleetops_core::link::DeviceLink;
use fleetops_core::{
    CommandStatus, Duration, EventStore, ExecutionId, GroupName, JobExecutionStatus, JobId,
    JobStatus, Rejection, StreamId, ThingName,
};
use fleetops_service::{CommandFilter, FleetError, JobFilter, Page, Paged};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::events::{self, EventFilter, EventHub, StreamKindFilter, KEEP_ALIVE};
use super::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use super::wire::{
    CancelCommandRequest, CancelExecutionRequest, CancelJobRequest, CommandSent,
    CommandSummaryView, CommandView, CreateGroupRequest, CreateJobRequest, ExecutionSummaryView,
    ExecutionView, GroupView, HistoryItem, JobCreated, JobSummaryView, JobView, MembersRequest,
    PageView, PauseJobRequest, SendCommandRequest, UpdateJobRequest,
};
use super::ApiState;

type ApiResult<T> = Result<T, ApiError>;

/// The page size when `limit` is absent.
pub const DEFAULT_PAGE_LIMIT: usize = 100;

/// The longest `nextToken`, in characters: tokens are ids, at most 128 characters long.
pub const MAX_PAGE_TOKEN_LEN: usize = 128;

/// How much longer than its TTL a `wait=true` request waits for the terminal outcome before
/// answering with the current (still `SENT`) record: the scheduler fires the timeout at the
/// deadline, so this only matters if the runtime is stuck.
const WAIT_GRACE: StdDuration = StdDuration::from_secs(5);

fn parse_id<T>(
    field: &str,
    value: &str,
    parse: impl Fn(&str) -> Result<T, fleetops_core::IdError>,
) -> ApiResult<T> {
    parse(value).map_err(|e| ApiError::invalid(field, format!("`{value}`: {e}")))
}

fn job_id(value: &str) -> ApiResult<JobId> {
    parse_id("jobId", value, JobId::parse)
}

pub(super) fn thing_name(value: &str) -> ApiResult<ThingName> {
    parse_id("thingName", value, ThingName::parse)
}

fn group_name(value: &str) -> ApiResult<GroupName> {
    parse_id("thingGroupName", value, GroupName::parse)
}

fn execution_id(value: &str) -> ApiResult<ExecutionId> {
    parse_id("executionId", value, ExecutionId::parse)
}

pub(super) fn page(limit: Option<usize>, next_token: Option<String>) -> ApiResult<Page> {
    let limit = page_limit(limit)?;
    Ok(match next_token {
        Some(t) if t.is_empty() => return Err(ApiError::invalid("nextToken", "must not be empty")),
        Some(t) if t.chars().count() > MAX_PAGE_TOKEN_LEN => {
            return Err(ApiError::invalid(
                "nextToken",
                format!("must be at most {MAX_PAGE_TOKEN_LEN} characters"),
            ))
        }
        Some(t) => Page::after(t, limit),
        None => Page::first(limit),
    })
}

pub(super) fn page_view<T, V: From<T>>(p: Paged<T>) -> PageView<V> {
    PageView {
        items: p.items.into_iter().map(V::from).collect(),
        next_token: p.next,
    }
}

/// `limit` and `nextToken` only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct PageQuery {
    pub(super) limit: Option<usize>,
    pub(super) next_token: Option<String>,
}

/// `force` only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceQuery {
    #[serde(default)]
    force: bool,
}

/// The longest history `nextToken`, in characters: a stream version in decimal, and every
/// 19-digit number fits a `u64`.
pub const MAX_HISTORY_TOKEN_LEN: usize = 19;

/// The `limit` of a page, 1 to [`Page::MAX_LIMIT`] (default [`DEFAULT_PAGE_LIMIT`]).
fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if !(1..=Page::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {}", Page::MAX_LIMIT),
        ));
    }
    Ok(limit)
}

/// A history page request: the stream version to read after (0 for the first page) and the
/// limit. The token is the decimal stream version of the previous page's last item; clients
/// treat it as opaque, the server refuses anything else it cannot have issued.
fn history_page(limit: Option<usize>, next_token: Option<&str>) -> ApiResult<(u64, usize)> {
    let limit = page_limit(limit)?;
    let after = match next_token {
        None => 0,
        Some(t) => {
            let digits = !t.is_empty()
                && t.len() <= MAX_HISTORY_TOKEN_LEN
                && t.bytes().all(|b| b.is_ascii_digit());
            if !digits {
                return Err(ApiError::invalid(
                    "nextToken",
                    format!(
                        "must be the `nextToken` of a previous page (1 to \
                         {MAX_HISTORY_TOKEN_LEN} digits)"
                    ),
                ));
            }
            t.parse::<u64>()
                .map_err(|e| ApiError::invalid("nextToken", e))?
        }
    };
    Ok((after, limit))
}

/// A page of `stream`'s stored events.
async fn history_of<S: EventStore, L: DeviceLink>(
    app: &ApiState<S, L>,
    stream: &StreamId,
    q: PageQuery,
) -> ApiResult<Json<PageView<HistoryItem>>> {
    let (after, limit) = history_page(q.limit, q.next_token.as_deref())?;
    let page = app.fleet.history(stream, after, limit).await?;
    Ok(Json(PageView {
        items: page.events.iter().map(HistoryItem::from).collect(),
        next_token: page.next.map(|v| v.to_string()),
    }))
}

// ---- health and docs --------------------------------------------------------------------------

pub(super) async fn healthz<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    Extension(hub): Extension<Arc<EventHub>>,
) -> Response {
    if *app.stopping.borrow() {
        return ApiError::unavailable("shutting down").into_response();
    }
    if !(app.link_up)() {
        return ApiError::unavailable("the broker connection is down").into_response();
    }
    // The store is probed and the follower's reports read: either failing means writes
    // fail with 503 too, so the service is not healthy.
    let health = app.fleet.health().await;
    if let Some(problem) = health.problem() {
        return ApiError::unavailable(problem).into_response();
    }
    Json(serde_json::json!({
        "status": "ok",
        "checkpoint": health.checkpoint,
        "behind": health.behind(),
        "undeliverable": health.undeliverable,
        "givenUp": health.given_up,
        "leading": app.fleet.is_leading(),
        "eventClients": hub.clients(),
        "eventClientsDropped": hub.slow_disconnects(),
    }))
    .into_response()
}

pub(super) async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI_JSON,
    )
        .into_response()
}

// ---- jobs -------------------------------------------------------------------------------------

pub(super) async fn create_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiJson(body): ApiJson<CreateJobRequest>,
) -> ApiResult<Response> {
    let generated = || {
        // A UUIDv7 is 36 characters of [0-9a-f-], always a valid job id; sorts by time.
        JobId::parse(&uuid::Uuid::now_v7().to_string())
            .unwrap_or_else(|_| unreachable!("a UUID is a valid job id"))
    };
    let spec = body.into_spec(generated)?;
    let id = spec.job_id.clone();
    match app.fleet.create_job(spec).await {
        Ok(job) => Ok((
            StatusCode::CREATED,
            Json(JobCreated {
                job_id: job.job_id,
                status: job.status,
            }),
        )
            .into_response()),
        // Core refuses a taken id as an invalid `jobId`; over HTTP that is a conflict.
        Err(FleetError::Rejected(Rejection::InvalidRequest { field: "jobId", .. })) => Err(
            ApiError::already_exists(format!("job {id} already exists (ids are never reused)")),
        ),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListJobsQuery {
    status: Option<JobStatus>,
    target_selection: Option<TargetSelection>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn list_jobs<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<ListJobsQuery>,
) -> ApiResult<Json<PageView<JobSummaryView>>> {
    let p = page(q.limit, q.next_token)?;
    let filter = JobFilter {
        status: q.status,
        selection: q.target_selection,
    };
    Ok(Json(page_view(app.fleet.list_jobs(&filter, &p))))
}

pub(super) async fn describe_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(&id)?;
    let d = app.fleet.describe_job(&id)?;
    Ok(Json(JobView::from(&d)))
}

pub(super) async fn job_history<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageView<HistoryItem>>> {
    let id = job_id(&id)?;
    history_of(&app, &StreamId::job(&id), q).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ExecutionsQuery {
    status: Option<JobExecutionStatus>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn list_job_executions<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecutionsQuery>,
) -> ApiResult<Json<PageView<ExecutionSummaryView>>> {
    let id = job_id(&id)?;
    let p = page(q.limit, q.next_token)?;
    // A deleted job keeps its executions in the read model; the API treats it as gone.
    app.fleet.describe_job(&id)?;
    let rows = app.fleet.list_job_executions(&id, q.status, &p)?;
    Ok(Json(page_view(rows)))
}

pub(super) async fn cancel_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CancelJobRequest>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(&id)?;
    app.fleet.cancel_job(&id, body.force, body.comment).await?;
    app.fleet.caught_up().await?;
    Ok(Json(JobView::from(&app.fleet.describe_job(&id)?)))
}

pub(super) async fn pause_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<PauseJobRequest>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(&id)?;
    app.fleet.pause_job(&id, body.comment).await?;
    app.fleet.caught_up().await?;
    Ok(Json(JobView::from(&app.fleet.describe_job(&id)?)))
}

pub(super) async fn resume_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<PauseJobRequest>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(&id)?;
    app.fleet.resume_job(&id, body.comment).await?;
    app.fleet.caught_up().await?;
    Ok(Json(JobView::from(&app.fleet.describe_job(&id)?)))
}

pub(super) async fn update_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateJobRequest>,
) -> ApiResult<Json<JobView>> {
    let id = job_id(&id)?;
    app.fleet.update_job(&id, body.into_update()?).await?;
    app.fleet.caught_up().await?;
    Ok(Json(JobView::from(&app.fleet.describe_job(&id)?)))
}

pub(super) async fn delete_job<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<StatusCode> {
    let id = job_id(&id)?;
    app.fleet.delete_job(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get_job_execution<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath((job, thing)): ApiPath<(String, String)>,
) -> ApiResult<Json<ExecutionView>> {
    let (job, thing) = (job_id(&job)?, thing_name(&thing)?);
    let e = app.fleet.get_job_execution(&job, &thing).await?;
    Ok(Json(e.into()))
}

pub(super) async fn job_execution_history<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath((job, thing)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageView<HistoryItem>>> {
    let (job, thing) = (job_id(&job)?, thing_name(&thing)?);
    history_of(&app, &StreamId::job_execution(&job, &thing), q).await
}

pub(super) async fn delete_job_execution<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath((job, thing)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> ApiResult<Json<ExecutionView>> {
    let (job, thing) = (job_id(&job)?, thing_name(&thing)?);
    let e = app
        .fleet
        .delete_job_execution(&job, &thing, q.force)
        .await?;
    Ok(Json(e.into()))
}

pub(super) async fn cancel_job_execution<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath((job, thing)): ApiPath<(String, String)>,
    OptionalJson(body): OptionalJson<CancelExecutionRequest>,
) -> ApiResult<Json<ExecutionView>> {
    let (job, thing) = (job_id(&job)?, thing_name(&thing)?);
    let e = app
        .fleet
        .cancel_job_execution_with(
            &job,
            &thing,
            body.force,
            body.expected_version,
            body.status_details,
        )
        .await?;
    Ok(Json(e.into()))
}

pub(super) async fn list_thing_jobs<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(thing): ApiPath<String>,
    ApiQuery(q): ApiQuery<ExecutionsQuery>,
) -> ApiResult<Json<PageView<ExecutionSummaryView>>> {
    let thing = thing_name(&thing)?;
    let p = page(q.limit, q.next_token)?;
    Ok(Json(page_view(
        app.fleet.list_thing_executions(&thing, q.status, &p),
    )))
}

// ---- commands ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendQuery {
    #[serde(default)]
    wait: bool,
}

pub(super) async fn send_command<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<SendQuery>,
    ApiJson(body): ApiJson<SendCommandRequest>,
) -> ApiResult<Response> {
    let ttl = body.ttl;
    // An `action` makes the command ad hoc (as before commands could be registered, whatever
    // `commandId` says); without one, `commandId` must name a registered command.
    let handle = match body.action {
        None => {
            let Some(given) = body.command_id.as_deref() else {
                return Err(ApiError::invalid(
                    "action",
                    "required unless `commandId` names a registered command",
                ));
            };
            let id = CommandId::parse(given)
                .map_err(|e| ApiError::invalid("commandId", format!("`{given}`: {e}")))?;
            if app.fleet.command_template(&id).is_none() {
                return Err(ApiError::not_found(format!(
                    "command {id} is not registered, and an ad-hoc command needs an `action`"
                )));
            }
            if body.params.is_some() {
                return Err(ApiError::invalid(
                    "params",
                    format!(
                        "command {id} is registered: its payload comes from `parameters`, not \
                         `params`"
                    ),
                ));
            }
            let parameters = body.parameters.unwrap_or_default();
            app.fleet
                .send_registered_command(
                    body.thing_name,
                    &id,
                    &parameters,
                    Duration::from_secs(ttl),
                )
                .await?
        }
        Some(action) => {
            if body.parameters.is_some() {
                return Err(ApiError::invalid(
                    "parameters",
                    "only a registered command takes `parameters`; an ad-hoc one takes `params`",
                ));
            }
            app.fleet
                .send_command_with(
                    body.thing_name,
                    body.command_id,
                    action,
                    body.params.unwrap_or_else(|| Value::Object(Map::new())),
                    Duration::from_secs(ttl),
                )
                .await?
        }
    };
    let id = handle.execution_id().clone();
    if !q.wait {
        return Ok((StatusCode::CREATED, Json(CommandSent { execution_id: id })).into_response());
    }
    let mut stopping = app.stopping.clone();
    let stop = async move {
        // A dropped sender means the server is going away too; never fire early otherwise.
        if stopping.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let limit = StdDuration::from_secs(ttl).saturating_add(WAIT_GRACE);
    tokio::select! {
        outcome = handle.outcome() => match outcome {
            Ok(c) => return Ok((StatusCode::OK, Json(CommandView::from(c))).into_response()),
            Err(FleetError::Stopped) => {}
            Err(e) => return Err(e.into()),
        },
        () = stop => {}
        () = tokio::time::sleep(limit) => {}
    }
    // Not terminal yet (the server is stopping): 202 with the record as it stands.
    let current = app.fleet.get_command(&id).await?;
    let status = if current.status == CommandStatus::Sent {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(CommandView::from(current))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListCommandsQuery {
    thing_name: Option<String>,
    status: Option<CommandStatus>,
    action: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn list_commands<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<ListCommandsQuery>,
) -> ApiResult<Json<PageView<CommandSummaryView>>> {
    let filter = CommandFilter {
        thing: q.thing_name.as_deref().map(thing_name).transpose()?,
        status: q.status,
        action: match q.action {
            Some(a) if a.is_empty() || a.chars().count() > MAX_COMMAND_ACTION_LEN => {
                return Err(ApiError::invalid(
                    "action",
                    format!("must be 1 to {MAX_COMMAND_ACTION_LEN} characters"),
                ))
            }
            a => a,
        },
    };
    let p = page(q.limit, q.next_token)?;
    Ok(Json(page_view(app.fleet.list_commands(&filter, &p))))
}

pub(super) async fn get_command<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<CommandView>> {
    let id = execution_id(&id)?;
    Ok(Json(app.fleet.get_command(&id).await?.into()))
}

pub(super) async fn command_history<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageView<HistoryItem>>> {
    let id = execution_id(&id)?;
    history_of(&app, &StreamId::command(&id), q).await
}

pub(super) async fn cancel_command<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CancelCommandRequest>,
) -> ApiResult<Json<CommandView>> {
    let id = execution_id(&id)?;
    Ok(Json(
        app.fleet.cancel_command(&id, body.reason).await?.into(),
    ))
}

// ---- live events ------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    job: Option<String>,
    thing: Option<String>,
    kind: Option<StreamKindFilter>,
    from: Option<u64>,
}

/// The position a reconnecting EventSource sends: the `id` of the last message it got.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    // The same shape as a history token: every position fits in 19 digits.
    if text.is_empty()
        || text.len() > MAX_HISTORY_TOKEN_LEN
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ApiError::invalid(
            "Last-Event-ID",
            format!("must be the id of an event: 1 to {MAX_HISTORY_TOKEN_LEN} digits"),
        ));
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|e| ApiError::invalid("Last-Event-ID", e))
}

pub(super) async fn events<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    Extension(hub): Extension<Arc<EventHub>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    // Everything is checked before the stream starts: a bad value is a plain 400.
    let filter = EventFilter {
        job: q
            .job
            .as_deref()
            .map(|v| parse_id("job", v, JobId::parse))
            .transpose()?,
        thing: q
            .thing
            .as_deref()
            .map(|v| parse_id("thing", v, ThingName::parse))
            .transpose()?,
        kind: q.kind,
    };
    // The header wins: a reconnecting EventSource repeats the URL it was opened with (and so
    // its `from`), and the header says how far it got since.
    let resume = last_event_id(&headers)?.or(q.from);
    let slot = hub.admit().ok_or_else(|| {
        ApiError::unavailable(format!(
            "too many event streams: at most {} at once; retry later",
            hub.max_clients()
        ))
    })?;
    let head = app.fleet.head_position().await?;
    // A position past the head (a store that was replaced, say) is taken as the head: no
    // stored event is skipped.
    let after = resume.map_or(head, |p| p.min(head));
    let stream = events::stream(
        Arc::clone(&app.fleet),
        hub,
        slot,
        filter,
        after,
        app.stopping.clone(),
    );
    Ok((
        // Tells nginx and the like not to buffer the stream.
        [("x-accel-buffering", "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    )
        .into_response())
}

// ---- thing groups -----------------------------------------------------------------------------

pub(super) async fn put_group<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<CreateGroupRequest>,
) -> ApiResult<Response> {
    let name = group_name(&name)?;
    // Checked before the group is created: a refused request must not leave an empty group.
    if body.thing_names.len() > MAX_MEMBERS_PER_CHANGE {
        return Err(ApiError::invalid(
            "thingNames",
            format!("at most {MAX_MEMBERS_PER_CHANGE} per request"),
        ));
    }
    if app.fleet.group(&name).is_some() {
        return Err(ApiError::already_exists(format!(
            "thing group {name} already exists; change its members with PUT or DELETE \
             /api/v1/thing-groups/{name}/members"
        )));
    }
    let mut group = match app.fleet.create_group(name.clone(), body.description).await {
        Ok(g) => g,
        // Created meanwhile by another request: core says the name is taken.
        Err(FleetError::Rejected(Rejection::InvalidRequest { field: "name", .. })) => {
            return Err(ApiError::already_exists(format!(
                "thing group {name} already exists"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if !body.thing_names.is_empty() {
        group = app.fleet.add_group_members(&name, body.thing_names).await?;
    }
    Ok((StatusCode::CREATED, Json(GroupView::from(&group))).into_response())
}

/// `GET /api/v1/thing-groups`: paging and an optional name prefix.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListGroupsQuery {
    name_prefix: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

pub(super) async fn list_groups<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiQuery(q): ApiQuery<ListGroupsQuery>,
) -> ApiResult<Json<PageView<GroupView>>> {
    let p = page(q.limit, q.next_token)?;
    let prefix = match q.name_prefix {
        None => None,
        Some(s) if s.is_empty() || s.chars().count() > GroupName::MAX_LEN => {
            return Err(ApiError::invalid(
                "namePrefix",
                format!("must be 1 to {} characters", GroupName::MAX_LEN),
            ))
        }
        Some(s) => Some(s),
    };
    Ok(Json(page_view(
        app.fleet.list_groups(prefix.as_deref(), &p),
    )))
}

pub(super) async fn get_group<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<GroupView>> {
    let name = group_name(&name)?;
    let group = app
        .fleet
        .group(&name)
        .ok_or_else(|| ApiError::not_found(format!("thing group {name} not found")))?;
    Ok(Json(GroupView::from(&group)))
}

pub(super) async fn delete_group<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let name = group_name(&name)?;
    app.fleet.delete_group(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn list_members<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<PageView<ThingName>>> {
    let name = group_name(&name)?;
    let p = page(q.limit, q.next_token)?;
    let group = app
        .fleet
        .group(&name)
        .ok_or_else(|| ApiError::not_found(format!("thing group {name} not found")))?;
    Ok(Json(members_page(&group.members, &p)))
}

/// Keyset paging over the sorted member set.
fn members_page(members: &BTreeSet<ThingName>, p: &Page) -> PageView<ThingName> {
    let after = p.after.as_deref();
    let mut items: Vec<ThingName> = members
        .iter()
        .filter(|t| after.is_none_or(|a| t.as_str() > a))
        .take(p.limit + 1)
        .cloned()
        .collect();
    let next_token = if items.len() > p.limit {
        items.truncate(p.limit);
        items.last().map(|t| t.to_string())
    } else {
        None
    };
    PageView { items, next_token }
}

pub(super) async fn add_members<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<MembersRequest>,
) -> ApiResult<Json<GroupView>> {
    let name = group_name(&name)?;
    let g = app.fleet.add_group_members(&name, body.thing_names).await?;
    Ok(Json(GroupView::from(&g)))
}

pub(super) async fn remove_members<S: EventStore, L: DeviceLink>(
    State(app): State<ApiState<S, L>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<MembersRequest>,
) -> ApiResult<Json<GroupView>> {
    let name = group_name(&name)?;
    let g = app
        .fleet
        .remove_group_members(&name, body.thing_names)
        .await?;
    Ok(Json(GroupView::from(&g)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_pages_follow_the_token() {
        let members: BTreeSet<ThingName> = ["a", "b", "c"]
            .iter()
            .map(|t| ThingName::parse(t).unwrap())
            .collect();
        let first = members_page(&members, &Page::first(2));
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.next_token.as_deref(), Some("b"));
        let second = members_page(&members, &Page::after("b", 2));
        assert_eq!(second.items, vec![ThingName::parse("c").unwrap()]);
        assert_eq!(second.next_token, None);
    }

    #[test]
    fn history_tokens_are_stream_versions() {
        assert_eq!(history_page(None, None).unwrap(), (0, DEFAULT_PAGE_LIMIT));
        assert_eq!(history_page(Some(1), Some("7")).unwrap(), (7, 1));
        assert_eq!(
            history_page(Some(Page::MAX_LIMIT), Some(&"9".repeat(19))).unwrap(),
            (9_999_999_999_999_999_999, Page::MAX_LIMIT)
        );
        for bad in ["", "a", "-1", "1.5", " 1", "+1", "01x", &"1".repeat(20)] {
            let e = history_page(None, Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.contains("nextToken"), "{bad:?}: {}", e.message);
        }
        assert!(history_page(Some(0), None).is_err());
        assert!(history_page(Some(Page::MAX_LIMIT + 1), None).is_err());
    }

    #[test]
    fn limits_outside_the_range_are_refused() {
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(Page::MAX_LIMIT + 1), None).is_err());
        assert!(page(None, Some(String::new())).is_err());
        assert!(page(None, Some("a".repeat(MAX_PAGE_TOKEN_LEN))).is_ok());
        assert!(page(None, Some("a".repeat(MAX_PAGE_TOKEN_LEN + 1))).is_err());
        assert_eq!(page(None, None).unwrap().limit, DEFAULT_PAGE_LIMIT);
    }
}
