//! `fleetops`: the ready-to-run binary. See the crate's library docs for the subcommands.

/// mimalloc rather than glibc's malloc: the runtime allocates many small, short-lived buffers
/// across threads (messages, events, replies), where glibc's arenas showed as about a tenth of
/// the CPU in a profile of command throughput (see `BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fleetops_server::cli::main()
}
