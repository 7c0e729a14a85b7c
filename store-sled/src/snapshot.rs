//! Snapshots (`EventStore::save_snapshot`) as files beside the database, not sled values.
//!
//! A snapshot is one large blob (tens of MB for a big fleet's read model). Written as a sled
//! value through the writer thread, three such saves made a 100,000-device job 3.4–4.3 times
//! slower (`BENCHMARKS.md`); as a file written on the blocking pool they cost the appends
//! nothing but one flush. The file is `{db}/fleetops-snapshots/{name}.snap`:
//!
//! ```text
//! magic "FOSNAP01" (8 bytes) | position u64 BE | length u64 BE | CRC-32 of the payload u32 BE | payload
//! ```
//!
//! Durability: the store is flushed first, so every event up to the snapshot's position is on
//! disk before the snapshot is; the file is written to a temporary name, synced, renamed over
//! the old one and the directory synced, so a crash leaves the old snapshot or the new one,
//! never a mix. Damage (bad magic, length or CRC) reads as [`StoreError::Corrupt`].

use std::io::Write;
use std::path::{Path, PathBuf};

use fleetops_core::store::{Snapshot, StoreError};

const MAGIC: &[u8; 8] = b"FOSNAP01";
const HEADER: usize = 8 + 8 + 8 + 4;
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
    let len = word(16);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&data[24..28]);
    let payload = &data[HEADER..];
    if payload.len() as u64 != len {
        return Err(corrupt("length does not match the header (truncated?)"));
    }
    if crc32fast::hash(payload) != u32::from_be_bytes(crc) {
        return Err(corrupt("CRC mismatch"));
    }
    Ok(Some(Snapshot {
        position,
        bytes: payload.to_vec(),
    }))
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
            // A flipped position byte still reads (the runtime checks positions); the rest is
            // refused.
            match read(&path) {
                Ok(Some(got)) => assert!((8..16).contains(&i) && got.bytes == s.bytes, "{i}"),
                Ok(None) => panic!("{i}"),
                Err(StoreError::Corrupt { .. }) => {}
                Err(e) => panic!("{i}: {e}"),
            }
        }
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
