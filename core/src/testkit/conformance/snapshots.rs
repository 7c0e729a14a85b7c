//! Persisted projection snapshots: save, load, replace, refuse, delete.

use crate::store::{EventStore, ExpectedVersion};

use super::calls::{append_ok, call};
use super::inputs::{batch, stream, Ids};

/// Snapshots (persisted projection checkpoints): none before the first save; a save is read
/// back byte for byte with its position and event key, per name; a later save replaces it
/// and survives more appends; a position past the head, or a key that is not the
/// fingerprint of the event stored at the position (a snapshot of another history), is
/// refused and leaves the saved one in place; a deleted snapshot is gone.
pub async fn snapshots<S: EventStore>(store: S) {
    use crate::store::Snapshot as Saved;
    let ids = Ids::default();
    let s = stream("snap/feed");
    let load = |name: &'static str| {
        let store = &store;
        async move {
            call("load_snapshot", store.load_snapshot(name))
                .await
                .unwrap_or_else(|e| panic!("load_snapshot({name}) failed: {e}"))
        }
    };
    let key_at = |position: u64| {
        let store = &store;
        async move {
            call("read_all", store.read_all(position, 1))
                .await
                .unwrap_or_else(|e| panic!("read_all({position}) failed: {e}"))[0]
                .fingerprint()
        }
    };
    assert_eq!(load("fleet").await, None, "an empty store has no snapshot");
    let empty = Saved {
        position: 0,
        event_key: 0,
        bytes: b"{}".to_vec(),
    };
    call("save_snapshot", store.save_snapshot("empty", empty.clone()))
        .await
        .unwrap_or_else(|e| panic!("saving a snapshot at position 0 failed: {e}"));
    assert_eq!(load("empty").await, Some(empty), "position 0 has key 0");
    append_ok(
        &store,
        batch(&s, ExpectedVersion::NoStream, ids.small(3)),
        "append 1",
    )
    .await;
    assert_ne!(
        key_at(2).await,
        key_at(3).await,
        "fingerprints tell events apart"
    );
    let first = Saved {
        position: 3,
        event_key: key_at(3).await,
        bytes: b"{\"state\":1}".to_vec(),
    };
    call("save_snapshot", store.save_snapshot("fleet", first.clone()))
        .await
        .unwrap_or_else(|e| panic!("saving a snapshot at the head failed: {e}"));
    assert_eq!(
        load("fleet").await,
        Some(first.clone()),
        "a saved snapshot reads back"
    );
    assert_eq!(load("other").await, None, "snapshots are kept per name");

    let past = Saved {
        position: 4,
        event_key: 0,
        bytes: vec![1],
    };
    assert!(
        call("save_snapshot", store.save_snapshot("fleet", past))
            .await
            .is_err(),
        "a snapshot past the feed head must be refused"
    );
    let foreign = Saved {
        position: 3,
        event_key: key_at(2).await,
        bytes: vec![2],
    };
    assert!(
        call("save_snapshot", store.save_snapshot("fleet", foreign))
            .await
            .is_err(),
        "a snapshot keyed to another event than the one at its position must be refused"
    );
    assert_eq!(
        load("fleet").await,
        Some(first),
        "a refused save changes nothing"
    );

    append_ok(
        &store,
        batch(&s, ExpectedVersion::Exact(3), ids.small(2)),
        "append 2",
    )
    .await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let second = Saved {
        position: 5,
        event_key: key_at(5).await,
        bytes: big,
    };
    call(
        "save_snapshot",
        store.save_snapshot("fleet", second.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("replacing a snapshot failed: {e}"));
    assert_eq!(
        load("fleet").await,
        Some(second),
        "a later save replaces the snapshot"
    );

    call("delete_snapshot", store.delete_snapshot("fleet"))
        .await
        .unwrap_or_else(|e| panic!("delete_snapshot failed: {e}"));
    assert_eq!(load("fleet").await, None, "a deleted snapshot is gone");
    call("delete_snapshot", store.delete_snapshot("fleet"))
        .await
        .unwrap_or_else(|e| panic!("deleting a missing snapshot must succeed: {e}"));
    assert!(load("empty").await.is_some(), "deleting is per name");
}
