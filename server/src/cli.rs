//! Command-line parsing and dispatch.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

use crate::{bench, demo, serve, simulate};

/// fleetops: commands and jobs for IoT fleets over MQTT.
#[derive(Debug, Parser)]
#[command(name = "fleetops", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `fleetops`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a self-contained demo: an in-process MQTT broker, sled in a temporary directory and
    /// a few hundred simulated devices.
    Demo(demo::DemoArgs),
    /// Run the service: connect to a broker, keep state in a sled data directory and serve the
    /// HTTP API.
    Serve(serve::ServeArgs),
    /// Run simulated devices against a broker.
    Simulate(simulate::SimulateArgs),
    /// Measure end-to-end load through a broker beside the raw-MQTT baseline.
    Bench(bench::BenchArgs),
}

/// Parses the arguments, runs the subcommand and maps its result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
