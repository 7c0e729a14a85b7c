//! Running sled code safely: its errors and its panics become [`StoreError`]s, and reads run
//! off the async worker threads.
//!
//! The bottom layer of the crate: every module that touches sled uses it, and it names no
//! other module of the crate (`blocking` is generic over what it hands the read, so it does
//! not need to know the open store).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use fleetops_core::store::StoreError;

/// Maps a sled error: its own corruption report stays `Corrupt`, the rest is `Backend`.
pub(crate) fn sled_error(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { at, .. } => StoreError::Corrupt {
            location: match at {
                Some(at) => format!("sled log at {at:?}"),
                None => "sled log".into(),
            },
            detail: "sled reported corruption".into(),
        },
        other => StoreError::Backend {
            detail: other.to_string(),
        },
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Runs sled code, turning a panic inside sled into an error: sled 0.34 has assertions that
/// fire on some damaged files, and the store promises an error, never a panic.
pub(crate) fn guarded<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(StoreError::Corrupt {
            location: what.to_owned(),
            detail: format!("panicked: {}", panic_message(&*panic)),
        })
    })
}

/// Runs a read off the async worker threads: on tokio's blocking pool when a runtime is
/// present, inline otherwise (a thread without a runtime is not a worker). `f` gets `ctx`,
/// which the blocking task keeps alive (the open store, for every caller today).
pub(crate) async fn blocking<C, T, F>(
    ctx: &Arc<C>,
    what: &'static str,
    f: F,
) -> Result<T, StoreError>
where
    C: Send + Sync + 'static,
    T: Send + 'static,
    F: FnOnce(&C) -> Result<T, StoreError> + Send + 'static,
{
    let ctx = Arc::clone(ctx);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(move || guarded(what, || f(&ctx)))
            .await
            .map_err(|e| StoreError::Backend {
                detail: format!("{what}: blocking task failed: {e}"),
            })?,
        Err(_) => guarded(what, || f(&ctx)),
    }
}
