//! The `fleetops` binary as the black-box tests run it: the same entry point as the server
//! crate's `fleetops`, built as a target of this package (see `tests/Cargo.toml` for why).

fn main() -> std::process::ExitCode {
    fleetops_server::cli::main()
}
