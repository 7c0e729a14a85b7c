//! The HTTP API (axum, JSON) served by `fleetops serve`, in the spirit of EMQX Fleets' REST
//! API and AWS IoT Jobs: jobs, job executions, commands and thing groups under `/api/v1`,
//! `GET /healthz`, and the OpenAPI document at `/api/v1/openapi.json` (kept in the repository
//! as `server/openapi.json`).
//!
//! - Every `/api/v1` route except the OpenAPI document needs `Authorization: Bearer <token>`
//!   (the scheme name in any case, as HTTP defines it)
//!   unless authentication was explicitly disabled; a refusal is 401 and happens before the
//!   body is read, so it never changes anything.
//! - Every error is `{code, message}` JSON: 400 for malformed JSON, unknown fields, bad ids
//!   and values outside their range (the message names the field), 401, 404 for unknown
//!   resources and routes, 405, 409 for conflicts with the current state, 413 for bodies over
//!   the limit, 415 for bodies that are not JSON, 503 when the store or broker link is down.
//! - Listings page with `?limit=` (1 to 1000, default 100) and `?nextToken=`; so do the
//!   `…/history` routes, which page a stream's stored events.
//! - `GET /api/v1/events` streams stored events as Server-Sent Events (`events`): filtered,
//!   resumable with `Last-Event-ID`, at most [`MAX_EVENT_CLIENTS`] at once.

mod auth;
mod error;
mod events;
mod extract;
mod handlers;
mod keys;
mod metrics;
mod templates;
mod things;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Extension, Router};
use fleetops_core::access::Scope;
use fleetops_core::link::DeviceLink;
use fleetops_core::EventStore;
use fleetops_service::Fleet;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

use auth::Guard;
pub use auth::SECRET_HEX_LEN;
pub use error::ApiError;
pub use events::{EventHub, EVENT_BUFFER, KEEP_ALIVE, MAX_EVENT_CLIENTS};
pub use handlers::DEFAULT_PAGE_LIMIT;
pub use metrics::{AdapterFigures, StoreFigures};

use crate::config::Auth;

/// The OpenAPI 3 document of this API (`server/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// What the handlers share.
pub struct ApiState<S: EventStore, L: DeviceLink> {
    /// The runtime.
    pub fleet: Arc<Fleet<S, L>>,
    /// Whether the broker connection is up, for `/healthz`.
    pub link_up: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Turns `true` when the server starts shutting down: `wait=true` requests then answer
    /// at once with the record as it stands instead of holding the shutdown up.
    pub stopping: watch::Receiver<bool>,
    /// The link's and the store's figures, for `/metrics`.
    pub adapters: Arc<dyn Fn() -> AdapterFigures + Send + Sync>,
}

impl<S: EventStore, L: DeviceLink> Clone for ApiState<S, L> {
    fn clone(&self) -> Self {
        Self {
            fleet: Arc::clone(&self.fleet),
            link_up: Arc::clone(&self.link_up),
            stopping: self.stopping.clone(),
            adapters: Arc::clone(&self.adapters),
        }
    }
}

/// What a route needs: nothing, a credential whose scope its method chooses (`GET` needs
/// `read`, every change `operator`), or an `admin` credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Public,
    Token,
    Admin,
}

impl Access {
    /// The scope a request with `method` needs, `None` for a public route.
    fn scope(self, method: &Method) -> Option<Scope> {
        match self {
            Self::Public => None,
            Self::Token if *method == Method::GET => Some(Scope::Read),
            Self::Token => Some(Scope::Operator),
            Self::Admin => Some(Scope::Admin),
        }
    }
}

struct Endpoint<St> {
    method: Method,
    path: &'static str,
    access: Access,
    handler: MethodRouter<St>,
}

/// One route: the method given once both filters the handler and names the route in
/// [`route_table`], so the table cannot drift from what is served.
fn ep<St, H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Endpoint<St>
where
    St: Clone + Send + Sync + 'static,
    H: axum::handler::Handler<T, St>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone())
        .unwrap_or_else(|_| unreachable!("only standard methods are routed"));
    Endpoint {
        method,
        path,
        access,
        handler: on(filter, handler),
    }
}

fn endpoints<S: EventStore, L: DeviceLink>() -> Vec<Endpoint<ApiState<S, L>>> {
    use handlers as h;
    use Access::{Admin, Public, Token};
    use Method as M;
    vec![
        ep(M::GET, "/healthz", Public, h::healthz::<S, L>),
        ep(M::GET, "/api/v1/openapi.json", Public, h::openapi),
        ep(M::GET, "/metrics", Token, metrics::metrics::<S, L>),
        ep(M::POST, "/api/v1/jobs", Token, h::create_job::<S, L>),
        ep(M::GET, "/api/v1/jobs", Token, h::list_jobs::<S, L>),
        ep(
            M::GET,
            "/api/v1/jobs/{jobId}",
            Token,
            h::describe_job::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/jobs/{jobId}",
            Token,
            h::delete_job::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/jobs/{jobId}/executions",
            Token,
            h::list_job_executions::<S, L>,
        ),
        ep(
            M::POST,
            "/api/v1/jobs/{jobId}/cancel",
            Token,
            h::cancel_job::<S, L>,
        ),
        ep(
            M::POST,
            "/api/v1/jobs/{jobId}/pause",
            Token,
            h::pause_job::<S, L>,
        ),
        ep(
            M::POST,
            "/api/v1/jobs/{jobId}/resume",
            Token,
            h::resume_job::<S, L>,
        ),
        ep(
            M::PUT,
            "/api/v1/jobs/{jobId}/things/{thingName}/cancel",
            Token,
            h::cancel_job_execution::<S, L>,
        ),
        ep(
            M::PATCH,
            "/api/v1/jobs/{jobId}",
            Token,
            h::update_job::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/jobs/{jobId}/things/{thingName}",
            Token,
            h::get_job_execution::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/jobs/{jobId}/things/{thingName}",
            Token,
            h::delete_job_execution::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/things/{thingName}/jobs",
            Token,
            h::list_thing_jobs::<S, L>,
        ),
        ep(M::POST, "/api/v1/commands", Token, h::send_command::<S, L>),
        ep(M::GET, "/api/v1/commands", Token, h::list_commands::<S, L>),
        ep(
            M::GET,
            "/api/v1/commands/{executionId}",
            Token,
            h::get_command::<S, L>,
        ),
        ep(
            M::POST,
            "/api/v1/commands/{executionId}/cancel",
            Token,
            h::cancel_command::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/thing-groups",
            Token,
            h::list_groups::<S, L>,
        ),
        ep(
            M::PUT,
            "/api/v1/thing-groups/{name}",
            Token,
            h::put_group::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/thing-groups/{name}",
            Token,
            h::get_group::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/thing-groups/{name}",
            Token,
            h::delete_group::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/thing-groups/{name}/members",
            Token,
            h::list_members::<S, L>,
        ),
        ep(
            M::PUT,
            "/api/v1/thing-groups/{name}/members",
            Token,
            h::add_members::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/thing-groups/{name}/members",
            Token,
            h::remove_members::<S, L>,
        ),
        // Histories and live events.
        ep(
            M::GET,
            "/api/v1/jobs/{jobId}/history",
            Token,
            h::job_history::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/jobs/{jobId}/things/{thingName}/history",
            Token,
            h::job_execution_history::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/commands/{executionId}/history",
            Token,
            h::command_history::<S, L>,
        ),
        ep(M::GET, "/api/v1/events", Token, h::events::<S, L>),
        // Registered commands.
        ep(
            M::GET,
            "/api/v1/command-templates",
            Token,
            templates::list::<S, L>,
        ),
        ep(
            M::PUT,
            "/api/v1/command-templates/{commandId}",
            Token,
            templates::register::<S, L>,
        ),
        ep(
            M::GET,
            "/api/v1/command-templates/{commandId}",
            Token,
            templates::get::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/command-templates/{commandId}",
            Token,
            templates::delete::<S, L>,
        ),
        // API keys.
        ep(M::POST, "/api/v1/api-keys", Admin, keys::create_key::<S, L>),
        ep(M::GET, "/api/v1/api-keys", Admin, keys::list_keys::<S, L>),
        ep(
            M::GET,
            "/api/v1/api-keys/{keyId}",
            Admin,
            keys::get_key::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/api-keys/{keyId}",
            Admin,
            keys::revoke_key::<S, L>,
        ),
        // The thing registry and presence.
        ep(M::GET, "/api/v1/things", Token, things::list_things::<S, L>),
        ep(
            M::GET,
            "/api/v1/things/{thingName}",
            Token,
            things::get_thing::<S, L>,
        ),
        ep(
            M::PUT,
            "/api/v1/things/{thingName}",
            Token,
            things::put_thing::<S, L>,
        ),
        ep(
            M::DELETE,
            "/api/v1/things/{thingName}",
            Token,
            things::delete_thing::<S, L>,
        ),
    ]
}

/// Every `(method, path)` the router serves, in the path syntax of OpenAPI (`{jobId}`).
pub fn route_table() -> Vec<(Method, &'static str)> {
    scope_table().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// Every `(method, path)` the router serves with the scope it needs (`None`: public).
pub fn scope_table() -> Vec<(Method, &'static str, Option<Scope>)> {
    endpoints::<fleetops_store_sled::SledStore, std::sync::Arc<fleetops_transport_mqtt::MqttLink>>()
        .into_iter()
        .map(|e| {
            let scope = e.access.scope(&e.method);
            (e.method, e.path, scope)
        })
        .collect()
}

/// The router: routes, credential and scope check, body limit, JSON 404/405 and request tracing,
/// with the web console's public pages ([`crate::console`]) beside the API.
pub fn router<S: EventStore, L: DeviceLink>(
    state: ApiState<S, L>,
    auth: Auth,
    max_body_bytes: usize,
) -> Router {
    let mut public: Vec<(&'static str, MethodRouter<ApiState<S, L>>)> = Vec::new();
    let mut protected: Vec<(&'static str, MethodRouter<ApiState<S, L>>)> = Vec::new();
    let mut needs = HashMap::new();
    for e in endpoints::<S, L>() {
        let list = match e.access.scope(&e.method) {
            None => &mut public,
            Some(scope) => {
                needs.insert((e.method.clone(), e.path), scope);
                &mut protected
            }
        };
        // One MethodRouter per path: axum refuses a path registered twice.
        match list.iter_mut().find(|(p, _)| *p == e.path) {
            Some((_, mr)) => *mr = std::mem::take(mr).merge(e.handler),
            None => list.push((e.path, e.handler)),
        }
    }
    let to_router = |list: Vec<(&'static str, MethodRouter<ApiState<S, L>>)>| {
        list.into_iter()
            .fold(Router::new(), |r, (path, mr)| r.route(path, mr))
    };
    let guard = Guard {
        auth,
        fleet: Arc::clone(&state.fleet),
        needs,
    };
    let protected = to_router(protected).route_layer(middleware::from_fn_with_state(
        Arc::new(guard),
        auth::authorize::<S, L>,
    ));
    to_router(public)
        .merge(crate::console::routes())
        .merge(protected)
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(Extension(Arc::new(EventHub::default())))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_is_json_and_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().expect("paths");
        let table = route_table();
        for (method, path) in &table {
            let op = paths
                .get(*path)
                .and_then(|p| p.get(method.as_str().to_lowercase()));
            assert!(op.is_some(), "{method} {path} is served but not documented");
        }
        // Each protected operation states the scope it needs, as the router enforces it.
        for (method, path, scope) in scope_table() {
            let op = &paths[path][method.as_str().to_lowercase()];
            let stated = op.get("x-fleetops-scope").and_then(|s| s.as_str());
            assert_eq!(
                stated,
                scope.map(Scope::as_str),
                "{method} {path}: the document states scope {stated:?}"
            );
            if scope.is_some() {
                assert!(
                    op["responses"].get("403").is_some(),
                    "{method} {path}: no 403"
                );
            }
        }
        // And nothing documented that is not served.
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                if method == "parameters" {
                    continue;
                }
                assert!(
                    table
                        .iter()
                        .any(|(m, p)| p == path && m.as_str().eq_ignore_ascii_case(method)),
                    "{method} {path} is documented but not served"
                );
            }
        }
    }
}
