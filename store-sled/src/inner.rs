//! The parts of an open store that every handle shares: the sled tree, the writer thread and
//! its queue, the [`Shared`] state. Closing happens here, when the last handle lets go.
//!
//! `SledStore`, `Projection` and subscriptions each hold an `Arc<Inner>`; the read paths take
//! an `&Inner`. It knows the writer only as a thread to start, feed and join.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fleetops_core::store::StoreError;
use tokio::sync::mpsc;

use crate::config::{Durability, SledConfig};
use crate::shared::Shared;
use crate::tail::Tail;
use crate::wal::Wal;
use crate::writer::{FlushHandle, Request, Writer};

/// Requests that may wait for the writer before appenders are held back.
const QUEUE_CAPACITY: usize = 8192;

/// The parts of an open store; dropped when the last `SledStore` clone, `Projection` or
/// subscription is gone.
pub(crate) struct Inner {
    /// `None` only while dropping.
    tree: Option<sled::Tree>,
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// For inline appends that leave their sync to the flusher thread; `None` only while
    /// dropping (the flusher, and so the writer, finish only once it is gone).
    pub(crate) flusher: Option<FlushHandle>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    /// Whether appends may commit on the caller's thread (`SledConfig::inline_appends`).
    pub(crate) inline: bool,
    /// Declared last so a temporary directory is removed after sled has closed.
    _temp: Option<Arc<tempfile::TempDir>>,
}

impl Inner {
    /// Starts the writer thread on a database opened and recovered up to `head`.
    pub(crate) fn start(
        db: sled::Db,
        tree: sled::Tree,
        head: u64,
        wal: Wal,
        config: SledConfig,
    ) -> Result<Self, StoreError> {
        let wal = (config.durability == Durability::FlushEveryBatch).then_some(wal);
        let shared = Arc::new(Shared::new(
            head,
            Tail::new(config.tail_events, config.tail_bytes),
            wal,
        ));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer::new(db, tree.clone(), Arc::clone(&shared), &config);
        let flusher = writer.flush_handle();
        let handle = std::thread::Builder::new()
            .name("fleetops-sled-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend {
                detail: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            tree: Some(tree),
            tx: Some(tx),
            writer: Mutex::new(Some(handle)),
            flusher,
            shared,
            path: config.path,
            durability: config.durability,
            inline: config.inline_appends,
            _temp: config.temp,
        })
    }

    /// The store's tree; `Closed` only while the store is being dropped.
    pub(crate) fn tree(&self) -> Result<&sled::Tree, StoreError> {
        self.tree.as_ref().ok_or(StoreError::Closed)
    }

    /// Hands a request to the writer thread.
    pub(crate) async fn submit(&self, req: Request) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or(StoreError::Closed)?;
        // Counted before it is sent (the writer may handle it at once and uncount it), and
        // uncounted here if it never is: refused, or the caller dropped this future while
        // the queue was full. Once sent, the writer uncounts it when it is handled.
        let counted = Pending::count(&self.shared.pending);
        tx.send(req).await.map_err(|_| StoreError::Closed)?;
        counted.handed_over();
        Ok(())
    }
}

/// One request counted in `Shared::pending` until it reaches the writer thread.
struct Pending<'a>(Option<&'a AtomicUsize>);

impl<'a> Pending<'a> {
    fn count(pending: &'a AtomicUsize) -> Self {
        pending.fetch_add(1, Ordering::AcqRel);
        Self(Some(pending))
    }

    /// The writer has the request: it uncounts it.
    fn handed_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.0 {
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers are gone (they hold an `Arc<Inner>`). Drop our tree handle, then close the
        // channel: the writer drains it, flushes, and drops the last sled handle on its own
        // thread, so sled closes there rather than on whatever thread drops the store.
        self.tree = None;
        self.flusher = None;
        self.tx = None;
        let handle = self.writer.get_mut().ok().and_then(Option::take);
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the sled writer thread panicked");
            }
        }
        wait_for_release(&self.path);
    }
}

/// Waits (at most a second) until no one holds sled's lock on the database file.
///
/// sled 0.34 hands log writes and file truncations to its own I/O thread pool, whose tasks
/// keep the file open for a moment after the last `Db` handle is dropped. Without this wait a
/// store reopened right after being dropped (a restart in the same process, a test) can find
/// the file still locked.
fn wait_for_release(path: &Path) {
    use fs2::FileExt;
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return;
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                return;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => {
                tracing::warn!(error = %e, "sled still holds the database file after closing");
                return;
            }
        }
    }
}
