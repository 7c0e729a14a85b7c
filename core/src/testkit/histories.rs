//! Invariants of stored execution histories that hold whatever happened to the process: a
//! restart, a crash, redelivered device messages. Tests that stop and resume a fleet check
//! the store with these afterwards.

use crate::ids::{JobId, StreamId, ThingName};
use crate::store::EventStore;
use crate::Event;

/// Checks the history of each target's execution of `job`: queued exactly once, and at most
/// one terminal event per attempt (a retry's `ExecutionRequeued` starts a new attempt).
///
/// # Panics
/// On the first history that breaks either rule, or when the store cannot be read.
pub async fn check_execution_histories<S: EventStore>(
    store: &S,
    job: &JobId,
    targets: &[ThingName],
) {
    for thing in targets {
        let stream = StreamId::job_execution(job, thing);
        let events = store
            .read_stream(&stream, 1, 10_000)
            .await
            .unwrap_or_else(|e| panic!("read {stream}: {e}"));
        let queued = events
            .iter()
            .filter(|e| matches!(e.event, Event::ExecutionQueued { .. }))
            .count();
        assert_eq!(queued, 1, "{stream} queued {queued} times");
        let mut terminal_in_attempt = 0;
        for e in &events {
            match &e.event {
                Event::ExecutionRequeued { .. } => terminal_in_attempt = 0,
                ev if ev.execution_status().is_some_and(|s| s.is_terminal()) => {
                    terminal_in_attempt += 1;
                    assert!(
                        terminal_in_attempt <= 1,
                        "{stream}: two terminal events in one attempt"
                    );
                }
                _ => {}
            }
        }
    }
}
