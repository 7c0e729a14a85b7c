//! `fleetops serve`.

use clap::Args;

/// Arguments of `fleetops serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {}

/// Runs `fleetops serve`.
pub async fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`fleetops serve` is not implemented yet")
}
