//! The write-ahead log that makes a group durable in `Durability::FlushEveryBatch` mode.
//!
//! sled's own flush hands the log write to one of sled's I/O threads and waits on a condition
//! variable for it: two thread wake-ups around one `pwrite` + `sync_file_range`, about 115 µs
//! where the system calls alone take about 50 µs (figures in `BENCHMARKS.md`). So a group's
//! writes are also appended here, by whoever commits the group, and made durable with the same
//! system calls on the committing thread; sled is flushed only now and then, at a
//! *checkpoint*, after which the log starts over.
//!
//! - **Order.** A group's record is written before its sled writes, under the store's state
//!   lock, so the log holds every group sled may have applied since the last checkpoint, in
//!   commit order.
//! - **Durability.** [`Wal::sync`] is `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` over
//!   everything written since the last sync: the same guarantee as sled's flush (the data is
//!   on the device, the device's volatile cache is not flushed; see the README). A sync covers
//!   every record before its mark, so one sync answers a whole pipeline of groups.
//! - **Checkpoint.** Once the log is past [`CHECKPOINT_BYTES`], sled is flushed (which covers
//!   every group applied so far) and the log is truncated; a sync of a mark from before the
//!   truncation has nothing left to do.
//! - **Recovery.** At open every whole record is applied to sled again, in order, then sled is
//!   flushed and the log truncated. A record holds the exact keys and values (or removals) of
//!   its group, so applying it again over any prefix of its own effects gives the same state.
//!   A record cut short by a crash (its length or CRC-32 does not check) ends the log: it was
//!   never synced, so no append of it was acknowledged, and the sled writes that follow a
//!   record were not started either.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::Path;
use std::sync::Mutex;

/// The log's file name inside the store's directory.
pub(crate) const FILE_NAME: &str = "fleetops-wal";
/// The size past which the writer checkpoints: flushes sled and starts the log over.
pub(crate) const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes before each record's body: its length and CRC-32.
const RECORD_HEADER: usize = 8;
/// An operation of a record: set a key.
const OP_INSERT: u8 = 1;
/// An operation of a record: remove a key.
const OP_REMOVE: u8 = 2;

/// One write of a group: a key and its new value, or `None` to remove it.
pub(crate) type Write = (sled::IVec, Option<sled::IVec>);

/// Where a record ends, in the log of a given generation (a checkpoint starts the next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    generation: u64,
    end: u64,
}

struct Log {
    file: File,
    /// Bytes written to the current generation.
    len: u64,
    /// Bytes of the current generation known to be on the device.
    synced: u64,
    generation: u64,
    /// Reused for each record's bytes.
    buf: Vec<u8>,
}

/// The store's write-ahead log (see the module docs).
pub(crate) struct Wal {
    log: Mutex<Log>,
    /// The same file, for syncs that run without the lock.
    sync_file: File,
}

impl Wal {
    /// Opens the log in `dir`, applies every whole record to `tree`, flushes sled and starts
    /// the log over. Returns the log and how many records were applied again.
    pub(crate) fn open_and_replay(dir: &Path, tree: &sled::Tree) -> Result<(Self, u64), String> {
        let path = dir.join(FILE_NAME);
        let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
        let mut replayed = 0;
        let mut whole = 0;
        for (record, end) in records(&bytes) {
            whole = end;
            let mut batch = sled::Batch::default();
            for (key, value) in record.map_err(|e| format!("{}: {e}", path.display()))? {
                match value {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
            }
            tree.apply_batch(batch)
                .map_err(|e| format!("replaying {}: {e}", path.display()))?;
            replayed += 1;
        }
        if whole < bytes.len() {
            // A crash in the middle of a record's write leaves it short, and a power loss
            // can leave an unsynced tail damaged: never acknowledged either way, since a
            // sync covers every record before its mark. Said aloud all the same, as damage
            // to the disk would look the same.
            tracing::warn!(
                at = whole,
                dropped = bytes.len() - whole,
                "the write-ahead log ends with bytes that are not a whole record; dropped"
            );
        }
        if replayed > 0 || !bytes.is_empty() {
            tree.flush()
                .map_err(|e| format!("flushing sled after replaying the log: {e}"))?;
            file.set_len(0).map_err(|e| io("truncating", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
        }
        let sync_file = file.try_clone().map_err(|e| io("duplicating", e))?;
        Ok((
            Self {
                log: Mutex::new(Log {
                    file,
                    len: 0,
                    synced: 0,
                    generation: 0,
                    buf: Vec::new(),
                }),
                sync_file,
            },
            replayed,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic cannot leave the log half updated in a way later code relies on (the
        // lengths only grow after a successful write), so a poisoned lock is taken as is.
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends one group's writes as a record (not yet synced).
    pub(crate) fn append<'a>(
        &self,
        writes: impl IntoIterator<Item = &'a Write>,
    ) -> std::io::Result<Mark> {
        use std::os::unix::fs::FileExt as _;
        let mut log = self.lock();
        let log = &mut *log;
        log.buf.clear();
        log.buf.extend_from_slice(&[0; RECORD_HEADER]);
        for (key, value) in writes {
            match value {
                Some(v) => {
                    log.buf.push(OP_INSERT);
                    put_bytes(&mut log.buf, key);
                    put_bytes(&mut log.buf, v);
                }
                None => {
                    log.buf.push(OP_REMOVE);
                    put_bytes(&mut log.buf, key);
                }
            }
        }
        let body = &log.buf[RECORD_HEADER..];
        let len = u32::try_from(body.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a group over 4 GiB")
        })?;
        let crc = crc32fast::hash(body);
        log.buf[..4].copy_from_slice(&len.to_le_bytes());
        log.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        log.file.write_all_at(&log.buf, log.len)?;
        log.len += log.buf.len() as u64;
        Ok(Mark {
            generation: log.generation,
            end: log.len,
        })
    }

    /// Makes every record up to `mark` durable (nothing to do if a checkpoint came since).
    pub(crate) fn sync(&self, mark: Mark) -> std::io::Result<()> {
        let from = {
            let log = self.lock();
            if log.generation != mark.generation || log.synced >= mark.end {
                return Ok(());
            }
            log.synced
        };
        sync_range(&self.sync_file, from, mark.end)?;
        let mut log = self.lock();
        if log.generation == mark.generation && log.synced < mark.end {
            log.synced = mark.end;
        }
        Ok(())
    }

    /// Whether the log is due for a checkpoint.
    pub(crate) fn checkpoint_due(&self) -> bool {
        self.lock().len >= CHECKPOINT_BYTES
    }

    /// Flushes sled, which makes every group applied so far durable there, and starts the log
    /// over. The caller holds the store's state lock, so no group is applied meanwhile.
    pub(crate) fn checkpoint(&self, tree: &sled::Tree) -> Result<(), String> {
        let mut log = self.lock();
        tree.flush()
            .map_err(|e| format!("sled flush at a log checkpoint failed: {e}"))?;
        log.file
            .set_len(0)
            .map_err(|e| format!("truncating the write-ahead log failed: {e}"))?;
        log.len = 0;
        log.synced = 0;
        log.generation += 1;
        Ok(())
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are far below 4 GiB: sled itself refuses larger ones.
    buf.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// The whole records of a log, each as its writes; ends at the first record cut short. A
/// record whose CRC checks but whose body does not parse is an error (a bug, not a crash).
/// Each item also says where its record ends.
fn records(bytes: &[u8]) -> impl Iterator<Item = (Result<Vec<Write>, String>, usize)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + RECORD_HEADER)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
        let body = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len)?;
        if crc32fast::hash(body) != crc || len == 0 {
            return None;
        }
        let start = at;
        at += RECORD_HEADER + len;
        let parsed = parse(body).ok_or_else(|| format!("a malformed record at byte {start}"));
        Some((parsed, at))
    })
}

fn parse(mut body: &[u8]) -> Option<Vec<Write>> {
    fn take<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
        let bytes = body.get(4..4 + len)?;
        *body = &body[4 + len..];
        Some(bytes)
    }
    let mut out = Vec::new();
    while let Some((&op, rest)) = body.split_first() {
        body = rest;
        let key = sled::IVec::from(take(&mut body)?);
        let value = match op {
            OP_INSERT => Some(sled::IVec::from(take(&mut body)?)),
            OP_REMOVE => None,
            _ => return None,
        };
        out.push((key, value));
    }
    Some(out)
}

/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` over `from..to`, as sled's own flush
/// does; `fdatasync` where that call does not exist.
fn sync_range(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd as _;
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return file.sync_data();
        };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // The only unsafe code of the workspace: no safe wrapper of this call exists in the
        // dependency tree (sled makes the same call the same way).
        // SAFETY: a plain system call on a descriptor `file` keeps open for its duration,
        // with integer arguments only; it reads or writes no memory of ours.
        #[allow(unsafe_code)]
        let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOSYS) {
            return file.sync_data();
        }
        Err(err)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (from, to);
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(k: &str, v: Option<&str>) -> Write {
        (k.as_bytes().into(), v.map(|v| v.as_bytes().into()))
    }

    /// An empty log in a fresh directory, beside a tree of a temporary sled.
    fn fresh() -> (tempfile::TempDir, sled::Db, sled::Tree, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let (wal, n) = Wal::open_and_replay(dir.path(), &tree).unwrap();
        assert_eq!(n, 0);
        (dir, db, tree, wal)
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_ends_the_log() {
        let (dir, _db, tree, wal) = fresh();
        let first = [w("a", Some("1")), w("b", Some("2"))];
        let second = [w("a", None), w("c", Some("3"))];
        wal.append(&first).unwrap();
        let mark = wal.append(&second).unwrap();
        wal.sync(mark).unwrap();
        wal.append(&[w("d", Some("4"))]).unwrap();
        drop(wal);
        // Cut the last record short, as a crash in the middle of its write would.
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_wal, n) = Wal::open_and_replay(dir.path(), &tree).unwrap();
        assert_eq!(n, 2);
        assert_eq!(tree.get("a").unwrap(), None);
        assert_eq!(tree.get("b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(tree.get("c").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(tree.get("d").unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "started over");
    }

    #[test]
    fn a_sync_from_before_a_checkpoint_has_nothing_to_do() {
        let (_dir, _db, tree, wal) = fresh();
        let mark = wal.append(&[w("a", Some("1"))]).unwrap();
        wal.checkpoint(&tree).unwrap();
        wal.sync(mark).unwrap();
        let next = wal.append(&[w("b", Some("2"))]).unwrap();
        assert_eq!(next.generation, mark.generation + 1);
        wal.sync(next).unwrap();
    }
}
