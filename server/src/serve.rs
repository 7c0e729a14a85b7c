//! `fleetops serve`: the service for real use.
//!
//! It opens the store (the sled data directory by default, or a PostgreSQL database that
//! several instances share, each leading the fleet-wide duties while it holds the database's
//! lease), connects to the broker (TLS and credentials as configured), starts the [`Fleet`]
//! runtime and serves the HTTP API ([`crate::http`]). On SIGINT or SIGTERM it shuts down in
//! an order that loses nothing:
//!
//! 1. stop accepting connections and let in-flight requests finish (`wait=true` command
//!    requests answer at once with the record as it stands);
//! 2. stop the runtime ([`Fleet::shutdown`]); every decision it acknowledged is already
//!    stored, and what it still owed devices is derived again from the store at the next start;
//! 3. flush sled and close it (PostgreSQL: close the connections, which frees the lease);
//! 4. disconnect from the broker; the persistent session keeps device requests queued there
//!    until the service is back.
//!
//! The HTTP listener serves at most `--max-connections` connections at once (others wait
//! in the listen backlog) and closes a connection whose request headers do not arrive within
//! `--header-timeout-secs`, so slow or idle clients cannot exhaust it.
//!
//! [`start`] is the same server without the process-wide parts (logging, signals), so tests
//! run it in-process with any shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetops_core::StoreError;
use fleetops_service::{Fleet, FleetConfig, FleetError};
use fleetops_store_postgres::{PostgresConfig, PostgresStore};
use fleetops_store_sled::{SledConfig, SledStore};
use fleetops_transport_mqtt::MqttLink;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::config::ServeArgs;
use crate::config::{LogFormat, OfflineCommandsArg, Settings, StoreSetting};
use crate::http::{self, AdapterFigures, ApiState};
use crate::store::AnyStore;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The sled directory could not be opened.
    #[error("cannot open the data directory {path}: {source}")]
    Store {
        /// The directory.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The PostgreSQL database could not be reached, or its schema could not be migrated.
    #[error("cannot open the database {url}: {source}")]
    Database {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: fleetops_store_postgres::PgError,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to the broker {broker}: {source}")]
    Broker {
        /// The URL, password redacted.
        broker: String,
        /// Why.
        source: fleetops_transport_mqtt::Error,
    },
    /// The runtime did not start (the stored history could not be folded).
    #[error("cannot start the fleet runtime: {0}")]
    Fleet(#[from] FleetError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The final flush of the store failed: the last acknowledged writes may not be on disk.
    #[error("the final flush of the data directory failed: {0}")]
    Flush(StoreError),
    /// The server task panicked or was aborted.
    #[error("the server task ended abnormally: {0}")]
    Task(String),
}

/// A running server: its bound address and the task that serves until shutdown.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// The address the HTTP API listens on (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the shutdown future fired and the shutdown sequence finished.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task
            .await
            .map_err(|e| ServeError::Task(e.to_string()))?
    }
}

/// Opens the store, connects to the broker, starts the runtime and binds the listener; then
/// serves in a task until `shutdown` completes, and shuts everything down in order.
pub async fn start(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, ServeError> {
    let store = match &settings.store {
        StoreSetting::Sled => AnyStore::Sled(
            SledStore::open_async(
                SledConfig::new(&settings.data_dir).durability(settings.durability),
            )
            .await
            .map_err(|source| ServeError::Store {
                path: settings.data_dir.display().to_string(),
                source,
            })?,
        ),
        StoreSetting::Postgres { url } => AnyStore::Postgres(
            PostgresStore::connect(PostgresConfig::new(url.clone()))
                .await
                .map_err(|source| ServeError::Database {
                    url: settings.store.shown(),
                    source,
                })?,
        ),
    };
    let link = MqttLink::connect(settings.link.clone())
        .await
        .map_err(|source| ServeError::Broker {
            broker: settings.broker_shown.clone(),
            source,
        })?;
    let link = Arc::new(link);
    // sled's directory is locked, so its process leads at once; instances on PostgreSQL lead
    // while they hold the database's lease.
    let mut builder = Fleet::builder(store.clone(), Arc::clone(&link)).config(FleetConfig {
        fail_commands_when_offline: settings.offline_commands == OfflineCommandsArg::Fail,
        // Only the AWS IoT Commands dialect has a topic for command status events.
        publish_command_status_changes: settings.link.layout.aws_commands(),
        ..FleetConfig::default()
    });
    if let Some(lease) = store.lease() {
        builder = builder.lease(lease);
    }
    let fleet = Arc::new(builder.start().await?);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: settings.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(
        %addr,
        broker = %settings.broker_shown,
        store = %settings.store.shown(),
        data_dir = %settings.data_dir.display(),
        topics = settings.link.layout.prefix(),
        shared_group = ?settings.link.shared_group,
        auth = ?settings.auth,
        "fleetops serve started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // Shared so the sender outlives the graceful-shutdown future: `stopping` must stay
    // readable (and `true`) until the last request is done.
    let stop_tx = Arc::new(stop_tx);
    let probe = Arc::clone(&link);
    let (figures_link, figures_store) = (Arc::clone(&link), store.clone());
    let state = ApiState {
        fleet: Arc::clone(&fleet),
        link_up: Arc::new(move || probe.is_connected()),
        stopping: stop_rx,
        adapters: Arc::new(move || AdapterFigures {
            link_up: figures_link.is_connected(),
            link: Some(figures_link.stats()),
            store: Some(figures_store.figures()),
        }),
    };
    let app = http::router(state, settings.auth.clone(), settings.max_body_bytes);
    let limits = ConnectionLimits {
        max_connections: settings.max_connections,
        header_timeout: settings.header_timeout,
    };
    let task = tokio::spawn(async move {
        let signal = Arc::clone(&stop_tx);
        let graceful = async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; finishing those in flight");
            let _ = signal.send(true);
        };
        serve_http(listener, app, limits, graceful).await;
        drop(stop_tx);
        stop_everything(fleet, store, link).await
    });
    Ok(Server { addr, task })
}

/// The transport-level protection of the HTTP server.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// Connections served at once; the next one is accepted only when one closes, so
    /// clients beyond the cap wait in the kernel's listen backlog.
    max_connections: usize,
    /// How long a client may take to send a request's headers; hyper closes the connection
    /// after that (this also ends idle keep-alive connections), so a slow or silent client
    /// cannot hold a connection slot for ever.
    header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets every
/// open connection finish its request in flight (idle ones close at once) and returns.
///
/// axum's own `serve` offers neither a header-read timeout nor a connection cap, so the
/// accept loop is here: each connection takes a permit of a semaphore before it is accepted
/// and keeps it until it closes, and is served by hyper's HTTP/1 with a timer, which is what
/// arms hyper's header-read timeout.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::sync::Semaphore;

    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(p) => p,
                // The semaphore is never closed.
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Per-connection failures (reset before accept) and resource exhaustion
                    // (EMFILE) are transient; back off briefly instead of spinning.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow with the server's age.
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(app.clone());
        let mut closing = closing_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let closed = async move {
                // The guard `wait_for` returns must not live across an await.
                let _ = closing.wait_for(|c| *c).await.is_ok();
            };
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = closed => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts and clients that go away are routine: debug, not warn.
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
}

async fn stop_everything(
    fleet: Arc<Fleet<AnyStore, Arc<MqttLink>>>,
    store: AnyStore,
    link: Arc<MqttLink>,
) -> Result<(), ServeError> {
    // The router and every request are gone once serving ended, so this is the last handle;
    // a few retries cover connection tasks that are still being dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fleet = fleet;
    let owned = loop {
        match Arc::try_unwrap(fleet) {
            Ok(f) => break Some(f),
            Err(shared) if Instant::now() < deadline => {
                fleet = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                tracing::warn!("the runtime is still shared; stopping it by dropping it");
                break None;
            }
        }
    };
    if let Some(f) = owned {
        f.shutdown().await;
    }
    // sled is flushed; PostgreSQL's appends are committed when acknowledged, and closing
    // its connections gives the lease up at once, so another instance need not wait.
    tracing::info!("runtime stopped; closing the store");
    let flushed = store.close().await.map_err(ServeError::Flush);
    link.shutdown().await;
    tracing::info!("disconnected from the broker; bye");
    flushed
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives after the server announced its address, but before its task got to
/// wait for the signal, must start the graceful shutdown, not kill the process.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        {
            let wait = |stream: std::io::Result<tokio::signal::unix::Signal>,
                        name: &'static str| async move {
                match stream {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received"),
                () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received");
        }
    }
}

fn init_tracing(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&settings.log_filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter `{}`: {e}", settings.log_filter))?;
    // Colour codes only on a terminal: in a file or a log collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

/// Runs `fleetops serve` until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(args)?;
    init_tracing(&settings)?;
    let server = start(settings, shutdown_signal()).await?;
    // On stdout, alone on its line, so scripts and tests can read the real port.
    println!("listening on http://{}", server.local_addr());
    server.wait().await?;
    Ok(())
}
