//! Bounded caches of aggregate states, so the hot paths do not replay a stream from the store
//! for every request: job executions (start-next, update, timers, notify-next) and command
//! executions (the request the outbox publishes, the device's response, the outcome handed
//! back to the caller).
//!
//! An execution without status details needs no entry: the read model's record of it is its
//! whole state (`ExecutionEntry::full_state`), which `Inner::cached` falls back to, so this
//! cache matters for the executions whose devices report details, and for reading one's own
//! write before the fold has it.
//!
//! It is only an optimization and never the truth: every decision made on a cached state is
//! appended with `ExpectedVersion::Exact(cached version)`, so a stale entry fails with a
//! conflict and the caller reloads from the store; a read-only use (notify-next) checks the
//! cached version against the folded one first. Writers that change executions without a full
//! state (the job driver's batch cancel, remove and retry) drop their entries. A terminal
//! command never changes again, so a cached terminal command is its final record.

use std::collections::{HashMap, VecDeque};

use fleetops_core::command::CommandExecution;
use fleetops_core::job_execution::JobExecution;
use fleetops_core::StreamId;

/// Entries kept by default: a few hundred bytes each (about 20 MiB in all).
pub(crate) const DEFAULT_CAPACITY: usize = 65_536;

/// Command entries kept: live commands, and finished ones until their outcome is taken.
pub(crate) const COMMAND_CAPACITY: usize = 16_384;

/// Job execution states by stream.
pub(crate) type ExecCache = Cache<JobExecution>;

/// Command execution states by stream.
pub(crate) type CommandCache = Cache<CommandExecution>;

/// States by stream with the stream version each reflects, evicted oldest first.
#[derive(Debug, Default)]
pub(crate) struct Cache<V> {
    map: HashMap<StreamId, (u64, V)>,
    /// Insertion order for FIFO eviction; may hold keys already dropped (skipped on eviction).
    order: VecDeque<StreamId>,
    capacity: usize,
}

impl<V: Clone> Cache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// The cached state of `stream` and its version.
    pub fn get(&self, stream: &StreamId) -> Option<(u64, V)> {
        self.map.get(stream).cloned()
    }

    /// Records `state` at `version` (a newer version replaces an older one).
    pub fn put(&mut self, stream: StreamId, version: u64, state: V) {
        if self.capacity == 0 {
            return;
        }
        match self.map.get_mut(&stream) {
            Some(entry) => {
                if version >= entry.0 {
                    *entry = (version, state);
                }
            }
            None => {
                self.order.push_back(stream.clone());
                self.map.insert(stream, (version, state));
            }
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        // Dropped keys linger in `order`; compact once they outnumber the live ones.
        if self.order.len() > 2 * self.capacity.max(16) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    /// Forgets `stream`.
    pub fn remove(&mut self, stream: &StreamId) {
        self.map.remove(stream);
    }

    /// Takes `stream`'s entry out of the cache.
    pub fn take(&mut self, stream: &StreamId) -> Option<(u64, V)> {
        self.map.remove(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetops_core::status::JobExecutionStatus;
    use fleetops_core::{JobId, ThingName, Timestamp};

    fn state(n: u64) -> JobExecution {
        JobExecution {
            job_id: JobId::parse("j").unwrap(),
            thing: ThingName::parse("t").unwrap(),
            status: JobExecutionStatus::Queued,
            status_details: Default::default(),
            queued_at: Timestamp::from_secs(n),
            started_at: None,
            last_updated_at: Timestamp::from_secs(n),
            version_number: n,
            execution_number: 1,
            in_progress_timeout: None,
            in_progress_deadline: None,
            step_deadline: None,
        }
    }

    fn stream(i: usize) -> StreamId {
        StreamId::custom(&format!("s{i}")).unwrap()
    }

    #[test]
    fn stays_bounded_and_keeps_the_newest_version() {
        let mut c = ExecCache::new(4);
        for i in 0..100 {
            c.put(stream(i), 1, state(1));
            if i % 3 == 0 {
                c.remove(&stream(i));
            }
        }
        assert!(c.map.len() <= 4);
        assert!(c.order.len() <= 2 * 16 + 1);
        c.put(stream(99), 3, state(3));
        c.put(stream(99), 2, state(2));
        assert_eq!(c.get(&stream(99)).map(|e| e.0), Some(3));
        let mut off = ExecCache::new(0);
        off.put(stream(1), 1, state(1));
        assert!(off.get(&stream(1)).is_none());
    }
}
