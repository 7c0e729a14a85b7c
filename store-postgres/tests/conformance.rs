//! Core's store conformance suite against `PostgresStore`: one throwaway server, a fresh
//! schema (so a fresh, empty store) per case.

use fleetops_core::testkit::conformance;
use fleetops_store_postgres::testing::TestPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(pg) = TestPostgres::start_or_skip() else {
        return;
    };
    conformance::run(|| async { pg.fresh_store().await.expect("open a fresh store") }).await;
}
