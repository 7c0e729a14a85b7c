//! `fleetops bench`.

use clap::Args;

/// Arguments of `fleetops bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {}

/// Runs `fleetops bench`.
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("`fleetops bench` is not implemented yet")
}
