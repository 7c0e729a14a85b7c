//! Embedding fleetops in your own axum service.
//!
//! The service below is "someone else's": it has its own routes (`/`, firmware rollouts as it
//! names them) and uses fleetops as a library, not through `fleetops serve`:
//!
//! - a [`Fleet`] on a [`SledStore`] (events on disk) and an [`MqttLink`] (devices over MQTT),
//!   with its own [`FleetConfig`];
//! - its own HTTP routes that create a job and read its progress;
//! - a task that reacts to every stored event through [`Fleet::events`], resuming after the
//!   last event it has seen;
//! - a graceful shutdown on Ctrl-C or SIGTERM: stop taking requests, stop the runtime (it
//!   saves its snapshot), flush sled, then disconnect from the broker.
//!
//! Run it against a broker whose ACL lets `fleetops-service` publish to devices (see
//! `docs/operations.md`):
//!
//! ```text
//! cargo run -p fleetops-tests --example embed_axum -- \
//!     --broker 127.0.0.1:1883 --username fleetops-service --password secret \
//!     --data-dir ./embed-data --listen 127.0.0.1:8080
//! curl -X POST localhost:8080/rollouts/v2 -H 'content-type: application/json' \
//!     -d '{"things": ["lamp-1", "lamp-2"]}'
//! curl localhost:8080/rollouts/v2
//! ```
//!
//! The black-box test `tests/tests/embed.rs` runs exactly this binary against a test broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleetops_core::{ErrorCode, JobId, ThingName};
use fleetops_service::{Fleet, FleetConfig, FleetError, JobSpec};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_transport_mqtt::{BrokerConfig, Credentials, MqttLink, MqttLinkConfig};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

/// The fleet as this service holds it: sled underneath, MQTT to the devices. The link is
/// shared (`Arc`) so the service keeps a handle to disconnect it after the runtime stopped.
type MyFleet = Fleet<SledStore, Arc<MqttLink>>;

/// Where to connect and listen, from the command line.
struct Args {
    broker: String,
    username: Option<String>,
    password: Option<String>,
    data_dir: PathBuf,
    listen: SocketAddr,
}

const USAGE: &str = "usage: embed_axum [--broker HOST:PORT] [--username U --password P] \
                     [--data-dir DIR] [--listen ADDR]";

fn args() -> Result<Args, String> {
    let mut args = Args {
        broker: "127.0.0.1:1883".into(),
        username: None,
        password: None,
        data_dir: PathBuf::from("embed-data"),
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--broker" => args.broker = value,
            "--username" => args.username = Some(value),
            "--password" => args.password = Some(value),
            "--data-dir" => args.data_dir = PathBuf::from(value),
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// What the routes share.
#[derive(Clone)]
struct App {
    fleet: Arc<MyFleet>,
    /// Stored events the reaction task has seen.
    events_seen: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Display, not Debug: an operator reads this.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // 1. Storage and transport, configured by this service.
    let store = SledStore::open_async(SledConfig::new(&args.data_dir)).await?;
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .ok_or("--broker is HOST:PORT")?;
    let mut broker = BrokerConfig::new(host, port.parse()?);
    if let (Some(username), Some(password)) = (args.username, args.password) {
        broker.credentials = Some(Credentials { username, password });
    }
    let mut link_config = MqttLinkConfig::new(broker);
    link_config.client_id = "embed-axum-example".into();
    let link = Arc::new(MqttLink::connect(link_config).await?);

    // 2. The runtime, with tuning of our own.
    let config = FleetConfig {
        notify_max: 5,
        ..FleetConfig::default()
    };
    let fleet = Arc::new(
        Fleet::builder(store.clone(), Arc::clone(&link))
            .config(config)
            .start()
            .await?,
    );

    // 3. React to stored events: here, count them and log status changes. Resuming from the
    //    checkpoint skips the history folded at start.
    let events_seen = Arc::new(AtomicU64::new(0));
    let mut events = fleet.events(fleet.checkpoint() + 1).await?;
    let seen = Arc::clone(&events_seen);
    let reactor = tokio::spawn(async move {
        while let Some(stored) = events.next().await {
            match stored {
                Ok(e) => {
                    seen.fetch_add(1, Ordering::Relaxed);
                    println!(
                        "event {} {} on {}",
                        e.position,
                        e.event.type_name(),
                        e.stream
                    );
                }
                Err(e) => {
                    eprintln!("event feed ended: {e}");
                    break;
                }
            }
        }
    });

    // 4. Our own routes next to whatever else the service does.
    let app = App {
        fleet: Arc::clone(&fleet),
        events_seen,
    };
    let router = Router::new()
        .route("/", get(home))
        .route("/rollouts/{version}", get(progress).post(start_rollout))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    // The test (and a human) reads the address from here: `--listen 127.0.0.1:0` works.
    println!("listening on http://{}", listener.local_addr()?);

    // 5. Graceful shutdown, in order.
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    println!("stopped taking requests");
    reactor.abort();
    // The router is gone, so ours is the last handle of the fleet.
    match Arc::try_unwrap(fleet) {
        Ok(fleet) => fleet.shutdown().await,
        Err(_) => eprintln!("the fleet is still shared; it stops when dropped"),
    }
    store.flush().await?;
    // Dropping sled's last handle joins its writer thread: keep it off the async workers.
    tokio::task::spawn_blocking(move || drop(store)).await?;
    link.shutdown().await;
    println!("fleet stopped cleanly");
    Ok(())
}

async fn home(State(app): State<App>) -> Json<serde_json::Value> {
    let health = app.fleet.health().await;
    Json(json!({
        "service": "embed-axum-example",
        "fleetServing": health.is_serving(),
        "eventsSeen": app.events_seen.load(Ordering::Relaxed),
    }))
}

/// The body of `POST /rollouts/{version}`.
#[derive(Deserialize)]
struct RolloutRequest {
    things: Vec<String>,
}

async fn start_rollout(
    State(app): State<App>,
    Path(version): Path<String>,
    Json(body): Json<RolloutRequest>,
) -> Response {
    // Untrusted input becomes typed values at the door; fleetops' parsers say what is wrong.
    let job = match JobId::parse(&format!("firmware-{version}")) {
        Ok(job) => job,
        Err(e) => return bad_request(&format!("version: {e}")),
    };
    let things = match body
        .things
        .iter()
        .map(|t| ThingName::parse(t))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(things) => things,
        Err(e) => return bad_request(&format!("things: {e}")),
    };
    let spec = JobSpec::new(
        job.clone(),
        json!({"operation": "firmware", "version": version}),
    )
    .things(things);
    match app.fleet.create_job(spec).await {
        Ok(created) => (
            StatusCode::CREATED,
            Json(json!({"jobId": created.job_id.as_str(), "status": created.status})),
        )
            .into_response(),
        Err(e) => fleet_error(&e),
    }
}

async fn progress(State(app): State<App>, Path(version): Path<String>) -> Response {
    let Ok(job) = JobId::parse(&format!("firmware-{version}")) else {
        return bad_request("version: not a valid job id part");
    };
    match app.fleet.describe_job(&job) {
        Ok(d) => Json(json!({
            "jobId": job.as_str(),
            "counters": d.counters,
            "remainingTargets": d.remaining_targets,
        }))
        .into_response(),
        Err(e) => fleet_error(&e),
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// Maps the fleet's errors to this service's HTTP answers.
fn fleet_error(e: &FleetError) -> Response {
    let status = match e {
        FleetError::Rejected(r) if r.code() == ErrorCode::ResourceNotFound => StatusCode::NOT_FOUND,
        FleetError::Rejected(r) if r.code() == ErrorCode::VersionMismatch => StatusCode::CONFLICT,
        FleetError::Rejected(_) => StatusCode::BAD_REQUEST,
        FleetError::Unavailable { .. } | FleetError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
