//! # fleetops-server
//!
//! The `fleetops` binary and the pieces it is built from, exposed as a library so the
//! integration tests can drive them in-process:
//!
//! - [`cli`]: argument parsing (clap) and dispatch to the subcommands;
//! - [`demo`]: an in-process MQTT broker on a free loopback port, sled in a temporary
//!   directory and a few hundred simulated devices, with live progress;
//! - [`serve`]: the service for real use — broker connection, sled data directory and the
//!   HTTP API ([`http`]) with the operators' web console ([`console`]);
//! - [`simulate`]: N simulated devices against a broker;
//! - [`mod@bench`]: end-to-end load through a real broker beside the raw-MQTT baseline.
//!
//! Library logic lives in the other crates; this one only wires them together.
//!
//! Running the service in-process, as the tests do, with a shutdown future of your choice
//! (`config::Settings::from_args` builds the settings from the same arguments `serve` takes):
//!
//! ```no_run
//! # async fn run(settings: fleetops_server::config::Settings) -> Result<(), fleetops_server::serve::ServeError> {
//! let server = fleetops_server::serve::start(settings, fleetops_server::serve::shutdown_signal()).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.wait().await
//! # }
//! ```
//!
//! Features: none. To embed fleetops in your own service rather than run this one, see
//! `docs/embedding.md`.

pub mod bench;
pub mod broker;
pub mod broker_url;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod devices;
pub mod http;
pub mod serve;
pub mod simulate;
pub mod store;

/// Logs to stderr for the interactive commands (`demo`, `simulate`, `bench`): errors only
/// unless `RUST_LOG` asks for more, since warnings (a reconnect, a refused message) would
/// garble their progress output. `serve` configures its own logging.
pub(crate) fn log_errors_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
