//! `fleetops simulate`.

use clap::Args;

/// Arguments of `fleetops simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {}

/// Runs `fleetops simulate`.
pub async fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`fleetops simulate` is not implemented yet")
}
