//! A given/when/then harness for aggregates: each rule becomes a three-line test.
//!
//! ```
//! use fleetops_core::command::{CommandExecution, CommandIntent};
//! use fleetops_core::testkit::gwt::given;
//! use fleetops_core::{ErrorCode, Event, Timestamp};
//!
//! given::<CommandExecution>([])
//!     .when(CommandIntent::Cancel { reason: None }, Timestamp::from_secs(1))
//!     .then_reject(ErrorCode::ResourceNotFound);
//! ```

use crate::aggregate::Aggregate;
use crate::event::Event;
use crate::rejection::{ErrorCode, Rejection};
use crate::time::Timestamp;

/// A history to decide against.
#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: Option<A>,
}

/// Starts a scenario from past events. Panics (it is a test helper) if the history does not
/// evolve.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = Event>) -> Given<A> {
    let events: Vec<Event> = events.into_iter().collect();
    let state = A::replay(&events)
        .unwrap_or_else(|e| panic!("given history does not evolve into a {}: {e}", A::NAME));
    Given { state }
}

impl<A: Aggregate> Given<A> {
    /// The state the history produced.
    pub fn state(&self) -> Option<&A> {
        self.state.as_ref()
    }

    /// Decides `intent` at `now`.
    pub fn when(self, intent: A::Intent, now: Timestamp) -> Then<A> {
        let outcome = A::decide(self.state.as_ref(), intent, now);
        Then {
            state: self.state,
            outcome,
        }
    }
}

/// The outcome of a decision, to check.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    state: Option<A>,
    outcome: Result<Vec<Event>, Rejection>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the exact events, checks they evolve, and returns the new state.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = Event>) -> Option<A> {
        let expected: Vec<Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events from {}", A::NAME);
                let mut state = self.state;
                for e in &events {
                    state = Some(A::evolve(state, e).unwrap_or_else(|err| {
                        panic!(
                            "{} emitted {} which does not evolve: {err}",
                            A::NAME,
                            e.type_name()
                        )
                    }));
                }
                state
            }
            Err(r) => panic!("expected events {expected:?}, got rejection {r:?}"),
        }
    }

    /// Asserts that nothing happens (no events, no refusal).
    #[track_caller]
    pub fn then_nothing(self) {
        self.then_expect([]);
    }

    /// Asserts a refusal with `code` and returns it for further checks.
    #[track_caller]
    pub fn then_reject(self, code: ErrorCode) -> Rejection {
        match self.outcome {
            Err(r) => {
                assert_eq!(r.code(), code, "wrong refusal: {r:?}");
                r
            }
            Ok(events) => panic!("expected refusal {code:?}, got events {events:?}"),
        }
    }

    /// Asserts exactly this refusal.
    #[track_caller]
    pub fn then_reject_with(self, expected: Rejection) {
        assert_eq!(self.then_reject(expected.code()), expected);
    }

    /// The raw outcome, for checks the helpers don't cover.
    pub fn outcome(&self) -> &Result<Vec<Event>, Rejection> {
        &self.outcome
    }
}
