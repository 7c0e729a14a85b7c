//! `fleetops`: the ready-to-run binary. See the crate's library docs for the subcommands.

fn main() -> std::process::ExitCode {
    fleetops_server::cli::main()
}
