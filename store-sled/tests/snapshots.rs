//! Snapshots belong to one history: a snapshot file taken from another database (same
//! position, different events), one past the head, a damaged one and one of the older
//! layout are each refused on load and deleted, never returned; and a save makes sled's
//! files durable first.

mod common;

use std::path::{Path, PathBuf};

use common::{event, read_feed, stream};
use fleetops_core::store::{AppendBatch, EventStore, ExpectedVersion, Snapshot};
use fleetops_store_sled::{Durability, SledConfig, SledStore};

async fn open(dir: &Path) -> SledStore {
    SledStore::open_async(SledConfig::new(dir).durability(Durability::FlushEveryBatch))
        .await
        .expect("open")
}

fn snapshot_file(db: &Path) -> PathBuf {
    db.join("fleetops-snapshots").join("fleet.snap")
}

/// A store holding two events tagged `tags`, and a snapshot saved at position 2.
async fn store_with_snapshot(dir: &Path, tags: [&str; 2]) -> (SledStore, Snapshot) {
    let store = open(dir).await;
    store
        .append(AppendBatch::single(
            stream("s"),
            ExpectedVersion::NoStream,
            vec![event(1, tags[0]), event(2, tags[1])],
        ))
        .await
        .unwrap();
    let feed = read_feed(&store).await;
    let snapshot = Snapshot {
        position: 2,
        event_key: feed[1].fingerprint(),
        bytes: format!("state of {tags:?}").into_bytes(),
    };
    store
        .save_snapshot("fleet", snapshot.clone())
        .await
        .unwrap();
    (store, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_from_another_history_is_refused_and_deleted() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_snap) = store_with_snapshot(a_dir.path(), ["x", "y"]).await;
    // Same ids, same positions, other content at position 2.
    let (b, b_snap) = store_with_snapshot(b_dir.path(), ["x", "z"]).await;
    assert_eq!(a_snap.position, b_snap.position);
    assert_ne!(a_snap.event_key, b_snap.event_key);

    // A save keyed to the other history is refused and leaves the saved one in place.
    assert!(b.save_snapshot("fleet", a_snap.clone()).await.is_err());
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), Some(b_snap));

    // A's snapshot file copied over B's: B refuses it on load and deletes it.
    std::fs::copy(snapshot_file(a_dir.path()), snapshot_file(b_dir.path())).unwrap();
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), None);
    assert!(
        !snapshot_file(b_dir.path()).exists(),
        "the mismatched file is deleted"
    );
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), None);

    // A still takes its own.
    assert_eq!(a.load_snapshot("fleet").await.unwrap(), Some(a_snap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_past_the_head_damaged_or_of_the_old_layout_is_deleted() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_a, _) = store_with_snapshot(a_dir.path(), ["x", "y"]).await;
    // B holds a single event: A's snapshot at position 2 is past its head.
    let b = open(b_dir.path()).await;
    b.append(AppendBatch::single(
        stream("s"),
        ExpectedVersion::NoStream,
        vec![event(1, "x")],
    ))
    .await
    .unwrap();
    let file = snapshot_file(b_dir.path());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::copy(snapshot_file(a_dir.path()), &file).unwrap();
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), None);
    assert!(!file.exists(), "a snapshot past the head is deleted");

    // Damaged: cut short.
    let good = std::fs::read(snapshot_file(a_dir.path())).unwrap();
    std::fs::write(&file, &good[..good.len() - 1]).unwrap();
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), None);
    assert!(!file.exists(), "a damaged snapshot is deleted");

    // The older layout, which carried no event key.
    let mut old = b"FOSNAP01".to_vec();
    old.extend_from_slice(&1u64.to_be_bytes());
    old.extend_from_slice(&1u64.to_be_bytes());
    old.extend_from_slice(&crc32(&[9]).to_be_bytes());
    old.push(9);
    std::fs::write(&file, &old).unwrap();
    assert_eq!(b.load_snapshot("fleet").await.unwrap(), None);
    assert!(!file.exists(), "an old-layout snapshot is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_survives_a_reopen_with_its_key_checked() {
    let dir = tempfile::tempdir().unwrap();
    let snap = {
        let (store, snap) = store_with_snapshot(dir.path(), ["x", "y"]).await;
        drop(store);
        snap
    };
    let store = loop {
        // sled releases its lock when the last handle's threads stop.
        match SledStore::open_async(SledConfig::new(dir.path())).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(store.load_snapshot("fleet").await.unwrap(), Some(snap));
    store.delete_snapshot("fleet").await.unwrap();
    assert!(!snapshot_file(dir.path()).exists());
}

/// CRC-32 (IEEE), as the snapshot header uses, for hand-made files.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
