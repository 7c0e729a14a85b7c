//! Persisted projection checkpoints: the read models, saved through the store's snapshot port
//! with the feed position they reflect, so a start folds only the events after it.
//!
//! A snapshot is a cache of the feed, never a source of truth. One that is missing, cannot be
//! decoded, was written by another format or schema, contradicts itself, or sits past the
//! feed head is ignored with a warning, and the start folds from position 1 as before.
//! Nothing else changes: recovery derives what is owed from the folded state either way.
//!
//! Saving copies the state under its read lock and encodes the copy on a blocking thread, so
//! the follower waits only for the copy. Saves run one at a time, every
//! [`FleetConfig::snapshot_every`](crate::FleetConfig::snapshot_every) folded events and at
//! [`Fleet::shutdown`](crate::Fleet::shutdown).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use fleetops_core::link::DeviceLink;
use fleetops_core::store::{snapshot_mismatch, EventStore, Snapshot, StoreError};
use fleetops_machine::image::ImageError;
use fleetops_machine::ReadModel;

use crate::runtime::Inner;

/// The name the fleet's snapshot is saved under.
pub(crate) const SNAPSHOT_NAME: &str = "fleet";
/// Why a stored snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{0}")]
    Mismatch(String),
    #[error("the store failed: {0}")]
    Store(#[from] fleetops_core::StoreError),
}

impl<S: EventStore, L: DeviceLink> Inner<S, L> {
    /// Replaces the empty start state by the stored snapshot, if there is a usable one.
    /// Returns the position it resumed from (0: none, fold everything).
    pub(crate) async fn restore_snapshot(&self) -> u64 {
        if self.config.snapshot_every == 0 {
            return 0;
        }
        let started = Instant::now();
        match self.load_snapshot().await {
            Ok(None) => 0,
            Ok(Some(state)) => {
                let cp = state.checkpoint();
                *self.write() = state;
                self.applied.send_replace(cp);
                self.snapshot_at.store(cp, Ordering::Relaxed);
                tracing::info!(
                    position = cp,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "resumed the projections from a snapshot"
                );
                cp
            }
            Err(SnapshotError::Store(err)) => {
                tracing::warn!(%err, "cannot read the stored snapshot; folding the feed from position 1");
                0
            }
            Err(err) => {
                // Unusable for good: delete it, so it is never taken up later (against a
                // history it may happen to fit by position).
                tracing::warn!(%err, "deleting the stored snapshot; folding the feed from position 1");
                if let Err(err) = self.store.delete_snapshot(SNAPSHOT_NAME).await {
                    tracing::warn!(%err, "cannot delete the unusable snapshot");
                }
                0
            }
        }
    }

    async fn load_snapshot(&self) -> Result<Option<ReadModel>, SnapshotError> {
        let Some(snapshot) = self.store.load_snapshot(SNAPSHOT_NAME).await? else {
            return Ok(None);
        };
        // The store checked it already; checked again here, so a store that does not (an
        // adapter, an older one) cannot hand over a snapshot of another history.
        if let Some(reason) = snapshot_mismatch(&self.store, &snapshot).await? {
            return Err(SnapshotError::Mismatch(reason));
        }
        let Snapshot {
            position, bytes, ..
        } = snapshot;
        let state = tokio::task::spawn_blocking(move || ReadModel::decode(&bytes, position))
            .await
            .map_err(|e| {
                SnapshotError::Store(fleetops_core::StoreError::Backend {
                    detail: format!("decoding task failed: {e}"),
                })
            })??;
        Ok(Some(state))
    }

    /// Whether enough events were folded since the last snapshot to save another.
    pub(crate) fn snapshot_due(&self, checkpoint: u64) -> bool {
        let every = self.config.snapshot_every;
        every > 0
            && checkpoint
                >= self
                    .snapshot_at
                    .load(Ordering::Relaxed)
                    .saturating_add(every)
            && !self.snapshotting.load(Ordering::Relaxed)
    }
}

/// The key of a snapshot at `position`: the fingerprint of the event stored there.
async fn event_key<S: EventStore>(store: &S, position: u64) -> Result<u64, StoreError> {
    if position == 0 {
        return Ok(0);
    }
    match store.read_all(position, 1).await?.first() {
        Some(e) if e.position == position => Ok(e.fingerprint()),
        _ => Err(StoreError::Corrupt {
            location: format!("position {position}"),
            detail: "the event a snapshot reflects is missing".into(),
        }),
    }
}

/// Saves a snapshot of the current state unless one is being saved; errors are logged (the
/// next save or a full fold at start covers them).
pub(crate) async fn save<S: EventStore, L: DeviceLink>(inner: Arc<Inner<S, L>>) {
    if inner.config.snapshot_every == 0 || inner.snapshotting.swap(true, Ordering::AcqRel) {
        return;
    }
    let started = Instant::now();
    let encoder = Arc::clone(&inner);
    let encoded = tokio::task::spawn_blocking(move || {
        // Copy under the lock, encode outside it: the follower waits for the copy (a tenth of
        // the encoding time), not for the encoding.
        let copy = encoder.read().clone();
        (copy.checkpoint(), copy.encode())
    })
    .await;
    match encoded {
        Ok((position, bytes)) if position > inner.snapshot_at.load(Ordering::Relaxed) => {
            let size = bytes.len();
            let saved = match event_key(&inner.store, position).await {
                Ok(event_key) => {
                    let snapshot = Snapshot {
                        position,
                        event_key,
                        bytes,
                    };
                    inner.store.save_snapshot(SNAPSHOT_NAME, snapshot).await
                }
                Err(e) => Err(e),
            };
            match saved {
                Ok(()) => {
                    inner.snapshot_at.store(position, Ordering::Relaxed);
                    tracing::debug!(
                        position,
                        bytes = size,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "saved a snapshot"
                    );
                }
                Err(err) => tracing::warn!(%err, position, "cannot save a snapshot"),
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(%err, "snapshot encoding task failed"),
    }
    inner.snapshotting.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::ChannelLink;
    use crate::sim::{from_fn, simulate, Outcome, Task};
    use crate::{Fleet, FleetConfig, JobSpec};
    use fleetops_core::config::{FailureType, JobConfig, RetryCriterion};
    use fleetops_core::store::StoredEvent;
    use fleetops_core::{Duration, GroupName, JobExecutionStatus, JobId, ThingName};
    use fleetops_machine::Effects;
    use fleetops_store_memory::MemoryStore;

    fn thing(i: usize) -> ThingName {
        ThingName::parse(&format!("dev-{i:03}")).unwrap()
    }

    /// A history with every kind of stream: commands (answered, canceled, pending), a job
    /// with retries, a continuous job on a group whose members change, a canceled job.
    async fn history() -> (MemoryStore, Vec<StoredEvent>) {
        let store = MemoryStore::new();
        let (link, devices) = ChannelLink::pair(1024);
        let fleet = Fleet::builder(store.clone(), link)
            .config(FleetConfig {
                snapshot_every: 0,
                ..FleetConfig::default()
            })
            .start()
            .await
            .unwrap();
        // Odd things fail their first attempt; thing 7 never answers.
        let _sim = simulate(
            devices,
            from_fn(|t, task| match (t.as_str(), task) {
                (_, Task::Command(_)) => Outcome::Succeed,
                ("dev-007", _) => Outcome::Ignore,
                (s, Task::Job { attempt: 1, .. }) if s.ends_with(['1', '3', '5', '9']) => {
                    Outcome::Fail
                }
                _ => Outcome::Succeed,
            }),
        );
        let group = GroupName::parse("floor-1").unwrap();
        fleet.create_group(group.clone(), None).await.unwrap();
        fleet
            .add_group_members(&group, (0..6).map(thing).collect())
            .await
            .unwrap();
        let retrying = JobId::parse("retrying").unwrap();
        fleet
            .create_job(
                JobSpec::new(retrying.clone(), serde_json::json!({"op": "update"}))
                    .things((0..12).map(thing))
                    .config(JobConfig {
                        retry: vec![RetryCriterion {
                            failure_type: FailureType::Failed,
                            number_of_retries: 2,
                        }],
                        ..JobConfig::default()
                    }),
            )
            .await
            .unwrap();
        let follow = JobId::parse("follow").unwrap();
        fleet
            .create_job(
                JobSpec::new(follow.clone(), serde_json::json!({"op": "follow"}))
                    .groups([group.clone()])
                    .continuous(),
            )
            .await
            .unwrap();
        let answered = fleet
            .send_command(
                thing(2),
                "reboot",
                serde_json::json!({}),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        answered.outcome().await.unwrap();
        let pending = fleet
            .send_command(
                thing(7),
                "reboot",
                serde_json::json!({}),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        fleet
            .send_command(
                thing(7),
                "ping",
                serde_json::json!({}),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        // The simulator answers commands at once, so the cancel may come too late; either
        // outcome is history worth snapshotting.
        let _ = fleet.cancel_command(pending.execution_id(), None).await;
        fleet
            .add_group_members(&group, (20..24).map(thing).collect())
            .await
            .unwrap();
        fleet
            .remove_group_members(&group, vec![thing(21)])
            .await
            .unwrap();
        let canceled = JobId::parse("canceled").unwrap();
        fleet
            .create_job(
                JobSpec::new(canceled.clone(), serde_json::json!({})).things([thing(7), thing(8)]),
            )
            .await
            .unwrap();
        fleet.cancel_job(&canceled, false, None).await.unwrap();
        // Let the retries play out: every execution of `retrying` but thing 7's ends.
        for _ in 0..500 {
            let c = fleet.describe_job(&retrying).unwrap().counters;
            if c.succeeded == 11 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            fleet.describe_job(&retrying).unwrap().counters.succeeded,
            11
        );
        fleet.caught_up().await.unwrap();
        drop(fleet);
        let feed = store.read_all(1, usize::MAX).await.unwrap();
        assert!(feed.len() > 60, "a rich history: {} events", feed.len());
        (store, feed)
    }

    /// Waits until the fleet appends nothing more for a while.
    async fn quiet(fleet: &Fleet<MemoryStore, ChannelLink>, store: &MemoryStore) {
        let mut last = u64::MAX;
        loop {
            fleet.caught_up().await.unwrap();
            let now = store.head_position().await.unwrap();
            if now == last {
                return;
            }
            last = now;
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
    }

    fn fold(state: &mut ReadModel, events: &[StoredEvent]) {
        let mut fx = Effects::default();
        for e in events {
            state.apply(e, &mut fx).unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_plus_the_tail_folds_to_the_same_state_at_every_cut() {
        let (_store, feed) = history().await;
        let mut full = ReadModel::default();
        fold(&mut full, &feed);
        let expected = full.encode();
        assert_eq!(
            ReadModel::decode(&expected, feed.len() as u64)
                .unwrap()
                .encode(),
            expected,
            "decode(encode(s)) must encode to the same bytes"
        );
        for cut in (0..=feed.len()).step_by(7).chain([feed.len()]) {
            let mut head = ReadModel::default();
            fold(&mut head, &feed[..cut]);
            let mut resumed = ReadModel::decode(&head.encode(), cut as u64)
                .unwrap_or_else(|e| panic!("decoding the snapshot at {cut}: {e}"));
            fold(&mut resumed, &feed[cut..]);
            assert!(
                resumed.encode() == expected,
                "snapshot at {cut} + tail differs from the full fold"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_or_foreign_snapshots_are_refused_without_panicking() {
        let (_store, feed) = history().await;
        let mut state = ReadModel::default();
        fold(&mut state, &feed);
        let bytes = state.encode();
        let at = feed.len() as u64;
        // Every truncation, and a flipped byte every few positions.
        for n in (0..bytes.len()).step_by(13) {
            assert!(
                ReadModel::decode(&bytes[..n], at).is_err(),
                "truncated to {n}"
            );
        }
        for i in (0..bytes.len()).step_by(29) {
            let mut b = bytes.clone();
            b[i] ^= 0x55;
            // Some flips still decode (a digit inside a timestamp); none may panic.
            let _ = ReadModel::decode(&b, at);
        }
        assert!(matches!(
            ReadModel::decode(&bytes, at - 1),
            Err(ImageError::Position { .. })
        ));
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Whatever the current format number is, replace it with one no runtime writes.
        let digits = text["{\"format\":".len()..]
            .find(|c: char| !c.is_ascii_digit())
            .expect("the format number is followed by more fields");
        let other_format = format!("{{\"format\":99{}", &text["{\"format\":".len() + digits..]);
        assert!(matches!(
            ReadModel::decode(other_format.as_bytes(), at),
            Err(ImageError::Format { found: 99 })
        ));
        // An image of the previous format lacks a field of this one: it is refused by its
        // format, not by the missing field.
        let previous = format!("{{\"format\":4{}", &text["{\"format\":".len() + digits..])
            .replace(",\"has_status_details\":false", "")
            .replace(",\"has_status_details\":true", "");
        assert!(matches!(
            ReadModel::decode(previous.as_bytes(), at),
            Err(ImageError::Format { found: 4 })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_fleet_resumes_from_the_saved_snapshot_and_ignores_a_bad_one() {
        let (store, feed) = history().await;
        let head = feed.len() as u64;
        let start = |store: MemoryStore| async move {
            let (link, _devices) = ChannelLink::pair(1024);
            let fleet = Fleet::start(store, link).await.unwrap();
            (fleet, _devices)
        };
        // No snapshot yet: the fleet folds everything, then shutdown saves one at the head
        // (or later, if recovery appended).
        let (fleet, _d) = start(store.clone()).await;
        assert_eq!(fleet.snapshot_position(), 0);
        // Recovery finishes what the history still owed (cancel cleanup, new members queued).
        quiet(&fleet, &store).await;
        let before: std::collections::HashMap<&str, _> = ["retrying", "follow", "canceled"]
            .into_iter()
            .map(|job| {
                let id = JobId::parse(job).unwrap();
                let rows = fleet
                    .list_job_executions(&id, None, &crate::Page::first(100))
                    .unwrap()
                    .items;
                (job, rows)
            })
            .collect();
        fleet.shutdown().await;
        let saved = store.load_snapshot(SNAPSHOT_NAME).await.unwrap().unwrap();
        assert!(saved.position >= head);

        let (fleet, _d) = start(store.clone()).await;
        assert_eq!(
            fleet.snapshot_position(),
            saved.position,
            "the start resumed from the snapshot"
        );
        let described = fleet
            .describe_job(&JobId::parse("retrying").unwrap())
            .unwrap();
        assert_eq!(described.counters.succeeded, 11);
        // (Byte equality of whole states would race with the job driver arming rollout
        // deadlines; the cut test above compares whole states.) What clients see is the same.
        for job in ["retrying", "follow", "canceled"] {
            let id = JobId::parse(job).unwrap();
            assert_eq!(
                fleet
                    .list_job_executions(&id, None, &crate::Page::first(100))
                    .unwrap()
                    .items,
                before[job],
                "{job} after resuming"
            );
        }
        drop(fleet);

        // A damaged snapshot is ignored: the start folds from position 1 and serves the same.
        let now = store.head_position().await.unwrap();
        store
            .save_snapshot(
                SNAPSHOT_NAME,
                Snapshot {
                    position: now,
                    event_key: event_key(&store, now).await.unwrap(),
                    bytes: b"{\"format\":1,".to_vec(),
                },
            )
            .await
            .unwrap();
        let (fleet, _d) = start(store.clone()).await;
        assert_eq!(fleet.snapshot_position(), 0);
        // Recovery finishes what the history still owed (cancel cleanup, new members queued).
        quiet(&fleet, &store).await;
        let described = fleet
            .describe_job(&JobId::parse("retrying").unwrap())
            .unwrap();
        assert_eq!(described.counters.succeeded, 11);
        let status = fleet
            .get_job_execution(&JobId::parse("retrying").unwrap(), &thing(7))
            .await
            .unwrap()
            .status;
        assert!(matches!(
            status,
            JobExecutionStatus::InProgress | JobExecutionStatus::Queued
        ));
    }
}

#[cfg(test)]
mod checked {
    //! Every snapshot a running fleet saves must be exactly the fold of the feed up to its
    //! position (apart from the job deadlines the job driver arms, which no event states).
    use super::*;
    use crate::clock::ManualClock;
    use crate::link::ChannelLink;
    use crate::sim::{from_fn, simulate, Outcome, Task};
    use crate::{Fleet, FleetConfig, JobSpec};
    use async_trait::async_trait;
    use fleetops_core::config::{FailureType, JobConfig, RetryCriterion, Rollout};
    use fleetops_core::store::{AppendBatch, Appended, StoredEvent, Subscription};
    use fleetops_core::{Duration, JobId, JobStatus, StoreError, StreamId, ThingName, Timestamp};
    use fleetops_machine::Effects;
    use fleetops_store_memory::MemoryStore;
    use std::sync::atomic::AtomicUsize;

    #[derive(Clone)]
    struct Checking {
        inner: MemoryStore,
        saves: Arc<AtomicUsize>,
        bad: Arc<std::sync::Mutex<Vec<String>>>,
    }

    fn normalized(mut s: ReadModel) -> Vec<u8> {
        let jobs: Vec<StreamId> = s.jobs.keys().map(StreamId::job).collect();
        for j in jobs {
            s.proj.arm(&j, None);
        }
        s.encode()
    }

    #[async_trait]
    impl EventStore for Checking {
        async fn append(&self, b: AppendBatch) -> Result<Appended, StoreError> {
            self.inner.append(b).await
        }
        async fn read_stream(
            &self,
            s: &StreamId,
            from: u64,
            limit: usize,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.read_stream(s, from, limit).await
        }
        async fn stream_version(&self, s: &StreamId) -> Result<Option<u64>, StoreError> {
            self.inner.stream_version(s).await
        }
        async fn read_all(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.read_all(from, limit).await
        }
        async fn head_position(&self) -> Result<u64, StoreError> {
            self.inner.head_position().await
        }
        async fn subscribe(&self, from: u64) -> Result<Box<dyn Subscription>, StoreError> {
            self.inner.subscribe(from).await
        }
        async fn load_snapshot(&self, name: &str) -> Result<Option<Snapshot>, StoreError> {
            self.inner.load_snapshot(name).await
        }
        async fn save_snapshot(&self, name: &str, s: Snapshot) -> Result<(), StoreError> {
            let feed = self.inner.read_all(1, s.position as usize).await?;
            let mut full = ReadModel::default();
            let mut fx = Effects::default();
            for e in &feed {
                full.apply(e, &mut fx).unwrap();
            }
            let expected = normalized(full);
            let problem = match ReadModel::decode(&s.bytes, s.position) {
                Ok(saved) => (normalized(saved) != expected)
                    .then(|| format!("snapshot at {} differs", s.position)),
                Err(e) => Some(format!("snapshot at {}: {e}", s.position)),
            };
            if let Some(p) = problem {
                self.bad.lock().unwrap().push(p);
            }
            self.saves.fetch_add(1, Ordering::Relaxed);
            self.inner.save_snapshot(name, s).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_saved_snapshot_is_the_fold_of_the_feed_up_to_its_position() {
        let store = Checking {
            inner: MemoryStore::new(),
            saves: Arc::default(),
            bad: Arc::default(),
        };
        let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
        let job = JobId::parse("checked").unwrap();
        let things: Vec<ThingName> = (0..200)
            .map(|i| ThingName::parse(&format!("c{i:03}")).unwrap())
            .collect();
        let config = FleetConfig {
            snapshot_every: 13,
            ..FleetConfig::default()
        };
        for life in 0..3 {
            let (link, devices) = ChannelLink::pair(1024);
            let fleet = Fleet::builder(store.clone(), link)
                .clock(clock.clone())
                .config(config.clone())
                .start()
                .await
                .unwrap();
            let _sim = simulate(
                devices,
                from_fn(|t, task| {
                    let n: usize = t.as_str()[1..].parse().unwrap_or(0);
                    match (n % 5, n % 7, task) {
                        (0, _, Task::Job { attempt: 1, .. }) => Outcome::Ignore,
                        (_, 0, Task::Job { attempt: 1, .. }) => Outcome::Fail,
                        _ => Outcome::Succeed,
                    }
                }),
            );
            if life == 0 {
                fleet
                    .create_job(
                        JobSpec::new(job.clone(), serde_json::json!({}))
                            .things(things.clone())
                            .config(JobConfig {
                                rollout: Rollout::Fixed { per_minute: 120 },
                                in_progress_timeout: Some(Duration::from_minutes(10)),
                                retry: vec![RetryCriterion {
                                    failure_type: FailureType::All,
                                    number_of_retries: 2,
                                }],
                                ..JobConfig::default()
                            }),
                    )
                    .await
                    .unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            clock.advance(Duration::from_secs(60));
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            clock.advance(Duration::from_minutes(11));
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            if life % 2 == 0 {
                fleet.abort().await;
            } else {
                fleet.shutdown().await;
            }
        }
        let (link, devices) = ChannelLink::pair(1024);
        let fleet = Fleet::builder(store.clone(), link)
            .clock(clock.clone())
            .config(config)
            .start()
            .await
            .unwrap();
        let _sim = simulate(devices, Outcome::Succeed);
        for _ in 0..100 {
            if fleet.describe_job(&job).unwrap().job.status == JobStatus::Completed {
                break;
            }
            clock.advance(Duration::from_minutes(11));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let d = fleet.describe_job(&job).unwrap();
        assert_eq!(d.job.status, JobStatus::Completed, "{:?}", d.counters);
        assert_eq!(d.counters.succeeded, 200, "{:?}", d.counters);
        let bad = store.bad.lock().unwrap().clone();
        let saves = store.saves.load(Ordering::Relaxed);
        let head = store.inner.head_position().await.unwrap();
        // One check per folded batch, so far fewer saves than events / 13.
        assert!(saves >= 3, "only {saves} snapshots saved for {head} events");
        assert!(
            bad.is_empty(),
            "snapshots that differ from the fold: {bad:?}"
        );
    }
}
