//! Snapshots (`EventStore::save_snapshot`) as files beside the database, not sled values.
//!
//! A snapshot is one large blob (tens of MB for a big fleet's read model). Written as a sled
//! value through the writer thread, three such saves made a 100,000-device job 3.4–4.3 times
//! slower (`BENCHMARKS.md`); as a file written on the blocking pool they cost the appends
//! nothing but one flush. The file is `{db}/fleetops-snapshots/{name}.snap`:
//!
//! ```text
//! magic "FOSNAP02" (8 bytes) | position u64 BE | event key u64 BE | length u64 BE
//!   | CRC-32 of the payload u32 BE | payload
//! ```
//!
//! The event key is the fingerprint of the event stored at the snapshot's position
//! (`StoredEvent::fingerprint`): a save keyed to another event is refused, and a load checks
//! the key against the event now stored there. A snapshot that does not match (another
//! history at the same position, a position past the head), that is damaged (bad magic,
//! length or CRC) or that was written by an older layout is deleted with a warning and not
//! returned, so it can never be taken up later against a different history.
//!
//! Durability: a snapshot is never newer than the durable events. sled's flush writes its
//! log with `sync_file_range`, which does not make the data durable on every file system, so
//! before the snapshot file is written the store flushes sled and then `fsync`s sled's own
//! files in the database directory ([`sync_database`]). The snapshot file is written to a
//! temporary name, synced, renamed over the old one and the directory synced, so a crash
//! leaves the old snapshot or the new one, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use fleetops_core::store::{Snapshot, StoreError};

const MAGIC: &[u8; 8] = b"FOSNAP02";
const HEADER: usize = 8 + 8 + 8 + 8 + 4;
/// The folder inside the database directory (sled owns the rest of it).
const DIR: &str = "fleetops-snapshots";

/// The file of snapshot `name`: the name itself when it is a plain file name, else a hash of
/// it (callers pick names freely; the file system must not see `/` or `..`).
pub(crate) fn file(db: &Path, name: &str) -> PathBuf {
    let plain = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let stem = if plain {
        name.to_owned()
    } else {
        format!("x{:08x}", crc32fast::hash(name.as_bytes()))
    };
    db.join(DIR).join(format!("{stem}.snap"))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend {
        detail: format!("{what} {}: {e}", path.display()),
    }
}

/// Writes `snapshot` atomically (temporary file, sync, rename, directory sync).
pub(crate) fn write(path: &Path, snapshot: &Snapshot) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(path);
    std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    let tmp = path.with_extension("snap.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&snapshot.position.to_be_bytes());
    header.extend_from_slice(&snapshot.event_key.to_be_bytes());
    header.extend_from_slice(&(snapshot.bytes.len() as u64).to_be_bytes());
    header.extend_from_slice(&crc32fast::hash(&snapshot.bytes).to_be_bytes());
    f.write_all(&header)
        .and_then(|()| f.write_all(&snapshot.bytes))
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename durable; a file system that cannot sync a directory still renamed.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the snapshot at `path`, `None` when there is none.
pub(crate) fn read(path: &Path) -> Result<Option<Snapshot>, StoreError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path, e)),
    };
    let corrupt = |detail: &str| StoreError::Corrupt {
        location: path.display().to_string(),
        detail: detail.to_owned(),
    };
    if data.len() < HEADER || &data[..8] != MAGIC {
        return Err(corrupt(
            "not a fleetops snapshot (bad magic or short header)",
        ));
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let position = word(8);
    let event_key = word(16);
    let len = word(24);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&data[32..36]);
    let payload = &data[HEADER..];
    if payload.len() as u64 != len {
        return Err(corrupt("length does not match the header (truncated?)"));
    }
    if crc32fast::hash(payload) != u32::from_be_bytes(crc) {
        return Err(corrupt("CRC mismatch"));
    }
    Ok(Some(Snapshot {
        position,
        event_key,
        bytes: payload.to_vec(),
    }))
}

/// Deletes the snapshot at `path`; a missing one is fine.
pub(crate) fn delete(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("deleting", path, e)),
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            // Makes the removal durable, so a deleted snapshot does not come back.
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// `fsync`s every file sled keeps in the database directory `db` (its log file `db`, its
/// `conf`, its own `snap.*` files and everything under `blobs/`), and the directory itself.
///
/// Called after sled's flush, which only `sync_file_range`s its writes: on return the
/// events that flush covered are durable, so a snapshot written next can never be newer
/// than the events it reflects. The snapshot folder is left out (it is fleetops', synced by
/// [`write`]).
pub(crate) fn sync_database(db: &Path) -> Result<(), StoreError> {
    fn sync_dir(dir: &Path, top: bool) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io("listing", dir, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io("inspecting", &path, e))?;
            if kind.is_dir() {
                if !(top && entry.file_name() == DIR) {
                    sync_dir(&path, false)?;
                }
            } else if kind.is_file() {
                // fsync works on the file, whatever descriptor it is called through, so
                // this syncs what sled wrote through its own.
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io("syncing", &path, e))?;
            }
        }
        if let Ok(d) = std::fs::File::open(dir) {
            // New files (a blob, a sled snapshot) must be found again after a crash.
            let _ = d.sync_all();
        }
        Ok(())
    }
    sync_dir(db, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_damage_is_corrupt_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "fleet");
        assert_eq!(read(&path).unwrap(), None);
        let s = Snapshot {
            position: 42,
            event_key: 0x0123_4567_89ab_cdef,
            bytes: b"{\"state\":true}".to_vec(),
        };
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), Some(s.clone()));
        let good = std::fs::read(&path).unwrap();
        for n in 0..good.len() {
            std::fs::write(&path, &good[..n]).unwrap();
            assert!(
                matches!(read(&path), Err(StoreError::Corrupt { .. })),
                "cut at {n}"
            );
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x01;
            std::fs::write(&path, &b).unwrap();
            // A flipped position or key byte still reads (the store checks both against the
            // feed); the rest is refused.
            match read(&path) {
                Ok(Some(got)) => assert!((8..24).contains(&i) && got.bytes == s.bytes, "{i}"),
                Ok(None) => panic!("{i}"),
                Err(StoreError::Corrupt { .. }) => {}
                Err(e) => panic!("{i}: {e}"),
            }
        }
    }

    #[test]
    fn delete_removes_the_file_and_a_missing_one_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "fleet");
        delete(&path).unwrap();
        let s = Snapshot {
            position: 1,
            event_key: 7,
            bytes: vec![1],
        };
        write(&path, &s).unwrap();
        delete(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn sync_database_syncs_nested_files_and_skips_nothing_it_cannot_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"log").unwrap();
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs").join("1"), b"blob").unwrap();
        write(
            &file(dir.path(), "fleet"),
            &Snapshot {
                position: 0,
                event_key: 0,
                bytes: vec![],
            },
        )
        .unwrap();
        sync_database(dir.path()).unwrap();
        assert!(sync_database(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn names_never_escape_the_folder() {
        let db = Path::new("/db");
        assert_eq!(
            file(db, "fleet"),
            Path::new("/db/fleetops-snapshots/fleet.snap")
        );
        for bad in ["../x", "a/b", "", ".hidden", "é"] {
            let f = file(db, bad);
            assert_eq!(
                f.parent().unwrap(),
                Path::new("/db/fleetops-snapshots"),
                "{bad}"
            );
            assert!(
                f.file_name().unwrap().to_str().unwrap().starts_with('x'),
                "{bad}"
            );
        }
    }
}
