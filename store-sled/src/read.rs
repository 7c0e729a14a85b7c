//! The read paths: the feed by position and streams through their index, on the calling
//! thread (the store runs them on the blocking pool), never past the visible head.

use std::sync::OnceLock;

use fleetops_core::ids::StreamId;
use fleetops_core::store::{StoreError, StoredEvent};

use crate::codec;
use crate::guard::{panic_message, sled_error};
use crate::inner::Inner;

/// Reads of at least this many events are split over several threads.
const PARALLEL_DECODE_MIN: u64 = 2048;
/// Most threads one read is split over.
const MAX_DECODE_THREADS: usize = 4;
/// Most events one read allocates room for up front, whatever `limit` says.
const MAX_PREALLOCATED: usize = 16 * 1024;

/// The error for a position the feed should hold and does not.
pub(crate) fn missing(position: u64) -> StoreError {
    StoreError::Corrupt {
        location: format!("event at position {position}"),
        detail: "missing from the feed".into(),
    }
}

/// Events `from..=to` of the feed, checked to be all there.
///
/// Decoding (JSON, mostly) costs more than reading the records from sled, so a large range is
/// split into a few consecutive sub-ranges, each scanned and decoded by its own scoped thread
/// (sled serves concurrent readers without locking). Errors name the first bad position in
/// feed order either way.
fn read_positions(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    static THREADS: OnceLock<u64> = OnceLock::new();
    let threads = *THREADS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODE_THREADS) as u64)
    });
    let count = to - from + 1;
    if threads <= 1 || count < PARALLEL_DECODE_MIN {
        return read_range(tree, from, to, out);
    }
    let per_thread = count.div_ceil(threads);
    let ranges: Vec<(u64, u64)> = (0..threads)
        .map(|i| {
            (
                from + i * per_thread,
                to.min(from + (i + 1) * per_thread - 1),
            )
        })
        .filter(|(lo, hi)| lo <= hi)
        .collect();
    let results: Vec<Result<Vec<StoredEvent>, StoreError>> = std::thread::scope(|s| {
        let helpers: Vec<_> = ranges[1..]
            .iter()
            .map(|&(lo, hi)| {
                s.spawn(move || {
                    let mut v = Vec::new();
                    read_range(tree, lo, hi, &mut v).map(|()| v)
                })
            })
            .collect();
        let (lo, hi) = ranges[0];
        let mut first = Vec::new();
        let mut results = vec![read_range(tree, lo, hi, &mut first).map(|()| first)];
        for h in helpers {
            results.push(h.join().unwrap_or_else(|panic| {
                Err(StoreError::Corrupt {
                    location: format!("feed from position {from}"),
                    detail: format!("reader panicked: {}", panic_message(&*panic)),
                })
            }));
        }
        results
    });
    out.reserve(
        usize::try_from(count)
            .unwrap_or(0)
            .min(MAX_PREALLOCATED * 8),
    );
    for r in results {
        out.extend(r?);
    }
    Ok(())
}

/// Events `from..=to`, scanned and decoded on this thread.
fn read_range(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    out: &mut Vec<StoredEvent>,
) -> Result<(), StoreError> {
    let mut expect = from;
    let mut last_stream = None;
    out.reserve(
        usize::try_from(to - from + 1).map_or(MAX_PREALLOCATED, |n| n.min(MAX_PREALLOCATED)),
    );
    for item in tree.range(codec::event_key(from)..=codec::event_key(to)) {
        let (k, v) = item.map_err(sled_error)?;
        let pos = codec::event_key_position(&k)?;
        if pos != expect {
            return Err(missing(expect));
        }
        out.push(codec::decode_event_cached(pos, &k, &v, &mut last_stream)?);
        expect += 1;
    }
    if expect <= to {
        return Err(missing(expect));
    }
    Ok(())
}

/// Up to `limit` events of the feed from position `from`, none past the visible head.
pub(crate) fn read_all_blocking(
    inner: &Inner,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let head = inner.shared.head();
    let from = from.max(1);
    if limit == 0 || from > head {
        return Ok(Vec::new());
    }
    let to = head.min(from.saturating_add(limit as u64 - 1));
    let mut out = Vec::with_capacity(((to - from + 1) as usize).min(MAX_PREALLOCATED));
    read_positions(inner.tree()?, from, to, &mut out)?;
    Ok(out)
}

/// Up to `limit` events of `stream` from version `from`, checked against the feed.
pub(crate) fn read_stream_blocking(
    inner: &Inner,
    stream: &StreamId,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let tree = inner.tree()?;
    let head = inner.shared.head();
    let from = from.max(1);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let prefix = codec::run_prefix(stream);
    // Start at the last run that begins at or before `from`, or at the stream's first run.
    let start = match tree
        .range(prefix.clone()..=codec::run_key(&prefix, from))
        .next_back()
    {
        Some(item) => item.map_err(sled_error)?.0.to_vec(),
        None => prefix.clone(),
    };
    let mut next_version = if start == prefix { Some(1) } else { None };
    for item in tree.range(start..) {
        let (k, v) = item.map_err(sled_error)?;
        if !k.starts_with(&prefix) {
            break;
        }
        let run = codec::decode_run(&prefix, &k, &v)?;
        if run.first_position > head {
            break; // staged by a group that is not visible yet
        }
        let location = || format!("stream {stream} at version {}", run.first_version);
        if run.last_position() > head {
            return Err(StoreError::Corrupt {
                location: location(),
                detail: "a run straddles the feed head".into(),
            });
        }
        if let Some(expected) = next_version {
            if run.first_version != expected {
                return Err(StoreError::Corrupt {
                    location: location(),
                    detail: format!("versions jump from {expected} to {}", run.first_version),
                });
            }
        }
        next_version = Some(run.last_version() + 1);
        if run.last_version() < from {
            continue;
        }
        let first_v = from.max(run.first_version);
        let lo = run.first_position + (first_v - run.first_version);
        let room = (limit - out.len()) as u64;
        let hi = run.last_position().min(lo.saturating_add(room - 1));
        let before = out.len();
        read_positions(tree, lo, hi, &mut out)?;
        for (i, e) in out[before..].iter().enumerate() {
            if &e.stream != stream || e.stream_version != first_v + i as u64 {
                return Err(StoreError::Corrupt {
                    location: format!("event at position {}", e.position),
                    detail: format!(
                        "the index of stream {stream} expects version {} here, the record is \
                         {} version {}",
                        first_v + i as u64,
                        e.stream,
                        e.stream_version
                    ),
                });
            }
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The version of `stream`'s last visible event; `None` if it has none.
pub(crate) fn stream_version_blocking(
    inner: &Inner,
    stream: &StreamId,
) -> Result<Option<u64>, StoreError> {
    let tree = inner.tree()?;
    let head = inner.shared.head();
    let prefix = codec::run_prefix(stream);
    for item in tree.scan_prefix(&prefix).rev() {
        let (k, v) = item.map_err(sled_error)?;
        let run = codec::decode_run(&prefix, &k, &v)?;
        if run.first_position <= head {
            return Ok(Some(run.last_version()));
        }
    }
    Ok(None)
}
