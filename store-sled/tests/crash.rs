//! The crash test: a child process appends as hard as it can and is killed with `SIGKILL` at
//! random moments, many times over the same database. After every kill the parent reopens the
//! store and checks that every acknowledged append is there, no batch is half-written, the
//! feed has no gap, stream versions are intact and idempotency keys still answer.
//!
//! The child is this test binary itself, re-executed to run the ignored test `crash_child`
//! with `FLEETOPS_CRASH_DIR` set. It prints one `ACK` line per acknowledged append to stdout,
//! written and flushed only after `append` returned `Ok`.
//!
//! Bounds: at most `FLEETOPS_CRASH_ITERATIONS` kills (default 40) within
//! `FLEETOPS_CRASH_SECS` seconds (default 40), and at least 5 kills whatever the clock says.

mod common;

use fleetops_core::testkit::rng::SplitMix64;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{event, read_feed, stream, tag};
use fleetops_core::ids::StreamId;
use fleetops_core::store::{
    AppendBatch, Appended, EventStore, ExpectedVersion, IdempotencyKey, StoreError,
};
use fleetops_store_sled::{SledConfig, SledStore};

const DIR_VAR: &str = "FLEETOPS_CRASH_DIR";
const RUN_VAR: &str = "FLEETOPS_CRASH_RUN";
const APPENDERS: usize = 48;
const SHARED_STREAMS: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes one line to the real stdout (not the test harness's capture) and flushes it.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent may already be gone; nothing useful can be done about a failed write.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---- the child -------------------------------------------------------------------------------

/// One acknowledged append, as the child reports it.
#[derive(Debug, Clone)]
struct Ack {
    batch: String,
    appended: Appended,
    key: Option<IdempotencyKey>,
}

fn ack_line(batch: &str, a: &Appended, key: Option<&IdempotencyKey>) -> String {
    let versions = a
        .versions
        .iter()
        .map(|(s, v)| format!("{s}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "ACK {batch} {} {} {versions} {}",
        a.first_position,
        a.last_position,
        key.map_or("-", |k| k.0.as_str())
    )
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let batch = parts.next()?.to_owned();
    let first_position = parts.next()?.parse().ok()?;
    let last_position = parts.next()?.parse().ok()?;
    let versions = parts
        .next()?
        .split(',')
        .map(|sv| {
            let (s, v) = sv.rsplit_once('=')?;
            Some((StreamId::try_from(s).ok()?, v.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    let key = match parts.next()? {
        "-" => None,
        k => Some(IdempotencyKey(k.to_owned())),
    };
    Some(Ack {
        batch,
        appended: Appended {
            first_position,
            last_position,
            versions,
        },
        key,
    })
}

/// The events of a batch carry `batch|index|size` so the parent can check completeness.
fn batch_events(batch: &str, size: usize, seq: &mut u128) -> Vec<fleetops_core::store::NewEvent> {
    (0..size)
        .map(|i| {
            *seq += 1;
            event(*seq, &format!("{batch}|{i}|{size}"))
        })
        .collect()
}

async fn appender(store: Arc<SledStore>, run: u64, task: usize) {
    let mut rng = SplitMix64::new(run.wrapping_mul(1000).wrapping_add(task as u64));
    let own = stream(&format!("r{run}/t{task}"));
    let mut own_version = 0u64;
    let mut seq = (u128::from(run) << 64) | ((task as u128) << 40);
    for j in 0.. {
        let batch = format!("r{run}t{task}j{j}");
        let own_events = 1 + rng.below(4) as usize;
        // Half the batches also touch a shared stream, so batches overlap on streams.
        let shared = (rng.below(2) == 0).then(|| {
            let s = stream(&format!("shared/{}", rng.below(SHARED_STREAMS as u64)));
            (s, 1 + rng.below(3) as usize)
        });
        let total = own_events + shared.as_ref().map_or(0, |(_, n)| *n);
        let mut events = batch_events(&batch, total, &mut seq);
        let shared_events = events.split_off(own_events);
        let mut append = AppendBatch::single(
            own.clone(),
            ExpectedVersion::from_current((own_version > 0).then_some(own_version)),
            events,
        );
        if let Some((s, _)) = shared {
            append = append.with(s, ExpectedVersion::Any, shared_events);
        }
        let key = (rng.below(3) == 0).then(|| IdempotencyKey(format!("key-{batch}")));
        if let Some(k) = &key {
            append = append.idempotent(k.clone());
        }
        let retry = append.clone();
        // Every other task appends in two steps (ordered, then durable) and acknowledges
        // only after the second, as a command's sender does.
        let appended = if task.is_multiple_of(2) {
            store.append(append).await
        } else {
            match store.append_ordered(append).await {
                Ok(ordered) => ordered.durable().await,
                Err(e) => Err(e),
            }
        };
        match appended {
            Ok(a) => {
                own_version = a.versions[0].1;
                emit(&ack_line(&batch, &a, key.as_ref()));
                if key.is_some() && rng.below(4) == 0 {
                    match store.append(retry).await {
                        Ok(again) if again == a => {}
                        other => emit(&format!("BAD idempotent retry of {batch}: {other:?}")),
                    }
                }
            }
            Err(e) => emit(&format!("BAD append {batch} failed: {e}")),
        }
        // Now and then a stale expectation, which must fail alone.
        if rng.below(8) == 0 {
            let stale = AppendBatch::single(
                own.clone(),
                ExpectedVersion::Exact(own_version + 7),
                vec![event(seq + 1, "stale")],
            );
            match store.append(stale).await {
                Err(StoreError::Conflict { .. }) => {}
                other => emit(&format!("BAD stale append of {batch}: {other:?}")),
            }
        }
    }
}

/// Runs only as the child of `crash_test` (it is ignored otherwise).
#[test]
#[ignore = "the child process of crash_test; runs only when re-executed with FLEETOPS_CRASH_DIR"]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let run = env_u64(RUN_VAR, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Arc::new(
            SledStore::open_async(SledConfig::new(&dir))
                .await
                .expect("the child opens the store"),
        );
        emit("READY");
        for task in 0..APPENDERS {
            tokio::spawn(appender(Arc::clone(&store), run, task));
        }
        // A child whose parent vanished must not run forever.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
}

// ---- the parent ------------------------------------------------------------------------------

/// Runs one child and kills it; returns its complete output lines.
fn run_child(dir: &std::path::Path, run: u64, rng: &mut SplitMix64) -> Vec<String> {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(RUN_VAR, run.to_string())
        .stdout(Stdio::piped())
        // A panic in the child (it should only ever die by our SIGKILL) shows up in the log.
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let ready = Arc::new(AtomicBool::new(false));
    let reader = {
        let ready = Arc::clone(&ready);
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    // A line cut by the kill has no newline: it was never fully reported.
                    Ok(_) if buf.last() == Some(&b'\n') => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        // libtest may print "test crash_child ... " before the first line.
                        if line.ends_with("READY") {
                            ready.store(true, Ordering::Release);
                        }
                        lines.push(line);
                    }
                    Ok(_) => {}
                }
            }
            lines
        })
    };
    // One kill in four lands at a random moment from the start, possibly during sled's
    // recovery; the others during appends.
    let during_startup = rng.below(4) == 0;
    if during_startup {
        std::thread::sleep(Duration::from_millis(rng.below(150)));
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            ready.load(Ordering::Acquire),
            "run {run}: the child never opened the store"
        );
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
    }
    if let Ok(Some(status)) = child.try_wait() {
        panic!("run {run}: the child exited by itself ({status}) instead of being killed");
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread")
}

/// Checks the reopened store against every acknowledgement so far; returns the event count.
async fn verify(store: &SledStore, acks: &[Ack], rng: &mut SplitMix64) -> usize {
    let feed = read_feed(store).await;
    let head = store.head_position().await.unwrap();
    assert_eq!(
        feed.len() as u64,
        head,
        "the feed is gap-free up to the head"
    );

    // No half-written batch: every batch present has all its events, at consecutive
    // positions.
    let mut batches: HashMap<&str, Vec<(usize, usize, u64)>> = HashMap::new();
    let mut streams: BTreeMap<&StreamId, Vec<u64>> = BTreeMap::new();
    for e in &feed {
        streams.entry(&e.stream).or_default().push(e.stream_version);
        let Some(t) = tag(e) else { continue };
        if t == "stale" {
            panic!("a refused append was stored at position {}", e.position);
        }
        let mut parts = t.split('|');
        let (b, i, n) = (
            parts.next().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
            parts.next().unwrap().parse::<usize>().unwrap(),
        );
        batches.entry(b).or_default().push((i, n, e.position));
    }
    for (b, events) in &batches {
        let n = events[0].1;
        assert_eq!(events.len(), n, "batch {b} is complete");
        for (k, (i, _, pos)) in events.iter().enumerate() {
            assert_eq!(*i, k, "batch {b} is in order");
            assert_eq!(*pos, events[0].2 + k as u64, "batch {b} is contiguous");
        }
    }

    // Every stream's versions run 1..=n in feed order, and the store agrees.
    for (s, versions) in &streams {
        let expected: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(versions, &expected, "versions of {s}");
        assert_eq!(
            store.stream_version(s).await.unwrap(),
            Some(versions.len() as u64),
            "stream_version of {s}"
        );
    }
    // A sample of streams read back through the stream index.
    for (s, versions) in streams.iter().filter(|_| rng.below(8) == 0) {
        let read = store.read_stream(s, 1, usize::MAX).await.unwrap();
        assert_eq!(read.len(), versions.len(), "read_stream of {s}");
    }

    // Every acknowledged append is there, where and as it was acknowledged.
    for ack in acks {
        let a = &ack.appended;
        let events = batches
            .get(ack.batch.as_str())
            .unwrap_or_else(|| panic!("acknowledged batch {} is missing", ack.batch));
        assert_eq!(
            events[0].2, a.first_position,
            "first position of {}",
            ack.batch
        );
        assert_eq!(
            events.last().unwrap().2,
            a.last_position,
            "last position of {}",
            ack.batch
        );
        for (s, v) in &a.versions {
            let last_of_stream = feed[(a.first_position - 1) as usize..a.last_position as usize]
                .iter()
                .filter(|e| &e.stream == s)
                .map(|e| e.stream_version)
                .max();
            assert_eq!(
                last_of_stream,
                Some(*v),
                "version of {s} after {}",
                ack.batch
            );
        }
    }
    // Idempotency keys survive: a sample of retries returns the first result.
    for ack in acks
        .iter()
        .filter(|a| a.key.is_some() && rng.below(20) == 0)
    {
        let retry = AppendBatch::single(
            ack.appended.versions[0].0.clone(),
            ExpectedVersion::NoStream,
            vec![event(1, "retry")],
        )
        .idempotent(ack.key.clone().unwrap());
        assert_eq!(store.append(retry).await.unwrap(), ack.appended);
    }
    assert_eq!(
        store.head_position().await.unwrap(),
        head,
        "retries stored nothing"
    );
    feed.len()
}

#[test]
fn crash_test() {
    let max_iterations = env_u64("FLEETOPS_CRASH_ITERATIONS", 40);
    let budget = Duration::from_secs(env_u64("FLEETOPS_CRASH_SECS", 40));
    let seed = env_u64(
        "FLEETOPS_CRASH_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    eprintln!("crash test seed {seed} (set FLEETOPS_CRASH_SEED to repeat)");
    let mut rng = SplitMix64::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut acks = Vec::new();
    let mut iterations = 0;
    let mut events = 0;
    while iterations < max_iterations && (iterations < 5 || started.elapsed() < budget) {
        iterations += 1;
        let t0 = Instant::now();
        let lines = run_child(dir.path(), iterations, &mut rng);
        let t1 = Instant::now();
        for line in &lines {
            assert!(!line.starts_with("BAD"), "run {iterations}: {line}");
            if line.starts_with("ACK ") {
                acks.push(parse_ack(line).unwrap_or_else(|| panic!("unparsable: {line}")));
            }
        }
        events = rt.block_on(async {
            let store = SledStore::open_async(SledConfig::new(dir.path()))
                .await
                .unwrap_or_else(|e| panic!("run {iterations}: reopen after SIGKILL: {e}"));
            let t2 = Instant::now();
            let n = verify(&store, &acks, &mut rng).await;
            eprintln!(
                "run {iterations}: child {:?} ({} lines), reopen {:?}, verify {:?}",
                t1 - t0,
                lines.len(),
                t2 - t1,
                t2.elapsed()
            );
            n
        });
    }
    eprintln!(
        "crash test: {iterations} kills in {:.1?}, {} acknowledged appends, {events} events \
         checked after the last kill",
        started.elapsed(),
        acks.len()
    );
    assert!(!acks.is_empty(), "the children acknowledged appends");
}
