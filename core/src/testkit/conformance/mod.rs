//! The store conformance suite: the executable form of the [`EventStore`] contract.
//!
//! Every storage backend runs [`run`] from one of its tests, inside a multi-threaded tokio
//! runtime so that the racing cases really race:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn conformance() {
//!     fleetops_core::testkit::conformance::run(|| async { MyStore::new() }).await;
//! }
//! ```
//!
//! Each case takes a fresh, empty store and panics with a message naming the broken rule.
//! The cases are also public one by one, so a backend can run them as separate tests or
//! skip the slow [`large_stream`] in a quick loop ([`run_quick`]).
//!
//! Besides the rules written in `store.rs`, the suite pins down a few choices the port leaves
//! implicit, because projections and the runtime rely on them:
//! - `from` 0 in `read_stream` / `read_all` reads as 1 (versions and positions are 1-based);
//!   a `limit` of 0 returns nothing; `usize::MAX` is a valid limit.
//! - A batch that fails (conflict or invalid shape) does not consume its idempotency key, so
//!   the caller can re-decide and retry under the same key.
//! - The idempotency key is checked before the version expectations: the retry of a
//!   `NoStream` append returns the first result rather than a conflict.
//! - Readers never see part of a batch, nor a position before the ones below it.
//!
//! The suite needs a tokio runtime with timers enabled (`#[tokio::test]` enables them): every
//! wait on the store is bounded, so a stuck store fails with a message instead of hanging.
//! Event ids are deterministic UUIDv7 values derived from a counter, since the core has no
//! random source.

use std::future::Future;

use crate::store::EventStore;

// Cases by what they check; the helpers below them name no case, so the suite stays a DAG.
mod appends;
mod concurrency;
mod reads;
mod snapshots;
mod subscriptions;

mod calls;
mod checks;
mod inputs;

pub use appends::{expected_versions, idempotency_keys, invalid_batches, multi_stream_atomicity};
pub use concurrency::{
    concurrent_writers_global_order, live_followers_under_concurrent_appends,
    racing_appenders_on_one_stream, racing_multi_stream_batches,
};
pub use reads::{append_and_read, large_stream};
pub use snapshots::snapshots;
pub use subscriptions::{subscription_catch_up_then_live, subscription_from_empty_store};

/// Runs every case, each on a fresh store from `make_store`.
///
/// Call it inside `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]`; panics with a
/// message naming the broken rule.
pub async fn run<S, F, Fut>(mut make_store: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    run_quick(&mut make_store).await;
    announce("large_stream");
    large_stream(make_store().await).await;
}

/// Runs every case except [`large_stream`], each on a fresh store from `make_store`.
pub async fn run_quick<S, F, Fut>(mut make_store: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                announce(stringify!($case));
                $case(make_store().await).await;
            )*
        };
    }
    cases!(
        append_and_read,
        expected_versions,
        multi_stream_atomicity,
        invalid_batches,
        racing_appenders_on_one_stream,
        racing_multi_stream_batches,
        concurrent_writers_global_order,
        live_followers_under_concurrent_appends,
        idempotency_keys,
        subscription_from_empty_store,
        subscription_catch_up_then_live,
        snapshots,
    );
}

/// Names the case about to run, so a failure or a hang in the captured output is attributable.
fn announce(case: &str) {
    eprintln!("conformance: {case}");
}
