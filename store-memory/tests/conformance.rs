//! Runs the store conformance suite against `MemoryStore`, the reference implementation.

use fleetops_store_memory::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    fleetops_core::testkit::conformance::run(|| async { MemoryStore::new() }).await;
}
