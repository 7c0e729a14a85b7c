//! `fleetops demo`.

use clap::Args;

/// Arguments of `fleetops demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Runs `fleetops demo`.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("`fleetops demo` is not implemented yet")
}
