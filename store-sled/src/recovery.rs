//! What opening a database checks and mends before the store starts: sled snapshots a crash
//! left unfinished, the format marker, the feed's head, and the index entries a crash may
//! have cut off after the last event.

use std::path::Path;

use fleetops_core::store::StoreError;

use crate::codec;
use crate::guard::sled_error;
use crate::read::missing;

/// Removes the snapshots of sled's page table that a crash left half written, before sled
/// opens `dir`.
///
/// sled 0.34 writes a snapshot to `snap.{lsn}.generating`, syncs it and only then renames it
/// to `snap.{lsn}`, but at open it takes the newest file starting with `snap.`, finished or
/// not: after a kill in the middle of a snapshot it reads the torn file, finds its checksum
/// wrong and refuses the whole database as corrupt. A `.generating` file is never the only
/// copy of anything (a snapshot only speeds up sled's recovery, which otherwise reads its
/// log from an earlier snapshot or the start), so removing it loses nothing.
pub(crate) fn remove_unfinished_sled_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A new store: sled creates the directory.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Backend {
                detail: format!("list {}: {e}", dir.display()),
            })
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| StoreError::Backend {
                detail: format!(
                    "remove the unfinished sled snapshot {}: {e}",
                    path.display()
                ),
            })?;
            tracing::warn!(path = %path.display(), "removed a sled snapshot a crash left unfinished");
        }
    }
    Ok(())
}

/// Refuses a database written by an unknown layout; stamps a new one.
pub(crate) fn check_format(tree: &sled::Tree) -> Result<(), StoreError> {
    match tree.get(codec::FORMAT_KEY).map_err(sled_error)? {
        Some(v) if v.as_ref() == codec::FORMAT_MARKER => Ok(()),
        Some(v) => Err(StoreError::Backend {
            detail: format!(
                "unsupported store format {:?}, this build reads {:?}",
                String::from_utf8_lossy(&v),
                String::from_utf8_lossy(codec::FORMAT_MARKER)
            ),
        }),
        None => {
            if let Some(first) = tree.first().map_err(sled_error)? {
                return Err(StoreError::Corrupt {
                    location: "store metadata".into(),
                    detail: format!(
                        "format marker missing from a non-empty store (first key {})",
                        codec::show_key(&first.0)
                    ),
                });
            }
            tree.insert(codec::FORMAT_KEY, codec::FORMAT_MARKER)
                .map_err(sled_error)?;
            tree.flush().map_err(sled_error)?;
            Ok(())
        }
    }
}

/// The last stored position, from the last `E` key; checks the feed starts at 1.
pub(crate) fn recover_head(tree: &sled::Tree) -> Result<u64, StoreError> {
    let events = || tree.range(codec::event_key(0)..=codec::event_key(u64::MAX));
    let Some(last) = events().next_back() else {
        return Ok(0);
    };
    let head = codec::event_key_position(&last.map_err(sled_error)?.0)?;
    let first = match events().next() {
        Some(item) => codec::event_key_position(&item.map_err(sled_error)?.0)?,
        None => head,
    };
    if first != 1 {
        return Err(StoreError::Corrupt {
            location: "event at position 1".into(),
            detail: format!("the feed starts at position {first}"),
        });
    }
    Ok(head)
}

/// Restores what a crash may have cut off after the last event: single-event appends are
/// written key by key — the event, then its run, then its idempotency entry (see
/// `Committer::apply` in the writer) — and sled recovers a prefix of its log, so only the
/// last event can lack the entries written after it. Both are derived from the event record
/// itself. Anything else that does not fit is reported as corrupt, never guessed at.
pub(crate) fn repair_last(tree: &sled::Tree, head: u64) -> Result<bool, StoreError> {
    if head == 0 {
        return Ok(false);
    }
    let key = codec::event_key(head);
    let value = tree
        .get(key)
        .map_err(sled_error)?
        .ok_or_else(|| missing(head))?;
    let event = codec::decode_event(head, &key, &value)?;
    let prefix = codec::run_prefix(&event.stream);
    let last_version = match tree.scan_prefix(&prefix).next_back() {
        None => 0,
        Some(item) => {
            let (k, v) = item.map_err(sled_error)?;
            codec::decode_run(&prefix, &k, &v)?.last_version()
        }
    };
    let mut repaired = false;
    if last_version < event.stream_version {
        if last_version + 1 != event.stream_version {
            return Err(StoreError::Corrupt {
                location: format!("event at position {head}"),
                detail: format!(
                    "version {} of stream {} follows version {last_version}",
                    event.stream_version, event.stream
                ),
            });
        }
        let run_key = codec::run_key(&prefix, event.stream_version);
        let run = codec::encode_run(&run_key, head, 1);
        tree.insert(run_key, run).map_err(sled_error)?;
        repaired = true;
    }
    if let Some(idem) = &event.idempotency_key {
        let k = codec::idem_key(idem);
        if tree.get(&k).map_err(sled_error)?.is_none() {
            let appended = fleetops_core::store::Appended {
                first_position: head,
                last_position: head,
                versions: vec![(event.stream.clone(), event.stream_version)],
            };
            let v = codec::encode_appended(&k, &appended);
            tree.insert(k, v).map_err(sled_error)?;
            repaired = true;
        }
    }
    if repaired {
        tracing::warn!(
            position = head,
            stream = %event.stream,
            "restored the index entries of the last event, cut off by a crash"
        );
        tree.flush().map_err(sled_error)?;
    }
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use fleetops_core::event::Event;
    use fleetops_core::store::{
        AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, NewEvent,
    };
    use fleetops_core::time::Timestamp;
    use fleetops_core::StreamId;

    use super::*;
    use crate::store::TREE_NAME;
    use crate::{Durability, SledConfig, SledStore};

    fn event(n: u64) -> NewEvent {
        NewEvent::new(
            uuid::Uuid::from_u128(u128::from(n) + 1),
            Event::CommandCanceled {
                at: Timestamp::from_millis(n),
                reason: Some(format!("e{n}")),
            },
            Timestamp::from_millis(n),
        )
    }

    async fn open(dir: &Path, durability: Durability) -> SledStore {
        SledStore::open_async(SledConfig::new(dir).durability(durability))
            .await
            .expect("open")
    }

    /// A crash between the last event and the entries written after it (simulated by
    /// removing them from sled): reopening restores them, so versions, reads and the
    /// idempotent retry are as if the append had been whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_crash_cut_off_after_the_last_event_is_restored_at_open() {
        for durability in [Durability::FlushEveryBatch, Durability::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let a = StreamId::custom("a").unwrap();
            let key = IdempotencyKey("the-last-append".into());
            let last = {
                let store = open(dir.path(), durability).await;
                let single = |v, n| AppendBatch::single(a.clone(), v, vec![event(n)]);
                store
                    .append(single(ExpectedVersion::NoStream, 1))
                    .await
                    .unwrap();
                let last = store
                    .append(single(ExpectedVersion::Exact(1), 2).idempotent(key.clone()))
                    .await
                    .unwrap();
                store.flush().await.unwrap();
                last
            };
            {
                let db = sled::Config::new().path(dir.path()).open().unwrap();
                let tree = db.open_tree(TREE_NAME).unwrap();
                let prefix = codec::run_prefix(&a);
                assert!(tree.remove(codec::run_key(&prefix, 2)).unwrap().is_some());
                assert!(tree.remove(codec::idem_key(&key)).unwrap().is_some());
                db.flush().unwrap();
            }

            let store = open(dir.path(), durability).await;
            assert_eq!(store.stream_version(&a).await.unwrap(), Some(2));
            let read: Vec<(u64, u64)> = store
                .read_stream(&a, 1, 10)
                .await
                .unwrap()
                .iter()
                .map(|e| (e.stream_version, e.position))
                .collect();
            assert_eq!(read, vec![(1, 1), (2, 2)]);
            // The retry answers with the first result and stores nothing.
            let again = store
                .append(
                    AppendBatch::single(a.clone(), ExpectedVersion::Exact(1), vec![event(3)])
                        .idempotent(key.clone()),
                )
                .await
                .unwrap();
            assert_eq!(again, last);
            assert_eq!(store.head_position().await.unwrap(), 2);
            // The stream goes on at version 3.
            let next = store
                .append(AppendBatch::single(
                    a.clone(),
                    ExpectedVersion::Exact(2),
                    vec![event(4)],
                ))
                .await
                .unwrap();
            assert_eq!((next.first_position, next.versions[0].1), (3, 3));
        }
    }

    /// A kill while sled wrote a snapshot leaves a torn `snap.*.generating` file, which sled
    /// 0.34 would read at the next open and refuse the database over: the store removes it
    /// first and opens with everything that was acknowledged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sled_snapshot_a_crash_left_unfinished_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        let a = StreamId::custom("a").unwrap();
        {
            let store = open(dir.path(), Durability::FlushEveryBatch).await;
            store
                .append(AppendBatch::single(
                    a.clone(),
                    ExpectedVersion::NoStream,
                    vec![event(1)],
                ))
                .await
                .unwrap();
        }
        // The newest name sled could look for, half written: no length or checksum at its end
        // that matches.
        let torn = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&torn, vec![0x5a; 4096]).unwrap();

        let store = open(dir.path(), Durability::FlushEveryBatch).await;
        assert_eq!(store.stream_version(&a).await.unwrap(), Some(1));
        assert!(!torn.exists());
    }
}
