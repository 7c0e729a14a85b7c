//! Core's store conformance suite, run against `SledStore` in both durability modes.

use fleetops_core::testkit::conformance;
use fleetops_store_sled::{Durability, SledConfig, SledStore};

async fn fresh(durability: Durability) -> SledStore {
    let config = SledConfig::temporary()
        .expect("temporary directory")
        .durability(durability);
    SledStore::open_async(config)
        .await
        .expect("open a fresh store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_flush_every_batch() {
    conformance::run(|| fresh(Durability::FlushEveryBatch)).await;
}

/// The buffered mode shares every code path but the flush; the quick cases are enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_buffered() {
    conformance::run_quick(|| fresh(Durability::Buffered)).await;
}
