//! Damaged data gives errors, never a panic.
//!
//! Two levels:
//! - **records**: a test rewrites stored values through raw sled (flipped byte, truncation,
//!   a missing position, a damaged index entry, idempotency record, projection value or
//!   format marker) and checks the store names the damage with `StoreError::Corrupt`;
//! - **files**: copies of a database get bytes flipped, blocks zeroed or files truncated;
//!   every read must return either the original data or an error, and nothing may panic.
//!   Each damaged copy is read inside `catch_unwind` to prove the last point.

mod common;

use fleetops_core::testkit::rng::SplitMix64;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::{event, read_feed, stream};
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    AppendBatch, EventStore, ExpectedVersion, IdempotencyKey, StoreError, StoredEvent,
};
use fleetops_store_sled::internals::{event_key, TREE_NAME};
use fleetops_store_sled::{ProjectionBatch, SledConfig, SledStore};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn open(dir: &Path) -> Result<SledStore, StoreError> {
    SledStore::open_async(SledConfig::new(dir)).await
}

fn is_corrupt<T: std::fmt::Debug>(r: &Result<T, StoreError>, needle: &str) -> bool {
    match r {
        Err(StoreError::Corrupt { location, detail }) => {
            format!("{location}: {detail}").contains(needle)
        }
        _ => false,
    }
}

/// Rewrites one value of the store's tree with raw sled; `None` removes the key.
fn tamper(dir: &Path, key: &[u8], f: impl FnOnce(Vec<u8>) -> Option<Vec<u8>>) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(TREE_NAME).unwrap();
    let old = tree.get(key).unwrap().expect("key to tamper with").to_vec();
    match f(old) {
        Some(new) => tree.insert(key, new).unwrap(),
        None => tree.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

/// Finds the last key of the store's tree that starts with `prefix`.
fn last_key(dir: &Path, prefix: &[u8]) -> Vec<u8> {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(TREE_NAME).unwrap();
    let (key, _) = tree.scan_prefix(prefix).next_back().unwrap().unwrap();
    key.to_vec()
}

#[test]
fn damaged_records_are_reported_as_corrupt() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (stream("a"), stream("b"));
    rt.block_on(async {
        let store = open(dir.path()).await.unwrap();
        for i in 0..20u128 {
            let s = if i % 2 == 0 { &a } else { &b };
            let mut batch =
                AppendBatch::single(s.clone(), ExpectedVersion::Any, vec![event(i, "x")]);
            if i == 0 {
                batch = batch.idempotent(IdempotencyKey("first".into()));
            }
            store.append(batch).await.unwrap();
        }
        let p = store.projection("idx").unwrap();
        let mut batch = ProjectionBatch::new();
        batch.put(b"k".to_vec(), b"v".to_vec());
        p.apply(0, 20, batch).await.unwrap();
    });

    // Position 5 (stream a) gets one flipped bit, position 9 (stream a) is cut in half, and
    // position 12 (stream b) disappears.
    tamper(dir.path(), &event_key(5), |mut v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x04;
        Some(v)
    });
    tamper(dir.path(), &event_key(9), |v| {
        Some(v[..v.len() / 2].to_vec())
    });
    tamper(dir.path(), &event_key(12), |_| None);

    rt.block_on(async {
        let store = open(dir.path()).await.unwrap();
        let r = store.read_all(1, 100).await;
        assert!(is_corrupt(&r, "position 5"), "{r:?}");
        assert!(is_corrupt(&r, "checksum"), "{r:?}");
        assert_eq!(
            store.read_all(6, 3).await.unwrap().len(),
            3,
            "undamaged events still read"
        );
        let r = store.read_all(9, 1).await;
        assert!(is_corrupt(&r, "position 9"), "{r:?}");
        let r = store.read_all(10, 10).await;
        assert!(is_corrupt(&r, "position 12: missing"), "{r:?}");
        let r = store.read_stream(&a, 1, 100).await;
        assert!(is_corrupt(&r, "position 5"), "{r:?}");
        let r = store.read_stream(&b, 1, 100).await;
        assert!(is_corrupt(&r, "position 12"), "{r:?}");
        // A subscription delivers the good prefix, then the error.
        let mut sub = store.subscribe(1).await.unwrap();
        for expected in 1..=4 {
            assert_eq!(sub.next().await.unwrap().position, expected);
        }
        assert!(is_corrupt(&sub.next().await, "position 5"));
    });

    // A damaged stream-index entry, idempotency record, projection value and checkpoint.
    let run_a = last_key(dir.path(), b"Sx/a\0");
    tamper(dir.path(), &run_a, |mut v| {
        v[6] ^= 0x80;
        Some(v)
    });
    tamper(dir.path(), b"Ifirst", |mut v| {
        let last = v.len() - 1;
        v[last] ^= 1;
        Some(v)
    });
    tamper(dir.path(), b"Pidx\0k", |mut v| {
        v.push(0);
        Some(v)
    });
    tamper(dir.path(), b"Cidx", |v| Some(v[..7].to_vec()));
    rt.block_on(async {
        let store = open(dir.path()).await.unwrap();
        let r = store.stream_version(&a).await;
        assert!(is_corrupt(&r, "stream index"), "{r:?}");
        let r = store.read_stream(&a, 10, 10).await;
        assert!(is_corrupt(&r, "stream index"), "{r:?}");
        // An append to the damaged stream fails alone; other streams still take appends.
        let r = store
            .append(AppendBatch::single(
                a.clone(),
                ExpectedVersion::Any,
                vec![event(50, "y")],
            ))
            .await;
        assert!(is_corrupt(&r, "stream index"), "{r:?}");
        store
            .append(AppendBatch::single(
                stream("c"),
                ExpectedVersion::NoStream,
                vec![event(51, "z")],
            ))
            .await
            .unwrap();
        let r = store
            .append(
                AppendBatch::single(stream("d"), ExpectedVersion::Any, vec![event(52, "w")])
                    .idempotent(IdempotencyKey("first".into())),
            )
            .await;
        assert!(is_corrupt(&r, "idempotency record"), "{r:?}");
        let p = store.projection("idx").unwrap();
        let r = p.get(b"k").await;
        assert!(
            matches!(
                r,
                Err(fleetops_store_sled::ProjectionError::Store(
                    StoreError::Corrupt { .. }
                ))
            ),
            "{r:?}"
        );
        let r = p.checkpoint().await;
        assert!(
            matches!(
                r,
                Err(fleetops_store_sled::ProjectionError::Store(
                    StoreError::Corrupt { .. }
                ))
            ),
            "{r:?}"
        );
    });

    // An unknown format marker refuses to open.
    tamper(dir.path(), b"Mformat", |_| {
        Some(b"fleetops-sled/99".to_vec())
    });
    let r = rt.block_on(open(dir.path()));
    assert!(
        matches!(&r, Err(StoreError::Backend { detail }) if detail.contains("unsupported store format")),
        "{r:?}"
    );
}

// ---- damaged files ---------------------------------------------------------------------------

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
}

/// Damages one file of the copy; returns a description for failure messages.
fn damage(dir: &Path, rng: &mut SplitMix64) -> String {
    let all = files(dir);
    let file = &all[rng.below(all.len() as u64) as usize];
    let mut bytes = std::fs::read(file).unwrap();
    let name = file.strip_prefix(dir).unwrap().display().to_string();
    if bytes.is_empty() {
        return format!("{name}: empty, left alone");
    }
    let len = bytes.len() as u64;
    let what = match rng.below(4) {
        0 => {
            let cut = rng.below(len);
            bytes.truncate(cut as usize);
            format!("{name}: truncated from {len} to {cut} bytes")
        }
        1 => {
            let at = rng.below(len) as usize & !4095;
            let end = (at + 4096).min(bytes.len());
            bytes[at..end].fill(0);
            format!("{name}: zeroed block at {at}")
        }
        _ => {
            let flips = 1 + rng.below(8);
            let mut at = Vec::new();
            for _ in 0..flips {
                let i = rng.below(len) as usize;
                bytes[i] ^= 1 << rng.below(8);
                at.push(i);
            }
            format!("{name}: bits flipped at {at:?}")
        }
    };
    std::fs::write(file, bytes).unwrap();
    what
}

/// How a damaged copy behaved.
#[derive(Debug, Default)]
struct Tally {
    /// `open` returned an error (sled's recovery refused or panicked).
    open_refused: usize,
    /// Opened; some read reported `Corrupt` or `Backend`.
    errors_reported: usize,
    /// Opened; everything read back, the whole original feed.
    read_fully: usize,
    /// Opened; everything read back without error, but sled's recovery had dropped a damaged
    /// log tail, so the feed is a shorter (gap-free) prefix of the original.
    read_prefix: usize,
}

/// Opens a damaged copy and reads everything; every event returned must be the original.
async fn read_everything(
    dir: &Path,
    original: &[StoredEvent],
    streams: &[StreamId],
    tally: &mut Tally,
) {
    let store = match open(dir).await {
        Ok(s) => s,
        Err(_) => {
            tally.open_refused += 1;
            return;
        }
    };
    let mut errors = 0;
    let head = store.head_position().await.unwrap();
    let check = |e: &StoredEvent| {
        let want = original.get(e.position as usize - 1);
        assert_eq!(Some(e), want, "a damaged store returned a wrong event");
    };
    let mut from = 1;
    loop {
        match store.read_all(from, 500).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => {
                page.iter().for_each(check);
                from = page.last().unwrap().position + 1;
            }
            Err(StoreError::Corrupt { .. } | StoreError::Backend { .. }) => {
                errors += 1;
                from += 1; // skip past the damage and keep reading
                if from > original.len() as u64 + 1 {
                    break;
                }
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    for s in streams {
        match store.read_stream(s, 1, usize::MAX).await {
            Ok(events) => events.iter().for_each(check),
            Err(_) => errors += 1,
        }
        if store.stream_version(s).await.is_err() {
            errors += 1;
        }
    }
    let p = store.projection("idx").unwrap();
    if p.checkpoint().await.is_err() || p.scan_prefix(b"", 1000).await.is_err() {
        errors += 1;
    }
    if errors > 0 {
        tally.errors_reported += 1;
    } else if head == original.len() as u64 {
        tally.read_fully += 1;
    } else {
        tally.read_prefix += 1;
    }
}

#[test]
fn damaged_files_give_errors_or_original_data_and_never_panic() {
    let copies = std::env::var("FLEETOPS_CORRUPTION_COPIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100u64);
    let seed = std::env::var("FLEETOPS_CORRUPTION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("corruption test seed {seed} (set FLEETOPS_CORRUPTION_SEED to repeat)");
    let rt = rt();
    let pristine = tempfile::tempdir().unwrap();
    let streams: Vec<StreamId> = (0..8).map(|i| stream(&format!("s{i}"))).collect();
    let original = rt.block_on(async {
        let store = open(pristine.path()).await.unwrap();
        for i in 0..400u128 {
            let s = &streams[(i % 8) as usize];
            let events = (0..5)
                .map(|j| event(i * 10 + j, &format!("{i}/{j}")))
                .collect();
            store
                .append(AppendBatch::single(s.clone(), ExpectedVersion::Any, events))
                .await
                .unwrap();
        }
        let p = store.projection("idx").unwrap();
        let mut batch = ProjectionBatch::new();
        for i in 0..100u32 {
            batch.put(i.to_be_bytes().to_vec(), vec![7; 40]);
        }
        p.apply(0, 2000, batch).await.unwrap();
        read_feed(&store).await
    });
    assert_eq!(original.len(), 2000);

    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    for copy in 0..copies {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let what = if copy == 0 {
            "none (the control copy)".to_string()
        } else {
            damage(dir.path(), &mut rng)
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            rt.block_on(read_everything(dir.path(), &original, &streams, &mut tally))
        }));
        if copy == 0 {
            assert_eq!(tally.read_fully, 1, "an undamaged copy reads back fully");
        }
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("copy {copy} ({what}) panicked: {msg}");
        }
    }
    eprintln!("damaged copies: {tally:?}");
}
